"""Coredumps and the devcoredump device (ABI §3.5, §3.6, §2.4 inline)."""

from __future__ import annotations

import struct

from tests.conformance.conftest import Core, errname
from tests.sim_harness import Uevents

CLASS = "/sys/class/devcoredump"



def dumps(core: Core) -> list[str]:
    return sorted(n for n in core.sim.listdir(CLASS) if n.startswith("devcd"))


def added_dump(uevents: Uevents) -> str:
    event = uevents.wait_for(lambda e: e["subsystem"] == "devcoredump" and e["action"] == "add")
    return event["syspath"]


def crash_with_dump(core: Core, uevents: Uevents, mode: str = "enabled") -> str:
    """Boot, crash with recovery enabled; the new dump's syspath."""
    core.boot()
    assert core.write("coredump", mode) == 0
    core.crash()
    return added_dump(uevents)


def test_enabled_dump_appears_and_recovery_goes_on(core: Core, uevents: Uevents) -> None:
    syspath = crash_with_dump(core, uevents)
    name = syspath.rsplit("/", 1)[1]
    assert syspath == f"/sys/devices/virtual/devcoredump/{name}"
    assert core.wait_state("running") == "running"  # copying mode does not block
    sim = core.sim
    assert sim.readlink(f"{CLASS}/{name}") == f"../../devices/virtual/devcoredump/{name}"
    assert sim.lstat(f"{CLASS}/{name}/data").mode & 0o777 == 0o600
    assert sim.realpath(f"{CLASS}/{name}/failing_device") == sim.realpath(core.sysfs)
    assert sim.realpath(f"{core.sysfs}/devcoredump") == syspath


def test_dump_is_an_elf_core_of_the_memory_regions(core: Core, uevents: Uevents) -> None:
    syspath = crash_with_dump(core, uevents)
    data = core.sim.read_bytes(f"{syspath}/data")
    assert data[:4] == b"\x7fELF"
    assert (data[4], data[5]) == (1, 1)  # ELFCLASS32, little-endian
    e_type, e_machine, e_version, _entry, e_phoff = struct.unpack_from("<HHIII", data, 16)
    assert (e_type, e_machine, e_version) == (4, 0, 1)  # ET_CORE, EM_NONE (STM32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    assert e_phoff == 52 and e_phentsize == 32 and e_phnum > 0
    offset = 52 + 32 * e_phnum
    loads = []
    for i in range(e_phnum):
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = \
            struct.unpack_from("<8I", data, 52 + 32 * i)
        assert (p_type, p_flags, p_align) == (1, 7, 0)
        assert p_vaddr == p_paddr and p_filesz == p_memsz
        assert p_offset == offset  # contiguous after the header table
        offset += p_filesz
        loads.append(p_vaddr)
    assert len(data) == offset
    assert 0x10000000 in loads and 0x10042000 not in loads  # mcuram yes, vdev0buffer no


def test_writing_data_dismisses_the_dump(core: Core, uevents: Uevents) -> None:
    syspath = crash_with_dump(core, uevents)
    name = syspath.rsplit("/", 1)[1]
    result = core.sim.write_result(f"{syspath}/data", "anything")
    assert (result.errno, result.count) == (0, len("anything"))
    uevents.wait_for(lambda e: e["syspath"] == syspath and e["action"] == "remove")
    assert name not in dumps(core)
    assert not core.sim.exists(f"{core.sysfs}/devcoredump")


def test_one_pending_dump_per_device_and_names_are_not_reused(core: Core,
                                                              uevents: Uevents) -> None:
    first = crash_with_dump(core, uevents)
    assert core.wait_state("running") == "running"
    core.crash_and_recover(uevents)
    assert dumps(core) == [first.rsplit("/", 1)[1]]  # the second dump was dropped
    assert core.sim.write(f"{first}/data", "1") == 0
    uevents.wait_for(lambda e: e["syspath"] == first and e["action"] == "remove")
    core.crash()
    second = uevents.wait_for(lambda e: e["subsystem"] == "devcoredump"
                              and e["action"] == "add" and e["syspath"] != first)["syspath"]
    number = int(first.rsplit("devcd", 1)[1])
    assert second.endswith(f"devcd{number + 1}")


def test_dump_expires_after_the_timeout(core: Core, uevents: Uevents) -> None:
    timeout_file = core.sim.control / "devcoredump_timeout_ms"
    assert core.sim.read(str(timeout_file)) == "300000\n"
    assert core.sim.write(str(timeout_file), "200") == 0
    try:
        syspath = crash_with_dump(core, uevents)
        uevents.wait_for(lambda e: e["syspath"] == syspath and e["action"] == "remove")
    finally:
        assert core.sim.write(str(timeout_file), "300000") == 0


def test_disabled_mode_makes_no_dump(core: Core, uevents: Uevents) -> None:
    core.boot()
    core.crash_and_recover(uevents)
    assert dumps(core) == []


def test_inline_recovery_waits_offline_until_dismissed(core: Core, uevents: Uevents) -> None:
    """§2.4: with coredump inline the transient offline lasts until the dump
    is released."""
    syspath = crash_with_dump(core, uevents, "inline")
    assert core.state() == "offline"
    data = core.sim.read_bytes(f"{syspath}/data")  # segments read live
    assert data[:4] == b"\x7fELF"
    assert core.state() == "offline"
    assert core.sim.write(f"{syspath}/data", "1") == 0
    assert core.wait_state("running") == "running"


def test_inline_recover_write_blocks_until_dismissed(core: Core, uevents: Uevents) -> None:
    """§3.5: the `recover` write itself waits for the dump to be released."""
    core.boot()
    assert core.write("recovery", "disabled") == 0
    assert core.write("coredump", "inline") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    pending = core.sim.write_async(f"{core.sysfs}/recovery", "recover")
    syspath = added_dump(uevents)
    assert not pending.done()
    assert core.state() == "offline"
    assert core.sim.write(f"{syspath}/data", "1") == 0
    assert pending.result(10).errno == 0
    assert core.state() == "running"


# Last: disabling devcoredump is permanent for the machine.
def test_devcoredump_disabled_is_one_way(core: Core, uevents: Uevents) -> None:
    sim = core.sim
    assert sim.read(f"{CLASS}/disabled") == "0\n"
    assert errname(sim.write(f"{CLASS}/disabled", "0")) == "EINVAL"
    assert errname(sim.write(f"{CLASS}/disabled", "2")) == "EINVAL"
    assert sim.write(f"{CLASS}/disabled", "1") == 0
    assert sim.read(f"{CLASS}/disabled") == "1\n"
    core.boot()
    assert core.write("coredump", "inline") == 0
    core.crash_and_recover(uevents)  # inline recovery does not block: no dump
    assert dumps(core) == []
