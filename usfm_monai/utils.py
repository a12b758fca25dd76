"""Small helpers shared by the library and by bundle configs: the main-rank test and the strict bool check.

They live here, not in :mod:`usfm_monai.bundle` (command-line parsing and bundle-root finding), so that library
modules do not depend on the command-line module. :mod:`usfm_monai.bundle` re-exports both for existing configs.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_main_process", "ensure_bool"]


def is_main_process() -> bool:
    """``True`` unless ``torch.distributed`` is initialized and this is not rank 0.

    Configs use it as ``"_disabled_": "$not usfm_monai.utils.is_main_process()"`` on handlers that write files
    or logs, so every rank still runs the handlers that change training state (LR schedules, validation).
    """
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() > 0)


def ensure_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise a ``TypeError`` that explains the usual cause.

    ``python -m monai.bundle run ... --flag false`` passes the *string* ``"false"``, which is truthy: a switch
    such as ``use_frequency_mask`` would silently stay on. Library switches that configs set go through here.
    """
    if isinstance(value, bool):
        return value
    raise TypeError(
        f"{name} must be True or False, got {value!r} ({type(value).__name__}). On the monai.bundle command line "
        "write --" + name + " False (capitalized): a lower-case 'false' arrives as a string."
    )
