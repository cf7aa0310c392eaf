"""Shared pieces of the conformance suite: the emulator driven through the
real plumbing (rprocd-sim, FUSE, umockdev) and checked against
../shared/reference/remoteproc-abi.md, errno by errno.

Each module starts one `rprocd-sim` (a `board` fixture of module scope) and
each test starts from a freshly probed core (`core` fixture: driver unbind +
bind, the kernel's own way to reset a remoteproc).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.firmware.fixtures import FIXTURES
from tests.sim_harness import FIRMWARE_BUILD, RunningSim, Uevents, sim_session

#: every test image made for (or tried on) the M4
M4_IMAGES = sorted(name for name, f in FIXTURES.items() if f.core == "m4")


def require_firmware(*names: str) -> list[str]:
    """The test images must be built (make -C tests/firmware); fail, not skip."""
    missing = [n for n in names if not (FIRMWARE_BUILD / n).is_file()]
    if missing:
        pytest.fail(f"test firmware missing in {FIRMWARE_BUILD}: {', '.join(missing)} "
                    "(run make -C tests/firmware)")
    return list(names)


@dataclass
class Core:
    """One remoteproc as seen through /sys by a process under the preload."""

    sim: RunningSim
    device: str  # remoteprocN
    platform: str  # 10000000.m4
    driver: str  # stm32-rproc

    @property
    def sysfs(self) -> str:
        return f"/sys/class/remoteproc/{self.device}"

    @property
    def debugfs(self) -> str:
        return f"/sys/kernel/debug/remoteproc/{self.device}"

    @property
    def control(self) -> Path:
        return self.sim.control / self.device

    def attr(self, name: str) -> str:
        return self.sim.read(f"{self.sysfs}/{name}")

    def state(self) -> str:
        return self.attr("state").rstrip("\n")

    def write(self, name: str, data: str | bytes) -> int:
        """One write(2) to a sysfs attribute: 0 or the errno."""
        return self.sim.write(f"{self.sysfs}/{name}", data)

    def dbg(self, name: str) -> str:
        return self.sim.read(f"{self.debugfs}/{name}")

    def dbg_write(self, name: str, data: str | bytes) -> int:
        return self.sim.write(f"{self.debugfs}/{name}", data)

    def ctl(self, name: str, value: str) -> None:
        assert self.sim.write(str(self.control / name), value) == 0

    def boot(self, firmware: str = "m4-good.elf") -> None:
        """offline -> running with `firmware`, asserting each step."""
        assert self.write("firmware", firmware) == 0
        assert self.write("state", "start") == 0, self.dbg("name")
        assert self.state() == "running"

    def crash(self, kind: int = 1) -> None:
        assert self.dbg_write("crash", f"{kind}\n") == 0

    def crash_and_recover(self, uevents: Uevents, kind: int = 1) -> None:
        """Crash a running core with recovery enabled and wait until the
        recovery is over: its virtio device was re-created (§3.3), running."""
        before = {e["syspath"] for e in uevents.events
                  if e["subsystem"] == "virtio" and e["action"] == "add"}
        self.crash(kind)
        uevents.wait_for(lambda e: e["subsystem"] == "virtio" and e["action"] == "add"
                         and e["syspath"] not in before)
        assert self.wait_state("running") == "running"

    def wait_state(self, want: str, timeout: float = 10.0) -> str:
        return self.sim.wait_state(f"{self.sysfs}/state", want, timeout)

    def unbind(self) -> int:
        return self.sim.write(f"/sys/bus/platform/drivers/{self.driver}/unbind", self.platform)

    def bind(self) -> int:
        return self.sim.write(f"/sys/bus/platform/drivers/{self.driver}/bind", self.platform)

    def reset(self) -> None:
        """Release what a test left blocked, then reprobe: a fresh remoteproc
        (offline, power 0, default modes and firmware name)."""
        if self.sim.exists(str(self.control)):
            self.ctl("hang", "0")
            self.ctl("fail_start", "none")
        dismiss_devcoredumps(self.sim)
        err = self.unbind()
        assert err in (0, errno.ENODEV), f"unbind: {errno.errorcode.get(err, err)}"
        assert self.bind() == 0
        if self.state() == "detached":
            # The hardware kept running (a crash injected through debugfs
            # does not stop it), so the probe attached: power it off.
            assert self.write("state", "start") == 0
            assert self.write("state", "stop") == 0
        assert self.state() == "offline"


def dismiss_devcoredumps(sim: RunningSim) -> None:
    for name in sim.listdir("/sys/class/devcoredump"):
        if name.startswith("devcd"):
            sim.write(f"/sys/class/devcoredump/{name}/data", "1")


@pytest.fixture(scope="module")
def board() -> Iterator[RunningSim]:
    """An STM32MP157F-DK (one M4) with the M4 test images installed."""
    yield from sim_session(boards=["stm32mp157f-dk"], firmware=require_firmware(*M4_IMAGES))


@pytest.fixture
def core(board: RunningSim) -> Iterator[Core]:
    """The M4, freshly probed, as remoteproc0."""
    m4 = Core(board, "remoteproc0", "10000000.m4", "stm32-rproc")
    m4.reset()
    yield m4
    if board.exists(str(m4.control)):
        m4.ctl("hang", "0")


@pytest.fixture
def uevents(core: Core) -> Iterator[Uevents]:
    """uevents from the start of the test on (after the core's reset)."""
    monitor = core.sim.uevents()
    yield monitor
    monitor.close()


def errname(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "OK"
