"""A progress bar that drops into a MONAI ``train#handlers`` list, and an event filter for periodic logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as _IgniteProgressBar

from usfm_monai.utils import is_main_process

__all__ = ["ProgressBar", "every_n_iterations"]


class ProgressBar:
    """tqdm progress bar with the running loss, shaped as a MONAI handler.

    MONAI engines call ``handler.attach(engine)`` with the engine only, so a bare ignite ``ProgressBar`` shows no
    loss; this wrapper forwards ``output_transform``. On ranks other than 0 it attaches nothing.

    Args:
        output_transform: maps ``engine.state.output`` to a number or ``{name: number}`` shown in the bar,
            e.g. ``monai.handlers.from_engine(["loss"], first=True)``.
        desc: bar description; default ``"Epoch"`` (``"Iteration"`` for a one-epoch engine), as ignite shows.
        persist: keep the bar on screen after each epoch.
        event_name: when the bar is updated.
    """

    def __init__(
        self,
        output_transform: Callable[[Any], Any] | None = None,
        desc: str | None = None,
        persist: bool = False,
        event_name: Any = Events.ITERATION_COMPLETED,
    ) -> None:
        self.output_transform = output_transform
        self.desc = desc
        self.persist = persist
        self.event_name = event_name

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        # ignite drops the first "_"-part of every value name, taking it for the tag that `desc` shows instead;
        # without a desc the bar would read "=0.25" instead of "loss=0.25", so give it ignite's own default label
        desc = self.desc or ("Epoch" if (engine.state.max_epochs or 1) > 1 else "Iteration")
        bar = _IgniteProgressBar(persist=self.persist, desc=desc)
        output_transform = self.output_transform
        if output_transform is not None:
            raw = output_transform

            def output_transform(output: Any) -> Any:
                value = raw(output)
                return {"loss": value} if not isinstance(value, dict) else value

        bar.attach(engine, output_transform=output_transform, event_name=self.event_name)


def every_n_iterations(n: int) -> Callable[[Engine, int], bool]:
    """Event filter for MONAI ``StatsHandler(iteration_log=...)``: log every ``n`` iterations and the first one."""
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}.")
    return lambda engine, iteration: iteration == 1 or iteration % n == 0
