"""pyudev enumeration and monitor, on the GLib loop.

Remoteproc devices come and go with their driver (coldplug by enumeration,
hotplug by uevents). The kernel announces no state change, but virtio, rpmsg,
devcoredump and `rproc-virtio.*` platform devices appear and vanish when a
core boots, stops or crashes: those uevents are passed on as hints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from gi.repository import GLib

from .paths import Paths

log = logging.getLogger("rprocd")

HINT_SUBSYSTEMS = ("virtio", "rpmsg", "devcoredump", "platform")


class DeviceSink(Protocol):
    def device_added(self, syspath: str) -> None: ...

    def device_removed(self, syspath: str) -> None: ...

    def device_hint(self, subsystem: str, action: str, syspath: str) -> None: ...

    def hold(self) -> None:
        """A burst begins: hints may be queued until `release()`."""

    def release(self) -> None:
        """The burst ends: handle what was queued, in order."""


class Discovery:
    def __init__(self, paths: Paths, sink: DeviceSink) -> None:
        import pyudev

        self._context = pyudev.Context()
        self._sink = sink
        self._udev_sys = Path(self._context.sys_path)
        self._sysfs = paths.sysfs
        self._monitor: pyudev.Monitor | None = None
        self._watch = 0
        self._burst: list[tuple[str, str, str]] = []  # (action, subsystem, sys_path)
        self._burst_source = 0

    def start_monitor(self) -> None:
        """Listen before enumerating, so a core probed in between is not missed
        (the duplicate add this may cause is ignored by the sink)."""
        import pyudev

        try:
            monitor = pyudev.Monitor.from_netlink(self._context)
            for subsystem in ("remoteproc", *HINT_SUBSYSTEMS):
                monitor.filter_by(subsystem)
            monitor.start()
        except (OSError, pyudev.DeviceNotFoundError) as exc:
            log.warning("no udev monitor (%s): cores that appear later are not seen", exc)
            return
        self._monitor = monitor
        self._watch = GLib.unix_fd_add_full(
            GLib.PRIORITY_DEFAULT, monitor.fileno(), GLib.IOCondition.IN, self._on_readable
        )

    def coldplug(self) -> list[str]:
        """The sysfs directories of the remoteproc devices present now."""
        devices = self._context.list_devices(subsystem="remoteproc")
        return [self._rebase(d.sys_path) for d in devices]

    def close(self) -> None:
        if self._watch:
            GLib.source_remove(self._watch)
            self._watch = 0
        if self._burst_source:
            GLib.source_remove(self._burst_source)
            self._burst_source = 0
        self._burst.clear()
        self._monitor = None

    def _on_readable(self, _fd: int, _condition: GLib.IOCondition) -> bool:
        assert self._monitor is not None
        while (device := self._monitor.poll(timeout=0)) is not None:
            self._burst.append((device.action or "", device.subsystem or "", device.sys_path))
        if self._burst and not self._burst_source:
            # A boot, stop or crash sends about ten child uevents: those that
            # arrive before the loop comes round again are one burst, and each
            # core re-reads its files once per burst instead of once per event.
            # No timer: a delay here would let the next crash's kernel log line
            # be taken for a repeat of the one whose end is still queued.
            self._burst_source = GLib.idle_add(self._flush, priority=GLib.PRIORITY_DEFAULT)
        return GLib.SOURCE_CONTINUE

    def _flush(self) -> bool:
        """The burst, in the kernel's order, with the sink holding its hints."""
        self._burst_source = 0
        burst, self._burst = self._burst, []
        self._sink.hold()
        try:
            for action, subsystem, sys_path in burst:
                try:
                    self._dispatch(action, subsystem, sys_path)
                except Exception:  # one bad event must not end hotplug
                    log.exception("handling the uevent of %s failed", sys_path)
        finally:
            try:
                self._sink.release()
            except Exception:
                log.exception("handling a burst of uevents failed")
        return GLib.SOURCE_REMOVE

    def _dispatch(self, action: str, subsystem: str, sys_path: str) -> None:
        syspath = self._rebase(sys_path)
        log.debug("uevent %s %s %s", action, subsystem, syspath)
        if action in ("bind", "unbind"):
            return  # a driver (un)bound to a child: its add/remove told everything already
        if subsystem == "remoteproc" and action == "add":
            self._sink.device_added(syspath)
        elif subsystem == "remoteproc" and action == "remove":
            self._sink.device_removed(syspath)
        elif subsystem != "platform" or Path(syspath).name.startswith("rproc-virtio."):
            self._sink.device_hint(subsystem, action, syspath)

    def _rebase(self, sys_path: str) -> str:
        """udev's `/sys/...` path under our sysfs root (they differ only in tests)."""
        if self._sysfs == self._udev_sys:
            return sys_path
        try:
            return str(self._sysfs / Path(sys_path).relative_to(self._udev_sys))
        except ValueError:
            return sys_path
