"""Crash types from the kernel log (`rprocd.kmsg`), with a FIFO standing in for
/dev/kmsg, and through a Processor's crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_core_fake_kernel import FakeKernel, call, spin
from test_crash import booted, rig

from rprocd import kmsg
from rprocd.coredump import CoredumpStore
from rprocd.crash import CrashServices
from rprocd.kmsg import KernelLog


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "kmsg"
    os.mkfifo(path)
    return path


def write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def test_records_in_kmsg_format_and_plain_lines(fifo: Path) -> None:
    klog = KernelLog(fifo)
    assert klog.active
    write(fifo, "3,1042,7700123,-;remoteproc remoteproc0: crash detected in m4: type watchdog\n"
                " SUBSYSTEM=remoteproc\n DEVICE=+remoteproc:remoteproc0\n"
                "6,1043,7700200,-;remoteproc remoteproc0: handling crash #1 in m4\n"
                "remoteproc remoteproc1: crash detected in m33: type fatal error\n")
    assert klog.take("remoteproc0", "m4") == "watchdog"
    assert klog.take("remoteproc0", "m4") is None  # once per crash
    assert klog.take("remoteproc1", "m33") == "fatal error"
    write(fifo, "remoteproc remoteproc2: crash detected in dsp: type mmufault\n")
    spin(lambda: klog._types)  # the GLib watch reads it too
    assert klog.take("remoteproc7", "dsp") == "mmufault"  # by name when the device differs
    klog.close()


def test_an_unreadable_log_leaves_the_types_unknown(tmp_path: Path) -> None:
    klog = KernelLog(tmp_path / "missing")
    assert not klog.active and klog.take("remoteproc0", "m4") is None
    (tmp_path / "file").write_text("crash detected in m4: type watchdog\n")
    assert not KernelLog(tmp_path / "file").active


def test_stale_lines_do_not_name_a_later_crash(
    fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    klog = KernelLog(fifo)
    write(fifo, "remoteproc remoteproc0: crash detected in m4: type watchdog\n")
    klog.drain()
    now = kmsg.time.monotonic()
    monkeypatch.setattr(kmsg.time, "monotonic", lambda: now + kmsg.FRESH + 1)
    assert klog.take("remoteproc0", "m4") is None
    klog.close()


def test_the_crash_carries_its_type(
    kernel: FakeKernel, tmp_path: Path, fifo: Path
) -> None:
    klog = KernelLog(fifo)
    services = CrashServices(kernel.sysfs, CoredumpStore(tmp_path / "dumps", 5), klog)
    r = rig(kernel, booted(kernel), tmp_path, services=services, restart="no")
    r.core.report_crash(kind=0)
    write(fifo, "\n".join(kernel.klog) + "\n")  # what the kernel logged, before the state
    r.proc.poll()
    assert r.props["LastCrashType"] == "mmufault"
    assert r.rec.crashes == [("mmufault", r.props["LastCrashTime"], "")]
    assert call(r.proc.recover) is None and r.props["LastCrashType"] == "mmufault"
    r.core.report_crash(kind=1)
    write(fifo, kernel.klog[-1] + "\n")
    r.proc.poll()
    assert r.props["LastCrashType"] == "watchdog" and r.props["CrashCount"] == 2
    klog.close()


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)
    k.firmware |= {"rproc-m4-fw"}
    return k
