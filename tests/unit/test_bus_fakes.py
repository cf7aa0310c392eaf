"""Shared pieces of the D-Bus adapter tests: a fake core, a private bus, a server.

The fake Manager/Processor implement the HACKING.md core API (done callbacks
on the main loop, listener calls), so the adapter is tested alone. The bus is
a private dbus-daemon with a system-bus-like policy that includes the
project's own dbus/org.rprocd1.conf, so non-root callers (setpriv) meet the
real policy. The adapter runs its GLib main loop in a thread; tests talk to
it as clients do (Gio, pydbus, busctl).

Imported by test_bus_*.py and test_ctl*.py; it has no tests of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gi
import pytest

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

from rprocd.errors import BadState, Failed, FirmwareNotFound, InvalidArgs, NoSuchProcessor  # noqa: E402
from rprocd.naming import escape  # noqa: E402
from rprocd.sim.bus import bus_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")


# --- the fake core -----------------------------------------------------------


def later(fn: Callable[..., Any], *args: Any, ms: int = 0) -> None:
    """Run on the main loop, like the core's worker results."""

    def once() -> bool:
        fn(*args)
        return GLib.SOURCE_REMOVE

    GLib.timeout_add(ms, once)


class FakeProcessor:
    def __init__(self, name: str, device: str, **props: Any) -> None:
        self.name = name
        self.device = device
        self.object_name = escape(name)
        self.listener: Any = None
        self.calls: list[tuple] = []
        self.fail_next: BaseException | None = None
        self.delay_ms = 0
        self.props: dict[str, object] = {
            "Name": name,
            "Device": device,
            "State": "offline",
            "Operation": "",
            "Failed": False,
            "LastError": "",
            "Firmware": "",
            "DefaultFirmware": f"rproc-{name}-fw",
            "FirmwareFormat": "",
            "Recovery": "enabled",
            "RestartPolicy": "no",
            "CoredumpMode": "disabled",
            "CrashCount": 0,
            "LastCrashType": "",
            "LastCrashTime": 0,
            "LastCoredump": "",
            "RunningSince": 0,
            "RpmsgChannels": [],
            "TraceBuffers": ["trace0"],
        }
        self.props.update(props)

    def properties(self) -> dict[str, object]:
        return dict(self.props)

    def set(self, **changed: object) -> None:
        """Change properties and tell the listener (call on the main loop)."""
        self.props.update(changed)
        if self.listener:
            self.listener.properties_changed(self, dict(changed))

    def _operate(self, verb: str, done: Callable, allowed: tuple, **result: object) -> None:
        self.calls.append((verb, result.get("Firmware")))
        error, self.fail_next = self.fail_next, None
        if error is None and self.props["State"] not in allowed:
            error = BadState(f"{self.name}: cannot {verb} while {self.props['State']}")

        def finish() -> None:
            if error is None:
                self.set(**result)
            done(error)

        later(finish, ms=self.delay_ms)

    def start(self, firmware: str, done: Callable) -> None:
        fw = firmware or str(self.props["DefaultFirmware"])
        self._operate("start", done, ("offline", "detached"), State="running", Firmware=fw)

    def stop(self, done: Callable) -> None:
        self._operate("stop", done, ("running", "attached"), State="offline")

    def restart(self, firmware: str, done: Callable) -> None:
        fw = firmware or str(self.props["DefaultFirmware"])
        self._operate("restart", done, ("running", "attached", "offline"), State="running",
                      Firmware=fw)

    def detach(self, done: Callable) -> None:
        self._operate("detach", done, ("running", "attached"), State="detached")

    def recover(self, done: Callable) -> None:
        self._operate("recover", done, ("crashed",), State="running")

    def reset_failed(self) -> None:
        self.calls.append(("reset_failed", None))
        self.set(Failed=False, LastError="")

    def read_trace(self, buffer: str) -> str:
        if buffer not in ("", "trace0"):
            raise InvalidArgs(f"{self.name}: no trace buffer '{buffer}'; see TraceBuffers")
        return "[m] booted\n[m] tick 1\n"


class FakeManager:
    version = "0.1.0-test"

    def __init__(self, *procs: FakeProcessor) -> None:
        self.processors = {p.object_name: p for p in procs}
        self.listener: Any = None
        self.config = SimpleNamespace(manager=SimpleNamespace(allow_group=""))
        self.reloads = 0
        self.reload_error: BaseException | None = None
        self.imported: dict[str, bytes] = {}
        self.import_done_shape = "name, error"

    def get_processor(self, name_or_device: str) -> FakeProcessor:
        for proc in self.processors.values():
            if name_or_device in (proc.name, proc.device):
                return proc
        raise NoSuchProcessor(f"{name_or_device}: no such processor; rprocctl list shows them")

    def reload(self) -> None:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error

    def inspect_firmware(self, name: str) -> dict:
        if name == "missing.elf":
            raise FirmwareNotFound(f"firmware '{name}' is not in /lib/firmware")
        if name == "boom.elf":
            raise ZeroDivisionError("division by zero")
        return {
            "name": name,
            "format": "ELF",
            "machine": "ARM",
            "entry": 0x10000000,
            "valid": True,
            "segments": [{"vaddr": 0x10000000, "memsz": 4096, "flags": "RX"}],
            "resource_table": {"version": 1, "entries": [{"type": "trace", "name": "trace0"}]},
            "problems": [],
            "negative": -1,
            "tags": ["a", "b"],
            "missing": None,
        }

    def import_firmware(self, fd: int, name: str, done: Callable) -> None:
        with os.fdopen(fd, "rb") as file:  # the core owns (and closes) the fd
            data = file.read()
        if not data.startswith(b"\x7fELF"):
            later(done, None, Failed(f"'{name}' is not an ELF file"))
            return
        stored = f"imported/{name}"
        self.imported[stored] = data
        if self.import_done_shape == "error":
            later(done, None)
        else:
            later(done, stored, None)

    def plug(self, proc: FakeProcessor) -> None:
        self.processors[proc.object_name] = proc
        if self.listener:
            self.listener.processor_added(proc)

    def unplug(self, proc: FakeProcessor) -> None:
        del self.processors[proc.object_name]
        if self.listener:
            self.listener.processor_removed(proc)


def two_cores() -> FakeManager:
    return FakeManager(
        FakeProcessor("m33", "remoteproc0", State="running", Firmware="rproc-m33-fw"),
        FakeProcessor("m0", "remoteproc1"),
    )


# --- a private system-like bus -------------------------------------------------


class PrivateBus:
    def __init__(self) -> None:
        # World-readable directory: setpriv'd clients (nobody) must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="rprocd-bus-test-"))
        self.dir.chmod(0o755)
        config = self.dir / "bus.conf"
        # The emulator's system bus: Debian's defaults plus the project's policy.
        config.write_text(bus_config(self.dir / "socket", REPO / "dbus" / "org.rprocd1.conf"))
        self.process = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.address = self.process.stdout.readline().strip()
        if not self.address:
            raise RuntimeError("dbus-daemon did not start")

    def connect(self) -> Gio.DBusConnection:
        return Gio.DBusConnection.new_for_address_sync(
            self.address,
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
            None, None,
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def private_bus() -> Iterator[PrivateBus]:
    bus = PrivateBus()
    yield bus
    bus.close()


# --- the adapter, served from a main loop thread ---------------------------------


class Served:
    """A BusService over a fake Manager, its loop running in a thread."""

    def __init__(self, bus: PrivateBus, manager: FakeManager) -> None:
        from rprocd.bus import BusService

        self.bus = bus
        self.manager = manager
        self.ready = threading.Event()
        self.lost: list[str] = []
        self.loop = GLib.MainLoop()
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()
        self.connection = bus.connect()
        self.service = BusService(manager, connection=self.connection)
        self.run(self.service.publish, self.ready.set, self.lost.append)
        if not self.ready.wait(5):
            raise RuntimeError(f"adapter not ready: {self.lost}")
        self.client = bus.connect()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call fn on the main loop thread and wait for its result."""
        box: list[Any] = []
        done = threading.Event()

        def call() -> bool:
            try:
                box.append((fn(*args), None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                box.append((None, exc))
            done.set()
            return GLib.SOURCE_REMOVE

        GLib.idle_add(call)
        if not done.wait(10):
            raise TimeoutError(f"{fn} did not run on the loop")
        result, exc = box[0]
        if exc is not None:
            raise exc
        return result

    def call(self, path: str, interface: str, method: str, args: GLib.Variant | None = None,
             fds: Gio.UnixFDList | None = None, timeout_ms: int = 10_000) -> Any:
        """A method call as a root client; returns the unpacked out arguments."""
        result, _out = self.client.call_with_unix_fd_list_sync(
            "org.rprocd1", path, interface, method, args, None,
            Gio.DBusCallFlags.NONE, timeout_ms, fds, None,
        )
        return result.unpack()

    def close(self) -> None:
        self.run(self.service.close)
        for connection in (self.client, self.connection):
            if not connection.is_closed():
                connection.close_sync(None)
        self.loop.quit()
        self.thread.join(5)


@pytest.fixture
def served(private_bus: PrivateBus) -> Iterator[Served]:
    server = Served(private_bus, two_cores())
    yield server
    server.close()


def dbus_error_name(err: GLib.Error) -> str:
    return Gio.DBusError.get_remote_error(err) or ""


class SignalRecorder:
    """Signals from org.rprocd1 as a client sees them, in order."""

    def __init__(self, bus: PrivateBus) -> None:
        self.context = GLib.MainContext()
        self.context.push_thread_default()
        try:
            self.connection = bus.connect()
            self.connection.signal_subscribe(
                "org.rprocd1", None, None, None, None, Gio.DBusSignalFlags.NONE, self._got
            )
            # Round trip: the AddMatch is in place before the test acts.
            self.connection.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                      "org.freedesktop.DBus", "GetId", None, None,
                                      Gio.DBusCallFlags.NONE, -1, None)
        finally:
            self.context.pop_thread_default()
        self.signals: list[tuple[str, str, str, Any]] = []

    def _got(self, _conn, _sender, path, interface, name, params) -> None:
        self.signals.append((path, interface, name, params.unpack()))

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 5) -> list:
        deadline = time.monotonic() + timeout
        while not predicate(self.signals):
            if time.monotonic() > deadline:
                raise AssertionError(f"signals never matched; got {self.signals}")
            self.context.iteration(False) or time.sleep(0.01)
        return self.signals

    def names(self) -> list[str]:
        return [name for _path, _iface, name, _args in self.signals]

    def close(self) -> None:
        self.connection.close_sync(None)


class MockPolkit:
    """python-dbusmock's polkitd template on the private bus (denies by default)."""

    def __init__(self, bus: PrivateBus) -> None:
        self.bus = bus
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=bus.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.connection = bus.connect()
        deadline = time.monotonic() + 10
        while not self._has_owner():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the polkit mock did not start")
            time.sleep(0.05)

    def _has_owner(self) -> bool:
        (owned,) = self.connection.call_sync(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "NameHasOwner", GLib.Variant("(s)", ("org.freedesktop.PolicyKit1",)),
            None, Gio.DBusCallFlags.NONE, -1, None).unpack()
        return owned

    def mock(self, method: str, signature: str, *args: Any) -> None:
        self.connection.call_sync(
            "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
            "org.freedesktop.DBus.Mock", method, GLib.Variant(signature, args), None,
            Gio.DBusCallFlags.NONE, -1, None)

    def allow(self, *actions: str) -> None:
        self.mock("SetAllowed", "(as)", list(actions))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self.connection.close_sync(None)
        while self._bus_has_polkit():
            time.sleep(0.02)

    def _bus_has_polkit(self) -> bool:
        probe = self.bus.connect()
        try:
            (owned,) = probe.call_sync(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                "NameHasOwner", GLib.Variant("(s)", ("org.freedesktop.PolicyKit1",)),
                None, Gio.DBusCallFlags.NONE, -1, None).unpack()
            return owned
        finally:
            probe.close_sync(None)


@pytest.fixture
def polkit(private_bus: PrivateBus) -> Iterator[MockPolkit]:
    mock = MockPolkit(private_bus)
    yield mock
    mock.close()


def busctl(bus: PrivateBus, *args: str, user: str = "root",
           timeout: float = 20) -> subprocess.CompletedProcess:
    """busctl against the private bus, as root or as nobody (setpriv)."""
    prefix = NOBODY if user == "nobody" else []
    return subprocess.run(
        [*prefix, "busctl", f"--address={bus.address}", *args],
        capture_output=True, text=True, timeout=timeout,
    )


_CLIENT = r"""
import json, os, sys
import gi
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib
dest, path, iface, method, signature, args = json.loads(sys.argv[1])
conn = Gio.DBusConnection.new_for_address_sync(
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
try:
    params = GLib.Variant(signature, tuple(args)) if signature else None
    out = conn.call_sync(dest, path, iface, method, params, None,
                         Gio.DBusCallFlags.NONE, 20000, None)
    print(json.dumps({"ok": True, "out": out.unpack()}))
except GLib.Error as err:
    name = Gio.DBusError.get_remote_error(err)
    message = err.message.removeprefix(f"GDBus.Error:{name}: ")
    print(json.dumps({"ok": False, "error": name, "message": message}))
"""


def as_nobody(bus: PrivateBus, path: str, iface: str, method: str, signature: str = "",
              *args: Any, dest: str = "org.rprocd1") -> dict:
    """One method call from a process running as uid 65534: {"ok", "out"|"error", "message"}."""
    out = subprocess.run(
        [*NOBODY, sys.executable, "-c", _CLIENT,
         json.dumps([dest, path, iface, method, signature, list(args)])],
        env=bus.env(), capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
