"""The validator, one ABI rule at a time, on images built in the test."""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import pytest

from rprocd.firmware import Target, validate_bytes, validate_file
from rprocd.firmware.findings import CODES
from tests.unit.test_firmware_images import (
    EM_X86_64,
    M0,
    M4,
    M33,
    Sec,
    Seg,
    build_elf,
    carveout,
    devmem,
    good_image,
    good_table,
    rsc_table,
    trace,
    vdev,
    vring,
)


def codes(report, severity=None):
    assert all(f.code in CODES for f in report.findings), report.findings
    return [f.code for f in report.findings if severity in (None, f.severity)]


def problems(report):
    return [(f.severity, f.code) for f in report.findings if f.severity != "note"]


def only_error(data: bytes, target=M4) -> str:
    report = validate_bytes(data, target)
    assert len(report.errors) == 1, report.findings
    return report.errors[0]


# --- good images --------------------------------------------------------------

@pytest.mark.parametrize("core,target", [("m4", M4), ("m33", M33), ("m0", M0)])
def test_good_image_report(core, target):
    built = good_image(core)
    report = validate_bytes(built.data, target, "/lib/firmware/x.elf")
    assert report.findings == []
    assert (report.format, report.elf_class, report.endianness, report.machine) == (
        "ELF", 32, "little", 40)
    assert report.path == "/lib/firmware/x.elf"
    assert all(s["region"] for s in report.segments)
    table = report.resource_table
    assert table["valid"] and table["version"] == 1
    assert table["address"] == built.sections[".resource_table"][1]
    kinds = [e["type"] for e in table["entries"]]
    assert kinds == (["trace"] if core == "m0" else ["vdev", "trace"])
    expected_vector = ".isr_vector" if core == "m4" else ".isr_vectors"
    assert report.boot_vector["section"] == expected_vector


def test_vdev_decoded():
    report = validate_bytes(good_image("m4").data, M4)
    vd = report.resource_table["entries"][0]
    assert (vd["id"], vd["id_name"], vd["num_of_vrings"], vd["config_len"]) == (7, "rpmsg", 2, 8)
    assert [v["da"] for v in vd["vrings"]] == [0x10040000, 0x10041000]
    assert [v["num"] for v in vd["vrings"]] == [16, 16]


def test_without_target_nothing_core_specific_is_checked():
    report = validate_bytes(good_image("m33").data, None)
    assert report.findings == []
    assert report.segments[0]["region"] == ""


def test_no_memory_map_is_a_note():
    target = dataclasses.replace(M4, regions=None)
    report = validate_bytes(good_image("m4").data, target)
    assert problems(report) == []
    assert codes(report, "note") == ["no-memory-map"]
    assert "segment placement" in report.notes[0].message


def test_to_dict_is_json_and_has_no_none():
    report = validate_bytes(good_image("m4", good_table("m4", [devmem("x", 0x40000000)])).data,
                            M4)
    d = report.to_dict()
    json.dumps(d)

    def walk(v):
        assert v is not None
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert isinstance(v, (str, int, bool))
    walk(d)
    assert d["valid"] is False and d["errors"] == 1
    empty = validate_bytes(b"", None).to_dict()
    walk(empty)
    assert empty["machine"] == -1 and empty["has_entry"] is False


# --- §5.2 sanity checks, in the kernel's order --------------------------------

def test_empty_file():
    assert only_error(b"").code == "empty"


def test_too_small():
    err = only_error(good_image().data[:40])
    assert err.code == "too-small" and "'Image is too small'" in err.message


def test_bad_magic_before_anything_else():
    data = b"\0\0\0\0" + good_image().data[4:]
    err = only_error(data)
    assert err.code == "bad-magic" and "'Image is corrupted (bad magic)'" in err.message
    assert validate_bytes(data, M4).format == "unknown"


def test_bad_class():
    data = bytearray(good_image().data)
    data[4] = 3
    err = only_error(bytes(data))
    assert err.code == "bad-class" and "'Unsupported class'" in err.message


def test_elf64_header_too_small():
    data = bytearray(good_image().data[:60])
    data[4] = 2
    err = only_error(bytes(data))
    assert err.code == "too-small" and "elf64 header is too small" in err.message


def test_big_endian():
    built = good_image(order=">")
    report = validate_bytes(built.data, M4)
    assert codes(report) == ["wrong-endianness"]
    assert "'Unsupported firmware endianness'" in report.errors[0].message
    assert report.endianness == "big" and report.machine == 40


def test_section_headers_past_the_end():
    built = good_image()
    err = only_error(built.data[:built.shoff + 20])
    assert err.code == "truncated" and "'Image is too small'" in err.message


def test_no_program_headers():
    built = good_image()
    err = only_error(built.patched(44, "<H", 0))
    assert err.code == "no-segments" and "'No loadable segments'" in err.message


def test_program_headers_past_the_end():
    built = good_image()
    err = only_error(built.patched(28, "<I", len(built.data) + 1))
    assert err.code == "truncated" and "'Firmware size is too small'" in err.message


def test_program_header_table_cut():
    built = good_image()
    data = built.patched(28, "<I", len(built.data) - 40)  # 3 headers of 32 do not fit
    report = validate_bytes(data, M4)
    assert "truncated" in codes(report)


# --- class and machine against the core ---------------------------------------

def test_elf64_on_cortex_m():
    report = validate_bytes(good_image("m4", elf_class=64).data, M4)
    assert problems(report) == [("error", "wrong-class")]
    assert "ELF32" in report.errors[0].message and "m4" in report.errors[0].message


def test_x86_64_on_cortex_m():
    report = validate_bytes(good_image("m4", machine=EM_X86_64).data, M4)
    assert codes(report, "error") == ["wrong-machine"]
    msg = report.errors[0].message
    assert "X86-64" in msg and "ARM" in msg and "m4" in msg


def test_machine_unchecked_when_core_unknown():
    target = dataclasses.replace(M4, machine=None)
    assert validate_bytes(good_image("m4", machine=EM_X86_64).data, target).findings == []


# --- §5.4 segments --------------------------------------------------------------

def test_segment_outside_names_regions_and_fix():
    built = build_elf([Seg(0x80000000, [Sec(".isr_vectors", b"\0" * 64)]),
                       Seg(0x80FFF000, [Sec(".text", b"\0" * 0x2000)])],
                      entry=0x80000001)
    report = validate_bytes(built.data, dataclasses.replace(M33, require_resource_table=False))
    assert codes(report, "error") == ["segment-outside"]
    msg = report.errors[0].message
    assert "segment 1 at 0x80fff000..0x81001000" in msg
    assert "m33" in msg and "cm33_cube_fw 0x80000000..0x81000000" in msg
    assert "bad phdr da 0x80fff000" in msg and "linker script" in msg


def test_segment_in_no_region_lists_all_regions():
    built = good_image("m4")
    off = built.phdr_offsets[2]
    data = built.patched(off + 12, "<I", 0x20000000)  # p_paddr
    report = validate_bytes(data, M4)
    seg = [f for f in report.errors if f.code == "segment-outside"]
    assert len(seg) == 1 and "retram" in seg[0].message and "mcuram" in seg[0].message


def test_segment_spanning_two_regions_is_outside():
    # retram ends at 0x10000, mcuram starts at 0x10000000: not adjacent; use vrings
    built = build_elf([Seg(0x10040800, [Sec(".x", b"\0" * 0x1000)])], entry=0)
    report = validate_bytes(built.data, dataclasses.replace(M4, require_resource_table=False))
    assert codes(report, "error") == ["segment-outside"]


def test_filesz_larger_than_memsz():
    built = good_image()
    off = built.phdr_offsets[1]
    data = built.patched(off + 20, "<I", 0x10)  # p_memsz < p_filesz (0x400)
    report = validate_bytes(data, M4)
    assert "segment-size" in codes(report, "error")
    assert "bad phdr filesz 0x400 memsz 0x10" in report.errors[0].message


def test_segment_data_past_the_end():
    built = good_image()
    off = built.phdr_offsets[1]
    data = built.patched(off + 4, "<I", len(built.data) - 0x100)  # p_offset near the end
    report = validate_bytes(data, M4)
    assert codes(report, "error") == ["truncated"]
    assert "truncated fw: need" in report.errors[0].message


def test_empty_segment_is_skipped():
    built = good_image()
    off = built.phdr_offsets[1]
    data = built.patched(off + 8, "<4I", 0x70000000, 0x70000000, 0, 0)
    report = validate_bytes(data, M4)
    assert "segment-outside" not in codes(report)


def test_non_load_segments_are_listed_not_checked():
    built = build_elf([Seg(0x10000000, [Sec(".text", b"\0" * 64)]),
                       Seg(0x90000000, [Sec(".note", b"\0" * 16)], type=4)],
                      entry=0x10000001)
    report = validate_bytes(built.data, dataclasses.replace(M4, require_resource_table=False))
    assert problems(report) == []
    assert [s["type"] for s in report.segments] == ["LOAD", "NOTE"]


def test_entry_outside_every_segment():
    report = validate_bytes(good_image(entry=0x30000001).data, M4)
    assert codes(report, "warning") == ["entry-outside"]


# --- §5.3 table lookup and header -----------------------------------------------

def test_no_resource_table_required():
    report = validate_bytes(good_image("m4", table=b"").data, M4)
    assert codes(report) == ["no-resource-table"]
    msg = report.errors[0].message
    assert "link rsc_table.c or set RequireResourceTable=no" in msg and "m4" in msg


def test_no_resource_table_not_required_is_a_note():
    target = dataclasses.replace(M4, require_resource_table=False)
    report = validate_bytes(good_image("m4", table=b"").data, target)
    assert problems(report) == [] and codes(report) == ["no-resource-table"]


def test_no_resource_table_without_target_is_a_warning():
    report = validate_bytes(good_image("m4", table=b"").data, None)
    assert problems(report) == [("warning", "no-resource-table")]


def test_section_named_slightly_differently_is_not_the_table():
    report = validate_bytes(good_image("m4", rsc_name=".resource_table2").data, M4)
    assert codes(report, "error") == ["no-resource-table"]


@pytest.mark.parametrize("table,code,quote", [
    (rsc_table([trace(0x10020400)], ver=2), "rsc-version", "unsupported fw ver: 2"),
    (rsc_table([trace(0x10020400)], reserved=(0, 1)), "rsc-reserved", "non zero reserved"),
    (rsc_table([trace(0x10020400)], num=1000), "rsc-incomplete", "resource table incomplete"),
    (b"\x01\0\0\0\0\0\0\0", "rsc-too-small", "header-less resource table"),
])
def test_table_header_rules(table, code, quote):
    report = validate_bytes(good_image("m4", table=table).data, M4)
    assert codes(report, "error") == [code]
    assert quote in report.errors[0].message
    assert report.resource_table["valid"] is False


def test_table_section_past_the_end():
    built = good_image()
    # the .resource_table section header: find it by its file offset
    off = built.sections[".resource_table"][0]
    shdrs = built.data[built.shoff:]
    index = next(i for i in range(len(shdrs) // 40)
                 if struct.unpack_from("<I", shdrs, 40 * i + 16)[0] == off)
    data = built.patched(built.shoff + 40 * index + 20, "<I", 0x7FFFFFFF)
    report = validate_bytes(data, M4)
    assert codes(report, "error") == ["rsc-truncated"]


def test_table_outside_loaded_memory():
    table = good_table("m4")
    built = good_image("m4", table=b"", extra_sections=[Sec(".resource_table", table,
                                                            alloc=False)])
    report = validate_bytes(built.data, M4)
    assert codes(report, "warning") == ["rsc-not-loaded"]
    no_map = validate_bytes(built.data, dataclasses.replace(M4, regions=None))
    assert "rsc-not-loaded" in codes(no_map, "warning")


# --- §6 entries --------------------------------------------------------------------

def check_entries(*entries: bytes, target: Target = M4, **table_args):
    return validate_bytes(good_image("m4", table=rsc_table(list(entries), **table_args)).data,
                          target)


def test_entry_offset_past_the_table():
    report = check_entries(trace(0x10020400), offsets=[4096])
    assert codes(report) == ["rsc-offset"]
    assert "rsc table is truncated" in report.errors[0].message
    assert report.resource_table["entries"][0]["type"] == "invalid"


def test_entry_offset_leaving_no_room_for_the_type():
    table = rsc_table([trace(0x10020400)])
    report = check_entries(trace(0x10020400), offsets=[len(table) - 3])
    assert codes(report) == ["rsc-offset"]


def test_devmem_without_iommu_is_an_error():
    report = check_entries(trace(0x10020400), devmem("ipcc", 0x4C001000))
    assert codes(report) == ["devmem-without-iommu"]
    msg = report.errors[0].message
    assert "IOMMU" in msg and "m4" in msg and "ipcc" in msg and "RSC_DEVMEM" in msg


def test_devmem_with_iommu_is_fine():
    report = check_entries(devmem("regs", 0x4C001000), target=dataclasses.replace(M4, iommu=True))
    assert problems(report) == []


def test_devmem_without_target_is_noted():
    report = check_entries(devmem("regs", 0x4C001000), target=None)
    assert codes(report) == ["devmem"]


@pytest.mark.parametrize("entry,code", [
    (carveout("x", reserved=1), "rsc-carveout"),
    (devmem("x", 0x1000)[:-4] + b"\x01\0\0\0", None),  # name bytes: fine
    (trace(0x10020400, reserved=7), "rsc-trace"),
])
def test_reserved_words(entry, code):
    report = check_entries(entry, target=dataclasses.replace(M4, iommu=True))
    assert codes(report, "error") == ([code] if code else [])


@pytest.mark.parametrize("entry,code", [
    (carveout("x")[:30], "rsc-carveout"),
    (trace(0x10020400)[:40], "rsc-trace"),
    (vdev([vring(0x10040000)])[:20], "rsc-vdev"),
])
def test_entry_cut_by_table_end(entry, code):
    report = check_entries(entry)
    assert codes(report, "error") == [code]
    assert "is truncated" in report.errors[0].message


def test_carveout_bound_to_a_region():
    report = check_entries(carveout("mcuram", 0x10000000, 0x40000))
    assert problems(report) == []


@pytest.mark.parametrize("entry,quote", [
    (carveout("mcuram", 0x10000000, 0x80000), "doesn't fit len request"),
    (carveout("mcuram", 0x10030000, 0x20000), "doesn't fit da request"),
    (carveout("mcuram", 0x0FFFF000, 0x1000), "doesn't fit da request"),
])
def test_carveout_not_fitting_its_region(entry, quote):
    report = check_entries(entry)
    assert codes(report, "error") == ["rsc-carveout"]
    assert quote in report.errors[0].message


def test_carveout_twice():
    report = check_entries(carveout("retram"), carveout("retram"))
    assert codes(report, "error") == ["rsc-carveout"]
    assert "already associated" in report.errors[0].message


def test_carveout_not_a_region():
    assert codes(check_entries(carveout("heap")), "note") == ["rsc-carveout-alloc"]
    fixed = check_entries(carveout("heap", 0x20000000))
    assert codes(fixed, "warning") == ["carveout-address"]


def test_trace_outside_memory():
    report = check_entries(trace(0x50000000))
    assert codes(report) == ["trace-outside"]
    assert report.warnings[0].severity == "warning"


def test_vdev_too_many_vrings():
    report = check_entries(vdev([vring(0x10040000), vring(0x10041000), vring(ANY)]))
    assert codes(report, "error") == ["rsc-vdev"]
    assert "too many vrings: 3" in report.errors[0].message


def test_vdev_reserved():
    report = check_entries(vdev([vring(0x10040000)], reserved=b"\0\1"))
    assert codes(report, "error") == ["rsc-vdev"]


def test_vdev_config_len_overflow_is_caught():
    report = check_entries(vdev([vring(0x10040000)], config_len=0xFFFFFFFF))
    assert codes(report, "error") == ["rsc-vdev"]
    assert "vdev rsc is truncated" in report.errors[0].message


def test_vdev_vring_count_larger_than_data():
    report = check_entries(vdev([vring(0x10040000)], nvrings=200, config=b""))
    assert codes(report, "error") == ["rsc-vdev"]


@pytest.mark.parametrize("num,align,expected", [
    (0, 16, ["vring-num"]),
    (24, 16, ["vring-num"]),
    (16, 0, ["vring-align"]),
    (1024, 16, ["vring-placement"]),  # 1024 buffers need more than the 4 KiB region
])
def test_vring_rules_are_warnings(num, align, expected):
    report = check_entries(vdev([vring(0x10040000, num=num, align=align),
                                 vring(0x10041000)]))
    assert report.errors == []
    assert codes(report, "warning") == expected


def test_vendor_and_unknown_types():
    vendor = struct.pack("<I", 128) + b"\0" * 8
    unknown = struct.pack("<I", 77) + b"\0" * 8
    report = check_entries(vendor, unknown)
    assert problems(report) == [("warning", "rsc-unknown-type")]
    assert codes(report, "note") == ["rsc-vendor"]
    assert [e["type"] for e in report.resource_table["entries"]] == ["vendor", "unknown"]


def test_every_entry_is_checked_not_just_the_first_bad_one():
    report = check_entries(trace(0x10020400, reserved=1), devmem("a", 0x4C000000))
    assert codes(report, "error") == ["rsc-trace", "devmem-without-iommu"]


def test_huge_entry_count_is_bounded():
    n = 5000
    table = struct.pack("<4I", 1, n, 0, 0) + struct.pack(f"<{n}I", *([16 + 4 * n] * n))
    table += trace(0x10020400)
    report = validate_bytes(good_image("m4", table=table).data, M4)
    assert "rsc-too-many" in codes(report, "warning")
    assert len(report.resource_table["entries"]) == 4096


# --- §5.5 boot vector ------------------------------------------------------------

def test_singular_isr_vector_on_m33_warns():
    report = validate_bytes(good_image("m33", vector_name=".isr_vector").data, M33)
    assert problems(report) == [("warning", "boot-vector")]
    msg = report.warnings[0].message
    assert "'.isr_vector'" in msg and "'.isr_vectors'" in msg and "address 0" in msg
    assert report.boot_vector["section"] == ".isr_vector"


def test_a0_section_is_accepted():
    report = validate_bytes(good_image("m33", vector_name="A0").data, M33)
    assert report.findings == [] and report.boot_vector["section"] == "A0"


def test_no_vector_section_on_m33_warns():
    report = validate_bytes(good_image("m33", vector_name=".vectors").data, M33)
    assert problems(report) == [("warning", "boot-vector")]
    assert report.boot_vector == {}


def test_unaligned_vector_table_warns():
    built = build_elf([Seg(0x80000000, [Sec(".text", b"\0" * 0x20),
                                        Sec(".isr_vectors", b"\0" * 0x100)]),
                       Seg(0x81000000, [Sec(".resource_table", good_table("m33"))], flags=6)],
                      entry=0x80000001)
    report = validate_bytes(built.data, M33)
    assert codes(report, "warning") == ["boot-vector"]
    assert "128-byte" in report.warnings[0].message


def test_m4_does_not_use_a_vector_section():
    report = validate_bytes(good_image("m4", vector_name=".vectors").data, M4)
    assert report.findings == [] and report.boot_vector == {}


# --- file access ------------------------------------------------------------------

def test_validate_file_reads_the_file(tmp_path):
    path = tmp_path / "fw.elf"
    path.write_bytes(good_image().data)
    report = validate_file(path, M4)
    assert report.findings == [] and report.path == str(path)


def test_validate_file_too_large(tmp_path):
    path = tmp_path / "big.elf"
    path.write_bytes(good_image().data + bytes(2000))
    report = validate_file(path, M4, max_size=1000)
    assert codes(report) == ["too-large"]
    assert report.format == "ELF" and "size limit" in report.errors[0].message


def test_validate_file_refuses_a_fifo_without_blocking(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    assert codes(validate_file(path, M4)) == ["not-a-file"]


def test_validate_file_missing_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        validate_file(tmp_path / "nope", M4)


def test_internal_errors_become_findings(monkeypatch):
    from rprocd.firmware import validate

    def broken(*_args, **_kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(validate, "_check_segments", broken)
    report = validate_bytes(good_image().data, M4)
    assert codes(report) == ["internal-error"] and "boom" in report.errors[0].message


ANY = 0xFFFFFFFF
