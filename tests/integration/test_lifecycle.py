"""Start, stop, restart and switch (issue 3), through D-Bus and rprocctl:
what Restart does step by step, a switch whose new image the kernel refuses
(rolled back) or whose rollback fails too, a firmware that never
acknowledges the shutdown, a kernel write that hangs while the other cores
keep answering, and what SIGTERM leaves on the board (StopOnExit=).

Not repeated here (tests/integration/test_api.py has them): plain
start/stop, BadState on a second Start, a switch rolled back after an
injected EIO, Busy while a stop is hung on the MP2.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

try:
    from test_api_board import BUS_NAME, PROCESSOR, board, needs_sim, wait_until
    from test_sim_tools import (
        ERROR,
        M4,
        M33,
        MP1,
        MP2,
        T,
        error_of,
        name_owner,
        own_daemons,
        signals,
        sys_read,
        sys_state,
        virtio_devices,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        PROCESSOR,
        board,
        needs_sim,
        wait_until,
    )
    from tests.integration.test_sim_tools import (
        ERROR,
        M4,
        M33,
        MP1,
        MP2,
        T,
        error_of,
        name_owner,
        own_daemons,
        signals,
        sys_read,
        sys_state,
        virtio_devices,
    )

pytestmark = needs_sim

M0 = "/org/rprocd1/processor/m0"
KERNEL_SHUTDOWN_TIMEOUT = 0.5  # the STM32 mailbox wait (ABI §7), emulated


def operations(sig, path: str) -> list[str]:
    """The Operation values announced for `path`, in order."""
    return [a[1]["Operation"] for a in sig.of("PropertiesChanged", path)
            if a[0] == PROCESSOR and "Operation" in a[1]]


def states(sig, path: str) -> list[str]:
    return [a[1]["State"] for a in sig.of("PropertiesChanged", path)
            if a[0] == PROCESSOR and "State" in a[1]]


# -- start, restart, switch -------------------------------------------------------


def test_start_with_no_name_runs_the_configured_firmware():
    with board(MP1, config="[Processor m4]\nFirmware=m4-quiet.elf\n",
               firmware=("m4-quiet.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        assert m4.DefaultFirmware == "m4-quiet.elf"
        m4.Start("", timeout=T)
        assert (m4.State, m4.Firmware) == ("running", "m4-quiet.elf")
        assert sys_read(sim, f"/sys/class/remoteproc/{m4.Device}/firmware") == "m4-quiet.elf"
        out = sim.rprocctl("restart", "m4")  # "" again: the configured one
        assert (out.returncode, out.stdout) == (0, "m4: running (firmware m4-quiet.elf)\n"), \
            out.stderr


def test_restart_stops_then_boots_the_same_firmware_again():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        since, boot = m4.RunningSince, virtio_devices(sim)
        with signals(sim) as sig:
            m4.Restart("m4-good.elf", timeout=T)
            wait_until(lambda: "" in operations(sig, M4), what="Operation back to ''")
            assert operations(sig, M4) == ["stopping", "starting", ""]
            assert states(sig, M4) == ["offline", "running"]
        assert (m4.State, m4.Firmware, m4.Operation, m4.Failed) == \
            ("running", "m4-good.elf", "", False)
        assert m4.RunningSince > since
        new_boot = virtio_devices(sim)
        assert len(new_boot) == 1 and new_boot != boot  # really booted again


def test_restart_of_an_offline_core_only_starts_it():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        with signals(sim) as sig:
            m4.Restart("m4-good.elf", timeout=T)
            wait_until(lambda: "" in operations(sig, M4), what="Operation back to ''")
            assert operations(sig, M4) == ["starting", ""]
        assert (m4.State, m4.Firmware) == ("running", "m4-good.elf")


def test_switch_announces_switching_and_runs_the_new_image():
    with board(MP1, firmware=("m4-good.elf", "m4-quiet.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        with signals(sim) as sig:
            m4.Restart("m4-quiet.elf", timeout=T)
            wait_until(lambda: "" in operations(sig, M4), what="Operation back to ''")
            assert operations(sig, M4) == ["switching", ""]
        assert (m4.State, m4.Firmware) == ("running", "m4-quiet.elf")
        assert sys_read(sim, f"/sys/class/remoteproc/{m4.Device}/firmware") == "m4-quiet.elf"


def test_a_switch_to_a_bad_image_never_stops_the_good_one():
    """Validated before anything is stopped: the running core is not touched."""
    with board(MP1, firmware=("m4-good.elf", "bad-magic.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        since, boot = m4.RunningSince, virtio_devices(sim)
        for image, error in (("bad-magic.elf", "InvalidFirmware"),
                             ("absent.elf", "FirmwareNotFound")):
            name, message = error_of(m4.Restart, image, timeout=T)
            assert name == ERROR + error and image in message, message
            assert (m4.State, m4.Firmware, m4.RunningSince) == ("running", "m4-good.elf", since)
        assert virtio_devices(sim) == boot
        assert sys_state(sim, m4.Device) == "running"


def test_a_switch_the_kernel_refuses_rolls_back_to_the_previous_image():
    """Validate=no: the kernel itself refuses the new image (EINVAL, bad ELF
    magic) after the old one was stopped; the old one is booted again."""
    with board(MP1, config="[Processor m4]\nValidate=no\n",
               firmware=("m4-good.elf", "bad-magic.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        out = sim.rprocctl("restart", "m4", "bad-magic.elf")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert out.stderr.startswith("rprocctl: m4: ") and out.stderr.count("\n") == 1
        assert "bad-magic.elf" in out.stderr and "rolled back to 'm4-good.elf'" in out.stderr
        assert (m4.State, m4.Firmware, m4.Operation) == ("running", "m4-good.elf", "")
        assert m4.Failed is True and "rolled back" in m4.LastError
        assert sys_state(sim, m4.Device) == "running"
        assert sys_read(sim, f"/sys/class/remoteproc/{m4.Device}/firmware") == "m4-good.elf"


def test_a_failed_rollback_says_so_and_leaves_the_core_offline():
    with board(MP1, config="[Processor m4]\nValidate=no\n",
               firmware=("m4-good.elf", "bad-magic.elf")) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        (Path(sim.env["RPROCD_SIM_FIRMWARE_DIR"]) / "m4-good.elf").unlink()  # its file is gone
        name, message = error_of(m4.Restart, "bad-magic.elf", timeout=T)
        assert name == ERROR + "Failed"
        assert "bad-magic.elf" in message and "rolling back to 'm4-good.elf' failed too" \
            in message, message
        assert (m4.State, m4.Operation, m4.Failed) == ("offline", "", True)
        assert sys_state(sim, m4.Device) == "offline"


# -- shutdown that is never acknowledged, a kernel write that hangs --------------------


def test_stop_of_a_firmware_that_never_acknowledges_waits_for_the_kernel_and_succeeds():
    with board(MP1, firmware=("m4-noack.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-noack.elf", timeout=T)
        began = time.monotonic()
        m4.Stop(timeout=T)
        took = time.monotonic() - began
        assert took >= KERNEL_SHUTDOWN_TIMEOUT - 0.05, took  # the kernel waited for the ack
        assert (m4.State, m4.Operation, m4.Failed, m4.LastError) == ("offline", "", False, "")
        assert sys_state(sim, m4.Device) == "offline"
        m4.Start("m4-noack.elf", timeout=T)  # and the core is usable again
        out = sim.rprocctl("stop", "m4")
        assert (out.returncode, out.stdout) == (0, "m4: offline\n"), out.stderr


def _call_in_thread(sim, path: str, method: str, *args: str) -> tuple[threading.Thread, dict]:
    """Call `method` on its own connection; the result holds the error and when
    it came back."""
    result: dict = {}

    def run() -> None:
        proxy = sim.pydbus().get(BUS_NAME, path)
        try:
            result["error"] = error_of(getattr(proxy, method), *args, timeout=T)
        except AssertionError as err:
            result["error"] = ("no error", str(err))
        finally:
            result["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_hung_kernel_write_times_out_while_other_cores_keep_answering():
    """hang=1 blocks m4's next state write in the emulated kernel: Stop, then
    Start, on m4 end with Timeout; meanwhile the m33 (another board's core on
    the same machine) answers property reads and runs its own operations,
    all finished before m4's call times out. Once the kernel write returns
    the daemon's view matches the kernel's and m4 takes calls again."""
    config = "[Processor m4]\nShutdownTimeoutSec=1s\nStartTimeoutSec=2s\n"
    with board(MP1, MP2, config=config, firmware=("m4-good.elf", "m33-good.elf")) as sim:
        bus = sim.pydbus()
        m4, m33 = bus.get(BUS_NAME, M4), bus.get(BUS_NAME, M33)
        m4.Start("m4-good.elf", timeout=T)
        device = m4.Device
        try:
            # Stop hangs in the kernel.
            sim.control(f"{device}/hang", "1")
            thread, hung = _call_in_thread(sim, M4, "Stop")
            wait_until(lambda: m4.Operation == "stopping", what="m4 stopping")
            assert m33.State == "offline"
            read_at = time.monotonic()
            m33.Start("m33-good.elf", timeout=T)
            started_at = time.monotonic()
            assert m33.State == "running"
            thread.join(T)
            assert hung["error"][0] == ERROR + "Timeout", hung
            assert hung["error"][1].startswith("m4: stop did not finish in time"), hung
            assert read_at < hung["at"] and started_at < hung["at"]
            # The write is still blocked: m4 is Busy, the others are not.
            for call in (m4.Stop, m4.Start):
                name, message = error_of(call, *(("m4-good.elf",) if call == m4.Start else ()),
                                         timeout=T)
                assert name == ERROR + "Busy" and "stopping" in message, message
            assert m4.Operation == "stopping"
            out = sim.rprocctl("status", "m4")
            assert out.returncode == 0, out.stderr
            sim.control(f"{device}/hang", "0")
            wait_until(lambda: m4.Operation == "", what="m4's blocked stop returned")
            assert m4.State == sys_state(sim, device) == "offline"

            # Start hangs in the kernel.
            sim.control(f"{device}/hang", "1")
            thread, hung = _call_in_thread(sim, M4, "Start", "m4-good.elf")
            wait_until(lambda: m4.Operation == "starting", what="m4 starting")
            assert m33.Firmware == "m33-good.elf"
            read_at = time.monotonic()
            m33.Stop(timeout=T)
            stopped_at = time.monotonic()
            thread.join(T)
            assert hung["error"][0] == ERROR + "Timeout", hung
            assert read_at < hung["at"] and stopped_at < hung["at"]
            name, _ = error_of(m4.Stop, timeout=T)
            assert name == ERROR + "Busy"
            sim.control(f"{device}/hang", "0")
            wait_until(lambda: m4.Operation == "", what="m4's blocked start returned")
            assert m4.State == sys_state(sim, device) == "running"
            assert m4.Firmware == "m4-good.elf"
            m4.Stop(timeout=T)  # not Busy any more
            assert m4.State == sys_state(sim, device) == "offline"
            assert m33.State == sys_state(sim, m33.Device) == "offline"
        finally:  # never leave a write blocked for the teardown
            sim.control(f"{device}/hang", "0")


# -- SIGTERM -----------------------------------------------------------------------------


def test_sigterm_exits_0_and_stops_only_the_cores_with_stop_on_exit():
    """The daemon is the test's own (see test_sim_tools.OwnDaemon): after it
    exited, the board is read through /sys."""
    config = "[Processor m33]\nStopOnExit=yes\n"
    with board(MP2, daemon=False, config=config,
               firmware=("m33-good.elf", "m0-good.elf")) as sim, own_daemons(sim) as daemon:
        rprocd = daemon("rprocd").start()
        bus = sim.pydbus()
        m33, m0 = bus.get(BUS_NAME, M33), bus.get(BUS_NAME, M0)
        m33.Start("m33-good.elf", timeout=T)
        m0.Start("m0-good.elf", timeout=T)
        devices = {"m33": m33.Device, "m0": m0.Device}
        assert rprocd.terminate() == 0
        assert name_owner(sim) == ""
        assert sys_state(sim, devices["m33"]) == "offline"  # StopOnExit=yes
        assert sys_state(sim, devices["m0"]) == "running"  # StopOnExit=no (the default)
        assert "m33: stopping (StopOnExit=yes)" in rprocd.log()


def test_sigterm_exits_0_without_waiting_for_a_hung_kernel_write():
    """SIGTERM while m4's stop is blocked in the kernel (StopOnExit=yes): the
    daemon does not wait for that core; it gives up the bus name and exits 0
    at once. (The emulated write blocks uninterruptibly, like a driver in an
    uninterruptible wait, so the process is reaped only once it returns.)"""
    config = "[Processor *]\nStopOnExit=yes\n"
    with board(MP1, daemon=False, config=config, firmware=("m4-good.elf",)) as sim, \
            own_daemons(sim) as daemon:
        rprocd = daemon("rprocd").start()
        m4 = sim.pydbus().get(BUS_NAME, M4)
        m4.Start("m4-good.elf", timeout=T)
        device = m4.Device
        sim.control(f"{device}/hang", "1")
        try:
            name, _ = error_of(m4.Stop, timeout=T)
            assert name == ERROR + "Timeout"
            rprocd.kill(signal.SIGTERM)
            wait_until(lambda: "rprocd exits (0)" in rprocd.log(), timeout=10,
                       what="the daemon to exit after SIGTERM")
            wait_until(lambda: name_owner(sim) == "", timeout=5, what="org.rprocd1 released")
        finally:
            sim.control(f"{device}/hang", "0")
        assert rprocd.wait(10) == 0
        assert "m4: not stopped on exit: m4: busy" in rprocd.log()
