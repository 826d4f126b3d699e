"""bench.side_by_side's interval of a percentile ratio (a bootstrap over rounds)."""

from __future__ import annotations

import random

from bench.side_by_side import ratio_interval


def _batches(rng: random.Random, rounds: int, scale: float) -> list[list[float]]:
    return [[scale * rng.expovariate(1.0) for _ in range(50)] for _ in range(rounds)]


def test_the_interval_holds_the_true_ratio_and_not_a_wrong_one() -> None:
    rng = random.Random(3)
    small, large = _batches(rng, 24, 1.0), _batches(rng, 24, 1.4)
    low, high = ratio_interval(small, large, 99, resamples=400)
    assert low < 1.4 < high
    assert high < 2.0 and low > 1.0  # 1,200 samples a side tell 1.4 from 1 and from 2


def test_rounds_are_resampled_whole_so_drift_between_them_widens_the_interval() -> None:
    rng = random.Random(5)
    steady_small, steady_large = _batches(rng, 24, 1.0), _batches(rng, 24, 1.0)
    # the same samples, but the large size's rounds alternate between a quiet and a busy machine
    drifting = [
        [ms * (0.5 if i % 2 else 1.5) for ms in batch] for i, batch in enumerate(steady_large)
    ]
    steady = ratio_interval(steady_small, steady_large, 50, resamples=400)
    drift = ratio_interval(steady_small, drifting, 50, resamples=400)
    assert drift[1] - drift[0] > 2 * (steady[1] - steady[0])


def test_no_rounds_give_no_interval() -> None:
    low, high = ratio_interval([], [[1.0]], 99)
    assert low != low and high != high  # NaN
