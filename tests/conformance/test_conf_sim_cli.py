"""`rprocd-sim` itself: its environment, exit status, daemon readiness and
teardown, and that nothing (mount, process, directory) outlives it, even when
CMD fails, the emulator is interrupted or killed outright."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sim_harness import FIRMWARE_BUILD, running_sim, sim_command

# A fake daemon for the readiness/teardown logic: argv[1] picks a behaviour.
FAKE_DAEMON = r"""
import os, signal, socket, sys
mode = sys.argv[1]
def notify(message):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(os.environ["NOTIFY_SOCKET"])
    sock.send(message.encode())
if mode == "exit3":
    print("fake daemon: cannot parse rprocd.conf", file=sys.stderr, flush=True)
    sys.exit(3)
handlers = {"good": lambda *a: sys.exit(0), "badexit": lambda *a: sys.exit(1),
            "stubborn": signal.SIG_IGN, "silent": lambda *a: sys.exit(0),
            "die": signal.SIG_DFL}
signal.signal(signal.SIGTERM, handlers[mode])  # before READY=1, as a daemon must
if mode != "silent":
    notify("STATUS=up\nREADY=1")
if mode == "die":
    sys.exit(5)
while True:
    signal.pause()
"""

# CMD that reports where everything is, then waits for stdin EOF.
REPORT = ("import json, os, sys; print(json.dumps(dict(os.environ)), flush=True); "
          "sys.stdin.read()")

ENV_KEYS = {"UMOCKDEV_DIR", "LD_PRELOAD", "DBUS_SYSTEM_BUS_ADDRESS", "RPROCD_SIM_DIR",
            "RPROCD_SIM_FIRMWARE_DIR", "RPROCD_SIM_CONTROL", "CONFIGURATION_DIRECTORY",
            "STATE_DIRECTORY", "RUNTIME_DIRECTORY"}


def sim(*args: str, cmd: list[str], env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*sim_command(), *args, "--", *cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def fake_daemon(mode: str, **extra: str) -> dict[str, str]:
    return {"RPROCD_SIM_DAEMON_CMD": f"{sys.executable} -c '{FAKE_DAEMON}' {mode}", **extra}


def alive(pid: int) -> bool:
    """Running, not a zombie (orphans stay zombies until init reaps them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def assert_gone(env: dict[str, str], pids: tuple[int, ...] = ()) -> None:
    """No mount, directory or process of that run is left."""
    root, simdir = env["UMOCKDEV_DIR"], env["RPROCD_SIM_DIR"]
    mounts = Path("/proc/self/mounts").read_text()
    assert root not in mounts and simdir not in mounts
    assert not Path(root).exists() and not Path(simdir).exists()
    for pid in pids:
        assert not alive(pid), f"process {pid} is still running"


def wait_gone(env: dict[str, str], pids: tuple[int, ...] = (), timeout: float = 20) -> None:
    """For cleanups done by someone we cannot wait on (the reaper): poll."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_gone(env, pids)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_reporting(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """rprocd-sim with a CMD that prints its environment; (process, env)."""
    proc = subprocess.Popen([*sim_command(), *args, "--", sys.executable, "-c", REPORT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], 60)[0]
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"rprocd-sim did not come up: {proc.communicate()[1]}")
    return proc, json.loads(line)


# -- environment and exit status ------------------------------------------------


def test_cmd_environment_and_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    conf = tmp_path / "my.conf"
    conf.write_text("[Manager]\n")
    proc, env = start_reporting("--env-file", str(env_file), "--config", str(conf),
                                "--firmware", str(FIRMWARE_BUILD / "m4-good.elf"))
    try:
        assert ENV_KEYS <= set(env)
        assert "libumockdev-preload" in env["LD_PRELOAD"]
        written = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert {k: written[k] for k in ENV_KEYS} == {k: env[k] for k in ENV_KEYS}
        assert Path(env["CONFIGURATION_DIRECTORY"], "rprocd.conf").read_text() == "[Manager]\n"
        assert Path(env["RPROCD_SIM_FIRMWARE_DIR"], "m4-good.elf").is_file()
        assert Path(env["RPROCD_SIM_DIR"]).stat().st_mode & 0o777 == 0o755
        assert Path(env["UMOCKDEV_DIR"], "sys/class/remoteproc/remoteproc0/state").is_file()
        assert Path(env["RPROCD_SIM_CONTROL"], "plug").exists()
    finally:
        proc.stdin.close()
        assert proc.wait(60) == 0, proc.stderr.read()
    assert_gone(env)


def test_cmd_runs_in_the_callers_directory(tmp_path: Path) -> None:
    done = subprocess.run([*sim_command(), "--", "pwd"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.stdout.strip() == str(tmp_path)


def test_exit_status_of_a_failing_cmd_and_nothing_left(tmp_path: Path) -> None:
    done = sim(cmd=["sh", "-c", 'echo "$UMOCKDEV_DIR $RPROCD_SIM_DIR"; exit 3'])
    assert done.returncode == 3, done.stderr
    root, simdir = done.stdout.split()
    assert_gone({"UMOCKDEV_DIR": root, "RPROCD_SIM_DIR": simdir})


def test_cmd_killed_by_a_signal() -> None:
    assert sim(cmd=["sh", "-c", "kill -TERM $$"]).returncode == 128 + signal.SIGTERM


def test_background_processes_of_cmd_are_killed() -> None:
    done = sim(cmd=["sh", "-c", "sleep 1000 & echo $!"])
    assert done.returncode == 0
    assert not alive(int(done.stdout))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_emulator_tears_everything_down(signum: int) -> None:
    proc, env = start_reporting()
    cmd_pids = tuple(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                     .read_text().split())
    proc.send_signal(signum)
    assert proc.wait(60) == 128 + signum, proc.stderr.read()
    assert f"stopped by {signal.Signals(signum).name}" in proc.stderr.read()
    assert_gone(env, cmd_pids)


def test_killed_emulator_is_cleaned_up_by_its_reaper() -> None:
    proc, env = start_reporting()
    children = tuple(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                     .read_text().split())
    proc.kill()
    proc.wait()
    wait_gone(env, children)


def test_usage_errors() -> None:
    assert "missing CMD" in sim(cmd=[]).stderr
    bad_board = sim("--board", "nope", cmd=["true"])
    assert bad_board.returncode == 1 and "stm32mp157f-dk" in bad_board.stderr
    bad_option = sim("--option", "m4.early=sideways", cmd=["true"])
    assert bad_option.returncode == 1 and "early" in bad_option.stderr
    missing = sim("--firmware", "/nonexistent.elf", cmd=["true"])
    assert missing.returncode == 1 and "/nonexistent.elf" in missing.stderr


def test_several_boards_share_one_machine() -> None:
    done = sim("--board", "stm32mp157f-dk", "--board", "stm32mp257f-dk",
               cmd=["sh", "-c", "cat /sys/class/remoteproc/*/name"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["m4", "m33", "m0"]
    clash = sim("--board", "generic:2", "--board", "generic:1", cmd=["true"])
    assert clash.returncode == 1 and "core0" in clash.stderr


# -- bus and polkit stand-in ------------------------------------------------------

CHECK = ("busctl --system --json=short call org.freedesktop.PolicyKit1 "
         "/org/freedesktop/PolicyKit1/Authority org.freedesktop.PolicyKit1.Authority "
         "CheckAuthorization '(sa{{sv}})sa{{ss}}us' unix-process 1 pid u $$ {action} 0 1 ''")


def polkit_answers(allow: str | None, *actions: str) -> list[bool]:
    env = {"RPROCD_SIM_POLKIT_ALLOW": allow} if allow is not None else {}
    script = "; ".join(CHECK.format(action=a) for a in actions)
    done = sim(cmd=["sh", "-c", script], env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["data"][0][0] for line in done.stdout.splitlines()]


def test_polkit_grants_nothing_by_default() -> None:
    assert polkit_answers(None, "org.rprocd1.manage") == [False]


def test_polkit_grants_what_the_environment_allows() -> None:
    assert polkit_answers("org.rprocd1.manage", "org.rprocd1.manage",
                          "org.rprocd1.configure") == [True, False]
    assert polkit_answers("*", "org.rprocd1.configure") == [True]


def test_unprivileged_clients_reach_the_bus_and_the_sysfs() -> None:
    nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups"
    done = sim(cmd=["sh", "-c", f"{nobody} busctl --system list --no-pager >/dev/null && "
                                f"{nobody} cat /sys/class/remoteproc/remoteproc0/state && "
                                f"! {nobody} sh -c 'echo start > "
                                "/sys/class/remoteproc/remoteproc0/state'"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "offline\n"


def test_bus_policy_includes_the_project_policy() -> None:
    done = sim(cmd=["sh", "-c", 'cat "$RPROCD_SIM_DIR/bus.conf"'])
    assert "<type>system</type>" in done.stdout
    assert "org.rprocd1.conf</include>" in done.stdout


# -- the daemon ------------------------------------------------------------------------


def test_fake_daemon_ready_and_clean_exit() -> None:
    done = sim("--daemon", cmd=["sh", "-c", 'kill -0 "$RPROCD_PID" && echo "$RPROCD_SIM_LOG"'],
               env=fake_daemon("good"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("daemon.log")


def test_daemon_that_exits_before_ready() -> None:
    done = sim("--daemon", cmd=["true"], env=fake_daemon("exit3"))
    assert done.returncode == 1
    assert "exited with status 3 before READY=1" in done.stderr
    assert "cannot parse rprocd.conf" in done.stderr  # its log is shown


def test_daemon_that_never_gets_ready() -> None:
    done = sim("--daemon", cmd=["true"],
               env=fake_daemon("silent", RPROCD_SIM_READY_TIMEOUT="1"))
    assert done.returncode == 1
    assert "no READY=1 within 1 s" in done.stderr


def test_daemon_dying_during_the_run_is_status_70() -> None:
    wait_for_daemon_exit = ("import os, select; "
                            "fd = os.pidfd_open(int(os.environ['RPROCD_PID'])); "
                            "select.select([fd], [], [])")
    done = sim("--daemon", cmd=[sys.executable, "-c", wait_for_daemon_exit],
               env=fake_daemon("die"))
    assert done.returncode == 70
    assert "died during the run (exit status 5)" in done.stderr


def test_daemon_failing_on_sigterm_is_status_70() -> None:
    done = sim("--daemon", cmd=["true"], env=fake_daemon("badexit"))
    assert done.returncode == 70
    assert "exited with status 1 on SIGTERM" in done.stderr


def test_daemon_ignoring_sigterm_is_killed_and_status_70() -> None:
    done = sim("--daemon", cmd=["true"],
               env=fake_daemon("stubborn", RPROCD_SIM_STOP_TIMEOUT="1"))
    assert done.returncode == 70
    assert "did not exit within 1 s of SIGTERM" in done.stderr


def test_daemon_stuck_in_a_hung_kernel_write_does_not_hang_teardown() -> None:
    # The daemon's worker blocks in `stop` on a core whose write the emulated
    # kernel holds; killed, it can only die once the write is answered.
    firmware = Path(__file__).resolve().parents[1] / "firmware" / "build" / "m4-good.elf"
    script = (
        "rprocctl start m4 m4-good.elf >/dev/null && "
        'echo 1 > "$RPROCD_SIM_CONTROL/remoteproc0/hang" && '
        "(rprocctl stop m4 >/dev/null 2>&1 &) ; sleep 0.5"
    )
    done = sim("--daemon", "--firmware", str(firmware), cmd=["sh", "-c", script],
               env={"RPROCD_SIM_STOP_TIMEOUT": "1",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
               timeout=60)
    assert done.returncode == 70, done.stderr
    assert "did not exit within 1 s of SIGTERM" in done.stderr


def test_cmd_status_wins_over_the_daemon() -> None:
    done = sim("--daemon", cmd=["sh", "-c", "exit 4"], env=fake_daemon("badexit"))
    assert done.returncode == 4


@pytest.mark.skipif(shutil.which("busctl") is None, reason="busctl is part of the setup")
def test_real_daemon_comes_up_and_stops_cleanly() -> None:
    with running_sim(daemon=True, firmware=["m4-good.elf"]) as board:
        names = board.run("busctl --system list --no-pager --acquired")
        assert "org.rprocd1" in names.stdout, board.daemon_log()
        state = board.run("busctl --system get-property org.rprocd1 "
                          "/org/rprocd1/processor/m4 org.rprocd1.Processor State")
        assert state.stdout.strip() == 's "offline"', state.stderr
    assert board.returncode == 0
