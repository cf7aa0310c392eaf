"""One method call's answer: sent exactly once, possibly later, never a traceback.

Core operations finish on the main loop through `done(error)`; the reply is
sent from there (a deferred reply) so the loop never waits on a core. Errors
of the API become their D-Bus names; anything unexpected becomes
`org.rprocd1.Error.Failed` with one line for the caller and the traceback for
the journal only.
"""

from __future__ import annotations

import logging
import re

from gi.repository import Gio, GLib

from rprocd.errors import RprocError

log = logging.getLogger("rprocd.bus")

FAILED = "org.rprocd1.Error.Failed"
NO_SUCH_PROCESSOR = "org.rprocd1.Error.NoSuchProcessor"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

_ERROR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def one_line(text: str) -> str:
    """D-Bus error messages end up in one-line CLI output and logs."""
    return " ".join(text.split())


def dbus_error(exc: BaseException, what: str) -> tuple[str, str]:
    """(error name, message) for an exception raised or reported by the core."""
    if isinstance(exc, RprocError):
        name = getattr(exc, "dbus_name", "") or f"org.rprocd1.Error.{exc.code}"
        if not _ERROR_NAME.match(name):
            name = FAILED
        return name, one_line(str(exc)) or f"{what} failed"
    log.error("internal error in %s", what, exc_info=(type(exc), exc, exc.__traceback__))
    detail = one_line(str(exc))
    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return FAILED, f"{what}: internal error ({detail}); see the rprocd journal"


class Reply:
    """Wraps a Gio.DBusMethodInvocation; later answers are logged and dropped."""

    def __init__(self, invocation: Gio.DBusMethodInvocation, what: str) -> None:
        self._invocation: Gio.DBusMethodInvocation | None = invocation
        self.what = what  # "m4.Start", for messages and the log

    @property
    def sent(self) -> bool:
        return self._invocation is None

    def _take(self) -> Gio.DBusMethodInvocation | None:
        invocation, self._invocation = self._invocation, None
        if invocation is None:
            log.warning("%s: second reply dropped (core called done twice?)", self.what)
        return invocation

    def value(self, signature: str = "()", *values: object) -> None:
        """Success, with the out arguments of the method's signature."""
        invocation = self._take()
        if invocation is not None:
            invocation.return_value(None if signature == "()" else GLib.Variant(signature, values))

    def error(self, name: str, message: str) -> None:
        invocation = self._take()
        if invocation is not None:
            invocation.return_dbus_error(name, one_line(message))

    def exception(self, exc: BaseException) -> None:
        self.error(*dbus_error(exc, self.what))

    def done(self, error: BaseException | None = None) -> None:
        """The `done(error)` callback of the core's operations."""
        if error is None:
            self.value()
        else:
            self.exception(error)
