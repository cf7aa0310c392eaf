"""Manager: coldplug, hotplug with duplicate/missing uevents, names, hints,
boot policy (AutoStart=, EarlyBoot=, daemon restart), polling, reload, shutdown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_core_fake_kernel import FakeKernel, call, spin

import rprocd.firmware as firmware
from rprocd import config as cfg
from rprocd import errors
from rprocd.crash import CrashTypes
from rprocd.manager import Manager
from rprocd.paths import Paths
from rprocd.processor import Processor


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)
    k.firmware |= {"rproc-m4-fw", "rproc-m0-fw", "a.elf", "b.elf"}
    return k


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    (tmp_path / "boot_id").write_text("boot-1\n")
    return Paths(
        sysfs=tmp_path / "sys",
        debugfs=tmp_path / "debug",
        firmware_root=tmp_path / "fw",
        config_dir=tmp_path / "etc",
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        interfaces_dir=tmp_path / "dbus",
    )


class Recorder:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []

    def processor_added(self, proc: Processor) -> None:
        self.added.append(proc.object_name)

    def processor_removed(self, proc: Processor) -> None:
        self.removed.append(proc.object_name)


def write_config(paths: Paths, text: str, name: str = "rprocd.conf") -> None:
    target = paths.config_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def manager(paths: Paths, kernel: FakeKernel, coldplug: bool = True) -> Manager:
    m = Manager(paths, cfg.load(paths), ops=kernel, boot_id_file=paths.state_dir.parent / "boot_id",
                crash_types=CrashTypes())
    m.listener = Recorder()
    if coldplug:
        done: list[bool] = []
        m.coldplug([str(root) for root in kernel.cores], lambda: done.append(True))
        spin(lambda: done)
    return m


def test_coldplug_finds_cores_by_name(paths: Paths, kernel: FakeKernel) -> None:
    kernel.add_core(1, "m0")
    kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    assert sorted(m.processors) == ["m0", "m4"]
    assert m.get_processor("m4").device == "remoteproc0"
    assert m.get_processor("remoteproc1").name == "m0"
    with pytest.raises(errors.NoSuchProcessor, match="known: m0, m4"):
        m.get_processor("m7")
    assert m.status() == "2 cores: m0 offline, m4 running"


def test_coldplug_with_no_core_is_done_at_once(paths: Paths, kernel: FakeKernel) -> None:
    m = manager(paths, kernel)
    assert m.processors == {} and m.status() == "No remote processors found"


def test_hotplug_add_remove_and_duplicate_or_missing_uevents(
    paths: Paths, kernel: FakeKernel
) -> None:
    m = manager(paths, kernel)
    rec = m.listener
    core = kernel.add_core(0, "m4")
    m.device_added(str(core.root))
    m.device_added(str(core.root))  # duplicate
    assert rec.added == ["m4"]
    m.device_removed(str(core.root))
    m.device_removed(str(core.root))  # duplicate
    m.device_removed("/sys/devices/platform/x/remoteproc/remoteproc9")  # never seen
    assert rec.removed == ["m4"] and m.processors == {}


def test_an_add_that_reuses_a_device_replaces_the_core_whose_remove_was_lost(
    paths: Paths, kernel: FakeKernel
) -> None:
    m = manager(paths, kernel)
    old = kernel.add_core(0, "m4")
    m.device_added(str(old.root))
    kernel.remove_core(old)  # no remove uevent
    new = kernel.add_core(0, "dsp")
    m.device_added(str(new.root))
    assert m.listener.added == ["m4", "dsp"] and m.listener.removed == ["m4"]
    assert list(m.processors) == ["dsp"]


def test_name_collision_appends_the_device(paths: Paths, kernel: FakeKernel) -> None:
    kernel.add_core(0, "m4")
    kernel.add_core(1, "m4")
    kernel.add_core(2, "dsp.0")
    m = manager(paths, kernel)
    assert sorted(m.processors) == ["dsp_2e0", "m4", "m4_remoteproc1"]
    assert m.get_processor("dsp.0").object_name == "dsp_2e0"


def test_hints_find_the_owning_core(paths: Paths, kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    proc = m.get_processor("m4")
    channel = core.add_rpmsg("rpmsg-tty")
    m.device_hint("rpmsg", "add", str(channel))
    assert proc.properties()["RpmsgChannels"] == ["rpmsg-tty"]
    core.crash()
    devcd = paths.sysfs / "devices" / "virtual" / "devcoredump" / "devcd1"
    devcd.mkdir(parents=True)
    os.symlink(core.root, devcd / "failing_device")
    m.device_hint("devcoredump", "add", str(devcd))
    assert proc.state == "crashed" and proc.properties()["CrashCount"] == 1
    m.device_hint("virtio", "add", "/sys/devices/platform/elsewhere/virtio3")  # no owner


def test_polling_sees_a_crash(paths: Paths, kernel: FakeKernel) -> None:
    write_config(paths, "[Manager]\nPollIntervalSec=10ms\n")
    core = kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    core.crash()
    spin(lambda: m.get_processor("m4").state == "crashed")
    assert m.get_processor("m4").properties()["CrashCount"] == 1
    m.close()


def test_polling_stops_when_every_core_is_quiet(paths: Paths, kernel: FakeKernel) -> None:
    write_config(paths, "[Manager]\nPollIntervalSec=10ms\n")
    kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    assert m._poll_timer
    assert call(m.get_processor("m4").stop) is None
    spin(lambda: not m._poll_timer)


def test_autostart_starts_the_configured_firmware_before_coldplug_is_done(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(
        paths, "[Processor *]\nValidate=no\n[Processor m4]\nAutoStart=yes\nFirmware=a.elf\n"
    )
    m4 = kernel.add_core(0, "m4")
    m0 = kernel.add_core(1, "m0")
    manager(paths, kernel)
    assert m4.state == "running" and m4.get("firmware") == "a.elf"
    assert m0.writes == []


def test_autostart_applies_to_a_hotplugged_core(paths: Paths, kernel: FakeKernel) -> None:
    write_config(paths, "[Processor *]\nValidate=no\nAutoStart=yes\n")
    m = manager(paths, kernel)
    core = kernel.add_core(0, "m4")
    m.device_added(str(core.root))
    spin(lambda: core.state == "running")
    assert core.get("firmware") == "rproc-m4-fw"


def test_early_booted_core_is_adopted_untouched_by_default(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Processor m4]\nAutoStart=yes\nFirmware=a.elf\n")
    core = kernel.add_core(0, "m4", "attached")
    m = manager(paths, kernel)
    assert core.writes == [] and m.get_processor("m4").properties()["RunningSince"] > 0


def test_early_boot_restart_only_on_the_first_run_of_a_boot(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Processor m4]\nEarlyBoot=restart\nFirmware=a.elf\nValidate=no\n")
    core = kernel.add_core(0, "m4", "attached")
    first = manager(paths, kernel)
    assert core.writes == [("state", "stop"), ("firmware", "a.elf"), ("state", "start")]
    first.close()
    core.writes.clear()
    manager(paths, kernel)  # the daemon restarted (kill -9): same boot id
    assert core.writes == []


def test_detached_core_with_autostart_is_attached(paths: Paths, kernel: FakeKernel) -> None:
    write_config(paths, "[Processor m4]\nAutoStart=yes\n")
    core = kernel.add_core(0, "m4", "detached")
    manager(paths, kernel)
    assert core.state == "attached" and core.writes == [("state", "start")]


def test_autostart_failure_is_recorded_and_coldplug_still_ends(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Processor *]\nValidate=no\nAutoStart=yes\nFirmware=missing.elf\n")
    kernel.add_core(0, "m4")
    m = manager(paths, kernel)
    props = m.get_processor("m4").properties()
    assert props["Failed"] is True and "missing.elf" in props["LastError"]


def test_reload_applies_a_good_config_and_keeps_the_old_one_on_error(
    paths: Paths, kernel: FakeKernel
) -> None:
    kernel.add_core(0, "m4")
    m = manager(paths, kernel)
    proc = m.get_processor("m4")
    write_config(paths, "[Processor m4]\nRestart=on-crash\nFirmware=b.elf\n")
    m.reload()
    assert proc.properties()["RestartPolicy"] == "on-crash"
    assert proc.properties()["DefaultFirmware"] == "b.elf"
    write_config(paths, "[Processor m4]\nRestart=always\n", "rprocd.conf.d/10-bad.conf")
    with pytest.raises(errors.Failed) as info:
        m.reload()
    assert "10-bad.conf:2: bad value 'always' for Restart=" in str(info.value)
    assert "previous one stays" in str(info.value)
    assert proc.properties()["RestartPolicy"] == "on-crash"


def test_shutdown_stops_only_cores_with_stop_on_exit(paths: Paths, kernel: FakeKernel) -> None:
    write_config(paths, "[Processor m4]\nStopOnExit=yes\n")
    m4 = kernel.add_core(0, "m4", "running")
    m0 = kernel.add_core(1, "m0", "running")
    m = manager(paths, kernel)
    done: list[bool] = []
    m.shutdown(lambda: done.append(True))
    spin(lambda: done)
    assert m4.state == "offline" and m0.state == "running" and m0.writes == []


def test_inspect_firmware_uses_the_core_the_firmware_is_for(
    paths: Paths, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel.add_core(0, "m4")
    kernel.add_core(1, "m0")
    m = manager(paths, kernel)
    seen: list[object] = []

    class Report:
        def __init__(self, target: str) -> None:
            # The image fits the m0 only: the m4's report has an error.
            self.errors = ["segment-outside"] if target == "m4" else []
            self.findings: list[tuple[str, str, str]] = []

        def add(self, severity: str, code: str, message: str) -> None:
            self.findings.append((severity, code, message))

        def to_dict(self) -> dict:
            return {"errors": len(self.errors), "findings": self.findings}

    monkeypatch.setattr(firmware, "search_dirs", lambda p, extra=(): [Path("/fw")])
    monkeypatch.setattr(firmware, "resolve", lambda name, dirs: dirs[0] / name)
    monkeypatch.setattr(
        firmware, "read_target", lambda p, dev, name, rrt: seen.append(name) or name
    )
    monkeypatch.setattr(
        firmware, "validate_file", lambda path, target: seen.append(target) or Report(target)
    )
    assert m.inspect_firmware("rproc-m0-fw") == {"errors": 0, "findings": []}
    assert seen == ["m0", "m0"]
    seen.clear()
    # No core is meant: judged against every core, the best fit reported with a note.
    report = m.inspect_firmware("other.elf")
    assert seen == ["m4", "m4", "m0", "m0"]
    assert report["errors"] == 0
    assert [(sev, code) for sev, code, _ in report["findings"]] == [("note", "core-guessed")]
    assert "m0" in report["findings"][0][2]


def test_autostart_with_a_coredump_mode_to_apply_is_not_busy(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Processor m4]\nValidate=no\nAutoStart=yes\nCoredump=enabled\n")
    core = kernel.add_core(0, "m4")
    m = manager(paths, kernel)
    assert core.state == "running" and core.get("coredump") == "enabled"
    assert m.get_processor("m4").properties()["Failed"] is False


def test_import_firmware_runs_the_store_off_the_loop_and_closes_the_fd(
    paths: Paths, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rprocd.firmware.imports as imports

    kernel.add_core(0, "m4")
    m = manager(paths, kernel)
    calls: list[tuple] = []

    class Store:
        def __init__(self, directory: Path, dirs: list, keep: int) -> None:
            calls.append((directory, keep))

        def import_fd(self, fd: int, name: str, target: object) -> str:
            if name == "bad.elf":
                raise errors.InvalidFirmware("bad.elf: no ELF header; relink it")
            return "rprocd/" + os.read(fd, 10).decode()

    monkeypatch.setattr(imports, "ImportStore", Store)
    monkeypatch.setattr(firmware, "search_dirs", lambda p, extra=(): [])
    monkeypatch.setattr(firmware, "read_target", lambda *a: "target")
    results: list[tuple] = []
    for count, name in enumerate(("good.elf", "bad.elf"), 1):
        read, write = os.pipe()
        os.write(write, name.encode())
        m.import_firmware(read, name, lambda *r: results.append(r))
        spin(lambda: len(results) == count)  # noqa: B023 (spun at once)
        # The manager closed the read end: the pipe has no reader left. (Not
        # fstat(read): the number may already belong to a file opened since.)
        with pytest.raises(BrokenPipeError):
            os.write(write, b"x")
        os.close(write)
    assert results[0] == ("rprocd/good.elf", None)
    assert results[1][0] is None and isinstance(results[1][1], errors.InvalidFirmware)
    assert calls[0] == (paths.firmware_root / "rprocd", 8)


def test_import_into_a_read_only_directory_names_it(
    paths: Paths, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's OSError (EROFS) becomes Failed naming the directory and the fix."""
    import errno

    import rprocd.firmware.imports as imports

    kernel.add_core(0, "m4")
    m = manager(paths, kernel)

    class Store:
        def __init__(self, directory: Path, dirs: list, keep: int) -> None:
            self.directory = directory

        def import_fd(self, fd: int, name: str, target: object) -> str:
            raise OSError(errno.EROFS, "Read-only file system", str(self.directory / ".x.tmp"))

    monkeypatch.setattr(imports, "ImportStore", Store)
    monkeypatch.setattr(firmware, "search_dirs", lambda p, extra=(): [])
    monkeypatch.setattr(firmware, "read_target", lambda *a: "target")
    results: list[tuple] = []
    read, write = os.pipe()
    os.close(write)
    m.import_firmware(read, "app.elf", lambda *r: results.append(r))
    spin(lambda: results)
    value, error = results[0]
    assert value is None and isinstance(error, errors.Failed)
    assert str(error) == (
        f"'app.elf' was not imported: cannot write to the import directory "
        f"{paths.firmware_root / 'rprocd'} (Read-only file system); it is on a read-only "
        "file system: set ImportDirectory= to a writable directory inside the firmware "
        "search path")


def test_a_core_whose_remove_uevent_was_lost_is_removed_by_the_poll(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Manager]\nPollIntervalSec=10ms\n")
    core = kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    kernel.remove_core(core)
    spin(lambda: m.listener.removed == ["m4"])
    assert m.processors == {}


# -- crash supervision through the manager ----------------------------------------------


def test_a_devcoredump_is_handed_to_its_core_and_another_devices_is_untouched(
    paths: Paths, kernel: FakeKernel
) -> None:
    write_config(paths, "[Processor m4]\nCoredump=enabled\nRestart=no\n")
    core = kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    proc = m.get_processor("m4")
    wifi = paths.sysfs / "devices" / "pci0000:00" / "0000:00:14.3"
    foreign = kernel.add_devcd(None, b"wifi firmware state", failing=wifi)
    core.report_crash()
    core.write("recovery", "recover\n")  # the dump appears with the recovery
    for subsystem, action, path in kernel.uevents:
        m.device_hint(subsystem, action, path)
    spin(lambda: proc.properties()["LastCoredump"])
    saved = Path(str(proc.properties()["LastCoredump"]))
    assert saved.parent == paths.state_dir / "coredump"
    assert saved.read_bytes().startswith(b"\x7fELF")
    assert kernel.dismissed == ["devcd2"] and list(kernel.devcds) == [foreign]
    dev = paths.sysfs / "class" / "devcoredump" / str(foreign)
    assert (dev / "data").read_bytes() == b"wifi firmware state"  # never read nor dismissed
    assert proc.properties()["CrashCount"] == 1
    m.close()


def test_the_trace_is_forwarded_from_boot_only_on_the_first_run_of_a_boot(
    paths: Paths, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rprocd.trace as trace

    sent: list[str] = []
    monkeypatch.setattr(trace, "journal_sendv", lambda: lambda *f: sent.append(f[0]))
    core = kernel.add_core(0, "m4", "running")
    core.log("since boot")
    first = manager(paths, kernel)
    assert sent == ["MESSAGE=since boot"]
    first.close()
    manager(paths, kernel)  # the daemon restarted: that line was sent already
    assert sent == ["MESSAGE=since boot"]


def test_reload_moves_the_coredump_directory_and_applies_the_start_limit(
    paths: Paths, kernel: FakeKernel
) -> None:
    kernel.add_core(0, "m4", "running")
    m = manager(paths, kernel)
    write_config(paths, "[Manager]\nCoredumpDirectory=/var/crash\n"
                 "[Processor m4]\nStartLimitBurst=2\nStartLimitIntervalSec=1min\n")
    m.reload()
    assert m._crash.store.directory == Path("/var/crash")
    limit = m.get_processor("m4").crash.limit
    assert (limit.burst, limit.interval) == (2, 60.0)
