"""Kernel-variant options of the emulated board (`--option K=V`).

Each option picks one documented kernel behaviour (ABI reference) so the
daemon can be tested against every variant it must survive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from .board import Board

_CHOICES: dict[str, tuple[str, ...]] = {
    "early": ("offline", "detached", "attached"),
    "recovery": ("enabled", "disabled"),
    "coredump": ("disabled", "enabled", "inline"),
    "fw_format": ("ELF", "TEE", "none"),
    "crashed_stop": ("einval", "stop"),
}
_BOOL = {"1": True, "yes": True, "true": True, "on": True,
         "0": False, "no": False, "false": False, "off": False}


@dataclass
class CoreOptions:
    """Per-core kernel behaviour.

    kernel: version whose `start` semantics apply (< 5.19: EBUSY on running);
    early: what the core is doing when the kernel probes it; recovery/coredump:
    the initial modes; fw_format: override of the board's attribute ("none"
    removes it); firmware: the image an early-booted core runs (default: its
    default firmware); crashed_stop: "stop" emulates "Allow shutdown of crashed
    processors"; auto_boot: DT `st,auto-boot`; tee_key: PEM public key the
    emulated OP-TEE TA verifies signed images with.
    """

    kernel: str = "5.19"
    early: str = "offline"
    recovery: str = "enabled"
    coredump: str = "disabled"
    fw_format: str | None = None
    firmware: str | None = None
    crashed_stop: str = "einval"
    auto_boot: bool = False
    tee_key: str | None = None

    @property
    def kernel_version(self) -> tuple[int, int]:
        major, minor = self.kernel.split(".")[:2]
        return int(major), int(minor)

    @property
    def pre_519(self) -> bool:
        """Pre-v5.19 sysfs: `start` on running/attached is EBUSY."""
        return self.kernel_version < (5, 19)


_KEYS = tuple(f.name for f in fields(CoreOptions))


def _value(key: str, raw: str) -> object:
    if key == "kernel":
        m = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", raw)
        if not m or (int(m.group(1)), int(m.group(2))) < (5, 13):
            raise ValueError(
                f"option kernel={raw!r}: expected a version >= 5.13 (5.15, 5.19, 6.6...)")
        return raw
    if key in _CHOICES:
        if raw not in _CHOICES[key]:
            raise ValueError(f"option {key}={raw!r}: expected one of {', '.join(_CHOICES[key])}")
        return raw
    if key == "auto_boot":
        if raw.lower() not in _BOOL:
            raise ValueError(f"option auto_boot={raw!r}: expected yes or no")
        return _BOOL[raw.lower()]
    if not raw:
        raise ValueError(f"option {key}: empty value")
    return raw


def parse_options(pairs: list[str], board: Board) -> dict[str, CoreOptions]:
    """`K=V` (every core) or `NAME.K=V` (one core, by name or platform name).

    Per-core values win over global ones whatever their order. Returns one
    CoreOptions per core name; ValueError with a clear message otherwise.
    """
    names = {c.name: c.name for c in board.cores}
    names.update({c.platform: c.name for c in board.cores})
    glob: dict[str, object] = {}
    per_core: dict[str, dict[str, object]] = {c.name: {} for c in board.cores}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"option {pair!r}: expected KEY=VALUE")
        prefix, _, key = key.rpartition(".")
        if key not in _KEYS:
            raise ValueError(f"option {pair!r}: unknown key {key!r}; keys: {', '.join(_KEYS)}")
        value = _value(key, raw)
        if not prefix:
            glob[key] = value
        elif prefix in names:
            per_core[names[prefix]][key] = value
        else:
            valid = ", ".join(c.name for c in board.cores)
            raise ValueError(
                f"option {pair!r}: board {board.name} has no core {prefix!r} ({valid})")
    return {name: replace(CoreOptions(), **{**glob, **own}) for name, own in per_core.items()}
