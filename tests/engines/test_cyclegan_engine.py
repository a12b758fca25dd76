"""Tests for usfm_monai.engines.cyclegan.CycleGANTrainer (USFM paper §4.1.2, CycleGAN step of Zhu et al. 2017).

Oracles: the losses and the SGD update of one step are recomputed by hand from deep copies of the networks
taken before the step; the learning-rate factors are worked out by hand; the evaluator metric is recomputed from
a direct call of the generator.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver, LrScheduleHandler, MeanAbsoluteError, from_engine
from monai.inferers import SimpleInferer
from monai.utils import AdversarialIterationEvents
from timm.models.beit import Beit

from usfm_monai.engines.cyclegan import CycleGANKeys, CycleGANTrainer, PrepareBatchImageTarget, cyclegan_lr_lambda
from usfm_monai.networks.cyclegan import PatchGANDiscriminator, ResnetGenerator

LOSS_KEYS = [
    "loss_gan_a2b", "loss_gan_b2a", "loss_cycle_a", "loss_cycle_b", "loss_identity_a", "loss_identity_b",
    "loss_g", "loss_d_a", "loss_d_b", "loss_d",
]


def build_nets(seed=0):
    torch.manual_seed(seed)
    enc = Beit(img_size=32, patch_size=16, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_heads=2,
               use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, drop_path_rate=0.1)
    return dict(
        gen_a2b=ResnetGenerator(ngf=8, n_blocks=2, usfm_encoder=enc),
        gen_b2a=ResnetGenerator(ngf=8, n_blocks=2),
        disc_a=PatchGANDiscriminator(channels=8),
        disc_b=PatchGANDiscriminator(channels=8),
    )


def build_trainer(nets, data, opt="adam", lr=2e-4, max_epochs=1, **kwargs):
    gen_params = list(nets["gen_a2b"].trainable_parameters()) + list(nets["gen_b2a"].trainable_parameters())
    disc_params = list(nets["disc_a"].parameters()) + list(nets["disc_b"].parameters())
    if opt == "adam":
        g_opt = torch.optim.Adam(gen_params, lr=lr, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(disc_params, lr=lr, betas=(0.5, 0.999))
    else:
        g_opt, d_opt = torch.optim.SGD(gen_params, lr=lr), torch.optim.SGD(disc_params, lr=lr)
    return CycleGANTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=data, gen_optimizer=g_opt,
                           disc_optimizer=d_opt, **nets, **kwargs)


def make_batches(n_batches, batch_size=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(batch_size, 1, 32, 32, generator=g),
            "target": torch.rand(batch_size, 1, 32, 32, generator=g),
        }
        for _ in range(n_batches)
    ]


def l1(x, y):
    return (x - y).abs().mean()


def ls_real(logits):
    return ((logits - 1.0) ** 2).mean()


def ls_fake(logits):
    return (logits**2).mean()


@pytest.mark.parametrize("lambda_identity", [0.5, 0.0], ids=["identity0.5", "identity0"])
def test_one_step_losses_and_updates_match_hand_computation(lambda_identity):
    nets = build_nets()
    ref = {k: copy.deepcopy(v).train() for k, v in nets.items()}
    batch = make_batches(1)[0]
    lr, lam = 0.05, 10.0
    trainer = build_trainer(nets, [batch], opt="sgd", lr=lr, decollate=False, lambda_cycle=lam,
                            lambda_identity=lambda_identity, pool_size=4)
    trainer.run()
    out = trainer.state.output

    a, b = batch["image"], batch["target"]
    G, F_, DA, DB = ref["gen_a2b"], ref["gen_b2a"], ref["disc_a"], ref["disc_b"]
    fake_b, fake_a = G(a), F_(b)
    rec_a, rec_b = F_(fake_b), G(fake_a)
    exp = {
        "loss_gan_a2b": ls_real(DB(fake_b)),
        "loss_gan_b2a": ls_real(DA(fake_a)),
        "loss_cycle_a": lam * l1(rec_a, a),
        "loss_cycle_b": lam * l1(rec_b, b),
        "loss_identity_a": lam * lambda_identity * l1(F_(a), a),
        "loss_identity_b": lam * lambda_identity * l1(G(b), b),
    }
    exp["loss_g"] = sum(exp.values())
    # The pool is not full yet (4 >= batch 2), so the discriminators see the current fakes.
    exp["loss_d_a"] = 0.5 * (ls_real(DA(a)) + ls_fake(DA(fake_a.detach())))
    exp["loss_d_b"] = 0.5 * (ls_real(DB(b)) + ls_fake(DB(fake_b.detach())))
    exp["loss_d"] = exp["loss_d_a"] + exp["loss_d_b"]
    for key in LOSS_KEYS:
        torch.testing.assert_close(out[key], exp[key].detach(), atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(out["pred"], fake_b.detach(), atol=1e-6, rtol=1e-5)
    assert torch.equal(out["label"], b) and torch.equal(out["image"], a)

    # SGD oracle: p_new = p - lr * d(loss)/dp; generators from loss_g only, discriminators from loss_d only.
    gen_grads = torch.autograd.grad(exp["loss_g"], list(G.trainable_parameters()) + list(F_.parameters()))
    disc_grads = torch.autograd.grad(exp["loss_d"], list(DA.parameters()) + list(DB.parameters()))
    new_params = list(nets["gen_a2b"].trainable_parameters()) + list(nets["gen_b2a"].parameters())
    old_params = list(G.trainable_parameters()) + list(F_.parameters())
    for new, old, grad in zip(new_params, old_params, gen_grads):
        torch.testing.assert_close(new, old - lr * grad, atol=1e-5, rtol=1e-4)
    new_params = list(nets["disc_a"].parameters()) + list(nets["disc_b"].parameters())
    old_params = list(DA.parameters()) + list(DB.parameters())
    for new, old, grad in zip(new_params, old_params, disc_grads):
        torch.testing.assert_close(new, old - lr * grad, atol=1e-5, rtol=1e-4)


def test_two_epochs_train_all_but_frozen_branch_and_fire_events():
    nets = build_nets()
    before = {k: copy.deepcopy(v.state_dict()) for k, v in nets.items()}
    data = make_batches(2)
    trainer = build_trainer(nets, data, max_epochs=2, lr=1e-3)
    counts = {"g": 0, "d": 0}
    for key, event in (("g", AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED),
                       ("d", AdversarialIterationEvents.DISCRIMINATOR_MODEL_COMPLETED)):
        trainer.add_event_handler(event, lambda e, k=key: counts.__setitem__(k, counts[k] + 1))
    losses = []
    get_losses = from_engine(["loss_g", "loss_d"], first=True)  # the output is decollated, as for StatsHandler
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(get_losses(e.state.output)))
    trainer.run()
    assert counts == {"g": 4, "d": 4} and trainer.state.iteration == 4 and len(losses) == 4
    assert all(torch.isfinite(torch.tensor(pair)).all() for pair in losses)
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            unchanged = torch.equal(value, before[name][key])
            if key.startswith("usfm_branch."):
                assert unchanged, f"frozen {name}.{key} changed"
            else:
                assert not unchanged, f"trainable {name}.{key} did not change"
    assert not any(m.training for m in nets["gen_a2b"].usfm_branch.encoder.modules())
    assert len(trainer.state.pool_a) == len(trainer.state.pool_b) == 8  # 4 iterations x 2 images < 50


def test_lr_lambda_values_and_lr_schedule_handler():
    assert [cyclegan_lr_lambda(2, 3)(e) for e in range(6)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert [cyclegan_lr_lambda(0, 1)(e) for e in range(3)] == [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="n_epochs_decay"):
        cyclegan_lr_lambda(1, -1)
    nets = build_nets()
    trainer = build_trainer(nets, make_batches(1), max_epochs=3, lr=2e-4)
    seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.gen_optimizer.param_groups[0]["lr"]))
    for opt in (trainer.state.gen_optimizer, trainer.state.disc_optimizer):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cyclegan_lr_lambda(1, 3))
        LrScheduleHandler(sched, print_lr=False).attach(trainer)
    trainer.run()
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([2e-4, 2e-4 * 0.75, 2e-4 * 0.5]))


def test_state_dict_checkpoint_round_trip(tmp_path):
    nets = build_nets()
    data = make_batches(2)
    trainer = build_trainer(nets, data, max_epochs=1, pool_size=3)
    saver = CheckpointSaver(str(tmp_path), save_dict={"trainer": trainer}, save_final=True, final_filename="final.pt")
    saver.attach(trainer)
    trainer.run()
    sd = trainer.state_dict()
    expected_keys = {"gen_a2b", "gen_b2a", "disc_a", "disc_b", "gen_optimizer", "disc_optimizer", "pool_a", "pool_b"}
    assert expected_keys <= set(sd) and sd["iteration"] == 2
    assert any(k.startswith("usfm_branch.") for k in sd["gen_a2b"])  # self-contained checkpoint

    loaded = torch.load(tmp_path / "final.pt", weights_only=True)  # tensors and plain containers only
    fresh_nets = build_nets(seed=3)
    fresh = build_trainer(fresh_nets, data, max_epochs=1, pool_size=3)
    Checkpoint.load_objects(to_load={"trainer": fresh}, checkpoint=loaded)
    assert fresh.state.iteration == 2 and fresh.state.epoch == 1
    for name, net in fresh_nets.items():
        assert fresh.state.__dict__[name] is net  # the live objects stay in the state
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, nets[name].state_dict()[key], rtol=0, atol=0)
    for key in ("gen_optimizer", "disc_optimizer"):
        old, new = getattr(trainer.state, key).state_dict(), getattr(fresh.state, key).state_dict()
        assert old["param_groups"] == new["param_groups"]
        for pid, pstate in old["state"].items():
            torch.testing.assert_close(new["state"][pid]["exp_avg"], pstate["exp_avg"], rtol=0, atol=0)
    # The restored pools continue exactly as the originals would.
    probe = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(fresh.state.pool_b(probe), trainer.state.pool_b(probe), rtol=0, atol=0)
    with pytest.raises(KeyError, match="gen_a2b"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "gen_a2b"})


def test_generator_as_supervised_evaluator_network():
    nets = build_nets()
    gen = nets["gen_a2b"]
    data = make_batches(2)
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=data, network=gen, inferer=SimpleInferer(),
        prepare_batch=PrepareBatchImageTarget(),
        key_val_metric={"mae": MeanAbsoluteError(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    gen.eval()
    with torch.no_grad():
        expected = torch.cat([(gen(b["image"]) - b["target"]).abs().mean(dim=(1, 2, 3)) for b in data]).mean()
    assert evaluator.state.metrics["mae"] == pytest.approx(expected.item(), rel=1e-5)


def test_invalid_arguments():
    nets = build_nets()
    data = make_batches(1)
    bad_opt = torch.optim.Adam(itertools.chain(nets["gen_a2b"].parameters(), nets["gen_b2a"].parameters()))
    d_opt = torch.optim.Adam(nets["disc_a"].parameters())
    with pytest.raises(ValueError, match="trainable_parameters"):
        CycleGANTrainer("cpu", 1, data, gen_optimizer=bad_opt, disc_optimizer=d_opt, **nets)
    with pytest.raises(ValueError, match="lambda_cycle"):
        build_trainer(nets, data, lambda_cycle=-1.0)
    with pytest.raises(ValueError, match="pool_size"):
        build_trainer(nets, data, pool_size=-2)
    with pytest.raises(TypeError, match="disc_b"):
        CycleGANTrainer("cpu", 1, data, gen_optimizer=d_opt, disc_optimizer=d_opt, **dict(nets, disc_b="net"))
    trainer = build_trainer(nets, [{"image": torch.rand(1, 1, 32, 32)}])
    with pytest.raises(KeyError, match="target"):
        trainer.run()
    assert isinstance(CycleGANKeys.LOSS_G, str) and CycleGANKeys.LOSS_G == "loss_g"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_amp_adds_one_scaler_per_optimizer_to_state():
    # On a CPU-only machine the CUDA scalers and autocast disable themselves, so the numbers equal the fp32 step.
    data = make_batches(1)
    amp_trainer = build_trainer(build_nets(), data, amp=True, decollate=False)
    plain_trainer = build_trainer(build_nets(), data, decollate=False)
    assert amp_trainer.state.gen_scaler is not amp_trainer.state.disc_scaler
    amp_trainer.run()
    plain_trainer.run()
    if not torch.cuda.is_available():
        for key in LOSS_KEYS:
            torch.testing.assert_close(amp_trainer.state.output[key], plain_trainer.state.output[key], msg=key)
    sd = amp_trainer.state_dict()
    assert {"gen_scaler", "disc_scaler"} <= set(sd) and "gen_scaler" not in plain_trainer.state_dict()
    with pytest.raises(KeyError, match="amp"):
        amp_trainer.load_state_dict(plain_trainer.state_dict())


@pytest.mark.parametrize("paired_loss", ["l1", "ssim", "l1+ssim"])
def test_paired_term_is_added_to_the_generator_loss_and_gradient(paired_loss):
    from usfm_monai.metrics import compute_ssim

    batch = make_batches(1, seed=5)[0]
    a, b = batch["image"], batch["target"]
    lam, lr = 3.0, 0.05
    plain_nets, paired_nets = build_nets(), build_nets()
    ref_gen = copy.deepcopy(paired_nets["gen_a2b"]).train()
    plain = build_trainer(plain_nets, [batch], opt="sgd", lr=lr, decollate=False, pool_size=4)
    paired = build_trainer(paired_nets, [batch], opt="sgd", lr=lr, decollate=False, pool_size=4,
                           lambda_paired=lam, paired_loss=paired_loss)
    plain.run()
    paired.run()
    fake_b = ref_gen(a)
    # independent oracle: the SSIM metric of the package (scikit-image), per image, on the same 7x7 windows
    ssim = torch.tensor([compute_ssim(p[0].detach().double().numpy(), t[0].double().numpy()) for p, t in zip(fake_b, b)])
    expected = {"l1": l1(fake_b, b), "ssim": 1 - ssim.mean(), "l1+ssim": l1(fake_b, b) + 1 - ssim.mean()}[paired_loss]
    out_p, out_0 = paired.state.output, plain.state.output
    torch.testing.assert_close(out_p["loss_paired"].double(), lam * expected.detach().double(), atol=1e-5, rtol=1e-4)
    assert out_0["loss_paired"] == 0
    for key in LOSS_KEYS[:6]:  # the other terms are those of the same networks before the step
        torch.testing.assert_close(out_p[key], out_0[key], msg=key)
    torch.testing.assert_close(out_p["loss_g"], out_0["loss_g"] + out_p["loss_paired"])
    # the SGD step differs by exactly -lr * lam * d(paired)/dtheta for gen_a2b, and not at all for gen_b2a
    target = {"l1": lambda x: l1(x, b), "ssim": None, "l1+ssim": None}[paired_loss]
    if target is not None:
        params = list(ref_gen.trainable_parameters())
        grads = torch.autograd.grad(lam * target(ref_gen(a)), params)
        for new, old, grad in zip(paired_nets["gen_a2b"].trainable_parameters(),
                                  plain_nets["gen_a2b"].trainable_parameters(), grads):
            torch.testing.assert_close(new, old - lr * grad, atol=1e-5, rtol=1e-4)
    changed = [not torch.equal(p, q) for p, q in zip(paired_nets["gen_a2b"].trainable_parameters(),
                                                       plain_nets["gen_a2b"].trainable_parameters())]
    assert any(changed)
    for p, q in zip(paired_nets["gen_b2a"].parameters(), plain_nets["gen_b2a"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_paired_weight_zero_is_the_plain_cyclegan_step():
    batch = make_batches(1, seed=2)[0]
    nets0, nets1 = build_nets(), build_nets()
    plain = build_trainer(nets0, [batch], decollate=False)
    zero = build_trainer(nets1, [batch], decollate=False, lambda_paired=0.0, paired_loss="ssim")
    plain.run()
    zero.run()
    for key in LOSS_KEYS:
        torch.testing.assert_close(zero.state.output[key], plain.state.output[key], rtol=0, atol=0, msg=key)
    for name in nets0:
        for p, q in zip(nets0[name].parameters(), nets1[name].parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_paired_invalid_arguments():
    nets, data = build_nets(), make_batches(1)
    with pytest.raises(ValueError, match="lambda_paired"):
        build_trainer(nets, data, lambda_paired=-1.0)
    with pytest.raises(ValueError, match="paired_loss"):
        build_trainer(nets, data, lambda_paired=1.0, paired_loss="l2")
