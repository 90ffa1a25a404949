"""A trailing debounce with a cap: fire `delay` after the last event, but no later than
`cap` after the first event of a burst, so an endless stream cannot postpone it forever."""

from __future__ import annotations


class Debounce:
    def __init__(self, delay_s: float, cap_s: float):
        self.delay_s = delay_s
        self.cap_s = max(cap_s, delay_s)
        self._first: float | None = None
        self._last: float | None = None

    def touch(self, now: float) -> None:
        """An event happened at `now` (monotonic seconds)."""
        if self._first is None:
            self._first = now
        self._last = now

    @property
    def deadline(self) -> float | None:
        """When to fire (monotonic seconds), or None when no event is pending."""
        if self._first is None:
            return None
        return min(self._last + self.delay_s, self._first + self.cap_s)

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def clear(self) -> None:
        self._first = self._last = None
