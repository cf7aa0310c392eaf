"""Issue 4, firmware validation, end to end: every image of tests/firmware/
against the real daemon on the emulated boards, through D-Bus and rprocctl.

- A broken image is refused by the daemon's validator with
  org.rprocd1.Error.InvalidFirmware naming its cause, before the kernel is
  written: the core stays offline and the kernel's `firmware` attribute keeps
  its value. `rprocctl start` says the same in one line and exits 1.
- A good image runs, and its report has no error or warning.
- With `Validate=no` the emulated kernel decides: it answers what
  tests/firmware/fixtures.py says (kernel_errno / generic_errno / tee_errno),
  and whenever it refuses an image the validator's report (InspectFirmware
  for that core) has an error: the two never disagree that way (the
  validator may refuse more: ELF64, oversized, no resource table).
- Signed images on a TEE core (m33 with fw_format=TEE and the test key).

The kernel side is read as a program under the umockdev preload reads it
(`sh -c 'cat /sys/class/remoteproc/...'` with the emulator's environment).
One emulator per board set and module; each test leaves its core offline.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator

import pytest
from gi.repository import GLib

try:
    from test_api_board import BUS_NAME, MANAGER_PATH, SimBoard, dbus_error, needs_sim
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import (
        BUS_NAME,
        MANAGER_PATH,
        SimBoard,
        dbus_error,
        needs_sim,
    )

from tests.firmware.fixtures import FIXTURES, PUBLIC_KEY, Fixture, of_kind

pytestmark = needs_sim

MP1 = "stm32mp157f-dk"
MP2 = "stm32mp257f-dk"
T = 30  # seconds, per D-Bus call
TEE_OPTIONS = ("m33.fw_format=TEE", f"m33.tee_key={PUBLIC_KEY}")
NO_VALIDATION = "[Processor *]\nValidate=no\n"
ALL_IMAGES = tuple(FIXTURES)

BROKEN = of_kind("broken")
GOOD = of_kind("good", "behaviour")
SIGNED = of_kind("signed")


def path_of(core: str) -> str:
    return f"/org/rprocd1/processor/{core}"


def sh(sim: SimBoard, command: str) -> subprocess.CompletedProcess:
    """`sh -c command` under the emulator's preload: /sys is the emulated kernel."""
    return subprocess.run(["sh", "-c", command], env={**sim.env}, capture_output=True,
                          text=True, timeout=30)


def kernel_attr(sim: SimBoard, device: str, attr: str) -> str:
    out = sh(sim, f"cat /sys/class/remoteproc/{device}/{attr}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def start_error(proc, firmware: str) -> tuple[str, str] | None:
    """Start(firmware): None if the core runs, else (error name, message)."""
    try:
        proc.Start(firmware, timeout=T)
    except GLib.Error as err:
        name, message = dbus_error(err)
        assert "\n" not in message and "Traceback" not in message, message
        return name, message
    return None


def stop_if_running(proc) -> None:
    if proc.State in ("running", "attached"):
        proc.Stop(timeout=T)
    assert proc.State == "offline"


def offline_core(sim: SimBoard, core: str):
    """The core's proxy, stopped first if an earlier (failed) test left it running."""
    proc = sim.pydbus().get(BUS_NAME, path_of(core))
    stop_if_running(proc)
    return proc


def report_for(sim: SimBoard, core: str, fixture: Fixture) -> dict:
    """The validator's report of `fixture` against `core`: the image is
    installed under the core's default firmware name, which InspectFirmware
    ties to that core whatever else the board has."""
    proc = sim.pydbus().get(BUS_NAME, path_of(core))
    default = proc.DefaultFirmware
    sim.install(default, fixture.name)
    return sim.pydbus().get(BUS_NAME, MANAGER_PATH).InspectFirmware(default, timeout=T)


def codes(report: dict, *severities: str) -> list[str]:
    return [f["code"] for f in report["findings"] if not severities or f["severity"] in severities]


def names_cause(fixture: Fixture, message: str, report: dict) -> bool:
    """The refusal names the fixture's cause: its keyword is in the message,
    or in the code of the error finding the message is, or (when the message
    points to InspectFirmware for more problems) in the code of another error."""
    keyword = (fixture.finding or "").lower()
    errors = codes(report, "error")
    if not keyword or keyword in message.lower():
        return bool(keyword)
    code_word = keyword.replace(" ", "-")
    return bool(errors) and (code_word in errors[0] or (
        "InspectFirmware" in message and any(code_word in code for code in errors)))


def sim_for(*boards: str, options: tuple[str, ...] = (), config: str | None = None,
            ) -> Iterator[SimBoard]:
    with SimBoard(*boards, options=options, config=config, firmware=ALL_IMAGES) as sim:
        yield sim


@pytest.fixture(scope="module")
def st() -> Iterator[SimBoard]:
    """Both ST boards on one machine (m4, m33, m0), validation on."""
    yield from sim_for(MP1, MP2)


@pytest.fixture(scope="module")
def tee() -> Iterator[SimBoard]:
    """The MP2 with a TEE m33 that verifies signatures with the test key."""
    yield from sim_for(MP2, options=TEE_OPTIONS)


@pytest.fixture(scope="module")
def raw() -> Iterator[SimBoard]:
    """m4, m33, m0 and a generic core, Validate=no: the kernel decides."""
    yield from sim_for(MP1, MP2, "generic:1", config=NO_VALIDATION)


@pytest.fixture(scope="module")
def raw_tee() -> Iterator[SimBoard]:
    yield from sim_for(MP2, options=TEE_OPTIONS, config=NO_VALIDATION)


# -- broken images are refused before the kernel sees them ----------------------


def assert_refused_before_the_kernel(sim: SimBoard, core: str, fixture: Fixture,
                                     cause: str | None = None) -> None:
    proc = offline_core(sim, core)
    try:
        _refused(sim, proc, core, fixture, cause)
    finally:
        stop_if_running(proc)


def _refused(sim: SimBoard, proc, core: str, fixture: Fixture, cause: str | None) -> None:
    device = proc.Device
    before = kernel_attr(sim, device, "firmware")
    assert kernel_attr(sim, device, "state") == "offline"

    error = start_error(proc, fixture.name)
    assert error is not None, f"{fixture.name} ({fixture.defect}) runs on {core}"
    name, message = error
    assert name == "org.rprocd1.Error.InvalidFirmware", (name, message)
    assert message.startswith(f"{core}: ") and fixture.name in message, message
    # Never written: the kernel neither loaded the image nor even got its name.
    assert kernel_attr(sim, device, "state") == "offline"
    assert kernel_attr(sim, device, "firmware") == before, (
        f"the daemon's validator let '{fixture.name}' through to the kernel, which "
        f"refused it: {message}")
    assert (proc.State, proc.Operation) == ("offline", "")
    # The refusal is the validator's first error, and names the cause.
    report = report_for(sim, core, fixture)
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert not report["valid"] and errors, report["findings"]
    assert errors[0]["message"] in message, (message, errors)
    if cause is None:
        assert names_cause(fixture, message, report), (fixture.finding, message, errors)
    else:
        assert cause in message.lower(), message

    out = sim.rprocctl("start", core, fixture.name)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"rprocctl: {message}\n", out.stderr
    assert out.stdout == ""
    assert kernel_attr(sim, device, "firmware") == before


@pytest.mark.parametrize("fixture", BROKEN, ids=lambda f: f.name)
def test_broken_image_is_refused_with_its_cause(st: SimBoard, fixture: Fixture):
    assert_refused_before_the_kernel(st, fixture.core, fixture)


@pytest.mark.parametrize("fixture", SIGNED, ids=lambda f: f.name)
def test_signed_image_on_an_elf_core_is_refused(st: SimBoard, fixture: Fixture):
    """fw_format ELF: the kernel would say 'bad magic' (-22); rprocd says why."""
    assert fixture.kernel_errno == errno.EINVAL
    assert_refused_before_the_kernel(st, "m33", fixture, cause="signed")


@pytest.mark.parametrize("fixture", GOOD, ids=lambda f: f.name)
def test_good_image_runs_and_has_no_finding(st: SimBoard, fixture: Fixture):
    proc = offline_core(st, fixture.core)
    assert start_error(proc, fixture.name) is None
    try:
        assert (proc.State, proc.Firmware) == ("running", fixture.name)
        assert kernel_attr(st, proc.Device, "firmware") == fixture.name
    finally:
        stop_if_running(proc)
    report = report_for(st, fixture.core, fixture)
    assert report["valid"] and report["errors"] == 0 and report["warnings"] == 0, \
        report["findings"]
    # The daemon checked it against the core: the kernel's memory map is known.
    assert codes(report) == [], report["findings"]


def test_inspect_firmware_reports_the_image_against_its_core(st: SimBoard):
    """InspectFirmware is an a{sv} with format, segments placed in the core's
    regions, the resource table entries and findings; rprocctl inspect --json
    shows the same report."""
    report = report_for(st, "m4", FIXTURES["m4-good.elf"])
    assert report["format"] == "ELF" and report["elf_class"] == 32
    assert (report["machine"], report["endianness"]) == (40, "little")
    assert report["path"].endswith("/rproc-m4-fw")
    loads = [s for s in report["segments"] if s["type"] == "LOAD" and s["memsz"]]
    assert loads, report["segments"]
    table = report["resource_table"]
    assert table["valid"] and table["version"] == 1
    assert sorted(e["type"] for e in table["entries"]) == ["trace", "vdev"], table["entries"]
    assert report["findings"] == [], report["findings"]
    # Placed in the m4's memory regions (read from the emulated device tree).
    assert {s["region"] for s in loads} <= {"retram", "mcuram"}, loads
    assert all(s["region"] for s in loads), loads

    out = st.rprocctl("--json", "inspect", "rproc-m4-fw")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == report

    bad = report_for(st, "m4", FIXTURES["bad-magic.elf"])
    assert not bad["valid"] and codes(bad, "error") == ["bad-magic"]
    out = st.rprocctl("inspect", "rproc-m4-fw")
    assert out.returncode == 1 and "magic" in out.stdout, out.stdout


# -- signed images on a TEE core ----------------------------------------------


def test_good_signed_image_runs_on_a_tee_core(tee: SimBoard):
    m33 = offline_core(tee, "m33")
    assert m33.FirmwareFormat == "TEE"
    assert start_error(m33, "m33-good-signed.bin") is None
    try:
        assert (m33.State, m33.Firmware) == ("running", "m33-good-signed.bin")
    finally:
        stop_if_running(m33)
    report = report_for(tee, "m33", FIXTURES["m33-good-signed.bin"])
    assert report["valid"] and report["format"] == "TEE-TLV", report["findings"]
    assert report["warnings"] == 0, report["findings"]


def test_bad_signature_is_refused_by_the_secure_loader(tee: SimBoard):
    """Only OP-TEE holds the key: the image goes to the kernel, which says EIO,
    and the error says it was the signature."""
    m33 = offline_core(tee, "m33")
    error = start_error(m33, "m33-bad-signature.bin")
    assert error is not None
    name, message = error
    assert name == "org.rprocd1.Error.InvalidFirmware", error
    assert message.startswith("m33: ") and "signature" in message, message
    assert (m33.State, m33.Operation) == ("offline", "")
    out = tee.rprocctl("start", "m33", "m33-bad-signature.bin")
    assert out.returncode == 1 and out.stderr == f"rprocctl: {message}\n", out.stderr
    report = report_for(tee, "m33", FIXTURES["m33-bad-signature.bin"])
    assert "signature" in codes(report), report["findings"]


def test_bad_hash_is_refused_before_the_kernel(tee: SimBoard):
    assert_refused_before_the_kernel(tee, "m33", FIXTURES["m33-bad-hash.bin"])


@pytest.mark.parametrize("name", ["m33-good.elf", "bad-magic.elf"])
def test_plain_elf_on_a_tee_core_is_refused(tee: SimBoard, name: str):
    """A TEE core takes signed images only (the kernel would say EIO)."""
    fixture = FIXTURES[name]
    assert fixture.tee_errno == errno.EIO
    assert_refused_before_the_kernel(tee, "m33", fixture, cause="signed")


# -- the emulated kernel and the validator agree ---------------------------------

# How the daemon words each kernel errno of a refused start (processor.py).
KERNEL_WORDS = {
    "the kernel rejected": errno.EINVAL,
    "the secure loader (OP-TEE) rejected": errno.EIO,
}


def kernel_verdict(proc, firmware: str) -> int | None:
    """Start with Validate=no: None if it runs (then stopped), else the errno."""
    error = start_error(proc, firmware)
    if error is None:
        stop_if_running(proc)
        return None
    name, message = error
    for words, number in KERNEL_WORDS.items():
        if words in message:
            assert name == "org.rprocd1.Error.InvalidFirmware", error
            assert (proc.State, proc.Operation) == ("offline", ""), error
            return number
    raise AssertionError(f"not a kernel refusal (is Validate=no in force?): {error}")


def assert_agreement(sim: SimBoard, core: str, fixture: Fixture, expected: int | None) -> None:
    proc = offline_core(sim, core)
    default = proc.DefaultFirmware
    sim.install(default, fixture.name)
    got = kernel_verdict(proc, default)
    assert got == expected, (
        f"the emulated kernel answered {errno.errorcode.get(got, got)} for {fixture.name} on "
        f"{core}; fixtures.py says {errno.errorcode.get(expected, expected)}")
    report = sim.pydbus().get(BUS_NAME, MANAGER_PATH).InspectFirmware(default, timeout=T)
    if got is not None:
        if fixture.finding == "signature" and got == errno.EIO:
            # Only OP-TEE can verify a signature: the validator says so.
            assert "signature" in codes(report), report["findings"]
        else:
            assert not report["valid"], (
                f"the kernel refuses {fixture.name} on {core} "
                f"({errno.errorcode[got]}) but the validator finds no error: "
                f"{report['findings']}")
    elif fixture.kind in ("good", "behaviour") and fixture.core == core:
        assert report["valid"], report["findings"]


def own_core(fixture: Fixture) -> str:
    return fixture.core or "m33"


@pytest.mark.parametrize("fixture", list(FIXTURES.values()), ids=lambda f: f.name)
def test_kernel_and_validator_agree_on_its_own_core(raw: SimBoard, fixture: Fixture):
    assert_agreement(raw, own_core(fixture), fixture, fixture.kernel_errno)


@pytest.mark.parametrize("fixture", list(FIXTURES.values()), ids=lambda f: f.name)
def test_kernel_and_validator_agree_on_a_generic_core(raw: SimBoard, fixture: Fixture):
    assert_agreement(raw, "core0", fixture, fixture.generic_errno)


@pytest.mark.parametrize("fixture", list(FIXTURES.values()), ids=lambda f: f.name)
def test_kernel_and_validator_agree_on_a_tee_core(raw_tee: SimBoard, fixture: Fixture):
    assert_agreement(raw_tee, "m33", fixture, fixture.tee_errno)
