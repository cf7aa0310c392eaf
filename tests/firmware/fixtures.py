"""The test firmware images and what is expected of each.

`make -C tests/firmware` builds them into `BUILD_DIR`. Each `Fixture` says
which core it is for, what is wrong with it, what the (emulated) kernel's
`write(state, "start")` returns for it, and which keyword the daemon's
validator should name. Standard library only, so any test can import it.

Kernel answers (remoteproc-abi.md §5, §6, §7), `None` meaning the start works:

- `kernel_errno`: the image's own core on its STM32 board (driver
  `stm32-rproc`, `fw_format` ELF). This driver only warns about a missing or
  invalid resource table and boots without virtio (§7.1).
- `generic_errno`: a core of the `generic:N` board (generic ELF loader, the m4
  memory map): a missing or invalid table is EINVAL (§5.3), and images linked
  for the m33 or m0 are outside its memory.
- `tee_errno`: an STM32 core with `fw_format` TEE: the OP-TEE TA takes only a
  signed image whose signature and hashes verify, anything else is EIO (§7.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from errno import EINVAL, EIO
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent
BUILD_DIR = FIRMWARE_DIR / "build"
PUBLIC_KEY = FIRMWARE_DIR / "keys" / "test-rsa2048.pub.pem"  # verifies the signed images

SIZE_LIMIT = 16 * 1024 * 1024  # the largest firmware file the daemon accepts

# Memory regions the images are linked for (HACKING.md, "Board memory maps"):
# core -> {region: (device address, size)}.
REGIONS: dict[str, dict[str, tuple[int, int]]] = {
    "m4": {
        "retram": (0x00000000, 0x10000),
        "mcuram": (0x10000000, 0x40000),
        "vdev0vring0": (0x10040000, 0x1000),
        "vdev0vring1": (0x10041000, 0x1000),
        "vdev0buffer": (0x10042000, 0x4000),
    },
    "m33": {
        "cm33_cube_fw": (0x80000000, 0x1000000),
        "cm33_cube_data": (0x81000000, 0x800000),
        "vdev0vring0": (0x81800000, 0x1000),
        "vdev0vring1": (0x81801000, 0x1000),
        "vdev0buffer": (0x81802000, 0x4000),
    },
    "m0": {
        "cm0_cube_fw": (0x200C0000, 0x4000),
        "cm0_cube_data": (0x40040000, 0x2000),
    },
}

# The `.rprocd_sim` settings of the good images (the trace lines aside).
GOOD_SIM = {
    "boot_ms": "20",
    "shutdown_ack_ms": "5",
    "trace_period_ms": "100",
    "crash_after_ms": "0",
    "crash_type": "1",
    "rpmsg": "rpmsg-tty",
}


@dataclass(frozen=True)
class Fixture:
    name: str  # file name in BUILD_DIR
    core: str  # m4, m33 or m0: the core it is linked for (or tried on)
    kind: str  # good, behaviour, broken, signed
    defect: str  # what is wrong with it, in words ("" if nothing)
    kernel_errno: int | None  # STM32 core, fw_format ELF
    generic_errno: int | None  # generic:N core (generic ELF loader, m4 map)
    tee_errno: int | None  # STM32 core, fw_format TEE
    finding: str | None  # keyword the validator's finding names
    sim: dict[str, str] = field(default_factory=dict)  # `.rprocd_sim` keys, if readable
    note: str = ""

    @property
    def path(self) -> Path:
        return BUILD_DIR / self.name


def _good(name: str, core: str, kind: str = "good", **sim: str) -> Fixture:
    return Fixture(
        name, core, kind, "", None, None if core == "m4" else EINVAL, EIO, None,
        sim={**GOOD_SIM, **({"rpmsg": ""} if core == "m0" else {}), **sim},
        note="" if core == "m4" else "on the generic board its segments are outside memory",
    )


def _broken(name: str, core: str, defect: str, kernel: int | None, generic: int | None,
            finding: str, note: str, sim: bool = True) -> Fixture:
    return Fixture(name, core, "broken", defect, kernel, generic, EIO, finding,
                   sim=dict(GOOD_SIM) if sim else {}, note=note)


def _signed(name: str, defect: str, tee: int | None, finding: str | None, note: str) -> Fixture:
    return Fixture(name, "m33", "signed", defect, EINVAL, EINVAL, tee, finding, note=note)


_ALL = [
    _good("m4-good.elf", "m4"),
    _good("m33-good.elf", "m33"),
    _good("m0-good.elf", "m0"),
    _good("m4-noack.elf", "m4", "behaviour", shutdown_ack_ms="-1"),
    _good("m4-crash.elf", "m4", "behaviour", crash_after_ms="300", crash_type="1"),
    _good("m4-quiet.elf", "m4", "behaviour", trace_period_ms="0"),
    _good("m33-chatty.elf", "m33", "behaviour", trace_period_ms="10"),
    _broken(
        "bad-no-rsc.elf", "m4", "no .resource_table section", None, EINVAL,
        "resource table",
        "STM32 only warns ('no resource table found') and boots without virtio; "
        "the generic loader requires a table",
    ),
    _broken(
        "bad-rsc-version.elf", "m4", "resource table ver=2", None, EINVAL, "version",
        "STM32 treats an invalid table like a missing one (§7.1); "
        "generic: 'unsupported fw ver'",
    ),
    _broken(
        "bad-rsc-offset.elf", "m4",
        "resource table entry offset (trace0) points past the table end", EINVAL, EINVAL,
        "offset",
        "the header passes the table checks (§5.3), so every driver keeps the table; "
        "handling the entry fails: 'rsc table is truncated' (§6.4)",
    ),
    _broken(
        "bad-devmem.elf", "m4", "resource table has an RSC_DEVMEM entry", EINVAL, EINVAL,
        "devmem", "devmem needs an IOMMU; no STM32 (and no emulated core) has one (§6.4)",
    ),
    _broken(
        "bad-segment-outside.elf", "m33",
        "data PT_LOAD segment linked at 0x82000000, outside every m33 region", EINVAL, EINVAL,
        "outside", "no da->va translation for p_paddr: 'bad phdr da' (§5.4)",
    ),
    _broken(
        "bad-truncated.elf", "m4",
        "m4-good cut in the middle of its .text segment (section headers lost too)",
        EINVAL, EINVAL, "truncated",
        "e_shoff is past the end: 'Image is too small' (§5.2 check 7); "
        "the cut segment alone would be 'truncated fw' (§5.4)",
        sim=False,
    ),
    _broken(
        "bad-x86_64.elf", "m4", "x86-64 executable (ELF64, EM_X86_64) built with the host gcc",
        EINVAL, EINVAL, "machine",
        "e_machine is not checked and ELF64 is accepted (§5.2); no resource table "
        "(STM32 warns); its segments at 0x400000 are outside memory",
        sim=False,
    ),
    _broken(
        "bad-elf64.elf", "m4", "m4-good converted to ELFCLASS64 (EM_ARM, same segments)",
        None, None, "class",
        "kernels since v5.7 load ELF64 (§5.2), so it boots (EINVAL before v5.7); "
        "Cortex-M firmware is ELF32, the validator should say so",
    ),
    _broken(
        "bad-big-endian.elf", "m4", "big-endian ELF32 ARM (BE8) build of m4-good",
        EINVAL, EINVAL, "endian", "'Unsupported firmware endianness' (§5.2)",
    ),
    _broken(
        "bad-magic.elf", "m4", "m4-good with its 4 ELF magic bytes zeroed", EINVAL, EINVAL,
        "magic", "'Image is corrupted (bad magic)' (§5.2)", sim=False,
    ),
    _broken(
        "bad-oversized.elf", "m4",
        "m4-good with a 16 MiB non-allocated section: file larger than 16 MiB", None, None,
        "size", "valid for the kernel; the daemon's size limit refuses it",
    ),
    _signed(
        "m33-good-signed.bin", "", None, None,
        "OP-TEE TLV image of m33-good.elf; on fw_format ELF it is not an ELF (bad magic)",
    ),
    _signed(
        "m33-bad-signature.bin", "one byte of the signature flipped", EIO, "signature",
        "the TA refuses the signature",
    ),
    _signed(
        "m33-bad-hash.bin", "one byte of the first PT_LOAD segment flipped after signing",
        EIO, "hash", "signature is good; the segment hash does not match",
    ),
]

FIXTURES: dict[str, Fixture] = {f.name: f for f in _ALL}


def of_kind(*kinds: str) -> list[Fixture]:
    """The fixtures of the given kinds, in table order."""
    return [f for f in _ALL if f.kind in kinds]
