"""Our pretraining step vs. the plain-PyTorch step a user would write, same model size, same threads.

* **plain**: timm ``Beit`` (built directly, ``pretrained=False``, 1 channel, rel-pos bias, layer scale) + a 1x1
  conv / ``PixelShuffle`` decoder; per-sample **numpy** dual masks (block grid + ``np.fft`` band stop, what a
  DataLoader transform written by hand does) run in the loop; ``L1 + 0.4 * FFL`` written as in the reference
  ``focal_frequency_loss`` package; ``AdamW(model.parameters())``.
* **ours**: what ``bundles/pretrain_usfm/configs/train.json`` builds: ``USFMMaskedImageModel``,
  ``DualMaskPrepareBatch(BatchedDualDomainMask())``, ``USFMReconstructionLoss``, ``AdamW`` over
  ``layer_decay_param_groups``.

Both see the same ``(B, 1, H, W)`` batches in ``[0, 1]`` (data loading excluded) and run forward, backward and the
optimizer step. They are timed interleaved (a round of ``--iters`` steps of one, then of the other, ``--rounds``
times) so that a shared, loaded machine slows both alike; the table gives the median seconds per step and the
ratio ``ours / plain`` in images/s (> 1: ours is faster), by wall clock and by the process's CPU time per step
(with one thread, the CPU time is the step's own cost even when other jobs share the cores).

    python benchmarks/bench_plain_step.py --size tiny --image_size 224 --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from torch import nn

from usfm_monai.engines import DualMaskPrepareBatch
from usfm_monai.losses import USFMReconstructionLoss
from usfm_monai.networks import USFMMaskedImageModel
from usfm_monai.networks.encoder import USFM_SIZES
from usfm_monai.optim import layer_decay_param_groups
from usfm_monai.transforms import BatchedDualDomainMask
from usfm_monai.transforms.frequency_mask import frequency_band_map

__all__ = ["PlainMIM", "plain_dual_mask", "plain_ffl", "make_plain_step", "make_our_step", "compare"]

BLOCK, RATIO, BANDS, MASKED_BANDS, KEEP, LAMBDA_FREQ, PATCH = 32, 0.4, 7, 2, 10, 0.4, 16


class PlainMIM(nn.Module):
    """timm BEiT encoder (final norm on the tokens) + 1x1 conv + PixelShuffle decoder, as a user writes it."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, img_size: int, drop_path_rate: float = 0.1):
        super().__init__()
        self.encoder = Beit(
            img_size=img_size, patch_size=PATCH, in_chans=1, num_classes=0, global_pool="token",
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True,
            use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, drop_path_rate=drop_path_rate,
        )
        self.decoder = nn.Sequential(nn.Conv2d(embed_dim, PATCH * PATCH, kernel_size=1), nn.PixelShuffle(PATCH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:]  # B, N, D
        b, _, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, x.shape[-2] // PATCH, x.shape[-1] // PATCH)
        return self.decoder(grid)  # B, 1, H, W


def plain_dual_mask(
    image: np.ndarray, rng: np.random.RandomState, band_map: np.ndarray, draws: tuple | None = None
) -> np.ndarray:
    """Dual-mask one ``(C, H, W)`` numpy image: numpy block grid, ``np.fft`` band stop, mean fill (eq. 8).

    ``draws = (block_grid, band_ids)`` replaces the numpy draws (the test feeds ours, to compare the masking)."""
    _, h, w = image.shape
    if draws is None:
        grid = rng.random_sample((-(-h // BLOCK), -(-w // BLOCK))) < RATIO
        band_ids = rng.choice(BANDS, MASKED_BANDS, replace=False)
    else:
        grid, band_ids = (np.asarray(d) for d in draws)
    pixel = np.kron(grid, np.ones((BLOCK, BLOCK), dtype=bool))[:h, :w]
    stop = np.isin(np.asarray(band_map), band_ids)
    spectrum = np.fft.fftshift(np.fft.fft2(image), axes=(-2, -1))
    spectrum[:, stop] = 0
    filtered = np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1))).real
    return np.where(pixel, image.mean(axis=(-2, -1), keepdims=True), filtered).astype(np.float32)


def plain_ffl(pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss as the reference ``focal_frequency_loss`` package computes it (patch_factor 1)."""
    pf = torch.view_as_real(torch.fft.fft2(pred, norm="ortho"))
    tf = torch.view_as_real(torch.fft.fft2(target, norm="ortho"))
    dist = (pf - tf).pow(2).sum(-1)  # B, C, H, W
    weight = dist.sqrt() ** alpha
    weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
    weight = torch.nan_to_num(weight, nan=0.0).clamp(0, 1).detach()
    return (weight * dist).mean()


class _PhaseClock:
    """CPU seconds of this process spent in each named phase since the previous call."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.process_time()

    def __call__(self, name: str) -> None:
        now = time.process_time()
        self.phases[name] = now - self._last
        self._last = now


PHASES = ("mask", "forward", "loss", "backward", "optimizer")


def make_plain_step(size: str, image_size: int, seed: int = 0) -> Callable[[torch.Tensor], dict[str, float]]:
    spec = USFM_SIZES[size]
    torch.manual_seed(seed)
    model = PlainMIM(spec["embed_dim"], spec["depth"], spec["num_heads"], image_size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    rng = np.random.RandomState(seed)
    band_map = np.asarray(frequency_band_map((image_size, image_size), BANDS, KEEP, "linear"))

    def step(images: torch.Tensor) -> dict[str, float]:
        clock = _PhaseClock()
        masked = torch.from_numpy(np.stack([plain_dual_mask(img, rng, band_map) for img in images.numpy()]))
        clock("mask")
        opt.zero_grad(set_to_none=True)
        pred = model(masked)
        clock("forward")
        loss = F.l1_loss(pred, images) + LAMBDA_FREQ * plain_ffl(pred, images)
        clock("loss")
        loss.backward()
        clock("backward")
        opt.step()
        clock("optimizer")
        return clock.phases

    return step


def make_our_step(size: str, image_size: int, seed: int = 0) -> Callable[[torch.Tensor], dict[str, float]]:
    torch.manual_seed(seed)
    model = USFMMaskedImageModel(size=size, img_size=image_size, drop_path_rate=0.1).train()
    prepare = DualMaskPrepareBatch(BatchedDualDomainMask(BLOCK, RATIO, BANDS, MASKED_BANDS, KEEP), seed=seed)
    loss_fn = USFMReconstructionLoss(lambda_freq=LAMBDA_FREQ)
    opt = torch.optim.AdamW(layer_decay_param_groups(model, lr=1e-4, weight_decay=0.05, layer_decay=1.0), lr=1e-4)

    def step(images: torch.Tensor) -> dict[str, float]:
        clock = _PhaseClock()
        masked, target = prepare({"image": images}, torch.device("cpu"))
        clock("mask")
        opt.zero_grad(set_to_none=True)
        pred = model(masked)
        clock("forward")
        loss = loss_fn(pred, target)
        clock("loss")
        loss.backward()
        clock("backward")
        opt.step()
        clock("optimizer")
        return clock.phases

    return step


def compare(
    size: str = "tiny", image_size: int = 224, batch: int = 8, rounds: int = 5, iters: int = 2, warmup: int = 1
) -> dict[str, float]:
    """Interleaved timing of both steps.

    Returns the median wall seconds per step (``plain_s``, ``ours_s``), images/s, the median CPU seconds per step
    of this process (``*_cpu_s``: what the step costs, whatever else the machine runs) and per phase
    (``*_{mask,forward,loss,backward,optimizer}_cpu_s``), and the ratios ours/plain in images/s by wall clock
    (``ratio``) and by CPU time (``ratio_cpu``).
    """
    images = torch.rand(batch, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    steps = {"plain": make_plain_step(size, image_size), "ours": make_our_step(size, image_size)}
    for fn in steps.values():
        for _ in range(warmup):
            fn(images)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # A,B then B,A: no fixed position bias
        for name in order:
            for _ in range(iters):
                t0 = time.perf_counter()
                cpu[name].append(steps[name](images))
                wall[name].append(time.perf_counter() - t0)
    out: dict[str, float] = {}
    for name in steps:
        out[f"{name}_s"] = statistics.median(wall[name])
        out[f"{name}_cpu_s"] = statistics.median(sum(p.values()) for p in cpu[name])
        for phase in PHASES:
            out[f"{name}_{phase}_cpu_s"] = statistics.median(p[phase] for p in cpu[name])
        out[f"{name}_img_s"] = batch / out[f"{name}_s"]
    out["ratio"] = out["ours_img_s"] / out["plain_img_s"]
    out["ratio_cpu"] = out["plain_cpu_s"] / out["ours_cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(USFM_SIZES))
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per round and step kind (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = compare(args.size, args.image_size, args.batch, args.rounds, args.iters)
    print(
        f"{args.size} {args.image_size}px batch {args.batch}, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}, medians of {args.rounds * args.iters} interleaved steps each"
    )
    print(f"{'step':<6} {'wall s/step':>11} {'images/s':>9} {'CPU s/step':>11}   CPU s per phase: " + " ".join(PHASES))
    for name in ("plain", "ours"):
        phases = " ".join(f"{r[f'{name}_{p}_cpu_s']:.4f}" for p in PHASES)
        print(f"{name:<6} {r[name + '_s']:>11.3f} {r[name + '_img_s']:>9.2f} {r[name + '_cpu_s']:>11.3f}   {phases}")
    print(f"ratio ours/plain (images/s): {r['ratio']:.3f} by wall clock, {r['ratio_cpu']:.3f} by CPU time")


if __name__ == "__main__":
    main()
