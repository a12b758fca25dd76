"""Seconds per pretraining iteration and images/s (forward + backward + AdamW step), masks drawn on the device.

    python benchmarks/bench_pretrain_step.py --sizes tiny base --image_size 224 --batch 8 --iters 5

Prints one line per encoder size; data loading is excluded (synthetic tensors), so this is the model's cost.
"""

import argparse
import time

import torch

from usfm_monai.losses import USFMReconstructionLoss
from usfm_monai.networks import USFMMaskedImageModel
from usfm_monai.transforms import BatchedDualDomainMask


def bench(size: str, image_size: int, batch: int, iters: int, device: torch.device, amp: bool) -> dict:
    model = USFMMaskedImageModel(size=size, img_size=image_size).to(device)
    masker = BatchedDualDomainMask()
    loss_fn = USFMReconstructionLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=amp)
    images = torch.rand(batch, 1, image_size, image_size, device=device)
    gen = torch.Generator().manual_seed(0)
    times = {"mask": 0.0, "step": 0.0}
    for i in range(iters + 1):  # the first iteration warms up and is not timed
        t0 = time.perf_counter()
        with torch.no_grad():
            masked = masker(images, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(masked), images)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:
            times["mask"] += t1 - t0
            times["step"] += t2 - t1
    per_iter = (times["mask"] + times["step"]) / iters
    return {"size": size, "s_per_iter": per_iter, "images_per_s": batch / per_iter, "mask_share": times["mask"] / iters / per_iter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device} threads={torch.get_num_threads()} image={args.image_size} batch={args.batch}")
    for size in args.sizes:
        r = bench(size, args.image_size, args.batch, args.iters, device, amp=device.type == "cuda")
        print(f"{r['size']:>6}: {r['s_per_iter']:.3f} s/iter, {r['images_per_s']:.1f} images/s "
              f"(masking {100 * r['mask_share']:.1f}% of the step)")


if __name__ == "__main__":
    main()
