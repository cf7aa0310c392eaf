"""The two seams between the emulated kernel and the machinery that exposes it.

The kernel (`kernel.py`) only knows these interfaces; the umockdev testbed and
the FUSE filesystem implement them, and kernel unit tests use recording fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass
class SimFile:
    """A file with kernel semantics: `read` returns the whole content,
    `write` gets one write(2)'s bytes and returns the count or raises OSError."""

    mode: int
    read: Callable[[], bytes] | None = None
    write: Callable[[bytes], int] | None = None


class DeviceSink(Protocol):
    """The udev/sysfs side: class and platform devices with their uevents."""

    def add(
        self,
        subsystem: str,
        name: str,
        parent: str | None,
        properties: dict[str, str],
        files: dict[str, SimFile],
        links: dict[str, str],
    ) -> str:
        """Create a device under `parent` (a syspath, None for virtual), emit
        `add`, and return its syspath (e.g. `/sys/devices/platform/soc/...`)."""

    def remove(self, syspath: str) -> None:
        """Emit `remove` and delete the device and its children."""

    def uevent(self, syspath: str, action: str) -> None:
        """Emit `change`, `bind`, `unbind`, ... for an existing device."""

    def link(self, syspath: str, name: str, target: str | None) -> None:
        """Create (target = syspath) or delete (None) a symlink inside a device."""


class DebugfsSink(Protocol):
    """The debugfs side (`/sys/kernel/debug/<relpath>`)."""

    def add_dir(self, relpath: str, files: dict[str, SimFile]) -> None: ...

    def remove_dir(self, relpath: str) -> None: ...
