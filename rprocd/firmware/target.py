"""What an image is checked against: one core's loader and memory map.

The memory map is what the kernel itself uses: the device tree
`memory-region` phandles of the remoteproc's platform node, each a
`/reserved-memory` child whose `reg` is a CPU physical address, translated to
the core's device address through `dma-ranges` (STM32 drivers do the same
with `stm32_rproc_pa_to_da`).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rprocd.paths import Paths

EM_ARM = 40

# Compatible prefixes of drivers for Cortex-M cores (ARM ELF32 only).
_ARM_COMPATIBLES = ("st,stm32", "rprocd,generic")
# ST's MP2 kernel takes the boot address from one of these sections (ABI §5.5).
_VECTOR_SECTIONS = (".isr_vectors", "A0")


@dataclass(frozen=True)
class Region:
    """One memory region of the core, in device addresses."""

    name: str
    da: int
    size: int

    @property
    def end(self) -> int:
        return self.da + self.size

    def contains(self, da: int, size: int) -> bool:
        return self.da <= da and da + size <= self.end


@dataclass
class Target:
    """A core as the loader sees it. `regions` None: the kernel gives no map,
    so segment placement cannot be checked. `boot_vector_sections`: the
    section names the kernel reads the boot address from (empty: it does not)."""

    core: str
    regions: list[Region] | None = None
    fw_format: str = ""  # "ELF", "TEE" or "" (mainline kernels have no fw_format)
    machine: int | None = None
    require_resource_table: bool = True
    iommu: bool = False
    boot_vector_sections: tuple[str, ...] = field(default=())

    def region_for(self, da: int, size: int) -> Region | None:
        """The region holding [da, da + size) entirely (the kernel's da_to_va
        never spans two regions)."""
        for region in self.regions or ():
            if region.contains(da, size):
                return region
        return None


def read_target(
    paths: Paths, device: str, name: str, require_resource_table: bool = True,
    *, fw_format: str | None = None, of_node: str | None = None,
) -> Target:
    """The Target of /sys/class/remoteproc/<device> (kernel name `name`).

    A caller that has read them already (a core, before each start) passes
    `fw_format` and `of_node` (the node's path, "" for none): each costs a
    walk through sysfs symlinks otherwise."""
    base = paths.sysfs / "class" / "remoteproc" / device
    if fw_format is None:
        fw_format = _read_text(base / "fw_format")
    fw_format = fw_format.strip()
    if fw_format not in ("ELF", "TEE"):
        fw_format = ""
    if of_node is None:
        node = of_node_of(paths, device)
    else:
        node = Path(of_node) if of_node else None
    compatible, regions, iommu = _node_info(node, paths.sysfs) if node else ([], None, False)
    machine = EM_ARM if any(c.startswith(_ARM_COMPATIBLES) for c in compatible) else None
    tee = fw_format == "TEE" or any(c.endswith("-tee") for c in compatible)
    vectors = (
        _VECTOR_SECTIONS
        if not tee and any(c.startswith("st,stm32mp2") for c in compatible)
        else ()
    )
    return Target(
        core=name,
        regions=regions,
        fw_format=fw_format,
        machine=machine,
        require_resource_table=require_resource_table,
        iommu=iommu,
        boot_vector_sections=vectors,
    )


@functools.lru_cache(maxsize=256)
def _node_info(node: Path, sysfs: Path) -> tuple[list[str], list[Region] | None, bool]:
    """(compatible, memory map, iommu) of a device tree node. The live device tree
    does not change under a running system, and walking it costs tens of file
    reads: read once per node, not at every start (`fw_format`, which a user may
    write, is still read every time)."""
    dt_root = sysfs / "firmware" / "devicetree" / "base"
    return (_strings(node / "compatible"), _memory_map(node, dt_root),
            (node / "iommus").exists())


def of_node_of(paths: Paths, device: str) -> Path | None:
    """The device tree node of the platform device of `remoteprocN` (None: no DT)."""
    return _of_node(paths.sysfs / "class" / "remoteproc" / device / "device")


def _of_node(platform_device: Path) -> Path | None:
    link = platform_device / "of_node"
    if not link.exists():
        return None
    return Path(os.path.realpath(link))


def _memory_map(node: Path, dt_root: Path) -> list[Region] | None:
    phandles = _cells(node / "memory-region")
    if not phandles:
        return None
    by_phandle = dict(_phandle_nodes(dt_root / "reserved-memory"))
    if any(p not in by_phandle for p in phandles):
        by_phandle.update(_phandle_nodes(dt_root, recursive=True))
    ranges = _dma_ranges(node)
    regions = []
    for phandle in phandles:
        mem = by_phandle.get(phandle)
        if mem is None:
            continue
        reg = _reg(mem)
        if reg is None:
            continue
        pa, size = reg
        regions.append(Region(mem.name.split("@", 1)[0], _pa_to_da(pa, size, ranges), size))
    return regions or None


def _reg(mem: Path) -> tuple[int, int] | None:
    """The first (address, size) pair of a /reserved-memory child."""
    parent = mem.parent
    acells = _cell_count(parent, "#address-cells", 2)
    scells = _cell_count(parent, "#size-cells", 1)
    cells = _cells(mem / "reg")
    if len(cells) < acells + scells:
        return None
    return _join(cells[:acells]), _join(cells[acells:acells + scells])


def _dma_ranges(node: Path) -> list[tuple[int, int, int]]:
    """(da, pa, size) triples from the node's or its parent's dma-ranges."""
    for holder in (node, node.parent):
        prop = holder / "dma-ranges"
        if not prop.exists():
            continue
        child = _cell_count(holder, "#address-cells", 2)
        parent = _cell_count(holder.parent, "#address-cells", 2)
        size = _cell_count(holder, "#size-cells", 1)
        cells = _cells(prop)
        step = child + parent + size
        return [
            (
                _join(cells[i:i + child]),
                _join(cells[i + child:i + child + parent]),
                _join(cells[i + child + parent:i + step]),
            )
            for i in range(0, len(cells) - step + 1, step)
        ]
    return []


def _pa_to_da(pa: int, size: int, ranges: list[tuple[int, int, int]]) -> int:
    for da, base, length in ranges:
        if base <= pa and pa + size <= base + length:
            return da + (pa - base)
    return pa


def _phandle_nodes(root: Path, recursive: bool = False) -> Iterator[tuple[int, Path]]:
    if not root.is_dir():
        return
    walk = root.rglob("phandle") if recursive else root.glob("*/phandle")
    for prop in walk:
        cells = _cells(prop)
        if cells:
            yield cells[0], prop.parent


def _cell_count(node: Path, prop: str, default: int) -> int:
    """#address-cells / #size-cells of a node, inherited from its ancestors."""
    for holder in (node, *node.parents):
        cells = _cells(holder / prop)
        if cells:
            return cells[0]
        if holder.name == "base":
            break
    return default


def _cells(path: Path) -> list[int]:
    raw = _read_bytes(path)
    return list(struct.unpack(f">{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def _join(cells: list[int]) -> int:
    value = 0
    for cell in cells:
        value = value << 32 | cell
    return value


def _strings(path: Path) -> list[str]:
    raw = _read_bytes(path)
    return [s.decode("utf-8", "replace") for s in raw.split(b"\0") if s]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _read_text(path: Path) -> str:
    return _read_bytes(path).decode("utf-8", "replace")
