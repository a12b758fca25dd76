"""Tests for usfm_monai.apps.authors_weights.

Oracle: a fake ``USFM_latest.pth`` built from timm's 3-channel BEiT with ONE shared relative position bias (the
authors' layout, as in tests/networks/test_weights.py) at the tiny width. At 224 px (no resizing) the converted
1-channel encoder on a grayscale image must reproduce the authors' network on the replicated, ImageNet-normalized
image, block by block; hashlib on the written files; the bundles' own network classes loading the exports strictly.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from timm.models.beit import Beit

from usfm_monai.apps.authors_weights import BUNDLE_IMG_SIZE, convert_authors_weights
from usfm_monai.networks.encoder import USFM_SIZES, create_usfm_encoder
from usfm_monai.networks.weights import load_encoder_weights

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = USFM_SIZES["tiny"]


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """``(beit, checkpoint path)``: a 3-channel BEiT with a shared rel-pos bias saved as the authors save it."""
    torch.manual_seed(0)
    model = Beit(
        img_size=224, patch_size=16, in_chans=3, num_classes=0, use_abs_pos_emb=False, use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True, init_values=0.1, use_fc_norm=False, **TINY,
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "gamma" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["rel_pos_bias.relative_position_index"] = model.rel_pos_bias.relative_position_index.clone()
    state["mask_token"] = torch.zeros(1, 1, TINY["embed_dim"])
    path = tmp_path_factory.mktemp("authors") / "USFM_latest.pth"
    torch.save({"model": state}, path)
    return model, path


@pytest.fixture(scope="module")
def converted(authors, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    return out, convert_authors_weights(str(authors[1]), str(out), size="tiny")


def test_outputs_per_input_size(authors, converted):
    out, card = converted
    files = [(o["file"], o["img_size"]) for o in card["outputs"]]
    assert files == [("usfm_encoder_224.pt", 224), ("usfm_encoder_256.pt", 256)]
    assert card["outputs"][0]["bundles"] == ["pretrain_usfm", "enhance_usenhance"]
    assert card["outputs"][1]["bundles"] == ["seg_tn3k", "cls_busi"]
    assert card["source"]["sha256"] == hashlib.sha256(authors[1].read_bytes()).hexdigest()
    for o in card["outputs"]:
        assert o["sha256"] == hashlib.sha256((out / o["file"]).read_bytes()).hexdigest()
        export = torch.load(out / o["file"], weights_only=True)
        assert list(export["config"]["img_size"]) == [o["img_size"]] * 2
        assert export["config"]["converted_from"] == "USFM_latest.pth"
        rep = o["report"]
        assert rep["layout"] == "authors_usfm" and rep["missing"] == [] and rep["unexpected"] == []
        assert any("shared" in c for c in rep["converted"]) and any("folded" in c for c in rep["converted"])
    # 14 x 14 grid at 224 needs no resizing; 16 x 16 at 256 resizes each block's table
    assert card["outputs"][0]["report"]["resized"] == []
    assert len(card["outputs"][1]["report"]["resized"]) == TINY["depth"]
    assert "(14, 14) -> (16, 16)" in card["outputs"][1]["report"]["resized"][0]


def test_224_export_reproduces_authors_network(authors, converted):
    model, _ = authors
    out, _ = converted
    encoder = create_usfm_encoder("tiny", img_size=224, drop_path_rate=0.0, use_fc_norm=False).eval()
    report = load_encoder_weights(encoder, str(out / "usfm_encoder_224.pt"))
    assert report.layout == "usfm_monai_export" and report.missing == [] and report.unexpected == []
    x = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = encoder.forward_intermediates(x, intermediates_only=True)
        expected = model.forward_intermediates((x.repeat(1, 3, 1, 1) - MEAN) / STD, intermediates_only=True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_256_export_loads_into_the_task_networks(converted):
    from usfm_monai.networks import USFMClassifier, USFMSegmenter, load_encoder_weights

    out, _ = converted
    path = str(out / "usfm_encoder_256.pt")
    seg = USFMSegmenter(num_classes=2, size="tiny", img_size=256).eval()
    cls = USFMClassifier(num_classes=3, size="tiny", img_size=256).eval()
    for net in (seg, cls):
        load_encoder_weights(net, path)
    export = torch.load(path, weights_only=True)["state_dict"]
    for net in (seg, cls):
        assert torch.equal(net.encoder.patch_embed.proj.weight, export["patch_embed.proj.weight"])
        table = net.encoder.blocks[0].attn.relative_position_bias_table
        assert torch.equal(table, export["blocks.0.attn.relative_position_bias_table"]) and torch.isfinite(table).all()
    with torch.no_grad():
        assert torch.isfinite(seg(torch.rand(1, 1, 256, 256))).all()


def test_model_card_files(converted):
    out, card = converted
    assert json.loads((out / "model_card.json").read_text()) == card
    md = (out / "MODEL_CARD.md").read_text()
    assert card["source"]["sha256"] in md
    assert "--pretrained " + card["outputs"][1]["path"] in md
    assert "--usfm_weights " + card["outputs"][0]["path"] in md
    assert "(14, 14) -> (16, 16)" in md


def test_bundle_selection_and_img_size(authors, tmp_path):
    card = convert_authors_weights(str(authors[1]), str(tmp_path), bundles=["cls_busi"], img_size=32, size="tiny")
    assert [(o["file"], o["bundles"]) for o in card["outputs"]] == [("usfm_encoder_32.pt", ["cls_busi"])]
    assert BUNDLE_IMG_SIZE["cls_busi"] == 256  # the default that img_size overrode


def test_errors(authors, tmp_path):
    with pytest.raises(FileNotFoundError, match="authors' checkpoint not found"):
        convert_authors_weights(str(tmp_path / "missing.pth"), str(tmp_path))
    with pytest.raises(KeyError, match="unknown bundle 'other'"):
        convert_authors_weights(str(authors[1]), str(tmp_path), bundles=["other"], size="tiny")
    with pytest.raises(ValueError, match="multiple of 16"):
        convert_authors_weights(str(authors[1]), str(tmp_path), bundles=["seg_tn3k"], img_size=250, size="tiny")
    with pytest.raises(ValueError, match="size must be one of"):
        convert_authors_weights(str(authors[1]), str(tmp_path), size="huge")
    with pytest.raises(ValueError, match="empty"):
        convert_authors_weights(str(authors[1]), str(tmp_path), bundles=[], size="tiny")
    # our own export is not the authors' layout
    from usfm_monai.networks.mim import export_encoder

    ours = tmp_path / "ours.pt"

    export_encoder(create_usfm_encoder("tiny", img_size=32, use_fc_norm=False), str(ours))
    with pytest.raises(KeyError, match="not the authors' USFM layout"):
        convert_authors_weights(str(ours), str(tmp_path / "o"), bundles=["cls_busi"], img_size=32, size="tiny")
    # a checkpoint of another width fails the strict load with the key/shape list
    with pytest.raises(ValueError, match="patch_embed|shapes do not match"):
        convert_authors_weights(str(authors[1]), str(tmp_path / "s"), bundles=["cls_busi"], size="small")


def test_convert_names_a_checkpoint_that_is_not_a_torch_file(tmp_path):
    bad = tmp_path / "USFM_latest.pth"
    bad.write_text("<html>404 Not Found</html>\n")  # a failed download
    with pytest.raises(ValueError, match=r"authors' checkpoint file \S*USFM_latest\.pth \(\d+ bytes\) is not a file"):
        convert_authors_weights(str(bad), str(tmp_path / "out"), bundles=["seg_tn3k"], size="tiny")
