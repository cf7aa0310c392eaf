"""Issue 5, crash supervision, end to end: crashes injected into the emulated
kernel the way a user (or the hardware) does it, the real daemon watched only
through D-Bus (the `Crashed` signal, properties) and rprocctl.

Crashes come from
- the emulated debugfs: `echo N > /sys/kernel/debug/remoteproc/remoteprocN/crash`
  run by `sh -c` under the emulator's preload (`inject`), N = 0 mmufault,
  1 watchdog, 2 fatal error;
- the firmware's own script: m4-crash.elf reports a watchdog crash 300 ms
  after each boot.

`Signals` subscribes to `Crashed` before anything is injected, on its own
GLib main loop thread, so no signal is missed and none is counted twice by
the test itself. Shared with test_coredump.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gi.repository import Gio, GLib

try:
    from test_api_board import BUS_NAME, PROCESSOR, SimBoard, board, dbus_error, needs_sim
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        PROCESSOR,
        SimBoard,
        board,
        dbus_error,
        needs_sim,
    )


pytestmark = needs_sim

MP1 = "stm32mp157f-dk"
M4 = "/org/rprocd1/processor/m4"
T = 30  # seconds, per D-Bus call
CRASH_TYPES = {0: "mmufault", 1: "watchdog", 2: "fatal error"}  # ABI §3.1


def path_of(core: str) -> str:
    return f"/org/rprocd1/processor/{core}"


def now_usec() -> int:
    return time.time_ns() // 1000


# -- the kernel side, as a program under the preload sees it -------------------


def sh(sim: SimBoard, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`sh -c command` with the emulator's environment (LD_PRELOAD, UMOCKDEV_DIR):
    /sys and /sys/kernel/debug are the emulated kernel's."""
    return subprocess.run(["sh", "-c", command], env={**sim.env}, capture_output=True,
                          text=True, timeout=timeout)


def inject(sim: SimBoard, device: str, crash_type: int = 1) -> None:
    """rproc_report_crash() through debugfs, as `echo 1 > .../crash` does."""
    out = sh(sim, f"echo {crash_type} > /sys/kernel/debug/remoteproc/{device}/crash")
    assert out.returncode == 0, f"writing the crash file failed: {out.stderr}"


def kernel_attr(sim: SimBoard, device: str, attr: str) -> str:
    out = sh(sim, f"cat /sys/class/remoteproc/{device}/{attr}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_kernel_state(sim: SimBoard, device: str, state: str, timeout: float = 15) -> None:
    """Poll the kernel's `state` in one shell loop (the kernel has no event for it)."""
    out = sh(sim, f'i=0; while [ "$(cat /sys/class/remoteproc/{device}/state)" != {state} ]; '
                  f'do i=$((i + 1)); [ $i -lt {int(timeout * 100)} ] || exit 1; sleep 0.01; '
                  'done', timeout=timeout + 10)
    assert out.returncode == 0, \
        f"{device}: the kernel's state is {kernel_attr(sim, device, 'state')}, not {state}"


# -- the daemon side ---------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """One `Crashed(s type, t time_usec, s coredump)` signal."""

    path: str
    type: str
    time_usec: int
    coredump: str
    received: float  # time.monotonic() at arrival


class Signals:
    """Every `Crashed` signal on the bus from construction on, in order."""

    def __init__(self, sim: SimBoard) -> None:
        self._sim = sim
        self._cv = threading.Condition()
        self.crashes: list[Crash] = []
        self._loop: GLib.MainLoop | None = None
        self._failure: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(15) or self._failure is not None:
            raise RuntimeError(f"could not subscribe to Crashed: {self._failure}")

    def _run(self, ready: threading.Event) -> None:
        context = GLib.MainContext()
        context.push_thread_default()
        conn = None
        try:
            conn = self._sim.connect()
            conn.signal_subscribe(None, PROCESSOR, "Crashed", None, None,
                                  Gio.DBusSignalFlags.NONE, self._on_crashed)
            # A round trip after the AddMatch: the bus has the match when it returns.
            conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "GetId", None, None,
                           Gio.DBusCallFlags.NONE, -1, None)
            self._loop = GLib.MainLoop(context)
        except BaseException as exc:  # reported by __init__
            self._failure = exc
            ready.set()
            return
        ready.set()
        self._loop.run()
        conn.close_sync(None)
        context.pop_thread_default()

    def _on_crashed(self, _conn, _sender, path, _iface, _signal, params) -> None:
        crash_type, time_usec, coredump = params.unpack()
        with self._cv:
            self.crashes.append(Crash(path, crash_type, time_usec, coredump, time.monotonic()))
            self._cv.notify_all()

    def of(self, path: str) -> list[Crash]:
        with self._cv:
            return [c for c in self.crashes if c.path == path]

    def wait(self, path: str, count: int, timeout: float = 15) -> list[Crash]:
        """The first `count` Crashed signals of `path` (AssertionError after timeout)."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.of(path)) >= count, timeout):
                raise AssertionError(
                    f"{path}: {len(self.of(path))} Crashed signal(s) within {timeout} s, "
                    f"expected {count}:\n{self.crashes}")
            return self.of(path)[:count]

    def close(self) -> None:
        if self._loop is not None:
            self._loop.quit()  # thread-safe: wakes the loop's context
        self._thread.join(10)


@contextmanager
def crash_board(*boards: str, **kwargs) -> Iterator[tuple[SimBoard, Signals]]:
    """A board with the daemon and a Crashed subscription (made before any crash)."""
    with board(*boards, **kwargs) as sim:
        signals = Signals(sim)
        try:
            yield sim, signals
        except BaseException:
            # The daemon's log is gone once rprocd-sim has cleaned up: show it now.
            sys.stderr.write(f"--- daemon log before teardown:\n{sim.daemon_log()}\n")
            raise
        finally:
            signals.close()


def _get_all(sim: SimBoard, path: str) -> dict:
    return sim.pydbus().get(BUS_NAME, path)["org.freedesktop.DBus.Properties"].GetAll(PROCESSOR)


def wait_prop(sim: SimBoard, path: str, name: str, value, timeout: float = 15,
              negate: bool = False) -> dict:
    """Wait until property `name` equals `value` (with `negate`: differs from
    it); all properties then."""
    deadline = time.monotonic() + timeout
    while True:
        current = _get_all(sim, path)
        if (current[name] == value) != negate:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {name} is {current[name]!r}, "
                                 f"{'still' if negate else 'not'} {value!r}; "
                                 f"properties: {current}")
        time.sleep(0.05)


def stays(sim: SimBoard, path: str, name: str, value, seconds: float) -> None:
    """Property `name` keeps `value` for `seconds` (nothing restarts the core)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = _get_all(sim, path)[name]
        assert current == value, f"{path}: {name} became {current!r} (expected it to stay " \
                                 f"{value!r})"
        time.sleep(0.1)


def call_error(fn, *args, **kwargs) -> tuple[str, str] | None:
    try:
        fn(*args, **kwargs)
    except GLib.Error as err:
        return dbus_error(err)
    return None


def crash_and_check(sim: SimBoard, signals: Signals, path: str, device: str,
                    crash_type: int, number: int) -> Crash:
    """Inject crash `number` (1-based, this core), check its signal and
    CrashCount/LastCrashTime; return the signal."""
    before = now_usec()
    inject(sim, device, crash_type)
    crash = signals.wait(path, number)[-1]
    after = now_usec()
    assert before <= crash.time_usec <= after, (before, crash, after)
    current = _get_all(sim, path)
    assert current["CrashCount"] == number, current
    assert current["LastCrashTime"] == crash.time_usec, (current, crash)
    return crash


# -- each crash type, with recovery on and off --------------------------------------


def test_each_crash_type_with_the_kernels_recovery():
    """Restart=kernel (the default) turns the kernel's recovery on, even where
    the kernel starts with it off; every type is seen once and the core runs again."""
    with crash_board(MP1, firmware=("m4-good.elf",), options=("recovery=disabled",)) as (
            sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.RestartPolicy, m4.Recovery) == ("kernel", "enabled")
        assert kernel_attr(sim, "remoteproc0", "recovery") == "enabled"
        m4.Start("m4-good.elf", timeout=T)
        for number, crash_type in enumerate(CRASH_TYPES, 1):
            crash_and_check(sim, signals, M4, "remoteproc0", crash_type, number)
            wait_kernel_state(sim, "remoteproc0", "running")
            current = wait_prop(sim, M4, "State", "running")
            assert (current["Failed"], current["Operation"]) == (False, ""), current
            assert current["RunningSince"] >= current["LastCrashTime"], current
        time.sleep(1.0)  # late signs of the last crash must not count again
        assert len(signals.of(M4)) == 3, signals.crashes
        assert m4.CrashCount == 3


def test_each_crash_type_with_recovery_off():
    """Emulator recovery=disabled and Restart=no: each crash leaves the core
    crashed, Failed, until Recover()."""
    with crash_board(MP1, firmware=("m4-good.elf",), options=("recovery=disabled",),
                     config="[Processor m4]\nRestart=no\n") as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.RestartPolicy, m4.Recovery) == ("no", "disabled")
        m4.Start("m4-good.elf", timeout=T)
        for number, crash_type in enumerate(CRASH_TYPES, 1):
            crash_and_check(sim, signals, M4, "remoteproc0", crash_type, number)
            current = wait_prop(sim, M4, "State", "crashed")
            assert current["Failed"] is True, current
            assert "Restart=no" in current["LastError"], current
            assert kernel_attr(sim, "remoteproc0", "state") == "crashed"
            stays(sim, M4, "State", "crashed", 1.0)
            m4.Recover(timeout=T)
            current = _get_all(sim, M4)
            assert (current["State"], current["Failed"]) == ("running", False), current
        time.sleep(0.5)
        assert len(signals.of(M4)) == 3 and m4.CrashCount == 3, signals.crashes


def test_crash_types_are_named():
    """LastCrashType and the signal's type are the kernel's words for 0, 1, 2."""
    with crash_board(MP1, firmware=("m4-good.elf",)) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        seen = []
        for number, crash_type in enumerate(CRASH_TYPES, 1):
            crash = crash_and_check(sim, signals, M4, "remoteproc0", crash_type, number)
            seen.append((crash.type, m4.LastCrashType))
            wait_kernel_state(sim, "remoteproc0", "running")
        assert seen == [(t, t) for t in CRASH_TYPES.values()], (
            f"crash types as the daemon reported them: {seen}; the daemon reads them from the "
            "kernel log (RPROCD_KMSG, default /dev/kmsg), and rprocd-sim gives it none of the "
            "emulated kernel's log lines ('crash detected in m4: type ...')")


# -- Restart= ---------------------------------------------------------------------


def test_restart_on_crash_restarts_after_restart_sec():
    config = "[Processor m4]\nRestart=on-crash\nRestartSec=700ms\n"
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.RestartPolicy, m4.Recovery) == ("on-crash", "disabled")
        assert kernel_attr(sim, "remoteproc0", "recovery") == "disabled"
        m4.Start("m4-good.elf", timeout=T)
        crash = crash_and_check(sim, signals, M4, "remoteproc0", 2, 1)
        wait_prop(sim, M4, "State", "crashed", timeout=5)
        current = wait_prop(sim, M4, "State", "running", timeout=10)
        restarted = time.monotonic()
        assert restarted - crash.received >= 0.5, "restarted before RestartSec=700ms"
        assert (current["Failed"], current["CrashCount"]) == (False, 1), current
        assert kernel_attr(sim, "remoteproc0", "recovery") == "disabled"
        # ... and again: the policy applies to every crash.
        crash_and_check(sim, signals, M4, "remoteproc0", 1, 2)
        wait_prop(sim, M4, "State", "running", timeout=10)
        time.sleep(0.5)
        assert len(signals.of(M4)) == 2, signals.crashes


def test_restart_no_turns_the_kernels_recovery_off():
    """The kernel starts with recovery on; Restart=no turns it off, so the
    core stays crashed until Recover()."""
    with crash_board(MP1, firmware=("m4-good.elf",), config="[Processor m4]\nRestart=no\n") as (
            sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert (m4.RestartPolicy, m4.Recovery) == ("no", "disabled")
        assert kernel_attr(sim, "remoteproc0", "recovery") == "disabled"
        m4.Start("m4-good.elf", timeout=T)
        crash_and_check(sim, signals, M4, "remoteproc0", 0, 1)
        current = wait_prop(sim, M4, "State", "crashed")
        assert current["Failed"] is True and "Recover()" in current["LastError"], current
        stays(sim, M4, "State", "crashed", 1.5)
        # Linux < 7.2 cannot stop a crashed core: the error says what to do.
        name, message = call_error(m4.Stop, timeout=T)
        assert name == "org.rprocd1.Error.BadState" and "Recover()" in message, message
        m4.Recover(timeout=T)
        assert (m4.State, m4.Failed, m4.CrashCount) == ("running", False, 1)


# -- the start limit ----------------------------------------------------------------


def test_start_limit_on_crash_reached_then_reset():
    config = ("[Processor m4]\nRestart=on-crash\nRestartSec=100ms\nStartLimitBurst=2\n"
              "StartLimitIntervalSec=60\n")
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        for number in (1, 2):
            crash_and_check(sim, signals, M4, "remoteproc0", 1, number)
            wait_prop(sim, M4, "State", "running", timeout=10)
        crash_and_check(sim, signals, M4, "remoteproc0", 1, 3)
        current = wait_prop(sim, M4, "Failed", True)
        assert "StartLimitBurst" in current["LastError"], current
        current = wait_prop(sim, M4, "State", "crashed")
        stays(sim, M4, "State", "crashed", 1.0)
        out = sim.rprocctl("reset-failed", "m4")
        assert out.returncode == 0, out.stderr
        current = wait_prop(sim, M4, "State", "running", timeout=10)
        assert (current["Failed"], current["CrashCount"]) == (False, 3), current
        # The limit counts afresh (the restart ResetFailed() made is its first
        # start): the next crash is restarted again.
        crash_and_check(sim, signals, M4, "remoteproc0", 1, 4)
        wait_prop(sim, M4, "State", "crashed", timeout=5)
        current = wait_prop(sim, M4, "State", "running", timeout=10)
        assert current["Failed"] is False, current


def test_start_limit_with_the_kernels_recovery_reached_then_reset():
    """Restart=kernel: the crash over the limit is still recovered by the
    kernel (its recovery was on), then rprocd turns recovery off: the next
    crash stays. ResetFailed() turns it on again, which recovers the core."""
    config = "[Processor m4]\nStartLimitBurst=2\nStartLimitIntervalSec=60\n"
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        for number in (1, 2, 3):
            crash_and_check(sim, signals, M4, "remoteproc0", 1, number)
            wait_kernel_state(sim, "remoteproc0", "running")
        current = wait_prop(sim, M4, "Failed", True)
        assert "StartLimitBurst" in current["LastError"], current
        current = wait_prop(sim, M4, "Recovery", "disabled")
        assert kernel_attr(sim, "remoteproc0", "recovery") == "disabled"
        crash_and_check(sim, signals, M4, "remoteproc0", 1, 4)
        wait_prop(sim, M4, "State", "crashed")
        stays(sim, M4, "State", "crashed", 1.0)
        m4.ResetFailed(timeout=T)
        current = wait_prop(sim, M4, "State", "running", timeout=10)
        assert (current["Failed"], current["Recovery"], current["CrashCount"]) == (
            False, "enabled", 4), current
        time.sleep(0.5)
        assert len(signals.of(M4)) == 4, signals.crashes


# -- the firmware's own crash --------------------------------------------------------


def test_the_firmwares_scripted_crash_is_detected():
    """m4-crash.elf crashes (watchdog) 300 ms after each boot. Restart=no: one
    crash, then it stays crashed; Recover() boots it again and it crashes again."""
    with crash_board(MP1, firmware=("m4-crash.elf",), config="[Processor m4]\nRestart=no\n") as (
            sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        started = now_usec()
        m4.Start("m4-crash.elf", timeout=T)
        (crash,) = signals.wait(M4, 1, timeout=10)
        assert crash.time_usec - started >= 250_000, "crashed before its script says"
        current = wait_prop(sim, M4, "State", "crashed")
        assert (current["CrashCount"], current["LastCrashTime"]) == (1, crash.time_usec)
        stays(sim, M4, "State", "crashed", 1.0)
        assert len(signals.of(M4)) == 1
        m4.Recover(timeout=T)
        signals.wait(M4, 2, timeout=10)
        wait_prop(sim, M4, "State", "crashed")
        time.sleep(0.5)
        assert len(signals.of(M4)) == 2 and m4.CrashCount == 2, signals.crashes


def test_a_crash_loop_is_stopped_by_the_start_limit():
    """m4-crash.elf with Restart=kernel crashes after every recovery: the start
    limit stops the loop; every crash until then is counted once."""
    config = ("[Manager]\nPollIntervalSec=50ms\n[Processor m4]\nStartLimitBurst=3\n"
              "StartLimitIntervalSec=60\n")
    with crash_board(MP1, firmware=("m4-crash.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-crash.elf", timeout=T)
        signals.wait(M4, 4, timeout=20)
        current = wait_prop(sim, M4, "Failed", True, timeout=10)
        assert "StartLimitBurst" in current["LastError"], current
        wait_prop(sim, M4, "State", "crashed", timeout=10)
        stays(sim, M4, "State", "crashed", 1.5)
        count = m4.CrashCount
        assert count >= 4 and len(signals.of(M4)) == count, (count, signals.crashes)
        assert kernel_attr(sim, "remoteproc0", "recovery") == "disabled"


# -- a crash storm ------------------------------------------------------------------


def test_hundred_crashes_over_four_cores_none_missed_none_twice():
    """generic:4, Restart=kernel, no start limit: 25 crashes per core, one at
    a time per core (the next once the core runs again), the four cores in
    parallel."""
    per_core = 25
    cores = [f"core{i}" for i in range(4)]
    config = "[Processor *]\nStartLimitBurst=0\n"
    with crash_board("generic:4", firmware=("m4-good.elf",), config=config) as (sim, signals):
        bus = sim.pydbus()
        devices = {}
        for core in cores:
            proc = bus.get(BUS_NAME, path_of(core))
            proc.Start("m4-good.elf", timeout=T)
            devices[core] = proc.Device
        failures: list[str] = []

        def storm(core: str) -> None:
            try:
                for number in range(1, per_core + 1):
                    inject(sim, devices[core], number % 3)
                    signals.wait(path_of(core), number, timeout=20)
                    wait_kernel_state(sim, devices[core], "running")
            except BaseException as exc:  # reported below
                failures.append(f"{core}: {exc}")

        threads = [threading.Thread(target=storm, args=(core,)) for core in cores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not failures, "\n".join(failures) + "\nCrashed signals so far: " + str(
            {core: len(signals.of(path_of(core))) for core in cores})
        time.sleep(2.0)  # late uevents and polls of the last crashes
        counts = {core: _get_all(sim, path_of(core))["CrashCount"] for core in cores}
        signalled = {core: len(signals.of(path_of(core))) for core in cores}
        assert counts == dict.fromkeys(cores, per_core), counts
        assert signalled == dict.fromkeys(cores, per_core), signalled
        assert sum(counts.values()) == 100 and len(signals.crashes) == 100
        for core in cores:
            times = [c.time_usec for c in signals.of(path_of(core))]
            assert times == sorted(times) and len(set(times)) == per_core, times
            current = _get_all(sim, path_of(core))
            assert (current["State"], current["Failed"]) == ("running", False), current
