"""The pretrain_usfm bundle: config properties, metadata schema, a tiny CPU run, resume, inference and torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events

from monai.bundle import ConfigWorkflow
from usfm_monai.visualize import log_amplitude_spectrum

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundles", "pretrain_usfm")
CONFIGS = os.path.join(BUNDLE, "configs")
SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")

# a few seconds per epoch on 2 CPU cores
TINY = {
    "encoder_size": "tiny",
    "load_size": 48,
    "image_size": 32,
    "mask_block_size": 8,
    "keep_size": 4,
    "synthetic_num_images": 24,
    "batch_size": 4,
    "val_batch_size": 4,
    "num_workers": 0,
    "warmup_epochs": 1,
    "learning_rate": 0.001,
    "log_every": 1,
    "num_figure_images": 2,
}


def _config(*names):
    return [os.path.join(CONFIGS, n) for n in names]


def _cli_overrides(overrides):
    args = []
    for k, v in overrides.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return args


@pytest.mark.parametrize("files,workflow_type", [(("train.json",), "train"), (("inference.json",), "infer")])
def test_check_properties(files, workflow_type, tmp_path):
    workflow = ConfigWorkflow(config_file=_config(*files), workflow_type=workflow_type, bundle_root=str(tmp_path))
    workflow.initialize()
    assert not workflow.check_properties()


def test_verify_metadata():
    if not os.path.isfile(SCHEMA):
        pytest.skip(f"schema copy not found at {SCHEMA}")
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(CONFIGS, "metadata.json"), filepath=SCHEMA)  # raises on failure


@pytest.mark.slow
def test_train_resume_and_infer(tmp_path):
    root = str(tmp_path)
    losses = []

    def run_train(epochs):
        workflow = ConfigWorkflow(
            config_file=_config("train.json"), workflow_type="train", bundle_root=root, epochs=epochs, **TINY
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        start = {}
        trainer.add_event_handler(Events.STARTED, lambda e: start.setdefault("iteration", e.state.iteration))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
        workflow.run()
        workflow.finalize()
        return trainer, start["iteration"]

    trainer, start = run_train(epochs=3)
    per_epoch = trainer.state.epoch_length
    assert start == 0 and trainer.state.iteration == 3 * per_epoch
    # the reconstruction loss falls over a short run
    first, last = sum(losses[:per_epoch]) / per_epoch, sum(losses[-per_epoch:]) / per_epoch
    assert last < 0.8 * first, (first, last)

    models = os.path.join(root, "models")
    for name in ("checkpoint_last.pt", "model.pt", "usfm_encoder.pt"):
        torch.load(os.path.join(models, name), weights_only=True)  # tensors and plain containers only
    encoder = torch.load(os.path.join(models, "usfm_encoder.pt"), weights_only=True)
    assert encoder["config"]["embed_dim"] == 192 and "patch_embed.proj.weight" in encoder["state_dict"]
    figures = sorted(os.listdir(os.path.join(root, "eval", "figures")))
    assert figures == [f"reconstruction_epoch{e:04d}.png" for e in (1, 2, 3)]

    # started again with more epochs, the run continues from its checkpoint instead of starting over
    trainer, start = run_train(epochs=4)
    assert start == 3 * per_epoch and trainer.state.iteration == 4 * per_epoch
    saved = torch.load(os.path.join(models, "checkpoint_last.pt"), weights_only=True)
    assert saved["trainer"]["iteration"] == 4 * per_epoch

    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", _config("inference.json")[0],
         "--bundle_root", root, *_cli_overrides({k: TINY[k] for k in ("encoder_size", "load_size", "image_size",
                                                                        "mask_block_size", "keep_size",
                                                                        "synthetic_num_images")})],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    inference_dir = os.path.join(root, "eval", "inference")
    recons = sorted(f for f in os.listdir(inference_dir) if f.endswith("_recon.png"))
    figs = sorted(os.listdir(os.path.join(inference_dir, "figures")))
    assert len(recons) == len(figs) > 0
    from PIL import Image

    recon = Image.open(os.path.join(inference_dir, recons[0]))
    assert recon.size == (32, 32) and recon.mode == "L"


def test_log_amplitude_spectrum_matches_numpy():
    x = torch.rand(1, 8, 6)
    expected = torch.log1p(torch.fft.fftshift(torch.fft.fft2(x[0].double())).abs()).float().numpy()
    assert abs(log_amplitude_spectrum(x) - expected).max() < 1e-5


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    overrides = dict(TINY, epochs=1)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "--config_file", str(_config("train.json", "multi_gpu_train.json")),
        "--bundle_root", str(tmp_path), *_cli_overrides(overrides),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    saved = torch.load(os.path.join(tmp_path, "models", "checkpoint_last.pt"), weights_only=True)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"] > 0  # one full epoch
    assert os.path.isfile(os.path.join(tmp_path, "models", "usfm_encoder.pt"))
    assert not any(k.startswith("module.") for k in saved["network"])  # DDP wrapper removed from the checkpoint
