"""Enhancement comparison on the synthetic low/high pairs (issue 16): identity, CycleGAN, + USFM branch, + random
branch control, + paired term, each over several seeds, through the ``enhance_usenhance`` bundle.

Every cell ``(arm, seed)`` runs two bundle commands in its own bundle root ``<output_dir>/cells/<data>/<arm>/seed<s>``:
``train.json + quick.json + <recipe>`` with the arm's overrides, then the same configs plus ``evaluate.json`` on the
test split; the cell's row is read from the ``eval/summary.json`` that the evaluation writes. The ``identity`` row
scores the unenhanced low-quality test images against their targets after the bundle's own preprocessing. A
finished cell (``result.json``) is skipped when the command is run again.

``--data`` picks the pairs: ``default`` is the bundle's synthetic enhancement dataset; ``blur``, ``speckle``,
``noise``, ``window`` are pairs that differ by that one degradation only (the low image is rendered with the
high-quality settings except that one, from the same speckle draws: ``synthesize_pair(low_settings=...,
shared_speckle=True)``), and ``all_shared`` has every degradation but shares the speckle draws.

Outputs in ``<output_dir>``: ``results.csv`` (one row per cell), ``summary.csv`` and ``summary.md`` (mean ± std over
seeds of the per-run test means), and with ``--figures`` side-by-side PNGs (low | enhanced | high | |error|, and
input | enhanced | |enhanced - input| on real images given by ``--real_images``).

Example (the README table)::

    python experiments/enhancement/run_comparison.py --output_dir runs/enhancement_comparison \\
        --usfm_weights runs/pretrain_busi/models/usfm_encoder.pt --seeds "[0, 1, 2]" --jobs 2
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from usfm_monai.apps.bundle_runner import bundle_command, child_env, run_logged
from usfm_monai.io import save_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "enhance_usenhance")
CONFIGS = os.path.join(BUNDLE, "configs")
METRICS = ("ssim", "lncc", "nmi")

# Arms: overrides on top of train.json + quick.json + the recipe file. "{usfm_weights}" is filled in at run time.
ARMS: dict[str, dict[str, Any]] = {
    "cyclegan": {"use_usfm_branch": False},
    "cyclegan_usfm": {"use_usfm_branch": True, "usfm_weights": "{usfm_weights}"},
    "cyclegan_usfm_random": {"use_usfm_branch": True, "usfm_random_weights": True},
    "cyclegan_paired": {"use_usfm_branch": False, "lambda_paired": 10.0},
}

COMPONENTS = ("default", "all_shared", "blur", "speckle", "noise", "window")


def component_settings(component: str) -> tuple[dict[str, float] | None, bool]:
    """``(low_settings, shared_speckle)`` of ``synthesize_pair`` for one degradation, or all of them."""
    from usfm_monai.data.synthetic import _QUALITY

    high, low = dict(_QUALITY["high"]), _QUALITY["low"]
    if component == "default":
        return None, False
    if component == "all_shared":
        return None, True
    keys = {"blur": ("psf_scale",), "speckle": ("looks",), "noise": ("noise_db",), "window": ("floor_db", "range_db")}
    if component not in keys:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}.")
    return {**high, **{k: low[k] for k in keys[component]}}, True


def make_component_dataset(output_dir: str, component: str, num_images: int, image_size: int, seed: int = 0) -> str:
    """Pairs of the bundle's synthetic enhancement dataset (same anatomy seeds, organs and 70/20/10 per-organ
    split) rendered with one degradation only; returns the datalist path."""
    from PIL import Image

    from usfm_monai.data.datalist import write_datalist
    from usfm_monai.data.synthetic import (
        DEFAULT_GEOMETRY,
        _DEFAULT_ORGANS,
        _split_counts,
        image_seed,
        synthesize_pair,
    )

    path = os.path.join(output_dir, "datalist.json")
    if os.path.isfile(path):
        return path
    low_settings, shared = component_settings(component)
    organs = _DEFAULT_ORGANS["enhancement"]
    for folder in ("low", "high"):
        os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
    groups: dict[str, list[dict[str, str]]] = {}
    for i in range(num_images):
        organ = organs[i % len(organs)]
        low, high = synthesize_pair(
            organ, image_size, DEFAULT_GEOMETRY[organ], None, image_seed(seed, i), low_settings, shared
        )
        name = f"{i:05d}.png"
        Image.fromarray(low).save(os.path.join(output_dir, "low", name))
        Image.fromarray(high).save(os.path.join(output_dir, "high", name))
        groups.setdefault(organ, []).append({"image": f"low/{name}", "target": f"high/{name}", "organ": organ})
    sections: dict[str, list] = {"training": [], "validation": [], "test": []}
    for organ in sorted(groups):
        items = groups[organ]
        n_train, n_val, _ = _split_counts(len(items), 0.2, 0.1)
        sections["training"] += items[:n_train]
        sections["validation"] += items[n_train : n_train + n_val]
        sections["test"] += items[n_train + n_val :]
    meta = {"tool": "experiments/enhancement/run_comparison.py", "component": component, "seed": seed,
            "num_images": num_images, "image_size": image_size, "low_settings": low_settings,
            "shared_speckle": shared}
    return write_datalist(path, sections, meta, base_dir=output_dir)


def run_cell(cell_dir: str, config_files: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Train then evaluate one cell; returns its row (cached in ``result.json``)."""
    result_path = os.path.join(cell_dir, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(cell_dir, exist_ok=True)
    args_file = save_json_atomic({"bundle_root": cell_dir, **overrides}, os.path.join(cell_dir, "run_args.json"))
    env = child_env({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    timings = {}
    for phase, files in (("train", config_files), ("evaluate", config_files + [os.path.join(CONFIGS, "evaluate.json")])):
        start = time.time()
        cmd = bundle_command(files, args_file, logging_file=os.path.join(CONFIGS, "logging.conf"))
        code = run_logged(cmd, os.path.join(cell_dir, f"{phase}.log"), env, cwd=REPO)
        timings[f"{phase}_s"] = round(time.time() - start, 1)
        if code != 0:
            raise RuntimeError(f"{phase} failed in {cell_dir}; see {cell_dir}/{phase}.log")
    with open(os.path.join(cell_dir, "eval", "summary.json")) as f:
        summary = json.load(f)
    row = {f"{m}": summary["metrics"][f"val_{m}"]["mean"] for m in METRICS}
    row.update({f"{m}_image_std": summary["metrics"][f"val_{m}"]["std"] for m in METRICS})
    row["n_test"] = summary["metrics"]["val_ssim"]["n"]
    row.update(timings)
    save_json_atomic(row, result_path, indent=1)
    return row


def parse_bundle(config_files: list[str], overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def identity_row(config_files: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Low-quality test image against its target, after the bundle's validation preprocessing."""
    import torch

    from usfm_monai.metrics import EnhancementMetric

    parser = parse_bundle(config_files, {**overrides, "use_usfm_branch": False})
    data = parser.get_parsed_content("test_datalist")
    transform = parser.get_parsed_content("validate#preprocessing")
    values = {m: [] for m in METRICS}
    for item in data:
        d = transform(item)
        low, high = torch.as_tensor(d["image"])[None], torch.as_tensor(d["target"])[None]
        for m in METRICS:
            values[m].append(float(EnhancementMetric(m)(low, high).mean()))
    row = {m: float(np.mean(v)) for m, v in values.items()}
    row.update({f"{m}_image_std": float(np.std(v, ddof=1)) for m, v in values.items()})
    row["n_test"] = len(data)
    return row


def load_generator(config_files: list[str], overrides: dict[str, Any], checkpoint: str):
    import torch

    parser = parse_bundle(config_files, {**overrides, "usfm_weight_report#_disabled_": True, "device": "cpu"})
    net = parser.get_parsed_content("network_def")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    return net.eval(), parser


def write_figures(fig_dir: str, config_files, overrides, checkpoint, count: int, real_images: list[str],
                  display: int = 192) -> list[str]:
    """Side-by-side PNGs: test pairs (low | enhanced | high | |enhanced - high|) and real images (input | enhanced |
    |enhanced - input|), each panel shown at ``display`` pixels (bilinear) from the network resolution."""
    import torch
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize

    from usfm_monai.handlers.enhancement import side_by_side
    from usfm_monai.transforms import EnsureGrayscale
    from usfm_monai.visualize import save_png_atomic

    net, parser = load_generator(config_files, overrides, checkpoint)
    os.makedirs(fig_dir, exist_ok=True)
    written = []
    data = parser.get_parsed_content("test_datalist")
    transform = parser.get_parsed_content("validate#preprocessing")
    with torch.no_grad():
        for item in data[:count]:
            d = transform(item)
            low, high = torch.as_tensor(d["image"]).float(), torch.as_tensor(d["target"]).float()
            pred = net(low[None])[0]
            picture = side_by_side([low, pred, high, (pred - high).abs()], size=(display, display))
            name = os.path.join(fig_dir, f"test_{os.path.splitext(os.path.basename(item['image']))[0]}.png")
            save_png_atomic(picture, name)
            written.append(name)
        size = int(parser["image_size"])
        load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), EnsureGrayscale(), Resize((size, size))])
        for path in real_images:
            x = (torch.as_tensor(load(path)).float() / 255.0).clamp(0, 1)
            pred = net(x[None])[0]
            picture = side_by_side([x, pred, (pred - x).abs()], size=(display, display))
            name = os.path.join(fig_dir, f"real_{os.path.splitext(os.path.basename(path))[0].replace(' ', '_')}.png")
            save_png_atomic(picture, name)
            written.append(name)
    return written


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        sel = [r for r in rows if r["arm"] == arm]
        s: dict[str, Any] = {"data": sel[0]["data"], "arm": arm, "seeds": len(sel)}
        for m in METRICS:
            vals = np.array([r[m] for r in sel], float)
            s[f"{m}_mean"] = float(vals.mean())
            s[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        secs = [r.get("train_s") for r in sel if r.get("train_s") is not None]
        s["train_s_mean"] = float(np.mean(secs)) if secs else 0.0
        out.append(s)
    return out


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/enhancement_comparison")
    p.add_argument("--arms", default=repr(list(ARMS)), help="python list of arm names (see ARMS)")
    p.add_argument("--seeds", default="[0, 1, 2]")
    p.add_argument("--recipe", default=os.path.join(CONFIGS, "cpu_recipe.json"),
                   help="override file after quick.json; 'none' for quick.json alone")
    p.add_argument("--overrides", default="{}", help="python dict of bundle overrides for every arm")
    p.add_argument("--arm_overrides", default="{}", help="python dict {arm: {key: value}} added to ARMS")
    p.add_argument("--usfm_weights", default=os.path.join(BUNDLE, "..", "pretrain_usfm", "models", "usfm_encoder.pt"))
    p.add_argument("--data", default="default", choices=COMPONENTS)
    p.add_argument("--num_images", type=int, default=200)
    p.add_argument("--synthetic_image_size", type=int, default=128)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--figures", default=None, help="arm whose seed-0 model draws the figures (into output_dir/figures)")
    p.add_argument("--num_figures", type=int, default=3)
    p.add_argument("--real_images", default="[]", help="python list of real image paths for the figures")
    args = p.parse_args(argv)

    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    arms = ast.literal_eval(args.arms)
    seeds = ast.literal_eval(args.seeds)
    common = ast.literal_eval(args.overrides)
    arm_defs = {k: dict(v) for k, v in ARMS.items()}
    for arm, extra in ast.literal_eval(args.arm_overrides).items():
        arm_defs.setdefault(arm, {}).update(extra)
    config_files = [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "quick.json")]
    if args.recipe != "none":
        config_files.append(os.path.abspath(args.recipe))

    data_over: dict[str, Any] = {"synthetic_num_images": args.num_images,
                                 "synthetic_image_size": args.synthetic_image_size}
    if args.data == "default":
        data_over["synthetic_dir"] = os.path.join(out, "data", "default")
    else:
        folder = os.path.join(out, "data", args.data)
        make_component_dataset(folder, args.data, args.num_images, args.synthetic_image_size)
        data_over["dataset_dir"] = folder
    base = {**data_over, **common}

    rows = [{"data": args.data, "arm": "identity", "seed": "", **identity_row(config_files, base)}]

    def cell(arm: str, seed: int) -> dict[str, Any]:
        over = {k: (v.format(usfm_weights=os.path.abspath(args.usfm_weights)) if isinstance(v, str) else v)
                for k, v in arm_defs[arm].items()}
        cell_dir = os.path.join(out, "cells", args.data, arm, f"seed{seed}")
        row = run_cell(cell_dir, config_files, {**base, **over, "seed": seed})
        print(f"{args.data} {arm} seed {seed}: " + " ".join(f"{m} {row[m]:.4f}" for m in METRICS), flush=True)
        return {"data": args.data, "arm": arm, "seed": seed, **row}

    plan = [(a, s) for a in arms for s in seeds]
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(cell, a, s): (a, s) for a, s in plan}
        done = {}
        for fut, key in futures.items():
            try:
                done[key] = fut.result()
            except RuntimeError as err:
                failures.append(str(err))
    rows += [done[k] for k in plan if k in done]
    tag = "" if args.data == "default" else f"_{args.data}"
    write_csv(os.path.join(out, f"results{tag}.csv"), rows)
    summary = summarize(rows)
    write_csv(os.path.join(out, f"summary{tag}.csv"), summary)
    lines = ["| data | arm | seeds | SSIM | LNCC | NMI | train s / run |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        cells = " | ".join(f"{s[f'{m}_mean']:.3f} ± {s[f'{m}_std']:.3f}" for m in METRICS)
        lines.append(f"| {s['data']} | {s['arm']} | {s['seeds']} | {cells} | {s['train_s_mean']:.0f} |")
    with open(os.path.join(out, f"summary{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.figures:
        arm = args.figures
        over = {k: (v.format(usfm_weights=os.path.abspath(args.usfm_weights)) if isinstance(v, str) else v)
                for k, v in arm_defs[arm].items()}
        ckpt = os.path.join(out, "cells", args.data, arm, f"seed{seeds[0]}", "models", "model.pt")
        for path in write_figures(os.path.join(out, "figures", arm), config_files, {**base, **over}, ckpt,
                                  args.num_figures, ast.literal_eval(args.real_images)):
            print("figure", path)
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
