"""Images/s of the pretraining data loader alone, per CPU core: how many cores feed one GPU.

Builds ``train#dataloader`` from ``bundles/pretrain_usfm/configs/train.json`` (its transforms, organ-balanced
sampler, ``CacheDataset``) and iterates it without a model, once with the decoded, resized images cached
(``cache_rate=1``: only the random augmentations run per step) and once without (``cache_rate=0``: PNG decode +
resize every step). The per-core rate is images per CPU-second of the main process and the workers together
(read from ``/proc``, so other jobs on a shared machine do not distort it); an 8-GPU node consuming ``R``
images/s per GPU needs about ``8 * R / per_core`` cores for loading.

    python benchmarks/bench_loader.py --workers 0 2 --num_images 200
    python benchmarks/bench_loader.py --dataset_dir /data/us_corpus --datalist_file us_corpus.json --workers 8

The synthetic images (``--dataset_dir synthetic``, the default) are generated once into ``--work_dir``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from monai.bundle import ConfigParser

from usfm_monai.data import materialize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(REPO, "bundles", "pretrain_usfm", "configs", "train.json")

__all__ = ["build_pretrain_loader", "loader_throughput"]


def build_pretrain_loader(
    work_dir: str,
    num_workers: int,
    cache_rate: float,
    batch_size: int = 64,
    num_images: int = 200,
    load_size: int = 256,
    image_size: int = 224,
    dataset_dir: str = "synthetic",
    datalist_file: str | None = None,
) -> torch.utils.data.DataLoader:
    """The pretraining bundle's training loader, with its settings overridden (outputs under ``work_dir``)."""
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    parser.update(
        {
            "bundle_root": work_dir,
            "dataset_dir": dataset_dir,
            "datalist_file": datalist_file,
            "synthetic_num_images": num_images,
            "num_workers": num_workers,
            "cache_rate": cache_rate,
            "batch_size": batch_size,
            "load_size": load_size,
            "image_size": image_size,
        }
    )
    loader = parser.get_parsed_content("train#dataloader")
    materialize(loader.dataset)  # as the bundle's run step does: generate the synthetic data and fill the cache
    return loader


def _cpu_seconds(loader: torch.utils.data.DataLoader) -> float | None:
    """CPU seconds used so far by this process and the loader's persistent workers (Linux ``/proc``), else None."""
    total = time.process_time()
    workers = getattr(getattr(loader, "_iterator", None), "_workers", [])
    try:
        for worker in workers:
            with open(f"/proc/{worker.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    return total


def loader_throughput(loader: torch.utils.data.DataLoader, passes: int = 2, budget_s: float = 60.0) -> dict:
    """Images/s over ``passes`` passes after one untimed pass (worker start-up); stops early after ``budget_s``.

    Returns ``images_per_s`` (wall clock) and ``images_per_cpu_s``: images per CPU-second of the main process and
    the workers together, the per-core rate, which a machine shared with other jobs does not distort (None when
    the workers' CPU time cannot be read).
    """
    for _ in loader:  # warm-up: starts the (persistent) workers
        pass
    images, start, cpu_start = 0, time.perf_counter(), _cpu_seconds(loader)
    for _ in range(passes):
        for batch in loader:
            images += batch["image"].shape[0]
            if time.perf_counter() - start > budget_s:
                break
    wall = time.perf_counter() - start
    cpu_end = _cpu_seconds(loader)
    cpu = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    return {"images": images, "images_per_s": images / wall, "images_per_cpu_s": images / cpu if cpu else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values")
    parser.add_argument("--num_images", type=int, default=200, help="synthetic images (default 200)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--load_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--dataset_dir", default="synthetic")
    parser.add_argument("--datalist_file", default=None)
    parser.add_argument("--work_dir", default=None, help="where synthetic data is generated (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="usfm_bench_loader_")
    print(
        f"pretraining loader, load {args.load_size} -> crop {args.image_size}, batch {args.batch}, "
        f"{os.cpu_count()} CPUs visible, torch {torch.__version__}"
    )
    print(f"{'workers':>7} {'cache':>6} {'images/s':>9} {'images/CPU-s (per core)':>24}")
    for workers in args.workers:
        for cache_rate in (1.0, 0.0):
            loader = build_pretrain_loader(
                work_dir, workers, cache_rate, args.batch, args.num_images, args.load_size, args.image_size,
                args.dataset_dir, args.datalist_file,
            )
            r = loader_throughput(loader, args.passes)
            per_core = "n/a" if r["images_per_cpu_s"] is None else f"{r['images_per_cpu_s']:.1f}"
            print(f"{workers:>7} {'yes' if cache_rate else 'no':>6} {r['images_per_s']:>9.1f} {per_core:>24}")
            del loader


if __name__ == "__main__":
    main()
