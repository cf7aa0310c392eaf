"""D-Bus API v1 end to end: the real daemon on the emulated ST boards, through
pydbus, Gio and busctl only (design §2)."""

from __future__ import annotations

import os
import threading

import pytest
from gi.repository import Gio, GLib

import rprocd

try:
    from test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        PROCESSOR,
        board,
        dbus_error,
        needs_sim,
        wait_until,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        PROCESSOR,
        board,
        dbus_error,
        needs_sim,
        wait_until,
    )

pytestmark = needs_sim

MP1 = "stm32mp157f-dk"
MP2 = "stm32mp257f-dk"
M4 = "/org/rprocd1/processor/m4"
M33 = "/org/rprocd1/processor/m33"
M0 = "/org/rprocd1/processor/m0"
T = 30  # seconds, per call


def error_of(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(GLib.Error) as info:
        fn(*args, **kwargs)
    name, message = dbus_error(info.value)
    assert "\n" not in message and "Traceback" not in message
    return name, message


def test_coldplug_stm32mp157f_dk():
    with board(MP1) as sim:
        bus = sim.pydbus()
        manager = bus.get(BUS_NAME, MANAGER_PATH)
        assert manager.Version == rprocd.__version__
        assert manager.Processors == [M4]
        assert manager.GetProcessor("m4", timeout=T) == M4
        assert manager.GetProcessor("remoteproc0", timeout=T) == M4
        m4 = bus.get(BUS_NAME, M4)
        assert (m4.Name, m4.Device, m4.State, m4.Operation) == ("m4", "remoteproc0", "offline", "")
        assert m4.Failed is False
        assert m4.DefaultFirmware == "rproc-m4-fw"
        objects = manager.GetManagedObjects(timeout=T)
        assert list(objects) == [M4]
        assert objects[M4][PROCESSOR]["Device"] == "remoteproc0"
        out = sim.busctl("get-property", BUS_NAME, M4, PROCESSOR, "State")
        assert out.stdout.strip() == 's "offline"', out.stderr


def test_coldplug_stm32mp257f_dk_has_both_cores():
    with board(MP2) as sim:
        bus = sim.pydbus()
        manager = bus.get(BUS_NAME, MANAGER_PATH)
        assert sorted(manager.Processors) == [M0, M33]
        for path, name in ((M33, "m33"), (M0, "m0")):
            proc = bus.get(BUS_NAME, path)
            assert proc.Name == name and proc.Device.startswith("remoteproc")
            assert manager.GetProcessor(proc.Device, timeout=T) == path
        name, message = error_of(manager.GetProcessor, "m4", timeout=T)
        assert name == "org.rprocd1.Error.NoSuchProcessor"
        assert "m4" in message


def test_start_stop_and_state_errors():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        bus = sim.pydbus()
        m4 = bus.get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        assert (m4.State, m4.Firmware, m4.Operation) == ("running", "m4-good.elf", "")
        assert m4.RunningSince > 0
        name, message = error_of(m4.Start, "m4-good.elf", timeout=T)
        assert name == "org.rprocd1.Error.BadState"
        assert message.startswith("m4")
        wait_until(lambda: m4.ReadTrace("", timeout=T) != "", what="a trace line")
        m4.Stop(timeout=T)
        assert m4.State == "offline"
        name, _ = error_of(m4.Stop, timeout=T)
        assert name == "org.rprocd1.Error.BadState"


def test_missing_and_invalid_firmware():
    with board(MP1, firmware=("bad-magic.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        name, message = error_of(m4.Start, "no-such-image.elf", timeout=T)
        assert name == "org.rprocd1.Error.FirmwareNotFound"
        assert "no-such-image.elf" in message
        name, _ = error_of(m4.Start, "bad-magic.elf", timeout=T)
        assert name == "org.rprocd1.Error.InvalidFirmware"
        assert m4.State == "offline"


def test_switch_firmware_and_roll_back():
    with board(MP1, firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        m4.Restart("m4-quiet.elf", timeout=T)
        assert (m4.State, m4.Firmware) == ("running", "m4-quiet.elf")
        # The new image passes validation but the kernel refuses to start it:
        # the previous one runs again and the error says so.
        sim.control("remoteproc0/fail_start", "EIO")
        name, message = error_of(m4.Restart, "m4-good.elf", timeout=T)
        assert name.startswith("org.rprocd1.Error.")
        assert "roll" in message.lower()
        assert (m4.State, m4.Firmware) == ("running", "m4-quiet.elf")
        assert m4.Operation == ""


def test_both_cores_of_the_mp2_run_independently():
    with board(MP2, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        bus = sim.pydbus()
        m33, m0 = bus.get(BUS_NAME, M33), bus.get(BUS_NAME, M0)
        m33.Start("m33-good.elf", timeout=T)
        m0.Start("m0-good.elf", timeout=T)
        assert (m33.State, m0.State) == ("running", "running")
        m33.Stop(timeout=T)
        assert (m33.State, m0.State) == ("offline", "running")


def test_property_changes_are_signalled():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        context = GLib.MainContext()
        context.push_thread_default()
        conn = sim.connect()
        seen: list[dict] = []
        conn.signal_subscribe(BUS_NAME, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                              M4, None, Gio.DBusSignalFlags.NONE,
                              lambda *a: seen.append(a[-1].unpack()[1]))
        context.pop_thread_default()
        sim.pydbus().get(BUS_NAME, M4).Start("m4-good.elf", timeout=T)

        def got_running() -> bool:
            while context.iteration(False):
                pass
            return any(change.get("State") == "running" for change in seen)

        wait_until(got_running, what="PropertiesChanged State=running")
        conn.close_sync(None)


def test_import_firmware_by_fd_then_start():
    with board(MP1) as sim:
        conn = sim.connect()
        fd = os.open(FIRMWARE / "m4-good.elf", os.O_RDONLY)
        fds = Gio.UnixFDList.new()
        fds.append(fd)
        os.close(fd)
        result, _ = conn.call_with_unix_fd_list_sync(
            BUS_NAME, MANAGER_PATH, MANAGER, "ImportFirmware",
            GLib.Variant("(hs)", (0, "app.elf")), GLib.VariantType("(s)"),
            Gio.DBusCallFlags.NONE, T * 1000, fds, None)
        (name,) = result.unpack()
        assert name
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start(name, timeout=T)
        assert m4.State == "running"
        conn.close_sync(None)


def test_unprivileged_callers_read_freely_and_need_polkit_to_mutate():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        out = sim.busctl("get-property", BUS_NAME, M4, PROCESSOR, "State", user="nobody")
        assert out.returncode == 0, out.stderr
        call = ("call", BUS_NAME, M4, PROCESSOR, "Start", "s", "m4-good.elf")
        out = sim.busctl(*call, user="nobody")
        # busctl prints every AccessDenied as "Access denied"; rprocctl shows why.
        assert out.returncode != 0 and "Access denied" in out.stderr
        out = sim.rprocctl("start", "m4", "m4-good.elf", user="nobody")
        assert out.returncode == 4 and "org.rprocd1.manage" in out.stderr, out.stderr
        sim.polkit_allow("org.rprocd1.manage")
        out = sim.busctl(*call, user="nobody")
        assert out.returncode == 0, out.stderr
        assert sim.pydbus().get(BUS_NAME, M4).State == "running"


def test_a_hung_core_times_out_without_blocking_the_daemon():
    with board(MP2, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        bus = sim.pydbus()
        m33, m0 = bus.get(BUS_NAME, M33), bus.get(BUS_NAME, M0)
        m33.Start("m33-good.elf", timeout=T)
        sim.control(f"{m33.Device}/hang", "1")
        errors: list[tuple[str, str]] = []
        stopper = threading.Thread(target=lambda: errors.append(error_of(m33.Stop, timeout=T)))
        stopper.start()
        m0.Start("m0-good.elf", timeout=T)  # the other core is not affected
        assert m0.State == "running"
        stopper.join(T)
        assert errors and errors[0][0] == "org.rprocd1.Error.Timeout"
        name, _ = error_of(m33.Stop, timeout=T)
        assert name == "org.rprocd1.Error.Busy"
        sim.control(f"{m33.Device}/hang", "0")
