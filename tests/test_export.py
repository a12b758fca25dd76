"""Model-zoo readiness of every bundle: metadata schema, network in/out, TorchScript and ONNX export with parity.

Each bundle's ``inference.json`` network is built at the metadata's input size with a CPU-sized encoder
(``CPU_SIZED``), given seeded random weights as ``models/model.pt`` (``{"model": state_dict}``), then exported with
MONAI's own ``ckpt_export`` / ``onnx_export`` (the code behind ``python -m monai.bundle ckpt_export ...``). Oracle:
the eager PyTorch network on a batch the export never saw (batch size 2, the export traced batch size 1).

Why ``--use_trace``: ``torch.jit.script`` cannot compile the timm BEiT encoder as we use it (e.g.
``USFMEncoder._check_input`` builds ``tuple(x.shape[1:])``, whose length TorchScript cannot infer, and timm keeps
instance-level annotations TorchScript rejects). Tracing records the same graph for the metadata's fixed input size.
Why no ONNX for seg_tn3k: the UPerNet pyramid pooling module uses ``AdaptiveAvgPool2d`` with bins (1, 2, 3, 6) on a
16 x 16 patch grid; 3 and 6 do not divide 16 and ONNX has no adaptive pooling, so torch's TorchScript-based exporter
refuses ("output size that are not factor of input size"); the test is a strict xfail so that a fix is noticed.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from monai.bundle import ConfigParser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(os.path.dirname(REPO), "shared", "monai", "meta_schema_20240725.json")

#: overrides of each bundle's inference.json that keep the network CPU-sized (input size stays the metadata's)
CPU_SIZED = {
    "pretrain_usfm": {"encoder_size": "tiny"},
    "seg_tn3k": {"encoder_size": "tiny"},
    "cls_busi": {"encoder_size": "tiny"},
    "enhance_usenhance": {"ngf": 16, "n_blocks": 3, "usfm_size": "tiny"},
}
ONNX_UNSUPPORTED = {
    "seg_tn3k": "UPerNet pyramid pooling: AdaptiveAvgPool2d bins 3 and 6 do not divide the 16 x 16 grid (no ONNX op)"
}
TS_ATOL = 1e-5
ONNX_ATOL = 1e-4


def _configs(bundle: str) -> str:
    return os.path.join(REPO, "bundles", bundle, "configs")


def _onnx_marks(param):
    bundle = param.values[0]
    reason = ONNX_UNSUPPORTED.get(bundle)
    return list(param.marks) + ([pytest.mark.xfail(strict=True, reason=reason)] if reason else [])


def _ready(bundle: str) -> bool:
    return all(os.path.isfile(os.path.join(_configs(bundle), f)) for f in ("inference.json", "metadata.json"))


BUNDLES = [pytest.param(b, id=b, marks=pytest.mark.skipif(not _ready(b), reason=f"{b} not ready")) for b in CPU_SIZED]


def _parser(bundle: str, bundle_root: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(_configs(bundle), "inference.json"))
    parser.read_meta(os.path.join(_configs(bundle), "metadata.json"))
    parser["bundle_root"] = bundle_root
    for key, value in CPU_SIZED[bundle].items():
        parser[key] = value
    return parser


def _input_shape(parser: ConfigParser, batch: int):
    fmt = parser["_meta_#network_data_format#inputs#image"]
    return [batch, int(fmt["num_channels"]), *[int(s) for s in fmt["spatial_shape"]]]


@pytest.fixture(scope="module")
def exported_bundle(tmp_path_factory):
    """``bundle -> (bundle_root, eager network, input shape)`` with a seeded random ``models/model.pt``."""
    cache = {}

    def make(bundle: str):
        if bundle not in cache:
            root = str(tmp_path_factory.mktemp(bundle))
            os.makedirs(os.path.join(root, "models"))
            shutil.copytree(_configs(bundle), os.path.join(root, "configs"))
            parser = _parser(bundle, root)
            torch.manual_seed(0)
            network = parser.get_parsed_content("network_def", instantiate=True)
            # zero-initialized heads would make every output ~0 and any parity trivially small
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for param in network.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * 0.02)
            torch.save({"model": network.state_dict()}, os.path.join(root, "models", "model.pt"))
            cache[bundle] = (root, network.eval(), _input_shape(parser, 1))
        return cache[bundle]

    return make


def _eager(network: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return network(x).numpy()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata(bundle):
    if not os.path.isfile(SCHEMA):
        pytest.skip(f"schema copy not found at {SCHEMA}")
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=os.path.join(_configs(bundle), "metadata.json"), filepath=SCHEMA)  # raises on failure
    meta = json.load(open(os.path.join(_configs(bundle), "metadata.json")))
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"
    assert "usfm-monai" in meta["required_packages_version"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle, tmp_path):
    from monai.bundle import verify_net_in_out

    # raises when the network's output channels, spatial shape or dtype contradict metadata.json
    verify_net_in_out(
        net_id="network_def",
        meta_file=os.path.join(_configs(bundle), "metadata.json"),
        config_file=os.path.join(_configs(bundle), "inference.json"),
        device="cpu",
        bundle_root=str(tmp_path),
        **CPU_SIZED[bundle],
    )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_torchscript_export_parity(bundle, exported_bundle):
    from monai.bundle import ckpt_export

    root, network, shape = exported_bundle(bundle)
    filepath = os.path.join(root, "models", "model.ts")
    ckpt_export(
        net_id="network_def",
        filepath=filepath,
        ckpt_file=os.path.join(root, "models", "model.pt"),
        meta_file=os.path.join(root, "configs", "metadata.json"),
        config_file=os.path.join(root, "configs", "inference.json"),
        key_in_ckpt="model",
        use_trace=True,
        input_shape=shape,
        bundle_root=root,
        **CPU_SIZED[bundle],
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(filepath, map_location="cpu", _extra_files=extra)
    with open(os.path.join(root, "configs", "metadata.json")) as f:
        assert json.loads(extra["metadata.json"])["version"] == json.load(f)["version"]
    x = torch.rand([2, *shape[1:]], generator=torch.Generator().manual_seed(1))
    expected = _eager(network, x)
    with torch.no_grad():
        got = scripted(x).numpy()
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    print(f"{bundle}: TorchScript (trace) max |ts - eager| = {diff:.3e} (output max {np.abs(expected).max():.3e})")
    assert diff <= TS_ATOL


@pytest.mark.parametrize("bundle", [pytest.param(b.values[0], id=b.id, marks=_onnx_marks(b)) for b in BUNDLES])
def test_onnx_export_parity(bundle, exported_bundle):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from monai.bundle import onnx_export

    root, network, shape = exported_bundle(bundle)
    filepath = os.path.join(root, "models", "model.onnx")
    onnx_export(
        net_id="network_def",
        filepath=filepath,
        ckpt_file=os.path.join(root, "models", "model.pt"),
        meta_file=os.path.join(root, "configs", "metadata.json"),
        config_file=os.path.join(root, "configs", "inference.json"),
        key_in_ckpt="model",
        use_trace=True,
        input_shape=shape,
        converter_kwargs={
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
            "opset_version": 17,
            # torch's dynamo exporter needs onnxscript; the TorchScript-based one is what MONAI documents
            "dynamo": False,
        },
        bundle_root=root,
        **CPU_SIZED[bundle],
    )
    session = ort.InferenceSession(filepath, providers=["CPUExecutionProvider"])
    x = torch.rand([2, *shape[1:]], generator=torch.Generator().manual_seed(2))
    expected = _eager(network, x)
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    print(f"{bundle}: ONNX Runtime max |onnx - eager| = {diff:.3e} (output max {np.abs(expected).max():.3e})")
    assert diff <= ONNX_ATOL
