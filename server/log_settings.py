"""The server's log: Triton's switches (``--log-verbose/info/warning/error``, ``--log-file``,
``--log-format``) and the logging extension that reads and changes them at run time
(``LogSettings`` on gRPC, ``/v2/logging`` on HTTP).

Triton's levels are independent switches, not a threshold: ``--log-info=false`` with
``--log-warning=true`` drops INFO and keeps WARNING. :class:`LogControl` owns one handler on the
root logger whose filter applies them; verbose messages are Python's DEBUG records, shown while
the verbose level is 1 or more.

Formats: ``inferd`` (the default, ``<time> <LEVEL> <logger>: <message>``), Triton's ``default``
(``I0520 20:03:25.829575 3355 <logger>] <message>``) and ``ISO8601``
(``2024-05-20T20:03:26Z I 3355 <logger>] <message>``), and ``json``, one object per line.
The log file is set at start-up only: a path that clients could change over the API would let
them write files on the server.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import IO

from ..protocol.errors import InvalidArgument

FORMATS = ("inferd", "default", "ISO8601", "json")
# Triton's names, in the order its responses list them.
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
SettingValue = bool | int | str


@dataclass(frozen=True)
class LogState:
    """What the log shows and where it goes, as Triton's logging extension names it."""

    log_file: str = ""  # empty: standard error
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "inferd"

    def shows(self, levelno: int) -> bool:
        if levelno >= logging.ERROR:
            return self.log_error
        if levelno >= logging.WARNING:
            return self.log_warning
        if levelno >= logging.INFO:
            return self.log_info
        return self.log_verbose_level > 0

    def threshold(self) -> int:
        """The lowest level any switch lets through: the root logger's level, so disabled
        records are dropped before they are formatted."""
        for level, on in (
            (logging.DEBUG, self.log_verbose_level > 0),
            (logging.INFO, self.log_info),
            (logging.WARNING, self.log_warning),
            (logging.ERROR, self.log_error),
        ):
            if on:
                return level
        return logging.CRITICAL + 1

    def level_name(self) -> str:
        """The inferd ``--log-level`` this state is closest to (what framework_logs reads)."""
        return logging.getLevelName(min(self.threshold(), logging.ERROR))


def state_from_level(level: str) -> LogState:
    """``--log-level`` (inferd's shorthand) as Triton's switches."""
    level = level.upper()
    return LogState(
        log_info=level in ("DEBUG", "INFO"),
        log_warning=level != "ERROR",
        log_verbose_level=1 if level == "DEBUG" else 0,
    )


class _TritonFormatter(logging.Formatter):
    """Triton's two layouts: glog's ``LMMDD hh:mm:ss.uuuuuu pid where] msg`` and ISO 8601."""

    def __init__(self, iso: bool) -> None:
        super().__init__()
        self.iso = iso

    def format(self, record: logging.LogRecord) -> str:
        letter = "V" if record.levelno < logging.INFO else record.levelname[:1]
        t = time.gmtime(record.created) if self.iso else time.localtime(record.created)
        if self.iso:
            head = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', t)} {letter} {record.process} {record.name}]"
        else:
            usec = int((record.created % 1) * 1_000_000)
            head = f"{letter}{time.strftime('%m%d %H:%M:%S', t)}.{usec:06d} {record.process} {record.name}]"
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        # A multi-line entry (the models' table) starts on the line after its heading, as in Triton.
        return f"{head} {message}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int((record.created % 1) * 1_000_000):06d}Z",
            "level": "VERBOSE" if record.levelno < logging.INFO else record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    if name == "json":
        return _JsonFormatter()
    if name in ("default", "ISO8601"):
        return _TritonFormatter(iso=name == "ISO8601")
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Switches(logging.Filter):
    def __init__(self, control: LogControl) -> None:
        super().__init__()
        self.control = control

    def filter(self, record: logging.LogRecord) -> bool:
        return self.control.state.shows(record.levelno)


class LogControl:
    """The current log settings, and (once :meth:`install` ed) the handler that applies them.

    A server built in-process (tests, embedding) has one that is not installed: its settings
    are read and changed through the API the same way, and leave the host's logging alone."""

    def __init__(self, state: LogState | None = None) -> None:
        self.state = state if state is not None else LogState()
        check(self.state)
        self.handler: logging.Handler | None = None
        self._stream: IO[str] | None = None

    def install(self) -> None:
        """Make this the process's log: one handler on the root logger, to the log file
        (appended to; opened now, so a bad path stops the start with its reason) or stderr."""
        if self.state.log_file:
            path = os.path.abspath(self.state.log_file)
            self._stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (lives as long as the server)
            handler: logging.Handler = logging.StreamHandler(self._stream)
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_Switches(self))
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        self.handler = handler
        self._apply()

    def _apply(self) -> None:
        if self.handler is None:
            return
        self.handler.setFormatter(formatter(self.state.log_format))
        logging.getLogger().setLevel(self.state.threshold())

    def settings(self) -> dict[str, SettingValue]:
        """Triton's ``$log_setting_response``: every setting, by its name."""
        return dict(asdict(self.state))

    def update(self, changes: Mapping[str, object]) -> dict[str, SettingValue]:
        """Change the settings named in ``changes`` (the others stay) and return them all.
        Nothing changes unless every named setting is valid."""
        values = asdict(self.state)
        for key, value in changes.items():
            if key not in KEYS:
                raise InvalidArgument(f"log setting '{key}' is unknown; the settings are {', '.join(KEYS)}")
            if key == "log_file":
                if value != self.state.log_file:
                    raise InvalidArgument(
                        "log setting 'log_file' can only be set at start-up (--log-file); "
                        "a path settable over the API would let clients write files on the server"
                    )
                continue
            values[key] = _typed(key, value)
        new = LogState(**values)
        check(new)
        self.state = new
        self._apply()
        logging.getLogger("inferd").info("log settings changed: %s", _describe(changes))
        return self.settings()

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _typed(key: str, value: object) -> SettingValue:
    if key in ("log_info", "log_warning", "log_error"):
        if not isinstance(value, bool):
            raise InvalidArgument(f"log setting '{key}' must be a boolean, got {_show(value)}")
        return value
    if key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"log setting '{key}' must be a whole number >= 0, got {_show(value)}")
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"log setting '{key}' must be a string, got {_show(value)}")
    return value


def check(state: LogState) -> None:
    if state.log_verbose_level < 0:
        raise InvalidArgument(f"log setting 'log_verbose_level' must be >= 0, got {state.log_verbose_level}")
    if state.log_format not in FORMATS:
        raise InvalidArgument(f"log setting 'log_format' must be one of {', '.join(FORMATS)}, got '{state.log_format}'")


def _show(value: object) -> str:
    return f"{type(value).__name__} {json.dumps(value) if isinstance(value, (str, int, float)) else repr(value)}"


def _describe(changes: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "nothing"
