"""Tests for usfm_monai.data.sampling (eq. 1): shares, empirical frequencies, distributed shards, seeding."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
from monai.data import Dataset, DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import RandomSampler, SequentialSampler, WeightedRandomSampler

from usfm_monai.data.sampling import create_sampler, expected_organ_shares, get_organs, organ_balanced_weights

# Fig. 3 of the paper: images per organ in the 3M-US database (sum 2,187,915)
FIG3_COUNTS = {
    "Breast": 2_007_260,
    "Thyroid": 71_928,
    "Fetal Body": 20_387,
    "Placenta": 18_538,
    "Heart": 12_677,
    "Lung": 12_493,
    "Neck": 11_143,
    "Stomach": 10_474,
    "Abdomen": 8_987,
    "Fetal Head": 8_426,
    "Fetal Abdomen": 4_057,
    "Muscle": 1_545,
}
# 1/100 of the population, rounded: the organ ratios are kept to within 3 % (Muscle 15 vs 15.45)
SCALED_COUNTS = {organ: round(n / 100) for organ, n in FIG3_COUNTS.items()}


def _datalist(counts: dict[str, int]) -> list[dict]:
    return [{"image": f"{organ}_{i}.png", "organ": organ} for organ, n in counts.items() for i in range(n)]


def test_fig3_counts_sum_to_paper_total():
    assert sum(FIG3_COUNTS.values()) == 2_187_915


def test_weights_are_inverse_sqrt_counts():
    organs = ["a", "b", "a", "c", "a", "a", "b", "c", "c"]  # a: 4, b: 2, c: 3
    expected = np.array([1 / 2, 1 / math.sqrt(2), 1 / 2, 1 / math.sqrt(3), 1 / 2, 1 / 2,
                         1 / math.sqrt(2), 1 / math.sqrt(3), 1 / math.sqrt(3)])
    np.testing.assert_allclose(organ_balanced_weights(organs), expected, rtol=1e-12)


def test_expected_shares_fig3_balanced_and_natural(caplog):
    organs = [organ for organ, n in FIG3_COUNTS.items() for _ in range(n)]
    # independent: total organ weight = N * (1/sqrt(N)) = sqrt(N)
    root_sum = sum(math.sqrt(n) for n in FIG3_COUNTS.values())
    with caplog.at_level(logging.INFO, logger="usfm_monai.data.sampling"):
        shares = expected_organ_shares(organs, balanced=True)
    for organ, n in FIG3_COUNTS.items():
        assert shares[organ] == pytest.approx(math.sqrt(n) / root_sum, rel=1e-12)
    assert list(shares) == list(FIG3_COUNTS)  # largest organ first
    assert "Muscle" in caplog.text and "eq. 1" in caplog.text
    # spot values: sum sqrt(N) = 2685.77, Breast 1416.78 / 2685.77 = 52.75 %, Muscle 39.31 / 2685.77 = 1.464 %
    # (instead of 91.74 % and 0.071 % without balancing)
    assert shares["Breast"] == pytest.approx(0.5275, abs=1e-4)
    assert shares["Muscle"] == pytest.approx(0.01464, abs=1e-5)

    natural = expected_organ_shares(organs, balanced=False, log=False)
    assert natural["Breast"] == pytest.approx(0.9174, abs=1e-4)  # the 91.74 % quoted in §5.1
    assert natural["Muscle"] == pytest.approx(1_545 / 2_187_915, rel=1e-12)


@pytest.mark.parametrize("balanced", [True, False], ids=["balanced", "woS"])
def test_empirical_frequencies_match_expected_shares(balanced):
    data = _datalist(SCALED_COUNTS)
    num_draws = 200_000
    sampler = create_sampler(data, balanced=balanced, num_samples=num_draws, seed=123)
    assert isinstance(sampler, WeightedRandomSampler if balanced else RandomSampler)
    drawn = Counter(data[i]["organ"] for i in sampler)
    total = sum(SCALED_COUNTS.values())
    root_sum = sum(math.sqrt(n) for n in SCALED_COUNTS.values())
    for organ, n in SCALED_COUNTS.items():
        p = math.sqrt(n) / root_sum if balanced else n / total
        # balanced: multinomial counts, the std of a share is sqrt(p (1 - p) / draws) (<= 0.0011); 5 std keeps
        # the chance of a false failure over 12 organs below 1e-5 (and the draw is seeded anyway).
        # woS: RandomSampler without replacement gives 9 exact permutations of the 21,879 items plus 3,089
        # draws of a 10th, whose hypergeometric spread is far below the same bound.
        tolerance = 5 * math.sqrt(p * (1 - p) / num_draws)
        assert abs(drawn[organ] / num_draws - p) < tolerance, (organ, drawn[organ] / num_draws, p)


def test_default_length_and_seeded_determinism():
    data = _datalist({"a": 30, "b": 3})
    first = create_sampler(data, seed=7)
    assert len(first) == len(data)
    indices = list(first)
    assert len(indices) == len(data)
    assert indices == list(create_sampler(data, seed=7))
    assert indices != list(create_sampler(data, seed=8))
    # replay the draw independently: WeightedRandomSampler = multinomial(weights, n, replacement) on the generator
    weights = torch.tensor([1 / math.sqrt(30)] * 30 + [1 / math.sqrt(3)] * 3, dtype=torch.double)
    replay = torch.multinomial(weights, len(data), True, generator=torch.Generator().manual_seed(7)).tolist()
    assert indices == replay

    loader = torch.utils.data.DataLoader(Dataset(data), batch_size=4, sampler=create_sampler(Dataset(data)))
    assert sum(len(batch["organ"]) for batch in loader) == len(data)


def test_unbalanced_samplers():
    data = _datalist({"a": 5, "b": 2})
    assert sorted(create_sampler(data, balanced=False, seed=1)) == list(range(7))
    assert list(create_sampler(data, balanced=False, seed=1)) == list(create_sampler(data, balanced=False, seed=1))
    sequential = create_sampler(data, balanced=False, shuffle=False)
    assert isinstance(sequential, SequentialSampler) and list(sequential) == list(range(7))
    # the woS ablation needs no organ key at all
    assert len(create_sampler([{"image": "x"}] * 3, balanced=False)) == 3


def test_distributed_two_replicas_disjoint_shards():
    counts = {"a": 40, "b": 10, "c": 3}  # 53 items: shard length ceil(53 / 2) = 27
    data = _datalist(counts)
    samplers = [
        create_sampler(data, distributed=True, num_replicas=2, rank=r, seed=5) for r in range(2)
    ]
    # independent replay of torch's DistributedSampler sharding: randperm(seed + epoch), pad, stride by rank
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(5)).tolist()
    padded = perm + perm[: 54 - len(perm)]
    shards = [padded[r::2] for r in range(2)]
    assert set(perm[0::2]).isdisjoint(perm[1::2])

    draws = []
    for r, sampler in enumerate(samplers):
        assert isinstance(sampler, DistributedWeightedRandomSampler)
        assert len(sampler) == 27
        indices = list(sampler)
        assert len(indices) == 27
        assert set(indices) <= set(shards[r])
        weights = torch.tensor([1 / math.sqrt(counts[data[i]["organ"]]) for i in shards[r]], dtype=torch.double)
        positions = torch.multinomial(weights, 27, True, generator=torch.Generator().manual_seed(5 + r))
        assert indices == [shards[r][p] for p in positions.tolist()]
        draws.append(indices)
    assert draws[0] != draws[1]

    fixed = create_sampler(data, distributed=True, num_replicas=2, rank=1, num_samples=10)
    assert len(list(fixed)) == 10

    plain = create_sampler(data, balanced=False, distributed=True, num_replicas=2, rank=0, seed=5)
    assert isinstance(plain, DistributedSampler) and not isinstance(plain, DistributedWeightedRandomSampler)
    assert list(plain) == shards[0]


def test_distributed_none_without_process_group_is_single_process():
    assert isinstance(create_sampler(_datalist({"a": 4})), WeightedRandomSampler)


def test_get_organs_reads_monai_dataset_without_loading():
    data = _datalist({"a": 2, "b": 1})
    assert get_organs(Dataset(data, transform=lambda x: 1 / 0)) == ["a", "a", "b"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param(dict(data=[{"organ": "a"}, {"image": "x.png"}]), KeyError, "item 1.*'organ'", id="missing"),
        pytest.param(dict(data=[]), ValueError, "empty", id="empty"),
        pytest.param(dict(data=[{"organ": "a"}], num_samples=0), ValueError, "num_samples", id="num-samples"),
        pytest.param(dict(data=[{"organ": "a"}], shuffle=False), ValueError, "shuffle", id="balanced-no-shuffle"),
        pytest.param(dict(data=[{"organ": "a"}], distributed=True), ValueError, "num_replicas", id="no-group"),
        pytest.param(dict(data=["a.png"]), TypeError, "item 0", id="not-dict"),
    ],
)
def test_invalid(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_sampler(**kwargs)


def test_invalid_organs():
    with pytest.raises(TypeError, match="sequence"):
        organ_balanced_weights("Breast")
    with pytest.raises(ValueError, match="empty"):
        organ_balanced_weights([])
