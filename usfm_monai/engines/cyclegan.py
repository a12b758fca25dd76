"""CycleGAN training workflow for USFM-assisted ultrasound enhancement (USFM paper §3.3 Fig. 5b, §4.1.2).

:class:`CycleGANTrainer` is a MONAI :class:`~monai.engines.Trainer` shaped like
``monai/engines/trainer.py: AdversarialTrainer``: one closure per phase (generators, then discriminators), the
:class:`~monai.utils.AdversarialIterationEvents` fired between them, enum output keys (:class:`CycleGANKeys`),
fakes detached before the discriminators see them, one ``GradScaler`` per optimizer when ``amp=True``, and the
networks, optimizers, scalers and image pools in ``engine.state_dict()``. The step is the one of Zhu et al. 2017
(``junyanz/pytorch-CycleGAN-and-pix2pix: models/cycle_gan_model.py``):

- generators: ``L_G = L_GAN(G_AB, D_B) + L_GAN(G_BA, D_A) + λ_cyc (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)
  + λ_cyc λ_id (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)`` with the least-squares GAN loss
  ``L_GAN(G, D) = mean((D(G(x)) - 1)^2)``;
- optional paired term (not in CycleGAN, for users whose low/high images are pairs): ``+ λ_paired
  L_pair(G_AB(a), b)`` with ``L_pair`` an L1, an SSIM loss ``1 - SSIM`` or their sum (``paired_loss``);
  ``lambda_paired = 0`` (the default) leaves the CycleGAN step unchanged;
- discriminators: ``L_D = L_D_A + L_D_B``, ``L_D_X = 0.5 (mean((D_X(real_x) - 1)^2) + mean(D_X(pool_x(fake_x))^2))``
  where ``pool_x`` is an :class:`~usfm_monai.networks.cyclegan.ImagePool`.

Domain A is the low-quality image (batch key ``image``), domain B the high-quality one (batch key ``target``).
Without the paired term the losses only use the cycle, so the pairing is not needed for training; it is kept for
validation metrics.
For validation, the low-to-high generator is a plain ``forward(x) -> y`` network: use it as the ``network`` of a
:class:`~monai.engines.SupervisedEvaluator` with ``SimpleInferer`` and :class:`PrepareBatchImageTarget`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import EventEnum
from ignite.metrics import Metric
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_metric_cmp_fn
from monai.utils import AdversarialIterationEvents
from monai.utils.enums import CommonKeys as Keys
from monai.utils.enums import StrEnum
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from usfm_monai.networks.cyclegan import FrozenUSFMBranch, ImagePool
from usfm_monai.networks.weights import unwrap_model

__all__ = ["CycleGANKeys", "PrepareBatchImageTarget", "CycleGANTrainer", "cyclegan_lr_lambda"]


class CycleGANKeys(StrEnum):
    """Keys of the :class:`CycleGANTrainer` iteration output (besides ``image``, ``label``, ``pred``, ``loss``).

    Images are detached ``(B, C, H, W)`` tensors in ``[0, 1]``; losses are detached scalar tensors (python floats
    after decollation). ``A`` is the low-quality domain, ``B`` the high-quality one.
    """

    FAKE_A = "fake_a"  # gen_b2a(real_b)
    FAKE_B = "fake_b"  # gen_a2b(real_a), also under "pred"
    REC_A = "rec_a"  # gen_b2a(gen_a2b(real_a))
    REC_B = "rec_b"  # gen_a2b(gen_b2a(real_b))
    LOSS_G = "loss_g"  # total generator loss, also under "loss"
    LOSS_GAN_A2B = "loss_gan_a2b"  # LSGAN loss of gen_a2b against disc_b
    LOSS_GAN_B2A = "loss_gan_b2a"  # LSGAN loss of gen_b2a against disc_a
    LOSS_CYCLE_A = "loss_cycle_a"  # λ_cyc |rec_a - real_a|_1
    LOSS_CYCLE_B = "loss_cycle_b"  # λ_cyc |rec_b - real_b|_1
    LOSS_IDENTITY_A = "loss_identity_a"  # λ_cyc λ_id |gen_b2a(real_a) - real_a|_1
    LOSS_IDENTITY_B = "loss_identity_b"  # λ_cyc λ_id |gen_a2b(real_b) - real_b|_1
    LOSS_PAIRED = "loss_paired"  # λ_paired L_pair(gen_a2b(real_a), real_b); 0 when lambda_paired is 0
    LOSS_D = "loss_d"  # loss_d_a + loss_d_b
    LOSS_D_A = "loss_d_a"
    LOSS_D_B = "loss_d_b"


class PrepareBatchImageTarget(PrepareBatch):
    """Return ``(batch[image_key], batch[target_key])`` moved to the device.

    MONAI's default ``prepare_batch`` reads ``image`` and ``label``; enhancement datalists pair ``image`` (low
    quality) with ``target`` (high quality). Use it for :class:`CycleGANTrainer` (the default there) and for the
    validation :class:`~monai.engines.SupervisedEvaluator`, where ``target`` then acts as the label.

    Args:
        image_key: key of the domain-A (low-quality) images.
        target_key: key of the domain-B (high-quality) images.
    """

    def __init__(self, image_key: str = "image", target_key: str = "target") -> None:
        self.image_key = image_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args follow the ignite ``prepare_batch`` API; ``kwargs`` go to ``Tensor.to``.

        Raises:
            TypeError: when ``batchdata`` is not a dict.
            KeyError: when ``image_key`` or ``target_key`` is missing.
        """
        if not isinstance(batchdata, dict):
            raise TypeError(f"PrepareBatchImageTarget expects a dict batch, got {type(batchdata).__name__}.")
        for key in (self.image_key, self.target_key):
            if key not in batchdata:
                raise KeyError(f"batch is missing key {key!r} (found {sorted(batchdata)}).")
        return (
            batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs),
            batchdata[self.target_key].to(device=device, non_blocking=non_blocking, **kwargs),
        )


def cyclegan_lr_lambda(n_epochs_constant: int, n_epochs_decay: int) -> Callable[[int], float]:
    """CycleGAN learning-rate factor for :class:`torch.optim.lr_scheduler.LambdaLR`, stepped once per epoch.

    The factor is 1 for the first ``n_epochs_constant`` epochs and then falls linearly, exactly as the reference
    ``lambda_rule`` (with ``epoch_count=1``): ``factor(e) = 1 - max(0, e + 1 - n_epochs_constant) /
    (n_epochs_decay + 1)`` for the 0-based epoch ``e``, so the last of the ``n_epochs_constant + n_epochs_decay``
    epochs runs at ``1 / (n_epochs_decay + 1)`` of the base rate and the rate would reach 0 one epoch later.
    Use it with ``LrScheduleHandler(lr_scheduler, epoch_level=True)``.

    Args:
        n_epochs_constant: epochs at the base learning rate (100 in CycleGAN).
        n_epochs_decay: epochs of linear decay (100 in CycleGAN).

    Returns:
        a function ``epoch -> factor`` in ``[0, 1]``.

    Raises:
        ValueError: when either argument is not a non-negative int.
    """
    for name, value in (("n_epochs_constant", n_epochs_constant), ("n_epochs_decay", n_epochs_decay)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")

    def lr_lambda(epoch: int) -> float:
        return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs_constant) / float(n_epochs_decay + 1))

    return lr_lambda


PAIRED_LOSSES = ("l1", "ssim", "l1+ssim")


def _ssim_loss(pred: torch.Tensor, target: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """``1 - SSIM`` with a uniform ``win_size`` window, data range 1, K1 = 0.01, K2 = 0.03 over the valid windows.

    The window and constants of :func:`usfm_monai.metrics.compute_ssim` (scikit-image), differentiable, on
    ``(B, C, H, W)`` tensors; the mean is over images, channels and windows.
    """
    c1, c2 = 0.01**2, 0.03**2
    n = win_size * win_size

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    mu_p, mu_t = pool(pred), pool(target)
    # sample (co)variances, as scikit-image's use_sample_covariance=True
    cov = n / (n - 1)
    var_p = cov * (pool(pred * pred) - mu_p * mu_p)
    var_t = cov * (pool(target * target) - mu_t * mu_t)
    cov_pt = cov * (pool(pred * target) - mu_p * mu_t)
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov_pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1.0 - ssim.mean()


def _paired_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred, target = pred.float(), target.float()
    loss = torch.zeros((), device=pred.device)
    if "l1" in kind.split("+"):
        loss = loss + F.l1_loss(pred, target)
    if "ssim" in kind.split("+"):
        loss = loss + _ssim_loss(pred, target)
    return loss


def _set_requires_grad(networks: Sequence[nn.Module], flag: bool) -> None:
    # Only the discriminators are toggled, and they have no frozen parts, so no state needs remembering.
    for net in networks:
        for param in net.parameters():
            param.requires_grad_(flag)


def _logits(output: Any) -> torch.Tensor:
    # MONAI's PatchDiscriminator returns all intermediate maps; the last one is the logits map.
    return output[-1] if isinstance(output, (list, tuple)) else output


def _lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.mse_loss(logits.float(), target.float())


class CycleGANTrainer(Trainer):
    """CycleGAN training workflow: two generators, two discriminators, LSGAN + cycle + identity losses.

    USFM paper §4.1.2: CycleGAN (optionally with the frozen USFM branch in ``gen_a2b``) translates low-quality
    (domain A, batch key ``image``) into high-quality (domain B, batch key ``target``) ultrasound. Each iteration
    (see the module docstring for the losses):

    1. generators: ``fake_b = gen_a2b(a)``, ``rec_a = gen_b2a(fake_b)``, ``fake_a = gen_b2a(b)``,
       ``rec_b = gen_a2b(fake_a)``, identity maps when ``lambda_identity > 0``; the discriminators' parameters
       are set to ``requires_grad=False`` for this phase; one ``gen_optimizer`` step on ``loss_g``;
    2. discriminators: ``disc_b`` sees ``target`` and ``pool_b(fake_b.detach())``, ``disc_a`` sees ``image`` and
       ``pool_a(fake_a.detach())``; one ``disc_optimizer`` step on ``loss_d = loss_d_a + loss_d_b``.

    ``disc_a`` judges domain-A images, ``disc_b`` domain-B images. ``AdversarialIterationEvents`` are fired
    between the phases and ``IterationEvents.MODEL_COMPLETED`` at the end (so ``decollate``/``postprocessing``
    run as in :class:`~monai.engines.SupervisedTrainer`). The output holds ``image`` (real A), ``label`` (real
    B), ``pred`` (``fake_b``), ``loss`` (``loss_g``) and every :class:`CycleGANKeys` entry.

    ``engine.state_dict()`` holds the epoch/iteration counters and the ``state_dict()`` of ``gen_a2b``,
    ``gen_b2a``, ``disc_a``, ``disc_b``, ``gen_optimizer``, ``disc_optimizer``, ``pool_a``, ``pool_b`` and, with
    ``amp=True``, ``gen_scaler`` and ``disc_scaler`` -- tensors and plain containers only, so a checkpoint loads
    with ``weights_only=True`` (MONAI's ``AdversarialTrainer`` stores the live objects instead).
    ``load_state_dict`` loads them into the live objects.

    Recommended settings (CycleGAN): ``Adam(lr=2e-4, betas=(0.5, 0.999))`` for both optimizers over
    ``gen_a2b.trainable_parameters()`` + ``gen_b2a.trainable_parameters()`` and the two discriminators'
    parameters, and ``LambdaLR(opt, cyclegan_lr_lambda(n_constant, n_decay))`` per optimizer.

    Args:
        device: device to run on.
        max_epochs: number of epochs.
        train_data_loader: loader of dict batches with ``image`` and ``target`` ``(B, C, H, W)`` in ``[0, 1]``.
        gen_a2b: low-to-high generator (may hold a frozen :class:`FrozenUSFMBranch`).
        gen_b2a: high-to-low generator.
        disc_a: discriminator for domain A; returns a logits map, or a list whose last item is one.
        disc_b: discriminator for domain B.
        gen_optimizer: optimizer over both generators' trainable parameters.
        disc_optimizer: optimizer over both discriminators' parameters.
        lambda_cycle: weight λ_cyc of each cycle-consistency L1 term (10 in CycleGAN).
        lambda_identity: identity weight relative to λ_cyc (0.5 in CycleGAN, i.e. 5 in absolute terms); 0 skips
            the identity forward passes.
        pool_size: size of each :class:`ImagePool` (50 in CycleGAN; 0 disables the pools).
        pool_seed: seed of ``pool_a``; ``pool_b`` uses ``pool_seed + 1``.
        lambda_paired: weight of the paired term ``L_pair(gen_a2b(image), target)`` added to the generator loss;
            0 (the default, CycleGAN) skips it. Only meaningful when ``image`` and ``target`` are pairs.
        paired_loss: ``"l1"``, ``"ssim"`` (``1 - SSIM``, 7x7 uniform window as the SSIM metric) or
            ``"l1+ssim"``.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: ``(batch, device, non_blocking, **kwargs) -> (image, target)``; default
            :class:`PrepareBatchImageTarget`.
        iteration_update: replaces :meth:`_iteration` when given.
        postprocessing: transform applied to the output at ``MODEL_COMPLETED``.
        key_train_metric: ``{name: ignite Metric}`` computed each iteration; the first is the key metric.
        additional_metrics: more ignite metrics.
        metric_cmp_fn: ``(current, best) -> bool``.
        train_handlers: handlers with an ``attach(engine)`` method.
        amp: CUDA automatic mixed precision with one ``GradScaler`` per optimizer (a disabled, pass-through one
            when ``amp_kwargs["dtype"]`` is ``torch.bfloat16``: only float16 needs loss scaling).
        event_names: extra events to register.
        event_to_attr: event-to-state-attribute map for ``register_events``.
        decollate: decollate the batch and output after each iteration.
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        to_kwargs: extra ``Tensor.to`` kwargs for ``prepare_batch``.
        amp_kwargs: kwargs of ``torch.autocast("cuda")``, e.g. ``usfm_monai.engines.autocast_kwargs("bfloat16")``.

    Raises:
        TypeError: when a network is not an ``nn.Module`` or an optimizer not a ``torch.optim.Optimizer``.
        ValueError: for a negative ``lambda_cycle``/``lambda_identity``/``lambda_paired``, an unknown
            ``paired_loss``, an invalid ``pool_size``, or a ``gen_optimizer`` that holds frozen USFM-branch
            parameters.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        gen_a2b: nn.Module,
        gen_b2a: nn.Module,
        disc_a: nn.Module,
        disc_b: nn.Module,
        gen_optimizer: Optimizer,
        disc_optimizer: Optimizer,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.5,
        pool_size: int = 50,
        pool_seed: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
        lambda_paired: float = 0.0,
        paired_loss: str = "l1",
    ) -> None:
        for name, net in (("gen_a2b", gen_a2b), ("gen_b2a", gen_b2a), ("disc_a", disc_a), ("disc_b", disc_b)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(net).__name__}.")
        for name, opt in (("gen_optimizer", gen_optimizer), ("disc_optimizer", disc_optimizer)):
            if not isinstance(opt, Optimizer):
                raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(opt).__name__}.")
        for name, value in (
            ("lambda_cycle", lambda_cycle), ("lambda_identity", lambda_identity), ("lambda_paired", lambda_paired)
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        if paired_loss not in PAIRED_LOSSES:
            raise ValueError(f"paired_loss must be one of {PAIRED_LOSSES}, got {paired_loss!r}.")
        frozen = {
            id(p) for g in (gen_a2b, gen_b2a) for m in g.modules() if isinstance(m, FrozenUSFMBranch)
            for p in m.parameters()
        }
        if any(id(p) in frozen for group in gen_optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "gen_optimizer holds parameters of a frozen USFM branch; build it from "
                "gen_a2b.trainable_parameters() and gen_b2a.trainable_parameters() instead of .parameters()."
            )

        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=PrepareBatchImageTarget() if prepare_batch is None else prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.register_events(*AdversarialIterationEvents)

        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.lambda_paired = float(lambda_paired)
        self.paired_loss = paired_loss
        self.optim_set_to_none = optim_set_to_none

        self.state.gen_a2b = gen_a2b
        self.state.gen_b2a = gen_b2a
        self.state.disc_a = disc_a
        self.state.disc_b = disc_b
        self.state.gen_optimizer = gen_optimizer
        self.state.disc_optimizer = disc_optimizer
        self.state.pool_a = ImagePool(pool_size, seed=pool_seed)
        self.state.pool_b = ImagePool(pool_size, seed=pool_seed + 1)
        # loss scaling for float16 only (autocast's default dtype); bfloat16 keeps float32's range
        scale = self.amp_kwargs.get("dtype", torch.float16) == torch.float16
        self.state.gen_scaler = torch.amp.GradScaler("cuda", enabled=scale) if self.amp else None
        self.state.disc_scaler = torch.amp.GradScaler("cuda", enabled=scale) if self.amp else None
        self._complete_state_dict_user_keys()

    def _complete_state_dict_user_keys(self) -> None:
        """Add the stateful objects to ``state_dict_user_keys`` (scalers only when AMP is on)."""
        keys = ["gen_a2b", "gen_b2a", "disc_a", "disc_b", "gen_optimizer", "disc_optimizer", "pool_a", "pool_b"]
        if self.amp:
            keys += ["gen_scaler", "disc_scaler"]
        self._stateful_keys = tuple(keys)
        self._state_dict_user_keys.extend(keys)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Engine counters plus each stateful object's ``state_dict()`` (tensors and plain containers only)."""
        state = super().state_dict()
        for key in self._stateful_keys:
            state[key] = unwrap_model(state[key]).state_dict()  # DDP/compile-unwrapped: resumable anywhere
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load the counters and every stateful object written by :meth:`state_dict`.

        Raises:
            KeyError: when a stateful key is missing from ``state_dict``.
        """
        missing = [k for k in self._stateful_keys if k not in state_dict]
        if missing:
            raise KeyError(
                f"CycleGANTrainer state_dict is missing {missing}; found {sorted(map(str, state_dict))}. "
                "Was it saved by a trainer with the same amp setting?"
            )
        merged = dict(state_dict)
        for key in self._stateful_keys:
            live = getattr(self.state, key)
            unwrap_model(live).load_state_dict(state_dict[key])
            merged[key] = live  # the base class assigns these attributes; keep the live objects there
        super().load_state_dict(merged)

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One CycleGAN step (generators, then discriminators) on a batch of unpaired-in-spirit images.

        Args:
            engine: this trainer.
            batchdata: dict batch with ``image`` (domain A) and ``target`` (domain B), ``(B, C, H, W)`` in
                ``[0, 1]``.

        Returns:
            the output dict described in the class docstring.

        Raises:
            ValueError: when ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        real_a, real_b = batch[0], batch[1]
        s = engine.state
        out: dict[str, Any] = {Keys.IMAGE: real_a, Keys.LABEL: real_b}
        engine.state.output = out
        lam_cyc, lam_idt = engine.lambda_cycle, engine.lambda_cycle * engine.lambda_identity
        fakes: dict[str, torch.Tensor] = {}

        def _compute_generator_loss() -> torch.Tensor:
            fake_b = s.gen_a2b(real_a)
            rec_a = s.gen_b2a(fake_b)
            fake_a = s.gen_b2a(real_b)
            rec_b = s.gen_a2b(fake_a)
            fakes["a"], fakes["b"] = fake_a, fake_b
            out.update(
                {
                    CycleGANKeys.FAKE_A: fake_a.detach(),
                    CycleGANKeys.FAKE_B: fake_b.detach(),
                    Keys.PRED: fake_b.detach(),
                    CycleGANKeys.REC_A: rec_a.detach(),
                    CycleGANKeys.REC_B: rec_b.detach(),
                }
            )
            engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)

            gan_a2b = _lsgan(_logits(s.disc_b(fake_b)), real=True)
            gan_b2a = _lsgan(_logits(s.disc_a(fake_a)), real=True)
            engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)

            cycle_a = lam_cyc * F.l1_loss(rec_a.float(), real_a.float())
            cycle_b = lam_cyc * F.l1_loss(rec_b.float(), real_b.float())
            if lam_idt > 0:
                idt_a = lam_idt * F.l1_loss(s.gen_b2a(real_a).float(), real_a.float())
                idt_b = lam_idt * F.l1_loss(s.gen_a2b(real_b).float(), real_b.float())
            else:
                idt_a = idt_b = torch.zeros((), device=real_a.device)
            if engine.lambda_paired > 0:
                paired = engine.lambda_paired * _paired_loss(engine.paired_loss, fake_b, real_b)
            else:
                paired = torch.zeros((), device=real_a.device)
            engine.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)

            loss_g = gan_a2b + gan_b2a + cycle_a + cycle_b + idt_a + idt_b
            if engine.lambda_paired > 0:
                loss_g = loss_g + paired
            out.update(
                {
                    CycleGANKeys.LOSS_GAN_A2B: gan_a2b.detach(),
                    CycleGANKeys.LOSS_GAN_B2A: gan_b2a.detach(),
                    CycleGANKeys.LOSS_CYCLE_A: cycle_a.detach(),
                    CycleGANKeys.LOSS_CYCLE_B: cycle_b.detach(),
                    CycleGANKeys.LOSS_IDENTITY_A: idt_a.detach(),
                    CycleGANKeys.LOSS_IDENTITY_B: idt_b.detach(),
                    CycleGANKeys.LOSS_PAIRED: paired.detach(),
                    CycleGANKeys.LOSS_G: loss_g.detach(),
                    Keys.LOSS: loss_g.detach(),
                }
            )
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            return loss_g

        def _compute_discriminator_loss() -> torch.Tensor:
            # The pools receive detached fakes, so no gradient reaches the generators from this phase.
            pooled_a = s.pool_a.query(fakes["a"].detach())
            pooled_b = s.pool_b.query(fakes["b"].detach())
            real_logits_a, real_logits_b = _logits(s.disc_a(real_a)), _logits(s.disc_b(real_b))
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
            fake_logits_a, fake_logits_b = _logits(s.disc_a(pooled_a)), _logits(s.disc_b(pooled_b))
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
            loss_d_a = 0.5 * (_lsgan(real_logits_a, real=True) + _lsgan(fake_logits_a, real=False))
            loss_d_b = 0.5 * (_lsgan(real_logits_b, real=True) + _lsgan(fake_logits_b, real=False))
            loss_d = loss_d_a + loss_d_b
            out.update(
                {
                    CycleGANKeys.LOSS_D_A: loss_d_a.detach(),
                    CycleGANKeys.LOSS_D_B: loss_d_b.detach(),
                    CycleGANKeys.LOSS_D: loss_d.detach(),
                }
            )
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            return loss_d

        for net in (s.gen_a2b, s.gen_b2a, s.disc_a, s.disc_b):
            net.train()  # an evaluator may have left gen_a2b in eval mode

        # Train the generators with the discriminators frozen, so no gradient is computed for them.
        _set_requires_grad((s.disc_a, s.disc_b), False)
        try:
            s.gen_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            if engine.amp and s.gen_scaler is not None:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    loss_g = _compute_generator_loss()
                s.gen_scaler.scale(loss_g).backward()
                engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
                s.gen_scaler.step(s.gen_optimizer)
                s.gen_scaler.update()
            else:
                loss_g = _compute_generator_loss()
                loss_g.backward()
                engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
                s.gen_optimizer.step()
        finally:
            _set_requires_grad((s.disc_a, s.disc_b), True)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)

        # Train the discriminators.
        s.disc_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and s.disc_scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                loss_d = _compute_discriminator_loss()
            s.disc_scaler.scale(loss_d).backward()
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
            s.disc_scaler.step(s.disc_optimizer)
            s.disc_scaler.update()
        else:
            loss_d = _compute_discriminator_loss()
            loss_d.backward()
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
            s.disc_optimizer.step()
        engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_MODEL_COMPLETED)

        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
