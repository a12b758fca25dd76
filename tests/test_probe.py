"""Representation probe (usfm_monai.probe) and its pretraining handler."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from usfm_monai.handlers.linear_probe_head import LinearProbeHeadInit
from usfm_monai.handlers.probe import RepresentationProbe
from usfm_monai.networks import USFMClassifier
from usfm_monai.networks.encoder import create_usfm_encoder
from usfm_monai.networks.mim import USFMMaskedImageModel, export_encoder
from usfm_monai.probe import (
    ProbeFeatures,
    build_probe_encoder,
    default_probe_levels,
    embedding_figure,
    fit_linear_probe,
    knn_probe,
    linear_probe,
    load_probe_images,
    probe_encoder,
)

SIZE = 32
SMALL = dict(embed_dim=32, depth=2, num_heads=2)


TEMPLATE = np.where(np.random.default_rng(42).random((16, 16)) > 0.5, 1.0, -1.0)


def _toy_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """The class is the sign of a faint patch-aligned template (amplitude 0.01) under a strong nuisance (random
    brightness and gradients, amplitude 0.2-0.3). A random encoder's features are dominated by the nuisance,
    so its kNN neighbours are near chance; an encoder trained on the classes attends to the template. (Any
    linear signal survives a random projection, so a *linear* probe separates both: kNN is the test here.)"""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    base = 0.5 + rng.uniform(-0.2, 0.2) + rng.uniform(-0.3, 0.3) * yy + rng.uniform(-0.3, 0.3) * xx
    signal = np.tile(TEMPLATE, (SIZE // 16, SIZE // 16)) * (0.01 if label else -0.01)
    img = np.clip(base + signal + rng.normal(0, 0.03, (SIZE, SIZE)), 0, 1)
    return np.round(img * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def toy_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_probe")
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("training", 40), ("validation", 16), ("test", 24)):
        items = []
        for i in range(n):
            label = i % 2
            path = root / f"{split}_{i}.png"
            Image.fromarray(_toy_image(rng, label)).save(path)
            items.append({"image": str(path), "label": label, "class_name": ["minus", "plus"][label]})
        splits[split] = items
    return splits


@pytest.fixture(scope="module")
def toy_data(toy_splits):
    return ProbeFeatures(toy_splits, SIZE)


def _encoder_files(tmp_path) -> tuple[str, str]:
    """The same small encoder exported before and after supervised training (80 steps on 128 other toy images),
    as the pretrain bundle exports its encoder."""
    rng = np.random.default_rng(1)
    y = torch.arange(128) % 2
    items = []
    for i, label in enumerate(y.tolist()):
        Image.fromarray(_toy_image(rng, label)).save(tmp_path / f"fit_{i}.png")
        items.append({"image": str(tmp_path / f"fit_{i}.png")})
    x = load_probe_images(items, SIZE)  # the probe's own loader (MONAI's PIL reader transposes the array)
    torch.manual_seed(0)
    encoder = create_usfm_encoder("tiny", img_size=SIZE, drop_path_rate=0.0, use_fc_norm=False, **SMALL)
    before = export_encoder(encoder, str(tmp_path / "random.pt"))
    head = torch.nn.Linear(SMALL["embed_dim"], 2)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=3e-3)
    last = len(encoder.blocks) - 1
    for _ in range(80):
        (tokens,) = encoder.forward_intermediates(x, indices=[last], output_fmt="NLC", intermediates_only=True)
        loss = torch.nn.functional.cross_entropy(head(tokens.mean(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, export_encoder(encoder, str(tmp_path / "trained.pt"))


def test_default_levels():
    assert default_probe_levels(12) == [2, 5, 8, 11]
    assert default_probe_levels(2) == [0, 1]
    with pytest.raises(ValueError, match="depth"):
        default_probe_levels(0)


def test_probe_separates_trained_from_random_encoder(toy_data, tmp_path):
    before, after = _encoder_files(tmp_path)
    random = toy_data.probe(build_probe_encoder(before, img_size=SIZE))
    trained = toy_data.probe(build_probe_encoder(after, img_size=SIZE))
    assert trained["levels"] == [1, 2] and set(trained["per_level"]) == {"1", "2"}
    last, last_random = trained["per_level"]["2"], random["per_level"]["2"]  # the block that was trained on
    assert last["knn_acc"] >= 0.9 and last["linear_acc"] >= 0.9, last
    # the random encoder's neighbours follow the nuisance: well below the trained one
    assert last_random["knn_acc"] <= 0.8 and last["knn_acc"] >= last_random["knn_acc"] + 0.15, (last, last_random)
    assert trained["knn_acc"] >= random["knn_acc"] + 0.15, (trained, random)  # the multi-level probe
    assert trained["prior_acc"] == pytest.approx(0.5)


def test_probe_is_reproducible_from_seed(toy_data):
    first = toy_data.probe(build_probe_encoder("random", img_size=SIZE, seed=3), per_level=False)
    again = toy_data.probe(build_probe_encoder("random", img_size=SIZE, seed=3), per_level=False)
    other = build_probe_encoder("random", img_size=SIZE, seed=4)
    assert first == again
    assert not torch.equal(other.patch_embed.proj.weight, build_probe_encoder("random", img_size=SIZE, seed=3).patch_embed.proj.weight)


def test_knn_probe_matches_hand_worked_case():
    # two tight clusters in 2-D; after standardisation the cosine neighbours of each test point are its cluster
    train = np.array([[1.0, 0.1], [1.1, 0.0], [0.9, -0.1], [-1.0, 0.1], [-1.1, 0.0], [-0.9, -0.1]])
    y = np.array([0, 0, 0, 1, 1, 1])
    test = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert knn_probe(train, y, test, np.array([0, 1]), k=3) == {"acc": 1.0, "f1": 1.0}
    assert knn_probe(train, y, test, np.array([1, 0]), k=3) == {"acc": 0.0, "f1": 0.0}


def test_linear_probe_picks_c_on_validation_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] > 0).astype(int)
    result = linear_probe(x[:40], y[:40], x[40:50], y[40:50], x[50:], y[50:], c_grid=(0.001, 10.0))
    assert result["C"] in (0.001, 10.0) and result["acc"] >= 0.8
    # flipping the TEST labels must not change the chosen C (it is chosen on validation)
    flipped = linear_probe(x[:40], y[:40], x[40:50], y[40:50], x[50:], 1 - y[50:], c_grid=(0.001, 10.0))
    assert flipped["C"] == result["C"] and flipped["acc"] == pytest.approx(1 - result["acc"])
    with pytest.raises(ValueError, match="validation"):
        linear_probe(x[:40], y[:40], x[:0], y[:0], x[50:], y[50:])


@pytest.mark.parametrize("labels", [(0, 1, 2), (0, 1), (0, 2)])
def test_linear_layer_reproduces_the_regression(labels):
    # oracle: sklearn's own probabilities on standardized features; the layer works on raw features
    rng = np.random.default_rng(0)
    y = np.array(labels * 20)
    x = rng.normal(size=(len(y), 6)) * 3 + 5 + np.eye(6)[y] * 2
    fit = fit_linear_probe(x, y, x[:12], y[:12], c_grid=(1.0,))
    weight, bias = fit.linear_layer(3)
    present = list(fit.classifier.classes_)
    # an absent class only renormalizes: among the trained classes the probabilities are the regression's
    probs = torch.softmax(torch.as_tensor(x @ weight[present].T + bias[present]), dim=1).numpy()
    expected = fit.classifier.predict_proba((x - fit.mean) / fit.std)
    np.testing.assert_allclose(probs, expected, atol=1e-8)
    assert (np.array(present)[probs.argmax(1)] == fit.predict(x)).all()
    for absent in set(range(3)) - set(labels):
        assert not weight[absent].any() and bias[absent] == bias[present].min()
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(x, np.zeros_like(y), x[:12], y[:12])


def test_linear_probe_head_init_sets_the_head_once(toy_splits):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    torch.manual_seed(0)
    net = USFMClassifier(num_classes=2, size="tiny", img_size=SIZE, drop_path_rate=0.0, encoder_kwargs=SMALL)
    transform = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                         ScaleIntensityRanged("image", 0, 255, 0, 1)])  # fmt: skip
    handler = LinearProbeHeadInit(net, toy_splits["training"], toy_splits["validation"], transform, batch_size=7)
    initial = net.head.weight.detach().clone()
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert set(engine.state.linear_probe) == {"C", "val_f1"}
    assert not torch.equal(net.head.weight, initial)
    # the head now predicts what the regression fitted on the same frozen features predicts
    feats, labels = handler._features(toy_splits["training"])
    fit = fit_linear_probe(feats, labels, *handler._features(toy_splits["validation"]))
    with torch.no_grad():
        logits = net.head(torch.as_tensor(feats, dtype=torch.float32)).numpy()
    assert fit.C == engine.state.linear_probe["C"]
    assert (logits.argmax(1) == fit.predict(feats)).all()
    assert net.training  # the training mode is restored

    # a resumed run (iteration > 0) keeps its head, and so does a disabled handler
    trained = net.head.weight.detach().clone()
    resumed = Engine(lambda e, b: None)
    resumed.state.iteration = 5
    handler(resumed)
    LinearProbeHeadInit(net, toy_splits["training"], toy_splits["validation"], transform, enabled=False)(Engine(lambda e, b: None))
    assert torch.equal(net.head.weight, trained)
    with pytest.raises(TypeError, match="enabled"):
        LinearProbeHeadInit(net, [], [], transform, enabled="false")
    with pytest.raises(TypeError, match="Linear head"):
        LinearProbeHeadInit(torch.nn.Linear(2, 2), [], [], transform)


def test_probe_features_reject_bad_items(toy_splits):
    with pytest.raises(ValueError, match="'test'"):
        ProbeFeatures({k: v for k, v in toy_splits.items() if k != "test"}, SIZE)
    bad = dict(toy_splits, training=[dict(toy_splits["training"][0], label="benign")] + toy_splits["training"][1:])
    with pytest.raises(TypeError, match="label 'benign'"):
        ProbeFeatures(bad, SIZE)


def test_build_probe_encoder_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_probe_encoder(str(tmp_path / "nope.pt"))


def test_embedding_figure_tsne(toy_data, tmp_path):
    feats = toy_data.features(build_probe_encoder("random", img_size=SIZE))
    x = ProbeFeatures.stack(feats, "test", sorted(feats["test"]))
    path = embedding_figure({"random": (x, toy_data.labels["test"])}, toy_data.class_names, tmp_path / "fig7.png", method="tsne")
    img = np.asarray(Image.open(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0
    with pytest.raises(ValueError, match="umap"):
        embedding_figure({}, [], tmp_path / "x.png", method="pca")


@pytest.mark.slow
def test_probe_command_writes_json_and_umap_figure(toy_splits, tmp_path):
    import json

    root = os.path.dirname(toy_splits["training"][0]["image"])
    datalist = tmp_path / "toy.json"
    datalist.write_text(json.dumps({k: [dict(it, image=os.path.basename(it["image"])) for it in v] for k, v in toy_splits.items()}))
    results = probe_encoder(
        "random", dataset_dir=root, datalist_file=str(datalist), image_size=SIZE, per_level=False,
        embedding=tmp_path / "fig7.png", output=tmp_path / "probe.json",
    )
    assert set(results) == {"random"} and 0.0 <= results["random"]["knn_acc"] <= 1.0
    assert json.loads((tmp_path / "probe.json").read_text()) == results
    assert os.path.getsize(tmp_path / "fig7.png") > 1000


def test_representation_probe_handler_writes_curve(toy_splits, tmp_path):
    import json

    root = os.path.dirname(toy_splits["training"][0]["image"])
    datalist = tmp_path / "toy.json"
    datalist.write_text(json.dumps({k: [dict(it, image=os.path.basename(it["image"])) for it in v] for k, v in toy_splits.items()}))
    model = USFMMaskedImageModel("tiny", img_size=SIZE, drop_path_rate=0.0, encoder_kwargs=SMALL)
    engine = Engine(lambda e, b: None)
    probe = RepresentationProbe(model, root, str(datalist), interval=2, output_file=tmp_path / "probe.csv")
    probe.attach(engine)
    engine.run([0], max_epochs=3)
    with open(tmp_path / "probe.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 2, 3]  # start, every 2 epochs, end
    assert 0.0 <= engine.state.metrics["probe_knn_acc"] <= 1.0
    assert model.training  # the probe restores the train mode
    with pytest.raises(ValueError, match="interval"):
        RepresentationProbe(model, root, interval=0)


def test_pretrain_bundle_wires_the_probe(tmp_path):
    """Off by default; with a probe datalist the trainer gets a RepresentationProbe on the bundle's network."""
    from monai.bundle import ConfigParser

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "pretrain_usfm", "configs")
    parser = ConfigParser()
    parser.read_config([os.path.join(configs, "train.json"), os.path.join(configs, "quick.json")])
    parser.update({"bundle_root": str(tmp_path)})
    probes = [h for h in parser.get("train#handlers") if h["_target_"].endswith("RepresentationProbe")]
    assert len(probes) == 1
    index = parser.get("train#handlers").index(probes[0])
    assert parser.get_parsed_content(f"train#handlers#{index}#_disabled_") is True  # off by default
    parser.update({"probe_dataset_dir": str(tmp_path), "probe_datalist_file": "toy.json", "probe_interval": 5})
    assert parser.get_parsed_content(f"train#handlers#{index}#_disabled_", lazy=False) is False
    handler = parser.get_parsed_content(f"train#handlers#{index}")
    assert isinstance(handler, RepresentationProbe)
    assert handler.network is parser.get_parsed_content("network") and handler.interval == 5
    assert handler.output_file == os.path.join(str(tmp_path), "eval", "probe.csv")
