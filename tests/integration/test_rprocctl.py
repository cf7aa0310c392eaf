"""rprocctl end to end: the real daemon on the emulated ST boards; output,
--json, one-line errors and the exit codes of `rprocctl --help`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

try:
    from test_api_board import FIRMWARE, board, needs_sim
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import FIRMWARE, board, needs_sim

pytestmark = needs_sim

MP1 = "stm32mp157f-dk"
MP2 = "stm32mp257f-dk"


def one_line_error(out: subprocess.CompletedProcess, status: int, prefix: str) -> str:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith(f"rprocctl: {prefix}"), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "GDBus.Error" not in out.stderr and "org.rprocd1.Error" not in out.stderr
    return out.stderr


def test_list_and_status_on_both_boards():
    with board(MP2) as sim:
        out = sim.rprocctl("list")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["NAME", "DEVICE", "STATE", "OPERATION", "FIRMWARE", "FAILED"]
        assert sorted(line.split()[0] for line in lines[1:]) == ["m0", "m33"]
        data = json.loads(sim.rprocctl("--json", "list").stdout)
        assert sorted(p["Name"] for p in data) == ["m0", "m33"]
        assert all(p["State"] == "offline" for p in data)
        status = json.loads(sim.rprocctl("status", "m33", "--json").stdout)
        assert status["Path"] == "/org/rprocd1/processor/m33"
    with board(MP1) as sim:
        out = sim.rprocctl("status", "remoteproc0")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == "m4 (remoteproc0)"


def test_start_stop_restart_and_exit_codes():
    with board(MP1, firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        out = sim.rprocctl("start", "m4", "m4-good.elf")
        assert (out.returncode, out.stdout) == (0, "m4: running (firmware m4-good.elf)\n"), \
            out.stderr
        one_line_error(sim.rprocctl("start", "m4", "m4-good.elf"), 1, "m4: ")
        one_line_error(sim.rprocctl("stop", "m9"), 3, "m9")
        out = sim.rprocctl("--json", "restart", "m4", "m4-quiet.elf")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Firmware"] == "m4-quiet.elf"
        out = sim.rprocctl("logs", "m4")
        assert out.returncode == 0 and out.stdout.strip(), out.stderr
        out = sim.rprocctl("stop", "m4")
        assert (out.returncode, out.stdout) == (0, "m4: offline\n"), out.stderr
        one_line_error(sim.rprocctl("start", "m4", "nope.elf"), 1, "m4: ")


def test_start_a_local_file_through_import(tmp_path):
    local = tmp_path / "mine.elf"
    shutil.copyfile(FIRMWARE / "m4-good.elf", local)
    with board(MP1) as sim:
        out = sim.rprocctl("start", "m4", "./mine.elf", cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("m4: running (firmware ")
        one_line_error(sim.rprocctl("start", "m4", "./absent.elf", cwd=str(tmp_path)), 1,
                       "m4: absent.elf")


def test_inspect_local_and_by_name():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        out = sim.rprocctl("inspect", "m4-good.elf")
        assert out.returncode == 0, out.stderr
        assert json.loads(sim.rprocctl("--json", "inspect", "m4-good.elf").stdout)["valid"]
        out = sim.rprocctl("inspect", str(FIRMWARE / "bad-magic.elf"))
        assert out.returncode == 1 and "Findings:" in out.stdout


def test_unprivileged_user_is_denied():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        one_line_error(sim.rprocctl("start", "m4", "m4-good.elf", user="nobody"), 4, "m4: ")
        assert sim.rprocctl("list", user="nobody").returncode == 0


def test_timeout_exit_code():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        assert sim.rprocctl("start", "m4", "m4-good.elf").returncode == 0
        sim.control("remoteproc0/hang", "1")
        one_line_error(sim.rprocctl("--timeout", "10", "stop", "m4"), 6, "m4: ")
        sim.control("remoteproc0/hang", "0")


def test_daemon_not_running_exit_code():
    with board(MP1, daemon=False) as sim:
        one_line_error(sim.rprocctl("list"), 5, "rprocd is not running")


def test_monitor_reports_state_changes():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        monitor = subprocess.Popen([sys.executable, "-m", "rprocd.ctl", "monitor"],
                                   env=sim.client_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert monitor.stdout.readline().startswith("watching 1 processor(s)")
            time.sleep(0.5)
            assert sim.rprocctl("start", "m4", "m4-good.elf").returncode == 0
            deadline = time.monotonic() + 15
            lines: list[str] = []
            while time.monotonic() < deadline and not any("State=running" in x for x in lines):
                lines.append(monitor.stdout.readline())
            assert any(line.split(" ", 1)[1].startswith("m4: ") and "State=running" in line
                       for line in lines), lines
            monitor.send_signal(signal.SIGINT)
            assert monitor.wait(10) == 0
        finally:
            monitor.kill()
            monitor.wait()
