"""Processor: state gates, errno mapping, switch with rollback, crash detection,
timeouts, against the fake kernel of test_core_fake_kernel."""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_core_fake_kernel import FakeCore, FakeKernel, call, spin

import rprocd.firmware as firmware
from rprocd import errors
from rprocd.config import ProcessorConfig
from rprocd.paths import Paths
from rprocd.processor import Processor, Shared
from rprocd.sysfs import CoreFiles


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)
    k.firmware |= {"rproc-m4-fw", "a.elf", "b.elf"}
    return k


class Recorder:
    def __init__(self) -> None:
        self.changes: list[dict[str, object]] = []
        self.crashes: list[tuple[str, int, str]] = []

    def properties_changed(self, proc: Processor, changed: dict[str, object]) -> None:
        self.changes.append(changed)

    def crashed(self, proc: Processor, crash_type: str, time_usec: int, coredump: str) -> None:
        self.crashes.append((crash_type, time_usec, coredump))

    def values(self, prop: str) -> list[object]:
        return [c[prop] for c in self.changes if prop in c]


def make(kernel: FakeKernel, core: FakeCore, **conf: object) -> tuple[Processor, Recorder]:
    paths = Paths(
        sysfs=kernel.sysfs,
        debugfs=kernel.debugfs,
        firmware_root=kernel.sysfs.parent / "fw",
        config_dir=Path("/nonexistent"),
        state_dir=Path("/nonexistent"),
        runtime_dir=Path("/nonexistent"),
        interfaces_dir=Path("/nonexistent"),
    )
    files = CoreFiles(core.root, core.root.name, kernel.debugfs, kernel)
    config = ProcessorConfig(**{"validate": False, **conf})
    name = core.get("name")
    proc = Processor(files, name, name, config, Shared(paths))
    rec = Recorder()
    proc.listener = rec
    return proc, rec


# -- start ---------------------------------------------------------------------


def test_start_writes_firmware_then_start_and_reports_running(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4")
    proc, rec = make(kernel, core)
    assert call(proc.start, "a.elf") is None
    assert core.writes == [("firmware", "a.elf"), ("state", "start")]
    props = proc.properties()
    assert props["State"] == "running" and props["Firmware"] == "a.elf"
    assert props["Operation"] == "" and props["Failed"] is False
    assert props["RunningSince"] > 0 and props["RpmsgChannels"] == ["rpmsg-tty"]
    assert rec.values("Operation") == ["starting", ""]
    assert rec.crashes == []


def test_start_empty_name_uses_default_firmware(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", firmware="b.elf")
    proc, _ = make(kernel, core, firmware="a.elf")
    assert proc.properties()["DefaultFirmware"] == "a.elf"
    assert call(proc.start, "") is None
    assert core.get("firmware") == "a.elf"


@pytest.mark.parametrize("state", ["running", "attached", "crashed"])
def test_start_is_refused_without_a_kernel_write_unless_offline_or_detached(
    kernel: FakeKernel, state: str
) -> None:
    core = kernel.add_core(0, "m4", state)
    proc, _ = make(kernel, core)
    error = call(proc.start, "a.elf")
    assert isinstance(error, errors.BadState)
    assert str(error).startswith("m4: ")
    assert core.writes == [] and core.power == (1 if state != "crashed" else 0)
    assert proc.properties()["Failed"] is False  # a refusal is not a failure


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, errors.FirmwareNotFound),
        (errno.EINVAL, errors.InvalidFirmware),
        (errno.EIO, errors.InvalidFirmware),
        (errno.EBUSY, errors.BadState),
        (errno.EPERM, errors.NotSupported),
        (errno.ENODEV, errors.NoSuchProcessor),
        (errno.ENAMETOOLONG, errors.InvalidArgs),
        (errno.EINTR, errors.Failed),
        (errno.ENOMEM, errors.Failed),
        (errno.EXDEV, errors.Failed),
    ],
)
def test_start_errno_maps_to_named_error(kernel: FakeKernel, code: int, kind: type) -> None:
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core)
    core.fail_start = code
    error = call(proc.start, "a.elf")
    assert type(error) is kind
    assert str(error).startswith("m4: ") and ";" in str(error)  # the cause; what to do
    props = proc.properties()
    assert props["Failed"] is True and props["LastError"] == str(error)
    assert props["State"] == "offline" and props["Operation"] == ""


def test_invalid_firmware_message_says_what_the_kernel_checks(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core)
    core.fail_start = errno.EINVAL
    message = str(call(proc.start, "a.elf"))
    assert "ELF header" in message and "resource table" in message and "InspectFirmware" in message


def test_start_that_leaves_the_core_offline_is_a_stuck_failure(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4")
    (core.root.parent.parent / "driver").symlink_to("/sys/bus/platform/drivers/stm32-rproc")
    core.stuck_offline = True
    proc, _ = make(kernel, core)
    error = call(proc.start, "a.elf")
    assert isinstance(error, errors.Failed)
    assert "stuck" in str(error)
    assert "echo 0.m4 > /sys/bus/platform/drivers/stm32-rproc/unbind" in str(error)


def test_start_followed_by_an_unbind_is_no_such_processor(kernel: FakeKernel) -> None:
    """The driver is unbound right after an accepted start (rproc_del stops the
    core, then removes its directory): NoSuchProcessor, not the "stuck" failure."""
    core = kernel.add_core(0, "m4")
    core.stuck_offline = True  # the unbind's stop: offline right after the write
    proc, _ = make(kernel, core)
    write = core._state_write

    def start_then_unbind(command: str) -> None:
        write(command)
        if command == "start":
            threading.Timer(0.1, kernel.remove_core, (core,)).start()

    core._state_write = start_then_unbind  # type: ignore[method-assign]
    error = call(proc.start, "a.elf")
    assert isinstance(error, errors.NoSuchProcessor), error
    assert "disappeared" in str(error)


def test_start_of_a_detached_core_attaches_without_firmware(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "detached")
    proc, _ = make(kernel, core)
    assert call(proc.start, "a.elf") is None
    assert core.writes == [("state", "start")]
    assert proc.state == "attached"


def test_reset_failed_clears_failed_and_last_error(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core)
    core.fail_start = errno.EINVAL
    call(proc.start, "a.elf")
    proc.reset_failed()
    assert proc.properties()["Failed"] is False and proc.properties()["LastError"] == ""


# -- validation (the firmware package is monkeypatched) ------------------------------


@dataclass
class FakeFinding:
    message: str


@dataclass
class FakeReport:
    errors: list
    warnings: list


def patch_validator(
    monkeypatch: pytest.MonkeyPatch, report: FakeReport | None = None, missing: bool = False
) -> None:
    def resolve(name: str, dirs: list) -> Path:
        if missing:
            raise errors.FirmwareNotFound(f"no '{name}' in the search path; copy it there")
        return Path("/lib/firmware") / name

    monkeypatch.setattr(firmware, "search_dirs", lambda paths, extra=(): [])
    monkeypatch.setattr(firmware, "resolve", resolve)
    monkeypatch.setattr(firmware, "read_target", lambda *a, **k: None)
    monkeypatch.setattr(firmware, "validate_file", lambda p, t: report or FakeReport([], []))


def test_validation_refusal_never_reaches_the_kernel(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_validator(
        monkeypatch,
        FakeReport([FakeFinding("no resource table; link rsc_table.c"), FakeFinding("other")], []),
    )
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core, validate=True)
    error = call(proc.start, "a.elf")
    assert isinstance(error, errors.InvalidFirmware)
    assert str(error).startswith("m4: 'a.elf': no resource table; link rsc_table.c")
    assert "1 more problem" in str(error)
    assert core.writes == []


def test_validation_firmware_not_found_is_named_after_the_core(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_validator(monkeypatch, missing=True)
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core, validate=True)
    error = call(proc.start, "x.elf")
    assert isinstance(error, errors.FirmwareNotFound)
    assert str(error).startswith("m4: no 'x.elf'")


def test_restart_validates_before_stopping(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_validator(monkeypatch, FakeReport([FakeFinding("bad machine; relink for ARM")], []))
    core = kernel.add_core(0, "m4", "running", firmware="a.elf")
    proc, _ = make(kernel, core, validate=True)
    assert isinstance(call(proc.restart, "b.elf"), errors.InvalidFirmware)
    assert core.writes == [] and core.state == "running"


# -- stop, detach, recover -------------------------------------------------------------


def test_stop_running_goes_offline(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core)
    assert call(proc.stop) is None
    assert core.state == "offline" and proc.properties()["RunningSince"] == 0
    assert rec.values("Operation") == ["stopping", ""]
    assert rec.crashes == [] and proc.properties()["CrashCount"] == 0  # ours, not a crash


def test_stop_drops_every_leaked_power_reference(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    core.power = 2  # the kernel auto-booted it and someone started it again
    proc, _ = make(kernel, core)
    assert call(proc.stop) is None
    assert core.writes == [("state", "stop"), ("state", "stop")]
    assert core.state == "offline"


@pytest.mark.parametrize(
    ("state", "hint"),
    [("offline", "already offline"), ("detached", "Start() attaches"), ("crashed", "Recover()")],
)
def test_stop_is_gated(kernel: FakeKernel, state: str, hint: str) -> None:
    core = kernel.add_core(0, "m4", state)
    proc, _ = make(kernel, core)
    error = call(proc.stop)
    assert isinstance(error, errors.BadState) and hint in str(error)
    # a crashed core: the kernel is asked (7.2 stops it; before, EINVAL, power untouched)
    assert core.writes == ([("state", "stop")] if state == "crashed" else [])
    assert core.power == 0 and core.state == state


def test_stop_of_a_crashed_core_where_the_kernel_allows_it(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "crashed")
    core.crashed_stop = "stop"
    proc, rec = make(kernel, core)
    assert call(proc.stop) is None
    assert core.state == "offline" and proc.properties()["CrashCount"] == 1
    assert len(rec.crashes) == 1  # announced, with no coredump


def test_detach_only_an_attached_core(kernel: FakeKernel) -> None:
    running = kernel.add_core(0, "m4", "running")
    proc, _ = make(kernel, running)
    error = call(proc.detach)
    assert isinstance(error, errors.BadState) and "Stop()" in str(error)
    attached = kernel.add_core(1, "m33", "attached")
    proc, _ = make(kernel, attached)
    assert call(proc.detach) is None
    assert attached.state == "detached"


def test_detach_einval_on_an_attached_core_is_not_supported(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "attached")
    core.can_detach = False
    proc, _ = make(kernel, core)
    error = call(proc.detach)
    assert isinstance(error, errors.NotSupported) and "Stop()" in str(error)


def test_recover_a_crashed_core(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "crashed")
    proc, rec = make(kernel, core)
    assert call(proc.recover) is None
    assert core.writes == [("recovery", "recover")] and proc.state == "running"
    assert rec.values("Operation") == ["recovering", ""]


def test_recover_that_leaves_the_core_offline_fails(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "crashed")
    core.recovery_works = False
    proc, _ = make(kernel, core)
    error = call(proc.recover)
    assert isinstance(error, errors.Failed) and "offline" in str(error)


def test_recover_of_a_running_core_is_refused(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, _ = make(kernel, core)
    error = call(proc.recover)
    assert isinstance(error, errors.BadState) and "Restart()" in str(error)


# -- restart and firmware switch ---------------------------------------------------------


def test_restart_same_firmware_stops_then_starts(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running", firmware="a.elf")
    proc, rec = make(kernel, core, firmware="a.elf")
    assert call(proc.restart, "") is None
    assert core.writes == [("state", "stop"), ("firmware", "a.elf"), ("state", "start")]
    assert rec.values("Operation") == ["stopping", "starting", ""]


def test_switch_rolls_back_to_the_previous_firmware(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running", firmware="a.elf")
    proc, rec = make(kernel, core)
    kernel.firmware.discard("b.elf")  # the kernel will not find it: ENOENT
    error = call(proc.restart, "b.elf")
    assert isinstance(error, errors.FirmwareNotFound)
    assert "'b.elf'" in str(error) and "rolled back to 'a.elf', which runs again" in str(error)
    assert core.state == "running" and core.get("firmware") == "a.elf"
    assert core.writes == [
        ("state", "stop"),
        ("firmware", "b.elf"),
        ("state", "start"),
        ("firmware", "a.elf"),
        ("state", "start"),
    ]
    assert rec.values("Operation") == ["switching", ""]
    assert proc.properties()["Failed"] is True


def test_switch_whose_rollback_fails_too_says_both(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running", firmware="a.elf")
    proc, _ = make(kernel, core)
    kernel.firmware -= {"a.elf", "b.elf"}
    error = call(proc.restart, "b.elf")
    assert isinstance(error, errors.Failed)
    assert "rolling back to 'a.elf' failed too" in str(error) and "Start()" in str(error)


def test_switch_succeeds(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running", firmware="a.elf")
    proc, _ = make(kernel, core)
    assert call(proc.restart, "b.elf") is None
    assert proc.properties()["Firmware"] == "b.elf" and proc.state == "running"


# -- state tracking and crashes -----------------------------------------------------------


def test_poll_counts_a_crash_once_through_recovery(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core)
    first = proc.properties()["RunningSince"]
    core.crash()
    proc.poll()
    core.set_state("offline")  # the kernel's recovery reloading the firmware
    proc.poll()
    time.sleep(0.001)
    core.set_state("running")
    proc.poll()
    props = proc.properties()
    assert props["CrashCount"] == 1 and props["LastCrashType"] == "unknown"
    assert props["LastCrashTime"] > 0 and props["RunningSince"] > first
    assert len(rec.crashes) == 1
    assert rec.values("State") == ["crashed", "offline", "running"]


def test_offline_after_running_that_we_did_not_cause_is_a_crash(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core)
    core.set_state("offline")
    proc.poll()
    assert proc.properties()["CrashCount"] == 1 and len(rec.crashes) == 1


def test_virtio_removed_while_running_means_a_recovery_between_polls(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core)
    proc.hints([("virtio", "remove", "virtio0")])
    assert proc.properties()["CrashCount"] == 1 and len(rec.crashes) == 1
    proc.hints([("virtio", "add", "virtio1")])
    assert proc.properties()["CrashCount"] == 1


def test_only_real_changes_are_announced(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core)
    proc.refresh()
    proc.poll()
    assert rec.changes == []
    path = core.add_rpmsg("rpmsg-raw", vdev=1)
    proc.hints([("rpmsg", "add", path.name)])
    assert rec.changes == [{"RpmsgChannels": ["rpmsg-raw"]}]
    proc.hints([("rpmsg", "remove", path.name)])  # directory still there: the uevent wins
    assert rec.changes[-1] == {"RpmsgChannels": []}


def test_trace_buffers_and_read_trace(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    debug = kernel.debugfs / "remoteproc" / "remoteproc0"
    debug.mkdir(parents=True)
    (debug / "trace0").write_bytes(b"hello\n\0garbage")
    (debug / "trace10").write_bytes(b"")
    (debug / "trace2").write_bytes(b"")
    (debug / "crash").write_bytes(b"")
    proc, _ = make(kernel, core)
    assert proc.properties()["TraceBuffers"] == ["trace0", "trace2", "trace10"]
    assert proc.read_trace("") == "hello\n"
    with pytest.raises(errors.InvalidArgs):
        proc.read_trace("../state")
    with pytest.raises(errors.BadState, match="trace0, trace2, trace10"):
        proc.read_trace("trace5")


def test_coredump_mode_is_applied_from_config(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    proc, rec = make(kernel, core, coredump="inline")
    proc.apply_config(proc.config)
    spin(lambda: rec.values("CoredumpMode"))
    assert core.get("coredump") == "inline" and proc.properties()["CoredumpMode"] == "inline"


# -- one operation at a time, and timeouts -----------------------------------------------


def test_second_operation_is_busy(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4")
    proc, _ = make(kernel, core)
    core.hang.set()
    first: list[object] = []
    proc.start("a.elf", first.append)
    error = call(proc.stop)
    assert isinstance(error, errors.Busy) and "starting" in str(error)
    core.release.set()
    spin(lambda: first)
    assert first == [None]


def test_stop_timeout_keeps_the_core_busy_and_spares_the_others(kernel: FakeKernel) -> None:
    hung = kernel.add_core(0, "m4", "running")
    other = kernel.add_core(1, "m0")
    proc, rec = make(kernel, hung, shutdown_timeout=0.05)
    other_proc, _ = make(kernel, other)
    hung.hang.set()
    began = time.monotonic()
    error = call(proc.stop)
    assert isinstance(error, errors.Timeout)
    assert 1.0 <= time.monotonic() - began < 3
    assert proc.operation == "stopping" and proc.properties()["Failed"] is True
    assert isinstance(call(proc.start, "a.elf"), errors.Busy)
    assert call(other_proc.start, "a.elf") is None  # another core still answers
    hung.release.set()
    spin(lambda: proc.operation == "")
    assert proc.state == "offline" and rec.values("State")[-1] == "offline"
