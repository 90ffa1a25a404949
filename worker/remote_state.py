"""The rotator's record of remote storage (RUN_DIR/remote-storage.json), for `status`.

One owner writes it: the remote storage thread, atomically (a temporary file, then a rename),
so `status` never reads half a file. Imports nothing of boto3: `status` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

REMOTE_STATE_FILE = "remote-storage.json"


def write_remote_state(run_dir: Path, state: dict) -> None:
    path = run_dir / REMOTE_STATE_FILE
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(state, indent=1))
    os.replace(temporary, path)


def remove_remote_state(run_dir: Path) -> None:
    """REMOTE_STORAGE off: `status` must not show a previous configuration's bucket."""
    with contextlib.suppress(OSError):
        (run_dir / REMOTE_STATE_FILE).unlink()


def read_remote_state(run_dir: Path) -> dict | None:
    """What the rotator last wrote; None when remote storage is off or nothing was written."""
    try:
        data = json.loads((run_dir / REMOTE_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "bucket" in data else None
