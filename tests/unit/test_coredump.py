"""The coredump store: atomic saves, metadata, rotation, full disks, concurrency,
and `collect()` reading + dismissing a core's devcoredump."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_devcoredump import CORE, WIFI, make_devcd

from rprocd import coredump, devcoredump
from rprocd.coredump import CoredumpError, CoredumpStore, collect

T0 = int(datetime(2026, 7, 12, 10, 15, 0, 250000, tzinfo=timezone.utc).timestamp() * 1e6)
ELF = b"\x7fELF\x01\x01\x01" + bytes(200)


@pytest.fixture
def store(tmp_path: Path) -> CoredumpStore:
    return CoredumpStore(tmp_path / "coredump", keep=3)


def files(store: CoredumpStore) -> list[str]:
    return sorted(os.listdir(store.directory)) if store.directory.exists() else []


def test_save_writes_core_trace_and_metadata(store: CoredumpStore, tmp_path: Path) -> None:
    fw = tmp_path / "rproc-m4-fw"
    fw.write_bytes(b"firmware image")
    path = store.save("m4", "remoteproc0", "watchdog", T0, ELF, firmware="rproc-m4-fw",
                      firmware_path=fw, trace=b"boot\nlast line\n")
    assert path == store.directory / "m4-20260712T101500-1.core"
    assert path.read_bytes() == ELF
    assert (store.directory / "m4-20260712T101500-1.trace").read_bytes() == b"boot\nlast line\n"
    meta = json.loads((store.directory / "m4-20260712T101500-1.json").read_text())
    assert meta == {
        "version": 1,
        "id": "m4-20260712T101500-1",
        "core": "m4",
        "device": "remoteproc0",
        "firmware": "rproc-m4-fw",
        "firmware_sha256": hashlib.sha256(b"firmware image").hexdigest(),
        "crash_type": "watchdog",
        "time_usec": T0,
        "time": "2026-07-12T10:15:00.250000+00:00",
        "format": "ELF",
        "size": len(ELF),
        "sha256": hashlib.sha256(ELF).hexdigest(),
        "core_file": "m4-20260712T101500-1.core",
        "trace_file": "m4-20260712T101500-1.trace",
        "trace_size": 15,
    }
    assert files(store) == [f"m4-20260712T101500-1.{s}" for s in ("core", "json", "trace")]
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_save_from_a_streaming_source_without_trace_or_firmware(store: CoredumpStore) -> None:
    def source(write):  # type: ignore[no-untyped-def]
        for i in range(10):
            write(bytes([i]) * 1000)

    path = store.save("m4", "remoteproc0", "fatal error", T0, source)
    entry = store.get(path.stem)
    assert entry["size"] == 10_000
    assert entry["format"] == "raw"
    assert entry["trace_file"] == "" and entry["trace_path"] == ""
    assert entry["firmware_sha256"] == ""
    assert entry["path"] == str(path)
    assert not (store.directory / f"{path.stem}.trace").exists()


def test_unreadable_firmware_gives_an_empty_hash(store: CoredumpStore, tmp_path: Path) -> None:
    path = store.save("m4", "remoteproc0", "watchdog", T0, ELF, firmware_path=tmp_path / "gone")
    assert store.get(path.stem)["firmware_sha256"] == ""


def test_list_newest_first_and_get_by_id(store: CoredumpStore) -> None:
    a = store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    b = store.save("m4", "remoteproc0", "mmufault", T0 + 5_000_000, ELF)
    c = store.save("m33", "remoteproc1", "watchdog", T0 + 1_000_000, ELF)
    assert [e["id"] for e in store.list()] == [b.stem, c.stem, a.stem]
    assert [e["id"] for e in store.list("m4")] == [b.stem, a.stem]
    assert store.get(b.stem)["crash_type"] == "mmufault"
    assert b.stem == "m4-20260712T101505-2"  # the sequence goes on per core
    assert c.stem == "m33-20260712T101501-1"
    for bad in ("nope", "../m4-20260712T101500-1", "m4-20260712T101500-9", ""):
        with pytest.raises(KeyError):
            store.get(bad)


def test_list_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert CoredumpStore(tmp_path / "none", 3).list() == []


def test_two_saves_in_the_same_second_get_two_names(store: CoredumpStore) -> None:
    a = store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    b = store.save("m4", "remoteproc0", "watchdog", T0, ELF + b"2")
    assert a != b and a.exists() and b.exists()
    assert [e["id"] for e in store.list()] == [b.stem, a.stem]


def test_rotation_keeps_the_newest_per_core(store: CoredumpStore) -> None:
    other = store.save("m33", "remoteproc1", "watchdog", T0, ELF)
    saved = [store.save("m4", "remoteproc0", "watchdog", T0 + i * 1_000_000, ELF, trace=b"t\n")
             for i in range(5)]
    assert [e["id"] for e in store.list("m4")] == [p.stem for p in reversed(saved[2:])]
    for old in saved[:2]:
        for suffix in (".core", ".json", ".trace"):
            assert not old.with_suffix(suffix).exists()
    assert other.exists()
    store.keep = 1
    assert store.rotate("m4") == [saved[3].stem, saved[2].stem]
    assert [e["id"] for e in store.list("m4")] == [saved[4].stem]


def test_keep_per_core_overrides_the_stores(store: CoredumpStore) -> None:
    for i in range(3):
        store.save("m4", "remoteproc0", "watchdog", T0 + i, ELF, keep=1)
        store.save("m33", "remoteproc1", "watchdog", T0 + i, ELF, keep=10)
    assert len(store.list("m4")) == 1
    assert len(store.list("m33")) == 3


def test_a_core_named_like_a_prefix_of_another_is_rotated_apart(tmp_path: Path) -> None:
    store = CoredumpStore(tmp_path / "d", keep=1)
    store.save("m4-a", "remoteproc1", "watchdog", T0, ELF)
    store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    store.save("m4", "remoteproc0", "watchdog", T0 + 1, ELF)
    assert sorted(e["core"] for e in store.list()) == ["m4", "m4-a"]


def test_odd_core_names_make_safe_file_names(store: CoredumpStore) -> None:
    path = store.save("cpu/0 dsp", "remoteproc3", "watchdog", T0, ELF)
    assert path.parent == store.directory
    assert path.name == "cpu_0_dsp-20260712T101500-1.core"
    assert store.get(path.stem)["core"] == "cpu/0 dsp"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_full_disk_leaves_nothing_behind(
    store: CoredumpStore, monkeypatch: pytest.MonkeyPatch, code: int, fail_at: int
) -> None:
    """The n-th write fails: dump chunk, trace, metadata, whatever comes."""
    kept = store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    before = files(store)
    real_write = os.write
    count = 0

    def full(fd: int, data: bytes) -> int:
        nonlocal count
        count += 1
        if count >= fail_at:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    def source(write):  # type: ignore[no-untyped-def]
        write(ELF)
        write(b"more")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(CoredumpError) as info:
        store.save("m4", "remoteproc0", "watchdog", T0 + 1, source, trace=b"trace\n")
    assert info.value.errno == code
    assert "m4: coredump not saved in" in str(info.value)
    assert "free space or lower CoredumpKeep=" in str(info.value)
    assert files(store) == before
    assert [e["id"] for e in store.list()] == [kept.stem]


def test_a_failing_fsync_or_rename_leaves_nothing_behind(
    store: CoredumpStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if str(dst).endswith(".json"):  # .core and .trace are already in place
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CoredumpError):
        store.save("m4", "remoteproc0", "watchdog", T0, ELF, trace=b"x\n")
    assert files(store) == []
    monkeypatch.undo()

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CoredumpError):
        store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    assert files(store) == []


@pytest.mark.parametrize(("code", "hint"), [
    (errno.EROFS, "read-only"),
    (errno.EACCES, "may not write there"),
])
def test_unwritable_directory(
    store: CoredumpStore, monkeypatch: pytest.MonkeyPatch, code: int, hint: str
) -> None:
    store.directory.mkdir()
    real_open = os.open

    def deny(path: object, flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).startswith(str(store.directory)) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(CoredumpError) as info:
        store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    assert info.value.errno == code and hint in str(info.value)
    assert files(store) == []


def test_an_exception_of_the_source_cleans_up_and_propagates(store: CoredumpStore) -> None:
    def broken(write):  # type: ignore[no-untyped-def]
        write(b"partial")
        raise ValueError("bug")

    with pytest.raises(ValueError):
        store.save("m4", "remoteproc0", "watchdog", T0, broken)
    assert files(store) == []


def test_a_crash_while_the_previous_dump_is_written_loses_neither(
    store: CoredumpStore,
) -> None:
    """Save 1 is inside its dump copy when save 2 (same core, same second)
    runs to the end; then save 1 finishes. Both are there."""
    inside, release = threading.Event(), threading.Event()
    result: dict[str, Path] = {}

    def slow(write):  # type: ignore[no-untyped-def]
        write(b"first")
        inside.set()
        assert release.wait(10)
        write(b" dump")

    t = threading.Thread(target=lambda: result.setdefault(
        "a", store.save("m4", "remoteproc0", "watchdog", T0, slow, trace=b"1\n")))
    t.start()
    assert inside.wait(10)
    assert store.list() == []  # a save in progress is not shown
    b = store.save("m4", "remoteproc0", "watchdog", T0, b"second dump", trace=b"2\n")
    release.set()
    t.join(10)
    a = result["a"]
    assert a != b
    assert a.read_bytes() == b"first dump" and b.read_bytes() == b"second dump"
    assert {e["id"] for e in store.list()} == {a.stem, b.stem}


def test_many_concurrent_saves(tmp_path: Path) -> None:
    store = CoredumpStore(tmp_path / "d", keep=100)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.save(f"core{i % 3}", f"remoteproc{i % 3}", "watchdog", T0, bytes([i]) * 100)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.list()) == 24
    assert len({e["sha256"] for e in store.list()}) == 24


def test_leftovers_of_a_dead_save_are_cleaned_once(store: CoredumpStore) -> None:
    store.directory.mkdir()
    d = store.directory
    (d / ".m4-20260101T000000-7.core.tmp").write_bytes(b"half")
    (d / "m4-20260101T000000-8.core").write_bytes(b"no index")  # died between renames
    (d / "m4-20260101T000000-8.trace").write_bytes(b"no index")
    (d / "notes.txt").write_text("not ours")
    (d / "m4-20260101T000000-9.json").write_text("{broken")  # no .core: never listed
    assert store.list() == []
    path = store.save("m4", "remoteproc0", "watchdog", T0, ELF)
    assert path.stem == "m4-20260712T101500-10"  # numbers of leftovers are not reused
    assert files(store) == sorted([
        "m4-20260101T000000-9.json", "notes.txt",
        "m4-20260712T101500-10.core", "m4-20260712T101500-10.json",
    ])


def test_remove(store: CoredumpStore) -> None:
    path = store.save("m4", "remoteproc0", "watchdog", T0, ELF, trace=b"x\n")
    store.remove(path.stem)
    assert files(store) == []
    with pytest.raises(KeyError):
        store.remove(path.stem)


# -- collect(): devcoredump -> store -----------------------------------------------


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    make_devcd(root, "devcd4", CORE, ELF * 100)
    make_devcd(root, "devcd5", WIFI, b"wifi dump")
    return root


def spy_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    writes: list[tuple[str, bytes]] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    return writes


def test_collect_saves_then_dismisses_before_the_fsyncs(
    store: CoredumpStore, sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_dismiss, real_fsync = devcoredump.dismiss, os.fsync
    monkeypatch.setattr(devcoredump, "dismiss",
                        lambda *a: events.append("dismiss") or real_dismiss(*a))
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    path = collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                   crash_type="watchdog", time_usec=T0, firmware="rproc-m4-fw", trace=b"t\n")
    assert path is not None and path.read_bytes() == ELF * 100
    assert events.index("dismiss") < events.index("fsync")
    entry = store.get(path.stem)
    assert (entry["firmware"], entry["crash_type"], entry["size"]) == (
        "rproc-m4-fw", "watchdog", len(ELF) * 100)


def test_collect_never_touches_another_devices_dump(
    store: CoredumpStore, sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sysfs / "class/devcoredump/devcd5/data"
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    for device in ("remoteproc0", "wifi"):
        assert collect(store, sysfs, "devcd5", core="m4", device=device,
                       crash_type="watchdog", time_usec=T0) is None
    # the dump of remoteproc0 is not given to another core either
    assert collect(store, sysfs, "devcd4", core="m33", device="remoteproc1",
                   crash_type="watchdog", time_usec=T0) is None
    assert not [p for p in opened if p.endswith("/data")]
    assert data.read_bytes() == b"wifi dump"
    assert store.list() == []


def test_collect_dismisses_even_when_the_disk_is_full(
    store: CoredumpStore, sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = spy_writes(monkeypatch)
    real_copy = devcoredump.copy_to

    def copy_then_full(sysfs: Path, devcd: str, write, limit=None):  # type: ignore[no-untyped-def]
        def failing(chunk: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(sysfs, devcd, failing, limit)

    monkeypatch.setattr(devcoredump, "copy_to", copy_then_full)
    with pytest.raises(CoredumpError) as info:
        collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                crash_type="watchdog", time_usec=T0)
    assert info.value.errno == errno.ENOSPC
    assert [w for w in writes if w[0].endswith("devcd4/data")] == [
        (str(sysfs / "devices/virtual/devcoredump/devcd4/data"), b"1")]
    assert files(store) == []


def test_collect_with_a_limit_keeps_nothing_and_dismisses(
    store: CoredumpStore, sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = spy_writes(monkeypatch)
    with pytest.raises(CoredumpError) as info:
        collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                crash_type="watchdog", time_usec=T0, limit=100)
    assert info.value.errno == errno.EFBIG
    assert [d for p, d in writes if p.endswith("devcd4/data")] == [b"1"]
    assert files(store) == []


@pytest.mark.parametrize("keep_nothing", ["no store", "keep 0"])
def test_collect_without_storing_only_dismisses(
    tmp_path: Path, sysfs: Path, monkeypatch: pytest.MonkeyPatch, keep_nothing: str
) -> None:
    store = None if keep_nothing == "no store" else CoredumpStore(tmp_path / "d", 0)
    writes = spy_writes(monkeypatch)
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(fd) or real_read(fd, n))
    assert collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                   crash_type="watchdog", time_usec=T0) is None
    assert [d for p, d in writes if p.endswith("devcd4/data")] == [b"1"]
    assert reads == []


def test_collect_with_keep_zero_for_this_core(
    store: CoredumpStore, sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = spy_writes(monkeypatch)
    assert collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                   crash_type="watchdog", time_usec=T0, keep=0) is None
    assert [d for p, d in writes if p.endswith("devcd4/data")] == [b"1"]
    assert files(store) == []


def test_collect_of_a_dump_gone_meanwhile(store: CoredumpStore, sysfs: Path) -> None:
    (sysfs / "devices/virtual/devcoredump/devcd4/data").unlink()  # expired under us
    with pytest.raises(CoredumpError) as info:
        collect(store, sysfs, "devcd4", core="m4", device="remoteproc0",
                crash_type="watchdog", time_usec=T0)
    assert info.value.errno == errno.ENOENT
    assert files(store) == []


def test_safe_name() -> None:
    assert coredump.safe_name("m4") == "m4"
    assert coredump.safe_name("../x") == "___x"
    assert coredump.safe_name(".hidden") == "_hidden"
    assert coredump.safe_name("") == "_"
