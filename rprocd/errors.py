"""The typed errors of the API.

Each `RprocError` subclass is one D-Bus error name; the message is one
sentence naming the core, the cause and the fix, because it is all the user
sees (never a traceback).
"""

from __future__ import annotations

from pathlib import Path


class RprocError(Exception):
    """Base of every error a caller of the core API can get."""

    code = "Failed"

    @property
    def dbus_name(self) -> str:
        return f"org.rprocd1.Error.{self.code}"


class NoSuchProcessor(RprocError):
    code = "NoSuchProcessor"


class BadState(RprocError):
    code = "BadState"


class FirmwareNotFound(RprocError):
    code = "FirmwareNotFound"


class InvalidFirmware(RprocError):
    code = "InvalidFirmware"


class Busy(RprocError):
    code = "Busy"


class Timeout(RprocError):
    code = "Timeout"


class NotSupported(RprocError):
    code = "NotSupported"


class Failed(RprocError):
    code = "Failed"


class InvalidArgs(RprocError):
    code = "InvalidArgs"

    @property
    def dbus_name(self) -> str:
        return "org.freedesktop.DBus.Error.InvalidArgs"


class AccessDenied(RprocError):
    code = "AccessDenied"

    @property
    def dbus_name(self) -> str:
        return "org.freedesktop.DBus.Error.AccessDenied"


class ConfigError(Exception):
    """A configuration problem, located as `path:line: message` like a compiler's."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: {message}")
