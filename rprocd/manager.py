"""The set of cores: coldplug, hotplug, polling, boot policy, reload.

Discovery feeds device events in (`coldplug`, `device_added`,
`device_removed`, `device_hint`); cores are identified by their kernel name
(the `remoteprocN` index changes with probe order). Duplicate or missing
uevents change nothing: an add of a known device is ignored, a remove of an
unknown one too, and an add that reuses the device of a core we never saw go
replaces it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from gi.repository import GLib

from . import __version__, devcoredump, journal, naming
from . import config as cfg
from .coredump import CoredumpStore
from .crash import CrashServices, CrashTypes
from .errors import ConfigError, Failed, NoSuchProcessor, RprocError
from .paths import Paths
from .processor import ACTIVE, Processor, Shared
from .sysfs import CoreFiles, DeviceGone, FileOps
from .worker import Worker

log = logging.getLogger("rprocd")

# Why the import directory refused a write, and what the administrator does about it.
_IMPORT_HINTS = {
    errno.EROFS: "it is on a read-only file system: set ImportDirectory= to a writable "
                 "directory inside the firmware search path",
    errno.ENOSPC: "the disk is full: free space or lower ImportKeep=",
    errno.EDQUOT: "the disk quota is exhausted: free space or lower ImportKeep=",
    errno.EACCES: "rprocd may not write there: fix the directory's owner or ImportDirectory=",
    errno.EPERM: "rprocd may not write there: fix the directory's owner or ImportDirectory=",
}

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

ImportDone = Callable[[str | None, RprocError | None], None]


class ManagerListener(Protocol):
    def processor_added(self, proc: Processor) -> None: ...

    def processor_removed(self, proc: Processor) -> None: ...


class Manager:
    def __init__(
        self,
        paths: Paths,
        config: cfg.Config,
        ops: FileOps | None = None,
        boot_id_file: Path = BOOT_ID,
        crash_types: CrashTypes | None = None,
    ) -> None:
        self.version = __version__
        self.paths = paths
        self.config = config
        self.processors: dict[str, Processor] = {}  # by object name
        self.listener: ManagerListener | None = None
        self.on_change: Callable[[], None] | None = None  # the daemon's STATUS= line
        self._ops = ops
        # One coredump store, one set of devcoredump claims and one coredump
        # thread for every core (never a core's worker: see crash.py).
        # Crash types come from the kernel log (`Paths.kmsg`, RPROCD_KMSG).
        if crash_types is None:
            from .kmsg import KernelLog

            crash_types = KernelLog(paths.kmsg)
        self._crash = CrashServices(
            paths.sysfs, CoredumpStore(config.manager.coredump_directory, 5), crash_types
        )
        self._shared = Shared(paths, config.manager.firmware_directories, self._crash)
        self._poll_timer = 0
        self._coldplugged = False
        self._held = 0  # a burst of uevents is being handed over (`hold`/`release`)
        self._queued: dict[Processor, list[tuple[str, str, str]]] = {}
        self._import_worker = Worker("import")
        # A daemon restart in the same boot re-adopts every core untouched;
        # EarlyBoot=restart is for what the boot loader started.
        self._first_run = _claim_boot(paths.state_dir / "boot-id", boot_id_file)

    # -- queries -----------------------------------------------------------

    def get_processor(self, name_or_device: str) -> Processor:
        """By kernel name, object name or `remoteprocN`."""
        procs = list(self.processors.values())
        for match in (
            lambda p: p.object_name == naming.escape(name_or_device),
            lambda p: p.name == name_or_device,
            lambda p: p.device == name_or_device,
        ):
            found = next((p for p in procs if match(p)), None)
            if found:
                return found
        known = ", ".join(sorted(p.name for p in procs)) or "none"
        raise NoSuchProcessor(f"no remote processor '{name_or_device}' (known: {known})")

    def status(self) -> str:
        """One line for systemd's STATUS=."""
        procs = sorted(self.processors.values(), key=lambda p: p.name)
        if not procs:
            return "No remote processors found"
        cores = ", ".join(f"{p.name} {p.operation or p.state}" for p in procs)
        return f"{len(procs)} core{'s' * (len(procs) > 1)}: {cores}"

    # -- discovery sink ------------------------------------------------------

    def coldplug(self, syspaths: Iterable[str], done: Callable[[], None]) -> None:
        """The cores present at start; `done()` once every boot action has finished."""
        ordered = sorted(syspaths, key=lambda s: (len(Path(s).name), Path(s).name))
        procs = [p for p in (self._add(s, self._first_run) for s in ordered) if p is not None]
        self._coldplugged = True
        pending = len(procs)
        if not pending:
            done()
            return

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                done()

        for proc in procs:
            self._boot(proc, self._first_run, one_done)

    def device_added(self, syspath: str) -> None:
        self._flush_hints()
        proc = self._add(syspath, True)
        if proc is not None and self._coldplugged:
            self._boot(proc, True, lambda: None)  # a newly probed core: the boot rules apply

    def device_removed(self, syspath: str) -> None:
        self._flush_hints()
        proc = self._find(syspath)
        if proc is not None:
            self._remove(proc)

    def device_hint(self, subsystem: str, action: str, syspath: str) -> None:
        """A uevent that may mean a core changed state: re-read its owner now, or
        at `release()` while a burst is held (one re-read per core and burst).

        A devcoredump is handed to the core it belongs to (its `failing_device`
        is a `remoteprocN` we know); another device's dump is never touched."""
        path = Path(syspath)
        if subsystem == "devcoredump":
            if action != "add":
                return  # a dump going away: nothing to learn
            device = devcoredump.owner(self.paths.sysfs, syspath)
            proc = next((p for p in self.processors.values() if p.device == device), None)
        else:
            proc = self._find(str(path))
        if proc is None:
            return
        if self._held:
            self._queued.setdefault(proc, []).append((subsystem, action, path.name))
        else:
            proc.hints([(subsystem, action, path.name)])

    def hold(self) -> None:
        """A burst of uevents begins: hints are queued per core until `release()`."""
        self._held += 1

    def release(self) -> None:
        """The burst ends: each core handles its hints, in order, after one re-read."""
        self._held = max(0, self._held - 1)
        if not self._held:
            self._flush_hints()

    def _flush_hints(self) -> None:
        queued, self._queued = self._queued, {}
        for proc, hints in queued.items():
            if self.processors.get(proc.object_name) is proc:  # not removed meanwhile
                proc.hints(hints)

    # -- operations -----------------------------------------------------------

    def reload(self) -> None:
        """Apply the configuration files again; on any error keep the current one."""
        try:
            config = cfg.load(self.paths)
        except ConfigError as exc:
            raise Failed(f"configuration not reloaded, the previous one stays: {exc}") from None
        self.config = config
        self._shared.firmware_dirs = config.manager.firmware_directories
        store = self._crash.store
        if store is None or store.directory != config.manager.coredump_directory:
            self._crash.store = CoredumpStore(config.manager.coredump_directory, 5)
        journal.set_level(config.manager.log_level)
        for proc in self.processors.values():
            proc.apply_config(config.processor(proc.name))
        if self._poll_timer:
            GLib.source_remove(self._poll_timer)
            self._poll_timer = 0
        self._schedule_poll()
        sources = ", ".join(map(str, config.sources)) or "built-in defaults"
        log.info("configuration reloaded (%s)", sources)

    def inspect_firmware(self, name: str) -> dict:
        """The validator's report of `name` as the search path resolves it."""
        from rprocd.firmware import read_target, resolve, search_dirs, validate_file
        from rprocd.firmware.findings import NOTE

        path = resolve(name, search_dirs(self.paths, self.config.manager.firmware_directories))
        meant = self._core_for(name)
        candidates = [meant] if meant else list(self.processors.values())
        reports = [
            validate_file(path, read_target(self.paths, p.device, p.name,
                                            p.config.require_resource_table))
            for p in candidates
        ]
        if not reports:
            return validate_file(path, None).to_dict()
        # Fewest errors wins: an image linked for the m33 is judged as the m33's,
        # so a segment outside every core's memory is still named.
        best = min(range(len(reports)), key=lambda i: len(reports[i].errors))
        report = reports[best]
        if meant is None and len(candidates) > 1:
            report.add(NOTE, "core-guessed",
                       f"no core is configured for '{name}': checked against "
                       f"{candidates[best].name}, the core it fits best")
        return report.to_dict()

    def import_firmware(self, fd: int, name: str, done: ImportDone) -> None:
        """Validate and copy the image open on `fd` (ours from now on; closed here)
        into the import directory; `done(firmware_name, None)` or `done(None, error)`."""
        manager = self.config.manager
        proc = self._core_for(name)
        core = (proc.device, proc.name, proc.config.require_resource_table) if proc else None

        def work() -> str:
            from rprocd.firmware import read_target, search_dirs
            from rprocd.firmware.imports import ImportStore

            try:
                dirs = search_dirs(self.paths, manager.firmware_directories)
                target = read_target(self.paths, *core) if core else None
                store = ImportStore(manager.import_directory, dirs, manager.import_keep)
                return store.import_fd(fd, name, target)
            finally:
                os.close(fd)

        def finished(result: str | None, exc: BaseException | None) -> None:
            if exc is None:
                log.info("imported firmware '%s'", result, extra={"RPROC_FIRMWARE": result})
                done(result, None)
            elif isinstance(exc, RprocError):
                done(None, exc)
            elif isinstance(exc, OSError):  # the caller's fd was read: the directory failed
                directory = manager.import_directory
                why = exc.strerror or str(exc)
                hint = _IMPORT_HINTS.get(exc.errno or 0, "see the rprocd journal")
                log.error("importing '%s' into %s failed: %s", name, directory, why)
                done(None, Failed(f"'{name}' was not imported: cannot write to the import "
                                  f"directory {directory} ({why}); {hint}"))
            else:
                log.error("importing '%s' failed", name, exc_info=exc)
                done(None, Failed(f"importing '{name}' failed: {exc}"))

        self._import_worker.submit(work, finished)

    def shutdown(self, done: Callable[[], None]) -> None:
        """SIGTERM: stop the cores with StopOnExit=yes, leave the others as they are."""
        self._stop_polling()
        targets = [
            p for p in self.processors.values() if p.config.stop_on_exit and p.state in ACTIVE
        ]
        pending = len(targets)

        def stopped(proc: Processor, error: RprocError | None) -> None:
            nonlocal pending
            if error is not None:
                log.warning("%s: not stopped on exit: %s", proc.name, error)
            pending -= 1
            if pending == 0:
                done()

        if not targets:
            done()
        for proc in targets:
            log.info("%s: stopping (StopOnExit=yes)", proc.name)
            proc.stop(lambda error, proc=proc: stopped(proc, error))

    def close(self) -> None:
        self._stop_polling()
        for proc in self.processors.values():
            proc.close()
        self._import_worker.close()
        self._crash.close()

    # -- internals ---------------------------------------------------------

    def _add(self, syspath: str, fresh: bool) -> Processor | None:
        """A core found; `fresh`: not a daemon restart (its trace is new to us)."""
        root = Path(syspath)
        device = root.name
        known = self._find(syspath)
        if known is not None and known.files.root == root:
            known.refresh()  # a duplicate add: nothing new, but look again
            return None
        if known is not None:
            self._remove(known)  # its remove uevent was lost and the index reused
        files = CoreFiles(root, device, self.paths.debugfs, self._ops)
        try:
            name = files.read_attr("name")
        except DeviceGone:
            return None
        except OSError as exc:  # kernels before 5.4 have no `name`
            log.warning("%s: no readable 'name' (%s); known by its device name", device, exc)
            name = device
        object_name = naming.object_name(name, device, set(self.processors))
        try:
            proc = Processor(
                files, name, object_name, self.config.processor(name), self._shared, self._changed
            )
        except (NoSuchProcessor, OSError) as exc:
            log.warning("%s: vanished while being read: %s", device, exc)
            return None
        self.processors[object_name] = proc
        proc.apply_config(proc.config)
        proc.log(logging.INFO, "%s: found as %s, %s", name, device, proc.state)
        if self.listener:
            self.listener.processor_added(proc)
        proc.begin(fresh)
        self._changed(proc)
        return proc

    def _remove(self, proc: Processor) -> None:
        del self.processors[proc.object_name]
        proc.close()
        proc.log(logging.INFO, "%s: removed (%s is gone)", proc.name, proc.device)
        if self.listener:
            self.listener.processor_removed(proc)
        if self.on_change:
            self.on_change()

    def _find(self, syspath: str) -> Processor | None:
        """The core a device path belongs to: the `remoteprocN` in its path."""
        by_device = {p.device: p for p in self.processors.values()}
        return next((by_device[part] for part in reversed(Path(syspath).parts)
                     if part in by_device), None)

    def _core_for(self, firmware: str) -> Processor | None:
        """The core a firmware is meant for: the one configured for it, or the only one."""
        procs = list(self.processors.values())
        meant = [p for p in procs if firmware in (p.default_firmware, p.properties()["Firmware"])]
        if len(meant) == 1:
            return meant[0]
        return procs[0] if len(procs) == 1 else None

    def _boot(self, proc: Processor, fresh: bool, done: Callable[[], None]) -> None:
        """AutoStart= and EarlyBoot= for a core just found; `fresh` = not a daemon restart."""
        conf, state = proc.config, proc.state

        def report(action: str) -> Callable[[RprocError | None], None]:
            def finished(error: RprocError | None) -> None:
                if error is not None:
                    log.error("%s: %s at boot failed: %s", proc.name, action, error)
                done()

            return finished

        if state == "offline" and conf.auto_start:
            proc.start(conf.firmware, report("AutoStart"))
        elif state in ACTIVE and fresh and conf.early_boot == "restart":
            proc.restart(conf.firmware, report("EarlyBoot=restart"))
        elif state == "detached" and conf.auto_start:
            then_restart = fresh and conf.early_boot == "restart"

            def attached(error: RprocError | None) -> None:
                if error is None and then_restart:
                    proc.restart(conf.firmware, report("EarlyBoot=restart"))
                else:
                    report("attaching")(error)

            proc.start("", attached)
        else:
            if state in ACTIVE:
                proc.log(logging.INFO, "%s: adopted as %s, untouched", proc.name, state)
            done()

    def _changed(self, proc: Processor) -> None:
        if proc.gone and self.processors.get(proc.object_name) is proc:
            self._remove(proc)
            return
        self._schedule_poll()
        if self.on_change:
            self.on_change()

    def _schedule_poll(self) -> None:
        """Poll only while some core can change by itself; the timer stops itself after."""
        if not self._poll_timer and any(p.needs_poll for p in self.processors.values()):
            interval = int(self.config.manager.poll_interval * 1000)
            self._poll_timer = GLib.timeout_add(interval, self._poll)

    def _poll(self) -> bool:
        for proc in list(self.processors.values()):
            proc.poll()
        if any(p.needs_poll for p in self.processors.values()):
            return GLib.SOURCE_CONTINUE
        self._poll_timer = 0
        return GLib.SOURCE_REMOVE

    def _stop_polling(self) -> None:
        if self._poll_timer:
            GLib.source_remove(self._poll_timer)
            self._poll_timer = 0


def _claim_boot(marker: Path, boot_id_file: Path) -> bool:
    """True the first time the daemon runs in this boot (records the boot id)."""
    try:
        boot_id = boot_id_file.read_text().strip()
    except OSError:
        return True
    try:
        if marker.read_text().strip() == boot_id:
            return False
    except OSError:
        pass
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(boot_id + "\n")
    except OSError as exc:
        log.warning("cannot record the boot id in %s (%s): a daemon restart would apply "
                    "EarlyBoot= again", marker, exc)
    return True
