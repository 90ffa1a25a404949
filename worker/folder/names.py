"""Which file names in the watched folder are models. Shared by the reader and the rotator.

Names only: whether a file IS the published file or an ignored one is decided by identity
(st_dev, st_ino) in worker/folder/files.py, never by comparing path strings.
"""

from __future__ import annotations

import os
import re
from fnmatch import fnmatchcase
from pathlib import Path


def internal_prefix(latest_model_path: Path) -> str:
    """Our own files (publish temp files, the publish record, the arrival journal, the lock)
    start with this prefix.

    They sit beside LATEST_MODEL_PATH, never match a model name, and the reader ignores
    them, so publishing never triggers another reconcile.
    """
    return f".{latest_model_path.name}."


def temporary_name(latest_model_path: Path) -> Path:
    """A fresh temp file name beside LATEST_MODEL_PATH (os.replace must not cross file
    systems): hidden and with our prefix, so it is never a model's name."""
    return latest_model_path.with_name(
        f"{internal_prefix(latest_model_path)}tmp-{os.urandom(4).hex()}")


def without_temporary_names(text: str) -> str:
    """`text` with every temporary name of ours made the same (`tmp-*`): two failures that
    differ only in the random temporary name have the same cause."""
    return _TEMPORARY_SUFFIX.sub("tmp-*", text)


_TEMPORARY_SUFFIX = re.compile(r"tmp-[0-9a-f]{8}\b")


def is_model_name(name: str, pattern: str, latest_model_path: Path, folder: Path) -> bool:
    """A name directly inside `folder` that may hold a model (by name only).

    Hidden names (a leading dot) never are: shell globs and Rasa's own `glob("*.tar.gz")`
    skip them too, and every temp file of ours (or of rsync, editors, a `PUT` in flight) is
    one, so in-flight work is never a candidate, whatever MODEL_PATTERN says.
    """
    if not name or "/" in name or name.startswith("."):
        return False
    if same_folder(folder, latest_model_path.parent) and name == latest_model_path.name:
        return False
    return fnmatchcase(name, pattern)


def same_folder(first: Path, second: Path) -> bool:
    """The same folder however it is spelled (symlinks, `..`): compared as files."""
    if first == second:
        return True
    try:
        return os.path.samestat(os.stat(first), os.stat(second))
    except OSError:
        return False
