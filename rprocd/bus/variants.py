"""Plain Python values of the core -> GLib.Variant.

The core speaks `str`, `bool`, `int`, `list[str]` and dicts; the signature of
a property comes from the XML, so conversion is a lookup, not a guess. Only
`InspectFirmware`'s free-form report (a{sv}) needs types chosen from values.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

from gi.repository import GLib

_ZERO: dict[str, object] = {"s": "", "o": "/", "b": False, "d": 0.0}
_INTEGERS = frozenset("ynqiuxth")


def _scalar(signature: str, value: Any) -> object:
    """Coerce the harmless mismatches (Path for s, 0/1 for b); let the rest fail."""
    if value is None:
        return 0 if signature in _INTEGERS else _ZERO.get(signature, value)
    if signature in ("s", "o", "g") and isinstance(value, PathLike):
        return str(value)
    if signature == "b" and isinstance(value, int):
        return bool(value)
    if signature in _INTEGERS and isinstance(value, bool):
        return int(value)
    return value


def to_variant(signature: str, value: Any) -> GLib.Variant:
    """A property value with its XML signature; None is the type's zero value.

    Raises TypeError/ValueError/OverflowError when the core hands a value that
    does not fit (a core bug, reported by the caller as Failed).
    """
    if signature.startswith("a") and len(signature) == 2:
        items = [] if value is None else [_scalar(signature[1], item) for item in value]
        return GLib.Variant(signature, items)
    return GLib.Variant(signature, _scalar(signature, value))


def properties_to_vardict(
    values: Mapping[str, Any], signatures: Mapping[str, str]
) -> dict[str, GLib.Variant]:
    """The documented properties present in `values`, as a{sv} items (XML order)."""
    return {
        name: to_variant(signature, values[name])
        for name, signature in signatures.items()
        if name in values
    }


def report_to_vardict(report: Mapping[str, Any]) -> dict[str, GLib.Variant]:
    """A free-form report -> a{sv}: dicts a{sv}, lists of dicts aa{sv}, lists of
    str as, ints t (x when negative), bools b; None values are left out."""
    return {str(key): _guess(value) for key, value in report.items() if value is not None}


def _guess(value: Any) -> GLib.Variant:
    if isinstance(value, GLib.Variant):
        return value
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("x" if value < 0 else "t", value)
    if isinstance(value, float):
        return GLib.Variant("d", value)
    if isinstance(value, str | PathLike):
        return GLib.Variant("s", str(value))
    if isinstance(value, bytes | bytearray):
        return GLib.Variant("ay", bytes(value))
    if isinstance(value, Mapping):
        return GLib.Variant("a{sv}", report_to_vardict(value))
    if isinstance(value, list | tuple | set | frozenset):
        return _guess_list(list(value))
    return GLib.Variant("s", str(value))


def _guess_list(items: list[Any]) -> GLib.Variant:
    """One element type for the whole list; `av` only when they really differ."""
    if all(isinstance(item, Mapping) for item in items) and items:
        return GLib.Variant("aa{sv}", [report_to_vardict(item) for item in items])
    if all(isinstance(item, str | PathLike) for item in items):
        return GLib.Variant("as", [str(item) for item in items])
    if all(isinstance(item, bool) for item in items):
        return GLib.Variant("ab", items)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        return GLib.Variant("ax" if min(items) < 0 else "at", items)
    return GLib.Variant("av", [_guess(item) for item in items if item is not None])
