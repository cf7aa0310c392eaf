"""Tools shared by test_lifecycle, test_hotplug, test_boot, test_errors and
test_config: acting on the emulated kernel as a shell user would, watching
the daemon's signals, and running a daemon of one's own. No tests here.

- `sh(sim, script)`: `bash -c script` under the umockdev preload (`sim.env`
  carries LD_PRELOAD and UMOCKDEV_DIR), so `/sys/...` is the emulated kernel:
  `echo 10000000.m4 > /sys/bus/platform/drivers/stm32-rproc/unbind`. bash,
  not sh: dash reports every failed write as "I/O error", bash names the errno.
- `Signals`: every signal org.rprocd1 sends, recorded on a connection of its
  own, for `wait()` (something arrived) and `quiet()` (nothing did).
- `OwnDaemon`: `python -m rprocd` started by the test itself on a board made
  with `daemon=False`, with the environment rprocd-sim gives its own daemon
  (the preload, the bus, the directories) and a NOTIFY_SOCKET the test reads
  READY=1 from. For what rprocd-sim's daemon cannot show: a daemon killed
  and started again in the same boot, and the board after the daemon exited.
  rprocd-sim treats any end of its own daemon before teardown as a failure
  (exit 70), so these tests run theirs and check its exit status themselves.
- `sim_board(..., sim_firmware=(...))`: the harness's board with images copied
  in by `rprocd-sim --firmware` *before* the emulated kernel boots (what an
  early-booted core runs, what AutoStart= needs at the daemon's first start).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from gi.repository import Gio, GLib

try:
    from test_api_board import BUS_NAME, FIRMWARE, SIM, SimBoard, dbus_error
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import BUS_NAME, FIRMWARE, SIM, SimBoard, dbus_error

MP1 = "stm32mp157f-dk"
MP2 = "stm32mp257f-dk"
M4 = "/org/rprocd1/processor/m4"
M33 = "/org/rprocd1/processor/m33"
M0 = "/org/rprocd1/processor/m0"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
ERROR = "org.rprocd1.Error."
T = 30  # seconds, per D-Bus call


def sim_board(*boards: str, sim_firmware: tuple[str, ...] = (), **kwargs: Any) -> SimBoard:
    """A SimBoard (use with `with`) whose `sim_firmware` images are in the
    emulated kernel's firmware directory from its boot on."""
    sim = SimBoard(*boards, **kwargs)
    assert SIM is not None
    extra = [arg for name in sim_firmware for arg in ("--firmware", str(FIRMWARE / name))]
    sim.argv[len(SIM):len(SIM)] = extra
    return sim


def sh(sim: SimBoard, script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """`bash -c script` under the preload: /sys is the emulated kernel."""
    return subprocess.run(["bash", "-c", script], env=sim.env, capture_output=True, text=True,
                          timeout=timeout)


def sys_read(sim: SimBoard, path: str) -> str:
    out = sh(sim, f"cat {path}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def sys_state(sim: SimBoard, device: str) -> str:
    """What the kernel says: /sys/class/remoteproc/<device>/state."""
    return sys_read(sim, f"/sys/class/remoteproc/{device}/state")


def sys_write(sim: SimBoard, path: str, value: str) -> tuple[int, str]:
    """`echo value > path` under the preload: (status, bash's complaint)."""
    out = sh(sim, f"echo {value} > {path}")
    return out.returncode, out.stderr.strip()


def virtio_devices(sim: SimBoard) -> list[str]:
    """The virtio devices of every core: each boot of a core makes a new
    `virtioN` (N only grows), so an unchanged list means nothing was rebooted.
    The directory appears with the first virtio device."""
    out = sh(sim, "d=/sys/bus/virtio/devices; if [ -e $d ]; then ls $d; fi")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def error_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """(D-Bus error name, one-line message) of a call that must fail."""
    try:
        fn(*args, **kwargs)
    except GLib.Error as err:
        name, message = dbus_error(err)
        assert "\n" not in message and "Traceback" not in message, message
        return name, message
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} succeeded; it must fail")


class Signals:
    """Every signal from org.rprocd1, recorded from now on."""

    def __init__(self, sim: SimBoard) -> None:
        self.seen: list[tuple[str, str, str, Any]] = []  # (path, interface, member, args)
        self.context = GLib.MainContext()
        self.context.push_thread_default()
        try:
            self.conn = sim.connect()
            self.conn.signal_subscribe(BUS_NAME, None, None, None, None,
                                       Gio.DBusSignalFlags.NONE, self._on_signal)
            # A round trip on the same connection: the AddMatch is in place after it.
            self.conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                "org.freedesktop.DBus", "GetId", None, None,
                                Gio.DBusCallFlags.NONE, -1, None)
        finally:
            self.context.pop_thread_default()

    def _on_signal(self, _conn: Any, _sender: str, path: str, interface: str, member: str,
                   params: GLib.Variant, *_user: Any) -> None:
        self.seen.append((path, interface, member, params.unpack()))

    def pump(self) -> None:
        while self.context.iteration(False):
            pass

    def of(self, member: str, path: str | None = None) -> list[Any]:
        """The arguments of every `member` signal seen so far (on `path`)."""
        self.pump()
        return [args for p, _i, m, args in self.seen if m == member and path in (None, p)]

    def sources(self, member: str) -> list[tuple[str, str]]:
        """(object path, interface) of every `member` signal seen so far."""
        self.pump()
        return [(p, i) for p, i, m, _a in self.seen if m == member]

    def wait(self, member: str, match: Callable[[Any], bool] = lambda _a: True,
             timeout: float = 10) -> Any:
        """The first `member` signal whose arguments satisfy `match`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [args for args in self.of(member) if match(args)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {member} signal within {timeout} s; seen: "
                                     f"{[(p, m, a) for p, _i, m, a in self.seen]}")
            time.sleep(0.02)

    def clear(self) -> None:
        self.pump()
        self.seen.clear()

    def close(self) -> None:
        self.conn.close_sync(None)


@contextlib.contextmanager
def signals(sim: SimBoard) -> Iterator[Signals]:
    recorder = Signals(sim)
    try:
        yield recorder
    finally:
        recorder.close()


def name_owner(sim: SimBoard) -> str:
    """The unique bus name owning org.rprocd1 now ("" if none)."""
    conn = sim.connect()
    try:
        (owner,) = conn.call_sync(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "GetNameOwner", GLib.Variant("(s)", (BUS_NAME,)), None,
            Gio.DBusCallFlags.NONE, -1, None).unpack()
        return owner
    except GLib.Error:
        return ""
    finally:
        conn.close_sync(None)


class OwnDaemon:
    """`python -m rprocd` on `sim`'s board, run by the test (see the module doc)."""

    def __init__(self, sim: SimBoard, label: str) -> None:
        self.sim = sim
        self.label = label
        self.log_path = sim.tmp / f"{label}.log"
        self.notify_path = sim.tmp / f"{label}.notify"
        self.process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30) -> OwnDaemon:
        """Start it and return at its READY=1 (AssertionError with its log otherwise)."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        env = {**self.sim.env, "NOTIFY_SOCKET": str(self.notify_path)}
        env.pop("RPROCD_PID", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "rprocd"], env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: no READY=1 within {timeout} s:\n{self.log()}")
            if select.select([self._sock], [], [], min(left, 0.1))[0]:
                message = self._sock.recv(65536).decode(errors="replace")
                if "READY=1" in message.splitlines():
                    return self
            elif self.process.poll() is not None:
                raise AssertionError(f"{self.label}: exited {self.process.returncode} before "
                                     f"READY=1:\n{self.log()}")

    def kill(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as systemd stops it; its exit status."""
        self.kill(signal.SIGTERM)
        return self.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"(no log: {err})"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                # not forever: a thread blocked in an emulated write (hang=1) keeps
                # it unreaped until rprocd-sim's teardown ends that write
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                sys.stderr.write(f"--- {self.label} (pid {self.pid}) not reaped after "
                                 "SIGKILL: a kernel write of it is still blocked\n")
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def own_daemons(sim: SimBoard) -> Iterator[Callable[[str], OwnDaemon]]:
    """`make(label)` -> an OwnDaemon (not started); all killed at the end, their
    logs printed when the test fails."""
    made: list[OwnDaemon] = []

    def make(label: str) -> OwnDaemon:
        made.append(OwnDaemon(sim, label))
        return made[-1]

    try:
        yield make
    except BaseException:
        for daemon in made:
            sys.stderr.write(f"--- {daemon.label} log:\n{daemon.log()}\n")
        raise
    finally:
        for daemon in made:
            daemon.close()
