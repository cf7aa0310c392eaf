"""The rpmsg channels a core's firmware announced, read from sysfs now.

Why: applications need to know when `rpmsg-tty` & co. are there, and that
they are back after a recovery (users.md pain point 7). The kernel sends no
event on the core itself (ABI §3.7), only add/remove of the child devices,
and udev's attribute cache lags, so the tree is walked again every time:

    remoteprocN/rproc-virtio.K.auto/virtioM/virtioM.<name>.<src>.<dst>   (v6.1+)
    remoteprocN/remoteprocN#vdevKbuffer/virtioM/virtioM.<name>.<src>.<dst>  (≈v5.1-v6.0)

Directories vanish while we walk (stop, recovery): every level tolerates it.
Three fixed levels of `scandir`, no file reads: cheap on a Cortex-A7.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

# rpmsg device names are "%s.%s.%d.%d": virtio device, channel name, src, dst
# (RPMSG_ADDR_ANY prints as -1). The channel name may itself contain dots.
_RPMSG_DEVICE = re.compile(r"^(?P<vdev>virtio\d+)\.(?P<name>.+)\.(?P<src>-?\d+)\.(?P<dst>-?\d+)$")
_VDEV_PARENT = re.compile(r"^(rproc-virtio\.\d+(\.auto)?|remoteproc\d+#vdev\d+buffer)$")
_VIRTIO = re.compile(r"^virtio\d+$")

#: Devices the kernel creates itself on every rpmsg bus: not announced by the firmware.
INTERNAL = frozenset({"rpmsg_ns", "rpmsg_ctrl"})


class Channel(NamedTuple):
    name: str  # "rpmsg-tty"
    device: str  # "virtio0.rpmsg-tty.-1.1024"
    src: int
    dst: int


def _subdirs(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:  # gone (ENOENT), replaced (ENOTDIR), or unreadable
        return []


def core_dir(sysfs: Path, remoteproc: str | os.PathLike[str]) -> Path:
    """`remoteprocN` (a bare device name) -> `<sysfs>/class/remoteproc/remoteprocN`;
    an absolute path is used as it is, a relative one is taken under `sysfs`."""
    text = os.fspath(remoteproc)
    if "/" not in text:
        return sysfs / "class" / "remoteproc" / text
    return sysfs / text if not os.path.isabs(text) else Path(text)


def find(
    sysfs: Path, remoteproc: str | os.PathLike[str], internal: bool = False
) -> list[Channel]:
    """Every rpmsg device under the core, sorted by (name, dst, device).

    `internal` also returns the kernel's own `rpmsg_ns`/`rpmsg_ctrl` devices."""
    root = os.fspath(core_dir(sysfs, remoteproc))
    found: list[Channel] = []
    for parent in _subdirs(root):
        if not _VDEV_PARENT.match(parent.name):
            continue
        for vdev in _subdirs(parent.path):
            if not _VIRTIO.match(vdev.name):
                continue
            for dev in _subdirs(vdev.path):
                m = _RPMSG_DEVICE.match(dev.name)
                if not m or m.group("vdev") != vdev.name:
                    continue
                if not internal and m.group("name") in INTERNAL:
                    continue
                found.append(Channel(m.group("name"), dev.name, int(m.group("src")),
                                     int(m.group("dst"))))
    return sorted(found, key=lambda c: (c.name, c.dst, c.device))


def names(devices: Iterable[tuple[str, str]], exclude: Iterable[str] = ()) -> list[str]:
    """RpmsgChannels from the (virtio device, child directory) pairs of one walk
    of the core (`sysfs.CoreFiles.children`), the devices in `exclude` left out."""
    skip = set(exclude)
    found = []
    for vdev, dev in devices:
        m = _RPMSG_DEVICE.match(dev)
        if m and m.group("vdev") == vdev and m.group("name") not in INTERNAL \
                and dev not in skip:
            found.append(m.group("name"))
    return sorted(found)


def channels(sysfs: Path, remoteproc: str | os.PathLike[str], exclude: str = "") -> list[str]:
    """The RpmsgChannels property: channel names, sorted, one per device (ST's
    tty example announces `rpmsg-tty` twice: two entries, two /dev/ttyRPMSGx).

    `exclude` is a device whose `remove` uevent is being handled while its
    directory may still be visible."""
    return sorted(c.name for c in find(sysfs, remoteproc) if c.device != exclude)
