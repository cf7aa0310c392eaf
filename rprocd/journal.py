"""`logging` -> journald with `RPROC_*` fields, or stderr.

Under systemd (JOURNAL_STREAM or INVOCATION_ID set) records go to the journal
natively, so `journalctl RPROC_NAME=m4` and `MESSAGE_ID=` find them; upper-case
`extra` keys become journal fields. Elsewhere they go to stderr, the fields
rendered at the end of the line so nothing is lost in a log file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}

_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_HANDLER_NAME = "rprocd"


def fields(record: logging.LogRecord) -> dict[str, str]:
    """The journal fields a record carries: its upper-case `extra` keys."""
    return {k: str(v) for k, v in record.__dict__.items() if k.isupper() and v not in (None, "")}


class JournalHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = next((p for lvl, p in _PRIORITY if record.levelno >= lvl), 7)
            self._send(
                self.format(record),
                PRIORITY=str(priority),
                SYSLOG_IDENTIFIER="rprocd",
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **fields(record),
            )
        except Exception:
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if extra:
            line += " [" + " ".join(f"{k}={v}" for k, v in sorted(extra.items())) + "]"
        return line


def under_journal(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup(level: str = "info", env: Mapping[str, str] = os.environ,
          stream: IO[str] | None = None) -> None:
    """Route the `rprocd` loggers; call once at start (again only through `set_level`)."""
    handler: logging.Handler
    if under_journal(env) and stream is None:
        try:
            handler = JournalHandler()
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(StderrFormatter())
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(StderrFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger("rprocd")
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    """LogLevel= (systemd names: debug, info, notice, warning, err, crit)."""
    logging.getLogger("rprocd").setLevel(LEVELS.get(level, logging.INFO))
