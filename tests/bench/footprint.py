"""Footprint: resident memory after start and after 10,000 API calls, and
CPU time and wakeups per second while idle, of the daemon's process.

RSS is VmRSS of /proc/PID/status; CPU is utime+stime of /proc/PID/stat (every
thread); wakeups are the voluntary + involuntary context switches of every
thread (/proc/PID/task/*/status). "Idle" means no client calls while the
cores run their firmware (trace lines every 100 ms), so the poll is on: the
daemon's busiest quiet state. The 10,000 calls (Get, GetAll, and every 100th
a GetManagedObjects) are pipelined, 16 in flight; growth is measured from
after a 1,000-call warm-up (first-use allocations) to the end.
"""

from __future__ import annotations

import time

from gi.repository import Gio, GLib

from .common import (
    BUS_NAME,
    PROCESSOR,
    PROPERTIES,
    Bus,
    Figure,
    Stats,
    board,
    context_switches,
    cpu_seconds,
    processor_path,
    python_floor_rss,
    rss_mib,
)

CALLS = 10_000
WARMUP = 1_000
IDLE_SECONDS = 8.0
IN_FLIGHT = 16


def api_calls(sim, cores: list[str], count: int) -> None:
    """`count` D-Bus calls, pipelined on a private main context."""
    context = GLib.MainContext()
    context.push_thread_default()
    try:
        conn = sim.connect()
        state = {"sent": 0, "done": 0, "errors": 0}

        def finished(c: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                c.call_finish(result)
            except GLib.Error:
                state["errors"] += 1
            state["done"] += 1
            send()

        def send() -> None:
            if state["sent"] >= count:
                return
            n = state["sent"]
            state["sent"] += 1
            path = processor_path(cores[n % len(cores)])
            if n % 100 == 99:
                call = ("/org/rprocd1", "org.freedesktop.DBus.ObjectManager",
                        "GetManagedObjects", None)
            elif n % 2:
                call = (path, PROPERTIES, "GetAll", GLib.Variant("(s)", (PROCESSOR,)))
            else:
                call = (path, PROPERTIES, "Get", GLib.Variant("(ss)", (PROCESSOR, "State")))
            conn.call(BUS_NAME, *call, None, Gio.DBusCallFlags.NONE, 30_000, None, finished)

        for _ in range(IN_FLIGHT):
            send()
        while state["done"] < count:
            context.iteration(True)
        conn.close_sync(None)
        if state["errors"]:
            raise RuntimeError(f"{state['errors']} of {count} API calls failed")
    finally:
        context.pop_thread_default()


def idle(pid: int, seconds: float = IDLE_SECONDS) -> tuple[float, float]:
    """(CPU % of one core, wakeups per second) over `seconds` without calls."""
    cpu0, cs0, t0 = cpu_seconds(pid), context_switches(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, cs1, t1 = cpu_seconds(pid), context_switches(pid), time.monotonic()
    return 100 * (cpu1 - cpu0) / (t1 - t0), (cs1 - cs0) / (t1 - t0)


def memory(sim, pid: int, cores: list[str]) -> tuple[float, float, float]:
    """RSS (MiB) after start, after the warm-up calls, after all the calls."""
    start = rss_mib(pid)
    api_calls(sim, cores, WARMUP)
    warm = rss_mib(pid)
    api_calls(sim, cores, CALLS - WARMUP)
    return start, warm, rss_mib(pid)


def figures(sim, pid: int, cores: list[str], label: str, rss_target: float | None,
            cpu_target: float | None, floor: float) -> list[Figure]:
    """The footprint rows of a daemon whose cores already run (shared with scale.py)."""
    cpu, wakeups = idle(pid)
    start, warm, end = memory(sim, pid, cores)
    growth = end - warm
    out = [Figure("footprint", f"RSS after start, {label}", Stats.one(start, "MiB"),
                  Stats.one(floor, "MiB"), note="baseline: python with gi, Gio, GLib, pyudev")]
    fig = Figure("footprint", f"RSS after 10,000 API calls, {label}", Stats.one(end, "MiB"),
                 Stats.one(floor, "MiB"),
                 extra={"start_mib": start, "after_warmup_mib": warm, "growth_mib": growth})
    fig.note = (f"growth {growth:+.2f} MiB after the {WARMUP}-call warm-up "
                f"({end - start:+.2f} in all)")
    if rss_target is not None:
        fig.target = f"< {rss_target:g} MiB, no growth"
        fig.met = end < rss_target and growth < 0.5
        if end >= rss_target:
            fig.note += (f"; the Python interpreter with GLib, Gio and pyudev alone is "
                         f"{floor:.1f} MiB")
        if growth >= 0.5:
            fig.note += (f"; about {growth * 1024 * 1024 / (CALLS - WARMUP):.0f} B per call, "
                         "in a window that still holds the cores' first minute (their "
                         "trace buffers filling, the heap settling), which an idle daemon "
                         "shows too")
    out.append(fig)
    cpu_fig = Figure("footprint", f"idle CPU, {label} running", Stats.one(cpu, "% of a core"),
                     baseline_text="0 (no process)",
                     note=f"{wakeups:.1f} wakeups/s (context switches of all threads)",
                     extra={"wakeups_per_s": wakeups})
    if cpu_target is not None:
        cpu_fig.target = f"< {cpu_target:g}%"
        cpu_fig.met = cpu < cpu_target
        if not cpu_fig.met:
            cpu_fig.note += ("; each poll re-reads state, trace buffers and rpmsg channels of "
                             "every running core through the emulator's FUSE")
    out.append(cpu_fig)
    out.append(Figure("footprint", f"idle wakeups, {label} running",
                      Stats.one(wakeups, "/s"), baseline_text="0 (no process)"))
    return out


def run() -> list[Figure]:
    floor = python_floor_rss()
    with board("generic:2", firmware=("m4-good.elf",)) as sim:
        pid = int(sim.env["RPROCD_PID"])
        bus = Bus(sim)
        cores = ["core0", "core1"]
        for core in cores:
            bus.start(core, "m4-good.elf")
        bus.close()
        time.sleep(0.5)
        return figures(sim, pid, cores, "2 cores", None, 0.5, floor)
