"""The result of checking one image: what it is and every problem, in words.

A `Report` is plain data so that the same object feeds the D-Bus adapter
(`to_dict()`, an a{sv}), `rprocctl inspect` (`report_text.format_report`) and
the error raised before a `start` (the first error finding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR = "error"
WARNING = "warning"
NOTE = "note"

# Every finding code (stable ids for programs), with what it means.
CODES = {
    # the file and its format
    "empty": "the file has no bytes",
    "not-a-file": "the path is not a regular file",
    "too-large": "the file is over the firmware size limit",
    "too-small": "smaller than an ELF header (kernel: 'Image is too small')",
    "bad-magic": "not an ELF file (kernel: 'Image is corrupted (bad magic)')",
    "bad-class": "ELF class neither 32 nor 64 bits",
    "wrong-endianness": "big-endian image",
    "truncated": "part of the image lies past the end of the file",
    "no-segments": "no program headers",
    "format-mismatch": "signed image for an ELF loader, or ELF for a TEE loader",
    # the image against the core
    "wrong-class": "ELF64 for a 32-bit core",
    "wrong-machine": "built for another architecture",
    "segment-size": "a segment has more file bytes than memory bytes",
    "segment-outside": "a segment is outside the core's memory regions",
    "segments-not-listed": "the report lists only the first program headers",
    "entry-outside": "the entry point is in no loaded segment",
    "boot-vector": "the kernel will not find the vector table the core boots from",
    "no-memory-map": "the kernel gives no memory map: placement not checked",
    "core-guessed": "no core is configured for the image: checked against the best fit",
    # the resource table
    "no-resource-table": "no .resource_table section",
    "rsc-truncated": "the table section lies past the end of the file",
    "rsc-too-small": "the table section is smaller than its header",
    "rsc-version": "table version other than 1",
    "rsc-reserved": "non-zero reserved words in the table header",
    "rsc-incomplete": "the offset array does not fit in the table",
    "rsc-too-many": "more entries than rprocd checks",
    "rsc-offset": "an entry starts past the end of the table",
    "rsc-carveout": "a carveout entry the kernel refuses",
    "rsc-carveout-alloc": "a carveout the kernel allocates (no memory region of that name)",
    "carveout-address": "a fixed-address carveout the kernel cannot place there",
    "rsc-devmem": "a devmem entry the kernel refuses (truncated, reserved words)",
    "devmem-without-iommu": "a devmem entry on a core without IOMMU",
    "devmem": "a devmem entry (needs an IOMMU)",
    "rsc-trace": "a trace entry the kernel refuses",
    "trace-outside": "a trace buffer outside the core's memory",
    "rsc-vdev": "a vdev entry the kernel refuses",
    "vring-num": "a vring buffer count that is zero or not a power of two",
    "vring-align": "a vring alignment of zero",
    "vring-placement": "a vring that does not fit its memory region",
    "rsc-vendor": "a vendor-specific entry",
    "rsc-unknown-type": "an entry of unknown type",
    "rsc-not-loaded": "the table is not in a loaded segment",
    "rsc-duplicate": "more than one resource table in a signed image",
    # signed images
    "signature": "about the signature (verified only by OP-TEE)",
    "signed-header": "signed image header inconsistent",
    "signed-version": "signed image header version other than 1",
    "signed-size": "file size differs from the signed header's",
    "signed-tlv": "a required TLV is missing or malformed",
    "signed-elf": "the embedded ELF is not one OP-TEE loads",
    "hash-table": "the hash table TLV is missing or malformed",
    "hash-missing": "a segment has no hash-table entry",
    "hash-entry": "a segment differs from its hash-table entry",
    "hash-mismatch": "a segment's SHA-256 differs from the signed one",
    "hash-skipped": "overlapping segments whose hashes were not checked",
    # rprocd itself
    "more-findings": "more findings of one code than listed",
    "internal-error": "a bug in rprocd's checks",
}


@dataclass(frozen=True)
class Finding:
    """One problem or remark: `code` is a stable kebab-case id for programs,
    `message` one sentence for people (the fact and the fix)."""

    severity: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


@dataclass
class Report:
    """What `validate_file` found out about an image.

    Addresses are device addresses as the firmware was linked. `machine` and
    `entry` are None until the ELF header was read.
    """

    path: str = ""
    size: int = 0
    format: str = "unknown"  # "ELF", "TEE-TLV", "ST-legacy-signed" or "unknown"
    elf_class: int = 0  # 32 or 64; 0 if unknown
    endianness: str = ""  # "little", "big" or ""
    machine: int | None = None
    machine_name: str = ""
    entry: int | None = None
    boot_vector: dict = field(default_factory=dict)  # section, address
    segments: list[dict] = field(default_factory=list)
    resource_table: dict = field(default_factory=dict)
    signed: dict = field(default_factory=dict)  # signed-image header and TLVs
    findings: list[Finding] = field(default_factory=list)

    def add(self, severity: str, code: str, message: str) -> None:
        self.findings.append(Finding(severity, code, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == NOTE]

    def to_dict(self) -> dict:
        """JSON- and a{sv}-friendly: every key always present, never None.

        Types: path s, size t, format s, valid b, elf_class u, endianness s,
        machine i (-1 unknown), machine_name s, entry t, has_entry b,
        boot_vector a{sv} (section s, address t; empty if none),
        segments aa{sv}, resource_table a{sv} (empty if none; entries aa{sv}),
        signed a{sv}, findings aa{sv} (severity s, code s, message s),
        errors u, warnings u.
        """
        return {
            "path": self.path,
            "size": self.size,
            "format": self.format,
            "valid": not self.errors,
            "elf_class": self.elf_class,
            "endianness": self.endianness,
            "machine": -1 if self.machine is None else self.machine,
            "machine_name": self.machine_name,
            "entry": self.entry or 0,
            "has_entry": self.entry is not None,
            "boot_vector": dict(self.boot_vector),
            "segments": [dict(s) for s in self.segments],
            "resource_table": _copy(self.resource_table),
            "signed": _copy(self.signed),
            "findings": [f.to_dict() for f in self.findings],
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }


MAX_PER_CODE = 16  # findings of one code listed; a crafted file could make thousands


@dataclass
class Checks:
    """Where checks put their findings: the report, and the core's name for
    the messages ("m4", or "the core" when no core is known). Past
    MAX_PER_CODE findings of one code, `finish` adds a count instead."""

    report: Report
    core: str = "the core"
    _counts: dict[str, int] = field(default_factory=dict)

    def _add(self, severity: str, code: str, message: str) -> None:
        count = self._counts.get(code, 0) + 1
        self._counts[code] = count
        if count <= MAX_PER_CODE:
            self.report.add(severity, code, message)

    def error(self, code: str, message: str) -> None:
        self._add(ERROR, code, message)

    def warning(self, code: str, message: str) -> None:
        self._add(WARNING, code, message)

    def note(self, code: str, message: str) -> None:
        self._add(NOTE, code, message)

    def finish(self) -> None:
        for code, count in self._counts.items():
            if count > MAX_PER_CODE:
                self.report.add(NOTE, "more-findings",
                                f"{count - MAX_PER_CODE} more '{code}' findings are not listed")


def _copy(value):
    """A deep copy of nested dicts/lists of plain values (the caller may mutate it)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
