"""Fine-tuning vs from-scratch recipes of the downstream bundles: layer decay follows the weights, class balance."""

import pytest
import torch

from usfm_monai.data.synthetic import ensure_synthetic_dataset
from usfm_monai.losses import balanced_class_weights
from usfm_monai.networks.encoder import create_usfm_encoder
from usfm_monai.networks.mim import export_encoder


@pytest.fixture
def recipe(bundle_of, tmp_path):
    """``recipe(name, *extra_files, **overrides)``: a parser of the bundle's ``train.json`` + ``quick.json`` (+ extra
    files) at 128 px, writing under ``tmp_path``."""
    return lambda name, *extra, **override: bundle_of(name).parser(
        ["train.json", "quick.json", *extra], bundle_root=str(tmp_path), image_size=128, **override
    )


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A tiny pretraining-layout encoder at 128 px, exported as the pretrain bundle does."""
    path = tmp_path_factory.mktemp("encoder") / "usfm_encoder.pt"
    torch.manual_seed(0)
    return export_encoder(create_usfm_encoder("tiny", img_size=128, use_fc_norm=False), str(path))


def _lr_scales(parser):
    lr = parser.get_parsed_content("learning_rate")
    groups = parser.get_parsed_content("optimizer").param_groups
    return sorted({round(g["lr"] / lr, 8) for g in groups})


@pytest.mark.parametrize("bundle", ["cls_busi", "seg_tn3k"])
def test_scratch_trains_every_layer_at_full_rate(bundle, recipe):
    # the default (pretrained: null) and the explicit scratch baseline: one learning rate for every group
    assert _lr_scales(recipe(bundle)) == [1.0]
    baseline = {"cls_busi": "baseline_vit_scratch.json", "seg_tn3k": "baseline_upernet.json"}[bundle]
    assert _lr_scales(recipe(bundle, baseline)) == [1.0]


@pytest.mark.parametrize("bundle", ["cls_busi", "seg_tn3k"])
def test_fine_tuning_decays_learning_rate_with_depth(bundle, recipe, encoder_file):
    scales = _lr_scales(recipe(bundle, pretrained=encoder_file, layer_decay_pretrained=0.65))
    # 12 blocks + patch embedding + head: 14 distinct scales, the patch embedding at 0.65 ** 13
    assert len(scales) == 14
    assert scales[0] == pytest.approx(0.65**13, rel=1e-5) and scales[-1] == 1.0
    # an explicit --layer_decay still wins over the automatic choice
    assert _lr_scales(recipe(bundle, layer_decay=1.0, pretrained=encoder_file)) == [1.0]


@pytest.mark.parametrize("bundle", ["cls_busi", "seg_tn3k"])
def test_pretrained_encoder_loads_when_training_starts(bundle, recipe, encoder_file):
    """Building the network and the trainer reads no weights; the first train handler loads them at STARTED."""
    from usfm_monai.handlers import EncoderWeightsLoader

    parser = recipe(bundle, pretrained=encoder_file)
    exported = torch.load(encoder_file, weights_only=True)["state_dict"]["patch_embed.proj.weight"]
    network = parser.get_parsed_content("network_def")
    with torch.no_grad():
        network.encoder.patch_embed.proj.weight.zero_()  # a marker: still there if nothing was loaded
    trainer = parser.get_parsed_content("train#trainer")
    handlers = parser.get_parsed_content("train#handlers")
    loader = handlers[0]
    assert isinstance(loader, EncoderWeightsLoader) and not network.encoder.patch_embed.proj.weight.any()
    loader(trainer)
    assert torch.equal(network.encoder.patch_embed.proj.weight, exported)
    assert loader.report.layout == "usfm_monai_export"
    # without weights the handler is left out
    parser.update({"pretrained": None})
    parser.parse()
    assert not any(isinstance(h, EncoderWeightsLoader) for h in parser.get_parsed_content("train#handlers"))


@pytest.mark.parametrize("bundle", ["cls_busi", "seg_tn3k"])
def test_weights_load_before_resuming_and_probing(bundle_of, bundle):
    """Handlers of one event run in attach order: the weights, then the resumed checkpoint, then LP-FT."""
    names = [h["_target_"].rsplit(".", 1)[-1] for h in bundle_of(bundle).load("train.json")["train"]["handlers"]]
    order = [n for n in names if n in ("EncoderWeightsLoader", "TrainingCheckpoint", "LinearProbeHeadInit")]
    expected = ["EncoderWeightsLoader", "TrainingCheckpoint"]
    expected += ["LinearProbeHeadInit"] if bundle == "cls_busi" else []
    assert order == expected


def test_classification_loss_is_class_balanced(tmp_path, recipe):
    synthetic = str(tmp_path / "synthetic")
    ensure_synthetic_dataset(synthetic, "classification", num_images=30, image_size=64)
    parser = recipe("cls_busi", synthetic_dir=synthetic, synthetic_num_images=30, synthetic_image_size=64)
    items = parser.get_parsed_content("train_datalist")
    weight = parser.get_parsed_content("loss").weight
    counts = torch.bincount(torch.tensor([it["label"] for it in items]), minlength=3).float()
    assert torch.allclose(weight, len(items) / (3 * counts))  # sklearn's "balanced": N / (K n_c)
    assert torch.allclose((weight * counts).sum(), torch.tensor(float(len(items))))

    parser.update({"class_balanced": False})
    assert parser.get_parsed_content("loss", lazy=False).weight is None
    parser.update({"class_balanced": "false"})  # what `--class_balanced false` passes
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("loss", lazy=False)
    chain = [err.value, err.value.__cause__, err.value.__context__]
    assert any(isinstance(e, TypeError) and "class_balanced must be True or False" in str(e) for e in chain), chain


def test_balanced_class_weights_errors():
    assert balanced_class_weights([{"label": 0}] * 3 + [{"label": 1}], 2).tolist() == pytest.approx([2 / 3, 2.0])
    assert balanced_class_weights([{"label": 0}], 1, enabled=False) is None
    with pytest.raises(ValueError, match=r"classes \[2\] have no training item"):
        balanced_class_weights([{"label": 0}, {"label": 1}], 3)
    with pytest.raises(ValueError, match="item 1 has label='x'"):
        balanced_class_weights([{"label": 0}, {"label": "x"}], 2)


def test_linear_probe_head_follows_the_weights(recipe, encoder_file):
    """LP-FT (head set to a linear probe of the frozen features) is on with pretrained weights only."""

    def lp_ft(*extra, **override):
        handlers = recipe("cls_busi", *extra, **override).get_parsed_content("train#handlers")
        (handler,) = [h for h in handlers if type(h).__name__ == "LinearProbeHeadInit"]
        return handler.enabled

    assert lp_ft() is False and lp_ft("baseline_vit_scratch.json") is False
    assert lp_ft(pretrained=encoder_file) is True
    assert lp_ft(pretrained=encoder_file, linear_probe_head=False) is False
    with pytest.raises(Exception) as err:
        lp_ft(linear_probe_head="false")  # what `--linear_probe_head false` passes
    assert "linear_probe_head must be True or False" in repr(err.value) + repr(err.value.__cause__)
