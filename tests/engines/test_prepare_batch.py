"""DualMaskPrepareBatch: seeded, reproducible masks, applied with the masking core, and kept for handlers."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masking_oracles import oracle_pixel_mask
from usfm_monai.engines import DualMaskPrepareBatch
from usfm_monai.transforms import BatchedDualDomainMask, DualMaskDraws
from usfm_monai.transforms.masking import dual_domain_mask

GEOMETRY = {"block_size": 8, "mask_ratio": 0.5, "num_bands": 5, "num_masked_bands": 2, "keep_size": 4}


def _batch(n=3, names=None, seed=0):
    images = torch.rand(n, 1, 32, 40, generator=torch.Generator().manual_seed(seed))
    names = names or [f"/data/img_{i}.png" for i in range(n)]
    return {"image": MetaTensor(images, meta={"filename_or_obj": names})}


def _prepare(**kwargs):
    return DualMaskPrepareBatch(BatchedDualDomainMask(**GEOMETRY), **kwargs)


def test_masks_are_reproducible_from_the_seed_and_fresh_each_step():
    batch = _batch()
    a, b, c = _prepare(seed=5), _prepare(seed=5), _prepare(seed=6)
    masked_a, _ = a(batch)
    masked_b, _ = b(batch)
    masked_c, _ = c(batch)
    assert torch.equal(a.masks.block_grids, b.masks.block_grids) and torch.equal(a.masks.band_ids, b.masks.band_ids)
    assert torch.equal(masked_a, masked_b)
    assert not torch.equal(a.masks.block_grids, c.masks.block_grids)
    first = a.masks
    a(batch)  # training: the generator moves on, the next step gets other masks
    assert not torch.equal(first.block_grids, a.masks.block_grids)


def test_restoring_the_generator_state_replays_the_masks():
    """What TrainingCheckpoint relies on to resume a run with the masks it would have drawn."""
    batch, prepare = _batch(), _prepare(seed=1)
    prepare(batch)
    state = prepare.generator.get_state()
    masked, _ = prepare(batch)
    prepare.generator.set_state(state)
    again, _ = prepare(batch)
    assert torch.equal(masked, again)


def test_masked_image_is_the_core_function_of_the_kept_masks():
    batch, prepare = _batch(), _prepare(seed=2)
    assert prepare.masks is None
    masked, original = prepare(batch)
    masks = prepare.masks
    assert isinstance(masks, DualMaskDraws) and masks.batch_size == 3
    assert masks.block_grids.shape == (3, 4, 5) and masks.band_ids.shape == (3, 2)
    assert torch.equal(original.as_tensor(), batch["image"].as_tensor())  # the target is the unmasked image
    expected = dual_domain_mask(batch["image"].as_tensor(), masks.block_grids, masks.band_ids, 8, 5, 4, "linear")
    assert torch.equal(torch.as_tensor(masked), expected)
    # independent check of eq. 8 inside the masked blocks: the ORIGINAL image's mean, from the kept grids
    x = batch["image"].numpy()
    for i in range(3):
        pixel = oracle_pixel_mask(masks.block_grids[i], 32, 40, 8)
        assert pixel.any() and not pixel.all()
        np.testing.assert_allclose(np.asarray(masked[i, 0])[pixel], x[i, 0].mean(), rtol=1e-5)
        assert not np.allclose(np.asarray(masked[i, 0])[~pixel], x[i, 0][~pixel])  # bands stopped elsewhere


def test_deterministic_mode_masks_each_batch_alike_on_every_pass():
    prepare = _prepare(seed=3, deterministic=True)
    prepare(_batch())
    first = prepare.masks
    prepare(_batch(names=["/data/other_0.png", "/data/other_1.png", "/data/other_2.png"]))
    other = prepare.masks
    prepare(_batch())
    assert torch.equal(first.block_grids, prepare.masks.block_grids)
    assert torch.equal(first.band_ids, prepare.masks.band_ids)
    assert not torch.equal(first.block_grids, other.block_grids)
    # the same files in another folder (a copied dataset, another machine) get the same masks
    prepare(_batch(names=[f"/elsewhere/img_{i}.png" for i in range(3)]))
    assert torch.equal(first.block_grids, prepare.masks.block_grids)


def test_get_masks_is_the_hook_for_other_mask_distributions():
    class NoMasks(DualMaskPrepareBatch):
        def get_masks(self, images):
            grids = torch.zeros(images.shape[0], 4, 5, dtype=torch.bool)
            return DualMaskDraws(grids, torch.zeros(images.shape[0], 2, dtype=torch.int64))

    batch = _batch()
    prepare = NoMasks(BatchedDualDomainMask(**dict(GEOMETRY, num_bands=5)), seed=0)
    masked, _ = prepare(batch)
    # band 0 is stopped, nothing in the blocks: the output is band-stopped only, and the kept masks are the hook's
    assert not prepare.masks.block_grids.any()
    reference = dual_domain_mask(batch["image"].as_tensor(), prepare.masks.block_grids, prepare.masks.band_ids, 8, 5, 4)
    assert torch.equal(torch.as_tensor(masked), reference) and not torch.equal(reference, batch["image"].as_tensor())


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="draw"):
        DualMaskPrepareBatch(lambda images, generator=None: images)
    prepare = _prepare()
    with pytest.raises(KeyError, match="image"):
        prepare({"img": torch.rand(1, 1, 8, 8)})
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        prepare({"image": torch.rand(1, 8, 8)})
