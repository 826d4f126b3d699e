"""The share checks must hold for correct splits and catch wrong ones, with known odds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.stats import (
    acceptance_interval,
    assert_share,
    binomial_tolerance,
    required_samples,
)


def draw(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def exact_outside(n: int, p: float, tolerance: float) -> float:
    """P(|X/n - p| > tolerance) for X ~ Binomial(n, p), summed term by term."""
    return sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
        if abs(k / n - p) > tolerance + 1e-12
    )


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 400),
    p=st.floats(0.0, 1.0),
    false_alarm=st.sampled_from([1e-6, 1e-3, 0.05, 0.2]),
)
def test_a_correct_split_falls_outside_no_more_often_than_promised(
    n: int, p: float, false_alarm: float
) -> None:
    tolerance = binomial_tolerance(n, p, false_alarm=false_alarm)
    assert exact_outside(n, p, tolerance) <= false_alarm * (1 + 1e-9)


@pytest.mark.parametrize(("n", "p"), [(1000, 0.5), (2000, 0.1), (3000, 0.01), (500, 0.97)])
def test_simulated_correct_splits_are_all_accepted(n: int, p: float) -> None:
    rng = random.Random(f"accept {n} {p}")
    for _ in range(200):
        assert_share(draw(rng, n, p), n, p)


def test_the_interval_is_as_tight_as_its_false_alarm_rate_allows() -> None:
    # At a 10 % false-alarm rate, misses must occur (the interval is not vacuous) but
    # no more often than 10 % (it is not too tight); the fixed seed makes this deterministic.
    rng = random.Random(7)
    n, p, draws = 1000, 0.3, 2000
    tolerance = binomial_tolerance(n, p, false_alarm=0.1)
    misses = sum(abs(draw(rng, n, p) / n - p) > tolerance for _ in range(draws))
    assert 0.05 * draws < misses <= 0.1 * draws


@pytest.mark.parametrize(("true_p", "claimed_p"), [(0.55, 0.5), (0.03, 0.01), (0.88, 0.9)])
def test_a_clearly_wrong_share_is_rejected(true_p: float, claimed_p: float) -> None:
    tolerance = abs(true_p - claimed_p) / 2
    n = required_samples(claimed_p, tolerance)
    rng = random.Random(f"reject {true_p}")
    for _ in range(5):
        with pytest.raises(AssertionError, match="expected"):
            assert_share(draw(rng, n, true_p), n, claimed_p, max_tolerance=tolerance)


def test_too_few_requests_for_the_criterion_fail_with_the_count_needed() -> None:
    needed = required_samples(0.5, 0.02)
    with pytest.raises(AssertionError, match=f"send at least {needed}"):
        assert_share(500, 1000, 0.5, max_tolerance=0.02, label="stable")
    assert_share(needed // 2, needed, 0.5, max_tolerance=0.02)


def test_required_samples_is_the_smallest_count_that_resolves_the_tolerance() -> None:
    for p, tolerance in [(0.5, 0.02), (0.1, 0.01), (0.01, 0.005), (0.999, 0.001)]:
        n = required_samples(p, tolerance)
        assert binomial_tolerance(n, p) <= tolerance < binomial_tolerance(n - 1, p)
    # The normal approximation agrees where it is good: z(1e-6) = 4.89, 4.89² / 4 / 0.02².
    assert abs(required_samples(0.5, 0.02) - 14955) < 150


def test_certain_routes_admit_no_deviation() -> None:
    assert binomial_tolerance(100, 0.0) == 0.0
    assert binomial_tolerance(100, 1.0) == 0.0
    assert_share(0, 100, 0.0)
    assert_share(100, 100, 1.0)
    with pytest.raises(AssertionError):
        assert_share(1, 100, 0.0)


def test_z_is_another_way_to_state_the_false_alarm_rate() -> None:
    assert binomial_tolerance(5000, 0.2, z=3.0) == binomial_tolerance(
        5000, 0.2, false_alarm=0.0026997960632601965
    )
    assert binomial_tolerance(5000, 0.2, z=5.0) > binomial_tolerance(5000, 0.2, z=3.0)


def test_the_interval_follows_the_skew_of_small_shares() -> None:
    low, high = acceptance_interval(5000, 0.01)
    assert high - 50 > 50 - low  # more room above a small mean than below it


def test_nonsense_inputs_are_refused() -> None:
    with pytest.raises(AssertionError, match="no requests"):
        assert_share(0, 0, 0.5)
    with pytest.raises(ValueError):
        assert_share(11, 10, 0.5)
    with pytest.raises(ValueError):
        binomial_tolerance(10, 1.5)
    with pytest.raises(ValueError):
        binomial_tolerance(10, 0.5, false_alarm=0.0)
    with pytest.raises(ValueError):
        required_samples(0.5, 0.0)
