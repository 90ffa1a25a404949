"""The tool's state files in the models folder, read as untrusted input.

The publish record (`.latest.tar.gz.json`) and the arrival journal
(`.latest.tar.gz.arrivals.json`) live in the models folder, which another program can write
(Rasa's container, a person, a backup restoring an old copy). So what is read back there is
checked like any input: bounded in size and nesting, every field of the type it must have,
every time a finite number. A file that fails is set aside (renamed to `<name>.rejected`,
one WARNING naming the file and the fault) and rebuilt from the folder: never obeyed, never
fatal. Read-only callers (`once --dry-run`, `status`) only say so and read it as absent.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from worker.folder.openfile import read_small_file

# Whole numbers (sizes, inodes, nanosecond times, sequence numbers) fit in 64 bits.
INT_LOW, INT_HIGH = -(2 ** 63), 2 ** 63 - 1
REJECTED_SUFFIX = ".rejected"


class InvalidState(ValueError):
    """A state file that is not what the tool writes; str() says what is wrong."""


def load_json(path: Path, limit: int):
    """The parsed content of a state file of at most `limit` bytes. Raises OSError (missing,
    unreadable, not a regular file) or InvalidState."""
    data = read_small_file(path, limit + 1)
    if len(data) > limit:
        raise InvalidState(f"larger than {limit} bytes")
    try:
        return json.loads(data)
    except RecursionError:
        # json's parser guards its own recursion: a file of nested brackets stops there.
        raise InvalidState("nested too deeply") from None
    except ValueError as error:  # also a number with more digits than int() accepts
        raise InvalidState(f"not JSON ({_short(error)})") from None


def set_aside(path: Path, problem: InvalidState, log: logging.Logger) -> None:
    """Rename an invalid state file out of the way (kept for a person to look at; one file,
    replaced each time, so a hostile writer cannot fill the disk through us)."""
    rejected = path.with_name(path.name + REJECTED_SUFFIX)
    try:
        os.replace(path, rejected)
        done = f"set aside as {rejected.name}"
    except OSError as error:
        done = f"could not be set aside ({error.strerror or error})"
    log.warning("%s is not a valid state file (%s): %s; ignored and rebuilt from the folder",
                path, problem, done, extra={"event": "state_file_rejected",
                                            "fields": {"path": str(path),
                                                       "problem": str(problem)}})


def report_invalid(path: Path, problem: InvalidState, log: logging.Logger) -> None:
    """For a caller that changes nothing (a dry run, `status`): say so, read it as absent."""
    log.warning("%s is not a valid state file (%s); read as absent", path, problem)


def mapping(value, what: str) -> dict:
    if type(value) is not dict:
        raise InvalidState(f"{what} is not an object")
    return value


def whole(data: dict, field: str, low: int = INT_LOW, high: int = INT_HIGH) -> int:
    value = data.get(field)
    if type(value) is not int or not low <= value <= high:
        raise InvalidState(f"'{field}' is not a whole number from {low} to {high} "
                           f"({_describe(value)})")
    return value


def finite(data: dict, field: str, optional: bool = False) -> float | None:
    value = data.get(field)
    if value is None and optional:
        return None
    # abs() first: math.isfinite() of a 401-digit int raises OverflowError.
    if type(value) not in (int, float) or abs(value) > 2 ** 53 or not math.isfinite(value):
        raise InvalidState(f"'{field}' is not a finite number of seconds "
                           f"({_describe(value)})")
    return float(value)


def text(data: dict, field: str, optional: bool = False, max_chars: int = 1000) -> str | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if type(value) is not str or len(value) > max_chars:
        raise InvalidState(f"'{field}' is not a text of at most {max_chars} characters "
                           f"({_describe(value)})")
    return value


def plain_name(value, what: str) -> str:
    if type(value) is not str or value in (".", "..") or "/" in value or "\0" in value \
            or len(value) > 4096:
        raise InvalidState(f"{what} is not a plain file name ({_describe(value)})")
    return value


def _describe(value) -> str:
    """A short, safe form of a value read from an untrusted file."""
    if value is None:
        return "missing"
    if type(value) in (int, float, bool):
        shown = repr(value)
        return shown if len(shown) <= 24 else f"a number of {len(shown)} digits"
    if type(value) is str:
        return f"text {value[:24]!r}" + ("..." if len(value) > 24 else "")
    return f"a{'n' if type(value).__name__[0] in 'aeiou' else ''} {type(value).__name__}"


def _short(error: Exception) -> str:
    message = str(error)
    return message if len(message) <= 80 else message[:77] + "..."
