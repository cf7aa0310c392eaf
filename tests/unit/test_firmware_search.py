"""The kernel's firmware search path and name rules (ABI §5.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rprocd.errors import FirmwareNotFound, InvalidArgs
from rprocd.firmware import check_name, resolve, search_dirs
from rprocd.paths import Paths


def make_paths(tmp_path: Path) -> Paths:
    return Paths.from_environ({"RPROCD_SYSFS": str(tmp_path / "sys"),
                               "RPROCD_FIRMWARE_ROOT": str(tmp_path / "fw")})


def set_class_path(paths: Paths, value: bytes) -> None:
    param = paths.sysfs / "module" / "firmware_class" / "parameters" / "path"
    param.parent.mkdir(parents=True, exist_ok=True)
    param.write_bytes(value)


def test_kernel_order_then_extra(tmp_path):
    paths = make_paths(tmp_path)
    release = os.uname().release
    root = paths.firmware_root
    assert search_dirs(paths, [Path("/opt/fw")]) == [
        root / "updates" / release, root / "updates", root / release, root, Path("/opt/fw")]


@pytest.mark.parametrize("raw,first", [(b"/custom\n", "/custom"), (b"/custom", "/custom"),
                                       (b"/a b\n\n", "/a b\n")])
def test_firmware_class_path_comes_first(tmp_path, raw, first):
    paths = make_paths(tmp_path)
    set_class_path(paths, raw)
    assert search_dirs(paths)[0] == Path(first)


@pytest.mark.parametrize("raw", [b"", b"\n"])
def test_empty_firmware_class_path_is_skipped(tmp_path, raw):
    paths = make_paths(tmp_path)
    set_class_path(paths, raw)
    assert search_dirs(paths)[0] == paths.firmware_root / "updates" / os.uname().release


def test_duplicates_dropped(tmp_path):
    paths = make_paths(tmp_path)
    assert search_dirs(paths, [paths.firmware_root]).count(paths.firmware_root) == 1


@pytest.mark.parametrize("name", [
    "rproc-m4-fw", "app.elf", "sub/dir/app.elf", "foo..bin", " spaced name ", "ünï.elf",
    "a" * 255, "/".join(["b" * 200] * 20),
])
def test_good_names(name):
    check_name(name)


@pytest.mark.parametrize("name,word", [
    ("", "empty"),
    ("/lib/firmware/x.elf", "absolute"),
    ("../x.elf", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("..", "'..'"),
    ("a\0b", "NUL"),
    ("a\nb", "newline"),
    ("a\tb", "control"),
    ("a\x7fb", "control"),
    ("a\udcffb", "UTF-8"),
    ("a" * 256, "255"),
    ("/".join(["b" * 250] * 17), "4095"),
])
def test_bad_names(name, word):
    with pytest.raises(InvalidArgs) as exc:
        check_name(name)
    assert word in str(exc.value)


def test_resolve_first_directory_wins(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.elf").write_bytes(b"x")
    assert resolve("sub/x.elf", [a, b]) == a / "sub" / "x.elf"


def test_resolve_skips_directories_and_follows_symlinks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x.elf").mkdir(parents=True)
    b.mkdir()
    (tmp_path / "real.elf").write_bytes(b"x")
    (b / "x.elf").symlink_to(tmp_path / "real.elf")
    assert resolve("x.elf", [a, b]) == b / "x.elf"


def test_not_found_names_every_directory(tmp_path):
    dirs = [tmp_path / "updates", tmp_path]
    with pytest.raises(FirmwareNotFound) as exc:
        resolve("x.elf", dirs)
    assert str(exc.value) == (
        f"firmware 'x.elf' is not in {tmp_path / 'updates'}, {tmp_path}: put it there or add "
        "its directory to FirmwareDirectories=")


def test_resolve_checks_the_name_first(tmp_path):
    (tmp_path / "x.elf").write_bytes(b"x")
    with pytest.raises(InvalidArgs):
        resolve("../" + tmp_path.name + "/x.elf", [tmp_path])
