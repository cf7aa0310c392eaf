"""Issue 6, concurrency: 50 clients on their own bus connections issue 2,000
mixed calls across the four cores of a `generic:4` board at once: reads
(Get, GetAll, GetManagedObjects, GetProcessor, ReadTrace) and operations
(Start, Stop, Restart to the same or another image, i.e. switches).

40 clients are threads of this process (root), 10 are processes of their own
running as nobody (setpriv, granted org.rprocd1.manage by the polkit stand-in).

What a user would check: every call gets its reply within a generous
per-call timeout (a lost reply or a deadlock fails the test as a timeout);
each reply is a success or a named domain error that the race explains
(BadState: the core is not in the state the call needs; Busy: another
operation on that core runs), never Failed, NoReply or a timeout; at the end
every core's reported State and Firmware equal the kernel's, no Operation is
left over, and the daemon exits 0 on SIGTERM (the harness checks).
"""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
import threading
from typing import Any

from gi.repository import Gio, GLib

try:
    from test_api_board import (
        BUS_NAME,
        MANAGER,
        MANAGER_PATH,
        NOBODY,
        PROCESSOR,
        PROPERTIES,
        SimBoard,
        board,
        needs_sim,
    )
    from test_faults import MANAGE, assert_consistent, get_all
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        MANAGER,
        MANAGER_PATH,
        NOBODY,
        PROCESSOR,
        PROPERTIES,
        SimBoard,
        board,
        needs_sim,
    )
    from tests.integration.test_faults import MANAGE, assert_consistent, get_all

pytestmark = needs_sim

CORES = [f"core{i}" for i in range(4)]
IMAGES = ("m4-good.elf", "m4-quiet.elf")  # both run on the generic cores (the m4 map)
ROOT_CLIENTS = 40
NOBODY_CLIENTS = 10
CALLS = 2000
CALL_TIMEOUT = 30  # s: far beyond any answer; reaching it means a lost reply
EXPECTED_ERRORS = {"org.rprocd1.Error.BadState", "org.rprocd1.Error.Busy"}
# The kernel's own deadlines stay, the daemon's are made generous: on a loaded
# test machine an emulated stop can outlast the default 0.5 s + 1 s, and
# Timeout here must mean a write that hangs, not a busy CPU.
CONFIG = "[Processor *]\nShutdownTimeoutSec=10s\nStartTimeoutSec=20s\n"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

# (path, interface, method, signature, args) as JSON-able lists
Call = tuple[str, str, str, str, list]

# A nobody client: runs the calls given as JSON (argv) on one connection, prints one
# result per call (["ok", kind] or [error name, message]).
WORKER = r"""
import json, sys
from gi.repository import Gio, GLib
address, timeout, calls = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
conn = Gio.DBusConnection.new_for_address_sync(
    address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
out = []
for path, iface, method, sig, args in calls:
    try:
        conn.call_sync("org.rprocd1", path, iface, method,
                       GLib.Variant(sig, tuple(args)) if sig != "()" else None, None,
                       Gio.DBusCallFlags.NONE, timeout * 1000, None)
        out.append(["ok", ""])
    except GLib.Error as err:
        name = Gio.DBusError.get_remote_error(err) or f"{err.domain}:{err.code}"
        out.append([name, err.message])
print(json.dumps(out), flush=True)
"""


def path_of(core: str) -> str:
    return f"/org/rprocd1/processor/{core}"


def plan(rng: random.Random, count: int) -> list[Call]:
    """`count` calls, mostly reads, a third operations, on random cores."""
    calls: list[Call] = []
    for _ in range(count):
        core = rng.choice(CORES)
        path = path_of(core)
        kind = rng.choices(
            ["get", "getall", "objects", "getprocessor", "trace", "start", "stop", "restart"],
            weights=[25, 15, 5, 10, 10, 12, 11, 12])[0]
        if kind == "get":
            prop = rng.choice(["State", "Operation", "Firmware", "Failed", "RunningSince"])
            calls.append((path, PROPERTIES, "Get", "(ss)", [PROCESSOR, prop]))
        elif kind == "getall":
            calls.append((path, PROPERTIES, "GetAll", "(s)", [PROCESSOR]))
        elif kind == "objects":
            calls.append((MANAGER_PATH, OBJECT_MANAGER, "GetManagedObjects", "()", []))
        elif kind == "getprocessor":
            calls.append((MANAGER_PATH, MANAGER, "GetProcessor", "(s)", [core]))
        elif kind == "trace":
            calls.append((path, PROCESSOR, "ReadTrace", "(s)", [""]))
        elif kind == "start":
            calls.append((path, PROCESSOR, "Start", "(s)", [rng.choice(IMAGES)]))
        elif kind == "stop":
            calls.append((path, PROCESSOR, "Stop", "()", []))
        else:
            calls.append((path, PROCESSOR, "Restart", "(s)", [rng.choice(IMAGES)]))
    return calls


def run_thread(sim: SimBoard, calls: list[Call], results: list) -> None:
    """A root client: its own bus connection, one call after the other."""
    conn = sim.connect()
    try:
        for path, iface, method, sig, args in calls:
            try:
                conn.call_sync(BUS_NAME, path, iface, method,
                               GLib.Variant(sig, tuple(args)) if sig != "()" else None, None,
                               Gio.DBusCallFlags.NONE, CALL_TIMEOUT * 1000, None)
                results.append(("ok", ""))
            except GLib.Error as err:
                name = Gio.DBusError.get_remote_error(err) or f"{err.domain}:{err.code}"
                results.append((name, err.message))
    finally:
        conn.close_sync(None)


def start_nobody(sim: SimBoard, calls: list[Call]) -> subprocess.Popen:
    return subprocess.Popen(
        [*NOBODY, sys.executable, "-c", WORKER, sim.env["DBUS_SYSTEM_BUS_ADDRESS"],
         str(CALL_TIMEOUT), json.dumps(calls)], env=sim.client_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fifty_clients_two_thousand_mixed_calls():
    clients = ROOT_CLIENTS + NOBODY_CLIENTS
    per_client = CALLS // clients
    rng = random.Random(6)
    plans = [plan(rng, per_client) for _ in range(clients)]
    assert sum(map(len, plans)) == CALLS
    with board("generic:4", config=CONFIG, firmware=IMAGES) as sim:
        sim.polkit_allow(MANAGE)
        # two cores running, two offline, to begin with
        bus = sim.pydbus()
        for core in CORES[:2]:
            bus.get(BUS_NAME, path_of(core)).Start(IMAGES[0], timeout=CALL_TIMEOUT)

        nobody = [start_nobody(sim, calls) for calls in plans[ROOT_CLIENTS:]]
        results: list[list] = [[] for _ in range(ROOT_CLIENTS)]
        threads = [threading.Thread(target=run_thread, args=(sim, calls, out))
                   for calls, out in zip(plans[:ROOT_CLIENTS], results, strict=True)]
        for thread in threads:
            thread.start()
        for process in nobody:
            out, err = process.communicate(timeout=CALL_TIMEOUT * per_client)
            assert process.returncode == 0, err
            results.append(json.loads(out))
        for thread in threads:
            thread.join(CALL_TIMEOUT * per_client)
            assert not thread.is_alive(), "a client never got all its replies"

        outcomes: collections.Counter = collections.Counter()
        unexpected: list[tuple[Call, Any]] = []
        for calls, out in zip(plans, results, strict=True):
            assert len(out) == len(calls), "a client's calls went unanswered"
            for call, (name, message) in zip(calls, out, strict=True):
                outcomes[(call[2], name)] += 1
                if name != "ok" and name not in EXPECTED_ERRORS:
                    unexpected.append((call, (name, message)))
                if name != "ok":
                    assert message.strip() and "Traceback" not in message, message
        assert sum(outcomes.values()) == CALLS
        assert not unexpected, f"{len(unexpected)} unexpected answers, e.g. {unexpected[:5]}"
        for method in ("Get", "GetAll", "GetProcessor", "Start", "Stop", "Restart"):
            assert outcomes[(method, "ok")] > 0, f"no {method} succeeded: {outcomes}"

        assert_consistent(sim)
        for core in CORES:  # every core still takes calls
            props = get_all(sim, path_of(core))
            proc = bus.get(BUS_NAME, path_of(core))
            if props["State"] == "running":
                proc.Stop(timeout=CALL_TIMEOUT)
            proc.Start(IMAGES[1], timeout=CALL_TIMEOUT)
        assert_consistent(sim)
