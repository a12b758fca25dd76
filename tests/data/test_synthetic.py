import json
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from monai.transforms import LoadImaged
from usfm_monai.data import synthetic
from usfm_monai.data.datalist import load_datalist
from usfm_monai.data.synthetic import (
    CLASS_NAMES,
    ORGANS,
    ensure_synthetic_dataset,
    image_seed,
    make_synthetic_dataset,
    synthesize_image,
    synthesize_pair,
)

SIZE = 64


@pytest.mark.parametrize("organ", ORGANS)
@pytest.mark.parametrize("geometry", ["linear", "sector"])
def test_seed_determines_image(organ, geometry):
    a = synthesize_image(organ, SIZE, geometry, "benign", seed=7)
    b = synthesize_image(organ, SIZE, geometry, "benign", seed=7)
    c = synthesize_image(organ, SIZE, geometry, "benign", seed=8)
    assert a["image"].dtype == np.uint8 and a["image"].shape == (SIZE, SIZE)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    fov = a["fov"].astype(bool)
    assert np.mean(a["image"][fov] != c["image"][fov]) > 0.5
    assert a["image"][fov].std() > 10  # speckled, not flat


def test_sector_black_outside_fan_linear_full_field():
    out = synthesize_image("liver", (48, 80), "sector", seed=1)
    fov = out["fov"].astype(bool)
    assert out["image"].shape == (48, 80)
    assert not out["image"][~fov].any()
    # the fan: the top corners and the bottom corners are outside, the central beam is inside
    assert not fov[0, 0] and not fov[0, -1] and not fov[-1, 0] and not fov[-1, -1] and fov[24, 40]
    lin = synthesize_image("breast", (48, 80), "linear", seed=1)
    assert lin["fov"].all() and lin["image"].shape == (48, 80)


def test_lesion_mask_binary_inside_fov_and_normal_empty():
    for organ in ORGANS:
        normal = synthesize_image(organ, SIZE, "sector", None, seed=3)
        assert normal["class_name"] == "normal" and not normal["mask"].any()
        for lesion in ("benign", "malignant", "hyperechoic"):
            out = synthesize_image(organ, SIZE, "sector", lesion, seed=3)
            assert set(np.unique(out["mask"])) == {0, 1} and out["mask"].dtype == np.uint8
            assert not (out["mask"] & (1 - out["fov"])).any()
            assert connected_components(out["mask"]).max() >= 1


def test_lesion_echogenicity_and_posterior_features():
    """The same seed without a lesion is the same scene (anatomy, gain, speckle), so the difference is the lesion:
    hypoechoic inside; below it a shadow (malignant) or a slight enhancement (benign)."""
    for seed in range(6):
        normal = synthesize_image("breast", 128, "linear", None, seed=seed)["image"].astype(float)
        for lesion in ("malignant", "benign"):
            out = synthesize_image("breast", 128, "linear", lesion, seed=seed)
            img, mask = out["image"].astype(float), out["mask"].astype(bool)
            assert img[mask].mean() < normal[mask].mean() - 25
            rows, cols = np.nonzero(mask)
            below = (slice(rows.max() + 6, min(rows.max() + 26, 128)), slice(cols.min() + 2, cols.max() - 1))
            change = img[below].mean() - normal[below].mean()
            if lesion == "malignant":
                assert change < -20, (seed, change)
            else:
                assert 0 < change < 30, (seed, change)  # a few dB of posterior enhancement
            # far to the side of the lesion nothing changes
            side = cols.max() + 20 if cols.max() + 20 < 128 else cols.min() - 20
            assert np.abs(img[:, side] - normal[:, side]).max() <= 1  # up to float rounding of the FFT


def test_malignant_margins_less_compact_than_benign():
    """Spiculated margins: perimeter^2 / (4 pi area) is 1 for a disc and grows with irregularity."""

    def compactness(mask):
        (region,) = regionprops(mask.astype(np.uint8))
        return region.perimeter**2 / (4 * np.pi * region.area)

    benign = [compactness(synthesize_image("breast", 192, "linear", "benign", s)["mask"]) for s in range(5)]
    malignant = [compactness(synthesize_image("breast", 192, "linear", "malignant", s)["mask"]) for s in range(5)]
    assert max(benign) < min(malignant)


def test_speckle_is_rayleigh():
    """Fully developed speckle: 20 log10 of a Rayleigh envelope has mean -2.51 dB and std 5.57 dB."""
    shape = (128, 128)
    geo = dict(synthetic._geometry(shape, "linear", 0.3, 0.6))
    geo["zr_depth"] = ((np.arange(shape[0], dtype=np.float32) + 0.5) / shape[0])[:, None]
    alpha = synthetic._ORGAN_PHYSICS["liver"]["alpha"]
    tgc = np.exp(alpha * geo["zr_depth"]).astype(np.float32)  # cancels the attenuation exactly
    zeros = np.zeros(shape, np.float32)
    img = synthetic._render(np.random.default_rng(0), "liver", zeros, zeros, zeros, tgc, 0.0, geo, "standard")
    q = synthetic._QUALITY["standard"]
    db = img * q["range_db"] + q["floor_db"]
    db = db[(img > 0) & (img < 1)]  # drop clipped pixels (a fraction of a percent)
    euler_gamma = 0.5772156649
    assert abs(db.mean() - (-10 * euler_gamma / np.log(10))) < 0.3
    assert abs(db.std() - 10 / np.log(10) * np.pi / np.sqrt(6)) < 0.3


def test_pair_same_anatomy_low_is_degraded():
    low, high = synthesize_pair("kidney", 96, "sector", None, seed=2)
    other_low, _ = synthesize_pair("kidney", 96, "sector", None, seed=3)
    assert low.dtype == high.dtype == np.uint8
    fov = synthesize_image("kidney", 96, "sector", None, seed=2)["fov"].astype(bool)
    assert not low[~fov].any() and not high[~fov].any() and (high[fov] > 0).mean() > 0.99

    def corr(a, b):
        return np.corrcoef(a[fov].astype(float), b[fov].astype(float))[0, 1]

    assert corr(low, high) > corr(other_low, high) + 0.1
    # speckle / noise: pixel-to-pixel differences are larger in the low-quality image
    fov = fov[:, 1:] & fov[:, :-1]
    def roughness(img):
        return np.abs(np.diff(img.astype(float), axis=1))[fov].mean()

    assert roughness(low) > 1.5 * roughness(high)
    low2, high2 = synthesize_pair("kidney", 96, "sector", None, seed=2)
    np.testing.assert_array_equal(low, low2)
    np.testing.assert_array_equal(high, high2)


def test_pair_one_degradation_at_a_time():
    high_q = dict(synthetic._QUALITY["high"])
    args = ("thyroid", 64, "linear", None, 4)  # linear: no scan-conversion interpolation after the window clip
    low, high = synthesize_pair(*args)
    # defaults unchanged by the explicit arguments
    for got, ref in zip(synthesize_pair(*args, low_settings=None, shared_speckle=False), (low, high)):
        np.testing.assert_array_equal(got, ref)
    # high-quality settings and shared draws: the "low" image is the high one
    same_low, same_high = synthesize_pair(*args, low_settings=high_q, shared_speckle=True)
    np.testing.assert_array_equal(same_high, high)
    np.testing.assert_array_equal(same_low, high)
    # independent draws with the same settings: same anatomy, different speckle
    indep_low, _ = synthesize_pair(*args, low_settings=high_q, shared_speckle=False)
    assert not np.array_equal(indep_low, high)
    # window only: on pixels clipped in neither window, the 30 dB window is the 48 dB one stretched by 48 / 30
    win_low, _ = synthesize_pair(*args, low_settings={**high_q, "floor_db": -24.0, "range_db": 30.0},
                                 shared_speckle=True)
    h, lo = high.astype(float) / 255, win_low.astype(float) / 255
    inside = (lo > 0.05) & (lo < 0.95)
    np.testing.assert_allclose(lo[inside], (h[inside] * 48.0 - 12.0) / 30.0, atol=2.5 / 255 * 48 / 30)
    with pytest.raises(ValueError, match="low_settings keys"):
        synthesize_pair(*args, low_settings={"gain": 1.0})
    with pytest.raises(ValueError, match="looks"):
        synthesize_pair(*args, low_settings={"looks": 0})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"organ": "spleen"}, "organ must be one of"),
        ({"geometry": "convex"}, "geometry must be one of"),
        ({"lesion": "cyst"}, "lesion must be None or one of"),
        ({"image_size": (8, 64)}, "image_size"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(organ="liver", image_size=32, geometry="linear", lesion=None, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        synthesize_image(**args)


def test_image_seed_streams():
    seeds = {image_seed(0, i) for i in range(100)} | {image_seed(1, i) for i in range(100)}
    assert len(seeds) == 200 and image_seed(0, 5) == image_seed(0, 5)
    assert image_seed(0, 5) == int(np.random.SeedSequence([0, 5]).generate_state(1, dtype=np.uint64)[0] >> 1)


@pytest.mark.parametrize("task", ["pretrain", "segmentation", "classification", "enhancement"])
def test_make_dataset_layout_and_loading(task, tmp_path):
    out = make_synthetic_dataset(str(tmp_path / task), task, num_images=12, image_size=(32, 40), seed=4)
    with open(out) as f:
        data = json.load(f)
    meta = data["metadata"]
    assert meta["task"] == task and meta["seed"] == 4 and meta["image_size"] == [32, 40]
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION
    sections = [data[s] for s in ("training", "validation", "test")]
    assert sum(len(s) for s in sections) == 12 and meta["sizes"] == {k: len(data[k]) for k in meta["sizes"]}
    names = [it["image"] for s in sections for it in s]
    assert len(set(names)) == 12 and not any(os.path.isabs(p) for p in names)
    keys = {"pretrain": ("image",), "segmentation": ("image", "label"), "classification": ("image", "label"),
            "enhancement": ("image", "target")}[task]
    items = load_datalist(out, "training", required_keys=keys)
    first = data["training"][0]
    index = int(os.path.basename(first["image"])[:5])
    organ = first["organ"]
    geometry = synthetic.DEFAULT_GEOMETRY[organ]
    png = np.asarray(Image.open(items[0]["image"]))
    if task == "enhancement":
        low, high = synthesize_pair(organ, (32, 40), geometry, None, image_seed(4, index))
        np.testing.assert_array_equal(png, low)
        np.testing.assert_array_equal(np.asarray(Image.open(items[0]["target"])), high)
    else:
        lesion = {"classification": None if first.get("class_name") == "normal" else first.get("class_name"),
                  "segmentation": ("benign", "malignant")[index % 2], "pretrain": None}[task]
        ref = synthesize_image(organ, (32, 40), geometry, lesion, image_seed(4, index))
        np.testing.assert_array_equal(png, ref["image"])
        if task == "segmentation":
            label = np.asarray(Image.open(items[0]["label"]))
            np.testing.assert_array_equal(label, ref["mask"] * 255)
            # training reads it with LoadImaged / PILReader: same geometry for image and label
            sample = LoadImaged(("image", "label"), reader="PILReader", ensure_channel_first=True)(items[0])
            assert sample["image"].shape == sample["label"].shape == (1, 40, 32)
            np.testing.assert_array_equal(sample["label"][0].numpy(), label.T)
    if task == "classification":
        assert meta["class_names"] == list(CLASS_NAMES)
        all_items = [it for s in sections for it in s]
        assert [sum(it["class_name"] == c for it in all_items) for c in CLASS_NAMES] == [4, 4, 4]
        assert all(CLASS_NAMES[it["label"]] == it["class_name"] for it in all_items)
    if task == "pretrain":
        assert {it["organ"] for s in sections for it in s} == set(ORGANS)


def test_make_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        make_synthetic_dataset(str(tmp_path), "detection")
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        make_synthetic_dataset(str(tmp_path), "pretrain", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="organs"):
        make_synthetic_dataset(str(tmp_path), "pretrain", organs=("lung",))


def _token(path):
    with open(path) as f:
        return json.load(f)["metadata"]["token"]


def test_ensure_idempotent_regenerates_on_change_and_atomic(tmp_path):
    target = str(tmp_path / "synthetic_pretrain")
    kwargs = dict(num_images=4, image_size=32)
    path = ensure_synthetic_dataset(target, "pretrain", **kwargs)
    token = _token(path)
    assert ensure_synthetic_dataset(target, "pretrain", **kwargs) == path and _token(path) == token
    # a missing file makes the dataset incomplete: regenerated
    os.remove(os.path.join(target, "images", "00001.png"))
    assert _token(ensure_synthetic_dataset(target, "pretrain", **kwargs)) != token
    token = _token(path)
    ensure_synthetic_dataset(target, "pretrain", num_images=5, image_size=32)
    assert _token(path) != token and len(os.listdir(os.path.join(target, "images"))) == 5
    assert sorted(os.listdir(tmp_path)) == ["synthetic_pretrain"]  # no temp dirs or lock files left


def _worker(target, barrier, queue):
    barrier.wait()
    path = ensure_synthetic_dataset(target, "segmentation", num_images=6, image_size=32)
    queue.put(_token(path))


def test_ensure_concurrent_processes_generate_once(tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    target = str(tmp_path / "synthetic_segmentation")
    procs = [ctx.Process(target=_worker, args=(target, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    tokens = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert tokens[0] == tokens[1] == _token(os.path.join(target, "datalist.json"))
    assert sorted(os.listdir(tmp_path)) == ["synthetic_segmentation"]


def test_ensure_breaks_lock_of_dead_process(tmp_path):
    dead = mp.get_context("fork").Process(target=int)
    dead.start()
    dead.join()
    target = tmp_path / "synthetic_pretrain"
    (tmp_path / "synthetic_pretrain.lock").write_text(f"{socket.gethostname()}:{dead.pid}")
    path = ensure_synthetic_dataset(str(target), "pretrain", num_images=2, image_size=32, timeout=30)
    assert os.path.isfile(path) and not (tmp_path / "synthetic_pretrain.lock").exists()


def test_ensure_times_out_on_live_lock(tmp_path):
    (tmp_path / "synthetic_pretrain.lock").write_text(f"{socket.gethostname()}:{os.getpid()}")
    with pytest.raises(TimeoutError, match="delete the lock file"):
        ensure_synthetic_dataset(str(tmp_path / "synthetic_pretrain"), "pretrain", num_images=2, image_size=32,
                                 timeout=0.5)


def test_ensure_refuses_to_replace_foreign_folder(tmp_path):
    target = tmp_path / "my_data"
    target.mkdir()
    (target / "precious.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="refusing to replace"):
        ensure_synthetic_dataset(str(target), "pretrain", num_images=2, image_size=32)
    assert (target / "precious.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert os.path.isfile(ensure_synthetic_dataset(str(empty), "pretrain", num_images=2, image_size=32))


# --- the split: simulator, dataset writer, cached-folder helper ----------------------------------------------------


def test_synthetic_reexports_the_simulator_and_imports_no_datalist():
    import ast

    from usfm_monai.data import cached_folder, simulator

    for name in ("synthesize_image", "synthesize_pair", "image_seed", "ORGANS", "GENERATOR_VERSION", "_QUALITY",
                 "_geometry", "_render", "_ORGAN_PHYSICS"):
        assert getattr(synthetic, name) is getattr(simulator, name)
    # datalist imports the writer; the writer, the simulator and the cached-folder helper import no datalist module
    # (nor each other backwards): no import cycle
    for module, forbidden in ((synthetic, ("datalist",)), (simulator, ("datalist", "synthetic", "cached_folder")),
                              (cached_folder, ("datalist", "synthetic", "simulator"))):
        imported = set()
        for node in ast.walk(ast.parse(open(module.__file__).read())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not [m for m in imported if m.startswith("usfm_monai.data.") and m.split(".")[-1] in forbidden]


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_synthetic_datalist_is_what_is_written(tmp_path, task):
    kwargs = dict(num_images=14, image_size=32, seed=2, val_fraction=0.25, test_fraction=0.15)
    planned = synthetic.synthetic_datalist(task, **kwargs)
    assert not os.listdir(tmp_path)  # planning writes nothing
    with open(make_synthetic_dataset(str(tmp_path / task), task, **kwargs)) as f:
        written = json.load(f)
    assert planned == {k: written[k] for k in ("training", "validation", "test")}
    with pytest.raises(ValueError, match="task must be one of"):
        synthetic.synthetic_datalist("detection")


def test_publish_folder_is_atomic_and_cleans_up(tmp_path):
    from usfm_monai.data.cached_folder import publish_folder

    target = tmp_path / "cache"

    def build(marker):
        def _build(folder):
            with open(os.path.join(folder, "content.txt"), "w") as f:
                f.write(marker)
        return _build

    publish_folder(str(target), build("one"))
    assert (target / "content.txt").read_text() == "one" and oct(target.stat().st_mode & 0o777) == "0o755"

    def broken(folder):
        build("half")(folder)
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        publish_folder(str(target), broken)
    assert (target / "content.txt").read_text() == "one"  # the old folder is untouched
    publish_folder(str(target), build("two"))  # a stale folder is replaced
    assert (target / "content.txt").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no temporary or moved-aside folders left


def test_ensure_folder_builds_once_under_the_lock(tmp_path):
    from usfm_monai.data.cached_folder import ensure_folder, rank_zero_first

    target = tmp_path / "cache"
    calls = []

    def build(folder):
        calls.append(folder)
        assert os.path.isfile(str(target) + ".lock")  # built while holding <folder>.lock
        open(os.path.join(folder, "done"), "w").close()

    def current():
        return (target / "done").is_file()

    assert ensure_folder(str(target), current, build) is True
    assert ensure_folder(str(target), current, build) is False and len(calls) == 1
    assert sorted(os.listdir(tmp_path)) == ["cache"]
    assert rank_zero_first(lambda: 42) == 42  # no process group: just the call


def test_file_lock_times_out_naming_the_purpose(tmp_path):
    from usfm_monai.data.cached_folder import file_lock

    lock = tmp_path / "x.lock"
    lock.write_text(f"{socket.gethostname()}:{os.getpid()}")  # held by a live process (this one)
    with pytest.raises(TimeoutError, match="another process doing things. If no such process"):
        with file_lock(str(lock), timeout=0.3, purpose="doing things"):
            pass
    lock.unlink()
    with file_lock(str(lock), timeout=1):
        assert lock.read_text() == f"{socket.gethostname()}:{os.getpid()}"
    assert not lock.exists()
