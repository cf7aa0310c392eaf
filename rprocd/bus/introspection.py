"""Names of the D-Bus API v1 and its interface descriptions.

The XML files in `dbus/` are the contract: the adapter registers exactly what
they say and takes every property's signature from them, so the code cannot
drift from the documented API (a unit test compares the live `Introspect`).
"""

from __future__ import annotations

from pathlib import Path

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio  # noqa: E402

BUS_NAME = "org.rprocd1"
MANAGER_PATH = "/org/rprocd1"
PROCESSOR_PATH_PREFIX = "/org/rprocd1/processor/"

MANAGER = "org.rprocd1.Manager"
PROCESSOR = "org.rprocd1.Processor"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

# The standard interface, as in the D-Bus specification; GDBus answers
# Introspect, Peer and Properties itself but not ObjectManager.
_OBJECT_MANAGER_XML = """
<node>
  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects">
      <arg name="objects" type="a{oa{sa{sv}}}" direction="out"/>
    </method>
    <signal name="InterfacesAdded">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="a{sa{sv}}"/>
    </signal>
    <signal name="InterfacesRemoved">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="as"/>
    </signal>
  </interface>
</node>
"""


def interface_file(interfaces_dir: Path, name: str) -> Path:
    """`dbus/org.rprocd1.Manager.xml`, installed as /usr/share/dbus-1/interfaces/..."""
    return interfaces_dir / f"{name}.xml"


def load_interface(interfaces_dir: Path, name: str) -> Gio.DBusInterfaceInfo:
    """Parse one interface file; OSError or GLib.Error if it is missing or broken."""
    path = interface_file(interfaces_dir, name)
    node = Gio.DBusNodeInfo.new_for_xml(path.read_text(encoding="utf-8"))
    info = node.lookup_interface(name)
    if info is None:
        raise OSError(f"{path}: no interface {name}")
    # No cache_build(): GLib keys that cache by address and never drops it
    # unless released, so a later info at the same address would get stale data.
    return info


def object_manager_interface() -> Gio.DBusInterfaceInfo:
    return Gio.DBusNodeInfo.new_for_xml(_OBJECT_MANAGER_XML).interfaces[0]


def property_signatures(info: Gio.DBusInterfaceInfo) -> dict[str, str]:
    """Property name -> D-Bus signature, in XML order."""
    return {prop.name: prop.signature for prop in info.properties}


def const_properties(info: Gio.DBusInterfaceInfo) -> frozenset[str]:
    """Properties annotated EmitsChangedSignal=const: never in PropertiesChanged."""
    return frozenset(
        prop.name
        for prop in info.properties
        if Gio.DBusAnnotationInfo.lookup(
            prop.annotations, "org.freedesktop.DBus.Property.EmitsChangedSignal"
        )
        == "const"
    )


def polkit_actions(info: Gio.DBusInterfaceInfo) -> dict[str, str]:
    """Method -> the org.rprocd1.PolkitAction annotation, as documented in the XML."""
    actions = {}
    for method in info.methods:
        action = Gio.DBusAnnotationInfo.lookup(method.annotations, "org.rprocd1.PolkitAction")
        if action:
            actions[method.name] = action
    return actions
