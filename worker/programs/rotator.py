"""The rotator: serves the event queue, debounces, and reconciles the folder."""

from __future__ import annotations

import logging
import queue
import time

from worker.folder.files import folder_lock, remove_temporary_files
from worker.folder.reconcile import Reconciler
from worker.programs.channel import ARRIVED, RESCAN, QueueServer, malformed
from worker.programs.debounce import Debounce
from worker.settings import Settings
from worker.surface.liveness import LivenessMarks
from worker.surface.metrics import start_metrics

# After a reconcile failed (folder gone, disk full, permissions), try again this soon.
RETRY_AFTER_FAILURE_S = 5.0
# A timer found this late ran out while the process was stopped (SIGSTOP, a cgroup freeze,
# `docker pause`, a debugger): the reader has gone on seeing arrivals meanwhile, and what it
# journals and sends takes a moment to come in. Wait for it (THROTTLE_DELAY, at least
# LATE_WAIT_S) before deciding anything.
LATE_TIMER_S = 1.0
LATE_WAIT_S = 1.0


class Rotator:
    def __init__(self, settings: Settings, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.reconciler = Reconciler(settings, log)
        self.metrics = self._metrics()
        self.notifier = self._notifier()
        self.remote = self._remote()
        self.debounce = Debounce(settings.throttle_delay_s, settings.debounce_cap_s)
        self.recheck_at: float | None = None  # monotonic
        self.rescan_at: float | None = None  # monotonic; None: periodic rescan off
        self.server: QueueServer | None = None
        # What `status` judges progress by: written at start and around each reconcile only.
        self.marks = LivenessMarks(settings.run_dir)

    def _metrics(self):
        return start_metrics(self.settings, self.log)

    def _notifier(self):
        if not self.settings.rasa_urls:
            return None
        from worker.rasa.state import ReplicaBook
        from worker.rasa.sync import RasaSync, display_url

        s = self.settings
        book = ReplicaBook(s.run_dir, [display_url(url) for url in s.rasa_urls])

        def report(update) -> None:
            call = update.extra.get("call")
            if call is not None:
                self.metrics.rasa_call(call)
            self.metrics.rasa_replica(update)
            book.record(update)

        from worker.rasa.canary import Canary

        return RasaSync(s.rasa_urls, s.rasa_model_path, s.rasa_token, s.rasa_retry_for_s,
                        s.rasa_timeout_s, self.log, report,
                        sync_interval_s=s.rasa_sync_interval_s,
                        max_swapping=s.rasa_max_swapping,
                        training_wait_s=s.rasa_training_wait_s,
                        canary=Canary(self._replica_loaded, self._replica_refused),
                        smoke_text=s.rasa_smoke_text,
                        remote_storage=s.remote_storage)

    # -- called from the replicas' threads --------------------------------------------------

    def _replica_loaded(self, desired, url: str) -> None:
        """A replica serves the published model: it is the one latest returns to, if ever."""
        from worker.folder.loadable import record_loaded

        if desired.source is not None:
            try:
                record_loaded(self.settings.latest_model_path, desired.source, url)
            except OSError as error:
                self.log.error("could not record the model %s loaded: %s", url, error)

    def _replica_refused(self, desired, url: str, detail: str) -> None:
        """The canary could not load the published model: remember it (not published again
        until its file changes), and reconcile now, which publishes the last loaded model."""
        from worker.folder.loadable import record_refusal

        source = desired.source
        name = source.source if source is not None else "(unknown source)"
        self.log.error("model %s (model_id %s) refused by %s: %s; rollout stopped, latest "
                       "returns to the last model a replica loaded", name,
                       desired.model_id or "(none)", url, detail,
                       extra={"event": "model_refused", "fields": {
                           "source": name, "model_id": desired.model_id, "url": url,
                           "detail": detail}})
        if source is None:
            return
        try:
            record_refusal(self.settings.latest_model_path, source, url, detail)
        except OSError as error:
            self.log.error("could not record the refusal of %s: %s", name, error)
        if self.server is not None:
            self.server.queue.put((RESCAN, f"a replica refused {name}"))

    def _remote(self):
        """REMOTE_STORAGE: the bucket's thread (boto3 is imported only then). The replicas
        are then told about a model once the bucket holds it, by its immutable key."""
        from worker.remote.state import remove_remote_state

        if not self.settings.remote_storage:
            remove_remote_state(self.settings.run_dir)
            return None
        from worker.remote.storage import RemoteSync

        def in_place(model_id, version_key, changed) -> None:
            if self.notifier is not None:
                # The record, when it still describes that model: the canary records what
                # a replica loaded or refused by it (worker/folder/loadable.py).
                record = self.reconciler.record
                source = record if record is not None and record.model_id == model_id \
                    else None
                self.notifier.want(model_id, changed, model_file=version_key, source=source)

        return RemoteSync(self.settings, self.log, in_place, report=self.metrics.remote)

    def describe(self) -> str:
        """The effective settings, one line, for the start-up log (never the token)."""
        s = self.settings
        rasa = "off"
        if s.rasa_urls:
            from worker.rasa.sync import display_url

            rasa = ", ".join(display_url(url) for url in s.rasa_urls)
        return (f"publishing the newest whole model in {s.target_dir} to "
                f"{s.latest_model_path} (PUBLISH_MODE {s.publish_mode}, THROTTLE_DELAY "
                f"{s.throttle_delay_s * 1000:.0f} ms, KEEP_PREVIOUS {s.keep_previous}, "
                f"RESCAN_INTERVAL {s.rescan_interval_s:.0f} s, RASA_URL {rasa}, "
                f"REMOTE_STORAGE {self._describe_remote()})")

    def _describe_remote(self) -> str:
        s = self.settings
        if not s.remote_storage:
            return "off"
        return (f"{s.remote_storage} s3://{s.bucket_name}/{s.remote_model_key} at "
                f"{s.aws_endpoint_url or 'AWS'}")

    def run(self) -> None:
        self.marks.starting()
        self.log.info("%s", self.describe())
        with folder_lock(self.settings.latest_model_path):
            for leftover in remove_temporary_files(self.settings.latest_model_path):
                self.log.info("removed %s: temporary file of an interrupted publish", leftover)
        self.server = QueueServer(self.settings.run_dir)
        try:
            if self.notifier is not None:
                # The version gate's minimum before the first publish, not after it.
                self.notifier.probe_versions()
            # Whatever happened while nobody watched: converge now, not after an event.
            self.reconcile()
            while True:
                self.wait_and_receive()
                now = time.monotonic()
                timers = (self.recheck_at, self.rescan_at)
                if self.debounce.due(now) or any(t is not None and now >= t for t in timers):
                    if self.woke_late(now):
                        continue
                    self.take_in_queued()  # whatever woke us: everything sent, then decide
                    self.reconcile()
        finally:
            self.server.close()

    def wait_and_receive(self) -> None:
        deadlines = [d for d in (self.debounce.deadline, self.recheck_at, self.rescan_at)
                     if d is not None]
        # No deadline: block without waking up until the reader has news.
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        try:
            message = self.server.queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self.receive(message)
            try:
                message = self.server.queue.get_nowait()
            except queue.Empty:
                return

    def woke_late(self, now: float) -> bool:
        """True (and the decision postponed) when the earliest deadline passed long ago: we
        were stopped, and the news of the stop is still on its way."""
        deadlines = [d for d in (self.debounce.deadline, self.recheck_at, self.rescan_at)
                     if d is not None]
        if not deadlines or now - min(deadlines) < LATE_TIMER_S:
            return False
        wait = max(self.settings.throttle_delay_s, LATE_WAIT_S)
        self.log.info("woke %.1f s after a timer ran out (the process was stopped): waiting "
                      "%.1f s for the news of meanwhile", now - min(deadlines), wait)
        # One timer, at the end of the wait; news coming in meanwhile debounces as usual.
        self.debounce.clear()
        self.rescan_at = None  # set again by the reconcile
        self.recheck_at = now + wait
        return True

    def take_in_queued(self) -> None:
        while True:
            try:
                message = self.server.queue.get_nowait()
            except queue.Empty:
                return
            self.receive(message)

    def receive(self, message) -> None:
        """One message from the queue. Anyone holding the key can put anything there: a
        message of the wrong shape is logged in one line and dropped, never a crash."""
        problem = malformed(message)
        if problem:
            self.log.warning("dropped a message from the queue: %s", problem,
                             extra={"event": "message_dropped", "fields": {"problem": problem}})
            return
        kind, payload = message
        if kind == ARRIVED:
            for name, when in payload:
                self.reconciler.note_arrival(name, when)
            self.metrics.events(len(payload))
            self.log.debug("arrived: %s", ", ".join(name for name, _ in payload[:10]))
        elif kind == RESCAN:
            self.log.info("rescan requested: %s", payload)
            self.metrics.rescan()
        self.debounce.touch(time.monotonic())

    def reconcile(self) -> None:
        self.debounce.clear()
        self.marks.reconcile_begins(self.settings.target_dir)
        try:
            self._reconcile()
        finally:
            self.marks.reconcile_ends()

    def _reconcile(self) -> None:
        try:
            # Created if missing, also when removed while we run.
            self.settings.target_dir.mkdir(parents=True, exist_ok=True)
            self.settings.latest_model_path.parent.mkdir(parents=True, exist_ok=True)
            self._gate_minimum()
            outcome = self.reconciler.reconcile()
        except OSError as error:
            # Crashing would only restart us into the same error until supervisord gives up
            # (and the guard stops the container): report it and try again.
            retry = max(self.settings.throttle_delay_s, RETRY_AFTER_FAILURE_S)
            self.log.error("reconcile failed: %s; trying again in %.0f s", error, retry,
                           extra={"event": "reconcile_failed", "fields": {"error": str(error)}})
            self.recheck_at = time.monotonic() + retry
            return
        self.metrics.reconciled(outcome, self.reconciler.record)
        record = self.reconciler.record
        if self.remote is not None:
            # The bucket first; the replicas hear of the model once it holds it.
            self.remote.want(record, outcome.published)
            if record is None and self.notifier is not None:
                self.notifier.want(None, outcome.published, exists=False)
        elif self.notifier is not None:
            # Level-triggered: the replicas compare what they serve with this record (at
            # start too); a publish makes them look at once.
            self.notifier.want(record.model_id if record else None, outcome.published,
                               exists=record is not None, source=record)
        # inotify sees nothing written from another host on a network file system, nor
        # under a file system mounted over the folder: look again now and then.
        interval = self.settings.rescan_interval_s
        self.rescan_at = time.monotonic() + interval if interval else None
        if outcome.recheck_at is None:
            self.recheck_at = None
        else:
            self.recheck_at = time.monotonic() + max(0.0, outcome.recheck_at - time.time())

    def _gate_minimum(self) -> None:
        """The version gate: the higher of RASA_MIN_MODEL_VERSION and the replicas' own
        minimum (GET /version); with neither, no gate (a refusal is then caught by the
        canary)."""
        from worker.folder.loadable import highest_version

        configured = self.settings.rasa_min_model_version or None
        fleet = self.notifier.minimum_version() if self.notifier is not None else None
        minimum = highest_version([v for v in (configured, fleet) if v])
        self.reconciler.minimum_version = minimum
        self.reconciler.minimum_source = ("the Rasa servers' GET /version" if fleet and minimum
                                          == fleet else "RASA_MIN_MODEL_VERSION")


def run_rotator(settings: Settings, log: logging.Logger) -> None:
    Rotator(settings, log).run()
