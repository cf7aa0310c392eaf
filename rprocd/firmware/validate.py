"""Check an image the way the kernel (or OP-TEE) will load it, before `start`.

Order of the findings: format, the ELF sanity checks in the kernel's order
(§5.2), class and machine against the core, the resource table (§5.3, §6),
the segments (§5.4), then the boot vector (§5.5). Every malformed input ends
as findings: the parsers check bounds before reading, and anything they
missed is caught here as an "internal-error" finding (the fuzz test proves
there is none) rather than taking the daemon down.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rprocd.firmware import rsctable, signed
from rprocd.firmware.binary import Blob
from rprocd.firmware.elfimage import (
    EHDR_SIZE,
    ELF_MAGIC,
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    EV_CURRENT,
    PHDR_SIZE,
    PT_LOAD,
    PT_NAMES,
    SHDR_SIZE,
    SHF_ALLOC,
    ElfHeader,
    Phdr,
    Shdr,
    find_section,
    machine_name,
    program_header,
    read_header,
    section_headers,
)
from rprocd.firmware.findings import Checks, Report
from rprocd.firmware.rsctable import hx
from rprocd.firmware.target import EM_ARM, Target

log = logging.getLogger(__name__)

MAX_IMAGE_SIZE = 16 * 1024 * 1024  # tests/firmware/fixtures.py SIZE_LIMIT
MAX_LISTED_SEGMENTS = 256  # a report stays small whatever the file claims
_READ_CHUNK = 4 * 1024 * 1024
_VECTOR_NAMES = (".isr_vectors", "A0", ".isr_vector")


def validate_file(path: Path, target: Target | None, max_size: int = MAX_IMAGE_SIZE) -> Report:
    """Read `path` once and check it; OSError only if it cannot be opened or read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            report = Report(path=str(path))
            Checks(report, _core(target)).error(
                "not-a-file", f"{path} is not a regular file: give the firmware file itself")
            return report
        data = read_limited(fd, max_size)
    finally:
        os.close(fd)
    if len(data) > max_size:
        report = Report(path=str(path), size=max(info.st_size, len(data)))
        report.format = _format_of(Blob(data))
        Checks(report, _core(target)).error(
            "too-large",
            f"the file is {report.size} bytes, over rprocd's firmware size limit of "
            f"{max_size} bytes ({max_size / 2**20:g} MiB): strip debug information "
            "(arm-none-eabi-strip) or remove unused sections",
        )
        return report
    return validate_bytes(data, target, path)


def read_limited(fd: int, max_size: int) -> bytes:
    """At most max_size + 1 bytes from fd's position (one more than allowed
    tells "too large" without reading the rest)."""
    chunks = []
    total = 0
    while total <= max_size:
        chunk = os.read(fd, min(max_size + 1 - total, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def validate_bytes(data: bytes, target: Target | None, path: Path | str = "") -> Report:
    """Check an image held in memory (exactly the file's bytes)."""
    report = Report(path=str(path), size=len(data))
    checks = Checks(report, _core(target))
    try:
        _check_image(Blob(data), target, checks)
    except Exception as exc:  # a validator bug must never take the daemon down
        log.exception("firmware check of %s failed", path or "<bytes>")
        checks.error(
            "internal-error",
            f"rprocd could not finish checking this image ({type(exc).__name__}: {exc}); "
            "please report it with the file",
        )
    checks.finish()
    return report


def _core(target: Target | None) -> str:
    return target.core if target is not None else "the core"


def _check_image(blob: Blob, target: Target | None, checks: Checks) -> None:
    if blob.size == 0:
        checks.error("empty", "the file is empty: copy the firmware again")
        return
    tee_loader = target is not None and target.fw_format == "TEE"
    checks.report.format = _format_of(blob)
    if signed.is_signed(blob):
        _check_signed(blob, target, checks)
    elif tee_loader and not _has_elf_magic(blob):
        checks.error(
            "bad-magic",
            f"the file is neither a signed image nor an ELF file, and {checks.core} loads only "
            "signed images (fw_format TEE), so OP-TEE refuses it (-5): give it the signed "
            "image (*_sign.bin)",
        )
        return
    else:
        if tee_loader:
            checks.error(
                "format-mismatch",
                f"this is an ELF image for a TEE loader: {checks.core} loads only signed images "
                "(fw_format TEE), so OP-TEE refuses it (-5): give it the signed image "
                "(*_sign.bin) or sign this one with OP-TEE's sign_rproc_fw.py",
            )
        result = _check_elf(blob, target, checks, tee=False)
        if result is not None and not result.table:
            _no_table(target, checks)
    if target is not None and target.regions is None:
        checks.note(
            "no-memory-map",
            f"{checks.core}'s memory map is not available from the kernel; segment placement "
            "was not checked",
        )


def _format_of(blob: Blob) -> str:
    if signed.is_signed(blob):
        return signed.detect(blob)
    return "ELF" if _has_elf_magic(blob) else "unknown"


def _has_elf_magic(blob: Blob) -> bool:
    return blob.fits(0, 4) and bytes(blob.view(0, 4)) == ELF_MAGIC


def _check_signed(blob: Blob, target: Target | None, checks: Checks) -> None:
    if target is not None and target.fw_format != "TEE":
        loader = f"fw_format {target.fw_format}" if target.fw_format else "the kernel's ELF loader"
        checks.error(
            "format-mismatch",
            f"this is a signed image for an ELF loader: {checks.core} loads plain ELF files "
            f"({loader}), so the kernel refuses it ('Image is corrupted (bad magic)', -22): "
            "give it the unsigned .elf, or enable the TEE loader (a '-tee' device tree "
            "compatible)",
        )
    image = signed.parse(blob, checks)
    if image is None:
        return
    tables = 0
    for n, (offset, size) in enumerate(image.images):
        part = blob.sub(offset, size)
        label = f"image {n}: " if len(image.images) > 1 else ""
        result = _check_elf(part, target, checks, tee=True, label=label, image_no=n)
        if result is None:
            continue
        signed.check_hashes(part, result.loads, image, label, checks)
        tables += result.table
    if tables > 1:
        checks.error(
            "rsc-duplicate",
            "more than one embedded image has a resource table ('More than one resource "
            "table found'), so OP-TEE refuses the image (-5): keep one .resource_table",
        )
    elif tables == 0:
        _no_table(target, checks)


@dataclass
class _ElfResult:
    loads: list[Phdr] = field(default_factory=list)  # every PT_LOAD header
    table: bool = False  # a resource table section was found (valid or not)


def _check_elf(blob: Blob, target: Target | None, checks: Checks, *, tee: bool,
               label: str = "", image_no: int = 0) -> _ElfResult | None:
    """Checks of one ELF file, plain (the kernel loads it) or embedded in a
    signed image (`tee`: OP-TEE loads it); None if it is not ELF enough to go on."""
    if tee:
        hdr, fatal = _tee_sanity(blob, checks, label)
    else:
        hdr, fatal = _kernel_sanity(blob, checks)
    if hdr is None:
        return None
    _describe(hdr, checks.report)
    _check_machine(hdr, target, checks)
    if fatal:
        return None
    result = _ElfResult()
    sections, complete = section_headers(blob, hdr)
    if not complete:
        checks.error(
            "truncated",
            f"{label}the section header table ({hdr.shnum} entries at offset {hdr.shoff}) runs "
            f"past the end of the {blob.size}-byte file: the file is cut short",
        )
    rsc = find_section(sections, ".resource_table")
    if rsc is not None and tee and rsc.size == 0:
        rsc = None  # OP-TEE: an empty section means "no table"
    table = None
    if rsc is not None:
        result.table = True
        table = _check_table(blob, rsc, target, checks)
    loads = _check_segments(blob, hdr, target, checks, label, image_no)
    result.loads = loads
    _check_entry(hdr, loads, checks)
    if table is not None:
        _check_table_loaded(rsc, loads, checks, tee)
    if image_no == 0:
        _check_boot_vector(sections, target, checks, tee)
    return result


def _kernel_sanity(blob: Blob, checks: Checks) -> tuple[ElfHeader | None, bool]:
    """rproc_elf_sanity_check, in its order; (header or None, a check failed)."""
    refuse = "the kernel refuses it"
    size = blob.size
    if size < EHDR_SIZE[ELFCLASS32]:
        checks.error(
            "too-small",
            f"the file is {size} bytes, smaller than an ELF header, so {refuse}: "
            "'Image is too small'; copy the whole firmware file",
        )
        return None, True
    if not _has_elf_magic(blob):
        checks.error(
            "bad-magic",
            f"the file does not start with the ELF magic (it starts with "
            f"{bytes(blob.view(0, 4)).hex(' ')}), so {refuse}: 'Image is corrupted (bad "
            "magic)'; give the .elf the linker produced, not a .bin or .hex",
        )
        return None, True
    elf_class = blob.u8(4)
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        checks.error(
            "bad-class",
            f"the ELF class byte is {elf_class} (1 = 32-bit, 2 = 64-bit), so {refuse}: "
            "'Unsupported class'; the file is corrupt",
        )
        return None, True
    if elf_class == ELFCLASS64 and size < EHDR_SIZE[ELFCLASS64]:
        checks.error(
            "too-small",
            f"the file is {size} bytes, smaller than an ELF64 header, so {refuse}: "
            "'elf64 header is too small'; copy the whole firmware file",
        )
        return None, True
    hdr = read_header(blob)
    assert hdr is not None  # magic, class and size were checked above
    if hdr.data != ELFDATA2LSB:
        checks.error(
            "wrong-endianness",
            f"the image is big-endian but {checks.core} and the kernel are little-endian, so "
            f"{refuse}: 'Unsupported firmware endianness'; build it little-endian "
            "(arm-none-eabi-gcc -mlittle-endian, the default)",
        )
        return hdr, True
    if size < hdr.shoff + SHDR_SIZE[hdr.elf_class]:
        checks.error(
            "truncated",
            f"the section header table starts at offset {hdr.shoff}, beyond the end of the "
            f"{size}-byte file, so {refuse}: 'Image is too small'; the file is cut short",
        )
        return hdr, True
    if hdr.phnum == 0:
        checks.error(
            "no-segments",
            f"the ELF file has no program headers, so {refuse}: 'No loadable segments'; "
            "give the linked executable, not an object file",
        )
        return hdr, True
    if hdr.phoff > size:
        checks.error(
            "truncated",
            f"the program headers start at offset {hdr.phoff}, beyond the end of the "
            f"{size}-byte file, so {refuse}: 'Firmware size is too small'; the file is cut "
            "short",
        )
        return hdr, True
    return hdr, False


def _tee_sanity(blob: Blob, checks: Checks, label: str) -> tuple[ElfHeader | None, bool]:
    """OP-TEE's e32_parse_ehdr on an embedded image (plus little-endian, which
    the TA assumes)."""
    def refuse(what: str) -> None:
        checks.error(
            "signed-elf",
            f"{label}the signed image's embedded ELF {what}, so OP-TEE refuses it (-5): sign "
            "a 32-bit ARM ELF built by arm-none-eabi-gcc",
        )

    if blob.size < EHDR_SIZE[ELFCLASS32]:
        refuse(f"is only {blob.size} bytes")
        return None, True
    hdr = read_header(blob)
    if hdr is None:
        refuse("has no valid ELF header (magic or class)")
        return None, True
    if blob.size < (hdr.shoff + SHDR_SIZE[ELFCLASS32]):
        refuse(f"has its section headers (offset {hdr.shoff}) beyond its end")
        return hdr, True
    if (hdr.ident_version != EV_CURRENT or hdr.elf_class != ELFCLASS32
            or hdr.phentsize != PHDR_SIZE[ELFCLASS32] or hdr.shentsize != SHDR_SIZE[ELFCLASS32]):
        refuse("is not ELF32 with standard header sizes ('Invalid header')")
        return hdr, True
    if hdr.data != ELFDATA2LSB:
        checks.error("wrong-endianness", f"{label}the embedded ELF is big-endian: build it "
                     "little-endian (the default of arm-none-eabi-gcc)")
        return hdr, True
    if hdr.phnum == 0:
        refuse("has no program headers ('No loadable segment found')")
        return hdr, True
    return hdr, False


def _describe(hdr: ElfHeader, report: Report) -> None:
    if report.machine is not None:
        return  # a later embedded image: the report describes the first
    report.elf_class = hdr.bits
    report.endianness = "big" if hdr.order == ">" else "little"
    report.machine = hdr.machine
    report.machine_name = machine_name(hdr.machine)
    report.entry = hdr.entry


def _check_machine(hdr: ElfHeader, target: Target | None, checks: Checks) -> None:
    if target is None or target.machine is None:
        return
    if hdr.elf_class == ELFCLASS64 and target.machine == EM_ARM:
        checks.error(
            "wrong-class",
            f"the image is ELF64, but {checks.core} is a 32-bit core that runs only ELF32 "
            "code (the kernel would load it anyway): build it with arm-none-eabi-gcc",
        )
    if hdr.machine != target.machine:
        checks.error(
            "wrong-machine",
            f"the image is built for {machine_name(hdr.machine)}, but {checks.core} runs "
            f"{machine_name(target.machine)} code (the kernel does not check, the core would "
            "crash): build it with the core's toolchain (arm-none-eabi-gcc)",
        )


def _check_table(blob: Blob, rsc: Shdr, target: Target | None, checks: Checks) -> Blob | None:
    report = checks.report
    report.resource_table = {"address": rsc.addr, "size": rsc.size, "valid": False,
                             "entries": []}
    table = rsctable.load_table(blob, rsc, checks)
    if table is None:
        return None
    report.resource_table.update(version=table.u32(0), num=table.u32(4), valid=True)
    report.resource_table["entries"] = rsctable.decode_entries(table, target, checks)
    return table


def _check_segments(blob: Blob, hdr: ElfHeader, target: Target | None, checks: Checks,
                    label: str, image_no: int) -> list[Phdr]:
    """rproc_elf_load_segments' checks on every PT_LOAD header; the list of them."""
    loads = []
    unlisted = 0
    for i in range(hdr.phnum):
        ph = program_header(blob, hdr, i)
        if ph is None:
            checks.error(
                "truncated",
                f"{label}program header {i} (of {hdr.phnum} at offset {hdr.phoff}) lies past "
                f"the end of the {blob.size}-byte file: the file is cut short",
            )
            break
        seg = {"index": i, "type": PT_NAMES.get(ph.type, f"0x{ph.type:x}"), "offset": ph.offset,
               "paddr": ph.paddr, "vaddr": ph.vaddr, "filesz": ph.filesz, "memsz": ph.memsz,
               "flags": ph.flags, "region": ""}
        if label:
            seg["image"] = image_no
        if len(checks.report.segments) < MAX_LISTED_SEGMENTS:
            checks.report.segments.append(seg)
        else:
            unlisted += 1
        if ph.type != PT_LOAD:
            continue
        loads.append(ph)
        if ph.memsz == 0:
            continue  # skipped by the kernel since v5.19
        span = f"{label}segment {i} at {hx(ph.paddr)}..{hx(ph.paddr + ph.memsz)}"
        if ph.filesz > ph.memsz:
            checks.error(
                "segment-size",
                f"{span} has more file bytes ({ph.filesz}) than memory bytes ({ph.memsz}) "
                f"('bad phdr filesz 0x{ph.filesz:x} memsz 0x{ph.memsz:x}'): the program "
                "header is corrupt; relink",
            )
        if not blob.fits(ph.offset, ph.filesz):
            checks.error(
                "truncated",
                f"{span} needs file bytes up to offset {ph.offset + ph.filesz}, but the file "
                f"ends at {blob.size} ('truncated fw: need 0x{ph.offset + ph.filesz:x} avail "
                f"0x{blob.size:x}'): the file is cut short; copy it again",
            )
        if target is None or target.regions is None:
            continue
        region = target.region_for(ph.paddr, ph.memsz)
        if region is not None:
            seg["region"] = region.name
            continue
        checks.error(
            "segment-outside",
            f"{span} lies outside {checks.core}'s memory ({_regions_near(target, ph)}) "
            f"('bad phdr da 0x{ph.paddr:x} mem 0x{ph.memsz:x}'): check the linker script's "
            "MEMORY regions",
        )
    if unlisted:
        checks.note("segments-not-listed", f"{label}{unlisted} program headers are not listed "
                    f"(the report lists {MAX_LISTED_SEGMENTS}); all were checked")
    return loads


def _regions_near(target: Target, ph: Phdr) -> str:
    """The regions the segment overlaps, or all of them."""
    regions = target.regions or []
    near = [r for r in regions if r.da < ph.paddr + ph.memsz and ph.paddr < r.end] or regions
    return ", ".join(f"{r.name} {hx(r.da)}..{hx(r.end)}" for r in near) or "no regions"


def _check_entry(hdr: ElfHeader, loads: list[Phdr], checks: Checks) -> None:
    entry = hdr.entry & ~1  # Thumb bit
    if not hdr.entry or not loads:
        return
    for ph in loads:
        if ph.vaddr <= entry < ph.vaddr + ph.memsz or ph.paddr <= entry < ph.paddr + ph.memsz:
            return
    checks.warning(
        "entry-outside",
        f"the entry point {hx(hdr.entry)} is in no loaded segment: check ENTRY() in the "
        "linker script",
    )


def _check_table_loaded(rsc: Shdr, loads: list[Phdr], checks: Checks, tee: bool) -> None:
    """The kernel copies the table to its link address (sh_addr) just before
    start; outside the loaded image the firmware never sees that copy (and
    OP-TEE refuses the image)."""
    addr, size = rsc.addr, rsc.size
    spans = [(p.paddr, p.memsz) for p in loads] + [(p.vaddr, p.memsz) for p in loads]
    if rsc.flags & SHF_ALLOC and any(b <= addr and addr + size <= b + n for b, n in spans):
        return
    section = (f"the .resource_table section ({hx(addr)}, {size} bytes) is not in a loaded "
               "segment")
    fix = "place .resource_table in a loaded data region of the linker script"
    if tee:
        checks.error("rsc-not-loaded", f"{section}, so OP-TEE cannot map it and refuses the "
                     f"image (-5): {fix}")
    else:
        checks.warning("rsc-not-loaded", f"{section}, so the firmware will not see the table "
                       f"the kernel fills in (vring addresses, features): {fix}")


def _check_boot_vector(sections: list[Shdr], target: Target | None, checks: Checks,
                       tee: bool) -> None:
    found = {}
    for s in sections:
        if s.name in _VECTOR_NAMES and s.name not in found:
            found[s.name] = s.addr
    wanted = target.boot_vector_sections if target is not None and not tee else ()
    for name in (*wanted, *_VECTOR_NAMES):
        if name in found:
            checks.report.boot_vector = {"section": name, "address": found[name]}
            break
    if not wanted:
        return
    chosen = checks.report.boot_vector.get("section")
    names = " or ".join(f"'{n}'" for n in wanted)
    if chosen in wanted:
        address = found[chosen]
        if address & 0x7F:
            checks.warning(
                "boot-vector",
                f"the vector table '{chosen}' at {hx(address)} is not 128-byte aligned, which "
                f"{checks.core}'s vector table register requires: align it in the linker script",
            )
    elif chosen:
        checks.warning(
            "boot-vector",
            f"the vector table is in section '{chosen}', but {checks.core}'s kernel reads the "
            f"boot address from {names}, so the core would boot from address 0: rename the "
            f"output section to '{wanted[0]}' in the linker script",
        )
    else:
        checks.warning(
            "boot-vector",
            f"the image has no {names} section, so {checks.core}'s kernel sets boot address 0: "
            f"name the vector table section '{wanted[0]}' in the linker script",
        )


def _no_table(target: Target | None, checks: Checks) -> None:
    what = "the image has no resource table (.resource_table section)"
    if target is not None and not target.require_resource_table:
        checks.note(
            "no-resource-table",
            f"{what}, so {checks.core} gets no rpmsg and no trace buffer "
            "(RequireResourceTable=no)",
        )
        return
    message = (
        f"{what}, so {checks.core} would run without rpmsg or trace and some kernels crash "
        "on it: link rsc_table.c or set RequireResourceTable=no"
    )
    if target is None:
        checks.warning("no-resource-table", message)
    else:
        checks.error("no-resource-table", message)
