"""Plain Python values -> variants: XML signatures for properties, a{sv} reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from gi.repository import GLib

from rprocd.bus.reply import dbus_error, one_line
from rprocd.bus.variants import properties_to_vardict, report_to_vardict, to_variant
from rprocd.errors import AccessDenied, BadState, InvalidArgs, Timeout


def types(vardict: dict[str, GLib.Variant]) -> dict[str, str]:
    return {key: value.get_type_string() for key, value in vardict.items()}


def test_property_values_take_the_xml_signature():
    assert to_variant("u", 3).get_type_string() == "u"
    assert to_variant("t", 1_700_000_000_000_000).unpack() == 1_700_000_000_000_000
    assert to_variant("as", ("rpmsg-tty",)).unpack() == ["rpmsg-tty"]
    assert to_variant("ao", ["/org/rprocd1/processor/m4"]).get_type_string() == "ao"


def test_none_and_harmless_mismatches():
    assert to_variant("s", None).unpack() == ""
    assert to_variant("t", None).unpack() == 0
    assert to_variant("b", None).unpack() is False
    assert to_variant("as", None).unpack() == []
    assert to_variant("s", Path("/var/lib/rprocd/x.core")).unpack() == "/var/lib/rprocd/x.core"
    assert to_variant("b", 1).unpack() is True
    assert to_variant("u", True).unpack() == 1


def test_values_that_do_not_fit_raise():
    with pytest.raises((TypeError, ValueError, OverflowError)):
        to_variant("u", -1)
    with pytest.raises((TypeError, ValueError)):
        to_variant("u", "three")


def test_properties_keep_xml_order_and_skip_what_the_core_lacks():
    out = properties_to_vardict({"B": True, "A": "x", "Extra": 1}, {"A": "s", "B": "b", "C": "t"})
    assert list(out) == ["A", "B"]
    assert types(out) == {"A": "s", "B": "b"}


def test_report_types_are_chosen_recursively():
    report = {
        "format": "ELF",
        "entry": 0x10000000,
        "delta": -4,
        "signed": False,
        "ratio": 0.5,
        "raw": b"\x01\x02",
        "path": Path("/lib/firmware/a.elf"),
        "segments": [{"vaddr": 1, "flags": "RX"}],
        "resource_table": {"entries": [{"type": "vdev", "vrings": [16, 16]}], "count": 1},
        "problems": ["no resource table"],
        "empty": [],
        "mixed": [1, "a"],
        "numbers": [1, 2],
        "skipped": None,
    }
    out = report_to_vardict(report)
    assert types(out) == {
        "format": "s", "entry": "t", "delta": "x", "signed": "b", "ratio": "d", "raw": "ay",
        "path": "s", "segments": "aa{sv}", "resource_table": "a{sv}", "problems": "as",
        "empty": "as", "mixed": "av", "numbers": "at",
    }
    packed = GLib.Variant("a{sv}", out)
    assert packed.unpack()["resource_table"]["entries"][0]["vrings"] == [16, 16]


def test_error_names_and_one_line_messages():
    assert dbus_error(BadState("m4: is running; stop it first"), "m4.Start") == (
        "org.rprocd1.Error.BadState", "m4: is running; stop it first")
    assert dbus_error(Timeout("m4: no\nanswer"), "m4.Stop") == (
        "org.rprocd1.Error.Timeout", "m4: no answer")
    assert dbus_error(InvalidArgs("bad"), "x")[0] == "org.freedesktop.DBus.Error.InvalidArgs"
    assert dbus_error(AccessDenied("no"), "x")[0] == "org.freedesktop.DBus.Error.AccessDenied"
    name, message = dbus_error(KeyError("State"), "m4.Get")
    assert name == "org.rprocd1.Error.Failed"
    assert message == "m4.Get: internal error (KeyError: 'State'); see the rprocd journal"
    assert one_line("  a\n\tb  ") == "a b"
