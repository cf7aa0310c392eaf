"""format_report: the text `rprocctl inspect` prints."""

from __future__ import annotations

import struct

from rprocd.firmware import format_report, validate_bytes
from tests.unit.test_firmware_images import (
    M4,
    M33,
    devmem,
    good_image,
    good_table,
    rsc_table,
    sign_tlv,
    trace,
)


def test_good_image():
    text = format_report(validate_bytes(good_image("m4").data, M4, "/lib/firmware/a.elf"))
    lines = text.splitlines()
    assert lines[0].startswith("File:         /lib/firmware/a.elf (")
    assert "Format:       ELF" in text
    assert "ELF32, little-endian, ARM (EM_ARM)" in text
    assert "Entry:        0x10000201" in text
    assert "Boot vector:  0x00000000 (section .isr_vector)" in text
    assert any(line.endswith(" retram") and "R--" in line for line in lines)
    assert "Resource table at 0x10020000" in text and "version 1, 2 entries:" in text
    assert "rpmsg (id 7), 2 vrings, config 8 bytes" in text
    assert "vring1  da 0x10041000  align 16  num 16  notifyid 1" in text
    assert "'trace0' da 0x10020400 len 4096" in text
    assert text.endswith("Findings:\n  none: the image looks good\n")


def test_findings_and_devmem():
    report = validate_bytes(good_image("m4", good_table("m4", [devmem("ipcc", 0x4C001000)])).data,
                            M4)
    text = format_report(report)
    assert "devmem    'ipcc' da 0x4c001000 pa 0x4c001000 len 4096" in text
    assert "  error   devmem-without-iommu: resource table entry 2" in text


def test_without_table_and_with_a_broken_one():
    assert "Resource table: none" in format_report(validate_bytes(good_image(table=b"").data, M4))
    broken = format_report(validate_bytes(good_image(table=rsc_table([], ver=2)).data, M4))
    assert "not usable (see findings)" in broken and "rsc-version" in broken


def test_odd_entries():
    table = rsc_table([trace(0x10020400), struct.pack("<I", 200) + bytes(8)],
                      offsets=[5000, 16 + 8 + 48])
    text = format_report(validate_bytes(good_image(table=table).data, M4))
    assert "offset 5000 outside the table" in text and "vendor    type 200" in text


def test_signed_and_unknown():
    text = format_report(validate_bytes(sign_tlv(good_image("m33").data), M33))
    assert "Format:       TEE-TLV" in text and "sign_type=RSASSA-PKCS1-v1.5/SHA-256" in text
    junk = format_report(validate_bytes(b"hello world", None))
    assert "Format:       unknown" in junk and "too-small" in junk and "Entry" not in junk
