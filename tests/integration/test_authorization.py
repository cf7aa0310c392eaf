"""Issue 6, authorization: every method of the D-Bus API, read from dbus/*.xml,
called by an unprivileged client (uid 65534 through setpriv) and by root.

- A reading method answers the unprivileged caller and changes nothing.
- A mutating method (the XML names its polkit action) is refused with
  org.freedesktop.DBus.Error.AccessDenied naming the action, and neither the
  kernel (/sys under the emulator) nor the daemon's properties, the import
  directory or the configuration in force change; the same caller with the
  polkit stand-in granting that action gets it done; root gets it done
  without any grant.
- Properties.Set on every property (all read-only in API v1) is refused,
  with or without grants.
- A polkit that does not answer does not stall the daemon.

The method list comes from the XML: a method added there without an entry in
CASES or READING here fails `test_every_xml_method_has_a_case`, and one the
daemon's authorization table does not know is refused to everyone, which the
matrix reports.

Also the client helper `call_as` used by test_hostile_input.py: a Gio client
in a subprocess, as root or as nobody, that reports the D-Bus error *name*
(busctl prints every AccessDenied as "Access denied").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
        PROPERTIES,
        REPO,
        SimBoard,
        needs_sim,
        wait_until,
    )
    from test_sim_tools import M4, MP1, T, sh, sim_board, sys_read, virtio_devices
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        NOBODY,
        PROCESSOR,
        PROPERTIES,
        REPO,
        SimBoard,
        needs_sim,
        wait_until,
    )
    from tests.integration.test_sim_tools import (
        M4,
        MP1,
        T,
        sh,
        sim_board,
        sys_read,
        virtio_devices,
    )

pytestmark = needs_sim

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
POLKIT_ACTION = "org.rprocd1.PolkitAction"
MANAGE = "org.rprocd1.manage"
IMPORT = "org.rprocd1.import-firmware"
CONFIGURE = "org.rprocd1.configure"
ALL_ACTIONS = (MANAGE, IMPORT, CONFIGURE)
GOOD = "m4-good.elf"
OTHER = "m4-quiet.elf"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"

# -- the client --------------------------------------------------------------------

# Runs the calls of argv[1] (JSON) in order on one connection and prints one JSON
# result per call. Arguments come as GVariant text, so any string survives.
CLIENT = r"""
import json, os, sys
import gi
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib
conn = Gio.DBusConnection.new_for_address_sync(
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
results = []
for call in json.loads(sys.argv[1]):
    params = None
    if call["signature"]:
        params = GLib.Variant.parse(GLib.VariantType(call["signature"]), call["params"])
    fds = None
    if call["fd"] is not None:
        fds = Gio.UnixFDList.new()
        fds.append(call["fd"])
    try:
        reply, _ = conn.call_with_unix_fd_list_sync(
            "org.rprocd1", call["path"], call["interface"], call["method"], params, None,
            Gio.DBusCallFlags.NONE, call["timeout_ms"], fds, None)
        results.append({"ok": True, "value": reply.print_(True) if reply else "()"})
    except GLib.Error as err:
        name = Gio.DBusError.get_remote_error(err) or ""
        message = err.message.removeprefix(f"GDBus.Error:{name}: ")
        results.append({"ok": False, "error": name, "message": message})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Call:
    """One method call for the client; `fd` is a descriptor of the test process
    passed down to the client and sent as the call's only fd (handle 0)."""

    path: str
    interface: str
    method: str
    signature: str = ""
    args: tuple = ()
    fd: int | None = None
    timeout: float = T

    def request(self) -> dict[str, Any]:
        text = GLib.Variant(self.signature, self.args).print_(True) if self.signature else ""
        return {"path": self.path, "interface": self.interface, "method": self.method,
                "signature": self.signature, "params": text, "fd": self.fd,
                "timeout_ms": int(self.timeout * 1000)}

    def __str__(self) -> str:
        return f"{self.interface}.{self.method}{tuple(str(a)[:40] for a in self.args)}"


@dataclass
class Result:
    ok: bool
    value: str = ""
    error: str = ""
    message: str = ""


def _client_argv(user: str, calls: list[Call]) -> list[str]:
    prefix = NOBODY if user == "nobody" else []
    return [*prefix, sys.executable, "-c", CLIENT, json.dumps([c.request() for c in calls])]


def call_as(sim: SimBoard, user: str, *calls: Call) -> list[Result]:
    """The calls made in order by a client of its own running as `user`
    ("root" or "nobody": uid/gid 65534, no supplementary groups)."""
    fds = [c.fd for c in calls if c.fd is not None]
    out = subprocess.run(_client_argv(user, list(calls)), env=sim.client_env,
                         capture_output=True, text=True, pass_fds=fds,
                         timeout=sum(c.timeout for c in calls) + 30)
    assert out.returncode == 0, f"client as {user} failed:\n{out.stderr}"
    return [Result(**r) for r in json.loads(out.stdout)]


def call_one(sim: SimBoard, user: str, call: Call) -> Result:
    return call_as(sim, user, call)[0]


def start_call_as(sim: SimBoard, user: str, *calls: Call) -> subprocess.Popen:
    """The same client, not waited for: its calls are pending meanwhile."""
    fds = [c.fd for c in calls if c.fd is not None]
    return subprocess.Popen(_client_argv(user, list(calls)), env=sim.client_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=fds)


def finish_call(process: subprocess.Popen, timeout: float = 60) -> list[Result]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"client failed:\n{stderr}"
    return [Result(**r) for r in json.loads(stdout)]


def polkit_mock(sim: SimBoard, method: str, signature: str = "", *args: Any) -> None:
    """A call on the polkit stand-in's control interface (python-dbusmock)."""
    conn = sim.connect()
    try:
        conn.call_sync("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                       "org.freedesktop.DBus.Mock", method,
                       GLib.Variant(signature, args) if signature else None, None,
                       Gio.DBusCallFlags.NONE, -1, None)
    finally:
        conn.close_sync(None)


# -- what a user can check ---------------------------------------------------------

def get_all(sim: SimBoard, path: str, interface: str) -> dict[str, Any]:
    conn = sim.connect()
    try:
        (values,) = conn.call_sync(BUS_NAME, path, PROPERTIES, "GetAll",
                                   GLib.Variant("(s)", (interface,)), None,
                                   Gio.DBusCallFlags.NONE, T * 1000, None).unpack()
        return values
    finally:
        conn.close_sync(None)


def import_dir(sim: SimBoard) -> Path:
    """ImportDirectory= by default: <firmware root>/rprocd."""
    return Path(sim.env["RPROCD_FIRMWARE_ROOT"]) / "rprocd"


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def snapshot(sim: SimBoard) -> dict[str, Any]:
    """Everything a mutation could change: the kernel's side (sysfs of the
    emulated kernel, the virtio devices, which change at every boot of the
    core), the daemon's properties, the import directory."""
    device = "remoteproc0"
    return {
        "kernel.state": sys_read(sim, f"/sys/class/remoteproc/{device}/state"),
        "kernel.firmware": sys_read(sim, f"/sys/class/remoteproc/{device}/firmware"),
        "kernel.recovery": sys_read(sim, f"/sys/kernel/debug/remoteproc/{device}/recovery"),
        "kernel.virtio": virtio_devices(sim),
        "manager": get_all(sim, MANAGER_PATH, MANAGER),
        "m4": get_all(sim, M4, PROCESSOR),
        "imports": listing(import_dir(sim)),
    }


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    flat_b = _flatten(before)
    flat_a = _flatten(after)
    return {k: (flat_b.get(k), flat_a.get(k)) for k in flat_b.keys() | flat_a.keys()
            if flat_b.get(k) != flat_a.get(k)}


def _flatten(snap: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in snap.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# -- the XML -----------------------------------------------------------------------

def xml_interfaces() -> dict[str, ET.Element]:
    found = {}
    for xml in sorted((REPO / "dbus").glob("org.rprocd1.*.xml")):
        for iface in ET.parse(xml).getroot().iter("interface"):
            found[iface.get("name")] = iface
    return found


def xml_methods() -> dict[tuple[str, str], str | None]:
    """(interface, method) -> the polkit action its annotation names, or None."""
    methods = {}
    for name, iface in xml_interfaces().items():
        for method in iface.iter("method"):
            action = next((a.get("value") for a in method.iter("annotation")
                           if a.get("name") == POLKIT_ACTION), None)
            methods[(name, method.get("name"))] = action
    return methods


def xml_in_signature(interface: str, method: str) -> str:
    iface = xml_interfaces()[interface]
    node = next(m for m in iface.iter("method") if m.get("name") == method)
    return "".join(a.get("type") for a in node.iter("arg") if a.get("direction", "in") == "in")


def xml_properties() -> list[tuple[str, str, str, str]]:
    """(interface, name, type, access) of every property."""
    return [(name, p.get("name"), p.get("type"), p.get("access"))
            for name, iface in xml_interfaces().items() for p in iface.iter("property")]


# -- the cases ---------------------------------------------------------------------

class Core:
    """The m4 driven as root (pydbus) into the state a case needs."""

    def __init__(self, sim: SimBoard) -> None:
        self.sim = sim
        self.proxy = sim.pydbus().get(BUS_NAME, M4)
        self.reloads = 0

    @property
    def state(self) -> str:
        return self.proxy.State

    def attached(self) -> None:
        if self.state == "detached":
            self.proxy.Start("", timeout=T)
        assert self.state == "attached", "the attached core was stopped before the Detach case"

    def active(self) -> None:
        """running or attached."""
        if self.state == "crashed":
            self.proxy.Recover(timeout=T)
        elif self.state in ("offline", "detached"):
            self.proxy.Start(GOOD if self.state == "offline" else "", timeout=T)
        assert self.state in ("running", "attached"), self.state
        # The firmware announces its channel a moment after boot: wait, so that
        # a snapshot taken now does not change by itself.
        wait_until(lambda: self.proxy.RpmsgChannels == ["rpmsg-tty"], what="m4's rpmsg channel")

    def offline(self) -> None:
        if self.state != "offline":
            self.active()
            self.proxy.Stop(timeout=T)
        assert self.state == "offline"

    def crashed(self) -> None:
        """Crashed and Failed (Restart=no, the kernel's recovery disabled)."""
        if (self.state, self.proxy.Failed) != ("crashed", True):
            self.active()
            out = sh(self.sim, "echo 2 > /sys/kernel/debug/remoteproc/remoteproc0/crash")
            assert out.returncode == 0, out.stderr
            wait_until(lambda: (self.state, self.proxy.Failed) == ("crashed", True),
                       what="m4 crashed and Failed")

    def next_default(self) -> None:
        """A drop-in that Reload() would apply: DefaultFirmware would change."""
        self.reloads += 1
        dropins = Path(self.sim.env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf.d"
        dropins.mkdir(exist_ok=True)
        firmware = OTHER if self.proxy.DefaultFirmware != OTHER else GOOD
        (dropins / "50-auth.conf").write_text(f"[Processor m4]\nFirmware={firmware}\n")


@dataclass
class Case:
    """A mutating method: the state that makes its effect visible, its valid
    arguments, and the effect itself (before, after) once it is allowed."""

    prepare: Callable[[Core], None]
    args: Callable[[Core], tuple]
    effect: Callable[[dict, dict], bool]
    path: str = M4
    needs_fd: bool = False
    opened: list[int] = field(default_factory=list)


def _m4(snap: dict, name: str) -> Any:
    return snap["m4"][name]


# In the order they run: the attached core (early=attached) only lasts until
# the first Stop.
CASES: dict[tuple[str, str], Case] = {
    (PROCESSOR, "Detach"): Case(
        Core.attached, lambda c: (),
        lambda b, a: (_m4(a, "State"), a["kernel.state"]) == ("detached", "detached")),
    (PROCESSOR, "Stop"): Case(
        Core.active, lambda c: (),
        lambda b, a: (_m4(a, "State"), a["kernel.state"]) == ("offline", "offline")),
    (PROCESSOR, "Start"): Case(
        Core.offline, lambda c: (GOOD,),
        lambda b, a: (_m4(a, "State"), a["kernel.state"], a["kernel.firmware"])
        == ("running", "running", GOOD)),
    (PROCESSOR, "Restart"): Case(
        Core.active, lambda c: (OTHER,),
        lambda b, a: (_m4(a, "State"), a["kernel.firmware"]) == ("running", OTHER)
        and a["kernel.virtio"] != b["kernel.virtio"]),
    (PROCESSOR, "ResetFailed"): Case(
        Core.crashed, lambda c: (),
        lambda b, a: (_m4(b, "Failed"), _m4(a, "Failed"), _m4(a, "LastError"))
        == (True, False, "")),
    (PROCESSOR, "Recover"): Case(
        Core.crashed, lambda c: (),
        lambda b, a: (_m4(a, "State"), a["kernel.state"]) == ("running", "running")),
    (MANAGER, "ImportFirmware"): Case(
        lambda c: None, lambda c: (0, f"auth-{len(listing(import_dir(c.sim)))}.elf"),
        lambda b, a: len(a["imports"]) == len(b["imports"]) + 1, path=MANAGER_PATH,
        needs_fd=True),
    (MANAGER, "Reload"): Case(
        Core.next_default, lambda c: (),
        lambda b, a: _m4(a, "DefaultFirmware") != _m4(b, "DefaultFirmware"),
        path=MANAGER_PATH),
}

# Open to everyone: valid arguments (run while the m4 runs m4-good.elf).
READING: dict[tuple[str, str], tuple] = {
    (MANAGER, "GetProcessor"): ("m4",),
    (MANAGER, "InspectFirmware"): (GOOD,),
    (PROCESSOR, "ReadTrace"): ("",),
}
# Standard interfaces the daemon answers, also open (path, interface, method, args).
STANDARD = [
    (MANAGER_PATH, OBJECT_MANAGER, "GetManagedObjects", "", ()),
    (M4, PROPERTIES, "Get", "(ss)", (PROCESSOR, "State")),
    (M4, PROPERTIES, "GetAll", "(s)", (PROCESSOR,)),
    (MANAGER_PATH, PROPERTIES, "GetAll", "(s)", (MANAGER,)),
    (M4, INTROSPECTABLE, "Introspect", "", ()),
    (MANAGER_PATH, PEER, "Ping", "", ()),
]

DEFAULTS = {"s": "x", "b": True, "u": 7, "t": 7, "as": ["x"], "ao": ["/x"]}


def case_call(key: tuple[str, str], case: Case, core: Core) -> Call:
    interface, method = key
    signature = xml_in_signature(interface, method)
    args = case.args(core)
    fd = None
    if case.needs_fd:
        fd = os.open(FIRMWARE / GOOD, os.O_RDONLY)
        case.opened.append(fd)
    return Call(case.path, interface, method, f"({signature})" if signature else "", args, fd)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimBoard]:
    """One board for the whole matrix: an early-attached m4 (for Detach),
    Restart=no (a crash stays, for Recover and ResetFailed)."""
    with sim_board(MP1, sim_firmware=(GOOD,), firmware=(GOOD, OTHER),
                   options=("early=attached", f"firmware={GOOD}", "recovery=disabled"),
                   config="[Processor m4]\nRestart=no\nCoredump=disabled\n") as board:
        yield board


def test_every_xml_method_has_a_case():
    """A method added to the XML must be added here, with its polkit action."""
    methods = xml_methods()
    assert (MANAGER, "ImportFirmware") in methods and (PROCESSOR, "Start") in methods
    missing = set(methods) - set(CASES) - set(READING)
    assert not missing, f"XML methods without an authorization case in this test: {missing}"
    assert not (set(CASES) | set(READING)) - set(methods), "cases for methods not in the XML"
    for key in READING:
        assert methods[key] is None, f"{key} is documented as reading but names {methods[key]}"
    for key in CASES:
        assert methods[key] in ALL_ACTIONS, f"{key}: mutating, but the XML names {methods[key]}"


def test_reading_is_open_to_everyone_and_changes_nothing(sim):
    core = Core(sim)
    core.active()
    wait_until(lambda: core.proxy.TraceBuffers != [], what="m4's trace buffer")
    calls = [Call(M4 if i == PROCESSOR else MANAGER_PATH, i, m, f"({xml_in_signature(i, m)})",
                  args) for (i, m), args in READING.items()]
    calls += [Call(path, i, m, sig, args) for path, i, m, sig, args in STANDARD]
    before = snapshot(sim)
    results = call_as(sim, "nobody", *calls)
    wrong = [f"{c}: {r.error}: {r.message}"
             for c, r in zip(calls, results, strict=True) if not r.ok]
    assert not wrong, "\n".join(wrong)
    assert results[0].value == f"(objectpath '{M4}',)"
    assert "'valid': <true>" in results[1].value, results[1].value
    assert diff(before, snapshot(sim)) == {}


def test_mutating_methods_need_their_polkit_action(sim):
    """Each mutating method: refused to nobody without changing anything,
    done for nobody with the grant, done for root without one."""
    core = Core(sim)
    wrong = []
    try:
        for key, case in CASES.items():
            action = xml_methods()[key]
            polkit_mock(sim, "SetAllowed", "(as)", [])

            case.prepare(core)
            before = snapshot(sim)
            result = call_one(sim, "nobody", case_call(key, case, core))
            changed = diff(before, snapshot(sim))
            if result.ok or result.error != ACCESS_DENIED or action not in result.message:
                wrong.append(f"{key[1]} as nobody without {action}: {result}")
            if changed:
                wrong.append(f"{key[1]} refused to nobody changed {changed}")

            # Every other action granted: still refused (one action per method).
            polkit_mock(sim, "SetAllowed", "(as)", [a for a in ALL_ACTIONS if a != action])
            result = call_one(sim, "nobody", case_call(key, case, core))
            if result.error != ACCESS_DENIED or diff(before, snapshot(sim)):
                wrong.append(f"{key[1]} as nobody with only the other actions: {result}")

            polkit_mock(sim, "SetAllowed", "(as)", [action])
            result = call_one(sim, "nobody", case_call(key, case, core))
            after = snapshot(sim)
            if not result.ok:
                wrong.append(f"{key[1]} as nobody granted {action}: {result}")
            elif not case.effect(before, after):
                wrong.append(f"{key[1]} as nobody granted {action} did nothing: "
                             f"{diff(before, after)}")

            polkit_mock(sim, "SetAllowed", "(as)", [])
            case.prepare(core)
            before = snapshot(sim)
            result = call_one(sim, "root", case_call(key, case, core))
            after = snapshot(sim)
            if not result.ok:
                wrong.append(f"{key[1]} as root, no grant: {result}")
            elif not case.effect(before, after):
                wrong.append(f"{key[1]} as root did nothing: {diff(before, after)}")
    finally:
        for case in CASES.values():
            for fd in case.opened:
                os.close(fd)
            case.opened.clear()
        polkit_mock(sim, "SetAllowed", "(as)", [])
    assert not wrong, "\n".join(wrong)
    assert core.reloads == 2


def test_no_property_can_be_set(sim):
    """API v1 has no writable property; Set is refused to everyone, also with
    every action granted, and changes nothing."""
    props = xml_properties()
    assert props and {access for *_, access in props} == {"read"}, \
        "a writable property needs an authorization case of its own"
    calls = [Call(M4 if iface == PROCESSOR else MANAGER_PATH, PROPERTIES, "Set", "(ssv)",
                  (iface, name, GLib.Variant(sig, DEFAULTS[sig])))
             for iface, name, sig, _ in props]
    Core(sim).active()
    before = snapshot(sim)
    try:
        for user, grant in (("nobody", []), ("nobody", list(ALL_ACTIONS)), ("root", [])):
            polkit_mock(sim, "SetAllowed", "(as)", grant)
            results = call_as(sim, user, *calls)
            done = [str(c) for c, r in zip(calls, results, strict=True) if r.ok]
            assert not done, f"Set succeeded as {user} (grants {grant}): {done}"
            assert all(r.error.startswith("org.freedesktop.DBus.Error.") for r in results), \
                [r for r in results]
    finally:
        polkit_mock(sim, "SetAllowed", "(as)", [])
    assert diff(before, snapshot(sim)) == {}


def test_a_polkit_that_does_not_answer_stalls_nothing(sim):
    """The check is asynchronous: while polkit sits on a question, the daemon
    answers readers and root's operations; the question's late answer (not
    granted) refuses the call then, with nothing changed by it."""
    core = Core(sim)
    core.offline()
    polkit_mock(sim, "SetAllowed", "(as)", [])
    polkit_mock(sim, "SimulateHang", "(b)", True)
    pending = None
    try:
        pending = start_call_as(sim, "nobody", Call(M4, PROCESSOR, "Start", "(s)", (GOOD,)))
        conn = sim.connect()
        try:
            def hanging() -> bool:
                (have,) = conn.call_sync(
                    "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                    "org.freedesktop.DBus.Mock", "HaveHangingCalls", None, None,
                    Gio.DBusCallFlags.NONE, -1, None).unpack()
                return bool(have)

            wait_until(hanging, timeout=20, what="the daemon's polkit question")
        finally:
            conn.close_sync(None)
        # Meanwhile: reads as nobody, and root's Start, which needs no polkit.
        reads = call_as(sim, "nobody", Call(M4, PROPERTIES, "Get", "(ss)", (PROCESSOR, "State")),
                        Call(MANAGER_PATH, MANAGER, "GetProcessor", "(s)", ("m4",)))
        assert all(r.ok for r in reads), reads
        assert reads[0].value == "(<'offline'>,)"
        started = call_one(sim, "root", Call(M4, PROCESSOR, "Start", "(s)", (GOOD,)))
        assert started.ok, started
        assert pending.poll() is None, "the unanswered polkit question was not pending"
        before = snapshot(sim)
        polkit_mock(sim, "ReleaseHangingCalls")
        (late,) = finish_call(pending)
        pending = None
        assert (late.ok, late.error) == (False, ACCESS_DENIED), late
        assert MANAGE in late.message, late
        assert diff(before, snapshot(sim)) == {}
        assert core.state == "running" and sys_read(
            sim, "/sys/class/remoteproc/remoteproc0/state") == "running"
    finally:
        polkit_mock(sim, "SimulateHang", "(b)", False)
        polkit_mock(sim, "ReleaseHangingCalls")
        if pending is not None:
            pending.kill()
            pending.wait()
