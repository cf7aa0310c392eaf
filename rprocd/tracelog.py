"""One core's trace buffers followed while it runs: new lines to the journal,
the last text kept for the crash report.

The kernel offers no log stream, only the bytes of debugfs `traceK` (ABI §4),
so every buffer is read on the poll timer and on every refresh while the core
runs, and `trace.TraceFollower` turns the snapshots into new lines. They are
forwarded (TraceForward=yes) under the core's own identifier (`journalctl -t
m4`), with the priority the line carries (`<3>`, Zephyr's `<err>`).

At a crash the last text matters most: the buffer is read one last time while
the kernel still has it (state `crashed`, or `offline` while its recovery
waits for an inline dump), and when the kernel recovered before we looked,
the text of the previous read is what is left (the new run rewrites the
buffer). `text()` gives it, `restart()` then starts afresh, except for a
buffer already read in the next run (its lines were forwarded once).

Runs on the main loop: a debugfs read is a memory copy in the kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from . import trace
from .sysfs import CoreFiles

TAIL_LINES = 20  # lines of the last trace put into the crash's journal entry
#: A buffer that started over this recently may show the next run already:
#: the text before that is the crashed run's.
RESTART_WINDOW = 3.0


class TraceLog:
    def __init__(self, files: CoreFiles, name: str, device: str) -> None:
        self.files = files
        self.name = name
        self.device = device
        self.forwarding = True  # TraceForward=
        self.sendv: Callable[..., object] | None = None  # replaces journal.sendv (tests)
        self._followers: dict[str, trace.TraceFollower] = {}
        self._raw: dict[str, bytes] = {}  # last snapshot per buffer (up to its NUL)
        self._before: dict[str, tuple[float, bytes]] = {}  # text before the last start-over

    def read(self, buffers: Iterable[str]) -> bool:
        """Feed the current content of `buffers`; forward the lines completed since.
        True if a buffer started over (a wrap, or the next run already)."""
        started_over = False
        for buffer in buffers:
            data = self._snapshot(buffer)
            if data is None:
                continue
            follower = self._follower(buffer)
            cur, last = data.split(b"\0", 1)[0], self._raw.get(buffer, b"")
            if last and not cur.startswith(last) and len(cur) != len(last):
                # started over: a wrap, or the next run (a recovery we have not
                # seen yet): keep what was there for the crash report
                self._before[buffer] = (time.monotonic(), follower.text())
                started_over = True
            self._raw[buffer] = cur
            self._emit(follower.feed(data))
        return started_over

    def prime(self, buffers: Iterable[str]) -> None:
        """Take what `buffers` hold as already forwarded (a core adopted after a
        daemon restart: the previous run of the daemon sent it)."""
        for buffer in buffers:
            data = self._snapshot(buffer)
            if data is not None:
                self._follower(buffer).prime(data)
                self._raw[buffer] = data.split(b"\0", 1)[0]

    def restart(self, recovered: bool = False) -> None:
        """The firmware (re)started: every buffer starts afresh. The unfinished last
        line of the previous run goes out as it is.

        `recovered`: the kernel restarted it after a crash, perhaps before we
        noticed; a buffer seen starting over within `RESTART_WINDOW` was read
        in the next run already: its follower goes on as it is (its lines went
        out; a reset would forward them again)."""
        now = time.monotonic()
        for name, follower in self._followers.items():
            before = self._before.get(name)
            if recovered and before is not None and now - before[0] < RESTART_WINDOW:
                continue
            self._emit(follower.reset())
            self._raw.pop(name, None)
        self._before.clear()

    def stopped(self) -> None:
        """The buffers are gone (stop, detach): flush and forget them."""
        self.restart()
        self._raw.clear()
        self._followers.clear()

    def text(self, recovered: bool = False) -> bytes | None:
        """The last text read, oldest byte first (None if nothing was ever read).
        Several buffers are put one after the other under `==> traceK <==`.

        `recovered`: the kernel restarted the firmware before we saw the crash,
        so a buffer that started over within `RESTART_WINDOW` shows the next run:
        its text from before is taken."""
        now = time.monotonic()
        texts = []
        for name, follower in self._sorted():
            text = follower.text()
            before = self._before.get(name)
            if recovered and before is not None and now - before[0] < RESTART_WINDOW:
                text = before[1]
            if text:
                texts.append((name, text))
        if not texts:
            return None
        if len(texts) == 1:
            return texts[0][1]
        parts = []
        for name, text in texts:
            end = b"" if text.endswith(b"\n") else b"\n"
            parts.append(f"==> {name} <==\n".encode() + text + end)
        return b"".join(parts)

    def tail(self, lines: int = TAIL_LINES, recovered: bool = False) -> str:
        """The last `lines` lines of `text()`, for the crash's journal entry."""
        text = self.text(recovered)
        if not text:
            return ""
        kept = [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    # -- internals -----------------------------------------------------------

    def _snapshot(self, buffer: str) -> bytes | None:
        try:
            return self.files.read_trace(buffer)
        except OSError:  # gone meanwhile (stop, driver unbind) or no debugfs
            return None

    def _follower(self, buffer: str) -> trace.TraceFollower:
        follower = self._followers.get(buffer)
        if follower is None:
            follower = self._followers[buffer] = trace.TraceFollower()
        return follower

    def _sorted(self) -> list[tuple[str, trace.TraceFollower]]:
        return sorted(self._followers.items(), key=lambda kv: (len(kv[0]), kv[0]))

    def _emit(self, lines: list[str]) -> None:
        if lines and self.forwarding:
            trace.forward(lines, self.name, self.device, sendv=self.sendv)
