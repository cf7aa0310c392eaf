"""devcoredump devices: ownership, complete reads with short reads, dismissal."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from rprocd import devcoredump
from rprocd.devcoredump import DumpTooLarge

CORE = "devices/platform/soc/10000000.m4/remoteproc/remoteproc0"
WIFI = "devices/pci0000:00/0000:00:14.3"


def make_devcd(sysfs: Path, name: str, failing: str, data: bytes = b"") -> Path:
    """`/sys/devices/virtual/devcoredump/<name>` with `data` and `failing_device`,
    and its `/sys/class/devcoredump/<name>` link, as the kernel lays them out."""
    (sysfs / failing).mkdir(parents=True, exist_ok=True)
    dev = sysfs / "devices" / "virtual" / "devcoredump" / name
    dev.mkdir(parents=True)
    (dev / "data").write_bytes(data)
    os.symlink(os.path.relpath(sysfs / failing, dev), dev / "failing_device")
    cls = sysfs / "class" / "devcoredump"
    cls.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(dev, cls), cls / name)
    return dev


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    make_devcd(root, "devcd1", CORE, b"\x7fELF" + bytes(range(256)) * 40)
    make_devcd(root, "devcd2", WIFI, b"wifi firmware secrets")
    return root


def test_owner_is_the_remoteproc_or_none(sysfs: Path) -> None:
    assert devcoredump.owner(sysfs, "devcd1") == "remoteproc0"
    assert devcoredump.owner(sysfs, "devcd2") is None
    assert devcoredump.owner(sysfs, "devcd99") is None  # gone
    syspath = str(sysfs / "devices" / "virtual" / "devcoredump" / "devcd1")
    assert devcoredump.owner(sysfs, syspath) == "remoteproc0"
    assert devcoredump.owner(sysfs, "devices/virtual/devcoredump/devcd1") == "remoteproc0"


def test_pending_for_scans_the_class_oldest_first(sysfs: Path) -> None:
    make_devcd(sysfs, "devcd10", "devices/platform/soc/0.m33/remoteproc/remoteproc1")
    make_devcd(sysfs, "devcd9", "devices/platform/soc/0.m33/remoteproc/remoteproc1")
    assert devcoredump.pending_for(sysfs, "remoteproc0") == ["devcd1"]
    assert devcoredump.pending_for(sysfs, "remoteproc1") == ["devcd9", "devcd10"]
    assert devcoredump.pending_for(sysfs, "remoteproc7") == []
    assert devcoredump.pending_for(sysfs / "nothing", "remoteproc0") == []


def test_read_all_loops_over_short_reads(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = (sysfs / "class/devcoredump/devcd1/data").read_bytes()
    real_read = os.read
    sizes = iter([64, 3, 1, 500, 7] * 1000)
    calls = []

    def short_read(fd: int, n: int) -> bytes:
        calls.append(n)
        return real_read(fd, min(n, next(sizes)))

    monkeypatch.setattr(os, "read", short_read)
    assert devcoredump.read_all(sysfs, "devcd1") == expected
    assert len(calls) > 10


def test_read_until_eof_from_a_file_reporting_size_zero(tmp_path: Path) -> None:
    """A FIFO: st_size 0 and reads return what is there, like the kernel's `data`."""
    sysfs = tmp_path / "sys"
    dev = make_devcd(sysfs, "devcd3", CORE)
    (dev / "data").unlink()
    os.mkfifo(dev / "data")
    payload = os.urandom(200_000)

    def writer() -> None:
        with open(dev / "data", "wb", buffering=0) as f:
            for i in range(0, len(payload), 4093):
                f.write(payload[i:i + 4093])

    t = threading.Thread(target=writer)
    t.start()
    assert os.stat(dev / "data").st_size == 0
    got = bytearray()
    assert devcoredump.copy_to(sysfs, "devcd3", got.extend) == len(payload)
    t.join()
    assert bytes(got) == payload


def test_limit_stops_the_read(sysfs: Path) -> None:
    with pytest.raises(DumpTooLarge) as info:
        devcoredump.read_all(sysfs, "devcd1", limit=1000)
    assert info.value.errno == errno.EFBIG


def test_dismiss_is_one_write_to_data(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[str, bytes]] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    assert devcoredump.dismiss(sysfs, "devcd1") is True
    data = sysfs / "devices/virtual/devcoredump/devcd1/data"
    assert writes == [(str(data), b"1")]


def test_dismiss_of_a_dump_already_gone_is_false(sysfs: Path) -> None:
    assert devcoredump.dismiss(sysfs, "devcd77") is False


def test_dismiss_tolerates_the_device_vanishing_under_the_write(
    sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(fd: int, data: bytes) -> int:
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(os, "write", gone)
    assert devcoredump.dismiss(sysfs, "devcd1") is False


def test_dismiss_raises_other_errors(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: object, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError):
        devcoredump.dismiss(sysfs, "devcd1")


def test_a_vanished_dump_reads_as_enoent(sysfs: Path) -> None:
    with pytest.raises(FileNotFoundError):
        devcoredump.read_all(sysfs, "devcd42")


def test_claims_take_each_dump_once(sysfs: Path) -> None:
    claims = devcoredump.Claims()
    assert claims.claim("devcd1") is True
    assert claims.claim("devcd1") is False
    assert claims.claim(str(sysfs / "devices/virtual/devcoredump/devcd1")) is False  # same dump
    assert claims.claim("devcd3") is True  # no such dump (any more)
    claims.forget_gone(sysfs)
    assert claims.claim("devcd1") is False  # still there: still taken
    assert claims.claim("devcd3") is True  # forgotten; its number never comes back anyway
