"""USFM masked image model: encoder E and decoder D of eq. 9 (its encoder is exported by ``export_encoder``).

Pre-training (Jiao et al., arXiv 2401.00153, §3.2.3) reconstructs the WHOLE image from the spatial-frequency
dual-masked input ``U_dm`` (eq. 8): ``U_rec = D(E(U_dm))`` (eq. 9), supervised by L1 + λ·focal frequency loss
(eq. 11-14, ``usfm_monai.losses``). ``D`` is SimMIM's lightweight decoder (Xie et al., arXiv 2111.09886): the
final-norm patch tokens as a ``(B, D, H/16, W/16)`` map, a 1×1 convolution to ``16·16·in_chans`` channels and
``PixelShuffle(16)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from usfm_monai.networks.encoder import (
    USFMEncoder,
    check_encoder_kwargs,
    create_usfm_encoder,
)
from usfm_monai.networks.weights import export_encoder  # re-exported: its home is networks.weights

__all__ = ["USFMMaskedImageModel", "export_encoder"]


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
