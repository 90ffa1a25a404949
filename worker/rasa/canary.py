"""The canary rule of a rollout: the first replica to swap a new model tries it alone.

Rasa loads a model inside its event loop (it answers nothing meanwhile), and a model it
cannot load costs each replica that outage for nothing. So per published model, the first
replica that is about to swap it claims the trial; the others wait for its verdict. Loaded:
the rollout goes on. Refused (a 4xx or 500, another model_id in `/status` after the 204, or
a failed smoke parse): no other replica is sent that model, and `on_refused` tells the
rotator, which remembers the refusal and publishes the last model a replica loaded again.
A canary that ends without a verdict (down, superseded by a newer publish) gives the trial
back, and the next replica to swap claims it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

CANARY = "canary"  # try it: you are the first
WAIT = "wait"  # another replica is trying it: ask again later
GO = "go"  # a replica loaded it: swap as usual
REFUSED = "refused"  # a replica could not load it: never send it

MAX_TRIALS = 100  # verdicts remembered (per publish); the oldest are forgotten


@dataclass
class _Trial:
    state: str  # trying | loaded | refused
    url: str


def trial_key(desired) -> object:
    """One trial per publish: a model published again (its file rewritten, or after a
    refusal was cleared) is tried again; the refusal memory keeps a refused file from being
    published again."""
    return (desired.generation, desired.model_id)


class Canary:
    """Shared by the replicas' threads; thread-safe. The callbacks run in the calling
    replica's thread, once per model and verdict."""

    def __init__(self, on_loaded=None, on_refused=None):
        self._lock = threading.Lock()
        self._trials: dict[object, _Trial] = {}
        self._on_loaded = on_loaded
        self._on_refused = on_refused

    def verdict(self, desired) -> str | None:
        """LOADED-or-REFUSED knowledge without claiming: REFUSED, GO, or None."""
        with self._lock:
            trial = self._trials.get(trial_key(desired))
        if trial is None or trial.state == "trying":
            return None
        return GO if trial.state == "loaded" else REFUSED

    def claim(self, desired, url: str) -> str:
        """Just before `url` swaps to `desired`: CANARY, WAIT, GO or REFUSED."""
        key = trial_key(desired)
        with self._lock:
            trial = self._trials.get(key)
            if trial is None:
                self._trials[key] = _Trial("trying", url)
                while len(self._trials) > MAX_TRIALS:
                    del self._trials[next(iter(self._trials))]
                return CANARY
            if trial.state == "trying":
                return CANARY if trial.url == url else WAIT
            return GO if trial.state == "loaded" else REFUSED

    def release(self, desired, url: str) -> None:
        """`url` stopped without a verdict: the next replica to swap claims the trial."""
        key = trial_key(desired)
        with self._lock:
            trial = self._trials.get(key)
            if trial is not None and trial.state == "trying" and trial.url == url:
                del self._trials[key]

    def loaded(self, desired, url: str) -> None:
        """`url` serves `desired` (after our swap, or found so)."""
        key = trial_key(desired)
        with self._lock:
            trial = self._trials.get(key)
            if trial is not None and trial.state != "trying":
                return  # known: a refusal stays one (this replica loaded it by other means)
            self._trials[key] = _Trial("loaded", url)
        if self._on_loaded is not None:
            self._on_loaded(desired, url)

    def refused(self, desired, url: str, detail: str) -> None:
        """`url` could not load `desired`: the rollout of that model stops here."""
        key = trial_key(desired)
        with self._lock:
            trial = self._trials.get(key)
            if trial is not None and trial.state == "refused":
                return
            self._trials[key] = _Trial("refused", url)
        if self._on_refused is not None:
            self._on_refused(desired, url, detail)
