"""USFM classifier: the USFM encoder with a linear head (§3.3, Fig. 5a; Table 3).

As the authors' fine-tuning model (``usdsgen/modules/backbone/vision_transformer.py``, ``use_mean_pooling=True``)
and BEiT: the patch tokens of the last block are averaged (the class token is left out), normalized by
``fc_norm`` and classified by one linear layer.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from timm.layers import trunc_normal_
from torch import nn

from usfm_monai.networks.encoder import (
    USFMEncoder,
    check_encoder_kwargs,
    create_usfm_encoder,
)

__all__ = ["USFMClassifier"]


class USFMClassifier(nn.Module):
    """USFM encoder, mean-pooled patch tokens, ``fc_norm``, dropout and a linear head.

    The head lives outside the encoder (``self.head``), so pre-trained encoder weights load strictly and the
    layer-wise learning-rate decay gives the head the full learning rate. The network is built with random weights;
    pretrained encoder weights are loaded into it by :func:`~usfm_monai.networks.weights.load_encoder_weights`
    (in the bundles, by :class:`~usfm_monai.handlers.EncoderWeightsLoader` when training starts), so building one
    never reads a file.

    Args:
        num_classes: classes K.
        size: encoder size (``"tiny"``, ``"small"``, ``"base"``, ``"large"``).
        img_size: input size, int or ``(H, W)``, multiple of 16.
        in_chans: input channels.
        drop_path_rate: encoder stochastic depth rate.
        head_drop: dropout before the head.
        encoder_kwargs: other :class:`~usfm_monai.networks.encoder.USFMEncoder` arguments.

    Raises:
        ValueError: ``num_classes < 1`` or bad encoder arguments.
    """

    def __init__(
        self,
        num_classes: int = 3,
        size: str = "base",
        img_size: Union[int, Sequence[int]] = 256,
        in_chans: int = 1,
        drop_path_rate: float = 0.1,
        head_drop: float = 0.0,
        encoder_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        kwargs = check_encoder_kwargs(encoder_kwargs, "USFMClassifier")
        for fixed in ("num_classes", "global_pool", "use_fc_norm"):
            if fixed in kwargs:
                raise ValueError(f"encoder_kwargs[{fixed!r}] is fixed by USFMClassifier, got {kwargs[fixed]!r}.")
        self.encoder: USFMEncoder = create_usfm_encoder(
            size=size,
            img_size=img_size,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            num_classes=0,
            global_pool="avg",
            use_fc_norm=True,
            **kwargs,
        )
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(self.encoder.embed_dim, num_classes)
        # BEiT / the authors: small head at start (trunc-normal std 0.02 scaled by 0.001)
        trunc_normal_(self.head.weight, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(0.001)
        nn.init.zeros_(self.head.bias)


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalized image features.

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.

        Returns:
            ``(B, D)`` = ``fc_norm(mean of the patch tokens)``.
        """
        return self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.

        Returns:
            ``(B, K)`` logits (softmax over K).

        Raises:
            ValueError: wrong input shape.
        """
        return self.head(self.head_drop(self.forward_features(x)))
