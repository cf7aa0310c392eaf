"""Saved coredumps of the cores: `CoredumpDirectory=`, rotated to `CoredumpKeep=`.

One dump is three files sharing a stem, the dump's id:

    <core>-<YYYYmmddTHHMMSS>-<n>.core    the ELF core as the kernel produced it
    <core>-<YYYYmmddTHHMMSS>-<n>.trace   the firmware's last trace text (if any)
    <core>-<YYYYmmddTHHMMSS>-<n>.json    metadata; the dump exists once this exists

Why this shape:
- Every file is written under a dot-name, fsynced, then renamed, the `.json`
  last, so a power cut or a full disk never leaves a half dump that `list()`
  shows; failures remove what this save wrote and raise `CoredumpError`.
- The time is the crash time in UTC (no DST ambiguity); `n` is a per-core
  sequence (highest present + 1) taken under a lock together with an
  `O_EXCL` temporary, so two saves of one core at once (a crash while the
  previous dump is still written) get two names and both survive.
- The firmware's sha256 says which build crashed even after it was replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import devcoredump

#: `dump` for `save`: the bytes, or a function that gets a `write(bytes)` callable.
DumpSource = bytes | Callable[[Callable[[bytes], object]], object]
Entry = dict[str, Any]

FORMAT_VERSION = 1
_SUFFIXES = (".json", ".core", ".trace")  # removal order: the index first
_ID = re.compile(r"^(?P<core>[A-Za-z0-9_.+-]+)-(?P<time>\d{8}T\d{6})-(?P<n>\d+)$")
_TMP = re.compile(r"^\.(?P<stem>.+)\.(core|trace|json)\.tmp$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")

_HINTS = {
    errno.ENOSPC: "the disk is full; free space or lower CoredumpKeep=",
    errno.EDQUOT: "the disk quota is exhausted; free space or lower CoredumpKeep=",
    errno.EROFS: "the file system is read-only; point CoredumpDirectory= at a writable one",
    errno.EACCES: "rprocd may not write there; fix the directory's owner or CoredumpDirectory=",
    errno.EPERM: "rprocd may not write there; fix the directory's owner or CoredumpDirectory=",
    errno.EFBIG: "the dump is larger than the limit",
}


class CoredumpError(OSError):
    """A dump could not be saved; nothing of it is left behind. `errno` is the cause."""


def safe_name(core: str) -> str:
    """A kernel name as a file-name part (anything odd, and leading dots, become `_`)."""
    safe = _UNSAFE.sub("_", core)
    return "_" * (len(safe) - len(safe.lstrip("."))) + safe.lstrip(".") or "_"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def sha256_file(path: Path | None) -> str:
    """Hex sha256 of a file, "" if there is none or it cannot be read."""
    if path is None:
        return ""
    import hashlib  # only when a dump is saved: OpenSSL's digests cost ~0.6 MiB RSS at start

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


@dataclass
class _Part:
    """One file being written: its temporary and final names."""

    tmp: Path
    final: Path
    fd: int = -1


class CoredumpStore:
    """The dump directory. Thread-safe: saves run on worker threads, `list()` anywhere.

    `keep` is CoredumpKeep=, the dumps kept per core; with 0 `collect()` stores
    nothing (it only dismisses) and a direct `save()` keeps just the newest."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # stems being written by this process
        self._cleaned = False

    # -- writing -------------------------------------------------------------

    def save(
        self,
        core: str,
        device: str,
        crash_type: str,
        time_usec: int,
        dump: DumpSource,
        *,
        firmware: str = "",
        firmware_path: Path | None = None,
        trace: bytes | None = None,
        keep: int | None = None,
    ) -> Path:
        """Store one dump and return the path of its `.core` file.

        `dump` is the bytes or `fn(write)` that streams them (see
        `devcoredump.copy_to`). Rotation to `keep` (default: the store's) of
        this core follows a success.
        Raises `CoredumpError` (nothing left behind) on any OS error, also one
        raised by `dump`; other exceptions from `dump` propagate after cleanup."""
        stem, parts = self._reserve(core, time_usec, trace is not None)
        try:
            try:
                size, digest, head = self._write_dump(parts[".core"], dump)
                if trace is not None:
                    _write_all(parts[".trace"].fd, trace)
                meta: Entry = {
                    "version": FORMAT_VERSION,
                    "id": stem,
                    "core": core,
                    "device": device,
                    "firmware": firmware,
                    "firmware_sha256": sha256_file(firmware_path),
                    "crash_type": crash_type,
                    "time_usec": int(time_usec),
                    "time": _iso(time_usec),
                    "format": "ELF" if head.startswith(b"\x7fELF") else "raw",
                    "size": size,
                    "sha256": digest,
                    "core_file": parts[".core"].final.name,
                    "trace_file": parts[".trace"].final.name if trace is not None else "",
                    "trace_size": len(trace) if trace is not None else 0,
                }
                text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
                _write_all(parts[".json"].fd, text.encode())
                for part in parts.values():  # data on disk before any name appears
                    os.fsync(part.fd)
                    os.close(part.fd)
                    part.fd = -1
                for suffix in (".core", ".trace", ".json"):  # the index last
                    if suffix in parts:
                        os.replace(parts[suffix].tmp, parts[suffix].final)
                _fsync_dir(self.directory)
            except OSError as exc:
                self._discard(parts, renamed=True)
                raise self._error(core, exc) from exc
            except BaseException:
                self._discard(parts, renamed=True)
                raise
        finally:
            with self._lock:
                self._busy.discard(stem)
        self.rotate(core, keep)
        return parts[".core"].final

    def _reserve(self, core: str, time_usec: int, with_trace: bool) -> tuple[str, dict[str, _Part]]:
        """Pick a free stem and create its temporaries (O_EXCL), under the lock."""
        safe = safe_name(core)
        stamp = datetime.fromtimestamp(time_usec / 1e6, timezone.utc).strftime("%Y%m%dT%H%M%S")
        with self._lock:
            try:
                self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
                names = os.listdir(self.directory)
                if not self._cleaned:
                    self._cleanup(names)
                    names = os.listdir(self.directory)
            except OSError as exc:
                raise self._error(core, exc) from exc
            taken = (_match_id(stem) for stem in _stems(names))
            n = 1 + max((int(m["n"]) for m in taken if m and m["core"] == safe), default=0)
            suffixes = (".core", ".trace", ".json") if with_trace else (".core", ".json")
            while True:
                stem = f"{safe}-{stamp}-{n}"
                parts = {s: _Part(self.directory / f".{stem}{s}.tmp", self.directory / f"{stem}{s}")
                         for s in suffixes}
                try:
                    self._create(parts)
                except FileExistsError:
                    n += 1
                    continue
                except OSError as exc:
                    raise self._error(core, exc) from exc
                self._busy.add(stem)
                return stem, parts

    @staticmethod
    def _create(parts: dict[str, _Part]) -> None:
        made: list[_Part] = []
        try:
            for part in parts.values():
                if os.path.lexists(part.final):
                    raise FileExistsError(errno.EEXIST, "exists", str(part.final))
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                part.fd = os.open(part.tmp, flags, 0o640)
                made.append(part)
        except BaseException:
            for part in made:
                os.close(part.fd)
                part.fd = -1
                with contextlib.suppress(OSError):
                    os.unlink(part.tmp)
            raise

    @staticmethod
    def _write_dump(part: _Part, dump: DumpSource) -> tuple[int, str, bytes]:
        import hashlib  # lazily, as in sha256_file

        digest = hashlib.sha256()
        size = 0
        head = b""

        def write(chunk: bytes) -> None:
            nonlocal size, head
            if not chunk:
                return
            _write_all(part.fd, chunk)
            digest.update(chunk)
            if len(head) < 4:
                head += bytes(chunk[: 4 - len(head)])
            size += len(chunk)

        if isinstance(dump, (bytes, bytearray, memoryview)):
            write(bytes(dump))
        else:
            dump(write)
        return size, digest.hexdigest(), head

    @staticmethod
    def _discard(parts: dict[str, _Part], renamed: bool) -> None:
        for suffix in _SUFFIXES:
            part = parts.get(suffix)
            if part is None:
                continue
            if part.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(part.fd)
                part.fd = -1
            with contextlib.suppress(OSError):
                os.unlink(part.tmp)
            if renamed:
                with contextlib.suppress(OSError):
                    os.unlink(part.final)

    def _error(self, core: str, exc: OSError) -> CoredumpError:
        why = exc.strerror or str(exc)
        hint = _HINTS.get(exc.errno or 0, "see the daemon's log")
        return CoredumpError(
            exc.errno or errno.EIO,
            f"{core}: coredump not saved in {self.directory}: {why}; {hint}",
        )

    # -- rotation and cleanup -----------------------------------------------------

    def rotate(self, core: str, keep: int | None = None) -> list[str]:
        """Keep the `keep` (default: the store's) newest dumps of `core`, at
        least one; returns the ids removed."""
        keep = self.keep if keep is None else keep
        with self._lock:
            mine = [e for e in self.list() if e["core_name"] == safe_name(core)]
            old = [e["id"] for e in mine[max(keep, 1):] if e["id"] not in self._busy]
            for stem in old:
                self._remove_files(stem)
        return old

    def remove(self, dump_id: str) -> None:
        """Delete one dump (KeyError if unknown)."""
        self.get(dump_id)
        with self._lock:
            self._remove_files(dump_id)

    def _remove_files(self, stem: str) -> None:
        for suffix in _SUFFIXES:  # the .json first: list() stops showing it at once
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / f"{stem}{suffix}")

    def _cleanup(self, names: list[str]) -> None:
        """Once per process: leftovers of a save that died (temporaries, and
        files whose `.json` never appeared). Called under the lock."""
        self._cleaned = True
        stems_with_index = {n[:-5] for n in names if n.endswith(".json")}
        for name in names:
            m = _TMP.match(name)
            stem = name.rsplit(".", 1)[0]
            orphan = (
                not name.startswith(".")
                and (name.endswith(".core") or name.endswith(".trace"))
                and stem not in stems_with_index
                and stem not in self._busy
                and _match_id(stem) is not None
            )
            if (m and m.group("stem") not in self._busy) or orphan:
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)

    # -- reading ---------------------------------------------------------------

    def list(self, core: str | None = None) -> list[Entry]:
        """Saved dumps, newest first (crash time, then sequence); only complete ones.

        Each entry is the metadata plus `path` (the `.core` file), `trace_path`
        ("" without trace) and `core_name` (the core's part of the id)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        entries = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            entry = self._load(name[:-5])
            if entry is not None and (core is None or entry["core"] == core):
                entries.append(entry)
        entries.sort(key=lambda e: (e["time_usec"], e["seq"]), reverse=True)
        return entries

    def get(self, dump_id: str) -> Entry:
        """One dump by id (the file stem, as `list()` gives it); KeyError if unknown."""
        entry = self._load(dump_id) if _match_id(dump_id) else None
        if entry is None:
            raise KeyError(dump_id)
        return entry

    def _load(self, stem: str) -> Entry | None:
        m = _match_id(stem)
        if m is None:
            return None
        core_path = self.directory / f"{stem}.core"
        try:
            with open(self.directory / f"{stem}.json", encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not core_path.exists():
            return None
        trace_name = meta.get("trace_file") or ""
        trace_path = self.directory / trace_name if trace_name else None
        meta.setdefault("core", m["core"])
        meta.setdefault("time_usec", 0)
        meta["id"] = stem
        meta["seq"] = int(m["n"])
        meta["core_name"] = m["core"]
        meta["path"] = str(core_path)
        meta["trace_path"] = str(trace_path) if trace_path and trace_path.exists() else ""
        return meta


def _match_id(stem: str) -> re.Match[str] | None:
    return _ID.match(stem)


def _stems(names: list[str]) -> list[str]:
    """File stems of final and temporary files (both occupy a sequence number)."""
    out = []
    for name in names:
        m = _TMP.match(name)
        if m:
            out.append(m.group("stem"))
        elif not name.startswith("."):
            out.append(name.rsplit(".", 1)[0])
    return out


def _iso(time_usec: int) -> str:
    return datetime.fromtimestamp(time_usec / 1e6, timezone.utc).isoformat(timespec="microseconds")


def collect(
    store: CoredumpStore | None,
    sysfs: Path,
    devcd: str,
    *,
    core: str,
    device: str,
    crash_type: str,
    time_usec: int,
    firmware: str = "",
    firmware_path: Path | None = None,
    trace: bytes | None = None,
    keep: int | None = None,
    limit: int | None = None,
) -> Path | None:
    """Read a core's devcoredump completely, save it, and dismiss it in every case.

    Returns the saved `.core` path; None if the dump is not `device`'s (left
    untouched), or if `store` is None or `keep` (default: the store's) is 0
    (CoredumpKeep=0: dismissed unread). `limit` caps the dump's size (EFBIG).
    The dump is dismissed right after it is copied, before the fsyncs, so an
    inline-mode recovery and the kernel's next dump of this core wait as little
    as possible. Raises `CoredumpError` after dismissing when saving failed.
    Blocking: run it on a thread that never writes `recover`."""
    if devcoredump.owner(sysfs, devcd) != device:
        return None
    try:
        if store is None or (store.keep if keep is None else keep) <= 0:
            return None

        def source(write: Callable[[bytes], object]) -> None:
            devcoredump.copy_to(sysfs, devcd, write, limit)
            devcoredump.dismiss(sysfs, devcd)

        return store.save(core, device, crash_type, time_usec, source, firmware=firmware,
                          firmware_path=firmware_path, trace=trace, keep=keep)
    finally:
        with contextlib.suppress(OSError):
            devcoredump.dismiss(sysfs, devcd)  # no-op (False) when already dismissed
