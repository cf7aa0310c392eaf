"""Issue 6, faults: each injected while the real daemon serves, driven through
D-Bus as root and as nobody (setpriv --reuid=65534, granted by the polkit
stand-in), as an application would.

For every fault the test checks what a user would: the affected call gets a
named error with a one-line message (or succeeds late, for a slow polkit);
while the fault is pending the daemon keeps serving (property reads, GetAll,
another core's operations); afterwards it still serves, and every core's
reported State (and Firmware) equals the kernel's /sys files.

Faults: a core unplugged during Start, a kernel write that hangs, a client
that disconnects before its reply, polkit that hangs (SimulateHang) or
answers slowly (SetDelay), kill -9 of the daemon in the middle of a firmware
switch (the next daemon finds a consistent board), a full coredump disk, a
read-only firmware import directory.

Polkit's own 60 s timeout is not waited for here: the hung check is released
(ReleaseHangingCalls) after the other callers were served; the timeout itself
(AccessDenied "no answer from polkit ... within N s") is covered with a short
injected timeout in tests/unit/test_bus_auth.py.

The callers under test are subprocesses (`Client`): as nobody they must be,
and a subprocess is what a test can kill before its reply arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gi.repository import Gio, GLib

try:
    from test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        NOBODY,
        PROCESSOR,
        SimBoard,
        board,
        needs_sim,
        wait_until,
    )
    from test_crash_supervision import Signals as CrashSignals
    from test_crash_supervision import inject, wait_kernel_state
    from test_sim_tools import ERROR, M0, M4, M33, MP1, MP2, T, error_of, own_daemons, sh
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        NOBODY,
        PROCESSOR,
        SimBoard,
        board,
        needs_sim,
        wait_until,
    )
    from tests.integration.test_crash_supervision import Signals as CrashSignals
    from tests.integration.test_crash_supervision import inject, wait_kernel_state
    from tests.integration.test_sim_tools import (
        ERROR,
        M0,
        M4,
        M33,
        MP1,
        MP2,
        T,
        error_of,
        own_daemons,
        sh,
    )

pytestmark = needs_sim

MANAGE = "org.rprocd1.manage"
IMPORT = "org.rprocd1.import-firmware"
POLKIT = ("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
          "org.freedesktop.DBus.Mock")
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
USERS = ("root", "nobody")

# One D-Bus call in a process of its own: prints {"unique": ...} once connected,
# then {"ok": [...]} or {"error": name, "message": ...}. With a 5th argument the
# file of that name is opened and passed as the call's fd (ImportFirmware).
CLIENT = r"""
import json, os, sys
from gi.repository import Gio, GLib
address, path, iface, method, sig, args, timeout, *fdfile = sys.argv[1:]
conn = Gio.DBusConnection.new_for_address_sync(
    address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
print(json.dumps({"unique": conn.get_unique_name()}), flush=True)
params = GLib.Variant(sig, tuple(json.loads(args))) if sig != "()" else None
fds = None
if fdfile:
    fds = Gio.UnixFDList.new()
    fd = os.open(fdfile[0], os.O_RDONLY)
    fds.append(fd)
    os.close(fd)
try:
    result, _ = conn.call_with_unix_fd_list_sync(
        "org.rprocd1", path, iface, method, params, None, Gio.DBusCallFlags.NONE,
        int(float(timeout) * 1000), fds, None)
    print(json.dumps({"ok": list(result.unpack()) if result is not None else []}), flush=True)
except GLib.Error as err:
    name = Gio.DBusError.get_remote_error(err) or ""
    message = err.message.removeprefix(f"GDBus.Error:{name}: ") if name else err.message
    print(json.dumps({"error": name, "message": message, "domain": err.domain}), flush=True)
"""


class Client:
    """One method call made by a separate process, as root or as nobody."""

    def __init__(self, sim: SimBoard, user: str, path: str, method: str, sig: str = "()",
                 args: tuple = (), iface: str = PROCESSOR, timeout: float = T,
                 fd_file: Path | None = None) -> None:
        prefix = NOBODY if user == "nobody" else []
        argv = [*prefix, sys.executable, "-c", CLIENT, sim.env["DBUS_SYSTEM_BUS_ADDRESS"], path,
                iface, method, sig, json.dumps(list(args)), str(timeout)]
        if fd_file is not None:
            argv.append(str(fd_file))
        self.what = f"{user}: {method}{args}"
        self.process = subprocess.Popen(argv, env=sim.client_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # connected: the call goes out next
        assert line.startswith('{"unique"'), f"{self.what}: {line}{self.process.stderr.read()}"

    @property
    def pending(self) -> bool:
        return self.process.poll() is None

    def result(self, timeout: float = T + 10) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=timeout)
        assert out.strip(), f"{self.what}: no answer printed; stderr: {err}"
        answer = json.loads(out.strip().splitlines()[-1])
        if "message" in answer:
            message = answer["message"]
            assert "\n" not in message and "Traceback" not in message, message
        return answer

    def error(self) -> tuple[str, str]:
        answer = self.result()
        assert "error" in answer, f"{self.what} succeeded; it must fail: {answer}"
        return answer["error"], answer["message"]

    def ok(self) -> list:
        answer = self.result()
        assert "ok" in answer, f"{self.what} failed: {answer}"
        return answer["ok"]

    def kill(self) -> None:
        """The application dies before the daemon answered."""
        self.process.kill()
        self.process.communicate()


def polkit(sim: SimBoard, method: str, sig: str = "()", *args: Any) -> None:
    """A call to the polkit stand-in's mock interface (dbusmock polkitd template)."""
    conn = sim.connect()
    try:
        conn.call_sync(*POLKIT, method, GLib.Variant(sig, args) if args else None, None,
                       Gio.DBusCallFlags.NONE, T * 1000, None)
    finally:
        conn.close_sync(None)


def grant(sim: SimBoard, user: str, *actions: str) -> None:
    """What nobody needs from polkit for the calls under test (root needs nothing)."""
    if user == "nobody":
        sim.polkit_allow(*actions)


def read_as_nobody(sim: SimBoard, path: str, prop: str = "State") -> str:
    """A property read by an unprivileged busctl: served whatever else is pending."""
    out = sim.busctl("get-property", BUS_NAME, path, PROCESSOR, prop, user="nobody")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def get_all(sim: SimBoard, path: str) -> dict[str, Any]:
    return sim.pydbus().get(BUS_NAME, path)["org.freedesktop.DBus.Properties"].GetAll(
        PROCESSOR, timeout=T)


def kernel(sim: SimBoard, device: str, attr: str) -> str:
    out = sh(sim, f"cat /sys/class/remoteproc/{device}/{attr}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def mismatches(sim: SimBoard) -> list[str]:
    """Where the daemon's report differs from the kernel (empty: consistent)."""
    found = []
    processors = sim.pydbus().get(BUS_NAME, MANAGER_PATH).Processors
    devices = sh(sim, "ls /sys/class/remoteproc").stdout.split()
    if len(processors) != len(devices):
        found.append(f"objects {processors} for kernel devices {devices}")
    for path in processors:
        props = get_all(sim, path)
        for prop, attr in (("State", "state"), ("Firmware", "firmware")):
            if props[prop] != kernel(sim, props["Device"], attr):
                found.append(f"{path}: {prop} {props[prop]!r}, the kernel's {attr} "
                             f"{kernel(sim, props['Device'], attr)!r}")
        if props["Operation"]:
            found.append(f"{path}: Operation still {props['Operation']!r}")
    return found


def assert_consistent(sim: SimBoard, timeout: float = 15) -> None:
    """Every core's reported State and Firmware equal the kernel's, no operation
    left over, and the daemon answers a full read and rprocctl (the state is
    polled, so the report may take a poll interval to catch up)."""
    deadline = time.monotonic() + timeout
    while found := mismatches(sim):
        if time.monotonic() > deadline:
            raise AssertionError("the daemon's report differs from the kernel: "
                                 + "; ".join(found))
        time.sleep(0.1)
    out = sim.rprocctl("status", user="nobody")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in sim.daemon_log()


def wait_op(sim: SimBoard, path: str, operation: str) -> None:
    wait_until(lambda: get_all(sim, path)["Operation"] == operation, timeout=T,
               what=f"{path}: Operation {operation!r}")


@contextlib.contextmanager
def released(sim: SimBoard, *devices: str) -> Iterator[None]:
    """Never leave a kernel write hung for the teardown."""
    try:
        yield
    finally:
        for device in devices:
            with contextlib.suppress(OSError):
                sim.control(f"{device}/hang", "0")


def in_write(pid: int, attr_path: str) -> bool:
    """Whether a thread of `pid` is blocked inside write(2) on a file whose path
    ends with `attr_path` (/proc: the syscall and its fd)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for tid in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if not fields or fields[0] != "1":  # SYS_write on x86_64
                continue
            target = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
        except (OSError, ValueError, IndexError):
            continue
        if target.endswith(attr_path):
            return True
    return False


# -- a core unplugged during Start -------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_core_unplugged_during_start(user):
    """m33's start write hangs in the kernel; its driver is unbound meanwhile
    (the unbind waits for the core's lock, as rproc_del does), then the write
    returns. The Start caller gets an answer: success or NoSuchProcessor
    naming the unbind, never silence; the m0 is served throughout; m33's
    object goes and comes back with the driver, matching the kernel."""
    with board(MP2, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        grant(sim, user, MANAGE)
        m33 = sim.pydbus().get(BUS_NAME, M33)
        m0 = sim.pydbus().get(BUS_NAME, M0)
        device = m33.Device
        with released(sim, device):
            sim.control(f"{device}/hang", "start")
            call = Client(sim, user, M33, "Start", "(s)", ("m33-good.elf",))
            wait_until(lambda: in_write(int(sim.env["RPROCD_PID"]), f"{device}/state"),
                       timeout=T, what="the daemon blocked in m33's start write")
            unplug = threading.Thread(target=sim.control, args=("unplug", "m33"))
            unplug.start()
            # pending: the other core, reads as root and as nobody are served
            m0.Start("m0-good.elf", timeout=T)
            assert read_as_nobody(sim, M0) == 's "running"'
            assert get_all(sim, M33)["Operation"] == "starting" and call.pending
            sim.control(f"{device}/hang", "0")
            unplug.join(T)
            assert not unplug.is_alive(), "the unbind never finished"
        answer = call.result()
        if "error" in answer:
            assert answer["error"] == ERROR + "NoSuchProcessor", answer
            assert answer["message"].startswith("m33: the core disappeared"), answer
        wait_until(lambda: sim.pydbus().get(BUS_NAME, MANAGER_PATH).Processors == [M0],
                   what="m33's object removed")
        name, message = error_of(sim.pydbus().get(BUS_NAME, MANAGER_PATH).GetProcessor, "m33",
                                 timeout=T)
        assert name == ERROR + "NoSuchProcessor" and "m33" in message, message
        assert_consistent(sim)

        sim.control("plug", "m33")
        wait_until(lambda: M33 in sim.pydbus().get(BUS_NAME, MANAGER_PATH).Processors,
                   what="m33 back")
        assert_consistent(sim)
        Client(sim, user, M33, "Start", "(s)", ("m33-good.elf",)).ok()
        assert get_all(sim, M33)["State"] == "running"
        assert_consistent(sim)


# -- a kernel write that hangs -------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_hung_sysfs_write(user):
    """hang=1 blocks m33's stop in the kernel: the caller gets Timeout after
    ShutdownTimeoutSec + 1 s, later calls Busy (both with their reason), while
    the m0 starts and every property read is answered. Once the write
    returns, m33's state is read again and it takes calls."""
    config = "[Processor m33]\nShutdownTimeoutSec=1s\n"
    with board(MP2, config=config, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        grant(sim, user, MANAGE)
        m33 = sim.pydbus().get(BUS_NAME, M33)
        m0 = sim.pydbus().get(BUS_NAME, M0)
        m33.Start("m33-good.elf", timeout=T)
        device = m33.Device
        with released(sim, device):
            sim.control(f"{device}/hang", "1")
            call = Client(sim, user, M33, "Stop")
            wait_op(sim, M33, "stopping")
            assert read_as_nobody(sim, M33, "Operation") == 's "stopping"'
            m0.Start("m0-good.elf", timeout=T)
            assert get_all(sim, M0)["State"] == "running"
            name, message = call.error()
            assert name == ERROR + "Timeout", message
            assert message.startswith("m33: stop did not finish in time"), message
            name, message = Client(sim, user, M33, "Start", "(s)", ("m33-good.elf",)).error()
            assert name == ERROR + "Busy" and "stopping" in message, message
            assert kernel(sim, device, "state") == "running"  # the kernel has not moved
            sim.control(f"{device}/hang", "0")
            wait_op(sim, M33, "")
        assert_consistent(sim)
        assert get_all(sim, M33)["State"] == "offline"
        Client(sim, user, M33, "Start", "(s)", ("m33-good.elf",)).ok()
        assert_consistent(sim)


# -- a client that disconnects before its reply ------------------------------------


@pytest.mark.parametrize(("user", "how"), [("root", "noack-stop"), ("nobody", "noack-stop"),
                                           ("root", "hung-start"), ("nobody", "hung-start")])
def test_a_client_that_disconnects_before_its_reply(user, how):
    """The caller is killed while its call runs: a Stop that waits out the
    kernel's 500 ms shutdown timeout (the firmware never acknowledges), or a
    Start hung in the kernel. The operation completes anyway, its reply goes
    nowhere, and the daemon serves the next caller with a board that matches
    the kernel."""
    with board(MP1, firmware=("m4-good.elf", "m4-noack.elf")) as sim:
        grant(sim, user, MANAGE)
        m4 = sim.pydbus().get(BUS_NAME, M4)
        device = m4.Device
        with released(sim, device):
            if how == "noack-stop":
                m4.Start("m4-noack.elf", timeout=T)
                call = Client(sim, user, M4, "Stop")
                wait_op(sim, M4, "stopping")
                call.kill()
                expected = "offline"
            else:
                sim.control(f"{device}/hang", "start")
                call = Client(sim, user, M4, "Start", "(s)", ("m4-good.elf",))
                wait_op(sim, M4, "starting")
                call.kill()
                assert read_as_nobody(sim, M4, "Operation") == 's "starting"'
                sim.control(f"{device}/hang", "0")
                expected = "running"
            wait_op(sim, M4, "")
        props = get_all(sim, M4)
        assert (props["State"], props["Failed"], props["LastError"]) == (expected, False, ""), \
            props
        assert_consistent(sim)
        # the next caller is served as usual
        if expected == "running":
            Client(sim, user, M4, "Stop").ok()
        else:
            Client(sim, user, M4, "Start", "(s)", ("m4-good.elf",)).ok()
        assert_consistent(sim)


# -- polkit that hangs or answers slowly ----------------------------------------------


def test_polkit_that_hangs_blocks_only_the_caller_it_checks():
    """SimulateHang: nobody's Start waits for polkit. Meanwhile root operates
    the other core, nobody and root read everything, and nothing happens to
    the core the pending call is about. Released ungranted, the call ends in
    AccessDenied naming the action; granted, the next such call runs once
    polkit answers. A nobody caller killed during the hang leaves nothing
    behind either."""
    with board(MP2, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        m0 = sim.pydbus().get(BUS_NAME, M0)
        try:
            polkit(sim, "SimulateHang", "(b)", True)
            call = Client(sim, "nobody", M33, "Start", "(s)", ("m33-good.elf",))
            m0.Start("m0-good.elf", timeout=T)  # root needs no polkit
            assert read_as_nobody(sim, M0) == 's "running"'
            assert get_all(sim, M33)["State"] == "offline"
            out = sim.rprocctl("status", user="nobody")
            assert out.returncode == 0, out.stderr
            assert call.pending
            assert get_all(sim, M33)["Operation"] == ""  # nothing done before the verdict
            polkit(sim, "ReleaseHangingCalls")
            name, message = call.error()
            assert name == ACCESS_DENIED and MANAGE in message, message
            assert get_all(sim, M33)["State"] == "offline"

            # granted this time; one caller gives up while polkit hangs
            sim.polkit_allow(MANAGE)
            quitter = Client(sim, "nobody", M0, "Stop")
            call = Client(sim, "nobody", M33, "Start", "(s)", ("m33-good.elf",))
            quitter.kill()
            assert read_as_nobody(sim, M33) == 's "offline"' and call.pending
            polkit(sim, "ReleaseHangingCalls")
            assert call.ok() == []
            assert get_all(sim, M33)["State"] == "running"
        finally:
            polkit(sim, "SimulateHang", "(b)", False)
            polkit(sim, "ReleaseHangingCalls")
        assert_consistent(sim)
        Client(sim, "nobody", M33, "Stop").ok()  # polkit answers promptly again
        assert_consistent(sim)


def test_polkit_that_answers_slowly_delays_only_that_call():
    """SetDelay: polkit takes 5 s per check. nobody's Start succeeds once it
    answers; while it waits, root starts the other core and reads are served."""
    with board(MP2, firmware=("m33-good.elf", "m0-good.elf")) as sim:
        sim.polkit_allow(MANAGE)
        polkit(sim, "SetDelay", "(d)", 5.0)
        try:
            call = Client(sim, "nobody", M33, "Start", "(s)", ("m33-good.elf",))
            time.sleep(0.3)  # the check reaches polkit
            assert get_all(sim, M0)["State"] == "offline"
            sim.pydbus().get(BUS_NAME, M0).Start("m0-good.elf", timeout=T)
            assert call.pending, "polkit's answer came before the other callers were served"
            assert call.ok() == []
        finally:
            polkit(sim, "SetDelay", "(d)", 0.0)
        assert get_all(sim, M33)["State"] == "running"
        assert_consistent(sim)


# -- kill -9 of the daemon during a firmware switch -----------------------------------


@pytest.mark.parametrize(("user", "blocked"), [("root", "stop"), ("nobody", "start")])
def test_kill_9_during_a_switch_leaves_a_consistent_board(user, blocked):
    """Restart('m4-quiet.elf') on m4 running m4-good.elf, and the daemon is
    SIGKILLed while the switch's stop (or, the stop done, its start) is inside
    the kernel. The caller hears that the daemon went away, not silence. The
    kernel finishes that write; the next daemon (as systemd's Restart= would
    start it) reports exactly what the kernel has: m4 offline with the old
    firmware, or running the new one; never a torn mix, nothing Failed, and
    its state directory holds nothing half-written."""
    old, new = "m4-good.elf", "m4-quiet.elf"
    expected = {"stop": ("offline", old), "start": ("running", new)}[blocked]
    with board(MP1, daemon=False, firmware=(old, new)) as sim, own_daemons(sim) as daemon:
        first = daemon("rprocd-1").start()
        grant(sim, user, MANAGE)
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start(old, timeout=T)
        device = m4.Device
        with released(sim, device):
            sim.control(f"{device}/hang", blocked)
            call = Client(sim, user, M4, "Restart", "(s)", (new,))
            # the firmware name is written between the switch's stop and its start
            firmware = {"stop": old, "start": new}[blocked]
            wait_until(lambda: in_write(first.pid, f"{device}/state")
                       and kernel(sim, device, "firmware") == firmware, timeout=T,
                       what=f"the daemon blocked in the {blocked} write")
            assert get_all(sim, M4)["Operation"] == "switching"
            first.kill(signal.SIGKILL)
            # Killed inside the kernel write, it dies once the write returns
            # (the emulated write, like a driver's, is not interruptible).
            sim.control(f"{device}/hang", "0")
            assert first.wait() == -signal.SIGKILL
            name, message = call.error()
            assert name == "org.freedesktop.DBus.Error.NoReply", (name, message)
        assert (kernel(sim, device, "state"), kernel(sim, device, "firmware")) == expected

        second = daemon("rprocd-2").start()
        props = get_all(sim, M4)
        assert (props["State"], props["Firmware"]) == expected, props
        assert (props["Operation"], props["Failed"]) == ("", False), props
        assert_consistent(sim)
        state_dir = Path(sim.env["STATE_DIRECTORY"])
        leftovers = [p.name for p in state_dir.rglob("*") if p.name.startswith(".")
                     or p.suffix == ".tmp"]
        assert leftovers == [], leftovers
        assert (state_dir / "boot-id").read_text().strip()
        # the core is usable: back to the old image
        if expected[0] == "running":
            Client(sim, user, M4, "Restart", "(s)", (old,)).ok()
        else:
            Client(sim, user, M4, "Start", "(s)", (old,)).ok()
        assert (get_all(sim, M4)["State"], get_all(sim, M4)["Firmware"]) == ("running", old)
        assert_consistent(sim)
        assert second.terminate() == 0


# -- a full coredump disk -------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(size: str, *options: str) -> Iterator[Path]:
    """A small tmpfs of our own (the test runs as root), unmounted at the end."""
    where = Path(tempfile.mkdtemp(prefix="rprocd-faults-"))
    where.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)),
                    "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)]).returncode != 0:
            subprocess.run(["umount", "-l", str(where)])
        shutil.rmtree(where, ignore_errors=True)


def test_a_full_coredump_disk_loses_the_dump_not_the_crash():
    """CoredumpDirectory= on a 64 KiB tmpfs, m4's dump is ~330 KiB: the dump is
    not saved and no partial file is left, the log says why (where, ENOSPC),
    the crash is still announced (Crashed without a dump, CrashCount) and the
    kernel's recovery runs; a second crash is handled the same way."""
    with tmpfs("64k") as full:
        config = (f"[Manager]\nCoredumpDirectory={full}\n"
                  "[Processor m4]\nCoredump=enabled\n")
        with board(MP1, MP2, config=config, firmware=("m4-good.elf", "m33-good.elf")) as sim:
            crashes = CrashSignals(sim)
            try:
                m4 = sim.pydbus().get(BUS_NAME, M4)
                m4.Start("m4-good.elf", timeout=T)
                device = m4.Device
                for number in (1, 2):
                    inject(sim, device)
                    crash = crashes.wait(M4, number)[-1]
                    assert crash.coredump == "", crash
                    props = get_all(sim, M4)
                    assert (props["CrashCount"], props["LastCoredump"]) == (number, ""), props
                    wait_kernel_state(sim, device, "running")
                    assert read_as_nobody(sim, M33) == 's "offline"'
                    assert_consistent(sim)
                assert sorted(os.listdir(full)) == [], "a partial dump was left behind"
                log = sim.daemon_log()
                assert f"coredump not saved in {full}: No space left on device" in log, log
                assert "the disk is full" in log
                assert sh(sim, "ls /sys/class/devcoredump").stdout.split() == ["disabled"]
                sim.pydbus().get(BUS_NAME, M33).Start("m33-good.elf", timeout=T)
                m4.Stop(timeout=T)
                assert_consistent(sim)
            finally:
                crashes.close()


# -- a read-only firmware import directory ---------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_read_only_import_directory(user):
    """The import directory is remounted read-only after one image was
    imported and started: ImportFirmware fails with an error naming the
    directory and the cause; the image imported before is intact and still
    starts, nothing half-written appears; writable again, imports work."""
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        grant(sim, user, MANAGE, IMPORT)
        (name,) = Client(sim, user, MANAGER_PATH, "ImportFirmware", "(hs)", (0, "app.elf"),
                         iface=MANAGER, fd_file=FIRMWARE / "m4-good.elf").ok()
        imports = Path(sim.env["RPROCD_FIRMWARE_ROOT"]) / "rprocd"
        assert (imports / "app.elf").read_bytes() == (FIRMWARE / "m4-good.elf").read_bytes()
        Client(sim, user, M4, "Start", "(s)", (name,)).ok()
        before = sorted(os.listdir(imports))
        subprocess.run(["mount", "--bind", str(imports), str(imports)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(imports)], check=True)
            call = Client(sim, user, MANAGER_PATH, "ImportFirmware", "(hs)", (0, "new.elf"),
                          iface=MANAGER, fd_file=FIRMWARE / "m4-quiet.elf")
            error, message = call.error()
            assert error == ERROR + "Failed", (error, message)
            assert str(imports) in message and "read-only" in message, message
            assert "ImportDirectory=" in message, message
            assert sorted(os.listdir(imports)) == before
            Client(sim, user, M4, "Restart", "(s)", (name,)).ok()  # the old import still runs
        finally:
            subprocess.run(["umount", str(imports)], check=True)
        assert sorted(os.listdir(imports)) == before
        assert (imports / "app.elf").read_bytes() == (FIRMWARE / "m4-good.elf").read_bytes()
        (again,) = Client(sim, user, MANAGER_PATH, "ImportFirmware", "(hs)", (0, "new.elf"),
                          iface=MANAGER, fd_file=FIRMWARE / "m4-quiet.elf").ok()
        Client(sim, user, M4, "Restart", "(s)", (again,)).ok()
        assert get_all(sim, M4)["Firmware"] == again
        assert_consistent(sim)
