"""Board profiles: which coprocessors a board has and the memory they see.

The memory maps are the ones in HACKING.md "Board memory maps"; the test
firmware's linker scripts use the same numbers, so an image built for a core
loads on its emulated twin and fails on the others.
"""

from __future__ import annotations

from dataclasses import dataclass

EM_ARM = 40


@dataclass(frozen=True)
class MemRegion:
    """A DT `memory-region` of a core: device address, size, physical address."""

    name: str
    da: int
    size: int
    pa: int | None = None

    @property
    def phys(self) -> int:
        """The physical address (da when the core sees memory 1:1)."""
        return self.da if self.pa is None else self.pa


@dataclass(frozen=True)
class CoreSpec:
    """One remote processor as the device tree describes it."""

    name: str
    platform: str
    driver: str
    compatible: str
    default_firmware: str
    regions: tuple[MemRegion, ...]
    machine: int = EM_ARM
    fw_format: str | None = None


@dataclass(frozen=True)
class Board:
    """A board: its cores and the platform bus path their devices sit under."""

    name: str
    cores: tuple[CoreSpec, ...]
    soc_path: str = "soc"


_M4_REGIONS = (
    MemRegion("retram", 0x00000000, 0x10000, 0x38000000),
    MemRegion("mcuram", 0x10000000, 0x40000, 0x30000000),
    MemRegion("vdev0vring0", 0x10040000, 0x1000, 0x10040000),
    MemRegion("vdev0vring1", 0x10041000, 0x1000, 0x10041000),
    MemRegion("vdev0buffer", 0x10042000, 0x4000, 0x10042000),
)

_M33_REGIONS = (
    MemRegion("cm33_cube_fw", 0x80000000, 0x1000000),
    MemRegion("cm33_cube_data", 0x81000000, 0x800000),
    MemRegion("vdev0vring0", 0x81800000, 0x1000),
    MemRegion("vdev0vring1", 0x81801000, 0x1000),
    MemRegion("vdev0buffer", 0x81802000, 0x4000),
)

_M0_REGIONS = (
    MemRegion("cm0_cube_fw", 0x200C0000, 0x4000),
    MemRegion("cm0_cube_data", 0x40040000, 0x2000),
)

_BOARDS: dict[str, Board] = {
    "stm32mp157f-dk": Board(
        "stm32mp157f-dk",
        (
            CoreSpec(
                "m4", "10000000.m4", "stm32-rproc", "st,stm32mp1-m4", "rproc-m4-fw",
                _M4_REGIONS, EM_ARM, "ELF",
            ),
        ),
    ),
    "stm32mp257f-dk": Board(
        "stm32mp257f-dk",
        (
            CoreSpec(
                "m33", "0.m33", "stm32-rproc", "st,stm32mp2-m33", "rproc-m33-fw",
                _M33_REGIONS, EM_ARM, "ELF",
            ),
            CoreSpec(
                "m0", "1.m0", "stm32-rproc", "st,stm32mp2-m0", "rproc-m0-fw",
                _M0_REGIONS, EM_ARM, "ELF",
            ),
        ),
    ),
}

GENERIC_MAX = 64


def _generic(n: int) -> Board:
    cores = tuple(
        CoreSpec(
            f"core{i}", f"{i}.rproc", "generic-rproc", "rprocd,generic", f"rproc-core{i}-fw",
            _M4_REGIONS, EM_ARM, None,
        )
        for i in range(n)
    )
    return Board(f"generic:{n}", cores)


def board_names() -> list[str]:
    """The valid `--board` values, for help texts and error messages."""
    return [*sorted(_BOARDS), "generic:N"]


def get_board(spec: str) -> Board:
    """Resolve a board name; ValueError listing the valid names otherwise."""
    if spec in _BOARDS:
        return _BOARDS[spec]
    if spec.startswith("generic:"):
        count = spec.partition(":")[2]
        if count.isdigit() and 1 <= int(count) <= GENERIC_MAX:
            return _generic(int(count))
        raise ValueError(f"board {spec!r}: N must be 1..{GENERIC_MAX} in generic:N")
    raise ValueError(f"unknown board {spec!r}; valid boards: {', '.join(board_names())}")
