"""The files that install next to the daemon: bus policy, activation, polkit.

The bus policy must never open anything on another service: every <allow>
except own= names send_destination="org.rprocd1". It is also checked live,
included in a private system-like bus, with a caller running as nobody.
"""

from __future__ import annotations

import configparser
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    from test_bus_fakes import as_nobody, private_bus, served  # noqa: F401 - fixtures
except ModuleNotFoundError:  # tests/unit became a package
    from tests.unit.test_bus_fakes import as_nobody, private_bus, served  # noqa: F401

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"
ACTIONS = {
    "org.rprocd1.manage": "auth_admin_keep",
    "org.rprocd1.import-firmware": "auth_admin",
    "org.rprocd1.configure": "auth_admin",
}
INTERFACES = {
    "org.rprocd1.Manager",
    "org.rprocd1.Processor",
    "org.freedesktop.DBus.Properties",
    "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Peer",
    "org.freedesktop.DBus.ObjectManager",
}


def policies() -> list[ET.Element]:
    root = ET.parse(DBUS_DIR / "org.rprocd1.conf").getroot()
    assert root.tag == "busconfig"
    return root.findall("policy")


def test_every_allow_names_our_destination():
    for policy in policies():
        for rule in policy.findall("allow"):
            if "own" in rule.attrib or "own_prefix" in rule.attrib:
                continue
            assert rule.get("send_destination") == "org.rprocd1", ET.tostring(rule)


def test_only_root_owns_the_name():
    owners = [(policy.attrib, rule.attrib) for policy in policies()
              for rule in policy.findall("allow") if "own" in rule.attrib or "own_prefix"
              in rule.attrib]
    assert owners == [({"user": "root"}, {"own": "org.rprocd1"})]


def test_everyone_may_call_our_interfaces_and_nothing_is_denied():
    default = [p for p in policies() if p.get("context") == "default"]
    assert len(default) == 1
    interfaces = {rule.get("send_interface") for rule in default[0].findall("allow")}
    assert interfaces == INTERFACES
    assert all(not p.findall("deny") for p in policies())


def test_policy_live_for_an_unprivileged_caller(served, private_bus):
    assert as_nobody(private_bus, "/org/rprocd1/processor/m0", "org.freedesktop.DBus.Peer",
                     "Ping")["ok"]
    # an interface the policy does not list is refused by the bus itself
    other = as_nobody(private_bus, "/org/rprocd1", "org.example.Nope", "Poke")
    assert other["error"] == "org.freedesktop.DBus.Error.AccessDenied"
    own = as_nobody(private_bus, "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "RequestName", "(su)", "org.rprocd1", 4, dest="org.freedesktop.DBus")
    assert own["error"] == "org.freedesktop.DBus.Error.AccessDenied"


def test_activation_file_hands_over_to_systemd():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DBUS_DIR / "org.rprocd1.service")
    assert dict(parser["D-BUS Service"]) == {
        "Name": "org.rprocd1",
        "Exec": "/bin/false",
        "User": "root",
        "SystemdService": "rprocd.service",
    }


def test_polkit_actions():
    root = ET.parse(DBUS_DIR / "org.rprocd1.policy").getroot()
    assert root.tag == "policyconfig"
    found = {}
    for action in root.findall("action"):
        assert action.findtext("description", "").strip()
        assert action.findtext("message", "").strip()
        defaults = action.find("defaults")
        values = {child.tag: child.text for child in defaults}
        assert set(values) == {"allow_any", "allow_inactive", "allow_active"}
        assert len(set(values.values())) == 1
        found[action.get("id")] = values["allow_active"]
    assert found == ACTIONS


def test_group_rules_example_grants_known_actions():
    text = (DBUS_DIR / "50-rprocd-group.rules.example").read_text()
    assert "polkit.addRule" in text and 'subject.isInGroup("rproc")' in text
    for action in ("org.rprocd1.manage", "org.rprocd1.import-firmware"):
        assert f'"{action}"' in text
