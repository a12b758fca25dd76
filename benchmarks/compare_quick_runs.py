"""Are two checkouts' bundles the same program? Train, evaluate and infer every bundle on its quick config in
each checkout, then compare what they wrote: TensorBoard scalars (losses, validation metrics), evaluation CSVs,
the trained weights and the inference outputs.

A refactor that claims "behaviour unchanged" is measured with it::

    git archive 521d7bc | tar -x -C /tmp/before
    python benchmarks/compare_quick_runs.py run --repo /tmp/before --out /tmp/cmp/before
    python benchmarks/compare_quick_runs.py run --repo . --out /tmp/cmp/after
    python benchmarks/compare_quick_runs.py compare /tmp/cmp/before /tmp/cmp/after

``run`` runs each bundle of ``--repo`` with ``PYTHONPATH=--repo`` and one thread (so the two sides use the same
kernels), on the bundle's synthetic default, at one fixed path (``--work_dir``, the same for both sides: absolute
paths reach some results), and then moves the results to ``--out``; run the two sides one after the other.
``compare`` prints one row per bundle and kind: how many values were compared and the largest absolute
difference, marked ``same`` when it is at most ``--atol`` (1e-6).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np

from usfm_monai.apps.bundle_runner import bundle_command, child_env, run_logged

BUNDLES = ("pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance")
WORK_DIR = os.path.join(tempfile.gettempdir(), "usfm_quick_runs")  # one path for every checkout: see run_bundle
IMAGE_SUFFIXES = (".png", ".nii.gz", ".nii")

__all__ = ["run_bundle", "collect", "compare"]


def _monai_run(bundle_dir: str, repo: str, configs: list[str], log: str) -> float:
    # the checkout's own package, not this one's: PYTHONPATH names it
    env = child_env({"PYTHONPATH": os.path.abspath(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    cmd = bundle_command([f"configs/{c}" for c in configs], logging_file="configs/logging.conf")
    start = time.perf_counter()
    code = run_logged(cmd, log, env, cwd=bundle_dir)
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed in {bundle_dir} (exit {code}); see {log}")
    return time.perf_counter() - start


def run_bundle(repo: str, name: str, work_dir: str = WORK_DIR) -> dict[str, float]:
    """Run bundle ``name`` of ``repo`` (train, evaluate when the bundle has one, inference; quick config) in
    ``work_dir/name``; returns the seconds each step took.

    Every checkout runs at the same path, so that nothing that depends on absolute paths (the synthetic data's
    file names in the metadata, for instance) differs between the two sides. The bundles are siblings there, as in
    ``bundles/``: the enhancement bundle reads the pretraining bundle's encoder by default.
    """
    src, run_dir = os.path.join(repo, "bundles", name), os.path.join(work_dir, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("data", "eval", "*.pt", ".usfm_monai.lock"))
    seconds = {"train": _monai_run(run_dir, repo, ["train.json", "quick.json"], os.path.join(run_dir, "train.log"))}
    if os.path.isfile(os.path.join(run_dir, "configs", "evaluate.json")):
        seconds["evaluate"] = _monai_run(run_dir, repo, ["train.json", "quick.json", "evaluate.json"],
                                         os.path.join(run_dir, "evaluate.log"))
    seconds["infer"] = _monai_run(run_dir, repo, ["inference.json", "quick.json"], os.path.join(run_dir, "infer.log"))
    return seconds


def _scalars(bundle_dir: str) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(glob.glob(os.path.join(bundle_dir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                values[f"{tag}@{event.step}"] = event.value
    return values


def _csv_numbers(bundle_dir: str) -> dict[str, float]:
    values = {}
    for path in sorted(glob.glob(os.path.join(bundle_dir, "eval", "**", "*.csv"), recursive=True)):
        rel = os.path.relpath(path, bundle_dir)
        with open(path) as f:
            for i, row in enumerate(csv.reader(f)):
                for j, cell in enumerate(row):
                    try:
                        values[f"{rel}[{i},{j}]"] = float(cell)
                    except ValueError:
                        continue
    return values


def _flatten(value, prefix: str, out: dict) -> None:
    """The numbers (tensors, floats, ints) of nested dicts and lists, keyed by their path."""
    import torch

    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}/{key}", out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", out)
    elif isinstance(value, torch.Tensor):
        out[prefix] = value.double().numpy()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def _weights(bundle_dir: str) -> dict[str, np.ndarray]:
    """Every number in ``models/*.pt``: the best model, the last training checkpoint (network, optimizer moments,
    schedulers) and the exported encoder."""
    import torch

    arrays: dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(os.path.join(bundle_dir, "models", "*.pt"))):
        _flatten(torch.load(path, map_location="cpu", weights_only=True), os.path.basename(path), arrays)
    return arrays


def _json_numbers(bundle_dir: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(bundle_dir, "eval", "**", "*.json"), recursive=True)):
        with open(path) as f:
            _flatten(json.load(f), os.path.relpath(path, bundle_dir), values)
    return values


def _images(bundle_dir: str) -> dict[str, np.ndarray]:
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    arrays = {}
    for path in sorted(glob.glob(os.path.join(bundle_dir, "eval", "inference", "**", "*"), recursive=True)):
        if path.endswith(IMAGE_SUFFIXES):
            arrays[os.path.relpath(path, bundle_dir)] = np.asarray(load(path), dtype=np.float64)
    return arrays


def collect(bundle_dir: str) -> dict[str, dict]:
    """What a bundle run wrote, by kind: ``scalars`` (TensorBoard), ``eval_csv`` and ``eval_json`` (the numbers of
    the evaluation and inference tables and reports), ``weights`` (every tensor of ``models/*.pt``) and
    ``images`` (inference outputs)."""
    return {"scalars": _scalars(bundle_dir), "eval_csv": _csv_numbers(bundle_dir),
            "eval_json": _json_numbers(bundle_dir), "weights": _weights(bundle_dir), "images": _images(bundle_dir)}


def _max_diff(a: dict, b: dict) -> tuple[int, float, list[str]]:
    """Values compared, their largest absolute difference, and keys present on one side only."""
    shared = sorted(set(a) & set(b))
    worst = 0.0
    for key in shared:
        x, y = np.asarray(a[key], dtype=np.float64), np.asarray(b[key], dtype=np.float64)
        if x.shape != y.shape:
            return len(shared), float("inf"), [f"{key}: shape {x.shape} vs {y.shape}"]
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y))))
    return len(shared), worst, sorted(set(a) ^ set(b))


def compare(before: str, after: str, atol: float = 1e-6, bundles=BUNDLES) -> list[dict]:
    rows = []
    for name in bundles:
        a, b = collect(os.path.join(before, name)), collect(os.path.join(after, name))
        for kind in a:
            count, worst, one_sided = _max_diff(a[kind], b[kind])
            verdict = "same" if worst <= atol and not one_sided else "DIFFERENT"
            rows.append({"bundle": name, "kind": kind, "compared": count, "max_abs_diff": worst,
                         "one_sided": one_sided[:5], "verdict": verdict})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, evaluate and infer every bundle of one checkout")
    run.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run.add_argument("--out", required=True)
    run.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    run.add_argument("--work_dir", default=WORK_DIR, help="where the bundles run (the same for both checkouts)")
    cmp = sub.add_parser("compare", help="compare two `run` outputs")
    cmp.add_argument("before")
    cmp.add_argument("after")
    cmp.add_argument("--atol", type=float, default=1e-6)
    cmp.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=BUNDLES)
    args = parser.parse_args(argv)
    if args.command == "run":
        os.makedirs(args.out, exist_ok=True)
        for name in args.bundles:
            seconds = run_bundle(args.repo, name, args.work_dir)
            print(name, json.dumps({k: round(v, 1) for k, v in seconds.items()}), flush=True)
        for name in args.bundles:  # after all of them: a later bundle may read an earlier one's outputs
            shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
            shutil.move(os.path.join(args.work_dir, name), os.path.join(args.out, name))
        return
    print(f"{'bundle':<18} {'kind':<10} {'compared':>8} {'max |diff|':>12}  verdict")
    for row in compare(args.before, args.after, args.atol, args.bundles):
        extra = f"  one side only: {row['one_sided']}" if row["one_sided"] else ""
        print(f"{row['bundle']:<18} {row['kind']:<10} {row['compared']:>8} {row['max_abs_diff']:>12.3g}  "
              f"{row['verdict']}{extra}")


if __name__ == "__main__":
    main()
