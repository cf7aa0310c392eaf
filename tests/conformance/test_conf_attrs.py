"""sysfs `firmware` (ABI §1.4, §5.1), `recovery` (§1.5), `coredump` (§1.6),
`name` and `fw_format` (§1.2, §1.7, §1.8) through /sys under the preload."""

from __future__ import annotations

import errno

import pytest

from tests.conformance.conftest import Core, errname
from tests.firmware.fixtures import FIXTURES

# -- §1.4 firmware -------------------------------------------------------------


def test_firmware_default_name(core: Core) -> None:
    assert core.attr("firmware") == "rproc-m4-fw\n"


def test_firmware_name_is_cut_at_the_first_newline(core: Core) -> None:
    assert core.write("firmware", "m4-good.elf\nignored\nmore") == 0
    assert core.attr("firmware") == "m4-good.elf\n"


def test_firmware_name_keeps_spaces(core: Core) -> None:
    assert core.write("firmware", " m4-good.elf\t ") == 0
    assert core.attr("firmware") == " m4-good.elf\t \n"
    assert errname(core.write("state", "start")) == "ENOENT"  # no such file, spaces and all


@pytest.mark.parametrize("text", ["", "\n", "\nm4-good.elf"])
def test_empty_firmware_name_is_einval(core: Core, text: str) -> None:
    result = core.sim.write_result(f"{core.sysfs}/firmware", text)
    if text == "":
        assert (result.errno, result.count) == (0, 0)  # never reaches the store
    else:
        assert errname(result.errno) == "EINVAL"
    assert core.attr("firmware") == "rproc-m4-fw\n"


def test_missing_file_is_accepted_and_fails_at_start(core: Core) -> None:
    assert core.write("firmware", "not-there.elf") == 0
    assert core.attr("firmware") == "not-there.elf\n"
    assert errname(core.write("state", "start")) == "ENOENT"


@pytest.mark.parametrize("name", ["../m4-good.elf", "sub/../m4-good.elf", "sub/..", ".."])
def test_dotdot_component_fails_at_start_with_einval(core: Core, name: str) -> None:
    assert core.write("firmware", name) == 0
    assert errname(core.write("state", "start")) == "EINVAL"
    assert core.state() == "offline"


def test_dots_inside_a_name_are_fine(core: Core) -> None:
    (core.sim.firmware_dir / "m4..good.elf").write_bytes(
        (core.sim.firmware_dir / "m4-good.elf").read_bytes())
    core.boot("m4..good.elf")


def test_subdirectory_of_the_search_dir(core: Core) -> None:
    sub = core.sim.firmware_dir / "st" / "m4"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / "fw.elf").write_bytes((core.sim.firmware_dir / "m4-good.elf").read_bytes())
    core.boot("st/m4/fw.elf")


def test_path_max_is_enametoolong(core: Core) -> None:
    """dir + '/' + name reaching PATH_MAX (4096) aborts the search."""
    name = "x" * (4096 - len(str(core.sim.firmware_dir)) - 1)
    assert core.write("firmware", name) == 0
    assert errname(core.write("state", "start")) == "ENAMETOOLONG"


def test_one_write_delivers_at_most_a_page(core: Core) -> None:
    """§1.2: a longer write is cut to PAGE_SIZE and reported short."""
    result = core.sim.write_result(f"{core.sysfs}/firmware", "y" * 5000)
    assert (result.errno, result.count) == (0, 4096)


@pytest.mark.parametrize("setup", ["running", "crashed"])
def test_firmware_write_is_ebusy_unless_offline(core: Core, setup: str) -> None:
    core.boot()
    if setup == "crashed":
        assert core.write("recovery", "disabled") == 0
        core.crash()
        assert core.wait_state("crashed") == "crashed"
    assert errname(core.write("firmware", "m4-crash.elf")) == "EBUSY"
    assert core.attr("firmware") == "m4-good.elf\n"


def test_firmware_class_path_is_the_search_dir(core: Core) -> None:
    """§5.1: /sys/module/firmware_class/parameters/path names the directory
    the emulated kernel searches."""
    param = "/sys/module/firmware_class/parameters/path"
    assert core.sim.read(param) == f"{core.sim.firmware_dir}\n"


STM32_IMAGES = sorted(n for n, f in FIXTURES.items()
                      if f.core == "m4" and f.kind in ("good", "behaviour", "broken"))


@pytest.mark.parametrize("image", STM32_IMAGES)
def test_start_errno_of_each_test_image(core: Core, image: str) -> None:
    """tests/firmware/fixtures.py: what `start` returns for each image on the
    STM32 M4 (fw_format ELF)."""
    expected = FIXTURES[image].kernel_errno or 0
    assert core.write("firmware", image) == 0
    assert errname(core.write("state", "start")) == errname(expected)
    assert core.state() == ("running" if expected == 0 else "offline")


# -- §1.5 recovery -------------------------------------------------------------


def test_recovery_default_and_modes(core: Core) -> None:
    assert core.attr("recovery") == "enabled\n"
    assert core.write("recovery", "disabled\n") == 0
    assert core.attr("recovery") == "disabled\n"
    assert core.write("recovery", "enabled") == 0
    assert core.attr("recovery") == "enabled\n"
    assert core.write("recovery", "recover") == 0  # not crashed: nothing happens
    assert core.attr("recovery") == "enabled\n"
    assert core.state() == "offline"


@pytest.mark.parametrize("text", ["Enabled", "enable", "disabled\n\n", " recover", "yes"])
def test_recovery_garbage_is_einval(core: Core, text: str) -> None:
    assert errname(core.write("recovery", text)) == "EINVAL"


@pytest.mark.parametrize("how", ["recover", "enabled"])
def test_recovery_write_recovers_a_crashed_core_synchronously(core: Core, how: str) -> None:
    """The whole recovery runs inside the write: running when it returns."""
    core.boot()
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert core.write("recovery", how) == 0
    assert core.state() == "running"
    assert core.attr("recovery") == ("disabled\n" if how == "recover" else "enabled\n")


def test_recovery_failure_is_not_reported_and_sticks_offline(core: Core) -> None:
    """§1.5/§2.5: the write succeeds even when the reload fails; the core is
    left offline with power held: start succeeds without booting, stop is
    EINVAL."""
    fw = core.sim.firmware_dir
    (fw / "vanishing.elf").write_bytes((fw / "m4-good.elf").read_bytes())
    core.boot("vanishing.elf")
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    (fw / "vanishing.elf").unlink()
    assert core.write("recovery", "recover") == 0
    assert core.state() == "offline"
    assert core.write("state", "start") == 0
    assert core.state() == "offline"
    assert errname(core.write("state", "stop")) == "EINVAL"


# -- §1.6 coredump -------------------------------------------------------------


def test_coredump_default_and_modes(core: Core) -> None:
    assert core.attr("coredump") == "disabled\n"
    for mode in ("enabled", "inline\n", "disabled"):
        assert core.write("coredump", mode) == 0
        assert core.attr("coredump") == mode.strip() + "\n"


@pytest.mark.parametrize("text", ["default", "Enabled", "inline\n\n", "on"])
def test_coredump_garbage_is_einval(core: Core, text: str) -> None:
    assert errname(core.write("coredump", text)) == "EINVAL"


@pytest.mark.parametrize("text", ["enabled", "garbage"])
def test_coredump_write_while_crashed_is_ebusy_before_the_keyword(core: Core, text: str) -> None:
    core.boot()
    assert core.write("recovery", "disabled") == 0
    core.crash()
    assert core.wait_state("crashed") == "crashed"
    assert errname(core.write("coredump", text)) == "EBUSY"


# -- §1.2, §1.7, §1.8 read-only attributes -----------------------------------------


def test_name_and_fw_format(core: Core) -> None:
    assert core.attr("name") == "m4\n"
    assert core.attr("fw_format") == "ELF\n"


@pytest.mark.parametrize("attr", ["name", "fw_format"])
def test_read_only_attributes_refuse_open_for_writing_even_for_root(core: Core,
                                                                    attr: str) -> None:
    result = core.sim.write_result(f"{core.sysfs}/{attr}", "x")
    assert (errname(result.errno), result.stage) == ("EACCES", "open")
    shell = core.sim.run(f"echo x > {core.sysfs}/{attr}")
    assert shell.returncode != 0 and "Permission denied" in shell.stderr


def test_echo_reports_the_kernel_errno(core: Core) -> None:
    """What a shell user sees: bash's echo fails with the store's errno."""
    shell = core.sim.run(f"echo bogus > {core.sysfs}/state")
    assert shell.returncode != 0 and "Invalid argument" in shell.stderr


def test_nothing_can_be_created_or_removed_in_sysfs(core: Core) -> None:
    sim = core.sim
    assert sim.run(f"echo x > {core.sysfs}/newfile").returncode != 0
    assert sim.run(f"mkdir {core.sysfs}/newdir").returncode != 0
    assert not sim.exists(f"{core.sysfs}/newfile")
    assert not sim.exists(f"{core.sysfs}/newdir")
    assert sim.write(f"{core.sysfs}/newfile", "x") == errno.ENOENT
