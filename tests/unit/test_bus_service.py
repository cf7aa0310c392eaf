"""The D-Bus adapter over a fake core, through a private bus, as a client sees it."""

from __future__ import annotations

import os
import threading
import time

import pytest
from gi.repository import Gio, GLib

from rprocd.bus import BusService
from rprocd.errors import Failed

try:
    from test_bus_fakes import (
        FakeManager,
        FakeProcessor,
        SignalRecorder,
        busctl,
        dbus_error_name,
        private_bus,  # noqa: F401 - fixture
        served,  # noqa: F401 - fixture
    )
except ModuleNotFoundError:  # tests/unit became a package
    from tests.unit.test_bus_fakes import (  # noqa: F401
        FakeManager,
        FakeProcessor,
        SignalRecorder,
        busctl,
        dbus_error_name,
        private_bus,
        served,
    )

MANAGER = "org.rprocd1.Manager"
PROCESSOR = "org.rprocd1.Processor"
PROPS = "org.freedesktop.DBus.Properties"
M33 = "/org/rprocd1/processor/m33"
M0 = "/org/rprocd1/processor/m0"


def raw_call(served, path, interface, method, args=None, timeout_ms=10_000) -> GLib.Variant:
    return served.client.call_sync("org.rprocd1", path, interface, method, args, None,
                                   Gio.DBusCallFlags.NONE, timeout_ms, None)


def error_of(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(GLib.Error) as info:
        fn(*args, **kwargs)
    message = info.value.message
    return dbus_error_name(info.value), message.split(": ", 1)[-1]


def test_name_is_owned_once_ready(served):
    (owner,) = served.client.call_sync(
        "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
        "NameHasOwner", GLib.Variant("(s)", ("org.rprocd1",)), None,
        Gio.DBusCallFlags.NONE, -1, None).unpack()
    assert owner
    assert served.lost == []


def test_manager_properties(served):
    (props,) = served.call("/org/rprocd1", PROPS, "GetAll", GLib.Variant("(s)", (MANAGER,)))
    assert props == {"Version": "0.1.0-test", "Processors": [M33, M0]}


def test_processor_properties_have_the_xml_types(served):
    reply = raw_call(served, M33, PROPS, "GetAll", GLib.Variant("(s)", (PROCESSOR,)))
    props = reply.get_child_value(0)
    types = {props.get_child_value(i).get_child_value(0).get_string():
             props.get_child_value(i).get_child_value(1).get_variant().get_type_string()
             for i in range(props.n_children())}
    assert types["CrashCount"] == "u"
    assert types["LastCrashTime"] == "t"
    assert types["RunningSince"] == "t"
    assert types["Failed"] == "b"
    assert types["RpmsgChannels"] == "as"
    assert types["State"] == "s"
    assert len(types) == 19
    (values,) = reply.unpack()
    assert values["State"] == "running" and values["Device"] == "remoteproc0"


def test_get_one_property_and_set_is_refused(served):
    (state,) = served.call(M0, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "State")))
    assert state == "offline"
    name, message = error_of(served.call, M0, PROPS, "Set",
                             GLib.Variant("(ssv)", (PROCESSOR, "State", GLib.Variant("s", "x"))))
    assert name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "not writable" in message


def test_busctl_reads_properties(served, private_bus):
    out = busctl(private_bus, "get-property", "org.rprocd1", M33, PROCESSOR, "CrashCount")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "u 0"


def test_get_processor_by_name_and_by_device(served):
    assert served.call("/org/rprocd1", MANAGER, "GetProcessor",
                       GLib.Variant("(s)", ("m0",))) == (M0,)
    assert served.call("/org/rprocd1", MANAGER, "GetProcessor",
                       GLib.Variant("(s)", ("remoteproc0",))) == (M33,)
    name, message = error_of(served.call, "/org/rprocd1", MANAGER, "GetProcessor",
                             GLib.Variant("(s)", ("m9",)))
    assert name == "org.rprocd1.Error.NoSuchProcessor"
    assert message.startswith("m9: no such processor")


def test_start_replies_when_the_core_is_done_without_blocking_the_loop(served):
    m0 = served.manager.processors["m0"]
    m0.delay_ms = 1500
    results: list = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: results.append(
        served.call(M0, PROCESSOR, "Start", GLib.Variant("(s)", ("",)))))
    worker.start()
    time.sleep(0.1)
    served.call(M0, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "State")))
    assert worker.is_alive() and results == []  # answered while Start is pending
    worker.join(10)
    assert results == [()]
    assert time.monotonic() - started >= 1.5
    assert m0.calls == [("start", "rproc-m0-fw")]
    assert served.call(M0, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "State"))) == ("running",)


def test_core_errors_become_their_dbus_names(served):
    name, message = error_of(served.call, M33, PROCESSOR, "Start", GLib.Variant("(s)", ("",)))
    assert name == "org.rprocd1.Error.BadState"
    assert message == "m33: cannot start while running"
    served.manager.processors["m33"].fail_next = Failed("m33: boom\nsecond line")
    name, message = error_of(served.call, M33, PROCESSOR, "Stop")
    assert name == "org.rprocd1.Error.Failed"
    assert message == "m33: boom second line"  # always one line


def test_unexpected_exception_is_failed_without_traceback(served, caplog):
    name, message = error_of(served.call, "/org/rprocd1", MANAGER, "InspectFirmware",
                             GLib.Variant("(s)", ("boom.elf",)))
    assert name == "org.rprocd1.Error.Failed"
    assert "internal error" in message and "ZeroDivisionError" in message
    assert "Traceback" not in message and "\n" not in message
    logged = [r for r in caplog.records if r.name == "rprocd.bus" and r.exc_info]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError  # the traceback: log only


def test_inspect_firmware_report_types(served):
    reply = raw_call(served, "/org/rprocd1", MANAGER, "InspectFirmware",
                     GLib.Variant("(s)", ("good.elf",)))
    report = reply.get_child_value(0)
    assert report.get_type_string() == "a{sv}"
    types = {}
    for i in range(report.n_children()):
        entry = report.get_child_value(i)
        types[entry.get_child_value(0).get_string()] = (
            entry.get_child_value(1).get_variant().get_type_string())
    assert types == {
        "name": "s", "format": "s", "machine": "s", "entry": "t", "valid": "b",
        "segments": "aa{sv}", "resource_table": "a{sv}", "problems": "as",
        "negative": "x", "tags": "as",
    }
    (values,) = reply.unpack()
    assert values["resource_table"]["entries"] == [{"type": "trace", "name": "trace0"}]
    name, _ = error_of(served.call, "/org/rprocd1", MANAGER, "InspectFirmware",
                       GLib.Variant("(s)", ("missing.elf",)))
    assert name == "org.rprocd1.Error.FirmwareNotFound"


def _fd_with(data: bytes) -> Gio.UnixFDList:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    fds = Gio.UnixFDList.new()
    fds.append(read)
    os.close(read)  # the list holds its own copy
    return fds


def test_import_firmware_reads_the_passed_fd(served):
    result = served.call("/org/rprocd1", MANAGER, "ImportFirmware",
                         GLib.Variant("(hs)", (0, "app.elf")), fds=_fd_with(b"\x7fELF data"))
    assert result == ("imported/app.elf",)
    assert served.manager.imported == {"imported/app.elf": b"\x7fELF data"}
    served.manager.import_done_shape = "error"  # done(error) only: the name stays
    assert served.call("/org/rprocd1", MANAGER, "ImportFirmware",
                       GLib.Variant("(hs)", (0, "b.elf")), fds=_fd_with(b"\x7fELF")) == ("b.elf",)
    name, message = error_of(served.call, "/org/rprocd1", MANAGER, "ImportFirmware",
                             GLib.Variant("(hs)", (0, "x.elf")), fds=_fd_with(b"MZ"))
    assert name == "org.rprocd1.Error.Failed" and "not an ELF" in message


def test_import_firmware_without_fd_is_invalid_args(served):
    name, message = error_of(served.call, "/org/rprocd1", MANAGER, "ImportFirmware",
                             GLib.Variant("(hs)", (0, "x.elf")))
    assert name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert "file descriptor" in message


def test_read_trace_reset_failed_reload(served):
    assert served.call(M33, PROCESSOR, "ReadTrace", GLib.Variant("(s)", ("",))) == (
        "[m] booted\n[m] tick 1\n",)
    name, _ = error_of(served.call, M33, PROCESSOR, "ReadTrace", GLib.Variant("(s)", ("x",)))
    assert name == "org.freedesktop.DBus.Error.InvalidArgs"
    served.manager.processors["m33"].props.update(Failed=True, LastError="m33: crashed")
    assert served.call(M33, PROCESSOR, "ResetFailed") == ()
    assert served.call(M33, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "Failed"))) == (False,)
    assert served.call("/org/rprocd1", MANAGER, "Reload") == ()
    served.manager.reload_error = Failed("/etc/rprocd/rprocd.conf:3: unknown key 'Foo'")
    name, message = error_of(served.call, "/org/rprocd1", MANAGER, "Reload")
    assert (name, message) == ("org.rprocd1.Error.Failed",
                               "/etc/rprocd/rprocd.conf:3: unknown key 'Foo'")
    assert served.manager.reloads == 2


def test_get_managed_objects(served):
    (objects,) = served.call("/org/rprocd1", "org.freedesktop.DBus.ObjectManager",
                             "GetManagedObjects")
    assert sorted(objects) == [M0, M33]
    assert objects[M33][PROCESSOR]["Firmware"] == "rproc-m33-fw"
    assert set(objects[M0]) == {PROCESSOR}


def test_property_changes_and_crash_are_signals(served, private_bus):
    signals = SignalRecorder(private_bus)
    try:
        m33 = served.manager.processors["m33"]
        served.run(lambda: m33.set(State="crashed", Name="ignored-const", Undocumented=1))
        served.run(m33.listener.crashed, m33, "watchdog", 1_700_000_000_000_000, "/var/x.core")
        got = signals.wait_for(lambda s: len(s) >= 2)
        assert got[0] == (M33, PROPS, "PropertiesChanged",
                          (PROCESSOR, {"State": "crashed"}, []))
        assert got[1] == (M33, PROCESSOR, "Crashed",
                          ("watchdog", 1_700_000_000_000_000, "/var/x.core"))
    finally:
        signals.close()


def test_hotplug_adds_and_removes_objects(served, private_bus):
    signals = SignalRecorder(private_bus)
    try:
        m4 = FakeProcessor("m4", "remoteproc2")
        served.run(served.manager.plug, m4)
        m4_path = "/org/rprocd1/processor/m4"
        signals.wait_for(lambda s: len(s) >= 3)
        assert signals.names() == ["InterfacesAdded", "ProcessorAdded", "PropertiesChanged"]
        assert signals.signals[0][3][0] == m4_path
        assert signals.signals[0][3][1][PROCESSOR]["Device"] == "remoteproc2"
        assert signals.signals[1][3] == (m4_path,)
        assert signals.signals[2][3] == (MANAGER, {"Processors": [M33, M0, m4_path]}, [])
        assert served.call(m4_path, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "Name"))) == (
            "m4",)
        assert m4.listener is served.service

        served.run(served.manager.unplug, m4)
        signals.wait_for(lambda s: len(s) >= 6)
        assert signals.names()[3:] == ["InterfacesRemoved", "ProcessorRemoved",
                                       "PropertiesChanged"]
        assert signals.signals[3][3] == (m4_path, [PROCESSOR])
        assert signals.signals[5][3] == (MANAGER, {"Processors": [M33, M0]}, [])
        assert m4.listener is None
        name, _ = error_of(served.call, m4_path, PROPS, "GetAll", GLib.Variant("(s)", (PROCESSOR,)))
        assert name in ("org.freedesktop.DBus.Error.UnknownObject",
                        "org.freedesktop.DBus.Error.UnknownMethod")  # GDBus says the latter
    finally:
        signals.close()


def test_second_daemon_does_not_get_the_name(served, private_bus):
    other = BusService(FakeManager(), connection=private_bus.connect())
    lost: list[str] = []
    ready: list[bool] = []
    served.run(other.publish, lambda: ready.append(True), lost.append)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready == []
    assert len(lost) == 1 and "cannot own the bus name org.rprocd1" in lost[0]
    served.run(other.close)


def test_losing_the_connection_reports_lost(private_bus):
    try:
        from test_bus_fakes import Served, two_cores
    except ModuleNotFoundError:
        from tests.unit.test_bus_fakes import Served, two_cores
    server = Served(private_bus, two_cores())
    try:
        server.connection.close_sync(None)
        deadline = time.monotonic() + 5
        while not server.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(server.lost) == 1
        assert "disconnected from the system bus" in server.lost[0]
    finally:
        server.close()


def test_unreachable_bus_reports_lost(served, monkeypatch, tmp_path):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/nothing")
    service = BusService(FakeManager())
    lost: list[str] = []
    served.run(service.publish, lambda: None, lost.append)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lost) == 1 and lost[0].startswith("cannot connect to the system bus")
    service.close()


def test_close_releases_everything(private_bus):
    try:
        from test_bus_fakes import Served, two_cores
    except ModuleNotFoundError:
        from tests.unit.test_bus_fakes import Served, two_cores
    server = Served(private_bus, two_cores())
    server.run(server.service.close)
    server.run(server.service.close)  # idempotent
    assert server.manager.listener is None
    assert all(p.listener is None for p in server.manager.processors.values())
    (owner,) = server.client.call_sync(
        "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
        "NameHasOwner", GLib.Variant("(s)", ("org.rprocd1",)), None,
        Gio.DBusCallFlags.NONE, -1, None).unpack()
    assert not owner
    server.close()


def test_every_answered_call_frees_its_invocation(served, monkeypatch):
    """Issue 8: GLib hands the method-call closure a reference to each
    invocation that PyGObject never drops; unless the adapter releases it,
    every call keeps its invocation and both messages (~2 KiB) forever."""
    import rprocd.bus.service as service_module
    from rprocd.bus.reply import Reply

    watched: list = []

    class WatchedReply(Reply):
        def __init__(self, invocation: Gio.DBusMethodInvocation, what: str) -> None:
            super().__init__(invocation, what)
            watched.append(invocation.weak_ref(lambda: None))  # GObject weak ref

    monkeypatch.setattr(service_module, "Reply", WatchedReply)
    served.manager.processors["m0"].delay_ms = 100  # Start answers later (deferred reply)
    calls = [
        (M33, PROPS, "Get", GLib.Variant("(ss)", (PROCESSOR, "State"))),
        (M33, PROPS, "GetAll", GLib.Variant("(s)", (PROCESSOR,))),
        ("/org/rprocd1", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", None),
        (M33, PROCESSOR, "ReadTrace", GLib.Variant("(s)", ("",))),
        (M33, PROCESSOR, "ReadTrace", GLib.Variant("(s)", ("x",))),  # an error reply
        (M0, PROCESSOR, "Start", GLib.Variant("(s)", ("",))),  # deferred
    ] * 10
    for path, interface, method, args in calls:
        try:
            served.call(path, interface, method, args)
        except GLib.Error:
            pass
    assert len(watched) == len(calls)

    def alive() -> int:
        return sum(ref() is not None for ref in watched)

    deadline = time.monotonic() + 5
    while served.run(alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.run(alive) == 0, "invocations outlive their replies"
