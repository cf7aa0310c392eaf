"""The emulated firmware: its behaviour script and what it does while running.

A test image scripts itself in the non-allocated ELF section `.rprocd_sim`
(HACKING.md "Firmware behaviour script"), so one file passes the kernel's
checks and says how long it boots, what it traces and whether it crashes.
While the emulated core runs, a FirmwareRun writes trace lines into the core's
memory (the trace buffer the image's own resource table declares), the way
OpenAMP firmware does: byte by byte, NUL after the last byte, wrapping to the
start when the buffer is full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

SECTION = b".rprocd_sim"


@dataclass(frozen=True)
class Behaviour:
    """Parsed `.rprocd_sim` script (defaults when a key or the section is absent)."""

    boot_ms: int = 20
    shutdown_ack_ms: int = 5
    trace_period_ms: int = 0
    trace: tuple[str, ...] = ()
    crash_after_ms: int = 0
    crash_type: int = 1
    rpmsg: tuple[str, ...] = ("rpmsg-tty",)


_INT_KEYS = ("boot_ms", "shutdown_ack_ms", "trace_period_ms", "crash_after_ms", "crash_type")


def parse_behaviour(raw: bytes | None) -> tuple[Behaviour, list[str]]:
    """Parse the section text (up to the first NUL); returns warnings for bad lines."""
    if raw is None:
        return Behaviour(), []
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    values: dict[str, object] = {}
    traces: list[str] = []
    warnings: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            warnings.append(f".rprocd_sim line {n}: no '=' in {line!r}")
        elif key == "trace":
            traces.append(value)
        elif key == "rpmsg":
            values["rpmsg"] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif key in _INT_KEYS:
            try:
                values[key] = int(value, 0)
            except ValueError:
                warnings.append(f".rprocd_sim line {n}: {key} is not a number: {value!r}")
        else:
            warnings.append(f".rprocd_sim line {n}: unknown key {key!r}")
    if traces:
        values["trace"] = tuple(traces)
    return Behaviour(**values), warnings  # type: ignore[arg-type]


class Timers(Protocol):
    """The emulated hardware's timer service (kernel.Scheduler)."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> int: ...

    def cancel(self, handle: int) -> None: ...


class TraceRing:
    """OpenAMP-style trace buffer writer: wraps to offset 0, keeps a NUL after the text."""

    def __init__(self, write: Callable[[int, bytes], bool], da: int, size: int) -> None:
        self._write = write
        self.da = da
        self.size = size
        self.offset = 0

    def put(self, text: str) -> None:
        if self.size < 2:
            return
        # As ST's log_buff: wrap *before* writing, so a full lap stays
        # readable (up to its NUL) until the next byte is written.
        for ch in text.encode("utf-8", "replace"):
            if self.offset + 1 >= self.size:
                self.offset = 0
            self._write(self.da + self.offset, bytes((ch,)))
            self.offset += 1
            self._write(self.da + self.offset, b"\0")


class FirmwareRun:
    """One run of a firmware image on a core, from reset release to reset/crash."""

    def __init__(
        self,
        behaviour: Behaviour,
        label: str,
        timers: Timers,
        ring: TraceRing | None,
        on_crash: Callable[[int], None],
    ) -> None:
        self.behaviour = behaviour
        self.label = label
        self._timers = timers
        self._ring = ring
        self._on_crash = on_crash
        self._mu = threading.Lock()
        self._handles: dict[str, int] = {}
        self._counter = 0
        self.alive = False

    def start(self) -> None:
        """Reset released: print the banner, arm the trace ticker and the crash timer."""
        b = self.behaviour
        with self._mu:
            self.alive = True
        if self._ring is not None:
            self._ring.put(f"rprocd-sim: {self.label} booted\n")
        if b.trace_period_ms > 0 and self._ring is not None:
            self._arm("tick", b.trace_period_ms / 1000, self._tick)
        if b.crash_after_ms > 0:
            self._arm("crash", (max(b.boot_ms, 0) + b.crash_after_ms) / 1000, self._crash)

    def halt(self) -> None:
        """Reset asserted (or the firmware died): no more traces, no crash report."""
        with self._mu:
            self.alive = False
            handles, self._handles = self._handles, {}
        for h in handles.values():
            self._timers.cancel(h)

    def _arm(self, slot: str, delay: float, fn: Callable[[], None]) -> None:
        with self._mu:
            if self.alive:
                self._handles[slot] = self._timers.call_later(delay, fn)

    def _tick(self) -> None:
        with self._mu:
            if not self.alive:
                return
            self._counter += 1
            n = self._counter
        lines = self.behaviour.trace or ("tick %n",)
        line = lines[(n - 1) % len(lines)].replace("%n", str(n))
        if self._ring is not None:
            self._ring.put(line if line.endswith("\n") else line + "\n")
        self._arm("tick", self.behaviour.trace_period_ms / 1000, self._tick)

    def _crash(self) -> None:
        with self._mu:
            if not self.alive:
                return
        self.halt()
        self._on_crash(self.behaviour.crash_type)
