"""The FUSE filesystem that is the emulated `/sys`.

Mounted over the umockdev testbed's `sys` directory, it serves from memory:
directories, symlinks (`subsystem`, class and bus links, `driver`,
`device`...) and `SimFile`s with kernel semantics (sysfs and debugfs
attributes, `uevent`, devcoredump `data`, driver `bind`/`unbind`, the
emulator's control files).

Why FUSE: a write must reach the emulated kernel synchronously, block while
it works and fail with the exact errno; only a filesystem handler can do that.

Why the tree lives in memory and is never changed through the mount:
libfuse's high-level API locks the path of every operation in progress, so
removing a directory whose descendant is being written (a blocked `unbind`)
through the mount would wait for that write forever. Towards processes the
mount is sysfs, where nothing can be created, removed or renamed; the
emulator changes the tree directly.

Never touch the mount (or, with UMOCKDEV_DIR set, /sys) from this process
while holding the GIL: the request would wait for a handler that needs it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import posixpath
import shutil
import stat
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mfusepy

from rprocd.sim.interfaces import SimFile

log = logging.getLogger("rprocd.sim.vfs")

#: kernfs hands at most one page to a store handler and reports this size.
PAGE_SIZE = 4096


@dataclass
class _Dir:
    mode: int = 0o755
    entries: dict[str, _Node] = field(default_factory=dict)


@dataclass
class _Link:
    target: str


@dataclass
class _Attr:
    """A file whose reads and writes go to the emulated kernel."""

    simfile: SimFile


_Node = _Dir | _Link | _Attr


def split(path: str) -> list[str]:
    """`/a//b/` -> `['a', 'b']`."""
    return [p for p in path.split("/") if p and p != "."]


def _type_bits(node: _Node) -> int:
    if isinstance(node, _Dir):
        return stat.S_IFDIR
    return stat.S_IFLNK if isinstance(node, _Link) else stat.S_IFREG


class SimTree:
    """The in-memory tree, thread-safe: the emulated kernel changes it from its
    own threads while FUSE threads serve it."""

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._root = _Dir()
        #: top-level names left out of the root's listing (found by name only)
        self.hidden: set[str] = set()

    # -- the emulator's API ----------------------------------------------

    def add_file(self, path: str, simfile: SimFile) -> None:
        """Serve `simfile` at `path` (replacing what was there); missing
        parent directories are created."""
        *parents, name = split(path)
        with self._mutex:
            self._mkdirs(parents).entries[name] = _Attr(simfile)

    def add_dir(self, path: str) -> None:
        with self._mutex:
            self._mkdirs(split(path))

    def add_symlink(self, path: str, target: str) -> None:
        *parents, name = split(path)
        with self._mutex:
            self._mkdirs(parents).entries[name] = _Link(target)

    def remove(self, path: str) -> None:
        """Remove an entry, with everything under it; absent is fine."""
        *parents, name = split(path)
        with self._mutex:
            parent = self._lookup(parents)
            if isinstance(parent, _Dir):
                parent.entries.pop(name, None)

    def exists(self, path: str) -> bool:
        with self._mutex:
            return self._lookup(split(path)) is not None

    def listdir(self, path: str) -> list[str]:
        with self._mutex:
            node = self._lookup(split(path))
            return sorted(node.entries) if isinstance(node, _Dir) else []

    def link_target(self, path: str) -> str | None:
        """The text of the symlink at `path`, None if there is none."""
        with self._mutex:
            node = self._lookup(split(path))
            return node.target if isinstance(node, _Link) else None

    def replace(self, path: str, files: dict[str, SimFile]) -> None:
        """Swap the directory `path` for one holding `files` (relative paths);
        open files keep their old nodes."""
        new = _Dir()
        for relpath, simfile in files.items():
            *parents, name = split(relpath)
            node = new
            for part in parents:
                child = node.entries.get(part)
                if not isinstance(child, _Dir):
                    child = node.entries[part] = _Dir()
                node = child
            node.entries[name] = _Attr(simfile)
        *parents, name = split(path)
        with self._mutex:
            self._mkdirs(parents).entries[name] = new

    def dangling_links(self, path: str) -> list[str]:
        """Symlinks directly inside `path` whose target does not exist."""
        with self._mutex:
            node = self._lookup(split(path))
            if not isinstance(node, _Dir):
                return []
            found = []
            for name, child in node.entries.items():
                if isinstance(child, _Link):
                    target = posixpath.normpath(posixpath.join(path, child.target))
                    if self._lookup(split(target)) is None:
                        found.append(f"{path.rstrip('/')}/{name}")
            return found

    # -- internals (call with the mutex held) -----------------------------

    def _mkdirs(self, parts: list[str]) -> _Dir:
        node = self._root
        for part in parts:
            child = node.entries.get(part)
            if not isinstance(child, _Dir):
                child = node.entries[part] = _Dir()
            node = child
        return node

    def _lookup(self, parts: list[str]) -> _Node | None:
        node: _Node = self._root
        for part in parts:
            if not isinstance(node, _Dir):
                return None
            found = node.entries.get(part)
            if found is None:
                return None
            node = found
        return node

    def lookup(self, path: str) -> _Node:
        with self._mutex:
            node = self._lookup(split(path))
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    @property
    def mutex(self) -> threading.RLock:
        return self._mutex


@dataclass
class _Handle:
    node: _Attr
    path: str
    content: bytes | None = None
    mutex: threading.Lock = field(default_factory=threading.Lock)


def _refuse(code: int) -> Callable[..., int]:
    def refuse(self: SimFS, *_args: Any) -> int:
        raise mfusepy.FuseOSError(code)

    return refuse


class SimFS(mfusepy.Operations):
    """FUSE operations over a `SimTree`.

    Like sysfs: nothing can be created, removed or renamed, and opening a
    file for an access its mode does not grant fails with EACCES, even for
    root (kernfs checks at open).
    """

    use_ns = True

    def __init__(self, tree: SimTree) -> None:
        self.tree = tree
        #: tree path -> callable run before any lookup below it, for
        #: directories that follow someone else's state
        self.refreshers: dict[str, Callable[[], None]] = {}
        self.mounted = threading.Event()
        #: tracebacks of emulator bugs hit inside handlers (answered with EIO)
        self.internal_errors: list[str] = []
        self._handles: dict[int, _Handle] = {}
        self._handles_mutex = threading.Lock()
        self._fh_counter = itertools.count(1)
        self._time_ns = time.time_ns()

    # -- helpers ----------------------------------------------------------

    def _call(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """Run a kernel handler: an OSError is its answer, anything else a bug."""
        try:
            return func(*args)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            text = f"{what}: {traceback.format_exc()}"
            self.internal_errors.append(text)
            log.error("emulated kernel bug in %s", text)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def _handle(self, fh: int) -> _Handle:
        with self._handles_mutex:
            handle = self._handles.get(fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return handle

    # -- lifecycle --------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        """No caching in the kernel: every lookup, stat and read comes here,
        since entries and contents change behind the kernel's back."""
        if config_3 is not None:
            config_3.entry_timeout = 0.0
            config_3.negative_timeout = 0.0
            config_3.attr_timeout = 0.0
            config_3.direct_io = 1
            config_3.hard_remove = 1
            # Our own inode numbers (glibc's readdir skips entries whose
            # d_ino is 0; and the root's must not be 1, which is how
            # umockdev_in_mock_environment() recognises the real sysfs).
            config_3.use_ino = 1
        self.mounted.set()

    # -- metadata ---------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        for prefix, refresh in list(self.refreshers.items()):
            if path == prefix or path.startswith(prefix + "/"):
                self._call(f"refresh {prefix}", refresh)
        node = self.tree.lookup(path)
        if isinstance(node, _Dir):
            mode, size, nlink = stat.S_IFDIR | node.mode, 0, 2
        elif isinstance(node, _Link):
            mode, size, nlink = stat.S_IFLNK | 0o777, len(node.target), 1
        else:
            mode, size, nlink = stat.S_IFREG | (node.simfile.mode & 0o7777), PAGE_SIZE, 1
        t = self._time_ns
        return {
            "st_ino": id(node),
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_uid": 0,
            "st_gid": 0,
            "st_atime": t,
            "st_mtime": t,
            "st_ctime": t,
        }

    def readlink(self, path: str) -> str:
        node = self.tree.lookup(path)
        if not isinstance(node, _Link):
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.target

    def readdir(self, path: str, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        node = self.tree.lookup(path)
        if not isinstance(node, _Dir):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        with self.tree.mutex:
            entries = sorted(node.entries.items())
        if path == "/":
            entries = [(n, e) for n, e in entries if n not in self.tree.hidden]
        dots = [(".", {"st_ino": id(node), "st_mode": stat.S_IFDIR}),
                ("..", {"st_ino": id(node) + 1, "st_mode": stat.S_IFDIR})]
        return [(name, attrs, 0) for name, attrs in dots] + [
            (name, {"st_ino": id(child), "st_mode": _type_bits(child)}, 0)
            for name, child in entries
        ]

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": PAGE_SIZE, "f_namemax": 255}

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        return 0  # `touch` of an attribute is harmless in sysfs too

    # sysfs has no way to create, remove or rename anything
    create = _refuse(errno.EACCES)
    mkdir = _refuse(errno.EPERM)
    rmdir = _refuse(errno.EPERM)
    unlink = _refuse(errno.EPERM)
    symlink = _refuse(errno.EPERM)
    rename = _refuse(errno.EPERM)
    link = _refuse(errno.EPERM)
    mknod = _refuse(errno.EPERM)
    chmod = _refuse(errno.EPERM)
    chown = _refuse(errno.EPERM)

    # -- data -------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        node = self.tree.lookup(path)
        if isinstance(node, _Dir):
            raise mfusepy.FuseOSError(errno.EISDIR)
        if not isinstance(node, _Attr):
            raise mfusepy.FuseOSError(errno.EINVAL)
        access = flags & os.O_ACCMODE
        simfile = node.simfile
        if access in (os.O_WRONLY, os.O_RDWR) and (
            not simfile.mode & 0o222 or simfile.write is None
        ):
            raise mfusepy.FuseOSError(errno.EACCES)
        if access in (os.O_RDONLY, os.O_RDWR) and (
            not simfile.mode & 0o444 or simfile.read is None
        ):
            raise mfusepy.FuseOSError(errno.EACCES)
        fh = next(self._fh_counter)
        with self._handles_mutex:
            self._handles[fh] = _Handle(node, path)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        read = handle.node.simfile.read
        assert read is not None
        # Like seq_file: the content is produced at offset 0 and kept for the
        # rest of this open file, so a reader sees one consistent value.
        with handle.mutex:
            if offset == 0 or handle.content is None:
                handle.content = bytes(self._call(f"read {handle.path}", read))
            content = handle.content
        return content[offset : offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        if not data:
            return 0  # a zero-length write never reaches the store handler
        write = handle.node.simfile.write
        assert write is not None
        # One handler call per write(2), offset ignored, as in sysfs.
        return int(self._call(f"write {handle.path}", write, bytes(data)))

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        return 0  # `>` opens with O_TRUNC, which sysfs ignores

    def release(self, path: str, fh: int) -> int:
        with self._handles_mutex:
            self._handles.pop(fh, None)
        return 0


class Mount:
    """A `SimFS` mounted at `mountpoint`, served by FUSE threads of this process."""

    def __init__(self, fs: SimFS, mountpoint: str) -> None:
        self.fs = fs
        self.mountpoint = mountpoint
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Mount; return once the kernel talks to us (FUSE INIT answered).

        Install Python handlers for SIGTERM/SIGHUP before: libfuse takes over
        any of SIGINT/SIGTERM/SIGHUP whose handler is still SIG_DFL.
        """
        self._thread = threading.Thread(
            target=self._serve, name=f"fuse:{self.mountpoint}", daemon=True
        )
        cwd = os.getcwd()
        self._thread.start()
        mounted = self.fs.mounted.wait(timeout)
        with contextlib.suppress(OSError):
            os.chdir(cwd)  # libfuse's fuse_main changes the process's cwd to /
        if not mounted:
            raise RuntimeError(f"FUSE mount at {self.mountpoint} did not come up in {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"FUSE mount at {self.mountpoint} failed: {self._error}")

    def _serve(self) -> None:
        try:
            mfusepy.FUSE(
                self.fs,
                self.mountpoint,
                foreground=True,
                nothreads=False,
                allow_other=True,
                default_permissions=True,
                fsname="rprocd-sim",
                subtype="rprocd-sim",
                # blocked writes hold a thread each (libfuse 3.14 caps at 10)
                max_threads=128,
                max_idle_threads=8,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            self.fs.mounted.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Unmount (lazily if something still holds it) and join the FUSE thread."""
        if self._thread is None:
            return
        if is_mounted(self.mountpoint):
            env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
            tool = shutil.which("fusermount3") or "fusermount3"
            done = subprocess.run([tool, "-u", self.mountpoint], env=env, capture_output=True)
            if done.returncode != 0:
                log.warning(
                    "unmounting %s failed (%s); detaching it lazily",
                    self.mountpoint,
                    done.stderr.decode(errors="replace").strip(),
                )
                subprocess.run([tool, "-u", "-z", self.mountpoint], env=env, capture_output=True)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the FUSE thread of %s did not exit", self.mountpoint)
        self._thread = None


def is_mounted(mountpoint: str) -> bool:
    """Whether `mountpoint` is in this namespace's mount table."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == mountpoint for line in mounts if line.strip())
