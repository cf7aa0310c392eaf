"""rpmsg channels under a core, both sysfs layouts, re-read every time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rprocd import rpmsg
from rprocd.rpmsg import Channel

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


def test_new_layout_rproc_virtio(sysfs: Path) -> None:
    core = sysfs / DEVICE
    vdev = add(core, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio0.rpmsg-tty.-1.1024")
    add(vdev, "virtio0.rpmsg-tty.-1.1025")  # ST's example: two ttys, one name
    add(vdev, "virtio0.rpmsg_ctrl.0.0")
    add(vdev, "virtio0.rpmsg_ns.53.53")
    add(vdev, "power")
    os.symlink("../../../../../../../bus/virtio/drivers/virtio_rpmsg_bus", vdev / "driver")
    assert rpmsg.channels(sysfs, "remoteproc0") == ["rpmsg-tty", "rpmsg-tty"]
    assert rpmsg.find(sysfs, "remoteproc0") == [
        Channel("rpmsg-tty", "virtio0.rpmsg-tty.-1.1024", -1, 1024),
        Channel("rpmsg-tty", "virtio0.rpmsg-tty.-1.1025", -1, 1025),
    ]
    internal = [c.name for c in rpmsg.find(sysfs, "remoteproc0", internal=True)]
    assert internal == ["rpmsg-tty", "rpmsg-tty", "rpmsg_ctrl", "rpmsg_ns"]


def test_old_layout_vdev_buffer(sysfs: Path) -> None:
    vdev = add(sysfs / DEVICE, "remoteproc0#vdev0buffer", "virtio3")
    add(vdev, "virtio3.rpmsg-client-sample.-1.1024")
    add(vdev, "virtio3.rpmsg-raw.1025.-1")
    assert rpmsg.channels(sysfs, "remoteproc0") == ["rpmsg-client-sample", "rpmsg-raw"]


def test_names_with_dots_and_several_vdevs(sysfs: Path) -> None:
    core = sysfs / DEVICE
    add(core, "rproc-virtio.0.auto", "virtio4", "virtio4.my.service.v2.-1.1030")
    add(core, "rproc-virtio.1.auto", "virtio5", "virtio5.audio.-1.1031")
    assert rpmsg.channels(sysfs, "remoteproc0") == ["audio", "my.service.v2"]


def test_paths_are_accepted_in_every_form(sysfs: Path) -> None:
    add(sysfs / DEVICE, "rproc-virtio.0.auto", "virtio0", "virtio0.rpmsg-tty.-1.1024")
    link = str(sysfs / "class/remoteproc/remoteproc0")
    for where in ("remoteproc0", DEVICE, sysfs / DEVICE, link):
        assert rpmsg.channels(sysfs, where) == ["rpmsg-tty"]


def test_foreign_and_malformed_entries_are_ignored(sysfs: Path) -> None:
    core = sysfs / DEVICE
    vdev = add(core, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio1.rpmsg-tty.-1.1024")  # another vdev's name: not a child of this one
    add(vdev, "virtio0.noaddr")
    (vdev / "virtio0.file.-1.5").write_text("a file, not a device")
    add(core, "something-else", "virtio9", "virtio9.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.0.auto", "not-virtio", "not-virtio.x.-1.1")
    assert rpmsg.channels(sysfs, "remoteproc0") == []


def test_exclude_a_device_being_removed(sysfs: Path) -> None:
    vdev = add(sysfs / DEVICE, "rproc-virtio.0.auto", "virtio0")
    add(vdev, "virtio0.rpmsg-tty.-1.1024")
    add(vdev, "virtio0.rpmsg-tty.-1.1025")
    assert rpmsg.channels(sysfs, "remoteproc0", exclude="virtio0.rpmsg-tty.-1.1025") == [
        "rpmsg-tty"]


def test_every_call_reads_sysfs_again_across_a_recovery(sysfs: Path) -> None:
    core = sysfs / DEVICE
    parent = add(core, "rproc-virtio.0.auto")
    add(parent, "virtio0", "virtio0.rpmsg-tty.-1.1024")
    assert rpmsg.channels(sysfs, "remoteproc0") == ["rpmsg-tty"]
    shutil.rmtree(parent / "virtio0")  # crash recovery: virtio removed ...
    assert rpmsg.channels(sysfs, "remoteproc0") == []
    add(parent, "virtio1", "virtio1.rpmsg-tty.-1.1024")  # ... and added again
    assert rpmsg.find(sysfs, "remoteproc0")[0].device == "virtio1.rpmsg-tty.-1.1024"


def test_missing_core_is_empty(sysfs: Path) -> None:
    assert rpmsg.channels(sysfs, "remoteproc9") == []


def test_directories_vanishing_during_the_walk(
    sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = sysfs / DEVICE
    add(core, "rproc-virtio.0.auto", "virtio0", "virtio0.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.1.auto", "virtio1", "virtio1.rpmsg-tty.-1.1024")
    add(core, "rproc-virtio.2.auto", "virtio2", "virtio2.rpmsg-tty.-1.1024")
    real_scandir = os.scandir

    class Listed(list):  # type: ignore[type-arg]
        def __enter__(self):  # type: ignore[no-untyped-def]
            return iter(self)

        def __exit__(self, *exc: object) -> None:
            pass

    def racing(path):  # type: ignore[no-untyped-def]
        if isinstance(path, str) and path.endswith("rproc-virtio.0.auto"):
            shutil.rmtree(path)  # gone before we enter it
        if isinstance(path, str) and path.endswith("rproc-virtio.1.auto"):
            with real_scandir(path) as it:
                entries = Listed(it)
            shutil.rmtree(Path(path) / "virtio1")  # gone after it was listed
            return entries
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", racing)
    assert [c.device for c in rpmsg.find(sysfs, "remoteproc0")] == ["virtio2.rpmsg-tty.-1.1024"]
