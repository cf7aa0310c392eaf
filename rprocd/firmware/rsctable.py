"""The resource table: found, checked and decoded entry by entry (ABI §5.3, §6).

Each rule is the kernel's (`find_table`, `rproc_handle_resources` and the
per-type handlers), quoted in the message so that a user who saw the kernel
log recognises it. Unlike the kernel, which stops at the first bad entry,
every entry is checked, so one run lists every problem.
"""

from __future__ import annotations

import struct

from rprocd.firmware.binary import Blob
from rprocd.firmware.elfimage import Shdr
from rprocd.firmware.findings import Checks
from rprocd.firmware.target import Region, Target

RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV, RSC_LAST = 0, 1, 2, 3, 4
RSC_VENDOR_START, RSC_VENDOR_END = 128, 512
FW_RSC_ADDR_ANY = 0xFFFFFFFF
HEADER_SIZE = 16
MAX_ENTRIES = 4096  # far above any real table; bounds the work on garbage
PAGE_SIZE = 4096

TYPE_NAMES = {RSC_CARVEOUT: "carveout", RSC_DEVMEM: "devmem", RSC_TRACE: "trace",
              RSC_VDEV: "vdev"}
VIRTIO_NAMES = {1: "net", 2: "block", 3: "console", 4: "rng", 7: "rpmsg", 11: "rproc-serial"}

_MEM = struct.Struct("<IIIII32s")  # carveout and devmem: da, pa, len, flags, reserved, name
_TRACE = struct.Struct("<III32s")  # da, len, reserved, name
_VDEV = struct.Struct("<IIIIIBB2s")  # id, notifyid, dfeatures, gfeatures, config_len, ...
_VRING = struct.Struct("<IIIII")  # da, align, num, notifyid, pa


def hx(value: int) -> str:
    return f"0x{value:08x}"


def load_table(blob: Blob, section: Shdr, checks: Checks) -> Blob | None:
    """The table's bytes if `find_table` accepts them, else None with an error."""
    offset, size = section.offset, section.size
    fix = "check the .resource_table section of the linker script and rsc_table.c"
    if not blob.fits(offset, size):
        checks.error(
            "rsc-truncated",
            f"the .resource_table section ({size} bytes at file offset {offset}) runs past "
            f"the end of the {blob.size}-byte file ('resource table truncated'): "
            "the file is cut short or its section headers are corrupt",
        )
        return None
    if size < HEADER_SIZE:
        checks.error(
            "rsc-too-small",
            f"the .resource_table section is only {size} bytes, less than the 16-byte "
            f"table header ('header-less resource table'): {fix}",
        )
        return None
    table = blob.sub(offset, size)
    ver, num, res0, res1 = table.unpack(struct.Struct("<4I"), 0)
    if ver != 1:
        checks.error(
            "rsc-version",
            f"the resource table has version {ver}, but the kernel accepts only version 1 "
            f"('unsupported fw ver: {ver}'): set ver = 1 in rsc_table.c",
        )
        return None
    if res0 or res1:
        checks.error(
            "rsc-reserved",
            "the resource table header's reserved words are not zero "
            "('non zero reserved bytes'): zero them in rsc_table.c",
        )
        return None
    if HEADER_SIZE + 4 * num > size:
        checks.error(
            "rsc-incomplete",
            f"the resource table declares {num} entries, but its offset array does not fit "
            f"in the {size}-byte section ('resource table incomplete'): fix num in rsc_table.c",
        )
        return None
    return table


def decode_entries(table: Blob, target: Target | None, checks: Checks) -> list[dict]:
    """Every entry of an accepted table, checked by the rules of its type."""
    num = table.u32(4)
    if num > MAX_ENTRIES:
        checks.warning(
            "rsc-too-many",
            f"the resource table declares {num} entries; only the first {MAX_ENTRIES} "
            "were checked",
        )
        num = MAX_ENTRIES
    state = _State(target)
    entries = []
    for i in range(num):
        offset = table.u32(HEADER_SIZE + 4 * i)
        avail = table.size - offset - 4
        if avail < 0:
            checks.error(
                "rsc-offset",
                f"resource table entry {i} starts at offset {offset}, past the end of the "
                f"{table.size}-byte table ('rsc table is truncated'): fix the offset "
                "array of the table in rsc_table.c",
            )
            entries.append({"index": i, "offset": offset, "type": "invalid", "type_id": -1})
            continue
        rtype = table.u32(offset)
        entry = {"index": i, "offset": offset, "type": TYPE_NAMES.get(rtype, "unknown"),
                 "type_id": rtype}
        body = offset + 4
        if RSC_VENDOR_START <= rtype <= RSC_VENDOR_END:
            entry["type"] = "vendor"
            checks.note(
                "rsc-vendor",
                f"resource table entry {i} is a vendor resource (type {rtype}); only a driver "
                f"with a handle_rsc hook uses it, others skip it",
            )
        elif rtype >= RSC_LAST:
            checks.warning(
                "rsc-unknown-type",
                f"resource table entry {i} has unknown type {rtype}, which the kernel skips "
                f"('unsupported resource {rtype}'): check the entry's type word",
            )
        elif rtype in (RSC_CARVEOUT, RSC_DEVMEM):
            _memory_entry(table, body, avail, entry, state, checks)
        elif rtype == RSC_TRACE:
            _trace_entry(table, body, avail, entry, state, checks)
        else:
            _vdev_entry(table, body, avail, entry, state, checks)
        entries.append(entry)
    return entries


class _State:
    """What earlier entries decided: bound carveouts, the vdev counter."""

    def __init__(self, target: Target | None):
        self.target = target
        self.regions = {r.name: r for r in (target.regions or [])} if target else {}
        self.bound: set[str] = set()
        self.vdevs = 0


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _memory_entry(table: Blob, body: int, avail: int, entry: dict, state: _State,
                  checks: Checks) -> None:
    kind = entry["type"]
    i = entry["index"]
    target = state.target
    decoded = avail >= _MEM.size
    if decoded:
        da, pa, length, flags, reserved, raw = table.unpack(_MEM, body)
        name = _name(raw)
        entry.update(da=da, pa=pa, len=length, flags=flags, name=name)
    if kind == "devmem" and target is not None and not target.iommu:
        desc = f" ('{name}', {length} bytes at {hx(da)})" if decoded else ""
        checks.error(
            "devmem-without-iommu",
            f"resource table entry {i} is a devmem mapping{desc}, which needs an IOMMU that "
            f"{checks.core} does not have, so the kernel refuses every boot (-22): remove "
            "the RSC_DEVMEM entry from rsc_table.c",
        )
        return
    if not decoded:
        checks.error(
            f"rsc-{kind}",
            f"resource table entry {i} ({kind}) is cut off by the end of the table "
            f"('{kind} rsc is truncated'): fix the table's size or offsets",
        )
        return
    if reserved:
        checks.error(
            f"rsc-{kind}",
            f"resource table entry {i} ({kind} '{name}') has a non-zero reserved word "
            f"('{kind} rsc has non zero reserved bytes'): zero it in rsc_table.c",
        )
        return
    if kind == "carveout":
        _carveout(entry, state, checks)
    elif target is None:
        checks.note(
            "devmem",
            f"resource table entry {i} is a devmem mapping ('{name}'): it needs an IOMMU, "
            "so cores without one (every STM32) refuse to boot it",
        )


def _carveout(entry: dict, state: _State, checks: Checks) -> None:
    i, name, da, length = entry["index"], entry["name"], entry["da"], entry["len"]
    region = state.regions.get(name)
    if region is None:
        if state.target is not None and state.target.regions is not None:
            if da != FW_RSC_ADDR_ANY and not state.target.iommu:
                checks.warning(
                    "carveout-address",
                    f"carveout '{name}' (entry {i}) asks for {hx(da)} but is not one of "
                    f"{checks.core}'s memory regions, so the kernel allocates it wherever it "
                    "can ('Allocated carveout doesn't fit device address request'): name it "
                    "after a memory-region of the device tree or use FW_RSC_ADDR_ANY",
                )
            else:
                checks.note(
                    "rsc-carveout-alloc",
                    f"carveout '{name}' (entry {i}) is not one of {checks.core}'s memory "
                    f"regions: the kernel allocates {length} bytes for it",
                )
        return
    if name in state.bound:
        checks.error(
            "rsc-carveout",
            f"carveout '{name}' appears twice in the resource table (entry {i}) "
            "('Carveout already associated to resource table'): remove the duplicate",
        )
        return
    state.bound.add(name)
    if length > region.size:
        checks.error(
            "rsc-carveout",
            f"carveout '{name}' (entry {i}) asks for {length} bytes but {checks.core}'s "
            f"region '{name}' has {region.size} ('Registered carveout doesn't fit len "
            "request'): shrink the carveout",
        )
    elif da != FW_RSC_ADDR_ANY and not region.contains(da, length):
        checks.error(
            "rsc-carveout",
            f"carveout '{name}' (entry {i}) at {hx(da)}..{hx(da + length)} is not inside "
            f"{checks.core}'s region '{name}' ({_span(region)}) ('Registered carveout doesn't "
            "fit da request'): fix its da in rsc_table.c",
        )


def _trace_entry(table: Blob, body: int, avail: int, entry: dict, state: _State,
                 checks: Checks) -> None:
    i = entry["index"]
    if avail < _TRACE.size:
        checks.error(
            "rsc-trace",
            f"resource table entry {i} (trace) is cut off by the end of the table "
            "('trace rsc is truncated'): fix the table's size or offsets",
        )
        return
    da, length, reserved, raw = table.unpack(_TRACE, body)
    name = _name(raw)
    entry.update(da=da, len=length, name=name)
    if reserved:
        checks.error(
            "rsc-trace",
            f"resource table entry {i} (trace '{name}') has a non-zero reserved word "
            "('trace rsc has non zero reserved bytes'): zero it in rsc_table.c",
        )
        return
    target = state.target
    if target is not None and target.regions is not None and target.region_for(da, length) is None:
        checks.warning(
            "trace-outside",
            f"trace buffer '{name}' at {hx(da)}..{hx(da + length)} is outside "
            f"{checks.core}'s memory, so reading {name} will fail: place the buffer in data "
            "memory",
        )


def _vdev_entry(table: Blob, body: int, avail: int, entry: dict, state: _State,
                checks: Checks) -> None:
    i = entry["index"]
    index = state.vdevs
    state.vdevs += 1
    if avail < _VDEV.size:
        checks.error(
            "rsc-vdev",
            f"resource table entry {i} (vdev) is cut off by the end of the table "
            "('vdev rsc is truncated'): fix the table's size or offsets",
        )
        return
    vid, notifyid, dfeatures, gfeatures, config_len, status, nvrings, reserved = table.unpack(
        _VDEV, body)
    entry.update(id=vid, id_name=VIRTIO_NAMES.get(vid, ""), notifyid=notifyid,
                 dfeatures=dfeatures, gfeatures=gfeatures, config_len=config_len,
                 status=status, num_of_vrings=nvrings, vrings=[])
    if _VDEV.size + _VRING.size * nvrings + config_len > avail:
        checks.error(
            "rsc-vdev",
            f"resource table entry {i} (vdev) with {nvrings} vrings and {config_len} bytes of "
            "config does not fit in the table ('vdev rsc is truncated'): fix num_of_vrings, "
            "config_len or the table size",
        )
        return
    if reserved != b"\0\0":
        checks.error(
            "rsc-vdev",
            f"resource table entry {i} (vdev) has non-zero reserved bytes ('vdev rsc has non "
            "zero reserved bytes'): zero them in rsc_table.c",
        )
        return
    if nvrings > 2:
        checks.error(
            "rsc-vdev",
            f"resource table entry {i} (vdev) has {nvrings} vrings, the kernel supports at "
            f"most 2 ('too many vrings: {nvrings}'): use two vrings",
        )
        return
    for j in range(nvrings):
        da, align, num, vnotify, pa = table.unpack(_VRING, body + _VDEV.size + _VRING.size * j)
        entry["vrings"].append({"da": da, "align": align, "num": num, "notifyid": vnotify,
                                "pa": pa})
        _vring(i, index, j, da, align, num, state, checks)


def _vring(i: int, vdev: int, j: int, da: int, align: int, num: int, state: _State,
           checks: Checks) -> None:
    where = f"vring {j} of the vdev in resource table entry {i}"
    if num == 0 or num & (num - 1):
        checks.warning(
            "vring-num",
            f"{where} has {num} buffers; virtio needs a non-zero power of two, so the rpmsg "
            "device will not appear (the core still boots): use 16, 32, ...",
        )
    if align == 0:
        checks.warning(
            "vring-align",
            f"{where} has alignment 0, so the rpmsg device will not appear (the core still "
            "boots): set align (16 or 4096)",
        )
    region = state.regions.get(f"vdev{vdev}vring{j}")
    if region is None or num == 0 or align == 0:
        return
    size = _vring_bytes(num, align)
    if size > region.size or (da != FW_RSC_ADDR_ANY and not region.contains(da, size)):
        checks.warning(
            "vring-placement",
            f"{where} ({size} bytes at {hx(da)}) does not fit {checks.core}'s region "
            f"'{region.name}' ({_span(region)}), so the rpmsg device will not appear: "
            "fix the vring address or number of buffers",
        )


def _vring_bytes(num: int, align: int) -> int:
    """vring_size(num, align) rounded up to a page, as the kernel allocates it."""
    descriptors = 16 * num + 2 * (3 + num)
    used = (descriptors + align - 1) // align * align + 2 * 3 + 8 * num
    return (used + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _span(region: Region) -> str:
    return f"{hx(region.da)}..{hx(region.end)}"
