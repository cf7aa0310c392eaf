"""Crash detection (issue 5): from the emulated kernel's crash to `Crashed`,
with uevent hints and without, next to PollIntervalSec.

Two cores of the generic board run m4-good.elf (which has a virtio device):
- core0, Restart=kernel: the kernel recovers the core and removes the run's
  virtio devices, whose uevent is the hint;
- core1, Restart=on-crash: the kernel's recovery is off, so the kernel says
  nothing (no uevent) and only the poll sees `crashed`; rprocd then recovers it.
The crash is `echo 1 > .../crash` (rproc_report_crash) from the baseline
shell, stamped just before its write; the signal is stamped on arrival. A
random pause before each crash spreads the crashes over the poll period.
"""

from __future__ import annotations

import random
import time

from .common import (
    Bus,
    Figure,
    Signals,
    Stats,
    board,
    debugfs,
    processor_path,
    shell,
    wait_property,
)

POLL = 1.0  # PollIntervalSec: the default
HINT_RUNS = 20
POLL_RUNS = 12
CONFIG = f"""[Manager]
PollIntervalSec={POLL:g}s
[Processor *]
StartLimitBurst=0
[Processor core0]
Restart=kernel
[Processor core1]
Restart=on-crash
RestartSec=0
"""


def _latencies(sim, bus: Bus, sh, signals: Signals, core: str, runs: int,
               spread: float) -> list[float]:
    device = bus.get(core, "Device")
    path = processor_path(core)
    out, before = [], signals.count(path)
    for i in range(runs):
        time.sleep(0.05 + random.uniform(0, spread))
        done = sh.echo("1", debugfs(device, "crash"))
        assert done.errno == 0, f"crash write failed: errno {done.errno}"
        signal = signals.wait(before + i + 1, path, timeout=10 + POLL)[-1]
        out.append((signal.received - done.t0) * 1000)
        wait_property(bus, core, "State", "running")
        wait_property(bus, core, "Operation", "")
    return out


def run() -> list[Figure]:
    with board("generic:2", config=CONFIG, firmware=("m4-good.elf",)) as sim:
        bus = Bus(sim)
        signals = Signals(sim, "Crashed")
        try:
            with shell(sim) as sh:
                for core in ("core0", "core1"):
                    bus.start(core, "m4-good.elf")
                _latencies(sim, bus, sh, signals, "core0", 1, 0)  # warm-up
                hinted = _latencies(sim, bus, sh, signals, "core0", HINT_RUNS, 0.05)
                polled = _latencies(sim, bus, sh, signals, "core1", POLL_RUNS, POLL)
        finally:
            signals.close()
            bus.close()
    poll_ms = POLL * 1000
    h, p = Stats.of(hinted), Stats.of(polled)
    return [
        Figure("crash", "crash -> Crashed, kernel recovery on (virtio uevent hint)", h,
               baseline_text=f"poll {poll_ms:.0f} ms", target="median < 50 ms",
               met=h.median < 50, note=f"Restart=kernel; PollIntervalSec={POLL:g}s"
               + ("" if h.median < 50 else "; the hint's refresh reads every sysfs file of "
                  "the core through the emulator's FUSE before deciding")),
        Figure("crash", "crash -> Crashed, kernel recovery off (poll only, no uevent)", p,
               baseline_text=f"poll {poll_ms:.0f} ms", target=f"median < {poll_ms:.0f} ms",
               met=p.median < poll_ms,
               note=f"Restart=on-crash; PollIntervalSec={POLL:g}s; expected median about half "
                    "the interval"),
    ]
