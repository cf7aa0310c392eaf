"""devcoredump devices (`/sys/class/devcoredump/devcdM`) of remote processors.

Why these rules (ABI §3.6):
- `data` reports size 0 and returns short reads (the headers alone in inline
  mode): read with `os.read` until it returns 0, never trust `st_size`.
- Writing anything to `data` deletes the dump. Until then the kernel drops
  every further dump of the same core, and in inline mode its recovery waits:
  read fast, then dismiss, on every path (also when saving failed).
- Other drivers (Wi-Fi, GPU) use devcoredump too: a dump whose
  `failing_device` is not a `remoteprocN` is never read nor dismissed.

`devcd` arguments are a device name (`devcd3`, under `<sysfs>/class/devcoredump`)
or its syspath. Everything here blocks (file I/O): call it off the main loop,
and never on the thread that writes `recover` (inline mode would deadlock).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

CHUNK = 64 * 1024
_REMOTEPROC = re.compile(r"^remoteproc\d+$")
_DEVCD = re.compile(r"^devcd(\d+)$")


class DumpTooLarge(OSError):
    """The dump grew past the caller's limit (EFBIG); what was read is partial."""

    def __init__(self, devcd: str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"devcoredump larger than {limit} bytes", devcd)


def path(sysfs: Path, devcd: str | os.PathLike[str]) -> Path:
    """`devcdM` -> `<sysfs>/class/devcoredump/devcdM`; a path is taken as it is
    (relative ones under `sysfs`)."""
    text = os.fspath(devcd)
    if "/" not in text:
        return sysfs / "class" / "devcoredump" / text
    return Path(text) if os.path.isabs(text) else sysfs / text


def owner(sysfs: Path, devcd: str | os.PathLike[str]) -> str | None:
    """The `remoteprocN` this dump belongs to, or None (another device's dump,
    or the dump is already gone): only then may it be read and dismissed."""
    try:
        target = os.readlink(path(sysfs, devcd) / "failing_device")
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name if _REMOTEPROC.match(name) else None


def pending_for(sysfs: Path, device: str) -> list[str]:
    """The dumps of `device` (`remoteprocN`) present now, oldest first.

    For a crash whose devcoredump uevent was missed (daemon restart, monitor
    overflow). There is normally at most one (the kernel keeps one per device)."""
    base = sysfs / "class" / "devcoredump"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for name in names:
        m = _DEVCD.match(name)
        if m and owner(sysfs, name) == device:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def copy_to(
    sysfs: Path,
    devcd: str | os.PathLike[str],
    write: Callable[[bytes], object],
    limit: int | None = None,
) -> int:
    """Stream the whole dump into `write` (chunks as the kernel returns them);
    returns the byte count. `DumpTooLarge` past `limit` bytes; `OSError` as the
    kernel or `write` raised it (ENOENT: the dump expired or was dismissed)."""
    fd = os.open(path(sysfs, devcd) / "data", os.O_RDONLY | os.O_CLOEXEC)
    total = 0
    try:
        while chunk := os.read(fd, CHUNK):
            total += len(chunk)
            if limit is not None and total > limit:
                raise DumpTooLarge(os.fspath(devcd), limit)
            write(chunk)
    finally:
        os.close(fd)
    return total


def read_all(sysfs: Path, devcd: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The whole dump in memory (small cores; see `copy_to` for streaming)."""
    buf = bytearray()
    copy_to(sysfs, devcd, buf.extend, limit)
    return bytes(buf)


def dismiss(sysfs: Path, devcd: str | os.PathLike[str]) -> bool:
    """Release the dump (one write to `data`); False if it was already gone.

    devcd numbers are never reused, so a late second call cannot hit another
    dump. Other errors (EACCES: not root) are raised."""
    try:
        fd = os.open(path(sysfs, devcd) / "data", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise
    finally:
        os.close(fd)
    return True


class Claims:
    """The dumps this daemon has taken, so each is collected once.

    Why: the kernel deletes a dismissed dump asynchronously (a work item), so
    a scan right after `dismiss` may still list it, and the `add` uevent of a
    dump may arrive after a `pending_for` scan took it. devcd numbers are
    never reused, so the name identifies a dump for the whole boot.
    Thread-safe (the main loop claims, the coredump thread may too)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, devcd: str | os.PathLike[str]) -> bool:
        """True the first time a dump is claimed, False ever after."""
        name = os.path.basename(os.fspath(devcd).rstrip("/"))
        with self._lock:
            if name in self._taken:
                return False
            self._taken.add(name)
            return True

    def forget_gone(self, sysfs: Path) -> None:
        """Drop the names of dumps that no longer exist (bounded memory in a
        crash storm); safe because their numbers never come back."""
        with self._lock:
            self._taken = {n for n in self._taken if os.path.lexists(path(sysfs, n))}
