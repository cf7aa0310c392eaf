"""StartLimitBurst= within StartLimitIntervalSec=, and RestartSec= delays."""

from __future__ import annotations

import pytest

from rprocd.startlimit import StartLimit, backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_burst_starts_pass_the_next_one_hits(clock: Clock) -> None:
    limit = StartLimit(3, 10.0, clock)
    assert [limit.record() for _ in range(3)] == [False, False, False]
    assert limit.record() is True
    assert limit.record() is True  # still hitting until reset or time passes


def test_starts_older_than_the_interval_do_not_count(clock: Clock) -> None:
    limit = StartLimit(2, 10.0, clock)
    assert not limit.record()
    clock.now += 6
    assert not limit.record()
    clock.now += 6  # the first is 12 s old now
    assert not limit.record()
    clock.now += 1
    assert limit.record()  # three within 7 s


def test_a_start_exactly_interval_later_still_counts(clock: Clock) -> None:
    limit = StartLimit(1, 10.0, clock)
    assert not limit.record()
    clock.now += 10.0
    assert limit.record()
    limit.reset()
    assert not limit.record()
    clock.now += 10.001
    assert not limit.record()


def test_the_window_slides_across_a_burst(clock: Clock) -> None:
    """systemd's fixed window (opened at 0) lets 0, 9.8, 9.9, 10.1, 10.2 through
    with burst 3, because it restarts at 10.1; four of them lie within 10 s."""
    limit = StartLimit(3, 10.0, clock)
    hits = []
    for t in (0.0, 9.8, 9.9, 10.1, 10.2):
        clock.now = 1000.0 + t
        hits.append(limit.record())
    assert hits == [False, False, False, False, True]


def test_reset_forgets_everything(clock: Clock) -> None:
    limit = StartLimit(2, 10.0, clock)
    for _ in range(3):
        limit.record()
    limit.reset()
    assert limit.count == 0
    assert not limit.record() and not limit.record()
    assert limit.record()


@pytest.mark.parametrize(("burst", "interval"), [(0, 10.0), (5, 0.0), (0, 0.0), (-1, 5.0)])
def test_zero_means_no_limit(clock: Clock, burst: int, interval: float) -> None:
    limit = StartLimit(burst, interval, clock)
    assert not limit.enabled
    assert not any(limit.record() for _ in range(100))


def test_configure_keeps_the_history(clock: Clock) -> None:
    limit = StartLimit(5, 10.0, clock)
    for _ in range(3):
        assert not limit.record()
    limit.configure(2, 10.0)  # Reload lowered the burst
    assert limit.record()
    limit.configure(10, 10.0)
    assert not limit.record()


def test_count_is_the_starts_in_the_window(clock: Clock) -> None:
    limit = StartLimit(5, 10.0, clock)
    limit.record()
    clock.now += 5
    limit.record()
    assert limit.count == 2
    clock.now += 6
    assert limit.count == 1


def test_memory_is_bounded(clock: Clock) -> None:
    limit = StartLimit(3, 1e9, clock)
    for _ in range(10_000):
        limit.record()
    assert len(limit._starts) == 4


def test_backoff_is_fixed_by_default() -> None:
    assert [backoff(2.0, n) for n in (1, 2, 10)] == [2.0, 2.0, 2.0]
    assert backoff(0.0, 5) == 0.0
    assert backoff(-1.0, 1) == 0.0


def test_backoff_grows_to_the_maximum_over_steps() -> None:
    delays = [backoff(1.0, n, steps=4, max_delay=16.0) for n in range(1, 7)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0, 16.0])
    assert backoff(5.0, 3, steps=4, max_delay=2.0) == 5.0  # max below RestartSec: fixed
