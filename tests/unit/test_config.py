"""rprocd.conf parsing: every key, every error with its file:line, drop-in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from rprocd import config as cfg
from rprocd.errors import ConfigError
from rprocd.paths import Paths

ROOT = Path(__file__).resolve().parents[2]


def paths_for(tmp_path: Path) -> Paths:
    return Paths(
        sysfs=Path("/sys"),
        debugfs=Path("/sys/kernel/debug"),
        firmware_root=tmp_path / "fw",
        config_dir=tmp_path / "etc",
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        interfaces_dir=tmp_path,
    )


def parse(tmp_path: Path, text: str) -> cfg.Config:
    path = tmp_path / "rprocd.conf"
    path.write_text(text)
    return cfg.parse_files([path])


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    return str(info.value)


def test_missing_file_means_defaults_rooted_in_paths(tmp_path: Path) -> None:
    config = cfg.load(paths_for(tmp_path))
    assert config.sources == ()
    assert config.manager.poll_interval == 1.0
    assert config.manager.import_directory == tmp_path / "fw" / "rprocd"
    assert config.manager.coredump_directory == tmp_path / "state" / "coredump"
    assert config.manager.import_keep == 8 and config.manager.log_level == "info"
    assert config.processor("m4") == cfg.ProcessorConfig()


def test_processor_defaults() -> None:
    p = cfg.ProcessorConfig()
    assert (p.firmware, p.auto_start, p.early_boot, p.restart) == ("", False, "adopt", "kernel")
    assert (p.restart_sec, p.start_limit_burst, p.start_limit_interval) == (1.0, 5, 10.0)
    assert (p.shutdown_timeout, p.start_timeout, p.stop_on_exit) == (0.5, 10.0, False)
    assert (p.coredump, p.coredump_keep, p.trace_forward) == ("", 5, True)
    assert (p.require_resource_table, p.validate) == (True, True)


def test_every_key(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        """
# comment
; another
[Manager]
PollIntervalSec=250ms
FirmwareDirectories=/opt/fw /srv/fw
ImportDirectory=/lib/firmware/imported
ImportKeep=3
AllowGroup=rproc
CoredumpDirectory=/var/crash
LogLevel=debug

[Processor m4]
Firmware=demo/rproc-m4.elf
AutoStart=yes
EarlyBoot=restart
Restart=on-crash
RestartSec=2s
StartLimitBurst=3
StartLimitIntervalSec=1min
ShutdownTimeoutSec=1.5s
StartTimeoutSec=30
StopOnExit=on
Coredump=inline
CoredumpKeep=0
TraceForward=false
RequireResourceTable=0
Validate=off
""",
    )
    m = config.manager
    assert m.poll_interval == 0.25
    assert m.firmware_directories == (Path("/opt/fw"), Path("/srv/fw"))
    assert m.import_directory == Path("/lib/firmware/imported") and m.import_keep == 3
    assert m.allow_group == "rproc" and m.coredump_directory == Path("/var/crash")
    assert m.log_level == "debug"
    assert config.processor("m4") == cfg.ProcessorConfig(
        firmware="demo/rproc-m4.elf",
        auto_start=True,
        early_boot="restart",
        restart="on-crash",
        restart_sec=2.0,
        start_limit_burst=3,
        start_limit_interval=60.0,
        shutdown_timeout=1.5,
        start_timeout=30.0,
        stop_on_exit=True,
        coredump="inline",
        coredump_keep=0,
        trace_forward=False,
        require_resource_table=False,
        validate=False,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1min", 60.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        ("1min 30s", 90.0),
        ("100us", 0.0001),
        ("2h", 7200.0),
        ("0.5", 0.5),
        ("1 sec", 1.0),
    ],
)
def test_time_spans(text: str, seconds: float) -> None:
    assert cfg.parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "5x", "-1s", "1s-"])
def test_bad_time_spans(text: str) -> None:
    with pytest.raises(ValueError):
        cfg.parse_timespan(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", True),
        ("no", False),
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("on", True),
        ("off", False),
        ("YES", True),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert cfg.parse_bool(text) is value


def test_star_section_sets_defaults_and_a_core_section_overrides(tmp_path: Path) -> None:
    config = parse(
        tmp_path, "[Processor *]\nAutoStart=yes\nRestart=no\n[Processor m0]\nRestart=on-crash\n"
    )
    assert config.processor("m4").auto_start and config.processor("m4").restart == "no"
    assert config.processor("m0").auto_start and config.processor("m0").restart == "on-crash"


def test_dropins_apply_in_lexical_order_and_an_empty_value_resets(tmp_path: Path) -> None:
    paths = paths_for(tmp_path)
    dropins = paths.config_dropins
    dropins.mkdir(parents=True)
    paths.config_file.write_text("[Processor m4]\nFirmware=main.elf\nCoredump=enabled\n")
    (dropins / "20-late.conf").write_text("[Processor m4]\nFirmware=late.elf\n")
    (dropins / "10-early.conf").write_text("[Processor m4]\nFirmware=early.elf\nCoredump=\n")
    (dropins / "30-ignored.txt").write_text("garbage")
    config = cfg.load(paths)
    assert config.processor("m4").firmware == "late.elf"
    assert config.processor("m4").coredump == ""
    assert [p.name for p in config.sources] == ["rprocd.conf", "10-early.conf", "20-late.conf"]


def test_an_error_in_a_dropin_names_that_file(tmp_path: Path) -> None:
    paths = paths_for(tmp_path)
    paths.config_dropins.mkdir(parents=True)
    bad = paths.config_dropins / "50-bad.conf"
    bad.write_text("[Manager]\n\nPollIntervalSec=soon\n")
    with pytest.raises(ConfigError) as info:
        cfg.load(paths)
    assert info.value.path == bad and info.value.line == 3
    assert str(info.value).startswith(f"{bad}:3: bad value 'soon' for PollIntervalSec=")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[Processor m4]\nAutoStrat=yes\n",
            ":2: unknown key 'AutoStrat' in [Processor m4]; did you mean 'AutoStart'?",
        ),
        (
            "[Processor m4]\nautostart=yes\n",
            ":2: unknown key 'autostart' in [Processor m4]; did you mean 'AutoStart'?",
        ),
        ("[Manager]\nFoo=1\n", ":2: unknown key 'Foo' in [Manager]"),
        (
            "[Processor m4]\nPollIntervalSec=1s\n",
            ":2: PollIntervalSec= belongs in [Manager], not in [Processor m4]",
        ),
        (
            "[Manager]\nAutoStart=yes\n",
            ":2: AutoStart= belongs in [Processor NAME], not in [Manager]",
        ),
        ("[Manger]\n", ":1: unknown section [Manger]; did you mean 'Manager'?"),
        (
            "[Service]\n",
            ":1: unknown section [Service]; sections are [Manager] and [Processor NAME]",
        ),
        ("[Processor]\n", ":1: [Processor] needs the core's kernel name"),
        ("[Manager\n", ":1: section header '[Manager' lacks the closing ']'"),
        ("AutoStart=yes\n", ":1: 'AutoStart=' is outside a section"),
        ("[Manager]\njust words\n", ":2: expected Key=value, got 'just words'"),
        (
            "[Processor m4]\n\nAutoStart=yes\n# x\nAutoStart=no\n",
            ":5: AutoStart= is already set in [Processor m4] on line 3; keep one",
        ),
        (
            "[Processor m4]\nAutoStart=maybe\n",
            ":2: bad value 'maybe' for AutoStart=: expected yes or no",
        ),
        (
            "[Processor m4]\nEarlyBoot=kill\n",
            ":2: bad value 'kill' for EarlyBoot=: expected adopt or restart",
        ),
        (
            "[Processor m4]\nRestart=always\n",
            ":2: bad value 'always' for Restart=: expected no, on-crash or kernel",
        ),
        (
            "[Processor m4]\nCoredump=yes\n",
            ":2: bad value 'yes' for Coredump=: expected disabled, enabled or inline",
        ),
        ("[Processor m4]\nStartLimitBurst=-1\n", ":2: bad value '-1' for StartLimitBurst="),
        (
            "[Processor m4]\nShutdownTimeoutSec=0\n",
            ":2: bad value '0' for ShutdownTimeoutSec=: must be",
        ),
        ("[Processor m4]\nRestartSec=3 fortnights\n", "unknown time unit 'fortnights'"),
        ("[Processor m4]\nFirmware=../etc/shadow\n", ":2: bad value '../etc/shadow' for Firmware="),
        (
            "[Manager]\nImportDirectory=relative/dir\n",
            ":2: bad value 'relative/dir' for ImportDirectory=: expected an absolute path",
        ),
        (
            "[Manager]\nFirmwareDirectories=/ok rel\n",
            ":2: bad value '/ok rel' for FirmwareDirectories=",
        ),
        (
            "[Manager]\nPollIntervalSec=1ms\n",
            ":2: bad value '1ms' for PollIntervalSec=: must be at least",
        ),
        ("[Manager]\nLogLevel=loud\n", ":2: bad value 'loud' for LogLevel="),
        ("[Manager]\nAllowGroup=bad group\n", ":2: bad value 'bad group' for AllowGroup="),
    ],
)
def test_errors_have_file_line_and_a_helpful_message(
    tmp_path: Path, text: str, message: str
) -> None:
    error = error_of(tmp_path, text)
    assert error.startswith(str(tmp_path / "rprocd.conf") + ":")
    assert message in error


def test_a_duplicate_across_files_is_an_override_not_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text("[Processor m4]\nAutoStart=yes\n")
    b.write_text("[Processor m4]\nAutoStart=no\n")
    assert cfg.parse_files([a, b]).processor("m4").auto_start is False


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "rprocd.conf"
    bad.write_bytes(b"\xff\xfe[Manager]")
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.parse_files([bad])


def test_the_shipped_config_parses_to_the_defaults(tmp_path: Path) -> None:
    shipped = cfg.parse_files([ROOT / "etc" / "rprocd" / "rprocd.conf"])
    assert shipped.manager == cfg.ManagerConfig()
    assert shipped.defaults == {} and shipped.processors == {}


def test_the_shipped_config_documents_every_key() -> None:
    text = (ROOT / "etc" / "rprocd" / "rprocd.conf").read_text()
    for key in [*cfg._MANAGER_KEYS, *cfg._PROCESSOR_KEYS]:
        assert f"#{key}=" in text, key
