"""The one home of encoder weights: find the encoder, export it, load any supported layout and say what was done.

- :func:`unwrap_model` strips ``DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` wrappers and
  :func:`find_encoder` finds the USFM/BEiT encoder in a model (the model itself or its ``encoder``); every module
  of the package that needs either imports them from here.
- :func:`export_encoder` writes layout (a) below.
- :func:`load_encoder_weights` reads layouts (a)-(c).

:func:`load_encoder_weights` accepts:

(a) our encoder export ``{"state_dict": encoder_state, "config": {...}}`` (:func:`export_encoder`);
(b) a training checkpoint holding a whole network whose encoder lives under a prefix, e.g. a MONAI/Ignite
    checkpoint ``{"network": {"encoder.blocks.0...": ...}, "optimizer": ...}`` or ``{"model": ...}``, possibly
    saved from ``DistributedDataParallel`` (``module.``) or a ``torch.compile``-d module (``_orig_mod.``);
(c) the authors' released ``USFM_latest.pth`` (https://github.com/openmedlab/USFM): the encoder-only state dict of a
    BEiT ViT-B/16 pre-trained on 3-channel ImageNet-normalized input, with ONE shared relative position bias
    ``rel_pos_bias.relative_position_bias_table`` (+ index), a ``mask_token`` and the pre-training final ``norm``.

Foreign weights go through pure ``state_dict -> state_dict`` functions in the style of
``timm.models.beit.checkpoint_filter_fn``: :func:`checkpoint_filter_fn` recognizes a layout by its signature key and
dispatches to a named converter (:func:`convert_authors_checkpoint` for (c)), then adapts the result to the target
model (recomputed buffers dropped, relative position tables resized to the target grid, head / final-norm
transitions). Nothing is skipped silently: every change is listed in the :class:`WeightLoadReport`, missing and
unexpected keys are logged, and ``strict=True`` raises a ``ValueError`` listing them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from usfm_monai.io import load_torch_file, save_torch_atomic
from usfm_monai.networks.encoder import USFMEncoder

__all__ = [
    "WeightLoadReport",
    "unwrap_model",
    "find_encoder",
    "export_encoder",
    "load_encoder_weights",
    "checkpoint_filter_fn",
    "convert_authors_checkpoint",
    "resize_rel_pos_bias_table",
]

logger = logging.getLogger(__name__)

#: Signature key of the authors' layout (c): BEiT pre-training shares one relative position bias over all blocks.
AUTHORS_SHARED_TABLE_KEY = "rel_pos_bias.relative_position_bias_table"
_ENCODER_SIGNATURE = "patch_embed.proj.weight"
_TABLE_SUFFIX = ".relative_position_bias_table"
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_PLAIN_SCALARS = (str, int, float, bool, type(None))
# Container keys under which training scripts nest a network's state dict (MONAI/Ignite, timm, BEiT, Lightning).
_CONTAINER_KEYS = ("network", "model", "state_dict", "module", "net", "model_state_dict")
# BEiT appends 3 rows to the flat table: cls->token, token->cls, cls->cls (timm gen_relative_position_index).
_NUM_EXTRA_TOKENS = 3

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class WeightLoadReport:
    """What :func:`load_encoder_weights` did.

    Attributes:
        source: file path, or ``"<state_dict>"`` for an in-memory mapping.
        layout: ``"usfm_monai_export"`` (a), ``"training_checkpoint"`` (b), ``"authors_usfm"`` (c) or
            ``"state_dict"`` (a bare encoder state dict).
        prefix: key prefix under which the encoder was found (``""`` for none).
        loaded: number of tensors copied into the model.
        missing: model keys the checkpoint did not provide.
        unexpected: checkpoint keys the model has no slot for.
        resized: tensors resized to the model, as ``"key: (old shape) -> (new shape)"``.
        converted: other conversions, one sentence each (folded normalization, copied shared table, dropped keys).
        ignored: number of checkpoint entries outside the encoder (other prefixes, optimizer state, non-tensors).
    """

    source: str
    layout: str
    prefix: str = ""
    loaded: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    converted: List[str] = field(default_factory=list)
    ignored: int = 0

    def summary(self) -> str:
        """One multi-line, human-readable account of the load."""
        lines = [
            f"encoder weights from {self.source} (layout {self.layout!r}, prefix {self.prefix!r}): "
            f"{self.loaded} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.resized)} resized, {self.ignored} entries outside the encoder ignored"
        ]
        lines += [f"  converted: {c}" for c in self.converted]
        lines += [f"  resized: {r}" for r in self.resized]
        if self.missing:
            lines.append(f"  missing: {self.missing}")
        if self.unexpected:
            lines.append(f"  unexpected: {self.unexpected}")
        return "\n".join(lines)


@dataclass
class _ConversionLog:
    resized: List[str] = field(default_factory=list)
    converted: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# models: wrappers, the encoder, export (layout (a))
# ----------------------------------------------------------------------------------------------------------------


def unwrap_model(model: Any) -> Any:
    """``model`` without its ``DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` wrappers.

    Anything else (an optimizer, a scheduler, a plain module) is returned as it is, so checkpoint code may pass
    every object it saves.
    """
    for _ in range(8):  # wrappers nest at most a few deep (compile(DDP(model)))
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch._dynamo OptimizedModule
        else:
            break
    return model


def _is_encoder(module: Any) -> bool:
    return isinstance(module, nn.Module) and hasattr(module, "patch_embed") and hasattr(module, "blocks")


def find_encoder(model: nn.Module) -> Tuple[nn.Module, str]:
    """The USFM/BEiT encoder of ``model`` and its parameter-name prefix inside the unwrapped ``model``.

    Args:
        model: an encoder (a module with ``patch_embed`` and ``blocks``), or a module holding one as ``encoder``
            (``USFMClassifier``, ``USFMSegmenter``, ``USFMMaskedImageModel``), possibly wrapped by
            :func:`unwrap_model`'s wrappers.

    Returns:
        ``(encoder, "")`` when ``model`` is the encoder, ``(model.encoder, "encoder.")`` otherwise.

    Raises:
        TypeError: no encoder found.
    """
    root = unwrap_model(model)
    if _is_encoder(root):
        return root, ""
    encoder = unwrap_model(getattr(root, "encoder", None))
    if _is_encoder(encoder):
        return encoder, "encoder."
    raise TypeError(
        f"model must be a USFM/BEiT encoder (with patch_embed and blocks) or have one as its 'encoder' attribute, "
        f"got {type(root).__name__}."
    )


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


def export_encoder(model: nn.Module, path: PathLike, config: Optional[Mapping[str, Any]] = None) -> str:
    """Write the encoder as ``{"state_dict": ..., "config": {...}}`` (layout (a)), atomically.

    The file holds tensors and plain containers only, so it loads with ``torch.load(..., weights_only=True)``
    and :func:`load_encoder_weights`. It is written to a temporary file in the same folder and moved into place
    with ``os.replace``, so ``path`` is never half-written.

    Args:
        model: a :class:`~usfm_monai.networks.encoder.USFMEncoder` or a model holding one as ``encoder`` (e.g.
            ``USFMMaskedImageModel``), possibly DDP-wrapped or compiled (:func:`find_encoder`).
        path: destination file; its folder must exist.
        config: extra plain metadata (e.g. ``{"epoch": 100}``), merged over the encoder's ``init_config``
            (``USFMEncoder(**config)`` rebuilds the network when no extra key is given).

    Returns:
        ``path`` as a string.

    Raises:
        TypeError: ``model`` has no USFM encoder, or ``config`` is not plain.
        FileNotFoundError: the destination folder does not exist.
    """
    try:
        encoder = find_encoder(model)[0]
    except TypeError:
        encoder = None
    if not isinstance(encoder, USFMEncoder):
        raise TypeError(
            f"model must be a USFMEncoder or have one as 'encoder', got {type(unwrap_model(model)).__name__}."
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder of the export path does not exist: {folder!r}.")
    full_config = _check_plain(dict(encoder.init_config, **dict(config or {})), "config")
    state = {k: v.detach().to("cpu").clone() for k, v in encoder.state_dict().items()}
    save_torch_atomic({"state_dict": state, "config": full_config}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# relative position bias tables
# ----------------------------------------------------------------------------------------------------------------


def _geometric_sum(q: float, n: int) -> float:
    return float(n) if q == 1.0 else (q**n - 1.0) / (q - 1.0)


def _source_positions(src_len: int, dst_len: int) -> torch.Tensor:
    """Where the ``src_len`` source offsets sit on the target offset axis ``-(dst_len//2) .. dst_len//2``.

    BEiT (``unilm/beit/run_class_finetuning.py``) keeps the near-center spacing at 1 and grows it geometrically,
    placing source offset ``k > 0`` at ``1 + q + ... + q**(k-1)`` with ``q`` solved so that the outermost source
    offset lands on the outermost target offset. ``q = 1`` is the identity, so an unchanged axis stays exact;
    ``q < 1`` shrinks (smaller target grid) with the same rule.
    """
    n, d = src_len // 2, dst_len // 2
    if n == d:
        return torch.arange(-n, n + 1, dtype=torch.float64)
    if n == 0 or d == 0:
        # a 1-wide axis has only the zero offset: stretch linearly (nothing else is defined)
        scale = d / n if n else 0.0
        return torch.arange(-n, n + 1, dtype=torch.float64) * scale
    if n == 1:
        return torch.tensor([-float(d), 0.0, float(d)], dtype=torch.float64)
    lo, hi = 1e-9, 2.0
    while _geometric_sum(hi, n) < d:
        hi *= 2.0
    for _ in range(200):  # bisection to float64 resolution; gp is increasing in q
        mid = 0.5 * (lo + hi)
        if _geometric_sum(mid, n) > d:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-13:
            break
    q = 0.5 * (lo + hi)
    dis = [_geometric_sum(q, k) for k in range(1, n + 1)]
    return torch.tensor([-v for v in reversed(dis)] + [0.0] + dis, dtype=torch.float64)


def _linear_weights(src_pos: torch.Tensor, dst_pos: torch.Tensor) -> torch.Tensor:
    """``(len(dst_pos), len(src_pos))`` matrix of 1-D linear interpolation, clamped (no NaN) outside the knots."""
    weights = torch.zeros(len(dst_pos), len(src_pos), dtype=torch.float64)
    if len(src_pos) == 1:
        weights[:, 0] = 1.0
        return weights
    right = torch.searchsorted(src_pos, dst_pos).clamp(1, len(src_pos) - 1)
    left = right - 1
    frac = ((dst_pos - src_pos[left]) / (src_pos[right] - src_pos[left])).clamp(0.0, 1.0)
    rows = torch.arange(len(dst_pos))
    weights[rows, left] = 1.0 - frac
    weights[rows, right] += frac
    return weights


def resize_rel_pos_bias_table(
    table: torch.Tensor,
    src_window: Sequence[int],
    dst_window: Sequence[int],
    num_extra_tokens: int = _NUM_EXTRA_TOKENS,
) -> torch.Tensor:
    """Resize a flat BEiT relative position bias table from one patch grid to another.

    The table holds one bias per relative offset ``(dy, dx)``, ``dy ∈ [-(Wh-1), Wh-1]``, ``dx ∈ [-(Ww-1), Ww-1]``,
    row ``(dy + Wh - 1)·(2Ww - 1) + (dx + Ww - 1)`` (timm ``gen_relative_position_index``), followed by
    ``num_extra_tokens`` class-token rows that are copied unchanged. Each axis is resampled on its own with BEiT's
    geometric offsets (see ``_source_positions``) and linear interpolation, i.e. bilinear on the 2-D table.
    Kept instead of ``timm.layers.resize_rel_pos_bias_table`` (timm 1.0.31): on N(0, 1) tables timm's agrees to
    1.3e-4 for 224 -> 256 px (14 -> 16 grid), but its ratio search starts at 1.01, so it moves an unchanged axis
    (max difference 4.0 for 14x14 -> 14x16, where ours is exact) and cannot shrink (4.4 for 14 -> 8). Unlike the
    authors' ``remap_pretrained_keys_vit`` the table is not transposed and no NaN is produced at the border.

    Args:
        table: ``(L_src, num_heads)`` float, ``L_src = (2Wh-1)(2Ww-1) + num_extra_tokens`` of ``src_window``.
        src_window: source patch grid ``(Wh, Ww)``.
        dst_window: target patch grid ``(Wh', Ww')``.
        num_extra_tokens: class-token rows at the end of the table.

    Returns:
        ``(L_dst, num_heads)`` table with ``table``'s dtype; ``table`` itself when the grids are equal.

    Raises:
        ValueError: ``table`` does not have the size implied by ``src_window``.
    """
    src_hw = (2 * int(src_window[0]) - 1, 2 * int(src_window[1]) - 1)
    dst_hw = (2 * int(dst_window[0]) - 1, 2 * int(dst_window[1]) - 1)
    if table.ndim != 2 or table.shape[0] != src_hw[0] * src_hw[1] + num_extra_tokens:
        raise ValueError(
            f"relative position bias table of shape {tuple(table.shape)} does not match source window "
            f"{tuple(src_window)}: expected ({src_hw[0] * src_hw[1] + num_extra_tokens}, num_heads)."
        )
    if src_hw == dst_hw:
        return table
    num_heads = table.shape[1]
    grid = table[: table.shape[0] - num_extra_tokens].reshape(src_hw[0], src_hw[1], num_heads)  # 2Wh-1, 2Ww-1, nH
    extra = table[table.shape[0] - num_extra_tokens :]
    ys = _source_positions(src_hw[0], dst_hw[0])
    xs = _source_positions(src_hw[1], dst_hw[1])
    wy = _linear_weights(ys, torch.arange(-(dst_hw[0] // 2), dst_hw[0] // 2 + 1, dtype=torch.float64))
    wx = _linear_weights(xs, torch.arange(-(dst_hw[1] // 2), dst_hw[1] // 2 + 1, dtype=torch.float64))
    values = grid.detach().to(device="cpu", dtype=torch.float64)
    # separable bilinear interpolation: rows with wy, then columns with wx
    resized = torch.einsum("ay,yxh,bx->abh", wy, values, wx).reshape(-1, num_heads)  # (2Wh'-1)(2Ww'-1), nH
    resized = resized.to(device=table.device, dtype=table.dtype)
    return torch.cat([resized, extra], dim=0)


def _infer_window(num_rows: int, fallback: Tuple[int, int], key: str) -> Tuple[int, int]:
    """Source grid of a flat table: the target's if the size fits, else a square one, else an error."""
    spatial = num_rows - _NUM_EXTRA_TOKENS
    if spatial == (2 * fallback[0] - 1) * (2 * fallback[1] - 1):
        return fallback
    side = math.isqrt(max(spatial, 0))
    if side * side == spatial and side % 2 == 1:
        return ((side + 1) // 2, (side + 1) // 2)
    raise ValueError(
        f"cannot infer the patch grid of {key!r} ({num_rows} rows): it is neither the target grid {fallback} nor "
        "square. Load an export with a 'config' (img_size, patch_size) so that the source grid is known."
    )


# ----------------------------------------------------------------------------------------------------------------
# converters (pure: state_dict -> state_dict)
# ----------------------------------------------------------------------------------------------------------------


def _strip_wrapper_prefixes(state_dict: Mapping) -> Dict[str, Any]:
    """Drop the ``module.`` (DDP) / ``_orig_mod.`` (``torch.compile``) prefix that ALL keys share, repeatedly."""
    state = dict(state_dict)
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _unwrap_state_dict(state_dict: Mapping) -> Tuple[Dict[str, Any], int, int]:
    """timm-style unwrapping of ``model`` / ``state_dict`` / ``module`` containers and of the wrapper prefixes.

    Returns ``(state, containers descended, sibling entries left behind)``.
    """
    current: Any = state_dict
    depth = siblings = 0
    for _ in range(4):
        if not isinstance(current, Mapping) or all(isinstance(v, torch.Tensor) for v in current.values()):
            break
        name = next((k for k in _CONTAINER_KEYS if isinstance(current.get(k), Mapping)), None)
        if name is None:
            break
        siblings += len(current) - 1
        depth += 1
        current = current[name]
    if not isinstance(current, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(current).__name__}.")
    return _strip_wrapper_prefixes(current), depth, siblings


def _fold_imagenet_normalization(
    weight: torch.Tensor, bias: torch.Tensor, in_chans: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold ``normalize(x replicated ×3)`` into the patch embedding for ``x`` in [0, 1].

    The 3-channel network sees ``(x - m_c) / s_c`` on channel ``c``. The patch convolution has stride = kernel
    (no padding), so ``Σ_c W_c * (x - m_c)/s_c + b = (Σ_c W_c/s_c) * x + b - Σ_{c,i,j} W_c[i,j]·m_c/s_c``
    exactly: ``W' = Σ_c W_c/s_c`` (1 channel, or ``W_c/s_c`` per channel for 3) and
    ``b' = b - Σ_{c,i,j} W_c[i,j]·m_c/s_c``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(
            f"authors' patch_embed.proj.weight must be (D, 3, p, p) for RGB input, got {tuple(weight.shape)}."
        )
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float64).view(1, 3, 1, 1)
    w = weight.to(torch.float64) / std  # D, 3, p, p
    b = bias.to(torch.float64) - (w * mean).sum(dim=(1, 2, 3))  # D
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)  # D, 1, p, p
    elif in_chans != 3:
        raise ValueError(
            f"the authors' RGB patch embedding can be folded into a 1- or 3-channel encoder, the target has "
            f"in_chans={in_chans}."
        )
    return w.to(weight.dtype), b.to(bias.dtype)


def _convert_authors_usfm(state_dict: Mapping, model: nn.Module, log: _ConversionLog) -> StateDict:
    """Authors' layout (c) -> our encoder layout, before the generic adaptation."""
    if AUTHORS_SHARED_TABLE_KEY not in state_dict:
        raise KeyError(
            f"not the authors' USFM layout: the signature key {AUTHORS_SHARED_TABLE_KEY!r} is missing "
            f"(found e.g. {sorted(state_dict)[:5]})."
        )
    encoder = find_encoder(model)[0]
    out = dict(state_dict)
    shared = out.pop(AUTHORS_SHARED_TABLE_KEY)
    out.pop("rel_pos_bias.relative_position_index", None)
    blocks = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    summed = []
    for i in blocks:
        key = f"blocks.{i}.attn.relative_position_bias_table"
        if key in out:
            # both biases are added to the same attention logits, so their sum is the per-block bias
            out[key] = out[key] + shared
            summed.append(i)
        else:
            out[key] = shared.clone()
    log.converted.append(
        f"copied the shared {AUTHORS_SHARED_TABLE_KEY} {tuple(shared.shape)} into the attention of "
        f"{len(blocks)} blocks" + (f" (added to the own tables of blocks {summed})" if summed else "")
    )
    if "patch_embed.proj.weight" in out and "patch_embed.proj.bias" in out:
        out["patch_embed.proj.weight"], out["patch_embed.proj.bias"] = _fold_imagenet_normalization(
            out["patch_embed.proj.weight"], out["patch_embed.proj.bias"], int(encoder.patch_embed.proj.in_channels)
        )
        log.converted.append(
            f"folded the RGB patch embedding and ImageNet normalization (mean {IMAGENET_DEFAULT_MEAN}, std "
            f"{IMAGENET_DEFAULT_STD}) into a {encoder.patch_embed.proj.in_channels}-channel embedding for input in "
            "[0, 1]"
        )
    return out


def _adapt_to_model(
    state_dict: Mapping,
    model: nn.Module,
    log: _ConversionLog,
    source_window: Optional[Tuple[int, int]] = None,
) -> StateDict:
    """Generic adaptation of an encoder state dict to ``model`` (any layout, after its converter)."""
    encoder = find_encoder(model)[0]
    target = encoder.state_dict()
    out: StateDict = {}
    dropped_index = 0
    for key, value in state_dict.items():
        if key.endswith("relative_position_index"):
            dropped_index += 1  # recomputed buffer
            continue
        out[key] = value
    if dropped_index:
        log.converted.append(f"dropped {dropped_index} relative_position_index buffers (recomputed by the model)")

    if "mask_token" in out and "mask_token" not in target:
        out.pop("mask_token")
        log.converted.append("dropped mask_token (used only by masked-image pre-training)")

    head_keys = [k for k in out if k.startswith("head.")]
    if head_keys and not any(k.startswith("head.") for k in target):
        for k in head_keys:
            out.pop(k)
        log.converted.append(f"dropped the classifier head {head_keys} (the target has no head)")

    norm_keys = [k for k in out if k.startswith("norm.")]
    fc_norm_keys = [k for k in out if k.startswith("fc_norm.")]
    if norm_keys and not any(k.startswith("norm.") for k in target):
        for k in norm_keys:
            out.pop(k)
        log.converted.append(
            f"dropped the per-token final norm {norm_keys} (the target pools first: it has no per-token norm)"
        )
        if not fc_norm_keys and "fc_norm.weight" in target:
            # BEiT / MAE / the authors' fine-tuning: the pooled-feature norm starts as an identity affine map
            out["fc_norm.weight"] = torch.ones_like(target["fc_norm.weight"])
            out["fc_norm.bias"] = torch.zeros_like(target["fc_norm.bias"])
            log.converted.append(
                "initialized fc_norm to weight=1, bias=0 (pre-training encoder -> mean-pooled fine-tuning encoder, "
                "as in BEiT and the authors' fine-tuning)"
            )
    if fc_norm_keys and not any(k.startswith("fc_norm.") for k in target):
        for k in fc_norm_keys:
            out.pop(k)
        log.converted.append(f"dropped the pooled-feature norm {fc_norm_keys} (the target has none)")

    for key in [k for k in out if k.endswith(_TABLE_SUFFIX) and k in target]:
        module = encoder.get_submodule(key[: -len(_TABLE_SUFFIX)])
        dst_window = tuple(int(s) for s in module.window_size)
        value = out[key]
        if tuple(value.shape) == tuple(target[key].shape) and source_window in (None, dst_window):
            continue
        src_window = source_window or _infer_window(value.shape[0], dst_window, key)
        resized = resize_rel_pos_bias_table(value, src_window, dst_window)
        if resized is not value:
            log.resized.append(
                f"{key}: {tuple(value.shape)} -> {tuple(resized.shape)} (grid {tuple(src_window)} -> {dst_window})"
            )
        out[key] = resized

    if _ENCODER_SIGNATURE in out and _ENCODER_SIGNATURE in target:
        found, expected = tuple(out[_ENCODER_SIGNATURE].shape), tuple(target[_ENCODER_SIGNATURE].shape)
        if found != expected:
            raise ValueError(
                f"{_ENCODER_SIGNATURE}: checkpoint {found} vs model {expected} (out_channels, in_chans, patch, patch); "
                "only the authors' RGB layout is converted to another channel count, and the patch size is fixed."
            )
    return out


def convert_authors_checkpoint(state_dict: Mapping, model: nn.Module) -> StateDict:
    """Convert the authors' released ``USFM_latest.pth`` state dict for ``model`` (layout (c)).

    Unwraps ``model`` / ``state_dict`` / ``module`` containers and a ``module.`` prefix, copies the ONE shared
    ``rel_pos_bias.relative_position_bias_table`` into every block's ``attn.relative_position_bias_table``, folds
    the RGB patch embedding and ImageNet normalization into ``model``'s 1-channel embedding (so that the result on a
    grayscale ``x`` in [0, 1] equals the authors' network on ``normalize(x replicated ×3)``), drops recomputed
    buffers and ``mask_token``, resizes the tables to ``model``'s grid (:func:`resize_rel_pos_bias_table`), drops
    the head when ``model`` has none, and replaces the pre-training per-token ``norm`` by an identity ``fc_norm``
    when ``model`` pools first (the authors' fine-tuning model).

    Args:
        state_dict: the authors' checkpoint contents (tensors are not modified).
        model: the target :class:`~usfm_monai.networks.encoder.USFMEncoder`, or a module with one as ``encoder``.

    Returns:
        A new state dict in ``model``'s layout.

    Raises:
        KeyError: the signature key ``rel_pos_bias.relative_position_bias_table`` is absent.
        ValueError: the patch embedding is not RGB or the target has neither 1 nor 3 channels.
    """
    log = _ConversionLog()
    out = _convert_authors_usfm(_unwrap_state_dict(state_dict)[0], model, log)
    out = _adapt_to_model(out, model, log)
    for note in log.converted + log.resized:
        logger.info("convert_authors_checkpoint: %s", note)
    return out


def _filter(
    state_dict: Mapping, model: nn.Module, log: _ConversionLog, source_window: Optional[Tuple[int, int]]
) -> StateDict:
    state = _unwrap_state_dict(state_dict)[0]
    if AUTHORS_SHARED_TABLE_KEY in state:
        state = _convert_authors_usfm(state, model, log)
    return _adapt_to_model(state, model, log, source_window)


def checkpoint_filter_fn(
    state_dict: Mapping, model: nn.Module, source_window: Optional[Sequence[int]] = None
) -> StateDict:
    """timm-style filter: recognize the layout of an encoder state dict and convert it for ``model``.

    The authors' layout is recognized by ``rel_pos_bias.relative_position_bias_table`` and sent to
    :func:`convert_authors_checkpoint`; any other encoder state dict (ours) only gets the generic adaptation
    (buffers dropped, tables resized to ``model``'s grid, head and final-norm transitions).

    Args:
        state_dict: an encoder state dict, possibly wrapped in ``model``/``state_dict``/``module``.
        model: the target encoder (or a module with one as ``encoder``).
        source_window: patch grid ``(Wh, Ww)`` the tables were trained for; inferred (target grid or square) if
            ``None``.

    Returns:
        A new state dict in ``model``'s layout.
    """
    window = tuple(int(v) for v in source_window) if source_window is not None else None
    return _filter(state_dict, model, _ConversionLog(), window)


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------


def _source_window_from_config(config: Mapping, source: str) -> Optional[Tuple[int, int]]:
    if "img_size" not in config:
        return None
    img, patch = config["img_size"], config.get("patch_size", 16)
    img = (img, img) if isinstance(img, int) else tuple(img)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if len(img) != 2 or len(patch) != 2:
        raise ValueError(f"{source}: config img_size/patch_size must be ints or pairs, got {img!r}/{patch!r}.")
    return (int(img[0]) // int(patch[0]), int(img[1]) // int(patch[1]))


def _select_encoder(
    checkpoint: Any, prefix: Optional[str], source: str
) -> Tuple[Dict[str, torch.Tensor], str, str, int, Optional[Tuple[int, int]]]:
    """Find the encoder state dict in a loaded checkpoint: ``(state, layout, prefix, ignored, source_window)``."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{source}: expected a checkpoint dict, got {type(checkpoint).__name__}.")
    source_window = None
    ignored = 0
    if isinstance(checkpoint.get("state_dict"), Mapping) and isinstance(checkpoint.get("config"), Mapping):
        layout = "usfm_monai_export"
        source_window = _source_window_from_config(checkpoint["config"], source)
        state = _strip_wrapper_prefixes(checkpoint["state_dict"])
    else:
        state, depth, ignored = _unwrap_state_dict(checkpoint)
        layout = "training_checkpoint" if depth else "state_dict"
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    ignored += len(state) - len(tensors)

    if prefix is None:
        candidates = sorted({k[: -len(_ENCODER_SIGNATURE)] for k in tensors if k.endswith(_ENCODER_SIGNATURE)})
        if not candidates:
            raise ValueError(
                f"{source}: no encoder found: expected a key ending in {_ENCODER_SIGNATURE!r}, found keys such as "
                f"{sorted(tensors)[:8]}."
            )
        if len(candidates) > 1:
            raise ValueError(
                f"{source}: several encoders found under prefixes {candidates}; pass prefix= to choose one."
            )
        prefix = candidates[0]
    selected = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not selected:
        raise KeyError(f"{source}: no key starts with prefix {prefix!r}; found keys such as {sorted(tensors)[:8]}.")
    ignored += len(tensors) - len(selected)
    if prefix:
        layout = "training_checkpoint" if layout == "state_dict" else layout
    if AUTHORS_SHARED_TABLE_KEY in selected:
        layout = "authors_usfm"
    return selected, layout, prefix, ignored, source_window


def existing_encoder_file(path: PathLike) -> str:
    """``path`` as a string, or ``FileNotFoundError`` saying how to make an encoder file when it does not exist."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"encoder checkpoint file not found: {path!r}. Make one with the pretrain_usfm bundle "
            "(models/usfm_encoder.pt) or from the authors' release with `usfm-monai convert_authors_weights`."
        )
    return path


def load_encoder_weights(
    model: nn.Module,
    path_or_state_dict: Union[PathLike, Mapping],
    strict: bool = True,
    prefix: Optional[str] = None,
) -> WeightLoadReport:
    """Load encoder weights of any supported layout into ``model`` and report what was done.

    Args:
        model: a :class:`~usfm_monai.networks.encoder.USFMEncoder` (or a module with one as ``encoder``).
        path_or_state_dict: a checkpoint file (loaded with ``torch.load(..., map_location="cpu",
            weights_only=True)``) or its already-loaded contents; layouts (a), (b) and (c) of this module.
        strict: raise when keys are missing or unexpected (after conversion). ``False`` loads what matches and
            logs the rest as a warning.
        prefix: key prefix of the encoder inside a whole-network checkpoint (e.g. ``"encoder."``); found
            automatically from the ``patch_embed.proj.weight`` key when ``None``.

    Returns:
        A :class:`WeightLoadReport` (also logged).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not a torch file, or refused by ``weights_only=True`` (the file and the
            cause are named, :func:`usfm_monai.io.load_torch_file`).
        ValueError: ``strict`` and keys are missing/unexpected (all listed), a shape cannot be matched, or the
            encoder cannot be located in the checkpoint.
        KeyError: ``prefix`` matches no key.
        TypeError: the checkpoint is not a mapping or ``model`` is not an encoder.
    """
    encoder = find_encoder(model)[0]
    if isinstance(path_or_state_dict, Mapping):
        source, checkpoint = "<state_dict>", path_or_state_dict
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        source = existing_encoder_file(path_or_state_dict)
        checkpoint = load_torch_file(source, "encoder weights")
    else:
        raise TypeError(
            f"path_or_state_dict must be a file path or a mapping, got {type(path_or_state_dict).__name__}."
        )

    state, layout, used_prefix, ignored, source_window = _select_encoder(checkpoint, prefix, source)
    log = _ConversionLog()
    state = _filter(state, encoder, log, source_window)

    target = encoder.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if mismatched:
        raise ValueError(f"{source}: shapes do not match the model after conversion: {mismatched}.")
    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    report = WeightLoadReport(
        source=source,
        layout=layout,
        prefix=used_prefix,
        loaded=len(state) - len(unexpected),
        missing=missing,
        unexpected=unexpected,
        resized=log.resized,
        converted=log.converted,
        ignored=ignored,
    )
    if strict and (missing or unexpected):
        raise ValueError(
            f"{source} (layout {layout!r}) does not match the encoder (strict=True): missing keys {missing}, "
            f"unexpected keys {unexpected}. Pass strict=False to load the matching keys only."
        )
    encoder.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    logger.info(report.summary())
    if missing or unexpected:
        logger.warning(
            "%s: %d missing keys %s and %d unexpected keys %s were not loaded (strict=False).",
            source,
            len(missing),
            missing,
            len(unexpected),
            unexpected,
        )
    return report
