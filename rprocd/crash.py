"""Crash supervision of one core: detect each crash once, apply Restart=, keep
its coredump and the firmware's last words.

The kernel announces no crash (ABI §3.7). What it leaves behind:
- `state` reads `crashed` (until recovered), or `offline` while its own
  recovery reloads the firmware (§2.4), seen by the poll and every refresh;
- the virtio devices of the run are removed (uevent), at the recovery;
- a devcoredump appears (uevent), at the recovery, if the mode is not
  `disabled`;
- the kernel log line "crash detected in <name>: type <type>" (the only place
  the crash type is told; see `CrashTypes`).
With the kernel's recovery enabled the `crashed` state may last a few
milliseconds, so a crash is often seen only through the uevents, which arrive
late (udev) and in the kernel's order.

One crash is one *episode*, from the first sign until the core runs again
(or is stopped by us); every other sign of the same crash joins it:

- The virtio devices of a run are removed together when it ends; the first
  `remove` after an `add` is one run end (`VirtioTracker`: the order of the
  uevents, not the names, which the kernel reuses). Every run end we already
  accounted for (our stop/restart/detach/recover, a crash seen in `state`)
  expects one; a run end nobody expected is a crash: recovered between two
  polls when `state` reads running, being recovered when it reads offline.
- A virtio `add` while an episode is open and no expected removal is pending
  means the kernel started the next run: the episode ends even if `state`
  was not seen `running` (it may already read `crashed` again: a new episode).
  `offline` read next is not taken for a new crash (the state turns running
  only once the new devices are probed); the next run's removal or `crashed`
  tells.
- Otherwise `offline` after `running`/`attached` with no operation of ours is
  the kernel's recovery at work (a crash), unless the core's vdev devices and
  trace buffers are gone too, which only a stop does ("stopped outside
  rprocd", e.g. `echo stop > state`).
- A devcoredump goes to the oldest episode still waiting for one (open, or
  ended less than `DUMP_GRACE` ago, because the dump's uevent may come after
  the poll saw the core running again); with none waiting it is a crash of
  its own (recovered between two polls without a virtio device).

What stays out of reach: a core without virtio devices and with
Coredump=disabled that crashes and is recovered twice between two polls
counts once.

Restart= per core (`RestartPolicy`):
- `kernel`: the kernel's recovery is turned on (`recovery` <- `enabled`);
  rprocd records, and turns it off when the start limit is hit.
- `on-crash`: the kernel's recovery is off; rprocd writes `recover` after
  RestartSec=. In inline coredump mode that write blocks until the dump is
  dismissed: the dump is read on the coredump thread, never the core's worker.
- `no`: the kernel's recovery is off; the core stays crashed until Recover()
  or Stop().
The start limit (StartLimitBurst= restarts within StartLimitIntervalSec=)
counts every crash followed by an automatic restart; one too many marks the
core Failed and stops every automatic action until ResetFailed() or a
successful Start()/Restart()/Recover().

Everything here runs on the GLib main loop; the coredump copy runs on the
single coredump thread of `CrashServices`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gi.repository import GLib

from . import coredump, devcoredump, events
from .coredump import CoredumpError, CoredumpStore
from .startlimit import StartLimit, backoff

if TYPE_CHECKING:
    from .config import ProcessorConfig
    from .processor import Processor

log = logging.getLogger("rprocd")

ACTIVE = frozenset({"running", "attached"})

#: Crashed() waits this long for the coredump once a recovery has begun.
DUMP_WAIT = 2.0
#: ... and this long in all when the dump is being copied already.
DUMP_COPY_WAIT = 30.0
#: A dump arriving this long after the core was seen running again still
#: belongs to the crash before (its uevent comes through udev, late).
DUMP_GRACE = 5.0
#: Episodes remembered for late dumps.
RECENT = 8
#: Run ends whose virtio removals may still be announced...
MAX_PENDING = 16
#: ... for this long at most (uevents are never that late; a lost one is).
PENDING_TTL = 10.0


class CrashTypes:
    """Where crash types come from: nothing by default (LastCrashType "unknown").

    The kernel tells the type only in its log; a reader of it (a kmsg follower)
    implements `take()`."""

    def take(self, device: str, name: str) -> str | None:
        """The type of the newest crash of this core reported since the last call."""
        return None

    def drop(self, device: str, name: str, before: float) -> None:
        """Forget what was reported for this core up to `before` (time.monotonic()
        of reading it): repeats of a crash that has ended. A source without read
        times forgets everything."""
        self.take(device, name)

    def close(self) -> None:
        pass


class CrashServices:
    """What the cores share: the coredump store, the claims on devcoredumps, the
    coredump thread and the crash-type source. One per daemon (the Manager's)."""

    def __init__(
        self,
        sysfs: Path,
        store: CoredumpStore | None = None,
        crash_types: CrashTypes | None = None,
    ) -> None:
        self.sysfs = sysfs
        self.store = store
        self.claims = devcoredump.Claims()
        self.crash_types = crash_types or CrashTypes()
        self._pool: ThreadPoolExecutor | None = None
        self._collected = 0

    def run(self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """`fn()` on the coredump thread; `done(result, exc)` on the main loop.

        One thread for every core: the copies of a crash storm queue up, and
        never on a core's worker (that one may be blocked in an inline-mode
        `recover` write waiting for exactly this copy)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="rprocd-coredump")
        future = self._pool.submit(fn)
        future.add_done_callback(lambda f: GLib.idle_add(self._finish, f, done))

    def _finish(self, future: Future, done: Callable[[Any, BaseException | None], None]) -> bool:
        exc = future.exception()
        done(None if exc is not None else future.result(), exc)
        self._collected += 1
        if self._collected % 16 == 0:
            self.claims.forget_gone(self.sysfs)  # bounded memory in a long crash storm
        return GLib.SOURCE_REMOVE

    def crash_type(self, device: str, name: str) -> str:
        try:
            return self.crash_types.take(device, name) or "unknown"
        except Exception:  # a broken source must not stop crash handling
            log.exception("%s: reading the crash type failed", name)
            return "unknown"

    def drop_types(self, device: str, name: str, before: float) -> None:
        try:
            self.crash_types.drop(device, name, before)
        except Exception:  # a broken source must not stop crash handling
            log.exception("%s: reading the crash type failed", name)

    def close(self) -> None:
        self.crash_types.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class VirtioTracker:
    """Which virtio `remove` uevents are the end of a run we already know ended.

    The uevents of one core come in the kernel's order: the devices of a run
    are added, then removed together when it ends (stop, detach, recovery),
    then the next run's are added. So the first removal after an addition is
    one run end, whatever the device names (the kernel reuses them). Our view
    of the state accounts for run ends too (a stop of ours, a crash seen in
    `state`); each one that had virtio devices expects one such group of
    removals. A group nobody expected is a run end we did not see: a crash
    the kernel recovered between two polls."""

    def __init__(self, live: Iterable[str] = ()) -> None:
        self.live: set[str] = set(live)  # devices of the current run
        self.has_virtio = bool(self.live)  # the firmware running has virtio devices
        self.expected: deque[float] = deque(maxlen=MAX_PENDING)  # run ends accounted, by time
        self.ahead = 0  # removal groups of an operation of ours, seen before its refresh
        self._last = "add"

    @property
    def caught_up(self) -> bool:
        """No removal we expect is still to come: uevents are as new as our view."""
        self._expire()
        return not self.expected

    def run_ended(self, new_live: Iterable[str] = (), had: bool | None = None) -> None:
        """Our view saw a run end (`had`: it had virtio devices; default: the live ones);
        `new_live` runs already."""
        if (self.live or self.has_virtio) if had is None else had:
            if self.ahead:
                self.ahead -= 1
            else:
                self.expected.append(time.monotonic())
        self.live = set(new_live)

    def run_started(self, devices: Iterable[str]) -> None:
        self.live = set(devices)
        self.has_virtio = bool(self.live)

    def removed(self, name: str) -> str:
        """A virtio `remove` uevent: "same" (more of a run end already handled),
        "expected" (a run end we know of) or "unexpected"."""
        if self._last == "remove":
            return "same"
        self._last = "remove"
        self._expire()
        if self.expected:
            self.expected.popleft()
            return "expected"
        return "unexpected"

    def added(self, name: str) -> bool:
        """A virtio `add` uevent: True if it is news (no removal expected before it)."""
        self._last = "add"
        self.has_virtio = True
        if not self.caught_up:
            return False
        self.live.add(name)
        return True

    def _expire(self) -> None:
        deadline = time.monotonic() - PENDING_TTL
        while self.expected and self.expected[0] < deadline:
            self.expected.popleft()


@dataclass(eq=False)
class Episode:
    """One crash, from its first sign until the core runs again or is stopped."""

    number: int
    time_usec: int
    crash_type: str
    was: str
    trace: bytes | None
    expects_dump: bool
    open: bool = True
    ended: float = 0.0  # monotonic time the core ran again (or was stopped)
    ended_by_uevent: bool = False  # ended by a virtio add: its dump came before
    devcd: str = ""
    coredump: str = ""
    announced: bool = False
    timer: int = 0
    failed: bool = False  # this crash set Failed (not the start limit)
    offline_since: float = 0.0
    next_run_read: bool = False  # the trace read at the crash showed the next run already


class CrashSupervisor:
    """The crash side of one `Processor` (which calls in on every refresh and hint)."""

    def __init__(self, proc: Processor, services: CrashServices, virtio: Iterable[str]) -> None:
        self.proc = proc
        self.services = services
        conf = proc.config
        self.limit = StartLimit(conf.start_limit_burst, conf.start_limit_interval)
        self.limited = False  # the start limit was hit: no automatic action
        self.virtio = VirtioTracker(virtio)
        self.episodes: deque[Episode] = deque(maxlen=RECENT)
        self._restart_timer = 0
        self._restart_attempt = 0
        self._settings_busy = False
        self._settings_again = False
        self._refused: set[tuple[str, str]] = set()  # writes the kernel refused (warned once)
        self._trace_restarted = False  # the next run's virtio add restarted the trace already
        self._down_seen = 0.0  # monotonic time the open episode's core was last seen down
        self._closed = False

    # -- queries -------------------------------------------------------------

    @property
    def current(self) -> Episode | None:
        """The open episode, if any (always the newest)."""
        if self.episodes and self.episodes[-1].open:
            return self.episodes[-1]
        return None

    @property
    def open(self) -> bool:
        return self.current is not None

    @property
    def busy(self) -> bool:
        """Something still to come: polling must go on."""
        return self.open or self._restart_timer != 0 or any(
            not e.announced for e in self.episodes
        )

    def last_trace_file(self) -> str:
        """The `.trace` saved with the newest coredump that has one, for ReadTrace's advice."""
        for episode in reversed(self.episodes):
            if episode.coredump and episode.trace:
                trace_file = Path(episode.coredump).with_suffix(".trace")
                if trace_file.exists():
                    return str(trace_file)
        return ""

    # -- configuration and the kernel's settings --------------------------------

    def configure(self, config: ProcessorConfig) -> None:
        """New settings (start or Reload)."""
        self.limit.configure(config.start_limit_burst, config.start_limit_interval)
        self._refused.clear()
        self.sync_settings()

    def desired_recovery(self) -> str:
        kernel = self.proc.config.restart == "kernel" and not self.limited
        return "enabled" if kernel else "disabled"

    def sync_settings(self) -> None:
        """Bring the kernel's `coredump` (Coredump=) and `recovery` (Restart=) in line.

        `coredump` cannot change while crashed (EBUSY): it is written again when
        the core leaves that state. `recovery` <- `enabled` on a crashed core
        starts the kernel's recovery at once, which is what Restart=kernel wants."""
        if self._closed:
            return
        if self._settings_busy:
            self._settings_again = True
            return
        p = self.proc
        props = p._props
        want: list[tuple[str, str]] = []
        mode = p.config.coredump
        if mode and props["CoredumpMode"] not in ("", mode) and p.state != "crashed":
            want.append(("coredump", mode))
        recovery = self.desired_recovery()
        if props["Recovery"] not in ("", recovery):
            want.append(("recovery", recovery))
        want = [w for w in want if w not in self._refused]
        if not want:
            return
        self._settings_busy = True
        p.worker.submit(lambda: self._io_settings(want), self._settings_written)

    def _io_settings(self, want: list[tuple[str, str]]) -> list[tuple[str, str, OSError]]:
        """Worker thread: the writes; a failure does not stop the next one."""
        failed = []
        files = self.proc.files
        for attr, value in want:
            try:
                if attr == "coredump" and files.state() == "crashed":
                    continue  # EBUSY until recovered: written again then
                files.write_attr(attr, value)
            except OSError as exc:
                failed.append((attr, value, exc))
        return failed

    def _settings_written(self, failed: list | None, exc: BaseException | None) -> None:
        self._settings_busy = False
        p = self.proc
        for attr, value, error in failed or []:
            self._refused.add((attr, value))
            key = "Coredump" if attr == "coredump" else "Restart"
            prop = "CoredumpMode" if attr == "coredump" else "Recovery"
            p.log(logging.WARNING, "%s: could not write '%s' to its '%s' attribute for %s= "
                  "(%s); the kernel keeps '%s'", p.name, value, attr, key,
                  error.strerror or error, p._props.get(prop, ""))
        if exc is not None:
            p.log(logging.WARNING, "%s: applying Coredump=/Restart= failed: %s", p.name, exc)
        if self._closed:
            return
        p.refresh()
        if self._settings_again:
            self._settings_again = False
            self.sync_settings()

    # -- signs of a crash (called by the Processor) ------------------------------

    def state_changed(self, old: str, new: str, stopped_outside: bool) -> None:
        """A refresh read `new` after `old` (both kernel states)."""
        p = self.proc
        was_active = old in ACTIVE
        if new not in ACTIVE:
            self._down_seen = time.monotonic()  # (no kernel log line is read meanwhile)
        if new in ACTIVE and not was_active:  # a run begins
            recovering = self.open
            if recovering:
                self.recovered()
            self.virtio.run_started(p.virtio_now)
            if not self._trace_restarted:  # (once per run: a second reset repeats lines)
                p.trace.restart(recovered=recovering)
            self._trace_restarted = False
        elif was_active and new not in ACTIVE:  # a run ends
            if new == "crashed" or (new == "offline" and not p.operation and not stopped_outside):
                self.crashed(old, new)
            else:
                self.virtio.run_ended()
                p.trace.stopped()
                if new == "offline" and not p.operation:
                    p.log(logging.INFO, "%s: stopped outside rprocd (its virtio devices and "
                          "trace buffers are gone, as after 'echo stop')", p.name,
                          event=events.STOPPED)
        elif new == "crashed" and not self.open:  # first sight, or a crash while detached
            self.crashed(old, new)
        elif self.open and new in ("offline", "detached") and p.operation == "stopping":
            self._stopped()  # Stop() of a crashed core (kernels that allow it)
        if old == "crashed" and new != "crashed" and not self.open:
            self.sync_settings()  # a Coredump= the kernel refused while crashed

    def virtio_removed(self, device: str) -> None:
        """A virtio device's `remove` uevent (after the Processor's refresh)."""
        p = self.proc
        if self.virtio.removed(device) != "unexpected" or self.open:
            return  # a run end known already, or part of the open crash
        if p.operation:
            self.virtio.ahead += 1  # ours: its refresh accounts for it in a moment
            return
        # A run ended that neither we nor a crash already seen explain.
        if p.state in ACTIVE:  # the kernel recovered a crash between two polls
            self.crashed(p.state, p.state, already_running=True, expect=False)
        elif p.state in ("offline", "crashed"):  # ... and is recovering it now
            self.crashed("running", p.state, expect=False)

    def virtio_added(self, device: str) -> None:
        """A virtio device's `add` uevent (after the Processor's refresh)."""
        p = self.proc
        if not self.virtio.added(device) or not self.open:
            return
        self.recovered(by_uevent=True)  # the kernel starts the next run (`state` may
        p.trace.restart(recovered=True)  # read offline a little longer: its devices are
        self._trace_restarted = True  # probed first)
        if p.state == "crashed":
            self.crashed("running", "crashed")  # ... which crashed already

    def dump_added(self, devcd: str) -> None:
        """A devcoredump of this core (uevent, or found by a scan)."""
        if not self.services.claims.claim(devcd):
            return  # seen already (a scan and its uevent)
        episode = self._awaiting()
        if episode is None:
            self.proc.refresh()  # the state may say more (crashed, recovering)
            episode = self._awaiting()
        if episode is None:  # a crash seen only through its dump
            if self.open:  # a second dump: the crashed core ran again and crashed again
                self.recovered(by_uevent=True)
                self.proc.trace.restart(recovered=True)
            state = self.proc.state
            episode = self.crashed(
                "running" if state in ACTIVE else state, state,
                already_running=state in ACTIVE, devcd=devcd,
            )
        else:
            episode.devcd = devcd
            if episode.open:
                self._last_words(episode)
        self._collect(episode)  # (inline mode: the recovery goes on once it is dismissed)

    def scan_dumps(self) -> None:
        """Dumps whose uevent was missed or is still to come."""
        for devcd in devcoredump.pending_for(self.services.sysfs, self.proc.device):
            self.dump_added(devcd)

    def tick(self) -> None:
        """Poll timer while an episode is open: late dumps; a recovery stuck offline."""
        episode = self.current
        if episode is None:
            return
        self.scan_dumps()
        p = self.proc
        if p.state != "offline" or p.operation:
            episode.offline_since = 0.0
            return
        now = time.monotonic()
        if not episode.offline_since:
            episode.offline_since = now
        elif now - episode.offline_since > p.config.start_timeout and not episode.failed:
            episode.failed = True
            p._update({
                "Failed": True,
                "LastError": f"{p.name}: the kernel's recovery left the core offline for more "
                             f"than {p.config.start_timeout:g} s (a failed firmware reload leaves "
                             f"it stuck); {p._rebind_advice()}",
            })
            p.log(logging.ERROR, "%s", p._props["LastError"])

    # -- an episode ----------------------------------------------------------

    def crashed(
        self, was: str, state: str, already_running: bool = False, expect: bool = True,
        devcd: str = "",
    ) -> Episode:
        """Open the episode of a crash just seen (`state` is the state now);
        `expect` False: seen through its virtio removal, none is to come;
        `devcd`: seen through this dump (the caller collects it)."""
        p = self.proc
        props = p._props
        self._trace_restarted = False
        self.virtio.run_ended(p.virtio_now if already_running else (), None if expect else False)
        crash_type = self.services.crash_type(p.device, p.name)
        self._down_seen = time.monotonic()
        when = p.clock()
        recovered = already_running
        if not already_running:
            # The last words, while the kernel has them: crashed, or offline in
            # its recovery (which, in inline mode, waits for the dump we have
            # not collected yet). A buffer that started over may show the next
            # run (the state read a moment ago may be stale already): its text
            # from before is kept (for a wrap, that is the previous lap).
            recovered = p.trace.read(p.trace_buffers)
        last_trace = p.trace.text(recovered=recovered)
        tail = p.trace.tail(recovered=recovered)
        if already_running:  # the buffer holds the next run's text by now
            p.trace.restart(recovered=True)
        mode = str(props["CoredumpMode"])
        episode = Episode(
            number=int(props["CrashCount"]) + 1,
            time_usec=when,
            crash_type=crash_type,
            was=was,
            trace=last_trace,
            expects_dump=mode != "disabled",
            devcd=devcd,
            next_run_read=recovered,
        )
        self.episodes.append(episode)
        p._update({"CrashCount": episode.number, "LastCrashType": crash_type,
                   "LastCrashTime": when})
        restart_in = self._apply_policy(episode, state, already_running)
        self._log_crash(episode, state, already_running, restart_in, tail)
        self._arm_announce(episode, state, already_running, restart_in)
        if already_running:
            p._update({"RunningSince": p.clock()})
            self.recovered()
        elif not devcd:
            self.scan_dumps()
        return episode

    def _last_words(self, episode: Episode) -> None:
        """The dump of the open `episode` came: read its trace once more before
        the dump is collected and dismissed (in inline mode the kernel keeps
        the crashed run's buffer until then)."""
        p = self.proc
        if p.state in ACTIVE or episode.next_run_read:
            return
        if p.trace.read(p.trace_buffers):
            episode.next_run_read = True
            return  # the next run's text by now: the text read at the crash stays
        episode.trace = p.trace.text() or episode.trace

    def recovered(self, by_uevent: bool = False) -> None:
        """The core runs again: the open episode ends."""
        episode = self.current
        if episode is None:
            return
        p = self.proc
        episode.open = False
        episode.ended = time.monotonic()
        episode.ended_by_uevent = by_uevent
        self._cancel_restart()
        # Repeats logged during the crash are not the next crash's type; a line
        # read after we last saw the core down may be the next crash already
        # (its run began before we noticed: uevents come late).
        self.services.drop_types(p.device, p.name, self._down_seen)
        if episode.failed and not self.limited and p._props["Failed"]:
            p._update({"Failed": False})
        if episode.expects_dump and not episode.devcd:
            self.scan_dumps()  # made by the recovery that just ended, its uevent still to come
        down = max(0, p.clock() - episode.time_usec) / 1e6
        p.log(logging.INFO, "%s: running again after crash #%d (down %.1f s)", p.name,
              episode.number, down, event=events.RECOVERED,
              fields={"RPROC_CRASH_COUNT": episode.number})

    def _stopped(self) -> None:
        """A crashed core stopped by us: the episode ends without a recovery."""
        episode = self.current
        if episode is None:
            return
        episode.open = False
        episode.ended = time.monotonic()
        self._cancel_restart()
        self.virtio.run_ended()
        self.proc.trace.stopped()
        if not episode.devcd:
            self._announce(episode, "")

    # -- Restart= --------------------------------------------------------------

    def _apply_policy(self, episode: Episode, state: str, already_running: bool) -> float | None:
        """Decide what follows the crash; the delay of rprocd's restart, if any."""
        p = self.proc
        policy = p.config.restart
        if self.limited:
            return None
        if policy == "no":
            if state == "crashed":
                self._fail(episode, f"{p.name}: crashed ({episode.crash_type}) and stays so "
                                    "(Restart=no); call Recover() to restart it, or Stop()")
            return None
        if policy == "kernel" and state == "crashed" and p._props["Recovery"] == "disabled":
            self._fail(episode, f"{p.name}: crashed ({episode.crash_type}) and stays so: the "
                                "kernel's recovery is disabled and rprocd could not enable it; "
                                "call Recover()")
            return None
        if self.limit.record():
            self._hit_limit(episode)
            return None
        if policy == "on-crash":
            if state != "crashed" or already_running:
                return None  # the kernel's recovery was on after all: it restarts it
            self._restart_attempt += 1
            delay = backoff(p.config.restart_sec, self._restart_attempt)
            self._restart_timer = GLib.timeout_add(max(0, int(delay * 1000)), self._restart_due)
            return delay
        return None

    def _fail(self, episode: Episode, message: str) -> None:
        episode.failed = True
        self.proc._update({"Failed": True, "LastError": message})

    def _hit_limit(self, episode: Episode) -> None:
        p = self.proc
        conf = p.config
        self.limited = True
        episode.failed = False  # the limit's, cleared only by ResetFailed() or a manual start
        message = (
            f"{p.name}: restarted more than {conf.start_limit_burst} times within "
            f"{conf.start_limit_interval:g} s (StartLimitBurst=, StartLimitIntervalSec=); "
            "rprocd leaves it alone: fix the firmware, then call ResetFailed()"
        )
        p._update({"Failed": True, "LastError": message})
        p.log(logging.ERROR, "%s", message, event=events.START_LIMIT_HIT, fields={
            "RPROC_START_LIMIT_BURST": conf.start_limit_burst,
            "RPROC_START_LIMIT_INTERVAL_USEC": int(conf.start_limit_interval * 1e6),
            "RPROC_CRASH_COUNT": episode.number,
        })
        self.sync_settings()  # Restart=kernel: recovery <- disabled, it stays crashed next time

    def _restart_due(self) -> bool:
        self._restart_timer = 0
        p = self.proc
        episode = self.current
        if episode is None or self.limited or self._closed:
            return GLib.SOURCE_REMOVE
        if p.operation:  # someone else acts on the core: theirs wins
            return GLib.SOURCE_REMOVE
        p.refresh()
        if self.current is not episode or p.state != "crashed":
            return GLib.SOURCE_REMOVE
        if not episode.announced and not episode.timer:
            episode.timer = GLib.timeout_add(int(DUMP_WAIT * 1000), self._announce_due, episode)
        p.log(logging.INFO, "%s: restarting after crash #%d (Restart=on-crash)", p.name,
              episode.number)
        p.auto_recover(self._restarted)
        return GLib.SOURCE_REMOVE

    def _restarted(self, error: Exception | None) -> None:
        if error is None:
            self._restart_attempt = 0
        else:
            self.proc.log(logging.ERROR, "%s: the automatic restart failed: %s",
                          self.proc.name, error)

    def _cancel_restart(self) -> None:
        if self._restart_timer:
            GLib.source_remove(self._restart_timer)
            self._restart_timer = 0

    def user_action(self) -> None:
        """Start/Stop/Restart/Recover/Detach called: a pending automatic restart is off."""
        self._cancel_restart()

    def rearm(self) -> None:
        """A successful Start()/Restart()/Recover() by hand: automatic restarts
        apply again (the start-limit window keeps what it counted)."""
        if self.limited:
            self.limited = False
            self.sync_settings()

    def reset_failed(self) -> None:
        """ResetFailed(): forget the start limit; the policy applies again, so a
        core still crashed is restarted by it (Restart=kernel: the kernel's
        recovery, turned on again; Restart=on-crash: after RestartSec=)."""
        self.limit.reset()
        self.limited = False
        self._restart_attempt = 0
        self._refused.clear()
        for episode in self.episodes:
            episode.failed = False
        self.sync_settings()
        p = self.proc
        if (self.open and p.config.restart == "on-crash" and p.state == "crashed"
                and not self._restart_timer and not p.operation):
            self.limit.record()
            delay = backoff(p.config.restart_sec, 1)
            self._restart_timer = GLib.timeout_add(max(0, int(delay * 1000)), self._restart_due)

    # -- Crashed(type, time, coredump) ---------------------------------------------

    def _arm_announce(
        self, episode: Episode, state: str, already_running: bool, restart_in: float | None
    ) -> None:
        """When to emit Crashed: with the saved dump, or without once none can come."""
        p = self.proc
        store = self.services.store
        if not episode.expects_dump or p.config.coredump_keep == 0 or store is None:
            self._announce(episode, "")
            return
        # The kernel's crash work reads its recovery flag right away: as it was
        # when the crash came, not as we may be setting it now.
        kernel_recovers = (
            already_running or state != "crashed" or p._props["Recovery"] == "enabled"
        )
        if kernel_recovers:
            episode.timer = GLib.timeout_add(int(DUMP_WAIT * 1000), self._announce_due, episode)
        elif restart_in is None:
            self._announce(episode, "")  # stays crashed: the dump comes with Recover(), if ever
        # else: the timer starts when rprocd's restart begins (_restart_due)

    def _announce_due(self, episode: Episode) -> bool:
        episode.timer = 0
        if episode.devcd and not episode.coredump and not episode.announced:
            # copying: give it up to DUMP_COPY_WAIT in all
            wait = DUMP_COPY_WAIT - DUMP_WAIT
            episode.timer = GLib.timeout_add(int(wait * 1000), self._announce_late, episode)
            return GLib.SOURCE_REMOVE
        self._announce(episode, "")
        return GLib.SOURCE_REMOVE

    def _announce_late(self, episode: Episode) -> bool:
        episode.timer = 0
        self._announce(episode, "")
        return GLib.SOURCE_REMOVE

    def _announce(self, episode: Episode, coredump_path: str) -> None:
        if episode.announced:
            return
        episode.announced = True
        if episode.timer:
            GLib.source_remove(episode.timer)
            episode.timer = 0
        p = self.proc
        if p.listener is not None and not self._closed:
            p.listener.crashed(p, episode.crash_type, episode.time_usec, coredump_path)

    # -- coredumps -------------------------------------------------------------

    def _awaiting(self) -> Episode | None:
        """The oldest episode a dump arriving now belongs to."""
        now = time.monotonic()
        for episode in self.episodes:
            if episode.devcd:
                continue
            if episode.open:
                return episode
            if (episode.expects_dump and not episode.ended_by_uevent
                    and now - episode.ended < DUMP_GRACE):
                return episode
        return None

    def _collect(self, episode: Episode) -> None:
        p = self.proc
        services = self.services
        store = services.store
        firmware = str(p._props["Firmware"])
        keep = p.config.coredump_keep
        shared = p.shared

        def work() -> Path | None:
            firmware_path = _firmware_path(shared, firmware)
            return coredump.collect(
                store, services.sysfs, episode.devcd, core=p.name, device=p.device,
                crash_type=episode.crash_type, time_usec=episode.time_usec,
                firmware=firmware, firmware_path=firmware_path, trace=episode.trace, keep=keep,
            )

        services.run(work, lambda result, exc: self._collected(episode, result, exc))

    def _collected(self, episode: Episode, result: Path | None, exc: BaseException | None) -> None:
        p = self.proc
        path = ""
        if isinstance(exc, CoredumpError):
            p.log(logging.ERROR, "%s: crash #%d: %s", p.name, episode.number, exc)
        elif isinstance(exc, OSError):
            p.log(logging.ERROR, "%s: crash #%d: reading the coredump %s failed: %s; it is "
                  "dismissed", p.name, episode.number, episode.devcd, exc)
        elif exc is not None:
            log.error("%s: saving the coredump failed", p.name, exc_info=exc)
        elif result is not None:
            path = str(result)
            episode.coredump = path
            if not self._closed:
                p._update({"LastCoredump": path})
            p.log(logging.INFO, "%s: coredump of crash #%d saved to %s", p.name,
                  episode.number, path, event=events.COREDUMP_SAVED, fields={
                      "RPROC_COREDUMP": path,
                      "RPROC_CRASH_TYPE": episode.crash_type,
                      "RPROC_CRASH_TIME_USEC": episode.time_usec,
                      "RPROC_CRASH_COUNT": episode.number,
                  })
        self._announce(episode, path)

    # -- journal -------------------------------------------------------------

    def _log_crash(
        self, episode: Episode, state: str, already_running: bool,
        restart_in: float | None, tail: str,
    ) -> None:
        p = self.proc
        conf = p.config
        recovering = already_running or state != "crashed" or p._props["Recovery"] == "enabled"
        if self.limited and recovering:
            then = ("the kernel's recovery restarts it this time, but it hit its start limit: "
                    "rprocd turns that recovery off and leaves the core alone until ResetFailed()")
        elif self.limited:
            then = "it hit its start limit: rprocd leaves it alone until ResetFailed()"
        elif already_running:
            then = "the kernel's recovery restarted it already"
        elif restart_in is not None:
            then = f"rprocd restarts it in {restart_in:g} s (Restart=on-crash)"
        elif conf.restart == "no" and state == "crashed":
            then = "it stays crashed (Restart=no): call Recover() or Stop()"
        elif state == "crashed" and p._props["Recovery"] == "disabled":
            then = "the kernel's recovery is disabled, so it stays crashed: call Recover()"
        else:
            then = "the kernel's recovery restarts it"
        fields: dict[str, object] = {
            "RPROC_CRASH_TYPE": episode.crash_type,
            "RPROC_CRASH_COUNT": episode.number,
            "RPROC_CRASH_TIME_USEC": episode.time_usec,
            "RPROC_RESTART": conf.restart,
        }
        if tail:
            fields["RPROC_TRACE"] = tail
        if episode.was in ACTIVE or already_running:
            how = f"while {episode.was if episode.was in ACTIVE else 'running'}"
        elif episode.was == "detached":
            how = "while detached"
        else:
            how = "(found crashed)"
        p.log(logging.ERROR, "%s: crashed (%s) %s, crash #%d; %s", p.name,
              episode.crash_type, how, episode.number, then, event=events.CRASHED, fields=fields)

    def close(self) -> None:
        """The core is gone."""
        self._closed = True
        self._cancel_restart()
        for episode in self.episodes:
            if episode.timer:
                GLib.source_remove(episode.timer)
                episode.timer = 0


def _firmware_path(shared: Any, firmware: str) -> Path | None:
    """The file the kernel loaded for `firmware` (for the dump's firmware hash)."""
    if not firmware or firmware == "unknown":
        return None
    try:
        from rprocd.firmware import resolve, search_dirs

        return resolve(firmware, search_dirs(shared.paths, shared.firmware_dirs))
    except Exception:  # not found any more, or an odd name: no hash
        return None
