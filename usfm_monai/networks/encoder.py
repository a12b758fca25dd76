"""USFM encoder E (eq. 9): a BEiT-style Vision Transformer for grayscale ultrasound.

USFM (Jiao et al., "USFM: A Universal Ultrasound Foundation Model Generalized to Tasks and Organs towards
Label Efficient Image Analysis", arXiv 2401.00153, §3.2.3 eq. 9) pre-trains a ViT-B/16 encoder with masked image
modeling. The authors' encoder (https://github.com/openmedlab/USFM, ``usdsgen/modules/backbone/
vision_transformer.py``) is the BEiT ViT (Bao et al., arXiv 2106.08254): a relative position bias per block, layer
scale (``init_values=0.1``), q/v biases, no absolute position embedding and mean pooling followed by ``fc_norm``.
This module builds that network on :class:`timm.models.beit.Beit` and only changes what ultrasound needs:

- 1 input channel by default, intensity in ``[0, 1]`` (not ImageNet-normalized; the authors' 3-channel,
  ImageNet-normalized weights are folded into this convention by
  :func:`usfm_monai.networks.weights.convert_authors_checkpoint`);
- any input size divisible by the patch size (non-square allowed), checked with a clear ``ValueError``;
- no classifier by default (``num_classes=0``); task heads live in ``mim.py``, ``upernet.py``, ``classifier.py``;
- timm entry points ``usfm_vit_{tiny,small,base,large}_patch16`` that never download anything.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit

__all__ = [
    "USFM_SIZES",
    "USFMEncoder",
    "check_encoder_kwargs",
    "create_usfm_encoder",
    "usfm_vit_tiny_patch16",
    "usfm_vit_small_patch16",
    "usfm_vit_base_patch16",
    "usfm_vit_large_patch16",
]

#: Width, depth and heads of each size; ``base`` is the paper's ViT-B/16 (§4.2).
USFM_SIZES: Dict[str, Dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def _as_hw(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    """Return ``value`` as a ``(height, width)`` pair of positive ints, or raise naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}.")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}.")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")
    return pair


class USFMEncoder(Beit):
    """USFM encoder: timm's BEiT ViT configured as the authors' model, 1 channel, no download.

    The input is ``(B, in_chans, H, W)`` float with intensity in ``[0, 1]`` (8-bit / 255; NOT ImageNet-normalized),
    ``(H, W) == img_size``. Tokens are ``(B, 1 + N, D)`` with the class token first and ``N = (H/16)·(W/16)``.

    Args:
        img_size: input size, an int or ``(H, W)``; each side must be a multiple of ``patch_size``.
        patch_size: patch size (USFM uses 16).
        in_chans: input channels (1 for grayscale ultrasound).
        num_classes: size of the built-in linear head; 0 (default) means no head (``nn.Identity``).
        global_pool: ``"avg"`` (mean of patch tokens, the authors' choice), ``"token"`` or ``""``.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: learn q and v biases (BEiT style, k bias fixed at 0).
        drop_rate: dropout before the head.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth rate of the last block (linearly increasing from 0).
        init_values: layer scale initial value (``gamma_1``/``gamma_2``); 0.1 as the authors.
        use_fc_norm: ``True``: no final token norm, LayerNorm after pooling (the authors' fine-tuning model);
            ``False``: final LayerNorm on every token (the pre-training model, used by the MIM decoder).

    Raises:
        ValueError: ``img_size`` not divisible by ``patch_size``, or a non-positive size.
        TypeError: ``img_size``/``patch_size`` not an int or a pair of ints.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 0,
        global_pool: str = "avg",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        init_values: float = 0.1,
        use_fc_norm: bool = True,
        **kwargs: Any,
    ) -> None:
        hw = _as_hw(img_size, "img_size")
        patch = _as_hw(patch_size, "patch_size")
        if hw[0] % patch[0] or hw[1] % patch[1]:
            raise ValueError(
                f"img_size must be divisible by patch_size {patch_size} on both sides, got img_size={img_size!r}."
            )
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}.")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}).")
        for fixed in ("use_abs_pos_emb", "use_rel_pos_bias", "use_shared_rel_pos_bias"):
            if fixed in kwargs:
                raise ValueError(f"{fixed} is fixed by the USFM architecture and cannot be set, got {kwargs[fixed]!r}.")
        super().__init__(
            img_size=hw,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            init_values=init_values,
            use_abs_pos_emb=False,
            use_rel_pos_bias=True,
            use_shared_rel_pos_bias=False,
            use_fc_norm=use_fc_norm,
            **kwargs,
        )
        # Plain-container record of the constructor arguments: written next to exported weights so that
        # ``USFMEncoder(**config)`` rebuilds the same network (checkpoints hold no pickled objects).
        self.init_config: Dict[str, Any] = dict(
            img_size=list(hw),
            patch_size=patch_size if isinstance(patch_size, int) else list(patch),
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=float(mlp_ratio),
            qkv_bias=qkv_bias,
            drop_rate=float(drop_rate),
            attn_drop_rate=float(attn_drop_rate),
            drop_path_rate=float(drop_path_rate),
            init_values=float(init_values),
            use_fc_norm=use_fc_norm,
        )
        self.init_config.update(
            {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str)) and k not in ("device", "dtype")}
        )

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid ``(H/16, W/16)`` of the configured input size."""
        return tuple(self.patch_embed.grid_size)

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the expected and found shape instead of timm's assertion."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"USFMEncoder expects a torch.Tensor (B, C, H, W), got {type(x).__name__}.")
        expected = (self.in_chans, *self.patch_embed.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"USFMEncoder expects input of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(in_chans, *img_size), got {tuple(x.shape)}."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (and the final norm when ``use_fc_norm=False``).

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.

        Returns:
            ``(B, 1 + N, D)`` tokens, class token first, ``N = (H/16)·(W/16)``.

        Raises:
            ValueError: wrong input shape.
        """
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of selected blocks, for dense heads (UPerNet, the MIM decoder, CycleGAN branches).

        Args:
            x: ``(B, in_chans, H, W)`` float, intensity in ``[0, 1]``.
            indices: block indices (negative counts from the end), or an int ``n`` for the last ``n`` blocks,
                or ``None`` for all blocks.
            return_prefix_tokens: also return the class token of each level.
            norm: apply the final token norm (an identity when ``use_fc_norm=True``).
            stop_early: skip the blocks after the last requested one.
            output_fmt: ``"NCHW"`` → each level ``(B, D, H/16, W/16)``; ``"NLC"`` → ``(B, N, D)``.
            intermediates_only: return only the list of levels.

        Returns:
            The list of levels, or ``(final_tokens (B, 1 + N, D), levels)``.

        Raises:
            ValueError: wrong input shape or ``output_fmt``.
        """
        self._check_input(x)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        return super().forward_intermediates(
            x,
            indices=indices,
            return_prefix_tokens=return_prefix_tokens,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
        )


def check_encoder_kwargs(encoder_kwargs: Optional[Mapping[str, Any]], owner: str) -> Dict[str, Any]:
    """Copy of a wrapper's ``encoder_kwargs``, refusing keys that the wrapper already takes as arguments.

    Raises:
        ValueError: ``encoder_kwargs`` repeats ``size``, ``img_size``, ``in_chans`` or ``drop_path_rate``.
    """
    kwargs = dict(encoder_kwargs or {})
    for named in ("size", "img_size", "in_chans", "drop_path_rate"):
        if named in kwargs:
            raise ValueError(
                f"{owner}: pass {named} as its own argument, not in encoder_kwargs (got {kwargs[named]!r})."
            )
    return kwargs


def create_usfm_encoder(
    size: str = "base",
    img_size: Union[int, Sequence[int]] = 224,
    in_chans: int = 1,
    drop_path_rate: float = 0.1,
    **kwargs: Any,
) -> USFMEncoder:
    """Build a :class:`USFMEncoder` of a named size (a plain function a bundle config can call).

    Args:
        size: ``"tiny"`` (192/12/3), ``"small"`` (384/12/6), ``"base"`` (768/12/12, the paper's) or
            ``"large"`` (1024/24/16) as width/depth/heads; any of these can still be overridden by ``kwargs``.
        img_size: input size, int or ``(H, W)``, multiple of 16.
        in_chans: input channels.
        drop_path_rate: stochastic depth rate.
        kwargs: any other :class:`USFMEncoder` argument.

    Raises:
        ValueError: unknown ``size`` (and see :class:`USFMEncoder`).
    """
    if size not in USFM_SIZES:
        raise ValueError(f"size must be one of {sorted(USFM_SIZES)}, got {size!r}.")

    args = dict(USFM_SIZES[size], img_size=img_size, in_chans=in_chans, drop_path_rate=drop_path_rate)
    return USFMEncoder(**dict(args, **kwargs))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # No url / hf_hub_id: these entry points never download; weights come through networks.weights.
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (1, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": (0.0,),
        "std": (1.0,),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "cc-by-nc-4.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {f"usfm_vit_{size}_patch16": _cfg() for size in ("tiny", "small", "base", "large")}
)


def _create_usfm_encoder(variant: str, pretrained: bool = False, **kwargs: Any) -> USFMEncoder:
    if pretrained:
        raise ValueError(
            f"{variant} has no downloadable weights (pretrained=True was given); build it with pretrained=False "
            "and load a file with usfm_monai.networks.weights.load_encoder_weights."
        )
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        USFMEncoder,
        variant,
        pretrained=False,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def usfm_vit_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> USFMEncoder:
    """USFM ViT-Tiny/16 (192/12/3)."""
    return _create_usfm_encoder("usfm_vit_tiny_patch16", pretrained, **dict(USFM_SIZES["tiny"], **kwargs))


@register_model
def usfm_vit_small_patch16(pretrained: bool = False, **kwargs: Any) -> USFMEncoder:
    """USFM ViT-Small/16 (384/12/6)."""
    return _create_usfm_encoder("usfm_vit_small_patch16", pretrained, **dict(USFM_SIZES["small"], **kwargs))


@register_model
def usfm_vit_base_patch16(pretrained: bool = False, **kwargs: Any) -> USFMEncoder:
    """USFM ViT-Base/16 (768/12/12), the paper's encoder."""
    return _create_usfm_encoder("usfm_vit_base_patch16", pretrained, **dict(USFM_SIZES["base"], **kwargs))


@register_model
def usfm_vit_large_patch16(pretrained: bool = False, **kwargs: Any) -> USFMEncoder:
    """USFM ViT-Large/16 (1024/24/16)."""
    return _create_usfm_encoder("usfm_vit_large_patch16", pretrained, **dict(USFM_SIZES["large"], **kwargs))
