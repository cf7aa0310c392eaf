"""Every errno of the ABI reference's start table (remoteproc-abi.md §1.3)
that the emulated kernel can return, mapped to its named D-Bus error with
the cause in a one-line message (issue 3), plus the daemon's own refusals:
BadState, NoSuchProcessor, InvalidArgs for hostile firmware names.

Where the kernel decides, the daemon's own validation is off (Validate=no),
so the image reaches the kernel: ENOENT (no such file), EINVAL (every
broken fixture the STM32 kernel refuses), EIO (the OP-TEE loader refusing
a plain ELF, fw_format TEE). The errnos no image can provoke (EPERM: no
reset control, EBUSY: a pre-5.19 start on a running core, which the
daemon's state gate never lets happen, ENOMEM, EINTR, EOVERFLOW, ENODEV,
ENAMETOOLONG, a driver-specific one; EINTR, which the daemon's write
simply makes again) come from the emulator's fail_start
control, which makes the kernel's next `start` fail with exactly that errno.
"""

from __future__ import annotations

import errno

import pytest

try:
    from test_api_board import BUS_NAME, MANAGER_PATH, board, needs_sim
    from test_sim_tools import (
        ERROR,
        M4,
        M33,
        MP1,
        MP2,
        T,
        error_of,
        sys_read,
        sys_state,
    )
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import BUS_NAME, MANAGER_PATH, board, needs_sim
    from tests.integration.test_sim_tools import (
        ERROR,
        M4,
        M33,
        MP1,
        MP2,
        T,
        error_of,
        sys_read,
        sys_state,
    )

from tests.firmware.fixtures import FIXTURES

pytestmark = needs_sim

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

# errno injected with fail_start -> (error name, words of the cause in the message)
INJECTED = {
    "EPERM": ("NotSupported", "cannot start"),
    "EBUSY": ("BadState", "busy"),
    "ENOMEM": ("Failed", "out of memory"),
    "EOVERFLOW": ("InvalidFirmware", "too large"),
    "ENODEV": ("NoSuchProcessor", "disappeared"),
    "ENAMETOOLONG": ("InvalidArgs", "too long"),
    "EIO": ("InvalidFirmware", "OP-TEE"),
    "EINVAL": ("InvalidFirmware", "rejected"),
    "ENOENT": ("FirmwareNotFound", "m4-good.elf"),
    "ETIMEDOUT": ("Failed", "ETIMEDOUT"),  # driver-specific: named as it is
}

KERNEL_EINVAL = sorted(f.name for f in FIXTURES.values()
                       if f.core == "m4" and f.kernel_errno == errno.EINVAL)


def error_name(short: str) -> str:
    return INVALID_ARGS if short == "InvalidArgs" else ERROR + short


def assert_refused(sim, proc, call, args, error: str, *words: str) -> str:
    """The call fails with `error`, the message names the core and `words`, the
    core stays offline with the error as LastError."""
    name, message = error_of(call, *args, timeout=T)
    assert name == error_name(error), (name, message)
    assert message.startswith(f"{proc.Name}: "), message
    for word in words:
        assert word in message, (word, message)
    assert (proc.State, proc.Operation) == ("offline", "")
    assert sys_state(sim, proc.Device) == "offline"
    return message


def test_each_injected_start_errno_has_its_named_error():
    """kernel=5.15: the kernel whose `start` can say EBUSY."""
    with board(MP1, options=("kernel=5.15",), firmware=("m4-good.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        wrong = []
        for name, (error, words) in INJECTED.items():
            sim.control(f"{m4.Device}/fail_start", name)
            try:
                message = assert_refused(sim, m4, m4.Start, ("m4-good.elf",), error, words)
            except AssertionError as failure:
                wrong.append(f"{name}: {failure}")
                if m4.State == "running":
                    m4.Stop(timeout=T)
                continue
            if error != "NoSuchProcessor" and (m4.Failed, m4.LastError) != (True, message):
                wrong.append(f"{name}: Failed/LastError {(m4.Failed, m4.LastError)}")
        assert not wrong, "\n".join(wrong)
        # EINTR (a signal while the kernel waited for its lock, nothing done yet):
        # the write is simply made again (Python retries EINTR, PEP 475): it runs.
        sim.control(f"{m4.Device}/fail_start", "EINTR")
        m4.Start("m4-good.elf", timeout=T)
        assert (m4.State, m4.Failed) == ("running", False)
        assert "ETIMEDOUT" in m4.LastError  # kept until ResetFailed()
        m4.ResetFailed(timeout=T)
        assert m4.LastError == ""
        assert sys_read(sim, f"$RPROCD_SIM_CONTROL/{m4.Device}/fail_start") == ""


def test_start_errnos_from_the_kernel_itself():
    """Validate=no: the kernel gets the image and its errno is the answer."""
    images = ("m4-good.elf", "m33-good.elf", *KERNEL_EINVAL)
    with board(MP1, MP2, options=("m33.fw_format=TEE",), config="[Processor *]\nValidate=no\n",
               firmware=images) as sim:
        bus = sim.pydbus()
        m4, m33 = bus.get(BUS_NAME, M4), bus.get(BUS_NAME, M33)
        assert_refused(sim, m4, m4.Start, ("absent.elf",), "FirmwareNotFound", "absent.elf")
        assert sys_read(sim, f"/sys/class/remoteproc/{m4.Device}/firmware") == "absent.elf"
        assert KERNEL_EINVAL, "no fixture the STM32 kernel refuses with EINVAL"
        for image in KERNEL_EINVAL:
            assert_refused(sim, m4, m4.Start, (image,), "InvalidFirmware", image,
                           f"InspectFirmware('{image}')")
        assert m33.FirmwareFormat == "TEE"
        assert_refused(sim, m33, m33.Start, ("m33-good.elf",), "InvalidFirmware",
                       "m33-good.elf", "OP-TEE", "sign")
        m4.Start("m4-good.elf", timeout=T)  # the core was left usable each time
        assert m4.State == "running"


HOSTILE = ("../m4-good.elf", "firmware/../m4-good.elf", "/etc/passwd",
           "m4-good.elf\nrproc-m4-fw", "x" * 300)


@pytest.mark.parametrize("validate", ["yes", "no"])
def test_hostile_firmware_names_are_refused_before_the_kernel(validate):
    """InvalidArgs from the daemon itself, whatever Validate= says (it is about
    images, not names): the name is never written to the kernel. Kernels
    before 6.11, ST's among them, follow '..' out of the firmware directory;
    the kernel cuts a name at its first newline and would run another image."""
    with board(MP1, config=f"[Processor m4]\nValidate={validate}\n",
               firmware=("m4-good.elf",)) as sim:
        m4 = sim.pydbus().get(BUS_NAME, M4)
        firmware = f"/sys/class/remoteproc/{m4.Device}/firmware"
        before = sys_read(sim, firmware)
        wrong = []
        for hostile in HOSTILE:
            try:
                name, message = error_of(m4.Start, hostile, timeout=T)
            except AssertionError as failure:
                wrong.append(f"{hostile[:40]!r}: {failure}")
                m4.Stop(timeout=T)
                continue
            written = sys_read(sim, firmware)
            if name != INVALID_ARGS or not message.startswith("m4: ") or written != before:
                wrong.append(f"{hostile[:40]!r}: {name}: {message[:160]} (kernel's firmware: "
                             f"{written[:40]!r})")
        assert not wrong, "\n".join(wrong)
        assert (m4.State, m4.Operation) == ("offline", "")


def test_bad_state_and_no_such_processor():
    with board(MP1, firmware=("m4-good.elf",)) as sim:
        bus = sim.pydbus()
        manager, m4 = bus.get(BUS_NAME, MANAGER_PATH), bus.get(BUS_NAME, M4)
        name, message = error_of(m4.Detach, timeout=T)
        assert name == ERROR + "BadState" and "offline" in message, message
        name, message = error_of(m4.Recover, timeout=T)
        assert name == ERROR + "BadState" and "not crashed" in message, message
        m4.Start("m4-good.elf", timeout=T)
        name, message = error_of(m4.Detach, timeout=T)
        assert name == ERROR + "BadState" and "use Stop() instead" in message, message
        name, message = error_of(m4.Recover, timeout=T)
        assert name == ERROR + "BadState" and "Restart()" in message, message
        assert (m4.State, m4.Failed) == ("running", False)  # refusals change nothing
        assert sys_state(sim, m4.Device) == "running"
        for bad in ("m9", "remoteproc7", ""):
            name, message = error_of(manager.GetProcessor, bad, timeout=T)
            assert name == ERROR + "NoSuchProcessor" and "known: m4" in message, message
        out = sim.rprocctl("detach", "m4")
        assert out.returncode == 1 and out.stderr.startswith("rprocctl: m4: "), out.stderr
        out = sim.rprocctl("status", "remoteproc7")
        assert out.returncode == 3 and "remoteproc7" in out.stderr, out.stderr
