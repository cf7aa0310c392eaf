"""ELF structures read the way the remoteproc loader reads them.

Hand-rolled rather than pyelftools: the kernel uses the class's natural
header sizes (ignoring e_phentsize/e_shentsize), looks sections up through
e_shstrndx without checks, and never trusts the file to be complete, and the
validator must mirror that on any input, cheaply, without exceptions.
pyelftools only supplies names for the report (`machine_name`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from rprocd.firmware.binary import Blob

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
PT_LOAD = 1
SHF_ALLOC = 0x2

EHDR_SIZE = {ELFCLASS32: 52, ELFCLASS64: 64}
PHDR_SIZE = {ELFCLASS32: 32, ELFCLASS64: 56}
SHDR_SIZE = {ELFCLASS32: 40, ELFCLASS64: 64}

PT_NAMES = {0: "NULL", 1: "LOAD", 2: "DYNAMIC", 3: "INTERP", 4: "NOTE", 5: "SHLIB",
            6: "PHDR", 7: "TLS", 0x6474E551: "GNU_STACK", 0x70000001: "ARM_EXIDX"}

# e_ident (16 bytes) is read separately; these are the fields after it.
_EHDR = {
    (ELFCLASS32, "<"): struct.Struct("<HHIIIIIHHHHHH"),
    (ELFCLASS32, ">"): struct.Struct(">HHIIIIIHHHHHH"),
    (ELFCLASS64, "<"): struct.Struct("<HHIQQQIHHHHHH"),
    (ELFCLASS64, ">"): struct.Struct(">HHIQQQIHHHHHH"),
}
_PHDR = {
    (ELFCLASS32, "<"): struct.Struct("<8I"),
    (ELFCLASS32, ">"): struct.Struct(">8I"),
    (ELFCLASS64, "<"): struct.Struct("<IIQQQQQQ"),
    (ELFCLASS64, ">"): struct.Struct(">IIQQQQQQ"),
}
_SHDR = {
    (ELFCLASS32, "<"): struct.Struct("<10I"),
    (ELFCLASS32, ">"): struct.Struct(">10I"),
    (ELFCLASS64, "<"): struct.Struct("<IIQQQQIIQQ"),
    (ELFCLASS64, ">"): struct.Struct(">IIQQQQIIQQ"),
}


@dataclass(frozen=True)
class ElfHeader:
    elf_class: int  # ELFCLASS32 / ELFCLASS64
    data: int  # ELFDATA2LSB / ELFDATA2MSB (anything else is read as LSB)
    ident_version: int
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @property
    def order(self) -> str:
        return ">" if self.data == ELFDATA2MSB else "<"

    @property
    def bits(self) -> int:
        return 64 if self.elf_class == ELFCLASS64 else 32

    @property
    def phdr_size(self) -> int:
        return PHDR_SIZE[self.elf_class]

    @property
    def shdr_size(self) -> int:
        return SHDR_SIZE[self.elf_class]


@dataclass(frozen=True)
class Phdr:
    index: int
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


@dataclass(frozen=True)
class Shdr:
    index: int
    name: str | None  # None: the name is outside the file
    type: int
    flags: int
    addr: int
    offset: int
    size: int


def read_header(blob: Blob) -> ElfHeader | None:
    """The ELF header, or None unless the magic, a known class and the whole
    header are there (the caller reports which of those failed)."""
    if not blob.fits(0, 16) or bytes(blob.view(0, 4)) != ELF_MAGIC:
        return None
    elf_class, data, ident_version = blob.u8(4), blob.u8(5), blob.u8(6)
    if elf_class not in EHDR_SIZE or not blob.fits(0, EHDR_SIZE[elf_class]):
        return None
    order = ">" if data == ELFDATA2MSB else "<"
    fields = blob.unpack(_EHDR[elf_class, order], 16)
    return ElfHeader(elf_class, data, ident_version, *fields)


def program_header(blob: Blob, hdr: ElfHeader, index: int) -> Phdr | None:
    """Program header `index` at e_phoff + index * natural size; None if it
    is not entirely inside the file."""
    offset = hdr.phoff + index * hdr.phdr_size
    if not blob.fits(offset, hdr.phdr_size):
        return None
    f = blob.unpack(_PHDR[hdr.elf_class, hdr.order], offset)
    if hdr.elf_class == ELFCLASS32:
        p_type, p_offset, vaddr, paddr, filesz, memsz, flags, align = f
    else:
        p_type, flags, p_offset, vaddr, paddr, filesz, memsz, align = f
    return Phdr(index, p_type, p_offset, vaddr, paddr, filesz, memsz, flags, align)


def section_headers(blob: Blob, hdr: ElfHeader) -> tuple[list[Shdr], bool]:
    """The section headers that lie inside the file, with their names, and
    whether the table was complete (e_shnum entries inside the file)."""
    size = hdr.shdr_size
    fmt = _SHDR[hdr.elf_class, hdr.order]
    raw = []
    for i in range(hdr.shnum):
        offset = hdr.shoff + i * size
        if not blob.fits(offset, size):
            break
        raw.append(blob.unpack(fmt, offset))
    names_at = raw[hdr.shstrndx][4] if hdr.shstrndx < len(raw) else None
    sections = []
    for i, (name, s_type, flags, addr, offset, s_size, *_rest) in enumerate(raw):
        label = None if names_at is None else blob.cstring(names_at + name, 256)
        sections.append(Shdr(i, label, s_type, flags, addr, offset, s_size))
    return sections, len(raw) == hdr.shnum


def find_section(sections: list[Shdr], name: str) -> Shdr | None:
    """The first section called `name` (the kernel's strcmp loop)."""
    return next((s for s in sections if s.name == name), None)


@lru_cache(maxsize=64)
def machine_name(machine: int) -> str:
    """'ARM (EM_ARM)', 'Advanced Micro Devices X86-64 (EM_X86_64)', or
    'machine 1234' (pyelftools' tables)."""
    from elftools.elf.descriptions import describe_e_machine
    from elftools.elf.enums import ENUM_E_MACHINE

    for symbol, value in ENUM_E_MACHINE.items():
        if value == machine and symbol.startswith("EM_"):
            description = describe_e_machine(symbol)
            if description.startswith("<"):
                return symbol
            return f"{description} ({symbol})"
    return f"machine {machine}"
