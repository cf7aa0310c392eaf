"""Scale: the generic board with 64 cores.

- coldplug: exec -> READY=1 of a daemon the benchmark starts (64 offline
  cores found, read and published); baseline: the shell reading `name` and
  `state` of the 64 cores;
- GetManagedObjects with 64 cores; baseline: the shell reading the five
  attributes per core the properties come from;
- the footprint rows with the 64 cores running (started by the shell: 64
  parallel Start calls take over a minute on the emulator, too long for
  `make bench`);
- a crash storm: `echo 1 > crash` on all 64 cores at once (Restart=kernel),
  until the 64th `Crashed`; baseline: until the kernel has recovered all 64.
"""

from __future__ import annotations

import time

from . import footprint
from .common import (
    Bus,
    Daemon,
    Figure,
    Signals,
    Stats,
    board,
    debugfs,
    python_floor_rss,
    shell,
    sysfs_class,
)

CORES = 64
COLDPLUG_RUNS = 3
GMO_RUNS = 15
CONFIG = "[Processor *]\nRestart=kernel\nStartLimitBurst=0\n"


def run() -> list[Figure]:
    floor = python_floor_rss()
    cores = [f"core{i}" for i in range(CORES)]
    figures: list[Figure] = []
    with board(f"generic:{CORES}", daemon=False, config=CONFIG,
               firmware=("m4-good.elf",)) as sim, shell(sim) as sh:
        devices = [f"remoteproc{i}" for i in range(CORES)]
        ready, daemon = [], None
        for i in range(COLDPLUG_RUNS):
            if daemon is not None:
                assert daemon.terminate() == 0, daemon.log()
                daemon.close()
            daemon = Daemon(sim, f"scale{i}")
            t0 = time.monotonic()
            daemon.start(timeout=120)
            ready.append((time.monotonic() - t0) * 1000)
        assert daemon is not None
        try:
            enum = [sh.cat(*(sysfs_class(d, a) for d in devices for a in ("name", "state"))).ms
                    for _ in range(COLDPLUG_RUNS)]
            figures.append(Figure("scale", f"coldplug: exec -> READY=1, {CORES} cores",
                                  Stats.of(ready), Stats.of(enum),
                                  note="baseline: the shell reading name and state of each"))
            bus = Bus(sim)
            gmo = [bus.timed(bus.managed_objects) for _ in range(GMO_RUNS)]
            attrs = ("name", "state", "firmware", "recovery", "coredump")
            reads = [sh.cat(*(sysfs_class(d, a) for d in devices for a in attrs)).ms
                     for _ in range(GMO_RUNS)]
            figures.append(Figure("scale", f"GetManagedObjects, {CORES} cores",
                                  Stats.of(gmo), Stats.of(reads),
                                  note="baseline: the shell reading the 5 attributes of each"))

            for d in devices:  # the footprint rows want them running (started as
                sh.run(("write", sysfs_class(d, "firmware"), "m4-good.elf\n"),  # the ST
                       ("write", sysfs_class(d, "state"), "start\n"))  # script does)
            time.sleep(1.0)
            figures += footprint.figures(sim, daemon.pid, cores, f"{CORES} cores", 30.0, None,
                                         floor)

            signals = Signals(sim, "Crashed")
            try:
                t0 = sh.run(*(("write", debugfs(d, "crash"), "1\n") for d in devices)).t0
                got = signals.wait(CORES, timeout=120)
                kernel = max(sh.wait(sysfs_class(d, "state"), "running", 60, 0.005).t1
                             for d in devices)
            finally:
                signals.close()
            per_core = [(s.received - t0) * 1000 for s in got]
            storm = Stats.of(per_core)
            figures.append(Figure(
                "scale", f"crash storm: {CORES} crashes -> {CORES} Crashed", storm,
                Stats.one((kernel - t0) * 1000, "ms"),
                note="per-core crash->signal, median / last; baseline: until the kernel "
                     "recovered all (shell, core after core)"))
            bus.close()
        finally:
            assert daemon.terminate(60) == 0, daemon.log()
            daemon.close()
    return figures
