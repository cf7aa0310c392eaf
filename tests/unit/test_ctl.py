"""rprocctl against the adapter over a fake core on a private bus: output,
--json, one-line errors and the documented exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from rprocd import ctl
from rprocd.errors import Failed, Timeout

try:
    from test_bus_fakes import (
        NOBODY,
        FakeProcessor,
        private_bus,  # noqa: F401 - fixture
        served,  # noqa: F401 - fixture
    )
except ModuleNotFoundError:  # tests/unit became a package
    from tests.unit.test_bus_fakes import (  # noqa: F401
        NOBODY,
        FakeProcessor,
        private_bus,
        served,
    )


def rprocctl(bus, *args: str, user: str = "root", address: str | None = None,
             cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address or bus.address}
    prefix = NOBODY if user == "nobody" else []
    return subprocess.run([*prefix, sys.executable, "-m", "rprocd.ctl", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def failed_with(out: subprocess.CompletedProcess, status: int, message: str) -> None:
    assert out.returncode == status, (out.stdout, out.stderr)
    assert out.stderr == f"rprocctl: {message}\n"
    assert out.stdout == ""


def test_help_documents_the_exit_codes_the_code_uses(capsys):
    with pytest.raises(SystemExit) as info:
        ctl.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for code, meaning in ctl.EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in text
    assert (ctl.OK, ctl.FAILED, ctl.USAGE, ctl.NO_PROCESSOR, ctl.DENIED, ctl.NO_DAEMON,
            ctl.TIMEOUT) == (0, 1, 2, 3, 4, 5, 6)
    for command in ("list", "status", "start", "stop", "restart", "detach", "recover",
                    "reset-failed", "inspect", "logs", "coredump", "monitor", "reload"):
        assert command in text


def test_usage_errors_exit_2(capsys):
    for argv in (["frobnicate"], ["start"], [], ["stop", "m4", "extra"]):
        with pytest.raises(SystemExit) as info:
            ctl.main(argv)
        assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("rprocctl: ")


def test_no_daemon_and_no_bus_exit_5(private_bus, tmp_path):
    failed_with(rprocctl(private_bus, "list"), 5,
                "rprocd is not running (org.rprocd1 is not on the system bus)")
    out = rprocctl(private_bus, "stop", "m4", address=f"unix:path={tmp_path}/none")
    assert out.returncode == 5
    assert out.stderr.startswith("rprocctl: cannot connect to the system bus: ")
    assert out.stderr.count("\n") == 1


def test_list_table_and_json(served, private_bus):
    out = rprocctl(private_bus, "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "NAME  DEVICE       STATE    OPERATION  FIRMWARE      FAILED",
        "m33   remoteproc0  running  -          rproc-m33-fw  no",
        "m0    remoteproc1  offline  -          -             no",
    ]
    out = rprocctl(private_bus, "--json", "list")
    data = json.loads(out.stdout)
    assert [p["Name"] for p in data] == ["m33", "m0"]
    assert data[0]["Path"] == "/org/rprocd1/processor/m33"
    assert data[0]["TraceBuffers"] == ["trace0"]


def test_status_by_name_device_and_all(served, private_bus):
    out = rprocctl(private_bus, "status", "remoteproc1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "m0 (remoteproc1)"
    assert "  State:           offline" in lines
    assert "  LastCrashTime:   -" in lines
    data = json.loads(rprocctl(private_bus, "status", "m33", "--json").stdout)
    assert data["State"] == "running" and data["CrashCount"] == 0
    everything = rprocctl(private_bus, "status").stdout
    assert "m33 (remoteproc0)" in everything and "m0 (remoteproc1)" in everything


def test_start_stop_and_their_errors(served, private_bus):
    out = rprocctl(private_bus, "start", "m0")
    assert (out.returncode, out.stdout) == (0, "m0: running (firmware rproc-m0-fw)\n"), out.stderr
    failed_with(rprocctl(private_bus, "start", "m33"), 1, "m33: cannot start while running")
    failed_with(rprocctl(private_bus, "stop", "m9"), 3,
                "m9: no such processor; rprocctl list shows them")
    out = rprocctl(private_bus, "--json", "stop", "m0")
    assert out.returncode == 0 and json.loads(out.stdout)["State"] == "offline"
    served.manager.processors["m33"].fail_next = Timeout("m33: did not stop within 1.5 s")
    failed_with(rprocctl(private_bus, "stop", "m33"), 6, "m33: did not stop within 1.5 s")
    served.manager.processors["m33"].fail_next = Failed("the core said\nno")
    failed_with(rprocctl(private_bus, "restart", "m33", "other-fw"), 1,
                "m33: the core said no")
    assert served.manager.processors["m0"].calls == [("start", "rproc-m0-fw"), ("stop", None)]


def test_client_timeout_exits_6(served, private_bus):
    served.manager.processors["m0"].delay_ms = 3000
    failed_with(rprocctl(private_bus, "--timeout", "1", "start", "m0"), 6,
                "m0: no answer from rprocd in time (see --timeout)")


def test_access_denied_exits_4(served, private_bus):
    failed_with(rprocctl(private_bus, "start", "m0", user="nobody"), 4,
                "m0: Start() refused: polkit is not running, so org.rprocd1.manage is "
                "limited to root")
    out = rprocctl(private_bus, "list", user="nobody")  # reading stays open
    assert out.returncode == 0, out.stderr


def test_start_with_a_local_file_imports_it_by_fd(served, private_bus, tmp_path):
    image = tmp_path / "app.elf"
    image.write_bytes(b"\x7fELF local image")
    image.chmod(0o600)  # the daemon could not open it by path if it tried as someone else
    out = rprocctl(private_bus, "start", "m0", "./app.elf", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "m0: running (firmware imported/app.elf)\n"
    assert served.manager.imported == {"imported/app.elf": b"\x7fELF local image"}
    assert served.manager.processors["m0"].calls == [("start", "imported/app.elf")]
    out = rprocctl(private_bus, "restart", "m0", str(image))
    assert out.returncode == 0, out.stderr
    failed_with(rprocctl(private_bus, "start", "m0", "./missing.elf", cwd=str(tmp_path)), 1,
                "m0: missing.elf: No such file or directory")


def test_inspect_local_file_needs_no_daemon(private_bus, tmp_path):
    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"MZ not an elf at all" * 4)
    out = rprocctl(private_bus, "inspect", str(junk))  # no daemon on this bus
    assert out.returncode == 1, out.stderr
    assert "Findings:" in out.stdout and "error" in out.stdout
    data = json.loads(rprocctl(private_bus, "--json", "inspect", str(junk)).stdout)
    assert data["valid"] is False and data["errors"] >= 1
    failed_with(rprocctl(private_bus, "inspect", str(tmp_path / "none.elf")), 1,
                f"{tmp_path}/none.elf: No such file or directory")


def test_inspect_by_name_asks_the_daemon(served, private_bus):
    out = rprocctl(private_bus, "inspect", "good.elf")
    assert out.returncode == 0, out.stderr
    assert "good.elf" in out.stdout
    data = json.loads(rprocctl(private_bus, "inspect", "good.elf", "--json").stdout)
    assert data["segments"][0]["vaddr"] == 0x10000000
    failed_with(rprocctl(private_bus, "inspect", "missing.elf"), 1,
                "missing.elf: firmware 'missing.elf' is not in /lib/firmware")


def test_logs_reload_reset_failed(served, private_bus):
    out = rprocctl(private_bus, "logs", "m33")
    assert (out.returncode, out.stdout) == (0, "[m] booted\n[m] tick 1\n")
    failed_with(rprocctl(private_bus, "logs", "m33", "--buffer", "trace7"), 1,
                "m33: no trace buffer 'trace7'; see TraceBuffers")
    data = json.loads(rprocctl(private_bus, "--json", "logs", "m33", "--buffer", "trace0").stdout)
    assert data == {"Name": "m33", "Buffer": "trace0", "Text": "[m] booted\n[m] tick 1\n"}
    assert rprocctl(private_bus, "reset-failed", "m33").returncode == 0
    assert rprocctl(private_bus, "reload").returncode == 0
    served.manager.reload_error = Failed("/etc/rprocd/rprocd.conf:3: unknown key 'Foo'")
    failed_with(rprocctl(private_bus, "reload"), 1, "/etc/rprocd/rprocd.conf:3: unknown key 'Foo'")


def test_status_shows_the_last_coredump(served, private_bus):
    path = "/var/lib/rprocd/coredump/m33-20231114T221320-1.core"
    m33 = served.manager.processors["m33"]
    served.run(lambda: m33.set(LastCoredump=path, CrashCount=1, LastCrashType="watchdog"))
    out = rprocctl(private_bus, "status", "m33")
    assert f"  LastCoredump:    {path}" in out.stdout.splitlines(), out.stdout
    assert "  LastCrashType:   watchdog" in out.stdout.splitlines()


SAVED_TRACE = "/var/lib/rprocd/coredump/m33-20231114T221320-1.trace"
GONE = ("m33: no trace buffer 'trace0' now (present: none); trace buffers exist while the "
        "firmware runs and declares them in its resource table; the text before the last "
        f"crash is in {SAVED_TRACE}")


class Trace:
    """A trace buffer the test rewrites; ReadTrace of the fake core reads it."""

    def __init__(self, served, text: str) -> None:
        self.served = served
        self.proc = served.manager.processors["m33"]
        self.text: str | None = text
        self.proc.read_trace = self.read

    def read(self, buffer: str) -> str:
        from rprocd.errors import BadState

        if self.text is None:
            raise BadState(GONE)
        return self.text

    def set(self, text: str | None, **props) -> None:
        """New buffer content (None: gone) and properties, at once on the loop."""

        def change() -> None:
            self.text = text
            if props:
                self.proc.set(**props)

        self.served.run(change)


def test_logs_names_the_saved_trace_when_the_buffer_is_gone(served, private_bus):
    Trace(served, None)
    failed_with(rprocctl(private_bus, "logs", "m33"), 1, GONE)


def _follow(bus, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
    proc = subprocess.Popen([sys.executable, "-m", "rprocd.ctl", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)  # a blocked readline() ends at EOF, not never
    watchdog.daemon = True
    watchdog.start()
    return proc


def test_logs_follow_prints_new_lines_across_restarts_until_sigint(served, private_bus):
    trace = Trace(served, "boot\nline 1\n")
    served.run(lambda: trace.proc.set(RunningSince=1_700_000_000_000_000))
    proc = _follow(private_bus, "logs", "m33", "-f")
    try:
        assert _lines(proc, 2) == ["boot", "line 1"]
        trace.set("boot\nline 1\nline 2\nhalf a li")
        assert _lines(proc, 1) == ["line 2"]
        trace.set("boot\nline 1\nline 2\nhalf a line\n")
        assert _lines(proc, 1) == ["half a line"]
        # A crash: the buffer goes; the daemon's reason names the saved trace, once.
        trace.set(None, RunningSince=0, State="crashed")
        assert proc.stderr.readline() == f"rprocctl: {GONE}\n"
        # The kernel's recovery restarts the firmware: a new run, from its start.
        trace.set("boot\nunfinished", RunningSince=1_700_000_100_000_000, State="running")
        assert _lines(proc, 1) == ["boot"]
        # Restarted again before the line ended: it comes out as it is.
        trace.set("boot\n", RunningSince=1_700_000_200_000_000)
        assert _lines(proc, 2) == ["unfinished", "boot"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stdout.read() == ""
    finally:
        proc.kill()
        proc.wait()


def test_logs_follow_json_and_sigterm(served, private_bus):
    trace = Trace(served, "<3>boom\n")
    proc = _follow(private_bus, "--json", "logs", "m33", "--follow", "--buffer", "trace0")
    try:
        (line,) = _lines(proc, 1)
        assert json.loads(line) == {"Name": "m33", "Buffer": "trace0", "Line": "<3>boom"}
        trace.set("<3>boom\nagain\n")
        assert json.loads(_lines(proc, 1)[0])["Line"] == "again"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_logs_follow_errors_before_following_are_the_commands(served, private_bus):
    failed_with(rprocctl(private_bus, "logs", "m9", "-f"), 3,
                "m9: no such processor; rprocctl list shows them")
    Trace(served, None)
    failed_with(rprocctl(private_bus, "logs", "m33", "-f"), 1, GONE)


def _monitor(bus, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
    proc = subprocess.Popen([sys.executable, "-m", "rprocd.ctl", *extra, "monitor"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def _lines(proc: subprocess.Popen, count: int, timeout: float = 10) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line.rstrip("\n"))
    return lines


def test_monitor_prints_one_line_per_event(served, private_bus):
    proc = _monitor(private_bus)
    try:
        assert _lines(proc, 1) == ["watching 2 processor(s); Ctrl-C to stop"]
        time.sleep(0.3)  # subscriptions are in place once the first line is out
        m33 = served.manager.processors["m33"]
        served.run(lambda: m33.set(State="crashed", Operation=""))
        served.run(m33.listener.crashed, m33, "watchdog", 1_700_000_000_000_000, "")
        served.run(served.manager.plug, FakeProcessor("m4", "remoteproc2"))
        events = [line.split(" ", 1)[1] for line in _lines(proc, 3)]
        assert events == ['m33: State=crashed Operation=""', "m33: crashed (watchdog)",
                          "m4: added"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_monitor_json(served, private_bus):
    proc = _monitor(private_bus, "--json")
    try:
        time.sleep(1.0)
        m0 = served.manager.processors["m0"]
        served.run(served.manager.unplug, m0)
        (line,) = _lines(proc, 1)
        event = json.loads(line)
        assert (event["event"], event["processor"], event["path"]) == (
            "removed", "m0", "/org/rprocd1/processor/m0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
