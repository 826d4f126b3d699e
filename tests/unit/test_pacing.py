"""`controller.pacing.Pacer`: background work kept to its share of the time (a fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@given(
    st.sampled_from([0.1, 0.25, 0.5, 0.9]),
    st.lists(st.floats(0.0, 0.003), min_size=1, max_size=400),
)
def test_work_takes_its_duty_of_the_time_once_it_rests(duty: float, steps: list[float]) -> None:
    clock = Clock()
    pace = Pacer(duty, burst=0.002, clock=clock, sleep=clock.sleep)
    worked = 0.0
    for step in steps:
        clock.now += step
        worked += step
        pace()
    rested = sum(clock.slept)
    unrested = worked - rested * duty / (1 - duty)  # work since the last rest
    assert -1e-9 <= unrested < 0.002 + 1e-9
    assert all(s >= 0.002 * (1 - duty) / duty - 1e-9 for s in clock.slept)


def test_a_full_duty_never_rests_and_a_duty_out_of_range_is_refused() -> None:
    clock = Clock()
    pace = Pacer(1.0, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        clock.now += 0.01
        pace()
    assert clock.slept == []
    for duty in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            Pacer(duty)
