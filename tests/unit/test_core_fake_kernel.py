"""A fake remoteproc kernel for the core's unit tests, and its own tests.

`FakeKernel` is a `FileOps`: the sysfs tree is real files in tmp_path (so
reads, listdir and walks work), and writes go through the ABI rules of
remoteproc-abi.md §1.3-§3 (gating, power reference count, errnos, crash
work, recovery, coredump modes, devcoredump devices), with knobs for failures
and a write that blocks until released. Every uevent the kernel would send
(virtio, rpmsg, rproc-virtio platform devices, devcoredump) is appended to
`kernel.uevents`; tests deliver them when and in the order they choose
(`deliver`). The other test_core_* and test_processor/test_manager modules
import it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gi.repository import GLib

from rprocd import devcoredump
from rprocd.sysfs import FileOps

CRASH_TYPES = {0: "mmufault", 1: "watchdog", 2: "fatal error"}
DUMP = b"\x7fELF" + bytes(range(256)) * 8

_REAL_DISMISS = devcoredump.dismiss
_KERNELS: dict[Path, FakeKernel] = {}


def _dismiss(sysfs: Path, devcd: str | os.PathLike[str]) -> bool:
    """devcoredump.dismiss, and the fake kernel deletes the dump as the real one does."""
    done = _REAL_DISMISS(sysfs, devcd)
    kernel = _KERNELS.get(Path(sysfs))
    if done and kernel is not None:
        kernel.release_devcd(os.path.basename(os.fspath(devcd).rstrip("/")))
    return done


class FakeCore:
    def __init__(
        self, kernel: FakeKernel, root: Path, name: str, state: str, firmware: str
    ) -> None:
        self.kernel = kernel
        self.root = root
        self.power = 1 if state in ("running", "attached") else 0
        self.fail_start = 0  # errno of the next start
        self.stuck_offline = False  # start succeeds but the state stays offline
        self.can_detach = True
        self.recovery_works = True
        self.crashed_stop = "einval"  # "stop": Linux 7.2 stops a crashed core
        self.vdevs = 1  # virtio devices of the firmware (0: none, like the M0 image)
        self.channels: tuple[str, ...] = ("rpmsg-tty",)
        self.trace = True  # the firmware declares trace0
        self.banner = "boot"
        self.dump = DUMP
        self.inline_wait = 5.0  # the kernel's 5 minutes, shortened
        self.hang = threading.Event()  # set: the next state write blocks until released
        self.release = threading.Event()
        self.writes: list[tuple[str, str]] = []
        self.crashes = 0  # the kernel's crash_cnt
        self.boots = 0
        self.lock = threading.RLock()  # rproc->lock
        self._virtio: list[tuple[int, Path]] = []
        self._trace_text = b""
        root.mkdir(parents=True)
        self._set("name", name)
        self._set("state", state)
        self._set("firmware", firmware)
        self._set("recovery", "enabled")
        self._set("coredump", "disabled")

    # files
    def _set(self, attr: str, value: str) -> None:
        (self.root / attr).write_text(value + "\n")

    def get(self, attr: str) -> str:
        return (self.root / attr).read_text().rstrip("\n")

    @property
    def state(self) -> str:
        return self.get("state")

    @property
    def device(self) -> str:
        return self.root.name

    @property
    def debug_dir(self) -> Path:
        return self.kernel.debugfs / "remoteproc" / self.root.name

    def set_state(self, state: str) -> None:
        self._set("state", state)

    # a crash as the poll sees it, nothing else (the kernel's recovery disabled)
    def crash(self) -> None:
        self.set_state("crashed")

    def add_rpmsg(self, channel: str, vdev: int = 0) -> Path:
        path = (
            self.root
            / f"rproc-virtio.{vdev}.auto"
            / f"virtio{vdev}"
            / f"virtio{vdev}.{channel}.-1.1024"
        )
        path.mkdir(parents=True)
        return path

    # -- the firmware's side -----------------------------------------------------

    def log(self, *lines: str) -> None:
        """The firmware writes lines to trace0 (NUL after the text, like ST's log_buff)."""
        self._trace_text += "".join(line + "\n" for line in lines).encode()
        self._write_trace()

    def _write_trace(self) -> None:
        self.debug_dir.mkdir(parents=True, exist_ok=True)
        (self.debug_dir / "trace0").write_bytes(self._trace_text + b"\0" * 8)

    def report_crash(self, kind: int = 1) -> bool:
        """rproc_report_crash + the crash work, in the caller's thread: crashed, and
        if recovery is enabled the whole recovery (don't use with coredump inline:
        it waits for the daemon to dismiss the dump; see `report_crash_async`)."""
        with self.lock:
            if self.state in ("offline", "crashed", "deleted"):
                return False
            self.crashes += 1
            self.kernel.klog.append(
                f"remoteproc {self.device}: crash detected in {self.get('name')}: "
                f"type {CRASH_TYPES.get(kind, 'unknown')}"
            )
            self.set_state("crashed")
            if self.get("recovery") == "enabled":
                self._recover()
            return True

    def crash_steps(self, kind: int = 1) -> Iterator[str]:
        """The same crash with recovery, one kernel step per `next()`: "crashed",
        then "offline" (subdevices gone, the dump made), "starting" (the next
        run's subdevices there, the state still offline), then "running"."""
        if not self.report_crash_without_recovery(kind):
            return
        yield "crashed"
        if self.get("recovery") != "enabled":
            return
        with self.lock:
            self._stop_subdevices()
            self.set_state("offline")
            self._coredump()
        yield "offline"
        if not self.recovery_works:
            return
        with self.lock:
            self._boot(running=False)
        yield "starting"
        self.set_state("running")
        yield "running"

    def report_crash_without_recovery(self, kind: int = 1) -> bool:
        with self.lock:
            if self.state in ("offline", "crashed", "deleted"):
                return False
            self.crashes += 1
            self.set_state("crashed")
            return True

    def report_crash_async(self, kind: int = 1) -> threading.Thread:
        thread = threading.Thread(target=self.report_crash, args=(kind,), daemon=True)
        thread.start()
        return thread

    # -- the kernel's work ----------------------------------------------------------

    def _boot(self, running: bool = True) -> None:
        """rproc_start: resources, subdevices (virtio, rpmsg), trace, then `running`
        (False: the state still reads offline while the subdevices are probed)."""
        self.boots += 1
        for k in range(self.vdevs):
            parent = self.root / f"rproc-virtio.{k}.auto"
            if not parent.exists():
                parent.mkdir()
                self.kernel.uevent("platform", "add", parent)
            index = self.kernel.virtio_index()
            virtio = parent / f"virtio{index}"
            virtio.mkdir()
            self._virtio.append((index, virtio))
            self.kernel.uevent("virtio", "add", virtio)
            for i, channel in enumerate(self.channels if k == 0 else ()):
                rpmsg = virtio / f"virtio{index}.{channel}.-1.{1024 + i}"
                rpmsg.mkdir()
                self.kernel.uevent("rpmsg", "add", rpmsg)
        if self.trace:
            self._trace_text = f"{self.banner} #{self.boots}\n".encode()
            self._write_trace()
        if running:
            self.set_state("running")

    def _stop_subdevices(self) -> None:
        for index, virtio in reversed(self._virtio):
            for rpmsg in sorted(virtio.iterdir(), reverse=True):
                rpmsg.rmdir()
                self.kernel.uevent("rpmsg", "remove", rpmsg)
            virtio.rmdir()
            self.kernel.free_virtio(index)
            self.kernel.uevent("virtio", "remove", virtio)
        self._virtio = []

    def _cleanup(self) -> None:
        """rproc_resource_cleanup (stop, detach; not a boot recovery)."""
        for parent in sorted(self.root.glob("rproc-virtio.*"), reverse=True):
            for p in sorted(parent.rglob("*"), reverse=True):
                p.rmdir()
            parent.rmdir()
            self.kernel.uevent("platform", "remove", parent)
        if self.debug_dir.exists():
            for p in self.debug_dir.glob("trace*"):
                p.unlink()

    def _recover(self) -> None:
        """rproc_trigger_recovery: nothing unless crashed."""
        with self.lock:
            if self.state != "crashed":
                return
            self._stop_subdevices()
            self.set_state("offline")
            self._coredump()
            if self.recovery_works:
                self._boot()

    def _coredump(self) -> None:
        mode = self.get("coredump")
        if mode == "disabled":
            return
        name = self.kernel.add_devcd(self, self.dump)
        if name is not None and mode == "inline":
            self.kernel.devcds[name].released.wait(self.inline_wait)

    # -- writes -----------------------------------------------------------

    def write(self, attr: str, text: str) -> None:
        if not text.endswith("\n") or text.count("\n") != 1:
            raise OSError(errno.EINVAL, "bad keyword")
        value = text[:-1]
        self.writes.append((attr, value))
        if attr == "firmware":
            if self.state != "offline":
                raise OSError(errno.EBUSY, "busy")
            self._set("firmware", value)
        elif attr == "state":
            if self.hang.is_set():
                self.hang.clear()
                assert self.release.wait(10)
            with self.lock:
                self._state_write(value)
        elif attr == "recovery":
            if value == "enabled":
                self._set("recovery", value)
                self._recover()
            elif value == "disabled":
                self._set("recovery", value)
            elif value == "recover":
                self._recover()
            else:
                raise OSError(errno.EINVAL, "bad")
        elif attr == "coredump":
            if self.state == "crashed":
                raise OSError(errno.EBUSY, "busy")
            if value not in ("disabled", "enabled", "inline"):
                raise OSError(errno.EINVAL, "bad")
            self._set("coredump", value)
        else:
            raise OSError(errno.EACCES, "read-only")

    def _state_write(self, command: str) -> None:
        state = self.state
        if command == "start":
            if state in ("running", "attached", "crashed"):
                self.power += 1
                return
            if self.fail_start:
                code, self.fail_start = self.fail_start, 0
                raise OSError(code, "start failed")
            self.power += 1
            if self.stuck_offline:
                return
            if state == "detached":
                self.set_state("attached")
            else:
                if not self.kernel.firmware_exists(self.get("firmware")):
                    self.power -= 1
                    raise OSError(errno.ENOENT, "no firmware")
                self._boot()
        elif command == "stop":
            if state == "crashed" and self.crashed_stop == "stop":
                self.power = 0
                self._stop_subdevices()
                self.set_state("offline")
                self._cleanup()
                return
            if state not in ("running", "attached"):
                raise OSError(errno.EINVAL, "not running")
            self.power -= 1
            if self.power == 0:
                self._stop_subdevices()
                self.set_state("offline")
                self._cleanup()
        elif command == "detach":
            if state != "attached" or not self.can_detach:
                raise OSError(errno.EINVAL, "cannot detach")
            self.power -= 1
            self.set_state("detached")
        else:
            raise OSError(errno.EINVAL, "Unrecognised option")


@dataclass
class FakeDevcd:
    core: FakeCore | None
    path: Path
    released: threading.Event = field(default_factory=threading.Event)


class FakeKernel(FileOps):
    def __init__(
        self, sysfs: Path, debugfs: Path, monkeypatch: pytest.MonkeyPatch | None = None,
        reuse_virtio: bool = True,
    ) -> None:
        self.sysfs = sysfs
        self.debugfs = debugfs
        self.cores: dict[Path, FakeCore] = {}
        self.firmware: set[str] = set()
        self.class_dir = sysfs / "devices" / "platform"
        self.uevents: list[tuple[str, str, str]] = []
        self.klog: list[str] = []
        self.devcds: dict[str, FakeDevcd] = {}
        self.dismissed: list[str] = []
        self.reuse_virtio = reuse_virtio  # the virtio IDA gives the lowest free index
        self._virtio_used: set[int] = set()
        self._virtio_next = 0
        self._devcd_next = 0
        self._lock = threading.Lock()
        _KERNELS[sysfs] = self
        if monkeypatch is not None:
            monkeypatch.setattr(devcoredump, "dismiss", _dismiss)

    def add_core(
        self, index: int, name: str, state: str = "offline", firmware: str = ""
    ) -> FakeCore:
        root = self.class_dir / f"{index}.{name}" / "remoteproc" / f"remoteproc{index}"
        core = FakeCore(self, root, name, state, firmware or f"rproc-{name}-fw")
        self.cores[root] = core
        return core

    def remove_core(self, core: FakeCore) -> None:
        del self.cores[core.root]
        for p in sorted(core.root.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        core.root.rmdir()

    def firmware_exists(self, name: str) -> bool:
        return name in self.firmware

    def write(self, path: Path, data: bytes, dir_fd: int | None = None) -> None:
        """`dir_fd` (the real FileOps opens relative to it) is not needed: the path says it."""
        core = self.cores.get(path.parent)
        if core is None:
            raise OSError(errno.ENOENT, "no such file", str(path))
        core.write(path.name, data.decode())

    # -- uevents, virtio index ------------------------------------------------------

    def uevent(self, subsystem: str, action: str, path: Path) -> None:
        self.uevents.append((subsystem, action, str(path)))

    def virtio_index(self) -> int:
        with self._lock:
            if self.reuse_virtio:
                index = next(i for i in range(len(self._virtio_used) + 1)
                             if i not in self._virtio_used)
            else:
                index = self._virtio_next
                self._virtio_next += 1
            self._virtio_used.add(index)
            return index

    def free_virtio(self, index: int) -> None:
        with self._lock:
            self._virtio_used.discard(index)

    # -- devcoredump ------------------------------------------------------------------

    def add_devcd(
        self, core: FakeCore | None, data: bytes, failing: Path | None = None
    ) -> str | None:
        """dev_coredumpm: None if a dump of the same device is still pending."""
        failing = failing or (core.root if core else None)
        assert failing is not None
        with self._lock:
            if core is not None and any(d.core is core for d in self.devcds.values()):
                return None
            self._devcd_next += 1
            name = f"devcd{self._devcd_next}"
            dev = self.sysfs / "devices" / "virtual" / "devcoredump" / name
            dev.mkdir(parents=True)
            (dev / "data").write_bytes(data)
            failing.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(failing, dev), dev / "failing_device")
            cls = self.sysfs / "class" / "devcoredump"
            cls.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(dev, cls), cls / name)
            if core is not None:
                os.symlink(os.path.relpath(dev, core.root), core.root / "devcoredump")
            self.devcds[name] = FakeDevcd(core, dev)
        self.uevent("devcoredump", "add", dev)
        return name

    def release_devcd(self, name: str) -> None:
        """The dump is deleted (dismissed, or its timeout)."""
        with self._lock:
            d = self.devcds.pop(name, None)
            if d is None:
                return
            self.dismissed.append(name)
            (self.sysfs / "class" / "devcoredump" / name).unlink()
            for p in d.path.iterdir():
                p.unlink()
            d.path.rmdir()
            if d.core is not None:
                (d.core.root / "devcoredump").unlink(missing_ok=True)
        self.uevent("devcoredump", "remove", d.path)
        d.released.set()


class HintSink:
    """What discovery does with a uevent, for a Processor without a Manager."""

    def __init__(self, proc: object) -> None:
        self.proc = proc

    def device_hint(self, subsystem: str, action: str, syspath: str) -> None:
        proc = self.proc
        if subsystem == "devcoredump":
            if action == "add" and devcoredump.owner(Path("/"), syspath) == proc.device:
                proc.devcoredump_added(Path(syspath).name)
            return
        if subsystem == "platform" and not Path(syspath).name.startswith("rproc-virtio."):
            return
        proc.hints([(subsystem, action, Path(syspath).name)])


def deliver(kernel: FakeKernel, sink: object, count: int | None = None) -> int:
    """Hand the oldest `count` (all) uevents to `sink.device_hint`, in order."""
    n = 0
    while kernel.uevents and (count is None or n < count):
        subsystem, action, path = kernel.uevents.pop(0)
        sink.device_hint(subsystem, action, path)
        n += 1
    return n


# -- GLib helpers -------------------------------------------------------------


def spin(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Run the default main context until `predicate()` holds."""
    ctx = GLib.MainContext.default()
    deadline = time.monotonic() + timeout
    wake = GLib.timeout_add(5, lambda: True)
    try:
        while not predicate():
            assert time.monotonic() < deadline, "timed out waiting on the main loop"
            ctx.iteration(True)
    finally:
        GLib.source_remove(wake)


def call(op: Callable, *args: object, timeout: float = 5.0) -> object:
    """Run an operation taking a `done(error)` callback; return the error (None = success)."""
    results: list[object] = []
    op(*args, results.append)
    spin(lambda: results, timeout)
    return results[0]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)


# -- the fake itself follows the ABI ------------------------------------------------


def test_start_on_running_only_adds_a_power_reference(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    core.write("state", "start\n")
    core.write("state", "stop\n")
    assert core.state == "running"
    core.write("state", "stop\n")
    assert core.state == "offline"


def test_firmware_is_writable_only_offline(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    with pytest.raises(OSError) as info:
        core.write("firmware", "x.elf\n")
    assert info.value.errno == errno.EBUSY


def test_start_makes_virtio_rpmsg_and_trace_with_uevents(kernel: FakeKernel) -> None:
    kernel.firmware.add("rproc-m4-fw")
    core = kernel.add_core(0, "m4")
    core.write("state", "start\n")
    assert [e[:2] for e in kernel.uevents] == [
        ("platform", "add"), ("virtio", "add"), ("rpmsg", "add")
    ]
    assert (core.debug_dir / "trace0").read_bytes().startswith(b"boot #1\n\0")
    core.write("state", "stop\n")
    assert [e[:2] for e in kernel.uevents[3:]] == [
        ("rpmsg", "remove"), ("virtio", "remove"), ("platform", "remove")
    ]
    assert not (core.debug_dir / "trace0").exists()


def test_crash_with_recovery_reuses_the_virtio_index_and_keeps_the_vdev(
    kernel: FakeKernel,
) -> None:
    kernel.firmware.add("rproc-m4-fw")
    core = kernel.add_core(0, "m4")
    core.write("state", "start\n")
    kernel.uevents.clear()
    assert core.report_crash() and core.state == "running" and core.crashes == 1
    assert [(s, a, Path(p).name) for s, a, p in kernel.uevents] == [
        ("rpmsg", "remove", "virtio0.rpmsg-tty.-1.1024"), ("virtio", "remove", "virtio0"),
        ("virtio", "add", "virtio0"), ("rpmsg", "add", "virtio0.rpmsg-tty.-1.1024"),
    ]
    assert "crash detected in m4: type watchdog" in kernel.klog[-1]


def test_crash_without_recovery_stays_and_a_second_report_is_ignored(
    kernel: FakeKernel,
) -> None:
    core = kernel.add_core(0, "m4", "running")
    core.write("recovery", "disabled\n")
    assert core.report_crash() and not core.report_crash()
    assert core.state == "crashed" and core.crashes == 1
    with pytest.raises(OSError) as info:
        core.write("coredump", "enabled\n")
    assert info.value.errno == errno.EBUSY
    with pytest.raises(OSError) as info:
        core.write("state", "stop\n")
    assert info.value.errno == errno.EINVAL
    core.write("recovery", "recover\n")
    assert core.state == "running"


def test_inline_dump_holds_the_recovery_until_dismissed(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    core.write("coredump", "inline\n")
    worker = core.report_crash_async()
    spin(lambda: kernel.devcds)
    assert core.state == "offline" and worker.is_alive()
    (name,) = kernel.devcds
    assert devcoredump.owner(kernel.sysfs, name) == "remoteproc0"
    assert devcoredump.read_all(kernel.sysfs, name) == DUMP
    assert devcoredump.dismiss(kernel.sysfs, name)
    worker.join(2)
    assert core.state == "running" and kernel.dismissed == [name]
    assert not (core.root / "devcoredump").exists()


def test_one_pending_dump_per_device(kernel: FakeKernel) -> None:
    core = kernel.add_core(0, "m4", "running")
    core.write("coredump", "enabled\n")
    core.report_crash()
    core.report_crash()
    assert list(kernel.devcds) == ["devcd1"] and core.crashes == 2
