"""sysfs access: one write(2), exact errno, fresh reads, gone devices, children."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from rprocd.sysfs import CoreFiles, DeviceGone, FileOps


@pytest.fixture
def core(tmp_path: Path) -> CoreFiles:
    root = tmp_path / "sys" / "devices" / "platform" / "10000000.m4" / "remoteproc" / "remoteproc0"
    root.mkdir(parents=True)
    (root / "state").write_text("offline\n")
    (root / "name").write_text("m4\n")
    (root / "firmware").write_text("")  # sysfs has no O_TRUNC semantics to rely on
    return CoreFiles(root, "remoteproc0", tmp_path / "debug")


def test_reads_strip_the_newline_and_see_every_change(core: CoreFiles) -> None:
    assert core.state() == "offline"
    (core.root / "state").write_text("running\n")
    assert core.state() == "running"


def test_write_is_one_write_call_with_a_newline(
    core: CoreFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = os.write

    def spy(fd: int, data: bytes) -> int:
        calls.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", spy)
    core.write_attr("firmware", "a.elf")
    assert calls == [b"a.elf\n"]
    assert (core.root / "firmware").read_text() == "a.elf\n"


def test_short_write_is_an_error(core: CoreFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "write", lambda fd, data: len(data) - 1)
    with pytest.raises(OSError) as info:
        core.write_attr("firmware", "a.elf")
    assert info.value.errno == errno.EIO


def test_the_kernels_errno_reaches_the_caller(core: CoreFiles) -> None:
    class Refusing(FileOps):
        def write(self, path: Path, data: bytes, dir_fd: int | None = None) -> None:
            raise OSError(errno.EBUSY, "Device or resource busy")

    core.ops = Refusing()
    with pytest.raises(OSError) as info:
        core.write_attr("firmware", "a.elf")
    assert info.value.errno == errno.EBUSY


def test_missing_attribute_versus_gone_device(core: CoreFiles) -> None:
    assert core.read_optional("fw_format") == ""  # an ST-only attribute
    with pytest.raises(OSError):
        core.read_attr("fw_format")
    for entry in core.root.iterdir():
        entry.unlink()
    core.root.rmdir()
    with pytest.raises(DeviceGone):
        core.state()
    with pytest.raises(DeviceGone):
        core.read_optional("recovery")


def test_trace_buffers_in_numeric_order(core: CoreFiles) -> None:
    assert core.trace_buffers() == []  # no debugfs
    debug = core.debug_dir
    debug.mkdir(parents=True)
    for name in ("trace1", "trace10", "trace0", "recovery", "traceX"):
        (debug / name).write_text("")
    assert core.trace_buffers() == ["trace0", "trace1", "trace10"]


def test_platform_device_and_driver(core: CoreFiles) -> None:
    assert core.platform_device() == ("10000000.m4", "")
    os.symlink("../../bus/platform/drivers/stm32-rproc", core.root.parent.parent / "driver")
    assert core.platform_device() == ("10000000.m4", "stm32-rproc")
