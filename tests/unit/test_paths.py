"""Every location from the environment (HACKING.md, "Paths"): defaults, overrides,
systemd's colon-separated `*_DIRECTORY` lists."""

from __future__ import annotations

from pathlib import Path

from rprocd.paths import Paths


def test_defaults_without_environment() -> None:
    paths = Paths.from_environ({})
    assert paths.sysfs == Path("/sys")
    assert paths.debugfs == Path("/sys/kernel/debug")
    assert paths.firmware_root == Path("/lib/firmware")
    assert paths.config_dir == Path("/etc/rprocd")
    assert paths.state_dir == Path("/var/lib/rprocd")
    assert paths.runtime_dir == Path("/run/rprocd")
    assert paths.kmsg == Path("/dev/kmsg")
    assert paths.config_file == Path("/etc/rprocd/rprocd.conf")
    assert paths.config_dropins == Path("/etc/rprocd/rprocd.conf.d")


def test_overrides(tmp_path: Path) -> None:
    env = {
        "RPROCD_SYSFS": f"{tmp_path}/sys",
        "RPROCD_DEBUGFS": f"{tmp_path}/debug",
        "RPROCD_FIRMWARE_ROOT": f"{tmp_path}/fw",
        "RPROCD_INTERFACES_DIR": f"{tmp_path}/xml",
        "RPROCD_KMSG": f"{tmp_path}/kmsg",
        "CONFIGURATION_DIRECTORY": f"{tmp_path}/etc:/other",
        "STATE_DIRECTORY": f"{tmp_path}/state",
        "RUNTIME_DIRECTORY": f"{tmp_path}/run:{tmp_path}/run2",
    }
    paths = Paths.from_environ(env)
    assert paths.sysfs == tmp_path / "sys"
    assert paths.debugfs == tmp_path / "debug"
    assert paths.firmware_root == tmp_path / "fw"
    assert paths.interfaces_dir == tmp_path / "xml"
    assert paths.kmsg == tmp_path / "kmsg"
    assert paths.config_dir == tmp_path / "etc"  # the first entry is ours
    assert paths.state_dir == tmp_path / "state"
    assert paths.runtime_dir == tmp_path / "run"


def test_empty_values_mean_the_default() -> None:
    paths = Paths.from_environ({"RPROCD_KMSG": "", "STATE_DIRECTORY": "", "RPROCD_SYSFS": ""})
    assert paths.kmsg == Path("/dev/kmsg")
    assert paths.state_dir == Path("/var/lib/rprocd")
    assert paths.sysfs == Path("/sys")


def test_paths_built_by_hand_get_the_kernel_log_default(tmp_path: Path) -> None:
    """Tests construct Paths field by field; the kernel log is optional there."""
    paths = Paths(sysfs=tmp_path, debugfs=tmp_path, firmware_root=tmp_path,
                  config_dir=tmp_path, state_dir=tmp_path, runtime_dir=tmp_path,
                  interfaces_dir=tmp_path)
    assert paths.kmsg == Path("/dev/kmsg")


def test_the_manager_reads_crash_types_from_paths_kmsg(tmp_path: Path) -> None:
    """Manager hands `Paths.kmsg` to the kernel log reader (a FIFO stands in)."""
    import os

    from rprocd import config
    from rprocd.manager import Manager

    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "remoteproc").mkdir(parents=True)
    paths = Paths.from_environ({"RPROCD_SYSFS": str(sysfs), "RPROCD_KMSG": str(fifo),
                                "STATE_DIRECTORY": str(tmp_path / "state"),
                                "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")})
    manager = Manager(paths, config.load(paths), boot_id_file=tmp_path / "no-boot-id")
    try:
        crash_types = manager._crash.crash_types
        assert crash_types.path == fifo and crash_types.active
    finally:
        manager.close()


def test_interfaces_from_the_checkout_only_when_it_holds_the_xml(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Installed, the package's neighbour `dbus/` is dbus-python's package
    (/usr/lib/python3/dist-packages/dbus on Debian), not our XML: the default
    is then the installed /usr/share/dbus-1/interfaces."""
    import rprocd.paths

    neighbour = tmp_path / "dbus"
    (neighbour / "__init__.py").parent.mkdir()
    (neighbour / "__init__.py").write_text("")
    monkeypatch.setattr(rprocd.paths, "_REPO_INTERFACES", neighbour)
    assert Paths.from_environ({}).interfaces_dir == Path("/usr/share/dbus-1/interfaces")
    (neighbour / "org.rprocd1.Manager.xml").write_text("<node/>")
    assert Paths.from_environ({}).interfaces_dir == neighbour
    # In this checkout: the repository's dbus/.
    monkeypatch.undo()
    assert Paths.from_environ({}).interfaces_dir == \
        Path(rprocd.paths.__file__).resolve().parents[1] / "dbus"
