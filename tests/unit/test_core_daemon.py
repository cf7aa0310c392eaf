"""The daemon shell: command line, config errors, sd_notify, logging, and one
run of the real main loop (with a stand-in for the D-Bus adapter) in a child."""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rprocd import daemon, journal
from rprocd.notify import Notifier

ROOT = Path(__file__).resolve().parents[2]

FAKE_BUS = textwrap.dedent("""
    import os, sys
    from gi.repository import GLib
    import rprocd.bus.service as service

    class FakeBus:
        def __init__(self, manager):
            self.manager = manager
        def publish(self, on_ready, on_lost):
            if os.environ["FAKE_BUS"] == "ready":
                GLib.timeout_add(50, lambda: on_ready())
            else:
                GLib.timeout_add(50, lambda: on_lost("the name is taken"))
        def close(self):
            pass

    service.BusService = FakeBus
    from rprocd.daemon import main
    sys.exit(main([]))
""")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "CONFIGURATION_DIRECTORY": str(tmp_path / "etc"),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "INVOCATION_ID"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "etc").mkdir()
    return values


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        daemon.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("rprocd 0.")


def test_check_config_ok_and_bad(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    conf = Path(env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf"
    conf.write_text("[Processor m4]\nAutoStrat=yes\n")
    assert daemon.main(["--check-config"]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"rprocd: {conf}:2: unknown key 'AutoStrat' in [Processor m4]; "
        "did you mean 'AutoStart'?\n"
    )


def test_bad_config_stops_the_daemon_before_the_loop(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (Path(env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf").write_text(
        "[Manager]\nPollIntervalSec=x\n"
    )
    assert daemon.main([]) == 1
    assert "rprocd.conf:2: bad value 'x' for PollIntervalSec=" in capsys.readouterr().err


def test_notify_to_a_path_and_to_an_abstract_socket(tmp_path: Path) -> None:
    for address, bind in (
        (str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
        (f"@rprocd-test-{os.getpid()}", f"\0rprocd-test-{os.getpid()}"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(bind)
            notifier = Notifier({"NOTIFY_SOCKET": address})
            assert notifier.ready("2 cores")
            assert server.recv(100) == b"READY=1\nSTATUS=2 cores"
            notifier.close()
    assert not Notifier({}).ready("nobody listens")


def test_notify_never_blocks_on_a_receiver_that_stopped_reading(tmp_path: Path) -> None:
    """A full receive queue drops notifications instead of stalling the loop."""
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.ready("up")
        sent = [notifier.status(f"status {i}") for i in range(2000)]  # would block
        assert not all(sent) and sent[0]
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        while True:  # the queue drains, and the next notification gets through
            try:
                server.recv(100, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        assert notifier.status("again")
        assert server.recv(100) == b"STATUS=again"
        notifier.close()


def test_watchdog_interval() -> None:
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


@pytest.fixture
def restore_logging():
    logger = logging.getLogger("rprocd")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.mark.usefixtures("restore_logging")
def test_stderr_lines_carry_the_journal_fields() -> None:
    stream = io.StringIO()
    journal.setup("debug", env={}, stream=stream)
    logging.getLogger("rprocd").info(
        "m4: started", extra={"RPROC_NAME": "m4", "RPROC_STATE": "running", "lower": "no"}
    )
    assert (
        stream.getvalue().rstrip().endswith("INFO m4: started [RPROC_NAME=m4 RPROC_STATE=running]")
    )
    journal.set_level("warning")
    logging.getLogger("rprocd.sub").info("hidden")
    assert "hidden" not in stream.getvalue()


def test_journal_handler_sends_upper_case_extras_as_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    from systemd import journal as sd

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(sd, "send", lambda message, **fields: sent.append((message, fields)))
    handler = journal.JournalHandler()
    record = logging.LogRecord("rprocd", logging.ERROR, __file__, 1, "m4: crashed", (), None)
    record.RPROC_NAME = "m4"
    record.MESSAGE_ID = "5d379fe426e940dc8e249e084aa86e6a"
    handler.emit(record)
    message, fields = sent[0]
    assert message == "m4: crashed" and fields["PRIORITY"] == "3"
    assert fields["RPROC_NAME"] == "m4" and fields["MESSAGE_ID"].startswith("5d379fe4")
    assert "msg" not in fields and "levelname" not in fields


def _run_daemon(
    env: dict[str, str], tmp_path: Path, bus: str
) -> tuple[subprocess.Popen, socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(10)
    child_env = {
        **os.environ,
        **env,
        "FAKE_BUS": bus,
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "200000",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_BUS], env=child_env, stderr=subprocess.PIPE, text=True
    )
    return proc, server


def _wait_for(server: socket.socket, needle: bytes) -> list[bytes]:
    seen: list[bytes] = []
    while not any(needle in m for m in seen):
        seen.append(server.recv(4096))
    return seen


def test_ready_after_bus_and_coldplug_then_reload_watchdog_and_sigterm_exit_0(
    env: dict[str, str], tmp_path: Path
) -> None:
    proc, server = _run_daemon(env, tmp_path, "ready")
    try:
        first = _wait_for(server, b"READY=1")
        assert first[0] == b"STATUS=Discovering remote processors"
        assert first[-1] == b"READY=1\nSTATUS=No remote processors found"
        assert b"WATCHDOG=1" in _wait_for(server, b"WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        assert _wait_for(server, b"RELOADING=1")[-1].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        server.close()
    stderr = proc.stderr.read()
    assert "configuration reloaded" in stderr and "Traceback" not in stderr


def test_losing_the_bus_name_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    proc, server = _run_daemon(env, tmp_path, "lost")
    try:
        assert proc.wait(10) == 1
    finally:
        proc.kill()
        server.close()
    assert "the name is taken" in proc.stderr.read()


def test_start_leaves_rarely_used_stdlib_modules_unloaded() -> None:
    """Issue 8 (RSS): hashlib (OpenSSL's digests, ~0.6 MiB resident) is needed
    only when a coredump is saved, difflib only for a mistyped config key."""
    code = ("import sys, rprocd.daemon, rprocd.bus.service, rprocd.discovery; "
            "print(sorted({'hashlib', 'difflib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
