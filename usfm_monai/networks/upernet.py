"""USFM segmenter: the USFM encoder with a UPerNet head (§3.3, Fig. 5a; Table 2 "USFM" and "UperNet" rows).

As in BEiT's semantic segmentation (Bao et al., arXiv 2106.08254, ``unilm/beit/semantic_segmentation``) and the
authors' ``configs/model/Seg/Upernet.yaml``: the outputs of blocks 4, 6, 8 and 12 of a 12-block ViT (indices
3, 5, 7, 11; the same fractions of other depths) are brought from stride 16 to strides 4, 8, 16 and 32 (``fpn1``:
two 2×2 transposed convolutions with norm + GELU between them; ``fpn2``: one; ``fpn3``: identity; ``fpn4``:
2×2 max-pooling) and fused by UPerNet (Xiao et al., arXiv 1807.10221, mmseg ``UPerHead``): a pyramid pooling
module on the coarsest level, a top-down FPN and a 3×3 fusion convolution; an optional FCN auxiliary head reads
one level. Logits are upsampled (bilinear) to the input size.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from usfm_monai.networks.encoder import (
    USFMEncoder,
    check_encoder_kwargs,
    create_usfm_encoder,
)

__all__ = ["USFMSegmenter", "UPerHead", "FCNHead", "default_out_indices"]

NormType = Union[str, Tuple[str, Mapping[str, Any]]]

#: Default fusion width per encoder size (the authors use 768 for base; mmseg's BEiT UPerNet 768, ours 512).
_DEFAULT_CHANNELS = {"tiny": 128, "small": 256, "base": 512, "large": 512}


def default_out_indices(depth: int) -> Tuple[int, int, int, int]:
    """Blocks feeding the 4 pyramid levels: 1/3, 1/2, 2/3 and all of ``depth`` (12 -> 3, 5, 7, 11).

    Raises:
        ValueError: ``depth`` too small to give 4 distinct blocks.
    """
    indices = tuple(int(depth * k / 12 + 0.5) - 1 for k in (4, 6, 8, 12))
    if depth < 4 or len(set(indices)) != 4:
        raise ValueError(f"cannot pick 4 distinct blocks from depth={depth}; pass out_indices explicitly.")
    return indices  # type: ignore[return-value]


def _conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, norm: NormType) -> Convolution:
    """mmseg ``ConvModule``: conv (no bias, followed by a norm) -> norm -> ReLU, "same" padding."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        act="RELU",
        norm=norm,
        bias=False,
    )


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)  # mmseg BaseDecodeHead.conv_seg
    nn.init.zeros_(conv.bias)


class UPerHead(nn.Module):
    """UPerNet decoder (PPM on the coarsest level + FPN fusion), as mmseg's ``UPerHead``.

    Args:
        in_channels: channels of each of the 4 input levels.
        channels: fusion width.
        num_classes: output classes K.
        pool_scales: PPM output sizes.
        dropout: ``Dropout2d`` rate before the classifier.
        norm: MONAI norm name, e.g. ``"batch"`` or ``("group", {"num_groups": 32})``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: NormType = "batch",
        num_levels: int = 4,
    ) -> None:
        super().__init__()
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv_norm_act(in_channels, channels, 1, norm))
            for scale in pool_scales
        )
        self.bottleneck = _conv_norm_act(in_channels + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(
            _conv_norm_act(in_channels, channels, 1, norm) for _ in range(num_levels - 1)
        )
        self.fpn_convs = nn.ModuleList(_conv_norm_act(channels, channels, 3, norm) for _ in range(num_levels - 1))
        self.fpn_bottleneck = _conv_norm_act(num_levels * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_classifier(self.conv_seg)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(m(x), size=size, mode="bilinear", align_corners=False) for m in self.ppm]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # B, channels, h, w

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``levels`` (finest first, each ``(B, in_channels, h_i, w_i)``) into ``(B, K, h_0, w_0)`` logits."""
        laterals = [conv(levels[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self._psp(levels[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        fused = self.fpn_bottleneck(torch.cat(outs, dim=1))  # B, channels, h_0, w_0
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary FCN head (mmseg ``FCNHead``, one 3×3 conv, no input concatenation)."""

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, norm: NormType = "batch"
    ) -> None:
        super().__init__()
        self.conv = _conv_norm_act(in_channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_classifier(self.conv_seg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, h, w)`` -> ``(B, K, h, w)`` logits."""
        return self.conv_seg(self.dropout(self.conv(x)))


class USFMSegmenter(nn.Module):
    """USFM encoder + UPerNet head for K-class segmentation (binary = 2 classes with softmax).

    ``forward`` returns, in training mode with ``aux_head=True``, the list ``[main_logits, aux_logits]`` (both
    ``(B, K, H, W)``) for ``monai.losses.DeepSupervisionLoss(DiceCELoss(...), weights=[1.0, 0.4])``; otherwise (eval
    mode, or ``aux_head=False``) only ``main_logits``, so inferers and MONAI Label get one tensor.

    The network is built with random weights (the paper's "UperNet" baseline); pretrained encoder weights are loaded
    into it by :func:`~usfm_monai.networks.weights.load_encoder_weights` (in the bundles, by
    :class:`~usfm_monai.handlers.EncoderWeightsLoader` when training starts), so building one never reads a file.

    Args:
        num_classes: classes K (background included).
        size: encoder size (``"tiny"``, ``"small"``, ``"base"``, ``"large"``).
        img_size: input size, int or ``(H, W)``, multiple of 16.
        in_chans: input channels.
        out_indices: 4 increasing block indices for the pyramid; ``None``: :func:`default_out_indices`.
        channels: UPerNet width; ``None``: 128 / 256 / 512 / 512 for tiny / small / base / large.
        pool_scales: PPM output sizes.
        aux_head: add the auxiliary FCN head (training only).
        aux_in_index: pyramid level (0-3) read by the auxiliary head; 2 = stride 16.
        aux_channels: auxiliary head width; ``None``: ``channels // 2``.
        drop_path_rate: encoder stochastic depth rate.
        dropout: dropout before each classifier.
        norm: MONAI norm for the head (``"batch"``; ``("group", {"num_groups": 32})`` for batch-1 training).
            Batch norm is fine for batch-1 inference in eval mode.
        encoder_kwargs: other :class:`~usfm_monai.networks.encoder.USFMEncoder` arguments (e.g. ``depth``).

    Raises:
        ValueError: bad ``out_indices``, ``aux_in_index``, ``num_classes`` or encoder arguments.
    """

    def __init__(
        self,
        num_classes: int = 2,
        size: str = "base",
        img_size: Union[int, Sequence[int]] = 256,
        in_chans: int = 1,
        out_indices: Optional[Sequence[int]] = None,
        channels: Optional[int] = None,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        aux_head: bool = True,
        aux_in_index: int = 2,
        aux_channels: Optional[int] = None,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        norm: NormType = "batch",
        encoder_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not 0 <= aux_in_index <= 3:
            raise ValueError(f"aux_in_index must be a pyramid level in 0..3, got {aux_in_index}.")
        kwargs = check_encoder_kwargs(encoder_kwargs, "USFMSegmenter")
        self.encoder: USFMEncoder = create_usfm_encoder(
            size=size, img_size=img_size, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs
        )
        depth = len(self.encoder.blocks)
        if out_indices is None:
            out_indices = default_out_indices(depth)
        indices = [int(i) + depth if int(i) < 0 else int(i) for i in out_indices]
        if len(indices) != 4 or any(not 0 <= i < depth for i in indices) or sorted(set(indices)) != indices:
            raise ValueError(
                f"out_indices must be 4 increasing block indices in [0, {depth}), got {tuple(out_indices)}."
            )
        self.out_indices: Tuple[int, ...] = tuple(indices)
        self.num_classes = num_classes

        # the dense head reads raw block outputs: drop the final norms and blocks after the last level, so that
        # every parameter gets a gradient (DistributedDataParallel requires it)
        self.encoder.prune_intermediate_layers(list(self.out_indices), prune_norm=True, prune_head=True)

        dim = self.encoder.embed_dim
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            get_norm_layer(norm, spatial_dims=2, channels=dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

        channels = _DEFAULT_CHANNELS.get(size, 512) if channels is None else channels
        self.decode_head = UPerHead(dim, channels, num_classes, pool_scales=pool_scales, dropout=dropout, norm=norm)
        self.aux_in_index = aux_in_index
        self.aux_head: Optional[FCNHead] = (
            FCNHead(dim, aux_channels or max(channels // 2, 1), num_classes, dropout=dropout, norm=norm)
            if aux_head
            else None
        )

    def forward_pyramid(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The 4 pyramid levels at strides 4, 8, 16, 32: each ``(B, D, H/s, W/s)``.

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.
        """
        features = self.encoder.forward_intermediates(
            x, indices=list(self.out_indices), norm=False, output_fmt="NCHW", intermediates_only=True
        )  # 4 x (B, D, H/16, W/16)
        return [fpn(f) for fpn, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), features)]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Segmentation logits.

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.

        Returns:
            ``(B, K, H, W)`` logits (softmax over K); in training mode with the auxiliary head, the list
            ``[main_logits, aux_logits]``, both ``(B, K, H, W)``.

        Raises:
            ValueError: wrong input shape.
        """
        size = x.shape[-2:]
        levels = self.forward_pyramid(x)
        main = F.interpolate(self.decode_head(levels), size=size, mode="bilinear", align_corners=False)
        if self.training and self.aux_head is not None:
            aux = self.aux_head(levels[self.aux_in_index])
            return [main, F.interpolate(aux, size=size, mode="bilinear", align_corners=False)]
        return main
