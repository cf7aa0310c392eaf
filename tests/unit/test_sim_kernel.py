"""The emulated remoteproc kernel against the ABI reference: sysfs state
machine, errno tables, power refcount, transient states, devices and uevents,
debugfs, control and bus files."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest
from test_sim_fakes import (
    FakeDebugfs,
    FakeDevices,
    build_elf,
    m4_image,
    m4_table,
    script,
    wait_until,
)

from rprocd.sim.board import get_board
from rprocd.sim.kernel import SimKernel
from rprocd.sim.options import parse_options

RP = "remoteproc0"
DBG = "remoteproc/remoteproc0"


class Sim:
    """A booted kernel with recording fakes and a firmware directory."""

    def __init__(self, tmp: Path, board: str = "stm32mp157f-dk", options: list[str] = (),
                 firmware: dict[str, bytes] | None = None, boot: bool = True, **kw) -> None:
        self.dir = tmp / "fw"
        self.dir.mkdir(parents=True, exist_ok=True)
        if firmware is None:
            firmware = {"rproc-m4-fw": m4_image()}
        for name, data in firmware.items():
            (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / name).write_bytes(data)
        self.board = get_board(board)
        self.dev, self.dbg = FakeDevices(), FakeDebugfs()
        self.k = SimKernel(self.board, parse_options(list(options), self.board), self.dev,
                           self.dbg, [self.dir], **kw)
        if boot:
            self.k.boot()

    def state(self, rp: str = RP) -> str:
        return self.dev.read(rp, "state").rstrip("\n")

    def write(self, attr: str, data: str | bytes, rp: str = RP) -> int:
        return self.dev.write(rp, attr, data)

    def err(self, attr: str, data: str | bytes, rp: str = RP) -> int:
        with pytest.raises(OSError) as e:
            self.dev.write(rp, attr, data)
        return e.value.errno

    def dbg_err(self, path: str, data: str | bytes) -> int:
        with pytest.raises(OSError) as e:
            self.dbg.write(path, data)
        return e.value.errno

    def power(self, core: str = "m4") -> int:
        rp = self.k.cores[core].rproc
        assert rp is not None
        return rp.power

    def ctl(self, path: str, data: str) -> int:
        f = self.k.control_files()[path]
        assert f.write is not None
        return f.write(data.encode())

    def bus(self, path: str, data: str) -> int:
        f = self.k.bus_files()[path]
        assert f.write is not None
        return f.write(data.encode())


@pytest.fixture
def sims(tmp_path):
    made: list[Sim] = []

    def make(**kw) -> Sim:
        s = Sim(tmp_path / str(len(made)), **kw) if made else Sim(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.k.shutdown()


@pytest.fixture
def sim(sims) -> Sim:
    return sims()


# ------------------------------------------------------------ registration


def test_boot_creates_platform_and_remoteproc_devices(sim):
    assert sim.dev.since(0) == [("add", "10000000.m4"), ("add", RP), ("bind", "10000000.m4")]
    path, plat = sim.dev.find("10000000.m4")
    assert plat.subsystem == "platform" and plat.parent is None
    assert plat.properties["DRIVER"] == "stm32-rproc"
    assert plat.properties["OF_COMPATIBLE_0"] == "st,stm32mp1-m4"
    _, rp = sim.dev.find(RP)
    assert rp.subsystem == "remoteproc" and rp.parent == path
    assert rp.properties == {"DEVTYPE": "remoteproc"}
    assert list(rp.files) == ["coredump", "recovery", "firmware", "state", "name", "fw_format"]
    modes = {n: f.mode for n, f in rp.files.items()}
    assert modes == {"coredump": 0o644, "recovery": 0o644, "firmware": 0o644, "state": 0o644,
                     "name": 0o444, "fw_format": 0o444}
    assert rp.files["name"].write is None and rp.files["fw_format"].write is None
    reads = {n: sim.dev.read(RP, n) for n in rp.files}
    assert reads == {"coredump": "disabled\n", "recovery": "enabled\n",
                     "firmware": "rproc-m4-fw\n", "state": "offline\n", "name": "m4\n",
                     "fw_format": "ELF\n"}
    assert sim.dbg.files(DBG) == ["carveout_memories", "coredump", "crash", "name", "recovery",
                                  "resource_table"]
    modes = {n: f.mode for n, f in sim.dbg.dirs[DBG].items()}
    assert modes == {"name": 0o400, "recovery": 0o600, "crash": 0o200, "resource_table": 0o400,
                     "carveout_memories": 0o400, "coredump": 0o600}
    assert sim.dbg.read(f"{DBG}/resource_table") == b"No resource table found\n"
    assert sim.dbg.read(f"{DBG}/carveout_memories") == b""


def test_mp2_board_numbers_cores_and_generic_has_no_fw_format(sims):
    mp2 = sims(board="stm32mp257f-dk", firmware={})
    assert mp2.dev.names("remoteproc") == ["remoteproc0", "remoteproc1"]
    assert mp2.dev.read("remoteproc1", "name") == "m0\n"
    assert mp2.dev.read("remoteproc0", "firmware") == "rproc-m33-fw\n"
    gen = sims(board="generic:3", firmware={})
    _, rp = gen.dev.find("remoteproc2")
    assert "fw_format" not in rp.files
    assert gen.dev.read("remoteproc2", "name") == "core2\n"
    assert gen.dev.find("2.rproc")[1].properties["DRIVER"] == "generic-rproc"


def test_fw_format_option_tee_changes_attribute_and_compatible(sims):
    s = sims(options=["fw_format=TEE"])
    assert s.dev.read(RP, "fw_format") == "TEE\n"
    assert s.dev.find("10000000.m4")[1].properties["OF_COMPATIBLE_0"] == "st,stm32mp1-m4-tee"
    none = sims(options=["m4.fw_format=none"])
    assert "fw_format" not in none.dev.find(RP)[1].files


# --------------------------------------------------------------- start/stop


def test_start_and_stop_with_children_uevents(sim):
    m = sim.dev.mark()
    assert sim.write("state", "start\n") == 6
    assert sim.state() == "running"
    assert sim.dev.since(m) == [
        ("add", "rproc-virtio.0.auto"), ("bind", "rproc-virtio.0.auto"),
        ("add", "virtio0"),
        ("add", "virtio0.rpmsg_ctrl.0.0"), ("bind", "virtio0.rpmsg_ctrl.0.0"),
        ("add", "virtio0.rpmsg_ns.53.53"), ("bind", "virtio0.rpmsg_ns.53.53"),
        ("bind", "virtio0"),
        ("add", "virtio0.rpmsg-tty.-1.1024"), ("bind", "virtio0.rpmsg-tty.-1.1024"),
    ]
    assert sim.dev.find("virtio0")[1].subsystem == "virtio"
    _, tty = sim.dev.find("virtio0.rpmsg-tty.-1.1024")
    assert tty.subsystem == "rpmsg" and tty.properties["DRIVER"] == "rpmsg_tty"
    assert sim.dbg.files(DBG)[-1] == "trace0"
    assert sim.dbg.read(f"{DBG}/trace0") == b"rprocd-sim: rproc-m4-fw booted\n"
    table = sim.dbg.read(f"{DBG}/resource_table").decode()
    assert "  Status 0x7\n" in table and "    Notify ID 1\n" in table
    assert "  Guest features 0x1\n" in table
    m = sim.dev.mark()
    assert sim.write("state", "stop") == 4
    assert sim.state() == "offline"
    assert sim.dev.since(m) == [
        ("unbind", "virtio0.rpmsg-tty.-1.1024"), ("remove", "virtio0.rpmsg-tty.-1.1024"),
        ("unbind", "virtio0.rpmsg_ns.53.53"), ("remove", "virtio0.rpmsg_ns.53.53"),
        ("unbind", "virtio0.rpmsg_ctrl.0.0"), ("remove", "virtio0.rpmsg_ctrl.0.0"),
        ("unbind", "virtio0"), ("remove", "virtio0"),
        ("unbind", "rproc-virtio.0.auto"), ("remove", "rproc-virtio.0.auto"),
    ]
    assert "trace0" not in sim.dbg.files(DBG)
    assert sim.dbg.read(f"{DBG}/resource_table") == b"No resource table found\n"
    assert sim.dbg.read(f"{DBG}/carveout_memories") == b""
    # a second start gets new child indexes: rproc-virtio id reused, virtio counter not
    sim.write("state", "start")
    assert "rproc-virtio.0.auto" in sim.dev.names("platform")
    assert sim.dev.names("virtio") == ["virtio1"]
    log = "\n".join(sim.k.log)
    for line in ("powering up m4", "Booting fw image rproc-m4-fw, size",
                 "remote processor m4 is now up", "stopped remote processor m4"):
        assert line in log


def test_power_refcount_two_starts_need_two_stops(sim):
    sim.write("state", "start")
    assert sim.write("state", "start") == 5  # success, power 2, no new children
    assert sim.power() == 2
    assert sim.dev.names("virtio") == ["virtio0"]
    sim.write("state", "stop")
    assert sim.state() == "running" and sim.power() == 1
    sim.write("state", "stop")
    assert sim.state() == "offline" and sim.power() == 0
    assert sim.err("state", "stop") == errno.EINVAL
    assert sim.power() == 0  # EINVAL never touches power


def test_pre_519_start_on_running_is_ebusy(sims):
    s = sims(options=["kernel=5.15"])
    s.write("state", "start")
    assert s.err("state", "start") == errno.EBUSY
    assert s.power() == 1
    assert s.err("state", "detach") == errno.EINVAL
    s.write("state", "stop")
    assert s.state() == "offline"


@pytest.mark.parametrize("text", ["start\n\n", " start", "start ", "START", "star", "go", "\n"])
def test_state_keywords_use_sysfs_streq(sim, text):
    assert sim.err("state", text) == errno.EINVAL
    assert sim.state() == "offline" and sim.power() == 0


def test_state_write_mechanics(sim):
    assert sim.write("state", b"") == 0
    assert sim.write("state", b"start\0garbage") == 13  # the handler sees a C string
    assert sim.state() == "running"
    assert "Unrecognised option" not in "\n".join(sim.k.log)
    assert sim.err("state", "bogus") == errno.EINVAL
    assert "Unrecognised option: bogus" in sim.k.log[-1]


@pytest.mark.parametrize("cmd", ["stop", "detach"])
def test_stop_and_detach_refused_when_offline(sim, cmd):
    assert sim.err("state", cmd) == errno.EINVAL


def test_detach_of_running_is_einval(sim):
    sim.write("state", "start")
    assert sim.err("state", "detach") == errno.EINVAL
    assert sim.state() == "running" and sim.power() == 1


# ---------------------------------------------------------------- firmware


def test_firmware_attribute_rules(sim):
    assert sim.write("firmware", "a b \tc\nrest") == 11
    assert sim.dev.read(RP, "firmware") == "a b \tc\n"  # up to the first newline only
    assert sim.err("firmware", "\n") == errno.EINVAL
    assert sim.err("firmware", b"\0x") == errno.EINVAL
    assert sim.write("firmware", "sub/dir/x.elf\n") == 14
    assert sim.dev.read(RP, "firmware") == "sub/dir/x.elf\n"
    assert sim.write("firmware", "x" * 5000) == 4096  # one write delivers PAGE_SIZE bytes
    assert len(sim.dev.read(RP, "firmware")) == 4095  # the show buffer is one page
    sim.write("firmware", "rproc-m4-fw")
    sim.write("state", "start")
    assert sim.err("firmware", "other") == errno.EBUSY
    assert sim.dev.read(RP, "firmware") == "rproc-m4-fw\n"


@pytest.mark.parametrize("name,err", [
    ("missing.elf", errno.ENOENT),
    ("../fw/rproc-m4-fw", errno.EINVAL),
    ("sub/../rproc-m4-fw", errno.EINVAL),
    ("sub/..", errno.EINVAL),
    ("..", errno.EINVAL),
    ("x" * 4090, errno.ENAMETOOLONG),
])
def test_start_errors_from_the_firmware_search(sim, name, err):
    sim.write("firmware", name)
    assert sim.err("state", "start") == err
    assert sim.state() == "offline" and sim.power() == 0
    assert sim.k.log[-1].endswith(f"Boot failed: -{err}")


def test_dotdot_inside_a_name_is_fine(sims, tmp_path):
    s = sims(firmware={"fw..v2.elf": m4_image()})
    s.write("firmware", "fw..v2.elf")
    s.write("state", "start")
    assert s.state() == "running"


def test_failed_boot_after_resources_cleans_up(sim):
    sim.ctl("remoteproc0/fail_start", "EPERM")
    m = sim.dev.mark()
    assert sim.err("state", "start") == errno.EPERM
    assert sim.state() == "offline" and sim.power() == 0
    pdev = "rproc-virtio.0.auto"
    assert sim.dev.since(m) == [("add", pdev), ("bind", pdev), ("unbind", pdev), ("remove", pdev)]
    assert "trace0" not in sim.dbg.files(DBG)
    sim.write("state", "start")  # one-shot
    assert sim.state() == "running"


# ---------------------------------------------------------- recovery/coredump


def test_recovery_and_coredump_attributes(sim):
    for value in ("disabled", "enabled\n", "recover"):
        assert sim.write("recovery", value) == len(value)
    assert sim.dev.read(RP, "recovery") == "enabled\n"
    sim.write("recovery", "disabled\n")
    assert sim.dev.read(RP, "recovery") == "disabled\n"
    for bad in ("enable", "Enabled", "disabled\n\n", ""):
        if bad:
            assert sim.err("recovery", bad) == errno.EINVAL
    for mode in ("enabled", "inline\n", "disabled"):
        sim.write("coredump", mode)
        assert sim.dev.read(RP, "coredump") == mode.strip() + "\n"
    assert sim.err("coredump", "default") == errno.EINVAL


def test_debugfs_recovery_and_coredump_prefix_quirks(sim):
    assert sim.dbg.write(f"{DBG}/recovery", "d") == 1
    assert sim.dbg.read(f"{DBG}/recovery") == b"disabled\n"
    assert sim.dbg.write(f"{DBG}/recovery", "enabled\n") == 8
    assert sim.dbg.read(f"{DBG}/recovery") == b"enabled\n"
    assert sim.dbg_err(f"{DBG}/recovery", "dis\n") == errno.EINVAL
    assert sim.dbg_err(f"{DBG}/recovery", "disabled\n\n") == errno.EINVAL  # 10 bytes, no match
    assert sim.dbg_err(f"{DBG}/recovery", "enabled   \n") == errno.EINVAL  # 11 bytes
    assert sim.dbg.write(f"{DBG}/recovery", "r") == 1  # recover: nothing to do
    assert sim.dbg.write(f"{DBG}/coredump", "i") == 1
    assert sim.dbg.read(f"{DBG}/coredump") == b"inline\n"
    assert sim.dev.read(RP, "coredump") == "inline\n"
    assert sim.dbg.write(f"{DBG}/coredump", "en") == 2
    assert sim.dbg.read(f"{DBG}/coredump") == b"enabled\n"
    assert sim.dbg_err(f"{DBG}/coredump", "x" * 21) == errno.EINVAL
    assert sim.dbg_err(f"{DBG}/coredump", "inl\n") == errno.EINVAL


@pytest.mark.parametrize("text,err", [
    ("abc", errno.EINVAL), ("", errno.EINVAL), ("-1", errno.EINVAL), ("1 ", errno.EINVAL),
    ("08", errno.EINVAL), ("0x", errno.EINVAL), ("1\n\n", errno.EINVAL),
    ("4294967296", errno.ERANGE), ("99999999999999999999", errno.ERANGE),
])
def test_debugfs_crash_parsing_errors(sim, text, err):
    sim.write("state", "start")
    assert sim.dbg_err(f"{DBG}/crash", text) == err
    assert sim.state() == "running"


def test_crash_on_offline_is_ignored(sim):
    assert sim.dbg.write(f"{DBG}/crash", "0x1\n") == 4
    time.sleep(0.05)
    assert sim.state() == "offline"
    assert "type watchdog" in sim.k.log[-1]
    assert not any("handling crash" in line for line in sim.k.log)


# ------------------------------------------------------------ transients


def test_reader_sees_offline_during_boot_and_running_during_stop(sims):
    s = sims(firmware={"rproc-m4-fw": m4_image(boot_ms=300, shutdown_ack_ms=300)})
    seen: list[str] = []
    t = threading.Thread(target=lambda: s.write("state", "start"))
    t.start()
    time.sleep(0.1)
    seen.append(s.state())
    assert "trace0" in s.dbg.files(DBG)  # resources are up before the firmware
    t.join()
    seen.append(s.state())
    t = threading.Thread(target=lambda: s.write("state", "stop"))
    start = time.monotonic()
    t.start()
    time.sleep(0.1)
    seen.append(s.state())
    assert s.dev.names("virtio") == []  # subdevices go first
    t.join()
    assert time.monotonic() - start >= 0.29
    seen.append(s.state())
    assert seen == ["offline", "running", "running", "offline"]


def test_stop_without_ack_waits_the_mailbox_timeout_then_resets(sims):
    s = sims(firmware={"rproc-m4-fw": m4_image(shutdown_ack_ms=-1)}, shutdown_timeout=0.2)
    s.write("state", "start")
    t0 = time.monotonic()
    s.write("state", "stop")
    assert 0.19 <= time.monotonic() - t0 < 1.0
    assert s.state() == "offline"
    assert "stm32-rproc 10000000.m4: warning: remote FW shutdown without ack" in s.k.log


def test_writes_serialise_on_the_rproc_lock(sims):
    s = sims(firmware={"rproc-m4-fw": m4_image(boot_ms=200)})
    t = threading.Thread(target=lambda: s.write("state", "start"))
    t.start()
    time.sleep(0.05)
    assert s.err("firmware", "x") == errno.EBUSY  # waited for the boot, then running
    t.join()


def _start_held_until_released(sim) -> None:
    """A `start` write blocks while the hang control holds it, and boots once released."""
    done = threading.Event()
    t = threading.Thread(target=lambda: (sim.write("state", "start"), done.set()))
    t.start()
    time.sleep(0.1)
    assert not done.is_set() and sim.state() == "offline"
    sim.ctl("remoteproc0/hang", "0")
    t.join(2)
    assert done.is_set() and sim.state() == "running"


def test_hang_control_blocks_the_next_state_write(sim):
    assert sim.ctl("remoteproc0/hang", "1\n") == 2
    assert sim.k.control_files()["remoteproc0/hang"].read() == b"1\n"
    _start_held_until_released(sim)


def test_hang_start_blocks_only_starts(sim):
    """hang=start: a switch's stop and firmware write pass, its start blocks."""
    sim.write("state", "start")
    assert sim.ctl("remoteproc0/hang", "start") == 5
    assert sim.k.control_files()["remoteproc0/hang"].read() == b"start\n"
    sim.write("state", "stop")
    sim.write("firmware", "rproc-m4-fw")
    _start_held_until_released(sim)
    with pytest.raises(OSError) as e:
        sim.ctl("remoteproc0/hang", "sometimes")
    assert e.value.errno == errno.EINVAL


def test_shutdown_wakes_a_hung_write_and_leaves_no_threads(sims):
    s = sims(firmware={"rproc-m4-fw": m4_image(trace_period_ms=1)})
    s.write("state", "start")
    s.ctl("remoteproc0/hang", "1")
    result: list[int] = []

    def stop() -> None:
        try:
            s.write("state", "stop")
        except OSError as e:
            result.append(e.errno)

    t = threading.Thread(target=stop)
    t.start()
    time.sleep(0.05)
    s.k.shutdown()
    t.join(2)
    assert result == [errno.EINTR]
    s.k.shutdown()  # idempotent
    assert not [th for th in threading.enumerate() if th.name.startswith("rprocd-sim")]


# ------------------------------------------------------------- control/bus


def test_fail_start_control_file(sim):
    f = sim.k.control_files()["remoteproc0/fail_start"]
    assert f.read() == b"\n"
    sim.ctl("remoteproc0/fail_start", "eio")
    assert f.read() == b"EIO\n"
    with pytest.raises(OSError) as e:
        sim.ctl("remoteproc0/fail_start", "ENOTANERRNO")
    assert e.value.errno == errno.EINVAL
    sim.ctl("remoteproc0/fail_start", "none")
    assert f.read() == b"\n"
    sim.ctl("remoteproc0/fail_start", "5")
    assert sim.err("state", "start") == errno.EIO


def test_bind_unbind_files_and_ida_reuse(sims):
    s = sims(board="stm32mp257f-dk", firmware={"rproc-m0-fw": build_elf(
        loads=[(0x200C0000, b"\0" * 64, 64)], table=None, behaviour=script(boot_ms=0))})
    unbind = "bus/platform/drivers/stm32-rproc/unbind"
    bind = "bus/platform/drivers/stm32-rproc/bind"
    files = s.k.bus_files()
    assert files[bind].mode == 0o200 and files[unbind].mode == 0o200
    s.dev.write("remoteproc1", "state", "start")
    m = s.dev.mark()
    assert s.bus(unbind, "0.m33\n") == 6
    assert s.dev.since(m) == [("remove", "remoteproc0"), ("unbind", "0.m33")]
    assert "remoteproc/remoteproc0" not in s.dbg.dirs
    assert "remoteproc0/hang" not in s.k.control_files()
    for path, name, err in ((unbind, "0.m33", errno.ENODEV), (bind, "1.m0", errno.EBUSY),
                            (bind, "9.m9", errno.ENODEV), (bind, "0.m33\n\n", errno.ENODEV)):
        with pytest.raises(OSError) as e:
            s.bus(path, name)
        assert e.value.errno == err
    s.bus(bind, "0.m33")
    assert s.dev.read("remoteproc0", "name") == "m33\n"  # the freed index is reused
    assert s.dev.read("remoteproc0", "state") == "offline\n"
    with pytest.raises(OSError) as e:
        s.ctl("plug", "nosuchcore")
    assert e.value.errno == errno.ENODEV
    s.ctl("unplug", "m0\n")
    s.ctl("plug", "m0")
    assert s.dev.read("remoteproc1", "name") == "m0\n"


def test_unbind_running_core_stops_it_first(sim):
    sim.write("state", "start")
    sim.write("state", "start")  # power 2: driver remove + rproc_del both shut down
    state_file = sim.dev.file(RP, "state")
    m = sim.dev.mark()
    sim.k.unbind("10000000.m4")
    events = sim.dev.since(m)
    assert events[-2:] == [("remove", RP), ("unbind", "10000000.m4")]
    assert ("remove", "virtio0") in events and ("remove", "rproc-virtio.0.auto") in events
    assert state_file.read() == b"deleted\n"
    with pytest.raises(OSError) as e:
        state_file.write(b"start")  # an fd kept open on a deleted rproc
    assert e.value.errno == errno.ENODEV
    assert not sim.k.cores["m4"].running
    sim.k.bind("10000000.m4")
    assert sim.state() == "offline"


def test_bind_wrong_driver_is_enodev(sims):
    s = sims(board="generic:2", firmware={})
    with pytest.raises(OSError) as e:
        s.bus("bus/platform/drivers/generic-rproc/bind", "10000000.m4")
    assert e.value.errno == errno.ENODEV
    assert "bus/platform/drivers/stm32-rproc/bind" not in s.k.bus_files()


def test_firmware_class_path_parameter(sim, tmp_path):
    f = sim.k.bus_files()["module/firmware_class/parameters/path"]
    assert f.mode == 0o644
    assert f.read() == f"{sim.dir}\n".encode()
    other = tmp_path / "other"
    other.mkdir()
    (other / "alt.elf").write_bytes(m4_image())
    assert f.write(f"{other}\n".encode()) == len(str(other)) + 1
    assert f.read() == f"{other}\n\n".encode()  # stored as written
    sim.write("firmware", "alt.elf")
    sim.write("state", "start")  # the trailing newline is ignored by the loader
    assert sim.state() == "running"
    with pytest.raises(OSError) as e:
        f.write(b"/" * 256)
    assert e.value.errno == errno.ENOSPC


def test_auto_boot_offline_core_boots_asynchronously(sims):
    s = sims(options=["auto_boot=yes"])
    wait_until(lambda: s.state() == "running")
    assert s.power() == 1


def test_auto_boot_with_missing_firmware_stays_offline(sims):
    s = sims(options=["auto_boot=yes"], firmware={})
    wait_until(lambda: any("request_firmware failed: -2" in x for x in s.k.log))
    assert s.state() == "offline" and s.power() == 0


# ----------------------------------------------------- drivers and tables


def test_stm32_tolerates_a_missing_table_generic_does_not(sims):
    image = build_elf(table=None, behaviour=script(boot_ms=0))
    s = sims(firmware={"rproc-m4-fw": image})
    s.write("state", "start")
    assert s.state() == "running"
    assert s.dev.names("virtio") == [] and "trace0" not in s.dbg.files(DBG)
    assert any("no resource table found for this firmware" in x for x in s.k.log)
    g = sims(board="generic:1", firmware={"rproc-core0-fw": image})
    assert g.err("state", "start") == errno.EINVAL
    g.write("firmware", "ok.elf")
    (g.dir / "ok.elf").write_bytes(m4_image())
    g.write("state", "start")
    assert g.state() == "running"


def test_devmem_entry_fails_every_boot(sims):
    from test_sim_fakes import devmem, rsc_table

    image = build_elf(table=rsc_table([devmem(0x10000000, 0x1000, "dm")]))
    assert sims(firmware={"rproc-m4-fw": image}).err("state", "start") == errno.EINVAL


def test_carveout_entries_bind_regions_or_fail_enomem(sims):
    from test_sim_fakes import carveout, rsc_table

    ok = build_elf(table=rsc_table([carveout(0x10000000, 0x1000, "mcuram"),
                                    carveout(0xFFFFFFFF, 0x2000, "extra")]))
    s = sims(firmware={"rproc-m4-fw": ok})
    s.write("state", "start")
    table = s.dbg.read(f"{DBG}/resource_table").decode()
    # the bound region's own da/pa/len are written back
    assert ("Entry 0 is of type carveout\n  Device Address 0x10000000\n"
            "  Physical Address 0x30000000\n  Length 0x40000 Bytes\n") in table
    assert "Name extra" in table
    assert "Name: extra" in s.dbg.read(f"{DBG}/carveout_memories").decode()
    for entries in ([carveout(0x10000000, 0x80000, "mcuram")],
                    [carveout(0x20000000, 0x1000, "mcuram")],
                    [carveout(0x10000000, 0x10, "mcuram"), carveout(0x10000000, 0x10, "mcuram")]):
        bad = sims(firmware={"rproc-m4-fw": build_elf(table=rsc_table(entries))})
        assert bad.err("state", "start") == errno.ENOMEM


def test_bad_vrings_do_not_fail_the_boot(sims):
    from test_sim_fakes import rsc_table, trace, vdev

    zero = build_elf(table=rsc_table([vdev([(0x10040000, 16, 0), (0x10041000, 16, 16)]),
                                      trace(0x10020000, 0x1000)]))
    s = sims(firmware={"rproc-m4-fw": zero})
    s.write("state", "start")
    assert s.state() == "running"
    assert "rproc-virtio.0.auto" in s.dev.names("platform") and s.dev.names("virtio") == []
    odd = build_elf(table=rsc_table([vdev([(0x10040000, 16, 12), (0x10041000, 16, 16)])]))
    s2 = sims(firmware={"rproc-m4-fw": odd})
    s2.write("state", "start")
    assert s2.dev.names("virtio") == ["virtio0"] and s2.dev.names("rpmsg") == []


def test_vdev_without_ns_feature_has_no_channels(sims):
    from test_sim_fakes import M4_VRINGS, rsc_table, vdev

    s = sims(firmware={"rproc-m4-fw": build_elf(table=rsc_table([vdev(M4_VRINGS, dfeatures=0)]))})
    s.write("state", "start")
    assert s.dev.names("rpmsg") == ["virtio0.rpmsg_ctrl.0.0"]


def test_rpmsg_channels_come_from_the_behaviour(sims):
    s = sims(firmware={"rproc-m4-fw": m4_image(rpmsg="rpmsg-tty,rpmsg-raw,custom")})
    s.write("state", "start")
    assert sorted(s.dev.names("rpmsg")) == sorted([
        "virtio0.rpmsg_ctrl.0.0", "virtio0.rpmsg_ns.53.53", "virtio0.rpmsg-tty.-1.1024",
        "virtio0.rpmsg-raw.-1.1025", "virtio0.custom.-1.1026"])
    assert "DRIVER" not in s.dev.find("virtio0.custom.-1.1026")[1].properties


def test_memsz_zero_segment_skipped_since_519(sims):
    from test_sim_fakes import default_loads

    image = build_elf(loads=[*default_loads(), (0x70000000, b"", 0)], table=m4_table())
    assert sims(firmware={"rproc-m4-fw": image}).write("state", "start") == 5
    old = sims(firmware={"rproc-m4-fw": image}, options=["kernel=5.15"])
    assert old.err("state", "start") == errno.EINVAL
    assert any("bad phdr da 0x70000000 mem 0x0" in x for x in old.k.log)


# --------------------------------------------------------------- traces


def test_trace_ring_wraps_from_the_start(sims):
    from test_sim_fakes import rsc_table, trace

    table = rsc_table([trace(0x10020000, 64)])
    s = sims(firmware={"rproc-m4-fw": build_elf(table=table, behaviour=script(
        boot_ms=0, trace_period_ms=2, trace=["line %n"]))})
    s.write("state", "start")
    seen: set[bytes] = set()

    def wrapped() -> bool:
        data = s.dbg.read(f"{DBG}/trace0")
        seen.add(data)
        return not data.startswith(b"rprocd-sim")

    wait_until(wrapped)
    assert all(len(x) <= 63 for x in seen)
    assert len(s.dbg.read(f"{DBG}/trace0")) <= 63  # the firmware overwrote from offset 0


def test_trace_outside_memory_reads_not_available(sims):
    from test_sim_fakes import rsc_table, trace

    s = sims(firmware={"rproc-m4-fw": build_elf(table=rsc_table([trace(0x90000000, 64)]))})
    s.write("state", "start")
    assert s.dbg.read(f"{DBG}/trace0") == b"Trace  not available\n"


def test_two_traces_in_table_order(sims):
    from test_sim_fakes import rsc_table, trace

    s = sims(firmware={"rproc-m4-fw": build_elf(table=rsc_table(
        [trace(0x10020000, 0x100), trace(0x10021000, 0x100, "second")]))})
    s.write("state", "start")
    assert [f for f in s.dbg.files(DBG) if f.startswith("trace")] == ["trace0", "trace1"]
    assert s.dbg.read(f"{DBG}/trace1") == b""
    s.write("state", "stop")
    assert [f for f in s.dbg.files(DBG) if f.startswith("trace")] == []


# --------------------------------------------------------- early boot


def test_early_detached_core_attaches_without_reading_firmware(sims):
    s = sims(options=["early=detached", "firmware=running.elf"],
             firmware={"running.elf": m4_image(trace_period_ms=1, trace=["early %n"])})
    assert s.state() == "detached"
    assert s.dev.read(RP, "firmware") == "rproc-m4-fw\n"  # configured, not what runs
    assert s.err("firmware", "x") == errno.EBUSY
    assert s.err("state", "stop") == errno.EINVAL
    m = s.dev.mark()
    s.write("state", "start")
    assert s.state() == "attached"
    assert s.dev.read(RP, "firmware") == "unknown\n"
    assert ("add", "virtio0") in s.dev.since(m)
    wait_until(lambda: b"early 3" in s.dbg.read(f"{DBG}/trace0"))
    assert s.dbg.read(f"{DBG}/trace0").startswith(b"rprocd-sim: running.elf booted\n")
    assert any("attaching to m4" in x for x in s.k.log)
    assert not any("Booting fw image" in x for x in s.k.log)
    s.write("state", "detach")
    assert s.state() == "detached"
    assert s.dev.names("virtio") == [] and "trace0" not in s.dbg.files(DBG)
    assert s.k.cores["m4"].running  # detach leaves the core running
    s.write("state", "start")
    assert s.state() == "attached"
    s.write("state", "stop")  # stopping an attached core powers it off
    assert s.state() == "offline" and not s.k.cores["m4"].running


def test_early_attached_core_is_attached_at_probe(sims):
    s = sims(options=["early=attached"])
    assert s.state() == "attached" and s.power() == 1
    s.k.unbind("10000000.m4")  # driver remove shuts an attached core down
    assert not s.k.cores["m4"].running
    s.k.bind("10000000.m4")  # early=attached implies st,auto-boot: the file is booted
    wait_until(lambda: s.state() == "running")


def test_failed_attach_at_probe_removes_the_device(sims):
    s = sims(options=["early=attached"], boot=False)
    s.k.cores["m4"].fail_start = errno.EIO
    m = s.dev.mark()
    s.k.boot()
    assert ("add", RP) in s.dev.since(m) and ("remove", RP) in s.dev.since(m)
    assert s.dev.names("remoteproc") == []
    assert s.k.cores["m4"].rproc is None
    s.k.bind("10000000.m4")
    assert s.state() == "attached"


def test_detach_is_einval_on_tee_cores(sims, tmp_path):
    s = sims(options=["early=attached", "fw_format=TEE"], firmware={})
    assert s.state() == "attached"
    assert s.err("state", "detach") == errno.EINVAL
    assert s.power() == 1 and s.state() == "attached"


def test_unknown_board_and_options():
    with pytest.raises(ValueError, match="stm32mp157f-dk"):
        get_board("nope")
    board = get_board("stm32mp257f-dk")
    for bad in (["kernel=4.19"], ["early=booted"], ["m7.recovery=enabled"], ["frobnicate=1"],
                ["novalue"], ["auto_boot=maybe"]):
        with pytest.raises(ValueError):
            parse_options(bad, board)
    opts = parse_options(["m0.recovery=disabled", "recovery=enabled", "0.m33.coredump=inline",
                          "firmware=a.b.elf"], board)
    assert opts["m0"].recovery == "disabled" and opts["m33"].recovery == "enabled"
    assert opts["m33"].coredump == "inline" and opts["m0"].firmware == "a.b.elf"


def test_attached_refcount_and_pre_519_ebusy(sims):
    s = sims(options=["early=attached"])
    assert s.write("state", "start") == 5  # power 2, still attached
    assert s.power() == 2 and s.state() == "attached"
    s.write("state", "detach")  # 2 -> 1: success without detaching
    assert s.state() == "attached" and s.power() == 1
    s.write("state", "detach")
    assert s.state() == "detached" and s.power() == 0
    assert s.err("state", "detach") == errno.EINVAL
    old = sims(options=["early=attached", "kernel=5.15"])
    assert old.err("state", "start") == errno.EBUSY
    assert old.power() == 1


def test_unbinding_a_detached_core_leaves_it_running(sims):
    s = sims(options=["early=detached"])
    s.k.unbind("10000000.m4")
    assert s.k.cores["m4"].running
    s.k.bind("10000000.m4")
    assert s.state() == "detached"
    s.write("state", "start")
    assert s.state() == "attached" and s.dev.names("virtio") == ["virtio0"]


def test_mp2_boot_address_from_isr_vectors(sims):
    image = build_elf(loads=[(0x80000000, b"\0" * 64, 64)], table=None,
                      sections=[(".isr_vectors", 0x80000000, b"")], entry=0x80000101)
    s = sims(board="stm32mp257f-dk", firmware={"rproc-m33-fw": image})
    s.write("state", "start")
    assert s.k.cores["m33"].rproc.bootaddr == 0x80000000
    m4 = sims()
    m4.write("state", "start")
    assert m4.k.cores["m4"].rproc.bootaddr == 0x10000001  # e_entry
