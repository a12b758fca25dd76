"""Mixed precision and compilation settings shared by the bundles: ``amp_dtype``, the GradScaler rule, ``compile``.

* ``amp_dtype`` is ``"bfloat16"`` or ``"float16"``. :func:`default_amp_dtype` picks ``"bfloat16"`` on a CUDA device
  that supports it (Ampere and newer: ``torch.cuda.is_bf16_supported()``) and ``"float16"`` otherwise.
* bfloat16 has float32's exponent range, so its gradients do not underflow and need no loss scaling; a
  ``GradScaler`` is used for float16 only (:func:`needs_grad_scaler`).
* MONAI's ``SupervisedTrainer`` takes the dtype through ``amp_kwargs={"dtype": ...}`` (passed to
  ``torch.autocast("cuda", ...)``) but builds a ``GradScaler`` whenever ``amp=True``
  (``monai.engines.trainer.Trainer.run``). :class:`AmpSupervisedTrainer` adds ``amp_dtype`` and swaps that scaler
  for a disabled one (a pass-through: ``scale``/``unscale`` do nothing, ``step`` is ``optimizer.step()``) when
  the dtype is bfloat16. Its ``compile`` switch is MONAI's (``torch.compile`` on the network), checked as a bool.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from usfm_monai.utils import ensure_bool

__all__ = [
    "AMP_DTYPES",
    "default_amp_dtype",
    "check_amp_dtype",
    "autocast_kwargs",
    "needs_grad_scaler",
    "AmpSupervisedTrainer",
]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def default_amp_dtype() -> str:
    """``"bfloat16"`` when CUDA is available and the device supports it, else ``"float16"``."""
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"


def check_amp_dtype(amp_dtype: Any, name: str = "amp_dtype") -> torch.dtype:
    """Return the ``torch.dtype`` of an ``amp_dtype`` setting.

    Args:
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (or the ``torch.dtype`` itself).
        name: the setting's name, for the error message.

    Raises:
        ValueError: any other value.
    """
    if isinstance(amp_dtype, torch.dtype) and amp_dtype in AMP_DTYPES.values():
        return amp_dtype
    if isinstance(amp_dtype, str) and amp_dtype in AMP_DTYPES:
        return AMP_DTYPES[amp_dtype]
    raise ValueError(f"{name} must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}.")


def autocast_kwargs(amp_dtype: Any) -> dict[str, torch.dtype]:
    """``{"dtype": ...}`` for MONAI's ``amp_kwargs`` (``torch.autocast`` arguments); validates ``amp_dtype``."""
    return {"dtype": check_amp_dtype(amp_dtype)}


def needs_grad_scaler(amp_dtype: Any) -> bool:
    """True for float16 only: bfloat16 gradients keep float32's range and are not scaled."""
    return check_amp_dtype(amp_dtype) == torch.float16


class AmpSupervisedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` with an ``amp_dtype`` setting and a GradScaler for float16 only.

    Args:
        amp_dtype: autocast dtype when ``amp=True``, ``"bfloat16"`` or ``"float16"``; it becomes
            ``amp_kwargs["dtype"]``.
        compile: ``torch.compile`` the network (MONAI's switch), a bool.
        args, kwargs: as ``monai.engines.SupervisedTrainer`` (``amp``, ``amp_kwargs``, ``compile_kwargs``, ...).

    Raises:
        ValueError: an unknown ``amp_dtype``, or an ``amp_kwargs["dtype"]`` that contradicts it.
        TypeError: ``amp`` or ``compile`` is not a bool (e.g. ``--compile false`` from the command line, a string).
    """

    def __init__(self, *args: Any, amp_dtype: Any = "bfloat16", compile: bool = False, **kwargs: Any) -> None:
        dtype = check_amp_dtype(amp_dtype)
        amp_kwargs = dict(kwargs.pop("amp_kwargs", None) or {})
        if amp_kwargs.get("dtype", dtype) != dtype:
            raise ValueError(f"amp_kwargs['dtype']={amp_kwargs['dtype']} contradicts amp_dtype={amp_dtype!r}.")
        amp_kwargs["dtype"] = dtype
        kwargs["amp"] = ensure_bool("amp", kwargs.get("amp", False))
        super().__init__(*args, amp_kwargs=amp_kwargs, compile=ensure_bool("compile", compile), **kwargs)
        self.amp_dtype = dtype
        # Trainer.run() has just built a GradScaler when amp is on; replace it before the first iteration
        self.add_event_handler(Events.STARTED, self._set_scaler)

    def _set_scaler(self, engine: AmpSupervisedTrainer) -> None:
        if self.amp:
            self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.amp_dtype))
