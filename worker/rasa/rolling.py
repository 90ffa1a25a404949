"""Rolling through the pull: at most N Rasa replicas move to a new model at a time.

Rasa loads a pulled model inside its event loop and answers nothing meanwhile (18-30 s for a
small model), and replicas polling every few seconds would all load at once. A replica that
downloaded a model counts as *swapping* until it asks again with that model's ETag (it has
loaded it) or `timeout_s` has passed since its download ended; while `max_swapping` replicas
swap, the others are told nothing changed (304) and ask again at their next pull.

Replicas are told apart by their address as the server sees it: this assumes one replica per
address (no NAT or proxy in between merging them). X-Forwarded-For is not trusted.

The decision to send a counted model and the place it takes are one step under one lock:
two replicas asking at once can never both be sent the new model beyond `max_swapping`.

A failed load (the canary rule, worker/rasa/canary.py, through the pull): Rasa keeps its old
fingerprint when a pulled model fails to load, so a replica that had the whole new model and
asks again with an older ETag of ours could not load it. That ETag is then sent to nobody
else (FAILED for that replica, HELD for the others) until the published model changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from worker.folder.published import is_our_etag

# What a GET gets: the current model, nothing (has it already, or must wait its turn).
SEND = "send"  # 200, counted against max_swapping
SEND_FRESH = "send-fresh"  # 200, not counted: the replica has no model of ours yet
NOT_MODIFIED = "not-modified"  # 304: it has the current model
HELD = "held"  # 304: a newer model exists, but other replicas are swapping
FAILED = "failed"  # 304: this replica could not load the current model (see failed_by)
MAX_FAILED = 100  # failed ETags remembered; the oldest are forgotten


@dataclass
class _Swap:
    etag: str
    since: float  # when its first whole download of `etag` ended (or began, while running)
    sending: int = 0  # downloads to this address in progress
    completed: bool = False  # it has had the whole model once


class RollingGate:
    """Decides per request; thread-safe. `max_swapping` 0 means no limit."""

    def __init__(self, max_swapping: int, timeout_s: float, clock=time.monotonic):
        self.max_swapping = max_swapping
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._swaps: dict[str, _Swap] = {}
        self._failed: dict[str, str] = {}  # ETag a replica could not load -> that address

    def swapping(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._swaps)

    def decide(self, address: str, fingerprints: list[str], current: str,
               begin: bool = False) -> str:
        """What `address`, holding the models named in `fingerprints` (its If-None-Match),
        gets when the published model's ETag is `current`. With `begin`, a counted SEND
        also takes its place (began()) in the same step."""
        with self._lock:
            self._expire(self._clock())
            decision = self._decide(address, fingerprints, current)
            if begin and decision == SEND and self.max_swapping > 0:
                self._begin(address, current)
            return decision

    def _decide(self, address: str, fingerprints: list[str], current: str) -> str:
        swap = self._swaps.get(address)
        if swap is not None and swap.sending == 0 and swap.etag in fingerprints:
            del self._swaps[address]  # it asks with what we sent: loaded
            swap = None
        if current in fingerprints or "*" in fingerprints:
            return NOT_MODIFIED
        has_ours = any(is_our_etag(f) for f in fingerprints)
        if (swap is not None and swap.completed and swap.sending == 0 and has_ours
                and swap.etag not in fingerprints):
            # It had the whole model and still asks with its old one: its load failed.
            del self._swaps[address]
            self._failed.setdefault(swap.etag, address)
            while len(self._failed) > MAX_FAILED:
                del self._failed[next(iter(self._failed))]
            if swap.etag == current:
                return FAILED
            swap = None
        if current in self._failed:
            return HELD  # a replica could not load it: nobody else is sent it
        if not has_ours:
            # No model from us (Rasa sends a random fingerprint until its first pull
            # succeeds): a replica that serves no model loses nothing by loading now.
            return SEND_FRESH
        if self.max_swapping == 0 or swap is not None:
            return SEND  # no limit, or its own turn still (a retry keeps its place)
        if len(self._swaps) >= self.max_swapping:
            return HELD
        return SEND

    def failed_by(self, etag: str) -> str | None:
        """The address that could not load the model `etag`, if one could not."""
        with self._lock:
            return self._failed.get(etag)

    def began(self, address: str, etag: str) -> None:
        """A counted download to `address` starts: it holds a place from now on."""
        with self._lock:
            self._begin(address, etag)

    def _begin(self, address: str, etag: str) -> None:
        swap = self._swaps.get(address)
        if swap is None or swap.etag != etag:
            swap = self._swaps[address] = _Swap(etag, self._clock(),
                                                swap.sending if swap else 0)
        swap.sending += 1

    def ended(self, address: str, complete: bool) -> None:
        """The download to `address` ended. The timeout runs from its first whole download:
        a replica whose load keeps failing (it asks again with its old model and downloads
        again) holds its place no longer than that. A first download cut short gives the
        place back at once."""
        with self._lock:
            swap = self._swaps.get(address)
            if swap is None:
                return
            swap.sending -= 1
            if complete and not swap.completed:
                swap.since, swap.completed = self._clock(), True
            elif not complete and not swap.completed and swap.sending == 0:
                del self._swaps[address]

    def _expire(self, now: float) -> None:
        for address in [a for a, s in self._swaps.items()
                        if s.sending == 0 and now - s.since >= self.timeout_s]:
            del self._swaps[address]
