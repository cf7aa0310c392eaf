"""Method calls -> core calls, one small handler per D-Bus method.

Every handler gets the call's target (the Manager or a Processor), its
unpacked arguments, the `Reply` and the D-Bus message (for passed fds).
Operations that take time hand `reply.done` to the core and return at once;
the reply is sent when the core calls it, so the main loop keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gi.repository import Gio

from rprocd.bus.introspection import (
    MANAGER,
    MANAGER_PATH,
    OBJECT_MANAGER,
    PROCESSOR,
    PROPERTIES,
)
from rprocd.bus.objects import ObjectTree, processor_path
from rprocd.bus.reply import INVALID_ARGS, NO_SUCH_PROCESSOR, Reply
from rprocd.bus.variants import report_to_vardict

log = logging.getLogger("rprocd.bus")

Handler = Callable[[Any, tuple, Reply, Gio.DBusMessage], None]


class Methods:
    """The handlers of every method the adapter answers itself."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.table: dict[tuple[str, str], Handler] = {
            (MANAGER, "GetProcessor"): self.get_processor,
            (MANAGER, "ImportFirmware"): self.import_firmware,
            (MANAGER, "InspectFirmware"): self.inspect_firmware,
            (MANAGER, "Reload"): self.reload,
            (PROCESSOR, "Start"): lambda proc, args, reply, _m: proc.start(args[0], reply.done),
            (PROCESSOR, "Stop"): lambda proc, _a, reply, _m: proc.stop(reply.done),
            (PROCESSOR, "Restart"): lambda proc, args, reply, _m: proc.restart(args[0], reply.done),
            (PROCESSOR, "Detach"): lambda proc, _a, reply, _m: proc.detach(reply.done),
            (PROCESSOR, "Recover"): lambda proc, _a, reply, _m: proc.recover(reply.done),
            (PROCESSOR, "ResetFailed"): self.reset_failed,
            (PROCESSOR, "ReadTrace"): self.read_trace,
            (OBJECT_MANAGER, "GetManagedObjects"): self.get_managed_objects,
            (PROPERTIES, "Get"): self.get,
            (PROPERTIES, "GetAll"): self.get_all,
        }

    def target(self, path: str) -> Any | None:
        """The Manager for /org/rprocd1, the Processor registered at `path`, or None."""
        return self.tree.manager if path == MANAGER_PATH else self.tree.get(path)

    def call(
        self,
        path: str,
        interface: str,
        method: str,
        args: tuple,
        reply: Reply,
        message: Gio.DBusMessage,
    ) -> None:
        """Run one handler; anything it raises becomes the error reply."""
        try:
            target = self.target(path)
            if target is None:
                reply.error(NO_SUCH_PROCESSOR, f"{path} went away; list processors again")
                return
            handler = self.table.get((interface, method))
            if handler is None:  # in the XML and AUTH_TABLE but not here: a bug
                raise NotImplementedError(f"{interface}.{method}")
            handler(target, args, reply, message)
        except Exception as exc:  # noqa: BLE001 - the caller gets one line, the log the rest
            reply.exception(exc)

    # org.rprocd1.Manager

    def get_processor(
        self, manager: Any, args: tuple, reply: Reply, _m: Gio.DBusMessage
    ) -> None:
        proc = manager.get_processor(args[0])
        path = self.tree.find(proc) or processor_path(proc)
        reply.value("(o)", path)

    def import_firmware(
        self, manager: Any, args: tuple, reply: Reply, message: Gio.DBusMessage
    ) -> None:
        index, name = args
        fds = message.get_unix_fd_list()
        if fds is None or not 0 <= index < fds.get_length():
            reply.error(INVALID_ARGS, "ImportFirmware: no file descriptor came with the call; "
                        "pass the opened image as the 'h' argument")
            return
        # Our own duplicate. The core owns it from the call on and closes it
        # exactly once, also when it raises: closing it here too could close
        # an unrelated file that got the same number meanwhile.
        fd = fds.get(index)

        def done(*result: Any) -> None:
            # done(error) or done(name, error): accept both shapes of the callback.
            error = next((r for r in result if isinstance(r, BaseException)), None)
            if error is not None:
                reply.exception(error)
            else:
                reply.value("(s)", next((r for r in result if isinstance(r, str)), name))

        manager.import_firmware(fd, name, done)

    def inspect_firmware(
        self, manager: Any, args: tuple, reply: Reply, _m: Gio.DBusMessage
    ) -> None:
        report = manager.inspect_firmware(args[0])
        reply.value("(a{sv})", report_to_vardict(report))

    def reload(self, manager: Any, _args: tuple, reply: Reply, _m: Gio.DBusMessage) -> None:
        manager.reload()
        reply.value()

    # org.rprocd1.Processor

    def reset_failed(self, proc: Any, _args: tuple, reply: Reply, _m: Gio.DBusMessage) -> None:
        proc.reset_failed()
        reply.value()

    def read_trace(self, proc: Any, args: tuple, reply: Reply, _m: Gio.DBusMessage) -> None:
        reply.value("(s)", proc.read_trace(args[0]))

    # org.freedesktop.DBus.ObjectManager / Properties

    def get_managed_objects(self, _t: Any, _a: tuple, reply: Reply, _m: Gio.DBusMessage) -> None:
        reply.value("(a{oa{sa{sv}}})", self.tree.managed_objects())

    def get(self, target: Any, args: tuple, reply: Reply, message: Gio.DBusMessage) -> None:
        interface, name = args
        values = self.tree.properties_of(message.get_path(), interface)
        if name not in values:  # GDBus checked it is documented: the core lacks it
            raise LookupError(f"property {interface}.{name} has no value")
        reply.value("(v)", values[name])

    def get_all(self, target: Any, args: tuple, reply: Reply, message: Gio.DBusMessage) -> None:
        reply.value("(a{sv})", self.tree.properties_of(message.get_path(), args[0]))

