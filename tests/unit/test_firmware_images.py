"""Synthetic remoteproc images for the validator's tests, fuzzing and benchmark.

`build_elf` lays out a small ELF the way arm-none-eabi-ld does (headers,
segments made of sections, non-allocated sections, section headers last) and
says where everything went, so a test can break exactly one field. The tests
at the bottom check the builder against pyelftools, an independent reader.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass, field

from rprocd.firmware import Region, Target
from rprocd.firmware.validate import validate_bytes

EM_ARM = 40
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
SHT_PROGBITS, SHT_STRTAB, SHT_NOBITS = 1, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXEC = 1, 2, 4
ANY = 0xFFFFFFFF


@dataclass
class Sec:
    """A section: `data` in the file, plus `nobits` zero bytes in memory only
    (a .bss); `alloc` False for sections that are not loaded."""

    name: str
    data: bytes = b""
    nobits: int = 0
    alloc: bool = True


@dataclass
class Seg:
    paddr: int
    sections: list[Sec]
    flags: int = 5
    vaddr: int | None = None
    type: int = PT_LOAD


@dataclass
class Built:
    data: bytes
    phoff: int
    shoff: int
    sections: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # offset, addr, size
    phdr_offsets: list[int] = field(default_factory=list)

    def patched(self, offset: int, fmt: str, *values: int) -> bytes:
        out = bytearray(self.data)
        struct.pack_into(fmt, out, offset, *values)
        return bytes(out)


def build_elf(segments: list[Seg], extra: list[Sec] = (), *, elf_class: int = 32,
              order: str = "<", machine: int = EM_ARM, entry: int | None = None) -> Built:
    ehsize, phsize, shsize = (52, 32, 40) if elf_class == 32 else (64, 56, 64)
    names = [""]
    layout: list[tuple[Sec, int, int, int]] = []  # section, file offset, addr, flags
    phdrs = []
    offset = ehsize + phsize * len(segments)
    body = bytearray()
    for seg in segments:
        offset = (offset + 7) & ~7
        start = offset
        addr = seg.paddr
        filesz = memsz = 0
        for sec in seg.sections:
            body_at = offset - (ehsize + phsize * len(segments))
            body.extend(bytes(body_at - len(body)))
            body.extend(sec.data)
            flags = SHF_ALLOC | (SHF_EXEC if seg.flags & 1 else 0) | (
                SHF_WRITE if seg.flags & 2 else 0)
            layout.append((sec, offset, addr, flags))
            offset += len(sec.data)
            addr += len(sec.data) + sec.nobits
            filesz += len(sec.data) if not sec.nobits else 0
            memsz += len(sec.data) + sec.nobits
        vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
        phdrs.append((seg.type, start, vaddr, seg.paddr, filesz, memsz, seg.flags, 8))
    for sec in extra:
        body_at = offset - (ehsize + phsize * len(segments))
        body.extend(bytes(body_at - len(body)))
        body.extend(sec.data)
        layout.append((sec, offset, 0, 0))
        offset += len(sec.data)
    shstrtab_at = offset
    shnames = bytearray(b"\0")
    name_offsets = []
    for sec, *_ in layout:
        name_offsets.append(len(shnames))
        shnames += sec.name.encode() + b"\0"
    shstr_name = len(shnames)
    shnames += b".shstrtab\0"
    body.extend(shnames)
    offset += len(shnames)
    shoff = (offset + 7) & ~7
    body.extend(bytes(shoff - offset))
    e = order
    shdr_fmt = f"{e}10I" if elf_class == 32 else f"{e}IIQQQQIIQQ"
    shdrs = [struct.pack(shdr_fmt, *([0] * 10))]
    built_sections = {}
    for (sec, off, addr, flags), name_at in zip(layout, name_offsets, strict=True):
        s_type = SHT_NOBITS if sec.nobits and not sec.data else SHT_PROGBITS
        size = len(sec.data) + sec.nobits
        shdrs.append(struct.pack(shdr_fmt, name_at, s_type, flags if sec.alloc else 0, addr, off,
                                 size, 0, 0, 4, 0))
        built_sections[sec.name] = (off, addr, size)
    shdrs.append(struct.pack(shdr_fmt, shstr_name, SHT_STRTAB, 0, 0, shstrtab_at, len(shnames),
                             0, 0, 1, 0))
    names.append(".shstrtab")
    ident = b"\x7fELF" + bytes([1 if elf_class == 32 else 2, 1 if e == "<" else 2, 1]) + bytes(9)
    if entry is None:
        entry = (segments[0].paddr | 1) if segments else 0
    ehdr_fmt = f"{e}HHIIIIIHHHHHH" if elf_class == 32 else f"{e}HHIQQQIHHHHHH"
    header = ident + struct.pack(ehdr_fmt, 2, machine, 1, entry, ehsize, shoff, 0x5000200,
                                 ehsize, phsize, len(segments), shsize, len(shdrs),
                                 len(shdrs) - 1)
    phdr_fmt = f"{e}8I" if elf_class == 32 else f"{e}IIQQQQQQ"
    packed = []
    for p_type, off, vaddr, paddr, filesz, memsz, flags, align in phdrs:
        if elf_class == 32:
            packed.append(struct.pack(phdr_fmt, p_type, off, vaddr, paddr, filesz, memsz, flags,
                                      align))
        else:
            packed.append(struct.pack(phdr_fmt, p_type, flags, off, vaddr, paddr, filesz, memsz,
                                      align))
    data = header + b"".join(packed) + bytes(body) + b"".join(shdrs)
    return Built(data, ehsize, shoff, built_sections,
                 [ehsize + phsize * i for i in range(len(segments))])


# --- resource tables ---------------------------------------------------------

def rsc_table(entries: list[bytes], ver: int = 1, reserved: tuple[int, int] = (0, 0),
              num: int | None = None, offsets: list[int] | None = None) -> bytes:
    count = len(entries) if num is None else num
    start = 16 + 4 * len(entries)
    computed = []
    for entry in entries:
        computed.append(start)
        start += len(entry)
    head = struct.pack("<4I", ver, count, *reserved)
    return head + struct.pack(f"<{len(entries)}I", *(offsets or computed)) + b"".join(entries)


def carveout(name: str, da: int = ANY, length: int = 0x1000, pa: int = ANY,
             reserved: int = 0, kind: int = 0) -> bytes:
    return struct.pack("<6I32s", kind, da, pa, length, 0, reserved, name.encode())


def devmem(name: str, da: int, length: int = 0x1000) -> bytes:
    return carveout(name, da, length, da, kind=1)


def trace(da: int, length: int = 4096, name: str = "trace0", reserved: int = 0) -> bytes:
    return struct.pack("<4I32s", 2, da, length, reserved, name.encode())


def vring(da: int, num: int = 16, align: int = 16, notifyid: int = 0) -> bytes:
    return struct.pack("<5I", da, align, num, notifyid, 0)


def vdev(vrings: list[bytes], config: bytes = b"\0" * 8, vid: int = 7,
         reserved: bytes = b"\0\0", nvrings: int | None = None,
         config_len: int | None = None) -> bytes:
    n = len(vrings) if nvrings is None else nvrings
    clen = len(config) if config_len is None else config_len
    head = struct.pack("<6IBB2s", 3, vid, 0, 1, 0, clen, 0, n, reserved)
    return head + b"".join(vrings) + config


# --- per-core good images (HACKING.md, "Board memory maps") -----------------

M4 = Target(core="m4", fw_format="ELF", machine=EM_ARM, regions=[
    Region("retram", 0x00000000, 0x10000), Region("mcuram", 0x10000000, 0x40000),
    Region("vdev0vring0", 0x10040000, 0x1000), Region("vdev0vring1", 0x10041000, 0x1000),
    Region("vdev0buffer", 0x10042000, 0x4000)])
M33 = Target(core="m33", fw_format="ELF", machine=EM_ARM, regions=[
    Region("cm33_cube_fw", 0x80000000, 0x1000000), Region("cm33_cube_data", 0x81000000, 0x800000),
    Region("vdev0vring0", 0x81800000, 0x1000), Region("vdev0vring1", 0x81801000, 0x1000),
    Region("vdev0buffer", 0x81802000, 0x4000)], boot_vector_sections=(".isr_vectors", "A0"))
M0 = Target(core="m0", fw_format="ELF", machine=EM_ARM, regions=[
    Region("cm0_cube_fw", 0x200C0000, 0x4000), Region("cm0_cube_data", 0x40040000, 0x2000)],
    boot_vector_sections=(".isr_vectors", "A0"))

CODE = {"m4": 0x10000000, "m33": 0x80000000, "m0": 0x200C0000}
DATA = {"m4": 0x10020000, "m33": 0x81000000, "m0": 0x40040000}
VRINGS = {"m4": (0x10040000, 0x10041000), "m33": (0x81800000, 0x81801000)}
SIM = Sec(".rprocd_sim", b"boot_ms=5\0", alloc=False)


def good_table(core: str, extra: list[bytes] = ()) -> bytes:
    """vdev (where the core has vrings) and trace0 just after the table."""
    entries = []
    if core in VRINGS:
        a, b = VRINGS[core]
        entries.append(vdev([vring(a, notifyid=0), vring(b, notifyid=1)]))
    entries.append(trace(DATA[core] + 0x400))
    entries.extend(extra)
    return rsc_table(entries)


def good_image(core: str = "m4", table: bytes | None = None, *, text_size: int = 0x400,
               vector_name: str | None = None, rsc_name: str = ".resource_table",
               extra_sections: list[Sec] = (), **kwargs) -> Built:
    """A good image for `core` (m4, m33, m0); `table` replaces its table."""
    table = good_table(core) if table is None else table
    text = bytes(range(256)) * (text_size // 256) + bytes(text_size % 256)
    vectors = struct.pack("<2I", DATA[core] + 0x1000, CODE[core] + 0x201) + bytes(0x190)
    data = [Sec(rsc_name, table), Sec(".data", b"\x11" * 0x10),
            Sec(".bss", nobits=0x400 + 4096)] if table else [Sec(".data", b"\x11" * 0x10)]
    if core == "m4":
        segs = [Seg(0, [Sec(vector_name or ".isr_vector", vectors)], flags=4),
                Seg(CODE[core], [Sec(".text", text)]),
                Seg(DATA[core], data, flags=6)]
    else:
        segs = [Seg(CODE[core], [Sec(vector_name or ".isr_vectors", vectors),
                                 Sec(".text", text)]),
                Seg(DATA[core], data, flags=6)]
    kwargs.setdefault("entry", CODE[core] + 0x201)
    return build_elf(segs, [SIM, *extra_sections], **kwargs)


TARGETS = {"m4": M4, "m33": M33, "m0": M0}


# --- signed images (ABI §7.4) -------------------------------------------------

def _r8(n: int) -> int:
    return (n + 7) & ~7


def _pad8(b: bytes) -> bytes:
    return b + bytes(_r8(len(b)) - len(b))


def hash_table(elf: bytes) -> bytes:
    """64-byte entries (Elf32_Phdr + SHA-256) for the PT_LOAD segments."""
    phoff, phnum = struct.unpack_from("<I", elf, 28)[0], struct.unpack_from("<H", elf, 44)[0]
    out = b""
    for i in range(phnum):
        ph = struct.unpack_from("<8I", elf, phoff + 32 * i)
        if ph[0] == PT_LOAD:
            out += struct.pack("<8I", *ph) + hashlib.sha256(elf[ph[1]:ph[1] + ph[4]]).digest()
    return out


def tlv(rtype: int, value: bytes) -> bytes:
    return _pad8(struct.pack("<2I", rtype, len(value)) + value)


def sign_tlv(elf: bytes, *, sign_len: int = 256, sign_type: int = 1,
             hashes: bytes | None = None, tlvs: bytes | None = None, version: int = 1) -> bytes:
    image = _pad8(elf)
    if tlvs is None:
        tlvs = (tlv(1, bytes([sign_type])) + tlv(2, b"\x01") + tlv(3, b"\x01")
                + tlv(4, b"\x01") + tlv(5, struct.pack("<I", len(image)))
                + tlv(0x10, hash_table(elf) if hashes is None else hashes))
    header = struct.pack("<5I", 0x3543A468, version, len(tlvs), sign_len, len(image))
    return header + _pad8(tlvs) + _pad8(b"\xa5" * sign_len) + image


def sign_legacy(elf: bytes, *, sign_len: int = 256, key_len: int = 0,
                hashes: bytes | None = None) -> bytes:
    ph = hash_table(elf) if hashes is None else hashes
    hdr_len = 56 + sign_len + len(ph) + key_len
    sign_off, ph_off = 56, 56 + sign_len
    key_off = ph_off + len(ph)
    header = struct.pack("<14I", 0x3543A468, 1, hdr_len, sign_len, sign_off, 1, len(ph), ph_off,
                         1, key_len, key_off if key_len else 0, len(elf), hdr_len, 1)
    return header + b"\xa5" * sign_len + ph + b"\x5a" * key_len + elf


# --- the builder against pyelftools -------------------------------------------

def test_builder_output_reads_the_same_in_pyelftools():
    from elftools.elf.elffile import ELFFile

    built = good_image("m4")
    elf = ELFFile(io.BytesIO(built.data))
    assert elf.get_machine_arch() == "ARM"
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    assert [s["p_paddr"] for s in loads] == [0, 0x10000000, 0x10020000]
    rsc = elf.get_section_by_name(".resource_table")
    assert rsc["sh_addr"] == 0x10020000
    assert rsc.data() == good_table("m4")
    assert elf.get_section_by_name(".isr_vector")["sh_addr"] == 0
    assert elf.get_section_by_name(".rprocd_sim").data() == b"boot_ms=5\0"


def test_builder_elf64_reads_in_pyelftools():
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(good_image("m33", elf_class=64).data))
    assert elf.elfclass == 64
    assert elf.get_section_by_name(".resource_table")["sh_addr"] == 0x81000000


def test_good_images_are_clean_for_their_cores():
    for core, target in TARGETS.items():
        report = validate_bytes(good_image(core).data, target)
        assert [f for f in report.findings if f.severity != "note"] == [], core
