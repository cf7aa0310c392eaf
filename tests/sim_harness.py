"""Run `rprocd-sim` from a test and act on the emulated board as a process
under the umockdev preload would.

    with running_sim(boards=["stm32mp157f-dk"], firmware=[...]) as sim:
        assert sim.write("/sys/class/remoteproc/remoteproc0/state", "start\\n") == 0
        assert sim.read("/sys/class/remoteproc/remoteproc0/state") == "running\\n"

or, as a module fixture:

    @pytest.fixture(scope="module")
    def sim():
        yield from sim_session(firmware=[...])

`rprocd-sim` runs `-- python -c <wait for stdin EOF>` as CMD: CMD prints a
line once everything is up (the env file is written before CMD starts), and
closing its stdin ends the run the normal way, so the exit status says
whether teardown (and, with a daemon, the daemon's SIGTERM) went well.

Reads and writes go through one long-lived agent process under the preload
(os.open + one os.write, like the daemon's sysfs.py); uevents are collected
by a pyudev monitor in another. Both answer over pipes, so a test waits on
events, never on sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_BUILD = REPO / "tests" / "firmware" / "build"
DEFAULT_TIMEOUT = 60.0

# CMD of rprocd-sim: say "up", then live until our end of its stdin closes.
_CMD = "import sys; print('up', flush=True); sys.stdin.read()"

# The agent: JSON requests on stdin, one thread each, JSON answers on stdout.
_AGENT = r"""
import base64, json, os, sys, threading
out_lock = threading.Lock()

def answer(rid, **kw):
    with out_lock:
        sys.stdout.write(json.dumps(dict(id=rid, **kw)) + "\n")
        sys.stdout.flush()

def handle(req):
    rid, op, path = req["id"], req["op"], req.get("path")
    stage = "open"
    try:
        if op == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                stage = "write"
                n = os.write(fd, base64.b64decode(req["data"]))
            finally:
                os.close(fd)
            answer(rid, errno=0, count=n)
        elif op == "read":
            fd = os.open(path, os.O_RDONLY)
            chunks = []
            try:
                stage = "read"
                while True:
                    chunk = os.read(fd, req.get("size", 65536))
                    if not chunk:
                        break
                    chunks.append(chunk)
            finally:
                os.close(fd)
            answer(rid, errno=0, data=base64.b64encode(b"".join(chunks)).decode())
        elif op == "listdir":
            answer(rid, errno=0, names=sorted(os.listdir(path)))
        elif op == "lstat":
            st = os.lstat(path)
            answer(rid, errno=0, mode=st.st_mode, size=st.st_size)
        elif op == "readlink":
            answer(rid, errno=0, target=os.readlink(path))
        elif op == "realpath":
            answer(rid, errno=0, target=os.path.realpath(path))
        else:
            answer(rid, errno=22, stage="agent", error="unknown op " + op)
    except OSError as e:
        answer(rid, errno=e.errno, stage=stage)

for line in sys.stdin:
    threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
"""

# The uevent monitor: "ready", then one JSON line per uevent.
_MONITOR = r"""
import json, pyudev
monitor = pyudev.Monitor.from_netlink(pyudev.Context())
monitor.start()
print(json.dumps({"ready": True}), flush=True)
for dev in iter(monitor.poll, None):
    props = dict(dev.properties)
    print(json.dumps({"action": dev.action, "syspath": dev.sys_path,
                      "subsystem": props.get("SUBSYSTEM"), "props": props}), flush=True)
"""


class SimFailed(RuntimeError):
    """rprocd-sim did not come up, or did not end cleanly."""


@dataclass
class Result:
    """What a request to the agent returned: errno 0 on success."""

    errno: int
    stage: str = ""
    count: int = 0
    data: bytes = b""
    names: tuple[str, ...] = ()
    mode: int = 0
    size: int = 0
    target: str = ""


class Agent:
    """A process under the preload doing file operations on request."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _AGENT], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Result]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_answers, daemon=True)
        self._reader.start()

    def _read_answers(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            with self._lock:
                future = self._pending.pop(msg.pop("id"))
            if "data" in msg:
                msg["data"] = base64.b64decode(msg["data"])
            if "names" in msg:
                msg["names"] = tuple(msg["names"])
            known = {k: v for k, v in msg.items() if k in Result.__dataclass_fields__}
            future.set_result(Result(**known))
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(SimFailed("the agent exited"))

    def submit(self, op: str, path: str, **kw: Any) -> Future[Result]:
        future: Future[Result] = Future()
        with self._lock:
            rid = next(self._ids)
            self._pending[rid] = future
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(dict(id=rid, op=op, path=path, **kw)) + "\n")
        self._proc.stdin.flush()
        return future

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:  # a request still blocked in the kernel
            self._proc.kill()
            self._proc.wait()


class Uevents:
    """uevents seen by a pyudev monitor under the preload, from its start on."""

    def __init__(self, env: dict[str, str], timeout: float = 20.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _MONITOR], env=env, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )
        self.events: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        assert self._proc.stdout is not None
        first = _readline(self._proc.stdout, timeout)
        if not first or not json.loads(first).get("ready"):
            self.close()
            raise SimFailed("the uevent monitor did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cv:
                self.events.append(json.loads(line))
                self._cv.notify_all()

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                 ) -> dict[str, Any]:
        """The first event (since the monitor started) matching `pred`."""
        with self._cv:
            found: list[dict[str, Any]] = []

            def match() -> bool:
                found[:] = [e for e in self.events if pred(e)][:1]
                return bool(found)

            if not self._cv.wait_for(match, timeout):
                raise AssertionError(f"no matching uevent within {timeout} s; saw:\n"
                                     + "\n".join(f"  {e['action']} {e['syspath']}"
                                                 for e in self.events))
            return found[0]

    def actions(self, syspath: str) -> list[str]:
        with self._cv:
            return [e["action"] for e in self.events if e["syspath"] == syspath]

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class RunningSim:
    """A running `rprocd-sim`: its CMD's environment and ways to act in it."""

    def __init__(self, process: subprocess.Popen[bytes], env: dict[str, str], tmp: Path) -> None:
        self.process = process
        self.env = env
        self.tmp = tmp
        self.returncode: int | None = None
        self._agent: Agent | None = None
        self._monitors: list[Uevents] = []

    # -- paths

    @property
    def control(self) -> Path:
        return Path(self.env["RPROCD_SIM_CONTROL"])

    @property
    def firmware_dir(self) -> Path:
        return Path(self.env["RPROCD_SIM_FIRMWARE_DIR"])

    # -- acting as a process under the preload

    def run(self, shell_cmd: str, timeout: float = 30.0, **kw: Any,
            ) -> subprocess.CompletedProcess[str]:
        """`bash -c shell_cmd` under the preload; output captured as text."""
        return subprocess.run(["bash", "-c", shell_cmd], env=self.env, capture_output=True,
                              text=True, timeout=timeout, **kw)

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self.env)
        return self._agent

    def write_async(self, path: str, data: str | bytes) -> Future[Result]:
        """Start one os.write of `data` (blocks in the kernel as long as it does)."""
        raw = data.encode() if isinstance(data, str) else data
        return self.agent.submit("write", path, data=base64.b64encode(raw).decode())

    def write(self, path: str, data: str | bytes, timeout: float = 30.0) -> int:
        """os.open(O_WRONLY) + one os.write: 0 on success, else the errno."""
        return self.write_async(path, data).result(timeout).errno

    def write_result(self, path: str, data: str | bytes, timeout: float = 30.0) -> Result:
        return self.write_async(path, data).result(timeout)

    def read_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        result = self.agent.submit("read", path).result(timeout)
        if result.errno:
            raise OSError(result.errno, f"{os.strerror(result.errno)} ({result.stage})", path)
        return result.data

    def read(self, path: str, timeout: float = 30.0) -> str:
        """The whole file read from offset 0 (OSError with the errno otherwise)."""
        return self.read_bytes(path, timeout).decode()

    def read_errno(self, path: str, timeout: float = 30.0) -> int:
        return self.agent.submit("read", path).result(timeout).errno

    def listdir(self, path: str) -> list[str]:
        result = self.agent.submit("listdir", path).result(30)
        if result.errno:
            raise OSError(result.errno, os.strerror(result.errno), path)
        return list(result.names)

    def exists(self, path: str) -> bool:
        return self.agent.submit("lstat", path).result(30).errno == 0

    def lstat(self, path: str) -> Result:
        return self.agent.submit("lstat", path).result(30)

    def readlink(self, path: str) -> str:
        result = self.agent.submit("readlink", path).result(30)
        if result.errno:
            raise OSError(result.errno, os.strerror(result.errno), path)
        return result.target

    def realpath(self, path: str) -> str:
        return self.agent.submit("realpath", path).result(30).target

    def uevents(self) -> Uevents:
        """A pyudev monitor that sees every uevent from now on."""
        monitor = Uevents(self.env)
        self._monitors.append(monitor)
        return monitor

    def wait_state(self, path: str, want: str, timeout: float = 10.0) -> str:
        """Poll a state file until it reads `want` (the kernel has no event for it)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.read(path).strip()
            if value == want or time.monotonic() > deadline:
                return value
            time.sleep(0.01)

    def daemon_log(self) -> str:
        log = self.env.get("RPROCD_SIM_LOG")
        try:
            return Path(log).read_text(errors="replace") if log else "(no daemon)"
        except OSError as exc:
            return f"(no log: {exc})"

    def stderr(self) -> str:
        try:
            return (self.tmp / "sim.stderr").read_text(errors="replace")
        except OSError:
            return ""

    # -- the end

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """End CMD normally and wait for rprocd-sim; its exit status."""
        for monitor in self._monitors:
            monitor.close()
        self._monitors.clear()
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if self.returncode is not None:
            return self.returncode
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.returncode


def sim_command() -> list[str]:
    """How to run rprocd-sim: the console script if installed, else the module."""
    exe = Path(sys.executable).parent / "rprocd-sim"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rprocd.sim"]


def _readline(stream: Any, timeout: float) -> str:
    """One line from a text pipe within `timeout`, '' at EOF or timeout."""
    if not select.select([stream], [], [], timeout)[0]:
        return ""
    return stream.readline()


@contextlib.contextmanager
def running_sim(
    boards: Sequence[str] = ("stm32mp157f-dk",),
    options: Sequence[str] = (),
    daemon: bool = False,
    config: str | Path | None = None,
    firmware: Sequence[str | Path] = (),
    polkit_allow: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> Iterator[RunningSim]:
    """Start rprocd-sim, yield a RunningSim once everything is up, stop it.

    `firmware` names are taken from tests/firmware/build unless they are
    paths. With `check`, a non-zero exit of rprocd-sim (a daemon that died
    or did not exit 0, an emulated kernel bug) fails with its stderr.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rprocd-harness-"))
    env_file = tmp / "env"
    argv = [*sim_command()]
    for board in boards:
        argv += ["--board", board]
    for option in options:
        argv += ["--option", option]
    if daemon:
        argv.append("--daemon")
    if config is not None:
        conf = tmp / "rprocd.conf"
        if isinstance(config, Path):
            shutil.copy(config, conf)
        else:
            conf.write_text(config)
        argv += ["--config", str(conf)]
    for image in firmware:
        path = Path(image)
        argv += ["--firmware", str(path if path.is_absolute() else FIRMWARE_BUILD / path)]
    argv += ["--env-file", str(env_file), "--", sys.executable, "-c", _CMD]
    env = dict(os.environ, **(extra_env or {}))
    if polkit_allow is not None:
        env["RPROCD_SIM_POLKIT_ALLOW"] = polkit_allow
    with open(tmp / "sim.stderr", "wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=err, env=env, start_new_session=True)
    sim = RunningSim(process, {}, tmp)
    try:
        assert process.stdout is not None
        line = _readline(process.stdout, timeout)
        if line.strip() != b"up":
            status = process.poll()
            if status is None:
                process.kill()
                process.wait()
            raise SimFailed(f"rprocd-sim did not come up (exit status {process.returncode}):\n"
                            f"{sim.stderr()}")
        for entry in env_file.read_text().splitlines():
            key, sep, value = entry.partition("=")
            if sep:
                sim.env[key] = value
        failed = False
        try:
            yield sim
        except BaseException:
            failed = True
            raise
        finally:
            status = sim.stop(timeout)
            if check and not failed and status != 0:
                raise SimFailed(f"rprocd-sim exited {status}:\n{sim.stderr()}\n"
                                f"daemon log:\n{sim.daemon_log()}")
    finally:
        if sim.returncode is None:
            sim.stop(timeout)
        shutil.rmtree(tmp, ignore_errors=True)


def sim_session(**kwargs: Any) -> Iterator[RunningSim]:
    """For fixtures: `yield from sim_session(...)` in a (module) fixture."""
    with running_sim(**kwargs) as sim:
        yield sim
