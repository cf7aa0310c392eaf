"""One thread per core for the blocking kernel writes, results back on the GLib loop.

A sysfs write blocks for as long as the kernel works (a boot, a shutdown
handshake that may never be acknowledged), so it never runs on the main loop,
and each core has its own thread so that one hung core delays no other. The
deadline lives on the main loop: the caller hears `WorkerTimeout` on time even
while the thread is still stuck in the kernel, and hears the real outcome
later through `on_late`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from gi.repository import GLib

log = logging.getLogger(__name__)

Done = Callable[[Any, BaseException | None], None]


class WorkerTimeout(Exception):
    """The job did not finish within its deadline (it may still be running)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


class _Job:
    __slots__ = ("fn", "on_done", "on_late", "timer", "expired", "returned")

    def __init__(self, fn: Callable[[], Any], on_done: Done, on_late: Done | None) -> None:
        self.fn = fn
        self.on_done = on_done
        self.on_late = on_late
        self.timer = 0
        self.expired = False
        # fn is done and its result is on its way to the loop (set by the worker
        # thread, read on the loop: a plain attribute is enough under the GIL)
        self.returned = False


class Worker:
    """Runs submitted functions one after the other on its own thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(
        self,
        fn: Callable[[], Any],
        on_done: Done,
        timeout: float | None = None,
        on_late: Done | None = None,
    ) -> None:
        """Run `fn()` on the thread; `on_done(result, exc)` once, on the main loop.

        With `timeout`, `on_done(None, WorkerTimeout)` fires at the deadline if
        `fn` is still running, and its real outcome goes to `on_late` instead.
        """
        job = _Job(fn, on_done, on_late)
        if timeout is not None:
            job.timer = GLib.timeout_add(max(1, int(timeout * 1000)), self._expire, job, timeout)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"rprocd-{self.name}", daemon=True
            )
            self._thread.start()
        self._queue.put(job)

    def close(self) -> None:
        """Let the thread exit once its queue is empty (a blocked write finishes first)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                result, exc = job.fn(), None
            except BaseException as error:  # handed to the caller, who decides
                result, exc = None, error
            job.returned = True
            # Default priority, not idle: a reply must not wait until a burst of
            # uevents (a boot announces about ten) has been handled.
            GLib.idle_add(self._finish, job, result, exc, priority=GLib.PRIORITY_DEFAULT)

    def _expire(self, job: _Job, timeout: float) -> bool:
        job.timer = 0
        if job.returned:
            # In time, only not dispatched yet (a busy loop): `_finish` delivers it.
            return GLib.SOURCE_REMOVE
        job.expired = True
        job.on_done(None, WorkerTimeout(timeout))
        return GLib.SOURCE_REMOVE

    def _finish(self, job: _Job, result: Any, exc: BaseException | None) -> bool:
        if job.timer:
            GLib.source_remove(job.timer)
        if not job.expired:
            job.on_done(result, exc)
        elif job.on_late is not None:
            job.on_late(result, exc)
        elif exc is not None:
            log.warning("%s: a job that timed out failed later: %s", self.name, exc)
        return GLib.SOURCE_REMOVE
