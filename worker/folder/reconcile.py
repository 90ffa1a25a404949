"""Bring the folder in line with the rules, once: publish the newest whole model, prune safely.

The rules, each one method below (README, "Which model is latest", "What is never deleted"):
- which model is latest: the most recent arrival (worker/folder/arrivals.py says when each arrived);
- what latest holds: the record when it describes the file; else the file's content: the
  recorded model when its fingerprint matches (a touch is no arrival), else adopted
  (someone else wrote it, or our record was lost); a file another program is still writing
  there is left alone until its close_write or BROKEN_GRACE_PERIOD;
- no copy of a file that may still be written: a model is a candidate once unchanged for
  THROTTLE_DELAY, or once a close_write / moved_to was seen after its last change;
- nothing newer than what is published is deleted: pruning compares with what latest holds
  after the publish attempt, never with what we tried to publish;
- a Rasa restart finds the published model: latest's mtime is kept above every other
  *.tar.gz in the folder;
- loadable, not just whole (worker/folder/loadable.py): a model a replica refused, or one below the
  minimum Rasa version, is not published (kept, reported once); the last model a replica
  loaded is kept, and published again when latest holds a refused model.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from worker.folder.archive import ArchiveInfo, BrokenArchive, SourceChanged, check_archive
from worker.folder.arrivals import LATEST_KEY, Arrival, ArrivalJournal, version_of
from worker.folder.files import (
    ModelFile,
    PublishRecord,
    adopt_record,
    folder_lock,
    keep_latest_newest,
    list_models,
    publish_atomically,
    read_record,
    record_path,
    remove_temporary_files,
    same_content,
    write_record,
)
from worker.folder.loadable import VERSION, FileMark, LoadableBook, below_minimum
from worker.folder.names import same_folder, without_temporary_names
from worker.folder.statefile import report_invalid, set_aside
from worker.logs import human_size
from worker.settings import Settings

# After a failed publish (disk full, permissions) try again this long after, at the latest.
RETRY_AFTER_ERROR_S = 5.0
# A file that appeared since the last look but whose event has not come yet (the reader is
# behind: it was blocked sending to a stopped rotator, or it restarts) is not deleted for
# this long after it was first seen: its event, when it comes, says when it really arrived
# (a rollback moved in keeps its old mtime, and the file-time rule would call it older).
EVENT_GRACE_S = 2.0
# Errors that concern the folder, not one file: trying the next model would fail the same way.
FOLDER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


@dataclass(frozen=True)
class Action:
    kind: str  # published | deleted | skipped | failed (with dry_run: would-publish, ...)
    path: Path
    detail: str
    reason: str = ""  # a short label for metrics: broken, changed, io-error, older, ...

    def __str__(self) -> str:
        separator = " " if self.detail.startswith("->") else ": "
        return f"{self.kind} {self.path}{separator}{self.detail}"


@dataclass
class Outcome:
    actions: list[Action] = field(default_factory=list)
    # When a file that had to be left alone may become actionable; None: nothing pending.
    recheck_at: float | None = None

    def recheck(self, when: float) -> None:
        self.recheck_at = when if self.recheck_at is None else min(self.recheck_at, when)

    @property
    def published(self) -> bool:
        return any(action.kind == "published" for action in self.actions)


class Unreadable(BrokenArchive):
    """The file could not be read (permissions, not a regular file): no verdict, kept."""


@dataclass(frozen=True)
class Latest:
    """What LATEST_MODEL_PATH holds now. `record` is None when it holds no whole model;
    `settled` is False while another program is still writing it (then touch nothing)."""

    record: PublishRecord | None
    settled: bool = True


class Reconciler:
    """Holds what one process has learned: events not yet journaled, archive checks."""

    def __init__(self, settings: Settings, log: logging.Logger | None = None, clock=time.time):
        self.settings = settings
        self.log = log or logging.getLogger("rotator.reconcile")
        self.clock = clock
        # name -> wall time of its last close_write / moved_to, in the order received (the
        # kernel's order says which of one batch came last); bound to files at reconcile.
        self.pending: dict[str, float] = {}
        self.record: PublishRecord | None = None
        self._checks: dict[tuple, ArchiveInfo | BrokenArchive] = {}
        self._reported: set[tuple] = set()
        self._record_unsaved = False  # self.record is right, the file beside latest is not
        self._record_file: tuple | None = None  # the record file as we last wrote it
        self._bound: list[tuple[str, float]] = []  # events this reconcile put in the journal
        # The lowest Rasa version the servers load (None: no version gate), and who says so.
        self.minimum_version: str | None = settings.rasa_min_model_version or None
        self.minimum_source = "RASA_MIN_MODEL_VERSION"

    def note_arrival(self, name: str, when: float) -> None:
        """A close_write or moved_to for `name` was seen at wall-clock time `when`."""
        self.pending.pop(name, None)  # re-inserted last: receipt order is arrival order
        self.pending[name] = when

    def reconcile(self, dry_run: bool = False) -> Outcome:
        if dry_run:
            return self._reconcile(dry_run=True)
        with folder_lock(self.settings.latest_model_path):
            return self._reconcile(dry_run=False)

    def _reconcile(self, dry_run: bool) -> Outcome:
        settings = self.settings
        outcome = Outcome()
        now = self.clock()
        if not dry_run:
            # Every writer of our temp files holds the folder lock: one there now was left
            # by a process killed mid-write (the reader journals every arrival).
            for leftover in remove_temporary_files(settings.latest_model_path):
                self.log.info("removed %s: temporary file of an interrupted write", leftover)
        models = list_models(settings.target_dir, settings.model_pattern,
                             settings.latest_model_path, settings.ignore_paths)
        self._forget_missing(models)
        on_invalid = self._on_invalid(dry_run)
        journal = ArrivalJournal.load(settings.latest_model_path, on_invalid)
        records = [r for r in (self.record, read_record(settings.latest_model_path, on_invalid))
                   if r]
        for record in records:
            journal.respect(record.arrival_key)  # also when its file could not be saved
        if dry_run:
            journal = journal.copy()
        arrivals = self._learn_arrivals(models, journal, now, dry_run, records)
        book = LoadableBook.load(settings.latest_model_path)
        if book.problem:
            self._fail_once(outcome, ("loadable", book.problem), book.path,
                            f"the refusal memory: {book.problem}")
        latest = self._what_latest_holds(models, arrivals, journal, outcome, dry_run, now)
        latest = self._source_keeps_its_place(latest, models, arrivals, journal, outcome,
                                              dry_run)
        if latest.settled:
            attempt = self._publish_newer(models, arrivals, latest, journal, outcome, dry_run,
                                          now, book)
            if isinstance(attempt, ModelFile):  # a dry run: prune as if it were published
                latest = Latest(_as_if_published(attempt, arrivals[attempt.name]))
            elif attempt:
                # Prune against what latest holds after the attempt, not what we tried.
                latest = self._what_latest_holds(models, arrivals, journal, outcome, dry_run,
                                                 now)
        self._prune(models, arrivals, latest, outcome, dry_run, now, book)
        if not dry_run:
            self._save_book(book, models, outcome)
            self._keep_rasa_pick(latest, journal, outcome)
            journal.keep_only({m.name for m in models} | {LATEST_KEY}, now, complete=True)
            try:
                journal.save()
                for name, when in self._bound:
                    if self.pending.get(name) == when:
                        del self.pending[name]
                self._clear_reported("journal")
            except OSError as error:
                self._fail_once(outcome, ("journal", error.errno), journal.path,
                                f"could not save arrival times: {error}")
        return outcome

    # -- when each model arrived ----------------------------------------------------------

    def _learn_arrivals(self, models, journal, now, dry_run, records) -> dict[str, Arrival]:
        present = {m.name: m for m in models}
        self._bound = []
        for name, when in list(self.pending.items()):
            model = present.get(name)
            if model is not None:
                journal.note_event(name, when, _version(model), now)
                self._bound.append((name, when))  # forgotten once the journal has it
            elif name != self._latest_name_here() and not dry_run:
                del self.pending[name]  # gone again: nothing to order
        # The published model's source keeps the arrival its record names, also when the
        # journal was lost: found again by the file-time rule, a source with a future mtime
        # would arrive "now" and overtake every model that arrived after it.
        for model in models:
            record = next((r for r in records if r.is_source(model)), None)
            if record is not None and journal.lookup(model.name, _version(model)) is None:
                journal.assign(model.name, _arrival_of(record), _version(model))
        # Files found in one look are ordered among themselves by their file times.
        for model in sorted(models, key=lambda m: (m.mtime_ns, m.name)):
            journal.note_unseen(model.name, _version(model), now)
        return {m.name: journal.seen_no_later_than(m.name, now) for m in models}

    def _latest_name_here(self) -> str | None:
        latest = self.settings.latest_model_path
        return latest.name if same_folder(self.settings.target_dir, latest.parent) else None

    def _quiet(self, arrival: Arrival, mtime_ns: int, now: float) -> bool:
        """No copy of a file that may still be written: unchanged for THROTTLE_DELAY (by its
        mtime, or since we first saw this version, which also holds for future mtimes), or a
        close_write / moved_to came after its last change."""
        return now >= self._quiet_at(arrival, mtime_ns) or (
            arrival.event_at is not None and mtime_ns / 1e9 <= arrival.event_at)

    def _quiet_at(self, arrival: Arrival, mtime_ns: int) -> float:
        delay = self.settings.throttle_delay_s
        return min(mtime_ns / 1e9 + delay, arrival.seen + delay)

    # -- what latest holds now ------------------------------------------------------------

    def _what_latest_holds(self, models, arrivals, journal, outcome, dry_run, now) -> Latest:
        path = self.settings.latest_model_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.record = None
            return Latest(None)
        event = self.pending.pop(path.name, None) if self._latest_name_here() else None
        if not stat.S_ISREG(st.st_mode):
            identity = ("<latest>", st.st_ino, st.st_mode)
            self._skip_once(outcome, identity, path, "not a regular file; it will be replaced",
                            "broken")
            return Latest(None)
        if self.record is not None and self.record.describes(st):
            if (self._record_unsaved or self._record_file_changed()) and not dry_run:
                # The disk was full, or another program wrote over the record: write ours.
                self._save_record(self.record, outcome)
            self._journal_latest(journal, self.record, st)
            return Latest(self.record)
        stored = read_record(path, self._on_invalid(dry_run))
        if stored is not None and stored.describes(st):
            self.record = stored
            self._record_file = _file_version(record_path(path))
            self._journal_latest(journal, stored, st)
            return Latest(stored)
        # Someone else wrote it (Rasa's --fixed-model-name, a person, the original tool), or
        # our record was lost between the rename and its write: look at the file itself.
        version = version_of(st)
        previous = journal.entries.get(LATEST_KEY)  # what the journal knew latest held
        if event is not None:
            arrival = journal.note_event(LATEST_KEY, event, version, now)
        else:
            arrival = journal.note_unseen(LATEST_KEY, version, now)
        arrival = journal.seen_no_later_than(LATEST_KEY, now)
        identity = ("<latest>", *version)
        result = self._check_latest(identity, path)
        if isinstance(result, Unreadable):
            self._fail_once(outcome, identity, path, f"{result}; left as it is")
            outcome.recheck(now + max(self.settings.throttle_delay_s, RETRY_AFTER_ERROR_S))
            return Latest(None, settled=False)
        if isinstance(result, BrokenArchive):
            settled_at = self._foreign_latest_settled_at(arrival, st.st_mtime_ns, now)
            if settled_at is not None:
                # Another program is writing it in place: never publish over its model.
                outcome.recheck(settled_at)
                self._skip_once(outcome, identity, path,
                                f"{result}; being written by another program, left alone",
                                "changed")
                return Latest(None, settled=False)
            self._skip_once(outcome, identity, path,
                            f"not a whole archive ({result}); it will be replaced", "broken")
            return Latest(None)
        unchanged = self._same_model_touched(stored, result, st, version, journal, outcome,
                                             dry_run)
        if unchanged is not None:
            return Latest(unchanged)
        source = next((m for m in models if m.size == st.st_size
                       and _same_content(m.path, path)), None)
        same_as_before = (source is None and previous is not None and previous.digest is not None
                          and previous.digest == result.digest)
        if source is not None:
            arrival = arrivals[source.name]
        elif same_as_before:
            arrival = previous  # the record was lost, the bytes are the published ones
        record = adopt_record(source, result, st, arrival.at, arrival.seq)
        if not dry_run:
            journal.assign(LATEST_KEY, arrival, version, result.digest)
            self._save_record(record, outcome)
            how = (f"its source is {source.path}" if source else
                   "the model published before" if same_as_before else
                   "written by another program")
            self.log.info("adopted %s as published (%s)", path, how,
                          extra={"event": "adopted", "fields": {"path": str(path)}})
            self.record = record
        return Latest(record)

    def _source_keeps_its_place(self, latest, models, arrivals, journal, outcome,
                                dry_run) -> Latest:
        """The published source's own event was taken in after it was published: it was
        found by a look first (the reader fell behind a stopped rotator), and the event then
        placed it after the models known by then. Latest holds that model, so latest's place
        moves with it: else a model that arrived before it would look newer than latest, be
        published, and latest would then go back to the source."""
        record = latest.record
        source = next((m for m in models if record and record.is_source(m)), None)
        if source is None or arrivals[source.name].key <= record.arrival_key:
            return latest
        arrival = arrivals[source.name]
        record = replace(record, arrived_at=arrival.at, arrival_seq=arrival.seq)
        if not dry_run:
            journal.assign(LATEST_KEY, arrival, (record.latest_inode, record.latest_size,
                                                 record.latest_mtime_ns), record.digest)
            self._save_record(record, outcome)
            self.record = record
        return Latest(record, latest.settled)

    @staticmethod
    def _journal_latest(journal: ArrivalJournal, record: PublishRecord, st) -> None:
        """The journal keeps latest's arrival too (a rebuilt one lacks it): if the record is
        lost later, latest is adopted with the arrival it had, not as news that would make
        the models that arrived after it look older."""
        if journal.lookup(LATEST_KEY, version_of(st)) is None:
            journal.assign(LATEST_KEY, _arrival_of(record), version_of(st), record.digest)

    def _foreign_latest_settled_at(self, arrival: Arrival, mtime_ns: int,
                                   now: float) -> float | None:
        """A latest that another program changed and that is not whole yet is left alone
        until a close_write / moved_to came after its last change, or until it has been
        unchanged for BROKEN_GRACE_PERIOD: a writer streaming into it (Rasa's
        --fixed-model-name) may pause longer than THROTTLE_DELAY. Returns when to look
        again, or None when it may be replaced now."""
        if arrival.event_at is not None and mtime_ns / 1e9 <= arrival.event_at:
            return None
        grace = self.settings.broken_grace_s
        by_mtime = now - mtime_ns / 1e9 if mtime_ns / 1e9 <= now else 0.0
        unchanged = max(by_mtime, now - arrival.seen)
        return None if unchanged >= grace else now + grace - unchanged

    def _same_model_touched(self, stored, result: ArchiveInfo, st, version, journal,
                            outcome, dry_run) -> PublishRecord | None:
        """Latest's mtime (or inode, after a restore) changed but not its bytes: a touch, an
        rsync or a backup restoring times. That is no arrival: latest still holds the model
        the record names, with the arrival it had. Returns the record describing latest now,
        or None when the bytes are not the recorded model's."""
        known = next((r for r in (self.record, stored)
                      if r is not None and r.digest and r.digest == result.digest
                      and r.latest_size == st.st_size), None)
        if known is None:
            return None
        record = known.describing(st)
        if not dry_run:
            journal.assign(LATEST_KEY, _arrival_of(known), version, known.digest)
            self._save_record(record, outcome)
            self.log.info("%s changed its file time, not its content: still the model "
                          "published from %s", self.settings.latest_model_path,
                          known.source or "another program",
                          extra={"event": "latest_touched", "fields": {
                              "path": str(self.settings.latest_model_path)}})
            self.record = record
        return record

    def _record_file_changed(self) -> bool:
        """Someone else wrote the record file since we did (one stat, no read): read it, so
        an invalid one is set aside and reported, and ours is written again."""
        path = record_path(self.settings.latest_model_path)
        if self._record_file is None or _file_version(path) == self._record_file:
            return False
        stored = read_record(self.settings.latest_model_path, self._on_invalid(False))
        if stored == self.record:
            self._record_file = _file_version(path)
            return False
        return True

    def _on_invalid(self, dry_run: bool):
        """What to do with a state file that is not valid: set it aside and rebuild (a dry
        run changes nothing: it only says so)."""
        if dry_run:
            return lambda path, problem: report_invalid(path, problem, self.log)
        return lambda path, problem: set_aside(path, problem, self.log)

    def _save_record(self, record: PublishRecord, outcome: Outcome) -> None:
        """The record is a cache of what latest holds: a failure to write it (a full disk)
        is reported, and the next reconcile finds latest's source by its content."""
        try:
            write_record(self.settings.latest_model_path, record)
            self._record_file = _file_version(record_path(self.settings.latest_model_path))
            self._record_unsaved = False
            self._clear_reported("record")
        except OSError as error:
            self._record_unsaved = True
            outcome.recheck(self.clock() + max(self.settings.throttle_delay_s,
                                               RETRY_AFTER_ERROR_S))
            self._fail_once(outcome, ("record", error.errno), self.settings.latest_model_path,
                            f"published, but its record could not be saved: {error}")

    # -- publish --------------------------------------------------------------------------

    def _publish_newer(self, models, arrivals, latest, journal, outcome, dry_run,
                       now, book: LoadableBook) -> bool | ModelFile:
        """Publish the newest whole, loadable model that arrived after what latest holds
        (or the last model a replica loaded, when latest holds a refused one). Returns
        whether anything was attempted (latest may have changed); in a dry run, the model
        that would be published, if any."""
        settings = self.settings
        record = latest.record
        floor = record.arrival_key if record else None
        newer = [m for m in models if not (record and record.is_source(m))
                 and (floor is None or arrivals[m.name].key > floor)]
        last_loaded = self._return_to_last_loaded(models, record, book, outcome)
        if last_loaded is not None and last_loaded not in newer:
            newer.append(last_loaded)
        attempted = False
        for model in sorted(newer, key=lambda m: (arrivals[m.name].key, m.name), reverse=True):
            arrival = arrivals[model.name]
            # Known broken: not read again. (An unreadable file has no verdict kept: it is
            # tried again, it may be readable now.)
            if isinstance(self._checks.get(model.identity), BrokenArchive):
                continue
            if not self._quiet(arrival, model.mtime_ns, now):
                outcome.recheck(self._quiet_at(arrival, model.mtime_ns))
                continue  # may still be written: never copied (nor warned about) now
            if self._not_loadable(model, book, outcome, dry_run):
                continue
            if dry_run:
                result = self._check(model)
                if isinstance(result, BrokenArchive):
                    self._act(outcome, Action("would-skip", model.path, str(result), "broken"))
                    continue
                self._act(outcome, Action(
                    "would-publish", model.path,
                    f"-> {settings.latest_model_path} ({human_size(model.size)})"))
                return model
            attempted = True
            try:
                published = publish_atomically(model, settings.latest_model_path,
                                               settings.publish_mode)
            except SourceChanged as error:
                self._skip_once(outcome, model.identity, model.path, f"{error}; not published",
                                "changed")
                outcome.recheck(now + settings.throttle_delay_s)
                continue
            except BrokenArchive as error:
                self._checks[model.identity] = error
                self._skip_once(outcome, model.identity, model.path, f"{error}; not published",
                                "broken")
                continue
            except OSError as error:
                # Nothing changed: latest holds what it held, and this model stays (it is
                # newer) until a retry succeeds.
                self._fail_once(outcome, (model.identity, error.errno), model.path,
                                f"could not publish: {error}; kept, retrying")
                outcome.recheck(now + max(settings.throttle_delay_s, RETRY_AFTER_ERROR_S))
                if error.errno in FOLDER_ERRNOS:
                    break
                continue
            self._checks[model.identity] = published.info
            self._record_publish(model, arrival, published, journal, outcome)
            return True
        return attempted

    # -- loadable, not just whole ----------------------------------------------------------

    def _not_loadable(self, model: ModelFile, book: LoadableBook, outcome: Outcome,
                      dry_run: bool) -> bool:
        """A model a replica failed to load (this very file version), or one trained by a
        Rasa below the minimum the servers accept, is not published: kept, reported once."""
        refusal = book.refusal(model.name, model.inode, model.size, model.mtime_ns)
        if refusal is not None and refusal.reason != VERSION:
            self._skip_once(outcome, model.identity, model.path,
                            f"a replica could not load it ({refusal.by}: {refusal.detail}); "
                            "kept, not published again until the file changes", "refused")
            return True
        result = self._check(model) if self.minimum_version else None
        if isinstance(result, ArchiveInfo) and below_minimum(result.rasa_version,
                                                             self.minimum_version):
            detail = (f"trained by Rasa {result.rasa_version or '(no version)'}, below the "
                      f"minimum {self.minimum_version} ({self.minimum_source}); kept, not "
                      "published")
            self._skip_once(outcome, model.identity, model.path, detail, VERSION)
            if refusal is None and not dry_run:
                book.refuse(FileMark(model.name, model.inode, model.size, model.mtime_ns,
                                     at=self.clock(), model_id=result.model_id,
                                     reason=VERSION, detail=detail, by=self.minimum_source))
            return True
        if refusal is not None and not dry_run:
            book.clear(model.name)  # the minimum moved: no longer below it
        return False

    def _return_to_last_loaded(self, models, record, book: LoadableBook,
                               outcome: Outcome) -> ModelFile | None:
        """Latest holds a model a replica refused: the last model a replica loaded (kept for
        this) is a candidate again, so a Rasa restart finds a model it can load."""
        refusal = None if record is None else book.refusal(
            record.source, record.source_inode, record.source_size, record.source_mtime_ns)
        if refusal is None or refusal.reason == VERSION:
            return None
        source = next((m for m in models if record.is_source(m)), None)
        if source is not None:
            self._skip_once(outcome, source.identity, source.path,
                            f"a replica could not load it ({refusal.by}: {refusal.detail}); "
                            "kept, not published again until the file changes", "refused")
        if book.loaded is None:
            return None
        return next((m for m in models
                     if book.is_loaded(m.name, m.inode, m.size, m.mtime_ns)), None)

    def _save_book(self, book: LoadableBook, models, outcome: Outcome) -> None:
        book.keep_only({m.name: (m.inode, m.size, m.mtime_ns) for m in models})
        if not book.changed:
            return
        try:
            book.save()
        except OSError as error:
            self._fail_once(outcome, ("loadable", error.errno), book.path,
                            f"could not save the refusal memory: {error}")

    def _record_publish(self, model, arrival, published, journal, outcome) -> None:
        settings = self.settings
        latest = published.latest_stat
        record = PublishRecord(
            source=model.name, source_size=model.size, source_mtime_ns=model.mtime_ns,
            source_inode=model.inode, arrived_at=arrival.at, arrival_seq=arrival.seq,
            published_at=published.started, latest_size=latest.st_size,
            latest_mtime_ns=latest.st_mtime_ns, latest_inode=latest.st_ino,
            duration_s=published.duration_s, model_id=published.info.model_id,
            trained_at=published.info.trained_at, digest=published.info.digest)
        self.record = record  # known in memory whatever happens to the record file
        journal.assign(LATEST_KEY, arrival, version_of(latest), published.info.digest)
        self._save_record(record, outcome)
        model_id = f", model_id {record.model_id}" if record.model_id else ""
        warning = f"; {published.warning}" if published.warning else ""
        self._act(outcome, Action(
            "published", model.path,
            f"-> {settings.latest_model_path} ({human_size(model.size)} "
            f"{'moved' if settings.publish_mode == 'move' else 'copied'} "
            f"in {published.duration_s * 1000:.0f} ms{model_id}){warning}"))

    # -- prune ----------------------------------------------------------------------------

    def _prune(self, models, arrivals, latest, outcome, dry_run, now,
               book: LoadableBook | None = None) -> None:
        """Delete only whole models that arrived before the model latest holds now (beyond
        KEEP_PREVIOUS, and never the last model a replica loaded), and broken files
        unchanged for BROKEN_GRACE_PERIOD."""
        if not latest.settled:
            return  # another program is writing latest: decide nothing against it
        settings = self.settings
        record = latest.record
        floor = record.arrival_key if record else None
        others = [m for m in models if not (record and record.is_source(m))]
        kept = 0
        for model in sorted(others, key=lambda m: (arrivals[m.name].key, m.name), reverse=True):
            arrival = arrivals[model.name]
            if not self._quiet(arrival, model.mtime_ns, now):
                outcome.recheck(self._quiet_at(arrival, model.mtime_ns))
                continue
            result = self._check(model)
            if isinstance(result, Unreadable):
                self._fail_once(outcome, (model.identity, "unreadable"), model.path,
                                f"{result}; kept")
                outcome.recheck(now + max(settings.throttle_delay_s, RETRY_AFTER_ERROR_S))
                continue
            if isinstance(result, BrokenArchive):
                unchanged = _unchanged_for(arrival, model, now)
                if unchanged < settings.broken_grace_s:
                    outcome.recheck(now + settings.broken_grace_s - unchanged)
                    self._skip_once(outcome, model.identity, model.path,
                                    f"{result}; kept until unchanged for "
                                    f"{settings.broken_grace_s:.0f} s (BROKEN_GRACE_PERIOD)",
                                    "broken")
                    continue
                self._delete(model, f"broken archive unchanged for {unchanged:.0f} s ({result})",
                             "broken-expired", outcome, dry_run)
                continue
            if floor is None or arrival.key > floor:
                continue  # arrived after what latest holds (or nothing is published): kept
            if self._awaiting_event(arrival, now):
                outcome.recheck(arrival.seen + self._event_grace_s())
                continue  # found by a look, its event not in yet: it may be the newest
            if book is not None and book.is_loaded(model.name, model.inode, model.size,
                                                   model.mtime_ns):
                continue  # the last model a replica loaded: latest returns to it if refused
            if kept < settings.keep_previous:
                kept += 1
                continue
            self._delete(model, "older than the published model", "older", outcome, dry_run)

    def _event_grace_s(self) -> float:
        return max(self.settings.throttle_delay_s, EVENT_GRACE_S)

    def _awaiting_event(self, arrival: Arrival, now: float) -> bool:
        return (arrival.found_late and arrival.event_at is None
                and now < arrival.seen + self._event_grace_s())

    def _delete(self, model: ModelFile, reason: str, label: str, outcome: Outcome,
                dry_run: bool) -> None:
        if dry_run:
            self._act(outcome, Action("would-delete", model.path, reason, label))
            return
        try:
            current = os.lstat(model.path)
        except FileNotFoundError:
            return
        if ModelFile.from_stat(model.path, current).identity != model.identity:
            return  # changed since it was checked: the next reconcile decides again
        try:
            model.path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            self._fail_once(outcome, (model.identity, error.errno), model.path,
                            f"could not delete: {error}")
            return
        self._checks.pop(model.identity, None)
        self._act(outcome, Action("deleted", model.path, reason, label))

    # -- Rasa's restart pick --------------------------------------------------------------

    def _keep_rasa_pick(self, latest: Latest, journal: ArrivalJournal, outcome) -> None:
        """`rasa run --model <TARGET_DIR>` loads the newest mtime among *.tar.gz: keep it
        latest's, with the record still describing latest (same inode, new mtime)."""
        record = self.record
        if not latest.settled or record is None:
            return
        try:
            changed = keep_latest_newest(self.settings.target_dir,
                                         self.settings.latest_model_path, record)
        except OSError as error:
            self._fail_once(outcome, ("rasa-pick", error.errno), self.settings.latest_model_path,
                            f"could not keep it the newest file for a Rasa restart: {error}")
            return
        if changed is None:
            return
        self.record = record.describing(changed)
        journal.assign(LATEST_KEY, journal.entries.get(LATEST_KEY) or _arrival_of(record),
                       version_of(changed), record.digest)
        self._save_record(self.record, outcome)

    # -- helpers --------------------------------------------------------------------------

    def _check(self, model: ModelFile) -> ArchiveInfo | BrokenArchive:
        return self._check_identity(model.identity, model.path)

    def _check_identity(self, identity: tuple, path: Path) -> ArchiveInfo | BrokenArchive:
        if identity not in self._checks:
            try:
                self._checks[identity] = check_archive(path)
            except BrokenArchive as error:
                self._checks[identity] = error
            except OSError as error:  # no verdict kept: it may be readable at the next look
                return Unreadable(f"cannot be read: {error.strerror or error}")
        return self._checks[identity]

    def _check_latest(self, identity: tuple, path: Path) -> ArchiveInfo | BrokenArchive:
        """The verdict on the version latest holds now; the verdicts on the versions it held
        before are forgotten (another program that writes latest again and again, Rasa's
        --fixed-model-name, would otherwise leave one per version for ever)."""
        for known in [i for i in self._checks if i[0] == "<latest>" and i != identity]:
            del self._checks[known]
        return self._check_identity(identity, path)

    def _forget_missing(self, models: list[ModelFile]) -> None:
        """Forget the verdicts on models no longer listed (latest's are replaced when latest
        is checked: _check_latest)."""
        identities = {m.identity for m in models}
        for identity in [i for i in self._checks if i[0] != "<latest>" and i not in identities]:
            del self._checks[identity]
        self._reported = {r for r in self._reported if _still_relevant(r[0], identities)}

    def _clear_reported(self, tag: str) -> None:
        """A folder-wide failure is over: report the next one again."""
        self._reported = {r for r in self._reported if r[0][:1] != (tag,)}

    def _skip_once(self, outcome: Outcome, identity: tuple, path: Path, detail: str,
                   reason: str) -> None:
        """Log a skip once per file version and reason, not at every reconcile."""
        if (identity, reason) in self._reported:
            return
        self._reported.add((identity, reason))
        self._act(outcome, Action("skipped", path, detail, reason), logging.WARNING)

    def _fail_once(self, outcome: Outcome, identity: tuple, path: Path, detail: str) -> None:
        """An error, logged once per file version and cause (a retry every few seconds
        would flood the log); it is retried all the same. The random temporary name in an
        error (a folder where the record must go) is no new cause."""
        cause = (identity, without_temporary_names(detail))
        if cause in self._reported:
            return
        self._reported.add(cause)
        self._act(outcome, Action("failed", path, detail, "io-error"), logging.ERROR)

    def _act(self, outcome: Outcome, action: Action, level: int = logging.INFO) -> None:
        outcome.actions.append(action)
        self.log.log(level, "%s", action, extra={"event": action.kind, "fields": {
            "path": str(action.path), "detail": action.detail, "reason": action.reason}})


def _file_version(path: Path) -> tuple | None:
    try:
        return version_of(os.lstat(path))
    except OSError:
        return None


def _version(model: ModelFile) -> tuple[int, int, int]:
    return (model.inode, model.size, model.mtime_ns)


def _as_if_published(model: ModelFile, arrival: Arrival) -> PublishRecord:
    return PublishRecord(
        source=model.name, source_size=model.size, source_mtime_ns=model.mtime_ns,
        source_inode=model.inode, arrived_at=arrival.at, arrival_seq=arrival.seq,
        published_at=arrival.seen, latest_size=-1, latest_mtime_ns=-1, latest_inode=-1,
        duration_s=0.0)


def _arrival_of(record: PublishRecord) -> Arrival:
    return Arrival(at=record.arrived_at, seq=record.arrival_seq, seen=record.published_at,
                   ino=record.latest_inode, size=record.latest_size,
                   mtime_ns=record.latest_mtime_ns)


def _same_content(first: Path, second: Path) -> bool:
    try:
        return same_content(first, second)
    except OSError:
        return False


def _unchanged_for(arrival: Arrival, model: ModelFile, now: float) -> float:
    """How long this version has been unchanged: by its mtime, or (for an mtime ahead of
    this host's clock) since we first saw it."""
    by_mtime = now - model.mtime if model.mtime <= now else 0.0
    return max(by_mtime, now - arrival.seen)


def _still_relevant(key: tuple, identities: set) -> bool:
    """A reported (key, detail) is kept while the file version it is about is there."""
    model_identity = key[0] if key and isinstance(key[0], tuple) else key
    if len(model_identity) == 4 and model_identity[0] != "<latest>":
        return model_identity in identities
    return True
