#!/usr/bin/env python3
"""Derive a broken test image from a good one (used by the Makefile).

    derive_image.py KIND IN OUT

KIND (each makes exactly one defect):
  truncated      cut in the middle of the largest PT_LOAD segment's file bytes
  elf64          the same image as ELFCLASS64 (machine, segments, sections kept)
  magic          the four ELF magic bytes zeroed
  oversized      a non-allocated section `.padding` making the file > 16 MiB
  bad-signature  (signed image) one byte of the signature flipped
  bad-hash       (signed image) one byte of the first PT_LOAD segment flipped

Standard library only. ELF inputs are 32-bit little-endian (ours).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass

PT_LOAD = 1
SHT_NULL = 0
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHF_ALLOC = 0x2
OVERSIZE = 16 * 1024 * 1024  # the daemon's firmware size limit

SIGNED_MAGIC = 0x3543A468
SIGNED_HEADER = struct.Struct("<5I")  # magic, version, tlv_len, sign_len, img_len

# Header, program and section header layouts, per class (ELF32, ELF64).
EHDR = {32: struct.Struct("<16sHHIIIIIHHHHHH"), 64: struct.Struct("<16sHHIQQQIHHHHHH")}
PHDR32 = struct.Struct("<8I")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
PHDR64 = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
SHDR = {32: struct.Struct("<10I"), 64: struct.Struct("<IIQQQQIIQQ")}
SYM32 = struct.Struct("<IIIBBH")  # name, value, size, info, other, shndx
SYM64 = struct.Struct("<IBBHQQ")  # name, info, other, shndx, value, size


@dataclass
class Section:
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int
    data: bytes


class Elf32:
    """An ELF32 LSB file: header fields, program headers, sections."""

    def __init__(self, raw: bytes):
        if raw[:4] != b"\x7fELF" or raw[4] != 1 or raw[5] != 1:
            sys.exit("derive_image: input is not a 32-bit little-endian ELF")
        self.raw = raw
        (self.ident, self.type, self.machine, self.version, self.entry, self.phoff,
         self.shoff, self.flags, _, _, self.phnum, _, shnum, self.shstrndx
         ) = EHDR[32].unpack_from(raw)
        self.phdrs = [PHDR32.unpack_from(raw, self.phoff + 32 * i) for i in range(self.phnum)]
        self.sections = []
        for i in range(shnum):
            f = SHDR[32].unpack_from(raw, self.shoff + 40 * i)
            data = b"" if f[1] in (SHT_NULL, SHT_NOBITS) else raw[f[4]:f[4] + f[5]]
            self.sections.append(Section(*f, data=data))

    def loaded_end(self) -> int:
        """End of the bytes that must keep their file offsets (segments)."""
        ends = [p[1] + p[4] for p in self.phdrs]
        ends += [s.offset + s.size for s in self.sections
                 if s.flags & SHF_ALLOC and s.type != SHT_NOBITS]
        return max(ends)

    def first_content(self) -> int:
        """Start of the segment bytes (everything else is laid out again)."""
        offsets = [p[1] for p in self.phdrs if p[4]]
        offsets += [s.offset for s in self.sections
                    if s.flags & SHF_ALLOC and s.type != SHT_NOBITS]
        return min(offsets)

    def write(self, elfclass: int = 32) -> bytes:
        """Serialize as ELF32 or ELF64: segment bytes stay where they are,
        non-allocated sections are laid out again after them, then the
        section header table."""
        ehsize, phentsize, shentsize = (52, 32, 40) if elfclass == 32 else (64, 56, 64)
        if ehsize + phentsize * self.phnum > self.first_content():
            sys.exit("derive_image: no room for the headers before the first segment")
        out = bytearray(self.raw[:self.loaded_end()])
        offsets = {}
        for i, s in enumerate(self.sections):
            if s.type in (SHT_NULL, SHT_NOBITS) or s.flags & SHF_ALLOC:
                continue
            data = s.data
            if s.type == SHT_SYMTAB and elfclass == 64:
                data = b"".join(
                    SYM64.pack(n, info, other, shndx, value, size)
                    for n, value, size, info, other, shndx in SYM32.iter_unpack(s.data))
            align = max(s.addralign, 8 if s.type == SHT_SYMTAB and elfclass == 64 else 1)
            out += bytes(-len(out) % align)
            offsets[i] = (len(out), len(data))
            out += data
        out += bytes(-len(out) % 8)
        shoff = len(out)
        for i, s in enumerate(self.sections):
            offset, size = offsets.get(i, (s.offset, s.size))
            addralign, entsize = s.addralign, s.entsize
            if s.type == SHT_SYMTAB and elfclass == 64:
                addralign, entsize = 8, SYM64.size
            out += SHDR[elfclass].pack(s.name, s.type, s.flags, s.addr, offset, size,
                                       s.link, s.info, addralign, entsize)
        ident = bytearray(self.ident)
        ident[4] = 1 if elfclass == 32 else 2
        out[:ehsize] = EHDR[elfclass].pack(
            bytes(ident), self.type, self.machine, self.version, self.entry, ehsize, shoff,
            self.flags, ehsize, phentsize, self.phnum, shentsize, len(self.sections),
            self.shstrndx)
        for i, (typ, off, vaddr, paddr, filesz, memsz, flags, align) in enumerate(self.phdrs):
            if elfclass == 32:
                ph = PHDR32.pack(typ, off, vaddr, paddr, filesz, memsz, flags, align)
            else:
                ph = PHDR64.pack(typ, flags, off, vaddr, paddr, filesz, memsz, align)
            out[ehsize + i * phentsize:ehsize + (i + 1) * phentsize] = ph
        return bytes(out)

    def add_section(self, name: str, data: bytes) -> None:
        """Append a non-allocated PROGBITS section (its name added to .shstrtab)."""
        strtab = self.sections[self.shstrndx]
        name_offset = len(strtab.data)
        strtab.data += name.encode() + b"\0"
        strtab.size = len(strtab.data)
        self.sections.append(Section(name_offset, 1, 0, 0, 0, len(data), 0, 0, 1, 0, data))


def truncated(raw: bytes) -> bytes:
    elf = Elf32(raw)
    loads = [p for p in elf.phdrs if p[0] == PT_LOAD and p[4]]
    _, offset, _, _, filesz, *_ = max(loads, key=lambda p: p[4])
    return raw[:offset + filesz // 2]


def elf64(raw: bytes) -> bytes:
    return Elf32(raw).write(elfclass=64)


def magic(raw: bytes) -> bytes:
    return bytes(4) + raw[4:]


def oversized(raw: bytes) -> bytes:
    elf = Elf32(raw)
    elf.add_section(".padding", bytes(OVERSIZE))
    return elf.write()


def _signed_parts(raw: bytes) -> tuple[int, int, int]:
    """Offsets of the signature and the image, and the signature length."""
    magic_, version, tlv_len, sign_len, _ = SIGNED_HEADER.unpack_from(raw)
    if magic_ != SIGNED_MAGIC or version != 1:
        sys.exit("derive_image: input is not a signed image")

    def r8(n: int) -> int:
        return (n + 7) & ~7

    sig_at = SIGNED_HEADER.size + r8(tlv_len)
    return sig_at, sig_at + r8(sign_len), sign_len


def bad_signature(raw: bytes) -> bytes:
    sig_at, _, sign_len = _signed_parts(raw)
    out = bytearray(raw)
    out[sig_at + sign_len // 2] ^= 0x01
    return bytes(out)


def bad_hash(raw: bytes) -> bytes:
    _, img_at, _ = _signed_parts(raw)
    elf = Elf32(raw[img_at:])
    _, offset, _, _, filesz, *_ = next(p for p in elf.phdrs if p[0] == PT_LOAD and p[4])
    out = bytearray(raw)
    out[img_at + offset + filesz // 2] ^= 0x01
    return bytes(out)


KINDS = {
    "truncated": truncated,
    "elf64": elf64,
    "magic": magic,
    "oversized": oversized,
    "bad-signature": bad_signature,
    "bad-hash": bad_hash,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    with open(args.input, "rb") as f:
        raw = f.read()
    data = KINDS[args.kind](raw)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
