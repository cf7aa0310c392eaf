"""The real daemon on an emulated board, driven only as users drive it.

`SimBoard` runs `rprocd-sim --daemon` through its documented command line
(HACKING.md, "The emulated board"): it waits for the `--env-file`, talks to
the daemon over the private system bus (pydbus, Gio, busctl, rprocctl), and
at the end lets CMD exit so that rprocd-sim stops the daemon with SIGTERM:
rprocd-sim then exits 0 only if the daemon was alive and exited 0, which
every test asserts. The daemon's log is printed when a test fails.

Shared by tests/integration/test_api*.py and test_rprocctl*.py; it has no
tests of its own. Skipped as a whole until rprocd-sim exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gi
import pytest

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "tests" / "firmware" / "build"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PRELOAD_VARS = ("LD_PRELOAD", "UMOCKDEV_DIR")

BUS_NAME = "org.rprocd1"
MANAGER_PATH = "/org/rprocd1"
MANAGER = "org.rprocd1.Manager"
PROCESSOR = "org.rprocd1.Processor"
PROPERTIES = "org.freedesktop.DBus.Properties"


def _sim_command() -> list[str] | None:
    exe = shutil.which("rprocd-sim") or str(Path(sys.executable).parent / "rprocd-sim")
    try:
        import rprocd.sim.cli  # noqa: F401 - the entry point's module
    except ImportError:
        return None
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "rprocd.sim.cli"]


SIM = _sim_command()
# Skipped only while the emulator's command line does not exist yet; a missing
# firmware build or a non-root run then fails loudly instead of hiding.
needs_sim = pytest.mark.skipif(SIM is None, reason="rprocd-sim (rprocd/sim/cli.py) is not there")


class SimBoard:
    """One emulated board with the daemon on it; use as a context manager."""

    def __init__(self, *boards: str, daemon: bool = True, options: tuple[str, ...] = (),
                 config: str | None = None, firmware: tuple[str, ...] = (),
                 polkit: bool = True) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rprocd-it-"))
        self.tmp.chmod(0o755)  # setpriv'd clients read files from here
        self.done = self.tmp / "done"
        self.env_file = self.tmp / "env"
        argv = [*SIM]
        for board in boards:
            argv += ["--board", board]
        if daemon:
            argv.append("--daemon")
        if not polkit:
            argv.append("--no-polkit")
        for option in options:
            argv += ["--option", option]
        if config is not None:
            (self.tmp / "rprocd.conf").write_text(config)
            argv += ["--config", str(self.tmp / "rprocd.conf")]
        # CMD waits for the test to finish; its exit 0 becomes rprocd-sim's status
        # unless the daemon died or did not exit 0 on SIGTERM (then 70).
        argv += ["--env-file", str(self.env_file), "--", "sh", "-c",
                 'while [ ! -e "$1" ]; do sleep 0.05; done', "sh", str(self.done)]
        self.argv = argv
        self.daemon = daemon
        self.firmware = firmware
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.output = ""

    # lifecycle

    def __enter__(self) -> SimBoard:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while not self._env_ready():
            if self.process.poll() is not None:
                self.output = self.process.stdout.read()
                raise RuntimeError(f"rprocd-sim exited {self.process.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"rprocd-sim not up after 90 s:\n{self.output}")
            time.sleep(0.05)
        for line in self.env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                self.env[key] = value
        for name in self.firmware:
            self.install(name)
        if self.daemon:
            self._wait_for_name()
        return self

    def _env_ready(self) -> bool:
        return self.env_file.exists() and self.env_file.read_text().endswith("\n")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        log = self.daemon_log()  # rprocd-sim removes it at teardown
        self.done.touch()
        assert self.process is not None
        try:
            self.output = self.process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            self._kill()
        status = self.process.returncode
        if exc_type is not None or status != 0:
            sys.stderr.write(f"--- rprocd-sim exited {status}; its output:\n{self.output}\n")
            sys.stderr.write(f"--- daemon log:\n{log}\n")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is None:
            assert status == 0, "the daemon died, or did not exit 0 on SIGTERM (status 70)"

    def _kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.output += self.process.communicate()[0] or ""

    def daemon_log(self) -> str:
        log = self.env.get("RPROCD_SIM_LOG")
        try:
            return Path(log).read_text() if log else "(no log file)"
        except OSError as err:
            return f"(cannot read {log}: {err})"

    def _wait_for_name(self) -> None:
        conn = self.connect()
        try:
            deadline = time.monotonic() + 30
            while True:
                (owned,) = conn.call_sync(
                    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "NameHasOwner", GLib.Variant("(s)", (BUS_NAME,)), None,
                    Gio.DBusCallFlags.NONE, -1, None).unpack()
                if owned:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"org.rprocd1 never appeared:\n{self.daemon_log()}")
                time.sleep(0.05)
        finally:
            conn.close_sync(None)

    # the board

    def install(self, name: str, source: str | None = None) -> Path:
        """Copy a test image into the emulated kernel's firmware directory."""
        target = Path(self.env["RPROCD_SIM_FIRMWARE_DIR"]) / name
        shutil.copyfile(FIRMWARE / (source or name), target)
        return target

    def control(self, relpath: str, value: str) -> None:
        """Write an emulator control file ($RPROCD_SIM_CONTROL/remoteproc0/hang ...)."""
        fd = os.open(Path(self.env["RPROCD_SIM_CONTROL"]) / relpath, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    # clients

    @property
    def client_env(self) -> dict[str, str]:
        """The bus, without the umockdev preload: clients only talk D-Bus."""
        env = {**os.environ, **self.env}
        for name in PRELOAD_VARS:
            env.pop(name, None)
        return env

    def connect(self) -> Gio.DBusConnection:
        return Gio.DBusConnection.new_for_address_sync(
            self.env["DBUS_SYSTEM_BUS_ADDRESS"],
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)

    def pydbus(self) -> Any:
        import pydbus

        return pydbus.connect(self.env["DBUS_SYSTEM_BUS_ADDRESS"])

    def rprocctl(self, *args: str, user: str = "root", cwd: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = NOBODY if user == "nobody" else []
        return subprocess.run([*prefix, sys.executable, "-m", "rprocd.ctl", *args],
                              env=self.client_env, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def busctl(self, *args: str, user: str = "root") -> subprocess.CompletedProcess:
        prefix = NOBODY if user == "nobody" else []
        return subprocess.run(
            [*prefix, "busctl", f"--address={self.env['DBUS_SYSTEM_BUS_ADDRESS']}", *args],
            env=self.client_env, capture_output=True, text=True, timeout=60)

    def polkit_allow(self, *actions: str) -> None:
        """The polkit stand-in (python-dbusmock polkitd) grants these actions."""
        conn = self.connect()
        try:
            conn.call_sync("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                           "org.freedesktop.DBus.Mock", "SetAllowed",
                           GLib.Variant("(as)", (list(actions),)), None,
                           Gio.DBusCallFlags.NONE, -1, None)
        finally:
            conn.close_sync(None)


@contextmanager
def board(*boards: str, **kwargs: Any) -> Iterator[SimBoard]:
    with SimBoard(*boards, **kwargs) as sim:
        yield sim


def wait_until(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def dbus_error(err: GLib.Error) -> tuple[str, str]:
    """(error name, message without the GDBus prefix)."""
    name = Gio.DBusError.get_remote_error(err) or ""
    return name, err.message.removeprefix(f"GDBus.Error:{name}: ")
