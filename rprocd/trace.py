"""The coprocessor's log: new lines of a trace buffer, forwarded to the journal.

The kernel gives no log stream, only the trace buffer's bytes (debugfs
`traceK`, ABI §4): "up to the first NUL, or the whole buffer". Firmware
writes it as a ring, in one of two ways:

- NUL after the text (OpenAMP/ST `log_buff`): a read shows the current lap
  only, from offset 0 to the write position. A wrap shows up as a shorter
  text that does not continue the previous one.
- no NUL (Zephyr `ram_console`, TI SysMin): once the first lap is done, a
  read returns the whole buffer and the write position is invisible; new
  text overwrites the oldest in place.

`TraceFollower` turns successive snapshots into the new complete lines. It
keeps the offset where the next unread byte goes; in the second mode the new
text runs from there to the last byte that differs from the previous
snapshot. Limits, inherent in the interface:
- NUL mode loses what was written between the last read of a lap and the
  wrap (read often; the loss is at most one interval's text).
- no-NUL mode cannot see bytes that rewrite identical bytes: a line whose
  end equals the old text at that spot comes out with the next change
  (late, never twice, never lost while less than one lap is written between
  two reads).
- a restart of the same firmware can look like more text: the owner calls
  `reset()` whenever the firmware (re)starts.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable

MAX_LINE = 4096  # a "line" without newline longer than this is emitted as it is
JOURNAL_SOCKET = "/run/systemd/journal/socket"

_UNAVAILABLE = re.compile(rb"^Trace .* not available\n?$")  # da_to_va failed (ABI §4)
_PRIORITY = re.compile(r"^<([0-7])>")
# Zephyr's log format: "[00:00:01.000,000] <err> module: text"
_ZEPHYR = re.compile(r"^(?:\[[^\]]*\]\s*)?<(err|wrn|inf|dbg)>")
_ZEPHYR_PRIORITY = {"err": 3, "wrn": 4, "inf": 6, "dbg": 7}
_LEVELS = (logging.CRITICAL, logging.CRITICAL, logging.CRITICAL, logging.ERROR,
           logging.WARNING, logging.INFO, logging.INFO, logging.DEBUG)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix (binary search over C-speed slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class TraceFollower:
    """New complete lines from successive snapshots of one trace buffer.

    `size` is the buffer's length if known (resource table); it only settles
    whether a full-length snapshot is a no-NUL ring. Not thread-safe: one
    owner feeds it (the core's poll timer and state changes)."""

    def __init__(self, size: int | None = None, max_line: int = MAX_LINE) -> None:
        self.size = size
        self.max_line = max_line
        self._prev = b""  # the last snapshot
        self._pos = 0  # buffer offset of the next unread byte
        self._pos_known = True
        self._ring = False  # full no-NUL buffer: the text after _pos is old
        self._pending = b""  # a line still waiting for its newline
        self._nul = False  # seen a NUL-mode wrap: this firmware keeps a NUL after its text

    def feed(self, snapshot: bytes) -> list[str]:
        """The lines completed since the last snapshot, oldest first."""
        cur = snapshot.split(b"\0", 1)[0]
        prev = self._prev
        if cur == prev or _UNAVAILABLE.match(cur):
            return []
        lines: list[str] = []
        if self._ring and len(cur) == len(prev):
            data = self._ring_step(cur, prev)
        elif cur.startswith(prev):  # more text (also: a ring we assumed was none)
            data = cur[len(prev):]
            self._pos, self._pos_known, self._ring = len(cur), True, False
        elif self._ring:  # the buffer was cleared: a restart we were not told of
            lines += self._take_pending()
            data = self._restart_at(cur)
        elif self._wrapped_in_place(cur, prev):
            self._ring = True
            data = self._ring_step(cur, prev.ljust(len(cur), b"\0"))
        else:  # NUL mode: a new lap from offset 0 (the pending line goes on in it)
            self._nul = self._nul or len(cur) < len(prev)
            data = self._restart_at(cur)
        self._prev = cur
        return lines + self._split(data)

    def reset(self) -> list[str]:
        """The firmware (re)started: its buffer starts afresh. Returns the
        unfinished last line of the previous run, which will get no newline."""
        lines = self._take_pending()
        self._prev, self._pos, self._pos_known, self._ring = b"", 0, True, False
        self._nul = False
        return lines

    def prime(self, snapshot: bytes) -> None:
        """Take `snapshot` as already seen (a core adopted after a daemon
        restart: its text was forwarded by the previous run)."""
        self.reset()
        self._prev = snapshot.split(b"\0", 1)[0]
        self._pos, self._pos_known = len(self._prev), False

    def text(self) -> bytes:
        """The last snapshot, oldest byte first: what to save at a crash."""
        if self._ring and self._prev:
            pos = self._pos % len(self._prev)
            return self._prev[pos:] + self._prev[:pos]
        return self._prev

    # -- internals --------------------------------------------------------

    def _wrapped_in_place(self, cur: bytes, prev: bytes) -> bool:
        """A no-NUL buffer finished a lap and went on over its start: the tail
        of the previous snapshot is still there (a NUL-mode wrap would hide it)."""
        p = len(prev)
        if p == 0 or len(cur) < p or self._nul:
            return False
        if self.size is not None:
            return len(cur) >= self.size - 1
        return len(cur) == p or cur[p - 1] == prev[p - 1]

    def _ring_step(self, cur: bytes, prev: bytes) -> bytes:
        n = len(cur)
        if self._pos_known:
            start = self._pos % n
        else:  # after prime(): the writer is where the first change is
            start = _common_prefix(cur, prev) % n
            self._pos_known = True
        a, b = cur[start:] + cur[:start], prev[start:] + prev[:start]
        changed = n - _common_suffix(a, b)
        self._pos = (start + changed) % n
        return a[:changed]

    def _restart_at(self, cur: bytes) -> bytes:
        self._ring = False
        self._pos, self._pos_known = len(cur), True
        return cur

    def _take_pending(self) -> list[str]:
        pending, self._pending = self._pending, b""
        return self._decode([pending])

    def _split(self, data: bytes) -> list[str]:
        if not data:
            return []
        *complete, rest = (self._pending + data).split(b"\n")
        if len(rest) > self.max_line:
            complete.append(rest)
            rest = b""
        self._pending = rest
        return self._decode(complete)

    @staticmethod
    def _decode(raw: Iterable[bytes]) -> list[str]:
        lines = (r.rstrip(b"\r").decode("utf-8", "replace") for r in raw)
        return [line for line in lines if line.strip()]


def parse_priority(line: str) -> tuple[int, str]:
    """(syslog priority, text): a leading `<N>` (0..7, sd-daemon style) is
    taken off; Zephyr's `<err>`/`<wrn>`/`<inf>`/`<dbg>` (after an optional
    `[timestamp]`) sets it and stays in the text; otherwise 6 (info)."""
    m = _PRIORITY.match(line)
    if m:
        return int(m.group(1)), line[m.end():]
    m = _ZEPHYR.match(line)
    if m:
        return _ZEPHYR_PRIORITY[m.group(1)], line
    return 6, line


@functools.lru_cache(maxsize=1)
def journal_sendv() -> Callable[..., object] | None:
    """`systemd.journal.sendv` when journald is there, else None (decided once)."""
    if not (os.environ.get("JOURNAL_STREAM") or os.path.exists(JOURNAL_SOCKET)):
        return None
    try:
        from systemd import journal
    except ImportError:
        return None
    return journal.sendv


def forward(
    lines: Iterable[str],
    core: str,
    device: str,
    sendv: Callable[..., object] | None = None,
) -> None:
    """Send firmware lines to the journal as the core's own messages
    (`journalctl -t m4`, `journalctl RPROC_NAME=m4`), or, without journald,
    through `logging` ("rprocd.trace.<core>") at the mapped level.

    `sendv` replaces the journal call (tests)."""
    send = sendv or journal_sendv()
    if send is not None:
        for line in lines:
            priority, text = parse_priority(line)
            send(f"MESSAGE={text}", f"PRIORITY={priority}", f"SYSLOG_IDENTIFIER={core}",
                 f"RPROC_NAME={core}", f"RPROC_DEVICE={device}")
        return
    logger = logging.getLogger(f"rprocd.trace.{core}")
    extra = {"RPROC_NAME": core, "RPROC_DEVICE": device}
    for line in lines:
        priority, text = parse_priority(line)
        logger.log(_LEVELS[priority], "%s: %s", core, text, extra=extra)
