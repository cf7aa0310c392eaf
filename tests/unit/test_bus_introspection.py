"""The live objects say exactly what dbus/*.xml documents, and every documented
method has an authorization decision and a handler."""

from __future__ import annotations

from pathlib import Path

from gi.repository import Gio

from rprocd.bus.auth import AUTH_TABLE, CONFIGURE, IMPORT_FIRMWARE, MANAGE
from rprocd.bus.introspection import (
    INTROSPECTABLE,
    MANAGER,
    OBJECT_MANAGER,
    PEER,
    PROCESSOR,
    PROPERTIES,
    load_interface,
    polkit_actions,
)
from rprocd.bus.methods import Methods
from rprocd.bus.objects import ObjectTree

try:
    from test_bus_fakes import FakeManager, private_bus, served  # noqa: F401 - fixtures
except ModuleNotFoundError:  # tests/unit became a package
    from tests.unit.test_bus_fakes import FakeManager, private_bus, served  # noqa: F401

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"


def describe(info: Gio.DBusInterfaceInfo) -> dict:
    """Everything a client relies on: names, argument names and types, access."""

    def annotations(items) -> dict:
        return {a.key: a.value for a in items or []}

    return {
        "methods": {
            m.name: (
                [(a.name, a.signature) for a in m.in_args],
                [(a.name, a.signature) for a in m.out_args],
                annotations(m.annotations),
            )
            for m in info.methods
        },
        "properties": {
            p.name: (p.signature, int(p.flags), annotations(p.annotations))
            for p in info.properties
        },
        "signals": {s.name: [(a.name, a.signature) for a in s.args] for s in info.signals},
    }


def introspect(served, path: str) -> Gio.DBusNodeInfo:
    (xml,) = served.call(path, INTROSPECTABLE, "Introspect")
    return Gio.DBusNodeInfo.new_for_xml(xml)


def test_live_manager_matches_the_xml(served):
    node = introspect(served, "/org/rprocd1")
    live = node.lookup_interface(MANAGER)
    assert live is not None
    assert describe(live) == describe(load_interface(DBUS_DIR, MANAGER))
    names = {i.name for i in node.interfaces}
    assert {MANAGER, OBJECT_MANAGER, PROPERTIES, INTROSPECTABLE, PEER} <= names
    om = describe(node.lookup_interface(OBJECT_MANAGER))
    assert om["methods"]["GetManagedObjects"][1] == [("objects", "a{oa{sa{sv}}}")]
    assert set(om["signals"]) == {"InterfacesAdded", "InterfacesRemoved"}
    assert [n.path for n in node.nodes] == ["processor"]


def test_live_processor_matches_the_xml(served):
    assert sorted(n.path for n in introspect(served, "/org/rprocd1/processor").nodes) == [
        "m0", "m33"]
    node = introspect(served, "/org/rprocd1/processor/m33")
    live = node.lookup_interface(PROCESSOR)
    assert live is not None
    assert describe(live) == describe(load_interface(DBUS_DIR, PROCESSOR))


def test_documented_api_is_the_design_contract():
    manager = describe(load_interface(DBUS_DIR, MANAGER))
    assert {k: v[:2] for k, v in manager["methods"].items()} == {
        "GetProcessor": ([("name", "s")], [("processor", "o")]),
        "ImportFirmware": ([("fd", "h"), ("name", "s")], [("firmware", "s")]),
        "InspectFirmware": ([("name", "s")], [("report", "a{sv}")]),
        "Reload": ([], []),
    }
    assert {k: v[0] for k, v in manager["properties"].items()} == {"Version": "s",
                                                                    "Processors": "ao"}
    assert manager["signals"] == {"ProcessorAdded": [("processor", "o")],
                                  "ProcessorRemoved": [("processor", "o")]}
    processor = describe(load_interface(DBUS_DIR, PROCESSOR))
    assert {k: v[0] for k, v in processor["properties"].items()} == {
        "Name": "s", "Device": "s", "State": "s", "Operation": "s", "Failed": "b",
        "LastError": "s", "Firmware": "s", "DefaultFirmware": "s", "FirmwareFormat": "s",
        "Recovery": "s", "RestartPolicy": "s", "CoredumpMode": "s", "CrashCount": "u",
        "LastCrashType": "s", "LastCrashTime": "t", "LastCoredump": "s", "RunningSince": "t",
        "RpmsgChannels": "as", "TraceBuffers": "as",
    }
    readable = int(Gio.DBusPropertyInfoFlags.READABLE)
    assert all(v[1] == readable for v in processor["properties"].values())
    assert {k: v[:2] for k, v in processor["methods"].items()} == {
        "Start": ([("firmware", "s")], []),
        "Stop": ([], []),
        "Restart": ([("firmware", "s")], []),
        "Detach": ([], []),
        "Recover": ([], []),
        "ResetFailed": ([], []),
        "ReadTrace": ([("buffer", "s")], [("text", "s")]),
    }
    assert processor["signals"] == {
        "Crashed": [("type", "s"), ("time_usec", "t"), ("coredump", "s")]}


def test_auth_table_matches_the_documented_actions():
    for name in (MANAGER, PROCESSOR):
        info = load_interface(DBUS_DIR, name)
        documented = polkit_actions(info)
        for method in info.methods:
            assert (name, method.name) in AUTH_TABLE, f"{name}.{method.name} has no decision"
            assert AUTH_TABLE[(name, method.name)] == documented.get(method.name)
    assert {a for a in AUTH_TABLE.values() if a} == {MANAGE, IMPORT_FIRMWARE, CONFIGURE}
    assert AUTH_TABLE[(PROPERTIES, "Get")] is None and AUTH_TABLE[(PROPERTIES, "GetAll")] is None
    assert (PROPERTIES, "Set") not in AUTH_TABLE  # deny by default


def test_every_answered_method_has_a_handler():
    manager_info = load_interface(DBUS_DIR, MANAGER)
    processor_info = load_interface(DBUS_DIR, PROCESSOR)
    methods = Methods(ObjectTree(FakeManager(), manager_info, processor_info))
    gdbus_answers = {INTROSPECTABLE, PEER}
    expected = {key for key in AUTH_TABLE if key[0] not in gdbus_answers}
    assert set(methods.table) == expected
