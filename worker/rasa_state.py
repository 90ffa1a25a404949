"""The rotator's record of each Rasa replica (RUN_DIR/rasa-replicas.json), for `status`.

One owner writes it: the rotator's `ReplicaBook`, atomically (a temporary file, then a
rename), so `status` never reads half a file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

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
    """What the rotator last wrote; [] when Rasa is off or nothing was written."""
    try:
        data = json.loads((run_dir / RASA_STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in data if isinstance(r, dict) and "url" in r] if isinstance(data, list) else []
