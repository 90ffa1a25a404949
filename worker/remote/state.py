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
    """What the rotator last wrote; None when remote storage is off or nothing was written.
    Read as anything in RUN_DIR is (worker/runfiles.py: no link, no FIFO, bounded, nesting
    capped) and every field checked: a field of the wrong type or out of range is dropped,
    never shown. Raises Untrusted (one line) for a file that cannot be read safely."""
    from worker.runfiles import read_run_json
    from worker.text import shown_text, shown_time

    try:
        data = read_run_json(run_dir, REMOTE_STATE_FILE, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("bucket"), str):
        return None
    state = {key: shown_text(data.get(key)) for key in _TEXTS}
    state["state"] = state["state"] or "unknown"
    state.update({key: shown_time(data.get(key)) for key in _TIMES})
    upload = data.get("last_upload")
    state["last_upload"] = None
    if isinstance(upload, dict) and shown_time(upload.get("at")) is not None:
        state["last_upload"] = {"key": shown_text(upload.get("key")) or "?",
                                "size": _count(upload.get("size")),
                                "duration_s": _count(upload.get("duration_s")),
                                "at": shown_time(upload.get("at"))}
    return state


MAX_STATE_BYTES = 256 * 1024
_TEXTS = ("bucket", "key", "endpoint", "state", "model_id", "sha256", "version_key", "cause",
          "last_error")
_TIMES = ("checked_at", "last_error_at")


def _count(value) -> float | None:
    """A size or a duration `status` may print, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 <= value < 1e15 else None
