"""What every benchmark topic shares: figures and their statistics, the
emulated board, a timed "shell" on the emulated kernel (the baseline), the
daemon over D-Bus, and the daemon's process counters.

The baseline is the floor a shell script reaches: the same sysfs writes
(`echo NAME > firmware; echo start > state`), done by one long-lived process
under the emulator's preload and timed inside it, so neither a process spawn
nor a pipe round trip is counted on either side (rprocd's figures are timed
around one in-process D-Bus call). What rprocd adds is the difference.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

from tests.integration.test_api_board import (  # noqa: E402
    BUS_NAME,
    FIRMWARE,
    MANAGER,
    MANAGER_PATH,
    PROCESSOR,
    PROPERTIES,
    SIM,
    SimBoard,
)
from tests.integration.test_sim_tools import OwnDaemon  # noqa: E402

__all__ = ["BUS_NAME", "FIRMWARE", "MANAGER", "MANAGER_PATH", "PROCESSOR", "PROPERTIES"]

CALL_TIMEOUT_MS = 30_000


# -- figures ---------------------------------------------------------------


@dataclass
class Stats:
    """Median and worst (and p99 when asked) of samples, in `unit`."""

    median: float
    worst: float
    n: int
    unit: str
    p99: float | None = None

    @classmethod
    def of(cls, samples: Sequence[float], unit: str = "ms", p99: bool = False) -> Stats:
        ordered = sorted(samples)
        q = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))] if p99 else None
        return cls(statistics.median(ordered), ordered[-1], len(ordered), unit, q)

    @classmethod
    def one(cls, value: float, unit: str) -> Stats:
        return cls(value, value, 1, unit)

    def text(self) -> str:
        if self.n == 1:
            return f"{_num(self.median)} {self.unit}"
        p99 = f" p99 {_num(self.p99)}" if self.p99 is not None else ""
        return f"{_num(self.median)} / {_num(self.worst)}{p99} {self.unit}"


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Figure:
    """One row of the table: rprocd beside its baseline, and the target's verdict.

    `rprocd`/`baseline` are Stats (median / worst) or None ("-"); `baseline_text`
    replaces the baseline cell when the floor is not a measurement (e.g. "0: no
    process"). `met` is None when the issue sets no target for the figure."""

    topic: str
    name: str
    rprocd: Stats | None
    baseline: Stats | None = None
    baseline_text: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.rprocd is None or self.baseline is None or not self.baseline.median:
            return None
        return self.rprocd.median / self.baseline.median

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "-"
        return "met" if self.met else f"MISSED: {self.note}" if self.note else "MISSED"

    def cells(self) -> list[str]:
        ratio = self.ratio
        return [
            self.name,
            self.rprocd.text() if self.rprocd else "-",
            self.baseline_text or (self.baseline.text() if self.baseline else "-"),
            f"{ratio:.2f}x" if ratio is not None else "-",
            self.target or "-",
            self.verdict,
        ]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["verdict"] = self.verdict
        data["cells"] = self.cells()
        return data


def overhead_figure(topic: str, name: str, rprocd: list[float], baseline: list[float],
                    limit_ms: float | None, note_missed: str = "", note: str = "") -> Figure:
    """rprocd vs the shell floor; the target (if any) bounds the median overhead."""
    r, b = Stats.of(rprocd), Stats.of(baseline)
    over = r.median - b.median
    fig = Figure(topic, name, r, b, extra={"overhead_ms": round(over, 3)})
    if limit_ms is not None:
        fig.target = f"overhead < {limit_ms:g} ms"
        fig.met = over < limit_ms
        fig.note = (f"overhead {over:.1f} ms; {note_missed}" if not fig.met
                    else f"overhead {over:.1f} ms")
    else:
        fig.note = f"overhead {over:.1f} ms"
    if note:
        fig.note = f"{fig.note}; {note}"
    return fig


# -- the emulated board ------------------------------------------------------


def board(*boards: str, daemon: bool = True, config: str | None = None,
          firmware: Sequence[str] = (), options: Sequence[str] = (),
          sim_firmware: Sequence[str] = ()) -> SimBoard:
    """A SimBoard (use with `with`): `firmware` copied in once up, `sim_firmware`
    before the emulated kernel boots."""
    if SIM is None:
        raise SystemExit("rprocd-sim is not available: run `make setup`")
    sim = SimBoard(*boards, daemon=daemon, config=config, firmware=tuple(firmware),
                   options=tuple(options))
    extra = [arg for name in sim_firmware for arg in ("--firmware", str(FIRMWARE / name))]
    sim.argv[len(SIM):len(SIM)] = extra
    return sim


def sysfs_class(device: str, attr: str) -> str:
    return f"/sys/class/remoteproc/{device}/{attr}"


def debugfs(device: str, attr: str) -> str:
    return f"/sys/kernel/debug/remoteproc/{device}/{attr}"


# The shell: JSON requests on stdin, answered in order. Each request is a list
# of steps; each step (op, path, data) is what `echo data > path` or `cat
# path` does (os.open + one os.write / reads until EOF). Timed here, in the
# process under the preload, with CLOCK_MONOTONIC (shared with the caller).
_SHELL = r"""
import json, os, sys, time
def write(path, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
def read(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        out = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out.decode(errors="replace")
            out += chunk
    finally:
        os.close(fd)
for line in sys.stdin:
    req = json.loads(line)
    out, err = [], 0
    if req.get("wait"):
        path, want, deadline = req["wait"], req["value"], time.monotonic() + req["timeout"]
        t0 = time.monotonic()
        while True:
            try:
                if read(path).strip() == want:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                err = 110
                break
            time.sleep(req.get("every", 0.002))
        t1 = time.monotonic()
    else:
        t0 = time.monotonic()
        try:
            for op, path, data in req["steps"]:
                out.append(write(path, data) if op == "write" else read(path))
        except OSError as e:
            err = e.errno
        t1 = time.monotonic()
    sys.stdout.write(json.dumps({"t0": t0, "t1": t1, "errno": err, "out": out}) + "\n")
    sys.stdout.flush()
"""


@dataclass
class Done:
    t0: float  # CLOCK_MONOTONIC when the first step began
    t1: float  # ... and when the last one returned
    errno: int
    out: list[str]

    @property
    def ms(self) -> float:
        return (self.t1 - self.t0) * 1000


class Shell:
    """The baseline: sysfs reads and writes as a shell script does them, timed
    inside one process under the emulator's preload."""

    def __init__(self, sim: SimBoard) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _SHELL], env=sim.env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      bufsize=1)
        self._lock = threading.Lock()

    def run(self, *steps: tuple[str, str, str]) -> Done:
        """Steps ("write", path, "text\\n") or ("read", path, ""), in order."""
        return self._ask({"steps": [list(s) for s in steps]})

    def echo(self, value: str, path: str) -> Done:
        return self.run(("write", path, value + "\n"))

    def cat(self, *paths: str) -> Done:
        return self.run(*(("read", p, "") for p in paths))

    def wait(self, path: str, value: str, timeout: float = 10.0, every: float = 0.002) -> Done:
        """Until `cat path` reads `value` (errno 110 after `timeout`)."""
        return self._ask({"wait": path, "value": value, "timeout": timeout, "every": every})

    def _ask(self, req: dict[str, Any]) -> Done:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the baseline shell process exited")
        return Done(**json.loads(line))

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextmanager
def shell(sim: SimBoard) -> Iterator[Shell]:
    sh = Shell(sim)
    try:
        yield sh
    finally:
        sh.close()


# -- the daemon over D-Bus -----------------------------------------------------


def processor_path(core: str) -> str:
    return f"/org/rprocd1/processor/{core}"


class Bus:
    """One client connection to the private bus; calls timed in milliseconds."""

    def __init__(self, sim: SimBoard) -> None:
        self.conn = sim.connect()

    def call(self, path: str, interface: str, method: str, args: GLib.Variant | None = None,
             timeout_ms: int = CALL_TIMEOUT_MS) -> Any:
        return self.conn.call_sync(BUS_NAME, path, interface, method, args, None,
                                   Gio.DBusCallFlags.NONE, timeout_ms, None).unpack()

    def timed(self, fn: Callable[[], Any]) -> float:
        t0 = time.monotonic()
        fn()
        return (time.monotonic() - t0) * 1000

    def start(self, core: str, firmware: str = "") -> Any:
        return self.call(processor_path(core), PROCESSOR, "Start",
                         GLib.Variant("(s)", (firmware,)))

    def stop(self, core: str) -> Any:
        return self.call(processor_path(core), PROCESSOR, "Stop")

    def get(self, core: str, prop: str) -> Any:
        return self.call(processor_path(core), PROPERTIES, "Get",
                         GLib.Variant("(ss)", (PROCESSOR, prop)))[0]

    def get_all(self, core: str) -> dict[str, Any]:
        return self.call(processor_path(core), PROPERTIES, "GetAll",
                         GLib.Variant("(s)", (PROCESSOR,)))[0]

    def managed_objects(self) -> dict[str, Any]:
        return self.call(MANAGER_PATH, "org.freedesktop.DBus.ObjectManager",
                         "GetManagedObjects")[0]

    def reload(self) -> None:
        self.call(MANAGER_PATH, MANAGER, "Reload")

    def close(self) -> None:
        self.conn.close_sync(None)


def wait_property(bus: Bus, core: str, prop: str, value: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while bus.get(core, prop) != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{core}: {prop} is {bus.get(core, prop)!r}, not {value!r}")
        time.sleep(0.01)


def configure(sim: SimBoard, bus: Bus, text: str) -> None:
    """Replace rprocd.conf and Reload() it."""
    (Path(sim.env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf").write_text(text)
    bus.reload()


@dataclass(frozen=True)
class Signal:
    received: float  # CLOCK_MONOTONIC at arrival in this process
    path: str
    member: str
    args: Any


class Signals:
    """Signals of org.rprocd1 (`member`), stamped at arrival on a thread of their own."""

    def __init__(self, sim: SimBoard, member: str) -> None:
        self.seen: list[Signal] = []
        self._cv = threading.Condition()
        self._member = member
        self._loop: GLib.MainLoop | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sim, ready), daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError(f"could not subscribe to {member}")

    def _run(self, sim: SimBoard, ready: threading.Event) -> None:
        context = GLib.MainContext()
        context.push_thread_default()
        conn = sim.connect()
        conn.signal_subscribe(BUS_NAME, None, self._member, None, None,
                              Gio.DBusSignalFlags.NONE, self._on_signal)
        conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       "GetId", None, None, Gio.DBusCallFlags.NONE, -1, None)
        self._loop = GLib.MainLoop(context)
        ready.set()
        self._loop.run()
        conn.close_sync(None)
        context.pop_thread_default()

    def _on_signal(self, _conn: Any, _sender: str, path: str, _iface: str, member: str,
                   params: GLib.Variant, *_user: Any) -> None:
        now = time.monotonic()
        with self._cv:
            self.seen.append(Signal(now, path, member, params.unpack()))
            self._cv.notify_all()

    def count(self, path: str | None = None) -> int:
        with self._cv:
            return sum(1 for s in self.seen if path in (None, s.path))

    def wait(self, count: int, path: str | None = None, timeout: float = 15) -> list[Signal]:
        """The first `count` signals (of `path`); RuntimeError after `timeout`."""
        with self._cv:
            if not self._cv.wait_for(lambda: self.count(path) >= count, timeout):
                raise RuntimeError(f"{self.count(path)} {self._member} signal(s) of "
                                   f"{path or 'any core'} within {timeout} s, expected {count}")
            return [s for s in self.seen if path in (None, s.path)][:count]

    def close(self) -> None:
        if self._loop is not None:
            self._loop.quit()
        self._thread.join(10)


# -- the daemon's process --------------------------------------------------------


class Daemon(OwnDaemon):
    """`python -m rprocd` run by the benchmark, whose NOTIFY_SOCKET is read to
    the end as systemd does: a receiver that stops after READY=1 lets the
    socket's queue (net.unix.max_dgram_qlen, 10 here) fill with STATUS=
    lines, and the daemon's next sd_notify then blocks its main loop."""

    def start(self, timeout: float = 30) -> Daemon:
        super().start(timeout)
        sock = self._sock
        assert sock is not None
        sock.settimeout(0.2)
        threading.Thread(target=self._drain, args=(sock,), daemon=True).start()
        return self

    @staticmethod
    def _drain(sock: Any) -> None:
        while sock.fileno() != -1:
            try:
                sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return


CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all its threads: its wakeups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def python_floor_rss() -> float:
    """RSS (MiB) of a bare interpreter with what any Python GLib daemon imports."""
    code = ("import gi; gi.require_version('Gio', '2.0'); from gi.repository import Gio, GLib; "
            "import pyudev, sys; print(open('/proc/self/status').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
