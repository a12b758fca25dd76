"""Reconstruction figures show what the evaluator did: the masks it drew, its masked input and its output."""

import os

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from masking_oracles import oracle_pixel_mask
from usfm_monai.engines import DualMaskPrepareBatch
from usfm_monai.handlers.figures import ReconstructionFigures, masked_views
from usfm_monai.transforms import BatchedDualDomainMask, DualMaskDraws
from usfm_monai.transforms.masking import band_stop_masks
from usfm_monai.visualize import RECONSTRUCTION_COLUMNS, reconstruction_figure

GEOMETRY = {"block_size": 8, "mask_ratio": 0.5, "num_bands": 4, "num_masked_bands": 1, "keep_size": 3}


class _Recorder(torch.nn.Module):
    """A tiny network that keeps every input it is called with."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def _evaluator(tmp_path, per_image, num_images=2):
    names = [str(tmp_path / f"scan_{i}.png") for i in range(5)]
    images = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    data = [{"image": images[i], "name": names[i]} for i in range(5)]
    network = _Recorder()
    prepare = DualMaskPrepareBatch(BatchedDualDomainMask(**GEOMETRY), seed=4, deterministic=True)
    handler = ReconstructionFigures(str(tmp_path / "figures"), num_images=num_images, per_image=per_image)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=3, shuffle=False),
        network=network,
        prepare_batch=prepare,
        val_handlers=[handler],
    )
    return evaluator, network, prepare, handler, images


def test_validation_figure_panels_are_the_evaluators_own_masked_input_and_output(tmp_path):
    evaluator, network, prepare, handler, images = _evaluator(tmp_path, per_image=False)
    first_masks = []
    evaluator.add_event_handler(  # the masks of the first batch, as the prepare-batch kept them
        Events.ITERATION_COMPLETED, lambda e: first_masks.append(prepare.masks) if e.state.iteration == 1 else None
    )
    evaluator.run()
    assert len(network.inputs) == 2  # one forward pass per batch: the figure did not run the network again
    names, (original, spatial, frequency, dual, recon) = handler._panels
    assert len(names) == 2 and original.shape == (2, 1, 32, 32)
    torch.testing.assert_close(original, images[:2])
    # the masked panel IS the input the network saw, and the reconstruction its output on that input
    assert torch.equal(dual, network.inputs[0][:2])
    with torch.no_grad():
        torch.testing.assert_close(recon, network.conv(network.inputs[0][:2]).clamp(0, 1))
    # the spatial panel is the kept block grid; eq. 8 holds on it: original mean inside, band-stopped outside
    masks = first_masks[0]
    for i in range(2):
        pixel = oracle_pixel_mask(masks.block_grids[i], 32, 32, 8)
        np.testing.assert_array_equal(spatial[i, 0].numpy() == 1, pixel)
        np.testing.assert_allclose(dual[i, 0].numpy()[pixel], images[i, 0].mean().item(), rtol=1e-5)
        np.testing.assert_allclose(dual[i, 0].numpy()[~pixel], frequency[i, 0].numpy()[~pixel], rtol=1e-6)
        spectrum = np.fft.fftshift(np.fft.fft2(frequency[i, 0].double().numpy()))
        stop = band_stop_masks(masks.band_ids[i : i + 1], (32, 32), 4, 3)[0].numpy()
        assert stop.any() and np.abs(spectrum[stop]).max() < 1e-4  # the kept band is the one stopped
    assert os.listdir(tmp_path / "figures") == ["reconstruction_epoch0001.png"]


def test_inference_writes_one_figure_per_image_from_the_masks_used(tmp_path):
    evaluator, network, _, _, _ = _evaluator(tmp_path, per_image=True)
    evaluator.run()
    assert len(network.inputs) == 2
    assert sorted(os.listdir(tmp_path / "figures")) == [f"image_{i:05d}_reconstruction.png" for i in range(5)]


def test_masked_views_of_kept_masks_follow_eq8():
    masker = BatchedDualDomainMask(**GEOMETRY)
    images = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    masks = masker.draw(2, (32, 32), generator=torch.Generator().manual_seed(3))
    views = masked_views(masker, images, masks)
    assert torch.equal(views["dual_masked"], masker.apply(images, masks))  # the masks given, nothing redrawn
    frequency_only = masker.apply(images, DualMaskDraws(torch.zeros_like(masks.block_grids), masks.band_ids))
    assert torch.equal(views["frequency_masked"], frequency_only)
    spatial = views["spatial_mask"].bool()
    mean = images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    torch.testing.assert_close(views["dual_masked"][spatial], mean[spatial])
    torch.testing.assert_close(views["dual_masked"][~spatial], views["frequency_masked"][~spatial])


def test_reconstruction_figure_layout():
    rows = [np.full((16, 16), v, dtype=np.float32) for v in (0.2, 0.8)]
    rgb = reconstruction_figure(rows, rows, rows, rows, rows, titles=["a", "b"])
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[1] > rgb.shape[0] and len(RECONSTRUCTION_COLUMNS) == 7
