"""Figure pieces: the masked views are the masker's own outputs, the figure has the documented layout."""

import numpy as np
import torch

from usfm_monai.handlers.figures import masked_views
from usfm_monai.transforms import BatchedDualDomainMask
from usfm_monai.transforms.frequency_mask import band_stop_mask
from usfm_monai.visualize import RECONSTRUCTION_COLUMNS, reconstruction_figure


def test_masked_views_are_consistent_with_eq8():
    masker = BatchedDualDomainMask(block_size=8, mask_ratio=0.5, num_bands=4, num_masked_bands=1, keep_size=3)
    images = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    views = masked_views(masker, images, torch.Generator().manual_seed(3))
    again = masked_views(masker, images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(views["dual_masked"], again["dual_masked"])  # seeded: same masks every epoch
    spatial = views["spatial_mask"].bool()
    mean = images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    # eq. 8: mean inside the spatial blocks, the frequency-masked image elsewhere
    torch.testing.assert_close(views["dual_masked"][spatial], mean[spatial])
    torch.testing.assert_close(views["dual_masked"][~spatial], views["frequency_masked"][~spatial])
    # the frequency view has exactly one stopped band: its spectrum vanishes on that band, per image
    for i in range(2):
        spec = np.fft.fftshift(np.fft.fft2(views["frequency_masked"][i, 0].numpy()))
        stops = [band_stop_mask((32, 32), [b], num_bands=4, keep_size=3) for b in range(4)]
        assert any(np.abs(spec[s]).max() < 1e-9 for s in stops if s.any())


def test_reconstruction_figure_layout():
    rows = [np.full((16, 16), v, dtype=np.float32) for v in (0.2, 0.8)]
    rgb = reconstruction_figure(rows, rows, rows, rows, rows, titles=["a", "b"])
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[1] > rgb.shape[0] and len(RECONSTRUCTION_COLUMNS) == 7
