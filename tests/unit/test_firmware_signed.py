"""OP-TEE signed images (ABI §7.3, §7.4): layout, TLVs, hash table, loader format."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from rprocd.firmware import validate_bytes
from rprocd.firmware.findings import CODES
from tests.unit.test_firmware_images import (
    M4,
    M33,
    good_image,
    hash_table,
    sign_legacy,
    sign_tlv,
    tlv,
)

TEE = dataclasses.replace(M33, fw_format="TEE", boot_vector_sections=())


def codes(report, severity=None):
    assert all(f.code in CODES for f in report.findings), report.findings
    return [f.code for f in report.findings if severity in (None, f.severity)]


def test_good_tlv_image_on_a_tee_core():
    elf = good_image("m33").data
    report = validate_bytes(sign_tlv(elf), TEE)
    assert codes(report) == ["signature"] and report.notes[0].severity == "note"
    assert "platform key" in report.notes[0].message
    assert report.format == "TEE-TLV"
    assert report.signed["sign_type"] == "RSASSA-PKCS1-v1.5/SHA-256"
    assert report.signed["hash_entries"] == 2
    assert [s["region"] for s in report.segments] == ["cm33_cube_fw", "cm33_cube_data"]
    assert report.resource_table["valid"] and report.machine == 40


def test_ecdsa_signature_type():
    report = validate_bytes(sign_tlv(good_image("m33").data, sign_len=64, sign_type=2), TEE)
    assert codes(report) == ["signature"]
    assert report.signed["sign_type"] == "ECDSA-P256/SHA-256"


def test_signed_image_for_an_elf_loader():
    report = validate_bytes(sign_tlv(good_image("m33").data), M33)
    assert codes(report, "error") == ["format-mismatch"]
    msg = report.errors[0].message
    assert "a signed image for an ELF loader" in msg and "bad magic" in msg and "m33" in msg


def test_elf_image_for_a_tee_loader():
    report = validate_bytes(good_image("m33").data, TEE)
    assert codes(report, "error") == ["format-mismatch"]
    assert "an ELF image for a TEE loader" in report.errors[0].message


def test_garbage_for_a_tee_loader():
    assert codes(validate_bytes(b"\x01\x02\x03\x04" * 20, TEE)) == ["bad-magic"]


def test_segment_changed_after_signing():
    elf = good_image("m33").data
    signed = bytearray(sign_tlv(elf))
    signed[-len(elf) + 0x100] ^= 1  # inside the first segment (.isr_vectors/.text)
    report = validate_bytes(bytes(signed), TEE)
    assert codes(report, "error") == ["hash-mismatch"]
    assert "segment 0 at 0x80000000" in report.errors[0].message


def test_segment_missing_from_the_hash_table():
    elf = good_image("m33").data
    report = validate_bytes(sign_tlv(elf, hashes=hash_table(elf)[:64]), TEE)
    assert codes(report, "error") == ["hash-missing"]


def test_hash_entry_with_other_sizes():
    elf = good_image("m33").data
    table = bytearray(hash_table(elf))
    struct.pack_into("<I", table, 16, 1)  # p_filesz of the first entry
    report = validate_bytes(sign_tlv(elf, hashes=bytes(table)), TEE)
    assert codes(report, "error") == ["hash-entry"]


@pytest.mark.parametrize("mutate,code", [
    (lambda b: b[:-8], "signed-size"),
    (lambda b: b + bytes(8), "signed-size"),
    (lambda b: b[:4] + struct.pack("<I", 2) + b[8:], "signed-version"),
    (lambda b: b[:12] + struct.pack("<I", 0) + b[16:], "signed-header"),
    (lambda b: b[:16], "signed-header"),
])
def test_header_rules(mutate, code):
    report = validate_bytes(mutate(sign_tlv(good_image("m33").data)), TEE)
    assert codes(report, "error") == [code]
    assert "-5" in report.errors[0].message


def test_unsupported_signature_type():
    report = validate_bytes(sign_tlv(good_image("m33").data, sign_type=9), TEE)
    assert codes(report, "error") == ["signature"]


def test_missing_hash_table_tlv():
    tlvs = tlv(1, b"\x01") + tlv(3, b"\x01") + tlv(4, b"\x01") + tlv(5, struct.pack("<I", 8))
    report = validate_bytes(sign_tlv(good_image("m33").data, tlvs=tlvs), TEE)
    assert codes(report, "error") == ["hash-table"]


def test_image_sizes_past_the_image_area():
    elf = good_image("m33").data
    tlvs = (tlv(1, b"\x01") + tlv(3, b"\x01") + tlv(4, b"\x01")
            + tlv(5, struct.pack("<I", len(elf) + 64)) + tlv(0x10, hash_table(elf)))
    report = validate_bytes(sign_tlv(elf, tlvs=tlvs), TEE)
    assert codes(report, "error") == ["signed-tlv"]


def test_embedded_elf64_is_refused_by_optee():
    elf = good_image("m33", elf_class=64).data
    report = validate_bytes(sign_tlv(elf, hashes=bytes(64)), TEE)
    assert "signed-elf" in codes(report, "error")


def test_no_table_in_any_image():
    elf = good_image("m33", table=b"").data
    report = validate_bytes(sign_tlv(elf), TEE)
    assert codes(report, "error") == ["no-resource-table"]


def test_legacy_format_is_recognised_and_checked():
    elf = good_image("m33").data
    report = validate_bytes(sign_legacy(elf, key_len=16), TEE)
    assert report.format == "ST-legacy-signed"
    assert codes(report) == ["signature"]
    assert report.signed["key_info"] is True
    broken = bytearray(sign_legacy(elf))
    broken[-len(elf) + 0x100] ^= 1
    assert codes(validate_bytes(bytes(broken), TEE), "error") == ["hash-mismatch"]


def test_legacy_hash_entry_offset_must_match():
    elf = good_image("m33").data
    table = bytearray(hash_table(elf))
    struct.pack_into("<I", table, 4, 0x10)  # p_offset of the first entry
    report = validate_bytes(sign_legacy(elf, hashes=bytes(table)), TEE)
    assert codes(report, "error") == ["hash-entry"]


def test_signed_without_target_is_just_described():
    report = validate_bytes(sign_tlv(good_image("m4").data), None)
    assert codes(report) == ["signature"]
    report = validate_bytes(sign_tlv(good_image("m4").data), M4)
    assert codes(report, "error") == ["format-mismatch"]
