"""The rotator's record of each Rasa replica (RUN_DIR/rasa-replicas.json), for `status`.

One owner writes it: the rotator's `ReplicaBook`, atomically (a temporary file, then a
rename), so `status` never reads half a file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from worker.text import shown_text, shown_time

RASA_STATE_FILE = "rasa-replicas.json"


class ReplicaBook:
    """Keeps the latest state of every replica and writes them all at each change."""

    def __init__(self, run_dir: Path, urls=()):
        self.path = run_dir / RASA_STATE_FILE
        self._lock = threading.Lock()
        # Known from the start, so `status` never shows replicas of a previous configuration.
        self._replicas: dict[str, dict] = {url: {"url": url, "state": "unknown"} for url in urls}
        if urls:
            self._write()

    def record(self, state) -> None:
        with self._lock:
            self._replicas[state.url] = state.as_dict()
            self._write()

    def _write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{threading.get_ident()}")
        temporary.write_text(json.dumps(list(self._replicas.values()), indent=1))
        os.replace(temporary, self.path)


def read_replicas(run_dir: Path) -> list[dict]:
    """What the rotator last wrote; [] when Rasa is off or nothing was written. Read as
    anything in RUN_DIR is (worker/runfiles.py: no link, no FIFO, bounded), and every field
    checked: a field of the wrong type or out of range is dropped, never shown.
    Raises Untrusted (one line) for a file that cannot be read safely."""
    from worker.runfiles import read_run_json

    try:
        data = read_run_json(run_dir, RASA_STATE_FILE, MAX_STATE_BYTES)
    except FileNotFoundError:
        return []
    if not isinstance(data, list):
        return []
    replicas = [_checked(entry) for entry in data[:MAX_REPLICAS]]
    return [replica for replica in replicas if replica is not None]


MAX_STATE_BYTES = 4 * 1024 * 1024
MAX_REPLICAS = 1000
_TEXTS = ("url", "state", "model_id", "published_model_id", "last_error")
_TIMES = ("checked_at", "converged_at", "last_error_at")


def _checked(entry) -> dict | None:
    """One replica's fields as `status` may print them, or None without a usable url."""
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        return None
    replica = {key: shown_text(entry.get(key)) for key in _TEXTS}
    replica["state"] = replica["state"] or "unknown"
    replica.update({key: shown_time(entry.get(key)) for key in _TIMES})
    replica["in_sync"] = entry.get("in_sync") is True
    jobs = entry.get("training_jobs")
    replica["training_jobs"] = (jobs if isinstance(jobs, int) and not isinstance(jobs, bool)
                                and 0 <= jobs < 1 << 31 else None)
    swap = entry.get("last_swap")
    replica["last_swap"] = None
    if isinstance(swap, dict) and shown_time(swap.get("at")) is not None:
        status = swap.get("status")
        duration = swap.get("duration_s")
        replica["last_swap"] = {
            "status": status if isinstance(status, int) and not isinstance(status, bool)
            and 100 <= status <= 999 else None,
            "outcome": shown_text(swap.get("outcome")) or "unknown",
            "duration_s": round(duration, 3) if isinstance(duration, (int, float))
            and not isinstance(duration, bool) and 0 <= duration < 1e9 else None,
            "at": shown_time(swap.get("at"))}
    return replica
