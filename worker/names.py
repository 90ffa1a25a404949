"""Which file names in the watched folder are models. Shared by the reader and the rotator."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path


def internal_prefix(latest_model_path: Path) -> str:
    """Our own files (publish temp files, the publish record) start with this prefix.

    They sit beside LATEST_MODEL_PATH, never match a model name, and the reader ignores
    them, so publishing never triggers another reconcile.
    """
    return f".{latest_model_path.name}."


def is_model_name(name: str, pattern: str, latest_model_path: Path, folder: Path) -> bool:
    """A name directly inside `folder` that may hold a model (by name only)."""
    if not name or "/" in name:
        return False
    if name.startswith(internal_prefix(latest_model_path)):
        return False
    if folder == latest_model_path.parent and name == latest_model_path.name:
        return False
    return fnmatchcase(name, pattern)
