"""Data: datalists, organ-balanced sampling (eq. 1), synthetic ultrasound, inference inputs, dataset preparers."""

from usfm_monai.data.datalist import load_datalist, materialize, planned_items, resolve_datalist, write_datalist
from usfm_monai.data.dataset import DeferredCacheDataset
from usfm_monai.data.inference_inputs import inference_items, list_image_files
from usfm_monai.data.sampling import (
    create_sampler,
    expected_organ_shares,
    organ_balanced_weights,
)
from usfm_monai.data.subsets import make_nested_subsets, make_pretrain_datalist
from usfm_monai.data.synthetic import (
    ensure_synthetic_dataset,
    make_synthetic_dataset,
    synthesize_image,
    synthesize_pair,
)

__all__ = [
    "DeferredCacheDataset",
    "create_sampler",
    "ensure_synthetic_dataset",
    "expected_organ_shares",
    "inference_items",
    "list_image_files",
    "load_datalist",
    "make_nested_subsets",
    "make_pretrain_datalist",
    "make_synthetic_dataset",
    "materialize",
    "organ_balanced_weights",
    "planned_items",
    "resolve_datalist",
    "synthesize_image",
    "synthesize_pair",
    "write_datalist",
]
