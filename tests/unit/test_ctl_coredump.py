"""`rprocctl coredump list|show|export`: the daemon's coredump store read directly
(the D-Bus API v1 has no coredump calls), with no daemon and no bus; one-line
errors, exit 1 for an unknown dump and 4 when the files are not readable."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rprocd.coredump import CoredumpStore

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
T1, T2, T3 = 1_700_000_000_000_000, 1_700_000_050_000_000, 1_700_000_100_000_000
CORE1 = b"\x7fELF" + b"\x01" * 5000
OLDEST, M33, NEWEST = "m4-20231114T221320-1", "m33-20231114T221410-1", "m4-20231114T221500-2"


class Board:
    """A configuration directory and a state directory with three saved dumps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.state = root / "state"
        self.etc.mkdir()
        self.state.mkdir()
        self.directory = self.state / "coredump"
        store = CoredumpStore(self.directory, 5)
        store.save("m4", "remoteproc0", "watchdog", T1, CORE1, firmware="rproc-m4-fw",
                   trace=b"boot\n" + b"".join(b"tick %d\n" % i for i in range(12)) + b"oops\n")
        store.save("m33", "remoteproc1", "unknown", T2, b"raw dump")
        store.save("m4", "remoteproc0", "mmufault", T3, b"\x7fELF2", firmware="other.elf")
        self.sysfs = root / "sys"
        (self.sysfs / "class" / "remoteproc" / "remoteproc0").mkdir(parents=True)
        (self.sysfs / "class" / "remoteproc" / "remoteproc0" / "name").write_text("m4\n")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONFIGURATION_DIRECTORY": str(self.etc),
            "STATE_DIRECTORY": str(self.state),
            "RPROCD_SYSFS": str(self.sysfs),
            "TZ": "UTC",
            # No bus at all: these commands must not need one.
            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.root}/no-bus",
        }

    def rprocctl(self, *args: str, user: str = "root", text: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        prefix = NOBODY if user == "nobody" else []
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.run([*prefix, sys.executable, "-m", "rprocd.ctl", *args],
                              env=self.env(), text=text, timeout=60, **kwargs)


@pytest.fixture
def board() -> Iterator[Board]:
    # World-traversable, so that an unprivileged rprocctl reaches the files.
    root = Path(tempfile.mkdtemp(prefix="rprocctl-coredump-"))
    root.chmod(0o755)
    try:
        yield Board(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def error(out: subprocess.CompletedProcess, status: int, message: str) -> None:
    assert out.returncode == status, (out.stdout, out.stderr)
    assert out.stderr == f"rprocctl: {message}\n"
    assert not out.stdout


def test_list_newest_first_and_by_core(board: Board) -> None:
    out = board.rprocctl("coredump", "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "ID                     CORE  TIME                     TYPE      SIZE  FIRMWARE",
        f"{NEWEST}   m4    2023-11-14 22:15:00 UTC  mmufault  5B    other.elf",
        f"{M33}  m33   2023-11-14 22:14:10 UTC  unknown   8B    -",
        f"{OLDEST}   m4    2023-11-14 22:13:20 UTC  watchdog  4.9K  rproc-m4-fw",
    ]
    by_name = board.rprocctl("coredump", "list", "m4").stdout.splitlines()
    assert [line.split()[0] for line in by_name[1:]] == [NEWEST, OLDEST]
    by_device = board.rprocctl("coredump", "list", "remoteproc0").stdout.splitlines()
    assert by_device == by_name  # the device is looked up in sysfs
    assert board.rprocctl("coredump", "list", "m0").stdout == \
        f"no coredumps in {board.directory} of m0\n"


def test_list_json_is_the_saved_metadata(board: Board) -> None:
    out = board.rprocctl("--json", "coredump", "list")
    data = json.loads(out.stdout)
    assert [d["id"] for d in data] == [NEWEST, M33, OLDEST]
    oldest = data[2]
    assert (oldest["core"], oldest["device"], oldest["crash_type"], oldest["size"]) == (
        "m4", "remoteproc0", "watchdog", len(CORE1))
    assert oldest["path"] == str(board.directory / f"{OLDEST}.core")
    assert oldest["trace_path"] == str(board.directory / f"{OLDEST}.trace")
    assert "seq" not in oldest and "core_name" not in oldest
    assert json.loads(board.rprocctl("coredump", "list", "m33", "--json").stdout)[0]["id"] == M33


def test_no_directory_yet_is_no_coredumps(board: Board) -> None:
    shutil.rmtree(board.directory)
    out = board.rprocctl("coredump", "list")
    assert (out.returncode, out.stdout) == (0, f"no coredumps in {board.directory}\n")
    assert board.rprocctl("--json", "coredump", "list").stdout == "[]\n"


def test_coredump_directory_from_the_configuration(board: Board) -> None:
    moved = board.root / "crash"
    board.directory.rename(moved)
    (board.etc / "rprocd.conf.d").mkdir()
    (board.etc / "rprocd.conf.d" / "50-crash.conf").write_text(
        f"[Manager]\nCoredumpDirectory={moved}\n")
    out = board.rprocctl("--json", "coredump", "list")
    assert [d["path"] for d in json.loads(out.stdout)][0] == str(moved / f"{NEWEST}.core")
    (board.etc / "rprocd.conf").write_text("[Manager]\nCoredumpDirectory=relative\n")
    error(board.rprocctl("coredump", "list"), 1,
          f"{board.etc}/rprocd.conf:2: bad value 'relative' for CoredumpDirectory=: expected "
          "an absolute path, starting with /")


def test_show_text_and_json(board: Board) -> None:
    out = board.rprocctl("coredump", "show", OLDEST)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:7] == [
        OLDEST,
        "  Core:      m4 (remoteproc0)",
        "  Crash:     watchdog, 2023-11-14 22:13:20 UTC",
        "  Firmware:  rproc-m4-fw",
        f"  Coredump:  {board.directory}/{OLDEST}.core",
        f"             ELF, {len(CORE1)} bytes, sha256 "
        + json.loads((board.directory / f"{OLDEST}.json").read_text())["sha256"],
        f"  Trace:     {board.directory}/{OLDEST}.trace",
    ]
    assert lines[8] == "  Last trace lines:"
    assert lines[9:] == [f"    tick {i}" for i in range(3, 12)] + ["    oops"]
    saved = json.loads((board.directory / f"{M33}.json").read_text())
    data = json.loads(board.rprocctl("coredump", "show", M33, "--json").stdout)
    assert {k: data[k] for k in saved} == saved
    assert data["path"] == str(board.directory / f"{M33}.core") and data["trace_path"] == ""
    # LastCoredump (a path) and a file name are ids too.
    by_path = board.rprocctl("coredump", "show", str(board.directory / f"{M33}.core"))
    assert by_path.returncode == 0 and by_path.stdout.splitlines()[0] == M33


def test_unknown_coredump_exits_1(board: Board) -> None:
    for args in (["show", "m4-20990101T000000-1"], ["export", "nope", "-o", "-"]):
        ident = args[1]
        error(board.rprocctl("coredump", *args), 1,
              f"no coredump '{ident}' in {board.directory}; rprocctl coredump list shows them")


def test_export_to_a_file_a_directory_and_stdout(board: Board) -> None:
    target = board.root / "out.core"
    out = board.rprocctl("coredump", "export", OLDEST, "-o", str(target))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert target.read_bytes() == CORE1
    out = board.rprocctl("coredump", "export", NEWEST, "--output", str(board.root))
    assert out.returncode == 0, out.stderr
    assert (board.root / f"{NEWEST}.core").read_bytes() == b"\x7fELF2"
    piped = board.rprocctl("coredump", "export", OLDEST, text=False)  # stdout is a pipe
    assert (piped.returncode, piped.stdout) == (0, CORE1)
    dash = board.rprocctl("coredump", "export", M33, "-o", "-", text=False)
    assert dash.stdout == b"raw dump"
    summary = json.loads(board.rprocctl("--json", "coredump", "export", M33, "-o",
                                        str(target)).stdout)
    assert summary["Id"] == M33 and summary["Size"] == 8 and summary["Output"] == str(target)
    error(board.rprocctl("--json", "coredump", "export", M33), 2,
          "--json needs -o FILE: the dump itself goes to standard output")


def test_export_refuses_a_terminal_without_o(board: Board) -> None:
    leader, follower = pty.openpty()
    try:
        out = board.rprocctl("coredump", "export", OLDEST, stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert out.returncode == 2
    assert out.stderr == ("rprocctl: refusing to write a binary coredump to a terminal; use "
                          "-o FILE, -o - or a redirection\n")


def test_export_notices_a_damaged_dump(board: Board) -> None:
    (board.directory / f"{M33}.core").write_bytes(b"raw dumq")
    out = board.rprocctl("coredump", "export", M33, "-o", str(board.root / "x"))
    assert out.returncode == 1
    assert out.stderr == (f"rprocctl: {M33}: the .core does not match the sha256 saved with "
                          "it; the file was damaged after it was saved\n")


def test_not_readable_exits_4(board: Board) -> None:
    """The store is root's (0750, files 0640): a user gets exit 4, not an empty list."""
    board.directory.chmod(0o750)
    if os.geteuid() != 0:  # as a user: the directory owner would read it, so close it
        board.directory.chmod(0)
    denied = (f"cannot read the coredumps in {board.directory}: permission denied; the saved "
              "coredumps are root's (sudo rprocctl coredump ...)")
    user = "nobody" if os.geteuid() == 0 else "root"
    for args in (["list"], ["show", OLDEST], ["export", OLDEST, "-o", "-"]):
        error(board.rprocctl("coredump", *args, user=user), 4, denied)
    board.directory.chmod(0o755)  # the directory is readable, one file is not
    (board.directory / f"{M33}.json").chmod(0)
    if os.geteuid() == 0:
        error(board.rprocctl("coredump", "list", user="nobody"), 4,
              f"cannot read {M33}.json in {board.directory}: permission denied; the saved "
              "coredumps are root's (sudo rprocctl coredump ...)")
        error(board.rprocctl("coredump", "show", M33, user="nobody"), 4,
              f"cannot read {M33}.json in {board.directory}: permission denied; the saved "
              "coredumps are root's (sudo rprocctl coredump ...)")


def test_usage_errors_exit_2(board: Board) -> None:
    for args in (["coredump"], ["coredump", "show"], ["coredump", "frob"],
                 ["coredump", "list", "m4", "extra"]):
        out = board.rprocctl(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.splitlines()[-1].startswith("rprocctl: ")
