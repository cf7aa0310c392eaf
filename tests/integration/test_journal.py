"""The journal: rprocd's events in a real systemd-journald, and the catalog that
explains them.

A real journald runs in its own user, mount and network namespaces (unshare):
tmpfs over /run/systemd and /run/log, a private journal directory bound over
/run/log/journal, its own journald.conf. The user namespace is what keeps it
off the host: without it journald 252 would read the host's /dev/kmsg into the
test journal and switch the kernel's audit off ("Auditing in kernel turned
off"); inside it both are refused and journald carries on. A Python process
in the same namespaces logs through rprocd's own journal module (rprocd.journal,
the handler the daemon uses: upper-case `extra` keys become fields), and
`journalctl --directory` reads the result back. `journalctl -x` looks up the
catalog in the fixed /var/lib/systemd/catalog/database, so inside the
namespace a tmpfs there holds the database compiled from the installed
rprocd.catalog by `journalctl --root=DESTDIR --update-catalog`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from test_packaging import install_tree
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_packaging import install_tree

from rprocd import events
from tests.journald import JOURNALD, START

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "systemd" / "rprocd.catalog"
EVENTS = {name: value for name, value in vars(events).items() if name.isupper()}

needs_journald = pytest.mark.skipif(
    JOURNALD is None or not shutil.which("unshare") or not shutil.which("journalctl")
    or os.geteuid() != 0 or not Path("/etc/systemd").is_dir(),
    reason="needs root, unshare, journalctl, systemd-journald and /etc/systemd",
)


def catalog_entries(text: str) -> dict[str, tuple[dict[str, str], str]]:
    """{MESSAGE_ID: (headers, body)} of a catalog file."""
    entries = {}
    for block in re.split(r"^-- ", text, flags=re.M)[1:]:
        head, _, rest = block.partition("\n")
        headers_text, _, body = rest.partition("\n\n")
        headers = dict(line.split(": ", 1) for line in headers_text.splitlines())
        entries[head.strip()] = (headers, body.strip())
    return entries


def test_catalog_explains_every_message_id():
    entries = catalog_entries(CATALOG.read_text())
    assert set(entries) == set(EVENTS.values())
    for message_id, (headers, body) in entries.items():
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        assert set(headers) == {"Subject", "Defined-By", "Support", "Documentation"}, message_id
        assert headers["Defined-By"] == "rprocd"
        assert "@RPROC_NAME@" in headers["Subject"]
        assert len(body.split()) > 30, f"{message_id}: say what happened and what to do"
        # Only the fields every event carries are substituted.
        assert set(re.findall(r"@(\w+)@", body)) <= {"RPROC_NAME", "RPROC_DEVICE"}, message_id


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An install root whose catalog database journalctl compiled."""
    root = tmp_path_factory.mktemp("root")
    install_tree(root, "--no-python", "--no-st-compat")
    out = subprocess.run(["journalctl", f"--root={root}", "--update-catalog"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return root


@pytest.mark.skipif(not shutil.which("journalctl"), reason="needs journalctl")
def test_journalctl_compiles_and_lists_the_catalog(catalog_root: Path):
    listed = subprocess.run(["journalctl", f"--root={catalog_root}", "--list-catalog"],
                            capture_output=True, text=True).stdout
    subjects = {line.split()[0]: line for line in listed.splitlines()}
    entries = catalog_entries(CATALOG.read_text())
    for message_id, (headers, _body) in entries.items():
        assert message_id in subjects, listed
        assert subjects[message_id].endswith(f"rprocd: {headers['Subject']}")


# Runs inside `unshare --user --map-root-user --mount --net`.
NAMESPACE_SCRIPT = START + r"""

"$PYTHON" -c "$LOGGER"
journalctl --sync
kill -TERM "$jpid"
wait "$jpid" || true

# journalctl -x reads /var/lib/systemd/catalog/database, nothing else.
mkdir -p /var/lib/systemd/catalog
mount -t tmpfs tmpfs /var/lib/systemd/catalog
cp "$CATALOG_DB" /var/lib/systemd/catalog/database
for id in $IDS; do
    journalctl --directory="$JDIR" --no-pager -x -o short MESSAGE_ID="$id" > "$OUT/$id.txt"
done
"""

# What the daemon does (rprocd/processor.py, Processor.log): the `rprocd`
# logger, routed by rprocd.journal.setup() to journald, one record per event
# with the core's fields and the event's MESSAGE_ID.
LOGGER = r"""
import json, logging, os
from rprocd import events, journal
journal.setup("info", env={"JOURNAL_STREAM": "8:1"})
handler = logging.getLogger("rprocd").handlers[0]
assert type(handler).__name__ == "JournalHandler", handler
log = logging.getLogger("rprocd.processor")
for name, message_id in json.loads(os.environ["EVENTS"]).items():
    log.info("m4: %s", name.lower().replace("_", " "), extra={
        "MESSAGE_ID": message_id, "RPROC_NAME": "m4", "RPROC_DEVICE": "remoteproc0",
        "RPROC_FIRMWARE": "m4-good.elf", "RPROC_STATE": "running"})
logging.getLogger("rprocd").error("no fields on this one")
"""


@needs_journald
def test_events_reach_a_real_journald_and_the_catalog_explains_them(
        tmp_path: Path, catalog_root: Path):
    jdir, out = tmp_path / "journal", tmp_path / "out"
    jdir.mkdir()
    out.mkdir()
    env = {
        **os.environ, "JDIR": str(jdir), "OUT": str(out), "JOURNALD": JOURNALD,
        "PYTHON": sys.executable, "LOGGER": LOGGER, "EVENTS": json.dumps(EVENTS),
        "IDS": " ".join(EVENTS.values()),
        "CATALOG_DB": str(catalog_root / "var/lib/systemd/catalog/database"),
        "PYTHONPATH": str(REPO),
    }
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net",
                          "sh", "-c", NAMESPACE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    if run.returncode != 0 and "unshare failed" in run.stderr:
        pytest.skip(f"no user namespaces here: {run.stderr.strip()}")
    journald_log = (out / "journald.log").read_text() if (out / "journald.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + journald_log

    for name, message_id in EVENTS.items():
        read = subprocess.run(["journalctl", f"--directory={jdir}", "--no-pager", "-o", "json",
                               f"MESSAGE_ID={message_id}"], capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        records = [json.loads(line) for line in read.stdout.splitlines()]
        assert len(records) == 1, (name, read.stdout)
        (record,) = records
        assert record["MESSAGE"] == f"m4: {name.lower().replace('_', ' ')}"
        assert record["SYSLOG_IDENTIFIER"] == "rprocd"
        assert record["PRIORITY"] == "6"
        assert (record["RPROC_NAME"], record["RPROC_DEVICE"], record["RPROC_FIRMWARE"],
                record["RPROC_STATE"]) == ("m4", "remoteproc0", "m4-good.elf", "running")
        # journalctl -x shows the catalog text with the entry's fields filled in.
        explained = (out / f"{message_id}.txt").read_text()
        headers, _body = catalog_entries(CATALOG.read_text())[message_id]
        subject = headers["Subject"].replace("@RPROC_NAME@", "m4")
        assert f"Subject: {subject}" in explained, explained
        assert "Defined-By: rprocd" in explained
        assert "remoteproc0" in explained and "@RPROC_" not in explained, explained

    # Finding one core's history by field works too.
    by_core = subprocess.run(["journalctl", f"--directory={jdir}", "--no-pager", "-o", "cat",
                              "RPROC_NAME=m4"], capture_output=True, text=True).stdout
    assert len(by_core.splitlines()) == len(EVENTS)
    plain = subprocess.run(["journalctl", f"--directory={jdir}", "--no-pager", "-o", "json",
                            "SYSLOG_IDENTIFIER=rprocd", "PRIORITY=3"],
                           capture_output=True, text=True).stdout
    (error,) = [json.loads(line) for line in plain.splitlines()]
    assert error["MESSAGE"] == "no fields on this one" and "RPROC_NAME" not in error
    # The namespace kept journald off the host: no kernel messages were imported.
    everything = subprocess.run(["journalctl", f"--directory={jdir}", "--no-pager", "-o", "json"],
                                capture_output=True, text=True).stdout
    transports = {json.loads(line).get("_TRANSPORT") for line in everything.splitlines()}
    assert "kernel" not in transports, transports
