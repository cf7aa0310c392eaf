"""sysfs `state` (ABI §1.2, §1.3), the power refcount (§2.1) and what a
polling reader sees (§2.4, §2.5), through /sys under the preload."""

from __future__ import annotations

import errno

import pytest

from tests.conformance.conftest import Core, errname
from tests.sim_harness import Uevents

# -- §1.3 reads ---------------------------------------------------------------


def test_fresh_core_reads_offline_with_newline(core: Core) -> None:
    assert core.attr("state") == "offline\n"


def test_layout_modes_and_class_link(core: Core) -> None:
    """§1.1: attributes with their modes; the class entry links into the
    platform device's remoteproc directory."""
    sim = core.sim
    modes = {n: sim.lstat(f"{core.sysfs}/{n}").mode & 0o777
             for n in ("state", "firmware", "recovery", "coredump", "name", "fw_format")}
    assert modes == {"state": 0o644, "firmware": 0o644, "recovery": 0o644,
                     "coredump": 0o644, "name": 0o444, "fw_format": 0o444}
    assert sim.readlink(core.sysfs) == \
        "../../devices/platform/soc/10000000.m4/remoteproc/remoteproc0"
    assert sim.realpath(f"{core.sysfs}/subsystem") == "/sys/class/remoteproc"
    assert core.attr("name") == "m4\n"


# -- §1.3 writes: every row of the table -------------------------------------


def test_start_offline_boots_and_returns_when_running(core: Core) -> None:
    assert core.write("firmware", "m4-good.elf") == 0
    assert core.write("state", "start") == 0
    assert core.state() == "running"  # synchronous: no window after the write


def test_start_accepts_one_trailing_newline(core: Core) -> None:
    assert core.write("firmware", "m4-good.elf") == 0
    assert core.write("state", "start\n") == 0
    assert core.state() == "running"


@pytest.mark.parametrize("text", ["start\n\n", " start", "start ", "START", "star",
                                  "starts", "bogus", "\n", "start\0junk\n"])
def test_keywords_are_exact(core: Core, text: str) -> None:
    """sysfs_streq: exact, case-sensitive, at most one trailing newline; the
    handler sees a C string, so text after a NUL is ignored."""
    expected = 0 if text.startswith("start\0") else errno.EINVAL
    assert core.write("firmware", "m4-good.elf") == 0
    assert errname(core.write("state", text)) == errname(expected)
    assert core.state() == ("running" if expected == 0 else "offline")


def test_zero_length_write_is_a_no_op(core: Core) -> None:
    result = core.sim.write_result(f"{core.sysfs}/state", b"")
    assert (result.errno, result.count) == (0, 0)
    assert core.state() == "offline"


def test_start_on_running_is_success_and_takes_a_power_reference(core: Core) -> None:
    """§1.3/§2.1: start on running succeeds (power 2); the first stop keeps
    the processor running, the second stops it."""
    core.boot()
    assert core.write("state", "start") == 0
    assert core.state() == "running"
    assert core.write("state", "stop") == 0
    assert core.state() == "running"
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"


def test_failed_start_leaves_offline_with_power_zero(core: Core) -> None:
    """A boot failure undoes the increment: a later good start really boots
    and a single stop really stops."""
    assert core.write("firmware", "no-such-file.elf") == 0
    assert errname(core.write("state", "start")) == "ENOENT"
    assert core.state() == "offline"
    core.boot()
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"


def test_stop_running_goes_offline(core: Core) -> None:
    core.boot()
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"


def test_stop_offline_is_einval(core: Core) -> None:
    assert errname(core.write("state", "stop")) == "EINVAL"


def test_stop_and_start_on_crashed(core: Core) -> None:
    """§2.4 (through v7.1): crashed + recovery disabled: stop EINVAL, start a
    silent no-op that takes a reference."""
    core.boot()
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert errname(core.write("state", "stop")) == "EINVAL"
    assert core.write("state", "start") == 0
    assert core.state() == "crashed"


@pytest.mark.parametrize("setup", ["offline", "running", "crashed"])
def test_detach_is_einval_unless_attached(core: Core, setup: str) -> None:
    if setup != "offline":
        core.boot()
    if setup == "crashed":
        assert core.write("recovery", "disabled") == 0
        core.crash()
        assert core.wait_state("crashed") == "crashed"
    assert errname(core.write("state", "detach")) == "EINVAL"
    assert core.state() == setup


def test_stop_without_shutdown_ack_still_stops(core: Core) -> None:
    """§7.1: the firmware never acks the shutdown mailbox: the kernel waits
    500 ms, then stops anyway."""
    core.boot("m4-noack.elf")
    assert core.write("state", "stop") == 0
    assert core.state() == "offline"


def test_fail_start_control_injects_the_errno(core: Core) -> None:
    core.ctl("fail_start", "EPERM")
    assert core.write("firmware", "m4-good.elf") == 0
    assert errname(core.write("state", "start")) == "EPERM"
    assert core.state() == "offline"
    assert core.write("state", "start") == 0  # only the next start fails
    assert core.state() == "running"


# -- §1.2 / §2.4: synchronous writes, lock-free reads ------------------------


def test_reader_sees_offline_while_start_blocks(core: Core) -> None:
    """No 'booting' state: during a start the state reads offline until the
    very end, and reads are not blocked by the write in progress."""
    assert core.write("firmware", "m4-good.elf") == 0
    core.ctl("hang", "1")
    pending = core.sim.write_async(f"{core.sysfs}/state", "start")
    for _ in range(3):
        assert core.state() == "offline"
    assert not pending.done()
    core.ctl("hang", "0")
    assert pending.result(10).errno == 0
    assert core.state() == "running"


def test_reader_sees_running_while_stop_blocks(core: Core) -> None:
    core.boot()
    core.ctl("hang", "1")
    pending = core.sim.write_async(f"{core.sysfs}/state", "stop")
    for _ in range(3):
        assert core.state() == "running"
    assert not pending.done()
    core.ctl("hang", "0")
    assert pending.result(10).errno == 0
    assert core.state() == "offline"


def test_writes_serialise_on_the_lock(core: Core) -> None:
    """A second state-changing write waits for the first one."""
    assert core.write("firmware", "m4-good.elf") == 0
    core.ctl("hang", "1")
    first = core.sim.write_async(f"{core.sysfs}/state", "start")
    second = core.sim.write_async(f"{core.sysfs}/state", "stop")
    assert not first.done() and not second.done()
    core.ctl("hang", "0")
    assert first.result(10).errno == 0
    assert second.result(10).errno == 0
    assert core.state() == "offline"


def test_crash_with_recovery_goes_back_to_running(core: Core, uevents: Uevents) -> None:
    """§2.4: running -> crashed -> offline -> running, by itself."""
    core.boot()
    core.crash_and_recover(uevents)


def test_poller_sees_the_transient_states_of_a_recovery(core: Core, uevents: Uevents) -> None:
    """§2.4: crashed, then offline while the firmware is reloaded (held here
    with an inline dump), then running: offline right after crashed is not
    a stop."""
    core.boot()
    assert core.write("coredump", "inline") == 0
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    pending = core.sim.write_async(f"{core.sysfs}/recovery", "enabled")
    dump = uevents.wait_for(lambda e: e["subsystem"] == "devcoredump" and e["action"] == "add")
    assert not pending.done()
    assert core.state() == "offline"
    assert core.sim.write(f"{dump['syspath']}/data", "1") == 0
    assert pending.result(10).errno == 0
    assert core.state() == "running"


@pytest.mark.parametrize("command,message", [("start", "No such device"),
                                             ("stop", "Invalid argument")])
def test_writes_to_a_deleted_remoteproc(core: Core, command: str, message: str) -> None:
    """§1.3 `deleted`: a file opened before the driver went away still
    reaches the dying remoteproc: start is ENODEV, stop EINVAL."""
    unbind = f"/sys/bus/platform/drivers/{core.driver}/unbind"
    shell = core.sim.run(f"exec 3>{core.sysfs}/state; echo {core.platform} > {unbind}; "
                         f"echo {command} >&3")
    assert shell.returncode != 0 and message in shell.stderr, shell.stderr
