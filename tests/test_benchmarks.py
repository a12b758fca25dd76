"""The GPU-path benchmarks: the plain-PyTorch comparison step, the GPU check's stages and its CPU smoke run.

Oracles: timm's published cost of ViT-Ti/16 and ViT-B/16 at 224 px (1.26 and 17.58 GMACs per forward pass, with a
3-channel patch embedding and no decoder where ours has 1 channel and a 1x1-conv decoder, hence the 3 % tolerance,
i.e. 2 FLOP per MAC and 3 passes per training image); the per-sample mask transform replayed with the same
random stream as the hand-written numpy mask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_plain_step  # noqa: E402
import gpu_check  # noqa: E402

from usfm_monai.transforms import RandDualDomainMask  # noqa: E402
from usfm_monai.transforms.frequency_mask import frequency_band_map  # noqa: E402


@pytest.mark.parametrize("size, gmacs", [("tiny", 1.26), ("base", 17.58)])
def test_train_flops_match_the_published_vit_cost(size, gmacs):
    assert gpu_check.train_flops_per_image(size, 224) == pytest.approx(3 * 2 * gmacs * 1e9, rel=0.03)


def test_a_failing_stage_is_reported_and_the_next_stage_runs():
    rows, deadline = [], float("inf")

    def boom():
        raise RuntimeError("CUDA out of memory\nmore")

    def skip():
        raise gpu_check.StageSkipped("no CUDA")

    gpu_check.run_stage(rows, "a", "x", boom, deadline)
    gpu_check.run_stage(rows, "b", "y", skip, deadline)
    gpu_check.run_stage(rows, "c", "z", lambda: {"images_per_s": 3.0}, deadline)
    gpu_check.run_stage(rows, "d", "w", lambda: {"images_per_s": 1.0}, deadline=0.0)
    assert [r.status for r in rows] == [
        "FAILED: RuntimeError: CUDA out of memory", "skipped: no CUDA", "ok", "skipped: out of total time"
    ]
    assert rows[2].images_per_s == 3.0 and rows[3].images_per_s is None


def test_plain_numpy_mask_is_the_same_mask_as_ours():
    seed, shape = 3, (1, 64, 96)
    image = np.random.RandomState(0).rand(*shape).astype(np.float32)
    band_map = frequency_band_map(shape[1:], bench_plain_step.BANDS, bench_plain_step.KEEP, "linear")
    masker = RandDualDomainMask(
        block_size=bench_plain_step.BLOCK, mask_ratio=bench_plain_step.RATIO, num_bands=bench_plain_step.BANDS,
        num_masked_bands=bench_plain_step.MASKED_BANDS, keep_size=bench_plain_step.KEEP,
    ).set_random_state(seed)
    ours = masker(torch.from_numpy(image))
    # the same draws through the plain numpy masking: the two implementations apply eq. 8 identically
    draws = (masker.block_grid, masker.band_ids)
    plain = bench_plain_step.plain_dual_mask(image, np.random.RandomState(seed), band_map, draws=draws)
    np.testing.assert_allclose(plain, ours.numpy(), atol=1e-5)
    assert not np.allclose(plain, image)  # something was masked
    # and the plain step's own numpy draws mask about RATIO of the blocks
    own = bench_plain_step.plain_dual_mask(image, np.random.RandomState(seed), band_map)
    assert not np.allclose(own, image)


def test_plain_ffl_equals_ours():
    from usfm_monai.losses import FocalFrequencyLoss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    expected = FocalFrequencyLoss()(pred, target).item()
    assert bench_plain_step.plain_ffl(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_compare_times_both_steps():
    r = bench_plain_step.compare("tiny", image_size=32, batch=2, rounds=2, iters=1, warmup=0)
    for name in ("plain", "ours"):
        assert r[f"{name}_s"] > 0 and r[f"{name}_cpu_s"] > 0
        assert r[f"{name}_cpu_s"] >= max(r[f"{name}_{p}_cpu_s"] for p in bench_plain_step.PHASES)
        assert r[f"{name}_img_s"] == pytest.approx(2 / r[f"{name}_s"])
    assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["plain_img_s"])


@pytest.mark.slow
def test_gpu_check_cpu_smoke_end_to_end(tmp_path):
    out_json = tmp_path / "rows.json"
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--cpu-smoke",
           "--work_dir", str(tmp_path / "work"), "--json", str(out_json)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out_json.read_text())
    stages = [(r["stage"], r["status"]) for r in rows]
    assert [s for s, _ in stages] == ["step"] * 3 + ["masks", "loader", "pretrain", "seg", "cls", "ddp"]
    for row in rows:
        if row["setting"].endswith("compile"):
            assert row["status"].startswith("skipped"), row
        else:
            assert row["status"] == "ok", row
    assert all(r["images_per_s"] > 0 for r in rows[:5] if r["status"] == "ok")
    assert "stage" in proc.stdout and "images/s" in proc.stdout  # the table was printed


def _fake_run(root, weight: float, dice: float, pixel: int) -> None:
    """What a bundle run leaves behind: TensorBoard scalars, an evaluation CSV, weights and an inference image."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(root / "models")
    os.makedirs(root / "eval" / "inference")
    writer = SummaryWriter(str(root / "eval" / "tensorboard"))
    writer.add_scalar("val_dice", dice, 1)
    writer.close()
    (root / "eval" / "dice_raw.csv").write_text(f"filename,class0\na.png,{dice}\n")
    torch.save({"model": {"w": torch.full((2,), weight)}}, root / "models" / "model.pt")
    Image.fromarray(np.full((4, 4), pixel, np.uint8)).save(root / "eval" / "inference" / "a_seg.png")


def test_quick_run_comparison_finds_each_kind_of_difference(tmp_path):
    import compare_quick_runs

    _fake_run(tmp_path / "a" / "seg_tn3k", weight=1.0, dice=0.5, pixel=0)
    _fake_run(tmp_path / "b" / "seg_tn3k", weight=1.0, dice=0.5, pixel=0)
    _fake_run(tmp_path / "c" / "seg_tn3k", weight=1.0 + 1e-3, dice=0.5, pixel=255)
    same = compare_quick_runs.compare(str(tmp_path / "a"), str(tmp_path / "b"), bundles=["seg_tn3k"])
    assert {r["kind"]: (r["compared"], r["verdict"]) for r in same} == {
        "scalars": (1, "same"), "eval_csv": (1, "same"), "eval_json": (0, "same"), "weights": (1, "same"),
        "images": (1, "same")}
    other = {r["kind"]: r for r in compare_quick_runs.compare(str(tmp_path / "a"), str(tmp_path / "c"),
                                                              bundles=["seg_tn3k"])}
    assert other["weights"]["verdict"] == "DIFFERENT" and other["weights"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-4)
    assert other["images"]["max_abs_diff"] == 255 and other["scalars"]["verdict"] == "same"


def test_reading_the_pretraining_config_writes_no_data():
    import bench_check_properties

    seconds, written = bench_check_properties.check_properties_seconds("pretrain_usfm", "infer")
    assert written == 0 and seconds > 0


@pytest.mark.parametrize("cache_rate", [0.0, 1.0])
def test_loader_benchmark_measures_the_cache_it_names(tmp_path, cache_rate):
    from bench_loader import build_pretrain_loader

    loader = build_pretrain_loader(str(tmp_path), 0, cache_rate, batch_size=2, num_images=20, load_size=40,
                                   image_size=32)
    assert loader.dataset.cache_num == round(cache_rate * len(loader.dataset)) and len(loader.dataset) > 0
    assert next(iter(loader))["image"].shape[-2:] == (32, 32)
