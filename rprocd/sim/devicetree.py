"""The board's device tree as the kernel exports it under /sys/firmware/devicetree/base.

Only what a remoteproc user looks at: each core's node (compatible,
memory-region phandles, dma-ranges for cores that see memory at other
addresses) and the /reserved-memory nodes those phandles point to. Cells are
big-endian u32, strings NUL-terminated, as in the kernel's export.
"""

from __future__ import annotations

import struct
import zlib

from .board import Board, CoreSpec
from .interfaces import SimFile

BASE = "firmware/devicetree/base"


def node_path(board: Board, core: CoreSpec) -> str:
    """The /sys path of a core's DT node (`10000000.m4` -> `soc/m4@10000000`)."""
    addr, _, name = core.platform.partition(".")
    return f"/sys/{BASE}/{board.soc_path}/{name}@{addr}"


def files(board: Board) -> dict[str, SimFile]:
    """Every DT property of the board, by path relative to /sys."""
    props: dict[str, bytes] = {
        f"{BASE}/#address-cells": _cells(1),
        f"{BASE}/#size-cells": _cells(1),
        f"{BASE}/reserved-memory/#address-cells": _cells(1),
        f"{BASE}/reserved-memory/#size-cells": _cells(1),
        f"{BASE}/reserved-memory/ranges": b"",
        f"{BASE}/{board.soc_path}/#address-cells": _cells(1),
        f"{BASE}/{board.soc_path}/#size-cells": _cells(1),
    }
    for core in board.cores:
        node = node_path(board, core).removeprefix("/sys/")
        phandles = []
        for region in core.regions:
            mem = f"{BASE}/reserved-memory/{_region_node(board, core, region.name)}@{region.phys:x}"
            phandle = _phandle(board, core, region.name)
            phandles.append(phandle)
            props[f"{mem}/reg"] = _cells(region.phys, region.size)
            props[f"{mem}/phandle"] = _cells(phandle)
            props[f"{mem}/no-map"] = b""
        props[f"{node}/compatible"] = core.compatible.encode() + b"\0"
        props[f"{node}/memory-region"] = _cells(*phandles)
        props[f"{node}/name"] = core.platform.partition(".")[2].encode() + b"\0"
        ranges = [(r.da, r.phys, r.size) for r in core.regions if r.da != r.phys]
        if ranges:
            props[f"{node}/#address-cells"] = _cells(1)
            props[f"{node}/#size-cells"] = _cells(1)
            props[f"{node}/dma-ranges"] = _cells(*(c for triple in ranges for c in triple))
    return {path: SimFile(0o444, lambda data=data: data) for path, data in props.items()}


def _region_node(board: Board, core: CoreSpec, region: str) -> str:
    """Region node names are global in a DT: prefix the core where cores share names."""
    shared = sum(region in (r.name for r in c.regions) for c in board.cores) > 1
    return f"{core.name}-{region}" if shared else region


def _phandle(board: Board, core: CoreSpec, region: str) -> int:
    """A phandle stable across boards emulated side by side (never 0 or -1)."""
    return zlib.crc32(f"{board.name}/{core.name}/{region}".encode()) % 0x7FFFFFFE + 1


def _cells(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)
