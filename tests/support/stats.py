"""Traffic-split assertions that neither flake nor pass vacuously.

A route with share p receives each independent request with probability p, so its count out
of n is Binomial(n, p). The acceptance interval is exact (binomial tails summed, no normal
approximation, which understates the tail of skewed splits such as a 1 % canary): a correct
split falls outside it with probability at most `false_alarm`. The default 1e-6 keeps a suite
of thousands of share checks quiet; asserting several routes in one test adds their rates.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["acceptance_interval", "assert_share", "binomial_tolerance", "required_samples"]

DEFAULT_FALSE_ALARM = 1e-6
# Floating-point slack when comparing a share with an interval edge it may equal exactly.
_EPSILON = 1e-12
# No test sends more; it also bounds the search below.
_MAX_SAMPLES = 10**8


def _check(n: int, p: float, false_alarm: float) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be within 0..1, got {p}")
    # Below 1e-12 the mass this module leaves out of the tails (< 1e-30) could start to matter.
    if not 1e-12 <= false_alarm < 0.5:
        raise ValueError(f"false_alarm must be within [1e-12, 0.5), got {false_alarm}")


def _pmf(n: int, p: float, k: int) -> float:
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return math.exp(log_pmf)


def acceptance_interval(
    n: int, p: float, *, false_alarm: float = DEFAULT_FALSE_ALARM
) -> tuple[int, int]:
    """Counts [low, high] with P(count < low) and P(count > high) each at most false_alarm/2."""
    _check(n, p, false_alarm)
    if p in (0.0, 1.0):
        return (0, 0) if p == 0.0 else (n, n)
    # Beyond mean ± (12 sd + 50) the Bernstein bound leaves < 1e-30 of mass: not worth summing.
    mean, sd = n * p, math.sqrt(n * p * (1.0 - p))
    first = max(0, math.floor(mean - 12.0 * sd - 50.0))
    last = min(n, math.ceil(mean + 12.0 * sd + 50.0))
    half = false_alarm / 2.0

    low, tail = first, 0.0
    while low <= last and tail + (mass := _pmf(n, p, low)) <= half:
        tail += mass
        low += 1
    high, tail = last, 0.0
    while high >= first and tail + (mass := _pmf(n, p, high)) <= half:
        tail += mass
        high -= 1
    return low, high


def binomial_tolerance(
    n: int, p: float, *, z: float | None = None, false_alarm: float = DEFAULT_FALSE_ALARM
) -> float:
    """Half-width (in share, 0..1) around p that a correct count out of n stays within.

    The chance a correct split lands outside is at most `false_alarm`; `z`, if given, sets
    it instead as the two-sided normal tail beyond z standard deviations (z=5: ~5.7e-7).
    """
    if z is not None:
        if not z > 0:
            raise ValueError(f"z must be positive, got {z}")
        false_alarm = 2.0 * (1.0 - NormalDist().cdf(z))
    low, high = acceptance_interval(n, p, false_alarm=false_alarm)
    return max(p - low / n, high / n - p)


def required_samples(p: float, tolerance: float, false_alarm: float = DEFAULT_FALSE_ALARM) -> int:
    """The fewest requests whose tolerance around p is at most `tolerance`.

    The exact tolerance has a small sawtooth in n (under 1/n), so a count a little above the
    answer can, rarely, be a hair too wide; the check in `assert_share` is deterministic, so
    such a count fails every time, never intermittently.
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be within (0, 1), got {tolerance}")
    if binomial_tolerance(1, p, false_alarm=false_alarm) <= tolerance:
        return 1
    low, high = 1, 2  # invariant: tolerance(low) too wide, tolerance(high) narrow enough
    while binomial_tolerance(high, p, false_alarm=false_alarm) > tolerance:
        if high > _MAX_SAMPLES:
            raise ValueError(f"±{tolerance} around {p} needs more than {_MAX_SAMPLES} requests")
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if binomial_tolerance(middle, p, false_alarm=false_alarm) <= tolerance:
            high = middle
        else:
            low = middle
    return high


def assert_share(
    count: int,
    n: int,
    p: float,
    *,
    max_tolerance: float | None = None,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    label: str = "",
) -> None:
    """Assert count/n is p within the binomial tolerance.

    `max_tolerance` is the acceptance criterion (0.02 for "±2 points"): n must be large
    enough that the tolerance is no wider, otherwise the check could not fail when it should.
    """
    prefix = f"{label}: " if label else ""
    if n < 1:
        raise AssertionError(f"{prefix}no requests were counted, so no share can be checked")
    if not 0 <= count <= n:
        raise ValueError(f"{prefix}count {count} is outside 0..{n}")
    tolerance = binomial_tolerance(n, p, false_alarm=false_alarm)
    if max_tolerance is not None and tolerance > max_tolerance + _EPSILON:
        needed = required_samples(p, max_tolerance, false_alarm)
        raise AssertionError(
            f"{prefix}{n} requests resolve a share of {p:.4f} only to ±{tolerance:.4f}, "
            f"wider than the ±{max_tolerance:.4f} to be checked: send at least {needed} "
            f"(false-alarm probability {false_alarm:g})"
        )
    share = count / n
    if abs(share - p) > tolerance + _EPSILON:
        raise AssertionError(
            f"{prefix}share {count}/{n} = {share:.4f}, expected {p:.4f} ± {tolerance:.4f} "
            f"(a correct split falls outside with probability <= {false_alarm:g})"
        )
