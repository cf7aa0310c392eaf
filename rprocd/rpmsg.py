"""The rpmsg channels a core's firmware announced, from its child devices.

Why: applications need to know when `rpmsg-tty` & co. are there, and that
they are back after a recovery (users.md pain point 7). The kernel sends no
event on the core itself (ABI §3.7), only add/remove of the child devices,
and udev's attribute cache lags, so the tree is read from sysfs again
(`sysfs.CoreFiles.children`, one walk for every kind of child):

    remoteprocN/rproc-virtio.K.auto/virtioM/virtioM.<name>.<src>.<dst>   (v6.1+)
    remoteprocN/remoteprocN#vdevKbuffer/virtioM/virtioM.<name>.<src>.<dst>  (≈v5.1-v6.0)

This module turns the directory names of that walk into channel names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# rpmsg device names are "%s.%s.%d.%d": virtio device, channel name, src, dst
# (RPMSG_ADDR_ANY prints as -1). The channel name may itself contain dots.
_RPMSG_DEVICE = re.compile(r"^(?P<vdev>virtio\d+)\.(?P<name>.+)\.(?P<src>-?\d+)\.(?P<dst>-?\d+)$")

#: Devices the kernel creates itself on every rpmsg bus: not announced by the firmware.
INTERNAL = frozenset({"rpmsg_ns", "rpmsg_ctrl"})


def names(devices: Iterable[tuple[str, str]], exclude: Iterable[str] = ()) -> list[str]:
    """The RpmsgChannels property from the (virtio device, child directory)
    pairs of one walk of the core: channel names, sorted, one per device (ST's
    tty example announces `rpmsg-tty` twice: two entries, two /dev/ttyRPMSGx).

    `exclude` holds devices whose `remove` uevent is being handled while their
    directories may still be visible."""
    skip = set(exclude)
    found = []
    for vdev, dev in devices:
        m = _RPMSG_DEVICE.match(dev)
        if m and m.group("vdev") == vdev and m.group("name") not in INTERNAL \
                and dev not in skip:
            found.append(m.group("name"))
    return sorted(found)
