"""Tests for usfm_monai.apps.packaging.

Oracles: MONAI's own readers of the archive (``monai.bundle.download`` with a ``file://`` URL, ``monai.bundle.load``,
``monai.bundle.download_large_files`` with its hash check); hashlib on the original bytes; the exact member list of a
hand-made bundle. The slow test builds the project's wheel, installs it into a fresh virtual environment and runs a
packed bundle's inference from a folder outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai.bundle import ConfigParser
from usfm_monai.apps.packaging import LARGE_FILES_NAME, pack_bundle

REPO = Path(__file__).resolve().parents[1]


def _make_bundle(root: Path, weights: bytes, version: str = "0.2.0") -> Path:
    bundle = root / "toy_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": version, "name": "toy"}))
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "torch.nn.Identity"}}))
    (bundle / "docs").mkdir()
    (bundle / "docs" / "README.md").write_text("# toy\n")
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(weights)
    # run outputs and training state that must not be shipped
    (bundle / "models" / "checkpoint_last.pt").write_bytes(b"optimizer state")
    (bundle / "models" / ".tmp_abc.pt").write_bytes(b"half-written")
    (bundle / "models" / ".gitkeep").write_bytes(b"")
    (bundle / "data" / "synthetic").mkdir(parents=True)
    (bundle / "data" / "synthetic" / "0.png").write_bytes(b"png")
    (bundle / "eval").mkdir()
    (bundle / "eval" / "metrics.csv").write_text("dice\n")
    (bundle / "configs" / "__pycache__").mkdir()
    (bundle / "configs" / "__pycache__" / "x.pyc").write_bytes(b"")
    return bundle


SHIPPED = ["LICENSE", "configs/inference.json", "configs/metadata.json", "docs/README.md"]


@pytest.fixture
def weights_bytes():
    return np.random.default_rng(0).integers(0, 256, size=3000, dtype=np.uint8).tobytes()


def test_small_weights_are_carried(tmp_path, weights_bytes):
    bundle = _make_bundle(tmp_path, weights_bytes)
    packed = pack_bundle(str(bundle), str(tmp_path / "toy.zip"))
    assert packed.name == "toy_bundle" and packed.version == "0.2.0" and packed.large_files == []
    with zipfile.ZipFile(packed.zip_path) as zf:
        names = zf.namelist()
        assert names == ["toy_bundle/"] + [f"toy_bundle/{f}" for f in sorted(SHIPPED + ["models/model.pt"])]
        assert zf.read("toy_bundle/models/model.pt") == weights_bytes


def test_default_output_name(tmp_path, weights_bytes):
    bundle = _make_bundle(tmp_path, weights_bytes, version="1.2.3")
    packed = pack_bundle(str(bundle))
    assert packed.zip_path == str(tmp_path / "toy_bundle_v1.2.3.zip") and os.path.isfile(packed.zip_path)


def test_large_weights_listed_and_downloadable(tmp_path, weights_bytes):
    from monai.bundle import download_large_files
    from monai.apps.utils import HashCheckError, extractall

    bundle = _make_bundle(tmp_path, weights_bytes)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    packed = pack_bundle(
        str(bundle),
        str(tmp_path / "toy.zip"),
        large_file_threshold_mb=0.001,  # 1000 bytes < 3000
        url_template=uploads.as_uri() + "/{name}_v{version}/{filename}",
    )
    expected_hash = hashlib.sha256(weights_bytes).hexdigest()
    assert packed.large_files == [
        {
            "path": "models/model.pt",
            "url": f"{uploads.as_uri()}/toy_bundle_v0.2.0/model.pt",
            "hash_val": expected_hash,
            "hash_type": "sha256",
        }
    ]
    with zipfile.ZipFile(packed.zip_path) as zf:
        assert "toy_bundle/models/model.pt" not in zf.namelist()
        assert f"toy_bundle/{LARGE_FILES_NAME}" in zf.namelist()

    # the consumer side: extract as `monai.bundle download` does, read large_files.yml with MONAI's parser, fetch
    extractall(packed.zip_path, str(tmp_path / "dl"), has_base=True)
    local = tmp_path / "dl" / "toy_bundle"
    parser = ConfigParser()
    parser.read_config(str(local / LARGE_FILES_NAME))
    assert parser["large_files"][0]["hash_val"] == expected_hash
    (uploads / "toy_bundle_v0.2.0").mkdir()
    (uploads / "toy_bundle_v0.2.0" / "model.pt").write_bytes(weights_bytes)
    download_large_files(bundle_path=str(local))
    assert (local / "models" / "model.pt").read_bytes() == weights_bytes

    # a tampered upload fails MONAI's sha256 check
    (local / "models" / "model.pt").unlink()
    (uploads / "toy_bundle_v0.2.0" / "model.pt").write_bytes(weights_bytes[::-1])
    with pytest.raises(HashCheckError, match="sha256 hash check"):
        download_large_files(bundle_path=str(local))


def test_placeholder_url_names_the_file(tmp_path, weights_bytes):
    packed = pack_bundle(str(_make_bundle(tmp_path, weights_bytes)), str(tmp_path / "t.zip"), large_file_threshold_mb=0)
    # threshold 0 moves every weights file out, never configs, docs or LICENSE
    assert [e["path"] for e in packed.large_files] == ["models/model.pt"]
    assert packed.large_files[0]["url"] == "UPLOAD-models/model.pt-AND-PUT-ITS-DOWNLOAD-URL-HERE"
    assert packed.files == sorted(SHIPPED + [LARGE_FILES_NAME])


def test_zip_is_reproducible(tmp_path, weights_bytes):
    bundle = _make_bundle(tmp_path, weights_bytes)
    a = pack_bundle(str(bundle), str(tmp_path / "a.zip"))
    os.utime(bundle / "LICENSE", (0, 0))  # file timestamps must not leak into the archive
    b = pack_bundle(str(bundle), str(tmp_path / "b.zip"))
    assert Path(a.zip_path).read_bytes() == Path(b.zip_path).read_bytes()


def test_monai_download_and_load_read_the_zip(tmp_path):
    from monai.bundle import download, load

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    bundle = _make_bundle(tmp_path, b"")
    torch.save({"model": state}, bundle / "models" / "model.pt")
    packed = pack_bundle(str(bundle), str(tmp_path / "toy_bundle.zip"))
    download(name="toy_bundle", url=Path(packed.zip_path).as_uri(), bundle_dir=str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "toy_bundle" / "configs" / "metadata.json").is_file()
    model = load(
        name="toy_bundle", model=torch.nn.Linear(3, 2, bias=False), bundle_dir=str(tmp_path / "dl"), key_in_ckpt="model"
    )
    assert torch.equal(model.weight, state["weight"])


def test_errors(tmp_path, weights_bytes):
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        pack_bundle(str(tmp_path))
    bundle = _make_bundle(tmp_path, weights_bytes)
    with pytest.raises(ValueError, match="large_file_threshold_mb must be >= 0"):
        pack_bundle(str(bundle), large_file_threshold_mb=-1)
    with pytest.raises(ValueError, match=r"unknown field 'tag'.*available"):
        pack_bundle(str(bundle), large_file_threshold_mb=0, url_template="https://x/{tag}/{filename}")
    with pytest.raises(FileNotFoundError, match="folder of output_zip"):
        pack_bundle(str(bundle), str(tmp_path / "missing" / "x.zip"))
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="require_weights=False"):
        pack_bundle(str(bundle))
    packed = pack_bundle(str(bundle), str(tmp_path / "configs_only.zip"), require_weights=False)
    assert "models/model.pt" not in packed.files
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": "no version"}))
    with pytest.raises(ValueError, match="'version'"):
        pack_bundle(str(bundle), require_weights=False)


# ------------------------------------------------------------------------------------------------------------------
# the installed wheel runs a packed bundle outside the repository
# ------------------------------------------------------------------------------------------------------------------


def _run(cmd, cwd, timeout=300, env=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _outer_site_packages() -> list[str]:
    """The site-packages of the virtual environment running the tests; empty on a system interpreter.

    ``venv --system-site-packages`` made from a venv's interpreter inherits the *base* interpreter's packages, not
    the outer venv's, so torch/monai installed in the outer venv would be missing.
    """
    if sys.prefix == sys.base_prefix:
        return []
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _inherit_outer_venv(python, cwd, env) -> None:
    """Append the outer venv's site-packages to the inner venv's ``sys.path`` with a ``.pth`` file.

    Plain path lines, after the inner venv's own site-packages: the wheel's ``usfm_monai`` still wins over an
    editable install in the outer venv (whose own ``.pth`` hooks are not run).
    """
    outer = _outer_site_packages()
    if not outer:
        return
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd, env=env).strip()
    Path(purelib, "_outer_venv.pth").write_text("\n".join(outer) + "\n")


@pytest.mark.slow
def test_wheel_runs_packed_bundle_outside_repo(tmp_path):
    bundle_src = REPO / "bundles" / "seg_tn3k"
    if not (bundle_src / "configs" / "inference.json").is_file():
        pytest.skip("bundles/seg_tn3k is not ready")
    env = dict(os.environ, OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)

    # 1. the wheel, built from the repository (setuptools from this interpreter: no download, no isolation)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, REPO]
    _run(build, tmp_path, env=env)
    (wheel,) = wheels.glob("usfm_monai-*.whl")

    # 2. a fresh venv that reuses torch/monai/timm but gets usfm_monai only from the wheel
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path, env=env)
    python = venv / "bin" / "python"
    _inherit_outer_venv(python, tmp_path, env)
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp_path, env=env)
    outside = tmp_path / "outside"
    outside.mkdir()
    where = _run([python, "-c", "import usfm_monai; print(usfm_monai.__file__)"], outside, env=env).strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    # 3. a copy of the bundle with tiny random weights, packed with the weights left to large_files.yml
    src = tmp_path / "src" / "seg_tn3k"
    shutil.copytree(bundle_src / "configs", src / "configs")
    for extra in ("docs", "LICENSE"):
        if (bundle_src / extra).is_dir():
            shutil.copytree(bundle_src / extra, src / extra)
        elif (bundle_src / extra).is_file():
            shutil.copy2(bundle_src / extra, src / extra)
    (src / "models").mkdir()
    overrides = {"encoder_size": "tiny", "image_size": 64}
    parser = ConfigParser()
    parser.read_config(str(src / "configs" / "inference.json"))
    for k, v in overrides.items():
        parser[k] = v
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    torch.save({"model": network.state_dict()}, src / "models" / "model.pt")
    uploads = tmp_path / "uploads"
    url_template = uploads.as_uri() + "/{filename}"
    packed = pack_bundle(str(src), str(tmp_path / "seg.zip"), large_file_threshold_mb=1.0, url_template=url_template)
    assert [e["path"] for e in packed.large_files] == ["models/model.pt"]
    uploads.mkdir()
    shutil.copy2(src / "models" / "model.pt", uploads / "model.pt")  # "the release upload"

    # 4. download (file:// URLs), fetch the weights, run inference from inside the extracted bundle (venv python)
    dl = outside / "bundles"
    _run([python, "-m", "monai.bundle", "download", "--name", "seg_tn3k", "--url", Path(packed.zip_path).as_uri(),
          "--bundle_dir", dl], outside, env=env)  # fmt: skip
    local = dl / "seg_tn3k"
    assert not (local / "models" / "model.pt").exists()
    _run([python, "-m", "monai.bundle", "download_large_files", "--bundle_path", local], outside, env=env)
    assert hashlib.sha256((local / "models" / "model.pt").read_bytes()).hexdigest() == packed.large_files[0]["hash_val"]
    images = outside / "images"
    images.mkdir()
    sizes = {"a.png": (70, 45), "b.png": (40, 64)}  # PIL (W, H), non-square so a transposed output is caught
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8)).save(images / name)
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir", images,
           "--num_workers", "0", "--save_overlays", "False"]  # fmt: skip
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    _run(cmd, local, env=env)
    outputs = sorted((local / "eval" / "inference").glob("*_seg.png"))
    assert [p.name for p in outputs] == ["a_seg.png", "b_seg.png"]
    for out in outputs:
        with Image.open(out) as mask:
            assert mask.size == sizes[out.name.replace("_seg", "")]
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1}
    assert not (REPO / "bundles" / "seg_tn3k" / "eval" / "inference" / "a_seg.png").exists()


# ------------------------------------------------------------------------------------------------------------------
# hygiene: public names resolve, imports are declared, no machine-specific paths
# ------------------------------------------------------------------------------------------------------------------


def _package_modules() -> list[str]:
    import pkgutil

    import usfm_monai

    names = ["usfm_monai"]
    for info in pkgutil.walk_packages(usfm_monai.__path__, "usfm_monai."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module", _package_modules())
def test_star_import_of_every_module(module):
    """``from <module> import *`` works: every name in ``__all__`` exists."""
    namespace: dict = {}
    exec(f"from {module} import *", namespace)  # noqa: S102 - the statement under test
    import importlib

    public = getattr(importlib.import_module(module), "__all__", [])
    assert [n for n in public if n not in namespace] == []


def _module_level(body):
    """Statements run at import time: the module body and its ``if`` / ``try`` blocks, not function bodies."""
    import ast

    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def test_every_third_party_import_is_declared():
    """Each package ``usfm_monai`` imports at module level is in ``install_requires`` (or the standard library).

    Imports inside functions are lazy, for optional features; they are not checked here.
    """
    import ast
    import configparser
    import importlib.metadata
    import re

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = {
        re.split(r"[<>=!~\[ ;]", line.strip())[0].lower().replace("_", "-")
        for line in cfg["options"]["install_requires"].splitlines()
        if line.strip()
    }
    dists = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in (REPO / "usfm_monai").rglob("*.py"):
        for node in _module_level(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "usfm_monai" or top not in dists:
                    continue  # standard library, ourselves, or optional and absent here (optional_import)
                names = {d.lower().replace("_", "-") for d in dists[top]}
                if not names & declared:
                    undeclared.setdefault(top, str(path.relative_to(REPO)))
    # optional at run time, imported lazily through monai.utils.optional_import or guarded imports
    optional = {"pydicom", "itk", "nvidia"}
    assert {k: v for k, v in undeclared.items() if k not in optional} == {}


def test_no_machine_specific_paths():
    """Tests, scripts and docs find shared data relative to the repository or from an environment variable."""
    offenders = []
    for folder in ("tests", "scripts", "docs", "usfm_monai", "bundles"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".json") and path.is_file() and path.name != "test_packaging.py":
                if "/work/" in path.read_text(encoding="utf-8", errors="replace"):
                    offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
