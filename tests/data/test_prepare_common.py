import hashlib
import os

import numpy as np
import pytest
from fixtures.layouts import rect_mask, save, write_corrupt
from PIL import Image

from usfm_monai.data.prepare.common import (
    list_images,
    natural_key,
    pixel_hash,
    read_gray,
    read_mask,
    split_quotas,
    split_records,
    stratified_group_split,
)


@pytest.mark.parametrize(
    "n,ratios,expected",
    [
        (10, (0.7, 0.1, 0.2), [7, 1, 2]),
        (7, (0.7, 0.1, 0.2), [5, 1, 1]),  # shares 4.9, 0.7, 1.4 -> floors 4, 0, 1; remainders .9 .7 .4 -> +1 +1
        (3, (0.5, 0.5), [2, 1]),  # a tie goes to the first split
        (0, (0.7, 0.1, 0.2), [0, 0, 0]),
    ],
)
def test_split_quotas_hand_values(n, ratios, expected):
    assert split_quotas(n, ratios) == expected


def test_stratified_group_split_bound_order_and_seed():
    groups = {f"{c}{i}": (c, 1) for c, n in (("a", 23), ("b", 11), ("c", 4)) for i in range(n)}
    ratios = (0.7, 0.1, 0.2)
    out = stratified_group_split(groups, ratios, seed=3)
    for c, n in (("a", 23), ("b", 11), ("c", 4)):
        for name, r in zip(("training", "validation", "test"), ratios):
            count = sum(1 for g, s in out.items() if s == name and g.startswith(c))
            assert abs(count - n * r) <= 1
    # the order is sha256(f"{seed}:{group_id}"): with quotas 3/1/0 for "c", the first two go to training...
    cs = sorted((g for g in groups if g.startswith("c")), key=lambda g: hashlib.sha256(f"3:{g}".encode()).hexdigest())
    assert split_quotas(4, ratios) == [3, 0, 1]
    # ... each group goes where most quota is left: training (3 left) -> training (2) -> training (1) vs test (1)
    assert [out[g] for g in cs] == ["training", "training", "training", "test"]
    assert stratified_group_split(groups, ratios, seed=3) == out
    assert stratified_group_split(groups, ratios, seed=4) != out


def test_groups_never_straddle_and_conflicts():
    records = [{"path": f"x/{i}.png", "class_name": "a", "hash": f"h{i // 2}"} for i in range(10)]
    records += [{"path": "y/0.png", "class_name": "b", "hash": "h0"}]  # conflicts with x/0 and x/1
    sections, duplicates, conflicts = split_records(records, (0.6, 0.2, 0.2), seed=0, drop_conflicts=True)
    split_of = {r["path"]: s for s, recs in sections.items() for r in recs}
    assert "x/0.png" not in split_of and "y/0.png" not in split_of
    assert sorted(m["path"] for m in conflicts[0]) == ["x/0.png", "x/1.png", "y/0.png"]
    assert len(duplicates) == 4
    for i in range(2, 10, 2):
        assert split_of[f"x/{i}.png"] == split_of[f"x/{i + 1}.png"]
    kept, _, _ = split_records(records, (0.6, 0.2, 0.2), seed=0, drop_conflicts=False)
    assert sum(len(v) for v in kept.values()) == 11


def test_bad_ratios():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_group_split({"a": ("x", 1)}, (0.5, 0.6, -0.1))
    with pytest.raises(ValueError, match="3 non-negative"):
        stratified_group_split({"a": ("x", 1)}, (0.5, 0.5))


def test_read_gray_rgb_and_gray_encodings_hash_equal(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    gray = read_gray(save(str(tmp_path / "g.png"), img))
    rgb = read_gray(save(str(tmp_path / "c.png"), np.stack([img] * 3, -1)))
    rgba = read_gray(save(str(tmp_path / "a.png"), np.dstack([img] * 3 + [np.full_like(img, 7)])))
    np.testing.assert_array_equal(gray, img)
    assert pixel_hash(gray) == pixel_hash(rgb) == pixel_hash(rgba)
    assert pixel_hash(gray) != pixel_hash(gray.T.copy())  # same bytes in another shape is another picture


def test_read_mask_encodings(tmp_path):
    m = rect_mask((6, 8), 1, 2, 3, 4)
    one_bit = save(str(tmp_path / "1.png"), m)
    assert Image.open(one_bit).mode == "1"
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[m] = (255, 255, 255, 255)
    rgb_red_only_second = np.zeros((6, 8, 3), np.uint8)
    rgb_red_only_second[m, 0] = 9
    rgb_red_only_second[~m, 1] = 255  # foreground is decided by the first channel only
    pal = Image.fromarray(m.astype(np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.save(tmp_path / "p.png")
    for path in (one_bit, save(str(tmp_path / "a.png"), rgba), save(str(tmp_path / "c.png"), rgb_red_only_second),
                 str(tmp_path / "p.png")):
        np.testing.assert_array_equal(read_mask(path), m, err_msg=path)
    gray = save(str(tmp_path / "g.png"), np.where(m, 200, 100).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(gray, threshold=127), m)


def test_corrupt_file_error_names_it(tmp_path):
    path = write_corrupt(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="Cannot read image .*bad.png"):
        read_gray(path)
    with pytest.raises(ValueError, match="bad.png"):
        read_mask(path)


def test_list_images_natural_order(tmp_path):
    for name in ("x (10).png", "x (2).PNG", "x (1).jpg", ".hidden.png"):
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["x (1).jpg", "x (2).PNG", "x (10).png"]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]
