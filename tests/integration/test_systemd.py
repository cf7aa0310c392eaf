"""The systemd units as systemd sees them, and the daemon under their limits.

- `systemd-analyze verify` on the installed units prints nothing (it checks
  keys, the Exec binaries inside the install root, and the man pages named in
  Documentation=), and the unit graph with the host's own units (dbus.socket,
  sysinit.target, poweroff.target...) has no ordering cycle.
- `systemd-analyze security` rates rprocd.service "OK" or better.
- The halt/poweroff-but-not-reboot design holds in the unit files.
- The daemon runs under what the sandbox takes away and a test can reproduce
  without a service manager: no capability but CAP_SYSLOG, no new privileges, and no
  writable+executable memory (prctl PR_SET_MDWE, the kernel's form of
  MemoryDenyWriteExecute=; systemd's seccomp version also refuses mprotect()
  adding PROT_EXEC to any mapping, MDWE only to one that was never executable).
  Once on a private bus with no cores, once on the emulated board.
  Not reproduced here: the mount namespace (ProtectSystem=strict,
  ReadWritePaths=), SystemCallFilter= and RestrictAddressFamilies=; they need
  systemd as the service manager.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from test_api_board import board, needs_sim

    # `installed`: the module-scoped fixture with the tree install.sh laid out.
    from test_packaging import UNITDIR, UNITS, installed, unit_sections  # noqa: F401
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import board, needs_sim
    from tests.integration.test_packaging import (  # noqa: F401
        UNITDIR,
        UNITS,
        installed,
        unit_sections,
    )

REPO = Path(__file__).resolve().parents[2]
needs_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                   reason="needs systemd-analyze")


@needs_analyze
def test_verify_prints_nothing(installed: Path):
    units = [str(Path(UNITDIR.lstrip("/")) / unit) for unit in UNITS]
    # --root: Exec paths resolve inside the install; MANPATH: Documentation=man:
    # pages are looked up in the installed man tree (then the system's).
    env = {**os.environ, "MANPATH": f"{installed}/usr/share/man:/usr/share/man"}
    out = subprocess.run(["systemd-analyze", "verify", f"--root={installed}", *units],
                         cwd=installed, capture_output=True, text=True, env=env)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    # verify does check: a unit whose command is missing is reported.
    (installed / "usr/bin/rprocd").rename(installed / "usr/bin/rprocd.away")
    try:
        out = subprocess.run(["systemd-analyze", "verify", f"--root={installed}", units[0]],
                             cwd=installed, capture_output=True, text=True, env=env)
        assert "/usr/bin/rprocd is not executable" in out.stderr
    finally:
        (installed / "usr/bin/rprocd.away").rename(installed / "usr/bin/rprocd")


@needs_analyze
def test_no_ordering_cycle_with_the_systems_units(installed: Path, tmp_path: Path):
    """Load our units beside the host's (dbus.socket, sysinit.target, the
    shutdown targets) with the compatibility units enabled as the packages
    enable them, and let verify build the start jobs of the boot and shutdown
    targets. Only the missing Exec binaries (installed elsewhere) may be reported."""
    units = tmp_path / "units"
    shutil.copytree(installed / UNITDIR.lstrip("/"), units, symlinks=True)
    wants = units / "sysinit.target.wants"
    wants.mkdir()
    for unit in ("st-m4firmware-load.service", "st-m33firmware-load.service"):
        (wants / unit).symlink_to(f"../{unit}")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}  # trailing ':' keeps the host's
    targets = ["sysinit.target", "multi-user.target", "poweroff.target", "halt.target",
               "reboot.target", "rprocd.service", "st-m33firmware-load.service"]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *targets],
                         capture_output=True, text=True, env=env)
    problems = [line for line in out.stderr.splitlines()
                if not re.search(r"Command \S+ is not executable", line)]
    assert not problems, out.stderr


@needs_analyze
def test_security_exposure_is_ok_or_better(installed: Path):
    unit = installed / UNITDIR.lstrip("/") / "rprocd.service"
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True)
    match = re.search(r"Overall exposure level for rprocd.service: ([\d.]+) (\w+)", out.stdout)
    assert match, out.stdout + out.stderr
    level, word = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security: {level} {word}")
    assert word in ("SAFE", "OK"), out.stdout


def values(unit: str, section: str, key: str) -> list[str]:
    parsed = unit_sections(REPO / "systemd" / unit)
    return [v for k, v in parsed.get(section, []) if k == key]


def words(unit: str, section: str, key: str) -> set[str]:
    return {w for v in values(unit, section, key) for w in v.split()}


def test_the_daemon_unit_contract():
    assert values("rprocd.service", "Service", "Type") == ["notify"]
    assert values("rprocd.service", "Service", "BusName") == ["org.rprocd1"]
    assert values("rprocd.service", "Service", "ExecStart") == ["/usr/bin/rprocd"]
    assert values("rprocd.service", "Service", "WatchdogSec") == ["30s"]
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert values("rprocd.service", "Service", key) == ["rprocd"]
    # Started by udev and bus activation only: no [Install], so a board
    # without a coprocessor never runs it.
    assert "Install" not in unit_sections(REPO / "systemd" / "rprocd.service")
    rule = (REPO / "etc/udev/rules.d/60-rprocd.rules").read_text()
    assert 'SUBSYSTEM=="remoteproc", TAG+="systemd", ENV{SYSTEMD_WANTS}+="rprocd.service"' in rule
    service = (REPO / "dbus/org.rprocd1.service").read_text()
    assert "SystemdService=rprocd.service" in service
    # /sys must stay writable: ProtectKernelTunables= would make it read-only.
    assert not values("rprocd.service", "Service", "ProtectKernelTunables")
    assert values("rprocd.service", "Service", "ProtectSystem") == ["strict"]
    # One capability, one device: the kernel log, where the crash type is.
    assert values("rprocd.service", "Service", "CapabilityBoundingSet") == ["CAP_SYSLOG"]
    assert values("rprocd.service", "Service", "ProtectKernelLogs") == ["no"]
    assert values("rprocd.service", "Service", "DeviceAllow") == ["/dev/kmsg r"]
    assert values("rprocd.service", "Service", "BindReadOnlyPaths") == ["-/dev/kmsg"]
    assert "-/lib/firmware/rprocd" in words("rprocd.service", "Service", "ReadWritePaths")
    assert words("rprocd.service", "Service", "RestrictAddressFamilies") == {
        "AF_UNIX", "AF_NETLINK"}


def test_nothing_is_stopped_on_reboot_and_everything_on_poweroff():
    """The design of rprocd-poweroff.service and the compatibility units, as
    systemd will read it (see the comments in systemd/*.service)."""
    # The daemon leaves with the shutdown transaction, after its clients.
    assert words("rprocd.service", "Unit", "Conflicts") == {"shutdown.target"}
    assert "shutdown.target" in words("rprocd.service", "Unit", "Before")
    # The stop unit is ordered after the daemon (so it starts once the daemon's
    # stop job is done) and is pulled only by halt and poweroff.
    unit = "rprocd-poweroff.service"
    assert values(unit, "Unit", "DefaultDependencies") == ["no"]
    assert "rprocd.service" in words(unit, "Unit", "After")
    assert "Install" not in unit_sections(REPO / "systemd" / unit)  # static wants instead
    # (test_packaging checks the installed halt/poweroff.target.wants links and
    # that no reboot.target.wants or kexec.target.wants exists.)
    # The compatibility units are never stopped by a shutdown (no implicit
    # Conflicts=shutdown.target) and do not inherit rprocd's stop (Wants=, not
    # Requires=/BindsTo=/PartOf=), so their ExecStop= runs only when asked.
    for compat in ("st-m4firmware-load.service", "st-m33firmware-load.service"):
        assert values(compat, "Unit", "DefaultDependencies") == ["no"]
        assert not words(compat, "Unit", "Conflicts")
        for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
            assert not values(compat, "Unit", key), (compat, key)
        assert "rprocd.service" in words(compat, "Unit", "Wants")
        assert "rprocd.service" in words(compat, "Unit", "After")
        assert values(compat, "Service", "Type") == ["oneshot"]
        assert values(compat, "Service", "RemainAfterExit") == ["yes"]
        assert values(compat, "Install", "WantedBy") == ["sysinit.target"]
        core = compat.split("firmware")[0].removeprefix("st-")
        start = values(compat, "Service", "ExecStart")[0]
        stop = values(compat, "Service", "ExecStop")[0]
        assert start.lstrip("-") == f"/sbin/st-{core}firmware-load-default.sh start"
        assert stop.lstrip("-") == f"/sbin/st-{core}firmware-load-default.sh stop"


# --- the daemon with CAP_SYSLOG only and without W+X memory -------------------------

ONLY_SYSLOG = f"{1 << 34:016x}"  # CAP_SYSLOG is capability 34

# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) as the first thing a child
# interpreter does (Linux >= 6.3); it is inherited by everything loaded later
# (libffi, GLib, PyGObject) and cannot be undone, hence children only.
SET_MDWE = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed: errno %d' % ctypes.get_errno())\n"
)
# ... then run a module like `python -m`.
MDWE_RUNNER = SET_MDWE + (
    "import runpy\n"
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n"
)


def mdwe_supported() -> bool:
    return subprocess.run([sys.executable, "-c", SET_MDWE], capture_output=True).returncode == 0


needs_mdwe = pytest.mark.skipif(not mdwe_supported(),
                                reason="kernel without PR_SET_MDWE (Linux < 6.3)")


@needs_mdwe
def test_mdwe_is_enforced_here():
    """The checks below mean something: with MDWE a W+X mapping is refused."""
    out = subprocess.run([sys.executable, "-c", SET_MDWE + (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n")], capture_output=True, text=True)
    assert out.stdout == "refused\n", out.stderr


BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def restricted(*argv: str) -> list[str]:
    """What rprocd.service takes away that a process can take away itself:
    every capability but CAP_SYSLOG (CapabilityBoundingSet=), new privileges
    (NoNewPrivileges=), and W+X memory (MemoryDenyWriteExecute=, via MDWE)."""
    return ["setpriv", "--no-new-privs", "--bounding-set=-all,+syslog", "--inh-caps=-all",
            "--ambient-caps=-all", sys.executable, "-c", MDWE_RUNNER, *argv]


def assert_restricted(pid: int) -> None:
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"^CapEff:\s+{ONLY_SYSLOG}$", status, re.M), status
    assert re.search(rf"^CapBnd:\s+{ONLY_SYSLOG}$", status, re.M), status
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status


READ_KMSG = (
    "import os\n"
    "fd = os.open('/dev/kmsg', os.O_RDONLY | os.O_NONBLOCK)\n"
    "print(os.read(fd, 8192).decode(errors='replace').split(';', 1)[-1])\n"
)


@pytest.mark.skipif(not Path("/dev/kmsg").exists() or os.geteuid() != 0,
                    reason="needs root and the kernel log device /dev/kmsg")
def test_the_units_capabilities_read_the_kernel_log():
    """Crash types are only in the kernel log. With the unit's bounding set
    (CAP_SYSLOG only) root opens /dev/kmsg also where kernel.dmesg_restrict
    is 1; with no capability at all it would not, there."""
    base = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all"]
    unit = subprocess.run([*base, "--bounding-set=-all,+syslog", sys.executable, "-c",
                           READ_KMSG], capture_output=True, text=True)
    assert unit.returncode == 0 and unit.stdout.strip(), unit.stderr
    bare = subprocess.run([*base, "--bounding-set=-all", sys.executable, "-c", READ_KMSG],
                          capture_output=True, text=True)
    restricted_log = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    assert (bare.returncode != 0) == restricted_log, bare.stderr


def stop(daemon: subprocess.Popen) -> int:
    daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait()


def wait_for_bus_name(env: dict[str, str], daemon: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        owner = subprocess.run(["busctl", f"--address={env['DBUS_SYSTEM_BUS_ADDRESS']}",
                                "status", "org.rprocd1"], capture_output=True, text=True)
        if owner.returncode == 0:
            return
        assert daemon.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "org.rprocd1 never appeared:\n" + log.read_text()
        time.sleep(0.1)


@needs_mdwe
@pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("dbus-daemon")
                         and shutil.which("busctl")) or os.geteuid() != 0,
                    reason="needs root, setpriv, dbus-daemon and busctl")
def test_daemon_serves_the_bus_without_capabilities_and_wx_memory(tmp_path: Path):
    """No board needed: a board without cores, a private system bus. GLib's
    loop, Gio's D-Bus server (method handlers, property reads, signals) and the
    signal handlers all run under the restrictions."""
    (tmp_path / "bus.conf").write_text(BUS_CONFIG.format(path=tmp_path / "bus"))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", "--print-address=1",
                            f"--config-file={tmp_path / 'bus.conf'}"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        for name in ("conf", "state", "run", "sys"):
            (tmp_path / name).mkdir()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address,
               "CONFIGURATION_DIRECTORY": str(tmp_path / "conf"),
               "STATE_DIRECTORY": str(tmp_path / "state"),
               "RUNTIME_DIRECTORY": str(tmp_path / "run"), "RPROCD_SYSFS": str(tmp_path / "sys")}
        log = tmp_path / "daemon.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(restricted("rprocd"), env=env, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            wait_for_bus_name(env, daemon, log)
            assert_restricted(daemon.pid)
            ctl = [sys.executable, "-m", "rprocd.ctl"]
            for args, status in ((["list"], 0), (["reload"], 0), (["status", "m4"], 3)):
                result = subprocess.run([*ctl, *args], env=env, capture_output=True, text=True)
                assert result.returncode == status, result.stderr + log.read_text()
            assert daemon.poll() is None, log.read_text()
        finally:
            code = stop(daemon)
        assert code == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        bus.terminate()
        bus.wait(timeout=10)


@needs_sim
@needs_mdwe
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
def test_daemon_works_without_capabilities_and_writable_executable_memory():
    """rprocd.service sets CapabilityBoundingSet=CAP_SYSLOG, NoNewPrivileges=yes
    and MemoryDenyWriteExecute=yes. Run the daemon so restricted on the emulated
    board and drive it through the bus: D-Bus method handlers, GLib callbacks,
    worker threads and sysfs writes all happen under the restrictions."""
    config = "[Processor m4]\nFirmware=m4-good.elf\n"
    with board("stm32mp157f-dk", daemon=False, firmware=("m4-good.elf",),
               config=config) as sim:
        env = {**os.environ, **sim.env}
        log = sim.tmp / "restricted-daemon.log"
        with open(log, "w") as out:
            daemon = subprocess.Popen(restricted("rprocd"), env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            sim._wait_for_name()
            assert_restricted(daemon.pid)
            for args, state in ((("start", "m4"), "running"), (("restart", "m4"), "running"),
                                (("stop", "m4"), "offline")):
                result = sim.rprocctl(*args)
                assert result.returncode == 0, result.stderr + log.read_text()
                assert result.stdout.startswith(f"m4: {state}"), result.stdout
            assert sim.rprocctl("status", "m4").returncode == 0
            assert daemon.poll() is None, log.read_text()
        finally:
            code = stop(daemon)
        assert code == 0, log.read_text()
