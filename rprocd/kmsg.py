"""Crash types from the kernel log: the only place the kernel names them.

`rproc_report_crash()` logs `remoteproc remoteprocN: crash detected in <name>:
type <type>` (ABI §3.1) before its crash work sets `crashed`, so by the time
the daemon sees the crash the line is in the log buffer: `take()` reads
whatever is pending before answering, and the type goes with the crash.

`/dev/kmsg` gives one record per read(2), `pri,seq,usec,flags;text` plus
` KEY=value` continuation lines; it is opened non-blocking at its end and
watched on the GLib loop (one wake-up per kernel message, a regex on a short
string). A FIFO of plain lines works too (the emulator's kernel log). When the
file cannot be opened (the shipped unit's ProtectKernelLogs=/PrivateDevices=,
not root, no such file) the types stay "unknown" and this says so once.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections import deque
from pathlib import Path

from gi.repository import GLib

from .crash import CrashTypes

log = logging.getLogger("rprocd")

DEFAULT = Path("/dev/kmsg")
#: A crash line older than this when the crash is seen belongs to no crash we saw.
FRESH = 60.0

_HEADER = re.compile(r"^\d+,\d+,\d+,[^;]*;")
_CRASH = re.compile(
    r"(?:(?P<dev>remoteproc\d+): )?crash detected in (?P<name>.+?): type (?P<type>.+?)\s*$"
)


class KernelLog(CrashTypes):
    def __init__(self, path: Path = DEFAULT) -> None:
        self.path = path
        self._fd = -1
        self._watch = 0
        self._buf = b""
        self._types: dict[str, deque[tuple[float, str]]] = {}
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.info("crash types unknown: cannot read the kernel log %s (%s); "
                     "LastCrashType stays 'unknown'", path, exc.strerror)
            return
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            os.close(fd)  # read-write: no end of file when the writer closes
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        elif stat.S_ISCHR(mode):
            try:
                os.lseek(fd, 0, os.SEEK_END)  # /dev/kmsg: from now on
            except OSError:
                pass
        else:
            os.close(fd)
            log.info("crash types unknown: %s is not a character device or a FIFO", path)
            return
        self._fd = fd
        self._watch = GLib.unix_fd_add_full(
            GLib.PRIORITY_DEFAULT, fd, GLib.IOCondition.IN, self._readable
        )

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def take(self, device: str, name: str) -> str | None:
        """The oldest fresh type reported for this core (by device, else by name);
        the others reported with it are the kernel repeating itself: dropped."""
        self.drain()
        found = None
        now = time.monotonic()
        for key in (device, name):
            queue = self._types.pop(key, None)
            if found is None and queue:
                fresh = [t for when, t in queue if now - when < FRESH]
                found = fresh[0] if fresh else None
        return found

    def drop(self, device: str, name: str, before: float) -> None:
        """Forget the types of this core read up to `before` (repeats of an ended
        crash); later ones stay for the next crash."""
        for key in (device, name):
            queue = self._types.get(key)
            if queue is None:
                continue
            while queue and queue[0][0] <= before:
                queue.popleft()
            if not queue:
                del self._types[key]

    def drain(self) -> None:
        """Read every record pending now (non-blocking)."""
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    continue
                log.warning("reading the kernel log %s failed (%s); crash types are unknown "
                            "from now on", self.path, exc.strerror)
                self.close()
                return
            if not chunk:
                return
            self._feed(chunk)

    def feed_line(self, line: str) -> None:
        """One kernel log line (text after the record header)."""
        m = _CRASH.search(line)
        if m is None:
            return
        entry = (time.monotonic(), m.group("type"))
        for key in filter(None, (m.group("dev"), m.group("name"))):
            self._types.setdefault(key, deque(maxlen=8)).append(entry)

    def close(self) -> None:
        if self._watch:
            GLib.source_remove(self._watch)
            self._watch = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _readable(self, _fd: int, _condition: GLib.IOCondition) -> bool:
        self.drain()
        return GLib.SOURCE_CONTINUE if self._fd >= 0 else GLib.SOURCE_REMOVE

    def _feed(self, chunk: bytes) -> None:
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        if len(self._buf) > 65536:  # no newline in sight: not a log
            self._buf = b""
        for raw in lines:
            if raw.startswith(b" ") or b"crash detected in " not in raw:
                continue  # a record's KEY=value lines, or another message
            line = raw.decode("utf-8", "replace")
            self.feed_line(_HEADER.sub("", line, count=1))
