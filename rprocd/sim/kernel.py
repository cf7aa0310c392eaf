"""The emulated Linux remoteproc core (ABI reference §1–§4, §7).

One Rproc per registered `remoteprocN`, driven exactly like the kernel: a
per-rproc mutex serialises state-changing writes, reads never take it, writes
block their caller while the emulated hardware works, and errnos come from the
same checks in the same order. The hardware side (memory, the firmware's run,
its timers) lives in Core, which outlives driver unbind/bind like a real SoC.
The outside world is reached only through DeviceSink/DebugfsSink.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import devicetree, loader
from .behaviour import FirmwareRun, TraceRing, parse_behaviour
from .board import Board, CoreSpec, MemRegion
from .interfaces import DebugfsSink, DeviceSink, SimFile
from .loader import FW_RSC_ADDR_ANY, KernelError, u32
from .options import CoreOptions

__all__ = ["SimKernel", "CoreOptions", "KernelError"]

PAGE_SIZE = 4096
OFFLINE, SUSPENDED, RUNNING, CRASHED, DELETED, ATTACHED, DETACHED = (
    "offline", "suspended", "running", "crashed", "deleted", "attached", "detached")
CRASH_TYPES = {0: "mmufault", 1: "watchdog", 2: "fatal error"}
DUMP_MODES = ("disabled", "enabled", "inline")
MAILBOX_DETACH_TIMEOUT = 0.2
RPMSG_DRIVERS = {"rpmsg_ctrl": "rpmsg_ctrl", "rpmsg_ns": "rpmsg_ns", "rpmsg-tty": "rpmsg_tty",
                 "rpmsg-raw": "rpmsg_chrdev", "rpmsg-client-sample": "rpmsg_client_sample"}
VIRTIO_ID_RPMSG = 7
VIRTIO_RPMSG_F_NS = 1


# ----------------------------------------------------------- kernel string helpers


def cstring(data: bytes) -> bytes:
    """What a C handler sees of a NUL-terminated buffer."""
    return data.split(b"\0", 1)[0]


def sysfs_streq(data: bytes, keyword: bytes) -> bool:
    """lib/string.c sysfs_streq: exact, at most one trailing newline."""
    s = cstring(data)
    return s == keyword or s == keyword + b"\n"


def strncmp_eq(buf: bytes, keyword: bytes, n: int) -> bool:
    """`!strncmp(buf, keyword, n)` with C string semantics."""
    for i in range(n):
        a = buf[i] if i < len(buf) else 0
        b = keyword[i] if i < len(keyword) else 0
        if a != b:
            return False
        if a == 0:
            return True
    return True


def kstrtouint_from_user(data: bytes) -> int:
    """kstrtouint_from_user(base 0): at most 23 bytes, one trailing newline."""
    s = cstring(data[:23])
    if s[:1] == b"+":
        s = s[1:]
    base = 10
    if s[:1] == b"0":
        if s[1:2].lower() == b"x" and s[2:3] and s[2:3] in b"0123456789abcdefABCDEF":
            base, s = 16, s[2:]
        else:
            base = 8
    value, n, overflow = 0, 0, False
    for ch in s:
        c = chr(ch).lower()
        d = int(c, 16) if c in "0123456789abcdef" else 99
        if d >= base:
            break
        value = value * base + d
        overflow |= value >= 1 << 64
        n += 1
    if overflow:
        raise KernelError(errno.ERANGE, "number out of range")
    if n == 0:
        raise KernelError(errno.EINVAL, "not a number")
    rest = s[n:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise KernelError(errno.EINVAL, "trailing characters")
    if value > 0xFFFFFFFF:
        raise KernelError(errno.ERANGE, "number out of range")
    return value


def _sysfs_store(handler: Callable[[bytes], None]) -> Callable[[bytes], int]:
    """kernfs write: empty writes never reach the store, one write ≤ PAGE_SIZE."""

    def write(data: bytes) -> int:
        if not data:
            return 0
        data = bytes(data[:PAGE_SIZE])
        handler(data)
        return len(data)

    return write


def _show(text: Callable[[], str]) -> Callable[[], bytes]:
    return lambda: text().encode("utf-8", "surrogateescape")[:PAGE_SIZE - 1]


# ------------------------------------------------------------------ scheduler


class Scheduler:
    """One timer thread for the emulated hardware (firmware ticks, crash
    timers, devcoredump expiry). Callbacks run on it and must be quick."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._on_error = on_error

    def call_later(self, delay: float, fn: Callable[[], None]) -> int:
        with self._cv:
            handle = next(self._seq)
            if self._closed:
                return handle
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), handle, fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rprocd-sim-timers",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cv:
            if any(h == handle for _, h, _ in self._heap):
                self._cancelled.add(handle)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cv.wait(self._heap[0][0] - now if self._heap else None)
                if self._closed:
                    return
                _, handle, fn = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a timer must not kill the thread
                self._on_error(f"rprocd-sim: timer callback failed: {e!r}")


# --------------------------------------------------------------------- memory


class _Bank:
    __slots__ = ("name", "da", "size", "buf")

    def __init__(self, name: str, da: int, size: int) -> None:
        self.name, self.da, self.size = name, da, size
        self.buf: bytearray | None = None  # allocated on first write


class Memory:
    """A core's RAM by region. It survives kernel stop/start and driver
    unbind like real SRAM/DDR; kernel-allocated carveouts come and go."""

    def __init__(self, regions: tuple[MemRegion, ...]) -> None:
        self._mu = threading.Lock()
        self._banks = [_Bank(r.name, r.da, r.size) for r in regions]

    def _find(self, da: int, length: int) -> _Bank | None:
        for b in self._banks:
            if b.da <= da and da + length <= b.da + b.size:
                return b
        return None

    def contains(self, da: int, length: int) -> bool:
        with self._mu:
            return self._find(da, length) is not None

    def write(self, da: int, data: bytes, memsz: int | None = None) -> bool:
        """Copy `data` at da, zero-fill up to memsz; False when not mapped."""
        size = len(data) if memsz is None else memsz
        with self._mu:
            b = self._find(da, size)
            if b is None:
                return False
            if b.buf is None:
                b.buf = bytearray(b.size)
            o = da - b.da
            b.buf[o:o + len(data)] = data
            if size > len(data):
                b.buf[o + len(data):o + size] = bytes(size - len(data))
            return True

    def read(self, da: int, length: int) -> bytes | None:
        with self._mu:
            b = self._find(da, length)
            if b is None:
                return None
            if b.buf is None:
                return bytes(length)
            o = da - b.da
            return bytes(b.buf[o:o + length])

    def add(self, name: str, da: int, size: int) -> None:
        with self._mu:
            self._banks.append(_Bank(name, da, size))

    def remove(self, name: str) -> None:
        """Drop a kernel-allocated bank (their names are unique, see Rproc._alloc_dynamic)."""
        with self._mu:
            self._banks = [b for b in self._banks if b.name != name]


# --------------------------------------------------------------- devcoredump


def build_core_dump(
    segments: list[tuple[int, int]],
    read: Callable[[int, int], bytes | None],
    machine: int,
    entry: int,
) -> bytes:
    """rproc_coredump's ELF32 core: ET_CORE, one PT_LOAD per dump segment."""
    n = len(segments)
    ehdr = struct.pack(
        "<16sHHIIIIIHHHHHH",
        b"\x7fELF\x01\x01\x01" + bytes(9), 4, machine, 1, entry & 0xFFFFFFFF, 52, 0, 0,
        52, 32, n, 0, 0, 0,
    )
    offset = 52 + 32 * n
    phdrs, bodies = [], []
    for da, size in segments:
        phdrs.append(struct.pack("<8I", 1, offset, da, da, size, size, 7, 0))
        body = read(da, size)
        bodies.append(body if body is not None else b"\xff" * size)
        offset += size
    return b"".join([ehdr, *phdrs, *bodies])


class Devcd:
    """One pending devcoredump entry (`devcdM`)."""

    def __init__(self, index: int, failing: Rproc, data: Callable[[], bytes]) -> None:
        self.index = index
        self.name = f"devcd{index}"
        self.failing = failing
        self.syspath = ""
        self.timer = 0
        self.released = False
        self._data = data
        self._cache: bytes | None = None
        self._mu = threading.Lock()

    def data(self) -> bytes:
        with self._mu:
            if self._cache is None:
                self._cache = self._data()
            return self._cache


class Devcoredump:
    """drivers/base/devcoredump.c: the class, its counter and its timeouts."""

    def __init__(self, kernel: SimKernel, timeout: float) -> None:
        self.k = kernel
        self.timeout = timeout
        self.disabled = False
        self._counter = itertools.count(1)
        self._pending: dict[int, Devcd] = {}  # id(failing rproc) -> entry
        self._mu = threading.Lock()

    def create(self, failing: Rproc, data: Callable[[], bytes]) -> Devcd | None:
        """dev_coredumpm: None when disabled or a dump of this device is pending."""
        with self._mu:  # held across add: a concurrent delete sees the syspath
            if self.disabled or id(failing) in self._pending:
                return None
            d = Devcd(next(self._counter), failing, data)
            self._pending[id(failing)] = d
            files = {"data": SimFile(0o600, read=d.data, write=lambda b: self._dismiss(d, b))}
            links = {"failing_device": failing.syspath}
            d.syspath = self.k.devices.add("devcoredump", d.name, None, {}, files, links)
            self.k.devices.link(failing.syspath, "devcoredump", d.syspath)
            d.timer = self.k.sched.call_later(self.timeout, lambda: self.delete(d))
        return d

    def _dismiss(self, d: Devcd, data: bytes) -> int:
        """Writing anything to `data` schedules immediate deletion."""
        self.k.sched.call_later(0, lambda: self.delete(d))
        return len(data)

    def delete(self, d: Devcd) -> None:
        with self._mu:
            if d.released:
                return
            d.released = True
            self._pending.pop(id(d.failing), None)
        self.k.sched.cancel(d.timer)
        if d.failing.registered:
            self.k.devices.link(d.failing.syspath, "devcoredump", None)
        self.k.devices.remove(d.syspath)
        self.k.notify()

    def disable(self) -> None:
        with self._mu:
            self.disabled = True
            pending = list(self._pending.values())
        for d in pending:
            self.delete(d)

    def store_disabled(self, data: bytes) -> None:
        """Only `1` (simple_strtol) is accepted: the switch is one-way."""
        s = cstring(data)
        neg = s[:1] == b"-"
        digits = bytes(itertools.takewhile(lambda c: 48 <= c <= 57, s[1:] if neg else s))
        value = int(digits or b"0") * (-1 if neg else 1)
        if value != 1:
            raise KernelError(errno.EINVAL, "devcoredump: only 1 is accepted")
        self.disable()


# ---------------------------------------------------------- kernel resources


@dataclass
class Carveout:
    """struct rproc_mem_entry."""

    name: str
    da: int
    length: int
    dma: int
    rsc_offset: int | None = None
    flags: int = 0
    allocated: bool = False
    dynamic: bool = False  # not a DT region: the kernel DMA-allocates it
    bank: str | None = None  # memory bank the kernel allocated for it


@dataclass
class Trace:
    name: str
    da: int
    length: int


@dataclass
class Vdev:
    index: int
    rsc_offset: int
    pdev_id: int
    pdev: str
    probed: bool = False
    notifyids: list[int] = field(default_factory=list)
    virtio: str | None = None
    virtio_bound: bool = False
    children: list[tuple[str, bool]] = field(default_factory=list)  # (syspath, bound)


# ------------------------------------------------------------------- the core


class Core:
    """The coprocessor hardware plus its emulator control knobs."""

    def __init__(self, kernel: SimKernel, spec: CoreSpec, opts: CoreOptions) -> None:
        self.k = kernel
        self.spec = spec
        self.opts = opts
        self.memory = Memory(spec.regions)
        self.platform_syspath = ""
        self.rproc: Rproc | None = None
        self.fw_run: FirmwareRun | None = None
        self.hw_table: tuple[int, int] | None = None  # where the running image keeps its table
        self.hang = ""  # control `hang`: "" no, "1" every state write, "start"/"stop" only those
        self.fail_start: int | None = None
        self.device_lock = threading.Lock()  # driver core device_lock(): bind vs unbind
        fmt = opts.fw_format if opts.fw_format is not None else spec.fw_format
        self.fw_format: str | None = None if fmt == "none" else fmt
        self.tee = self.fw_format == "TEE"
        self.stm32 = spec.driver == "stm32-rproc"
        self.mp1 = spec.compatible.startswith("st,stm32mp1")
        self.host_bits = 32 if self.mp1 else 64
        self.compatible = spec.compatible + ("-tee" if self.tee and self.stm32 else "")
        self.driver_dev = f"{spec.driver} {spec.platform}"

    @property
    def running(self) -> bool:
        """What the driver's state register would say at probe (§7.1)."""
        return self.fw_run is not None and self.fw_run.alive

    def start_firmware(self, info: loader.ImageInfo, label: str) -> None:
        """Release the core from reset running `info`'s image."""
        self.reset()
        beh, warnings = parse_behaviour(info.behaviour)
        for w in warnings:
            self.k.klog(self.driver_dev, f"rprocd-sim: {label}: {w}")
        trace = loader.first_trace(info.table)
        ring = TraceRing(self._fw_write, *trace) if trace else None
        self.hw_table = None
        if info.table and info.table_addr is not None:
            self.hw_table = (info.table_addr, len(info.table))
        run = FirmwareRun(beh, label, self.k.sched, ring, self._fw_crash)
        self.fw_run = run
        run.start()

    def reset(self) -> None:
        """Assert reset: the firmware stops doing anything."""
        run, self.fw_run = self.fw_run, None
        if run is not None:
            run.halt()

    def _fw_write(self, da: int, data: bytes) -> bool:
        return self.memory.write(da, data)

    def _fw_crash(self, crash_type: int) -> None:
        rp = self.rproc
        if rp is not None and rp.registered:
            rp.report_crash(crash_type)

    def take_fail_start(self) -> int | None:
        err, self.fail_start = self.fail_start, None
        return err

    def hangs(self, op: str) -> bool:
        """Whether control `hang` blocks a state write doing `op` (start, stop, detach)."""
        return self.hang == "1" or self.hang == op

    def wait_hang(self, op: str) -> None:
        """Control file `hang`: block the state write until `0` is written."""
        if not self.hangs(op):
            return
        self.k.klog(self.driver_dev, f"rprocd-sim: hanging the {op} write (hang={self.hang})")
        if not self.k.wait_for(lambda: not self.hangs(op)):
            raise KernelError(errno.EINTR, "emulator shut down while hung")


# ------------------------------------------------------------------ the rproc


class Rproc:
    """struct rproc: one registered remoteprocN, from probe to rproc_del."""

    def __init__(self, kernel: SimKernel, core: Core, index: int, state: str) -> None:
        self.k = kernel
        self.core = core
        self.index = index
        self.dev = f"remoteproc remoteproc{index}"
        self.name = core.spec.name
        self.state = state
        self.power = 0
        self.firmware = core.spec.default_firmware
        self.recovery_disabled = core.opts.recovery == "disabled"
        self.dump_conf = core.opts.coredump
        self.crash_cnt = 0
        self.lock = threading.Lock()
        self.syspath = ""
        self.registered = False
        self.debugfs = f"remoteproc/remoteproc{index}"
        # resources (between prepare and cleanup)
        self.table: bytearray | None = None
        self.pristine: bytes | None = None
        self.carveouts: list[Carveout] = []
        self.traces: list[Trace] = []
        self.vdevs: list[Vdev] = []
        self.dump_segments: list[tuple[int, int]] = []
        self.notifyids: set[int] = set()
        self.nb_vdev = 0
        self.bootaddr = 0
        self._tee_loaded: loader.TeeImage | None = None
        self._published: tuple[str, ...] | None = None
        self._crash_mu = threading.Lock()
        self._crash_queued = False
        self._crash_worker = False

    def log(self, msg: str) -> None:
        self.k.klog(self.dev, msg)

    @contextmanager
    def locked(self, hang: str = "") -> Iterator[None]:
        """The rproc mutex; `hang` names the state write (start, stop, detach) that
        control `hang` may block while holding it, as a stuck driver would."""
        with self.lock:
            if hang:
                self.core.wait_hang(hang)
            yield

    # ---------------------------------------------------------------- sysfs

    def sysfs_files(self) -> dict[str, SimFile]:
        files = {
            "coredump": SimFile(0o644, _show(lambda: self.dump_conf + "\n"),
                                _sysfs_store(self._store_coredump)),
            "recovery": SimFile(0o644, _show(lambda: "disabled\n" if self.recovery_disabled
                                             else "enabled\n"),
                                _sysfs_store(self._store_recovery)),
            "firmware": SimFile(0o644, _show(lambda: ("unknown" if self.state == ATTACHED
                                                      else self.firmware) + "\n"),
                                _sysfs_store(self._store_firmware)),
            "state": SimFile(0o644, _show(lambda: self.state + "\n"),
                             _sysfs_store(self._store_state)),
            "name": SimFile(0o444, _show(lambda: self.name + "\n")),
        }
        if self.core.fw_format is not None:
            fmt = self.core.fw_format
            files["fw_format"] = SimFile(0o444, _show(lambda: fmt + "\n"))
        return files

    def _store_state(self, data: bytes) -> None:
        pre = self.core.opts.pre_519
        if sysfs_streq(data, b"start"):
            if pre and self.state in (RUNNING, ATTACHED):
                raise KernelError(errno.EBUSY, "already running")
            try:
                self.boot()
            except KernelError as e:
                self.log(f"Boot failed: {-e.errno}")
                raise
        elif sysfs_streq(data, b"stop"):
            if pre and self.state not in self._stoppable():
                raise KernelError(errno.EINVAL, "not running")
            self.shutdown()
        elif sysfs_streq(data, b"detach"):
            if pre and self.state != ATTACHED:
                raise KernelError(errno.EINVAL, "not attached")
            self.detach()
        else:
            self.log(f"Unrecognised option: {cstring(data).decode('utf-8', 'replace')}")
            raise KernelError(errno.EINVAL, "Unrecognised option")

    def _store_firmware(self, data: bytes) -> None:
        """rproc_set_firmware: offline only, name up to the first newline."""
        with self.lock:
            if self.state != OFFLINE:
                self.k.klog(self.core.driver_dev, "can't change firmware while running")
                raise KernelError(errno.EBUSY, "can't change firmware while running")
            name = cstring(data).split(b"\n", 1)[0]
            if not name:
                self.k.klog(self.core.driver_dev, "can't provide empty string for firmware name")
                raise KernelError(errno.EINVAL, "empty firmware name")
            self.firmware = name.decode("utf-8", "surrogateescape")

    def _store_recovery(self, data: bytes) -> None:
        if sysfs_streq(data, b"enabled"):
            with self.lock:
                self.recovery_disabled = False
            self.trigger_recovery()
        elif sysfs_streq(data, b"disabled"):
            with self.lock:
                self.recovery_disabled = True
        elif sysfs_streq(data, b"recover"):
            self.trigger_recovery()
        else:
            raise KernelError(errno.EINVAL, "bad recovery keyword")

    def _store_coredump(self, data: bytes) -> None:
        if self.state == CRASHED:
            self.log("can't change coredump configuration")
            raise KernelError(errno.EBUSY, "crashed")
        for mode in DUMP_MODES:
            if sysfs_streq(data, mode.encode()):
                self.dump_conf = mode
                return
        self.log("Invalid coredump configuration")
        raise KernelError(errno.EINVAL, "bad coredump keyword")

    # -------------------------------------------------------------- debugfs

    def debugfs_files(self) -> dict[str, SimFile]:
        files = {
            "name": SimFile(0o400, lambda: (self.name[:98] + "\n").encode()),
            "recovery": SimFile(0o600, lambda: b"disabled\n" if self.recovery_disabled
                                else b"enabled\n", self._debugfs_recovery),
            "crash": SimFile(0o200, None, self._debugfs_crash),
            "resource_table": SimFile(0o400, self._table_show),
            "carveout_memories": SimFile(0o400, self._carveouts_show),
            "coredump": SimFile(0o600, lambda: (self.dump_conf + "\n").encode(),
                                self._debugfs_coredump),
        }
        for tr in list(self.traces):
            files[tr.name] = SimFile(0o400, lambda tr=tr: self._trace_read(tr))
        return files

    def publish_debugfs(self) -> None:
        """(Re)announce the debugfs directory when its set of files changed:
        add_dir with the full set when traces appear, remove_dir first when
        some disappear (works whether add_dir merges or replaces)."""
        names = tuple(t.name for t in self.traces)
        if not self.registered or names == self._published:
            return
        if self._published is not None and not set(self._published) <= set(names):
            self.k.debugfs.remove_dir(self.debugfs)
        self._published = names
        self.k.debugfs.add_dir(self.debugfs, self.debugfs_files())

    def _debugfs_recovery(self, data: bytes) -> int:
        count = len(data)
        if count < 1 or count > 10:
            raise KernelError(errno.EINVAL, "bad length")
        buf = bytearray(data)
        if buf[-1] == 0x0A:
            buf[-1] = 0
        if strncmp_eq(bytes(buf), b"enabled", count):
            with self.lock:
                self.recovery_disabled = False
            self.trigger_recovery()
        elif strncmp_eq(bytes(buf), b"disabled", count):
            self.recovery_disabled = True
        elif strncmp_eq(bytes(buf), b"recover", count):
            self.trigger_recovery()
        else:
            raise KernelError(errno.EINVAL, "bad recovery keyword")
        return count

    def _debugfs_coredump(self, data: bytes) -> int:
        count = len(data)
        if count < 1 or count > 20:
            raise KernelError(errno.EINVAL, "bad length")
        buf = bytearray(data)
        if buf[-1] == 0x0A:
            buf[-1] = 0
        if self.state == CRASHED:
            self.log("can't change coredump configuration")
            raise KernelError(errno.EBUSY, "crashed")
        for mode in ("disabled", "enabled", "inline"):
            if strncmp_eq(bytes(buf), mode.encode(), count):
                self.dump_conf = mode
                return count
        self.log("Invalid coredump configuration")
        raise KernelError(errno.EINVAL, "bad coredump keyword")

    def _debugfs_crash(self, data: bytes) -> int:
        self.report_crash(kstrtouint_from_user(data))
        return len(data)

    def _table_show(self) -> bytes:
        table = self.table  # one snapshot: a stop may drop it meanwhile
        return loader.format_table(None if table is None else bytes(table)).encode()

    def _carveouts_show(self) -> bytes:
        wide = self.core.host_bits == 64
        ptr = "0" * (16 if wide else 8)
        out = []
        for c in list(self.carveouts):
            dma = f"0x{c.dma:016x}" if wide else f"0x{c.dma & 0xFFFFFFFF:08x}"
            out.append(f"Carveout memory entry:\n\tName: {c.name}\n\tVirtual address: {ptr}\n"
                       f"\tDMA address: {dma}\n\tDevice address: 0x{c.da:x}\n"
                       f"\tLength: 0x{c.length:x} Bytes\n\n")
        return "".join(out).encode()

    def _trace_read(self, tr: Trace) -> bytes:
        raw = self.core.memory.read(tr.da, tr.length) if self._da_to_va(tr.da, tr.length) else None
        if raw is None:
            return b"Trace  not available\n"
        return raw.split(b"\0", 1)[0]

    # ------------------------------------------------------ state machine

    def _stoppable(self) -> tuple[str, ...]:
        if self.core.opts.crashed_stop == "stop":
            return (RUNNING, ATTACHED, CRASHED)
        return (RUNNING, ATTACHED)

    def boot(self) -> None:
        """rproc_boot: power++, only 0→1 loads and starts (or attaches)."""
        with self.locked(hang="start"):
            if self.state == DELETED:
                self.log(f"can't boot deleted rproc {self.name}")
                raise KernelError(errno.ENODEV, "deleted")
            self.power += 1
            if self.power > 1:
                return
            try:
                if self.state == DETACHED:
                    self.log(f"attaching to {self.name}")
                    self._attach()
                else:
                    self.log(f"powering up {self.name}")
                    fw = self._request_firmware()
                    self._fw_boot(fw)
            except KernelError:
                self.power -= 1
                raise

    def shutdown(self) -> None:
        """rproc_shutdown: power--, only 1→0 stops the processor."""
        with self.locked(hang="stop"):
            if self.state not in self._stoppable():
                raise KernelError(errno.EINVAL, f"can't stop rproc in state {self.state}")
            self.power -= 1
            if self.power != 0:
                return
            try:
                self._stop(crashed=self.state == CRASHED)
            except KernelError:
                self.power += 1
                raise
            self._resource_cleanup()
            self.table = None

    def detach(self) -> None:
        """rproc_detach: attached only; the core keeps running."""
        with self.locked(hang="detach"):
            if self.state != ATTACHED:
                raise KernelError(errno.EINVAL, "not attached")
            self.power -= 1
            if self.power != 0:
                return
            if self.core.tee:
                self.power += 1
                raise KernelError(errno.EINVAL, "driver has no detach operation")
            self._stop_subdevices()
            if self.pristine is not None and self.core.hw_table is not None:
                self.core.memory.write(self.core.hw_table[0], self.pristine)
            self._mailbox("detach", MAILBOX_DETACH_TIMEOUT)
            self.state = DETACHED
            self.log(f"detached remote processor {self.name}")
            self._resource_cleanup()
            self.table = None

    # ------------------------------------------------------- boot helpers

    def _request_firmware(self) -> loader.Firmware:
        try:
            return loader.request_firmware(self.firmware, self.k.search_dirs())
        except KernelError as e:
            self.log(e.message)
            self.log(f"request_firmware failed: {-e.errno}")
            raise

    def _fw_boot(self, fw: loader.Firmware) -> None:
        """rproc_fw_boot: sanity → prepare → table → resources → carveouts → start."""
        self._tee_loaded = None
        try:
            if self.core.tee:
                self._tee_loaded = loader.tee_authenticate(fw.data, self.core.opts.tee_key,
                                                           self.core.memory.contains)
                self._tee_write(self._tee_loaded)
            else:
                loader.sanity_check(fw.data)
        except KernelError as e:
            self.log(e.message)
            raise
        self.log(f"Booting fw image {fw.name}, size {len(fw.data)}")
        self._prepare_device()
        try:
            self.bootaddr = self._boot_addr(fw)
            self._parse_fw(fw)
            self._handle_resources()
            self._alloc_registered_carveouts()
            self._start(fw)
        except KernelError as e:
            self.log(e.message)
            self._resource_cleanup()
            self.table = None
            raise

    def _boot_addr(self, fw: loader.Firmware) -> int:
        if self.core.tee:
            return 0
        if self.core.stm32 and not self.core.mp1:
            vec = loader.describe(fw.data).boot_vector
            return vec or 0
        return loader.entry_point(fw.data)

    def _parse_fw(self, fw: loader.Firmware) -> None:
        if self.core.tee:
            t = self._tee_loaded
            if t is None or t.table is None:
                self.k.klog(self.core.driver_dev, "no resource table found for this firmware")
                self.table = None
            else:
                self.table = bytearray(t.table)
            return
        try:
            sh = loader.find_table(fw.data)
        except KernelError as e:
            if self.core.stm32:  # §7.1: only a warning
                self.log(e.message)
                self.k.klog(self.core.driver_dev, "no resource table found for this firmware")
                self.table = None
                return
            raise
        self.table = bytearray(fw.data[sh.offset:sh.offset + sh.size])

    def _prepare_device(self) -> None:
        """STM32 prepare: every DT memory-region becomes a carveout and (but
        vdev0buffer) a coredump segment."""
        self.carveouts = [Carveout(r.name, r.da, r.size, r.phys) for r in self.core.spec.regions]
        self.dump_segments = [(r.da, r.size) for r in self.core.spec.regions
                              if r.name != "vdev0buffer"]

    def _start(self, fw: loader.Firmware) -> None:
        """rproc_start: load segments, install the table, ops->start, subdevices."""
        info = self._load_segments(fw)
        if self.table is not None and info.table_addr is not None:
            if self._da_to_va(info.table_addr, len(self.table)):
                self.core.memory.write(info.table_addr, bytes(self.table))
        err = self.core.take_fail_start()
        if err:
            raise KernelError(err, f"can't start rproc {self.name}: {-err}")
        self._add_trace_dump_segments()
        self.core.start_firmware(info, fw.name)
        boot_ms = self.core.fw_run.behaviour.boot_ms if self.core.fw_run else 0
        if boot_ms > 0 and not self.k.sleep(boot_ms / 1000):
            raise KernelError(errno.EINTR, "emulator shut down during boot")
        self._start_subdevices()
        self.state = RUNNING
        self.log(f"remote processor {self.name} is now up")

    def _load_segments(self, fw: loader.Firmware) -> loader.ImageInfo:
        if self.core.tee:
            t = self._tee_loaded
            if t is None:  # recovery: the TA loads (and authenticates) again
                try:
                    t = loader.tee_authenticate(fw.data, self.core.opts.tee_key,
                                                self.core.memory.contains)
                except KernelError as e:
                    self.log(e.message)
                    raise
                self._tee_write(t)
            self._tee_loaded = None
            return loader.ImageInfo(t.entry, t.behaviour, t.table_addr, t.table, None)

        def write(da: int, memsz: int, body: bytes) -> bool:
            return self._da_to_va(da, memsz) is not None and self.core.memory.write(da, body, memsz)

        loader.load_segments(fw.data, write, skip_empty=not self.core.opts.pre_519,
                             host_bits=self.core.host_bits)
        return loader.describe(fw.data)

    def _tee_write(self, t: loader.TeeImage) -> None:
        for da, memsz, body in t.segments:
            self.core.memory.write(da, body, memsz)

    def _attach(self) -> None:
        """rproc_attach: the table comes from device memory, no file is read."""
        self._prepare_device()
        try:
            self.table = self._loaded_table()
            self.pristine = None if self.table is None else bytes(self.table)
            self._handle_resources()
            self._alloc_registered_carveouts()
            err = self.core.take_fail_start()
            if err:
                raise KernelError(err, f"can't attach to rproc {self.name}: {-err}")
            self._add_trace_dump_segments()
            self._start_subdevices()
            self.state = ATTACHED
            self.log(f"remote processor {self.name} is now attached")
        except KernelError as e:
            self.log(e.message)
            self._resource_cleanup()
            self.table = None
            raise

    def _loaded_table(self) -> bytearray | None:
        loc = self.core.hw_table
        if loc is None:
            return None
        size = 1024 if self.core.mp1 else loc[1]  # MP1 maps RSC_TBL_SIZE bytes
        raw = self.core.memory.read(loc[0], size) or self.core.memory.read(loc[0], loc[1])
        if raw is None:
            self.k.klog(self.core.driver_dev, "resource table not in mapped memory")
            return None
        return bytearray(raw)

    # ---------------------------------------------------------- stopping

    def _stop(self, crashed: bool) -> None:
        """rproc_stop: subdevices, ops->stop (mailbox unless crashed), offline."""
        self._stop_subdevices()
        if not crashed:
            self._mailbox("shutdown", self.k.shutdown_timeout)
        self.core.reset()
        self.state = OFFLINE
        self.log(f"stopped remote processor {self.name}")

    def _mailbox(self, what: str, timeout: float) -> None:
        """Blocking mailbox to the firmware; it acks after shutdown_ack_ms."""
        run = self.core.fw_run
        ack = run.behaviour.shutdown_ack_ms if run is not None and run.alive else -1
        if 0 <= ack / 1000 <= timeout:
            self.k.sleep(ack / 1000)
        else:
            self.k.sleep(timeout)
            self.k.klog(self.core.driver_dev, f"warning: remote FW {what} without ack")

    def _resource_cleanup(self) -> None:
        """rproc_resource_cleanup: traces, carveouts, vdevs, dump segments."""
        self.traces = []
        self.publish_debugfs()
        for v in self.vdevs:
            self._remove_vdev(v)
        self.vdevs = []
        for c in self.carveouts:
            if c.bank is not None:
                self.core.memory.remove(c.bank)
        self.carveouts = []
        self.dump_segments = []
        self.notifyids = set()
        self.pristine = None

    # --------------------------------------------------------- resources

    def _da_to_va(self, da: int, length: int) -> Carveout | None:
        for c in self.carveouts:
            if c.allocated and c.da <= da and da - c.da + length <= c.length:
                return c
        return None

    def _find_carveout(self, name: str) -> Carveout | None:
        return next((c for c in self.carveouts if c.name == name), None)

    def _check_carveout_da(self, c: Carveout, da: int, length: int) -> bool:
        if length > c.length:
            self.log("Registered carveout doesn't fit len request")
            return False
        if da != FW_RSC_ADDR_ANY and (da < c.da or da - c.da + length > c.length):
            self.log("Registered carveout doesn't fit da request")
            return False
        return True

    def _handle_resources(self) -> None:
        t = self.table
        if t is None:
            return
        self.nb_vdev = 0
        for i in range(u32(t, 4)):
            if 16 + 4 * i + 4 > len(t):
                raise KernelError(errno.EINVAL, "rsc table is truncated")
            offset = u32(t, 16 + 4 * i)
            avail = len(t) - offset - 4
            if avail < 0:
                raise KernelError(errno.EINVAL, "rsc table is truncated")
            typ = u32(t, offset)
            if loader.RSC_VENDOR_START <= typ <= loader.RSC_VENDOR_END:
                self.log(f"unsupported vendor resource {typ}")
                continue
            if typ >= loader.RSC_LAST:
                self.log(f"unsupported resource {typ}")
                continue
            handler = (self._rsc_carveout, self._rsc_devmem, self._rsc_trace, self._rsc_vdev)[typ]
            handler(offset, avail)

    def _rsc_carveout(self, offset: int, avail: int) -> None:
        t, b = self.table, offset + 4
        assert t is not None
        if avail < 52:
            raise KernelError(errno.EINVAL, "carveout rsc is truncated")
        if u32(t, b + 16):
            raise KernelError(errno.EINVAL, "carveout rsc has non zero reserved bytes")
        da, length, flags = u32(t, b), u32(t, b + 8), u32(t, b + 12)
        name = loader.cstr(t, b + 20, 32).decode("latin-1")
        c = self._find_carveout(name)
        if c is not None:
            if c.rsc_offset is not None:
                raise KernelError(errno.ENOMEM, "Carveout already associated to resource table")
            if not self._check_carveout_da(c, da, length):
                raise KernelError(errno.ENOMEM, f"carveout {name} does not fit its region")
            c.rsc_offset, c.flags = b, flags
            return
        self.carveouts.append(Carveout(name, da, length, 0, b, flags, dynamic=True))

    def _rsc_devmem(self, offset: int, avail: int) -> None:
        raise KernelError(errno.EINVAL, "devmem rsc without an IOMMU domain")

    def _rsc_trace(self, offset: int, avail: int) -> None:
        t, b = self.table, offset + 4
        assert t is not None
        if avail < 44:
            raise KernelError(errno.EINVAL, "trace rsc is truncated")
        if u32(t, b + 8):
            raise KernelError(errno.EINVAL, "trace rsc has non zero reserved bytes")
        self.traces.append(Trace(f"trace{len(self.traces)}", u32(t, b), u32(t, b + 4)))
        self.publish_debugfs()

    def _rsc_vdev(self, offset: int, avail: int) -> None:
        t, b = self.table, offset + 4
        assert t is not None
        nvr = t[b + 21] if b + 21 < len(t) else 0
        if 24 + 20 * nvr + u32(t, b + 16) > avail:
            raise KernelError(errno.EINVAL, "vdev rsc is truncated")
        if (t[b + 22] if b + 22 < len(t) else 0) or (t[b + 23] if b + 23 < len(t) else 0):
            raise KernelError(errno.EINVAL, "vdev rsc has non zero reserved bytes")
        if nvr > 2:
            raise KernelError(errno.EINVAL, f"too many vrings: {nvr}")
        index = self.nb_vdev
        self.nb_vdev += 1
        pid = self.k.pdev_ida.alloc()
        syspath = self.k.devices.add(
            "platform", f"rproc-virtio.{pid}.auto", self.syspath,
            {"DRIVER": "rproc-virtio", "MODALIAS": "platform:rproc-virtio"}, {}, {})
        v = Vdev(index, b, pid, syspath)
        self.vdevs.append(v)
        v.probed = self._probe_rproc_virtio(v, nvr)
        if v.probed:
            self.k.devices.uevent(syspath, "bind")

    def _probe_rproc_virtio(self, v: Vdev, nvr: int) -> bool:
        """rproc-virtio probe (v6.1+): vring errors are logged, not fatal."""
        t = self.table
        assert t is not None
        for i in range(nvr):
            vr = v.rsc_offset + 24 + 20 * i
            if not u32(t, vr + 8) or not u32(t, vr + 4):
                self.log(f"invalid qsz ({u32(t, vr + 8)}) or alignment ({u32(t, vr + 4)})")
                return False
        for i in range(nvr):
            vr = v.rsc_offset + 24 + 20 * i
            size = loader.vring_size(u32(t, vr + 8), u32(t, vr + 4))
            name = f"vdev{v.index}vring{i}"
            c = self._find_carveout(name)
            if c is not None:
                if not self._check_carveout_da(c, u32(t, vr), size):
                    self.log(f"rproc-virtio: cannot use carveout {name}")
                    return False
            else:
                self.carveouts.append(Carveout(name, u32(t, vr), size, 0, dynamic=True))
            nid = next(n for n in itertools.count() if n not in self.notifyids)
            self.notifyids.add(nid)
            v.notifyids.append(nid)
            struct.pack_into("<I", t, vr + 12, nid)
        return True

    def _alloc_registered_carveouts(self) -> None:
        for c in self.carveouts:
            if c.allocated:
                continue
            if c.dynamic:
                self._alloc_dynamic(c)
            c.allocated = True
            if c.rsc_offset is not None and self.table is not None:
                struct.pack_into("<III", self.table, c.rsc_offset,
                                 c.da, c.dma & 0xFFFFFFFF, c.length)

    def _alloc_dynamic(self, c: Carveout) -> None:
        """rproc_alloc_carveout without IOMMU: DMA memory, da kept (warning)."""
        c.dma = self.k.dma_alloc(c.length)
        if c.da == FW_RSC_ADDR_ANY:
            c.da = c.dma
        elif c.da != c.dma:
            self.k.klog(self.core.driver_dev,
                        "Allocated carveout doesn't fit device address request")
        c.bank = f"{c.name}@{c.dma:x}"
        self.core.memory.add(c.bank, c.da, c.length)

    def _add_trace_dump_segments(self) -> None:
        for tr in self.traces:
            if not any(da <= tr.da and tr.da + tr.length <= da + size
                       for da, size in self.dump_segments):
                self.dump_segments.append((tr.da, tr.length))

    # -------------------------------------------------------- subdevices

    def _start_subdevices(self) -> None:
        run = self.core.fw_run
        channels = run.behaviour.rpmsg if run is not None else ()
        for v in self.vdevs:
            if v.probed:
                self._add_virtio(v, channels)

    def _add_virtio(self, v: Vdev, channels: tuple[str, ...]) -> None:
        t = self.table
        assert t is not None
        b = v.rsc_offset
        vid, dfeatures, nvr = u32(t, b), u32(t, b + 8), t[b + 21]
        m = self.k.next_virtio()
        name = f"virtio{m}"
        rpmsg = vid == VIRTIO_ID_RPMSG
        props = {"MODALIAS": f"virtio:d{vid:08X}v00000000"}
        if rpmsg:
            props["DRIVER"] = "virtio_rpmsg_bus"
        files = {"device": SimFile(0o444, lambda: f"0x{vid:04x}\n".encode()),
                 "vendor": SimFile(0o444, lambda: b"0x0000\n"),
                 "status": SimFile(0o444, lambda: f"0x{t[b + 20]:08x}\n".encode())}
        v.virtio = self.k.devices.add("virtio", name, v.pdev, props, files, {})
        v.children = []
        if not rpmsg:
            return
        nums = [u32(t, b + 24 + 20 * i + 8) for i in range(nvr)]
        if any(n & (n - 1) for n in nums):
            self.log(f"virtio_rpmsg_bus {name}: bad virtqueue length")
            t[b + 20] = 0x83  # ACKNOWLEDGE | DRIVER | FAILED
            return
        ns = bool(dfeatures & VIRTIO_RPMSG_F_NS)
        struct.pack_into("<I", t, b + 12, dfeatures & VIRTIO_RPMSG_F_NS)
        self._add_rpmsg(v, name, "rpmsg_ctrl", 0, 0)
        if ns:
            self._add_rpmsg(v, name, "rpmsg_ns", 53, 53)
        t[b + 20] = 0x7  # ACKNOWLEDGE | DRIVER | DRIVER_OK
        self.k.devices.uevent(v.virtio, "bind")
        v.virtio_bound = True
        if ns:
            for i, ch in enumerate(channels):
                self._add_rpmsg(v, name, ch, -1, 1024 + i)

    def _add_rpmsg(self, v: Vdev, vname: str, ch: str, src: int, dst: int) -> None:
        assert v.virtio is not None
        drv = RPMSG_DRIVERS.get(ch)
        props = {"MODALIAS": f"rpmsg:{ch}"}
        if drv:
            props["DRIVER"] = drv
        files = {"name": SimFile(0o444, lambda: f"{ch}\n".encode()),
                 "src": SimFile(0o444, lambda: f"0x{src & 0xFFFFFFFF:x}\n".encode()),
                 "dst": SimFile(0o444, lambda: f"0x{dst & 0xFFFFFFFF:x}\n".encode())}
        path = self.k.devices.add("rpmsg", f"{vname}.{ch}.{src}.{dst}", v.virtio, props, files, {})
        if drv:
            self.k.devices.uevent(path, "bind")
        v.children.append((path, bool(drv)))

    def _stop_subdevices(self) -> None:
        for v in reversed(self.vdevs):
            if v.virtio is None:
                continue
            for path, bound in reversed(v.children):
                if bound:
                    self.k.devices.uevent(path, "unbind")
                self.k.devices.remove(path)
            v.children = []
            if v.virtio_bound:
                self.k.devices.uevent(v.virtio, "unbind")
                v.virtio_bound = False
            self.k.devices.remove(v.virtio)
            v.virtio = None
            if self.table is not None:
                self.table[v.rsc_offset + 20] = 0  # virtio reset

    def _remove_vdev(self, v: Vdev) -> None:
        if self.table is not None:
            for i in range(len(v.notifyids)):
                vr = v.rsc_offset + 24 + 20 * i
                struct.pack_into("<I", self.table, vr, 0)
                struct.pack_into("<i", self.table, vr + 12, -1)
        if v.probed:
            self.k.devices.uevent(v.pdev, "unbind")
        self.k.devices.remove(v.pdev)
        self.k.pdev_ida.free(v.pdev_id)

    # ------------------------------------------------- crash and recovery

    def report_crash(self, crash_type: int) -> None:
        """rproc_report_crash: log and queue the crash work (separate thread)."""
        self.log(f"crash detected in {self.name}: type {CRASH_TYPES.get(crash_type, 'unknown')}")
        with self._crash_mu:
            if self._crash_queued:
                return
            self._crash_queued = True
            if self._crash_worker:
                return
            self._crash_worker = True
        self.k.spawn(self._crash_work_loop, f"crash-{self.name}")

    def _crash_work_loop(self) -> None:
        while True:
            with self._crash_mu:
                if not self._crash_queued or self.k.closing:
                    self._crash_worker = False
                    return
                self._crash_queued = False
            self._crash_handler()

    def _crash_handler(self) -> None:
        with self.lock:
            if self.state in (CRASHED, OFFLINE, DELETED):
                return
            self.state = CRASHED
            self.crash_cnt += 1
            self.log(f"handling crash #{self.crash_cnt} in {self.name}")
        if not self.recovery_disabled:
            self.trigger_recovery()

    def trigger_recovery(self) -> None:
        """rproc_trigger_recovery: boot recovery if crashed; errors only logged."""
        with self.lock:
            if self.state != CRASHED:
                return
            self.log(f"recovering {self.name}")
            try:
                self._stop(crashed=True)
                self._coredump()
                fw = self._request_firmware()
                self._start(fw)
            except KernelError as e:
                self.log(e.message)
                self.log(f"Failed to recover {self.name}: {-e.errno}")

    def _coredump(self) -> None:
        """rproc_coredump: nothing if disabled; inline blocks until released."""
        if not self.dump_segments or self.dump_conf == "disabled":
            return
        segments = list(self.dump_segments)
        machine = 0 if self.core.stm32 else self.core.spec.machine
        mem, entry = self.core.memory, self.bootaddr

        def read(da: int, size: int) -> bytes | None:
            return mem.read(da, size) if self._da_to_va(da, size) else None

        if self.dump_conf == "enabled":
            data = build_core_dump(segments, read, machine, entry)
            self.k.devcd.create(self, lambda: data)
            return
        d = self.k.devcd.create(self, lambda: build_core_dump(segments, read, machine, entry))
        if d is not None:
            self.k.wait_for(lambda: d.released)


# ------------------------------------------------------------------- kernel


class _Ida:
    """Lowest free id, reused after free (include/linux/idr.h)."""

    def __init__(self) -> None:
        self._used: set[int] = set()
        self._mu = threading.Lock()

    def alloc(self) -> int:
        with self._mu:
            n = next(i for i in itertools.count() if i not in self._used)
            self._used.add(n)
            return n

    def free(self, n: int) -> None:
        with self._mu:
            self._used.discard(n)


class SimKernel:
    """The emulated kernel of one board: platform devices, the remoteproc
    driver(s), devcoredump, firmware_class and the emulator's control files."""

    def __init__(
        self,
        board: Board,
        options: dict[str, CoreOptions],
        devices: DeviceSink,
        debugfs: DebugfsSink,
        firmware_dirs: list[Path],
        devcoredump_timeout: float = 300.0,
        *,
        shutdown_timeout: float = 0.5,
    ) -> None:
        self.board = board
        self.devices = devices
        self.debugfs = debugfs
        self.firmware_dirs = [str(d) for d in firmware_dirs]
        self.fw_path_param = self.firmware_dirs[0] if self.firmware_dirs else ""
        self.shutdown_timeout = shutdown_timeout
        self.log: list[str] = []
        self.closing = False
        self._cv = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self.sched = Scheduler(lambda m: self.klog("kernel", m))
        self.devcd = Devcoredump(self, devcoredump_timeout)
        self.rproc_ida = _Ida()
        self.pdev_ida = _Ida()
        self._virtio = itertools.count()
        self._dma = 0xD0000000
        self._dma_mu = threading.Lock()
        self.cores: dict[str, Core] = {
            c.name: Core(self, c, options.get(c.name) or CoreOptions()) for c in board.cores
        }
        self._by_platform = {c.spec.platform: c for c in self.cores.values()}

    # ------------------------------------------------------------ services

    def klog(self, dev: str, msg: str) -> None:
        self.log.append(f"{dev}: {msg}")
        if len(self.log) > 20000:
            del self.log[:5000]

    def notify(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until pred() (True) or shutdown/timeout (False)."""
        with self._cv:
            self._cv.wait_for(lambda: self.closing or pred(), timeout)
            return not self.closing and pred()

    def sleep(self, seconds: float) -> bool:
        """Emulated hardware time; False when the emulator shuts down meanwhile."""
        if seconds <= 0:
            return not self.closing
        with self._cv:
            self._cv.wait_for(lambda: self.closing, seconds)
        return not self.closing

    def spawn(self, fn: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                fn()
            finally:
                with self._cv:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"rprocd-sim-{name}", daemon=True)
        with self._cv:
            if self.closing:
                return
            self._threads.add(t)
        t.start()

    def next_virtio(self) -> int:
        return next(self._virtio)

    def dma_alloc(self, size: int) -> int:
        with self._dma_mu:
            addr = self._dma
            self._dma += (size + 0xFFF) & ~0xFFF
            return addr

    def search_dirs(self) -> list[str]:
        """firmware_class.path (one trailing newline ignored), then the rest."""
        param = self.fw_path_param
        if param.endswith("\n"):
            param = param[:-1]
        return [param, *self.firmware_dirs[1:]]

    # ------------------------------------------------------------ devices

    def boot(self) -> None:
        """Coldplug: platform devices, early-booted firmware, probe every core."""
        for core in self.cores.values():
            spec = core.spec
            addr, _, node = spec.platform.partition(".")
            props = {
                "DRIVER": spec.driver,
                "OF_NAME": node,
                "OF_FULLNAME": f"/{self.board.soc_path}/{node}@{addr}",
                "OF_COMPATIBLE_0": core.compatible,
                "OF_COMPATIBLE_N": "1",
                "MODALIAS": f"of:N{node}T(null)C{core.compatible}",
            }
            of_node = {"of_node": devicetree.node_path(self.board, spec)}
            core.platform_syspath = self.devices.add(
                "platform", spec.platform, None, props, {}, of_node)
            if core.opts.early != "offline":
                self._early_boot(core)
        for core in self.cores.values():
            try:
                self.bind(core.spec.platform)
            except OSError as e:
                self.klog(core.driver_dev,
                          f"probe with driver {core.spec.driver} failed with error {-e.errno}")

    def _early_boot(self, core: Core) -> None:
        """What the bootloader did before Linux: load and run an image."""
        name = core.opts.firmware or core.spec.default_firmware
        try:
            fw = loader.request_firmware(name, self.search_dirs())
            if core.tee:
                t = loader.tee_authenticate(fw.data, core.opts.tee_key, core.memory.contains)
                for da, memsz, body in t.segments:
                    core.memory.write(da, body, memsz)
                info = loader.ImageInfo(t.entry, t.behaviour, t.table_addr, t.table, None)
            else:
                loader.sanity_check(fw.data)
                loader.load_segments(fw.data, lambda da, n, b: core.memory.write(da, b, n))
                info = loader.describe(fw.data)
        except KernelError as e:
            self.klog(core.driver_dev, f"rprocd-sim: early firmware {name}: {e.message}; "
                                       "the core runs an image without resource table")
            info = loader.ImageInfo(0, None, None, None, None)
        core.start_firmware(info, name)

    def bind(self, platform_name: str) -> None:
        """driver bind: probe; ENODEV unknown device, EBUSY already bound."""
        core = self._by_platform.get(platform_name)
        if core is None:
            raise KernelError(errno.ENODEV, f"no platform device {platform_name}")
        with core.device_lock:
            if core.rproc is not None:
                raise KernelError(errno.EBUSY, f"{platform_name} already bound")
            self._probe(core)

    def _probe(self, core: Core) -> None:
        rp = Rproc(self, core, self.rproc_ida.alloc(), DETACHED if core.running else OFFLINE)
        core.rproc = rp
        rp.syspath = self.devices.add("remoteproc", f"remoteproc{rp.index}", core.platform_syspath,
                                      {"DEVTYPE": "remoteproc"}, rp.sysfs_files(), {})
        rp.registered = True
        rp.publish_debugfs()
        auto = core.opts.auto_boot or core.opts.early == "attached"
        if auto and rp.state == DETACHED:
            try:
                rp.boot()
            except KernelError:
                self._del(rp)
                raise
        elif auto:
            self.spawn(lambda: self._auto_boot(rp), f"autoboot-{rp.name}")
        self.devices.uevent(core.platform_syspath, "bind")

    def _auto_boot(self, rp: Rproc) -> None:
        try:
            rp.boot()
        except KernelError:
            pass  # request_firmware_nowait callback: only the kernel log knows

    def unbind(self, platform_name: str) -> None:
        """driver unbind (rproc_del); ENODEV when not bound."""
        core = self._by_platform.get(platform_name)
        if core is None or core.rproc is None:
            raise KernelError(errno.ENODEV, f"{platform_name} not bound")
        with core.device_lock:
            rp = core.rproc
            if rp is None:
                raise KernelError(errno.ENODEV, f"{platform_name} not bound")
            for _ in range(2 if rp.power > 0 else 1):  # driver remove, then rproc_del
                try:
                    rp.shutdown()
                except KernelError:
                    pass
            self._del(rp)
            self.devices.uevent(core.platform_syspath, "unbind")

    def _del(self, rp: Rproc) -> None:
        with rp.lock:
            rp.state = DELETED
        self.debugfs.remove_dir(rp.debugfs)
        rp.registered = False
        self.devices.remove(rp.syspath)
        for v in rp.vdevs:
            self.pdev_ida.free(v.pdev_id)
        for c in rp.carveouts:
            if c.bank is not None:
                rp.core.memory.remove(c.bank)
        if rp.core.fw_run is not None and not rp.core.fw_run.alive:
            rp.core.reset()  # a crashed core is not "running" at the next probe
        rp.core.rproc = None
        self.rproc_ida.free(rp.index)

    # -------------------------------------------------------- files

    def control_files(self) -> dict[str, SimFile]:
        """The emulator's knobs (HACKING.md "Control files"); the per-core
        entries follow the current remoteprocN, so re-read after plug/unplug."""
        files = {
            "devcoredump_timeout_ms": SimFile(
                0o644, lambda: f"{round(self.devcd.timeout * 1000)}\n".encode(),
                self._ctl_timeout),
            "plug": SimFile(0o200, None, lambda b: self._ctl_plug(b, self.bind)),
            "unplug": SimFile(0o200, None, lambda b: self._ctl_plug(b, self.unbind)),
        }
        for core in self.cores.values():
            rp = core.rproc
            if rp is None:
                continue
            files[f"remoteproc{rp.index}/hang"] = SimFile(
                0o644, lambda c=core: f"{c.hang or 0}\n".encode(),
                lambda b, c=core: self._ctl_hang(c, b))
            files[f"remoteproc{rp.index}/fail_start"] = SimFile(
                0o644, lambda c=core: (errno.errorcode.get(c.fail_start, "") + "\n").encode()
                if c.fail_start else b"\n",
                lambda b, c=core: self._ctl_fail_start(c, b))
        return files

    def _ctl_timeout(self, data: bytes) -> int:
        try:
            ms = int(data.decode().strip())
        except ValueError:
            raise KernelError(errno.EINVAL, "expected milliseconds") from None
        if ms < 0:
            raise KernelError(errno.EINVAL, "expected milliseconds")
        self.devcd.timeout = ms / 1000
        return len(data)

    def _ctl_plug(self, data: bytes, action: Callable[[str], None]) -> int:
        name = data.decode("utf-8", "replace").strip()
        core = self.cores.get(name) or self._by_platform.get(name)
        if core is None:
            raise KernelError(errno.ENODEV, f"no core {name}")
        action(core.spec.platform)
        return len(data)

    def _ctl_hang(self, core: Core, data: bytes) -> int:
        value = data.decode("utf-8", "replace").strip()
        if value not in ("0", "1", "start", "stop", "detach"):
            raise KernelError(errno.EINVAL, "hang takes 0, 1, start, stop or detach")
        with self._cv:
            core.hang = "" if value == "0" else value
            self._cv.notify_all()
        return len(data)

    def _ctl_fail_start(self, core: Core, data: bytes) -> int:
        value = data.decode("utf-8", "replace").strip()
        if value in ("", "0", "none"):
            core.fail_start = None
        elif value.isdigit():
            core.fail_start = int(value)
        elif value.upper() in errno.__dict__ and isinstance(getattr(errno, value.upper()), int):
            core.fail_start = getattr(errno, value.upper())
        else:
            raise KernelError(errno.EINVAL, f"unknown errno {value!r}")
        return len(data)

    def bus_files(self) -> dict[str, SimFile]:
        """Files under /sys that are not device attributes."""
        files: dict[str, SimFile] = {}
        for driver in sorted({c.spec.driver for c in self.cores.values()}):
            base = f"bus/platform/drivers/{driver}"
            files[f"{base}/bind"] = SimFile(
                0o200, None, _sysfs_store(lambda b, d=driver: self._bus_bind(d, b, self.bind)))
            files[f"{base}/unbind"] = SimFile(
                0o200, None, _sysfs_store(lambda b, d=driver: self._bus_bind(d, b, self.unbind)))
        files.update(devicetree.files(self.board))
        files["class/devcoredump/disabled"] = SimFile(
            0o644, lambda: b"1\n" if self.devcd.disabled else b"0\n",
            _sysfs_store(self.devcd.store_disabled))
        files["module/firmware_class/parameters/path"] = SimFile(
            0o644, lambda: (self.fw_path_param + "\n").encode("utf-8", "surrogateescape"),
            _sysfs_store(self._store_fw_path))
        return files

    def _bus_bind(self, driver: str, data: bytes, action: Callable[[str], None]) -> None:
        for core in self.cores.values():
            if sysfs_streq(data, core.spec.platform.encode()):
                if core.spec.driver != driver:
                    break
                action(core.spec.platform)
                return
        raise KernelError(errno.ENODEV, "no such device for this driver")

    def _store_fw_path(self, data: bytes) -> None:
        value = cstring(data)
        if len(value) + 1 > 256:
            raise KernelError(errno.ENOSPC, "firmware_class.path: string too long")
        self.fw_path_param = value.decode("utf-8", "surrogateescape")

    # ------------------------------------------------------------ teardown

    def shutdown(self) -> None:
        """Cancel timers, wake every blocked write, join every thread; idempotent."""
        with self._cv:
            self.closing = True
            self._cv.notify_all()
        for core in self.cores.values():
            run = core.fw_run
            if run is not None:
                run.halt()
        self.sched.close()
        with self._cv:
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(5)
