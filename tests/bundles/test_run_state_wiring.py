"""Every bundle locks its output folder at start-up and checkpoints the whole run state (read from the configs)."""

import pytest

BUNDLES = ["pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance"]


@pytest.fixture
def config(bundle_of):
    """``config(bundle, name)``: a config file of a bundle as JSON; skips the test when the bundle has none."""
    return lambda bundle, name: bundle_of(bundle).load(name, skip_missing=True)


def _training_checkpoint(train):
    handlers = [h for h in train["train"]["handlers"] if str(h.get("_target_", "")).endswith("TrainingCheckpoint")]
    assert len(handlers) == 1, "one TrainingCheckpoint in train#handlers"
    return handlers[0]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_locks_models_folder_first(bundle, config):
    """Regression: two runs on one bundle_root overwrote each other; a read-only models/ was found after an epoch."""
    train = config(bundle, "train.json")
    assert "claim_output_dir(@ckpt_dir" in train["run_lock"]
    assert train["initialize"][0] == "$@run_lock"  # before anything is cached or built
    assert "$usfm_monai.run_lock.release_output_dirs()" in train["finalize"]
    assert "$import usfm_monai.run_lock" in train["imports"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_training_locks_after_the_process_group_exists(bundle, config):
    steps = config(bundle, "multi_gpu_train.json")["initialize"]
    init = next(i for i, step in enumerate(steps) if "init_process_group" in step)
    assert "$@run_lock" in steps[init + 1:]
    assert "$usfm_monai.run_lock.release_output_dirs()" in config(bundle, "multi_gpu_train.json")["finalize"]


@pytest.mark.parametrize("bundle", ["seg_tn3k", "cls_busi", "enhance_usenhance"])
def test_evaluation_locks_its_own_folder_not_models(bundle, config):
    evaluate = config(bundle, "evaluate.json")  # merged over train.json, whose initialize runs @run_lock
    assert "claim_output_dir(" in evaluate["run_lock"] and "@ckpt_dir" not in evaluate["run_lock"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_checkpoint_holds_best_metric_and_refuses_a_new_learning_rate(bundle, config):
    """Regression: after a resume the first validation always counted as a new best and replaced model.pt, and a
    new --learning_rate was silently ignored."""
    handler = _training_checkpoint(config(bundle, "train.json"))
    assert handler["evaluator"] == "@validate#evaluator"
    assert handler["fixed_settings"] == {"learning_rate": "@learning_rate"}


def test_pretraining_checkpoints_mask_and_sampler_generators(config):
    """Regression: a resumed pretraining run replayed the masks and samples of the first run's first epochs."""
    save_dict = _training_checkpoint(config("pretrain_usfm", "train.json"))["save_dict"]
    assert save_dict["mask_generator"] == "$@train#prepare_batch.generator"
    assert save_dict["sampler_generator"] == "$getattr(@train#sampler, 'generator', None)"
