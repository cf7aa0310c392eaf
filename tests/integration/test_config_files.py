"""Configuration errors (issue 3): a bad rprocd.conf stops the daemon before
READY=1 with `file:line: message`; Reload() (D-Bus, rprocctl reload) and
SIGHUP with a bad drop-in keep the configuration in force and say which
file and line, and a good one is applied.

What a configuration holds is read back from properties it sets:
DefaultFirmware (Firmware=) and RestartPolicy (Restart=).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

try:
    from test_api_board import BUS_NAME, MANAGER_PATH, SimBoard, board, needs_sim, wait_until
    from test_sim_tools import ERROR, M4, MP1, T, error_of
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        MANAGER_PATH,
        SimBoard,
        board,
        needs_sim,
        wait_until,
    )
    from tests.integration.test_sim_tools import ERROR, M4, MP1, T, error_of

pytestmark = needs_sim

GOOD = "[Manager]\nPollIntervalSec=1s\n\n[Processor m4]\nFirmware=m4-good.elf\n"


@pytest.mark.parametrize(("text", "line", "says"), [
    ("[Processor m4]\nFirmware=m4-good.elf\nAutoStrat=yes\n", 3,
     "unknown key 'AutoStrat' in [Processor m4]; did you mean 'AutoStart'?"),
    ("# comment\n\n[Processor *]\nShutdownTimeoutSec=fast\n", 4,
     "bad value 'fast' for ShutdownTimeoutSec=: expected a time span"),
    ("[Manager]\nPollIntervalSec=1s\n[Procesor m4]\n", 3, "unknown section [Procesor m4]"),
    ("[Processor m4]\nEarlyBoot=restart\nEarlyBoot=adopt\n", 3,
     "EarlyBoot= is already set in [Processor m4] on line 2"),
], ids=["typo-key", "bad-value", "typo-section", "duplicate"])
def test_a_bad_config_file_stops_the_daemon_before_ready_with_file_and_line(text, line, says):
    sim = SimBoard(MP1, config=text)
    try:
        with pytest.raises(RuntimeError) as failure:
            sim.__enter__()
    finally:
        shutil.rmtree(sim.tmp, ignore_errors=True)
    output = str(failure.value)
    assert output.startswith("rprocd-sim exited 1:"), output  # not up: no CMD ran
    assert "the daemon exited with status 1 before READY=1" in output, output
    assert f"/configuration/rprocd.conf:{line}: {says}" in output, output
    assert "Traceback" not in output, output


def config_dir(sim) -> Path:
    return Path(sim.env["CONFIGURATION_DIRECTORY"])


def dropin(sim, name: str, text: str) -> Path:
    directory = config_dir(sim) / "rprocd.conf.d"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_reload_with_a_bad_dropin_keeps_the_configuration_in_force():
    with board(MP1, config=GOOD) as sim:
        bus = sim.pydbus()
        manager, m4 = bus.get(BUS_NAME, MANAGER_PATH), bus.get(BUS_NAME, M4)
        assert (m4.DefaultFirmware, m4.RestartPolicy) == ("m4-good.elf", "kernel")

        dropin(sim, "50-switch.conf", "[Processor m4]\nFirmware=m4-quiet.elf\n")
        manager.Reload(timeout=T)
        assert m4.DefaultFirmware == "m4-quiet.elf"  # a good drop-in applies

        # Line 2 is fine, line 3 is not: nothing of the file may apply.
        bad = dropin(sim, "60-bad.conf", "[Processor m4]\nRestart=no\nRestartSecs=5s\n")
        name, message = error_of(manager.Reload, timeout=T)
        assert name == ERROR + "Failed", message
        assert f"{bad}:3: unknown key 'RestartSecs'" in message, message
        assert "previous one stays" in message, message
        assert (m4.DefaultFirmware, m4.RestartPolicy) == ("m4-quiet.elf", "kernel")
        out = sim.rprocctl("reload")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert out.stderr.startswith("rprocctl: ") and out.stderr.count("\n") == 1
        assert f"{bad.name}:3:" in out.stderr, out.stderr

        bad.write_text("[Processor m4]\nRestart=no\nRestartSec=5s\n")  # fixed
        out = sim.rprocctl("reload")
        assert out.returncode == 0, out.stderr
        assert (m4.DefaultFirmware, m4.RestartPolicy) == ("m4-quiet.elf", "no")
        assert "unknown key" not in sim.rprocctl("status", "m4").stdout


def test_sighup_with_a_bad_dropin_keeps_the_configuration_and_logs_file_and_line():
    with board(MP1, config=GOOD) as sim:
        bus = sim.pydbus()
        m4 = bus.get(BUS_NAME, M4)
        pid = int(sim.env["RPROCD_PID"])
        bad = dropin(sim, "70-bad.conf",
                     "[Processor m4]\nFirmware=m4-quiet.elf\nRestart=sometimes\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: f"{bad}:3: bad value 'sometimes' for Restart=" in sim.daemon_log(),
                   what="the reload error in the daemon's log")
        assert (m4.DefaultFirmware, m4.RestartPolicy) == ("m4-good.elf", "kernel")
        assert bus.get(BUS_NAME, MANAGER_PATH).Processors == [M4]  # still serving

        bad.write_text("[Processor m4]\nFirmware=m4-quiet.elf\nRestart=no\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: m4.RestartPolicy == "no", what="the fixed drop-in applied")
        assert m4.DefaultFirmware == "m4-quiet.elf"


def test_a_bad_main_file_at_reload_is_named_too():
    with board(MP1, config=GOOD) as sim:
        manager = sim.pydbus().get(BUS_NAME, MANAGER_PATH)
        main = config_dir(sim) / "rprocd.conf"
        main.write_text(GOOD + "[Processor m4]\nCoredump=sometimes\n")
        name, message = error_of(manager.Reload, timeout=T)
        assert name == ERROR + "Failed"
        assert f"{main}:7: bad value 'sometimes' for Coredump=" in message, message
        assert sim.pydbus().get(BUS_NAME, M4).DefaultFirmware == "m4-good.elf"
