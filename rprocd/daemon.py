"""`rprocd`: configuration, main loop, signals, the D-Bus adapter, readiness.

systemd `Type=notify`: READY=1 goes out once the bus name is ours and every
core present at start has been found and given its boot action, so units
ordered after rprocd find the firmware running. SIGTERM stops only the cores
with StopOnExit=yes and exits 0; SIGHUP reloads the configuration.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence

from gi.repository import GLib

from . import __version__, journal
from . import config as cfg
from .errors import ConfigError, Failed
from .manager import Manager
from .notify import Notifier
from .paths import Paths

log = logging.getLogger("rprocd")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rprocd", description="System daemon for Linux remote processors (remoteproc)."
    )
    parser.add_argument("--version", action="version", version=f"rprocd {__version__}")
    parser.add_argument(
        "--check-config", action="store_true",
        help="check rprocd.conf and rprocd.conf.d/*.conf, then exit (1 on any error)",
    )
    args = parser.parse_args(argv)
    paths = Paths.from_environ()
    try:
        config = cfg.load(paths)
    except ConfigError as exc:
        print(f"rprocd: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        sources = ", ".join(map(str, config.sources)) or f"no file in {paths.config_dir}, defaults"
        print(f"rprocd: configuration OK ({sources})")
        return 0
    journal.setup(config.manager.log_level)
    return Daemon(paths, config).run()


class Daemon:
    def __init__(self, paths: Paths, config: cfg.Config) -> None:
        self.paths = paths
        self.config = config
        self.loop = GLib.MainLoop()
        self.notifier = Notifier()
        self.exit_code = 0
        self._bus_owned = False
        self._coldplugged = False
        self._ready = False
        self._stopping = False
        self._status = ""

    def run(self) -> int:
        from rprocd.bus.service import BusService

        from .discovery import Discovery

        log.info("rprocd %s starting", __version__)
        self.notifier.status("Discovering remote processors")
        self.manager = manager = Manager(self.paths, self.config)
        discovery = Discovery(self.paths, manager)
        discovery.start_monitor()
        manager.coldplug(discovery.coldplug(), self._coldplug_done)
        manager.on_change = self._update_status
        bus = BusService(manager)
        bus.publish(on_ready=self._bus_ready, on_lost=self._bus_lost)

        sources = [
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._terminate),
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._terminate),
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGHUP, self._reload),
        ]
        if self.notifier.watchdog_interval:
            interval = max(1, int(self.notifier.watchdog_interval * 1000))
            sources.append(GLib.timeout_add(interval, self.notifier.watchdog))
        try:
            self.loop.run()
        finally:
            for source in sources:
                GLib.source_remove(source)
            bus.close()
            discovery.close()
            manager.close()
            self.notifier.close()
        log.info("rprocd exits (%d)", self.exit_code)
        return self.exit_code

    def _coldplug_done(self) -> None:
        self._coldplugged = True
        self._maybe_ready()

    def _bus_ready(self) -> None:
        self._bus_owned = True
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self._ready or self._stopping or not (self._bus_owned and self._coldplugged):
            return
        self._ready = True
        self._status = self.manager.status()
        self.notifier.ready(self._status)
        log.info("ready: %s", self._status)

    def _update_status(self) -> None:
        status = self.manager.status()
        if self._ready and status != self._status:
            self._status = status
            self.notifier.status(status)

    def _bus_lost(self, reason: str) -> None:
        log.error("exiting: %s", reason)
        self.exit_code = 1
        self.loop.quit()

    def _terminate(self) -> bool:
        if self._stopping:  # a second signal: do not wait for the cores
            self.loop.quit()
            return GLib.SOURCE_CONTINUE
        self._stopping = True
        self.notifier.stopping("Stopping cores with StopOnExit=yes")
        log.info("terminating")
        self.manager.shutdown(self.loop.quit)
        return GLib.SOURCE_CONTINUE

    def _reload(self) -> bool:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            self.manager.reload()
        except Failed as exc:
            log.error("%s", exc)
        self.notifier.send("READY=1")
        return GLib.SOURCE_CONTINUE
