"""Mixed precision settings (``usfm_monai.engines.precision``) and how the four bundles wire them.

Oracles: the dtype table of ``torch.autocast``; the GradScaler rule (float16 only) is observed by recording the
scalers the trainers build; the bundle settings are parsed from the real config files.
"""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser

import usfm_monai.engines.precision as precision
from usfm_monai.engines import AmpSupervisedTrainer, autocast_kwargs, check_amp_dtype, default_amp_dtype
from usfm_monai.engines import needs_grad_scaler
from usfm_monai.engines.cyclegan import CycleGANTrainer
from usfm_monai.networks.cyclegan import PatchGANDiscriminator, ResnetGenerator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES = ("pretrain_usfm", "seg_tn3k", "cls_busi", "enhance_usenhance")


@pytest.mark.parametrize(
    "value, expected", [("bfloat16", torch.bfloat16), ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)]
)
def test_check_amp_dtype(value, expected):
    assert check_amp_dtype(value) is expected
    assert autocast_kwargs(value) == {"dtype": expected}


@pytest.mark.parametrize("bad", ["bf16", "BFloat16", "float32", torch.float32, 16, None, True])
def test_bad_amp_dtype_names_the_key_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"amp_dtype must be one of \['bfloat16', 'float16'\], got"):
        check_amp_dtype(bad)


def test_grad_scaler_for_float16_only():
    assert needs_grad_scaler("float16") and not needs_grad_scaler("bfloat16")


@pytest.mark.parametrize(
    "available, bf16, expected", [(False, True, "float16"), (True, False, "float16"), (True, True, "bfloat16")]
)
def test_default_amp_dtype_follows_the_device(monkeypatch, available, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert default_amp_dtype() == expected


class RecordingScaler:
    """Stands in for ``torch.amp.GradScaler`` (which disables itself on a machine without CUDA)."""

    created: list[RecordingScaler] = []

    def __init__(self, device: str = "cuda", enabled: bool = True, **kwargs) -> None:
        self.enabled = enabled
        self.steps = 0
        RecordingScaler.created.append(self)

    def scale(self, loss):
        return loss * 1024.0 if self.enabled else loss

    def step(self, optimizer):
        if self.enabled:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad /= 1024.0
        optimizer.step()
        self.steps += 1

    def update(self):
        pass

    def state_dict(self):
        return {}

    def is_enabled(self):
        return self.enabled


def _trainer(**kwargs):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    data = [{"image": torch.rand(4, 3), "label": torch.rand(4, 1)} for _ in range(3)]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return AmpSupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
        loss_function=torch.nn.MSELoss(), **kwargs
    ), net


@pytest.mark.filterwarnings("ignore")  # autocast("cuda") / GradScaler on a machine without CUDA
@pytest.mark.parametrize("amp_dtype, scaled", [("bfloat16", False), ("float16", True)])
def test_trainer_uses_a_grad_scaler_for_float16_only(monkeypatch, amp_dtype, scaled):
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    RecordingScaler.created.clear()
    trainer, net = _trainer(amp=True, amp_dtype=amp_dtype)
    assert trainer.amp_kwargs == {"dtype": precision.AMP_DTYPES[amp_dtype]}
    before = net.weight.detach().clone()
    trainer.run()
    assert trainer.scaler is RecordingScaler.created[-1]
    assert trainer.scaler.enabled is scaled
    assert trainer.scaler.steps == 3  # every iteration went through the AMP branch
    assert not torch.equal(before, net.weight)


def test_trainer_without_amp_has_no_scaler():
    trainer, _ = _trainer(amp=False, amp_dtype="float16")
    trainer.run()
    assert trainer.scaler is None


def test_trainer_compile_wraps_the_network_and_keeps_the_original():
    trainer, net = _trainer(compile=True)
    assert trainer.compile is True
    assert trainer.network._orig_mod is net  # lazy: nothing is compiled before the first step


@pytest.mark.parametrize("key", ["compile", "amp"])
@pytest.mark.parametrize("value", ["false", "True", 1, None])
def test_trainer_switches_must_be_bools(key, value):
    with pytest.raises(TypeError, match=f"{key} must be True or False"):
        _trainer(**{key: value})


def test_trainer_rejects_contradicting_amp_kwargs_and_bad_dtype():
    with pytest.raises(ValueError, match="contradicts amp_dtype"):
        _trainer(amp_dtype="bfloat16", amp_kwargs={"dtype": torch.float16})
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        _trainer(amp_dtype="bf16")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "amp_kwargs, scaled", [(None, True), ({"dtype": torch.float16}, True), ({"dtype": torch.bfloat16}, False)]
)
def test_cyclegan_scalers_for_float16_only(monkeypatch, amp_kwargs, scaled):
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    nets = dict(gen_a2b=ResnetGenerator(ngf=4, n_blocks=1), gen_b2a=ResnetGenerator(ngf=4, n_blocks=1),
                disc_a=PatchGANDiscriminator(channels=4), disc_b=PatchGANDiscriminator(channels=4))
    g_opt = torch.optim.Adam([p for k in ("gen_a2b", "gen_b2a") for p in nets[k].parameters()])
    d_opt = torch.optim.Adam([p for k in ("disc_a", "disc_b") for p in nets[k].parameters()])
    trainer = CycleGANTrainer(device="cpu", max_epochs=1, train_data_loader=[], gen_optimizer=g_opt,
                              disc_optimizer=d_opt, amp=True, amp_kwargs=amp_kwargs, **nets)
    assert trainer.state.gen_scaler.enabled is scaled and trainer.state.disc_scaler.enabled is scaled


def _parser(bundle: str, config: str = "train.json", **updates) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", bundle, "configs", config))
    parser.update(updates)
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_bundles_take_amp_dtype(bundle, config):
    parser = _parser(bundle, config)
    assert parser.get_parsed_content("amp_dtype") == default_amp_dtype()
    evaluator = "validate#evaluator" if config == "train.json" else "evaluator"
    assert parser.get_parsed_content(f"{evaluator}#amp_kwargs") == {"dtype": check_amp_dtype(default_amp_dtype())}
    parser = _parser(bundle, config, amp_dtype="bf16")
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error of a config expression
        parser.get_parsed_content(f"{evaluator}#amp_kwargs")
    assert isinstance(info.value.__cause__, ValueError)
    assert "amp_dtype must be one of ['bfloat16', 'float16'], got 'bf16'" in str(info.value.__cause__)


@pytest.mark.parametrize("bundle", ["pretrain_usfm", "seg_tn3k", "cls_busi"])
def test_supervised_bundles_use_the_amp_trainer_with_compile_off(bundle):
    parser = _parser(bundle)
    trainer = parser.get("train#trainer")
    assert trainer["_target_"] == "usfm_monai.engines.AmpSupervisedTrainer"
    # the switch is read through the bool check, so `--compile false` (a string) cannot turn compilation on
    assert trainer["amp_dtype"] == "@amp_dtype" and trainer["compile"] == "$usfm_monai.utils.ensure_bool('compile', @compile)"
    assert parser.get_parsed_content("compile") is False


@pytest.mark.parametrize(
    "bundle, optimizers",
    [("pretrain_usfm", ["optimizer"]), ("seg_tn3k", ["optimizer"]), ("cls_busi", ["optimizer"]),
     ("enhance_usenhance", ["gen_optimizer", "disc_optimizer"])],
)
@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_fused_optimizer_on_cuda_only(bundle, optimizers, device):
    parser = _parser(bundle, device=f"$torch.device('{device}')")
    for name in optimizers:
        assert parser.get_parsed_content(f"{name}#fused") is (device != "cpu")


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, True)])
def test_pretrain_loader_caches_pins_and_keeps_workers(workers, persistent):
    parser = _parser("pretrain_usfm", num_workers=workers)
    for section in ("train", "validate"):
        assert parser.get(f"{section}#dataset#_target_") == "usfm_monai.data.DeferredCacheDataset"
        assert parser.get_parsed_content(f"{section}#dataloader#persistent_workers") is persistent
        assert parser.get_parsed_content(f"{section}#dataloader#pin_memory") is torch.cuda.is_available()
