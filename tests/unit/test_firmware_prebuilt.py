"""The validator on the real test images of tests/firmware (built by arm-none-eabi-gcc).

Good images must be clean; each broken one must get an error naming its
defect; and wherever the (emulated) kernel refuses an image, the validator
must refuse it too, so a `start` never reaches a kernel that answers -22/-5.
"""

from __future__ import annotations

import dataclasses

import pytest

from rprocd.firmware import Target, validate_file
from tests.firmware.fixtures import BUILD_DIR, FIXTURES, SIZE_LIMIT, Fixture
from tests.unit.test_firmware_images import M4, TARGETS

assert (BUILD_DIR / "m4-good.elf").exists(), "run `make -C tests/firmware` first"

GENERIC = dataclasses.replace(M4, core="core0")
# The only defect no daemon can see: the signature needs OP-TEE's platform key.
NEEDS_PLATFORM_KEY = {"m33-bad-signature.bin"}


def tee(target: Target) -> Target:
    return dataclasses.replace(target, fw_format="TEE", boot_vector_sections=())


def native_target(f: Fixture) -> Target:
    target = TARGETS[f.core]
    return tee(target) if f.kind == "signed" else target


def names_cause(report, keyword: str) -> bool:
    keyword = keyword.lower()
    return any(keyword in e.code or keyword in e.message.lower() for e in report.errors)


@pytest.mark.parametrize("f", [f for f in FIXTURES.values()], ids=lambda f: f.name)
def test_fixture_on_its_own_core(f: Fixture):
    report = validate_file(f.path, native_target(f), max_size=SIZE_LIMIT)
    if f.finding is None:
        assert [x for x in report.findings if x.severity != "note"] == [], report.findings
    elif f.name in NEEDS_PLATFORM_KEY:
        assert report.errors == []
        assert [n.code for n in report.notes] == [f.finding]
    else:
        assert names_cause(report, f.finding), (f.finding, report.findings)


@pytest.mark.parametrize("loader", ["kernel", "generic", "tee"])
def test_every_kernel_refusal_is_caught_first(loader: str):
    for f in FIXTURES.values():
        if f.name in NEEDS_PLATFORM_KEY:
            continue
        if loader == "kernel":
            target, errno = TARGETS[f.core], f.kernel_errno
        elif loader == "generic":
            target, errno = GENERIC, f.generic_errno
        else:
            target, errno = tee(TARGETS[f.core]), f.tee_errno
        report = validate_file(f.path, target, max_size=SIZE_LIMIT)
        if errno is not None:
            assert report.errors, (loader, f.name, errno)
        elif f.finding is None:
            assert report.errors == [], (loader, f.name, report.errors)


def test_formats_and_segments():
    good = validate_file(FIXTURES["m4-good.elf"].path, M4)
    assert good.format == "ELF" and good.boot_vector["section"] == ".isr_vector"
    assert {s["region"] for s in good.segments if s["type"] == "LOAD"} == {"retram", "mcuram"}
    assert [e["type"] for e in good.resource_table["entries"]] == ["vdev", "trace"]
    signed = validate_file(FIXTURES["m33-good-signed.bin"].path, None)
    assert signed.format == "TEE-TLV" and signed.signed["hash_entries"] >= 2
