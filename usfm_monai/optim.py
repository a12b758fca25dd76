"""Layer-wise learning-rate decay for fine-tuning USFM (§3.3 "adaptable pre-trained backbone", Fig. 5a).

"Shallower layers have smaller optimization weights ... deeper layers have larger optimization weights": BEiT's
layer-wise decay (Bao et al., arXiv 2106.08254; ``unilm/beit/optim_factory.py``). Layer ids follow BEiT's
``get_num_layer_for_vit``: patch embedding and class token = 0, block ``i`` = ``i + 1``, everything after the last
block (final norms, and every parameter outside the encoder: decoders, heads) = ``num_layers + 1``; a parameter
of layer ``l`` gets ``lr * layer_decay ** (num_layers + 1 - l)``.

Unlike ``timm.optim.param_groups_layer_decay`` (which only records ``lr_scale`` for timm's own schedulers and
needs ``group_matcher`` on the top-level model) and the authors' code (which computes the scales and then ignores
them), each group's ``"lr"`` is already scaled, so any ``torch.optim`` optimizer and any ``LambdaLR``-based schedule
(e.g. ``monai.optimizers.WarmupCosineSchedule``, which multiplies each group's initial ``lr``) applies the decay.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Collection, Dict, List, Tuple

from torch import nn

from usfm_monai.networks.weights import find_encoder, unwrap_model

__all__ = ["layer_decay_param_groups", "get_layer_id"]


def get_layer_id(name: str, num_layers: int) -> int:
    """BEiT layer id of an encoder parameter named ``name`` (relative to the encoder).

    Args:
        name: parameter name inside the encoder, e.g. ``"blocks.3.attn.qkv.weight"``.
        num_layers: number of transformer blocks.

    Returns:
        0 for the stem (``patch_embed``, ``cls_token``, ``pos_embed``, ``mask_token``, a shared ``rel_pos_bias``),
        ``i + 1`` for block ``i``, ``num_layers + 1`` otherwise.
    """
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith(("patch_embed.", "rel_pos_bias.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_decay_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.65,
    no_weight_decay_list: Collection[str] = (),
) -> List[Dict[str, Any]]:
    """Parameter groups with layer-wise decayed learning rates, ready for any ``torch.optim`` optimizer.

    Args:
        model: a ``USFMEncoder``, or a model holding one as ``encoder`` (``USFMClassifier``, ``USFMSegmenter``,
            ``USFMMaskedImageModel``), possibly wrapped in ``DataParallel``/``DistributedDataParallel`` or compiled.
        lr: base learning rate (the head's).
        weight_decay: weight decay of matrices and convolution kernels.
        layer_decay: decay per layer, in ``(0, 1]``; 1 disables the decay.
        no_weight_decay_list: extra ``fnmatch`` patterns of full parameter names without weight decay.

    Returns:
        A list of dicts with ``"params"``, ``"lr"`` (= ``lr * lr_scale``), ``"lr_scale"``, ``"weight_decay"`` and
        ``"layer_id"``, ordered by layer. No weight decay for 1-D parameters (norms, biases, layer scale
        ``gamma``), ``cls_token``, relative position tables and the encoder's ``no_weight_decay()``. Frozen
        parameters (``requires_grad=False``) are left out.

    Raises:
        ValueError: ``lr <= 0``, ``weight_decay < 0`` or ``layer_decay`` outside ``(0, 1]``.
        TypeError: no encoder found.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
    encoder, enc_prefix = find_encoder(model)
    root = unwrap_model(model)
    num_layers = len(encoder.blocks)
    skip = set(encoder.no_weight_decay()) if hasattr(encoder, "no_weight_decay") else set()

    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, param in root.named_parameters():
        if not param.requires_grad:
            continue
        in_encoder = name.startswith(enc_prefix)
        local = name[len(enc_prefix) :] if in_encoder else name
        layer_id = get_layer_id(local, num_layers) if in_encoder else num_layers + 1
        no_decay = (
            param.ndim <= 1
            or name.endswith(".bias")
            or (in_encoder and local in skip)
            or "relative_position_bias_table" in name
            or any(fnmatch.fnmatch(name, pattern) for pattern in no_weight_decay_list)
        )
        key = (layer_id, not no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer_id)
            groups[key] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
