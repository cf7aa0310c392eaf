"""The emulator's plumbing in-process, without a mount: the FUSE operations'
sysfs semantics (rprocd/sim/vfs.py), the bus configuration (bus.py) and the
command line's helpers (cli.py)."""

from __future__ import annotations

import errno
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import mfusepy
import pytest

from rprocd.sim.board import get_board
from rprocd.sim.bus import bus_config, parse_allowed, policy_file
from rprocd.sim.cli import merge_boards, parse_args, write_env_file
from rprocd.sim.interfaces import SimFile
from rprocd.sim.vfs import SimFS, SimTree


class Store:
    """A kernel attribute that records its writes."""

    def __init__(self, value: bytes = b"offline\n") -> None:
        self.value = value
        self.writes: list[bytes] = []
        self.reads = 0

    def read(self) -> bytes:
        self.reads += 1
        return self.value

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        if data == b"bad":
            raise OSError(errno.EINVAL, "bad")
        if data == b"bug":
            raise KeyError("emulator bug")
        return len(data)


@pytest.fixture
def fs() -> tuple[SimFS, Store]:
    tree = SimTree()
    store = Store()
    tree.add_file("/devices/x/state", SimFile(0o644, store.read, store.write))
    tree.add_file("/devices/x/name", SimFile(0o444, lambda: b"m4\n"))
    tree.add_file("/devices/x/crash", SimFile(0o200, None, store.write))
    tree.add_symlink("/class/r/x", "../../devices/x")
    tree.add_dir("/.hidden/knob")
    tree.hidden.add(".hidden")
    return SimFS(tree), store


def errno_of(call, *args) -> int:  # noqa: ANN001
    with pytest.raises(mfusepy.FuseOSError) as info:
        call(*args)
    return info.value.errno


def test_getattr_modes_sizes_and_inodes(fs: tuple[SimFS, Store]) -> None:
    ops, _ = fs
    state = ops.getattr("/devices/x/state")
    assert state["st_mode"] == stat.S_IFREG | 0o644 and state["st_size"] == 4096
    assert ops.getattr("/class/r/x")["st_mode"] == stat.S_IFLNK | 0o777
    assert stat.S_ISDIR(ops.getattr("/")["st_mode"])
    assert ops.getattr("/")["st_ino"] > 1  # umockdev must not mistake it for sysfs
    assert errno_of(ops.getattr, "/devices/y") == errno.ENOENT
    assert ops.readlink("/class/r/x") == "../../devices/x"


def test_readdir_has_inodes_and_hides_hidden_entries(fs: tuple[SimFS, Store]) -> None:
    ops, _ = fs
    root = {name: attrs for name, attrs, _ in ops.readdir("/", 0)}
    assert set(root) == {".", "..", "devices", "class"}
    assert all(attrs["st_ino"] for attrs in root.values())
    assert stat.S_ISDIR(ops.getattr("/.hidden/knob")["st_mode"])


def test_open_checks_the_mode_even_for_root(fs: tuple[SimFS, Store]) -> None:
    ops, _ = fs
    assert errno_of(ops.open, "/devices/x/name", os.O_WRONLY) == errno.EACCES
    assert errno_of(ops.open, "/devices/x/name", os.O_RDWR) == errno.EACCES
    assert errno_of(ops.open, "/devices/x/crash", os.O_RDONLY) == errno.EACCES
    assert errno_of(ops.open, "/devices/x", os.O_RDONLY) == errno.EISDIR
    assert ops.open("/devices/x/crash", os.O_WRONLY | os.O_TRUNC)


def test_read_is_produced_at_offset_zero_and_sliced(fs: tuple[SimFS, Store]) -> None:
    ops, store = fs
    fh = ops.open("/devices/x/state", os.O_RDONLY)
    assert ops.read("/devices/x/state", 3, 0, fh) == b"off"
    store.value = b"running\n"
    assert ops.read("/devices/x/state", 100, 3, fh) == b"line\n"  # same snapshot
    assert ops.read("/devices/x/state", 100, 8, fh) == b""
    assert ops.read("/devices/x/state", 100, 0, fh) == b"running\n"  # re-read at 0
    ops.release("/devices/x/state", fh)


def test_one_store_call_per_write(fs: tuple[SimFS, Store]) -> None:
    ops, store = fs
    fh = ops.open("/devices/x/state", os.O_WRONLY)
    assert ops.truncate("/devices/x/state", 0, fh) == 0  # `>` is harmless
    assert ops.write("/devices/x/state", b"start\n", 123, fh) == 6  # offset ignored
    assert ops.write("/devices/x/state", b"", 0, fh) == 0  # never reaches the store
    assert store.writes == [b"start\n"]
    assert errno_of(ops.write, "/devices/x/state", b"bad", 0, fh) == errno.EINVAL


def test_an_emulator_bug_is_eio_and_recorded(fs: tuple[SimFS, Store]) -> None:
    ops, _ = fs
    fh = ops.open("/devices/x/state", os.O_WRONLY)
    assert errno_of(ops.write, "/devices/x/state", b"bug", 0, fh) == errno.EIO
    assert len(ops.internal_errors) == 1 and "KeyError" in ops.internal_errors[0]


def test_nothing_is_created_removed_or_renamed(fs: tuple[SimFS, Store]) -> None:
    ops, _ = fs
    assert errno_of(ops.create, "/devices/x/new", 0o644, os.O_WRONLY) == errno.EACCES
    assert errno_of(ops.mkdir, "/devices/y", 0o755) == errno.EPERM
    assert errno_of(ops.unlink, "/devices/x/state") == errno.EPERM
    assert errno_of(ops.rmdir, "/devices/x") == errno.EPERM
    assert errno_of(ops.rename, "/devices/x/state", "/devices/x/s") == errno.EPERM
    assert errno_of(ops.symlink, "/devices/x/l", "state") == errno.EPERM
    assert errno_of(ops.chmod, "/devices/x/state", 0o777) == errno.EPERM


def test_tree_replace_and_dangling_links() -> None:
    tree = SimTree()
    tree.add_dir("/devices/x")
    tree.add_symlink("/class/r/x", "../../devices/x")
    tree.add_symlink("/class/r/y", "../../devices/y")
    assert tree.dangling_links("/class/r") == ["/class/r/y"]
    tree.replace("/ctl", {"a/hang": SimFile(0o644, lambda: b"0\n")})
    assert tree.listdir("/ctl/a") == ["hang"]
    tree.replace("/ctl", {})
    assert tree.listdir("/ctl") == []


def test_bus_config_is_a_system_bus_with_the_project_policy(tmp_path: Path) -> None:
    text = bus_config(tmp_path / "sock", policy_file())
    root = ET.fromstring(text.split("\n", 2)[2])  # past the DOCTYPE
    assert root.findtext("type") == "system"
    assert root.findtext("listen") == f"unix:path={tmp_path / 'sock'}"
    include = root.find("include")
    assert include is not None and include.get("ignore_missing") == "yes"
    assert include.text == str(policy_file())
    assert policy_file().name == "org.rprocd1.conf"
    default = root.find("policy[@context='default']")
    assert default is not None and default.find("deny[@own='*']") is not None
    assert parse_allowed(" a, b ,,") == ["a", "b"] and parse_allowed(None) == []


def test_command_line() -> None:
    args = parse_args(["--board", "generic:2", "--option", "recovery=disabled", "--daemon",
                       "--", "sh", "-c", "exit 0"])
    assert args.board == ["generic:2"] and args.daemon and args.cmd == ["sh", "-c", "exit 0"]
    with pytest.raises(SystemExit):
        parse_args(["--board", "x"])  # no CMD


def test_merged_boards_keep_every_core() -> None:
    board = merge_boards([get_board("stm32mp157f-dk"), get_board("stm32mp257f-dk")])
    assert [c.name for c in board.cores] == ["m4", "m33", "m0"]
    with pytest.raises(ValueError, match="core0"):
        merge_boards([get_board("generic:1"), get_board("generic:1")])


def test_env_file_is_written_whole(tmp_path: Path) -> None:
    target = tmp_path / "env"
    write_env_file(target, {"B": "2", "A": "1", "BAD": "x\ny"})
    assert target.read_text() == "A=1\nB=2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["env"]
