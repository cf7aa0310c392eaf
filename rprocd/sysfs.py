"""One core's kernel files: sysfs attributes, child devices, debugfs.

Writes are one `os.open` + one `os.write` (the kernel acts on each write(2);
a buffered file would retry a short write and report errors only at close),
and the exact `OSError` reaches the caller, who maps its errno. Reads open the
file again every time, because sysfs serves a fresh value only from offset 0,
and take one read(2) unless it fills the buffer: sysfs and debugfs hand out
the whole value at once, and a second read costs a kernel round trip (on a
"raw" attribute it may even return the next value instead of EOF).

Files are opened relative to a directory fd of the core (`openat`), held
while the core lives: resolving the full path costs one lookup per
component on every access (`/sys/devices/platform/soc/X/remoteproc/
remoteprocN/state` is seven), which the poll would repeat every second.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

T = TypeVar("T")

# A read of one of these means the device went away under us.
GONE_ERRNOS = (errno.ENOENT, errno.ENODEV)

_TRACE = re.compile(r"^trace\d+$")
# The platform device of a vdev resource (v6.1+: rproc-virtio.K[.auto]; before:
# remoteprocN#vdevKbuffer) and the virtio device under it (ABI §1.1, §3.7).
_VDEV_PARENT = re.compile(r"^(rproc-virtio\.\d+(\.auto)?|remoteproc\d+#vdev\d+buffer)$")
_VIRTIO = re.compile(r"^virtio\d+$")


class DeviceGone(Exception):
    """The core's sysfs directory disappeared (driver unbound)."""


_CHUNK = 65536
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FileOps:
    """The system calls, one place to replace them with a fake in tests.

    `path` is always the full path; `dir_fd`, when given, is an open fd of
    `path.parent`, and the file is opened by its name relative to it (fewer
    lookups). A fake may ignore `dir_fd`."""

    def read(self, path: Path, dir_fd: int | None = None) -> bytes:
        if dir_fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(path.name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            chunk = os.read(fd, _CHUNK)
            if len(chunk) < _CHUNK:  # sysfs/debugfs: the whole value in one read
                return chunk
            chunks = [chunk]
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes, dir_fd: int | None = None) -> None:
        if dir_fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        else:
            fd = os.open(path.name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)", str(path))

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)


class Children(NamedTuple):
    """The device directories under a core, from one walk (ABI §1.1, §3.7)."""

    # rproc-virtio.0.auto, ...: made when a boot handles the resource table,
    # removed at stop/detach, kept through a recovery
    vdev_parents: list[str]
    virtio: list[str]  # virtio0, ...: removed and made again by every recovery
    devices: list[tuple[str, str]]  # (virtio device, child directory): rpmsg devices


def _scan_fd(fd: int) -> list[str]:
    """Names of the subdirectories of the open directory `fd` (rewound each time)."""
    with os.scandir(fd) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


def _scan_at(dir_fd: int, name: str) -> tuple[int, list[str]] | None:
    """Open `name` under `dir_fd` and list its subdirectories: (its fd, names);
    None when it vanished meanwhile (stop, recovery). The caller closes the fd."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return fd, _scan_fd(fd)
    except OSError:
        os.close(fd)
        return None


class CoreFiles:
    """The files of `remoteprocN`: `root` is its sysfs directory.

    Used by the main loop and the core's worker thread. The directory fds are
    opened once; one that went stale (the directory removed and created again
    under the same name) is replaced, the old one kept open until `close()`
    because the other thread may be using it."""

    def __init__(self, root: Path, device: str, debugfs: Path, ops: FileOps | None = None) -> None:
        self.root = root
        self.device = device
        self.debug_dir = debugfs / "remoteproc" / device
        self.ops = ops or FileOps()
        self._root_fd: int | None = None
        self._debug_fd: int | None = None  # main loop only (trace buffers)
        self._retired: list[int] = []
        self._absent: set[str] = set()  # optional attributes this device lacks
        self._lock = threading.Lock()

    # -- directory fds -------------------------------------------------------

    def _dir(self, fresh: bool = False) -> int | None:
        """The fd of `root` (None if it cannot be opened: the path is used then)."""
        fd = self._root_fd
        if fd is not None and not fresh:
            return fd
        with self._lock:
            if self._root_fd is not fd:  # the other thread replaced it already
                return self._root_fd
            try:
                new = os.open(self.root, _DIR_FLAGS)
            except OSError:
                return None
            if fd is not None:
                self._retired.append(fd)
            self._root_fd = new
            self._absent.clear()  # another directory now: look again
            return new

    def _at(self, call: Callable[[int | None], T]) -> T:
        """`call(dir_fd)`; `DeviceGone` if the name is missing because the core's
        directory is gone; once more with a fresh fd if ours went stale."""
        fd = self._dir()
        try:
            return call(fd)
        except OSError as exc:
            if exc.errno not in GONE_ERRNOS:
                raise
            if not self._stale(fd):
                raise
        return call(self._dir(fresh=True))

    def _stale(self, fd: int | None) -> bool:
        """After ENOENT: `DeviceGone` if `root` is gone; True if `fd` is not `root`
        any more (removed and created again); False: the file itself is missing."""
        try:
            now = os.stat(self.root)
        except OSError:
            now = None
        if now is None or not stat.S_ISDIR(now.st_mode):
            raise DeviceGone(self.device)
        if fd is None:
            return False
        try:
            held = os.fstat(fd)
        except OSError:
            return True
        return (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino)

    def close(self) -> None:
        """The core is gone: release the directory fds."""
        with self._lock:
            fds = [*self._retired, self._root_fd, self._debug_fd]
            self._retired, self._root_fd, self._debug_fd = [], None, None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- sysfs attributes --------------------------------------------------

    def read_attr(self, attr: str) -> str:
        """An attribute's value without its newline; `DeviceGone` if the core is gone."""
        path = self.root / attr
        data = self._at(lambda fd: self.ops.read(path, dir_fd=fd))
        return data.decode("utf-8", "replace").rstrip("\n")

    def read_optional(self, attr: str) -> str:
        """An attribute that older or mainline kernels lack (`fw_format`, `recovery`): "" then.

        A missing one is remembered (a device's attributes are made with it),
        so it costs no lookup at every refresh."""
        if attr in self._absent:
            return ""
        try:
            return self.read_attr(attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self._absent.add(attr)
            if exc.errno in (*GONE_ERRNOS, errno.EACCES, errno.EPERM):
                return ""
            raise

    def state(self) -> str:
        return self.read_attr("state")

    def write_attr(self, attr: str, value: str) -> None:
        """One write(2) of `value` + newline; raises the kernel's OSError as is."""
        data = (value + "\n").encode("utf-8", "surrogateescape")
        path = self.root / attr
        fd = self._dir()
        try:
            self.ops.write(path, data, dir_fd=fd)
        except OSError as exc:
            # Only a stale fd is retried (the open failed: nothing was written).
            # A gone core keeps its plain OSError here: callers map its errno.
            try:
                stale = exc.errno == errno.ENOENT and self._stale(fd)
            except DeviceGone:
                stale = False
            if not stale:
                raise
            self.ops.write(path, data, dir_fd=self._dir(fresh=True))

    def present(self) -> bool:
        return os.path.isdir(self.root)

    # -- child devices -----------------------------------------------------

    def children(self) -> Children:
        """vdev platform devices, virtio devices and their child devices, in one
        walk (each directory listed once); [] for what vanished meanwhile."""
        parents: list[str] = []
        virtio: list[str] = []
        devices: list[tuple[str, str]] = []
        fd = self._dir()
        if fd is None:  # the core's directory cannot be opened: it has none now
            return Children([], [], [])
        try:
            names = _scan_fd(fd)
        except OSError:
            names = []
        for parent in sorted(n for n in names if _VDEV_PARENT.match(n)):
            parents.append(parent)
            scanned = _scan_at(fd, parent)
            if scanned is None:
                continue
            pfd, vnames = scanned
            try:
                for vdev in sorted(n for n in vnames if _VIRTIO.match(n)):
                    virtio.append(vdev)
                    inner = _scan_at(pfd, vdev)
                    if inner is None:
                        continue
                    os.close(inner[0])
                    devices += ((vdev, name) for name in inner[1])
            finally:
                os.close(pfd)
        return Children(parents, sorted(virtio), devices)

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

    # -- debugfs (main loop only) ---------------------------------------------

    def trace_buffers(self) -> list[str]:
        """`trace0`, `trace1`, ... present now (debugfs; none while stopped or without debugfs).

        The directory is opened by its path each time (it goes with the core)
        and its fd kept for the trace reads until the next listing."""
        if type(self.ops).listdir is not FileOps.listdir:  # a fake lists by path
            try:
                names = self.ops.listdir(self.debug_dir)
            except OSError:
                return []
        else:
            try:
                fd = os.open(self.debug_dir, _DIR_FLAGS)
            except OSError:
                self._set_debug_fd(None)
                return []
            self._set_debug_fd(fd)
            try:
                names = os.listdir(fd)
            except OSError:
                return []
        return sorted((n for n in names if _TRACE.match(n)), key=lambda n: int(n[5:]))

    def _set_debug_fd(self, fd: int | None) -> None:
        old, self._debug_fd = self._debug_fd, fd
        if old is not None:
            os.close(old)

    def read_trace(self, buffer: str) -> bytes:
        path = self.debug_dir / buffer
        fd = self._debug_fd
        if fd is not None:
            try:
                return self.ops.read(path, dir_fd=fd)
            except OSError:
                pass  # gone, or our fd went stale: the path tells
        return self.ops.read(path)
