"""Throughput of the USFM spatial-frequency dual mask (eq. 8): per-sample transform vs. batched torch version.

Prints images/s for
  * ``RandDualDomainMask`` applied image by image to ``(C, H, W)`` tensors (what a DataLoader worker runs), and
  * ``BatchedDualDomainMask`` applied to ``(B, C, H, W)`` batches (what a prepare-batch on the device runs),
on the CPU, and on the GPU too when ``torch.cuda.is_available()``.

Usage:
    python benchmarks/bench_masking.py
    python benchmarks/bench_masking.py --size 224 --batch 64 --iters 20 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from usfm_monai.transforms.dual_mask import BatchedDualDomainMask, RandDualDomainMask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_per_sample(images: torch.Tensor, iters: int, warmup: int, **mask_kwargs) -> float:
    """Images per second of the per-sample transform over ``iters`` passes through ``images`` (B, C, H, W)."""
    transform = RandDualDomainMask(**mask_kwargs).set_random_state(0)
    for _ in range(warmup):
        for img in images:
            transform(img)
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(iters):
        for img in images:
            transform(img)
    _sync(images.device)
    return iters * images.shape[0] / (time.perf_counter() - start)


def bench_batched(images: torch.Tensor, iters: int, warmup: int, **mask_kwargs) -> float:
    """Images per second of the batched version, drawing with a generator on the images' device."""
    masker = BatchedDualDomainMask(**mask_kwargs)
    generator = torch.Generator(device=images.device).manual_seed(0)
    for _ in range(warmup):
        masker(images, generator=generator)
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(iters):
        masker(images, generator=generator)
    _sync(images.device)
    return iters * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    parser.add_argument("--batch", type=int, default=64, help="batch size B (default 64)")
    parser.add_argument("--channels", type=int, default=1, help="channels C (default 1, grayscale ultrasound)")
    parser.add_argument("--iters", type=int, default=10, help="timed passes over one batch (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-frequency", action="store_true", help="spatial mask only (USFM-woF)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mask_kwargs = dict(
        block_size=32,
        mask_ratio=0.4,
        num_bands=7,
        num_masked_bands=2,
        keep_size=10,
        band_spacing="linear",
        use_frequency_mask=not args.no_frequency,
    )
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"dual mask, {args.channels}x{args.size}x{args.size} float32, batch {args.batch}, {args.iters} iters, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, frequency mask: {not args.no_frequency}"
    )
    print(f"{'device':<28} {'per-sample img/s':>18} {'batched img/s':>15} {'speed-up':>9}")
    for device in devices:
        gen = torch.Generator(device=device).manual_seed(0)
        images = torch.rand(args.batch, args.channels, args.size, args.size, generator=gen, device=device)
        per_sample = bench_per_sample(images, args.iters, args.warmup, **mask_kwargs)
        batched = bench_batched(images, args.iters, args.warmup, **mask_kwargs)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{name:<28} {per_sample:>18.1f} {batched:>15.1f} {batched / per_sample:>8.1f}x")


if __name__ == "__main__":
    main()
