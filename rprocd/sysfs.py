"""One core's kernel files: sysfs attributes, child devices, debugfs.

Writes are one `os.open` + one `os.write` (the kernel acts on each write(2);
a buffered file would retry a short write and report errors only at close),
and the exact `OSError` reaches the caller, who maps its errno. Reads open the
file again every time, because sysfs serves a fresh value only from offset 0.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# A read of one of these means the device went away under us.
GONE_ERRNOS = (errno.ENOENT, errno.ENODEV)

_TRACE = re.compile(r"^trace\d+$")
# The platform device of a vdev resource (v6.1+: rproc-virtio.K[.auto]; before:
# remoteprocN#vdevKbuffer) and the virtio device under it (ABI §1.1, §3.7).
_VDEV_PARENT = re.compile(r"^(rproc-virtio\.\d+(\.auto)?|remoteproc\d+#vdev\d+buffer)$")
_VIRTIO = re.compile(r"^virtio\d+$")


def _subdirs(path: str | Path) -> list[os.DirEntry[str]]:
    """Subdirectories of `path`, [] when it vanished meanwhile (stop, recovery)."""
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


class DeviceGone(Exception):
    """The core's sysfs directory disappeared (driver unbound)."""


class FileOps:
    """The system calls, one place to replace them with a fake in tests."""

    def read(self, path: Path) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)", str(path))

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)


class CoreFiles:
    """The files of `remoteprocN`: `root` is its sysfs directory."""

    def __init__(self, root: Path, device: str, debugfs: Path, ops: FileOps | None = None) -> None:
        self.root = root
        self.device = device
        self.debug_dir = debugfs / "remoteproc" / device
        self.ops = ops or FileOps()

    # -- sysfs attributes --------------------------------------------------

    def read_attr(self, attr: str) -> str:
        """An attribute's value without its newline; `DeviceGone` if the core is gone."""
        try:
            return self.ops.read(self.root / attr).decode("utf-8", "replace").rstrip("\n")
        except OSError as exc:
            if exc.errno in GONE_ERRNOS and not self.present():
                raise DeviceGone(self.device) from exc
            raise

    def read_optional(self, attr: str) -> str:
        """An attribute that older or mainline kernels lack (`fw_format`, `recovery`): "" then."""
        try:
            return self.read_attr(attr)
        except OSError as exc:
            if exc.errno in (*GONE_ERRNOS, errno.EACCES, errno.EPERM):
                return ""
            raise

    def state(self) -> str:
        return self.read_attr("state")

    def write_attr(self, attr: str, value: str) -> None:
        """One write(2) of `value` + newline; raises the kernel's OSError as is."""
        self.ops.write(self.root / attr, (value + "\n").encode("utf-8", "surrogateescape"))

    def present(self) -> bool:
        return os.path.isdir(self.root)

    # -- child devices -----------------------------------------------------

    def vdev_parents(self) -> list[str]:
        """The vdev platform devices under the core (`rproc-virtio.0.auto`): created
        when a boot handles the resource table, removed at stop/detach, kept
        through a boot recovery (ABI §3.7)."""
        return sorted(e.name for e in _subdirs(self.root) if _VDEV_PARENT.match(e.name))

    def virtio_devices(self) -> list[str]:
        """The virtio devices (`virtio0`, ...) under the core's vdevs now: removed
        and created again by every recovery."""
        found = []
        for parent in _subdirs(self.root):
            if _VDEV_PARENT.match(parent.name):
                found += (e.name for e in _subdirs(parent.path) if _VIRTIO.match(e.name))
        return sorted(found)

    def platform_device(self) -> tuple[str, str]:
        """(platform device, driver) owning the core, for the 'rebind the driver' advice."""
        parent = self.root.parent
        if parent.name == "remoteproc":  # <platform device>/remoteproc/remoteprocN
            parent = parent.parent
        try:
            driver = os.path.basename(os.readlink(parent / "driver"))
        except OSError:
            driver = ""
        return parent.name, driver

    # -- debugfs -----------------------------------------------------------

    def trace_buffers(self) -> list[str]:
        """`trace0`, `trace1`, ... present now (debugfs; none while stopped or without debugfs)."""
        try:
            names = self.ops.listdir(self.debug_dir)
        except OSError:
            return []
        return sorted((n for n in names if _TRACE.match(n)), key=lambda n: int(n[5:]))

    def read_trace(self, buffer: str) -> bytes:
        return self.ops.read(self.debug_dir / buffer)
