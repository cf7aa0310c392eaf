"""Hotplug on both ST boards (issue 3): a driver unbind/bind, through the
kernel's own driver files or the emulator's plug/unplug control, seen only
through D-Bus and rprocctl: ProcessorRemoved/ProcessorAdded and the
ObjectManager's InterfacesRemoved/InterfacesAdded, the Processors property,
object paths by kernel name, a refused duplicate bind, a core unplugged
while it runs."""

from __future__ import annotations

import time

import pytest

try:
    from test_api_board import BUS_NAME, MANAGER, MANAGER_PATH, PROCESSOR, board, needs_sim
    from test_sim_tools import (
        ERROR,
        M0,
        M4,
        M33,
        MP1,
        MP2,
        OBJECT_MANAGER,
        T,
        error_of,
        signals,
        sim_board,
        sys_state,
        sys_write,
        virtio_devices,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        MANAGER,
        MANAGER_PATH,
        PROCESSOR,
        board,
        needs_sim,
    )
    from tests.integration.test_sim_tools import (
        ERROR,
        M0,
        M4,
        M33,
        MP1,
        MP2,
        OBJECT_MANAGER,
        T,
        error_of,
        signals,
        sim_board,
        sys_state,
        sys_write,
        virtio_devices,
    )

pytestmark = needs_sim

DRIVER = "/sys/bus/platform/drivers/stm32-rproc"


def processors(sim) -> list[str]:
    return sorted(sim.pydbus().get(BUS_NAME, MANAGER_PATH).Processors)


def managed(sim) -> dict:
    return sim.pydbus().get(BUS_NAME, MANAGER_PATH).GetManagedObjects(timeout=T)


@pytest.mark.parametrize(("boards", "name", "platform", "path", "others"), [
    ((MP1,), "m4", "10000000.m4", M4, []),
    ((MP2,), "m33", "0.m33", M33, [M0]),
], ids=["stm32mp157f-dk", "stm32mp257f-dk"])
def test_driver_unbind_and_bind_remove_and_add_the_processor(boards, name, platform, path,
                                                               others):
    with board(*boards) as sim, signals(sim) as sig:
        manager = sim.pydbus().get(BUS_NAME, MANAGER_PATH)
        assert processors(sim) == sorted([path, *others])

        assert sys_write(sim, f"{DRIVER}/unbind", platform) == (0, "")
        assert sig.wait("ProcessorRemoved") == (path,)
        assert sig.wait("InterfacesRemoved") == (path, [PROCESSOR])
        assert sig.sources("InterfacesRemoved") == [(MANAGER_PATH, OBJECT_MANAGER)]
        assert sig.sources("ProcessorRemoved") == [(MANAGER_PATH, MANAGER)]
        changed = sig.wait("PropertiesChanged", lambda a: a[0] == MANAGER)
        assert sorted(changed[1]["Processors"]) == sorted(others)
        assert processors(sim) == sorted(others)
        assert path not in managed(sim)
        err, message = error_of(manager.GetProcessor, name, timeout=T)
        assert err == ERROR + "NoSuchProcessor" and name in message
        out = sim.rprocctl("status", name)
        assert out.returncode == 3, (out.stdout, out.stderr)  # NO_PROCESSOR
        # Its object is gone from the bus, not left behind answering.
        out = sim.busctl("get-property", BUS_NAME, path, PROCESSOR, "State")
        assert out.returncode != 0

        sig.clear()
        assert sys_write(sim, f"{DRIVER}/bind", platform) == (0, "")
        assert sig.wait("ProcessorAdded") == (path,)
        added_path, interfaces = sig.wait("InterfacesAdded")
        assert added_path == path
        assert sig.sources("InterfacesAdded") == [(MANAGER_PATH, OBJECT_MANAGER)]
        assert interfaces[PROCESSOR]["Name"] == name
        assert interfaces[PROCESSOR]["State"] == "offline"
        assert processors(sim) == sorted([path, *others])
        assert manager.GetProcessor(name, timeout=T) == path
        proc = sim.pydbus().get(BUS_NAME, path)
        assert (proc.Name, proc.State, proc.Operation, proc.Failed) == \
            (name, "offline", "", False)
        assert managed(sim)[path][PROCESSOR]["Device"] == proc.Device
        assert sim.rprocctl("status", name).returncode == 0
        # ProcessorRemoved/Added once each: no duplicate announcements.
        assert len(sig.of("ProcessorAdded")) == 1 and sig.of("ProcessorRemoved") == []


def test_object_paths_follow_kernel_names_not_device_indexes():
    """Unplug both MP2 cores, plug them back in the other order: the
    remoteprocN indexes swap, the object paths stay by name, and each object
    drives its own core at its new index."""
    with board(MP2, firmware=("m33-good.elf",)) as sim, signals(sim) as sig:
        bus = sim.pydbus()
        manager = bus.get(BUS_NAME, MANAGER_PATH)
        before = {path: bus.get(BUS_NAME, path).Device for path in (M33, M0)}
        assert sorted(before.values()) == ["remoteproc0", "remoteproc1"]
        first, second = sorted(before, key=before.get)  # the core on remoteproc0 first

        for core in ("m33", "m0"):
            sim.control("unplug", core)
        sig.wait("ProcessorRemoved", lambda a: a == (M0,))
        sig.wait("ProcessorRemoved", lambda a: a == (M33,))
        assert processors(sim) == []
        assert managed(sim) == {}

        for path in (second, first):  # the other order: the indexes swap
            sim.control("plug", path.rsplit("/", 1)[1])
            sig.wait("ProcessorAdded", lambda a, p=path: a == (p,))
        after = {path: bus.get(BUS_NAME, path).Device for path in (M33, M0)}
        assert after == {first: before[second], second: before[first]}
        assert processors(sim) == sorted([M0, M33])
        for path, device in after.items():
            assert manager.GetProcessor(device, timeout=T) == path
            assert manager.GetProcessor(path.rsplit("/", 1)[1], timeout=T) == path

        m33 = bus.get(BUS_NAME, M33)
        m33.Start("m33-good.elf", timeout=T)
        assert m33.State == "running"
        assert sys_state(sim, after[M33]) == "running"
        assert sys_state(sim, after[M0]) == "offline"


def test_a_duplicate_bind_refused_by_the_kernel_changes_nothing():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        bus = sim.pydbus()
        m4 = bus.get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        boot = virtio_devices(sim)
        with signals(sim) as sig:
            status, complaint = sys_write(sim, f"{DRIVER}/bind", "10000000.m4")
            assert status != 0 and "Device or resource busy" in complaint
            status, complaint = sys_write(sim, '"$RPROCD_SIM_CONTROL/plug"', "m4")
            assert status != 0 and "Device or resource busy" in complaint
            time.sleep(0.3)  # room for any (wrong) announcement to arrive
            assert (m4.State, m4.Device, m4.Operation, m4.Firmware) == \
                ("running", "remoteproc0", "", "m4-good.elf")
            assert processors(sim) == [M4]
            for member in ("ProcessorAdded", "ProcessorRemoved", "InterfacesAdded",
                           "InterfacesRemoved"):
                assert sig.of(member) == [], member
        assert virtio_devices(sim) == boot
        assert sys_state(sim, "remoteproc0") == "running"


def test_a_core_unplugged_while_running_comes_back_under_its_boot_rules():
    """The kernel stops a running core when its driver goes (rproc_del); the
    daemon drops it, and on the next probe applies AutoStart= again."""
    config = "[Processor m4]\nAutoStart=yes\nFirmware=m4-good.elf\n"
    with sim_board(MP1, config=config, sim_firmware=("m4-good.elf",)) as sim, \
            signals(sim) as sig:
        bus = sim.pydbus()
        m4 = bus.get(BUS_NAME, M4)
        assert (m4.State, m4.Firmware) == ("running", "m4-good.elf")  # AutoStart at coldplug

        sim.control("unplug", "m4")
        assert sig.wait("ProcessorRemoved") == (M4,)
        assert processors(sim) == []
        err, _ = error_of(bus.get(BUS_NAME, MANAGER_PATH).GetProcessor, "m4", timeout=T)
        assert err == ERROR + "NoSuchProcessor"
        out = sim.rprocctl("list")
        assert out.returncode == 0 and "m4" not in out.stdout, out.stdout

        sig.clear()
        sim.control("plug", "m4")
        assert sig.wait("ProcessorAdded") == (M4,)
        _, interfaces = sig.wait("InterfacesAdded")
        assert interfaces[PROCESSOR]["Name"] == "m4"
        # the kernel stopped it at removal; AutoStart= starts it again
        sig.wait("PropertiesChanged",
                 lambda a: a[0] == PROCESSOR and a[1].get("State") == "running")
        m4 = bus.get(BUS_NAME, M4)
        assert (m4.State, m4.Firmware, m4.Operation, m4.Failed) == \
            ("running", "m4-good.elf", "", False)
        assert sys_state(sim, m4.Device) == "running"
        m4.Stop(timeout=T)
        assert sys_state(sim, m4.Device) == "offline"


def test_unplugging_one_mp2_core_leaves_the_other_running():
    with board(MP2, firmware=("m0-good.elf",)) as sim, signals(sim) as sig:
        bus = sim.pydbus()
        m0 = bus.get(BUS_NAME, M0)
        m0.Start("m0-good.elf", timeout=T)
        since = m0.RunningSince
        sim.control("unplug", "m33")
        sig.wait("ProcessorRemoved")
        sim.control("plug", "m33")
        sig.wait("ProcessorAdded")
        assert sig.of("ProcessorRemoved") == [(M33,)]
        assert sig.of("ProcessorAdded") == [(M33,)]
        assert [a[0] for a in sig.of("InterfacesAdded", MANAGER_PATH)] == [M33]
        assert (m0.State, m0.RunningSince, m0.Operation) == ("running", since, "")
        assert sys_state(sim, m0.Device) == "running"
        assert processors(sim) == sorted([M0, M33])
