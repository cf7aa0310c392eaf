"""`rprocd-sim`: run a command against an emulated board.

    rprocd-sim [--board B]... [--daemon] [--config F] [--env-file F]
               [--option K=V]... [--firmware FILE]... -- CMD...

Brings up, in this order: the emulated `/sys` (umockdev + FUSE), the
emulated kernel, a private system bus with a polkit stand-in, optionally the
daemon (waiting for its READY=1); then runs CMD with the environment of
HACKING.md, tears everything down in reverse order and exits with CMD's
status (70 when CMD succeeded but the daemon died, did not exit 0 on
SIGTERM, or the emulated kernel hit a bug).

Processes: this one (re-executed under `umockdev-wrapper`, so LD_PRELOAD is
right for the children) serves the FUSE mount, runs the kernel and sends the
uevents; dbus-daemon, the polkit mock, the daemon and CMD each run in their
own process group.

Nothing is left behind: teardown runs on any exit, SIGINT, SIGTERM or
SIGHUP, and a small reaper process cleans up (kill, unmount, remove) if this
process is killed outright. `kill -USR1` prints every thread's stack.

Module-level imports are stdlib only: the reaper imports this module too.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PROG = "rprocd-sim"
DEFAULT_BOARD = "stm32mp157f-dk"
EX_DAEMON = 70  # CMD succeeded but the daemon (or the emulated kernel) failed
PRELOAD_LIB = "libumockdev-preload"
PRELOAD_VARS = ("LD_PRELOAD", "UMOCKDEV_DIR")
REEXEC_MARK = "RPROCD_SIM_REEXEC"
DAEMON_CMD_ENV = "RPROCD_SIM_DAEMON_CMD"
READY_TIMEOUT_ENV = "RPROCD_SIM_READY_TIMEOUT"
STOP_TIMEOUT_ENV = "RPROCD_SIM_STOP_TIMEOUT"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CONTROL_NAME = ".rprocd-sim-control"  # hidden top-level directory of the /sys mount


class SimError(Exception):
    """A setup failure, reported as one clear message."""


class Interrupted(BaseException):
    """A signal asked the emulator to stop (BaseException: not swallowed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run CMD against an emulated board: its /sys (under the umockdev "
        "preload), a private system bus with a polkit stand-in and, with --daemon, rprocd.",
        epilog="Environment: RPROCD_SIM_POLKIT_ALLOW (polkit actions the stand-in grants, "
        "comma separated, * for all), RPROCD_SIM_DAEMON_CMD (daemon command line, default "
        "'python -m rprocd'), RPROCD_SIM_READY_TIMEOUT / RPROCD_SIM_STOP_TIMEOUT (seconds).",
    )
    parser.add_argument("--board", action="append", default=[], metavar="B",
                        help=f"board profile, repeatable (default {DEFAULT_BOARD}; "
                        "stm32mp157f-dk, stm32mp257f-dk, generic:N)")
    parser.add_argument("--daemon", action="store_true", help="run rprocd on the board")
    parser.add_argument("--no-polkit", action="store_true",
                        help="no polkit stand-in on the bus, as on an image without polkitd")
    parser.add_argument("--config", metavar="F", type=Path,
                        help="rprocd.conf for the daemon")
    parser.add_argument("--env-file", metavar="F", type=Path,
                        help="write the environment of CMD here (KEY=VALUE lines) once up")
    parser.add_argument("--option", action="append", default=[], metavar="K=V",
                        help="kernel variant option, [CORE.]KEY=VALUE, repeatable")
    parser.add_argument("--firmware", action="append", default=[], metavar="FILE",
                        type=Path, help="copy FILE into the emulated firmware directory")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    args = parser.parse_args(argv)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("missing CMD after --")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if PRELOAD_LIB not in os.environ.get("LD_PRELOAD", ""):
        if os.environ.get(REEXEC_MARK):
            print(f"{PROG}: error: the umockdev preload is not active after "
                  "umockdev-wrapper", file=sys.stderr)
            return 1
        wrapper = shutil.which("umockdev-wrapper")
        if wrapper is None:
            print(f"{PROG}: error: umockdev-wrapper not found (install umockdev)",
                  file=sys.stderr)
            return 1
        os.environ[REEXEC_MARK] = "1"
        os.execv(wrapper, [wrapper, sys.executable, "-m", "rprocd.sim", *argv])
    os.environ.pop(REEXEC_MARK, None)
    try:
        return Sim(args).run()
    except (SimError, RuntimeError) as exc:  # RuntimeError: a part did not come up
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _clean_env() -> dict[str, str]:
    """Our environment without the preload (for tools that must not see it)."""
    return {k: v for k, v in os.environ.items() if k not in PRELOAD_VARS}


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Reaper:
    """A watchdog process that undoes our work if we die without doing it.

    It is told each resource as it appears and "done" at the end of a full
    teardown; EOF without "done" (we were SIGKILLed) makes it kill the
    process groups, unmount and remove the directories itself.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from rprocd.sim.cli import reap; reap()"],
            stdin=subprocess.PIPE,
            env=_clean_env(),
            start_new_session=True,
        )

    def tell(self, kind: str, value: object) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.write(f"{kind} {value}\n".encode())
            self._proc.stdin.flush()

    def done(self) -> None:
        self.tell("done", "")
        self.close()

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(30)


def reap() -> None:
    """The reaper's main (see Reaper)."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    groups: list[int] = []
    mounts: list[str] = []
    dirs: list[str] = []
    for line in sys.stdin:
        kind, _, value = line.rstrip("\n").partition(" ")
        if kind == "done":
            return
        if kind == "pgid":
            groups.append(int(value))
        elif kind == "mount":
            mounts.append(value)
        elif kind == "dir":
            dirs.append(value)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    tool = shutil.which("fusermount3") or "fusermount3"
    for mount in reversed(mounts):
        subprocess.run([tool, "-u", "-z", mount], capture_output=True)
    for path in reversed(dirs):
        shutil.rmtree(path, ignore_errors=True)
    print(f"{PROG}: cleaned up after an emulator that did not exit normally", file=sys.stderr)


class Sim:
    """One run: start everything, run CMD, tear down."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._teardown = contextlib.ExitStack()
        self._interrupted: int | None = None
        self._tearing_down = False
        self.unhealthy = False

    # -- the run ------------------------------------------------------------

    def run(self) -> int:
        self._check_inputs()
        # `kill -USR1` prints every thread's stack: the way to look into a hang
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)
        status = 1
        reaper = Reaper()
        try:
            with self._teardown:
                self._teardown.callback(self._stop_signals)
                self._setup(reaper)
                status = self._run_cmd(reaper)
        except Interrupted:
            pass
        finally:
            reaper.done()
        if self._interrupted is not None:
            print(f"{PROG}: stopped by {signal.Signals(self._interrupted).name}",
                  file=sys.stderr)
            return 128 + self._interrupted
        if status == 0 and self.unhealthy:
            return EX_DAEMON
        return status

    def _on_signal(self, signum: int, _frame: object) -> None:
        """The first signal before CMD ends aborts whatever runs; teardown follows."""
        if self._interrupted is None and not self._tearing_down:
            self._interrupted = signum
            raise Interrupted(signum)

    def _stop_signals(self) -> None:
        """Last teardown step: the first signal already started the teardown."""
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _check_inputs(self) -> None:
        """Everything that can be wrong with the command line, before any setup."""
        from rprocd.sim.board import get_board
        from rprocd.sim.options import parse_options

        for path in [*self.args.firmware, *([self.args.config] if self.args.config else [])]:
            if not path.is_file():
                raise SimError(f"{path}: no such file")
        try:
            boards = [get_board(spec) for spec in self.args.board or [DEFAULT_BOARD]]
            self.board = merge_boards(boards)
            self.options = parse_options(self.args.option, self.board)
        except ValueError as exc:
            raise SimError(str(exc)) from None

    def _setup(self, reaper: Reaper) -> None:
        self._make_dirs(reaper)
        self._start_machine(reaper)
        self._start_bus(reaper)
        self.env = dict(os.environ)
        self.env.update({
            "UMOCKDEV_DIR": self.testbed.root,
            "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address,
            "RPROCD_SIM_DIR": str(self.dir),
            "RPROCD_SIM_FIRMWARE_DIR": str(self.firmware_dir),
            "RPROCD_FIRMWARE_ROOT": str(self.firmware_root),
            "RPROCD_KMSG": str(self.kmsg.path),
            "RPROCD_SIM_CONTROL": str(self.control_dir),
            **{f"{name.upper()}_DIRECTORY": str(path) for name, path in self.dirs.items()},
        })
        if self.args.daemon:
            self._start_daemon(reaper)
        if self.args.env_file:
            write_env_file(self.args.env_file, self.env)

    def _make_dirs(self, reaper: Reaper) -> None:
        """The scratch directory, world-readable: unprivileged clients reach
        the bus socket in it."""
        self.dir = Path(tempfile.mkdtemp(prefix="rprocd-sim-"))
        reaper.tell("dir", self.dir)
        self._teardown.callback(shutil.rmtree, self.dir, ignore_errors=True)
        self.dir.chmod(0o755)
        self.firmware_dir = self.dir / "firmware"  # firmware_class.path
        self.firmware_root = self.dir / "lib" / "firmware"  # the machine's /lib/firmware
        self.dirs = {name: self.dir / name for name in ("configuration", "state", "runtime")}
        for path in (self.firmware_dir, self.firmware_root, *self.dirs.values()):
            path.mkdir(parents=True)
        for image in self.args.firmware:
            shutil.copy(image, self.firmware_dir / image.name)
        if self.args.config:
            shutil.copy(self.args.config, self.dirs["configuration"] / "rprocd.conf")
        self.log_path = self.dir / "daemon.log"

    def _start_machine(self, reaper: Reaper) -> None:
        """The emulated /sys, the kernel on it, its control directory; boot."""
        from rprocd.sim.kernel import SimKernel
        from rprocd.sim.testbed import Testbed

        td = self._teardown
        self.testbed = Testbed(soc=self.board.soc_path)
        reaper.tell("dir", self.testbed.root)
        td.callback(self.testbed.stop)
        reaper.tell("mount", self.testbed.mountpoint)
        self.testbed.start()
        self.kmsg = Kmsg(self.dir / "kmsg")
        td.callback(self.kmsg.close)  # after the kernel's last line
        # the kernel's search path (ABI §5.1): firmware_class.path, then /lib/firmware
        release = os.uname().release
        root = self.firmware_root
        self.kernel = SimKernel(self.board, self.options, self.testbed, self.testbed, [
            self.firmware_dir, root / "updates" / release, root / "updates", root / release,
            root])
        td.callback(self.kernel.shutdown)
        td.callback(self._check_kernel)  # runs after the daemon and CMD are gone
        self.kmsg.follow(self.kernel)
        self.testbed.add_files(self.kernel.bus_files())
        self.control_dir = self.testbed.add_control_dir(CONTROL_NAME, self.kernel.control_files)
        self.kernel.boot()

    def _start_bus(self, reaper: Reaper) -> None:
        from rprocd.sim.bus import POLKIT_ALLOW_ENV, Bus, parse_allowed

        self.bus = Bus(self.dir, _clean_env())
        self._teardown.callback(self.bus.stop)
        self.bus.start(parse_allowed(os.environ.get(POLKIT_ALLOW_ENV)),
                       polkit=not self.args.no_polkit)
        for pid in self.bus.pids:
            reaper.tell("pgid", pid)

    def _start_daemon(self, reaper: Reaper) -> None:
        self.env["RPROCD_SIM_LOG"] = str(self.log_path)
        self.daemon = Daemon(self.env, self.log_path, self.dir / "notify")
        self._teardown.callback(self._stop_daemon)
        self.daemon.start()
        reaper.tell("pgid", self.daemon.pid)
        self.daemon.wait_ready(float(os.environ.get(READY_TIMEOUT_ENV, "30")))
        self.env["RPROCD_PID"] = str(self.daemon.pid)

    def _run_cmd(self, reaper: Reaper) -> int:
        try:
            proc = subprocess.Popen(self.args.cmd, env=self.env, **_own_process_group())
        except OSError as exc:
            raise SimError(f"cannot run {self.args.cmd[0]}: {exc.strerror}") from None
        reaper.tell("pgid", proc.pid)
        self._teardown.callback(_kill_group, proc.pid, proc)
        with _foreground(proc.pid):
            status = _exit_status(proc.wait())
        self._tearing_down = True
        return status

    # -- teardown steps -------------------------------------------------------

    def _stop_daemon(self) -> None:
        timeout = float(os.environ.get(STOP_TIMEOUT_ENV, "20"))
        problem = self.daemon.stop(timeout, release=self.kernel.shutdown)
        if problem:
            self.unhealthy = True
            print(f"{PROG}: the daemon {problem}; its log ({self.log_path}):\n"
                  f"{self.daemon.log_tail()}", file=sys.stderr)

    def _check_kernel(self) -> None:
        errors = self.testbed.fs.internal_errors
        if errors:
            self.unhealthy = True
            print(f"{PROG}: the emulated kernel failed {len(errors)} time(s) "
                  "(answered EIO):\n" + "\n".join(errors), file=sys.stderr)


def merge_boards(boards: list[Any]) -> Any:
    """Several --board flags: one machine with the cores of all of them."""
    import dataclasses

    if len(boards) == 1:
        return boards[0]
    cores = [core for board in boards for core in board.cores]
    for attr in ("name", "platform"):
        seen: set[str] = set()
        for core in cores:
            value = getattr(core, attr)
            if value in seen:
                raise ValueError(f"boards {', '.join(b.name for b in boards)} both have "
                                 f"a core {attr} {value!r}; they cannot share one machine")
            seen.add(value)
    return dataclasses.replace(boards[0], name="+".join(b.name for b in boards),
                               cores=tuple(cores))


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """KEY=VALUE lines, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())
                           if "\n" not in k + v))
    os.replace(tmp, path)


def _own_process_group() -> dict[str, Any]:
    """Popen arguments putting CMD in a process group of its own (so it can
    be killed with everything it started) without leaving our session."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"start_new_session": True}  # 3.10: no process_group, no preexec_fn with threads


def _kill_group(pgid: int, leader: subprocess.Popen[bytes] | None = None,
                grace: float = 5.0) -> None:
    """SIGTERM a process group, SIGKILL what is left after `grace` seconds.

    The leader, our child, is waited for (an event); other members are not
    our children, so their going away can only be polled.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(grace)
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        if _group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
    if leader is not None:
        leader.wait()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: orphans wait as
    zombies until init reaps them, and kill(0) cannot tell those apart."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@contextlib.contextmanager
def _foreground(pgid: int) -> Iterator[None]:
    """Give the terminal to CMD's process group, as a shell does for a job, so
    an interactive CMD reads the terminal and gets its Ctrl-C."""
    if not os.isatty(0):
        yield  # not interactive: CMD has no use for the terminal
        return
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    try:
        ours = os.tcgetpgrp(tty)
    except OSError:
        ours = -1
    if ours != os.getpgrp():
        os.close(tty)
        yield
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, pgid)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, ours)
        signal.signal(signal.SIGTTOU, old)
        os.close(tty)


class Kmsg:
    """The emulated kernel's log as a FIFO of /dev/kmsg records
    (`pri,seq,usec,-;text`), for the daemon's RPROCD_KMSG: the kernel names
    crash types only there. Held open read-write, so writes never block and
    readers never see EOF; when nobody reads and the pipe is full, lines are
    dropped, as a ring buffer overwrites them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path, 0o640)
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._mutex = threading.Lock()
        self._seq = 0
        self._start = time.monotonic()

    def follow(self, kernel: Any) -> None:
        """Copy every line the kernel logs from now on (its `klog` is wrapped:
        SimKernel keeps its log in a list and has no listener hook)."""
        klog = kernel.klog

        def tee(dev: str, msg: str) -> None:
            klog(dev, msg)
            self.write(f"{dev}: {msg}")

        kernel.klog = tee

    def write(self, text: str) -> None:
        with self._mutex:
            if self._fd < 0:
                return
            usec = int((time.monotonic() - self._start) * 1e6)
            record = f"6,{self._seq},{usec},-;{text}\n".encode("utf-8", "replace")[:4000]
            self._seq += 1
            with contextlib.suppress(OSError):  # full: dropped
                os.write(self._fd, record)

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Daemon:
    """The daemon process: start, wait for READY=1, stop with SIGTERM."""

    def __init__(self, env: dict[str, str], log_path: Path, notify_path: Path) -> None:
        self.log_path = log_path
        self._notify_path = notify_path
        self._env = dict(env, NOTIFY_SOCKET=str(notify_path))
        custom = os.environ.get(DAEMON_CMD_ENV)
        self.argv = shlex.split(custom) if custom else [sys.executable, "-m", "rprocd"]
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self.status = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(self._notify_path))
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(self.argv, env=self._env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=log, start_new_session=True)
            except OSError as exc:
                raise SimError(f"cannot start the daemon {self.argv[0]}: {exc.strerror}") from None

    def wait_ready(self, timeout: float) -> None:
        """Return at READY=1; SimError with the log if it exits or times out."""
        assert self._sock is not None and self._proc is not None
        import select

        pidfd = os.pidfd_open(self._proc.pid)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                ready = select.select([self._sock, pidfd], [], [], max(left, 0))[0] if left > 0 \
                    else []
                if self._sock in ready:
                    if self._handle(self._sock.recv(65536)):
                        break
                    continue
                if pidfd in ready:
                    status = self._proc.wait()
                    raise SimError(f"the daemon exited with status {status} before READY=1; "
                                   f"its log ({self.log_path}):\n{self.log_tail()}")
                if not ready:
                    raise SimError(f"the daemon sent no READY=1 within {timeout:g} s; "
                                   f"its log ({self.log_path}):\n{self.log_tail()}")
        finally:
            os.close(pidfd)
        # keep reading: a full socket buffer would block the daemon's sd_notify
        self._drain = threading.Thread(target=self._drain_loop, name="notify", daemon=True)
        self._drain.start()

    def _handle(self, message: bytes) -> bool:
        ready = False
        for line in message.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                ready = True
            elif key == "STATUS":
                self.status = value
        return ready

    def _drain_loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self._handle(data)

    def stop(self, timeout: float, release: Callable[[], None] | None = None) -> str | None:
        """SIGTERM and wait; None when it exited 0, else what went wrong.
        `release` wakes whatever the emulated kernel still blocks."""
        if self._proc is None:
            return None
        problem = None
        status = self._proc.poll()
        if status is not None:
            problem = f"died during the run (exit status {_exit_status(status)})"
        else:
            self._proc.send_signal(signal.SIGTERM)
            try:
                status = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                if release is not None:
                    # A process killed inside a write the emulated kernel still
                    # holds (`hang`) only dies once the write is answered.
                    release()
                self._proc.wait()
                problem = f"did not exit within {timeout:g} s of SIGTERM (killed)"
            else:
                if status != 0:
                    problem = f"exited with status {_exit_status(status)} on SIGTERM"
        _kill_group(self._proc.pid, grace=1.0)  # whatever it left behind
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        return problem

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"


if __name__ == "__main__":  # python -m rprocd.sim.cli
    raise SystemExit(main())
