"""When did each model arrive? The arrival journal, shared by every process of the tool.

Which model is latest is decided by arrival, not by file time: a model moved back in (a
rollback) keeps its old mtime, and a file copied with `cp -p` from a host whose clock runs a
day ahead carries a future mtime. So what the tool learns about arrivals is kept in a small
journal beside the publish record (`.latest.tar.gz.arrivals.json`), written atomically under
the folder lock, so a restarted rotator, `python -m worker once` and the reader (which
journals every arrival before it hands it over) all use the same times. The journal is read
as untrusted input (worker/folder/statefile.py): one that fails its checks is set aside and rebuilt.

Rules (README, "Which model is latest"):
- An arrival seen as an event (close_write / moved_to) is timed by the event, but never
  before anything already in the journal: an event is news, so it sorts after what was known
  (this also keeps the order when this host's clock jumps backwards).
- A file whose arrival was not seen arrives at its mtime, but never before the last complete
  look at the folder that did not find it (a file server whose clock is behind cannot make a
  new file look older than what was already there). An mtime ahead of this host's clock says
  nothing: such a file arrives at that last look (or now, if there was none), so it never
  beats a model seen arriving later.
- Entries are keyed by name AND the file's version (inode, size, mtime): a rewritten file is
  a new arrival. Only present files are kept, at most MAX_ENTRIES.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from worker.folder.names import internal_prefix, temporary_name
from worker.folder.openfile import open_regular
from worker.folder.statefile import (
    InvalidState,
    finite,
    load_json,
    mapping,
    plain_name,
    text,
    whole,
)

# A file's version: (st_ino, st_size, st_mtime_ns). Any write changes it.
Version = tuple[int, int, int]

# The journal's key for LATEST_MODEL_PATH itself ('/' is in no file name).
LATEST_KEY = "/latest"
MAX_ENTRIES = 10_000
MAX_JOURNAL_BYTES = 8 * 1024 * 1024
VERSION = 1


@dataclass(frozen=True)
class Arrival:
    at: float  # when it arrived (this host's clock), the ordering time
    seq: int  # the order in which arrivals were learned: breaks ties, survives restarts
    seen: float  # when this version of the file was first seen (for "unchanged since")
    ino: int
    size: int
    mtime_ns: int
    event_at: float | None = None  # an event announced it at this time (else None)
    # For LATEST_KEY: the published model's fingerprint (worker/folder/archive.py), so latest is
    # known by content even when the publish record is lost.
    digest: str | None = None
    # Found by a look at the folder after an earlier complete look had not found it, and
    # no event yet: its event may still be on its way (Reconciler._awaiting_event).
    found_late: bool = False

    @property
    def key(self) -> tuple[float, int]:
        return (self.at, self.seq)

    def is_version(self, ino: int, size: int, mtime_ns: int) -> bool:
        return (self.ino, self.size, self.mtime_ns) == (ino, size, mtime_ns)


def journal_path(latest_model_path: Path) -> Path:
    return latest_model_path.with_name(internal_prefix(latest_model_path) + "arrivals.json")


class ArrivalJournal:
    """The journal in memory; load() under the folder lock, change, save() under it."""

    def __init__(self, path: Path, latest_name: str):
        self.path = path
        self.latest_name = latest_name
        self.entries: dict[str, Arrival] = {}
        self.seq = 0
        self.high_water = float("-inf")  # the latest arrival time handed out
        self.scanned_at: float | None = None  # the last complete look at the folder

    @classmethod
    def load(cls, latest_model_path: Path, on_invalid=None) -> ArrivalJournal:
        """The journal as saved, or an empty one when it is missing or unreadable. A file
        that is not a valid journal is handed to `on_invalid(path, problem)` (which sets it
        aside) and read as empty: the file times rebuild it."""
        journal = cls(journal_path(latest_model_path), latest_model_path.name)
        try:
            journal._take(load_json(journal.path, MAX_JOURNAL_BYTES))
        except OSError:
            return cls(journal.path, journal.latest_name)  # missing: start with file times
        except InvalidState as problem:
            if on_invalid is not None:
                on_invalid(journal.path, problem)
            return cls(journal.path, journal.latest_name)
        return journal

    def _take(self, data) -> None:
        """Fill from a saved journal, checking every field (InvalidState if one fails)."""
        data = mapping(data, "the journal")
        if data.get("version") != VERSION:
            raise InvalidState(f"'version' is not {VERSION}")
        self.seq = whole(data, "seq", 0)
        # "No time yet" is saved as null (older versions wrote -Infinity).
        if data.get("high_water") is not None and data.get("high_water") != float("-inf"):
            self.high_water = finite(data, "high_water")
        self.scanned_at = finite(data, "scanned_at", optional=True)
        files = mapping(data.get("files"), "'files'")
        if len(files) > 2 * MAX_ENTRIES:  # the reader may add up to MAX_PENDING to a full one
            raise InvalidState(f"more than {2 * MAX_ENTRIES} files")
        for name, entry in files.items():
            if name != LATEST_KEY:
                plain_name(name, "a key of 'files'")
            entry = mapping(entry, f"the entry of {name[:40]!r}")
            self.entries[name] = Arrival(
                at=finite(entry, "at"), seq=whole(entry, "seq", 0), seen=finite(entry, "seen"),
                ino=whole(entry, "ino", 0), size=whole(entry, "size", 0),
                mtime_ns=whole(entry, "mtime_ns"),
                event_at=finite(entry, "event_at", optional=True),
                digest=text(entry, "digest", optional=True, max_chars=128),
                found_late=entry.get("found_late", False) is True)

    def respect(self, arrival_key: tuple[float, int]) -> None:
        """An arrival handed out before (the publish record's): nothing learned from now on
        may sort before it, even if this journal was lost or the clock went back since."""
        at, seq = arrival_key
        self.high_water = max(self.high_water, at)
        self.seq = max(self.seq, seq)

    def save(self) -> None:
        """Write atomically: a temp file beside it, renamed over it; no temp file survives."""
        high_water = self.high_water if math.isfinite(self.high_water) else None
        data = json.dumps({"version": VERSION, "seq": self.seq, "high_water": high_water,
                           "scanned_at": self.scanned_at,
                           "files": {name: vars(a) for name, a in self.entries.items()}})
        temporary = temporary_name(self.path.parent / self.latest_name)
        write_atomically(self.path, data.encode(), temporary)

    def lookup(self, name: str, version: Version) -> Arrival | None:
        entry = self.entries.get(name)
        if entry is not None and entry.is_version(*version):
            return entry
        return None

    def note_event(self, name: str, when: float, version: Version, now: float) -> Arrival:
        """An event announced `name` at `when`; at `now` it holds `version`."""
        when = min(when, now)  # the reader runs on this host: a later time is no event's
        known = self.lookup(name, version)
        if known is not None and known.event_at is not None:
            # The same version announced again: a close without a write, or the reader's
            # event delivered after it was journaled.
            return known
        entry = self.entries.get(name)
        if entry is not None and entry.event_at == when:
            # The very event the reader journaled, and the file's metadata changed since (a
            # touch, `cp -p`, a backup restoring mtimes): it keeps its place in the order
            # (else it would sort after every arrival journaled meanwhile); how long it has
            # been unchanged counts from now.
            ino, size, mtime_ns = version
            self.entries[name] = replace(entry, ino=ino, size=size, mtime_ns=mtime_ns,
                                         seen=now)
            return self.entries[name]
        # New, or known only from a look at the folder (`once` ran before the rotator
        # took this event in): the event is the better news. `seen` is now, not `when`:
        # the file may have changed since the event.
        return self._add(name, max(when, self.high_water), version, seen=now, event_at=when)

    def note_unseen(self, name: str, version: Version, now: float) -> Arrival:
        """A version of `name` that no event announced: the file-time rule."""
        known = self.lookup(name, version)
        if known is not None:
            return known
        mtime = version[2] / 1e9
        if mtime > now:
            # A time ahead of this host's clock says nothing: take the earliest this file
            # can have arrived, so it never beats an arrival seen in the same interval.
            at = self.scanned_at if self.scanned_at is not None else now
        else:
            at = mtime if self.scanned_at is None else max(mtime, self.scanned_at)
        return self._add(name, at, version, seen=now, event_at=None,
                         found_late=self.scanned_at is not None)

    def seen_no_later_than(self, name: str, now: float) -> Arrival:
        """This host's clock jumped back past when `name` was first seen: how long it has
        been unchanged is counted from now (else it would wait for the clock to catch up)."""
        entry = self.entries[name]
        if entry.seen > now:
            entry = self.entries[name] = replace(entry, seen=now)
        return entry

    def assign(self, name: str, arrival: Arrival, version: Version,
               digest: str | None = None) -> None:
        """`name` now holds `version` with the arrival of another file (a publish)."""
        ino, size, mtime_ns = version
        self.entries[name] = Arrival(at=arrival.at, seq=arrival.seq, seen=arrival.seen,
                                     ino=ino, size=size, mtime_ns=mtime_ns,
                                     event_at=arrival.event_at,
                                     digest=digest or arrival.digest)

    def keep_only(self, present: set[str], now: float, complete: bool) -> None:
        """Forget files that are gone; after a complete listing, remember when it was."""
        self.entries = {n: a for n, a in self.entries.items() if n in present}
        if len(self.entries) > MAX_ENTRIES:
            newest = sorted(self.entries.items(), key=lambda item: item[1].key)[-MAX_ENTRIES:]
            self.entries = dict(newest)
            complete = False  # files were dropped: they must not look new next time
        # The look came after every arrival known so far, whatever the clock says now (it
        # may have jumped back): a file it did not find arrived after all of them.
        self.scanned_at = (max(now, self.high_water, self.scanned_at or now) if complete
                           else None)

    def copy(self) -> ArrivalJournal:
        other = ArrivalJournal(self.path, self.latest_name)
        other.entries, other.seq = dict(self.entries), self.seq
        other.high_water, other.scanned_at = self.high_water, self.scanned_at
        return other


    def _add(self, name: str, at: float, version: Version, seen: float,
             event_at: float | None, found_late: bool = False) -> Arrival:
        self.seq += 1
        self.high_water = max(self.high_water, at)
        ino, size, mtime_ns = version
        entry = Arrival(at=at, seq=self.seq, seen=seen, ino=ino, size=size, mtime_ns=mtime_ns,
                        event_at=event_at, found_late=found_late)
        self.entries[name] = entry
        return entry


def version_of(st: os.stat_result) -> Version:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def write_atomically(target: Path, data: bytes, temporary: Path) -> None:
    """Replace `target` with `data` through `temporary` (created O_EXCL), fsync, rename.

    On any failure (a full disk) the temp file is removed and `target` is left as it was.
    """
    fd = open_regular(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
