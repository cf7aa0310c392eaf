"""Crash supervision of one core against the fake kernel: detection through
state and uevents, Restart= policies, the start limit, coredumps, the
firmware's trace, rpmsg channels through a recovery."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_core_fake_kernel import DUMP, FakeCore, FakeKernel, HintSink, call, deliver, spin

from rprocd import crash, errors, events
from rprocd.config import ProcessorConfig
from rprocd.coredump import CoredumpStore
from rprocd.crash import CrashServices
from rprocd.paths import Paths
from rprocd.processor import RESCAN_TICKS, Processor, Shared
from rprocd.sysfs import CoreFiles

FIRMWARE = b"\x7fELF the firmware"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(crash, "DUMP_WAIT", 0.05)
    caplog.set_level(logging.INFO, logger="rprocd")


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)
    k.firmware |= {"rproc-m4-fw", "rproc-m0-fw", "a.elf"}
    return k


class Recorder:
    def __init__(self) -> None:
        self.changes: list[dict[str, object]] = []
        self.crashes: list[tuple[str, int, str]] = []
        self.lines: list[dict[str, str]] = []

    def properties_changed(self, proc: Processor, changed: dict[str, object]) -> None:
        self.changes.append(changed)

    def crashed(self, proc: Processor, crash_type: str, time_usec: int, coredump: str) -> None:
        self.crashes.append((crash_type, time_usec, coredump))

    def sendv(self, *fields: str) -> None:
        self.lines.append(dict(f.split("=", 1) for f in fields))

    def values(self, prop: str) -> list[object]:
        return [c[prop] for c in self.changes if prop in c]


@dataclass
class Rig:
    proc: Processor
    core: FakeCore
    rec: Recorder
    sink: HintSink
    dumps: Path

    @property
    def props(self) -> dict[str, object]:
        return self.proc.properties()

    def hints(self, count: int | None = None) -> int:
        return deliver(self.core.kernel, self.sink, count)


def booted(kernel: FakeKernel, index: int = 0, name: str = "m4") -> FakeCore:
    """A core the kernel started (before the daemon looks), its uevents gone."""
    core = kernel.add_core(index, name)
    core.power = 1
    core._boot()
    kernel.uevents.clear()
    return core


def settle(proc: Processor) -> None:
    spin(lambda: not proc.crash._settings_busy)


def recovered(r: Rig) -> None:
    """Until the core runs again and no operation of ours is left."""
    spin(lambda: r.core.state == "running" and r.proc.operation == "" and r.proc.state == "running")


def rig(
    kernel: FakeKernel, core: FakeCore, tmp_path: Path, fresh: bool = True,
    services: CrashServices | None = None, **conf: object,
) -> Rig:
    firmware_root = tmp_path / "fw"
    firmware_root.mkdir(exist_ok=True)
    for name in kernel.firmware:
        (firmware_root / name).write_bytes(FIRMWARE)
    paths = Paths(
        sysfs=kernel.sysfs, debugfs=kernel.debugfs, firmware_root=firmware_root,
        config_dir=tmp_path / "etc", state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
        interfaces_dir=tmp_path / "dbus",
    )
    dumps = tmp_path / "dumps"
    services = services or CrashServices(kernel.sysfs, CoredumpStore(dumps, 5))
    files = CoreFiles(core.root, core.device, kernel.debugfs, kernel)
    config = ProcessorConfig(**{"validate": False, **conf})
    name = core.get("name")
    proc = Processor(files, name, name, config, Shared(paths, (), services))
    rec = Recorder()
    proc.listener = rec
    proc.trace.sendv = rec.sendv
    proc.apply_config(config)
    settle(proc)
    proc.begin(fresh)
    return Rig(proc, core, rec, HintSink(proc), dumps)


def journal(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == event]


# -- detection: one crash, one episode, whatever shows it ---------------------------------


def test_a_crash_the_kernel_recovered_between_polls_is_seen_through_uevents(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path)
    assert r.core.report_crash() and r.core.state == "running"
    r.proc.poll()  # the state reads running: nothing to see there
    assert r.props["CrashCount"] == 0
    r.hints()
    spin(lambda: r.rec.crashes)
    assert r.props["CrashCount"] == 1 and r.props["LastCrashType"] == "unknown"
    assert r.rec.crashes == [("unknown", r.props["LastCrashTime"], "")]
    assert r.props["State"] == "running" and r.props["RpmsgChannels"] == ["rpmsg-tty"]
    assert len(journal(caplog, events.CRASHED)) == 1
    assert len(journal(caplog, events.RECOVERED)) == 1


SIGNS = [  # where the poll looks, and whether the uevents come before or after it
    (poll_at, hints)
    for poll_at in ("crashed", "offline", "starting", "running", "never")
    for hints in ("before", "after", "none")
    if hints != "none" or poll_at in ("crashed", "offline", "starting")  # else: no sign at all
]


@pytest.mark.parametrize(("poll_at", "hints"), SIGNS)
@pytest.mark.parametrize("reuse", [True, False])
def test_exactly_one_crash_whichever_signs_are_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poll_at: str, hints: str, reuse: bool
) -> None:
    kernel = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch, reuse_virtio=reuse)
    kernel.firmware.add("rproc-m4-fw")
    r = rig(kernel, booted(kernel), tmp_path)
    for step in r.core.crash_steps():
        if step == poll_at:
            if hints == "before":
                r.hints()
            r.proc.poll()
    if hints != "none":
        r.hints()
    r.proc.poll()
    spin(lambda: r.rec.crashes)
    assert r.props["CrashCount"] == 1 and len(r.rec.crashes) == 1
    # the next crash is one more, not lost as a late sign of the first
    r.core.report_crash()
    r.hints()
    r.proc.poll()
    spin(lambda: len(r.rec.crashes) == 2)
    assert r.props["CrashCount"] == 2


def test_our_own_stop_and_restart_are_not_crashes_even_with_late_uevents(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path)
    assert call(r.proc.restart, "") is None  # virtio0 removed and made again (same name)
    r.hints()
    assert call(r.proc.stop) is None
    assert call(r.proc.start, "") is None
    r.hints()
    r.proc.poll()
    assert r.props["CrashCount"] == 0 and r.rec.crashes == []


def test_a_stop_outside_rprocd_is_not_a_crash(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path)
    r.core.write("state", "stop\n")  # echo stop > state
    r.proc.poll()
    r.hints()
    assert r.props["CrashCount"] == 0 and r.props["State"] == "offline"
    assert "stopped outside rprocd" in journal(caplog, events.STOPPED)[0].getMessage()


def test_the_crash_journal_entry_has_its_own_fields(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="no")
    r.core.log("<3>assert failed in main.c:42")
    r.proc.poll()
    r.core.report_crash()
    r.proc.poll()
    (entry,) = journal(caplog, events.CRASHED)
    assert entry.levelno == logging.ERROR
    assert entry.RPROC_NAME == "m4" and entry.RPROC_DEVICE == "remoteproc0"
    assert entry.RPROC_CRASH_TYPE == "unknown" and entry.RPROC_CRASH_COUNT == 1
    assert entry.RPROC_CRASH_TIME_USEC == r.props["LastCrashTime"]
    assert entry.RPROC_RESTART == "no" and "assert failed" in entry.RPROC_TRACE
    assert "stays crashed (Restart=no)" in entry.getMessage()


# -- Restart= ------------------------------------------------------------------------


def test_restart_kernel_turns_the_kernels_recovery_on_and_only_records(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = booted(kernel)
    core.write("recovery", "disabled\n")
    r = rig(kernel, core, tmp_path)
    assert core.get("recovery") == "enabled" and r.props["Recovery"] == "enabled"
    core.writes.clear()
    core.report_crash()
    r.hints()
    spin(lambda: r.rec.crashes)
    assert core.writes == [] and core.state == "running"
    assert r.props["Failed"] is False and r.props["CrashCount"] == 1


def test_restart_on_crash_recovers_after_restart_sec(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="on-crash", restart_sec=0.05)
    assert r.core.get("recovery") == "disabled"  # rprocd decides
    r.core.writes.clear()
    began = time.monotonic()
    r.core.report_crash()
    assert r.core.state == "crashed"
    r.proc.poll()
    recovered(r)
    assert time.monotonic() - began >= 0.05
    assert r.core.writes == [("recovery", "recover")]
    assert r.rec.values("Operation") == ["recovering", ""]
    spin(lambda: r.rec.crashes)
    assert r.props["CrashCount"] == 1 and r.props["Failed"] is False
    r.hints()
    assert r.props["CrashCount"] == 1  # the uevents of that recovery are ours


def test_restart_no_leaves_it_crashed_until_recover(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="no")
    assert r.core.get("recovery") == "disabled"
    r.core.report_crash()
    r.proc.poll()
    assert r.rec.crashes == [("unknown", r.props["LastCrashTime"], "")]  # at once
    props = r.props
    assert props["State"] == "crashed" and props["Failed"] is True
    assert "Restart=no" in props["LastError"] and "Recover()" in props["LastError"]
    time.sleep(0.1)
    r.proc.poll()
    assert r.core.state == "crashed"
    assert call(r.proc.recover) is None
    assert r.props["State"] == "running" and r.props["Failed"] is False
    assert r.props["CrashCount"] == 1
    assert len(journal(caplog, events.RECOVERED)) == 1  # one entry per recovery


def test_stop_of_a_crashed_core_cancels_the_automatic_restart(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="on-crash", restart_sec=0.1)
    r.core.report_crash()
    r.proc.poll()
    error = call(r.proc.stop)
    assert isinstance(error, errors.BadState)
    assert "Recover() first, then Stop()" in str(error) and "not restarted" in str(error)
    time.sleep(0.2)
    spin(lambda: True)
    assert r.core.state == "crashed" and ("recovery", "recover") not in r.core.writes


def test_start_limit_on_crash_then_reset_failed(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="on-crash", restart_sec=0.01,
            start_limit_burst=2, start_limit_interval=60.0)
    for n in (1, 2):
        r.core.report_crash()
        r.proc.poll()
        recovered(r)
        assert r.props["CrashCount"] == n
    r.core.report_crash()
    r.proc.poll()
    props = r.props
    assert props["Failed"] is True and "StartLimitBurst" in props["LastError"]
    assert "ResetFailed()" in props["LastError"]
    (hit,) = journal(caplog, events.START_LIMIT_HIT)
    assert hit.RPROC_START_LIMIT_BURST == 2
    time.sleep(0.1)
    r.proc.poll()
    assert r.core.state == "crashed"  # left alone
    r.proc.reset_failed()
    assert r.props["Failed"] is False
    recovered(r)
    assert r.props["CrashCount"] == 3


def test_start_limit_with_restart_kernel_turns_its_recovery_off_until_reset(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, start_limit_burst=1, start_limit_interval=60.0)
    r.core.report_crash()
    r.hints()
    r.core.report_crash()  # the kernel recovers it again, rprocd sees one too many
    r.hints()
    settle(r.proc)
    assert r.props["Failed"] is True and r.core.get("recovery") == "disabled"
    assert r.core.state == "running"  # not stopped: left alone
    r.core.report_crash()
    r.proc.poll()
    assert r.core.state == "crashed" and r.props["CrashCount"] == 3
    r.proc.reset_failed()  # the kernel's recovery on again: it recovers the core
    settle(r.proc)
    assert r.core.get("recovery") == "enabled" and r.core.state == "running"
    r.hints()
    r.proc.poll()
    assert r.props["Failed"] is False and r.props["CrashCount"] == 3


def test_a_manual_start_after_the_limit_rearms_the_policy(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, start_limit_burst=1, start_limit_interval=60.0)
    for _ in range(2):
        r.core.report_crash()
        r.hints()
    settle(r.proc)
    assert r.proc.crash.limited and r.core.get("recovery") == "disabled"
    assert call(r.proc.restart, "") is None
    settle(r.proc)
    assert r.props["Failed"] is False and r.core.get("recovery") == "enabled"


def test_a_recovery_stuck_offline_is_a_failure(kernel: FakeKernel, tmp_path: Path) -> None:
    r = rig(kernel, booted(kernel), tmp_path, start_timeout=0.05)
    r.core.recovery_works = False
    r.core.report_crash()
    assert r.core.state == "offline"
    r.proc.poll()
    assert r.props["CrashCount"] == 1
    r.proc.poll()
    time.sleep(0.06)
    r.proc.poll()
    assert r.props["Failed"] is True and "left the core offline" in r.props["LastError"]


# -- coredumps ------------------------------------------------------------------


def test_coredump_saved_with_metadata_and_announced(
    kernel: FakeKernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    assert r.core.get("coredump") == "enabled" and r.props["CoredumpMode"] == "enabled"
    r.core.log("working", "<2>watchdog not fed")
    r.proc.poll()
    r.core.report_crash()
    r.hints()
    spin(lambda: r.rec.crashes)
    ((kind, when, path),) = r.rec.crashes
    assert path and Path(path).read_bytes() == DUMP and r.props["LastCoredump"] == path
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    assert meta["core"] == "m4" and meta["device"] == "remoteproc0"
    assert meta["firmware"] == "rproc-m4-fw"
    assert meta["firmware_sha256"] == hashlib.sha256(FIRMWARE).hexdigest()
    assert meta["crash_type"] == kind == "unknown" and meta["time_usec"] == when
    assert meta["size"] == len(DUMP) and meta["sha256"] == hashlib.sha256(DUMP).hexdigest()
    trace = Path(path).with_suffix(".trace").read_bytes()
    assert b"watchdog not fed" in trace and b"boot #2" not in trace
    assert meta["trace_size"] == len(trace)
    assert kernel.dismissed == ["devcd1"] and not kernel.devcds
    (saved,) = journal(caplog, events.COREDUMP_SAVED)
    assert saved.RPROC_COREDUMP == path


def test_coredumps_are_rotated_to_coredump_keep(kernel: FakeKernel, tmp_path: Path) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled", coredump_keep=2)
    for n in range(1, 5):
        r.core.report_crash()
        r.hints()
        spin(lambda: len(r.rec.crashes) == n and not kernel.devcds)  # noqa: B023
    assert [c[2] != "" for c in r.rec.crashes] == [True] * 4
    kept = sorted(p.name for p in r.dumps.glob("*.core"))
    assert len(kept) == 2 and Path(r.rec.crashes[-1][2]).name in kept


def test_coredump_keep_zero_only_dismisses(kernel: FakeKernel, tmp_path: Path) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled", coredump_keep=0)
    r.core.report_crash()
    r.hints()
    spin(lambda: not kernel.devcds)
    assert r.rec.crashes[0][2] == "" and not list(r.dumps.glob("*.core"))


def test_inline_mode_with_the_kernels_recovery(kernel: FakeKernel, tmp_path: Path) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="inline")
    began = time.monotonic()
    worker = r.core.report_crash_async()
    spin(lambda: r.hints() >= 0 and r.core.state == "running" and r.rec.crashes)
    assert time.monotonic() - began < 2  # dismissed at once, not after the kernel's timeout
    worker.join(1)
    assert r.rec.crashes[0][2].endswith(".core") and r.props["CrashCount"] == 1


def test_inline_mode_saves_the_trace_up_to_the_crash(kernel: FakeKernel, tmp_path: Path) -> None:
    """The recovery waits for the inline dump, so the crashed run's buffer is
    still there while `state` reads offline: it is read before the dump is
    dismissed, not left at the last poll's snapshot."""
    r = rig(kernel, booted(kernel), tmp_path, coredump="inline")
    r.core.log("polled")
    r.proc.poll()
    r.core.log("last line before the crash")  # no poll after this one
    worker = r.core.report_crash_async()
    spin(lambda: r.hints() >= 0 and r.core.state == "running" and r.rec.crashes)
    worker.join(1)
    trace = Path(r.rec.crashes[0][2]).with_suffix(".trace").read_bytes()
    assert b"last line before the crash" in trace and b"boot #2" not in trace
    r.proc.poll()
    messages = [line["MESSAGE"] for line in r.rec.lines]
    assert messages == ["boot #1", "polled", "last line before the crash", "boot #2"]


def test_inline_mode_with_restart_on_crash_never_deadlocks(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="inline", restart="on-crash",
            restart_sec=0.01)
    began = time.monotonic()
    r.core.report_crash()  # stays crashed: rprocd recovers, its write waits for the dump
    r.proc.poll()
    spin(lambda: r.hints() >= 0 and r.core.state == "running" and r.rec.crashes
         and r.proc.operation == "")
    assert time.monotonic() - began < 2
    assert r.rec.crashes[0][2].endswith(".core")
    assert r.props["Failed"] is False


def test_a_crash_while_the_previous_dump_is_written_loses_neither(
    kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    writing = threading.Event()
    go_on = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("rprocd-coredump"):
            writing.set()
            go_on.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    r.core.report_crash()
    r.hints()
    spin(lambda: writing.is_set() and not kernel.devcds)  # dismissed, still being written
    r.core.report_crash()  # the kernel may dump again: the first one was dismissed
    r.hints()
    go_on.set()
    spin(lambda: len(r.rec.crashes) == 2)
    paths = [c[2] for c in r.rec.crashes]
    assert all(paths) and paths[0] != paths[1]
    assert all(Path(p).read_bytes() == DUMP for p in paths)


def test_a_dump_found_at_start_is_collected_and_counted(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = booted(kernel)
    core.write("coredump", "enabled\n")
    core.report_crash()  # while the daemon was not running
    kernel.uevents.clear()
    r = rig(kernel, core, tmp_path)
    spin(lambda: r.rec.crashes)
    assert r.props["CrashCount"] == 1 and r.rec.crashes[0][2].endswith(".core")


def test_a_mode_refused_while_crashed_is_written_after_the_recovery(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = kernel.add_core(0, "m4", "crashed")
    r = rig(kernel, core, tmp_path, coredump="enabled", restart="no")
    assert core.get("coredump") == "disabled" and r.props["CrashCount"] == 1
    assert call(r.proc.recover) is None
    settle(r.proc)
    assert core.get("coredump") == "enabled" and r.props["CoredumpMode"] == "enabled"


# -- the firmware's trace --------------------------------------------------------


def test_trace_lines_are_forwarded_with_their_priority(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path)
    assert [line["MESSAGE"] for line in r.rec.lines] == ["boot #1"]  # first run: since boot
    r.core.log("<3>sensor timeout", "[00:00:01.000,000] <wrn> app: low battery", "tick")
    r.proc.poll()
    got = [(line["PRIORITY"], line["MESSAGE"]) for line in r.rec.lines[1:]]
    assert got == [("3", "sensor timeout"),
                   ("4", "[00:00:01.000,000] <wrn> app: low battery"), ("6", "tick")]
    assert {line["SYSLOG_IDENTIFIER"] for line in r.rec.lines} == {"m4"}
    assert {line["RPROC_DEVICE"] for line in r.rec.lines} == {"remoteproc0"}
    r.proc.poll()
    assert len(r.rec.lines) == 4  # nothing twice


def test_trace_forward_no_forwards_nothing_but_keeps_the_last_words(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, trace_forward=False, coredump="enabled",
            restart="on-crash", restart_sec=0.01)
    r.core.log("last words")
    r.core.report_crash()
    r.proc.poll()
    # The dump appears during the recovery RestartSec later: keep delivering uevents.
    spin(lambda: (r.hints(), r.rec.crashes)[1])
    assert r.rec.lines == []
    assert b"last words" in Path(r.rec.crashes[0][2]).with_suffix(".trace").read_bytes()


def test_a_daemon_restart_does_not_forward_the_trace_again(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = booted(kernel)
    core.log("said before")
    r = rig(kernel, core, tmp_path, fresh=False)
    core.log("new")
    r.proc.poll()
    assert [line["MESSAGE"] for line in r.rec.lines] == ["new"]


def test_last_words_when_the_kernel_recovered_before_we_looked(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    r.core.log("stack overflow in task A")
    r.proc.poll()
    r.core.report_crash()  # recovered at once: trace0 holds "boot #2" now
    r.hints(1)  # the rpmsg device goes first: a refresh reads the new text
    r.hints()
    spin(lambda: r.rec.crashes)
    trace = Path(r.rec.crashes[0][2]).with_suffix(".trace").read_bytes()
    assert b"stack overflow in task A" in trace and b"boot #2" not in trace
    assert [line["MESSAGE"] for line in r.rec.lines][-1] == "boot #2"


def test_a_line_read_in_the_next_run_before_the_crash_is_seen_goes_out_once(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    """A poll reads the next run's banner before the virtio removal tells of the
    crash: the follower is not reset then, so the banner is not forwarded again."""
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    r.core.log("before")
    r.proc.poll()
    r.core.report_crash()  # recovered at once: trace0 holds "boot #2" now
    r.proc.poll()  # the state reads running: forwards "boot #2"
    r.hints()
    spin(lambda: r.rec.crashes)
    r.core.log("after")
    r.proc.poll()
    r.proc.refresh()
    assert [line["MESSAGE"] for line in r.rec.lines] == ["boot #1", "before", "boot #2", "after"]
    trace = Path(r.rec.crashes[0][2]).with_suffix(".trace").read_bytes()
    assert b"before" in trace and b"boot #2" not in trace


def test_the_next_runs_banner_read_while_offline_goes_out_once(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    """The crash is first seen offline while the next run already wrote its
    banner: read then (the last words), its virtio add and then `running`
    restart the trace without forwarding the banner again."""
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    r.core.log("before")
    r.proc.poll()
    for step in r.core.crash_steps():
        if step == "starting":  # the next run's trace is there, the state reads offline
            r.proc.poll()
            r.hints()
    r.proc.poll()
    spin(lambda: r.rec.crashes)
    r.core.log("after")
    r.proc.poll()
    assert [line["MESSAGE"] for line in r.rec.lines] == ["boot #1", "before", "boot #2", "after"]
    trace = Path(r.rec.crashes[0][2]).with_suffix(".trace").read_bytes()
    assert b"before" in trace and b"boot #2" not in trace


def test_read_trace(kernel: FakeKernel, tmp_path: Path) -> None:
    r = rig(kernel, booted(kernel), tmp_path, coredump="enabled")
    r.core.log("hello")
    assert r.proc.read_trace("") == "boot #1\nhello\n"
    with pytest.raises(errors.InvalidArgs):
        r.proc.read_trace("state")
    with pytest.raises(errors.BadState, match="present: trace0"):
        r.proc.read_trace("trace1")
    r.core.write("recovery", "disabled\n")
    r.core.report_crash()
    r.proc.poll()
    assert "hello" in r.proc.read_trace("trace0")  # still there while crashed
    r.core.write("recovery", "recover\n")
    r.hints()
    spin(lambda: r.props["LastCoredump"])
    r.core.write("state", "stop\n")
    r.proc.poll()
    with pytest.raises(errors.BadState) as info:
        r.proc.read_trace("")
    assert "the text before the last crash is in" in str(info.value)
    assert str(info.value).endswith(".trace")


# -- rpmsg channels ----------------------------------------------------------------


def test_rpmsg_channels_go_and_come_back_through_a_recovery(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = booted(kernel)
    r = rig(kernel, core, tmp_path)
    assert r.props["RpmsgChannels"] == ["rpmsg-tty"]
    core.report_crash()
    r.hints()
    assert r.rec.values("RpmsgChannels") == [[], ["rpmsg-tty"]]
    core.channels = ("rpmsg-tty", "rpmsg-raw")  # a firmware announcing two
    core.report_crash()
    r.hints()
    assert r.rec.values("RpmsgChannels")[-1] == ["rpmsg-raw", "rpmsg-tty"]


def test_rpmsg_channels_are_read_again_by_the_poll_if_a_uevent_was_lost(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    core = booted(kernel)
    r = rig(kernel, core, tmp_path)
    for child in (core.root / "rproc-virtio.0.auto").glob("virtio*/virtio*"):
        child.rmdir()
    # uevents tell every change: the poll walks the tree again only every
    # RESCAN_TICKS ticks (the safety net), not every second
    for _ in range(RESCAN_TICKS):
        r.proc.poll()
    assert r.props["RpmsgChannels"] == []


def test_a_refused_start_leaves_the_automatic_restart_pending(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path, restart="on-crash", restart_sec=0.05)
    r.core.report_crash()
    r.proc.poll()
    assert isinstance(call(r.proc.start, ""), errors.BadState)  # crashed: nothing written
    recovered(r)
    assert r.core.writes.count(("recovery", "recover")) == 1


def test_running_since_restarts_with_a_recovery_seen_only_through_uevents(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    r = rig(kernel, booted(kernel), tmp_path)
    before = r.props["RunningSince"]
    time.sleep(0.002)
    r.core.report_crash()
    r.hints()
    assert r.props["RunningSince"] > before and r.props["CrashCount"] == 1
