"""The reader: raw inotify events in, hints to the rotator out. Nothing else.

Idle, it blocks in read() and wakes only every RESCAN_INTERVAL (to check that the path still
names the folder it watches), or never when RESCAN_INTERVAL is 0.

What it saw is not dropped: every arrival is written into the arrival journal BEFORE it is
handed to the rotator, so no arrival lives only in the memory of a process that can die (a
rotator killed -9 before its next reconcile, or frozen by SIGSTOP while the reader goes on).
When the journal is busy (a reconcile holds the folder lock through a long copy) the arrival
is delivered all the same and journaled as soon as the lock is free: the reader never waits
for a copy. Arrivals it cannot deliver (the rotator is restarting) are kept with their
original times, up to MAX_PENDING (beyond that, a rescan is asked for instead), and delivered
on reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from inotify_simple import INotify, flags

from worker.folder.arrivals import LATEST_KEY, version_of
from worker.folder.files import folder_lock, load_journal
from worker.folder.names import is_model_name, same_folder
from worker.folder.statefile import set_aside
from worker.programs.channel import ARRIVED, RESCAN, ChannelError, QueueClient
from worker.settings import Settings

# close_write: a writer finished (Rasa streams the archive into its final path).
# moved_to: a file was renamed in (temp file + rename, or a model moved back: a rollback).
WATCH_MASK = (flags.CLOSE_WRITE | flags.MOVED_TO
              | flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT)
ARRIVAL = flags.CLOSE_WRITE | flags.MOVED_TO
# The watch no longer sees the folder at the path: it was removed, renamed or unmounted.
WATCH_LOST = flags.DELETE_SELF | flags.MOVE_SELF | flags.UNMOUNT | flags.IGNORED
REWATCH_RETRY_S = 0.5
# While a rescan is owed and the rotator is unreachable, try again this often (ms, doubling).
RETRY_FIRST_MS, RETRY_MAX_MS = 100, 2000
# The rotator starts beside the reader and needs a moment to serve its queue: until this long
# after the reader's start, an unreachable rotator is normal and retried quietly.
QUIET_START_S = 10.0
# Undelivered arrivals kept in memory; beyond this the rotator gets a rescan request instead.
MAX_PENDING = 10_000


class Reader:
    def __init__(self, settings: Settings, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.inotify = INotify()
        self.client = QueueClient(settings.run_dir)
        self.wd: int | None = None
        self.watched: tuple[int, int] | None = None  # (st_dev, st_ino) of the watched folder
        self.owed_rescan: str | None = "reader started: events may have been missed"
        self.pending: list[tuple[str, float]] = []  # arrivals not delivered yet, oldest first
        self.unjournaled: list[tuple[str, float]] = []  # arrivals not in the journal yet
        self._connected_once = False
        self._retry_ms = RETRY_FIRST_MS
        self._unreachable_reported = False
        self._started = time.monotonic()
        latest = settings.latest_model_path
        # Another program's write to LATEST_MODEL_PATH (Rasa's --fixed-model-name) is news.
        self._latest_name = (latest.name if same_folder(settings.target_dir, latest.parent)
                             else None)

    def run(self) -> None:
        self.watch()
        self.deliver_owed_rescan()
        while True:
            # Idle and delivered: block, waking only with RESCAN_INTERVAL to check that the
            # path still names the watched folder. Owing a rescan to a rotator that is not
            # there yet: wake up now and then to try again.
            owing = self.owed_rescan or self.pending or self.unjournaled
            timeout = self._retry_ms if owing else self._identity_check_ms
            self.handle(self.inotify.read(timeout=timeout))
            self.check_identity()
            if self.owed_rescan or self.pending or self.unjournaled:
                self._retry_ms = min(self._retry_ms * 2, RETRY_MAX_MS)
            else:
                self._retry_ms = RETRY_FIRST_MS  # all done: the next wait starts short

    def watch(self) -> None:
        """Watch TARGET_DIR, creating it when it is missing (also after it was removed)."""
        folder = self.settings.target_dir
        reported = False
        while True:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self.wd = self.inotify.add_watch(folder, WATCH_MASK)
                self.watched = _identity(folder)
                break
            except OSError as error:
                if not reported:
                    self.log.error("cannot watch %s: %s; retrying", folder, error)
                    reported = True
                time.sleep(REWATCH_RETRY_S)
        self.log.info("watching %s for models matching %s", folder, self.settings.model_pattern)

    def handle(self, events) -> None:
        arrived = []
        now = time.time()
        for event in events:
            if event.mask & flags.Q_OVERFLOW:
                # The kernel dropped events: only a look at the whole folder is safe now.
                self.log.warning("inotify queue overflowed: asking for a full rescan")
                self.owed_rescan = "inotify queue overflow"
            elif event.wd == self.wd and event.mask & WATCH_LOST:
                kinds = ", ".join(f.name for f in flags.from_mask(event.mask & WATCH_LOST))
                self.log.warning("watched folder %s is gone (%s): watching it again",
                                 self.settings.target_dir, kinds)
                self.rewatch()
            elif event.mask & ARRIVAL and (self._is_model(event.name)
                                           or event.name == self._latest_name):
                arrived.append((event.name, now))
        self.pending.extend(arrived)
        self.unjournaled.extend(arrived)
        if len(self.pending) > MAX_PENDING or len(self.unjournaled) > MAX_PENDING:
            self.log.warning("more than %d arrivals could not be delivered: asking for a full "
                             "rescan instead", MAX_PENDING)
            self.pending, self.unjournaled = [], []
            self.owed_rescan = "too many undelivered events"
        # Durable first, then delivered: the rotator may die (or freeze) at any moment.
        self.journal_arrivals()
        self.deliver_pending()
        self.deliver_owed_rescan()

    def deliver_pending(self) -> None:
        """Send the arrivals not delivered yet, with the times they were seen at."""
        if self.pending and self.deliver((ARRIVED, list(self.pending))):
            self.pending = []

    def journal_arrivals(self) -> None:
        """Put the arrivals not journaled yet into the arrival journal, without waiting for
        the folder lock: a reconcile holding it may be copying a large model. They stay
        owed (and are tried again shortly) until one attempt gets the lock."""
        fresh = self.unjournaled
        if not fresh:
            return
        latest = self.settings.latest_model_path
        try:
            with folder_lock(latest, wait=False):
                journal = load_journal(
                    latest, lambda path, problem: set_aside(path, problem, self.log))
                for name, when in fresh:
                    try:
                        st = os.lstat(self.settings.target_dir / name)
                    except OSError:
                        continue  # gone again
                    key = LATEST_KEY if name == self._latest_name else name
                    if key == LATEST_KEY and journal.lookup(key, version_of(st)) is not None:
                        continue  # our own publish (the rotator recorded it), not news
                    journal.note_event(key, when, version_of(st), time.time())
                journal.save()
        except BlockingIOError:
            return  # a reconcile runs: retried shortly, never waited for
        except OSError as error:
            self.log.debug("arrival journal not written (%s); the arrivals stay in memory",
                           error)
            return
        self.unjournaled = []

    @property
    def _identity_check_ms(self) -> int | None:
        interval = self.settings.rescan_interval_s
        return int(interval * 1000) if interval else None

    def check_identity(self) -> None:
        """A file system mounted over the folder (or a replaced volume) sends no event: the
        old watch silently sees nothing. Compare what the path names now with what we watch."""
        try:
            current = _identity(self.settings.target_dir)
        except OSError:
            return  # gone: DELETE_SELF / IGNORED bring us to rewatch()
        if current != self.watched:
            self.log.warning("watched folder %s now names another folder (a mount or a "
                             "replaced volume): watching it again", self.settings.target_dir)
            self.rewatch()

    def rewatch(self) -> None:
        if self.wd is not None:
            with contextlib.suppress(OSError):  # already gone with the folder
                self.inotify.rm_watch(self.wd)
        self.wd = None
        self.watch()
        self.owed_rescan = "watched folder replaced"

    def _is_model(self, name: str) -> bool:
        s = self.settings
        return is_model_name(name, s.model_pattern, s.latest_model_path, s.target_dir)

    def deliver_owed_rescan(self) -> None:
        if self.owed_rescan and self.deliver((RESCAN, self.owed_rescan)):
            self.owed_rescan = None

    def deliver(self, message: tuple) -> bool:
        """Send to the rotator, reconnecting once. False: it is down, and will rescan anyway
        when it starts (its first act is a full reconcile)."""
        if self.client.send(message):
            return True
        try:
            self.client.connect()
        except (OSError, ChannelError) as error:
            starting = time.monotonic() - self._started < QUIET_START_S
            if not self._unreachable_reported and not starting:
                self.log.warning("rotator not reachable (%s); retrying. It reconciles the "
                                 "whole folder when it starts", error)
                self._unreachable_reported = True
            return False
        self._unreachable_reported = False
        self._retry_ms = RETRY_FIRST_MS
        if not self._connected_once:
            self.log.info("connected to the rotator")
        else:
            self.log.info("reconnected to the rotator")
        self._connected_once = True
        # A restarted rotator missed whatever happened meanwhile: say so before the news.
        if message[0] != RESCAN:
            self.client.send((RESCAN, "reader reconnected"))
        return self.client.send(message)


def _identity(folder) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def run_reader(settings: Settings, log: logging.Logger) -> None:
    Reader(settings, log).run()



