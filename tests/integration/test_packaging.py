"""Packaging: scripts/install.sh, the Debian package, the Yocto recipe, the man
pages, the completion and the ST shims.

Every installed file must land where the program that reads it looks (systemd,
dbus-daemon, polkitd, udev, journalctl, man, bash-completion, Python), so the
checks ask those programs where they read when they can say it. Man pages and
completion are hand-written; tests here hold them to the code (config keys,
rprocctl commands and exit codes, D-Bus members, MESSAGE_IDs).

`install_tree()` and the fixture `installed` are shared with test_systemd.py and
test_journal.py. The Debian build (once per run) copies the tree to a temporary
directory; nothing is written into the repository. The built packages are then
installed on this machine with `apt-get install ./rprocd_*.deb` (as root; apt
resolves the Depends from the archive), checked where Debian's systemd, dbus,
polkitd, udev and journalctl read, run on the emulated board (rprocd-sim with
RPROCD_SIM_DAEMON_CMD=/usr/bin/rprocd), and purged: the teardown checks that the
machine is left as it was found.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from test_api_board import board, needs_sim
except ModuleNotFoundError:  # tests/integration became a package
    from tests.integration.test_api_board import board, needs_sim

REPO = Path(__file__).resolve().parents[2]
# Tools run with the system's PATH: a venv or pyenv python first in PATH would
# otherwise be the interpreter of Debian's build (pybuild) and of install.sh.
SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = SYSTEM_PATH
    env.update(extra)
    return env


def pkgconfig(module: str, variable: str, default: str) -> str:
    out = subprocess.run(["pkg-config", f"--variable={variable}", module],
                         capture_output=True, text=True, env=tool_env())
    return out.stdout.strip() or default


UNITDIR = pkgconfig("systemd", "systemdsystemunitdir", "/usr/lib/systemd/system")
UDEVRULESDIR = pkgconfig("udev", "udevdir", "/usr/lib/udev") + "/rules.d"
COMPLETIONDIR = pkgconfig("bash-completion", "completionsdir",
                          "/usr/share/bash-completion/completions")

# Every file install.sh lays down besides the Python package, by where it goes.
UNITS = ["rprocd.service", "rprocd-poweroff.service",
         "st-m4firmware-load.service", "st-m33firmware-load.service"]
DATA_FILES = [
    *(f"{UNITDIR}/{unit}" for unit in UNITS),
    f"{UNITDIR}/halt.target.wants/rprocd-poweroff.service",
    f"{UNITDIR}/poweroff.target.wants/rprocd-poweroff.service",
    "/usr/libexec/rprocd/rprocd-poweroff",
    "/usr/lib/systemd/catalog/rprocd.catalog",
    "/usr/lib/systemd/system-preset/90-rprocd-st-compat.preset",
    f"{UDEVRULESDIR}/60-rprocd.rules",
    "/usr/share/dbus-1/system.d/org.rprocd1.conf",
    "/usr/share/dbus-1/system-services/org.rprocd1.service",
    "/usr/share/dbus-1/interfaces/org.rprocd1.Manager.xml",
    "/usr/share/dbus-1/interfaces/org.rprocd1.Processor.xml",
    "/usr/share/polkit-1/actions/org.rprocd1.policy",
    "/usr/share/doc/rprocd/examples/50-rprocd-group.rules",
    "/etc/rprocd/rprocd.conf",
    "/etc/rprocd/rprocd.conf.d/50-st-compat.conf",
    "/usr/share/man/man1/rprocctl.1",
    "/usr/share/man/man5/rprocd.conf.5",
    "/usr/share/man/man8/rprocd.8",
    f"{COMPLETIONDIR}/rprocctl",
    "/sbin/st-m4firmware-load-default.sh",
    "/sbin/st-m33firmware-load-default.sh",
]
DATA_DIRS = ["/etc/rprocd/rprocd.conf.d", "/lib/firmware/rprocd"]
COMMANDS = ["/usr/bin/rprocd", "/usr/bin/rprocctl", "/usr/bin/rprocd-sim"]


def install_tree(dest: Path, *args: str) -> subprocess.CompletedProcess:
    """`scripts/install.sh --destdir DEST ARGS...`, checked."""
    out = subprocess.run(["sh", str(REPO / "scripts" / "install.sh"), "--destdir", str(dest),
                          *args], capture_output=True, text=True, env=tool_env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("destdir")
    install_tree(dest)
    return dest


def site_dir(root: Path) -> Path:
    """Where install.sh put the Python package (Debian's python:
    /usr/lib/python3/dist-packages; others: /usr/lib/python3.X/site-packages)."""
    (init,) = root.glob("usr/lib/python3*/*-packages/rprocd/__init__.py")
    return init.parent.parent


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() or p.is_symlink()}


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            assert current is not None, f"{path}: {line} outside a section"
            current.append((key.strip(), value.strip()))
    return sections


# --- install.sh -----------------------------------------------------------------


def test_every_file_lands_where_its_reader_looks(installed: Path):
    have = files_under(installed)
    for path in DATA_FILES + COMMANDS:
        assert path in have, f"{path} not installed; installed: {sorted(have)}"
    for path in DATA_DIRS:
        assert (installed / path.lstrip("/")).is_dir(), path
    # Nothing else outside the Python package: a stray file is a layout change.
    site = "/" + str(site_dir(installed).relative_to(installed))
    python = {p for p in have if p.startswith(site + "/")}
    assert have - python == set(DATA_FILES + COMMANDS)

    # systemd: the unit directory is on the manager's search path.
    paths = subprocess.run(["systemd-analyze", "unit-paths"], capture_output=True, text=True)
    if paths.returncode == 0:
        assert UNITDIR in paths.stdout.split()
    # dbus-daemon: the system bus reads /usr/share/dbus-1/system.d (relative
    # includedir in system.conf) and the standard system service directory.
    system_conf = Path("/usr/share/dbus-1/system.conf")
    if system_conf.exists():
        text = system_conf.read_text()
        assert "<includedir>system.d</includedir>" in text
        assert "<standard_system_servicedirs/>" in text
    # The poweroff stop is wanted by halt/poweroff only, as a relative link.
    for target in ("halt", "poweroff"):
        link = installed / UNITDIR.lstrip("/") / f"{target}.target.wants/rprocd-poweroff.service"
        assert os.readlink(link) == "../rprocd-poweroff.service"
    assert not list(installed.rglob("reboot.target.wants")) and not list(
        installed.rglob("kexec.target.wants"))
    # Executables keep their mode; data files are not executable.
    for path in ("/usr/libexec/rprocd/rprocd-poweroff", "/sbin/st-m4firmware-load-default.sh",
                 "/sbin/st-m33firmware-load-default.sh", *COMMANDS):
        assert os.access(installed / path.lstrip("/"), os.X_OK), path
    for path in DATA_FILES:
        full = installed / path.lstrip("/")
        if not full.is_symlink() and not path.startswith(("/sbin/", "/usr/libexec/")):
            assert full.stat().st_mode & 0o777 == 0o644, path


def test_installed_files_match_the_sources(installed: Path):
    same = {
        "etc/rprocd/rprocd.conf": "/etc/rprocd/rprocd.conf",
        "shims/50-st-compat.conf": "/etc/rprocd/rprocd.conf.d/50-st-compat.conf",
        "systemd/rprocd.catalog": "/usr/lib/systemd/catalog/rprocd.catalog",
        "etc/udev/rules.d/60-rprocd.rules": f"{UDEVRULESDIR}/60-rprocd.rules",
        "dbus/org.rprocd1.conf": "/usr/share/dbus-1/system.d/org.rprocd1.conf",
        "dbus/org.rprocd1.policy": "/usr/share/polkit-1/actions/org.rprocd1.policy",
        "shims/st-m4firmware-load-default.sh": "/sbin/st-m33firmware-load-default.sh",
    }
    for source, target in same.items():
        assert (installed / target.lstrip("/")).read_bytes() == (REPO / source).read_bytes()
    # With the default layout the units are installed unchanged.
    for unit in UNITS:
        assert (installed / UNITDIR.lstrip("/") / unit).read_text() == \
            (REPO / "systemd" / unit).read_text()


def test_installed_commands_run_the_installed_package(installed: Path):
    """The entry points start the installed copy, not the checkout, and name the
    system interpreter (the one a package's dependencies are installed for).
    PYTHONPATH puts the installed tree before the venv's editable install (whose
    finder comes last in sys.meta_path); cwd keeps the checkout off sys.path."""
    env = {**os.environ, "PYTHONPATH": str(site_dir(installed))}
    for command, arg, expect in (("rprocd", "--version", "rprocd 0.1.0"),
                                 ("rprocctl", "--help", "usage: rprocctl")):
        script = installed / "usr/bin" / command
        assert script.read_text().startswith("#!/usr/bin/python3\n")
        out = subprocess.run([sys.executable, str(script), arg], capture_output=True,
                             text=True, env=env, cwd=installed, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(expect), out.stdout
    check = subprocess.run(
        [sys.executable, "-c", "import rprocd.daemon, rprocd.ctl; print(rprocd.__file__)"],
        capture_output=True, text=True, env=env, cwd=installed, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(str(site_dir(installed))), check.stdout


def test_install_layout_variables_and_options(tmp_path: Path):
    """Another PREFIX rewrites the units' command paths; --no-python and
    --no-st-compat leave their parts out (Debian and Yocto use them)."""
    install_tree(tmp_path, "--no-python", "--no-st-compat", "BINDIR=/opt/rp/bin",
                 "LIBEXECDIR=/opt/rp/libexec", "UNITDIR=/usr/lib/systemd/system")
    have = files_under(tmp_path)
    assert not [p for p in have if "python" in p or p.startswith("/opt/rp/bin/")]
    assert not [p for p in have if "st-m" in p or "st-compat" in p]
    units = tmp_path / "usr/lib/systemd/system"
    text = (units / "rprocd.service").read_text()
    assert "ExecStart=/opt/rp/bin/rprocd\n" in text
    assert "ExecReload=/opt/rp/bin/rprocd --check-config\n" in text
    assert "ExecStart=/opt/rp/libexec/rprocd/rprocd-poweroff\n" in \
        (units / "rprocd-poweroff.service").read_text()
    assert (tmp_path / "opt/rp/libexec/rprocd/rprocd-poweroff").exists()
    bad = subprocess.run(["sh", str(REPO / "scripts/install.sh"), "--bogus"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_catalog_and_man_pages_are_found_by_their_readers(installed: Path):
    # journalctl compiles the catalog from <root>/usr/lib/systemd/catalog.
    out = subprocess.run(["journalctl", f"--root={installed}", "--update-catalog"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = subprocess.run(["journalctl", f"--root={installed}", "--list-catalog"],
                            capture_output=True, text=True).stdout
    assert listed.count(" rprocd: ") == 9, listed
    # man finds every page in the installed man tree, and groff renders it cleanly.
    mantree = installed / "usr/share/man"
    for page, section in (("rprocd", "8"), ("rprocctl", "1"), ("rprocd.conf", "5")):
        if shutil.which("man"):
            found = subprocess.run(["man", "-M", str(mantree), "-w", section, page],
                                   capture_output=True, text=True)
            assert found.returncode == 0, found.stderr
            assert found.stdout.strip() == str(mantree / f"man{section}/{page}.{section}")
        if shutil.which("groff"):
            source = mantree / f"man{section}/{page}.{section}"
            render = subprocess.run(
                ["groff", "-man", "-Tutf8", "-ww", "-z", str(source)],
                capture_output=True, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
            assert render.returncode == 0 and render.stderr == "", render.stderr


# --- man pages and completion say what the code does ---------------------------------


def man_text(name: str) -> str:
    """A page's words with roff escapes for '-' undone, for plain searching."""
    return (REPO / "man" / name).read_text().replace("\\-", "-").replace("\\(em", "-")


def ctl_commands() -> list[str]:
    from rprocd import ctl

    parser = ctl.build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return list(sub.choices)


def test_rprocctl_man_page_and_completion_cover_every_command_and_exit_code():
    from rprocd import ctl

    page = man_text("rprocctl.1")
    commands_section = page.split(".SH COMMANDS", 1)[1].split(".SH OPTIONS", 1)[0]
    documented = re.findall(r"^\.TP\n\.(?:B|BR) ([a-z-]+)", commands_section, re.M)
    assert documented == ctl_commands()
    exit_section = page.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    assert [int(c) for c in re.findall(r"^\.B (\d+)$", exit_section, re.M)] == \
        sorted(ctl.EXIT_CODES)
    assert sorted(ctl.EXIT_CODES) == [0, 1, 2, 3, 4, 5, 6]

    completion = (REPO / "completion" / "rprocctl.bash").read_text()
    (words,) = re.findall(r'local commands="([^"]+)"', completion)
    assert words.split() == ctl_commands()
    # bash itself offers them.
    if shutil.which("bash"):
        out = subprocess.run(
            ["bash", "-c", f'source "{REPO}/completion/rprocctl.bash"; COMP_WORDS=(rprocctl re); '
             'COMP_CWORD=1; _rprocctl; echo "${COMPREPLY[@]}"'],
            capture_output=True, text=True)
        assert out.stdout.split() == ["restart", "recover", "reset-failed", "reload"], out.stderr


def test_config_man_page_documents_exactly_the_keys_the_parser_accepts():
    from rprocd import config

    page = man_text("rprocd.conf.5")
    manager, processor = page.split('.SH "[Manager] SECTION"', 1)[1].split(
        '.SH "[Processor NAME] SECTIONS"', 1)
    processor = processor.split(".SH EXAMPLES", 1)[0]

    def keys(section: str) -> list[str]:
        return re.findall(r"^\.TP\n\.(?:BI|BR) ([A-Za-z]+)=", section, re.M)

    assert sorted(keys(manager)) == sorted(config._MANAGER_KEYS)
    assert sorted(keys(processor)) == sorted(config._PROCESSOR_KEYS)
    # The defaults the page states are the parser's.
    defaults = config.ProcessorConfig()
    assert "Default\n.BR no ." in processor.split("AutoStart=", 1)[1]
    assert defaults.auto_start is False and defaults.stop_on_exit is False
    assert defaults.early_boot == "adopt" and defaults.restart == "kernel"
    assert str(config.ManagerConfig().import_directory) in manager


def test_daemon_man_page_covers_the_bus_api_polkit_actions_and_message_ids():
    from rprocd import events

    page = man_text("rprocd.8")
    api = page.split('.SH "D-BUS INTERFACE"', 1)[1].split(".SH AUTHORIZATION", 1)[0]
    for xml in sorted((REPO / "dbus").glob("org.rprocd1.*.xml")):
        for node in ET.parse(xml).iter():
            if node.tag in ("method", "property", "signal"):
                assert re.search(rf"\b{node.get('name')}\b", api), (xml.name, node.get("name"))
    policy = ET.parse(REPO / "dbus" / "org.rprocd1.policy")
    for action in policy.iter("action"):
        assert action.get("id") in page
    ids = {v for k, v in vars(events).items() if k.isupper()}
    journal = page.split(".SH JOURNAL", 1)[1].split(".SH", 1)[0]
    assert set(re.findall(r"^\.B ([0-9a-f]{32})$", journal, re.M)) == ids
    # The shutdown behaviour the page promises is the one the units implement.
    assert "reboot.target" in page and "rprocd-poweroff.service" in page


# --- Debian package -------------------------------------------------------------------

DEB_EXCLUDE = (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
               "build", "dist", "debian")


def copy_tree(dest: Path) -> None:
    """The working tree (not only committed files) without caches and builds."""
    def ignore(_dir: str, names: list[str]) -> list[str]:
        return [n for n in names if n in DEB_EXCLUDE or n.endswith(".egg-info")]

    shutil.copytree(REPO, dest, symlinks=True, ignore=ignore)


needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-buildpackage"),
                                reason="not a Debian system")


@pytest.fixture(scope="module")
def debian_packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(rprocd.deb, rprocd-st-compat.deb), built once per run from a copy of
    the working tree with packaging/debian as debian/."""
    out = tmp_path_factory.mktemp("deb")
    src = out / "rprocd"
    copy_tree(src)
    shutil.copytree(REPO / "packaging" / "debian", src / "debian", symlinks=True)
    deps = subprocess.run(["dpkg-checkbuilddeps"], cwd=src, capture_output=True, text=True,
                          env=tool_env())
    assert deps.returncode == 0, \
        f"{deps.stderr.strip()}: scripts/setup.sh should install these Debian packages"
    build = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                           capture_output=True, text=True, env=tool_env(), timeout=600)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    return out / "rprocd_0.1.0_all.deb", out / "rprocd-st-compat_0.1.0_all.deb"


DEB_PACKAGES = ("rprocd", "rprocd-st-compat")
DEB_UNITS = "/lib/systemd/system"
# Where Debian 12's readers look, and what each package puts there.
DEB_FILES = {
    "rprocd": [
        "/usr/bin/rprocd", "/usr/bin/rprocctl",
        "/usr/lib/python3/dist-packages/rprocd/daemon.py",
        f"{DEB_UNITS}/rprocd.service", f"{DEB_UNITS}/rprocd-poweroff.service",
        f"{DEB_UNITS}/halt.target.wants/rprocd-poweroff.service",
        f"{DEB_UNITS}/poweroff.target.wants/rprocd-poweroff.service",
        "/usr/libexec/rprocd/rprocd-poweroff",
        "/usr/lib/systemd/catalog/rprocd.catalog",
        "/lib/udev/rules.d/60-rprocd.rules",
        "/usr/share/dbus-1/system.d/org.rprocd1.conf",
        "/usr/share/dbus-1/system-services/org.rprocd1.service",
        "/usr/share/dbus-1/interfaces/org.rprocd1.Manager.xml",
        "/usr/share/dbus-1/interfaces/org.rprocd1.Processor.xml",
        "/usr/share/polkit-1/actions/org.rprocd1.policy",
        "/etc/rprocd/rprocd.conf", "/etc/rprocd/rprocd.conf.d", "/lib/firmware/rprocd",
        "/usr/share/man/man8/rprocd.8.gz", "/usr/share/man/man1/rprocctl.1.gz",
        "/usr/share/man/man5/rprocd.conf.5.gz",
        "/usr/share/bash-completion/completions/rprocctl",
    ],
    "rprocd-st-compat": [
        f"{DEB_UNITS}/st-m4firmware-load.service", f"{DEB_UNITS}/st-m33firmware-load.service",
        "/sbin/st-m4firmware-load-default.sh", "/sbin/st-m33firmware-load-default.sh",
        "/etc/rprocd/rprocd.conf.d/50-st-compat.conf",
        # Debian 12's systemd owns /lib/systemd/system-preset (not /usr/lib/...).
        "/lib/systemd/system-preset/90-rprocd-st-compat.preset",
    ],
}



@needs_dpkg
def test_debian_package_builds_and_lists_the_installed_layout(
        debian_packages: tuple[Path, Path], tmp_path: Path):
    main, compat = debian_packages

    def contents(deb: Path) -> set[str]:
        out = subprocess.run(["dpkg", "-c", str(deb)], capture_output=True, text=True, check=True)
        return {line.split()[5].removeprefix(".") for line in out.stdout.splitlines()}

    have = {path.rstrip("/") for path in contents(main)}
    for path in DEB_FILES["rprocd"]:
        assert path in have, f"{path} not in {main.name}"
    # The emulator is a development tool, not part of the package.
    assert not [p for p in have if "sim" in Path(p).parts or p.endswith("rprocd-sim")]
    assert contents(compat) >= set(DEB_FILES["rprocd-st-compat"])
    fields = subprocess.run(["dpkg-deb", "-f", str(main), "Depends"], capture_output=True,
                            text=True, check=True).stdout
    for dep in ("python3-gi", "python3-pydbus", "python3-pyudev", "python3-systemd",
                "python3-pyelftools"):
        assert dep in fields, fields
    # The compatibility units are enabled on installation, as ST ships them;
    # the daemon's unit is static and started by udev, not by the package.
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(compat), str(control)], check=True)
    postinst = (control / "postinst").read_text()
    assert "deb-systemd-helper enable 'st-m33firmware-load.service'" in postinst
    assert "deb-systemd-invoke start" not in postinst
    assert (control / "conffiles").read_text().split() == [
        "/etc/rprocd/rprocd.conf.d/50-st-compat.conf"]



# --- the Debian package installed on this machine --------------------------------------

def apt_get(*args: str) -> subprocess.CompletedProcess:
    """apt-get as an administrator runs it (waits for the dpkg lock)."""
    return subprocess.run(["apt-get", "-y", "-o", "DPkg::Lock::Timeout=300", *args],
                          capture_output=True, text=True, timeout=900,
                          env=tool_env(DEBIAN_FRONTEND="noninteractive"), cwd="/")


def dpkg_state(package: str) -> str:
    """dpkg's two-letter state ("ii" installed, "rc" config files left), or ""."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
                         capture_output=True, text=True)
    return out.stdout.strip()


def catalog_ids() -> set[str]:
    """The rprocd MESSAGE_IDs in the machine's compiled journal catalog."""
    out = subprocess.run(["journalctl", "--list-catalog"], capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if " rprocd: " in line}


def installed_daemons() -> list[int]:
    """Processes running the installed daemon (/usr/bin/rprocd)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"/usr/bin/rprocd" in argv[:2]:
            pids.append(int(proc.name))
    return pids


def unit_file_state(unit: str) -> str:
    # --root=/: the unit files on disk, with or without systemd as PID 1.
    return subprocess.run(["systemctl", "--root=/", "is-enabled", unit], capture_output=True,
                          text=True, env=tool_env()).stdout.strip()


@pytest.fixture(scope="module")
def deb_installed(debian_packages: tuple[Path, Path]) -> Iterator[Path]:
    """Both packages installed with `apt-get install ./rprocd_*.deb ...` (apt
    resolves the Depends from the archive), purged again afterwards: the machine
    is left as it was found, which the teardown checks."""
    found = {pkg: dpkg_state(pkg) for pkg in DEB_PACKAGES}
    assert not any(found.values()) or set(found.values()) <= {"un", "pn"}, (
        f"dpkg already knows {found}: this test installs its own build and purges it "
        "afterwards; remove the installed one first (apt-get purge rprocd rprocd-st-compat)")
    main, compat = debian_packages
    try:
        out = apt_get("install", str(main), str(compat))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr
        yield main
    finally:
        out = apt_get("purge", *DEB_PACKAGES)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr
        assert not any(dpkg_state(pkg) in ("ii", "rc") for pkg in DEB_PACKAGES)
        left = [path for files in DEB_FILES.values() for path in files
                if os.path.lexists(path)]
        assert left == [] and not os.path.lexists("/etc/rprocd"), left
        # deb-systemd-helper removed the enable links, systemd's trigger the catalog.
        assert unit_file_state("st-m4firmware-load.service") == ""
        assert catalog_ids() == set()


@needs_dpkg
def test_debian_package_installs_where_its_readers_look(deb_installed: Path):
    from rprocd import events

    for package, files in DEB_FILES.items():
        status = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True).stdout
        assert "Status: install ok installed" in status, status
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                                check=True).stdout.split()
        for path in files:
            assert path in listed, f"{path} not in dpkg -L {package}"
            assert os.path.lexists(path), path
        assert not [p for p in listed if not os.path.lexists(p)]
    assert not os.path.lexists("/usr/bin/rprocd-sim")  # a development tool, not packaged

    # systemd finds the units on disk: the daemon's static (udev and D-Bus
    # start it), ST's enabled as ST ships them; verify is clean on the real system.
    assert unit_file_state("rprocd.service") == "static"
    assert unit_file_state("rprocd-poweroff.service") == "static"
    assert unit_file_state("st-m4firmware-load.service") == "enabled"
    assert unit_file_state("st-m33firmware-load.service") == "enabled"
    units = [f"{DEB_UNITS}/{unit}" for unit in UNITS]
    verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                            text=True, env=tool_env(), cwd="/")
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    # journald: systemd's dpkg trigger compiled the catalog with every MESSAGE_ID.
    assert catalog_ids() == {v for k, v in vars(events).items() if k.isupper()}
    # D-Bus activation hands over to the static unit; man finds the page.
    activation = Path("/usr/share/dbus-1/system-services/org.rprocd1.service").read_text()
    assert "SystemdService=rprocd.service" in activation
    man = subprocess.run(["man", "-w", "8", "rprocd"], capture_output=True, text=True,
                         env=tool_env())
    assert man.stdout.strip() == "/usr/share/man/man8/rprocd.8.gz", man.stderr

    # The commands run on the system's python3 with Debian's bindings (no venv,
    # no PYTHONPATH), and the installed package finds its installed interfaces.
    for argv, expect in ((["/usr/bin/rprocd", "--version"], "rprocd 0.1.0"),
                         (["/usr/bin/rprocctl", "--help"], "usage: rprocctl")):
        out = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), cwd="/")
        assert out.returncode == 0 and out.stdout.startswith(expect), out.stdout + out.stderr
    probe = ("import gi, pydbus, pyudev, systemd.journal, elftools, rprocd.daemon, rprocd.ctl\n"
             "from rprocd.paths import Paths\n"
             "print(rprocd.__file__, Paths.from_environ({}).interfaces_dir)")
    out = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True,
                         env=tool_env(), cwd="/")
    assert out.stdout.split() == ["/usr/lib/python3/dist-packages/rprocd/__init__.py",
                                  "/usr/share/dbus-1/interfaces"], out.stderr

    # Installing started nothing: no remoteproc device here, so udev wants no
    # daemon, and the packages start no unit.
    assert installed_daemons() == []
    if Path("/run/systemd/system").is_dir():
        for unit in UNITS:
            state = subprocess.run(["systemctl", "is-active", unit], capture_output=True,
                                   text=True).stdout.strip()
            assert state == "inactive", (unit, state)


@needs_dpkg
@needs_sim
def test_installed_daemon_drives_the_emulated_board(deb_installed: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """rprocd-sim (from the checkout: the emulator is not packaged) runs the
    daemon the installed unit's ExecStart= names; the installed rprocctl and
    ST shim drive the emulated m4, whose state is read back from the emulated /sys."""
    (exec_start,) = [v for k, v in unit_sections(Path(DEB_UNITS) / "rprocd.service")["Service"]
                     if k == "ExecStart"]
    assert exec_start == "/usr/bin/rprocd"
    monkeypatch.setenv("RPROCD_SIM_DAEMON_CMD", exec_start)
    for name in ("PYTHONPATH", "PYTHONHOME"):
        monkeypatch.delenv(name, raising=False)
    config = "[Processor m4]\nFirmware=m4-good.elf\n"
    with board("stm32mp157f-dk", firmware=("m4-good.elf",), config=config) as sim:
        bus = {"DBUS_SYSTEM_BUS_ADDRESS": sim.env["DBUS_SYSTEM_BUS_ADDRESS"]}
        client = tool_env(**bus)  # the system's PATH and python3, no preload
        on_board = tool_env(**{k: sim.env[k] for k in ("LD_PRELOAD", "UMOCKDEV_DIR")}, **bus)

        # The bus name is owned by /usr/bin/rprocd running on /usr/bin/python3.
        owner = sim.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "GetConnectionUnixProcessID", "s",
                           "org.rprocd1")
        pid = int(owner.stdout.split()[1])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:2]
        assert argv == ["/usr/bin/python3", "/usr/bin/rprocd"], argv
        assert os.readlink(f"/proc/{pid}/exe").startswith("/usr/bin/python3")

        def ctl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["/usr/bin/rprocctl", *args], capture_output=True, text=True,
                                  env=client, cwd="/", timeout=60)

        def kernel_state() -> str:
            return subprocess.run(["cat", "/sys/class/remoteproc/remoteproc0/state"],
                                  capture_output=True, text=True, env=on_board).stdout

        assert kernel_state() == "offline\n"
        out = ctl("start", "m4")
        assert out.returncode == 0, out.stdout + out.stderr + sim.daemon_log()
        assert kernel_state() == "running\n"
        status = ctl("--json", "status", "m4")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["State"] == "running"
        out = ctl("stop", "m4")
        assert out.returncode == 0, out.stdout + out.stderr
        assert kernel_state() == "offline\n"
        # The installed shim, through the installed rprocctl on the system PATH.
        shim = subprocess.run(["/sbin/st-m4firmware-load-default.sh", "start"],
                              capture_output=True, text=True, env=on_board, timeout=60)
        assert shim.returncode == 0, shim.stdout + shim.stderr
        assert kernel_state() == "running\n"
        assert "Traceback" not in sim.daemon_log()
    # Leaving `board` asserted that the installed daemon exited 0 on SIGTERM.

# --- Yocto recipe ---------------------------------------------------------------------

# Poky's defaults for a distro without usrmerge (the harder case: /lib != /usr/lib).
POKY = {
    "prefix": "/usr", "bindir": "/usr/bin", "libexecdir": "/usr/libexec",
    "datadir": "/usr/share", "sysconfdir": "/etc", "mandir": "/usr/share/man",
    "docdir": "/usr/share/doc", "BPN": "rprocd", "PN": "rprocd",
    "systemd_unitdir": "/lib/systemd", "systemd_system_unitdir": "/lib/systemd/system",
    "nonarch_libdir": "/usr/lib", "nonarch_base_libdir": "/lib", "base_sbindir": "/sbin",
    "PYTHON_SITEPACKAGES_DIR": "/usr/lib/python3.12/site-packages",
}


def bitbake_vars(recipe: str) -> dict[str, str]:
    """Assignments of a recipe, continuation lines joined (no bitbake here)."""
    text = re.sub(r"\\\n", " ", recipe)
    out = {}
    for m in re.finditer(r"^([A-Za-z_][\w:${}\-]*)\s*(\?=|\+=|=\+|=)\s*\"(.*)\"\s*$", text, re.M):
        name, op, value = m.groups()
        out[name] = (out.get(name, "") + " " + value) if op in ("+=", "=+") else value
    return out


def expand(value: str) -> str:
    return re.sub(r"\$\{([\w]+)\}", lambda m: POKY.get(m.group(1), m.group(0)), value)


def test_yocto_recipe_installs_and_packages_every_file(tmp_path: Path):
    recipe = (REPO / "packaging" / "yocto" / "rprocd_0.1.0.bb").read_text()
    v = bitbake_vars(recipe)
    assert "inherit python_setuptools_build_meta systemd" in recipe
    assert v["SYSTEMD_SERVICE:${PN}"] == "rprocd.service"
    for dep in ("python3-pydbus", "python3-pygobject", "python3-pyudev", "python3-systemd",
                "python3-pyelftools"):
        assert dep in v["RDEPENDS:${PN}"].split()
    st = v["RPROCD_ST_PACKAGES"].split()
    assert st and all(v[f"{k}:${{PN}}-st-compat"] == "${RPROCD_ST_PACKAGES}"
                      for k in ("RPROVIDES", "RREPLACES", "RCONFLICTS"))

    # Run install.sh the way do_install:append does, with poky's directories.
    (call,) = re.findall(r"sh \$\{S\}/scripts/install.sh (.*?)\n\}", re.sub(r"\\\n", " ", recipe),
                         re.S)
    args = [expand(a) for a in call.split() if a not in ("--destdir", "${D}")]
    install_tree(tmp_path, *args)
    files = files_under(tmp_path)
    assert files, "nothing installed"

    packages = {name: expand(v.get(f"FILES:${{PN}}{suffix}", "")).split()
                for name, suffix in (("st-compat", "-st-compat"), ("sim", "-sim"), ("main", ""))}
    # bitbake's default FILES:${PN} covers /etc, /usr/bin, /usr/share (man, doc
    # go to -doc: fine).
    packages["main"] += ["/etc", "/usr/bin", "/usr/share", "/usr/libexec"]

    def owner(path: str) -> str | None:
        for name in ("st-compat", "sim", "main"):  # PACKAGES =+ order: first match wins
            for pattern in packages[name]:
                if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
                    return name
        return None

    unowned = sorted(p for p in files if owner(p) is None)
    assert not unowned, f"files no package takes: {unowned}"
    compat = {p for p in files if owner(p) == "st-compat"}
    assert compat == {
        "/lib/systemd/system/st-m4firmware-load.service",
        "/lib/systemd/system/st-m33firmware-load.service",
        "/sbin/st-m4firmware-load-default.sh", "/sbin/st-m33firmware-load-default.sh",
        "/etc/rprocd/rprocd.conf.d/50-st-compat.conf",
        # Debian 12's systemd owns /lib/systemd/system-preset (not /usr/lib/...).
        "/lib/systemd/system-preset/90-rprocd-st-compat.preset",
    }
    assert "/usr/lib/systemd/catalog/rprocd.catalog" in files  # journalctl reads only /usr/lib
    # The main package gets what systemd, D-Bus, polkit, udev and journald read,
    # at poky's paths.
    assert {p for p in files if owner(p) == "main"} >= {
        "/lib/systemd/system/rprocd.service", "/lib/systemd/system/rprocd-poweroff.service",
        "/usr/share/dbus-1/system.d/org.rprocd1.conf",
        "/usr/share/dbus-1/system-services/org.rprocd1.service",
        "/usr/share/dbus-1/interfaces/org.rprocd1.Manager.xml",
        "/usr/share/polkit-1/actions/org.rprocd1.policy",
        "/usr/lib/systemd/catalog/rprocd.catalog", "/lib/udev/rules.d/60-rprocd.rules",
        "/etc/rprocd/rprocd.conf",
    }
    # The same files as `make install` (only some directories differ): the
    # recipe and install.sh cannot drift apart.
    assert Counter(Path(p).name for p in files) == Counter(Path(p).name for p in DATA_FILES)


# --- the ST shims -----------------------------------------------------------------------


def fake_board(root: Path, cores: dict[str, str]) -> Path:
    """A sysfs tree with remoteproc devices {name: state} (regular files)."""
    for i, (name, state) in enumerate(cores.items()):
        dev = root / "class" / "remoteproc" / f"remoteproc{i}"
        dev.mkdir(parents=True)
        (dev / "name").write_text(name + "\n")
        (dev / "state").write_text(state + "\n")
    return root


@pytest.fixture
def fake_rprocctl(tmp_path: Path) -> tuple[Path, Path]:
    """An rprocctl that logs its arguments and exits with $FAKE_STATUS."""
    bindir, log = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    script = bindir / "rprocctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexit "${{FAKE_STATUS:-0}}"\n')
    script.chmod(0o755)
    return bindir, log


def run_shim(core: str, verb: str, sysfs: Path, bindir: Path,
             status: int = 0) -> subprocess.CompletedProcess:
    shim = REPO / "shims" / f"st-{core}firmware-load-default.sh"
    env = {**os.environ, "PATH": f"{bindir}:{SYSTEM_PATH}", "RPROCD_SYSFS": str(sysfs),
           "FAKE_STATUS": str(status)}
    return subprocess.run(["sh", str(shim), verb], capture_output=True, text=True, env=env)


def test_shims_forward_to_rprocctl_by_core_name(tmp_path: Path, fake_rprocctl):
    bindir, log = fake_rprocctl
    sysfs = fake_board(tmp_path / "sys", {"m33": "offline", "m4": "running", "m0": "attached"})

    def calls() -> list[str]:
        text = log.read_text() if log.exists() else ""
        log.unlink(missing_ok=True)
        return text.splitlines()

    # m33 offline: start and restart start it; stop has nothing to do.
    assert run_shim("m33", "start", sysfs, bindir).returncode == 0
    assert calls() == ["start m33"]
    assert run_shim("m33", "restart", sysfs, bindir).returncode == 0
    assert calls() == ["start m33"]
    assert run_shim("m33", "stop", sysfs, bindir).returncode == 0
    assert calls() == []
    # m4 running: start is a no-op (the daemon or the boot already started it),
    # stop and restart go to the daemon, and their status is the shim's.
    assert run_shim("m4", "start", sysfs, bindir).returncode == 0
    assert calls() == []
    assert run_shim("m4", "stop", sysfs, bindir, status=6).returncode == 6
    assert calls() == ["stop m4"]
    assert run_shim("m4", "restart", sysfs, bindir, status=4).returncode == 4
    assert calls() == ["restart m4"]
    # A core the board does not have: rprocctl says so (3), not the shim.
    assert run_shim("m33", "start", fake_board(tmp_path / "empty", {}), bindir,
                    status=3).returncode == 3
    assert calls() == ["start m33"]
    # Usage errors, and a copy under a name that names no core.
    bad = run_shim("m4", "reload", sysfs, bindir)
    assert bad.returncode == 2 and "usage: st-m4firmware-load-default.sh" in bad.stderr
    other = tmp_path / "load.sh"
    shutil.copy(REPO / "shims" / "st-m4firmware-load-default.sh", other)
    out = subprocess.run(["sh", str(other), "start"], capture_output=True, text=True)
    assert out.returncode == 2 and "cannot tell the core" in out.stderr
    assert calls() == []


def test_poweroff_script_stops_running_cores_only(tmp_path: Path):
    cores = {"m4": "running", "m33": "attached", "m0": "offline", "dsp": "crashed",
             "c1": "detached"}
    sysfs = fake_board(tmp_path / "sys", cores)
    out = subprocess.run(["sh", str(REPO / "systemd" / "rprocd-poweroff")],
                         env={**os.environ, "RPROCD_SYSFS": str(sysfs)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    states = {name: (sysfs / "class/remoteproc" / f"remoteproc{i}" / "state").read_text()
              for i, name in enumerate(cores)}
    assert states == {"m4": "stop\n", "m33": "stop\n", "m0": "offline\n", "dsp": "stop\n",
                      "c1": "detached\n"}
    assert "m4 (remoteproc0): stopped (running before)" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a read-only bind mount")
def test_poweroff_script_reports_a_refused_stop(tmp_path: Path):
    sysfs = fake_board(tmp_path / "sys", {"m4": "running", "m0": "crashed"})
    devs = sysfs / "class/remoteproc"
    script = (f'for f in "{devs}"/*/state; do mount --bind "$f" "$f" && '
              'mount -o remount,bind,ro "$f" "$f"; done; '
              f'exec sh "{REPO}/systemd/rprocd-poweroff"')
    out = subprocess.run(["unshare", "-m", "sh", "-c", script],
                         env={**os.environ, "RPROCD_SYSFS": str(sysfs)},
                         capture_output=True, text=True)
    # A running core that cannot be stopped fails the unit; a crashed one is
    # only reported (old kernels refuse to stop crashed cores).
    assert out.returncode == 1, out.stdout + out.stderr
    assert "m4 (remoteproc0): stop failed in state running" in out.stderr
    assert "m0 (remoteproc1): crashed, the kernel refused to stop it" in out.stdout


# --- the shims against the emulated board ------------------------------------------------

def sim_shell(sim, command: list[str]) -> subprocess.CompletedProcess:
    """Run a command as users do inside `rprocd-sim -- CMD`: the preload makes
    /sys the emulated kernel's, the bus is the private one, rprocctl is on PATH."""
    env = {**os.environ, **sim.env, "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def sim_state(sim, core: str) -> str:
    out = sim.rprocctl("--json", "status", core)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["State"]


@needs_sim
def test_shims_drive_the_emulated_cores():
    config = "[Processor m4]\nFirmware=m4-good.elf\n"
    with board("stm32mp157f-dk", firmware=("m4-good.elf",), config=config) as sim:
        shim = str(REPO / "shims" / "st-m4firmware-load-default.sh")
        out = sim_shell(sim, ["sh", shim, "start"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert sim_state(sim, "m4") == "running"
        # The kernel's view, read through /sys as the shim does.
        cat = sim_shell(sim, ["sh", "-c", "cat /sys/class/remoteproc/remoteproc0/state"])
        assert cat.stdout == "running\n", cat.stderr
        assert sim_shell(sim, ["sh", shim, "start"]).returncode == 0  # already running
        out = sim_shell(sim, ["sh", shim, "restart"])
        assert out.returncode == 0, out.stderr
        assert sim_state(sim, "m4") == "running"
        assert sim_shell(sim, ["sh", shim, "stop"]).returncode == 0
        assert sim_state(sim, "m4") == "offline"
        assert sim_shell(sim, ["sh", shim, "stop"]).returncode == 0  # already offline
        # MP1 has no M33: rprocctl's "no such processor".
        m33 = str(REPO / "shims" / "st-m33firmware-load-default.sh")
        assert sim_shell(sim, ["sh", m33, "start"]).returncode == 3
        # rprocd-poweroff, as on halt: the running core is stopped through sysfs.
        assert sim_shell(sim, ["sh", shim, "start"]).returncode == 0
        out = sim_shell(sim, ["sh", str(REPO / "systemd" / "rprocd-poweroff")])
        assert out.returncode == 0, out.stderr
        assert "m4 (remoteproc0): stopped (running before)" in out.stdout
        cat = sim_shell(sim, ["sh", "-c", "cat /sys/class/remoteproc/remoteproc0/state"])
        assert cat.stdout == "offline\n"
    config = "[Processor m33]\nFirmware=m33-good.elf\n"
    with board("stm32mp257f-dk", firmware=("m33-good.elf",), config=config) as sim:
        m33 = str(REPO / "shims" / "st-m33firmware-load-default.sh")
        out = sim_shell(sim, ["sh", m33, "start"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert sim_state(sim, "m33") == "running"
        assert sim_state(sim, "m0") == "offline"
