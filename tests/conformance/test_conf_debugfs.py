"""debugfs `/sys/kernel/debug/remoteproc/remoteprocN/` (ABI §4, §3.4)."""

from __future__ import annotations

import re

import pytest

from tests.conformance.conftest import Core, errname


def test_layout_and_modes_offline(core: Core) -> None:
    sim = core.sim
    names = sim.listdir(core.debugfs)
    assert {"name", "recovery", "crash", "coredump", "resource_table",
            "carveout_memories"} <= set(names)
    assert not [n for n in names if n.startswith("trace")]  # only with a loaded table
    modes = {n: sim.lstat(f"{core.debugfs}/{n}").mode & 0o777 for n in names}
    assert modes == {"name": 0o400, "recovery": 0o600, "crash": 0o200, "coredump": 0o600,
                     "resource_table": 0o400, "carveout_memories": 0o400}
    assert core.dbg("name") == "m4\n"


def test_crash_file_cannot_be_opened_for_reading(core: Core) -> None:
    assert errname(core.sim.read_errno(f"{core.debugfs}/crash")) == "EACCES"


# -- crash: kstrtouint_from_user(base 0) ------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("abc", "EINVAL"), ("1x", "EINVAL"), ("-1", "EINVAL"), (" 1", "EINVAL"),
    ("1\n\n", "EINVAL"), ("08", "EINVAL"), ("0x", "EINVAL"), ("\n", "EINVAL"),
    ("4294967296", "ERANGE"), ("0x100000000", "ERANGE"), ("99999999999999999999", "ERANGE"),
    ("0", "OK"), ("1\n", "OK"), ("0x2", "OK"), ("010", "OK"), ("+2", "OK"),
    ("4294967295", "OK"),
])
def test_crash_number_parsing(core: Core, text: str, expected: str) -> None:
    """Parsed before anything else; on an offline core a valid number is
    accepted and ignored by the crash work."""
    assert errname(core.dbg_write("crash", text)) == expected
    assert core.state() == "offline"


@pytest.mark.parametrize("kind", ["0", "1", "2", "7"])
def test_any_crash_type_crashes_a_running_core(core: Core, kind: str) -> None:
    core.boot()
    assert core.write("recovery", "disabled") == 0
    assert core.dbg_write("crash", kind) == 0
    assert core.wait_state("crashed") == "crashed"


def test_second_crash_is_ignored(core: Core) -> None:
    core.boot()
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    core.crash(2)
    assert core.write("recovery", "recover") == 0
    assert core.state() == "running"  # one recovery was enough


# -- recovery: 1..10 bytes, prefix strncmp quirks ----------------------------------


@pytest.mark.parametrize("text,mode", [
    ("enabled", "enabled"), ("disabled\n", "disabled"), ("e", "enabled"), ("d", "disabled"),
    ("dis", "disabled"),
])
def test_debugfs_recovery_prefixes(core: Core, text: str, mode: str) -> None:
    if mode == "enabled":
        assert core.write("recovery", "disabled") == 0
    assert core.dbg_write("recovery", text) == 0
    assert core.dbg("recovery") == f"{mode}\n"
    assert core.attr("recovery") == f"{mode}\n"


@pytest.mark.parametrize("text", ["dis\n", "r\n", "x", "enabledX", "en\0abled",
                                  "enabled\n\n\n\n", "r" * 11, ""])
def test_debugfs_recovery_refusals(core: Core, text: str) -> None:
    result = core.sim.write_result(f"{core.debugfs}/recovery", text)
    if text == "":
        assert (result.errno, result.count) == (0, 0)
    else:
        assert errname(result.errno) == "EINVAL"
    assert core.dbg("recovery") == "enabled\n"


def test_debugfs_recovery_r_recovers(core: Core) -> None:
    core.boot()
    assert core.dbg_write("recovery", "d") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert core.dbg_write("recovery", "r") == 0
    assert core.state() == "running"


# -- coredump: 1..20 bytes, EBUSY while crashed, prefix quirks -----------------------


@pytest.mark.parametrize("text,mode", [
    ("i", "inline"), ("inline\n", "inline"), ("e", "enabled"), ("d", "disabled"),
    ("enab", "enabled"),
])
def test_debugfs_coredump_prefixes(core: Core, text: str, mode: str) -> None:
    assert core.dbg_write("coredump", text) == 0
    assert core.dbg("coredump") == f"{mode}\n"
    assert core.attr("coredump") == f"{mode}\n"


@pytest.mark.parametrize("text", ["inl\n", "x", "inline" + " " * 15, "default"])
def test_debugfs_coredump_refusals(core: Core, text: str) -> None:
    assert errname(core.dbg_write("coredump", text)) == "EINVAL"
    assert core.dbg("coredump") == "disabled\n"


def test_debugfs_coredump_is_ebusy_while_crashed(core: Core) -> None:
    core.boot()
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert errname(core.dbg_write("coredump", "enabled")) == "EBUSY"
    assert errname(core.dbg_write("coredump", "x" * 30)) == "EINVAL"  # length first


# -- trace buffers -------------------------------------------------------------------


def test_trace0_exists_while_running_and_holds_text(core: Core) -> None:
    core.boot()
    assert core.sim.lstat(f"{core.debugfs}/trace0").mode & 0o777 == 0o400
    text = core.dbg("trace0")
    assert text and "\0" not in text  # raw bytes up to the first NUL
    assert "m4-good.elf" in text  # the firmware's boot banner
    assert core.write("state", "stop") == 0
    assert not core.sim.exists(f"{core.debugfs}/trace0")


def test_trace0_survives_a_crash(core: Core) -> None:
    """§3.4: crashed is the best time to read the firmware's log."""
    core.boot()
    before = core.dbg("trace0")
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert core.dbg("trace0").startswith(before.splitlines()[0])


def test_trace_reads_can_seek(core: Core) -> None:
    core.boot("m4-quiet.elf")
    whole = core.dbg("trace0")
    shell = core.sim.run(f"tail -c +3 {core.debugfs}/trace0")
    assert shell.stdout == whole[2:]


# -- resource_table / carveout_memories ---------------------------------------------


def test_resource_table_without_a_table(core: Core) -> None:
    assert core.dbg("resource_table").startswith("No resource table found")


def test_resource_table_of_a_stm32_image_without_table(core: Core) -> None:
    core.boot("bad-no-rsc.elf")  # STM32 only warns (§7.1)
    assert core.dbg("resource_table").startswith("No resource table found")


def test_resource_table_text(core: Core) -> None:
    core.boot()
    text = core.dbg("resource_table")
    entries = re.findall(r"^Entry (\d+) is of type (\w+)$", text, re.M)
    assert entries == [("0", "vdev"), ("1", "trace")]
    vdev = text.split("Entry 1")[0]
    for line in ("  ID 7", "  Number of vrings 2", "  Reserved (should be zero) [0][0]",
                 "  Vring 0", "  Vring 1", "    Device Address 0x10040000",
                 "    Alignment 16", "    Number of buffers 16"):
        assert line in vdev.splitlines(), line
    for key in ("  Notify ID ", "  Device features 0x", "  Guest features 0x",
                "  Config length 0x", "  Status 0x", "    Physical Address 0x"):
        assert any(line.startswith(key) for line in vdev.splitlines()), key
    trace = text.split("Entry 1 is of type trace\n")[1].splitlines()
    assert trace[0].startswith("  Device Address 0x")
    assert re.fullmatch(r"  Length 0x[0-9a-f]+ Bytes", trace[1])
    assert trace[2] == "  Reserved (should be zero) [0]"
    assert trace[3] == "  Name trace0"


def test_carveout_memories(core: Core) -> None:
    core.boot()
    text = core.dbg("carveout_memories")
    blocks = [b for b in text.split("Carveout memory entry:\n") if b.strip()]
    assert blocks
    for block in blocks:
        lines = block.splitlines()
        assert [ln.split(":")[0] for ln in lines[:5]] == [
            "\tName", "\tVirtual address", "\tDMA address", "\tDevice address", "\tLength"]
        assert re.fullmatch(r"\tLength: 0x[0-9a-f]+ Bytes", lines[4])
    assert "\tName: mcuram" in text.splitlines()


def test_debugfs_directory_goes_with_the_device(core: Core) -> None:
    assert core.unbind() == 0
    assert not core.sim.exists(core.debugfs)
    assert core.bind() == 0
    assert core.sim.exists(f"{core.debugfs}/crash")
