"""Issue 5, coredumps end to end: what the real daemon saves when an emulated
core crashes with the kernel's coredump on (Coredump=enabled / inline).

A saved dump is checked against what the kernel makes of the core (ABI §3.5):
an ELF32 ET_CORE, one PT_LOAD per memory region of the core but vdev0buffer
(STM32: its DT memory-regions, in order), p_vaddr = p_paddr = da, file
offsets contiguous, the file exactly as long as its headers plus every
segment ("saved whole"), and the bytes of the firmware's read-only segments
found at their addresses (it is that core's memory, not another's). The
`.json` next to it describes it, the `.trace` holds the firmware's last trace
lines. Rotation keeps CoredumpKeep= dumps per core. Two cores crashing
together each get their own dump.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path

try:
    from test_api_board import BUS_NAME, FIRMWARE, SimBoard
    from test_crash_supervision import (
        Crash,
        Signals,
        crash_and_check,
        crash_board,
        inject,
        needs_sim,
        path_of,
        sh,
        wait_kernel_state,
        wait_prop,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import BUS_NAME, FIRMWARE, SimBoard
    from tests.integration.test_crash_supervision import (
        Crash,
        Signals,
        crash_and_check,
        crash_board,
        inject,
        needs_sim,
        path_of,
        sh,
        wait_kernel_state,
        wait_prop,
    )

from tests.firmware.fixtures import REGIONS

pytestmark = needs_sim

MP1 = "stm32mp157f-dk"
MP2 = "stm32mp257f-dk"
M4 = path_of("m4")
T = 30
PT_LOAD = 1
ET_CORE = 4


def coredump_dir(sim: SimBoard) -> Path:
    """CoredumpDirectory= default: STATE_DIRECTORY/coredump."""
    return Path(sim.env["STATE_DIRECTORY"]) / "coredump"


def dump_segments(core: str) -> list[tuple[int, int]]:
    """(da, size) of the kernel's dump segments of an STM32 core: every
    memory region but vdev0buffer, in DT order (the trace buffer lies in one)."""
    return [(da, size) for name, (da, size) in REGIONS[core].items() if name != "vdev0buffer"]


def parse_core(data: bytes) -> tuple[dict, list[dict]]:
    """ELF32 little-endian header and program headers of a core file."""
    assert data[:4] == b"\x7fELF", data[:16]
    assert (data[4], data[5]) == (1, 1), "not ELF32 little-endian"
    (e_type, e_machine, e_version, e_entry, e_phoff, _shoff, _flags, e_ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIIIIIHHH", data, 16)
    header = {"type": e_type, "machine": e_machine, "version": e_version, "entry": e_entry,
              "phoff": e_phoff, "ehsize": e_ehsize, "phentsize": e_phentsize, "phnum": e_phnum}
    phdrs = []
    for i in range(e_phnum):
        fields = struct.unpack_from("<8I", data, e_phoff + i * 32)
        phdrs.append(dict(zip(("type", "offset", "vaddr", "paddr", "filesz", "memsz",
                               "flags", "align"), fields, strict=True)))
    return header, phdrs


def firmware_segments(name: str) -> list[dict]:
    """The PT_LOAD headers of a firmware image, with their file bytes."""
    data = (FIRMWARE / name).read_bytes()
    _header, phdrs = parse_core(data)  # same ELF32 layout
    for ph in phdrs:
        ph["bytes"] = data[ph["offset"]:ph["offset"] + ph["filesz"]]
    return [ph for ph in phdrs if ph["type"] == PT_LOAD]


def check_core_file(path: Path, core: str, firmware: str) -> bytes:
    """The saved .core is the kernel's whole dump of `core` running `firmware`."""
    data = path.read_bytes()
    header, phdrs = parse_core(data)
    assert header["type"] == ET_CORE, header
    assert header["machine"] == 0, "STM32 dumps are EM_NONE (ABI §7.1)"
    assert (header["phoff"], header["phentsize"]) == (52, 32), header
    segments = dump_segments(core)
    assert [(ph["vaddr"], ph["memsz"]) for ph in phdrs] == segments, (
        f"{path.name}: the segments are not {core}'s memory regions: {phdrs}")
    offset = 52 + 32 * len(phdrs)
    for ph in phdrs:
        assert ph["type"] == PT_LOAD and ph["paddr"] == ph["vaddr"], ph
        assert ph["filesz"] == ph["memsz"] and ph["flags"] == 7, ph
        assert ph["offset"] == offset, f"segments not contiguous: {phdrs}"
        offset += ph["filesz"]
    assert len(data) == offset, f"{path.name}: {len(data)} bytes, the dump has {offset}"
    # The firmware's read-only segments are in that memory, byte for byte.
    checked = 0
    for seg in firmware_segments(firmware):
        if seg["flags"] & 2 or not seg["filesz"]:
            continue  # writable: the firmware and the kernel change it at run time
        for ph in phdrs:
            if ph["vaddr"] <= seg["paddr"] < ph["vaddr"] + ph["memsz"]:
                at = ph["offset"] + seg["paddr"] - ph["vaddr"]
                assert data[at:at + seg["filesz"]] == seg["bytes"], (
                    f"{path.name}: the segment at {seg['paddr']:#x} is not {firmware}'s")
                checked += 1
    assert checked, f"no read-only segment of {firmware} found in the dump"
    return data


def check_metadata(core_file: Path, core: str, device: str, firmware: str,
                   crash: Crash) -> dict:
    meta_file = core_file.with_suffix(".json")
    assert meta_file.exists(), f"no {meta_file.name} next to {core_file.name}"
    meta = json.loads(meta_file.read_text())
    data = core_file.read_bytes()
    assert (meta["core"], meta["device"], meta["firmware"]) == (core, device, firmware), meta
    assert meta["firmware_sha256"] == hashlib.sha256(
        (FIRMWARE / firmware).read_bytes()).hexdigest(), meta
    assert meta["time_usec"] == crash.time_usec, (meta, crash)
    assert meta["crash_type"] == crash.type, (meta, crash)
    assert (meta["format"], meta["size"]) == ("ELF", len(data)), meta
    assert meta["sha256"] == hashlib.sha256(data).hexdigest(), meta
    assert meta["core_file"] == core_file.name and meta["id"] == core_file.stem, meta
    assert core_file.name.startswith(f"{core}-"), core_file.name
    return meta


def trace_lines(sim: SimBoard, path: str) -> str:
    proc = sim.pydbus().get(BUS_NAME, path)
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline and text.count("\n") < 3:
        text = proc.ReadTrace("", timeout=T)
        time.sleep(0.1)
    assert text.count("\n") >= 3, f"the firmware wrote no trace lines: {text!r}"
    return text


def crash_with_dump(sim: SimBoard, signals: Signals, core: str, device: str, number: int,
                    crash_type: int = 1) -> tuple[Crash, Path]:
    """Inject a crash; the Crashed signal names the saved dump."""
    crash = crash_and_check(sim, signals, path_of(core), device, crash_type, number)
    assert crash.coredump, f"Crashed came without a coredump: {crash}"
    core_file = Path(crash.coredump)
    assert core_file.parent == coredump_dir(sim), core_file
    assert core_file.suffix == ".core" and core_file.exists(), core_file
    props = wait_prop(sim, path_of(core), "LastCoredump", crash.coredump)
    assert props["CrashCount"] == number, props
    return crash, core_file


def saved_whole(mode: str) -> None:
    config = f"[Processor m4]\nCoredump={mode}\n"
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert m4.CoredumpMode == mode
        assert sh(sim, "cat /sys/class/remoteproc/remoteproc0/coredump").stdout.strip() == mode
        m4.Start("m4-good.elf", timeout=T)
        before = trace_lines(sim, M4)
        # The emulated kernel's recovery reloads the firmware within milliseconds,
        # before the daemon can read the crashed run's buffer; what it keeps is
        # its last read, made by the poll (PollIntervalSec=1s): wait for one.
        # (This used to pass only when the boot's uevent handling happened to
        # read the buffer after the firmware had written its lines.)
        time.sleep(1.2)
        crash, core_file = crash_with_dump(sim, signals, "m4", "remoteproc0", 1)
        check_core_file(core_file, "m4", "m4-good.elf")
        meta = check_metadata(core_file, "m4", "remoteproc0", "m4-good.elf", crash)
        # The firmware's last words at the crash: everything it had written.
        trace_file = core_file.with_suffix(".trace")
        assert meta["trace_file"] == trace_file.name and trace_file.exists(), meta
        saved = trace_file.read_text()
        assert meta["trace_size"] == len(trace_file.read_bytes())
        # (as of the daemon's last read of the buffer: see the tests below)
        assert before.splitlines()[0] in saved and "heartbeat" in saved, (before, saved)
        # The kernel's dump was dismissed (none left for 5 minutes), the core runs again.
        wait_kernel_state(sim, "remoteproc0", "running")
        assert sh(sim, "ls /sys/class/devcoredump/").stdout.split() == ["disabled"]
        wait_prop(sim, M4, "State", "running")
        out = sim.rprocctl("--json", "coredump", "list", "m4")
        assert out.returncode == 0, out.stderr
        listed = json.loads(out.stdout)
        assert [entry["id"] for entry in listed] == [core_file.stem], listed


def test_coredump_enabled_is_saved_whole_with_the_last_trace():
    saved_whole("enabled")


def test_coredump_inline_is_saved_whole_and_the_core_recovers():
    """Inline: the kernel's recovery waits until the dump is read and dismissed."""
    saved_whole("inline")


def test_coredumps_rotate_to_coredump_keep():
    config = "[Processor m4]\nCoredump=enabled\nCoredumpKeep=2\nStartLimitBurst=0\n"
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        saved = []
        for number in (1, 2, 3):
            _crash, core_file = crash_with_dump(sim, signals, "m4", "remoteproc0", number,
                                                crash_type=number - 1)
            saved.append(core_file)
            wait_kernel_state(sim, "remoteproc0", "running")
            wait_prop(sim, M4, "State", "running")
        assert len(set(saved)) == 3, saved
        files = sorted(p.name for p in coredump_dir(sim).iterdir())
        kept = sorted(f"{p.stem}{suffix}" for p in saved[1:]
                      for suffix in (".core", ".json", ".trace"))
        assert files == kept, files
        for core_file in saved[1:]:
            check_core_file(core_file, "m4", "m4-good.elf")
        out = sim.rprocctl("--json", "coredump", "list", "m4")
        assert out.returncode == 0, out.stderr
        assert sorted(e["id"] for e in json.loads(out.stdout)) == sorted(
            p.stem for p in saved[1:])


def test_two_cores_crashing_together_get_their_own_dumps():
    """m4 (MP1) and m0 (MP2) crash back to back, their devcoredumps pending at
    the same time: each saved dump is its own core's memory; m33, which did
    not crash, gets nothing."""
    config = "[Processor *]\nCoredump=enabled\n"
    with crash_board(MP1, MP2, firmware=("m4-good.elf", "m0-good.elf"), config=config) as (
            sim, signals):
        bus = sim.pydbus()
        m4, m0, m33 = (bus.get(BUS_NAME, path_of(c)) for c in ("m4", "m0", "m33"))
        m4.Start("m4-good.elf", timeout=T)
        m0.Start("m0-good.elf", timeout=T)
        devices = {"m4": m4.Device, "m0": m0.Device}
        assert devices["m4"] != devices["m0"]
        inject(sim, devices["m0"], 2)
        inject(sim, devices["m4"], 0)
        for core, firmware in (("m4", "m4-good.elf"), ("m0", "m0-good.elf")):
            (crash,) = signals.wait(path_of(core), 1, timeout=30)
            assert crash.coredump, crash
            core_file = Path(crash.coredump)
            check_core_file(core_file, core, firmware)
            check_metadata(core_file, core, devices[core], firmware, crash)
            wait_kernel_state(sim, devices[core], "running")
        assert (m33.CrashCount, m33.LastCoredump) == (0, "")
        assert signals.of(path_of("m33")) == []
        names = sorted(p.name for p in coredump_dir(sim).glob("*.core"))
        assert len(names) == 2 and {n.split("-")[0] for n in names} == {"m4", "m0"}, names
        assert sh(sim, "ls /sys/class/devcoredump/").stdout.split() == ["disabled"]


def last_trace_at_crash(config: str, recover: bool) -> None:
    """Let the firmware write for a while, read its trace (ReadTrace, which
    does not feed the daemon's follower), crash it: the saved .trace must
    hold every line written before the crash."""
    with crash_board(MP1, firmware=("m4-good.elf",), config=config) as (sim, signals):
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        trace_lines(sim, M4)
        time.sleep(1.0)
        before = m4.ReadTrace("", timeout=T)
        (crash,) = [crash_and_check(sim, signals, M4, "remoteproc0", 2, 1)]
        if recover:  # Restart=no: the dump is made by the recovery Recover() asks for
            wait_prop(sim, M4, "State", "crashed")
            m4.Recover(timeout=T)
            core_file = Path(wait_prop(sim, M4, "LastCoredump", "", negate=True)
                             ["LastCoredump"])
        else:
            assert crash.coredump, crash
            core_file = Path(crash.coredump)
        saved = core_file.with_suffix(".trace").read_text()
        last = before.splitlines()[-1]
        assert last in saved, (
            f"the firmware's last line before the crash ({last!r}) is not in the saved trace; "
            f"ReadTrace just before the crash:\n{before}\nsaved:\n{saved}")


def test_last_trace_is_complete_when_the_core_stays_crashed():
    """Restart=no: the daemon reads the buffer while the core is crashed."""
    last_trace_at_crash("[Processor m4]\nRestart=no\nCoredump=enabled\n", recover=True)


def test_inline_dump_saves_the_trace_up_to_the_crash():
    """Coredump=inline: the kernel's recovery waits for the dump to be released,
    so the crashed run's trace buffer is still readable while the daemon
    copies the dump (ABI §3.5, §4). A long poll interval makes sure the
    daemon's last periodic read is older than the last lines."""
    last_trace_at_crash("[Manager]\nPollIntervalSec=30s\n[Processor m4]\nCoredump=inline\n",
                        recover=False)
