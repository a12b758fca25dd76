"""One-table check of the GPU path: step throughput and MFU, masks, loader, the bundles with AMP, DDP on NCCL.

    python benchmarks/gpu_check.py                 # one H100/H200: about 6-8 minutes
    python benchmarks/gpu_check.py --cpu-smoke     # CI-sized, on the CPU (CUDA-only rows are skipped)
    bash benchmarks/gpu_check.sh                   # the same, with the output kept in gpu_check_<date>.log

Stages, in order, each with its own time budget; a stage that fails or runs out of time is reported in the table
and the next one runs:

1. ``step``: the pretraining step (``USFMMaskedImageModel`` + ``DualMaskPrepareBatch`` + L1 + 0.4 FFL + AdamW,
   fused on CUDA) for tiny and base at 224 px in fp32, bf16 autocast and bf16 + ``torch.compile``: images/s,
   MFU and peak memory. MFU counts ``6 * MACs`` FLOP per training image (forward + backward, see
   :func:`train_flops_per_image`; base at 224: 105 GFLOP, tiny: 7.5 GFLOP) against an assumed peak,
   by default an H100/H200 SXM's 989 TFLOP/s dense bf16 and 67 TFLOP/s fp32 (``--peak_tflops_*``).
2. ``masks``: ``BatchedDualDomainMask`` on the device, images/s.
3. ``loader``: the pretraining bundle's loader alone (cached decoded images), images/s and images per CPU-second.
4. ``pretrain``: 2 epochs of ``pretrain_usfm`` (``quick.json``: tiny, 128 px), AMP on when CUDA is there.
5. ``seg`` / ``cls``: 1 epoch of ``seg_tn3k`` / ``cls_busi`` (``quick.json``).
6. ``ddp``: ``torchrun --nproc_per_node 1`` on ``multi_gpu_train.json`` (NCCL on CUDA, gloo on the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

__all__ = ["Row", "StageSkipped", "train_flops_per_image", "run_stage", "main"]

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM, dense bf16 tensor cores
PEAK_FP32_TFLOPS = 67.0  # H100/H200 SXM, fp32 without TF32


class StageSkipped(Exception):
    """Raised by a stage that does not apply here (e.g. a CUDA-only row on the CPU)."""


@dataclasses.dataclass
class Row:
    stage: str
    setting: str
    images_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    wall_s: float | None = None
    status: str = "ok"
    note: str = ""


def train_flops_per_image(size: str, image_size: int, patch: int = 16, in_chans: int = 1) -> float:
    """Forward + backward FLOP of one image through the MIM model: ``3 * 2 * MACs`` with
    ``MACs = L (12 T D^2 + 2 T^2 D) + 2 N p^2 C D`` (blocks; patch embedding and 1x1-conv decoder), ``N`` patches,
    ``T = N + 1`` tokens (with the class token), width ``D``, ``L`` blocks, patch ``p``, ``C`` channels."""
    from usfm_monai.networks.encoder import USFM_SIZES

    spec = USFM_SIZES[size]
    depth, dim = spec["depth"], spec["embed_dim"]
    patches = (image_size // patch) ** 2
    tokens = patches + 1
    macs = depth * (12 * tokens * dim * dim + 2 * tokens * tokens * dim) + 2 * patches * patch * patch * in_chans * dim
    return 6.0 * macs


def run_stage(rows: list[Row], stage: str, setting: str, fn: Callable[[], dict], deadline: float) -> Row:
    """Run ``fn`` and append its row; an exception becomes the row's status, never the caller's."""
    row = Row(stage, setting)
    start = time.perf_counter()
    try:
        if time.perf_counter() > deadline:
            raise StageSkipped("out of total time")
        for key, value in fn().items():
            setattr(row, key, value)
    except StageSkipped as e:
        row.status = f"skipped: {e}"
    except subprocess.TimeoutExpired as e:
        row.status = f"FAILED: timeout after {e.timeout:.0f} s"
    except Exception as e:  # noqa: BLE001 -- reported in the table, the other stages still run
        row.status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        traceback.print_exc()
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row.wall_s = time.perf_counter() - start
    rows.append(row)
    print(f"[{row.stage} {row.setting}] {row.status} ({row.wall_s:.1f} s) {row.note}", flush=True)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_stage(device, size, image_size, batch, precision, budget_s, peaks, max_iters=30) -> dict:
    """Throughput of the pretraining step (forward, backward, optimizer) on synthetic batches."""
    from usfm_monai.engines import DualMaskPrepareBatch
    from usfm_monai.losses import USFMReconstructionLoss
    from usfm_monai.networks import USFMMaskedImageModel
    from usfm_monai.optim import layer_decay_param_groups
    from usfm_monai.transforms import BatchedDualDomainMask

    use_amp, use_compile = precision.startswith("bf16"), precision.endswith("compile")
    model = USFMMaskedImageModel(size=size, img_size=image_size).to(device)
    net = torch.compile(model) if use_compile else model
    prepare = DualMaskPrepareBatch(BatchedDualDomainMask(block_size=min(32, image_size // 4)), seed=0)
    loss_fn = USFMReconstructionLoss()
    params = layer_decay_param_groups(model, lr=1e-4, weight_decay=0.05, layer_decay=1.0)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    images = torch.rand(batch, 1, image_size, image_size, device=device)

    def step() -> None:
        masked, target = prepare({"image": images}, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(net(masked), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(2):  # warm-up: cuDNN/cuBLAS choices, the compilation
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    remaining = max(budget_s - (time.perf_counter() - start), 0.0)
    iters, t0 = 0, time.perf_counter()
    while iters < 2 or (iters < max_iters and time.perf_counter() - t0 < 0.5 * remaining):
        step()
        iters += 1
        _sync(device)
    rate = iters * batch / (time.perf_counter() - t0)
    out = {"images_per_s": rate, "note": f"batch {batch}, {iters} timed steps"}
    peak = peaks.get("bf16" if use_amp else "fp32")
    if peak:
        out["mfu"] = rate * train_flops_per_image(size, image_size) / (peak * 1e12)
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def masks_stage(device, image_size, batch, budget_s) -> dict:
    from usfm_monai.transforms import BatchedDualDomainMask

    masker = BatchedDualDomainMask(block_size=min(32, image_size // 4))
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 1, image_size, image_size, device=device)
    masker(images, generator=generator)
    _sync(device)
    iters, t0 = 0, time.perf_counter()
    while iters < 3 or (iters < 200 and time.perf_counter() - t0 < budget_s / 2):
        masker(images, generator=generator)
        iters += 1
    _sync(device)
    return {"images_per_s": iters * batch / (time.perf_counter() - t0), "note": f"batch {batch}, {iters} batches"}


def loader_stage(work_dir, workers, num_images, batch, load_size, image_size, budget_s) -> dict:
    from bench_loader import build_pretrain_loader, loader_throughput

    loader = build_pretrain_loader(work_dir, workers, 1.0, batch, num_images, load_size, image_size)
    r = loader_throughput(loader, passes=2, budget_s=budget_s / 2)
    per_core = r["images_per_cpu_s"]
    note = f"{workers} workers, cached, " + (f"{per_core:.0f} images per CPU-second" if per_core else "")
    return {"images_per_s": r["images_per_s"], "note": note}


def bundle_stage(cmd: list[str], check_file: str, timeout: float, env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {out.returncode}: " + " | ".join(tail))
    if not os.path.isfile(check_file):
        raise RuntimeError(f"finished but wrote no {os.path.relpath(check_file, os.path.dirname(check_file))}")
    return {"note": "checkpoint written"}


def _bundle_cmd(bundle: str, files: list[str], root: str, overrides: dict, torchrun: bool = False) -> list[str]:
    configs = "[" + ",".join(repr(os.path.join(REPO, "bundles", bundle, "configs", f)) for f in files) + "]"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun \
        else [sys.executable]
    cmd = launcher + ["-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", root]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def print_table(rows: list[Row]) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print(f"\n{'stage':<9} {'setting':<24} {'images/s':>9} {'MFU':>6} {'peak GiB':>8} {'wall s':>7}  status / note")
    for r in rows:
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        print(
            f"{r.stage:<9} {r.setting:<24} {fmt(r.images_per_s, '.1f'):>9} {mfu:>6} {fmt(r.peak_gib, '.2f'):>8} "
            f"{fmt(r.wall_s, '.1f'):>7}  {r.status}{'; ' + r.note if r.note else ''}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="CI-sized run on the CPU (seconds per stage)")
    parser.add_argument("--max_total_s", type=float, default=None, help="overall budget (default 460, smoke 900)")
    parser.add_argument("--peak_tflops_bf16", type=float, default=PEAK_BF16_TFLOPS)
    parser.add_argument("--peak_tflops_fp32", type=float, default=PEAK_FP32_TFLOPS)
    parser.add_argument("--timeout_scale", type=float, default=1.0, help="multiply the bundle stages' time limits")
    parser.add_argument("--work_dir", default=None, help="bundle outputs and synthetic data (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    smoke = args.cpu_smoke
    if smoke:
        device = torch.device("cpu")
    deadline = time.perf_counter() + (args.max_total_s or (900.0 if smoke else 460.0))
    work = args.work_dir or tempfile.mkdtemp(prefix="usfm_gpu_check_")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    on_cuda = device.type == "cuda"
    peaks = {"bf16": args.peak_tflops_bf16, "fp32": args.peak_tflops_fp32} if on_cuda else {}
    name = torch.cuda.get_device_name(device) if on_cuda else f"CPU ({os.cpu_count()} cores visible)"
    print(
        f"usfm-monai gpu_check {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {name} | torch "
        f"{torch.__version__} | CUDA {torch.version.cuda if cuda else '-'} | bf16 supported: "
        f"{cuda and torch.cuda.is_bf16_supported()} | {'CPU smoke' if smoke else 'full'}"
    )
    print(
        "MFU assumes "
        + (f"{args.peak_tflops_bf16:g} TFLOP/s bf16, {args.peak_tflops_fp32:g} TFLOP/s fp32 peak (H100/H200 SXM dense)"
           if on_cuda else "no peak on the CPU (n/a)")
        + "; FLOP/image = 6 * (L*(12*T*D^2 + 2*T^2*D) + 2*N*p^2*D): "
        + ", ".join(f"{s} {train_flops_per_image(s, 224) / 1e9:.1f} GFLOP at 224" for s in ("tiny", "base"))
    )
    rows: list[Row] = []

    # 1. step throughput
    if smoke:
        sizes, image_size, batches = ("tiny",), 64, {"tiny": 4}
    else:
        sizes, image_size, batches = ("tiny", "base"), 224, {"tiny": 128, "base": 64}
    for size in sizes:
        for precision in ("fp32", "bf16", "bf16+compile"):
            def fn(size=size, precision=precision):
                if precision == "bf16+compile" and not on_cuda:
                    raise StageSkipped("compile row runs on CUDA only (minutes of compilation on a CPU)")
                budget = 15.0 if smoke else (90.0 if precision.endswith("compile") else 25.0)
                return step_stage(device, size, image_size, batches[size], precision, budget, peaks)

            run_stage(rows, "step", f"{size} {image_size}px {precision}", fn, deadline)

    # 2. masks on the device
    mask_size, mask_batch = (64, 8) if smoke else (224, 256)
    mask_budget = 5.0 if smoke else 10.0
    run_stage(rows, "masks", f"{mask_size}px batch {mask_batch}",
              lambda: masks_stage(device, mask_size, mask_batch, mask_budget), deadline)

    # 3. the pretraining loader alone
    workers = 0 if smoke else min(8, os.cpu_count() or 1)
    loader_args = (16, 4, 48, 32) if smoke else (256, 64, 256, 224)
    run_stage(rows, "loader", f"{loader_args[3]}px {workers} workers",
              lambda: loader_stage(os.path.join(work, "loader"), workers, *loader_args, 20.0 if smoke else 60.0),
              deadline)

    # 4-6. the bundles, as a user runs them (AMP on whenever CUDA is there)
    tiny_pre = {"load_size": 48, "image_size": 32, "mask_block_size": 8, "keep_size": 4, "synthetic_num_images": 16,
                "batch_size": 4, "val_batch_size": 4, "num_workers": 0, "num_figure_images": 1} if smoke else {}
    tiny_seg = {"image_size": 64, "synthetic_num_images": 16, "synthetic_image_size": 72, "batch_size": 4,
                "val_batch_size": 4, "num_workers": 0} if smoke else {}
    tiny_cls = {"image_size": 32, "synthetic_num_images": 12, "synthetic_image_size": 40, "batch_size": 4,
                "val_batch_size": 4} if smoke else {}
    remaining = lambda cap: max(1.0, min(cap * args.timeout_scale, deadline - time.perf_counter()))  # noqa: E731
    runs = [
        ("pretrain", "2 epochs, quick.json", "pretrain_usfm", ["train.json", "quick.json"],
         dict(tiny_pre, epochs=2, warmup_epochs=1), "models/checkpoint_last.pt", 150.0 + 150.0 * smoke, False),
        ("seg", "1 epoch, quick.json", "seg_tn3k", ["train.json", "quick.json"],
         dict(tiny_seg, epochs=1, warmup_epochs=0), "models/checkpoint_last.pt", 90.0 + 150.0 * smoke, False),
        ("cls", "1 epoch, quick.json", "cls_busi", ["train.json", "quick.json"],
         dict(tiny_cls, epochs=1, warmup_epochs=0), "models/checkpoint_last.pt", 90.0 + 150.0 * smoke, False),
        ("ddp", f"torchrun x1, {'nccl' if cuda and not smoke else 'gloo'}", "pretrain_usfm",
         ["train.json", "multi_gpu_train.json", "quick.json"], dict(tiny_pre, epochs=1, warmup_epochs=0),
         "models/checkpoint_last.pt", 120.0 + 150.0 * smoke, True),
    ]
    run_env = dict(env, CUDA_VISIBLE_DEVICES="") if smoke else env
    for stage, setting, bundle, files, overrides, check, cap, torchrun in runs:
        root = os.path.join(work, stage)
        cmd = _bundle_cmd(bundle, files, root, overrides, torchrun)
        def fn(cmd=cmd, check=os.path.join(root, check), cap=cap):
            return bundle_stage(cmd, check, remaining(cap), run_env)

        run_stage(rows, stage, setting, fn, deadline)

    print_table(rows)
    print(f"outputs: {work}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    return 1 if any(r.status.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
