"""The enhance_usenhance bundle: config properties, metadata schema, and a tiny CPU train -> resume -> evaluate ->
inference run on synthetic low/high-quality pairs, with and without the frozen USFM branch.

Oracles: the evaluation SSIM of one test image is recomputed from the saved generator with scikit-image; the
enhanced PNG written by inference is recomputed from the saved generator and compared pixel by pixel with the file
as PIL reads it (so orientation and size round-trip); the target column of the side-by-side figure must equal the
target file; the frozen branch must still hold the exported encoder's weights after training.
"""

import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from PIL import Image
from skimage.metrics import structural_similarity

from usfm_monai.networks.cyclegan import ResnetGenerator
from usfm_monai.networks.encoder import create_usfm_encoder
from usfm_monai.networks.mim import export_encoder

BUNDLE = "enhance_usenhance"
ARCH_KEYS = ("image_size", "ngf", "n_blocks", "usfm_size", "usfm_img_size", "synthetic_num_images",
             "synthetic_image_size", "num_workers")


@pytest.fixture(scope="module")
def tiny_encoder_file(tmp_path_factory):
    """A tiny USFM encoder export, standing in for bundles/pretrain_usfm/models/usfm_encoder.pt."""
    torch.manual_seed(0)
    encoder = create_usfm_encoder("tiny", img_size=32, use_fc_norm=False)
    return export_encoder(encoder, str(tmp_path_factory.mktemp("pretrain") / "usfm_encoder.pt"))


@pytest.mark.parametrize("files,workflow_type", [(("train.json",), "train"), (("inference.json",), "infer")])
def test_check_properties(files, workflow_type, tmp_path, tiny_encoder_file, bundle):
    extra = {"synthetic_num_images": 40, "synthetic_image_size": 32, "usfm_size": "tiny", "num_workers": 0}
    if workflow_type == "train":
        extra.update(usfm_weights=tiny_encoder_file, usfm_img_size=32)
    workflow = bundle.workflow(files, workflow_type, tmp_path, **extra)
    assert not workflow.check_properties()


def test_verify_metadata(bundle):
    bundle.verify_metadata()  # raises on failure


def test_missing_usfm_weights_fail_at_load(tmp_path, bundle):
    workflow = bundle.workflow(["train.json"], "train", tmp_path, usfm_weights=str(tmp_path / "absent.pt"),
                               usfm_size="tiny")
    with pytest.raises(RuntimeError) as err:
        workflow.parser.get_parsed_content("network_def")
    assert "absent.pt" in str(err.value.__cause__)


def _generator(use_branch, tiny):
    encoder = create_usfm_encoder("tiny", img_size=32, use_fc_norm=False, drop_path_rate=0.0) if use_branch else None
    return ResnetGenerator(ngf=tiny["ngf"], n_blocks=tiny["n_blocks"], usfm_encoder=encoder).eval()


def _load_as_bundle(path, size):
    """The bundle's preprocessing, written independently: PIL (H, W) -> MONAI (W, H) -> [0, 1] -> bilinear resize."""
    arr = np.asarray(Image.open(path).convert("L"), dtype=np.float32).T / 255.0
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(arr))[None, None], size=(size, size),
                         mode="bilinear", align_corners=False)


@pytest.mark.slow
@pytest.mark.parametrize("use_branch", [True, False], ids=["usfm-branch", "plain-cyclegan"])
def test_train_resume_evaluate_infer(tmp_path, tiny_encoder_file, use_branch, bundle):
    root = str(tmp_path / "bundle")
    overrides = bundle.tiny(use_usfm_branch=use_branch, usfm_weights=tiny_encoder_file)

    def train(stop_after_epoch=None):
        workflow = bundle.workflow(["train.json"], "train", root, epochs=2, **overrides)
        trainer = workflow.parser.get_parsed_content("train#trainer")
        start, lrs = {}, []
        trainer.add_event_handler(Events.STARTED, lambda e: start.setdefault("iteration", e.state.iteration))
        trainer.add_event_handler(
            Events.EPOCH_STARTED, lambda e: lrs.append(e.state.gen_optimizer.param_groups[0]["lr"])
        )
        if stop_after_epoch is not None:  # a run killed after its first epoch's checkpoint
            trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
        workflow.run()
        workflow.finalize()
        return trainer, start["iteration"], lrs

    trainer, start, lrs = train(stop_after_epoch=1)
    per_epoch = trainer.state.epoch_length
    assert start == 0 and per_epoch == 7  # 28 training pairs, batch 4
    # started again with the same command: continues from the checkpoint, schedule included
    trainer, start, lrs_resumed = train()
    assert start == per_epoch and trainer.state.iteration == 2 * per_epoch
    # cyclegan_lr_lambda(1, 1): factor 1 in epoch 0, 1 - 1 / 2 in epoch 1
    assert lrs == [pytest.approx(2e-4)] and lrs_resumed == [pytest.approx(1e-4)]

    models = os.path.join(root, "models")
    ckpt = torch.load(os.path.join(models, "checkpoint_last.pt"), weights_only=True)
    assert sorted(ckpt) == [  # networks only inside the trainer
        "disc_lr_scheduler", "evaluator_best_metric", "gen_lr_scheduler", "settings", "torch_rng", "trainer",
        "trainer_best_metric",
    ]
    assert ckpt["trainer"]["iteration"] == 2 * per_epoch
    state = torch.load(os.path.join(models, "model.pt"), weights_only=True)["model"]
    branch = {k[len("usfm_branch.encoder."):]: v for k, v in state.items() if k.startswith("usfm_branch.encoder.")}
    if use_branch:  # frozen: still the exported weights after two epochs
        exported = torch.load(tiny_encoder_file, weights_only=True)["state_dict"]
        assert branch.keys() == exported.keys()
        assert all(torch.equal(branch[k], exported[k]) for k in exported)
    else:
        assert not branch
    generator = _generator(use_branch, overrides)
    generator.load_state_dict(state)

    # evaluate on the test split: per-image CSV, per-organ summary, side-by-side figures
    # in-process: the subprocess route is tested below
    workflow = bundle.workflow(["train.json", "evaluate.json"], "eval", root, **overrides)
    workflow.run()
    workflow.finalize()
    eval_dir = os.path.join(root, "eval")
    summary = json.load(open(os.path.join(eval_dir, "summary.json")))
    assert set(summary["groups"]) == {"breast", "kidney", "liver", "thyroid"}
    assert summary["metrics"]["val_ssim"]["n"] == 4 and summary["info"]["use_usfm_branch"] is use_branch
    assert 1.0 <= summary["metrics"]["val_nmi"]["mean"] <= 2.0
    with open(os.path.join(eval_dir, "val_ssim_raw.csv")) as f:
        row = next(csv.DictReader(f))
    low_path = row["filename"]
    high_path = low_path.replace(os.sep + "low" + os.sep, os.sep + "high" + os.sep)
    with torch.no_grad():
        pred = generator(_load_as_bundle(low_path, 32))[0, 0].double().numpy()
    target = _load_as_bundle(high_path, 32)[0, 0].double().numpy()
    expected = structural_similarity(pred, target, data_range=1.0, win_size=7, gaussian_weights=False)
    assert float(row["class0"]) == pytest.approx(expected, abs=1e-4)
    figures = sorted(os.listdir(os.path.join(eval_dir, "side_by_side")))
    assert len(figures) == 4 and all(f.endswith("_side_by_side.png") for f in figures)

    # inference on a folder holding one non-square image, with its target found by name
    low, high = tmp_path / "in_low", tmp_path / "in_high"
    low.mkdir()
    high.mkdir()
    crop = (0, 0, 40, 48)  # PIL box: width 40, height 48
    Image.open(low_path).crop(crop).save(low / "case.png")
    Image.open(high_path).crop(crop).save(high / "case.png")
    infer = {k: overrides[k] for k in ARCH_KEYS}
    bundle.run(["inference.json"], root, **infer, use_usfm_branch=use_branch, dataset_dir=low, target_dir=high)
    out_dir = os.path.join(root, "eval", "inference")
    enhanced = np.asarray(Image.open(os.path.join(out_dir, "case_enhanced.png")))
    assert enhanced.shape == (48, 40) and enhanced.dtype == np.uint8  # the input file's size and orientation
    with torch.no_grad():
        pred = generator(_load_as_bundle(str(low / "case.png"), 32))
    pred = F.interpolate(pred, size=(40, 48), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    expected = np.round(pred.numpy().T * 255)
    assert np.abs(enhanced.astype(np.float64) - expected).max() <= 1.0
    figure = np.asarray(Image.open(os.path.join(out_dir, "side_by_side", "case_side_by_side.png")))
    assert figure.shape == (48, 3 * 40 + 2 * 4)
    np.testing.assert_array_equal(figure[:, -40:], np.asarray(Image.open(high / "case.png")))
    assert np.abs(figure[:, 44:84].astype(int) - enhanced.astype(int)).max() <= 1  # PNG writer truncates


@pytest.mark.parametrize("override_file", ["quick.json", "cpu_recipe.json"])
def test_override_files_only_set_existing_settings(override_file, bundle):
    train, overrides = bundle.load("train.json"), bundle.load(override_file)
    unknown = [k for k in overrides if k.split("#")[0] not in train]
    assert not unknown, f"{override_file} sets {unknown}, which train.json does not define (a typo is silently added)"
    assert all(not isinstance(v, (dict, list)) for v in overrides.values()), "scalar-only override file"


def test_recipe_switches_reach_networks_and_trainer(tmp_path, bundle):
    # usfm_random_weights: the branch is built without reading usfm_weights (absent here) and keeps its random init
    workflow = bundle.workflow(
        ["train.json"], "train", tmp_path,
        **bundle.tiny(usfm_weights=str(tmp_path / "absent.pt"), usfm_random_weights=True, residual_generator=True,
                      output_levels=256, lambda_paired=2.5, paired_loss="l1+ssim"),
    )
    parser = workflow.parser
    net, gen_b2a = parser.get_parsed_content("network_def"), parser.get_parsed_content("gen_b2a_def")
    assert net.usfm_branch is not None and net.residual and gen_b2a.residual and gen_b2a.usfm_branch is None
    assert net.output_levels == 256  # only the evaluated low-to-high generator rounds
    torch.manual_seed(0)
    fresh = create_usfm_encoder("tiny", img_size=32, use_fc_norm=False, drop_path_rate=0.0)
    assert set(fresh.state_dict()) == set(net.usfm_branch.encoder.state_dict())
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.lambda_paired == 2.5 and trainer.paired_loss == "l1+ssim"
    x = torch.rand(1, 1, 32, 32)
    x = torch.round(x * 255) / 255
    torch.testing.assert_close(net.eval()(x), x, atol=1e-6, rtol=0)  # identity at start, 8-bit output
    # the defaults keep the paper's CycleGAN: no paired term, plain output, weights file required
    defaults = bundle.workflow(["train.json"], "train", tmp_path, **bundle.tiny(use_usfm_branch=False))
    trainer = defaults.parser.get_parsed_content("train#trainer")
    assert trainer.lambda_paired == 0.0 and not defaults.parser.get_parsed_content("network_def").residual
