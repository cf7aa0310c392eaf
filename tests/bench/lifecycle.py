"""Start and stop through D-Bus next to the shell path, Validate= off and on.

The m33 of the STM32MP257F-DK boots a generated 1 MiB image (the m4's memory
is too small for one). Each run: the shell's `echo NAME > firmware; echo
start > state` then `echo stop > state` (the baseline: the emulated kernel's
own time), then `Start(NAME)` and `Stop()` through the daemon, interleaved so
that both see the same machine. Before each timed step the daemon has
handled the previous step's uevents (a short pause and a property read), so
one step's tail is not billed to the next.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .common import Bus, Figure, Shell, Stats, board, configure, overhead_figure, shell, sysfs_class

RUNS = 12
PROCESS_RUNS = 5
CORE, DEVICE = "m33", "remoteproc0"
IMAGE = "bench-1mib.elf"
CONFIG = "[Processor m33]\nValidate={validate}\n"


def _image() -> bytes:
    from tests.unit.test_firmware_images import good_image

    overhead = len(good_image("m33", text_size=0).data)
    return good_image("m33", text_size=1024 * 1024 - overhead).data


def _settle(bus: Bus) -> None:
    """Let the daemon drain the uevents of the last step (a read queues behind them)."""
    time.sleep(0.04)
    bus.get(CORE, "State")


def _cycle(sh: Shell, bus: Bus) -> tuple[float, float, float, float]:
    """(shell start, shell stop, rprocd start, rprocd stop) in ms."""
    fw, state = sysfs_class(DEVICE, "firmware"), sysfs_class(DEVICE, "state")
    start = sh.run(("write", fw, IMAGE + "\n"), ("write", state, "start\n"))
    assert start.errno == 0, f"shell start failed: errno {start.errno}"
    _settle(bus)
    stop = sh.echo("stop", state)
    assert stop.errno == 0, f"shell stop failed: errno {stop.errno}"
    _settle(bus)
    r_start = bus.timed(lambda: bus.start(CORE, IMAGE))
    _settle(bus)
    r_stop = bus.timed(lambda: bus.stop(CORE))
    _settle(bus)
    return start.ms, stop.ms, r_start, r_stop


def _process_cycle(sim, bus: Bus) -> tuple[float, float]:
    """The literal commands: `busctl call ... Start` vs `sh -c 'echo ...'` (ms, spawns included)."""
    env = sim.env
    script = (f"echo {IMAGE} > /sys/class/remoteproc/{DEVICE}/firmware; "
              f"echo start > /sys/class/remoteproc/{DEVICE}/state")
    t0 = time.monotonic()
    subprocess.run(["sh", "-c", script], env=env, check=True)
    shell_ms = (time.monotonic() - t0) * 1000
    _settle(bus)
    subprocess.run(["sh", "-c", f"echo stop > /sys/class/remoteproc/{DEVICE}/state"], env=env,
                   check=True)
    _settle(bus)
    argv = ["busctl", f"--address={env['DBUS_SYSTEM_BUS_ADDRESS']}", "call", "org.rprocd1",
            f"/org/rprocd1/processor/{CORE}", "org.rprocd1.Processor", "Start", "s", IMAGE]
    t0 = time.monotonic()
    subprocess.run(argv, env=sim.client_env, check=True, stdout=subprocess.DEVNULL)
    busctl_ms = (time.monotonic() - t0) * 1000
    _settle(bus)
    bus.stop(CORE)
    _settle(bus)
    return busctl_ms, shell_ms


def run() -> list[Figure]:
    figures: list[Figure] = []
    with board("stm32mp257f-dk", config=CONFIG.format(validate="no")) as sim:
        Path(sim.env["RPROCD_SIM_FIRMWARE_DIR"], IMAGE).write_bytes(_image())
        bus = Bus(sim)
        with shell(sim) as sh:
            assert bus.get(CORE, "Device") == DEVICE
            for validate in ("no", "yes"):
                configure(sim, bus, CONFIG.format(validate=validate))
                _cycle(sh, bus)  # warm-up: first reads, imports, caches
                samples = [_cycle(sh, bus) for _ in range(RUNS)]
                b_start, b_stop, r_start, r_stop = (list(x) for x in zip(*samples, strict=True))
                on = validate == "yes"
                figures.append(overhead_figure(
                    "lifecycle", f"Start, 1 MiB image, Validate={validate}", r_start, b_start,
                    20.0 if on else 5.0,
                    note_missed="a Start reads state three times (the call's gate on the "
                                "loop, the plan's gate on the worker, after the write) and "
                                "lists the core's child devices, each about 1 ms through the "
                                "emulator's FUSE (microseconds on a real sysfs), plus the "
                                "D-Bus round trip"
                                + ("; validation reads the whole image" if on else ""),
                ))
                if not on:
                    figures.append(overhead_figure(
                        "lifecycle", "Stop", r_stop, b_stop, None,
                        note="shell: echo stop > state"))
            configure(sim, bus, CONFIG.format(validate="no"))
            _process_cycle(sim, bus)
            pairs = [_process_cycle(sim, bus) for _ in range(PROCESS_RUNS)]
            busctl, sh_proc = (list(x) for x in zip(*pairs, strict=True))
            figures.append(Figure(
                "lifecycle", "busctl call Start vs sh -c 'echo; echo' (processes)",
                Stats.of(busctl), Stats.of(sh_proc),
                note="Validate=no; both spawn a process, the shell under the emulator's "
                     "LD_PRELOAD (an emulator cost the real shell does not pay)"))
        bus.close()
    return figures
