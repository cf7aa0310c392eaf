"""Kernel core name -> D-Bus object path element.

systemd-style escaping: every byte outside `[A-Za-z0-9]` becomes `_xx`
(lower-case hex of its UTF-8 bytes), so any kernel name maps to a valid,
reversible path element.
"""

from __future__ import annotations

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HEX = frozenset("0123456789abcdef")


def escape(name: str) -> str:
    """`m4` -> `m4`, `dsp.0` -> `dsp_2e0`, `` -> `_`."""
    if not name:
        return "_"
    return "".join(
        chr(b) if b in _SAFE else f"_{b:02x}" for b in name.encode("utf-8", "surrogateescape")
    )


def unescape(element: str) -> str:
    """Inverse of `escape`; malformed escapes are kept literally."""
    if element == "_":
        return ""
    out = bytearray()
    i = 0
    while i < len(element):
        hexpart = element[i + 1 : i + 3]
        if element[i] == "_" and len(hexpart) == 2 and set(hexpart) <= _HEX:
            out.append(int(hexpart, 16))
            i += 3
        else:
            out += element[i].encode()
            i += 1
    return out.decode("utf-8", "surrogateescape")


def object_name(name: str, device: str, taken: set[str] | frozenset[str]) -> str:
    """The path element for a core: its escaped name, or `<name>_<device>` when
    another core already uses that name (two drivers naming their core `dsp`)."""
    plain = escape(name)
    return plain if plain not in taken else f"{plain}_{escape(device)}"
