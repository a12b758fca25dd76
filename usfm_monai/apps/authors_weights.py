"""Turn the authors' released ``USFM_latest.pth`` into each bundle's starting weights, with a model card.

The authors' checkpoint (https://github.com/openmedlab/USFM) is the encoder of a BEiT ViT-B/16 pre-trained on
3-channel ImageNet-normalized 224 x 224 input with ONE shared relative position bias. The conversion itself
(shared table copied into every block, RGB patch embedding and ImageNet normalization folded into our 1-channel
embedding for input in [0, 1], recomputed buffers and the mask token dropped, tables resized to another patch grid)
is :func:`usfm_monai.networks.weights.convert_authors_checkpoint`, applied by
:func:`~usfm_monai.networks.weights.load_encoder_weights`. This module runs it once per input size the bundles
need and writes:

- ``usfm_encoder_<img_size>.pt`` per size: our encoder export ``{"state_dict", "config"}`` (the layout of
  ``bundles/pretrain_usfm/models/usfm_encoder.pt``), built like the pre-training encoder (per-token final norm,
  no pooled ``fc_norm``), so every bundle loads it exactly as it loads our own pre-training export;
- ``model_card.json`` and ``MODEL_CARD.md``: the source file and its sha256, and per output the key report
  (loaded / missing / unexpected / resized / converted / ignored), the sha256 of the output and which bundles
  use it with which config id.

Input sizes: 224 for pre-training-style use (``pretrain_usfm``, and the frozen USFM branch of
``enhance_usenhance``, whose ``usfm_img_size`` is 224), 256 for the fine-tuning bundles (``seg_tn3k``, ``cls_busi``;
paper §4.2), where the relative position tables are resized from the 14 x 14 to the 16 x 16 grid.

Command line::

    usfm-monai convert_authors_weights --checkpoint USFM_latest.pth --output_dir weights/usfm_authors
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence, Union

from usfm_monai.io import atomic_write, load_torch_file, save_json_atomic
from usfm_monai.networks.encoder import USFM_SIZES, create_usfm_encoder
from usfm_monai.networks.weights import AUTHORS_SHARED_TABLE_KEY, export_encoder, load_encoder_weights
from usfm_monai.apps.packaging import file_sha256

__all__ = ["BUNDLE_IMG_SIZE", "BUNDLE_CONFIG_ID", "convert_authors_weights", "convert_authors_weights_command"]

logger = logging.getLogger(__name__)

#: input size of the USFM encoder in each bundle (pixels, square)
BUNDLE_IMG_SIZE: Dict[str, int] = {"pretrain_usfm": 224, "seg_tn3k": 256, "cls_busi": 256, "enhance_usenhance": 224}
#: the config id through which each bundle takes encoder weights (``--<id> <file>`` on the command line)
BUNDLE_CONFIG_ID: Dict[str, str] = {
    "pretrain_usfm": "(none: load into network#encoder with usfm_monai.networks.load_encoder_weights)",
    "seg_tn3k": "pretrained",
    "cls_busi": "pretrained",
    "enhance_usenhance": "usfm_weights",
}
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"


def _img_sizes(bundles: Sequence[str], img_size: Union[None, int, Mapping[str, int]]) -> Dict[str, int]:
    sizes = {}
    for bundle in bundles:
        if isinstance(img_size, Mapping):
            size = img_size.get(bundle, BUNDLE_IMG_SIZE.get(bundle))
        elif img_size is not None:
            size = img_size
        else:
            size = BUNDLE_IMG_SIZE.get(bundle)
        if size is None:
            raise KeyError(
                f"unknown bundle {bundle!r} and no img_size for it: known bundles {sorted(BUNDLE_IMG_SIZE)}, or pass "
                "img_size={bundle: size}."
            )
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 16:
            raise ValueError(
                f"img_size of bundle {bundle!r} must be a positive multiple of 16 (the patch size), got {size!r}."
            )
        sizes[bundle] = size
    return sizes


def _card_markdown(card: Mapping[str, Any]) -> str:
    src = card["source"]
    lines = [
        "# USFM encoder weights converted from the authors' release",
        "",
        f"- Source: `{src['file']}` ({src['size_bytes']} bytes), sha256 `{src['sha256']}`",
        f"- Source layout: {src['layout']}; encoder size `{card['encoder_size']}`; converted {card['created']} with "
        f"usfm-monai {card['usfm_monai_version']}",
        "- Weights: Jiao et al., USFM (arXiv 2401.00153), https://github.com/openmedlab/USFM; their licence and terms "
        "of use apply to the converted files.",
        "- Input of the converted encoders: 1 channel, grayscale in [0, 1] (the ImageNet normalization of the "
        "authors' 3-channel input is folded into the patch embedding).",
        "",
        "## Outputs",
        "",
        "| file | input size | sha256 | bundles (config id) | loaded | missing | unexpected | resized |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for out in card["outputs"]:
        rep = out["report"]
        users = ", ".join(f"`{b}` (`{BUNDLE_CONFIG_ID.get(b, '?')}`)" for b in out["bundles"])
        lines.append(
            f"| `{out['file']}` | {out['img_size']} | `{out['sha256'][:16]}…` | {users} | {rep['loaded']} | "
            f"{len(rep['missing'])} | {len(rep['unexpected'])} | {len(rep['resized'])} |"
        )
    for out in card["outputs"]:
        rep = out["report"]
        lines += ["", f"### `{out['file']}`", ""]
        lines += [f"- converted: {c}" for c in rep["converted"]]
        lines += [f"- resized: {r}" for r in rep["resized"]]
        lines.append(f"- missing keys: {rep['missing'] or 'none'}")
        lines.append(f"- unexpected keys: {rep['unexpected'] or 'none'}")
        lines.append(f"- checkpoint entries outside the encoder ignored: {rep['ignored']}")
    lines += ["", "## Use", ""]
    for out in card["outputs"]:
        for bundle in out["bundles"]:
            key = BUNDLE_CONFIG_ID.get(bundle, "")
            if key and not key.startswith("("):
                lines += [
                    "```bash",
                    f"python -m monai.bundle run --config_file bundles/{bundle}/configs/train.json "
                    f"--{key} {out['path']}",
                    "```",
                ]
    return "\n".join(lines) + "\n"


def convert_authors_weights(
    checkpoint: str,
    output_dir: str,
    bundles: Sequence[str] = tuple(BUNDLE_IMG_SIZE),
    img_size: Union[None, int, Mapping[str, int]] = None,
    size: str = "base",
) -> Dict[str, Any]:
    """Convert ``USFM_latest.pth`` into one encoder export per input size and write a model card.

    Args:
        checkpoint: the authors' checkpoint file (loaded with ``torch.load(..., weights_only=True)`` on the CPU);
            a bare state dict or one wrapped in ``model`` / ``state_dict`` / ``module``.
        output_dir: folder for ``usfm_encoder_<img_size>.pt``, ``model_card.json`` and ``MODEL_CARD.md``
            (created if missing).
        bundles: the bundles to prepare starting weights for (keys of :data:`BUNDLE_IMG_SIZE`).
        img_size: input size for every bundle (int) or per bundle (mapping); default :data:`BUNDLE_IMG_SIZE`.
        size: encoder size of the checkpoint (``"base"`` for the authors' ViT-B/16; other sizes for tests or
            other releases).

    Returns:
        The model card as a dict (also written as ``model_card.json``).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: ``checkpoint`` is empty, not a torch file, or refused by ``weights_only=True`` (named, with
            the cause: :func:`usfm_monai.io.load_torch_file`).
        KeyError: the checkpoint is not the authors' layout (no ``rel_pos_bias.relative_position_bias_table``), or a
            bundle is unknown and has no ``img_size``.
        ValueError: ``bundles`` is empty, ``size`` is unknown, an ``img_size`` is not a positive multiple of 16, or
            the checkpoint does not match the encoder (the strict load lists missing and unexpected keys).
    """
    checkpoint = os.fspath(checkpoint)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"authors' checkpoint not found: {checkpoint!r}.")
    bundles = [bundles] if isinstance(bundles, str) else list(bundles)
    if not bundles:
        raise ValueError("bundles must name at least one bundle, got an empty sequence.")
    if size not in USFM_SIZES:
        raise ValueError(f"size must be one of {sorted(USFM_SIZES)}, got {size!r}.")
    sizes = _img_sizes(bundles, img_size)
    state = load_torch_file(checkpoint, "authors' checkpoint")
    os.makedirs(output_dir, exist_ok=True)
    import usfm_monai

    source = {
        "file": os.path.basename(checkpoint),
        "path": os.path.abspath(checkpoint),
        "sha256": file_sha256(checkpoint),
        "size_bytes": os.path.getsize(checkpoint),
        "layout": "authors_usfm",
    }
    outputs = []
    for px in sorted(set(sizes.values())):
        # built like the pre-training encoder, so the export is interchangeable with pretrain_usfm's usfm_encoder.pt
        encoder = create_usfm_encoder(size=size, img_size=px, in_chans=1, drop_path_rate=0.0, use_fc_norm=False)
        report = load_encoder_weights(encoder, state, strict=True)
        if report.layout != "authors_usfm":
            raise KeyError(
                f"{checkpoint}: not the authors' USFM layout (found layout {report.layout!r}: the key "
                f"{AUTHORS_SHARED_TABLE_KEY!r} is missing); our own exports need no conversion."
            )
        report.source = source["file"]
        path = os.path.join(os.path.abspath(output_dir), f"usfm_encoder_{px}.pt")
        export_encoder(encoder, path, config={"converted_from": source["file"], "source_sha256": source["sha256"]})
        outputs.append(
            {
                "file": os.path.basename(path),
                "path": path,
                "img_size": px,
                "sha256": file_sha256(path),
                "bundles": [b for b in bundles if sizes[b] == px],
                "report": asdict(report),
            }
        )
        logger.info(f"{report.summary()}\n  -> {path}")
    card = {
        "source": source,
        "encoder_size": size,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "usfm_monai_version": getattr(usfm_monai, "__version__", "unknown"),
        "outputs": outputs,
    }
    save_json_atomic(card, os.path.join(output_dir, CARD_JSON))
    with atomic_write(os.path.join(output_dir, CARD_MD), "w", encoding="utf-8") as f:
        f.write(_card_markdown(card))
    return card

def convert_authors_weights_command(
    checkpoint: str,
    output_dir: str,
    bundles: Optional[Sequence[str]] = None,
    img_size: Union[None, int, Dict[str, int]] = None,
    size: str = "base",
) -> None:
    """Convert the authors' USFM_latest.pth into our bundles' starting weights and a model card.

    Args:
        checkpoint: the authors' ``USFM_latest.pth``.
        output_dir: where the encoder exports and ``MODEL_CARD.md`` / ``model_card.json`` go.
        bundles: bundles to convert for (default: all).
        img_size: input size, or ``{bundle: size}``; default: each bundle's input size.
        size: encoder size of the checkpoint (the release is ``base``).
    """
    card = convert_authors_weights(checkpoint, output_dir, bundles or tuple(BUNDLE_IMG_SIZE), img_size, size)
    for out in card["outputs"]:
        print(f"{out['path']} (img_size {out['img_size']}) for {', '.join(out['bundles'])}")
    print(os.path.join(output_dir, CARD_MD))
