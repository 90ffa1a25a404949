"""Bring the folder in line with the rules, once: publish the newest whole model, prune safely.

Which model is latest: the most recent arrival. A file whose close_write / moved_to this
process saw arrived then; any other file arrived at its mtime (content time: ctime is
rewritten by chown/chmod, e.g. Kubernetes fsGroup). A model replaces the published one only
if it arrived after that publish began, so a rollback stays published across restarts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from worker.archive import ArchiveInfo, BrokenArchive, SourceChanged, check_archive
from worker.folder import (
    ModelFile,
    PublishRecord,
    adopt_record,
    folder_lock,
    list_models,
    publish_atomically,
    read_record,
    same_content,
    stat_or_none,
    write_record,
)
from worker.logs import human_size
from worker.settings import Settings

# After a failed publish (disk full, permissions) try again this long after, at the latest.
RETRY_AFTER_ERROR_S = 5.0


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


class Reconciler:
    """Holds what one rotator process has learned: arrival times and archive checks."""

    def __init__(self, settings: Settings, log: logging.Logger | None = None, clock=time.time):
        self.settings = settings
        self.log = log or logging.getLogger("rotator.reconcile")
        self.clock = clock
        # name -> (wall time, receipt order): events read in one batch share a time, and
        # the kernel's order among them says which came last.
        self.arrivals: dict[str, tuple[float, int]] = {}
        self._received = 0
        self.record: PublishRecord | None = None
        self._checks: dict[tuple, ArchiveInfo | BrokenArchive] = {}
        self._reported: set[tuple] = set()

    def note_arrival(self, name: str, when: float) -> None:
        """A close_write or moved_to for `name` was seen at wall-clock time `when`."""
        self._received += 1
        self.arrivals[name] = (when, self._received)

    def arrival(self, model: ModelFile) -> float:
        """When the model arrived: its event's time, else its mtime."""
        return self.arrivals.get(model.name, (model.mtime, 0))[0]

    def arrival_order(self, model: ModelFile) -> tuple:
        """Sort key, latest arrival last: time, then receipt order, then name."""
        when, received = self.arrivals.get(model.name, (model.mtime, 0))
        return when, received, model.name

    def reconcile(self, dry_run: bool = False) -> Outcome:
        if dry_run:
            return self._reconcile(dry_run=True)
        with folder_lock(self.settings.latest_model_path):
            return self._reconcile(dry_run=False)

    def _reconcile(self, dry_run: bool) -> Outcome:
        settings = self.settings
        outcome = Outcome()
        now = self.clock()
        models = list_models(settings.target_dir, settings.model_pattern,
                             settings.latest_model_path, settings.ignore_paths)
        self._forget_missing(models)
        record = self._current_record(models, outcome, dry_run)
        published = self._publish_newest(models, record, outcome, dry_run, now)
        self._prune(models, published, outcome, dry_run, now)
        return outcome

    # -- what is published now ------------------------------------------------------------

    def _current_record(self, models, outcome, dry_run) -> PublishRecord | None:
        latest = self.settings.latest_model_path
        latest_stat = stat_or_none(latest)
        if latest_stat is None:
            self.record = None
            return None
        if self.record is not None and self.record.describes(latest_stat):
            return self.record
        stored = read_record(latest)
        if stored is not None and stored.describes(latest_stat):
            self.record = stored
            return stored
        # Published by someone else (the original tool, a person) or the record was lost
        # between rename and write: check it once and find its source by content.
        identity = ("<latest>", latest_stat.st_ino, latest_stat.st_size, latest_stat.st_mtime_ns)
        result = self._check_identity(identity, latest)
        if isinstance(result, BrokenArchive):
            self._skip_once(outcome, identity, latest,
                            f"not a whole archive ({result}); it will be replaced", "broken")
            return None
        source = next((m for m in models if m.size == latest_stat.st_size
                       and same_content(m.path, latest)), None)
        record = adopt_record(latest, source, result, latest_stat)
        if not dry_run:
            write_record(latest, record)
            self.record = record
        return record

    # -- publish --------------------------------------------------------------------------

    def _publish_newest(self, models, record, outcome, dry_run, now) -> ModelFile | None:
        """Publish the newest whole arrival since the last publish; return the source of
        what is (or, in a dry run, would be) published, if it is in the folder."""
        floor = record.published_at if record else float("-inf")
        current = next((m for m in models if record and record.is_source(m)), None)
        newer = [m for m in models
                 if self.arrival(m) > floor and not (record and record.is_source(m))]
        for model in sorted(newer, key=self.arrival_order, reverse=True):
            known = self._checks.get(model.identity)
            if isinstance(known, BrokenArchive):
                continue
            if dry_run:
                result = self._check(model)
                if isinstance(result, BrokenArchive):
                    self._act(outcome, Action("would-skip", model.path, str(result), "broken"))
                    continue
                self._act(outcome, Action(
                    "would-publish", model.path,
                    f"-> {self.settings.latest_model_path} ({human_size(model.size)})"))
                return model
            try:
                published = publish_atomically(model, self.settings.latest_model_path,
                                               self.arrival(model), self.settings.publish_mode)
            except SourceChanged as error:
                # Being rewritten (e.g. Rasa's --fixed-model-name): its close_write will come.
                self._skip_once(outcome, model.identity, model.path, f"{error}; not published",
                                "changed")
                outcome.recheck(now + self.settings.throttle_delay_s)
                continue
            except BrokenArchive as error:
                self._checks[model.identity] = error
                self._skip_once(outcome, model.identity, model.path, f"{error}; not published",
                                "broken")
                continue
            except OSError as error:
                self._act(outcome, Action("failed", model.path, f"could not publish: {error}",
                                          "io-error"), logging.ERROR)
                outcome.recheck(now + max(self.settings.throttle_delay_s, RETRY_AFTER_ERROR_S))
                return current
            self._checks[model.identity] = ArchiveInfo(size=model.size,
                                                       model_id=published.model_id,
                                                       trained_at=published.trained_at)
            self.record = published
            model_id = f", model_id {published.model_id}" if published.model_id else ""
            self._act(outcome, Action(
                "published", model.path,
                f"-> {self.settings.latest_model_path} ({human_size(model.size)} "
                f"{'moved' if self.settings.publish_mode == 'move' else 'copied'} "
                f"in {published.duration_s * 1000:.0f} ms{model_id})"))
            return model
        return current

    # -- prune ----------------------------------------------------------------------------

    def _prune(self, models, published, outcome, dry_run, now) -> None:
        settings = self.settings
        others = [m for m in models if published is None or m.identity != published.identity]
        kept = 0
        for model in sorted(others, key=self.arrival_order, reverse=True):
            age = now - model.mtime
            if age < settings.throttle_delay_s:
                # May still be written: a slow training, or a copy in progress.
                outcome.recheck(model.mtime + settings.throttle_delay_s)
                continue
            result = self._check(model)
            if isinstance(result, BrokenArchive):
                if age < settings.broken_grace_s:
                    outcome.recheck(model.mtime + settings.broken_grace_s)
                    self._skip_once(outcome, model.identity, model.path,
                                    f"{result}; kept until unchanged for "
                                    f"{settings.broken_grace_s:.0f} s (BROKEN_GRACE_PERIOD)",
                                    "broken")
                    continue
                reason = f"broken archive unchanged for {age:.0f} s ({result})"
                label = "broken-expired"
            elif kept < settings.keep_previous:
                kept += 1
                continue
            else:
                reason = "older than the published model"
                label = "older"
            self._delete(model, reason, label, outcome, dry_run)

    def _delete(self, model: ModelFile, reason: str, label: str, outcome: Outcome,
                dry_run: bool) -> None:
        if dry_run:
            self._act(outcome, Action("would-delete", model.path, reason, label))
            return
        current = stat_or_none(model.path)
        if current is None or ModelFile.from_stat(model.path, current).identity != model.identity:
            return  # changed since it was checked: the next reconcile decides again
        try:
            model.path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            self._act(outcome, Action("failed", model.path, f"could not delete: {error}",
                                      "io-error"), logging.ERROR)
            return
        self.arrivals.pop(model.name, None)
        self._checks.pop(model.identity, None)
        self._act(outcome, Action("deleted", model.path, reason, label))

    # -- helpers --------------------------------------------------------------------------

    def _check(self, model: ModelFile) -> ArchiveInfo | BrokenArchive:
        return self._check_identity(model.identity, model.path)

    def _check_identity(self, identity: tuple, path: Path) -> ArchiveInfo | BrokenArchive:
        if identity not in self._checks:
            try:
                self._checks[identity] = check_archive(path)
            except BrokenArchive as error:
                self._checks[identity] = error
            except OSError as error:
                return BrokenArchive(f"cannot be read: {error.strerror or error}")
        return self._checks[identity]

    def _forget_missing(self, models: list[ModelFile]) -> None:
        present = {m.name for m in models}
        identities = {m.identity for m in models}
        for name in [n for n in self.arrivals if n not in present]:
            del self.arrivals[name]
        for identity in [i for i in self._checks if i[0] != "<latest>" and i not in identities]:
            del self._checks[identity]
        self._reported = {r for r in self._reported
                          if r[0] in identities or r[0][0] == "<latest>"}

    def _skip_once(self, outcome: Outcome, identity: tuple, path: Path, detail: str,
                   reason: str) -> None:
        """Log a skip once per file version, not at every reconcile."""
        action = Action("skipped", path, detail, reason)
        if (identity, detail) in self._reported:
            return
        self._reported.add((identity, detail))
        self._act(outcome, action, logging.WARNING)

    def _act(self, outcome: Outcome, action: Action, level: int = logging.INFO) -> None:
        outcome.actions.append(action)
        self.log.log(level, "%s", action, extra={"event": action.kind, "fields": {
            "path": str(action.path), "detail": action.detail, "reason": action.reason}})

