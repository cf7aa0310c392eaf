"""Issue 5, the firmware's log in a real systemd-journald: the daemon on the
emulated board forwards each trace line once, as the core itself
(SYSLOG_IDENTIFIER=m4) with RPROC_NAME/RPROC_DEVICE and the line's priority,
and its crash report carries the firmware's last lines (RPROC_TRACE).

Everything runs inside `unshare --user --map-root-user --mount --net`, as in
test_journal.py (which says why the user namespace keeps journald off the
host): journald on a tmpfs /run/systemd with a private journal directory,
then rprocd-sim with the daemon, started by a small driver that uses the
same harness as the other integration tests (test_api_board.SimBoard).
`INVOCATION_ID` makes the daemon log to the journal as under systemd; trace
lines go there whenever the journal socket exists. `journalctl --directory`
reads the result back outside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from test_api_board import needs_sim
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import needs_sim

from rprocd import events
from tests.journald import JOURNALD, START

REPO = Path(__file__).resolve().parents[2]

pytestmark = [needs_sim, pytest.mark.skipif(
    JOURNALD is None or not shutil.which("unshare") or not shutil.which("journalctl")
    or os.geteuid() != 0 or not Path("/etc/systemd").is_dir(),
    reason="needs root, unshare, journalctl, systemd-journald and /etc/systemd",
)]

NAMESPACE_SCRIPT = START + r"""

status=0
"$PYTHON" -c "$DRIVER" || status=$?
journalctl --sync || true
kill -TERM "$jpid"
wait "$jpid" || true
exit "$status"
"""

# Inside the namespace: the board, the daemon, one start, one crash.
DRIVER = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from test_api_board import BUS_NAME, board, wait_until

out = Path(os.environ["OUT"])
with board("stm32mp157f-dk", firmware=("m4-good.elf",)) as sim:
    try:
        run = sim.rprocctl("start", "m4", "m4-good.elf")
        assert run.returncode == 0, run.stderr
        m4 = sim.pydbus().get(BUS_NAME, "/org/rprocd1/processor/m4")
        # 100 ms per line; the daemon reads the buffer on its 1 s poll
        wait_until(lambda: m4.ReadTrace("").count("\n") >= 12, timeout=20, what="12 lines")
        time.sleep(1.5)
        before = m4.ReadTrace("")
        crash = subprocess.run(
            ["sh", "-c", "echo 1 > /sys/kernel/debug/remoteproc/remoteproc0/crash"],
            env=sim.env, capture_output=True, text=True)
        assert crash.returncode == 0, crash.stderr
        wait_until(lambda: m4.CrashCount == 1 and m4.State == "running", timeout=20,
                   what="crash seen and recovered")
        time.sleep(1.5)
        after = m4.ReadTrace("")
        (out / "result.json").write_text(json.dumps({"before": before, "after": after}))
    except BaseException:
        (out / "sim.log").write_text(sim.daemon_log())
        raise
"""


def plain(line: str) -> str:
    """A trace line as journald shows it: a leading `<N>` priority is taken off."""
    return line[3:] if len(line) > 2 and line[0] == "<" and line[2] == ">" else line


def journal(jdir: Path, *matches: str) -> list[dict]:
    read = subprocess.run(["journalctl", f"--directory={jdir}", "--no-pager", "-o", "json",
                           *matches], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    return [json.loads(line) for line in read.stdout.splitlines()]


def test_trace_lines_reach_journald_as_the_core(tmp_path: Path):
    jdir, out = tmp_path / "journal", tmp_path / "out"
    jdir.mkdir()
    out.mkdir()
    env = {
        **os.environ, "JDIR": str(jdir), "OUT": str(out), "JOURNALD": JOURNALD,
        "PYTHON": sys.executable, "DRIVER": DRIVER,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "integration"), str(REPO)]),
        "INVOCATION_ID": "0123456789abcdef0123456789abcdef",  # the daemon logs to journald
    }
    for name in ("JOURNAL_STREAM", "LD_PRELOAD", "UMOCKDEV_DIR"):
        env.pop(name, None)
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net",
                          "sh", "-c", NAMESPACE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=240)
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"no user namespaces here: {run.stderr.strip()}")
    logs = "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')}"
                   for p in sorted(out.iterdir()) if p.suffix == ".log")
    assert run.returncode == 0, run.stdout + run.stderr + logs
    result = json.loads((out / "result.json").read_text())

    # Each line of the firmware, once, as the core itself.
    records = journal(jdir, "SYSLOG_IDENTIFIER=m4")
    assert records, f"no journal entry with SYSLOG_IDENTIFIER=m4{logs}"
    for record in records:
        assert (record["RPROC_NAME"], record["RPROC_DEVICE"]) == ("m4", "remoteproc0"), record
    messages = [r["MESSAGE"] for r in records]
    banner = "rprocd-sim: m4-good.elf booted"
    assert messages.count(banner) == 2, f"not both runs (before, after the crash): {messages}"
    second = messages.index(banner, 1)
    # Each run's lines in the firmware's order, each once: a prefix of what
    # the buffer held (the lines of the last poll interval before the crash
    # are lost when the kernel recovers the core before the daemon reads it
    # again; the daemon polls every 1 s, the firmware writes every 100 ms).
    for forwarded, text, lag in ((messages[:second], result["before"], 12),
                                 (messages[second:], result["after"], 25)):
        held = [plain(line) for line in text.splitlines() if line.strip()]
        assert forwarded == held[:len(forwarded)], (forwarded, held)
        assert len(forwarded) >= len(held) - lag, (forwarded, held)
    # The priority a line carries becomes the entry's; the marker is taken off.
    by_text = {r["MESSAGE"]: r for r in records}
    timeout = next(m for m in by_text if "sensor timeout" in m)
    assert by_text[timeout]["PRIORITY"] == "3" and not timeout.startswith("<"), by_text[timeout]
    late = next(m for m in by_text if "ADC sample" in m)
    assert by_text[late]["PRIORITY"] == "4", by_text[late]
    assert by_text["m4: uptime 2 s"]["PRIORITY"] == "6"

    # The daemon's own crash report names the core and carries the last lines.
    (crashed,) = journal(jdir, f"MESSAGE_ID={events.CRASHED}")
    assert (crashed["SYSLOG_IDENTIFIER"], crashed["RPROC_NAME"]) == ("rprocd", "m4"), crashed
    assert crashed["RPROC_CRASH_COUNT"] == "1", crashed
    assert "heartbeat 1" in crashed["RPROC_TRACE"], crashed
    # Nothing of the host's kernel log got in.
    everything = journal(jdir)
    assert "kernel" not in {r.get("_TRANSPORT") for r in everything}
