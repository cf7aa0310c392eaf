"""Start limit (StartLimitBurst= within StartLimitIntervalSec=) and RestartSec= delays.

Why: a firmware that crashes right after boot would be restarted forever,
filling the disk with coredumps and the journal with crash reports. As systemd
does for units, more than `burst` starts within `interval` seconds mark the
core Failed and rprocd leaves it alone until ResetFailed().

The window slides (the last `burst` + 1 starts are kept): systemd's
`ratelimit_below()` uses a fixed window opened by the first start, which lets
a burst straddling two windows through; the documented meaning ("more than
burst starts within interval") is the sliding one, and it costs one deque.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class StartLimit:
    """Counts starts of one core; `burst` 0 or `interval` 0 means no limit (as systemd)."""

    def __init__(
        self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._starts: deque[float] = deque()
        self.burst = 0
        self.interval = 0.0
        self.configure(burst, interval)

    @property
    def enabled(self) -> bool:
        return self.burst > 0 and self.interval > 0

    def configure(self, burst: int, interval: float) -> None:
        """New settings (Reload): the starts already recorded still count."""
        self.burst = max(0, int(burst))
        self.interval = max(0.0, float(interval))
        self._starts = deque(self._starts, maxlen=self.burst + 1)

    def record(self) -> bool:
        """Record a start now; True when it is one too many (the core should be Failed).

        A start exactly `interval` seconds after the oldest one kept still
        counts, as in systemd (`> interval` opens a new window)."""
        if not self.enabled:
            return False
        now = self._clock()
        while self._starts and now - self._starts[0] > self.interval:
            self._starts.popleft()
        self._starts.append(now)
        return len(self._starts) > self.burst

    def reset(self) -> None:
        """ResetFailed(): forget every start."""
        self._starts.clear()

    @property
    def count(self) -> int:
        """Starts within the current window (for status output)."""
        if not self._starts:
            return 0
        now = self._clock()
        return sum(1 for t in self._starts if now - t <= self.interval)


def backoff(restart_sec: float, attempt: int, steps: int = 0, max_delay: float = 0.0) -> float:
    """The delay before automatic restart number `attempt` (1 = the first after a crash).

    Fixed at RestartSec= by default, as systemd: the start limit already stops
    a crash loop, and a fixed delay keeps recovery time predictable. With
    `steps` > 0 and `max_delay` > `restart_sec` it grows exponentially from
    RestartSec= to `max_delay` over `steps` attempts, systemd's
    RestartSteps=/RestartMaxDelaySec= formula, should such keys be added."""
    restart_sec = max(0.0, restart_sec)
    if attempt <= 1 or steps <= 0 or restart_sec <= 0 or max_delay <= restart_sec:
        return restart_sec
    if attempt > steps:
        return max_delay
    return float(restart_sec * (max_delay / restart_sec) ** ((attempt - 1) / steps))
