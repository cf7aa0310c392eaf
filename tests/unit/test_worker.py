"""Worker threads: results on the main loop, deadlines while a write hangs."""

from __future__ import annotations

import threading
import time

from test_core_fake_kernel import spin

from rprocd.worker import Worker, WorkerTimeout


def test_result_and_exception_come_back_on_the_main_thread() -> None:
    worker = Worker("t")
    got: list[tuple[object, object, str]] = []
    worker.submit(
        lambda: threading.current_thread().name,
        lambda r, e: got.append((r, e, threading.current_thread().name)),
    )
    worker.submit(lambda: 1 / 0, lambda r, e: got.append((r, type(e), "")))
    spin(lambda: len(got) == 2)
    assert got[0] == ("rprocd-t", None, threading.main_thread().name)
    assert got[1] == (None, ZeroDivisionError, "")
    worker.close()


def test_deadline_fires_while_the_job_still_blocks_and_the_late_result_follows() -> None:
    worker, other = Worker("hung"), Worker("other")
    release = threading.Event()
    done: list[object] = []
    late: list[object] = []
    began = time.monotonic()
    worker.submit(
        lambda: release.wait(5) and "finished",
        lambda r, e: done.append(e),
        timeout=0.05,
        on_late=lambda r, e: late.append(r),
    )
    spin(lambda: done)
    assert isinstance(done[0], WorkerTimeout) and time.monotonic() - began < 1
    answered: list[object] = []
    other.submit(lambda: "quick", lambda r, e: answered.append(r))
    spin(lambda: answered)
    assert answered == ["quick"] and not late
    release.set()
    spin(lambda: late)
    assert late == ["finished"] and len(done) == 1
    worker.close()
    other.close()


def test_close_lets_the_thread_exit() -> None:
    worker = Worker("closing")
    done: list[object] = []
    worker.submit(lambda: None, lambda r, e: done.append(r))
    spin(lambda: done)
    thread = worker._thread
    worker.close()
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


def test_a_result_in_time_is_not_a_timeout_when_the_loop_was_busy() -> None:
    """The job returned before its deadline, but the main loop was busy (a flood
    of D-Bus calls) until after it: the caller gets the result, not Timeout."""
    worker = Worker("busy-loop")
    done: list[tuple[object, object]] = []
    returned = threading.Event()

    def job() -> str:
        returned.set()
        return "in time"

    worker.submit(job, lambda r, e: done.append((r, e)), timeout=0.05)
    assert returned.wait(2)
    time.sleep(0.2)  # the loop does not run: the deadline passes with the result queued
    spin(lambda: done)
    assert done == [("in time", None)]
    worker.close()
