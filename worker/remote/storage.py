"""Keep the bucket on the published model, like a level-triggered controller (REMOTE_STORAGE).

Desired state: the file at LATEST_MODEL_PATH (its SHA-256, size and model_id). Actual state:
our metadata on REMOTE_MODEL_KEY in the bucket. One thread compares the two at start, after
every publish and every RASA_SYNC_INTERVAL seconds, and uploads only when they differ: a
restart re-uploads nothing that is already there.

Each model goes first to an immutable key, `<key without .tar.gz>.versions/<sha256>.tar.gz`
(multipart when large, every part with a SHA-256 checksum S3 verifies), then REMOTE_MODEL_KEY
becomes a server-side copy of it. Both are single S3 writes that become visible whole, so a
reader of either key gets the old model or the new one, never part of one. Older immutable
keys are pruned like the folder (KEEP_PREVIOUS); the published one never is. Rasa replicas
(RASA_URL) are then swapped to the immutable key: each loads exactly that version, even if
REMOTE_MODEL_KEY moves meanwhile.

The rotator's thread only hands over the publish record: publishing in the folder never waits
for the bucket, and a newer publish cancels an upload in flight (its multipart upload is
aborted). Faults (endpoint down or hanging, 403, no bucket, quota) are one line each, naming
bucket and key and never a credential, retried with backoff, and shown in `status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from worker.rasa.client import Secrets
from worker.remote.s3 import (
    MAX_COPY_BYTES,
    META_MODEL_ID,
    META_PUBLISHED_AT,
    META_SHA256,
    Bucket,
    Cancelled,
    StoredObject,
    credentials_in_environment,
    describe_failure,
)
from worker.remote.state import write_remote_state
from worker.text import printable

VERSIONS_SUFFIX = ".versions/"


@dataclass(frozen=True)
class RemoteTiming:
    """Waits and timeouts. Tests make these short."""

    backoff_first_s: float = 1.0  # first wait after a failure; doubles, with jitter
    backoff_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # a hanging endpoint is given up after this long
    attempts: int = 3  # botocore's own tries of one call (its "standard" retry mode)


@dataclass(frozen=True)
class Wanted:
    """The publish record as the bucket should hold it. `generation` grows per publish."""

    record: object  # worker.folder.files.PublishRecord
    generation: int


def versions_prefix(fixed_key: str) -> str:
    return fixed_key[:-len(".tar.gz")] + VERSIONS_SUFFIX


def version_key(fixed_key: str, sha256: str) -> str:
    """The immutable key of one model: its content names it, so the same model is never
    uploaded twice and a name never holds two models."""
    return f"{versions_prefix(fixed_key)}{sha256}.tar.gz"


def prunable_versions(versions: list[StoredObject], published_key: str,
                      keep_previous: int) -> list[str]:
    """Immutable keys to delete: all but the published one and the `keep_previous` most
    recently published others."""
    others = sorted((v for v in versions if v.key != published_key),
                    key=lambda v: v.age_key, reverse=True)
    return [v.key for v in others[keep_previous:]]


class _Superseded(Exception):
    """A newer publish arrived: start over with it."""


class _NotYet(Exception):
    """The published file is not the one the record describes (yet)."""


NOT_YET_WAIT_S = 1.0


class RemoteSync(threading.Thread):
    """Brings the bucket to the published model; never dies (every error is logged)."""

    def __init__(self, settings, log: logging.Logger, in_place, report=None,
                 timing: RemoteTiming = RemoteTiming()):
        super().__init__(name="remote storage", daemon=True)
        self.latest = Path(settings.latest_model_path)
        self.key = settings.remote_model_key
        self.endpoint = settings.aws_endpoint_url
        self.keep_previous = settings.keep_previous
        self.sync_interval_s = settings.rasa_sync_interval_s
        self.run_dir = Path(settings.run_dir)
        self.log = log
        self.in_place = in_place  # (model_id, version key, changed) after each good check
        self.report = report  # (state dict) -> None, for the metrics
        self.timing = timing
        self.secrets = Secrets(*credentials_in_environment())
        self.bucket_name = settings.bucket_name
        self.bucket: Bucket | None = None  # made in the thread: its errors are reported there
        self.where = f"s3://{settings.bucket_name}/{self.key}"
        self.state: dict = {"bucket": settings.bucket_name, "key": self.key,
                            "endpoint": self.endpoint or "AWS", "state": "starting",
                            "in_sync": False, "failures": 0}
        self._news = threading.Condition()
        self._wanted: Wanted | None = None
        self._generation = 0
        self._check_requested = False
        self._stopped = False
        self._running = False
        self._digests: dict[tuple, str] = {}  # (dev, inode, size, mtime_ns) -> sha256
        self._backoff = timing.backoff_first_s
        self._write_state()

    # -- called from the rotator's thread ---------------------------------------------------

    def want(self, record, published: bool) -> None:
        """The published model after a reconcile (None: nothing published)."""
        with self._news:
            previous = self._wanted
            if record is None:
                self._wanted = None
            elif previous is None or published or not _same_file(previous.record, record):
                self._generation += 1
                self._wanted = Wanted(record, self._generation)
            if self._wanted != previous or not self._running:
                self._check_requested = True
                self._news.notify_all()
            first = not self._running
            self._running = True
        if first:
            self.start()

    def stop(self) -> None:
        with self._news:
            self._stopped = True
            self._news.notify_all()

    # -- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        wait: float | None = 0.0
        while True:
            with self._news:
                self._news.wait_for(lambda: self._check_requested or self._stopped,
                                    timeout=wait)
                self._check_requested = False
                if self._stopped:
                    if self.bucket is not None:
                        self.bucket.close()
                    return
                wanted = self._wanted
            wait = self._sync_surviving(wanted)

    def _sync_surviving(self, wanted: Wanted | None) -> float | None:
        """One check; returns how long to wait before the next one (None: until news)."""
        interval = self.sync_interval_s or None
        try:
            self.sync(wanted)
        except (_Superseded, Cancelled):
            return 0.0
        except _NotYet:
            return NOT_YET_WAIT_S
        except Exception as error:  # noqa: BLE001 - this thread must outlive any error
            cause, line = describe_failure(error, self.bucket_name, self._failed_key(),
                                           self.endpoint)
            line = printable(self.secrets.scrub(line))[:600]
            wait = self._backoff / 2 + random.uniform(0, self._backoff / 2)
            self._backoff = min(self._backoff * 2, self.timing.backoff_max_s)
            self.log.error("remote storage: %s; trying again in %.1f s", line, wait,
                           extra={"event": "remote_failed",
                                  "fields": {"cause": cause, "bucket": self.bucket_name}})
            self._update(state="failing", in_sync=False, cause=cause, last_error=line,
                         last_error_at=time.time(), failures=self.state["failures"] + 1)
            return wait
        self._backoff = self.timing.backoff_first_s
        return interval

    def _failed_key(self) -> str:
        return self.state.get("working_on") or self.key

    def sync(self, wanted: Wanted | None) -> None:
        """Bring the bucket to `wanted`; raises on any failure of the bucket."""
        self.state["working_on"] = self.key
        if self.bucket is None:
            self.bucket = Bucket(self.bucket_name, self.endpoint, self.timing.connect_timeout_s,
                                 self.timing.read_timeout_s, self.timing.attempts)
        if wanted is None:
            self._update(state="nothing-published", in_sync=False)
            return
        fd = _open_published(self.latest)
        if fd is None:
            self._update(state="nothing-published", in_sync=False)
            return
        try:
            st = os.fstat(fd)
            if not wanted.record.describes(st):
                # Published again (or touched) since the record: the rotator's next reconcile
                # brings the record that describes it. Look again soon, without spinning.
                raise _NotYet
            sha256 = self._digest(fd, st)
            record = wanted.record
            version = version_key(self.key, sha256)
            metadata = {META_SHA256: sha256, META_MODEL_ID: record.model_id or "",
                        META_PUBLISHED_AT: f"{record.published_at:.6f}"}
            self.state["working_on"] = self.key
            fixed = self.bucket.head(self.key)
            changed = not _holds(fixed, sha256, st.st_size)
            self.state["working_on"] = version
            stored = self.bucket.head(version)
            if not _holds(stored, sha256, st.st_size):
                self._upload(fd, st.st_size, version, metadata, wanted)
            elif stored.published_at != float(metadata[META_PUBLISHED_AT]):
                # An older model published again: it becomes the newest version (a
                # server-side copy onto itself with the new publish time), so pruning keeps
                # what was published most recently.
                self.bucket.copy(version, version, metadata)
            if changed:
                if self._newer_than(wanted):
                    raise _Superseded  # never move the key back to an older model
                self.state["working_on"] = self.key
                started = time.monotonic()
                if st.st_size <= MAX_COPY_BYTES:
                    self.bucket.copy(version, self.key, metadata)
                else:
                    self._upload(fd, st.st_size, self.key, metadata, wanted)
                self.log.info("%s now holds model_id %s (sha256 %s, %d bytes; %.0f ms after "
                              "the local publish)", self.where, record.model_id or "(none)",
                              sha256[:16], st.st_size,
                              (time.time() - record.published_at - record.duration_s) * 1000,
                              extra={"event": "remote_published",
                                     "fields": {"key": self.key, "version_key": version,
                                                "copy_s": time.monotonic() - started}})
            self._prune_surviving(version)
        finally:
            os.close(fd)
        now = time.time()
        self._update(state="in-sync", in_sync=True, model_id=record.model_id, sha256=sha256,
                     size=st.st_size, version_key=version, checked_at=now,
                     in_place_at=now if changed else self.state.get("in_place_at", now),
                     cause=None, working_on=None)
        self.in_place(record.model_id, version, changed)

    def _upload(self, fd: int, size: int, key: str, metadata: dict, wanted: Wanted) -> None:
        self.log.info("uploading %s (%d bytes) to s3://%s/%s", self.latest.name, size,
                      self.bucket.name, key, extra={"event": "remote_upload_started"})
        self._update(state="uploading", in_sync=False)
        started = time.monotonic()
        try:
            self.bucket.upload(fd, key, metadata, lambda: self._newer_than(wanted),
                               self._news)
        except Cancelled:
            self.log.info("upload to s3://%s/%s cancelled: a newer model was published",
                          self.bucket.name, key, extra={"event": "remote_upload_cancelled"})
            raise
        took = time.monotonic() - started
        _give_back_memory()
        self.log.info("uploaded s3://%s/%s (%d bytes) in %.1f s (%.1f MiB/s)", self.bucket.name,
                      key, size, took, size / max(took, 1e-6) / 2**20,
                      extra={"event": "remote_uploaded",
                             "fields": {"key": key, "size": size, "duration_s": took}})
        self._update(last_upload={"key": key, "size": size, "duration_s": round(took, 3),
                                  "at": time.time()})

    def _prune_surviving(self, published_version: str) -> None:
        """Pruning that fails (a policy without s3:DeleteObject) is one WARNING line: the key
        holds the model all the same, and the replicas must still hear of it."""
        try:
            self._prune(published_version)
        except Exception as error:  # noqa: BLE001 - tried again at the next check
            _, line = describe_failure(error, self.bucket_name, self._failed_key(),
                                       self.endpoint)
            self.log.warning("remote storage: could not prune older versions: %s",
                             printable(self.secrets.scrub(line))[:600],
                             extra={"event": "remote_prune_failed"})

    def _prune(self, published_version: str) -> None:
        listed = self.bucket.listing(versions_prefix(self.key))
        if len(listed) <= self.keep_previous + 1:
            return
        # The listing has no metadata: our publish times come from one HEAD per version.
        versions = [self.bucket.head(v.key) or v for v in listed]
        for key in prunable_versions(versions, published_version, self.keep_previous):
            self.state["working_on"] = key
            self.bucket.delete(key)
            self.log.info("deleted s3://%s/%s (KEEP_PREVIOUS %d)", self.bucket.name, key,
                          self.keep_previous, extra={"event": "remote_deleted"})

    def _digest(self, fd: int, st: os.stat_result) -> str:
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity not in self._digests:
            with open(fd, "rb", closefd=False) as stream:
                stream.seek(0)
                digest = hashlib.file_digest(stream, "sha256").hexdigest()
            self._digests = {identity: digest}  # only the published file is worth keeping
        return self._digests[identity]

    def _newer_than(self, wanted: Wanted) -> bool:
        with self._news:
            return (self._stopped or self._wanted is None
                    or self._wanted.generation != wanted.generation)

    def _update(self, **changes) -> None:
        self.state.update(changes)
        try:
            write_remote_state(self.run_dir, {k: v for k, v in self.state.items()
                                              if k != "working_on"})
        except OSError as error:  # a state file we cannot write stops nothing
            self.log.error("remote storage: could not record its state: %s", error)
        if self.report is not None:
            self.report(self.state)

    def _write_state(self) -> None:
        self._update()


def _give_back_memory() -> None:
    """A multipart upload leaves its parts' buffers freed in the heaps of the transfer
    threads, and glibc keeps them: about 20 MiB of PSS more for good after a 64 MiB model.
    malloc_trim(0) returns the free pages of every heap to the kernel."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _holds(stored: StoredObject | None, sha256: str, size: int) -> bool:
    return stored is not None and stored.sha256 == sha256 and stored.size == size


def _same_file(a, b) -> bool:
    return (a.latest_size, a.latest_mtime_ns, a.latest_inode) == (
        b.latest_size, b.latest_mtime_ns, b.latest_inode)


def _open_published(path: Path) -> int | None:
    """LATEST_MODEL_PATH opened once (what we hash is what we upload); None: nothing there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd
