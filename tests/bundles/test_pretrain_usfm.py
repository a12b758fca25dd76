"""The pretrain_usfm bundle: config properties, metadata schema, a tiny CPU run, resume, inference and torchrun."""

import os

import pytest
import torch
from ignite.engine import Events

from usfm_monai.visualize import log_amplitude_spectrum

BUNDLE = "pretrain_usfm"


@pytest.mark.parametrize("files,workflow_type", [(("train.json",), "train"), (("inference.json",), "infer")])
def test_check_properties(files, workflow_type, tmp_path, bundle):
    workflow = bundle.workflow(files, workflow_type, tmp_path)
    assert not workflow.check_properties()


def test_verify_metadata(bundle):
    bundle.verify_metadata()  # raises on failure


@pytest.mark.slow
def test_train_resume_and_infer(tmp_path, bundle):
    root = str(tmp_path)
    losses = []
    tiny = bundle.tiny()

    def run_train(epochs):
        workflow = bundle.workflow(["train.json"], "train", root, epochs=epochs, **tiny)
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

    keys = ("encoder_size", "load_size", "image_size", "mask_block_size", "keep_size", "synthetic_num_images")
    bundle.run(["inference.json"], root, **{k: tiny[k] for k in keys})
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
def test_torchrun_two_processes_gloo(tmp_path, bundle):
    torchrun = ("torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    bundle.run(["train.json", "multi_gpu_train.json"], tmp_path, launcher=torchrun, **bundle.tiny(epochs=1))
    saved = torch.load(os.path.join(tmp_path, "models", "checkpoint_last.pt"), weights_only=True)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"] > 0  # one full epoch
    assert os.path.isfile(os.path.join(tmp_path, "models", "usfm_encoder.pt"))
    assert not any(k.startswith("module.") for k in saved["network"])  # DDP wrapper removed from the checkpoint
