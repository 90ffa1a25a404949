"""One log line per action, on stdout, which supervisord forwards to its own stdout."""

from __future__ import annotations

import json
import logging
import sys
import time

from worker.text import printable


def _printable_value(value):
    """A log field made safe for a JSON line: strings through printable(), recursively."""
    if isinstance(value, str):
        return printable(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {printable(str(k)): _printable_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_value(v) for v in value]
    return printable(str(value))


class _ProgramFormatter(logging.Formatter):
    def __init__(self, program: str):
        super().__init__()
        self.program = program

    @staticmethod
    def timestamp(record: logging.LogRecord) -> str:
        """UTC, ISO 8601, milliseconds."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _PlainFormatter(_ProgramFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (f"{self.timestamp(record)} {self.program} {record.levelname} "
                f"{printable(record.getMessage())}")
        if record.exc_info:
            # A traceback spans lines; each is escaped and indented, so none of them can read
            # as a log line of its own (those start with the time).
            line += "".join("\n  " + printable(text) for text in
                            self.formatException(record.exc_info).splitlines())
        return line


class _JsonFormatter(_ProgramFormatter):
    """One JSON object per line: time, level, program, event, message, and the fields.

    Strings go through printable(), as in the text format: the same escapes in both, and no
    lone surrogate (which strict JSON decoders refuse) in the output."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.timestamp(record), "level": record.levelname,
                 "program": self.program, "event": getattr(record, "event", "log"),
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(_printable_value(entry))


def setup_logging(program: str, level: str, log_format: str = "text") -> logging.Logger:
    """Configure the root logger for one program (lines go to stdout) and return the
    program's logger."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = _JsonFormatter if log_format == "json" else _PlainFormatter
    handler.setFormatter(formatter(program))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(f"rotator.{program}")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
