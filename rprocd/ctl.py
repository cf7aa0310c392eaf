"""rprocctl: control rprocd from a shell, over the system D-Bus (org.rprocd1).

A pydbus client, plus Gio for the one call pydbus cannot make (ImportFirmware
passes a file descriptor). Errors are one line on stderr and exit codes that
scripts can rely on; the --help text is generated from the same tables the
code uses, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import textwrap
import time
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
    "cannot be read, `inspect` found errors in the image, or no such coredump",
    USAGE: "usage error (bad command line, or `coredump export` to a terminal)",
    NO_PROCESSOR: "no such processor",
    DENIED: "access denied: not authorized (see polkit action org.rprocd1.manage), or the "
    "saved coredumps are not readable (they are root's)",
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
FOLLOW_INTERVAL = 0.5  # `logs -f`: seconds between two reads of the trace buffer


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
    if args.follow:
        return follow_logs(daemon, path, args)
    text = daemon.call(path, PROCESSOR, "ReadTrace", args.buffer)
    if args.json:
        print_json({"Name": args.name, "Buffer": args.buffer or "trace0", "Text": text})
    else:
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return OK


def follow_logs(daemon: Daemon, path: str, args: argparse.Namespace) -> int:
    """`logs -f`: the buffer now, then its new lines until SIGINT/SIGTERM (exit 0).

    The kernel gives snapshots only; `rprocd.trace.TraceFollower` turns them into
    new lines, and starts afresh when RunningSince changes (a restart: the new
    run rewrites the buffer from its start). While the buffer is gone (stopped,
    crashed, recovering) the daemon's reason is printed once on stderr, and
    following goes on when the firmware runs again. Lines written between the
    last read and a restart are lost here (the coredump's .trace keeps them)."""
    from rprocd.trace import TraceFollower

    buffer = args.buffer or "trace0"
    follower = TraceFollower()

    def emit(lines: list[str]) -> None:
        for line in lines:
            if args.json:
                print(json.dumps({"Name": args.name, "Buffer": buffer, "Line": line}), flush=True)
            else:
                print(line, flush=True)

    def running_since() -> int:
        return int(daemon.call(path, PROPERTIES, "Get", PROCESSOR, "RunningSince"))

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        since = running_since()  # errors of the first read are the command's
        emit(follower.feed(daemon.call(path, PROCESSOR, "ReadTrace", args.buffer).encode()))
        unavailable = ""  # the reason last printed while the buffer cannot be read
        while True:
            time.sleep(FOLLOW_INTERVAL)
            try:
                before = running_since()
                text = daemon.call(path, PROCESSOR, "ReadTrace", args.buffer)
                after = running_since()
            except CtlError as err:
                if err.status not in (FAILED, NO_PROCESSOR, NO_DAEMON, TIMEOUT):
                    raise
                message = error_line(err, args.name)
                if message != unavailable:  # once per reason, not every 0.5 s
                    print(message, file=sys.stderr, flush=True)
                    unavailable = message
                continue
            unavailable = ""
            if before != after:
                continue  # (re)started while we read: which run the text is from is unclear
            if after and after != since:
                emit(follower.reset())  # the previous run's unfinished last line
                since = after
            emit(follower.feed(text.encode()))
    except KeyboardInterrupt:
        return OK


# --- coredumps: read from CoredumpDirectory= directly (API v1 has no call for them) ---


def coredump_store() -> Any:
    """The daemon's coredump store, where its configuration puts it."""
    from rprocd import config as cfg
    from rprocd.coredump import CoredumpStore
    from rprocd.errors import ConfigError
    from rprocd.paths import Paths

    paths = Paths.from_environ()
    try:
        config = cfg.load(paths)
    except ConfigError as err:
        raise CtlError(str(err), FAILED) from None
    except OSError as err:  # the configuration directory itself is not readable
        raise CtlError(f"cannot read the configuration in {paths.config_dir}: {err.strerror}",
                       DENIED if err.errno in (errno.EACCES, errno.EPERM) else FAILED) from None
    return CoredumpStore(config.manager.coredump_directory, config.processor("*").coredump_keep)


def _denied(directory: Path, what: str) -> CtlError:
    return CtlError(f"cannot read {what} in {directory}: permission denied; the saved "
                    "coredumps are root's (sudo rprocctl coredump ...)", DENIED)


def dump_names(directory: Path) -> list[str]:
    """The directory's entries; none if it does not exist yet (no dump saved)."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise _denied(directory, "the coredumps") from None
    except OSError as err:
        raise CtlError(f"cannot read the coredumps in {directory}: {err.strerror}",
                       FAILED) from None


def dump_id(text: str) -> str:
    """An id as `coredump list` shows it, or a dump's file name or path (LastCoredump)."""
    name = Path(text).name
    for suffix in (".core", ".json", ".trace"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_dump(store: Any, text: str) -> dict[str, Any]:
    directory = store.directory
    dump_names(directory)  # a directory we may not read is exit 4, not "no such dump"
    ident = dump_id(text)
    for suffix in (".json", ".core"):
        file = directory / f"{ident}{suffix}"
        if os.path.exists(file) and not os.access(file, os.R_OK):
            raise _denied(directory, file.name)
    try:
        return store.get(ident)
    except KeyError:
        raise CtlError(f"no coredump '{text}' in {directory}; rprocctl coredump list shows "
                       "them", FAILED) from None


def public(entry: dict[str, Any]) -> dict[str, Any]:
    """A dump's metadata as saved, plus where its files are."""
    return {k: v for k, v in entry.items() if k not in ("core_name", "seq")}


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


def core_names(core: str) -> set[str]:
    """A core's kernel name; `remoteprocN` is looked up in sysfs (no daemon needed)."""
    from rprocd.paths import Paths

    names = {core}
    try:
        sysfs = Paths.from_environ().sysfs
        names.add((sysfs / "class" / "remoteproc" / core / "name").read_text().strip())
    except OSError:
        pass
    return names


def cmd_coredump_list(args: argparse.Namespace) -> int:
    store = coredump_store()
    directory = store.directory
    names = dump_names(directory)
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            if not os.access(directory / name, os.R_OK):
                raise _denied(directory, name)
    entries = store.list()
    if args.core:
        wanted = core_names(args.core)
        entries = [e for e in entries if e.get("core") in wanted]
    if args.json:
        print_json([public(e) for e in entries])
        return OK
    if not entries:
        print(f"no coredumps in {directory}" + (f" of {args.core}" if args.core else ""))
        return OK
    rows = [["ID", "CORE", "TIME", "TYPE", "SIZE", "FIRMWARE"]]
    for e in entries:
        rows.append([e["id"], str(e.get("core", "")), human("LastCrashTime", e.get("time_usec")),
                     str(e.get("crash_type") or "-"), size_text(int(e.get("size", 0))),
                     str(e.get("firmware") or "-")])
    print(table(rows))
    return OK


def cmd_coredump_show(args: argparse.Namespace) -> int:
    entry = find_dump(coredump_store(), args.id)
    if args.json:
        print_json(public(entry))
        return OK
    trace_path = entry.get("trace_path") or ""
    firmware = str(entry.get("firmware") or "-")
    if entry.get("firmware_sha256"):
        firmware += f" (sha256 {entry['firmware_sha256']})"
    lines = [
        entry["id"],
        f"  {'Core:':<11}{entry.get('core', '?')} ({entry.get('device') or '?'})",
        f"  {'Crash:':<11}{entry.get('crash_type') or 'unknown'}, "
        f"{human('LastCrashTime', entry.get('time_usec'))}",
        f"  {'Firmware:':<11}{firmware}",
        f"  {'Coredump:':<11}{entry['path']}",
        f"  {'':<11}{entry.get('format', '?')}, {entry.get('size', 0)} bytes, "
        f"sha256 {entry.get('sha256') or '?'}",
        f"  {'Trace:':<11}{trace_path or '-'}",
    ]
    print("\n".join(lines))
    if trace_path:
        try:
            text = Path(trace_path).read_bytes().decode("utf-8", "replace")
        except OSError:
            text = ""
        tail = [line for line in text.splitlines() if line.strip()][-10:]
        if tail:
            print("\n  Last trace lines:")
            print("\n".join(f"    {line}" for line in tail))
    return OK


def cmd_coredump_export(args: argparse.Namespace) -> int:
    import hashlib

    to_stdout = args.output in (None, "-")
    if to_stdout and args.json:
        raise CtlError("--json needs -o FILE: the dump itself goes to standard output", USAGE)
    if args.output is None and sys.stdout.isatty():
        raise CtlError("refusing to write a binary coredump to a terminal; use -o FILE, "
                       "-o - or a redirection", USAGE)
    entry = find_dump(coredump_store(), args.id)
    source = Path(entry["path"])
    target = None if to_stdout else Path(args.output)
    if target is not None and target.is_dir():
        target = target / source.name
    digest = hashlib.sha256()
    size = 0
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below, with the target
    except OSError as err:
        raise CtlError(f"{source}: {err.strerror}",
                       DENIED if err.errno in (errno.EACCES, errno.EPERM) else FAILED) from None
    try:
        if target is None:
            out = sys.stdout.buffer
        else:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            except OSError as err:
                raise CtlError(f"{target}: {err.strerror}", FAILED) from None
            out = os.fdopen(fd, "wb")
        try:
            while chunk := src.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as err:
            raise CtlError(f"{target or 'standard output'}: {err.strerror}", FAILED) from None
        finally:
            if target is not None:
                out.close()
    finally:
        src.close()
    if entry.get("sha256") and digest.hexdigest() != entry["sha256"]:
        raise CtlError(f"{entry['id']}: the .core does not match the sha256 saved with it; "
                       "the file was damaged after it was saved", FAILED)
    if args.json:
        print_json({"Id": entry["id"], "Output": str(target), "Size": size,
                    "Sha256": digest.hexdigest()})
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
        "name in the daemon's firmware search path.\n" \
        "`coredump` reads the daemon's CoredumpDirectory= itself (no daemon needed;\n" \
        "the dumps are root's). `rprocctl coredump --help` lists its actions.\n\nexit status:\n" \
        + "\n".join(
            textwrap.fill(text, 76, initial_indent=f"  {code}  ", subsequent_indent="     ")
            for code, text in EXIT_CODES.items())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SEC",
                        help=f"give up waiting for the daemon (default {DEFAULT_TIMEOUT:g})")
    json_only = argparse.ArgumentParser(add_help=False)  # commands that need no daemon
    json_only.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="machine-readable output")
    parser = Parser(prog="rprocctl", description="Control remote processors through rprocd.",
                    epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SEC",
                        help=f"give up waiting for the daemon (default {DEFAULT_TIMEOUT:g})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def add(name: str, help_text: str, run: Callable | None, *arguments: tuple[str, dict],
            daemon: bool = True, where: Any = sub) -> argparse.ArgumentParser:
        cmd = where.add_parser(name, help=help_text, description=help_text,
                               parents=[common if where is sub else json_only])
        for arg, options in arguments:
            flags = arg if isinstance(arg, tuple) else (arg,)
            cmd.add_argument(*flags, **options)
        cmd.set_defaults(run=run, daemon=daemon)
        return cmd

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
    add("reset-failed", "clear the failed flag, last error and start limit", cmd_reset_failed,
        name)
    add("inspect", "validate a local firmware FILE, or NAME in the daemon's search path",
        cmd_inspect, ("target", {"metavar": "FILE|NAME"}), daemon=False)
    add("logs", "print the processor's trace buffer; -f: follow it until Ctrl-C", cmd_logs,
        name,
        (("-f", "--follow"), {"action": "store_true",
                              "help": f"print new lines as they come (read every "
                                      f"{FOLLOW_INTERVAL:g} s) until Ctrl-C"}),
        ("--buffer", {"metavar": "BUFFER", "default": "",
                      "help": "which buffer of TraceBuffers (default trace0)"}))
    dumps = sub.add_parser(
        "coredump", help="list, show or export saved coredumps",
        description="Saved coredumps, read from the daemon's CoredumpDirectory= (no daemon "
                    "needed; the files are root's).")
    actions = dumps.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    dump = ("id", {"metavar": "ID", "help": "an ID of `coredump list`, or the dump's file"})
    add("list", "list saved coredumps, newest first (of one processor with NAME)",
        cmd_coredump_list, ("core", {"metavar": "NAME", "nargs": "?"}), daemon=False,
        where=actions)
    add("show", "show a coredump's metadata and the firmware's last trace lines",
        cmd_coredump_show, dump, daemon=False, where=actions)
    add("export", "write the coredump (ELF core file) to FILE or standard output",
        cmd_coredump_export, dump,
        (("-o", "--output"), {"metavar": "FILE", "default": None,
                              "help": "where to write it ('-': standard output, also a "
                                      "terminal; a directory: ID.core in it)"}),
        daemon=False, where=actions)
    add("monitor", "print state changes, crashes and hotplug until Ctrl-C", cmd_monitor)
    add("reload", "re-read the daemon's configuration", cmd_reload)
    return parser


def context(args: argparse.Namespace) -> str:
    """The name errors are prefixed with: NAME, FILE, or nothing."""
    return str(getattr(args, "name", None) or getattr(args, "target", None) or "")


def error_line(err: CtlError, where: str) -> str:
    """`rprocctl: NAME: message`, one line."""
    message = " ".join(str(err).split())
    if where and not message.startswith(f"{where}:") and err.status not in (NO_DAEMON, USAGE):
        message = f"{where}: {message}"
    return f"rprocctl: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not args.daemon:  # inspect (a local file needs none), coredump
            return args.run(args)
        return args.run(Daemon(args.timeout), args)
    except CtlError as err:
        print(error_line(err, context(args)), file=sys.stderr)
        return err.status
    except BrokenPipeError:
        sys.stderr.close()  # `rprocctl list | head`: not an error
        return OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
