"""rprocctl: control rprocd from a shell, over the system D-Bus (org.rprocd1).

A pydbus client, plus Gio for the one call pydbus cannot make (ImportFirmware
passes a file descriptor). Errors are one line on stderr and exit codes that
scripts can rely on; the --help text is generated from the same tables the
code uses, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

BUS_NAME = "org.rprocd1"
MANAGER_PATH = "/org/rprocd1"
MANAGER = "org.rprocd1.Manager"
PROCESSOR = "org.rprocd1.Processor"
PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
DEFAULT_TIMEOUT = 90.0  # polkit may wait up to 60 s for a password, then the operation runs

# Exit status: the single source for the code and for --help.
OK, FAILED, USAGE, NO_PROCESSOR, DENIED, NO_DAEMON, TIMEOUT = range(7)
EXIT_CODES = {
    OK: "success",
    FAILED: "the operation failed: an error from the daemon, a local firmware file that "
    "cannot be read, or `inspect` found errors in the image",
    USAGE: "usage error (bad command line)",
    NO_PROCESSOR: "no such processor",
    DENIED: "access denied (not authorized; see polkit action org.rprocd1.manage)",
    NO_DAEMON: "rprocd is not running, or the system bus is unavailable",
    TIMEOUT: "timeout: the daemon's own Timeout error, or no answer within --timeout",
}

# D-Bus error name -> exit status; any other error from the daemon is FAILED.
ERROR_EXIT = {
    "org.rprocd1.Error.NoSuchProcessor": NO_PROCESSOR,
    "org.freedesktop.DBus.Error.UnknownObject": NO_PROCESSOR,
    "org.freedesktop.DBus.Error.AccessDenied": DENIED,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": DENIED,
    "org.freedesktop.DBus.Error.ServiceUnknown": NO_DAEMON,
    "org.freedesktop.DBus.Error.NameHasNoOwner": NO_DAEMON,
    "org.freedesktop.DBus.Error.NoServer": NO_DAEMON,
    "org.freedesktop.DBus.Error.Disconnected": NO_DAEMON,
    "org.freedesktop.DBus.Error.Spawn.ChildExited": NO_DAEMON,
    "org.freedesktop.DBus.Error.Spawn.ExecFailed": NO_DAEMON,
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound": NO_DAEMON,
    "org.freedesktop.DBus.Error.Spawn.Failed": NO_DAEMON,
    "org.rprocd1.Error.Timeout": TIMEOUT,
    "org.freedesktop.DBus.Error.NoReply": TIMEOUT,
    "org.freedesktop.DBus.Error.Timeout": TIMEOUT,
    "org.freedesktop.DBus.Error.TimedOut": TIMEOUT,
}

# Properties in the order `status` shows them (the order of the XML).
FIELDS = (
    "Name", "Device", "State", "Operation", "Failed", "LastError", "Firmware",
    "DefaultFirmware", "FirmwareFormat", "Recovery", "RestartPolicy", "CoredumpMode",
    "CrashCount", "LastCrashType", "LastCrashTime", "LastCoredump", "RunningSince",
    "RpmsgChannels", "TraceBuffers",
)
TIMES = frozenset({"LastCrashTime", "RunningSince"})


class CtlError(Exception):
    """One line for stderr and the exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


def from_glib(err: GLib.Error) -> CtlError:
    """A D-Bus/GIO error as the user should read it, with its exit status."""
    name = Gio.DBusError.get_remote_error(err) if Gio.DBusError.is_remote_error(err) else None
    message = err.message
    if name:
        message = message.removeprefix(f"GDBus.Error:{name}: ")
        if name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
            message = f"rprocd is not running ({BUS_NAME} is not on the system bus)"
        status = ERROR_EXIT.get(name, FAILED)
        if name.startswith("org.freedesktop.DBus.Error.Spawn."):
            status = NO_DAEMON
        return CtlError(message, status)
    if err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT):
        return CtlError("no answer from rprocd in time (see --timeout)", TIMEOUT)
    if err.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CLOSED):
        return CtlError("the system bus connection closed", NO_DAEMON)
    return CtlError(message, FAILED)


class Daemon:
    """The calls rprocctl makes, with one timeout and errors as CtlError."""

    def __init__(self, timeout: float) -> None:
        from pydbus import SystemBus

        self.timeout = timeout
        self._proxies: dict[str, Any] = {}
        try:
            self.bus = SystemBus()
        except GLib.Error as err:
            raise CtlError(f"cannot connect to the system bus: {err.message}", NO_DAEMON) from None

    def _proxy(self, path: str, interface: str) -> Any:
        try:
            if path not in self._proxies:  # each proxy costs an Introspect round trip
                self._proxies[path] = self.bus.get(BUS_NAME, path, timeout=self.timeout)
            return self._proxies[path][interface]
        except GLib.Error as err:
            raise from_glib(err) from None
        except KeyError:
            raise CtlError(f"{path}: no {interface} there", NO_PROCESSOR) from None

    def call(self, path: str, interface: str, method: str, *args: Any) -> Any:
        proxy = self._proxy(path, interface)
        try:
            return getattr(proxy, method)(*args, timeout=self.timeout)
        except GLib.Error as err:
            raise from_glib(err) from None

    def processor(self, name: str) -> str:
        """The object path of a processor by kernel name or remoteprocN."""
        return self.call(MANAGER_PATH, MANAGER, "GetProcessor", name)

    def properties(self, path: str) -> dict[str, Any]:
        return self.call(path, PROPERTIES, "GetAll", PROCESSOR)

    def all_processors(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, properties) of every processor, in the daemon's order."""
        objects = self.call(MANAGER_PATH, OBJECT_MANAGER, "GetManagedObjects")
        order = self.call(MANAGER_PATH, PROPERTIES, "Get", MANAGER, "Processors")
        paths = [p for p in order if p in objects] + sorted(set(objects) - set(order))
        return [(path, objects[path].get(PROCESSOR, {})) for path in paths]

    def import_firmware(self, file: Path) -> str:
        """Pass an open image to ImportFirmware; the daemon never opens our path."""
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise CtlError(f"{file}: {err.strerror}", FAILED) from None
        fds = Gio.UnixFDList.new()
        try:
            index = fds.append(fd)
        finally:
            os.close(fd)
        try:
            result, _out = self.bus.con.call_with_unix_fd_list_sync(
                BUS_NAME, MANAGER_PATH, MANAGER, "ImportFirmware",
                GLib.Variant("(hs)", (index, file.name)), GLib.VariantType("(s)"),
                Gio.DBusCallFlags.NONE, int(self.timeout * 1000), fds, None,
            )
        except GLib.Error as err:
            raise from_glib(err) from None
        return result.unpack()[0]


# --- output -------------------------------------------------------------------


def human(field: str, value: Any) -> str:
    if field in TIMES:
        if not value:
            return "-"
        return datetime.fromtimestamp(value / 1e6).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-"
    return "-" if value == "" or value is None else str(value)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def status_block(props: dict[str, Any]) -> str:
    title = f"{props.get('Name', '?')} ({props.get('Device', '?')})"
    lines = [title]
    for field in FIELDS[2:]:
        if field in props:
            lines.append(f"  {field + ':':<17}{human(field, props[field])}")
    return "\n".join(lines)


def outcome(props: dict[str, Any]) -> str:
    """`m4: running (firmware rproc-m4-fw)`: what a mutating command left behind."""
    text = f"{props.get('Name', '?')}: {props.get('State', '?')}"
    if props.get("State") in ("running", "attached") and props.get("Firmware"):
        text += f" (firmware {props['Firmware']})"
    if props.get("Failed"):
        text += f"; failed: {props.get('LastError') or 'see status'}"
    return text


# --- commands -----------------------------------------------------------------


def cmd_list(daemon: Daemon, args: argparse.Namespace) -> int:
    procs = daemon.all_processors()
    if args.json:
        print_json([{"Path": path, **props} for path, props in procs])
        return OK
    if not procs:
        print("no remote processors")
        return OK
    rows = [["NAME", "DEVICE", "STATE", "OPERATION", "FIRMWARE", "FAILED"]]
    for _path, p in procs:
        rows.append([human(f, p.get(f, "")) for f in
                     ("Name", "Device", "State", "Operation", "Firmware", "Failed")])
    print(table(rows))
    return OK


def cmd_status(daemon: Daemon, args: argparse.Namespace) -> int:
    if args.name:
        path = daemon.processor(args.name)
        props = daemon.properties(path)
        print_json({"Path": path, **props}) if args.json else print(status_block(props))
        return OK
    procs = daemon.all_processors()
    if args.json:
        print_json([{"Path": path, **props} for path, props in procs])
    else:
        print("\n\n".join(status_block(props) for _path, props in procs) or "no remote processors")
    return OK


def is_local_file(firmware: str) -> bool:
    """./x.elf or any name with a '/' is a file here; a bare name is the daemon's."""
    return "/" in firmware or os.path.isfile(firmware)


def operate(method: str, with_firmware: bool) -> Callable[[Daemon, argparse.Namespace], int]:
    def run(daemon: Daemon, args: argparse.Namespace) -> int:
        path = daemon.processor(args.name)
        call_args: tuple = ()
        if with_firmware:
            firmware = args.firmware or ""
            if firmware and is_local_file(firmware):
                firmware = daemon.import_firmware(Path(firmware))
            call_args = (firmware,)
        daemon.call(path, PROCESSOR, method, *call_args)
        props = daemon.properties(path)
        print_json({"Path": path, **props}) if args.json else print(outcome(props))
        return OK

    return run


def cmd_reset_failed(daemon: Daemon, args: argparse.Namespace) -> int:
    path = daemon.processor(args.name)
    daemon.call(path, PROCESSOR, "ResetFailed")
    if args.json:
        print_json({"Path": path, **daemon.properties(path)})
    return OK


def cmd_logs(daemon: Daemon, args: argparse.Namespace) -> int:
    path = daemon.processor(args.name)
    text = daemon.call(path, PROCESSOR, "ReadTrace", args.buffer)
    if args.json:
        print_json({"Name": args.name, "Buffer": args.buffer or "trace0", "Text": text})
    else:
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return OK


def cmd_reload(daemon: Daemon, args: argparse.Namespace) -> int:
    daemon.call(MANAGER_PATH, MANAGER, "Reload")
    if args.json:
        print_json({"reloaded": True})
    return OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """A local file is checked here, without the daemon; a name by the daemon."""
    if is_local_file(args.target):
        from rprocd.firmware import validate_file

        try:
            report = validate_file(Path(args.target), None)
        except OSError as err:
            raise CtlError(f"{args.target}: {err.strerror or err}", FAILED) from None
        data = report.to_dict()
        text = None
        if not args.json:
            from rprocd.firmware.report_text import format_report

            text = format_report(report)
    else:
        daemon = Daemon(args.timeout)
        data = daemon.call(MANAGER_PATH, MANAGER, "InspectFirmware", args.target)
        text = None if args.json else report_text(data)
    if args.json:
        print_json(data)
    else:
        sys.stdout.write(text)
    return FAILED if data.get("valid") is False else OK


def report_text(data: dict[str, Any]) -> str:
    """The daemon's report in the same layout as a local one, if it fits."""
    try:
        from rprocd.firmware.findings import Finding, Report
        from rprocd.firmware.report_text import format_report

        report = Report(
            path=data.get("path", ""), size=data.get("size", 0),
            format=data.get("format", "unknown"), elf_class=data.get("elf_class", 0),
            endianness=data.get("endianness", ""),
            machine=None if data.get("machine", -1) < 0 else data["machine"],
            machine_name=data.get("machine_name", ""),
            entry=data.get("entry") if data.get("has_entry") else None,
            boot_vector=data.get("boot_vector", {}), segments=data.get("segments", []),
            resource_table=data.get("resource_table", {}), signed=data.get("signed", {}),
            findings=[Finding(**f) for f in data.get("findings", [])],
        )
        return format_report(report)
    except Exception:  # noqa: BLE001 - a newer daemon's report: show it plainly
        return "".join(f"{line}\n" for line in nested(data))


def nested(value: Any, indent: str = "") -> list[str]:
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines += [f"{indent}{key}:", *nested(item, indent + "  ")]
        elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
            lines.append(f"{indent}{key}:")
            for element in item:
                lines += [f"{indent}  -", *nested(element, indent + "    ")]
        else:
            lines.append(f"{indent}{key}: {human(key, item)}")
    return lines


def cmd_monitor(daemon: Daemon, args: argparse.Namespace) -> int:
    """One line per event until SIGINT/SIGTERM; survives daemon restarts."""
    names = {path: str(props.get("Name", "")) for path, props in daemon.all_processors()}

    def name_of(path: str) -> str:
        if path not in names:
            from rprocd.naming import unescape

            names[path] = unescape(path.rsplit("/", 1)[-1])
        return names[path]

    def emit(event: str, text: str, **data: Any) -> None:
        now = datetime.now().astimezone()
        if args.json:
            print(json.dumps({"time": now.isoformat(), "event": event, **data}), flush=True)
        else:
            print(f"{now:%H:%M:%S.%f}"[:-3] + f" {text}", flush=True)

    def on_signal(_sender: str, path: str, iface: str, member: str, params: tuple) -> None:
        if iface == PROPERTIES and member == "PropertiesChanged" and params[0] == PROCESSOR:
            changed = params[1]
            pairs = " ".join(f"{k}={json.dumps(v) if v == '' else human(k, v)}"
                             for k, v in changed.items())
            emit("changed", f"{name_of(path)}: {pairs}", processor=name_of(path), path=path,
                 changed=changed)
        elif iface == PROCESSOR and member == "Crashed":
            crash_type, time_usec, coredump = params
            emit("crashed", f"{name_of(path)}: crashed ({crash_type})"
                 + (f", coredump {coredump}" if coredump else ""),
                 processor=name_of(path), path=path, type=crash_type, time_usec=time_usec,
                 coredump=coredump)
        elif iface == MANAGER and member in ("ProcessorAdded", "ProcessorRemoved"):
            (obj,) = params
            if member == "ProcessorAdded":
                try:
                    names[obj] = str(daemon.properties(obj).get("Name", "")) or name_of(obj)
                except CtlError:
                    pass
            verb = "added" if member == "ProcessorAdded" else "removed"
            emit(verb, f"{name_of(obj)}: {verb}", processor=name_of(obj), path=obj)

    def on_owner(_sender: str, _path: str, _iface: str, _member: str, params: tuple) -> None:
        _name, old, new = params
        if new and not old:
            emit("daemon-started", "rprocd: started")
        elif old and not new:
            emit("daemon-stopped", "rprocd: stopped")

    daemon.bus.subscribe(sender=BUS_NAME, signal_fired=on_signal)
    daemon.bus.subscribe(sender="org.freedesktop.DBus", iface="org.freedesktop.DBus",
                         signal="NameOwnerChanged", arg0=BUS_NAME, signal_fired=on_owner)
    loop = GLib.MainLoop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, lambda: loop.quit() or False)
    if not args.json:
        print(f"watching {len(names)} processor(s); Ctrl-C to stop", flush=True)
    loop.run()
    return OK


# --- command line -------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"rprocctl: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    epilog = "NAME is a kernel name (m4) or a device (remoteproc0).\n" \
        "FIRMWARE with a '/' or naming an existing file is a local file: rprocctl\n" \
        "opens it and hands it to the daemon (ImportFirmware); otherwise it is a\n" \
        "name in the daemon's firmware search path.\n\nexit status:\n" + "\n".join(
            textwrap.fill(text, 76, initial_indent=f"  {code}  ", subsequent_indent="     ")
            for code, text in EXIT_CODES.items())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SEC",
                        help=f"give up waiting for the daemon (default {DEFAULT_TIMEOUT:g})")
    parser = Parser(prog="rprocctl", description="Control remote processors through rprocd.",
                    epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SEC",
                        help=f"give up waiting for the daemon (default {DEFAULT_TIMEOUT:g})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name: str, help_text: str, run: Callable, *arguments: tuple[str, dict]) -> None:
        cmd = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        for arg, options in arguments:
            cmd.add_argument(arg, **options)
        cmd.set_defaults(run=run)

    name = ("name", {"metavar": "NAME"})
    firmware = ("firmware", {"metavar": "FIRMWARE", "nargs": "?", "default": ""})
    add("list", "list processors", cmd_list)
    add("status", "show one processor, or all", cmd_status,
        ("name", {"metavar": "NAME", "nargs": "?"}))
    add("start", "start FIRMWARE (default: the configured one)", operate("Start", True),
        name, firmware)
    add("stop", "stop the processor", operate("Stop", False), name)
    add("restart", "stop, then start FIRMWARE (a switch, rolled back on failure)",
        operate("Restart", True), name, firmware)
    add("detach", "leave the firmware running without the kernel", operate("Detach", False),
        name)
    add("recover", "recover a crashed processor now", operate("Recover", False), name)
    add("reset-failed", "clear the failed flag and last error", cmd_reset_failed, name)
    add("inspect", "validate a local firmware FILE, or NAME in the daemon's search path",
        None, ("target", {"metavar": "FILE|NAME"}))
    add("logs", "print the processor's trace buffer", cmd_logs, name,
        ("buffer", {"metavar": "BUFFER", "nargs": "?", "default": ""}))
    add("monitor", "print state changes, crashes and hotplug until Ctrl-C", cmd_monitor)
    add("reload", "re-read the daemon's configuration", cmd_reload)
    return parser


def context(args: argparse.Namespace) -> str:
    """The name errors are prefixed with: NAME, FILE, or nothing."""
    return str(getattr(args, "name", None) or getattr(args, "target", None) or "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            return cmd_inspect(args)
        return args.run(Daemon(args.timeout), args)
    except CtlError as err:
        message = " ".join(str(err).split())
        where = context(args)
        if where and not message.startswith(f"{where}:") and err.status != NO_DAEMON:
            message = f"{where}: {message}"
        print(f"rprocctl: {message}", file=sys.stderr)
        return err.status
    except BrokenPipeError:
        sys.stderr.close()  # `rprocctl list | head`: not an error
        return OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
