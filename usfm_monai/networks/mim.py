"""USFM masked image model: encoder E and decoder D of eq. 9, plus the encoder export (layout (a)).

Pre-training (Jiao et al., arXiv 2401.00153, §3.2.3) reconstructs the WHOLE image from the spatial-frequency
dual-masked input ``U_dm`` (eq. 8): ``U_rec = D(E(U_dm))`` (eq. 9), supervised by L1 + λ·focal frequency loss
(eq. 11-14, ``usfm_monai.losses``). ``D`` is SimMIM's lightweight decoder (Xie et al., arXiv 2111.09886): the
final-norm patch tokens as a ``(B, D, H/16, W/16)`` map, a 1×1 convolution to ``16·16·in_chans`` channels and
``PixelShuffle(16)``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from usfm_monai.io import save_torch_atomic
from usfm_monai.networks.encoder import (
    USFMEncoder,
    check_encoder_kwargs,
    create_usfm_encoder,
)

__all__ = ["USFMMaskedImageModel", "export_encoder"]

_PLAIN_SCALARS = (str, int, float, bool, type(None))


class USFMMaskedImageModel(nn.Module):
    """USFM encoder + SimMIM decoder reconstructing the whole image (eq. 9).

    The encoder is built with a final per-token LayerNorm (``use_fc_norm=False``), as the authors' pre-training
    encoder; :func:`usfm_monai.networks.weights.load_encoder_weights` turns it into the mean-pooled fine-tuning
    encoder.

    Args:
        size: encoder size, ``"tiny"``, ``"small"``, ``"base"`` (the paper's) or ``"large"``.
        img_size: input size, int or ``(H, W)``, multiple of 16.
        in_chans: image channels (1 for ultrasound).
        drop_path_rate: encoder stochastic depth rate.
        encoder_kwargs: other :class:`~usfm_monai.networks.encoder.USFMEncoder` arguments.

    Raises:
        ValueError: invalid size / image size (see :func:`~usfm_monai.networks.encoder.create_usfm_encoder`).
    """

    def __init__(
        self,
        size: str = "base",
        img_size: Union[int, Sequence[int]] = 224,
        in_chans: int = 1,
        drop_path_rate: float = 0.1,
        encoder_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        kwargs = check_encoder_kwargs(encoder_kwargs, "USFMMaskedImageModel")
        kwargs.setdefault("use_fc_norm", False)
        self.encoder: USFMEncoder = create_usfm_encoder(
            size=size, img_size=img_size, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs
        )
        patch = self.encoder.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"the PixelShuffle decoder needs a square patch, got patch_size={tuple(patch)}.")
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.embed_dim, patch[0] * patch[1] * in_chans, kernel_size=1),
            nn.PixelShuffle(patch[0]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct the image from its dual-masked version.

        Args:
            x: ``U_dm``, ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]`` (the masked image of eq. 8).

        Returns:
            ``U_rec``, ``(B, in_chans, H, W)`` float, unbounded (compare with ``U`` by L1, eq. 11).

        Raises:
            ValueError: wrong input shape.
        """
        last = len(self.encoder.blocks) - 1
        # final-norm patch tokens as a map: B, D, H/16, W/16
        (features,) = self.encoder.forward_intermediates(
            x, indices=[last], norm=True, output_fmt="NCHW", intermediates_only=True
        )
        return self.decoder(features)  # B, in_chans, H, W

    def encoder_state_dict(self) -> Dict[str, torch.Tensor]:
        """The encoder's state dict (what :func:`export_encoder` writes)."""
        return self.encoder.state_dict()


def _check_plain(value: Any, where: str) -> Any:
    """Return ``value`` as plain containers (tuples become lists), or raise naming the offending entry."""
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {k!r}.")
            out[k] = _check_plain(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where} must hold only str/int/float/bool/None, lists and dicts, got {type(value).__name__}.")


def export_encoder(
    model: nn.Module, path: Union[str, "os.PathLike[str]"], config: Optional[Mapping[str, Any]] = None
) -> str:
    """Write the encoder as ``{"state_dict": ..., "config": {...}}`` (layout (a)), atomically.

    The file holds tensors and plain containers only, so it loads with ``torch.load(..., weights_only=True)``
    and :func:`usfm_monai.networks.weights.load_encoder_weights`. It is written to a temporary file in the same
    folder and moved into place with ``os.replace``, so ``path`` is never half-written.

    Args:
        model: a :class:`USFMMaskedImageModel` (or any module with a USFM ``encoder``), or the encoder itself.
        path: destination file; its folder must exist.
        config: extra plain metadata (e.g. ``{"epoch": 100}``), merged over the encoder's ``init_config``
            (``USFMEncoder(**config)`` rebuilds the network when no extra key is given).

    Returns:
        ``path`` as a string.

    Raises:
        TypeError: ``model`` has no USFM encoder, or ``config`` is not plain.
        FileNotFoundError: the destination folder does not exist.
    """
    encoder = model if isinstance(model, USFMEncoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, USFMEncoder):
        raise TypeError(f"model must be a USFMEncoder or have one as 'encoder', got {type(model).__name__}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder of the export path does not exist: {folder!r}.")
    full_config = _check_plain(dict(encoder.init_config, **dict(config or {})), "config")
    state = {k: v.detach().to("cpu").clone() for k, v in encoder.state_dict().items()}
    save_torch_atomic({"state_dict": state, "config": full_config}, path)
    return path
