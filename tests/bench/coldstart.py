"""Cold start: process start to READY=1, and to every AutoStart= core running.

The daemon is started by the benchmark (`common.Daemon`, as systemd would: a
NOTIFY_SOCKET it reads READY=1 from) on a two-core generic board, timed from
just before the exec. READY=1 is sent once the bus name is owned and every
core has had its boot action, so with AutoStart=yes both cores run by then
(checked in sysfs). Baselines: a bare Python interpreter importing what any
Python GLib daemon imports, and the ST script's shell writes starting both
cores (a `sh -c` process, spawn included, as for the daemon).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .common import Daemon, Figure, Stats, board, shell, sysfs_class

RUNS = 5
AUTOSTART = "[Processor *]\nFirmware=m4-good.elf\nAutoStart=yes\n"
FLOOR = ("import gi; gi.require_version('Gio', '2.0'); "
         "from gi.repository import Gio, GLib; import pyudev")


def _daemon_ready(sim, label: str) -> tuple[float, Daemon]:
    daemon = Daemon(sim, label)
    t0 = time.monotonic()
    daemon.start()
    return (time.monotonic() - t0) * 1000, daemon


def _floor() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR], check=True)
    return (time.monotonic() - t0) * 1000


def run() -> list[Figure]:
    ready, ready_auto, floor, script = [], [], [], []
    with board("generic:2", daemon=False, firmware=("m4-good.elf",)) as sim:
        conf = Path(sim.env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf"
        devices = ("remoteproc0", "remoteproc1")
        start_both = "; ".join(
            f"echo m4-good.elf > /sys/class/remoteproc/{d}/firmware; "
            f"echo start > /sys/class/remoteproc/{d}/state" for d in devices)
        with shell(sim) as sh:
            for i in range(RUNS):
                conf.write_text("")
                ms, daemon = _daemon_ready(sim, f"plain{i}")
                ready.append(ms)
                assert daemon.terminate() == 0, daemon.log()
                daemon.close()
                floor.append(_floor())

                conf.write_text(AUTOSTART)
                ms, daemon = _daemon_ready(sim, f"auto{i}")
                states = sh.cat(*(sysfs_class(d, "state") for d in devices)).out
                assert [s.strip() for s in states] == ["running"] * 2, states
                ready_auto.append(ms)
                assert daemon.terminate() == 0, daemon.log()
                daemon.close()
                for d in devices:
                    sh.echo("stop", sysfs_class(d, "state"))

                t0 = time.monotonic()
                subprocess.run(["sh", "-c", start_both], env=sim.env, check=True)
                script.append((time.monotonic() - t0) * 1000)
                for d in devices:
                    sh.echo("stop", sysfs_class(d, "state"))
    r, a = Stats.of(ready), Stats.of(ready_auto)
    return [
        Figure("coldstart", "exec -> READY=1 (2 cores, offline)", r, Stats.of(floor),
               target="< 500 ms", met=r.median < 500,
               note="baseline: python importing gi, Gio, GLib, pyudev"
               + ("" if r.median < 500 else "; the imports and the coldplug reads (through "
                  "the emulator's FUSE) take that long")),
        Figure("coldstart", "exec -> READY=1 with both AutoStart= cores running", a,
               Stats.of(script),
               note="baseline: sh -c with the ST script's writes for both cores"),
    ]
