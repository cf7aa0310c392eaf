"""rpmsg channels under a core, both sysfs layouts, re-read every time: the
one walk of `CoreFiles.children` and the names `rpmsg.names` makes of it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rprocd import rpmsg
from rprocd.sysfs import CoreFiles

DEVICE = "devices/platform/soc/10000000.m4/remoteproc/remoteproc0"


def add(core: Path, *parts: str) -> Path:
    path = core.joinpath(*parts)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    core = root / DEVICE
    core.mkdir(parents=True)
    (core / "state").write_text("running\n")
    (core / "power").mkdir()
    cls = root / "class" / "remoteproc"
    cls.mkdir(parents=True)
    os.symlink(os.path.relpath(core, cls), cls / "remoteproc0")
    return root


@pytest.fixture
def files(sysfs: Path) -> Iterator[CoreFiles]:
    """The core as the daemon holds it: through its /sys/class link."""
    core = CoreFiles(sysfs / "class/remoteproc/remoteproc0", "remoteproc0", sysfs / "debug")
    yield core
    core.close()


def channels(files: CoreFiles, exclude: tuple[str, ...] = ()) -> list[str]:
    return rpmsg.names(files.children().devices, exclude)


def test_new_layout_rproc_virtio(sysfs: Path, files: CoreFiles) -> None:
    core = sysfs / DEVICE
    vdev = add(core, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio0.rpmsg-tty.-1.1024")
    add(vdev, "virtio0.rpmsg-tty.-1.1025")  # ST's example: two ttys, one name
    add(vdev, "virtio0.rpmsg_ctrl.0.0")
    add(vdev, "virtio0.rpmsg_ns.53.53")
    add(vdev, "power")
    os.symlink("../../../../../../../bus/virtio/drivers/virtio_rpmsg_bus", vdev / "driver")
    children = files.children()
    assert children.vdev_parents == ["rproc-virtio.0.auto"] and children.virtio == ["virtio0"]
    assert sorted(dev for _, dev in children.devices) == [
        "power", "virtio0.rpmsg-tty.-1.1024", "virtio0.rpmsg-tty.-1.1025",
        "virtio0.rpmsg_ctrl.0.0", "virtio0.rpmsg_ns.53.53"]
    # the kernel's own rpmsg_ctrl/rpmsg_ns are not channels the firmware announced
    assert channels(files) == ["rpmsg-tty", "rpmsg-tty"]


def test_old_layout_vdev_buffer(sysfs: Path, files: CoreFiles) -> None:
    vdev = add(sysfs / DEVICE, "remoteproc0#vdev0buffer", "virtio3")
    add(vdev, "virtio3.rpmsg-client-sample.-1.1024")
    add(vdev, "virtio3.rpmsg-raw.1025.-1")
    assert channels(files) == ["rpmsg-client-sample", "rpmsg-raw"]


def test_names_with_dots_and_several_vdevs(sysfs: Path, files: CoreFiles) -> None:
    core = sysfs / DEVICE
    add(core, "rproc-virtio.0.auto", "virtio4", "virtio4.my.service.v2.-1.1030")
    add(core, "rproc-virtio.1.auto", "virtio5", "virtio5.audio.-1.1031")
    assert files.children().virtio == ["virtio4", "virtio5"]
    assert channels(files) == ["audio", "my.service.v2"]


def test_the_device_path_reads_the_same(sysfs: Path) -> None:
    add(sysfs / DEVICE, "rproc-virtio.0.auto", "virtio0", "virtio0.rpmsg-tty.-1.1024")
    core = CoreFiles(sysfs / DEVICE, "remoteproc0", sysfs / "debug")
    try:
        assert channels(core) == ["rpmsg-tty"]
    finally:
        core.close()


def test_foreign_and_malformed_entries_are_ignored(sysfs: Path, files: CoreFiles) -> None:
    core = sysfs / DEVICE
    vdev = add(core, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio1.rpmsg-tty.-1.1024")  # another vdev's name: not a child of this one
    add(vdev, "virtio0.noaddr")
    (vdev / "virtio0.file.-1.5").write_text("a file, not a device")
    add(core, "something-else", "virtio9", "virtio9.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.0.auto", "not-virtio", "not-virtio.x.-1.1")
    assert files.children().virtio == ["virtio0"]
    assert channels(files) == []


def test_exclude_a_device_being_removed(sysfs: Path, files: CoreFiles) -> None:
    vdev = add(sysfs / DEVICE, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio0.rpmsg-tty.-1.1024")
    add(vdev, "virtio0.rpmsg-tty.-1.1025")
    assert channels(files, exclude=("virtio0.rpmsg-tty.-1.1025",)) == ["rpmsg-tty"]


def test_every_call_reads_sysfs_again_across_a_recovery(sysfs: Path, files: CoreFiles) -> None:
    core = sysfs / DEVICE
    parent = add(core, "rproc-virtio.0.auto")
    add(parent, "virtio0", "virtio0.rpmsg-tty.-1.1024")
    assert channels(files) == ["rpmsg-tty"]
    shutil.rmtree(parent / "virtio0")  # crash recovery: virtio removed ...
    assert channels(files) == [] and files.children().vdev_parents == ["rproc-virtio.0.auto"]
    add(parent, "virtio1", "virtio1.rpmsg-tty.-1.1024")  # ... and added again
    assert files.children().devices == [("virtio1", "virtio1.rpmsg-tty.-1.1024")]


def test_missing_core_has_no_children(sysfs: Path) -> None:
    core = CoreFiles(sysfs / "class/remoteproc/remoteproc9", "remoteproc9", sysfs / "debug")
    assert core.children() == ([], [], [])


def test_directories_vanishing_during_the_walk(
    sysfs: Path, files: CoreFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = sysfs / DEVICE
    add(core, "rproc-virtio.0.auto", "virtio0", "virtio0.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.1.auto", "virtio1", "virtio1.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.2.auto", "virtio2", "virtio2.rpmsg-tty.-1.1024")
    files.children()  # the core's directory fd is open before the race
    real_open = os.open

    def racing(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if path == "rproc-virtio.0.auto":
            shutil.rmtree(core / path)  # gone after the core was listed
        if path == "virtio1":
            shutil.rmtree(core / "rproc-virtio.1.auto" / path)  # gone after its parent was
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing)
    assert files.children().devices == [("virtio2", "virtio2.rpmsg-tty.-1.1024")]
