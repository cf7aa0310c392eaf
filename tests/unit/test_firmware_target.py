"""read_target: the core's loader and memory map from sysfs and the device tree."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from rprocd.firmware import Region, read_target
from rprocd.paths import Paths

DT = "firmware/devicetree/base"


def cells(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def prop(node: Path, name: str, value: bytes) -> None:
    node.mkdir(parents=True, exist_ok=True)
    (node / name).write_bytes(value)


def relink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def board(tmp_path: Path, *, compatible: bytes, regions: dict[str, tuple[int, int, int]],
          dma_ranges: bytes | None = None, on_parent: bool = True, fw_format: str | None = "ELF",
          acells: int = 1, scells: int = 1, extra_props: dict[str, bytes] | None = None) -> Paths:
    """A sysfs tree with remoteproc0 under a platform device whose of_node
    is bus/core in the device tree; `regions`: name -> (phandle, pa, size)."""
    sysfs = tmp_path / "sys"
    base = sysfs / DT
    prop(base, "#address-cells", cells(1))
    prop(base, "#size-cells", cells(1))
    resmem = base / "reserved-memory"
    prop(resmem, "#address-cells", cells(acells))
    prop(resmem, "#size-cells", cells(scells))
    for name, (phandle, pa, size) in regions.items():
        node = resmem / f"{name}@{pa:x}"
        addr = [pa >> 32, pa & 0xFFFFFFFF] if acells == 2 else [pa]
        sz = [size >> 32, size & 0xFFFFFFFF] if scells == 2 else [size]
        prop(node, "reg", cells(*addr, *sz))
        prop(node, "phandle", cells(phandle))
    bus = base / "ahb@38000000"
    prop(bus, "#address-cells", cells(1))
    prop(bus, "#size-cells", cells(1))
    core = bus / "m4@10000000"
    prop(core, "compatible", compatible)
    prop(core, "memory-region", cells(*(p for p, _, _ in regions.values())))
    if dma_ranges is not None:
        prop(bus if on_parent else core, "dma-ranges", dma_ranges)
    for name, value in (extra_props or {}).items():
        prop(core, name, value)
    platform = sysfs / "devices/platform/soc/10000000.m4"
    rproc = platform / "remoteproc/remoteproc0"
    rproc.mkdir(parents=True)
    (rproc / "name").write_text("m4\n")
    if fw_format is not None:
        (rproc / "fw_format").write_text(fw_format + "\n")
    relink(rproc / "device", platform)
    relink(platform / "of_node", core)
    relink(sysfs / "class/remoteproc/remoteproc0", rproc)
    return Paths.from_environ({"RPROCD_SYSFS": str(sysfs)})


M4_REGIONS = {"retram": (1, 0x38000000, 0x10000), "mcuram": (2, 0x30000000, 0x40000),
              "vdev0vring0": (3, 0x10040000, 0x1000)}
M4_DMA = cells(0x00000000, 0x38000000, 0x10000, 0x10000000, 0x30000000, 0x40000,
               0x10040000, 0x10040000, 0x6000)


def test_stm32mp1_m4_memory_map_translated_by_dma_ranges(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp1-m4\0", regions=M4_REGIONS,
                  dma_ranges=M4_DMA)
    target = read_target(paths, "remoteproc0", "m4")
    assert target.core == "m4" and target.fw_format == "ELF" and target.machine == 40
    assert target.regions == [Region("retram", 0, 0x10000), Region("mcuram", 0x10000000, 0x40000),
                              Region("vdev0vring0", 0x10040000, 0x1000)]
    assert target.iommu is False and target.boot_vector_sections == ()
    assert target.require_resource_table is True


def test_dma_ranges_on_the_core_node(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp1-m4\0", regions=M4_REGIONS,
                  dma_ranges=M4_DMA, on_parent=False)
    target = read_target(paths, "remoteproc0", "m4", require_resource_table=False)
    assert target.regions[1] == Region("mcuram", 0x10000000, 0x40000)
    assert target.require_resource_table is False


def test_without_dma_ranges_da_is_pa_and_two_cell_reg(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp2-m33\0",
                  regions={"cm33_cube_fw": (7, 0x80000000, 0x1000000)}, acells=2, scells=2)
    target = read_target(paths, "remoteproc0", "m33")
    assert target.regions == [Region("cm33_cube_fw", 0x80000000, 0x1000000)]
    assert target.boot_vector_sections == (".isr_vectors", "A0")


def test_tee_core_has_no_boot_vector_section(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp2-m33-tee\0",
                  regions={"cm33_cube_fw": (7, 0x80000000, 0x1000000)}, fw_format="TEE")
    target = read_target(paths, "remoteproc0", "m33")
    assert target.fw_format == "TEE" and target.boot_vector_sections == ()


def test_unknown_compatible_and_iommu(tmp_path):
    paths = board(tmp_path, compatible=b"ti,am64-r5f\0vendor,other\0",
                  regions={"ddr": (4, 0xA0000000, 0x100000)}, fw_format=None,
                  extra_props={"iommus": cells(9, 0)})
    target = read_target(paths, "remoteproc0", "r5f")
    assert target.machine is None and target.fw_format == "" and target.iommu is True


def test_generic_board_is_arm(tmp_path):
    paths = board(tmp_path, compatible=b"rprocd,generic\0", regions=M4_REGIONS,
                  dma_ranges=M4_DMA, fw_format="invalid")
    target = read_target(paths, "remoteproc0", "core0")
    assert target.machine == 40 and target.fw_format == ""


def test_phandle_outside_reserved_memory_is_found(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp1-m4\0", regions=M4_REGIONS,
                  dma_ranges=M4_DMA)
    base = paths.sysfs / DT
    elsewhere = base / "soc" / "sram@2ffc0000"
    prop(elsewhere, "reg", cells(0x2FFC0000, 0x1000))
    prop(elsewhere, "phandle", cells(42))
    prop(base / "soc", "#address-cells", cells(1))
    prop(base / "soc", "#size-cells", cells(1))
    core = base / "ahb@38000000" / "m4@10000000"
    prop(core, "memory-region", cells(1, 42))
    target = read_target(paths, "remoteproc0", "m4")
    assert [r.name for r in target.regions] == ["retram", "sram"]


def test_no_device_tree(tmp_path):
    sysfs = tmp_path / "sys"
    rproc = sysfs / "class/remoteproc/remoteproc0"
    rproc.mkdir(parents=True)
    paths = Paths.from_environ({"RPROCD_SYSFS": str(sysfs)})
    target = read_target(paths, "remoteproc0", "dsp")
    assert target.regions is None and target.machine is None and target.fw_format == ""


def test_core_without_memory_region(tmp_path):
    paths = board(tmp_path, compatible=b"st,stm32mp1-m4\0", regions={})
    (paths.sysfs / DT / "ahb@38000000" / "m4@10000000" / "memory-region").unlink()
    assert read_target(paths, "remoteproc0", "m4").regions is None
