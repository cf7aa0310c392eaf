"""Kernel and board variants selected with `--option` (HACKING.md): early
booted cores (attached/detached, ABI §1.3, §2.2, §7.1), pre-5.19 start
semantics (§1.3), "Allow shutdown of crashed processors" (§8), the generic
ELF loader (§5.3) and ST's TEE mode (§7.3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.conftest import Core, errname, require_firmware
from tests.firmware.fixtures import FIXTURES, PUBLIC_KEY
from tests.sim_harness import RunningSim, sim_session

GENERIC_OPTIONS = [
    "core0.early=attached", "core0.firmware=m4-good.elf",
    "core1.kernel=5.15",
    "core2.crashed_stop=stop", "core2.recovery=disabled",
    "core3.early=detached", "core3.firmware=m4-good.elf",
]
M4_IMAGES = sorted(n for n, f in FIXTURES.items() if f.core == "m4")


@pytest.fixture(scope="module")
def generic() -> Iterator[RunningSim]:
    yield from sim_session(boards=["generic:4"], options=GENERIC_OPTIONS,
                           firmware=require_firmware(*M4_IMAGES))


def generic_core(sim: RunningSim, i: int) -> Core:
    return Core(sim, f"remoteproc{i}", f"{i}.rproc", "generic-rproc")


def test_generic_board_layout(generic: RunningSim) -> None:
    assert generic.listdir("/sys/class/remoteproc") == [f"remoteproc{i}" for i in range(4)]
    core = generic_core(generic, 1)
    assert core.attr("name") == "core1\n"
    assert "fw_format" not in generic.listdir(core.sysfs)  # mainline: no such attribute
    assert generic.realpath(f"{core.sysfs}/..") == "/sys/devices/platform/soc/1.rproc/remoteproc"


def test_attached_core_lifecycle(generic: RunningSim) -> None:
    core = generic_core(generic, 0)
    assert core.state() == "attached"  # auto-attached at probe (power 1)
    assert core.attr("firmware") == "unknown\n"
    assert errname(core.write("firmware", "m4-good.elf")) == "EBUSY"
    assert core.write("state", "start") == 0  # power 2
    assert core.write("state", "stop") == 0  # power 1: still attached
    assert core.state() == "attached"
    assert core.write("state", "detach") == 0
    assert core.state() == "detached"
    assert core.attr("firmware") == "rproc-core0-fw\n"  # configured, not what runs
    assert errname(core.write("state", "stop")) == "EINVAL"
    assert errname(core.write("state", "detach")) == "EINVAL"
    assert core.write("state", "start") == 0  # attach: no firmware file is read
    assert core.state() == "attached"
    assert core.write("state", "stop") == 0  # stopping an attached core powers it off
    assert core.state() == "offline"
    assert errname(core.write("state", "start")) == "ENOENT"  # now it loads rproc-core0-fw


def test_detached_core_at_probe(generic: RunningSim) -> None:
    core = generic_core(generic, 3)
    assert core.state() == "detached"  # no auto-boot: left as found
    assert core.write("state", "start") == 0
    assert core.state() == "attached"
    assert core.write("state", "detach") == 0
    assert core.state() == "detached"


def test_pre_519_start_on_running_is_ebusy(generic: RunningSim) -> None:
    core = generic_core(generic, 1)
    core.boot()
    assert errname(core.write("state", "start")) == "EBUSY"
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"  # no reference was taken


def test_crashed_processor_can_be_stopped(generic: RunningSim) -> None:
    core = generic_core(generic, 2)
    assert core.attr("recovery") == "disabled\n"
    core.boot()
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"


@pytest.mark.parametrize("image", M4_IMAGES)
def test_generic_loader_errno_of_each_test_image(generic: RunningSim, image: str) -> None:
    core = generic_core(generic, 1)
    expected = FIXTURES[image].generic_errno or 0
    assert core.write("firmware", image) == 0
    assert errname(core.write("state", "start")) == errname(expected)
    if expected == 0:
        assert core.write("state", "stop") == 0
    assert core.state() == "offline"


# -- ST fork, TEE mode -----------------------------------------------------------

TEE_IMAGES = ["m33-good-signed.bin", "m33-bad-signature.bin", "m33-bad-hash.bin",
              "m33-good.elf", "m0-good.elf"]


@pytest.fixture(scope="module")
def tee() -> Iterator[RunningSim]:
    yield from sim_session(boards=["stm32mp257f-dk"],
                           options=["m33.fw_format=TEE", f"m33.tee_key={PUBLIC_KEY}"],
                           firmware=require_firmware(*TEE_IMAGES))


@pytest.mark.parametrize("image", ["m33-good-signed.bin", "m33-bad-signature.bin",
                                   "m33-bad-hash.bin", "m33-good.elf"])
def test_tee_core_takes_only_signed_images(tee: RunningSim, image: str) -> None:
    core = Core(tee, "remoteproc0", "0.m33", "stm32-rproc")
    assert core.attr("name") == "m33\n"
    assert core.attr("fw_format") == "TEE\n"
    expected = FIXTURES[image].tee_errno or 0
    assert core.write("firmware", image) == 0
    assert errname(core.write("state", "start")) == errname(expected)
    if expected == 0:
        assert core.state() == "running"
        assert core.write("state", "stop") == 0
    assert core.state() == "offline"


def test_elf_core_of_the_same_board_refuses_a_signed_image(tee: RunningSim) -> None:
    core = Core(tee, "remoteproc1", "1.m0", "stm32-rproc")
    assert core.attr("fw_format") == "ELF\n"
    assert core.write("firmware", "m33-good-signed.bin") == 0
    assert errname(core.write("state", "start")) == "EINVAL"  # not an ELF
    core.boot("m0-good.elf")
    assert core.write("state", "stop") == 0
