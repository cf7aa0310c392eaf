"""A fake remoteproc kernel for the core's unit tests, and its own tests.

`FakeKernel` is a `FileOps`: the sysfs tree is real files in tmp_path (so
reads, listdir and walks work), and writes go through the ABI rules of
remoteproc-abi.md §1.3-§2 (gating, power reference count, errnos), with
knobs for failures and a write that blocks until released. The other
test_core_* and test_processor/test_manager modules import it.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gi.repository import GLib

from rprocd.sysfs import FileOps


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
        self.hang = threading.Event()  # set: the next state write blocks until released
        self.release = threading.Event()
        self.writes: list[tuple[str, str]] = []
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

    def set_state(self, state: str) -> None:
        self._set("state", state)

    # a crash reported by the "firmware"
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
            self._state_write(value)
        elif attr == "recovery":
            if value == "recover" and self.state == "crashed":
                self.set_state("running" if self.recovery_works else "offline")
            elif value in ("enabled", "disabled"):
                self._set("recovery", value)
            elif value != "recover":
                raise OSError(errno.EINVAL, "bad")
        elif attr == "coredump":
            if self.state == "crashed":
                raise OSError(errno.EBUSY, "busy")
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
                self.set_state("running")
                self.add_rpmsg("rpmsg-tty")
        elif command == "stop":
            if state not in ("running", "attached"):
                raise OSError(errno.EINVAL, "not running")
            self.power -= 1
            if self.power == 0:
                self.set_state("offline")
                for child in sorted(self.root.glob("rproc-virtio.*"), reverse=True):
                    for p in sorted(child.rglob("*"), reverse=True):
                        p.rmdir()
                    child.rmdir()
        elif command == "detach":
            if state != "attached" or not self.can_detach:
                raise OSError(errno.EINVAL, "cannot detach")
            self.power -= 1
            self.set_state("detached")
        else:
            raise OSError(errno.EINVAL, "Unrecognised option")


class FakeKernel(FileOps):
    def __init__(self, sysfs: Path, debugfs: Path) -> None:
        self.sysfs = sysfs
        self.debugfs = debugfs
        self.cores: dict[Path, FakeCore] = {}
        self.firmware: set[str] = set()
        self.class_dir = sysfs / "devices" / "platform"

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
            p.rmdir() if p.is_dir() else p.unlink()
        core.root.rmdir()

    def firmware_exists(self, name: str) -> bool:
        return name in self.firmware

    def write(self, path: Path, data: bytes) -> None:
        core = self.cores.get(path.parent)
        if core is None:
            raise OSError(errno.ENOENT, "no such file", str(path))
        core.write(path.name, data.decode())


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
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "sys", tmp_path / "debug")


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
