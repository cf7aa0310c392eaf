"""Issue 6, input limits: every hostile input a caller or a file can hand the
daemon, through D-Bus, as root and as an unprivileged caller holding the
polkit grant (where a grant is needed at all): firmware names, imported
images and the descriptors they come as, trace buffer names, processor
names, configuration values.

Each is answered with its named error and a one-line message naming the
problem; after each the daemon still answers, nothing was lost (the kernel's
state and firmware, the daemon's properties, the configured firmware, the
import directory without stray files: `intact`).

Not testable through D-Bus, because the bus refuses the message before the
daemon sees it: a NUL byte or invalid UTF-8 in any string argument (D-Bus
strings are NUL-free UTF-8; dbus-daemon drops such a message and the
sender's connection). The daemon still refuses both in firmware names
(rprocd.firmware.search.check_name, tests/unit).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rprocd.firmware.validate import MAX_IMAGE_SIZE

try:
    from test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        PROCESSOR,
        PROPERTIES,
        SimBoard,
        board,
        needs_sim,
        wait_until,
    )
    from test_authorization import (
        ACCESS_DENIED,
        CONFIGURE,
        IMPORT,
        MANAGE,
        Call,
        Result,
        call_as,
        call_one,
        diff,
        finish_call,
        import_dir,
        listing,
        polkit_mock,
        snapshot,
        start_call_as,
    )
    from test_sim_tools import M4, MP1, T
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        FIRMWARE,
        MANAGER,
        MANAGER_PATH,
        PROCESSOR,
        PROPERTIES,
        SimBoard,
        board,
        needs_sim,
        wait_until,
    )
    from tests.integration.test_authorization import (
        ACCESS_DENIED,
        CONFIGURE,
        IMPORT,
        MANAGE,
        Call,
        Result,
        call_as,
        call_one,
        diff,
        finish_call,
        import_dir,
        listing,
        polkit_mock,
        snapshot,
        start_call_as,
    )
    from tests.integration.test_sim_tools import M4, MP1, T

pytestmark = needs_sim

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR = "org.rprocd1.Error."
GOOD = "m4-good.elf"
OTHER = "m4-quiet.elf"
CONFIG = f"[Processor m4]\nFirmware={GOOD}\nRestart=no\n"
USERS = ("root", "nobody")  # nobody always holds every grant here

# name -> words the message must contain
HOSTILE_NAMES = {
    "/etc/passwd": "absolute",
    "/lib/firmware/m4-good.elf": "absolute",
    "../m4-good.elf": "'..'",
    "rprocd/../../m4-good.elf": "'..'",
    "m4-good.elf\nrproc-m4-fw": "newline",
    "m4-good.elf\x1b[2J": "control character",
    "m4-good.elf\t": "control character",
    "x" * 5000: "5000 bytes long",
    "d/" + "a" * 300: "longer than 255 bytes",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimBoard]:
    """One board: the m4 runs m4-good.elf, which rprocd.conf names."""
    with board(MP1, config=CONFIG, firmware=(GOOD, OTHER)) as b:
        polkit_mock(b, "SetAllowed", "(as)", [MANAGE, IMPORT, CONFIGURE])
        b.pydbus().get(BUS_NAME, M4).Start(GOOD, timeout=T)
        wait_until(lambda: running_and_settled(b), what="m4 running with its rpmsg channel")
        yield b


def running_and_settled(sim: SimBoard) -> bool:
    m4 = sim.pydbus().get(BUS_NAME, M4)
    return m4.State == "running" and m4.RpmsgChannels == ["rpmsg-tty"]


def intact(sim: SimBoard, before: dict, what: str) -> list[str]:
    """Problems after a hostile input: the daemon must answer (as nobody too)
    and nothing it or the kernel holds may have changed."""
    wrong = []
    pid = int(sim.env["RPROCD_PID"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return [f"{what}: the daemon died"]
    (ping,) = call_as(sim, "nobody", Call(M4, PROPERTIES, "Get", "(ss)", (PROCESSOR, "State")))
    if not ping.ok:
        wrong.append(f"{what}: the daemon no longer answers: {ping}")
    changed = diff(before, snapshot(sim))
    if changed:
        wrong.append(f"{what}: changed {changed}")
    strays = [n for n in listing(import_dir(sim)) if n.startswith(".")]
    if strays:
        wrong.append(f"{what}: stray files in the import directory: {strays}")
    return wrong


def judge(result: Result, error: str, words: str, what: str) -> list[str]:
    if result.ok:
        return [f"{what}: succeeded ({result.value[:80]})"]
    if result.error != error or words not in result.message:
        return [f"{what}: {result.error}: {result.message[:200]} (expected {error}, '{words}')"]
    if "\n" in result.message or "Traceback" in result.message:
        return [f"{what}: the message is not one line: {result.message[:200]}"]
    return []


def import_call(fd: int, name: str = "hostile.elf", timeout: float = T) -> Call:
    return Call(MANAGER_PATH, MANAGER, "ImportFirmware", "(hs)", (0, name), fd, timeout)


# -- firmware names ----------------------------------------------------------------

def test_hostile_firmware_names(sim):
    """Start() (offline core), Restart() (running core), InspectFirmware() and
    ImportFirmware(): InvalidArgs naming the problem, nothing written to the
    kernel, nothing imported, the configured firmware unchanged."""
    m4 = sim.pydbus().get(BUS_NAME, M4)
    good = os.open(FIRMWARE / GOOD, os.O_RDONLY)
    wrong: list[str] = []
    try:
        before = snapshot(sim)
        assert before["m4"]["DefaultFirmware"] == GOOD
        for user in USERS:
            calls = []
            for name in HOSTILE_NAMES:
                calls += [Call(M4, PROCESSOR, "Restart", "(s)", (name,)),
                          Call(MANAGER_PATH, MANAGER, "InspectFirmware", "(s)", (name,)),
                          import_call(good, name)]
            results = call_as(sim, user, *calls)
            for call, result in zip(calls, results, strict=True):
                name = call.args[-1]
                wrong += judge(result, INVALID_ARGS, HOSTILE_NAMES[name], f"{user}: {call}")
            wrong += intact(sim, before, f"{user}: names on a running core")
        # Start, on the core offline; the empty name is refused by the import only.
        m4.Stop(timeout=T)
        before = snapshot(sim)
        for user in USERS:
            calls = [Call(M4, PROCESSOR, "Start", "(s)", (name,)) for name in HOSTILE_NAMES]
            calls.append(import_call(good, ""))
            results = call_as(sim, user, *calls)
            for call, result in zip(calls, results, strict=True):
                name = call.args[-1]
                wrong += judge(result, INVALID_ARGS, HOSTILE_NAMES.get(name, "empty"),
                               f"{user}: {call}")
                if call.method == "Start" and not result.message.startswith("m4: "):
                    wrong.append(f"{user}: {call}: the message does not name the core")
            wrong += intact(sim, before, f"{user}: names on an offline core")
    finally:
        os.close(good)
        if m4.State == "offline":
            m4.Start("", timeout=T)  # the configured firmware, untouched
        wait_until(lambda: running_and_settled(sim), what="m4 running again")
    assert m4.Firmware == GOOD
    assert not wrong, "\n".join(wrong)


# -- imported images and their descriptors -----------------------------------------

def test_hostile_descriptors_are_refused_without_reading_them(sim, tmp_path):
    """ImportFirmware() with what is not a readable regular file: fstat says
    what it is before any read, so a pipe that never ends stalls nothing."""
    tmp_path.chmod(0o755)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    image = tmp_path / "image.elf"
    image.write_bytes((FIRMWARE / GOOD).read_bytes())
    image.chmod(0o644)
    reader, writer = os.pipe()  # the write end stays open: no EOF ever
    sock_a, sock_b = socket.socketpair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "sock"))
    listener.listen()
    fds = {
        "fifo": (os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "a pipe"),
        "never-EOF pipe": (reader, "a pipe"),
        "socketpair": (sock_a.fileno(), "a socket"),
        "listening socket": (listener.fileno(), "a socket"),
        "directory": (os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), "a directory"),
        "/dev/zero": (os.open("/dev/zero", os.O_RDONLY), "a character device"),
        "write-only": (os.open(image, os.O_WRONLY), "cannot be read"),
        "O_PATH": (os.open(image, os.O_PATH), "cannot be read"),
    }
    owned = [fds["fifo"][0], fds["directory"][0], fds["/dev/zero"][0], fds["write-only"][0],
             fds["O_PATH"][0]]
    wrong: list[str] = []
    try:
        before = snapshot(sim)
        for user in USERS:
            calls = [import_call(fd, f"{label.replace('/', '')}.elf")
                     for label, (fd, _) in fds.items()]
            results = call_as(sim, user, *calls)
            for (label, (_fd, words)), result in zip(fds.items(), results, strict=True):
                wrong += judge(result, INVALID_ARGS, words, f"{user}: {label}")
            wrong += intact(sim, before, f"{user}: descriptors")

        # The never-ending pipe once more, watched: while its import is pending
        # (if it ever is), the main loop answers.
        pending = start_call_as(sim, "nobody", import_call(reader, "pipe.elf"))
        (state,) = call_as(sim, "nobody", Call(M4, PROPERTIES, "Get", "(ss)",
                                               (PROCESSOR, "State")))
        assert state.ok and state.value == "(<'running'>,)", state
        (late,) = finish_call(pending, timeout=T)
        wrong += judge(late, INVALID_ARGS, "a pipe", "pending pipe")
        wrong += intact(sim, before, "pending pipe")
    finally:
        for fd in owned + [reader, writer]:
            os.close(fd)
        sock_a.close()
        sock_b.close()
        listener.close()
    assert not wrong, "\n".join(wrong)


def test_a_call_without_its_descriptor(sim):
    """The 'h' argument naming no descriptor that came with the message."""
    before = snapshot(sim)
    wrong: list[str] = []
    for user in USERS:
        result = call_one(sim, user, Call(MANAGER_PATH, MANAGER, "ImportFirmware", "(hs)",
                                          (0, "nofd.elf")))
        wrong += judge(result, INVALID_ARGS, "no file descriptor came with the call",
                       f"{user}: no descriptor")
    wrong += intact(sim, before, "no descriptor")
    assert not wrong, "\n".join(wrong)


def test_images_too_large_empty_or_invalid(sim, tmp_path):
    """One byte over the limit (a sparse file: the daemon must not read it
    all), an empty file and a file that is no firmware."""
    tmp_path.chmod(0o755)
    big = tmp_path / "big.elf"
    with open(big, "wb") as out:
        out.truncate(MAX_IMAGE_SIZE + 1)
    empty = tmp_path / "empty.elf"
    empty.touch()
    text = tmp_path / "text.elf"
    text.write_text("#!/bin/sh\necho not firmware\n")
    cases = {
        "big": (big, INVALID_ARGS, f"more than {MAX_IMAGE_SIZE // (1024 * 1024)} MiB"),
        "empty": (empty, ERROR + "InvalidFirmware", "was not imported"),
        "text": (text, ERROR + "InvalidFirmware", "was not imported"),
    }
    opened = {label: os.open(path, os.O_RDONLY) for label, (path, *_) in cases.items()}
    wrong: list[str] = []
    try:
        before = snapshot(sim)
        for user in USERS:
            calls = [import_call(opened[label], f"{label}.elf") for label in cases]
            results = call_as(sim, user, *calls)
            for (label, (_p, error, words)), result in zip(cases.items(), results, strict=True):
                wrong += judge(result, error, words, f"{user}: {label}")
            wrong += intact(sim, before, f"{user}: images")
        # The limit itself is not off by one: exactly MAX_IMAGE_SIZE is read
        # (and refused as no firmware, not as too large).
        os.truncate(big, MAX_IMAGE_SIZE)
        (result,) = call_as(sim, "root", import_call(opened["big"], "big.elf"))
        wrong += judge(result, ERROR + "InvalidFirmware", "was not imported", "exactly the limit")
        wrong += intact(sim, before, "exactly the limit")
    finally:
        for fd in opened.values():
            os.close(fd)
    assert not wrong, "\n".join(wrong)


def test_a_regular_file_that_never_ends_stalls_nothing(sim, tmp_path):
    """A descriptor on a file in a FUSE filesystem the caller serves, whose read
    never returns (what any user can mount with fusermount): the import gives
    up with InvalidArgs naming the time limit, the main loop answers meanwhile,
    and the next import is not stuck behind it."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fs = BlockingFs(mountpoint)
    fs.start()
    fd = -1
    good = os.open(FIRMWARE / GOOD, os.O_RDONLY)
    wrong: list[str] = []
    try:
        fd = os.open(mountpoint / "endless.elf", os.O_RDONLY)
        assert stat.S_ISREG(os.fstat(fd).st_mode)
        before = snapshot(sim)
        pending = start_call_as(sim, "nobody", import_call(fd, "endless.elf", timeout=60))
        wait_until(lambda: fs.reads > 0, timeout=20, what="the daemon reading the file")
        # Meanwhile: reads, and an operation on the core, are answered.
        (state,) = call_as(sim, "nobody", Call(M4, PROPERTIES, "Get", "(ss)",
                                               (PROCESSOR, "State")))
        assert state.ok, state
        (late,) = finish_call(pending, timeout=60)
        wrong += judge(late, INVALID_ARGS, "took more than", "endless file")
        wrong += intact(sim, before, "endless file")
        # The import worker is free again: a good image imports at once.
        (result,) = call_as(sim, "nobody", import_call(good, "after-endless.elf", timeout=20))
        if not result.ok:
            wrong.append(f"import after the endless file: {result}")
    finally:
        os.close(good)
        if fd >= 0:
            os.close(fd)
        fs.stop()
    assert not wrong, "\n".join(wrong)


class BlockingFs:
    """A FUSE filesystem with one file, `endless.elf`, whose read blocks until
    the filesystem stops (mfusepy, like the emulator's /sys)."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.reads = 0
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import errno

        import mfusepy as fuse

        outer = self

        class Ops(fuse.Operations):
            use_ns = True

            def getattr(self, path: str, fh: int | None = None) -> dict:
                now = time.time_ns()
                if path == "/":
                    return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                            "st_atime": now, "st_mtime": now, "st_ctime": now}
                if path == "/endless.elf":
                    return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1,
                            "st_size": 1 << 20, "st_atime": now, "st_mtime": now,
                            "st_ctime": now}
                raise fuse.FuseOSError(errno.ENOENT)

            def readdir(self, path: str, fh: int) -> list[str]:
                return [".", "..", "endless.elf"]

            def open(self, path: str, flags: int) -> int:
                return 0

            def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
                outer.reads += 1
                outer.release.wait()
                return b""

        def run() -> None:
            fuse.FUSE(Ops(), str(self.mountpoint), foreground=True, allow_other=True,
                      direct_io=True)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_until(lambda: os.path.ismount(self.mountpoint), timeout=20,
                   what="the FUSE filesystem mounted")

    def stop(self) -> None:
        self.release.set()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
        if self.thread is not None:
            self.thread.join(10)


# -- trace buffer names ------------------------------------------------------------

def test_hostile_trace_buffer_names(sim):
    """ReadTrace() is open to everyone: any string that is not trace<N> is
    InvalidArgs, never a path; a well-formed absent buffer is BadState."""
    names = ("../trace0", "trace0/../../../../etc/passwd", "/etc/passwd", "trace", "trace-1",
             "TRACE0", "trace0\n", "trace0 ", "x" * 5000, "trace" + "9" * 5000)
    wrong: list[str] = []
    before = snapshot(sim)
    for user in USERS:
        calls = [Call(M4, PROCESSOR, "ReadTrace", "(s)", (n,)) for n in names]
        calls.append(Call(M4, PROCESSOR, "ReadTrace", "(s)", ("trace7",)))
        calls.append(Call(M4, PROCESSOR, "ReadTrace", "(s)", ("",)))
        results = call_as(sim, user, *calls)
        for name, result in zip(names, results, strict=False):
            wrong += judge(result, INVALID_ARGS, "is not a trace buffer", f"{user}: {name[:30]!r}")
        wrong += judge(results[-2], ERROR + "BadState", "no trace buffer 'trace7'", "trace7")
        if not results[-1].ok:
            wrong.append(f"{user}: ReadTrace('') failed: {results[-1]}")
        wrong += intact(sim, before, f"{user}: trace names")
    assert not wrong, "\n".join(wrong)


# -- processor names ---------------------------------------------------------------

def test_hostile_processor_names(sim):
    """GetProcessor() with names that are no processor, and calls on object
    paths no processor has: named errors, nothing started or stopped."""
    names = ("../x", "m4/../m4", "./m4", "/org/rprocd1/processor/m4", "", "*", "m4\n",
             "remoteproc0/..", "_6d4", "x" * 5000)
    wrong: list[str] = []
    before = snapshot(sim)
    for user in USERS:
        calls = [Call(MANAGER_PATH, MANAGER, "GetProcessor", "(s)", (n,)) for n in names]
        for path in ("/org/rprocd1/processor/_2e_2e", "/org/rprocd1/processor/m4/x",
                     "/org/rprocd1/processor/remoteproc0", "/org/rprocd1/processor"):
            calls.append(Call(path, PROCESSOR, "Stop"))
        results = call_as(sim, user, *calls)
        for call, result in zip(calls, results, strict=True):
            if call.method == "GetProcessor":
                wrong += judge(result, ERROR + "NoSuchProcessor", "known: m4",
                               f"{user}: GetProcessor({call.args[0][:30]!r})")
            elif result.ok or result.error == ACCESS_DENIED and user == "root":
                wrong.append(f"{user}: Stop on {call.path}: {result}")
        wrong += intact(sim, before, f"{user}: processor names")
    assert not wrong, "\n".join(wrong)


# -- configuration values ----------------------------------------------------------

HOSTILE_CONFIG = {
    "[Processor m4]\nFirmware=/etc/passwd\n": "Firmware=",
    "[Processor m4]\nFirmware=../m4-good.elf\n": "Firmware=",
    f"[Processor m4]\nFirmware={'x' * 5000}\n": "Firmware=",
    "[Processor m4]\nFirmware=m4-good.elf\x1b[2J\n": "Firmware=",
    "[Manager]\nPollIntervalSec=99999999999999999999s\n": "PollIntervalSec=",
    f"[Manager]\nPollIntervalSec={'9' * 400}\n": "PollIntervalSec=",
    "[Processor m4]\nRestartSec=100000h\n": "RestartSec=",
    "[Processor m4]\nShutdownTimeoutSec=99999999999s\n": "ShutdownTimeoutSec=",
    "[Processor m4]\nStartLimitIntervalSec=99999999999999s\n": "StartLimitIntervalSec=",
    "[Manager]\nImportDirectory=../tmp\n": "ImportDirectory=",
    "[Manager]\nAllowGroup=wheel;rm -rf\n": "AllowGroup=",
}


def test_hostile_configuration_values(sim):
    """Reload() (as root, and as nobody granted org.rprocd1.configure) of a
    drop-in with a value that must not reach the kernel or a timer: Failed
    with file:line naming the key, the configuration in force unchanged.
    (Typos and unknown keys: test_config_files.py.)"""
    dropins = Path(sim.env["CONFIGURATION_DIRECTORY"]) / "rprocd.conf.d"
    dropins.mkdir(exist_ok=True)
    dropin = dropins / "90-hostile.conf"
    wrong: list[str] = []
    before = snapshot(sim)
    try:
        for i, (text, key) in enumerate(HOSTILE_CONFIG.items()):
            user = USERS[i % 2]
            dropin.write_text(text)
            result = call_one(sim, user, Call(MANAGER_PATH, MANAGER, "Reload"))
            wrong += judge(result, ERROR + "Failed", f"{dropin}:2: bad value",
                           f"{user}: {text[:50]!r}")
            if key not in result.message:
                wrong.append(f"{user}: {text[:50]!r}: the message does not name {key}")
            wrong += intact(sim, before, f"{user}: {text[:50]!r}")
        dropin.write_bytes(b"[Processor m4]\nFirmware=\xff\xfe.elf\n")
        result = call_one(sim, "nobody", Call(MANAGER_PATH, MANAGER, "Reload"))
        wrong += judge(result, ERROR + "Failed", f"{dropin}: cannot read", "non-UTF-8 drop-in")
        wrong += intact(sim, before, "non-UTF-8 drop-in")
    finally:
        dropin.unlink(missing_ok=True)
    (result,) = call_as(sim, "root", Call(MANAGER_PATH, MANAGER, "Reload"))
    assert result.ok, result
    assert not wrong, "\n".join(wrong)
    assert snapshot(sim)["m4"]["DefaultFirmware"] == GOOD
