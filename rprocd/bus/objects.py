"""The object tree: which Processor lives at which path, and its properties.

Paths come from the core (`Processor.object_name`, escaped by
`rprocd.naming`); property types come from the XML. Nothing here talks to
the bus, so the same view serves method replies and signals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from gi.repository import Gio, GLib

from rprocd.bus.introspection import (
    MANAGER,
    PROCESSOR,
    PROCESSOR_PATH_PREFIX,
    const_properties,
    property_signatures,
)
from rprocd.bus.variants import properties_to_vardict, to_variant

log = logging.getLogger("rprocd.bus")

_DEVICE_NUMBER = re.compile(r"(\d+)$")


def processor_path(proc: Any) -> str:
    """`/org/rprocd1/processor/<object_name>`; ValueError if not a valid path."""
    path = PROCESSOR_PATH_PREFIX + proc.object_name
    if not GLib.Variant.is_object_path(path):
        raise ValueError(f"{proc.name}: {path!r} is not a valid D-Bus object path")
    return path


def _device_order(proc: Any) -> tuple[int, str, str]:
    """remoteproc2 before remoteproc10: the order users see in sysfs."""
    device = str(getattr(proc, "device", ""))
    match = _DEVICE_NUMBER.search(device)
    return (int(match.group(1)) if match else 1 << 30, device, str(proc.name))


class ObjectTree:
    """Registered processors by path, and their D-Bus property values."""

    def __init__(
        self,
        manager: Any,
        manager_info: Gio.DBusInterfaceInfo,
        processor_info: Gio.DBusInterfaceInfo,
    ) -> None:
        self.manager = manager
        self._processors: dict[str, Any] = {}
        self.manager_signatures = property_signatures(manager_info)
        self.processor_signatures = property_signatures(processor_info)
        self._const = const_properties(processor_info)

    def add(self, path: str, proc: Any) -> None:
        self._processors[path] = proc

    def remove(self, path: str) -> Any | None:
        return self._processors.pop(path, None)

    def get(self, path: str) -> Any | None:
        return self._processors.get(path)

    def find(self, proc: Any) -> str | None:
        """The path a processor object is registered at (identity, not name)."""
        return next((path for path, known in self._processors.items() if known is proc), None)

    def paths(self) -> list[str]:
        """Every processor path, in device order (the `Processors` property)."""
        ordered = sorted(self._processors.items(), key=lambda item: _device_order(item[1]))
        return [path for path, _proc in ordered]

    def manager_properties(self) -> dict[str, GLib.Variant]:
        values = {"Version": self.manager.version, "Processors": self.paths()}
        return properties_to_vardict(values, self.manager_signatures)

    def processor_properties(self, proc: Any) -> dict[str, GLib.Variant]:
        return properties_to_vardict(proc.properties(), self.processor_signatures)

    def changed_properties(self, changed: Mapping[str, Any]) -> dict[str, GLib.Variant]:
        """What goes into PropertiesChanged: documented, non-const properties."""
        unknown = set(changed) - set(self.processor_signatures)
        if unknown:
            log.debug("undocumented properties not announced: %s", ", ".join(sorted(unknown)))
        return {
            name: to_variant(self.processor_signatures[name], value)
            for name, value in changed.items()
            if name in self.processor_signatures and name not in self._const
        }

    def managed_objects(self) -> dict[str, dict[str, dict[str, GLib.Variant]]]:
        """GetManagedObjects: each processor with its interface's properties."""
        return {
            path: {PROCESSOR: self.processor_properties(self._processors[path])}
            for path in self.paths()
        }

    def properties_of(self, path: str, interface: str) -> dict[str, GLib.Variant]:
        """GetAll on `path`: {} for an interface without properties."""
        if interface == MANAGER:
            return self.manager_properties()
        if interface == PROCESSOR:
            proc = self._processors.get(path)
            return {} if proc is None else self.processor_properties(proc)
        return {}
