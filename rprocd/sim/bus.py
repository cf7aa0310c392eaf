"""A private system bus for the emulated board, with a polkit stand-in.

`dbus-daemon` runs with a generated configuration of type `system` that keeps
the defaults of Debian's `system.conf` (own nothing, call nothing but the bus
itself) and includes the project's own policy `org.rprocd1.conf`, so the
daemon and its clients meet exactly the rules they meet on a real system.

The polkit stand-in is python-dbusmock's `polkitd` template. It grants
nothing until told otherwise: `RPROCD_SIM_POLKIT_ALLOW` (comma separated
action ids, or `*` for all) seeds it, and tests change it at any time with
the mock's own methods, e.g.

    busctl call org.freedesktop.PolicyKit1 /org/freedesktop/PolicyKit1/Authority \\
        org.freedesktop.DBus.Mock SetAllowed as 1 org.rprocd1.manage

(`AllowUnknown b true` grants everything; `SetDelay d`, `SimulateHang b`).
The mock does not look at the subject: an action it allows is allowed to
every caller. Without it (`rprocd-sim --no-polkit`) the bus has no polkit at
all, as on a board image built without polkitd.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from gi.repository import Gio, GLib

log = logging.getLogger("rprocd.sim.bus")

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
POLKIT_ALLOW_ENV = "RPROCD_SIM_POLKIT_ALLOW"

_REPO_POLICY = Path(__file__).resolve().parents[2] / "dbus" / "org.rprocd1.conf"
_SYSTEM_POLICY = Path("/usr/share/dbus-1/system.d/org.rprocd1.conf")


def policy_file() -> Path:
    """The project's bus policy: the repository's `dbus/` in a checkout, else
    the installed one (which may not exist yet: included with ignore_missing)."""
    return _REPO_POLICY if _REPO_POLICY.is_file() else _SYSTEM_POLICY


def bus_config(socket: Path, policy: Path) -> str:
    """A system bus configuration listening on `socket` (Debian's defaults)."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={escape(str(socket))}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <!-- what polkit's own system.d file grants -->
  <policy user="root">
    <allow own="{POLKIT_NAME}"/>
  </policy>
  <policy context="default">
    <allow send_destination="{POLKIT_NAME}"/>
  </policy>
  <include ignore_missing="yes">{escape(str(policy))}</include>
</busconfig>
"""


def parse_allowed(value: str | None) -> list[str]:
    """`RPROCD_SIM_POLKIT_ALLOW`: `a,b` -> [a, b]; `*` -> ['*'] (everything)."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class Bus:
    """The private bus and the polkit mock; start() then stop()."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.socket = directory / "system_bus_socket"
        self.config = directory / "bus.conf"
        self.address = ""
        self._env = env
        self._daemon: subprocess.Popen[bytes] | None = None
        self._polkit: subprocess.Popen[bytes] | None = None
        self._polkit_log = directory / "polkit.log"
        self._bus_log = directory / "bus.log"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._daemon, self._polkit) if p is not None]

    def start(self, allowed: Sequence[str] = (), timeout: float = 20.0,
              polkit: bool = True) -> None:
        """Start dbus-daemon and the polkit mock (unless `polkit` is False: a
        board image without polkitd); return once both answer."""
        self.config.write_text(bus_config(self.socket, policy_file()))
        with open(self._bus_log, "wb") as log_file:  # its complaints (fd limits...)
            self._daemon = subprocess.Popen(
                ["dbus-daemon", f"--config-file={self.config}", "--nofork",
                 "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=self._env,
                start_new_session=True,
            )
        assert self._daemon.stdout is not None
        line = _read_line(self._daemon.stdout, timeout)
        if not line:
            status = self._daemon.poll()
            text = self._bus_log.read_text(errors="replace")
            raise RuntimeError(
                f"dbus-daemon gave no address within {timeout} s (exit status {status}):\n{text}"
            )
        self.address = line.decode().strip()
        self.socket.chmod(0o666)  # unprivileged clients connect too
        if polkit:
            self._start_polkit(allowed, timeout)

    def _start_polkit(self, allowed: Sequence[str], timeout: float) -> None:
        env = dict(self._env, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        with open(self._polkit_log, "wb") as out:
            self._polkit = subprocess.Popen(
                [sys.executable, "-m", "dbusmock", "--template", "polkitd", "--system"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        conn = Gio.DBusConnection.new_for_address_sync(
            self.address,
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
            None,
            None,
        )
        try:
            if not _wait_for_name(conn, POLKIT_NAME, self._polkit.pid, timeout):
                text = self._polkit_log.read_text(errors="replace")
                raise RuntimeError(
                    f"the polkit mock did not get {POLKIT_NAME} within {timeout} s "
                    f"(exit status {self._polkit.poll()}):\n{text}"
                )
            # Queued behind the template's loading: the mock only dispatches
            # calls once its main loop runs, after the template is in place.
            if "*" in allowed:
                _mock_call(conn, "AllowUnknown", GLib.Variant("(b)", (True,)))
            elif allowed:
                _mock_call(conn, "SetAllowed", GLib.Variant("(as)", (list(allowed),)))
        finally:
            conn.close_sync(None)

    def alive(self) -> bool:
        return all(p.poll() is None for p in (self._daemon, self._polkit) if p is not None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the mock, then the bus. Idempotent."""
        for proc in (self._polkit, self._daemon):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._daemon is not None and self._daemon.stdout is not None:
            self._daemon.stdout.close()
        self._polkit = self._daemon = None


def _read_line(stream: object, timeout: float) -> bytes:
    """One line from a pipe, or b'' at EOF or timeout."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _mock_call(conn: Gio.DBusConnection, method: str, args: GLib.Variant) -> None:
    conn.call_sync(POLKIT_NAME, POLKIT_PATH, MOCK_IFACE, method, args, None,
                   Gio.DBusCallFlags.NONE, 10_000, None)


def _wait_for_name(conn: Gio.DBusConnection, name: str, pid: int, timeout: float) -> bool:
    """Wait for `name` to get an owner; False on timeout or if `pid` exits.

    Event-driven: NameOwnerChanged, the process's pidfd and a deadline wake
    a private main context.
    """
    ctx = GLib.MainContext.new()
    ctx.push_thread_default()
    pidfd = os.pidfd_open(pid)
    state = {"owned": False, "done": False}

    def on_signal(*args: object) -> None:
        params = args[5]
        if params.unpack()[2]:  # type: ignore[attr-defined]
            state["owned"] = state["done"] = True

    def on_exit(*_args: object) -> bool:
        state["done"] = True
        return False

    def on_timeout(*_args: object) -> bool:
        state["done"] = True
        return False

    sub = conn.signal_subscribe(
        "org.freedesktop.DBus", "org.freedesktop.DBus", "NameOwnerChanged",
        "/org/freedesktop/DBus", name, Gio.DBusSignalFlags.NONE, on_signal,
    )
    sources = [GLib.unix_fd_source_new(pidfd, GLib.IOCondition.IN), GLib.timeout_source_new(
        int(timeout * 1000))]
    sources[0].set_callback(on_exit)
    sources[1].set_callback(on_timeout)
    for source in sources:
        source.attach(ctx)
    try:
        reply = conn.call_sync(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "NameHasOwner", GLib.Variant("(s)", (name,)), GLib.VariantType("(b)"),
            Gio.DBusCallFlags.NONE, -1, None,
        )
        if reply.unpack()[0]:
            return True
        while not state["done"]:
            ctx.iteration(True)
        return state["owned"]
    finally:
        conn.signal_unsubscribe(sub)
        for source in sources:
            source.destroy()
        os.close(pidfd)
        ctx.pop_thread_default()
