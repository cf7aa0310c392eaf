"""One core: its state machine, operations, properties, errno -> typed error.

Everything here runs on the GLib main loop except the `_io_*` functions and
`_validate`, which run on the core's worker thread and touch only the kernel
files. An operation is a generator ("plan") that yields blocking steps to the
worker and gets their results back, so a multi-step operation (a firmware
switch with rollback) reads top to bottom while the loop stays free.
"""

from __future__ import annotations

import errno as E
import logging
import os
import re
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from gi.repository import GLib

from . import events, rpmsg
from .config import ProcessorConfig
from .crash import CrashServices, CrashSupervisor
from .errors import (
    BadState,
    Busy,
    Failed,
    FirmwareNotFound,
    InvalidArgs,
    InvalidFirmware,
    NoSuchProcessor,
    NotSupported,
    RprocError,
    Timeout,
)
from .paths import Paths
from .sysfs import GONE_ERRNOS, CoreFiles, DeviceGone
from .tracelog import TraceLog
from .worker import Worker, WorkerTimeout

log = logging.getLogger("rprocd")

ACTIVE = frozenset({"running", "attached"})
QUIET = frozenset({"offline", "detached"})  # states nothing changes by itself
MAX_STOP_WRITES = 4  # each `stop` drops one kernel power reference
UNBIND_SETTLE = 0.5  # s: how long an unbind racing a start may take to remove the core
#: Poll ticks of a running core between two full re-reads (rpmsg channels,
#: trace buffer list): a safety net for a lost uevent, not the usual path.
RESCAN_TICKS = 10
_TRACE_NAME = re.compile(r"trace(0|[1-9][0-9]{0,3})")  # fullmatch: no "trace0\n"

Done = Callable[[RprocError | None], None]


class ProcessorListener(Protocol):
    def properties_changed(self, proc: Processor, changed: dict[str, object]) -> None: ...

    def crashed(self, proc: Processor, crash_type: str, time_usec: int, coredump: str) -> None: ...


@dataclass
class Shared:
    """What every core needs from the daemon-wide configuration (owned by the Manager)."""

    paths: Paths
    firmware_dirs: tuple[Path, ...] = ()  # FirmwareDirectories=
    crash: CrashServices | None = None  # coredump store, claims, thread (made on first use)


class KernelError(Exception):
    """A write the kernel refused, with the state read right after it."""

    def __init__(self, attr: str, value: str, error: OSError, state: str) -> None:
        super().__init__(f"{attr} <- {value}: {error}")
        self.attr = attr
        self.errno = error.errno or 0
        self.state = state

    @property
    def why(self) -> str:
        name = E.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {os.strerror(self.errno)}"


class _Io(NamedTuple):
    """One blocking step for the worker; `timeout` None = no deadline; `reread`
    False: the step writes nothing to the kernel (validation), so nothing to re-read."""

    fn: Callable[[], Any]
    timeout: float | None = None
    reread: bool = True


Plan = Generator[_Io, Any, None]


def now_usec() -> int:
    return time.time_ns() // 1000


class Processor:
    """A remote processor, known by its kernel `name`, reached through `remoteprocN`."""

    def __init__(
        self,
        files: CoreFiles,
        name: str,
        object_name: str,
        config: ProcessorConfig,
        shared: Shared,
        on_change: Callable[[Processor], None] | None = None,
    ) -> None:
        self.files = files
        self.name = name
        self.device = files.device
        self.object_name = object_name
        self.config = config
        self.shared = shared
        self.listener: ProcessorListener | None = None
        self.worker = Worker(self.device)
        self._on_change = on_change
        self._done: Done | None = None
        self._auto = False  # the operation running is rprocd's own (Restart=on-crash)
        self._blocked = False  # a write that timed out has not returned yet
        self._checked: str | None = None  # the state `_launch` read, for the plan's gate
        self._of_node: str | None = None  # device tree node ("" none), once looked up
        self._refresh_pending = False  # a full refresh is queued (`_refresh_soon`)
        self._closed = False  # removed: nothing queued acts any more
        self.gone = False  # the sysfs directory vanished
        self.clock: Callable[[], int] = now_usec  # realtime µs (crash times; tests replace it)
        state = self._read_state()
        firmware = files.read_optional("firmware")
        fw_format = files.read_optional("fw_format")
        children = files.children()
        self._kernel_default = (
            firmware if firmware and firmware != "unknown" else f"rproc-{name}-fw"
        )
        self._props: dict[str, object] = {
            "Name": name,
            "Device": self.device,
            "State": state,
            "Operation": "",
            "Failed": False,
            "LastError": "",
            "Firmware": firmware,
            "DefaultFirmware": config.firmware or self._kernel_default,
            "FirmwareFormat": fw_format if fw_format in ("ELF", "TEE") else "",
            "Recovery": files.read_optional("recovery"),
            "RestartPolicy": config.restart,
            "CoredumpMode": files.read_optional("coredump"),
            "CrashCount": 0,
            "LastCrashType": "",
            "LastCrashTime": 0,
            "LastCoredump": "",
            "RunningSince": now_usec() if state in ACTIVE else 0,
            "RpmsgChannels": rpmsg.names(children.devices),
            "TraceBuffers": files.trace_buffers(),
        }
        self.virtio_now: list[str] = children.virtio  # as of the last refresh
        self._had_vdevs = bool(children.vdev_parents)
        self._ticks = 0  # polls since the last full re-read
        self.trace = TraceLog(files, name, self.device)
        self.trace.forwarding = config.trace_forward
        if shared.crash is None:
            shared.crash = CrashServices(shared.paths.sysfs)
        self.crash = CrashSupervisor(self, shared.crash, self.virtio_now)

    # -- the API -----------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self._props["State"])

    @property
    def operation(self) -> str:
        return str(self._props["Operation"])

    @property
    def default_firmware(self) -> str:
        return str(self._props["DefaultFirmware"])

    @property
    def trace_buffers(self) -> list[str]:
        return list(self._props["TraceBuffers"])  # type: ignore[call-overload]

    @property
    def needs_poll(self) -> bool:
        """Whether the state can change without us writing (the kernel never says so)."""
        return self.state not in QUIET or self.operation != "" or self.crash.busy

    def properties(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, list) else v for k, v in self._props.items()}

    def start(self, firmware: str, done: Done) -> None:
        """Boot `firmware` ("" = DefaultFirmware) on an offline core, or attach a detached one."""
        self._launch(self._start_plan(firmware), done, user=True)

    def stop(self, done: Done) -> None:
        """Stop a running/attached core; a crashed one only where the kernel allows it
        (7.2+), else BadState saying to Recover() first."""
        self._launch(self._stop_plan(), done, user=True)

    def restart(self, firmware: str, done: Done) -> None:
        """Stop then start; with another firmware a switch that rolls back on failure."""
        self._launch(self._restart_plan(firmware), done, user=True)

    def detach(self, done: Done) -> None:
        self._launch(self._detach_plan(), done, user=True)

    def recover(self, done: Done) -> None:
        self._launch(self._recover_plan(), done, user=True)

    def auto_recover(self, done: Done) -> None:
        """Restart=on-crash: rprocd's own recovery (no start-limit re-arm on success)."""
        self._launch(self._recover_plan(), done, user=False)

    def reset_failed(self) -> None:
        """Clear Failed, LastError and the start limit; Restart= applies again."""
        self._update({"Failed": False, "LastError": ""})
        self.crash.reset_failed()

    def devcoredump_added(self, devcd: str) -> None:
        """A devcoredump whose failing device is this core (`devcdM`)."""
        self.crash.dump_added(devcd)

    def begin(self, fresh: bool) -> None:
        """Supervision starts (after the listener is attached). `fresh`: the first
        daemon run in this boot, or a newly probed core: its trace is forwarded
        from the start; otherwise (a daemon restart) what is there was sent already."""
        if self.state in ACTIVE or self.state == "crashed":
            if fresh:
                self.trace.read(self.trace_buffers)
            else:
                self.trace.prime(self.trace_buffers)
        if self.state == "crashed" and not self.crash.open:
            self.crash.crashed("unknown", "crashed")
        else:
            self.crash.scan_dumps()  # a dump of a crash while the daemon was not running

    def read_trace(self, buffer: str) -> str:
        buffer = buffer or "trace0"
        if not _TRACE_NAME.fullmatch(buffer):
            raise InvalidArgs(
                f"{self.name}: '{buffer}' is not a trace buffer; use trace0, trace1, ... "
                "as listed in TraceBuffers"
            )
        try:
            data = self.files.read_trace(buffer)
        except OSError as exc:
            if exc.errno in (E.EACCES, E.EPERM):
                raise NotSupported(
                    f"{self.name}: debugfs is not readable; run rprocd as root with "
                    "debugfs mounted on /sys/kernel/debug"
                ) from None
            buffers = ", ".join(self.files.trace_buffers()) or "none"
            saved = self.crash.last_trace_file()
            raise BadState(
                f"{self.name}: no trace buffer '{buffer}' now (present: {buffers}); "
                "trace buffers exist while the firmware runs and declares them in its "
                "resource table"
                + (f"; the text before the last crash is in {saved}" if saved else "")
            ) from None
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    # -- state tracking ----------------------------------------------------

    def poll(self) -> None:
        """Timer tick: read `state`; everything else only when it changed. While the
        core runs: its trace buffers (new lines); every `RESCAN_TICKS` ticks the
        rest too (rpmsg channels, trace buffer list), in case a uevent was lost:
        uevents tell every change of those, and walking the tree every second
        would be most of the daemon's idle cost."""
        try:
            state = self.files.state()
        except DeviceGone:
            self.gone = True  # its remove uevent may have been lost: tell the manager
            if self._on_change:
                self._on_change(self)
            return
        except OSError:
            return
        self._ticks += 1
        if state != self.state or (state in ACTIVE and self._ticks >= RESCAN_TICKS):
            self.refresh()
        elif state in ACTIVE:
            self.trace.read(self.trace_buffers)
        self.crash.tick()

    def refresh(
        self, gone_child: str = "", read_trace: bool = True, gone: Iterable[str] = (),
        light: bool = False,
    ) -> None:
        """Re-read everything from the kernel, announce what changed, and let the
        crash supervision judge the state change.

        `gone_child` (and `gone`) are child devices whose `remove` uevent we are
        handling (the directory may still be visible for a moment). `read_trace`
        False leaves the trace buffers for the caller to read (a crash may be
        found first, whose last words must be taken before). `light` reads only
        what judging a state change needs (state, child devices): the rest
        (firmware, recovery, coredump, trace buffers) is left to a full refresh
        soon after (an operation's reply does not wait for it)."""
        gone = {gone_child, *gone} - {""}
        self._ticks = 0
        try:
            state = self.files.state()
            children = self.files.children()
            changes: dict[str, object] = {
                "State": state,
                "RpmsgChannels": rpmsg.names(children.devices, gone),
            }
            if not light:
                changes.update({
                    "Firmware": self.files.read_optional("firmware"),
                    "Recovery": self.files.read_optional("recovery"),
                    "CoredumpMode": self.files.read_optional("coredump"),
                    "TraceBuffers": self.files.trace_buffers(),
                })
            virtio = children.virtio
            vdevs = bool(children.vdev_parents)
        except (DeviceGone, OSError):
            return
        old = self.state
        if state in ACTIVE:
            if old not in ACTIVE:
                changes["RunningSince"] = now_usec()
        else:
            changes["RunningSince"] = 0
        # What a stop leaves (and a recovery does not): no vdev device, no trace buffer.
        had = self._had_vdevs or bool(self._props["TraceBuffers"])
        traces = changes.get("TraceBuffers", self._props["TraceBuffers"])
        stopped_outside = had and not vdevs and not traces
        self._had_vdevs = vdevs
        self.virtio_now = virtio
        self._update(changes)
        self.crash.state_changed(old, state, stopped_outside)
        if read_trace and not light and self.state in ACTIVE:
            self.trace.read(self.trace_buffers)

    def _refresh_soon(self) -> None:
        """A full refresh once the loop comes round (after an operation's reply)."""
        if not self._refresh_pending:
            self._refresh_pending = True
            GLib.idle_add(self._refresh_due, priority=GLib.PRIORITY_DEFAULT)

    def _refresh_due(self) -> bool:
        self._refresh_pending = False
        if not self.gone and not self._closed:
            self.refresh()
        return GLib.SOURCE_REMOVE

    def hints(self, events: list[tuple[str, str, str]]) -> None:
        """A burst of uevents of this core's children, in the kernel's order: one
        re-read for all of them, then each event for the crash supervision.

        A virtio device removed while the core reads running, which neither we
        nor a crash already seen explain, means the kernel recovered a crash
        between two polls (`crash.CrashSupervisor`). The re-read is at least as
        new as every event of the burst, as it would be for the last one alone;
        the virtio removals and additions are still judged one by one, in order."""
        gone: set[str] = set()
        for subsystem, action, child in events:
            if subsystem in ("virtio", "devcoredump"):
                continue
            if action == "remove":
                gone.add(child)
            else:
                gone.discard(child)
        removed = any(e[:2] == ("virtio", "remove") for e in events)
        if any(e[0] != "devcoredump" for e in events):
            self.refresh(read_trace=not removed, gone=gone)
        for subsystem, action, child in events:
            if subsystem == "virtio" and action == "remove":
                self.crash.virtio_removed(child)
            elif subsystem == "virtio" and action == "add":
                self.crash.virtio_added(child)
            elif subsystem == "devcoredump" and action == "add":
                self.devcoredump_added(child)
        if removed and self.state in ACTIVE:
            self.trace.read(self.trace_buffers)

    def apply_config(self, config: ProcessorConfig) -> None:
        """New settings (start or Reload): properties now, then the kernel's coredump
        mode (Coredump=) and recovery (Restart=) if they differ."""
        self.config = config
        self.trace.forwarding = config.trace_forward
        self._update({
            "DefaultFirmware": config.firmware or self._kernel_default,
            "RestartPolicy": config.restart,
        })
        self.crash.configure(config)

    def close(self) -> None:
        """The core is gone: let its thread end, then release the directory fds
        (on the thread: a write still blocked in the kernel may need them)."""
        self._closed = True
        self.crash.close()
        self.worker.submit(self.files.close, lambda _result, _exc: None)
        self.worker.close()

    def _update(self, values: dict[str, object]) -> None:
        changed = {k: v for k, v in values.items() if self._props.get(k) != v}
        if not changed:
            return
        self._props.update(changed)
        if self.listener:
            self.listener.properties_changed(self, dict(changed))
        if self._on_change:
            self._on_change(self)

    # -- running an operation ----------------------------------------------

    def _launch(self, plan: Plan, done: Done, user: bool) -> None:
        # Judge the call on the state now (a crash not polled yet counts): a
        # state that changed since the last look is re-read in full, else the
        # plan's gate uses the state just read. (A crash not seen yet is judged by
        # the refresh even when the state reads the same.)
        self._checked = None
        try:
            state = self.files.state()
        except (DeviceGone, OSError):
            state = None  # the gate reads again and names the error
        if state is not None and (
            state != self.state or (state == "crashed" and not self.crash.open)
        ):
            self.refresh()
        elif state is not None:
            self._checked = state
        if self.operation:  # also while a timed-out write is still blocked in the kernel
            self._checked = None
            plan.close()
            done(
                Busy(
                    f"{self.name}: busy ({self.operation} still in progress); "
                    "wait until Operation is empty, then try again"
                )
            )
            return
        self._done = done
        self._auto = not user
        self._step(plan, None, None, reread=False)  # the gate runs now
        self._checked = None

    def _step(
        self, plan: Plan, value: Any, exc: BaseException | None, reread: bool = True
    ) -> None:
        """Feed a worker result into the plan; run its next step or finish."""
        if reread:  # after every kernel step, while Operation still marks the changes ours:
            # what judges the state change now; the rest right after (the reply
            # does not wait for the trace buffers and the other attributes)
            self.refresh(light=True)
            self._refresh_soon()
        if isinstance(exc, DeviceGone):
            exc = self._gone()
        elif isinstance(exc, WorkerTimeout):
            self._blocked = True  # until `_late`: the kernel still holds our write
        try:
            io = plan.throw(exc) if exc is not None else plan.send(value)
        except StopIteration:
            self._finish(None)
        except RprocError as error:
            self._finish(error)
        except OSError as error:  # reading state failed in an unexpected way
            self._finish(Failed(f"{self.name}: kernel I/O failed: {error}"))
        except Exception as error:  # a bug: say so instead of hanging the caller
            log.exception("%s: internal error", self.name)
            self._finish(Failed(f"{self.name}: internal error ({error!r}); please report it"))
        else:
            self.worker.submit(
                io.fn, partial(self._step, plan, reread=io.reread), timeout=io.timeout,
                on_late=self._late,
            )

    def _finish(self, error: RprocError | None) -> None:
        acted = self.operation != ""  # refusals happen before an operation begins
        if not self._blocked:
            self._update({"Operation": ""})
        if error is None:
            if acted and not self._auto:
                self.crash.rearm()
            # An automatic restart that completes after a later crash hit the
            # start limit must not clear the limit's Failed.
            if not self.crash.limited:
                self._update({"Failed": False})
        elif acted:
            self._update({"Failed": True, "LastError": str(error)})
            level = logging.WARNING if isinstance(error, Timeout) else logging.ERROR
            event = (
                events.FIRMWARE_REFUSED
                if isinstance(error, (InvalidFirmware, FirmwareNotFound))
                else None
            )
            self.log(level, "%s", error, event=event)
        self.crash.virtio.ahead = 0  # the operation's refreshes accounted for its run ends
        done, self._done = self._done, None
        if done:
            done(error)

    def _late(self, _result: object, exc: BaseException | None) -> None:
        """A write that had timed out came back: the core is usable again."""
        outcome = f"failed ({exc.why})" if isinstance(exc, KernelError) else "returned"
        self._blocked = False
        self.refresh()
        self._update({"Operation": ""})
        self.log(logging.INFO, "%s: the blocked kernel write finally %s; state %s",
                  self.name, outcome, self.state)

    def _begin(self, operation: str) -> None:
        """The operation passed its gate and acts now (a refusal never gets here)."""
        if not self._auto:
            self.crash.user_action()  # the caller's wins over a pending automatic restart
        self._update({"Operation": operation})

    # -- plans (main loop; `yield` hands a step to the worker) ---------------

    def _start_plan(self, firmware: str) -> Plan:
        state = self._gate(("offline", "detached"), "start")
        if state == "offline":  # a refused name, like BadState, leaves Failed as it was
            self._check_name(firmware or self.default_firmware)
        self._begin("starting")
        if state == "detached":
            yield from self._attach_steps()
        else:
            yield from self._boot_steps(firmware or self.default_firmware, validate=True)

    def _stop_plan(self) -> Plan:
        state = self._gate((*ACTIVE, "crashed"), "stop")
        self._begin("stopping")
        if state == "crashed":
            yield from self._stop_crashed_steps()
        else:
            yield from self._stop_steps()

    def _restart_plan(self, firmware: str) -> Plan:
        state = self._gate(("running", "attached", "offline"), "restart")
        new = firmware or self.default_firmware
        previous = self.files.read_optional("firmware") if state == "running" else ""
        switching = state in ACTIVE and new != previous
        self._check_name(new)  # before _begin: a refusal, not a failed operation
        self._begin("switching" if switching else "stopping" if state in ACTIVE else "starting")
        if self.config.validate:
            # a bad image never stops a good one
            yield _Io(partial(self._validate, new), reread=False)
        if state in ACTIVE:
            yield from self._stop_steps()
        if not switching:
            self._begin("starting")
        try:
            yield from self._boot_steps(new, validate=False)
        except RprocError as error:
            if not previous or not switching or isinstance(error, Timeout):
                raise
            if self._read_state() != "offline":
                raise
            self.log(logging.WARNING, "%s; rolling back to '%s'", error, previous)
            try:
                yield from self._boot_steps(previous, validate=False)
            except RprocError as again:
                raise Failed(
                    f"{error}; rolling back to '{previous}' failed too "
                    f"({self._bare(again)}); the core is offline: Start() a working firmware"
                ) from None
            raise type(error)(f"{error}; rolled back to '{previous}', which runs again") from None

    def _detach_plan(self) -> Plan:
        state = self._read_state()
        if state == "running":
            raise BadState(
                f"{self.name}: runs a firmware Linux loaded, and only a core Linux attached to "
                "(state attached) can be detached; use Stop() instead"
            )
        self._gate(("attached",), "detach")
        self._begin("stopping")
        try:
            state = yield _Io(self._io_detach, self.config.shutdown_timeout + 1.0)
        except KernelError as exc:
            raise self._detach_error(exc) from None
        except WorkerTimeout:
            raise self._timeout("detach", "the firmware did not acknowledge the detach") from None
        if state != "detached":
            raise Failed(f"{self.name}: the kernel accepted 'detach' but the core is {state}")
        self.log(logging.INFO, "%s: detached; the firmware keeps running", self.name,
                  event=events.DETACHED)

    def _recover_plan(self) -> Plan:
        state = self._read_state()
        if state != "crashed":
            raise BadState(
                f"{self.name}: is {state}, not crashed; Recover() only restarts a crashed core"
                + ("; use Restart() to restart a running one" if state in ACTIVE else "")
            )
        self._begin("recovering")
        try:
            state = yield _Io(self._io_recover, self.config.start_timeout)
        except KernelError as exc:
            raise self._recover_error(exc) from None
        except WorkerTimeout:
            raise self._timeout(
                "recover", "the kernel is still recovering (with Coredump=inline it waits "
                "until the dump is read)"
            ) from None
        if state not in ACTIVE:
            raise Failed(
                f"{self.name}: the kernel's recovery left the core {state}; {self._rebind_advice()}"
            )
        # The RECOVERED journal entry comes from the crash supervision, which
        # ends the crash episode however the core came back.

    # -- steps shared by plans -------------------------------------------

    def _boot_steps(self, firmware: str, validate: bool) -> Plan:
        if firmware is not None:
            self._check_name(firmware)
        if validate and self.config.validate:
            yield _Io(partial(self._validate, firmware), reread=False)
        try:
            state = yield _Io(partial(self._io_start, firmware), self.config.start_timeout)
        except KernelError as exc:
            raise self._start_error(exc, firmware) from None
        except WorkerTimeout:
            raise self._timeout("start", f"'{firmware}' is still booting") from None
        if state == "offline":
            raise Failed(
                f"{self.name}: the kernel accepted 'start' but the core stayed offline: a failed "
                f"recovery left it stuck; {self._rebind_advice()}"
            )
        if state != "running":
            raise Failed(f"{self.name}: started '{firmware}' but the core is {state} right after")
        self._update({"Firmware": firmware})  # the name the kernel accepted (no re-read)
        self.log(logging.INFO, "%s: started '%s'", self.name, firmware, event=events.STARTED)

    def _attach_steps(self) -> Plan:
        try:
            state = yield _Io(partial(self._io_start, None), self.config.start_timeout)
        except KernelError as exc:
            raise Failed(
                f"{self.name}: attaching to the firmware that runs since boot failed ({exc.why}); "
                "see the kernel log (journalctl -k)"
            ) from None
        except WorkerTimeout:
            raise self._timeout("attach", "the kernel is still attaching") from None
        if state not in ACTIVE:
            raise Failed(f"{self.name}: the kernel accepted the attach but the core is {state}")
        self.log(logging.INFO, "%s: attached to the running firmware", self.name,
                  event=events.ATTACHED)

    def _stop_crashed_steps(self) -> Plan:
        """Kernels up to 7.1 refuse `stop` on a crashed core (EINVAL, power untouched);
        later ones stop it. Nothing else is tried: recovering it just to stop it
        would run a firmware the caller wants off."""
        try:
            state = yield _Io(self._io_stop, self.config.shutdown_timeout + 1.0)
        except KernelError as exc:
            if exc.errno == E.EINVAL and exc.state == "crashed":
                raise BadState(
                    f"{self.name}: crashed, and this kernel cannot stop a crashed core (Linux "
                    "7.2 can); it stays crashed and is not restarted automatically: call "
                    "Recover() first, then Stop()"
                ) from None
            raise self._stop_error(exc) from None
        except WorkerTimeout:
            raise self._timeout("stop", "the kernel is still stopping the crashed core") from None
        if state != "offline":
            raise Failed(f"{self.name}: the kernel accepted 'stop' but the core is {state}")
        self.log(logging.INFO, "%s: stopped (it had crashed)", self.name, event=events.STOPPED)

    def _stop_steps(self) -> Plan:
        state = self.state
        for attempt in range(1, MAX_STOP_WRITES + 1):
            try:
                state = yield _Io(self._io_stop, self.config.shutdown_timeout + 1.0)
            except KernelError as exc:
                raise self._stop_error(exc) from None
            except WorkerTimeout:
                raise self._timeout(
                    "stop", "the firmware did not acknowledge the shutdown and the kernel "
                    "write is still blocked; check its shutdown handler or raise "
                    "ShutdownTimeoutSec="
                ) from None
            if state not in ACTIVE:
                break
            self.log(logging.INFO, "%s: still %s after stop #%d: another user holds the "
                      "core in the kernel; stopping again", self.name, state, attempt)
        else:
            raise Failed(
                f"{self.name}: still {state} after {MAX_STOP_WRITES} stop writes; a kernel driver "
                "keeps the core booted; unload that driver first"
            )
        if state != "offline":
            raise Failed(f"{self.name}: the kernel accepted 'stop' but the core is {state}")
        self.log(logging.INFO, "%s: stopped", self.name, event=events.STOPPED)

    def _check_name(self, firmware: str) -> None:
        """Hostile names never reach the kernel, whatever Validate= says: old
        kernels follow '..' out of /lib/firmware and cut a name at its newline."""
        from rprocd.firmware import check_name

        try:
            check_name(firmware)
        except RprocError as error:
            raise self._named(error) from None

    # -- worker side: kernel I/O only ---------------------------------------

    def _validate(self, firmware: str) -> None:
        """Check the image before the kernel sees it: a cause in words, not -EINVAL."""
        from rprocd.firmware import read_target, resolve, search_dirs, validate_file
        from rprocd.firmware.target import of_node_of

        try:
            path = resolve(firmware, search_dirs(self.shared.paths, self.shared.firmware_dirs))
            if self._of_node is None:  # the device tree does not change under a device
                node = of_node_of(self.shared.paths, self.device)
                self._of_node = str(node) if node else ""
            target = read_target(
                self.shared.paths, self.device, self.name, self.config.require_resource_table,
                fw_format=self.files.read_optional("fw_format"), of_node=self._of_node,
            )
            report = validate_file(path, target)
        except RprocError as error:
            raise self._named(error) from None
        if report.errors:
            more = len(report.errors) - 1
            extra = f" ({more} more problem{'s' * (more > 1)}: InspectFirmware('{firmware}'))"
            raise InvalidFirmware(
                f"{self.name}: '{firmware}': {report.errors[0].message}{extra if more else ''}"
            )
        for finding in report.warnings:
            self.log(logging.WARNING, "%s: '%s': %s", self.name, firmware, finding.message)

    def _io_start(self, firmware: str | None) -> str:
        """Gate, write, re-read: `firmware` None attaches a detached core."""
        want = "offline" if firmware is not None else "detached"
        state = self.files.state()
        if state != want:
            raise BadState(self._bad_state("start", state))
        if firmware is not None:
            self._io_set("firmware", firmware)
        self._io_set("state", "start")
        state = self.files.state()
        if state == "offline" and firmware is not None:
            state = self._io_settle_offline()
        return state

    def _io_settle_offline(self) -> str:
        """A start the kernel accepted left the core offline: either a failed recovery
        left it stuck (ABI §2.5), or its driver is being unbound right after the boot
        (rproc_del stops it, then the directory goes). Tell them apart by waiting a
        moment: DeviceGone for the unbind, the state otherwise."""
        deadline = time.monotonic() + UNBIND_SETTLE
        while True:
            try:
                state = self.files.state()  # DeviceGone once the unbind removed it
            except OSError as exc:
                # device_del removes the attributes before the directory: a
                # missing `state` in a directory still there is that moment
                if exc.errno not in GONE_ERRNOS or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            if state != "offline" or time.monotonic() > deadline:
                return state
            time.sleep(0.02)

    def _io_stop(self) -> str:
        state = self.files.state()
        if state not in (*ACTIVE, "crashed"):
            raise BadState(self._bad_state("stop", state))
        self._io_set("state", "stop")
        return self.files.state()

    def _io_detach(self) -> str:
        state = self.files.state()
        if state != "attached":
            raise BadState(self._bad_state("detach", state))
        self._io_set("state", "detach")
        return self.files.state()

    def _io_recover(self) -> str:
        state = self.files.state()
        if state != "crashed":
            raise BadState(self._bad_state("recover", state))
        self._io_set("recovery", "recover")
        return self.files.state()

    def _io_set(self, attr: str, value: str) -> None:
        try:
            self.files.write_attr(attr, value)
        except OSError as exc:
            try:
                state = self.files.state()
            except (DeviceGone, OSError):
                state = "gone"
            raise KernelError(attr, value, exc, state) from None

    # -- errors ----------------------------------------------------------

    def _read_state(self) -> str:
        checked, self._checked = self._checked, None
        if checked is not None:  # read by `_launch` a moment ago, on this loop turn
            return checked
        try:
            return self.files.state()
        except DeviceGone:
            raise self._gone() from None
        except OSError as exc:
            raise Failed(f"{self.name}: cannot read its state: {exc.strerror}") from None

    def _gate(self, allowed: tuple[str, ...] | frozenset[str], verb: str) -> str:
        state = self._read_state()
        if state not in allowed:
            raise BadState(self._bad_state(verb, state))
        return state

    def _gone(self) -> NoSuchProcessor:
        return NoSuchProcessor(
            f"{self.name}: the core disappeared (its driver was unbound); it is back when the "
            "driver is bound again"
        )

    def _bad_state(self, verb: str, state: str) -> str:
        n = self.name
        if state == "crashed":
            return f"{n}: crashed; call Recover() first (or wait for the kernel's recovery)"
        if verb == "start" and state in ACTIVE:
            return f"{n}: already {state}; use Restart() to run another firmware, or Stop() first"
        if verb in ("stop", "restart") and state == "detached":
            return (f"{n}: detached (its firmware runs without Linux); Start() attaches to it, "
                    f"then you can {verb} it")
        if verb in ("stop", "detach") and state == "offline":
            return f"{n}: already offline; nothing to {verb}"
        return f"{n}: cannot {verb} while the core is {state}"

    def _start_error(self, exc: KernelError, firmware: str) -> RprocError:
        n, fw = self.name, firmware
        if exc.attr == "firmware":
            if exc.errno == E.EBUSY:
                return BadState(f"{n}: the kernel changes the firmware only while offline "
                                f"(the core is {exc.state}); Stop() it first")
            if exc.errno == E.EINVAL:
                return InvalidArgs(f"{n}: the kernel refused the firmware name '{fw}'; "
                                   "give a non-empty file name under /lib/firmware")
            return self._write_error(exc, "set the firmware name")
        table: dict[int, RprocError] = {
            E.ENOENT: FirmwareNotFound(
                f"{n}: the kernel found no file '{fw}' in its firmware search path "
                f"({self.shared.paths.firmware_root} and firmware_class.path); copy it there "
                "or ImportFirmware() it"),
            E.EINVAL: InvalidFirmware(
                f"{n}: the kernel rejected '{fw}' (bad ELF header, a segment outside the core's "
                "memory, a broken resource table or a '..' in the name); run InspectFirmware"
                f"('{fw}') to see which"),
            E.EIO: InvalidFirmware(
                f"{n}: the secure loader (OP-TEE) rejected '{fw}': a bad signature or not a "
                "signed image; sign it with the key of this board (FirmwareFormat is "
                f"{self._props['FirmwareFormat'] or 'unknown'})"),
            E.EOVERFLOW: InvalidFirmware(
                f"{n}: '{fw}' has a segment too large for this system; relink it"),
            E.EBUSY: BadState(
                f"{n}: the kernel says the core is busy (kernels before 5.19 refuse start on a "
                "running core); Stop() it first"),
            E.EPERM: NotSupported(
                f"{n}: the driver cannot start this core (no reset control in the device "
                "tree); it can only be attached to when the boot loader started it"),
            E.ENODEV: self._gone(),
            E.ENAMETOOLONG: InvalidArgs(
                f"{n}: the firmware name '{fw}' is too long for the kernel's path limit; "
                "use a shorter name"),
            E.EINTR: Failed(f"{n}: the kernel's start was interrupted; try again"),
            E.ENOMEM: Failed(
                f"{n}: the kernel ran out of memory loading '{fw}' (carveouts); check the "
                "core's reserved-memory regions in the device tree"),
        }
        return table.get(exc.errno) or self._write_error(exc, f"start '{fw}'")

    def _stop_error(self, exc: KernelError) -> RprocError:
        if exc.errno == E.EINVAL and exc.state in ACTIVE:
            return NotSupported(f"{self.name}: the driver cannot stop this core")
        if exc.errno == E.EINVAL:
            return BadState(self._bad_state("stop", exc.state))
        if exc.errno == E.ENODEV:
            return self._gone()
        return self._write_error(exc, "stop")

    def _detach_error(self, exc: KernelError) -> RprocError:
        if exc.errno == E.EINVAL and exc.state == "attached":
            return NotSupported(
                f"{self.name}: the driver cannot detach from this core (no detach support, "
                "e.g. in TEE mode); use Stop() instead")
        if exc.errno == E.EINVAL:
            return BadState(self._bad_state("detach", exc.state))
        return self._write_error(exc, "detach")

    def _recover_error(self, exc: KernelError) -> RprocError:
        if exc.errno == E.ENOENT:
            return NotSupported(f"{self.name}: this kernel has no 'recovery' attribute "
                                "(before 5.10); restart the core with a driver rebind")
        if exc.errno == E.EINVAL:
            return NotSupported(f"{self.name}: the kernel does not know 'recover'; update it")
        return self._write_error(exc, "recover")

    def _write_error(self, exc: KernelError, what: str) -> RprocError:
        if exc.errno in (E.EACCES, E.EROFS):
            return NotSupported(
                f"{self.name}: the kernel refuses writes to '{exc.attr}' (read-only: another "
                "kernel driver controls this core, or rprocd does not run as root)")
        return Failed(f"{self.name}: could not {what} ({exc.why}); the core is {exc.state}; "
                      "see the kernel log (journalctl -k)")

    def _timeout(self, verb: str, why: str) -> Timeout:
        return Timeout(
            f"{self.name}: {verb} did not finish in time: {why}; the core stays busy until "
            "the kernel returns, then its state is read again"
        )

    def _rebind_advice(self) -> str:
        device, driver = self.files.platform_device()
        if not driver:
            return "unbind and bind its driver again, or reboot"
        base = f"/sys/bus/platform/drivers/{driver}"
        return f"rebind its driver: echo {device} > {base}/unbind; echo {device} > {base}/bind"

    def _named(self, error: RprocError) -> RprocError:
        """Errors of helpers (firmware search) carry no core name; give them ours."""
        text = str(error)
        return error if text.startswith(f"{self.name}:") else type(error)(f"{self.name}: {text}")

    def _bare(self, error: RprocError) -> str:
        return str(error).removeprefix(f"{self.name}: ")

    def log(
        self, level: int, msg: str, *args: object, event: str | None = None,
        fields: dict[str, object] | None = None,
    ) -> None:
        """Log with this core's journal fields (RPROC_NAME, ...), an event's MESSAGE_ID
        and the event's own `fields` (upper-case journal field names)."""
        extra: dict[str, object] = {
            "RPROC_NAME": self.name,
            "RPROC_DEVICE": self.device,
            "RPROC_FIRMWARE": self._props.get("Firmware", ""),
            "RPROC_STATE": self._props.get("State", ""),
        }
        if event:
            extra["MESSAGE_ID"] = event
        if fields:
            extra.update(fields)
        log.log(level, msg, *args, extra=extra)
