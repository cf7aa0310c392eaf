"""The emulated device tree, read back by the daemon's own reader.

The emulator and the validator are written independently; this pins that
what the emulator exports is what a kernel exports, as far as the daemon
reads it: every core's memory map in device addresses.
"""

import os
from pathlib import Path

import pytest

from rprocd.firmware.target import read_target
from rprocd.paths import Paths
from rprocd.sim import devicetree
from rprocd.sim.board import get_board


def _materialize(root: Path, board) -> Path:
    sysfs = root / "sys"
    for rel, simfile in devicetree.files(board).items():
        path = sysfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(simfile.read())
    for n, core in enumerate(board.cores):
        device = sysfs / "class" / "remoteproc" / f"remoteproc{n}" / "device"
        device.mkdir(parents=True)
        target = sysfs / devicetree.node_path(board, core).removeprefix("/sys/")
        os.symlink(target, device / "of_node")
    return sysfs


@pytest.mark.parametrize("board_name", ["stm32mp157f-dk", "stm32mp257f-dk", "generic:3"])
def test_daemon_reads_every_core_memory_map_from_the_emulated_tree(tmp_path, board_name):
    board = get_board(board_name)
    sysfs = _materialize(tmp_path, board)
    paths = Paths.from_environ({"RPROCD_SYSFS": str(sysfs)})
    for n, core in enumerate(board.cores):
        target = read_target(paths, f"remoteproc{n}", core.name)
        got = [(r.da, r.size) for r in target.regions]
        assert got == [(r.da, r.size) for r in core.regions], core.name
        assert target.machine == 40


def test_m4_regions_are_translated_through_dma_ranges(tmp_path):
    board = get_board("stm32mp157f-dk")
    sysfs = _materialize(tmp_path, board)
    node = sysfs / devicetree.node_path(board, board.cores[0]).removeprefix("/sys/")
    assert (node / "compatible").read_bytes() == b"st,stm32mp1-m4\0"
    assert (node / "dma-ranges").exists()
    reserved = sorted(p.name for p in (sysfs / devicetree.BASE / "reserved-memory").iterdir()
                      if p.is_dir())
    assert "retram@38000000" in reserved and "mcuram@30000000" in reserved


def test_phandles_are_unique_across_boards_side_by_side():
    phandles = []
    for name in ("stm32mp157f-dk", "stm32mp257f-dk", "generic:4"):
        for rel, simfile in devicetree.files(get_board(name)).items():
            if rel.endswith("/phandle"):
                phandles.append(simfile.read())
    assert len(phandles) == len(set(phandles))
