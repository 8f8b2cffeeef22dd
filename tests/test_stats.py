"""Paired statistics on constructed inputs with answers computed by hand."""

import math

import numpy as np
import pytest

from idap.data.stream import TrainStream
from idap.engine.stats import (
    discordant,
    mcnemar_exact,
    pack_bits,
    paired_bootstrap_bounds,
    paired_interval,
    unpack_bits,
)


def test_paired_interval_against_a_hand_computation():
    # diffs 1, 2, 3: mean 2, sample sd 1, t(0.975, 2) = 4.302653 -> half width 2.484138
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert high == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert math.isnan(paired_interval([0.5])[1])  # one seed: no interval


def test_mcnemar_exact_against_known_tables():
    # b = 1, c = 9: p = 2 * P(X <= 1 | n = 10, 1/2) = 2 * 11 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # b = 0, c = 6: p = 2 / 64
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 0], bool)
    assert discordant(a, b) == (2, 1)


def test_paired_bootstrap_bounds():
    same = np.ones(500, bool)
    assert paired_bootstrap_bounds(same, same) == (0.0, 0.0)
    assert paired_bootstrap_bounds(same, ~same) == (100.0, 100.0)
    # 60 images lost, 40 gained of 1000: drop 2 pp, paired SE sqrt(0.1 - 0.0004)/sqrt(1000)
    before = np.zeros(1000, bool)
    after = np.zeros(1000, bool)
    before[:60] = True
    after[60:100] = True
    low, high = paired_bootstrap_bounds(before, after)
    se = 100 * math.sqrt((0.1 - 0.02**2) / 1000)
    assert low == pytest.approx(2 - 1.645 * se, abs=0.25)
    assert high == pytest.approx(2 + 1.645 * se, abs=0.25)
    assert paired_bootstrap_bounds(before, after) == (low, high)  # seeded


def test_correctness_bits_round_trip():
    x = np.random.default_rng(0).random(1001) > 0.3
    assert np.array_equal(unpack_bits(pack_bits(x), x.size), x)


def test_stream_continues_across_processes_and_epochs():
    data = list(range(103))
    s = TrainStream(data, 10, seed=3)
    assert s.per_epoch == 10
    first = s.index_batches(0, 25)
    epoch0 = sorted(i for b in first[:10] for i in b)
    assert len(set(epoch0)) == 100  # one epoch: no image twice
    later = TrainStream(data, 10, seed=3, position=12)
    assert later.index_batches(12, 13) == first[12:]  # a new process continues exactly
    assert first[10:20] != first[:10]  # a new epoch is a new permutation
    assert TrainStream(data, 10, seed=4).index_batches(0, 1) != first[:1]
