"""The kernel's firmware search path, and names it would accept (ABI §5.1).

The daemon resolves a name exactly as `request_firmware` will, so that a file
outside the search path is reported as such (users.md, pain point 10) before
the kernel answers a bare ENOENT.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from rprocd.errors import FirmwareNotFound, InvalidArgs
from rprocd.paths import Paths

NAME_MAX = 255  # bytes per path component
PATH_MAX = 4095  # bytes in the whole name (the kernel's PATH_MAX minus the NUL)


def search_dirs(paths: Paths, extra: Sequence[Path] = ()) -> list[Path]:
    """The directories the kernel tries, in its order, then `extra`
    (FirmwareDirectories=); duplicates dropped (the first one wins anyway)."""
    release = os.uname().release
    root = paths.firmware_root
    dirs: list[Path] = []
    custom = _read_class_path(paths.sysfs / "module" / "firmware_class" / "parameters" / "path")
    if custom:
        dirs.append(Path(custom))
    dirs += [root / "updates" / release, root / "updates", root / release, root, *extra]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _read_class_path(path: Path) -> str:
    try:
        value = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return ""
    if value.endswith("\n"):
        value = value[:-1]
    return value


def check_name(name: str) -> None:
    """Raise InvalidArgs unless the kernel would look `name` up as given."""
    if not name:
        raise InvalidArgs("the firmware name is empty: give a file name such as 'rproc-m4-fw'")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgs(
            f"the firmware name {name!r} is not valid UTF-8: rename the file"
        ) from None
    if name.startswith("/"):
        raise InvalidArgs(
            f"the firmware name '{name}' is absolute: give a name relative to the "
            "firmware search path, or add its directory to FirmwareDirectories="
        )
    if "\0" in name:
        raise InvalidArgs(f"the firmware name {name!r} contains a NUL byte")
    if "\n" in name:
        raise InvalidArgs(
            f"the firmware name {name!r} contains a newline, which the kernel would cut at"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidArgs(f"the firmware name {name!r} contains a control character")
    components = name.split("/")
    if ".." in components:
        raise InvalidArgs(
            f"the firmware name '{name}' has a '..' component, which the kernel refuses: "
            "give a name inside the firmware search path"
        )
    if len(encoded) > PATH_MAX:
        raise InvalidArgs(f"the firmware name is {len(encoded)} bytes long (at most {PATH_MAX})")
    for part in components:
        if len(part.encode("utf-8")) > NAME_MAX:
            raise InvalidArgs(
                f"a component of the firmware name is longer than {NAME_MAX} bytes: "
                "shorten the file name"
            )


def resolve(name: str, dirs: Sequence[Path]) -> Path:
    """The file the kernel will load for `name`: the first search directory
    holding a regular file of that name (symlinks followed, like the kernel)."""
    check_name(name)
    for d in dirs:
        candidate = d / name
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):
                return candidate
        except (OSError, ValueError):
            continue
    where = ", ".join(str(d) for d in dirs) or "(no directory)"
    raise FirmwareNotFound(
        f"firmware '{name}' is not in {where}: put it there or add its directory "
        "to FirmwareDirectories="
    )
