"""Exactly one crash counted and one Crashed signal per crash, in any order of
the signs (state read by the poll, virtio/rpmsg uevents arriving late,
devcoredumps), and in storms of crashes on several cores at once."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core_fake_kernel import FakeCore, FakeKernel, HintSink, call, deliver, spin

from rprocd import config as cfg
from rprocd import crash
from rprocd.config import ProcessorConfig
from rprocd.coredump import CoredumpStore
from rprocd.crash import CrashServices, CrashTypes
from rprocd.manager import Manager
from rprocd.paths import Paths
from rprocd.processor import Processor, Shared
from rprocd.sysfs import CoreFiles


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crash, "DUMP_WAIT", 0.02)


class Signals:
    def __init__(self) -> None:
        self.crashes: list[tuple[str, tuple[str, int, str]]] = []

    def properties_changed(self, proc: Processor, changed: dict[str, object]) -> None:
        pass

    def crashed(self, proc: Processor, crash_type: str, time_usec: int, coredump: str) -> None:
        self.crashes.append((proc.name, (crash_type, time_usec, coredump)))

    def of(self, name: str) -> list[tuple[str, int, str]]:
        return [c for n, c in self.crashes if n == name]


def booted(kernel: FakeKernel, index: int, name: str, vdevs: int = 1) -> FakeCore:
    core = kernel.add_core(index, name)
    core.vdevs = vdevs
    core.power = 1
    core._boot()
    return core


def settled(procs: list[Processor]) -> bool:
    """Every episode announced, no copy or setting write under way."""
    return all(
        not p.crash.open and all(e.announced for e in p.crash.episodes)
        and not p.crash._settings_busy
        for p in procs
    )


# -- one core, every interleaving of kernel steps, polls and uevents -----------------------


ACTIONS = st.lists(st.sampled_from(["poll", "hint", "hint", "restart"]), max_size=4)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    crashes=st.integers(1, 3),
    vdevs=st.integers(1, 2),
    reuse=st.booleans(),
    coredump=st.sampled_from(["disabled", "enabled"]),
    gaps=st.lists(ACTIONS, min_size=13, max_size=13),
)
def test_one_crashed_signal_per_crash_whatever_the_order_of_the_signs(
    monkeypatch: pytest.MonkeyPatch, crashes: int, vdevs: int, reuse: bool, coredump: str,
    gaps: list[list[str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kernel = FakeKernel(root / "sys", root / "debug", monkeypatch, reuse_virtio=reuse)
        kernel.firmware.add("rproc-m4-fw")
        core = booted(kernel, 0, "m4", vdevs)
        core._set("coredump", coredump)
        kernel.uevents.clear()
        proc, signals = _processor(kernel, core, root)
        sink = HintSink(proc)

        def act(actions: list[str], between_crashes: bool = False) -> None:
            for action in actions:
                if action == "poll":
                    proc.poll()
                elif action == "hint":
                    deliver(kernel, sink, 1)
                elif between_crashes:  # our own Restart(): its uevents are not a crash
                    assert call(proc.restart, "") is None

        gap = iter(gaps * 3)
        for _ in range(crashes):
            act(next(gap), between_crashes=True)
            for _step in core.crash_steps():
                act(next(gap))
        deliver(kernel, sink)
        proc.poll()
        spin(lambda: deliver(kernel, sink) >= 0 and settled([proc]), timeout=5)
        assert core.crashes == crashes
        assert proc.properties()["CrashCount"] == crashes
        assert len(signals.crashes) == crashes
        assert len(kernel.dismissed) == len(set(kernel.dismissed))  # each dump read once


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    crashes=st.integers(1, 3),
    gaps=st.lists(ACTIONS, min_size=13, max_size=13),
)
def test_a_core_without_virtio_is_counted_by_state_and_dumps(
    monkeypatch: pytest.MonkeyPatch, crashes: int, gaps: list[list[str]]
) -> None:
    """No virtio device (the M0 image): only `state` (here: polled while crashed
    and once running again, else two crashes look like one) and the dumps tell;
    a dump, early or late, never counts a crash twice."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kernel = FakeKernel(root / "sys", root / "debug", monkeypatch)
        core = booted(kernel, 0, "m0", vdevs=0)
        core._set("coredump", "enabled")
        kernel.uevents.clear()
        proc, signals = _processor(kernel, core, root)
        sink = HintSink(proc)
        gap = iter(gaps * 3)
        for _ in range(crashes):
            for step in core.crash_steps():
                if step in ("crashed", "running"):
                    proc.poll()
                for action in next(gap):
                    proc.poll() if action == "poll" else deliver(kernel, sink, 1)
        spin(lambda: deliver(kernel, sink) >= 0 and proc.poll() is None and settled([proc]))
        assert proc.properties()["CrashCount"] == crashes == len(signals.crashes)


def _processor(kernel: FakeKernel, core: FakeCore, root: Path) -> tuple[Processor, Signals]:
    paths = Paths(sysfs=kernel.sysfs, debugfs=kernel.debugfs, firmware_root=root / "fw",
                  config_dir=root / "etc", state_dir=root / "state", runtime_dir=root / "run",
                  interfaces_dir=root / "dbus")
    services = CrashServices(kernel.sysfs, CoredumpStore(root / "dumps", 5))
    files = CoreFiles(core.root, core.device, kernel.debugfs, kernel)
    config = ProcessorConfig(validate=False, trace_forward=False)
    proc = Processor(files, core.get("name"), core.get("name"), config,
                     Shared(paths, (), services))
    signals = Signals()
    proc.listener = signals
    proc.apply_config(config)
    proc.begin(True)
    return proc, signals


# -- storms on several cores, through the Manager -------------------------------------------


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    (tmp_path / "boot_id").write_text("boot-1\n")
    return Paths(
        sysfs=tmp_path / "sys", debugfs=tmp_path / "debug", firmware_root=tmp_path / "fw",
        config_dir=tmp_path / "etc", state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
        interfaces_dir=tmp_path / "dbus",
    )


def storm_manager(
    paths: Paths, kernel: FakeKernel, conf: str
) -> tuple[Manager, list[Processor], Signals]:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / "rprocd.conf").write_text(conf)
    m = Manager(paths, cfg.load(paths), ops=kernel,
                boot_id_file=paths.state_dir.parent / "boot_id",
                crash_types=CrashTypes())
    done: list[bool] = []
    m.coldplug([str(root) for root in kernel.cores], lambda: done.append(True))
    spin(lambda: done)
    signals = Signals()
    procs = sorted(m.processors.values(), key=lambda p: p.device)
    for proc in procs:
        proc.listener = signals
    return m, procs, signals


def storm(
    m: Manager, kernel: FakeKernel, cores: list[FakeCore], total: int, seed: int,
    wait_dumps: bool = False,
) -> None:
    """`total` crashes over `cores`, several in flight at once, the kernel's steps,
    the polls and the uevents interleaved at random."""
    rnd = random.Random(seed)
    running: dict[int, Iterator[str]] = {}
    started = 0
    while started < total or running:
        choice = rnd.random()
        idle = [i for i, c in enumerate(cores) if i not in running and c.state == "running"]
        if started < total and idle and choice < 0.35:
            i = rnd.choice(idle)
            if wait_dumps and cores[i].get("coredump") != "disabled":
                spin(lambda: deliver(kernel, m) >= 0 and not kernel.devcds)
            running[i] = cores[i].crash_steps(rnd.choice([0, 1, 2]))
            started += 1
        elif running and choice < 0.75:
            i = rnd.choice(list(running))
            if next(running[i], None) is None:
                del running[i]
        elif choice < 0.9:
            deliver(kernel, m, rnd.randint(1, 6))
        else:
            m._poll()
    deliver(kernel, m)
    m._poll()


def test_a_hundred_crashes_over_four_cores_are_counted_exactly(
    paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch)
    cores = [booted(kernel, i, f"core{i}", vdevs=1 + i % 2) for i in range(4)]
    kernel.uevents.clear()
    m, procs, signals = storm_manager(
        paths, kernel, "[Processor *]\nTraceForward=no\nStartLimitBurst=0\n"
    )
    storm(m, kernel, cores, 100, seed=5)
    spin(lambda: settled(procs))
    assert sum(c.crashes for c in cores) == 100
    for core, proc in zip(cores, procs, strict=True):
        assert proc.properties()["CrashCount"] == core.crashes
        assert len(signals.of(proc.name)) == core.crashes
    m.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_storm_with_coredumps_saves_every_dump_once(
    paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(crash, "DUMP_WAIT", 5.0)  # Crashed waits for each dump
    kernel = FakeKernel(tmp_path / "sys", tmp_path / "debug", monkeypatch, reuse_virtio=False)
    cores = [booted(kernel, i, f"core{i}") for i in range(4)]
    kernel.uevents.clear()
    m, procs, signals = storm_manager(
        paths, kernel, "[Processor *]\nCoredump=enabled\nCoredumpKeep=100\nTraceForward=no\n"
        "StartLimitBurst=0\n"
    )
    storm(m, kernel, cores, 24, seed=seed, wait_dumps=True)
    spin(lambda: deliver(kernel, m) >= 0 and settled(procs) and not kernel.devcds, timeout=15)
    for core, proc in zip(cores, procs, strict=True):
        assert proc.properties()["CrashCount"] == core.crashes
        dumps = [c[2] for c in signals.of(proc.name) if c[2]]
        assert len(dumps) == core.crashes and len(set(dumps)) == len(dumps)
    saved = list((paths.state_dir / "coredump").glob("*.core"))
    assert len(saved) == 24 == len(kernel.dismissed)
    m.close()
