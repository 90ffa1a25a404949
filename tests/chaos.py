"""A chaos suite of our own: `python -m worker` driven from outside by seeded random writers and
faults, with the folder's promises checked continuously by a poller.

Replay or run it (as root: each seed runs in its own `unshare --mount` namespace, with a
small tmpfs for the full-disk fault and for moves across file systems):

    .venv/bin/python -m tests.chaos --seed 7 --steps 40          # one seed, replayable
    .venv/bin/python -m tests.chaos --seeds 100-109 --minutes 60  # the long run
    .venv/bin/python -m tests.chaos --seeds 1-3 --steps 15 --faults touch_latest_after_arrival
    (--log prints the step log and the tool's output of a passing seed too)

What is driven (each step's choices come from `random.Random(f"{seed}:{step}")`, so a seed's
first N steps are the same whatever happened at run time):
- writers: streamed in place with stalls (Rasa's way), written elsewhere and renamed in,
  written under a hidden name in the folder and renamed (rsync's way), moved in across file
  systems with `mv` (a copy into the final name, old mtime kept), truncated (a killed
  training), rollbacks (an older model's bytes, mtime an hour ago, renamed or `mv`-ed in),
  future mtimes, rewrites of an existing name in place;
- faults: kill -9 of the reader, the rotator or supervisord (restarted at once, as
  `--restart always` does; so is a supervisord the guard shut down), SIGSTOP/SIGCONT of the
  rotator, touch/chmod of latest and of models, a full tmpfs, deletions by a person; and the
  three everyday sequences of issue 16 (a touch of latest right after an arrival, a rollback
  while the rotator is stopped past RESCAN_INTERVAL, kill -9 of the rotator 0.2 s after a
  rollback).

What is checked (the Oracle): latest is always whole and byte-equal to a model written whole,
and never vanishes once published; a model that arrived after the model latest holds is never
deleted unpublished, nor a file being written or a broken one before BROKEN_GRACE_PERIOD;
latest never goes back to a model older than the one it held (a rollback arriving later is
newer); after quiet, latest is the last arrival and no temporary file is left; after each
fault, `python -m worker status` says healthy again.

An ARRIVAL is the moment a whole model appears under its final name: the close of an in-place
write (also `mv` across file systems), or the rename. Our in-place writers close right after
their last byte, as Rasa does: a whole file left open longer than THROTTLE_DELAY may be taken
as it is (README), so its arrival would be ambiguous. Ordered by one counter taken under the
lock that also orders the poller's looks, so our order is the kernel's order of the events.
An arrival is CERTAIN when the reader was watching (its "watching" line came after its last
start) and did not die within IN_FLIGHT_S after it; otherwise the README's file-time rule may
decide its order, and it only widens what is accepted. A touch of a MODEL (close_write with a
new mtime) may or may not count as an arrival (the README calls a rewritten file one): both
readings are accepted. A touch of LATEST is never an arrival (issue 16).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.helpers import PROJECT_ROOT, RunningTool, tool_environment

THROTTLE_DELAY_MS = 300
RESCAN_INTERVAL_S = 2
POLL_S = 0.03
# Events the reader had read (or the kernel still queued) when it died are gone with it: an
# arrival this close before a reader's death is not certain.
IN_FLIGHT_S = 1.0
# Deletions are judged this long after they are seen, once the tool's log has caught up.
JUDGE_AFTER_S = 3.0
HEALTHY_WITHIN_S = 120.0
# After quiet, latest must be the last arrival within this long (a few THROTTLE_DELAY, the
# 5 s retry after a full disk, a slow machine).
CONVERGE_WITHIN_S = 40.0
QUIET_EVERY = 15
TMPFS_SIZE = "24m"
TEMPORARY_MARK = ".latest.tar.gz.tmp-"
PUBLISHED_LINE = re.compile(r"^(\S+Z) rotator INFO published (\S+) -> ")
WATCHING_LINE = "for models matching"

WRITERS = {"stream": 10, "rename_in": 10, "hidden_rename": 5, "cross_fs": 6, "truncated": 4,
           "rollback": 8, "future_mtime": 4, "rewrite": 2}
FAULTS = {"kill_reader": 3, "kill_rotator": 4, "kill_supervisord": 2,
          "stop_rotator": 3, "touch_latest": 4, "chmod": 2, "touch_model": 2, "full_disk": 3,
          "person_delete": 4,
          # issue 16's three sequences, found from outside
          "touch_latest_after_arrival": 3, "rollback_while_stopped": 3,
          "kill_rotator_after_rollback": 3,
          # Only with --faults (weight 0 keeps the default mix, and so every seed, as it was):
          # an mtime-only change of a model not yet published, then newer arrivals.
          "touch_model_before_arrivals": 0}


def build_model(rng: random.Random, model_id: str) -> bytes:
    """A small Rasa-like archive (components/, then metadata.json) with distinct content."""
    payload = rng.randbytes(rng.randrange(8_000, 120_000))
    metadata = json.dumps({"model_id": model_id, "trained_at": "2026-12-02T03:00:00"}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("components/part-0.bin", payload), ("metadata.json", metadata)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# -- the oracle: what may be, given what we did -------------------------------------------


@dataclass
class Mark:
    """An arrival (a whole model under its final name) or a touch of a model."""

    seq: int
    at: float
    name: str
    digest: str
    kind: str  # arrival | touch
    certain: bool
    record: FileRecord | None = None


@dataclass
class FileRecord:
    name: str
    inode: int
    state: str  # writing | whole | broken
    digest: str | None = None
    arrival: Mark | None = None
    removed_by_us: float | None = None  # deleted, renamed over or rewritten by the driver
    gone: bool = False


@dataclass
class Violation:
    at: float
    kind: str
    detail: str
    names: tuple[str, ...] = ()


@dataclass
class Oracle:
    """The invariants as plain logic over what the driver did and what the poller saw.

    The driver and the poller call it under `lock`: a change to the folder and its record
    here are one step, and each look of the poller sees the folder between steps."""

    contents: dict[str, str] = field(default_factory=dict)  # digest -> label, whole models
    broken: set[str] = field(default_factory=set)  # digests of truncated files
    files: dict[str, FileRecord] = field(default_factory=dict)  # name -> present record
    marks: list[Mark] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    seq: int = 0
    latest: str | None = None  # digest latest holds, as last seen
    latest_ever: bool = False
    floor: int = -1  # the newest certain arrival latest's model surely had when it came
    polled_seq: int = 0
    seen_in_latest: dict[str, list[float]] = field(default_factory=dict)
    published_log: dict[str, list[float]] = field(default_factory=dict)
    suspects: list[tuple[float, FileRecord, str | None, int]] = field(default_factory=list)
    transitions: int = 0

    def __post_init__(self):
        self.lock = threading.RLock()

    # -- what the driver did ----------------------------------------------------------

    def content(self, data: bytes, label: str) -> str:
        digest = digest_of(data)
        self.contents[digest] = label
        return digest

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def replaced(self, name: str, now: float) -> None:
        """The driver removes, renames over or rewrites `name`: not the tool's doing."""
        record = self.files.pop(name, None)
        if record is not None and not record.gone:
            record.removed_by_us = now

    def writing(self, name: str, inode: int, now: float) -> None:
        self.replaced(name, now)
        self.files[name] = FileRecord(name, inode, "writing")

    def arrived(self, name: str, inode: int, data: bytes | None, certain: bool,
                now: float) -> Mark | None:
        """A file is complete under its final name: whole (`data`'s digest known) or not."""
        record = self.files.get(name)
        if record is None or record.inode != inode or record.state != "writing":
            self.replaced(name, now)
            record = FileRecord(name, inode, "writing")
            self.files[name] = record
        digest = digest_of(data) if data is not None else None
        if digest is None or digest not in self.contents:
            record.state = "broken"
            if digest is not None:
                self.broken.add(digest)
            return None
        record.state, record.digest = "whole", digest
        mark = Mark(self._next(), now, name, digest, "arrival", certain, record)
        record.arrival = mark
        self.marks.append(mark)
        return mark

    def touched(self, name: str, now: float, certain: bool) -> None:
        record = self.files.get(name)
        if record is not None and record.state == "whole":
            self.marks.append(Mark(self._next(), now, name, record.digest, "touch", certain,
                                   record))

    def uncertain_since(self, since: float) -> int:
        """The reader died: what arrived from `since` on may have been lost with it."""
        changed = 0
        for mark in self.marks:
            if mark.at >= since and mark.certain:
                mark.certain = False
                changed += 1
        return changed

    def tool_published(self, name: str, when: float) -> None:
        self.published_log.setdefault(name, []).append(when)

    # -- what the poller saw ----------------------------------------------------------

    def observe(self, now: float, present: dict[str, int], latest: bytes | None) -> None:
        """One look at the folder: names -> inodes of the models, and latest's bytes."""
        self._observe_latest(now, latest)
        for name, record in list(self.files.items()):
            if record.gone or present.get(name) == record.inode:
                continue
            record.gone = True
            del self.files[name]
            self._judge_gone(now, record)
        due = [s for s in self.suspects if s[0] <= now]
        self.suspects = [s for s in self.suspects if s[0] > now]
        for _, record, latest_digest, latest_seq in due:
            self._judge_deletion(record, latest_digest, latest_seq)
        self.polled_seq = self.seq

    def _observe_latest(self, now: float, latest: bytes | None) -> None:
        if latest is None:
            if self.latest_ever:
                self._violate(now, "latest-missing", "latest.tar.gz vanished after a publish")
            return
        digest = digest_of(latest)
        if digest not in self.contents:
            what = "a truncated model" if digest in self.broken else "no model written whole"
            self._violate(now, "latest-not-whole",
                          f"latest.tar.gz ({len(latest)} bytes, {digest}) is {what}")
            return
        self.latest_ever = True
        self.seen_in_latest.setdefault(digest, []).append(now)
        if digest == self.latest:
            return
        previous, self.latest = self.latest, digest
        self.transitions += 1
        newest = self.newest_mark(digest)
        if previous is not None and newest < self.floor:
            self._violate(now, "latest-went-back",
                          f"latest went back from {self.contents[previous]} (arrived #"
                          f"{self.floor}) to {self.contents[digest]} (last arrived #{newest})")
        certain = [m.seq for m in self.marks if m.digest == digest and m.kind == "arrival"
                   and m.certain and m.seq <= self.polled_seq]
        self.floor = max(certain, default=-1)

    def newest_mark(self, digest: str | None) -> int:
        return max((m.seq for m in self.marks if m.digest == digest), default=-1)

    def _judge_gone(self, now: float, record: FileRecord) -> None:
        if record.state == "writing":
            self._violate(now, "deleted-while-written",
                          f"{record.name} vanished while it was being written", (record.name,))
        elif record.state == "broken":
            self._violate(now, "broken-deleted-early",
                          f"{record.name} (truncated) vanished before BROKEN_GRACE_PERIOD",
                          (record.name,))
        elif record.digest != self.latest:  # else: moved into latest, or latest's twin
            self.suspects.append((now + JUDGE_AFTER_S, record, self.latest,
                                  self.newest_mark(self.latest)))

    def was_published(self, record: FileRecord) -> bool:
        arrival = record.arrival
        if arrival is None:
            return False
        return (any(t >= arrival.at for t in self.seen_in_latest.get(record.digest, ()))
                or any(t >= arrival.at - 0.5 for t in self.published_log.get(record.name, ())))

    def _judge_deletion(self, record: FileRecord, latest_digest: str | None,
                        latest_seq: int) -> None:
        arrival = record.arrival
        if arrival is None or not arrival.certain or self.was_published(record):
            return
        if arrival.seq > latest_seq:
            held = self.contents.get(latest_digest, "nothing") if latest_digest else "nothing"
            self._violate(time.time(), "newer-deleted-unpublished",
                          f"{record.name} ({self.contents[record.digest]}, arrival #"
                          f"{arrival.seq}) was deleted unpublished while latest held {held} "
                          f"(last arrived #{latest_seq})", (record.name,))

    # -- after quiet --------------------------------------------------------------------

    def void(self, mark: Mark) -> bool:
        """An arrival we took back (deleted, renamed over, rewritten) before it was published."""
        record = mark.record
        return (record is not None and record.removed_by_us is not None
                and not self.was_published(record))

    def acceptable_latest(self) -> set[str] | None:
        """What latest may hold after quiet: the last certain arrival's model, or one that
        arrived (or was touched) after it but may be ordered by file time. None: anything."""
        live = [m for m in self.marks if m.kind == "arrival" and not self.void(m)]
        certain = [m for m in live if m.certain]
        if not certain:
            return None
        last = max(certain, key=lambda m: m.seq)
        later = [m for m in self.marks if m.seq > last.seq and not m.certain and m.kind ==
                 "arrival" and not self.void(m)]
        later += [m for m in self.marks if m.seq > last.seq and m.kind == "touch"]
        return {last.digest} | {m.digest for m in later}

    def describe(self, digests) -> str:
        return ", ".join(sorted(self.contents.get(d, d) for d in digests))

    def _violate(self, now: float, kind: str, detail: str, names: tuple[str, ...] = ()):
        if any(v.kind == kind and v.detail == detail for v in self.violations):
            return
        self.violations.append(Violation(now, kind, detail, names))


# -- the tool, from outside ---------------------------------------------------------------


def parse_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp()


class Tool:
    """`python -m worker` as a user starts it, restarted whenever supervisord ends (as
    `--restart always` does). All output of every start is kept."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir, self.env = workdir, env
        self.runs: list[RunningTool] = []
        self._scanned: list[int] = []
        self.watching = 0  # "watching" lines of the reader seen so far, all runs
        self.start()

    def start(self) -> None:
        self.runs.append(RunningTool(self.workdir, self.env))
        self._scanned.append(0)

    @property
    def current(self) -> RunningTool:
        return self.runs[-1]

    def exited(self) -> bool:
        return self.current.process.poll() is not None

    def new_lines(self) -> list[str]:
        """Lines not scanned yet, of every run."""
        fresh = []
        for index, run in enumerate(self.runs):
            with run._lock:
                fresh += run.lines[self._scanned[index]:]
                self._scanned[index] = len(run.lines)
        return fresh

    def pid(self, program: str) -> int | None:
        """The program's pid among supervisord's children, read in /proc: no command to
        start first, so a kill lands when the step means it to."""
        try:
            return self.current.program_pid(program)
        except AssertionError:  # not running within 30 s
            return None

    def healthy(self) -> tuple[bool, str]:
        try:
            result = subprocess.run([sys.executable, "-m", "worker", "status"],
                                    cwd=self.workdir, env=self.env, capture_output=True,
                                    text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return False, "status timed out"
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    def output(self) -> list[str]:
        lines = []
        for run in self.runs:
            with run._lock:
                lines += run.lines
        return lines

    def stop(self) -> None:
        for run in self.runs:
            run.stop()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, signal.SIGKILL)  # a program left behind


# -- the driver -----------------------------------------------------------------------------


class Chaos:
    def __init__(self, seed: int, base: Path, home: Path, elsewhere: Path, mode: str,
                 fs: str):
        self.seed, self.base, self.mode, self.fs = seed, base, mode, fs
        self.home = home  # the file system of the models folder
        self.models = home / "models"
        self.staging = home / "staging"
        self.elsewhere = elsewhere / "elsewhere"
        for folder in (self.models, self.staging, self.elsewhere):
            folder.mkdir(parents=True, exist_ok=True)
        self.latest = self.models / "latest.tar.gz"
        self.env = tool_environment(
            base, TARGET_DIR=str(self.models), PUBLISH_MODE=mode,
            THROTTLE_DELAY=str(THROTTLE_DELAY_MS), RESCAN_INTERVAL=str(RESCAN_INTERVAL_S))
        self.oracle = Oracle()
        self.bytes_of: dict[str, bytes] = {}  # digest -> archive, for rollbacks
        self.order: list[str] = []  # digests in the order written
        self.first_name: dict[str, str] = {}
        self.started = time.time()
        self.log: list[str] = []
        self.counts: Counter = Counter()
        self.streams: list[threading.Thread] = []
        self.reader_down_at_watch: int | None = 0  # watching count to wait past; None: up
        self.last_kill = 0.0
        self.stopped_pid: int | None = None
        self.faults: tuple[str, ...] = ()
        self._stop = threading.Event()
        self.tool = Tool(base, self.env)
        self.poller = threading.Thread(target=self._poll, daemon=True)

    # -- the step log ---------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.log.append(f"{time.time() - self.started:8.3f}s {text}")

    # -- the poller -----------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception as error:  # a bug of ours must not pass as a quiet run
                with self.oracle.lock:
                    self.oracle._violate(time.time(), "poller-error", repr(error))
            time.sleep(POLL_S)

    def look(self) -> None:
        with self.oracle.lock:
            self._scan_log()
            present = {}
            with os.scandir(self.models) as entries:
                for entry in entries:
                    present[entry.name] = entry.inode()
            try:
                with open(self.latest, "rb") as handle:
                    latest = handle.read()
            except FileNotFoundError:
                latest = None
            self.oracle.observe(time.time(), present, latest)

    def _scan_log(self) -> None:
        for line in self.tool.new_lines():
            match = PUBLISHED_LINE.match(line)
            if match:
                self.oracle.tool_published(Path(match.group(2)).name, parse_time(match.group(1)))
            elif WATCHING_LINE in line and " reader " in line:
                self.tool.watching += 1
            elif "shutting down supervisord" in line:
                self.reader_died("the guard shut supervisord down", self.last_kill)

    def reader_up(self) -> bool:
        self._scan_log()
        if self.reader_down_at_watch is not None and self.tool.watching > \
                self.reader_down_at_watch:
            self.reader_down_at_watch = None
        return self.reader_down_at_watch is None

    def reader_died(self, why: str, since: float | None = None) -> None:
        """Call under the oracle's lock, at (or after) the reader's death."""
        self.reader_down_at_watch = self.tool.watching
        since = (time.time() if since is None else since) - IN_FLIGHT_S
        changed = self.oracle.uncertain_since(since)
        self.note(f"  reader down ({why}): {changed} recent arrival(s) now uncertain")

    # -- folder operations, each recorded under the lock ----------------------------------

    def new_model(self, rng: random.Random, label: str) -> tuple[bytes, str]:
        data = build_model(rng, f"{self.seed}-{label}")
        with self.oracle.lock:
            digest = self.oracle.content(data, label)
        self.bytes_of[digest] = data
        self.order.append(digest)
        return data, digest

    def present_names(self, states=("whole", "broken")) -> list[str]:
        with self.oracle.lock:
            return sorted(n for n, r in self.oracle.files.items() if r.state in states)

    def arrive_by_rename(self, source: Path, name: str, data: bytes) -> None:
        target = self.models / name
        with self.oracle.lock:
            certain = self.reader_up()
            os.rename(source, target)
            now = time.time()
            self.oracle.replaced(name, now)
            mark = self.oracle.arrived(name, os.lstat(target).st_ino, data, certain, now)
        self.note_arrival(name, mark, "renamed in")

    def arrive_by_mv(self, source: Path, name: str, data: bytes) -> None:
        target = self.models / name
        with self.oracle.lock:
            certain = self.reader_up()
            self.oracle.replaced(name, time.time())
            result = subprocess.run(["mv", str(source), str(target)], capture_output=True,
                                    text=True)
            now = time.time()
            if result.returncode != 0:
                # mv across file systems writes into the final name: on a full disk the
                # file is left truncated (or not at all).
                with contextlib.suppress(FileNotFoundError):
                    inode = os.lstat(target).st_ino
                    self.oracle.arrived(name, inode, None, certain, now)
                    self.note(f"  mv {name} failed ({result.stderr.strip()}): left truncated")
                    return
                self.note(f"  mv {name} failed ({result.stderr.strip()})")
                return
            mark = self.oracle.arrived(name, os.lstat(target).st_ino, data, certain, now)
        self.note_arrival(name, mark, "moved in across file systems (mv)")

    def note_arrival(self, name: str, mark: Mark | None, how: str) -> None:
        if mark is None:
            self.note(f"  {name} {how}: not whole")
        else:
            label = self.oracle.contents[mark.digest]
            certain = "" if mark.certain else " (uncertain: reader down)"
            self.note(f"  arrival #{mark.seq}: {name} = {label} {how}{certain}")

    def stage(self, folder: Path, name: str, data: bytes, mtime: float | None) -> Path | None:
        path = folder / name
        try:
            path.write_bytes(data)
            if mtime is not None:
                os.utime(path, (mtime, mtime))
        except OSError as error:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.note(f"  could not stage {name}: {error.strerror}")
            return None
        return path

    def stream(self, name: str, data: bytes, chunks: list[int], stalls: list[float],
               stop_at: int | None) -> None:
        """Write into the final path as Rasa does; closed whole, or truncated at stop_at."""
        target = self.models / name
        with self.oracle.lock:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.oracle.writing(name, os.fstat(fd).st_ino, time.time())
        # A writer closes right after its last byte (a whole file left open for longer than
        # THROTTLE_DELAY may be taken as it is): the last piece and the close are one step.
        end = len(data) if stop_at is None else stop_at
        pieces = [data[start:min(end, start + size)]
                  for start, size in zip(range(0, end, chunks[0]), chunks, strict=False)]
        last = pieces.pop() if stop_at is None else b""
        whole = stop_at is None
        try:
            for piece, stall in zip(pieces, stalls, strict=False):
                _write_all(fd, piece)
                if stall:
                    time.sleep(stall)
        except OSError as error:
            whole, last = False, b""
            self.note(f"  write of {name} failed ({error.strerror}): left truncated")
        with self.oracle.lock:
            certain = self.reader_up()
            try:
                _write_all(fd, last)
            except OSError as error:
                whole = False
                self.note(f"  write of {name} failed ({error.strerror}): left truncated")
            inode = os.fstat(fd).st_ino
            os.close(fd)
            now = time.time()
            try:
                still_ours = os.lstat(target).st_ino == inode
            except FileNotFoundError:
                still_ours = False
            mark = None
            if still_ours:
                mark = self.oracle.arrived(name, inode, data if whole else None, certain, now)
        if still_ours:
            self.note_arrival(name, mark, "closed after an in-place write")
        else:
            self.note(f"  {name} closed, but it is no longer there")

    # -- writers -------------------------------------------------------------------------

    def writer(self, kind: str, rng: random.Random, step: int, background: bool = True,
               avoid: str | None = None):
        """One writer; a rollback brings back a model other than latest's and `avoid`."""
        name = f"{kind.replace('_', '-')}-{self.seed}-{step:04d}.tar.gz"
        if kind in ("stream", "truncated", "rewrite"):
            data, _ = self.new_model(rng, f"{kind}#{step}")
            parts = rng.randrange(2, 7)
            chunks = [len(data) // parts + 1] * parts
            stalls = [rng.choice((0, 0.02, 0.1, 0.25, 0.5)) for _ in range(parts)]
            stop_at = rng.randrange(100, len(data) - 100) if kind == "truncated" else None
            if kind == "rewrite":
                names = self.present_names(("whole",))
                pick = rng.random()
                if names:
                    name = names[int(pick * len(names))]
            self.first_name.setdefault(self.order[-1], name)
            self.note(f"{kind} {name}: {len(data)} bytes in {parts} chunks, stalls {stalls}"
                      + (f", cut at {stop_at}" if stop_at else ""))
            args = (name, data, chunks, stalls, stop_at)
            if background:
                self.streams = [t for t in self.streams if t.is_alive()]
                while len(self.streams) >= 2:
                    self.streams.pop(0).join()
                thread = threading.Thread(target=self.stream, args=args, daemon=True)
                thread.start()
                self.streams.append(thread)
            else:
                self.stream(*args)
            return
        if kind == "rollback":
            pick, by_mv, same_name = rng.random(), rng.random() < 0.3, rng.random() < 0.3
            with self.oracle.lock:
                current = self.oracle.latest
            with self.oracle.lock:
                arrived = {m.digest for m in self.oracle.marks if m.kind == "arrival"}
            older = [d for d in self.order if d in arrived and d not in (current, avoid)]
            if not older:
                self.note("rollback: no older model yet")
                return
            digest = older[int(pick * len(older))]
            data = self.bytes_of[digest]
            if same_name and digest in self.first_name:
                name = self.first_name[digest]
            self.note(f"rollback {name} = {self.oracle.contents[digest]}, mtime 1 h ago, "
                      f"{'mv across file systems' if by_mv else 'renamed in'}")
            folder = self.elsewhere if by_mv else self.staging
            staged = self.stage(folder, name, data, time.time() - 3600)
            if staged:
                (self.arrive_by_mv if by_mv else self.arrive_by_rename)(staged, name, data)
            return
        data, digest = self.new_model(rng, f"{kind}#{step}")
        self.first_name.setdefault(digest, name)
        if kind == "rename_in":
            self.note(f"rename_in {name}")
            staged = self.stage(self.staging, name, data, None)
            if staged:
                self.arrive_by_rename(staged, name, data)
        elif kind == "hidden_rename":
            self.note(f"hidden_rename .{name}.part -> {name}")
            staged = self.stage(self.models, f".{name}.part", data, None)
            if staged:
                self.arrive_by_rename(staged, name, data)
        elif kind == "cross_fs":
            old = rng.random() < 0.5
            self.note(f"cross_fs mv {name}" + (", mtime 2 h ago" if old else ""))
            staged = self.stage(self.elsewhere, name, data, time.time() - 7200 if old else None)
            if staged:
                self.arrive_by_mv(staged, name, data)
        elif kind == "future_mtime":
            ahead = rng.choice((3600, 86400))
            self.note(f"future_mtime {name}: mtime {ahead} s ahead, renamed in")
            staged = self.stage(self.staging, name, data, time.time() + ahead)
            if staged:
                self.arrive_by_rename(staged, name, data)

    # -- faults --------------------------------------------------------------------------

    def kill(self, program: str, pid: int | None = None) -> None:
        self.last_kill = time.time()
        if program == "supervisord":
            process = self.tool.current.process
            with self.oracle.lock:
                os.kill(process.pid, signal.SIGKILL)
                self.reader_died("kill -9 supervisord")
            process.wait()
            self.note("  supervisord killed; started again (as --restart always does)")
            self.tool.start()
            return
        pid = pid or self.tool.pid(program)
        if pid is None:
            self.note(f"  kill -9 {program}: no pid (not running)")
            return
        with self.oracle.lock:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if program == "reader":
                self.reader_died("kill -9 reader")
        self.note(f"  kill -9 {program} (pid {pid})")

    def ensure_running(self) -> None:
        if self.tool.exited():
            code = self.tool.current.process.returncode
            with self.oracle.lock:
                self._scan_log()
                if self.reader_down_at_watch is None:
                    self.reader_died(f"supervisord exited ({code})", self.last_kill)
            self.note(f"  supervisord had exited ({code}): started again")
            self.tool.start()

    def wait_healthy(self, why: str) -> bool:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        answer = ""
        while time.monotonic() < deadline:
            self.ensure_running()
            ok, answer = self.tool.healthy()
            if ok:
                return True
            time.sleep(0.5)
        with self.oracle.lock:
            self.oracle._violate(time.time(), "unhealthy",
                                 f"not healthy within {HEALTHY_WITHIN_S:.0f} s {why}: "
                                 f"{answer[-400:]}")
        return False

    def wait_converged(self, within: float = 10.0) -> None:
        """Until latest holds the last arrival (a reconcile just ended), at most `within`."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self.oracle.lock:
                acceptable = self.oracle.acceptable_latest()
                if acceptable is None or self.oracle.latest in acceptable:
                    self.note("  published")
                    return
            time.sleep(POLL_S)
        self.note(f"  not published within {within:.0f} s")

    def stop_rotator(self, pid: int | None = None) -> int | None:
        pid = pid or self.tool.pid("rotator")
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            self.stopped_pid = pid
        return pid

    def cont_rotator(self) -> None:
        if self.stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped_pid, signal.SIGCONT)
            self.stopped_pid = None

    def touch(self, path: Path, how: str) -> None:
        now = time.time()
        if how == "utime":
            os.utime(path)
        else:
            offset = {"touch": None, "touch-past": -3600, "touch-future": 86400}[how]
            args = ["touch"] if offset is None else ["touch", "-d", f"@{now + offset:.3f}"]
            subprocess.run([*args, str(path)], check=True)

    def touch_latest(self, how: str) -> None:
        if self.latest.exists():
            self.touch(self.latest, how)
            self.note(f"  {how} latest.tar.gz")

    def fault(self, kind: str, rng: random.Random, step: int) -> None:
        self.counts[f"fault:{kind}"] += 1
        if kind.startswith("kill_") and kind != "kill_rotator_after_rollback":
            program = kind[len("kill_"):]
            again = rng.random() < 0.3
            pause = rng.uniform(0.1, 2.0)
            second = rng.choice(("reader", "rotator", "supervisord"))
            self.note(f"fault {kind}")
            self.kill(program)
            if again:  # at any moment: also while it starts again
                time.sleep(pause)
                self.note(f"fault kill_{second} {pause:.2f} s later, while it starts again")
                self.counts[f"fault:kill_{second}"] += 1
                self.kill(second)
        elif kind == "stop_rotator":
            duration = rng.uniform(0.2, RESCAN_INTERVAL_S + 1.5)
            writers = [rng.choice(("rename_in", "rollback", "stream", "cross_fs"))
                       for _ in range(rng.randrange(0, 3))]
            self.note(f"fault SIGSTOP rotator for {duration:.2f} s, meanwhile {writers}")
            started = time.monotonic()
            if self.stop_rotator():
                for index, writer in enumerate(writers):
                    self.writer(writer, rng, step * 10 + index, background=False)
                time.sleep(max(0.0, duration - (time.monotonic() - started)))
                self.cont_rotator()
                self.note("  SIGCONT rotator")
        elif kind == "touch_latest":
            how = rng.choice(("touch", "touch-past", "touch-future", "utime"))
            self.note(f"fault {how} latest.tar.gz")
            self.touch_latest(how)
            return
        elif kind == "chmod":
            on_latest, pick = rng.random() < 0.5, rng.random()
            mode = rng.choice((0o600, 0o644, 0o444, 0o640, 0o000))
            names = self.present_names()
            path = self.latest if on_latest or not names else \
                self.models / names[int(pick * len(names))]
            self.note(f"fault chmod {mode:o} {path.name}")
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, mode)
            return
        elif kind == "touch_model":
            pick, how = rng.random(), rng.choice(("touch", "touch-past", "utime"))
            names = self.present_names(("whole",))
            if not names:
                self.note("fault touch_model: no model")
                return
            name = names[int(pick * len(names))]
            self.note(f"fault {how} {name}")
            with self.oracle.lock:
                certain = self.reader_up()
                with contextlib.suppress(FileNotFoundError, subprocess.CalledProcessError):
                    self.touch(self.models / name, how)
                    self.oracle.touched(name, time.time(), certain)
            return
        elif kind == "person_delete":
            pick = rng.random()
            names = self.present_names()
            if not names:
                self.note("fault person_delete: nothing to delete")
                return
            name = names[int(pick * len(names))]
            with self.oracle.lock:
                try:
                    (self.models / name).unlink()
                    self.oracle.replaced(name, time.time())
                    self.note(f"fault a person deletes {name}")
                except FileNotFoundError:
                    self.note(f"fault a person deletes {name}: already gone")
            return
        elif kind == "full_disk":
            leave = rng.choice((0, 4096, 40_000))
            hold = rng.uniform(1.0, 4.0)
            writers = [rng.choice(("rename_in", "stream", "rollback"))
                       for _ in range(rng.randrange(1, 3))]
            self.note(f"fault full disk ({leave} bytes left) for {hold:.1f} s, meanwhile "
                      f"{writers}")
            filler = self.home / "filler"
            stat = os.statvfs(self.home)
            try:
                with open(filler, "wb") as handle:
                    handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
            except OSError:
                pass  # full: that is the point
            for index, writer in enumerate(writers):
                self.writer(writer, rng, step * 10 + index, background=False)
            time.sleep(hold)
            filler.unlink()
            self.note("  disk freed")
        elif kind == "touch_latest_after_arrival":
            before = rng.random() < 0.3
            drop_source = self.mode == "copy" and rng.random() < 0.6
            how = rng.choice(("touch", "touch", "touch-past", "utime"))
            self.note(f"fault {how} latest.tar.gz {'0.3 s before' if before else '0.2 s after'}"
                      f" a new model" + (" (latest's source deleted first)" if drop_source
                                         else ""))
            if drop_source:
                self.delete_latest_source()
            if before:
                self.touch_latest(how)
                time.sleep(0.3)
            self.writer("rename_in", rng, step, background=False)
            if not before:
                time.sleep(0.2)
                self.touch_latest(how)
        elif kind == "rollback_while_stopped":
            extra = rng.uniform(0.1, 1.5)
            # Stopped right after a publish, the rotator's RESCAN_INTERVAL timer runs out
            # about `extra` before SIGCONT; stopped at a random moment, up to 2 s earlier.
            after_publish = rng.random() < 0.5
            settle = rng.uniform(0.0, 1.5)
            gap = rng.choice((0.0, 0.05))
            self.note("fault SIGSTOP rotator" + (f" {settle:.2f} s after a publish"
                                                 if after_publish else "")
                      + f"; a new model, then a rollback {gap} s later; SIGCONT after "
                      f"RESCAN_INTERVAL + {extra:.2f} s")
            rotator = self.tool.pid("rotator")
            if after_publish:
                self.writer("rename_in", rng, step * 10 + 2, background=False)
                self.wait_converged()
                time.sleep(settle)
            if rotator and self.stop_rotator(rotator):
                started = time.monotonic()
                self.writer("rename_in", rng, step * 10, background=False)
                time.sleep(gap)
                self.writer("rollback", rng, step * 10 + 1, background=False,
                            avoid=self.order[-1])
                time.sleep(max(0.0, RESCAN_INTERVAL_S + extra - (time.monotonic() - started)))
                self.cont_rotator()
                self.note("  SIGCONT rotator")
        elif kind == "touch_model_before_arrivals":
            how = rng.choice(("utime", "touch"))
            self.note(f"fault a new model, {how} of it 0.05 s later, then a new model and a "
                      "rollback")
            self.writer("rename_in", rng, step * 10, background=False)
            name = f"rename-in-{self.seed}-{step * 10:04d}.tar.gz"
            time.sleep(0.05)
            with self.oracle.lock:
                certain = self.reader_up()
                with contextlib.suppress(FileNotFoundError, subprocess.CalledProcessError):
                    self.touch(self.models / name, how)
                    self.oracle.touched(name, time.time(), certain)
            time.sleep(0.05)
            self.writer("rename_in", rng, step * 10 + 1, background=False)
            self.writer("rollback", rng, step * 10 + 2, background=False,
                        avoid=self.order[-1])
        elif kind == "kill_rotator_after_rollback":
            self.note("fault a new model; 0.2 s later a rollback; 0.2 s later kill -9 rotator")
            rotator = self.tool.pid("rotator")
            self.writer("rename_in", rng, step * 10, background=False)
            time.sleep(0.2)
            self.writer("rollback", rng, step * 10 + 1, background=False,
                        avoid=self.order[-1])
            time.sleep(0.2)
            self.kill("rotator", rotator)
        self.wait_healthy(f"after {kind}")

    def delete_latest_source(self) -> None:
        with self.oracle.lock:
            held = self.oracle.latest
            for name, record in list(self.oracle.files.items()):
                if record.digest == held and record.state == "whole":
                    with contextlib.suppress(FileNotFoundError):
                        (self.models / name).unlink()
                        self.oracle.replaced(name, time.time())
                        self.note(f"  a person deletes {name} (latest's source)")

    # -- quiet ---------------------------------------------------------------------------

    def quiet(self, why: str) -> None:
        for thread in self.streams:
            thread.join()
        self.streams = []
        self.note(f"quiet ({why}): waiting for health and for latest to be the last arrival")
        self.wait_healthy(f"at quiet ({why})")
        deadline = time.monotonic() + CONVERGE_WITHIN_S
        while True:
            with self.oracle.lock:
                acceptable = self.oracle.acceptable_latest()
                held = self.oracle.latest
                leftovers = sorted(p.name for p in self.models.iterdir()
                                   if p.name.startswith(TEMPORARY_MARK))
            converged = acceptable is None or held in acceptable
            if converged and not leftovers:
                break
            if time.monotonic() > deadline:
                with self.oracle.lock:
                    if not converged:
                        self.oracle._violate(
                            time.time(), "not-last-arrival",
                            f"{CONVERGE_WITHIN_S:.0f} s after quiet latest holds "
                            f"{self.oracle.describe([held]) if held else 'nothing'}, not the "
                            f"last arrival ({self.oracle.describe(acceptable)})")
                    if leftovers:
                        self.oracle._violate(time.time(), "temporary-files",
                                             f"left after quiet: {leftovers}")
                break
            time.sleep(0.2)
        time.sleep(JUDGE_AFTER_S + 0.2)  # deletions seen meanwhile are judged
        held = self.oracle.latest
        self.note(f"  quiet: latest = {self.oracle.describe([held]) if held else 'nothing'}")

    # -- the run -------------------------------------------------------------------------

    def run(self, steps: int, seconds: float, faults: tuple[str, ...] = ()) -> int:
        """`faults`: only these kinds of fault (default: all); writers always."""
        self.faults = faults
        weights = dict(WRITERS)
        chosen = {k: v for k, v in FAULTS.items() if (k in faults or not faults)
                  and (k != "full_disk" or self.fs == "tmpfs")}
        if faults:  # a few faults chosen: still about one step in three is a fault
            chosen = {k: sum(WRITERS.values()) / 2 / len(chosen) for k in chosen}
        weights.update(chosen)
        kinds, chances = list(weights), list(weights.values())
        self.note(f"seed {self.seed}: PUBLISH_MODE={self.mode}, models on {self.fs}, "
                  f"THROTTLE_DELAY={THROTTLE_DELAY_MS} ms, RESCAN_INTERVAL={RESCAN_INTERVAL_S} s")
        self.wait_healthy("at start")
        self.poller.start()
        deadline = time.monotonic() + seconds
        done = 0
        try:
            for step in range(steps):
                if self.oracle.violations or time.monotonic() > deadline:
                    break
                rng = random.Random(f"{self.seed}:{step}")
                kind = rng.choices(kinds, chances)[0]
                pause = 0.0 if rng.random() < 0.2 else rng.uniform(0.05, 0.7)
                self.ensure_running()
                self.log.append(f"-- step {step}")
                if kind in WRITERS:
                    self.counts[f"writer:{kind}"] += 1
                    self.writer(kind, rng, step)
                else:
                    self.fault(kind, rng, step)
                done = step + 1
                time.sleep(pause)
                if done % QUIET_EVERY == 0:
                    self.quiet(f"after step {step}")
            if not self.oracle.violations:
                self.quiet("end")
        finally:
            self.cont_rotator()
            self._stop.set()
            if self.poller.is_alive():
                self.poller.join(5)
            for thread in self.streams:
                thread.join(30)
            self.tool.stop()
        return done

    def report(self, steps_done: int, full: bool = False) -> str:
        oracle = self.oracle
        lines = [f"CHAOS seed {self.seed}: {len(oracle.violations)} violation(s) in "
                 f"{steps_done} steps, {time.time() - self.started:.0f} s (PUBLISH_MODE="
                 f"{self.mode}, models on {self.fs})"]
        if not oracle.violations and not full:
            return lines[0]
        only = f" --faults {','.join(self.faults)}" if self.faults else ""
        lines.append(f"replay: .venv/bin/python -m tests.chaos --seed {self.seed} --steps "
                     f"{steps_done} --mode {self.mode} --fs {self.fs}{only}")
        output = self.tool.output()
        for violation in oracle.violations:
            lines.append(f"VIOLATION at {violation.at - self.started:.3f}s "
                         f"[{violation.kind}] {violation.detail}")
            for name in violation.names:
                lines += [f"    | {line}" for line in output if name in line][-12:]
        lines.append("step log:")
        lines += [f"  {entry}" for entry in self.log]
        shown = output if full else output[-80:]
        lines.append(f"tool output ({'all' if full else 'last 80'} lines):")
        lines += [f"  | {line}" for line in shown]
        return "\n".join(lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- running seeds ------------------------------------------------------------------------


def seed_settings(seed: int) -> tuple[str, str]:
    rng = random.Random(f"{seed}:settings")
    return rng.choice(("copy", "move")), rng.choice(("tmpfs", "disk"))


def run_inside(seed: int, steps: int, seconds: float, mode: str, fs: str,
               faults: tuple[str, ...] = (), full: bool = False) -> dict:
    """One seed, in this process's own mount namespace (see main)."""
    base = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    tmpfs = base / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "rotator-chaos",
                    str(tmpfs)], check=True)
    disk = base / "disk"
    disk.mkdir()
    home, elsewhere = (tmpfs, disk) if fs == "tmpfs" else (disk, tmpfs)
    try:
        chaos = Chaos(seed, base, home, elsewhere, mode, fs)
        done = chaos.run(steps, seconds, faults)
        print(chaos.report(done, full), flush=True)
        return {"seed": seed, "mode": mode, "fs": fs, "steps": done,
                "seconds": round(time.time() - chaos.started, 1),
                "counts": dict(chaos.counts), "transitions": chaos.oracle.transitions,
                "arrivals": sum(1 for m in chaos.oracle.marks if m.kind == "arrival"),
                "violations": [[v.kind, v.detail] for v in chaos.oracle.violations]}
    finally:
        subprocess.run(["umount", "-l", str(tmpfs)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="one seed")
    parser.add_argument("--seeds", help="seeds: 1,2,5-9")
    parser.add_argument("--steps", type=int, help="steps per seed (default 40, or unbounded "
                        "with --minutes)")
    parser.add_argument("--minutes", type=float, help="total time, shared among the seeds")
    parser.add_argument("--mode", choices=("copy", "move"), help="PUBLISH_MODE (default: "
                        "from the seed)")
    parser.add_argument("--fs", choices=("tmpfs", "disk"), help="where the models folder "
                        "lives (default: from the seed)")
    parser.add_argument("--faults", help="only these faults, comma-separated (default: all): "
                        + ", ".join(FAULTS))
    parser.add_argument("--log", action="store_true", help="print the step log and the "
                        "tool's output also when no violation was found")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds or "1")
    faults = tuple(f for f in (args.faults or "").split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"--faults: unknown {unknown}; allowed: {', '.join(FAULTS)}")
    seconds = args.minutes * 60 / len(seeds) if args.minutes else 24 * 3600.0
    steps = args.steps or (10**9 if args.minutes else 40)
    # Interrupted (SIGTERM), a run still stops its tool and removes its folders.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    if args.inside:
        mode, fs = seed_settings(seeds[0])
        result = run_inside(seeds[0], steps, seconds, args.mode or mode, args.fs or fs,
                            faults, args.log)
        print("CHAOS-RESULT " + json.dumps(result), flush=True)
        return 1 if result["violations"] else 0
    if os.geteuid() != 0:
        print("the chaos suite needs root (unshare --mount, a tmpfs), as CI has",
              file=sys.stderr)
        return 2
    results = []
    for seed in seeds:
        command = ["unshare", "--mount", "--propagation", "private", "--", sys.executable,
                   "-m", "tests.chaos", "--inside", "--seed", str(seed), "--steps", str(steps)]
        if args.minutes:
            command += ["--minutes", str(seconds / 60)]
        for option in ("mode", "fs", "faults"):
            if getattr(args, option):
                command += [f"--{option}", getattr(args, option)]
        if args.log:
            command.append("--log")
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        result = None
        try:
            for line in child.stdout:
                if line.startswith("CHAOS-RESULT "):
                    result = json.loads(line[len("CHAOS-RESULT "):])
                else:
                    print(line, end="", flush=True)
        finally:
            if child.poll() is None:
                child.terminate()
            child.wait()
        results.append(result or {"seed": seed, "steps": 0, "counts": {},
                                  "violations": [["driver", f"exit {child.returncode}"]]})
    total = Counter()
    for result in results:
        total.update(result.get("counts", {}))
    failed = [r["seed"] for r in results if r["violations"]]
    print(f"CHAOS SUMMARY: {len(results)} seed(s), {sum(r['steps'] for r in results)} steps, "
          f"{sum(r.get('seconds', 0) for r in results) / 60:.1f} min, "
          f"{sum(r.get('arrivals', 0) for r in results)} arrivals; "
          + ", ".join(f"{k} {v}" for k, v in sorted(total.items())), flush=True)
    for result in results:
        for kind, detail in result["violations"]:
            print(f"  seed {result['seed']} ({result.get('mode')}, {result.get('fs')}): "
                  f"[{kind}] {detail}", flush=True)
    print("CHAOS " + (f"FAILED seeds: {failed}" if failed else "PASSED"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
