"""The test firmware images really are what tests/firmware/fixtures.py says.

Nothing here is skipped: `make test` builds the images first, so a missing
image is a failure (build them with `make -C tests/firmware`).

Three independent views of every image:
- `inspect()` (pyelftools) lists what is wrong with it compared with a good
  image of its core: nothing for good images, exactly the fixture's
  `finding` for broken ones;
- `kernel_start()` (plain bytes) plays remoteproc-abi.md §5-§7 and must give
  the fixture's errno for each kind of core;
- broken images are compared byte by byte with the good image they come from.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from errno import EINVAL, EIO

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from tests.firmware.fixtures import (
    BUILD_DIR,
    FIXTURES,
    PUBLIC_KEY,
    REGIONS,
    SIZE_LIMIT,
    Fixture,
    of_kind,
)

RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV = 0, 1, 2, 3
PT_LOAD = 1
SIGNED_MAGIC = 0x3543A468
CODE = {"m4": "mcuram", "m33": "cm33_cube_fw", "m0": "cm0_cube_fw"}
DATA = {"m4": "mcuram", "m33": "cm33_cube_data", "m0": "cm0_cube_data"}
VECTORS = {"m4": ("retram", ".isr_vector"), "m33": ("cm33_cube_fw", ".isr_vectors"),
           "m0": ("cm0_cube_fw", ".isr_vectors")}
SIM_KEYS = {"boot_ms", "shutdown_ack_ms", "trace_period_ms", "trace", "crash_after_ms",
            "crash_type", "rpmsg"}
FINDINGS = {"resource table", "version", "offset", "devmem", "outside", "truncated",
            "machine", "class", "endian", "magic", "size", "signature", "hash"}

ALL = list(FIXTURES.values())
ELF_IMAGES = [f for f in ALL if f.kind != "signed"]


def ids(fixtures: list[Fixture]) -> list[str]:
    return [f.name for f in fixtures]


_cache: dict[str, bytes] = {}


def read(name: str) -> bytes:
    if name not in _cache:
        path = BUILD_DIR / name
        assert path.is_file(), f"{path} is missing: run `make -C tests/firmware`"
        _cache[name] = path.read_bytes()
    return _cache[name]


def r8(n: int) -> int:
    return (n + 7) & ~7


def region_of(core: str, addr: int, size: int = 1) -> str | None:
    for name, (start, length) in REGIONS[core].items():
        if start <= addr and addr + size <= start + length:
            return name
    return None


def region_end(core: str, name: str) -> int:
    start, length = REGIONS[core][name]
    return start + length


# --- an image compared with a good one (pyelftools) --------------------------


def raw_header(data: bytes) -> dict[str, int]:
    """The ELF header fields we need, read by hand (works on truncated files)."""
    e = "<" if data[5] == 1 else ">"
    if data[4] == 2:
        phoff, shoff = struct.unpack_from(e + "QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "4H", data, 54)
    else:
        phoff, shoff = struct.unpack_from(e + "II", data, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "4H", data, 42)
    (machine,) = struct.unpack_from(e + "H", data, 18)
    return dict(phoff=phoff, shoff=shoff, phentsize=phentsize, phnum=phnum,
                shentsize=shentsize, shnum=shnum, machine=machine)


def loads(elf: ELFFile) -> list:
    return [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"]]


def inspect(data: bytes, core: str) -> set[str]:
    """Every way this image differs from a good image for `core`, as finding
    keywords. Stops early when the file cannot be read further."""
    if data[:4] != b"\x7fELF":
        return {"magic"}
    h = raw_header(data)
    if (h["phoff"] + h["phnum"] * h["phentsize"] > len(data)
            or h["shoff"] + h["shnum"] * h["shentsize"] > len(data)):
        return {"truncated"}
    elf = ELFFile(io.BytesIO(data))
    if any(s["p_offset"] + s["p_filesz"] > len(data) for s in elf.iter_segments()):
        return {"truncated"}
    if elf["e_machine"] != "EM_ARM":
        return {"machine"}

    found = set()
    if elf.elfclass != 32:
        found.add("class")
    if not elf.little_endian:
        found.add("endian")
    if len(data) > SIZE_LIMIT:
        found.add("size")
    if elf["e_type"] != "ET_EXEC" or not loads(elf):
        found.add("segments")
    for seg in loads(elf):
        if region_of(core, seg["p_paddr"], seg["p_memsz"]) is None:
            found.add("outside")
        if seg["p_filesz"] > seg["p_memsz"]:
            found.add("segments")
    found |= inspect_vectors(elf, core)
    found |= inspect_resource_table(elf, core)
    found |= inspect_sim(elf)
    return found


def inspect_vectors(elf: ELFFile, core: str) -> set[str]:
    region, name = VECTORS[core]
    other = ".isr_vector" if name == ".isr_vectors" else ".isr_vectors"
    sec = elf.get_section_by_name(name)
    if sec is None or elf.get_section_by_name(other) is not None or sec["sh_size"] < 8:
        return {"vectors"}
    if sec["sh_addr"] != REGIONS[core][region][0]:
        return {"outside"}
    sp, reset = struct.unpack(("<" if elf.little_endian else ">") + "2I", sec.data()[:8])
    found = set()
    if reset != elf["e_entry"] or not reset & 1:
        found.add("vectors")
    if region_of(core, reset - 1) != CODE[core] or sp != region_end(core, DATA[core]):
        found.add("outside")
    return found


def in_loaded_bytes(elf: ELFFile, sec) -> bool:
    """The section's bytes are the file bytes of a PT_LOAD segment."""
    return any(
        s["p_vaddr"] <= sec["sh_addr"]
        and sec["sh_addr"] + sec["sh_size"] <= s["p_vaddr"] + s["p_filesz"]
        and sec["sh_offset"] - s["p_offset"] == sec["sh_addr"] - s["p_vaddr"]
        for s in loads(elf))


def in_loaded_memory(elf: ELFFile, addr: int, size: int) -> bool:
    return any(s["p_paddr"] <= addr and addr + size <= s["p_paddr"] + s["p_memsz"]
               for s in loads(elf))


def symbol(elf: ELFFile, name: str) -> int | None:
    symtab = elf.get_section_by_name(".symtab")
    syms = symtab.get_symbol_by_name(name) if symtab else None
    return syms[0]["st_value"] if syms else None


def inspect_resource_table(elf: ELFFile, core: str) -> set[str]:
    sec = elf.get_section_by_name(".resource_table")
    if sec is None or not in_loaded_bytes(elf, sec):
        return {"resource table"}
    e = "<" if elf.little_endian else ">"
    table = sec.data()
    ver, num, res0, res1 = struct.unpack_from(e + "4I", table)
    found = set() if ver == 1 else {"version"}
    if res0 or res1 or 16 + 4 * num > len(table):
        return found | {"resource table"}
    types = []
    for off in struct.unpack_from(e + f"{num}I", table, 16):
        if off + 4 > len(table):
            found.add("offset")
            continue
        (typ,) = struct.unpack_from(e + "I", table, off)
        body = table[off + 4:]
        types.append(typ)
        if typ == RSC_DEVMEM:
            found.add("devmem")
        elif typ == RSC_TRACE:
            found |= check_trace(elf, core, e, body)
        elif typ == RSC_VDEV:
            found |= check_vdev(core, e, body)
        else:
            found.add("resource table")
    expected = [RSC_VDEV, RSC_TRACE] if "vdev0vring0" in REGIONS[core] else [RSC_TRACE]
    if "offset" not in found and [t for t in types if t != RSC_DEVMEM] != expected:
        found.add("resource table")
    return found


def check_trace(elf: ELFFile, core: str, e: str, body: bytes) -> set[str]:
    if len(body) < 44:
        return {"resource table"}
    da, length, reserved = struct.unpack_from(e + "3I", body)
    name = body[12:44].rstrip(b"\0")
    found = set()
    if length != 4096 or reserved or name != b"trace0":
        found.add("resource table")
    if da != symbol(elf, "trace_buf") or not in_loaded_memory(elf, da, length):
        found.add("resource table")
    if region_of(core, da, length) != DATA[core]:
        found.add("outside")
    return found


def check_vdev(core: str, e: str, body: bytes) -> set[str]:
    vid, _notifyid, dfeatures, _gf, config_len, status, nvrings, r0, r1 = struct.unpack_from(
        e + "5I4B", body)
    if (vid != 7 or dfeatures != 1 or status or nvrings != 2 or r0 or r1
            or 24 + 20 * nvrings + config_len > len(body) or config_len < 8):
        return {"resource table"}
    found = set()
    for j in range(2):
        da, align, num, notifyid, pa = struct.unpack_from(e + "5I", body, 24 + 20 * j)
        if da != REGIONS[core][f"vdev0vring{j}"][0]:
            found.add("outside")
        if (align, num, notifyid, pa) != (16, 16, j, 0):
            found.add("resource table")
    h2r, r2h = struct.unpack_from(e + "2I", body, 24 + 40)
    if (h2r, r2h) != (512, 512):
        found.add("resource table")
    return found


def sim_script(elf: ELFFile) -> list[tuple[str, str]] | None:
    """The `.rprocd_sim` lines, or None if the section is not as HACKING.md says."""
    sec = elf.get_section_by_name(".rprocd_sim")
    if sec is None or sec["sh_type"] != "SHT_PROGBITS" or sec["sh_flags"] & SH_FLAGS.SHF_ALLOC:
        return None
    if any(s.section_in_segment(sec) for s in elf.iter_segments()):
        return None
    text = sec.data()
    if not text.endswith(b"\0") or text.count(b"\0") != 1:
        return None
    lines = text[:-1].decode("ascii").splitlines()
    if not all("=" in line for line in lines):
        return None
    return [tuple(line.split("=", 1)) for line in lines]


def inspect_sim(elf: ELFFile) -> set[str]:
    script = sim_script(elf)
    if script is None or not {k for k, _ in script} <= SIM_KEYS:
        return {"sim"}
    traces = [v for k, v in script if k == "trace"]
    if (len(traces) < 3 or not all("%n" in t for t in traces)
            or not any(re.match(r"<[0-7]>", t) for t in traces)
            or not any(not t.startswith("<") for t in traces)):
        return {"sim"}
    return set()


def elf_of(name: str) -> ELFFile:
    return ELFFile(io.BytesIO(read(name)))


# --- the kernel's answer (plain bytes, remoteproc-abi.md) -------------------


def kernel_start(data: bytes, core: str, require_table: bool) -> int | None:
    """errno of `echo start > state` with this firmware: the ELF loader of
    §5.2-§5.4 and the resource handling of §6.4, on a core with `core`'s
    memory map and no IOMMU. `require_table`: the generic loader; the STM32
    driver only warns about a missing or invalid table."""
    size = len(data)
    if size < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2):
        return EINVAL
    is64 = data[4] == 2
    if (is64 and size < 64) or data[5] != 1:
        return EINVAL
    if is64:
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phnum, _, shnum, shstrndx = struct.unpack_from("<4H", data, 56)
        shsize, phsize = 64, 56
    else:
        phoff, shoff = struct.unpack_from("<II", data, 28)
        phnum, _, shnum, shstrndx = struct.unpack_from("<4H", data, 44)
        shsize, phsize = 40, 32
    if size < shoff + shsize or phnum == 0 or phoff > size:
        return EINVAL

    table = find_table(data, is64, shoff, shsize, shnum, shstrndx)
    if table is None and require_table:
        return EINVAL
    if table:
        error = handle_resources(table)
        if error:
            return error

    for i in range(phnum):
        at = phoff + i * phsize
        if is64:
            typ, _, offset, _, paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", data, at)
        else:
            typ, offset, _, paddr, filesz, memsz = struct.unpack_from("<6I", data, at)
        if typ != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz or offset + filesz > size or region_of(core, paddr, memsz) is None:
            return EINVAL
    return None


def find_table(data, is64, shoff, shsize, shnum, shstrndx) -> bytes | None:
    """The `.resource_table` contents if it passes the §5.3 checks, else None."""
    fmt = "<IIQQQQ" if is64 else "<6I"

    def shdr(i):
        name, _, _, _, offset, size = struct.unpack_from(fmt, data, shoff + i * shsize)
        return name, offset, size

    if shoff + shnum * shsize > len(data):
        return None
    _, strtab, _ = shdr(shstrndx)
    for i in range(shnum):
        name, offset, size = shdr(i)
        if data[strtab + name:].split(b"\0", 1)[0] != b".resource_table":
            continue
        if offset + size > len(data) or size < 16:
            return None
        table = data[offset:offset + size]
        ver, num, res0, res1 = struct.unpack_from("<4I", table)
        if ver != 1 or res0 or res1 or 16 + 4 * num > size:
            return None
        return table
    return None


def handle_resources(table: bytes) -> int | None:
    (num,) = struct.unpack_from("<I", table, 4)
    for off in struct.unpack_from(f"<{num}I", table, 16):
        avail = len(table) - off - 4
        if avail < 0:
            return EINVAL  # "rsc table is truncated"
        (typ,) = struct.unpack_from("<I", table, off)
        body = table[off + 4:]
        if typ in (RSC_CARVEOUT, RSC_DEVMEM):
            if typ == RSC_DEVMEM or avail < 52 or struct.unpack_from("<I", body, 16)[0]:
                return EINVAL  # devmem: no IOMMU
        elif typ == RSC_TRACE:
            if avail < 44 or struct.unpack_from("<I", body, 8)[0]:
                return EINVAL
        elif typ == RSC_VDEV:
            config_len, _, nvrings, r0, r1 = struct.unpack_from("<I4B", body, 16)
            if 24 + 20 * nvrings + config_len > avail or r0 or r1 or nvrings > 2:
                return EINVAL
    return None


def ta_check(data: bytes) -> str | None:
    """What the OP-TEE remoteproc TA refuses in a signed image (§7.4), or None."""
    if len(data) < 20:
        return "header"
    magic, version, tlv_len, sign_len, img_len = struct.unpack_from("<5I", data)
    if magic != SIGNED_MAGIC or version != 1 or not tlv_len or not sign_len:
        return "header"
    if len(data) != 20 + r8(tlv_len) + r8(sign_len) + r8(img_len):
        return "size"
    tlv_area = data[20:20 + r8(tlv_len)]
    sig_at = 20 + r8(tlv_len)
    signature = data[sig_at:sig_at + sign_len]
    image = data[sig_at + r8(sign_len):]

    key = serialization.load_pem_public_key(PUBLIC_KEY.read_bytes())
    try:
        key.verify(signature, data[:sig_at], padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "signature"

    tlvs, at = {}, 0
    while at < len(tlv_area):
        typ, length = struct.unpack_from("<II", tlv_area, at)
        tlvs[typ] = tlv_area[at + 8:at + 8 + length]
        at += r8(8 + length)
    if (tlvs.get(1) != b"\x01" or tlvs.get(2) != b"\x01" or tlvs.get(3) != b"\x01"
            or tlvs.get(4) != b"\x01" or tlvs.get(5) != struct.pack("<I", img_len)):
        return "tlv"
    table = {}
    for at in range(0, len(tlvs[0x10]), 64):
        phdr = struct.unpack_from("<8I", tlvs[0x10], at)
        table[phdr[3]] = (phdr, tlvs[0x10][at + 32:at + 64])

    elf = ELFFile(io.BytesIO(image))
    if elf.elfclass != 32 or elf["e_phentsize"] != 32 or elf["e_shentsize"] != 40:
        return "elf"
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        phdr, digest = table.get(seg["p_paddr"], (None, None))
        if phdr is None or (phdr[0], phdr[4], phdr[5]) != (1, seg["p_filesz"], seg["p_memsz"]):
            return "hashtable"
        if hashlib.sha256(seg.data()).digest() != digest:
            return "hash"
    return None


def tee_start(data: bytes) -> int | None:
    """errno of `start` on a core in TEE mode (§7.3): any TA failure is EIO."""
    return EIO if ta_check(data) else None


# --- the tests ---------------------------------------------------------------


def test_fixture_table_is_consistent():
    assert {f.kind for f in ALL} == {"good", "behaviour", "broken", "signed"}
    for f in ALL:
        assert f.core in REGIONS, f.name
        assert f.finding is None or f.finding in FINDINGS, f.name
        assert (f.finding is None) == (f.defect == ""), f.name
        if f.kind in ("good", "behaviour"):
            assert f.finding is None and f.kernel_errno is None, f.name


def test_build_dir_holds_exactly_the_fixtures():
    built = {p.name for p in BUILD_DIR.iterdir() if p.is_file()}
    assert built == set(FIXTURES), "run `make -C tests/firmware`; build/ and fixtures.py differ"


@pytest.mark.parametrize("fx", ELF_IMAGES, ids=ids(ELF_IMAGES))
def test_image_has_exactly_its_defect(fx):
    expected = {fx.finding} if fx.finding else set()
    assert inspect(read(fx.name), fx.core) == expected


@pytest.mark.parametrize("fx", ALL, ids=ids(ALL))
def test_kernel_answer(fx):
    data = read(fx.name)
    assert kernel_start(data, fx.core, require_table=False) == fx.kernel_errno, "STM32"
    assert kernel_start(data, "m4", require_table=True) == fx.generic_errno, "generic"
    assert tee_start(data) == fx.tee_errno, "TEE"


@pytest.mark.parametrize("fx", of_kind("good", "behaviour"), ids=ids(of_kind("good", "behaviour")))
def test_good_image_is_a_real_firmware(fx):
    elf = elf_of(fx.name)
    assert elf.elfclass == 32 and elf.little_endian and elf["e_machine"] == "EM_ARM"
    assert b"GCC" in elf.get_section_by_name(".comment").data()
    arch = {"m4": b"\x057E-M\0", "m33": b"\x058-M.MAIN\0", "m0": b"\x056S-M\0"}[fx.core]
    assert arch in elf.get_section_by_name(".ARM.attributes").data()  # Tag_CPU_name
    # code executable, data writable, both loaded where the core has memory
    where = [(region_of(fx.core, s["p_paddr"], s["p_memsz"]), s["p_flags"]) for s in loads(elf)]
    assert any(r == CODE[fx.core] and f & 1 for r, f in where)
    assert any(r == DATA[fx.core] and f & 2 and not f & 1 for r, f in where)


@pytest.mark.parametrize("fx", [f for f in ALL if f.sim], ids=ids([f for f in ALL if f.sim]))
def test_behaviour_script(fx):
    script = sim_script(elf_of(fx.name))
    assert script is not None
    settings = {k: v for k, v in script if k != "trace"}
    assert settings == fx.sim


def test_behaviour_variants_differ_only_in_their_script():
    good = {"m4": elf_of("m4-good.elf"), "m33": elf_of("m33-good.elf")}
    for fx in of_kind("behaviour"):
        elf, ref = elf_of(fx.name), good[fx.core]
        for name in (".isr_vector", ".isr_vectors", ".text", ".resource_table"):
            a, b = elf.get_section_by_name(name), ref.get_section_by_name(name)
            assert (a and a.data()) == (b and b.data()), (fx.name, name)
        assert sim_script(elf) != sim_script(ref)


def rsc_table(name: str) -> bytes:
    return elf_of(name).get_section_by_name(".resource_table").data()


def test_bad_rsc_version_changes_only_ver():
    good, bad = rsc_table("m4-good.elf"), rsc_table("bad-rsc-version.elf")
    assert struct.unpack_from("<I", bad)[0] == 2
    assert bad[4:] == good[4:]


def test_bad_rsc_offset_changes_only_one_offset():
    good, bad = rsc_table("m4-good.elf"), rsc_table("bad-rsc-offset.elf")
    assert len(bad) == len(good)
    changed = [i for i in range(0, len(good), 4) if good[i:i + 4] != bad[i:i + 4]]
    assert len(changed) == 1 and 16 <= changed[0] < 16 + 4 * struct.unpack_from("<I", good, 4)[0]
    assert struct.unpack_from("<I", bad, changed[0])[0] > len(bad)


def test_bad_devmem_adds_one_devmem_entry():
    good, bad = rsc_table("m4-good.elf"), rsc_table("bad-devmem.elf")
    num = struct.unpack_from("<I", good, 4)[0]
    assert struct.unpack_from("<I", bad, 4)[0] == num + 1
    offsets = struct.unpack_from(f"<{num + 1}I", bad, 16)
    assert struct.unpack_from("<I", bad, offsets[-1])[0] == RSC_DEVMEM
    # the other entries are the good ones (trace0 moved with the bigger table)
    vdev, trace = struct.unpack_from("<2I", good, 16)
    assert good[vdev:trace] == bad[offsets[0]:offsets[1]]
    assert good[trace:trace + 4] + good[trace + 8:trace + 48] == (
        bad[offsets[1]:offsets[1] + 4] + bad[offsets[1] + 8:offsets[1] + 48])


def test_bad_no_rsc_has_no_table_but_everything_else():
    elf = elf_of("bad-no-rsc.elf")
    assert elf.get_section_by_name(".resource_table") is None
    assert symbol(elf, "resource_table") is None
    assert symbol(elf_of("m4-good.elf"), "resource_table") is not None


def test_bad_segment_outside_has_one_segment_outside():
    segs = loads(elf_of("bad-segment-outside.elf"))
    outside = [s for s in segs if region_of("m33", s["p_paddr"], s["p_memsz"]) is None]
    assert len(outside) == 1 and outside[0]["p_paddr"] == 0x82000000
    good = loads(elf_of("m33-good.elf"))
    assert [s["p_paddr"] for s in segs if s not in outside] == [good[0]["p_paddr"]]


def test_bad_truncated_is_cut_inside_a_segment():
    good, bad = read("m4-good.elf"), read("bad-truncated.elf")
    assert good.startswith(bad) and len(bad) < len(good)
    h = raw_header(bad)
    assert h["phoff"] + h["phnum"] * h["phentsize"] <= len(bad)  # headers intact
    cut = [s for s in loads(elf_of("m4-good.elf"))
           if s["p_offset"] < len(bad) < s["p_offset"] + s["p_filesz"]]
    assert len(cut) == 1


def test_bad_magic_changes_only_the_magic():
    good, bad = read("m4-good.elf"), read("bad-magic.elf")
    assert bad[:4] != b"\x7fELF" and bad[4:] == good[4:]


def test_bad_elf64_is_m4_good_in_64_bits():
    elf, good = elf_of("bad-elf64.elf"), elf_of("m4-good.elf")
    assert elf.elfclass == 64 and elf["e_machine"] == "EM_ARM" and elf.little_endian
    assert elf["e_entry"] == good["e_entry"]
    keys = ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags")
    assert [[s[k] for k in keys] + [s.data()] for s in elf.iter_segments()] == [
        [s[k] for k in keys] + [s.data()] for s in good.iter_segments()]
    for sec in good.iter_sections():
        if sec["sh_type"] not in ("SHT_SYMTAB", "SHT_NOBITS"):
            assert elf.get_section_by_name(sec.name).data() == sec.data(), sec.name
    sym = elf.get_section_by_name(".symtab").get_symbol_by_name("trace_buf")[0]
    assert sym["st_value"] == symbol(good, "trace_buf")


def test_bad_big_endian_is_a_big_endian_m4_build():
    elf, good = elf_of("bad-big-endian.elf"), elf_of("m4-good.elf")
    assert elf.elfclass == 32 and not elf.little_endian and elf["e_machine"] == "EM_ARM"
    assert [s["p_paddr"] for s in loads(elf)] == [s["p_paddr"] for s in loads(good)]
    # the same table, in the other byte order
    bad, ref = rsc_table("bad-big-endian.elf"), rsc_table("m4-good.elf")
    n = len(ref) // 4 * 4
    words = struct.unpack_from(f">{n // 4}I", bad), struct.unpack_from(f"<{n // 4}I", ref)
    name_words = {i for i in range(n // 4) if ref[4 * i:4 * i + 4].isascii()
                  and any(ref[4 * i:4 * i + 4])}
    assert [w for i, w in enumerate(words[0]) if i not in name_words] == [
        w for i, w in enumerate(words[1]) if i not in name_words]


def test_bad_x86_64_is_a_host_program():
    data = read("bad-x86_64.elf")
    elf = elf_of("bad-x86_64.elf")
    assert elf["e_machine"] == "EM_X86_64" and elf.elfclass == 64 and elf["e_type"] == "ET_EXEC"
    assert loads(elf) and len(data) < SIZE_LIMIT


def test_bad_oversized_is_m4_good_plus_padding():
    elf, good = elf_of("bad-oversized.elf"), elf_of("m4-good.elf")
    assert len(read("bad-oversized.elf")) > SIZE_LIMIT
    pad = elf.get_section_by_name(".padding")
    assert pad is not None and not pad["sh_flags"] & SH_FLAGS.SHF_ALLOC
    assert [s.data() for s in elf.iter_segments()] == [s.data() for s in good.iter_segments()]


@pytest.mark.parametrize("fx", of_kind("signed"), ids=ids(of_kind("signed")))
def test_signed_image(fx):
    data = read(fx.name)
    assert data[:4] == struct.pack("<I", SIGNED_MAGIC)
    assert ta_check(data) == fx.finding
    # the embedded image is m33-good.elf, padded to 8 bytes
    _, _, tlv_len, sign_len, img_len = struct.unpack_from("<5I", data)
    elf = read("m33-good.elf")
    assert img_len == r8(len(elf))
    good = read("m33-good-signed.bin")
    image_at = 20 + r8(tlv_len) + r8(sign_len)
    assert good[image_at:image_at + len(elf)] == elf


def test_signed_corruptions_flip_one_byte_where_they_say():
    good = read("m33-good-signed.bin")
    _, _, tlv_len, sign_len, _ = struct.unpack_from("<5I", good)
    sig_at = 20 + r8(tlv_len)
    image_at = sig_at + r8(sign_len)
    for name, (lo, hi) in {"m33-bad-signature.bin": (sig_at, sig_at + sign_len),
                           "m33-bad-hash.bin": (image_at, len(good))}.items():
        bad = read(name)
        diff = [i for i in range(len(good)) if good[i] != bad[i]]
        assert len(bad) == len(good) and len(diff) == 1 and lo <= diff[0] < hi, name
    (at,) = [i for i in range(len(good)) if good[i] != read("m33-bad-hash.bin")[i]]
    seg = [s for s in loads(elf_of("m33-good.elf"))
           if s["p_offset"] <= at - image_at < s["p_offset"] + s["p_filesz"]]
    assert len(seg) == 1
