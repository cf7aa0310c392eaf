"""Crash handling, recovery, the stuck state and devcoredump (ABI §2.4, §2.5, §3)."""

from __future__ import annotations

import errno
import struct
import threading
import time

import pytest
from test_sim_fakes import m4_image, wait_until
from test_sim_kernel import DBG, RP, Sim

CRASH = f"{DBG}/crash"


@pytest.fixture
def make(tmp_path):
    made: list[Sim] = []

    def new(**kw) -> Sim:
        s = Sim(tmp_path / f"s{len(made)}", **kw)
        made.append(s)
        return s

    yield new
    for s in made:
        s.k.shutdown()


def _states(sim: Sim, until: set[str], stop: threading.Event) -> list[str]:
    seen: list[str] = []
    while not stop.is_set():
        st = sim.state()
        if not seen or seen[-1] != st:
            seen.append(st)
        time.sleep(0.001)
    return seen


def test_crash_with_recovery_reloads_and_recreates_virtio(make):
    s = make(firmware={"rproc-m4-fw": m4_image(boot_ms=80)})
    s.write("state", "start")
    trace_files = s.dbg.files(DBG)
    calls = len(s.dbg.calls)
    m = s.dev.mark()
    stop = threading.Event()
    seen: list[str] = []
    poll = threading.Thread(target=lambda: seen.extend(_states(s, set(), stop)))
    poll.start()
    assert s.dbg.write(CRASH, "1\n") == 2
    wait_until(lambda: any("remote processor m4 is now up" in x for x in s.k.log[3:]))
    stop.set()
    poll.join()
    assert s.state() == "running"
    # `crashed` lasts microseconds before recovery starts: it may be missed
    assert seen in (["running", "crashed", "offline", "running"], ["running", "offline", "running"])
    assert s.dev.since(m) == [
        ("unbind", "virtio0.rpmsg-tty.-1.1024"), ("remove", "virtio0.rpmsg-tty.-1.1024"),
        ("unbind", "virtio0.rpmsg_ns.53.53"), ("remove", "virtio0.rpmsg_ns.53.53"),
        ("unbind", "virtio0.rpmsg_ctrl.0.0"), ("remove", "virtio0.rpmsg_ctrl.0.0"),
        ("unbind", "virtio0"), ("remove", "virtio0"),
        ("add", "virtio1"),
        ("add", "virtio1.rpmsg_ctrl.0.0"), ("bind", "virtio1.rpmsg_ctrl.0.0"),
        ("add", "virtio1.rpmsg_ns.53.53"), ("bind", "virtio1.rpmsg_ns.53.53"),
        ("bind", "virtio1"),
        ("add", "virtio1.rpmsg-tty.-1.1024"), ("bind", "virtio1.rpmsg-tty.-1.1024"),
    ]  # rproc-virtio.0.auto stays, no devcoredump (mode disabled)
    assert s.dbg.files(DBG) == trace_files and len(s.dbg.calls) == calls  # traces survive
    assert s.power() == 1
    log = [line.split(": ", 1)[1] for line in s.k.log]
    i = log.index("crash detected in m4: type watchdog")
    assert log[i:i + 5] == ["crash detected in m4: type watchdog", "handling crash #1 in m4",
                            "recovering m4", "stopped remote processor m4",
                            "remote processor m4 is now up"]
    assert not any("without ack" in x for x in s.k.log)  # crashed: no shutdown mailbox


def test_crash_types_in_the_log(make):
    s = make()
    s.write("state", "start")
    for value, word in (("0", "mmufault"), ("2", "fatal error"), ("0x7", "unknown")):
        s.dbg.write(CRASH, value)
        wait_until(lambda: s.state() == "running" and "recovering" in s.k.log[-3])
        assert any(f"type {word}" in x for x in s.k.log)


def test_recovery_disabled_stays_crashed(make):
    s = make(options=["recovery=disabled"])
    s.write("state", "start")
    s.dbg.write(CRASH, "2")
    wait_until(lambda: s.state() == "crashed")
    time.sleep(0.02)
    assert s.state() == "crashed"
    assert s.err("state", "stop") == errno.EINVAL
    assert s.err("firmware", "other") == errno.EBUSY
    assert s.err("coredump", "enabled") == errno.EBUSY
    assert s.err("coredump", "garbage") == errno.EBUSY  # checked before the keyword
    assert s.dbg_err(f"{DBG}/coredump", "enabled") == errno.EBUSY
    assert s.err("state", "detach") == errno.EINVAL
    assert s.write("state", "start") == 5  # silent no-op, power 2
    assert s.power() == 2 and s.state() == "crashed"
    assert "trace0" in s.dbg.files(DBG)  # still readable while crashed
    s.dbg.write(CRASH, "1")  # only the first crash counts
    time.sleep(0.02)
    assert sum("handling crash" in x for x in s.k.log) == 1
    assert s.write("recovery", "recover\n") == 8  # synchronous
    assert s.state() == "running" and s.dev.read(RP, "recovery") == "disabled\n"
    s.write("state", "stop")
    assert s.state() == "running"  # power 2 from the no-op start
    s.write("state", "stop")
    assert s.state() == "offline"


def test_writing_enabled_recovers_a_crashed_core(make):
    s = make(options=["recovery=disabled"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "crashed")
    s.write("recovery", "enabled")
    assert s.state() == "running" and s.dev.read(RP, "recovery") == "enabled\n"


def test_pre_519_start_on_crashed_is_a_noop(make):
    s = make(options=["recovery=disabled", "kernel=5.15"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "crashed")
    assert s.write("state", "start") == 5
    assert s.power() == 2


def test_crashed_stop_option_allows_stopping_a_crashed_core(make):
    s = make(options=["recovery=disabled", "crashed_stop=stop"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "crashed")
    s.write("state", "stop")
    assert s.state() == "offline" and s.power() == 0
    assert s.dev.names("virtio") == [] and "trace0" not in s.dbg.files(DBG)


def test_firmware_scripted_crash_is_recovered(make):
    s = make(firmware={"rproc-m4-fw": m4_image(crash_after_ms=30, crash_type=2)},
             options=["recovery=disabled"])
    s.write("state", "start")
    wait_until(lambda: s.state() == "crashed")
    assert any("type fatal error" in x for x in s.k.log)
    s.write("recovery", "recover")
    assert s.state() == "running"
    wait_until(lambda: s.state() == "crashed")  # the reloaded image crashes again


def test_failed_recovery_leaves_the_stuck_offline_state(make):
    s = make(options=["recovery=disabled"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "crashed")
    (s.dir / "rproc-m4-fw").unlink()
    assert s.write("recovery", "recover") == 7  # the write succeeds anyway
    assert s.state() == "offline" and s.power() == 1
    assert s.write("state", "start") == 5  # success, does nothing
    assert s.state() == "offline" and s.power() == 2
    assert s.err("state", "stop") == errno.EINVAL
    assert s.write("firmware", "other") == 5  # offline: allowed
    s.dbg.write(CRASH, "1")
    time.sleep(0.02)
    assert s.state() == "offline"  # crashes are ignored now
    s.k.unbind("10000000.m4")
    s.k.bind("10000000.m4")
    assert s.state() == "offline" and s.power() == 0
    (s.dir / "rproc-m4-fw").write_bytes(m4_image())
    s.write("state", "start")
    assert s.state() == "running"


def test_attached_core_crash_recovers_by_booting_the_file(make):
    s = make(options=["early=attached", "firmware=early.elf"],
             firmware={"early.elf": m4_image(), "rproc-m4-fw": m4_image()})
    assert s.state() == "attached"
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "running")
    assert s.dev.read(RP, "firmware") == "rproc-m4-fw\n" and s.power() == 1
    assert s.dbg.read(f"{DBG}/trace0").startswith(b"rprocd-sim: rproc-m4-fw booted")


# ------------------------------------------------------------ devcoredump


def _elf_core(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    assert data[:4] == b"\x7fELF" and data[4] == 1 and data[5] == 1
    e_type, machine = struct.unpack_from("<HH", data, 16)
    phoff, = struct.unpack_from("<I", data, 28)
    phnum, = struct.unpack_from("<H", data, 44)
    assert phoff == 52
    segs = []
    for i in range(phnum):
        t, off, va, pa, fs, ms, fl, al = struct.unpack_from("<8I", data, 52 + 32 * i)
        assert (t, va, fs, fl, al) == (1, pa, ms, 7, 0)
        segs.append((pa, fs, off))
    return e_type, machine, segs


def test_coredump_enabled_creates_one_devcoredump(make):
    s = make(options=["coredump=enabled"],
             firmware={"rproc-m4-fw": m4_image(trace=["x"], trace_period_ms=1000)})
    s.write("state", "start")
    rp_path = s.dev.find(RP)[0]
    m = s.dev.mark()
    s.dbg.write(CRASH, "1")
    wait_until(lambda: "devcd1" in s.dev.names("devcoredump") and s.state() == "running")
    assert ("add", "devcd1") in s.dev.since(m)
    path, devcd = s.dev.find("devcd1")
    assert path == "/sys/devices/virtual/devcoredump/devcd1" and devcd.parent is None
    assert devcd.links == {"failing_device": rp_path}
    assert s.dev.find(RP)[1].links == {"devcoredump": path}
    data_file = devcd.files["data"]
    assert data_file.mode == 0o600
    data = data_file.read()
    e_type, machine, segs = _elf_core(data)
    assert (e_type, machine) == (4, 0)  # ET_CORE, STM32: EM_NONE
    assert [(da, size) for da, size, _ in segs] == [
        (0x0, 0x10000), (0x10000000, 0x40000), (0x10040000, 0x1000), (0x10041000, 0x1000)]
    assert segs[0][2] == 52 + 4 * 32
    assert len(data) == segs[-1][2] + 0x1000
    code = data[segs[1][2]:segs[1][2] + 256]
    assert code == bytes(range(256))  # the loaded image is in the dump
    banner = data[segs[1][2] + 0x20000:segs[1][2] + 0x20000 + 10]
    assert banner == b"rprocd-sim"  # the trace buffer inside mcuram
    # second crash while pending: dropped silently
    s.dbg.write(CRASH, "1")
    wait_until(lambda: sum("now up" in x for x in s.k.log) == 3)
    assert s.dev.names("devcoredump") == ["devcd1"]
    m = s.dev.mark()
    assert data_file.write(b"1") == 1
    wait_until(lambda: s.dev.names("devcoredump") == [])
    assert s.dev.since(m) == [("remove", "devcd1")]
    assert s.dev.find(RP)[1].links == {}
    s.dbg.write(CRASH, "1")
    wait_until(lambda: "devcd2" in s.dev.names("devcoredump"))  # counter never reused


def test_devcoredump_timeout_control(make):
    s = make(options=["coredump=enabled"])
    files = s.k.control_files()
    assert files["devcoredump_timeout_ms"].read() == b"300000\n"
    assert s.ctl("devcoredump_timeout_ms", "50\n") == 3
    with pytest.raises(OSError) as e:
        s.ctl("devcoredump_timeout_ms", "soon")
    assert e.value.errno == errno.EINVAL
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: "devcd1" in s.dev.names("devcoredump"))
    wait_until(lambda: s.dev.names("devcoredump") == [], timeout=2)


def test_inline_coredump_blocks_recovery_until_dismissed(make):
    s = make(options=["coredump=inline", "recovery=disabled"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "crashed")
    done = threading.Event()
    t = threading.Thread(target=lambda: (s.write("recovery", "recover"), done.set()))
    t.start()
    wait_until(lambda: "devcd1" in s.dev.names("devcoredump"))
    time.sleep(0.05)
    assert not done.is_set() and s.state() == "offline"
    data = s.dev.file("devcd1", "data").read()
    assert _elf_core(data)[0] == 4
    s.dev.file("devcd1", "data").write(b"x")
    t.join(2)
    assert done.is_set() and s.state() == "running"


def test_inline_coredump_released_by_timeout(make):
    s = make(options=["coredump=inline"], devcoredump_timeout=0.1)
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: s.state() == "offline")
    wait_until(lambda: s.state() == "running", timeout=3)
    assert s.dev.names("devcoredump") == []


def test_devcoredump_disabled_switch(make):
    s = make(options=["coredump=inline"])
    f = s.k.bus_files()["class/devcoredump/disabled"]
    assert f.read() == b"0\n" and f.mode == 0o644
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: "devcd1" in s.dev.names("devcoredump"))
    for bad in (b"0", b"2", b"yes", b"-1"):
        with pytest.raises(OSError) as e:
            f.write(bad)
        assert e.value.errno == errno.EINVAL
    assert f.write(b"1\n") == 2  # flushes the pending dump, releasing recovery
    wait_until(lambda: s.state() == "running")
    assert s.dev.names("devcoredump") == [] and f.read() == b"1\n"
    s.dbg.write(CRASH, "1")  # disabled: inline no longer blocks, nothing is created
    wait_until(lambda: sum("now up" in x for x in s.k.log) == 3)
    assert s.dev.names("devcoredump") == []


def test_coredump_disabled_mode_creates_nothing(make):
    s = make()
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: sum("now up" in x for x in s.k.log) == 2)
    assert s.dev.names("devcoredump") == []


def test_shutdown_releases_an_inline_wait(make):
    s = make(options=["coredump=inline"])
    s.write("state", "start")
    s.dbg.write(CRASH, "1")
    wait_until(lambda: "devcd1" in s.dev.names("devcoredump"))
    t0 = time.monotonic()
    s.k.shutdown()
    assert time.monotonic() - t0 < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("rprocd-sim")]


def _built(name: str):
    from test_sim_loader import FIXTURES

    fixture = FIXTURES[name]
    assert fixture.path.exists(), "run `make -C tests/firmware` first"
    return fixture.path.read_bytes()


def test_built_images_trace_ack_and_crash(make):
    s = make(firmware={"rproc-m4-fw": _built("m4-good.elf"), "noack": _built("m4-noack.elf"),
                       "crash": _built("m4-crash.elf")}, shutdown_timeout=0.2)
    s.write("state", "start")
    assert "virtio0.rpmsg-tty.-1.1024" in s.dev.names("rpmsg")
    wait_until(lambda: s.dbg.read(f"{DBG}/trace0").count(b"\n") >= 2)
    s.write("state", "stop")
    assert not any("without ack" in x for x in s.k.log)
    s.write("firmware", "noack")
    s.write("state", "start")
    s.write("state", "stop")
    assert any("without ack" in x for x in s.k.log)
    s.write("firmware", "crash")
    s.write("state", "start")
    wait_until(lambda: sum("now up" in x for x in s.k.log) == 4)  # crashed and recovered
    assert any("handling crash #1 in m4" in x for x in s.k.log)
