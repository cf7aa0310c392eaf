"""Every filesystem location the daemon uses, from the environment.

One place for paths lets the same code run on a board, under the emulator
and in unit tests (HACKING.md, "Paths").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# A source checkout keeps the interface XML in dbus/ beside the package. When
# installed, the package's parent is site-packages, whose dbus/ is dbus-python
# (python3-dbus on Debian): only a dbus/ holding our XML is the checkout's.
_REPO_INTERFACES = Path(__file__).resolve().parent.parent / "dbus"


def _default_interfaces() -> Path:
    if (_REPO_INTERFACES / "org.rprocd1.Manager.xml").is_file():
        return _REPO_INTERFACES
    return Path("/usr/share/dbus-1/interfaces")


def _first(value: str | None, default: str) -> Path:
    """systemd passes `*_DIRECTORY` as a colon-separated list; the first one is ours."""
    if value:
        head = value.split(":", 1)[0]
        if head:
            return Path(head)
    return Path(default)


@dataclass(frozen=True)
class Paths:
    sysfs: Path
    debugfs: Path
    firmware_root: Path
    config_dir: Path
    state_dir: Path
    runtime_dir: Path
    interfaces_dir: Path
    #: the kernel log, where the kernel names crash types (`rprocd.kmsg`)
    kmsg: Path = Path("/dev/kmsg")

    @classmethod
    def from_environ(cls, env: Mapping[str, str] = os.environ) -> Paths:
        interfaces = env.get("RPROCD_INTERFACES_DIR") or _default_interfaces()
        return cls(
            sysfs=Path(env.get("RPROCD_SYSFS") or "/sys"),
            debugfs=Path(env.get("RPROCD_DEBUGFS") or "/sys/kernel/debug"),
            firmware_root=Path(env.get("RPROCD_FIRMWARE_ROOT") or "/lib/firmware"),
            config_dir=_first(env.get("CONFIGURATION_DIRECTORY"), "/etc/rprocd"),
            state_dir=_first(env.get("STATE_DIRECTORY"), "/var/lib/rprocd"),
            runtime_dir=_first(env.get("RUNTIME_DIRECTORY"), "/run/rprocd"),
            interfaces_dir=Path(interfaces),
            kmsg=Path(env.get("RPROCD_KMSG") or "/dev/kmsg"),
        )

    @property
    def config_file(self) -> Path:
        return self.config_dir / "rprocd.conf"

    @property
    def config_dropins(self) -> Path:
        return self.config_dir / "rprocd.conf.d"
