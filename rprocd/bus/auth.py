"""Who may call what: one table, deny by default, polkit for the mutating calls.

Modelled on bolt: every (interface, method) the daemon answers is listed with
the polkit action it needs, or None when it only reads. A method missing from
the table is refused, so a method added to the XML stays closed until someone
decides who may call it.

The check never blocks the main loop: the caller's uid and polkit's answer
are asynchronous D-Bus calls. uid 0 needs no polkit. When polkitd is not on
the bus at all, only uid 0 and members of `AllowGroup=` may mutate.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Callable

from gi.repository import Gio, GLib

from rprocd.bus.introspection import (
    INTROSPECTABLE,
    MANAGER,
    OBJECT_MANAGER,
    PEER,
    PROCESSOR,
    PROPERTIES,
)

log = logging.getLogger("rprocd.bus")

MANAGE = "org.rprocd1.manage"
IMPORT_FIRMWARE = "org.rprocd1.import-firmware"
CONFIGURE = "org.rprocd1.configure"

# (interface, method) -> polkit action, or None for calls open to everyone.
AUTH_TABLE: dict[tuple[str, str], str | None] = {
    (PROCESSOR, "Start"): MANAGE,
    (PROCESSOR, "Stop"): MANAGE,
    (PROCESSOR, "Restart"): MANAGE,
    (PROCESSOR, "Detach"): MANAGE,
    (PROCESSOR, "Recover"): MANAGE,
    (PROCESSOR, "ResetFailed"): MANAGE,
    (PROCESSOR, "ReadTrace"): None,
    (MANAGER, "ImportFirmware"): IMPORT_FIRMWARE,
    (MANAGER, "Reload"): CONFIGURE,
    (MANAGER, "GetProcessor"): None,
    (MANAGER, "InspectFirmware"): None,
    (OBJECT_MANAGER, "GetManagedObjects"): None,
    (PROPERTIES, "Get"): None,
    (PROPERTIES, "GetAll"): None,
    # Answered by GDBus itself before our handler; listed to say they are open.
    (INTROSPECTABLE, "Introspect"): None,
    (PEER, "Ping"): None,
    (PEER, "GetMachineId"): None,
}


class NotInTable(Exception):
    """The method is not in AUTH_TABLE: refused whoever calls it."""


def required_action(interface: str, method: str) -> str | None:
    """The polkit action a call needs, None if open; NotInTable if unknown."""
    try:
        return AUTH_TABLE[(interface, method)]
    except KeyError:
        raise NotInTable(f"{interface}.{method}") from None


# Long enough to type a password at an agent's prompt. Callers that expect a
# prompt must raise their own call timeout (25 s by default; rprocctl uses 90 s).
POLKIT_TIMEOUT_MS = 60_000

_POLKIT_NAME = "org.freedesktop.PolicyKit1"
_POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
_POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
_ALLOW_USER_INTERACTION = 1
_NO_POLKIT = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)

# done(None) = allowed; done("why not") = denied.
Verdict = Callable[[str | None], None]


def in_group(uid: int, group: str) -> bool:
    """The account's membership in the user database, as polkit's isInGroup."""
    if not group:
        return False
    try:
        user = pwd.getpwuid(uid)
        gid = grp.getgrnam(group).gr_gid
        return gid in os.getgrouplist(user.pw_name, user.pw_gid)
    except (KeyError, OSError):
        return False


class Authorizer:
    """Asynchronous yes/no for (caller, action); answers exactly once per check."""

    def __init__(
        self,
        connection: Gio.DBusConnection,
        allow_group: Callable[[], str],
        timeout_ms: int | None = None,
    ) -> None:
        self._connection = connection
        self._allow_group = allow_group
        self._timeout_ms = timeout_ms or POLKIT_TIMEOUT_MS
        self._cancellable = Gio.Cancellable()

    def close(self) -> None:
        """Pending checks end denied ("shutting down") instead of outliving us."""
        self._cancellable.cancel()

    def check(self, sender: str, action: str, done: Verdict) -> None:
        def on_uid(conn: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                (uid,) = conn.call_finish(result).unpack()
            except GLib.Error as err:
                done(f"cannot identify the caller {sender}: {err.message}")
                return
            if uid == 0:
                done(None)
            else:
                self._polkit(sender, uid, action, done)

        self._connection.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixUser",
            GLib.Variant("(s)", (sender,)),
            GLib.VariantType("(u)"),
            Gio.DBusCallFlags.NONE,
            -1,
            self._cancellable,
            on_uid,
        )

    def _polkit(self, sender: str, uid: int, action: str, done: Verdict) -> None:
        subject = ("system-bus-name", {"name": GLib.Variant("s", sender)})
        params = GLib.Variant(
            "((sa{sv})sa{ss}us)", (subject, action, {}, _ALLOW_USER_INTERACTION, "")
        )

        def on_answer(conn: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                ((authorized, challenge, _details),) = conn.call_finish(result).unpack()
            except GLib.Error as err:
                self._polkit_failed(err, uid, action, done)
                return
            if authorized:
                done(None)
            elif challenge:
                done(f"{action} needs authentication and no polkit agent answered for uid {uid}")
            else:
                done(f"polkit does not grant {action} to uid {uid}")

        self._connection.call(
            _POLKIT_NAME,
            _POLKIT_PATH,
            _POLKIT_IFACE,
            "CheckAuthorization",
            params,
            GLib.VariantType("((bba{ss}))"),
            Gio.DBusCallFlags.NONE,
            self._timeout_ms,
            self._cancellable,
            on_answer,
        )

    def _polkit_failed(self, err: GLib.Error, uid: int, action: str, done: Verdict) -> None:
        remote = Gio.DBusError.get_remote_error(err) or ""
        if remote in _NO_POLKIT:
            group = self._allow_group()
            if in_group(uid, group):
                done(None)
            else:
                where = f"root or members of AllowGroup={group}" if group else "root"
                done(f"polkit is not running, so {action} is limited to {where}")
        elif err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT):
            done(f"no answer from polkit about {action} within {self._timeout_ms // 1000} s")
        elif err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CANCELLED):
            done("the daemon is shutting down")
        else:
            log.warning("polkit check of %s for uid %d failed: %s", action, uid, err.message)
            done(f"polkit could not check {action}: {_plain(err)}")


def _plain(err: GLib.Error) -> str:
    """The message without GDBus's "GDBus.Error:name: " prefix."""
    message = err.message
    if message.startswith("GDBus.Error:"):
        message = message.partition(" ")[2] or message
    return message
