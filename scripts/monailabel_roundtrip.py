#!/usr/bin/env python
"""Serve the usfm-monai bundles with a real MONAI Label server and send it a real ultrasound image.

What it does, in order:

1. makes (or reuses) a virtual environment for MONAI Label 0.8.5 in ``~/.cache/usfm-monai/monailabel-venv``:
   ``python -m venv --system-site-packages`` (torch, monai, timm are reused), then ``monailabel==0.8.5`` with
   ``numpy<2`` (``pydicom-seg`` needs it) and the pins that let the server start (``pydicom<3``,
   ``dicomweb-client[gcp]==0.59.1``, ``pynetdicom<3``), and this repository with ``pip install --no-deps -e``;
   it then checks that ``usfm_monai`` imports from THIS repository with numpy 1.x there;
2. builds a MONAI Label app in a temporary folder from the venv's ``monaibundle`` sample app and copies the
   bundles into ``<app>/model/<name>`` (``seg_tn3k`` -> ``usfm_tn3k_segmentation``, ``cls_busi`` ->
   ``usfm_busi_classification``: MONAI Label takes the task type from the folder name). The copies get the
   CPU-sized network of the bundle's ``quick.json`` (``encoder_size``, ``image_size``) unless ``--full_size``;
3. writes each copy's ``models/model.pt`` as ``{"model": state_dict}`` of a freshly initialized network
   (``torch.manual_seed(0)``, every parameter then perturbed by seeded N(0, 0.02^2) noise so that zero-initialized
   heads do not answer uniform probabilities): nothing is trained, the check is about the protocol, not accuracy;
4. starts ``monailabel start_server`` on 127.0.0.1 at a free port (``BUNDLE_DOWNLOAD_SRC=github`` so that the
   online zoo is never listed), waits for ``GET /info/``, posts the image to ``/infer/<model>`` and checks the
   answers: a PNG mask of the input image's size holding class indices for segmentation, one probability per class
   (summing to 1, named as in ``channel_def``) for classification; for segmentation the mask is also compared
   with the same network run eagerly on the same image in this process (the oracle for orientation and size);
   the segmentation bundle is then sent the same image as an ultrasound DICOM file whose
   sequence-of-ultrasound-regions header marks an inner region: the answer must be a mask of the DICOM's
   Rows x Columns (the image's geometry), background outside the region, equal to the eager bundle's mask;
5. prints the round-trip times and always stops the server (its whole process group).

Usage::

    python scripts/monailabel_roundtrip.py --check
    python scripts/monailabel_roundtrip.py --check --image "/path/to/benign (1).png" --repeats 3
    python scripts/monailabel_roundtrip.py --setup_only

Exit status 0 when every check passed or the check was skipped (no image, or ``USFM_SKIP_MONAILABEL=1``), 1 when
one failed, 2 when the image is missing and ``--require_image`` was given.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(os.environ.get("USFM_MONAILABEL_VENV", Path.home() / ".cache" / "usfm-monai" / "monailabel-venv"))
# the shared data folder next to the repository, as the tests look for it (tests/data/test_prepare_busi.py)
DEFAULT_BUSI_DIR = REPO_ROOT.parent / "shared" / "data" / "BUSI" / "Dataset_BUSI_with_GT"
BUSI_IMAGE = Path("benign") / "benign (1).png"
MONAILABEL_REQUIREMENTS = [
    "monailabel==0.8.5",
    "numpy<2",
    "pydicom<3",
    "dicomweb-client[gcp]==0.59.1",
    "pynetdicom<3",
]
#: repository bundle -> MONAI Label model name (the sample app infers the task type from the name)
BUNDLES = {"seg_tn3k": "usfm_tn3k_segmentation", "cls_busi": "usfm_busi_classification"}
#: ids of a bundle's quick.json copied into the served inference.json (the CPU-sized network)
QUICK_KEYS = ("encoder_size", "image_size")

__all__ = [
    "default_image",
    "ensure_venv",
    "build_app",
    "write_initial_weights",
    "start_server",
    "stop_server",
    "infer",
    "eager_prediction",
    "check_segmentation",
    "check_classification",
    "run_roundtrip",
    "main",
]


def log(msg: str) -> None:
    print(f"[monailabel-roundtrip] {msg}", flush=True)


def default_image() -> Path:
    """The BUSI image the check sends: ``$USFM_BUSI_DIR/benign/benign (1).png`` or the shared copy."""
    return Path(os.environ.get("USFM_BUSI_DIR", DEFAULT_BUSI_DIR)) / BUSI_IMAGE


# ------------------------------------------------------------------------------------------------------------------
# the virtual environment
# ------------------------------------------------------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _probe_venv(venv: Path) -> Optional[Dict[str, str]]:
    """Versions and the ``usfm_monai`` location seen by the venv's python, ``None`` if something does not import."""
    code = (
        "import json, numpy, torch, monai, timm, monailabel, usfm_monai, usfm_monai.networks;"
        "print(json.dumps({'numpy': numpy.__version__, 'torch': torch.__version__, 'monai': monai.__version__,"
        "'timm': timm.__version__, 'monailabel': monailabel.__version__, 'usfm_monai': usfm_monai.__file__}))"
    )
    python = _venv_python(venv)
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(_venv_python(venv)), "-m", "pip", "install", "-q", *args]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def ensure_venv(venv: Path = DEFAULT_VENV, repo: Path = REPO_ROOT) -> Dict[str, str]:
    """Create or reuse the MONAI Label venv and make it import ``usfm_monai`` from ``repo``.

    Returns:
        The versions seen in the venv and ``usfm_monai``'s file.

    Raises:
        RuntimeError: after installing, MONAI Label or ``usfm_monai`` still does not import, numpy is not 1.x, or
            ``usfm_monai`` comes from another folder than ``repo``.
    """
    venv = Path(venv)
    info = _probe_venv(venv)
    if info is None or not info["monailabel"].startswith("0.8.5"):
        if not _venv_python(venv).exists():
            venv.parent.mkdir(parents=True, exist_ok=True)
            log(f"creating {venv} (--system-site-packages: torch, monai and timm are reused)")
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        _pip(venv, *MONAILABEL_REQUIREMENTS)
        info = _probe_venv(venv)
    repo_pkg = (Path(repo) / "usfm_monai").resolve()
    if info is None or Path(info["usfm_monai"]).resolve().parent != repo_pkg:
        _pip(venv, "--no-deps", "-e", str(repo))
        info = _probe_venv(venv)
    if info is None:
        raise RuntimeError(f"{venv}: monailabel, torch or usfm_monai does not import after installing.")
    if Path(info["usfm_monai"]).resolve().parent != repo_pkg:
        raise RuntimeError(f"{venv}: usfm_monai imports from {info['usfm_monai']}, expected {repo_pkg}.")
    if not info["numpy"].startswith("1."):
        raise RuntimeError(f"{venv}: MONAI Label 0.8.5 needs numpy<2, found numpy {info['numpy']}.")
    return info


# ------------------------------------------------------------------------------------------------------------------
# the app, the bundles and their weights
# ------------------------------------------------------------------------------------------------------------------


def _sample_app(venv: Path) -> Path:
    candidates = [venv / "monailabel" / "sample-apps" / "monaibundle"]
    candidates += list(venv.glob("lib/python*/site-packages/monailabel/sample-apps/monaibundle"))
    for path in candidates:
        if (path / "main.py").is_file():
            return path
    raise FileNotFoundError(f"the monaibundle sample app was not found in {venv} (looked in {candidates}).")


_SAMPLE_INFER_LINE = "i = BundleInferTask(b, self.conf)"
_PATCHED_INFER_LINE = 'i = BundleInferTask(b, self.conf, add_post_restore="classification" not in n.lower())'


def _patch_app_for_classification(main_py: Path) -> None:
    """Do not append MONAI Label's ``Restored`` to classification models in the copied sample app.

    ``BundleInferTask`` appends ``Restored`` (resize the prediction to the input image) to every model but detection
    ones; on a ``(num_classes,)`` probability vector it fails with "operands could not be broadcast together with
    shapes (0,) (2,)" (MONAI Label 0.8.5, ``monailabel/transform/post.py``). The sample app is a template meant to
    be adapted, so the copy passes ``add_post_restore=False`` for models whose name says "classification".
    """
    text = main_py.read_text()
    if _SAMPLE_INFER_LINE not in text:
        raise ValueError(f"{main_py}: expected the line {_SAMPLE_INFER_LINE!r} of the MONAI Label 0.8.5 sample app.")
    main_py.write_text(text.replace(_SAMPLE_INFER_LINE, _PATCHED_INFER_LINE, 1))


def _check_served_config(config: Dict[str, Any], bundle: str) -> None:
    """Fail early, naming the id, where a bundle's ``inference.json`` cannot be served by MONAI Label."""
    for key in ("preprocessing", "postprocessing"):
        value = config.get(key)
        if not (isinstance(value, list) or (isinstance(value, dict) and value.get("_target_") == "Compose")):
            found = value.get("_target_") if isinstance(value, dict) else type(value).__name__
            raise ValueError(
                f"bundle {bundle!r}: configs/inference.json {key!r} must be a Compose (or a list) of transforms for "
                f"MONAI Label, which iterates over it; found {found!r}. Wrap it: "
                f'{{"_target_": "Compose", "transforms": [...]}}.'
            )


def build_app(venv: Path, work_dir: Path, bundles: Dict[str, str], full_size: bool = False) -> Path:
    """Copy the sample app and the bundles (configs, docs, LICENSE) into ``work_dir/app``.

    Without ``full_size`` the ids ``QUICK_KEYS`` of each bundle's ``configs/quick.json`` are written into the copy's
    ``inference.json`` so that the served network is CPU-sized.

    Returns:
        The app folder.
    """
    app = work_dir / "app"
    shutil.copytree(_sample_app(venv), app, ignore=shutil.ignore_patterns("__pycache__"))
    _patch_app_for_classification(app / "main.py")
    for bundle, name in bundles.items():
        src = REPO_ROOT / "bundles" / bundle
        if not (src / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"bundle {bundle!r}: {src / 'configs' / 'inference.json'} does not exist.")
        dst = app / "model" / name
        shutil.copytree(src / "configs", dst / "configs")
        for extra in ("docs", "LICENSE"):
            if (src / extra).exists():
                (shutil.copytree if (src / extra).is_dir() else shutil.copy2)(src / extra, dst / extra)
        (dst / "models").mkdir()
        _check_served_config(json.loads((dst / "configs" / "inference.json").read_text()), bundle)
        if not full_size and (src / "configs" / "quick.json").is_file():
            quick = json.loads((src / "configs" / "quick.json").read_text())
            config_path = dst / "configs" / "inference.json"
            config = json.loads(config_path.read_text())
            changed = {k: quick[k] for k in QUICK_KEYS if k in quick and k in config}
            config.update(changed)
            config_path.write_text(json.dumps(config, indent=4))
            log(f"{name}: served with the quick network {changed}")
    return app


def write_initial_weights(bundle_dir: Path, seed: int = 0, noise_std: float = 0.02) -> Path:
    """Save a freshly initialized ``network_def`` of the bundle's ``inference.json`` as ``models/model.pt``.

    Every parameter is then perturbed by seeded Gaussian noise (``noise_std``) so that zero-initialized heads give
    non-trivial answers. The file holds ``{"model": state_dict}``, the form MONAI's ``CheckpointLoader`` and MONAI
    Label read.
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    # zero-initialized heads would answer uniform probabilities, which no check can tell from a broken pipeline
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * noise_std)
    path = bundle_dir / "models" / "model.pt"
    torch.save({"model": network.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(venv: Path, app: Path, studies: Path, models: List[str], port: int, log_file: Path):
    """Start ``monailabel start_server`` in its own process group; returns the ``Popen``.

    The venv's python runs ``monailabel.main`` itself: the ``monailabel`` launcher script calls whatever ``python``
    comes first on ``PATH``, which need not be the venv's.
    """
    env = dict(os.environ, BUNDLE_DOWNLOAD_SRC="github", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    cmd = [
        str(_venv_python(venv)), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "models", ",".join(models), "--conf", "sam2", "false", "--conf", "skip_trainers", "true",
        "--conf", "preload", "false", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log(" ".join(cmd))
    out = open(log_file, "wb")
    # a new session makes the server, its uvicorn workers and any helper one process group to stop together
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(app), start_new_session=True)


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    # helpers of the group may outlive the leader
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for_info(base_url: str, proc: subprocess.Popen, timeout: float, log_file: Path) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MONAI Label server exited ({proc.returncode}):\n{_tail(log_file)}")
        try:
            with urllib.request.urlopen(f"{base_url}/info/", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1.0)
    raise TimeoutError(f"no answer from {base_url}/info/ within {timeout} s:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _multipart(fields: Dict[str, str], file_field: str, file_path: Path) -> Tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_path.name}"\r\n'
        f"Content-Type: {'application/dicom' if file_path.suffix.lower() == '.dcm' else 'image/png'}\r\n\r\n".encode()
    )
    body.write(file_path.read_bytes())
    body.write(f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def infer(base_url: str, model: str, image: Path, output: str, timeout: float = 300.0) -> Tuple[bytes, float]:
    """``POST /infer/<model>?output=<output>`` with ``file=@image``; returns the body and the round-trip seconds.

    The mask comes back as a uint8 PNG whatever the input's format (MONAI Label would otherwise write a DICOM
    input's mask as a DICOM file)."""
    params = {"result_dtype": "uint8", "result_extension": ".png"}
    data, content_type = _multipart({"params": json.dumps(params)}, "file", image)
    request = urllib.request.Request(
        f"{base_url}/infer/{model}?output={output}", data=data, headers={"Content-Type": content_type}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"/infer/{model} answered HTTP {err.code}: {err.read()[:2000]!r}") from err
    return body, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------------------
# the checks
# ------------------------------------------------------------------------------------------------------------------


def eager_prediction(bundle_dir: Path, image: Path):
    """The oracle: the bundle's preprocessing, network and postprocessing (writers left out) run in this process.

    Returns:
        segmentation: ``(H, W)`` uint8 array of class indices in the PIL orientation of ``image``;
        classification: ``(num_classes,)`` float array of probabilities.
    """
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, SaveImaged

    from usfm_monai.io import load_torch_file

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(load_torch_file(bundle_dir / "models" / "model.pt", "model checkpoint")["model"])
    network.eval()
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    post = list(post.transforms) if isinstance(post, Compose) else [post]
    item = pre({"image": str(image)})
    with torch.no_grad():
        item["pred"] = network(item["image"][None].float())[0]
    for t in post:
        if not isinstance(t, SaveImaged):
            item = t(item)
    pred = np.asarray(item["pred"].detach().cpu()).squeeze()
    if pred.ndim == 1:
        return pred.astype(np.float64)
    # MONAI's PIL reader gives (W, H); PIL arrays are (H, W)
    return pred.T.astype(np.uint8)


def image_size(image: Path) -> Tuple[int, int]:
    """``(W, H)`` of a PNG/JPEG (PIL) or of a single-frame DICOM file (``Columns``, ``Rows``)."""
    if image.suffix.lower() == ".dcm":
        import pydicom

        header = pydicom.dcmread(str(image), stop_before_pixels=True)
        return int(header.Columns), int(header.Rows)
    from PIL import Image

    with Image.open(image) as im:
        return im.size


def write_region_dicom(image: Path, path: Path, margin: float = 0.1) -> Tuple[Path, Tuple[int, int, int, int]]:
    """Write ``image`` (as grey) to ``path`` as an ultrasound DICOM file whose sequence-of-ultrasound-regions header
    marks the image without a ``margin`` border; returns the path and the region ``(x0, y0, x1, y1)``."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from fixtures.dicom import write_us_dicom  # the tests' DICOM writer (pydicom)

    with Image.open(image) as im:
        pixels = np.asarray(im.convert("L"))
    h, w = pixels.shape
    region = (int(w * margin), int(h * margin), int(w * (1 - margin)) - 1, int(h * (1 - margin)) - 1)
    return Path(write_us_dicom(str(path), pixels, region=region)), region


def check_segmentation(
    body: bytes, image: Path, labels: Dict[str, int], expected=None, region: Optional[Tuple[int, ...]] = None
) -> str:
    """Check a ``?output=image`` answer: a PNG of the input's size (DICOM: ``Columns`` x ``Rows``) holding class
    indices, equal to ``expected`` (the eager bundle's ``(H, W)`` mask) on at least 99 % of the pixels; with
    ``region`` = ``(x0, y0, x1, y1)`` (inclusive), background everywhere outside it.

    Raises:
        ValueError: naming what differs.
    """
    import numpy as np
    from PIL import Image

    in_size = image_size(image)
    mask_img = Image.open(io.BytesIO(body))
    if mask_img.format != "PNG":
        raise ValueError(f"segmentation answer is not a PNG (format {mask_img.format!r}, {len(body)} bytes).")
    if mask_img.size != in_size:
        raise ValueError(f"segmentation mask is {mask_img.size} (W, H), the input image is {in_size}.")
    mask = np.asarray(mask_img)
    allowed = {0, *labels.values()}
    values = set(np.unique(mask).tolist())
    if not values <= allowed:
        raise ValueError(f"segmentation mask holds values {sorted(values)}, expected class indices {sorted(allowed)}.")
    note = f"mask {mask_img.size} values {sorted(values)}"
    if region is not None:
        x0, y0, x1, y1 = region
        outside = np.ones(mask.shape, dtype=bool)
        outside[y0 : y1 + 1, x0 : x1 + 1] = False
        if mask[outside].any():
            raise ValueError(f"segmentation mask has {int((mask[outside] > 0).sum())} foreground pixels outside the "
                             f"ultrasound region {region}.")  # fmt: skip
        note += f", background outside the region {region}"
    if expected is not None:
        if expected.shape != mask.shape:
            raise ValueError(f"eager oracle mask {expected.shape} vs served mask {mask.shape} (H, W).")
        agree = float((expected == mask).mean())
        # nearest vs. linear resampling of MONAI Label's extra Restored step can move a few border pixels only
        if agree < 0.99:
            raise ValueError(f"served mask agrees with the eager bundle on only {agree:.2%} of the pixels.")
        note += f", {agree:.2%} of pixels equal to the eager bundle"
    return note


def check_classification(body: bytes, labels: Dict[str, int], expected=None, atol: float = 1e-3) -> str:
    """Check a ``?output=json`` answer: one probability per class, named as ``labels``, summing to 1, and equal to
    ``expected`` (the eager bundle's probabilities) within ``atol``."""
    result = json.loads(body)
    prediction = result.get("prediction")
    if not isinstance(prediction, list) or len(prediction) != len(labels):
        raise ValueError(f"classification answer has prediction {prediction!r}, expected {len(labels)} classes.")
    names = {p["idx"]: p["label"] for p in prediction}
    expected_names = {v: k for k, v in labels.items()}
    if names != expected_names:
        raise ValueError(f"classification labels {names}, expected {expected_names} (metadata channel_def).")
    scores = [float(p["score"]) for p in prediction]
    if not all(0.0 <= s <= 1.0 for s in scores) or abs(sum(scores) - 1.0) > 1e-4:
        raise ValueError(f"classification scores {scores} are not probabilities summing to 1.")
    note = "probabilities " + ", ".join(f"{names[i]}={s:.3f}" for i, s in enumerate(scores))
    if expected is not None:
        diff = max(abs(float(e) - s) for e, s in zip(expected, scores))
        if len(expected) != len(scores) or diff > atol:
            raise ValueError(f"served probabilities {scores} differ from the eager bundle's {list(expected)}.")
        note += f" (max |served - eager| {diff:.1e})"
    return note


# ------------------------------------------------------------------------------------------------------------------
# the whole round trip
# ------------------------------------------------------------------------------------------------------------------


def run_roundtrip(
    image: Path,
    venv: Path = DEFAULT_VENV,
    bundles: Optional[List[str]] = None,
    repeats: int = 2,
    full_size: bool = False,
    startup_timeout: float = 300.0,
    keep: bool = False,
) -> Dict[str, Any]:
    """Run steps 1-5 of the module docstring; returns ``{"info": ..., "results": {model: {...}}}``.

    Raises:
        FileNotFoundError: ``image`` or a bundle is missing.
        RuntimeError / ValueError / TimeoutError: the server failed or an answer is wrong.
    """
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"test image not found: {image} (set USFM_BUSI_DIR or pass --image).")
    selected = {b: BUNDLES[b] for b in (bundles or list(BUNDLES))}
    versions = ensure_venv(venv)
    log(f"venv {venv}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    work_dir = Path(tempfile.mkdtemp(prefix="usfm_monailabel_"))
    results: Dict[str, Any] = {}
    proc = None
    try:
        app = build_app(venv, work_dir, selected, full_size=full_size)
        for name in selected.values():
            path = write_initial_weights(app / "model" / name)
            log(f"{name}: freshly initialized weights (seed 0) -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
        studies = work_dir / "studies"
        studies.mkdir()
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log_file = work_dir / "server.log"
        t0 = time.perf_counter()
        proc = start_server(venv, app, studies, list(selected.values()), port, log_file)
        info = wait_for_info(base_url, proc, startup_timeout, log_file)
        log(f"server up in {time.perf_counter() - t0:.1f} s at {base_url}; models {sorted(info.get('models', {}))}")
        for bundle, name in selected.items():
            model_info = info.get("models", {}).get(name)
            if model_info is None:
                raise RuntimeError(f"/info/ does not list {name!r}: {sorted(info.get('models', {}))}.")
            labels = {str(k): int(v) for k, v in model_info.get("labels", {}).items()}
            is_cls = "classification" in name
            output = "json" if is_cls else "image"
            expected = eager_prediction(app / "model" / name, image)
            times = []
            for _ in range(max(1, repeats)):
                body, seconds = infer(base_url, name, image, output)
                times.append(seconds)
                if is_cls:
                    note = check_classification(body, labels, expected)
                else:
                    note = check_segmentation(body, image, labels, expected)
            results[name] = {"bundle": bundle, "type": model_info.get("type"), "labels": labels, "seconds": times,
                             "check": note}  # fmt: skip
            log(f"/infer/{name}: OK ({note}); round trips " + ", ".join(f"{s:.2f} s" for s in times))
            if not is_cls:  # the same image as an ultrasound DICOM file with a region header
                dcm, region = write_region_dicom(image, work_dir / "image.dcm")
                body, seconds = infer(base_url, name, dcm, output)
                note = check_segmentation(body, dcm, labels, eager_prediction(app / "model" / name, dcm), region)
                results[name]["dicom"] = {"seconds": seconds, "check": note}
                log(f"/infer/{name} (DICOM, region header): OK ({note}); round trip {seconds:.2f} s")
        return {"info": {"name": info.get("name"), "version": info.get("version")}, "results": results}
    finally:
        if proc is not None:
            stop_server(proc)
            log(f"server stopped (pid {proc.pid}, exit {proc.returncode})")
        if keep:
            log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run the round trip and exit non-zero on failure")
    parser.add_argument("--setup_only", action="store_true", help="only create/refresh the venv")
    parser.add_argument("--image", type=Path, default=None, help="PNG to send (default: BUSI 'benign (1).png')")
    parser.add_argument("--require_image", action="store_true", help="exit 2 instead of skipping without the image")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--bundles", nargs="+", choices=sorted(BUNDLES), default=list(BUNDLES))
    parser.add_argument("--repeats", type=int, default=2, help="requests per model (the first loads the network)")
    parser.add_argument("--full_size", action="store_true", help="serve the bundles' full ViT-B networks")
    parser.add_argument("--startup_timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary app folder and server log")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    if args.setup_only:
        info = ensure_venv(args.venv)
        log(json.dumps(info))
        return 0
    if os.environ.get("USFM_SKIP_MONAILABEL") == "1":
        log("SKIP: USFM_SKIP_MONAILABEL=1")
        return 0
    image = args.image or default_image()
    if not image.is_file():
        # CI machines without the BUSI data skip; --require_image turns that into a failure
        log(f"SKIP: test image not found: {image} (set USFM_BUSI_DIR or pass --image)")
        return 2 if args.require_image else 0
    try:
        out = run_roundtrip(image, args.venv, args.bundles, args.repeats, args.full_size, args.startup_timeout,
                            args.keep)  # fmt: skip
    except Exception as err:  # report any failure as a failed check with its message
        log(f"FAILED: {type(err).__name__}: {err}")
        return 1
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
