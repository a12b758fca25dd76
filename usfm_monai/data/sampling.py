"""Organ-balanced sampling for USFM pre-training (Jiao et al., arXiv 2401.00153, §3.1, eq. 1).

Every image of organ ``k`` gets the sampling weight ``w_k = 1 / sqrt(N_k)`` (eq. 1), where ``N_k`` is the number of
images of that organ. Drawing with replacement under these weights gives organ ``k`` the share
``N_k w_k / sum_j N_j w_j = sqrt(N_k) / sum_j sqrt(N_j)``: minority organs are resampled more often, yet the
majority organs still contribute more images than the minorities. ``balanced=False`` is the USFM-woS ablation
(§4.4), where each organ's share is its natural ``N_k / sum_j N_j``.

The samplers are the stock ones: ``torch.utils.data.WeightedRandomSampler`` / ``RandomSampler`` on one process and
MONAI's ``DistributedWeightedRandomSampler`` / ``DistributedSampler`` under ``torch.distributed``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import (
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from usfm_monai.data.datalist import planned_items
from usfm_monai.utils import ensure_bool

__all__ = ["organ_balanced_weights", "expected_organ_shares", "get_organs", "create_sampler"]

logger = logging.getLogger(__name__)


def _check_organs(organs: Sequence[Hashable]) -> list[Hashable]:
    if isinstance(organs, (str, bytes)) or not isinstance(organs, Sequence):
        raise TypeError(f"organs must be a sequence of organ names, got {type(organs).__name__}.")
    if len(organs) == 0:
        raise ValueError("organs must contain at least one organ name, got an empty sequence.")
    return list(organs)


def organ_balanced_weights(organs: Sequence[str]) -> np.ndarray:
    """Per-image sampling weights ``1 / sqrt(N_organ)`` of eq. 1.

    Args:
        organs: the organ name of every image, length ``N`` (e.g. ``["Breast", "Breast", "Thyroid", ...]``).

    Returns:
        float64 array of shape ``(N,)``, values in ``(0, 1]``: image ``i`` gets ``1 / sqrt(N_{organs[i]})``. The
        weights are not normalized (samplers only need relative weights); the total weight of an organ is
        ``sqrt(N_organ)``.

    Raises:
        TypeError: when ``organs`` is not a sequence (a bare string is rejected).
        ValueError: when ``organs`` is empty.
    """
    organs = _check_organs(organs)
    counts = Counter(organs)
    return np.array([1.0 / math.sqrt(counts[organ]) for organ in organs], dtype=np.float64)


def expected_organ_shares(organs: Sequence[str], balanced: bool = True, log: bool = True) -> dict[str, float]:
    """Expected fraction of drawn samples per organ, and optionally log it as a table.

    Balanced (eq. 1): ``sqrt(N_k) / sum_j sqrt(N_j)``; not balanced (USFM-woS): ``N_k / sum_j N_j``.

    Args:
        organs: the organ name of every image, length ``N``.
        balanced: whether the organ-balanced weights of eq. 1 are used.
        log: log one ``INFO`` line per organ (count, natural share, expected share), largest first.

    Returns:
        ``{organ: share}`` ordered by decreasing image count; shares are in ``(0, 1]`` and sum to 1.

    Raises:
        TypeError: when ``organs`` is not a sequence.
        ValueError: when ``organs`` is empty.
    """
    counts = Counter(_check_organs(organs))
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    mass = {organ: math.sqrt(n) if balanced else float(n) for organ, n in ordered}
    total_mass = sum(mass.values())
    total = sum(counts.values())
    shares = {organ: mass[organ] / total_mass for organ, _ in ordered}
    if log:
        kind = "organ-balanced (eq. 1)" if balanced else "natural (not balanced)"
        logger.info("expected organ shares per epoch, %s sampling, %d images:", kind, total)
        for organ, n in ordered:
            logger.info("  %-16s %9d images  natural %7.3f%%  sampled %7.3f%%", organ, n, 100 * n / total,
                        100 * shares[organ])
    return shares


def get_organs(data: Any, organ_key: str = "organ") -> list[Hashable]:
    """Read the organ of every item of a datalist (or of a MONAI dataset's ``.data``) without loading images.

    Args:
        data: a sequence of dicts such as a decathlon datalist section, or a MONAI ``Dataset`` (its ``data``
            attribute is read, so no transform runs); a deferred synthetic datalist is read from its plan
            (:func:`~usfm_monai.data.datalist.planned_items`), so nothing is generated.
        organ_key: the key holding the organ name.

    Returns:
        the organ of every item, length ``len(data)``.

    Raises:
        TypeError: when ``data`` is not a sequence or an item is not a mapping.
        KeyError: naming the item index and ``organ_key`` when an item lacks the key.
    """
    items = planned_items(getattr(data, "data", data))
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise TypeError(f"data must be a sequence of dicts (a datalist) or a MONAI Dataset, got {type(data).__name__}.")
    organs = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(f"data item {index} must be a dict with key {organ_key!r}, got {type(item).__name__}.")
        if organ_key not in item:
            raise KeyError(
                f"data item {index} has no key {organ_key!r} needed for organ-balanced sampling "
                f"(its keys: {sorted(map(str, item))})."
            )
        organs.append(item[organ_key])
    return organs


def _use_distributed(distributed: bool | None, num_replicas: int | None, rank: int | None) -> bool:
    if distributed is None:
        return dist.is_available() and dist.is_initialized()
    if distributed and (num_replicas is None or rank is None) and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialized torch.distributed process group or explicit num_replicas and "
            f"rank, got num_replicas={num_replicas}, rank={rank} and no process group."
        )
    return bool(distributed)


def create_sampler(
    data: Any,
    organ_key: str = "organ",
    balanced: bool = True,
    num_samples: int | None = None,
    distributed: bool | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> Sampler:
    """Build the pre-training sampler: organ-balanced (eq. 1) or plain (USFM-woS), single- or multi-process.

    =========  ================  ===========================================================================
    balanced   distributed       sampler
    =========  ================  ===========================================================================
    True       no                ``WeightedRandomSampler(weights, num_samples, replacement=True, generator)``
    True       yes               ``monai.data.DistributedWeightedRandomSampler``: each rank draws with
                                 replacement, under the eq. 1 weights, from its own disjoint shard
    False      no                ``RandomSampler(generator)`` (``SequentialSampler`` if ``shuffle=False``)
    False      yes               ``monai.data.DistributedSampler(shuffle, seed)``
    =========  ================  ===========================================================================

    By default an epoch yields ``len(data)`` samples on one process and the shard length
    ``ceil(len(data) / num_replicas)`` on each rank. The weighted samplers draw from a ``torch.Generator`` seeded
    with ``seed`` (``seed + rank`` per rank), so sampling is reproducible; the shard split follows
    ``sampler.set_epoch`` as for any ``DistributedSampler`` (MONAI workflows call it every epoch).

    Args:
        data: a datalist (sequence of dicts) or a MONAI ``Dataset``; each item must hold ``organ_key`` when
            ``balanced=True``.
        organ_key: the key holding the organ name.
        balanced: use the organ-balanced weights of eq. 1; ``False`` is the USFM-woS ablation.
        num_samples: samples per epoch (per rank when distributed); ``None`` means the dataset (shard) length.
            Not supported for the unbalanced distributed sampler, whose length is always the shard length.
        distributed: ``None`` uses ``torch.distributed`` when a process group is initialized; ``True``/``False``
            forces the choice (``True`` without a process group needs ``num_replicas`` and ``rank``).
        shuffle: unbalanced: shuffle the indices; distributed: shuffle before sharding. Weighted sampling is
            random by nature, so ``balanced=True`` with ``shuffle=False`` on one process is rejected.
        seed: seed of the sampling generator and of the distributed shard shuffle.
        num_replicas: number of ranks (default: the process group's world size).
        rank: this process's rank (default: the process group's rank).

    Returns:
        a ``torch.utils.data.Sampler`` for ``DataLoader(sampler=...)`` (leave the loader's ``shuffle`` False).

    Raises:
        KeyError: when ``balanced=True`` and an item has no ``organ_key`` (the message names the item index).
        TypeError: when ``data`` is not a datalist or MONAI dataset.
        ValueError: for an empty dataset, a non-positive ``num_samples``, or an unsupported combination.
    """
    length = len(data)
    if length == 0:
        raise ValueError("data must contain at least one item, got an empty dataset.")
    bad_count = isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    if num_samples is not None and bad_count:
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}.")
    use_dist = _use_distributed(distributed, num_replicas, rank)

    if ensure_bool("balanced", balanced):
        weights = organ_balanced_weights(get_organs(data, organ_key))
        if use_dist:
            if rank is None:
                rank = dist.get_rank()
            generator = torch.Generator().manual_seed(seed + rank)
            return DistributedWeightedRandomSampler(
                dataset=data,
                weights=weights.tolist(),
                num_samples_per_rank=num_samples,
                generator=generator,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=shuffle,
                seed=seed,
            )
        if not shuffle:
            raise ValueError(
                "balanced=True draws indices at random; shuffle=False is only meaningful with balanced=False."
            )
        return WeightedRandomSampler(
            weights=torch.as_tensor(weights, dtype=torch.double),
            num_samples=length if num_samples is None else num_samples,
            replacement=True,
            generator=torch.Generator().manual_seed(seed),
        )

    if use_dist:
        if num_samples is not None:
            raise ValueError(
                f"num_samples={num_samples} is not supported with balanced=False and distributed sampling; "
                "the DistributedSampler always yields the shard length."
            )
        return DistributedSampler(dataset=data, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    if not shuffle:
        if num_samples is not None:
            raise ValueError(f"num_samples={num_samples} needs shuffle=True when balanced=False.")
        return SequentialSampler(data)
    return RandomSampler(data, num_samples=num_samples, generator=torch.Generator().manual_seed(seed))
