"""`rprocd.conf` + `rprocd.conf.d/*.conf` -> `Config` (design §3).

systemd-style INI: `[Manager]`, `[Processor NAME]`, `[Processor *]` (defaults
for every core), `Key=value`, `#`/`;` comments. Files are read in order
(the main file, then drop-ins in lexical order) and a later assignment wins;
an empty value (`Key=`) resets the key to its default. Any problem is a
`ConfigError` with `file:line: message`, so the integrator sees where to look.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .paths import Paths

_BOOLEANS = {
    "yes": True, "true": True, "on": True, "1": True,
    "no": False, "false": False, "off": False, "0": False,
}

_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")

# Timers are armed with GLib.timeout_add (milliseconds in a signed int).
MAX_TIMESPAN = (2**31 - 1) / 1000
_PATH_MAX, _NAME_MAX = 4095, 255  # as rprocd.firmware.search (bytes)

LOG_LEVELS = ("debug", "info", "notice", "warning", "err", "crit", "alert", "emerg")

# The parsers return a value or raise ValueError with the sentence that tells
# the user what is accepted.


def parse_bool(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError("expected yes or no") from None


def parse_timespan(text: str) -> float:
    """`500ms`, `2s`, `1min 30s`, `1.5s`, bare number = seconds -> seconds."""
    pos, total = 0, 0.0
    stripped = text.strip()
    if not stripped:
        raise ValueError("expected a time span such as 500ms, 2s or 1min")
    while pos < len(stripped):
        m = _TIME_PART.match(stripped, pos)
        if not m or m.end() == pos:
            raise ValueError("expected a time span such as 500ms, 2s or 1min")
        number, unit = m.groups()
        if unit and unit not in _TIME_UNITS:
            raise ValueError(f"unknown time unit '{unit}'; use ms, s, min or h")
        total += float(number) * _TIME_UNITS[unit or "s"]
        pos = m.end()
    if total > MAX_TIMESPAN:
        raise ValueError(
            f"too long: at most {int(MAX_TIMESPAN // 3600)}h (the longest timer GLib can arm)")
    return total


def _positive_timespan(text: str) -> float:
    value = parse_timespan(text)
    if value <= 0:
        raise ValueError("must be more than 0, e.g. 500ms")
    return value


def _poll_interval(text: str) -> float:
    value = parse_timespan(text)
    if value < 0.01:
        raise ValueError("must be at least 10ms (polling faster only burns CPU)")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("expected a whole number, 0 or more")
    return int(text)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
            raise ValueError(f"expected {listed}")
        return text

    return parse


def _absolute_path(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError("expected an absolute path, starting with /")
    return Path(text)


def _path_list(text: str) -> tuple[Path, ...]:
    return tuple(_absolute_path(item) for item in text.split())


def _firmware_name(text: str) -> str:
    """The rules of rprocd.firmware.search.check_name, at load time, so that
    DefaultFirmware never shows a name Start("") would refuse."""
    if text.startswith("/") or any(part == ".." for part in text.split("/")):
        raise ValueError("a firmware name is a file name under the firmware search path, no '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("a firmware name has no control characters")
    encoded = text.encode("utf-8", "surrogateescape")
    if len(encoded) > _PATH_MAX or any(len(p) > _NAME_MAX for p in encoded.split(b"/")):
        raise ValueError(f"too long: at most {_PATH_MAX} bytes, {_NAME_MAX} per component")
    return text


def _group(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?", text):
        raise ValueError("expected a group name")
    return text


@dataclass(frozen=True)
class ManagerConfig:
    poll_interval: float = 1.0
    firmware_directories: tuple[Path, ...] = ()
    import_directory: Path = Path("/lib/firmware/rprocd")
    import_keep: int = 8
    allow_group: str = ""
    coredump_directory: Path = Path("/var/lib/rprocd/coredump")
    log_level: str = "info"


@dataclass(frozen=True)
class ProcessorConfig:
    firmware: str = ""  # "" = the kernel's default name for the core
    auto_start: bool = False
    early_boot: str = "adopt"
    restart: str = "kernel"
    restart_sec: float = 1.0
    start_limit_burst: int = 5
    start_limit_interval: float = 10.0
    shutdown_timeout: float = 0.5
    start_timeout: float = 10.0
    stop_on_exit: bool = False
    coredump: str = ""  # "" = leave the kernel's mode
    coredump_keep: int = 5
    trace_forward: bool = True
    require_resource_table: bool = True
    validate: bool = True


# key -> (dataclass field, parser)
_MANAGER_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "PollIntervalSec": ("poll_interval", _poll_interval),
    "FirmwareDirectories": ("firmware_directories", _path_list),
    "ImportDirectory": ("import_directory", _absolute_path),
    "ImportKeep": ("import_keep", _count),
    "AllowGroup": ("allow_group", _group),
    "CoredumpDirectory": ("coredump_directory", _absolute_path),
    "LogLevel": ("log_level", _choice(*LOG_LEVELS)),
}

_PROCESSOR_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "Firmware": ("firmware", _firmware_name),
    "AutoStart": ("auto_start", parse_bool),
    "EarlyBoot": ("early_boot", _choice("adopt", "restart")),
    "Restart": ("restart", _choice("no", "on-crash", "kernel")),
    "RestartSec": ("restart_sec", parse_timespan),
    "StartLimitBurst": ("start_limit_burst", _count),
    "StartLimitIntervalSec": ("start_limit_interval", parse_timespan),
    "ShutdownTimeoutSec": ("shutdown_timeout", _positive_timespan),
    "StartTimeoutSec": ("start_timeout", _positive_timespan),
    "StopOnExit": ("stop_on_exit", parse_bool),
    "Coredump": ("coredump", _choice("disabled", "enabled", "inline")),
    "CoredumpKeep": ("coredump_keep", _count),
    "TraceForward": ("trace_forward", parse_bool),
    "RequireResourceTable": ("require_resource_table", parse_bool),
    "Validate": ("validate", parse_bool),
}


@dataclass(frozen=True)
class Config:
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    defaults: dict[str, object] = field(default_factory=dict)  # [Processor *], by field
    processors: dict[str, dict[str, object]] = field(default_factory=dict)  # by kernel name
    sources: tuple[Path, ...] = ()

    def processor(self, name: str) -> ProcessorConfig:
        """Effective settings of core `name`: built-in defaults < `[Processor *]` < its own."""
        return replace(ProcessorConfig(), **{**self.defaults, **self.processors.get(name, {})})


def config_files(paths: Paths) -> list[Path]:
    """The files that make the configuration, in the order they apply."""
    files = [paths.config_file] if paths.config_file.exists() else []
    if paths.config_dropins.is_dir():
        files += sorted(p for p in paths.config_dropins.glob("*.conf") if p.is_file())
    return files


def load(paths: Paths) -> Config:
    """Read the configuration of `paths.config_dir`; a missing file means defaults."""
    base = ManagerConfig(
        import_directory=paths.firmware_root / "rprocd",
        coredump_directory=paths.state_dir / "coredump",
    )
    return parse_files(config_files(paths), base)


def parse_files(files: Sequence[Path], base: ManagerConfig | None = None) -> Config:
    base = base or ManagerConfig()
    manager: dict[str, object] = {}
    defaults: dict[str, object] = {}
    processors: dict[str, dict[str, object]] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, None, f"cannot read: {exc}") from None
        for section, key, value, line in _parse(path, text.splitlines()):
            if section == "Manager":
                target, keys = manager, _MANAGER_KEYS
            elif section == "Processor *":
                target, keys = defaults, _PROCESSOR_KEYS
            else:
                target, keys = processors.setdefault(section[10:], {}), _PROCESSOR_KEYS
            attr, parser = keys[key]
            if value == "":
                target.pop(attr, None)
                continue
            try:
                target[attr] = parser(value)
            except ValueError as exc:
                raise ConfigError(path, line, f"bad value '{value}' for {key}=: {exc}") from None
    return Config(
        manager=replace(base, **manager),
        defaults=defaults,
        processors=processors,
        sources=tuple(files),
    )


def _parse(path: Path, lines: Iterable[str]) -> Iterable[tuple[str, str, str, int]]:
    """Yield (section, key, value, line number), checking names and duplicates."""
    section: str | None = None
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = _section(path, number, line)
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(path, number, f"expected Key=value, got '{line}'")
        if section is None:
            raise ConfigError(
                path, number,
                f"'{key}=' is outside a section; put it under [Manager] or [Processor NAME]",
            )
        _check_key(path, number, section, key)
        if (section, key) in seen:
            raise ConfigError(
                path, number,
                f"{key}= is already set in [{section}] on line {seen[section, key]}; keep one",
            )
        seen[section, key] = number
        yield section, key, value, number


def _section(path: Path, number: int, line: str) -> str:
    if not line.endswith("]"):
        raise ConfigError(path, number, f"section header '{line}' lacks the closing ']'")
    name = line[1:-1].strip()
    if name == "Manager":
        return name
    kind, _, core = name.partition(" ")
    core = core.strip()
    if kind == "Processor" and core:
        return f"Processor {core}"
    if kind == "Processor":
        raise ConfigError(
            path, number,
            "[Processor] needs the core's kernel name: [Processor m4], or [Processor *]",
        )
    hint = _suggest(kind, ["Manager", "Processor"])
    raise ConfigError(
        path, number,
        f"unknown section [{name}]{hint or '; sections are [Manager] and [Processor NAME]'}",
    )


def _check_key(path: Path, number: int, section: str, key: str) -> None:
    keys, other, other_name = (
        (_MANAGER_KEYS, _PROCESSOR_KEYS, "[Processor NAME]")
        if section == "Manager"
        else (_PROCESSOR_KEYS, _MANAGER_KEYS, "[Manager]")
    )
    if key in keys:
        return
    if key in other:
        raise ConfigError(path, number, f"{key}= belongs in {other_name}, not in [{section}]")
    raise ConfigError(path, number, f"unknown key '{key}' in [{section}]{_suggest(key, keys)}")


def _suggest(word: str, candidates: Iterable[str]) -> str:
    import difflib  # only for a mistyped key: not resident in every daemon

    candidates = list(candidates)
    exact = [c for c in candidates if c.lower() == word.lower()]
    close = exact or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
