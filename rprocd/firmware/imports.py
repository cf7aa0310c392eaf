"""Images handed over by unprivileged applications (`ImportFirmware(h fd, s name)`).

The caller opens the file; the daemon only reads the descriptor, never a path
the caller names, checks the bytes, and publishes them atomically inside the
firmware search path under a plain basename. Reading is bounded in size and
time so that a hostile descriptor cannot exhaust memory or stall an import.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rprocd.errors import InvalidArgs, InvalidFirmware
from rprocd.firmware.search import check_name
from rprocd.firmware.target import Target
from rprocd.firmware.validate import MAX_IMAGE_SIZE, validate_bytes

_CHUNK = 1024 * 1024
_TMP_PREFIX = ".import-"
_KINDS = {stat.S_IFIFO: "a pipe", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFLNK: "a symbolic link"}


class ImportStore:
    """The import directory: at most `keep` images, the oldest dropped first.
    `max_size` defaults to the limit `validate_file` applies before a start."""

    def __init__(self, directory: Path, search_dirs: Sequence[Path], keep: int = 8,
                 max_size: int = MAX_IMAGE_SIZE, read_timeout: float = 10.0):
        self.directory = Path(directory)
        self.search_dirs = list(search_dirs)
        self.keep = keep
        self.max_size = max_size
        self.read_timeout = read_timeout
        self._lock = threading.Lock()

    def import_fd(self, fd: int, name: str, target: Target | None) -> str:
        """Validate the descriptor's contents and store them as <directory>/<basename>;
        the name to pass to Start."""
        check_name(name)
        base = name.rsplit("/", 1)[-1]
        if not base or base.startswith("."):
            raise InvalidArgs(
                f"the firmware name '{name}' does not end in a plain file name: "
                "give a name such as 'app.elf'")
        relative, earlier = self._relative_name(base)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise InvalidArgs(
                f"the descriptor passed for '{base}' is {kind}: open the firmware file "
                "itself and pass that descriptor")
        data = self._read(fd, base)
        report = validate_bytes(data, target, self.directory / base)
        if report.errors:
            who = f"{target.core}: " if target is not None else ""
            raise InvalidFirmware(
                f"{who}firmware '{base}' was not imported: {report.errors[0].message}")
        for d in earlier:
            if (d / relative).is_file():
                raise InvalidArgs(
                    f"{d / relative} exists and the kernel would load it instead of the "
                    f"imported '{base}': remove it or import under another name")
        with self._lock:
            self._store(base, data)
            self._prune(base)
        return relative

    def _relative_name(self, base: str) -> tuple[str, list[Path]]:
        """The name relative to the first search directory holding the import
        directory, and the search directories tried before that one."""
        directory = Path(os.path.realpath(self.directory))
        for i, d in enumerate(self.search_dirs):
            try:
                inside = directory.relative_to(os.path.realpath(d))
            except ValueError:
                continue
            return (inside / base).as_posix(), self.search_dirs[:i]
        dirs = ", ".join(str(d) for d in self.search_dirs)
        raise InvalidArgs(
            f"the import directory {self.directory} is not inside the firmware search path "
            f"({dirs}): set ImportDirectory= to a directory under one of them")

    def _read(self, fd: int, base: str) -> bytes:
        """Everything from offset 0 (pread: the caller's file position is not
        touched), at most max_size bytes, within read_timeout seconds.

        The reading runs in a thread of its own on a duplicate of `fd`: a read
        that never returns (a file on a FUSE filesystem whose server stalls,
        which any user can mount) then costs that thread, not the import
        worker, and the caller gets its answer after read_timeout."""
        own = os.dup(fd)
        outcome: dict[str, object] = {}
        cancelled = threading.Event()
        deadline = time.monotonic() + self.read_timeout

        def reader() -> None:
            try:
                outcome["data"] = self._read_all(own, base, deadline, cancelled)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting side
                outcome["error"] = exc
            finally:
                os.close(own)

        thread = threading.Thread(target=reader, name=f"import-read {base[:40]}", daemon=True)
        thread.start()
        thread.join(self.read_timeout + 1)
        if thread.is_alive():
            cancelled.set()  # it stops at its next chunk, if its read ever returns
            raise InvalidArgs(
                f"reading '{base}' took more than {self.read_timeout:g} s: pass a local "
                "regular file")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["data"]  # type: ignore[return-value]

    def _read_all(self, fd: int, base: str, deadline: float,
                  cancelled: threading.Event) -> bytes:
        chunks = []
        total = 0
        while True:
            if time.monotonic() > deadline or cancelled.is_set():
                raise InvalidArgs(
                    f"reading '{base}' took more than {self.read_timeout:g} s: pass a local "
                    "regular file")
            try:
                chunk = os.pread(fd, min(_CHUNK, self.max_size + 1 - total), total)
            except OSError as exc:
                raise InvalidArgs(
                    f"the descriptor passed for '{base}' cannot be read ({exc.strerror}): "
                    "open the file for reading") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_size:
                raise InvalidArgs(
                    f"'{base}' is too large: more than {self.max_size // (1024 * 1024)} MiB")
        return b"".join(chunks)

    def _store(self, base: str, data: bytes) -> None:
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=_TMP_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fchmod(out.fileno(), 0o644)
                os.fsync(out.fileno())
            os.replace(tmp, self.directory / base)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _prune(self, newest: str) -> None:
        """Drop the oldest imports beyond `keep`, and leftovers of crashed imports."""
        entries = []
        with os.scandir(self.directory) as it:
            for entry in it:
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                    entries.append((entry.stat().st_mtime_ns, entry.name))
        entries.sort()
        excess = len(entries) - self.keep
        for _, name in entries:
            if excess <= 0:
                break
            if name == newest:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
            excess -= 1
