"""Every filesystem location the daemon uses, from the environment.

One place for paths lets the same code run on a board, under the emulator
and in unit tests (HACKING.md, "Paths").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_REPO_INTERFACES = Path(__file__).resolve().parent.parent / "dbus"


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
        interfaces = env.get("RPROCD_INTERFACES_DIR")
        if not interfaces:
            interfaces = (
                str(_REPO_INTERFACES)
                if _REPO_INTERFACES.is_dir()
                else "/usr/share/dbus-1/interfaces"
            )
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
