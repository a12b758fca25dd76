"""Bundle helpers: the bundle root comes from the config files on the command line."""

import os
import pathlib

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


def test_bundle_re_exports_the_library_helpers():
    import usfm_monai.utils

    # configs written before usfm_monai.utils keep working: the very same functions
    assert is_main_process is usfm_monai.utils.is_main_process
    from usfm_monai.bundle import ensure_bool

    assert ensure_bool is usfm_monai.utils.ensure_bool


def _imports_of(package, forbidden: str, skip) -> list[str]:
    """``file:line`` of every import of module ``forbidden`` (or below it) in ``package``, except in ``skip(path)``."""
    import ast

    offenders = []
    for path in sorted(package.rglob("*.py")):
        if skip(path):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative import: resolve against the module's package
                    parts = list(path.relative_to(package.parent).with_suffix("").parts)[: -node.level]
                    module = ".".join(parts + ([module] if module else []))
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return offenders


PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "usfm_monai"


def test_library_modules_do_not_import_the_command_line_module():
    """usfm_monai.bundle parses command lines; only it and the CLI may depend on it (usfm_monai.utils is the home)."""
    allowed = {PACKAGE / "bundle.py", PACKAGE / "apps" / "cli.py"}
    assert _imports_of(PACKAGE, "usfm_monai.bundle", allowed.__contains__) == []


def test_the_library_does_not_import_the_apps():
    """The tools (usfm_monai.apps) use the library, never the other way round (``python -m usfm_monai`` is the CLI)."""
    apps = PACKAGE / "apps"
    skip = lambda path: apps in path.parents or path == PACKAGE / "__main__.py"  # noqa: E731
    assert _imports_of(PACKAGE, "usfm_monai.apps", skip) == []


def test_ensure_bool_explains_the_command_line_pitfall():
    from usfm_monai.utils import ensure_bool
    from usfm_monai.data.sampling import create_sampler
    from usfm_monai.losses import USFMReconstructionLoss

    assert ensure_bool("flag", False) is False
    with pytest.raises(TypeError, match="capitalized"):
        USFMReconstructionLoss(use_frequency_loss="false")
    with pytest.raises(TypeError, match="balanced must be True or False"):
        create_sampler([{"image": "a", "organ": "x"}], balanced="false")


# ------------------------------------------------------------------------------------------------------------------
# every bool switch a config expression reads is validated: `--flag false` (a string) fails, naming the flag
# ------------------------------------------------------------------------------------------------------------------

import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOL_DEFAULTS = ("$torch.cuda.is_available()", "$sys.stderr.isatty()")
# plain "@flag" references are allowed only where the receiving library code runs ensure_bool itself
# (TrainingCheckpoint.resume, the dual mask's use_frequency_mask, resolve_datalist's check_files) or where the value is only
# recorded (summary info)
VALIDATED_BY_LIBRARY = {"check_files", "resume", "use_frequency_mask", "use_usfm_branch"}


def _config_sets():
    for bundle in sorted(glob.glob(os.path.join(REPO, "bundles", "*", "configs"))):
        name = os.path.basename(os.path.dirname(bundle))
        train = os.path.join(bundle, "train.json")
        for extra in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"):
            path = os.path.join(bundle, extra)
            if not os.path.isfile(path):
                continue
            files = [path] if extra in ("train.json", "inference.json") else [train, path]
            yield pytest.param(files, id=f"{name}-{extra}")


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}#{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}#{i}")
    else:
        yield path, node


def _bool_ids(files):
    ids = set()
    for f in files:
        with open(f) as fh:
            for k, v in json.load(fh).items():
                if isinstance(v, bool) or v in BOOL_DEFAULTS:
                    ids.add(k)
    return ids


@pytest.mark.parametrize("files", _config_sets())
def test_bool_switches_reject_lower_case_false(files):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    flags = _bool_ids(files)
    uses = []
    for path, value in _walk(parser.get()):
        if not isinstance(value, str):
            continue
        for flag in flags:
            if re.search(rf"@{flag}\b", value):
                if value.startswith("$"):
                    uses.append((path, flag, value))
                else:
                    assert path.split("#")[-1] in VALIDATED_BY_LIBRARY, f"{path}: plain @{flag} is not validated"
    for path, flag, value in uses:
        checked = ConfigParser()
        checked.read_config(files)
        checked[flag] = "false"  # what `python -m monai.bundle run ... --flag false` passes
        for other in set(re.findall(r"@([\w#]+)", value)) - flags:
            checked[other] = None  # keep the evaluation to this one expression (no dataset, no network)
        with pytest.raises(Exception) as err:  # MONAI wraps an expression's error in a RuntimeError
            checked.get_parsed_content(path, instantiate=False)
        chain, exc = [], err.value
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        assert any(isinstance(e, TypeError) and f"--{flag} False" in str(e) for e in chain), (path, flag, chain)
