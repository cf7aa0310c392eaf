"""Devices, driver bind/unbind and uevents (ABI §1.1, §2.2, §2.3, §3.3, §3.7)
as udev clients see them: the /sys tree, pyudev, a uevent monitor."""

from __future__ import annotations

import json
import sys

from tests.conformance.conftest import Core, errname
from tests.sim_harness import Uevents

PLATFORM = "/sys/devices/platform/soc/10000000.m4"
RPROC = f"{PLATFORM}/remoteproc/remoteproc0"



def seen(uevents: Uevents, action: str, syspath: str) -> dict:
    return uevents.wait_for(lambda e: e["action"] == action and e["syspath"] == syspath)


def test_platform_device(core: Core) -> None:
    sim = core.sim
    assert sim.readlink("/sys/bus/platform/devices/10000000.m4") == \
        "../../../devices/platform/soc/10000000.m4"
    assert sim.realpath(f"{PLATFORM}/driver") == "/sys/bus/platform/drivers/stm32-rproc"
    assert sim.realpath(f"{PLATFORM}/subsystem") == "/sys/bus/platform"
    assert sim.realpath(f"{PLATFORM}/of_node") == \
        "/sys/firmware/devicetree/base/soc/m4@10000000"
    props = dict(line.split("=", 1) for line in sim.read(f"{PLATFORM}/uevent").splitlines())
    assert props["DRIVER"] == "stm32-rproc"
    assert props["OF_NAME"] == "m4"
    assert props["OF_COMPATIBLE_0"] == "st,stm32mp1-m4"


def test_pyudev_sees_the_class_device(core: Core) -> None:
    """Attributes are plain files: libudev's sysattr API reads them."""
    script = """
import json, pyudev
ctx = pyudev.Context()
devs = list(ctx.list_devices(subsystem="remoteproc"))
d = devs[0]
print(json.dumps({"paths": [x.sys_path for x in devs], "name": d.sys_name,
                  "parent": d.parent.sys_path, "driver": d.parent.driver,
                  "attr_name": d.attributes.asstring("name"),
                  "attr_state": d.attributes.asstring("state"),
                  "devtype": d.device_type}))
"""
    shell = core.sim.run(f"{sys.executable} -c '{script}'")
    assert shell.returncode == 0, shell.stderr
    info = json.loads(shell.stdout)
    assert info == {"paths": [RPROC], "name": "remoteproc0", "parent": PLATFORM,
                    "driver": "stm32-rproc", "attr_name": "m4", "attr_state": "offline",
                    "devtype": "remoteproc"}


def test_unbind_and_bind_through_the_driver(core: Core, uevents: Uevents) -> None:
    sim = core.sim
    assert core.unbind() == 0
    removed = seen(uevents, "remove", RPROC)
    assert removed["subsystem"] == "remoteproc"
    unbound = seen(uevents, "unbind", PLATFORM)
    assert "DRIVER" not in unbound["props"]
    assert sim.listdir("/sys/class/remoteproc") == []
    assert not sim.exists(f"{PLATFORM}/driver")
    assert not sim.exists(core.debugfs)
    assert errname(core.unbind()) == "ENODEV"
    assert core.bind() == 0
    seen(uevents, "add", RPROC)
    bound = seen(uevents, "bind", PLATFORM)
    assert bound["props"]["DRIVER"] == "stm32-rproc"
    assert sim.listdir("/sys/class/remoteproc") == ["remoteproc0"]  # the IDA reuses 0
    assert errname(core.bind()) == "EBUSY"


def test_bind_of_an_unknown_device_is_enodev(core: Core) -> None:
    assert errname(core.sim.write("/sys/bus/platform/drivers/stm32-rproc/bind",
                                  "20000000.m7")) == "ENODEV"


def test_unbind_stops_a_running_core(core: Core, uevents: Uevents) -> None:
    core.boot()
    assert core.unbind() == 0
    seen(uevents, "remove", RPROC)
    assert core.bind() == 0
    assert core.state() == "offline"


def test_control_unplug_and_plug(core: Core, uevents: Uevents) -> None:
    sim = core.sim
    assert sim.write(str(sim.control / "unplug"), "m4") == 0
    seen(uevents, "remove", RPROC)
    assert not sim.exists(str(core.control))  # per-core knobs follow the device
    assert sim.write(str(sim.control / "plug"), "m4\n") == 0
    seen(uevents, "add", RPROC)
    assert errname(sim.write(str(sim.control / "plug"), "m7")) == "ENODEV"


def test_start_and_stop_bring_virtio_and_rpmsg_devices(core: Core, uevents: Uevents) -> None:
    """§3.7: the state change itself makes no uevent; the subdevices do."""
    core.boot()
    seen(uevents, "bind", f"{RPROC}/rproc-virtio.0.auto")
    virtio = uevents.wait_for(lambda e: e["subsystem"] == "virtio" and e["action"] == "bind")
    assert virtio["props"]["DRIVER"] == "virtio_rpmsg_bus"
    uevents.wait_for(lambda e: e["subsystem"] == "rpmsg" and e["action"] == "add"
                     and ".rpmsg-tty." in e["syspath"])
    assert core.write("state", "stop") == 0
    seen(uevents, "remove", virtio["syspath"])
    seen(uevents, "remove", f"{RPROC}/rproc-virtio.0.auto")
    assert not [e for e in uevents.events if e["syspath"] == RPROC]
    assert core.sim.listdir("/sys/bus/virtio/devices") == []
    assert not [n for n in core.sim.listdir("/sys/bus/rpmsg/devices")]


def test_recovery_recreates_virtio_with_a_new_index(core: Core, uevents: Uevents) -> None:
    """§3.3/§3.7: virtio and rpmsg go and come back; rproc-virtio stays."""
    core.boot()
    first = uevents.wait_for(lambda e: e["subsystem"] == "virtio" and e["action"] == "add")
    core.crash()
    seen(uevents, "remove", first["syspath"])
    second = uevents.wait_for(lambda e: e["subsystem"] == "virtio" and e["action"] == "add"
                              and e["syspath"] != first["syspath"])
    index = int(first["syspath"].rsplit("virtio", 1)[1])
    assert second["syspath"].endswith(f"virtio{index + 1}")
    assert core.wait_state("running") == "running"
    pvirtio = f"{RPROC}/rproc-virtio.0.auto"
    assert not [e for e in uevents.events if e["syspath"] == pvirtio and e["action"] == "remove"]


def test_writing_uevent_sends_a_synthetic_event(core: Core, uevents: Uevents) -> None:
    assert core.sim.write(f"{RPROC}/uevent", "change") == 0
    event = seen(uevents, "change", RPROC)
    assert event["props"]["DEVTYPE"] == "remoteproc"
    assert errname(core.sim.write(f"{RPROC}/uevent", "explode")) == "EINVAL"


def test_device_tree_of_the_core(core: Core) -> None:
    base = "/sys/firmware/devicetree/base/soc/m4@10000000"
    assert core.sim.read_bytes(f"{base}/compatible") == b"st,stm32mp1-m4\0"
    phandles = core.sim.read_bytes(f"{base}/memory-region")
    assert len(phandles) == 4 * 5  # the five memory regions of the M4
