"""ImportStore: images handed over as file descriptors by unprivileged callers."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from rprocd.errors import InvalidArgs, InvalidFirmware
from rprocd.firmware import imports, resolve
from rprocd.firmware.imports import ImportStore
from tests.unit.test_firmware_images import M4, good_image


@pytest.fixture
def fw_root(tmp_path) -> Path:
    root = tmp_path / "lib" / "firmware"
    root.mkdir(parents=True)
    return root


def store(fw_root: Path, **kwargs) -> ImportStore:
    return ImportStore(fw_root / "rprocd", [fw_root / "updates", fw_root], **kwargs)


def fd_of(tmp_path: Path, data: bytes, name: str = "src.elf") -> int:
    path = tmp_path / name
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_import_returns_a_name_the_search_path_resolves(tmp_path, fw_root):
    data = good_image().data
    fd = fd_of(tmp_path, data)
    try:
        os.read(fd, 100)  # the caller's file position does not matter
        name = store(fw_root).import_fd(fd, "build/app.elf", M4)
    finally:
        os.close(fd)
    assert name == "rprocd/app.elf"
    path = resolve(name, [fw_root / "updates", fw_root])
    assert path == fw_root / "rprocd" / "app.elf"
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in (fw_root / "rprocd").iterdir()] == ["app.elf"]


def test_invalid_image_is_refused_and_not_stored(tmp_path, fw_root):
    fd = fd_of(tmp_path, good_image(table=b"").data)
    try:
        with pytest.raises(InvalidFirmware) as exc:
            store(fw_root).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)
    assert str(exc.value).startswith("m4: firmware 'app.elf' was not imported: ")
    assert "RequireResourceTable=no" in str(exc.value)
    assert not (fw_root / "rprocd" / "app.elf").exists()


def test_too_large_stops_reading(tmp_path, fw_root):
    fd = fd_of(tmp_path, good_image().data + bytes(5000))
    try:
        with pytest.raises(InvalidArgs, match="too large"):
            store(fw_root, max_size=4096).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["pipe", "socket", "directory"])
def test_only_regular_files(tmp_path, fw_root, kind):
    if kind == "pipe":
        r, w = os.pipe()
        fds = [r, w]
        fd = r
    elif kind == "socket":
        a, b = socket.socketpair()
        fds = []
        fd = a.fileno()
    else:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        fds = [fd]
    try:
        with pytest.raises(InvalidArgs, match=f"is a {kind}"):
            store(fw_root).import_fd(fd, "app.elf", M4)
    finally:
        for f in fds:
            os.close(f)
        if kind == "socket":
            a.close()
            b.close()


def test_write_only_descriptor(tmp_path, fw_root):
    path = tmp_path / "x.elf"
    path.write_bytes(good_image().data)
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(InvalidArgs, match="cannot be read"):
            store(fw_root).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)


def test_read_deadline(tmp_path, fw_root, monkeypatch):
    fd = fd_of(tmp_path, good_image().data)
    clock = iter([0.0, 100.0, 200.0])

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return next(clock)

    monkeypatch.setattr(imports, "time", FakeTime)
    try:
        with pytest.raises(InvalidArgs, match="took more than"):
            store(fw_root, read_timeout=5).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["", "../x.elf", "/etc/passwd", "dir/", "a/.hidden", "a\nb"])
def test_bad_names(tmp_path, fw_root, name):
    fd = fd_of(tmp_path, good_image().data)
    try:
        with pytest.raises(InvalidArgs):
            store(fw_root).import_fd(fd, name, M4)
    finally:
        os.close(fd)


def test_import_directory_outside_search_path(tmp_path, fw_root):
    fd = fd_of(tmp_path, good_image().data)
    try:
        with pytest.raises(InvalidArgs, match="ImportDirectory="):
            ImportStore(tmp_path / "elsewhere", [fw_root]).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)


def test_shadowed_by_an_earlier_search_directory(tmp_path, fw_root):
    shadow = fw_root / "updates" / "rprocd"
    shadow.mkdir(parents=True)
    (shadow / "app.elf").write_bytes(b"old")
    fd = fd_of(tmp_path, good_image().data)
    try:
        with pytest.raises(InvalidArgs, match="would load it instead"):
            store(fw_root).import_fd(fd, "app.elf", M4)
    finally:
        os.close(fd)


def test_keeps_the_newest(tmp_path, fw_root):
    s = store(fw_root, keep=3)
    data = good_image().data
    for i in range(5):
        fd = fd_of(tmp_path, data)
        try:
            s.import_fd(fd, f"app{i}.elf", M4)
        finally:
            os.close(fd)
        stamp = time.time() - 100 + i
        os.utime(fw_root / "rprocd" / f"app{i}.elf", (stamp, stamp))
    (fw_root / "rprocd" / ".import-stale.tmp").write_bytes(b"x")
    fd = fd_of(tmp_path, data)
    try:
        s.import_fd(fd, "app1.elf", M4)  # re-import: becomes the newest
    finally:
        os.close(fd)
    assert sorted(p.name for p in (fw_root / "rprocd").iterdir()) == [
        "app1.elf", "app3.elf", "app4.elf"]


def test_without_target(tmp_path, fw_root):
    fd = fd_of(tmp_path, good_image().data)
    try:
        assert store(fw_root).import_fd(fd, "app.elf", None) == "rprocd/app.elf"
    finally:
        os.close(fd)
