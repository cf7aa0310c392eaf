"""Authorization: open reads, polkit for mutations, root bypass, AllowGroup
without polkitd, deny by default, and a polkit that never answers.

Non-root callers are real processes run as nobody (setpriv) on the private
bus, so the bus policy and GetConnectionUnixUser are the real ones.
"""

from __future__ import annotations

import threading
import time

import pytest
from gi.repository import GLib

import rprocd.bus.auth as auth
from rprocd.bus.auth import NotInTable, in_group, required_action

try:
    from test_bus_fakes import (
        Served,
        as_nobody,
        polkit,  # noqa: F401 - fixture
        private_bus,  # noqa: F401 - fixture
        served,  # noqa: F401 - fixture
        two_cores,
    )
except ModuleNotFoundError:  # tests/unit became a package
    from tests.unit.test_bus_fakes import (  # noqa: F401
        Served,
        as_nobody,
        polkit,
        private_bus,
        served,
        two_cores,
    )

M0 = "/org/rprocd1/processor/m0"
PROCESSOR = "org.rprocd1.Processor"

def start_m0(bus) -> dict:
    return as_nobody(bus, M0, PROCESSOR, "Start", "(s)", "")


def test_table_lookup_denies_by_default():
    assert required_action(PROCESSOR, "Start") == "org.rprocd1.manage"
    assert required_action("org.rprocd1.Manager", "ImportFirmware") == (
        "org.rprocd1.import-firmware")
    assert required_action("org.rprocd1.Manager", "Reload") == "org.rprocd1.configure"
    assert required_action(PROCESSOR, "ReadTrace") is None
    with pytest.raises(NotInTable):
        required_action("org.freedesktop.DBus.Properties", "Set")
    with pytest.raises(NotInTable):
        required_action(PROCESSOR, "SelfDestruct")


def test_in_group_uses_the_user_database():
    assert in_group(65534, "nogroup")
    assert not in_group(65534, "root")
    assert not in_group(65534, "")
    assert not in_group(65534, "no-such-group-here")


def test_reading_is_open_without_polkit(served, private_bus):
    reads = [
        (M0, "org.freedesktop.DBus.Properties", "GetAll", "(s)", PROCESSOR),
        (M0, "org.freedesktop.DBus.Introspectable", "Introspect", ""),
        (M0, "org.freedesktop.DBus.Peer", "Ping", ""),
        (M0, PROCESSOR, "ReadTrace", "(s)", ""),
        ("/org/rprocd1", "org.rprocd1.Manager", "GetProcessor", "(s)", "m0"),
        ("/org/rprocd1", "org.rprocd1.Manager", "InspectFirmware", "(s)", "a.elf"),
        ("/org/rprocd1", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", ""),
    ]
    for call in reads:
        result = as_nobody(private_bus, *call)
        assert result["ok"], (call, result)


def test_without_polkit_only_root_may_mutate(served, private_bus):
    result = start_m0(private_bus)
    assert result["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    assert result["message"] == (
        "m0: Start() refused: polkit is not running, so org.rprocd1.manage is limited to root")
    assert served.manager.processors["m0"].calls == []
    # root needs no polkit
    assert served.call(M0, PROCESSOR, "Start", GLib.Variant("(s)", ("",))) == ()


def test_without_polkit_allow_group_may_mutate(served, private_bus):
    served.manager.config.manager.allow_group = "nogroup"
    assert start_m0(private_bus) == {"ok": True, "out": []}
    assert served.manager.processors["m0"].calls == [("start", "rproc-m0-fw")]
    served.manager.config.manager.allow_group = "root"
    result = as_nobody(private_bus, M0, PROCESSOR, "Stop")
    assert result["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    assert "root or members of AllowGroup=root" in result["message"]


def test_polkit_decides_for_non_root_callers(served, private_bus, polkit):
    result = start_m0(private_bus)
    assert result["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    assert result["message"] == (
        "m0: Start() refused: polkit does not grant org.rprocd1.manage to uid 65534")

    polkit.allow("org.rprocd1.manage")
    assert start_m0(private_bus)["ok"]
    assert served.manager.processors["m0"].calls == [("start", "rproc-m0-fw")]
    reload = as_nobody(private_bus, "/org/rprocd1", "org.rprocd1.Manager", "Reload")
    assert reload["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    assert "org.rprocd1.configure" in reload["message"]
    assert served.manager.reloads == 0

    polkit.allow("org.rprocd1.configure")
    assert as_nobody(private_bus, "/org/rprocd1", "org.rprocd1.Manager", "Reload")["ok"]
    assert served.manager.reloads == 1


def test_root_bypasses_polkit(served, polkit):
    # the mock denies everything
    assert served.call(M0, PROCESSOR, "Start", GLib.Variant("(s)", ("",))) == ()


def test_method_missing_from_the_table_is_denied(served, monkeypatch):
    monkeypatch.delitem(auth.AUTH_TABLE, (PROCESSOR, "ReadTrace"))
    with pytest.raises(GLib.Error) as info:
        served.call(M0, PROCESSOR, "ReadTrace", GLib.Variant("(s)", ("",)))
    assert "org.freedesktop.DBus.Error.AccessDenied" in info.value.message
    assert "not in rprocd's authorization table" in info.value.message


def test_polkit_that_never_answers_times_out_without_blocking(private_bus, polkit, monkeypatch):
    monkeypatch.setattr(auth, "POLKIT_TIMEOUT_MS", 3000)
    server = Served(private_bus, two_cores())
    try:
        polkit.mock("SimulateHang", "(b)", True)
        results: list[dict] = []
        caller = threading.Thread(target=lambda: results.append(start_m0(private_bus)))
        began = time.monotonic()
        caller.start()
        time.sleep(1.0)
        server.call(M0, "org.freedesktop.DBus.Properties", "Get",
                    GLib.Variant("(ss)", (PROCESSOR, "State")))
        assert caller.is_alive() and results == []  # the loop serves others meanwhile
        caller.join(20)
        assert results[0]["error"] == "org.freedesktop.DBus.Error.AccessDenied"
        assert "no answer from polkit about org.rprocd1.manage within 3 s" in (
            results[0]["message"])
        assert time.monotonic() - began >= 3
        assert server.manager.processors["m0"].calls == []
    finally:
        polkit.mock("ReleaseHangingCalls", "()")
        server.close()
