import pytest

from idap.engine.pruning import min_keep
from idap.engine.schedule import code_fraction, cumulative_target


def test_cumulative_targets_front_loaded_and_end_at_share():
    K, R, share, alpha = 10, 0.7, 0.85, 1.5
    ts = [cumulative_target(k, K, R, share, alpha) for k in range(K + 1)]
    assert ts[0] == 0
    assert ts[-1] == pytest.approx(share * R)
    incs = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert all(i > 0 for i in incs)
    assert all(a > b for a, b in zip(incs, incs[1:], strict=False))  # front-loaded
    # R_1 = share·R·(1 − 0.9^1.5), by hand
    assert ts[1] == pytest.approx(0.85 * 0.7 * (1 - 0.9**1.5))


def test_schedule_rejects_out_of_range_step():
    with pytest.raises(ValueError):
        cumulative_target(11, 10, 0.5, 1.0, 1.5)


def test_code_schedule_grows():
    assert code_fraction(0, 10, 0.05, 1.5) == pytest.approx(0.05)
    assert code_fraction(10, 10, 0.05, 1.5) == pytest.approx(0.05 * 2**1.5)


def test_floor():
    assert min_keep(16, 8, 0.1) == 8
    assert min_keep(256, 8, 0.1) == 26
    assert min_keep(4, 8, 0.1) == 4
