"""Bundle helpers: the bundle root comes from the config files on the command line."""

import os

import pytest

from usfm_monai.bundle import config_files_from_argv, find_bundle_root, is_main_process


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["run", "--config_file", "bundles/b/configs/train.json"], ["bundles/b/configs/train.json"]),
        (["run", "--config_file=configs/train.json"], ["configs/train.json"]),
        (["run", "--config_file", "['configs/train.json','configs/quick.json']"], ["configs/train.json", "configs/quick.json"]),
        (["run", "--epochs", "3"], []),
    ],
    ids=["plain", "equals", "list", "none"],
)
def test_config_files_from_argv(argv, expected):
    assert config_files_from_argv(argv) == expected


def test_find_bundle_root_from_repo_root_and_inside(tmp_path, monkeypatch):
    bundle = tmp_path / "bundles" / "pretrain_usfm"
    (bundle / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root(["run", "--config_file", "bundles/pretrain_usfm/configs/train.json"]) == str(bundle)
    monkeypatch.chdir(bundle)
    assert find_bundle_root(["run", "--config_file", "configs/train.json"]) == str(bundle)
    # configs loaded programmatically (no --config_file): the working directory
    assert find_bundle_root(["python"]) == os.getcwd()


def test_is_main_process_without_distributed():
    assert is_main_process()


def test_ensure_bool_explains_the_command_line_pitfall():
    from usfm_monai.bundle import ensure_bool
    from usfm_monai.data.sampling import create_sampler
    from usfm_monai.losses import USFMReconstructionLoss

    assert ensure_bool("flag", False) is False
    with pytest.raises(TypeError, match="capitalized"):
        USFMReconstructionLoss(use_frequency_loss="false")
    with pytest.raises(TypeError, match="balanced must be True or False"):
        create_sampler([{"image": "a", "organ": "x"}], balanced="false")
