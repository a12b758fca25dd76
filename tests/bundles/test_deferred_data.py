"""Reading a bundle writes nothing: check_properties builds datasets, samplers and loaders; the run step generates."""

import os

import pytest


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
@pytest.mark.parametrize("bundle", ["pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance"])
def test_check_properties_writes_no_synthetic_data(tmp_path, bundle_of, bundle, workflow_type):
    """ConfigWorkflow.check_properties() builds the datasets, samplers and loaders (and the class weights); the
    run step generates the data."""
    config = {"train": "train.json", "infer": "inference.json"}[workflow_type]
    overrides = bundle_of(bundle).tiny(**({"use_usfm_branch": False} if bundle == "enhance_usenhance" else {}))
    workflow = bundle_of(bundle).workflow([config, "quick.json"], workflow_type, tmp_path, **overrides)
    assert not workflow.check_properties()
    assert not (tmp_path / "data").exists()
    workflow.parser.get_parsed_content("run#0")  # the run step's first expression generates the dataset
    assert len(os.listdir(tmp_path / "data")) == 1
    datasets = ("train#dataset", "validate#dataset") if workflow_type == "train" else ("dataset",)
    for name in datasets:
        dataset = workflow.parser.get_parsed_content(name)
        assert os.path.isfile(dataset.data[0]["image"]) and not getattr(dataset, "cache_pending", False)
