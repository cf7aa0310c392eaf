"""The org.rprocd1 bus name over a Manager: objects, signals, authorization.

A thin adapter in the style of dasbus: the Manager and its Processors are
plain Python that know nothing of D-Bus. This class registers their objects
with Gio (deferred replies, fd passing and caller identity, which pydbus
lacks), turns listener callbacks into signals and every method call into
"authorize, then call the core, then reply".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from gi.repository import Gio, GLib

from rprocd.bus.auth import Authorizer, NotInTable, required_action
from rprocd.bus.introspection import (
    BUS_NAME,
    MANAGER,
    MANAGER_PATH,
    OBJECT_MANAGER,
    PROCESSOR,
    PROPERTIES,
    load_interface,
    object_manager_interface,
)
from rprocd.bus.methods import Methods
from rprocd.bus.objects import ObjectTree, processor_path
from rprocd.bus.reply import ACCESS_DENIED, Reply
from rprocd.paths import Paths

log = logging.getLogger("rprocd.bus")


def method_call_registrar(conn: Gio.DBusConnection) -> tuple[Callable[..., int], bool]:
    """The register_object to use, and whether its method-call closure owns a
    reference to each invocation that the handler must release itself.

    PyGObject's `register_object` is GLib's register_object_with_closures,
    which hands the closure a reference to the Gio.DBusMethodInvocation as a C
    vtable function would (transfer full). PyGObject neither knows nor drops
    it, so every call would leak the invocation with its call and reply
    messages (about 2 KiB per call, the footprint benchmark's growth).
    GLib 2.84's register_object_with_closures2 passes no such reference; only
    GLib 2.82.3 dropped it itself (reverted in 2.82.4).
    """
    closures2 = getattr(conn, "register_object_with_closures2", None)
    if closures2 is not None:
        return closures2, False
    register = conn.register_object
    symbol = getattr(Gio.DBusConnection.register_object, "get_symbol", lambda: "")()
    glib = (GLib.MAJOR_VERSION, GLib.MINOR_VERSION, GLib.MICRO_VERSION)
    owned = (symbol == "g_dbus_connection_register_object_with_closures"
             and glib != (2, 82, 3)
             and hasattr(Gio.DBusMethodInvocation, "_unref"))
    return register, owned


class BusService:
    """Publishes a Manager on the system bus; also its Manager/ProcessorListener.

    `connection` is for tests; the daemon leaves it None and gets the system
    bus (DBUS_SYSTEM_BUS_ADDRESS is honoured by Gio).
    """

    def __init__(self, manager: Any, connection: Gio.DBusConnection | None = None) -> None:
        self.manager = manager
        self._connection = connection
        self._tree: ObjectTree | None = None
        self._methods: Methods | None = None
        self._authorizer: Authorizer | None = None
        self._processor_info: Gio.DBusInterfaceInfo | None = None
        self._registrations: dict[str, list[int]] = {}
        self._register_object: Callable[..., int] | None = None
        self._release_invocations = False
        self._owner_id = 0
        self._closed_handler = 0
        self._on_lost: Callable[[str], None] | None = None
        self._acquired = False
        self._lost = False
        self._closed = False

    # lifecycle

    def publish(self, on_ready: Callable[[], None], on_lost: Callable[[str], None]) -> None:
        """Register every object, then request the name.

        `on_ready()` runs once the name is ours (the daemon then notifies
        systemd); `on_lost(reason)` runs at most once, if the bus is
        unreachable, the name is taken or refused, or the bus goes away. Both
        run on the main loop, never from inside this call.
        """
        self._on_lost = on_lost
        try:
            conn = self._connection or Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        except GLib.Error as err:
            self._report_lost(f"cannot connect to the system bus: {err.message}")
            return
        self._connection = conn
        self._register_object, self._release_invocations = method_call_registrar(conn)
        try:
            interfaces_dir = Paths.from_environ().interfaces_dir
            manager_info = load_interface(interfaces_dir, MANAGER)
            self._processor_info = load_interface(interfaces_dir, PROCESSOR)
        except (OSError, GLib.Error) as err:
            self._report_lost(f"cannot load the D-Bus interface descriptions: {err}")
            return
        self._tree = ObjectTree(self.manager, manager_info, self._processor_info)
        self._methods = Methods(self._tree)
        self._authorizer = Authorizer(conn, self._allow_group)

        conn.set_exit_on_close(False)
        self._closed_handler = conn.connect("closed", self._on_connection_closed)
        try:
            self._register(MANAGER_PATH, manager_info)
            self._register(MANAGER_PATH, object_manager_interface())
        except GLib.Error as err:
            self._report_lost(f"cannot register {MANAGER_PATH}: {err.message}")
            return
        for proc in list(self.manager.processors.values()):
            self._add(proc)
        self.manager.listener = self

        def acquired(_conn: Gio.DBusConnection, name: str) -> None:
            self._acquired = True
            log.debug("acquired the bus name %s", name)
            if not self._closed:
                on_ready()

        def lost(_conn: Gio.DBusConnection | None, name: str) -> None:
            if self._acquired:
                self._report_lost(f"lost the bus name {name}")
            else:
                self._report_lost(
                    f"cannot own the bus name {name}: another rprocd runs, or the bus "
                    "policy (org.rprocd1.conf) does not allow this user to own it"
                )

        self._owner_id = Gio.bus_own_name_on_connection(
            conn, BUS_NAME, Gio.BusNameOwnerFlags.DO_NOT_QUEUE, acquired, lost
        )

    def close(self) -> None:
        """Release the name, remove every object, detach from the core. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if getattr(self.manager, "listener", None) is self:
            self.manager.listener = None
        if self._owner_id:
            Gio.bus_unown_name(self._owner_id)
            self._owner_id = 0
        for path in list(self._registrations):
            self._unregister(path)
        if self._tree is not None:
            for proc in list(self.manager.processors.values()):
                if getattr(proc, "listener", None) is self:
                    proc.listener = None
        if self._authorizer is not None:
            self._authorizer.close()
        conn = self._connection
        if conn is not None:
            if self._closed_handler:
                conn.disconnect(self._closed_handler)
                self._closed_handler = 0
            if not conn.is_closed():
                try:
                    conn.flush_sync(None)  # the ReleaseName and last replies go out
                except GLib.Error as err:
                    log.debug("flush on close: %s", err.message)

    def _report_lost(self, reason: str) -> None:
        """Call on_lost once, from the main loop."""
        if self._lost or self._closed:
            return
        self._lost = True
        log.error("%s", reason)
        on_lost = self._on_lost

        def later() -> bool:
            if on_lost is not None and not self._closed:
                on_lost(reason)
            return GLib.SOURCE_REMOVE

        GLib.idle_add(later)

    def _on_connection_closed(
        self, _conn: Gio.DBusConnection, _vanished: bool, error: GLib.Error | None
    ) -> None:
        detail = f": {error.message}" if error is not None else ""
        self._report_lost(f"disconnected from the system bus{detail}")

    def _allow_group(self) -> str:
        """AllowGroup= of the current configuration ("" when unset)."""
        config = getattr(self.manager, "config", None)
        section = getattr(config, "manager", None)
        return str(getattr(section, "allow_group", "") or "")

    # objects

    def _register(self, path: str, info: Gio.DBusInterfaceInfo) -> None:
        # get/set_property None: GDBus routes Get/GetAll to _on_call (one place
        # for authorization) and refuses Set itself, every property being read-only.
        assert self._register_object is not None, "publish() first"
        reg_id = self._register_object(path, info, self._on_call, None, None)
        self._registrations.setdefault(path, []).append(reg_id)

    def _unregister(self, path: str) -> None:
        for reg_id in self._registrations.pop(path, []):
            self._conn.unregister_object(reg_id)

    @property
    def _conn(self) -> Gio.DBusConnection:
        assert self._connection is not None, "publish() first"
        return self._connection

    def _add(self, proc: Any) -> str | None:
        """Put one processor on the bus; its path, or None if it cannot be."""
        assert self._tree is not None and self._processor_info is not None
        try:
            path = processor_path(proc)
        except ValueError as err:
            log.error("%s", err)
            return None
        known = self._tree.get(path)
        if known is not None and known is not proc:
            self._remove(path, known)
        if path not in self._registrations:
            try:
                self._register(path, self._processor_info)
            except GLib.Error as err:
                log.error("%s: cannot register %s: %s", proc.name, path, err.message)
                return None
        self._tree.add(path, proc)
        proc.listener = self
        return path

    def _remove(self, path: str, proc: Any) -> None:
        assert self._tree is not None
        self._unregister(path)
        self._tree.remove(path)
        if getattr(proc, "listener", None) is self:
            proc.listener = None

    # ManagerListener

    def processor_added(self, proc: Any) -> None:
        if self._closed or self._tree is None:
            return
        try:
            already = self._tree.find(proc)
            path = self._add(proc)
            if path is None or already == path:
                return
            props = self._tree.processor_properties(proc)
            self._emit(MANAGER_PATH, OBJECT_MANAGER, "InterfacesAdded", "(oa{sa{sv}})",
                       path, {PROCESSOR: props})
            self._emit(MANAGER_PATH, MANAGER, "ProcessorAdded", "(o)", path)
            self._processors_changed()
        except Exception:  # a bus problem must never break the core's bookkeeping
            log.exception("%s: announcing the new processor failed", getattr(proc, "name", "?"))

    def processor_removed(self, proc: Any) -> None:
        if self._closed or self._tree is None:
            return
        try:
            path = self._tree.find(proc)
            if path is None:
                return
            self._remove(path, proc)
            self._emit(MANAGER_PATH, OBJECT_MANAGER, "InterfacesRemoved", "(oas)",
                       path, [PROCESSOR])
            self._emit(MANAGER_PATH, MANAGER, "ProcessorRemoved", "(o)", path)
            self._processors_changed()
        except Exception:
            log.exception("%s: announcing the removal failed", getattr(proc, "name", "?"))

    # ProcessorListener

    def properties_changed(self, proc: Any, changed: Mapping[str, Any]) -> None:
        if self._closed or self._tree is None:
            return
        try:
            path = self._tree.find(proc)
            values = self._tree.changed_properties(changed)
            if path is not None and values:
                self._emit(path, PROPERTIES, "PropertiesChanged", "(sa{sv}as)",
                           PROCESSOR, values, [])
        except Exception:
            log.exception("%s: announcing property changes failed", getattr(proc, "name", "?"))

    def crashed(self, proc: Any, crash_type: str, time_usec: int, coredump: str) -> None:
        if self._closed or self._tree is None:
            return
        try:
            path = self._tree.find(proc)
            if path is not None:
                self._emit(path, PROCESSOR, "Crashed", "(sts)",
                           str(crash_type), int(time_usec or 0), str(coredump or ""))
        except Exception:
            log.exception("%s: announcing the crash failed", getattr(proc, "name", "?"))

    def _processors_changed(self) -> None:
        assert self._tree is not None
        self._emit(MANAGER_PATH, PROPERTIES, "PropertiesChanged", "(sa{sv}as)",
                   MANAGER, {"Processors": GLib.Variant("ao", self._tree.paths())}, [])

    def _emit(self, path: str, interface: str, name: str, signature: str, *args: Any) -> None:
        try:
            self._conn.emit_signal(None, path, interface, name, GLib.Variant(signature, args))
        except GLib.Error as err:
            log.warning("cannot emit %s.%s on %s: %s", interface, name, path, err.message)

    # method calls

    def _on_call(
        self,
        _conn: Gio.DBusConnection,
        sender: str,
        path: str,
        interface: str,
        method: str,
        params: GLib.Variant,
        invocation: Gio.DBusMethodInvocation,
    ) -> None:
        """Every method call: look up the action, authorize, then run the handler."""
        if self._release_invocations:
            # The reference GLib gave the closure (see method_call_registrar).
            # Our Python wrapper keeps its own until Reply has answered, so a
            # deferred reply stays valid; then the invocation is freed.
            invocation._unref()
        target = self._describe(path)
        reply = Reply(invocation, f"{target}.{method}")
        try:
            action = required_action(interface, method)
        except NotInTable:
            reply.error(ACCESS_DENIED, f"{interface}.{method} is not allowed: it is not in "
                        "rprocd's authorization table")
            return
        args = tuple(params.unpack())
        message = invocation.get_message()
        assert self._methods is not None and self._authorizer is not None
        if action is None:
            self._methods.call(path, interface, method, args, reply, message)
            return

        def verdict(denied: str | None) -> None:
            if denied is not None:
                reply.error(ACCESS_DENIED, f"{target}: {method}() refused: {denied}")
            else:
                self._methods.call(path, interface, method, args, reply, message)

        self._authorizer.check(sender, action, verdict)

    def _describe(self, path: str) -> str:
        """"m4" for a processor's path, "rprocd" for the manager (messages, log)."""
        proc = self._tree.get(path) if self._tree is not None else None
        return str(proc.name) if proc is not None else "rprocd"
