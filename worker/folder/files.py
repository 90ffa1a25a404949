"""The folder as plain functions: list the models, publish one atomically, remember what was
published, tidy our own leftovers. No processes, no queues, no policy (see reconcile.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from worker.folder.archive import ArchiveInfo, SourceChanged, check_archive_stream, copy_verified
from worker.folder.arrivals import ArrivalJournal, write_atomically
from worker.folder.names import internal_prefix, is_model_name, same_folder, temporary_name
from worker.folder.openfile import NotRegularFile, open_regular
from worker.folder.statefile import (
    InvalidState,
    finite,
    load_json,
    mapping,
    plain_name,
    text,
    whole,
)

MAX_RECORD_BYTES = 1024 * 1024
# What `rasa run --model DIR` globs (rasa/model.py, get_latest_model).
RASA_MODEL_GLOB = "*.tar.gz"
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class ModelFile:
    """One regular file in the watched folder whose name says it is a model."""

    path: Path
    size: int
    mtime_ns: int
    inode: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def identity(self) -> tuple:
        """Changes whenever the content may have changed."""
        return (self.name, self.inode, self.size, self.mtime_ns)

    @classmethod
    def from_stat(cls, path: Path, st: os.stat_result) -> ModelFile:
        return cls(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


@dataclass(frozen=True)
class PublishRecord:
    """What LATEST_MODEL_PATH holds, kept beside it so a restart knows without re-reading.

    `latest_*` identify the published file; the record is trusted only while they match.
    `arrived_at` is when its source arrived, `published_at` when publishing began.
    """

    source: str
    source_size: int
    source_mtime_ns: int
    source_inode: int
    arrived_at: float
    published_at: float
    latest_size: int
    latest_mtime_ns: int
    latest_inode: int
    duration_s: float
    model_id: str | None = None
    trained_at: str | None = None
    arrival_seq: int = 0  # with arrived_at, the source's place in the arrival order
    # SHA-256 of latest's bytes, taken while its archive was checked: what latest holds is
    # known by content, so a touch or a restored mtime is no new model.
    digest: str | None = None

    def describes(self, latest_stat: os.stat_result | None) -> bool:
        return latest_stat is not None and (
            (latest_stat.st_size, latest_stat.st_mtime_ns, latest_stat.st_ino)
            == (self.latest_size, self.latest_mtime_ns, self.latest_inode))

    def is_source(self, model: ModelFile) -> bool:
        return (model.name, model.size, model.mtime_ns, model.inode) == (
            self.source, self.source_size, self.source_mtime_ns, self.source_inode)

    @property
    def arrival_key(self) -> tuple[float, int]:
        return (self.arrived_at, self.arrival_seq)

    def describing(self, latest_stat: os.stat_result) -> PublishRecord:
        """This record, updated to describe LATEST_MODEL_PATH as it is now (after utime)."""
        return replace(self, latest_size=latest_stat.st_size,
                       latest_mtime_ns=latest_stat.st_mtime_ns, latest_inode=latest_stat.st_ino)


def record_path(latest_model_path: Path) -> Path:
    return latest_model_path.with_name(internal_prefix(latest_model_path) + "json")


@contextlib.contextmanager
def folder_lock(latest_model_path: Path, wait: bool = True):
    """One reconcile at a time per published file: the rotator, `once`, a second instance.

    `wait=False` raises BlockingIOError at once when someone else holds it."""
    path = latest_model_path.with_name(internal_prefix(latest_model_path) + "lock")
    # Opened read-only: closing it raises no close_write event, and flock needs no more.
    # Never blocking: a FIFO put at this path is refused instead of waited on.
    fd = open_regular(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names (links followed), or None if nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def list_models(folder: Path, pattern: str, latest_model_path: Path,
                ignore_paths: tuple[Path, ...] = ()) -> list[ModelFile]:
    """Regular files directly in `folder` whose names match; never links, folders, hidden
    names, LATEST_MODEL_PATH or an IGNORE_FILE_PATHS entry.

    LATEST_MODEL_PATH and the ignored paths are recognised as files (st_dev, st_ino), never
    by their spelling: through a symlinked folder, a `..` or a second mount they are still
    themselves, so latest is never taken for a model and an ignored file never deleted.
    """
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    excluded = {i for i in (file_id(p) for p in (latest_model_path, *ignore_paths)) if i}
    latest_here = same_folder(folder, latest_model_path.parent)
    models = []
    for entry in entries:
        if not is_model_name(entry.name, pattern, latest_model_path, folder):
            continue
        if latest_here and entry.name == latest_model_path.name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted since the listing
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in excluded:
            models.append(ModelFile.from_stat(folder / entry.name, st))
    return models


def _rasa_candidates(folder: Path) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names
            if not n.startswith(".") and fnmatch.fnmatchcase(n, RASA_MODEL_GLOB)]


def keep_latest_newest(folder: Path, latest_model_path: Path,
                       expected: PublishRecord) -> os.stat_result | None:
    """Rasa restarted with `--model <folder>` loads the newest mtime among *.tar.gz: make that
    LATEST_MODEL_PATH. Sets latest's mtime just above every other such file's (a truncated
    training, a future-dated copy, a rollback's older source), never changing its inode
    (the model server's ETag rests on it), and only while latest is what `expected`
    describes. Returns latest's new stat if it was changed."""
    if not same_folder(folder, latest_model_path.parent):
        return None  # Rasa pointed at this folder does not see latest at all
    latest_id = file_id(latest_model_path)
    newest_other = None
    for path in _rasa_candidates(folder):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != latest_id:
            newest_other = max(newest_other or st.st_mtime_ns, st.st_mtime_ns)
    fd = open_regular(latest_model_path)
    try:
        current = os.fstat(fd)
        if not expected.describes(current):
            return None  # rewritten meanwhile (by another program): the next reconcile sees it
        if newest_other is None or current.st_mtime_ns > newest_other:
            return None
        wanted = newest_other + 1_000_000  # 1 ms: above coarse file-system timestamps
        os.utime(fd, ns=(current.st_atime_ns, wanted))
        return os.fstat(fd)
    finally:
        os.close(fd)


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def read_record(latest_model_path: Path, on_invalid=None) -> PublishRecord | None:
    """The record as saved, or None when there is none. A file that is not a valid record is
    handed to `on_invalid(path, problem)` (which sets it aside) and read as absent."""
    path = record_path(latest_model_path)
    try:
        return parse_record(load_json(path, MAX_RECORD_BYTES))
    except OSError:
        return None
    except InvalidState as problem:
        if on_invalid is not None:
            on_invalid(path, problem)
        return None


def parse_record(data) -> PublishRecord:
    """A PublishRecord from a saved one, every field checked (InvalidState if one fails).
    Fields it does not know are ignored (a record written by a newer version)."""
    data = mapping(data, "the record")
    source = plain_name(data.get("source"), "'source'")
    digest = text(data, "digest", optional=True, max_chars=128)
    if digest is not None and not _HEX.fullmatch(digest):
        raise InvalidState("'digest' is not a hexadecimal digest")
    return PublishRecord(
        source=source, source_size=whole(data, "source_size", -1),
        source_mtime_ns=whole(data, "source_mtime_ns"),
        source_inode=whole(data, "source_inode", -1),
        arrived_at=finite(data, "arrived_at"), published_at=finite(data, "published_at"),
        latest_size=whole(data, "latest_size", 0), latest_mtime_ns=whole(data, "latest_mtime_ns"),
        latest_inode=whole(data, "latest_inode", 0), duration_s=finite(data, "duration_s"),
        model_id=text(data, "model_id", optional=True),
        trained_at=text(data, "trained_at", optional=True),
        arrival_seq=whole(data, "arrival_seq", 0) if "arrival_seq" in data else 0,
        digest=digest)


def load_journal(latest_model_path: Path, on_invalid=None) -> ArrivalJournal:
    """The arrival journal, never behind the publish record: if the journal was lost or
    rebuilt (also after a clock that ran ahead and was corrected), what the record says
    latest's source arrived at still bounds every later arrival from below."""
    journal = ArrivalJournal.load(latest_model_path, on_invalid)
    record = read_record(latest_model_path, on_invalid)
    if record is not None:
        journal.respect(record.arrival_key)
    return journal


def write_record(latest_model_path: Path, record: PublishRecord) -> None:
    """Atomically; on failure (a full disk) the old record stays and no temp file is left."""
    write_atomically(record_path(latest_model_path),
                     json.dumps(asdict(record), indent=1).encode(),
                     temporary_name(latest_model_path))


@dataclass(frozen=True)
class Published:
    """A publish that happened: LATEST_MODEL_PATH now holds the source (the rename is done)."""

    info: ArchiveInfo
    latest_stat: os.stat_result
    started: float
    duration_s: float
    warning: str = ""  # something after the rename failed (the folder's fsync)


def publish_atomically(source: ModelFile, latest_model_path: Path,
                       mode: str = "copy") -> Published:
    """Publish `source` as LATEST_MODEL_PATH so that a reader only ever sees a whole archive.

    copy: copy to a temporary file beside the target while proving the archive whole, fsync,
    rename over the target, fsync the folder. On any failure (or signal) before the rename
    the temporary file is removed, the old LATEST_MODEL_PATH stays as it was, and this
    raises BrokenArchive or OSError. move: prove the archive whole, then rename the source
    itself over the target. The rename is the commit: nothing after it raises, so the caller
    always knows what latest holds.
    """
    started = time.time()
    # Freeing the replaced file's blocks (a TRIM on file systems mounted with `discard`)
    # would land in the same journal commit as our folder fsync: hold it open until the new
    # file is durable, so that work happens after the publish, not inside it.
    replaced = _open_if_exists(latest_model_path)
    try:
        if mode == "move":
            info, latest = _move_into_place(source, latest_model_path)
        else:
            info, latest = _copy_into_place(source, latest_model_path)
        warning = ""
        try:
            _fsync_folder(latest_model_path.parent)
        except OSError as error:
            warning = f"the folder could not be synced ({error})"
    finally:
        if replaced is not None:
            os.close(replaced)
    return Published(info=info, latest_stat=latest, started=started,
                     duration_s=time.time() - started, warning=warning)


def _open_if_exists(path: Path) -> int | None:
    try:
        return open_regular(path)
    except (FileNotFoundError, NotRegularFile):
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EACCES, errno.ENXIO):
            return None
        raise


def _copy_into_place(source: ModelFile, latest_model_path: Path
                     ) -> tuple[ArchiveInfo, os.stat_result]:
    temporary = temporary_name(latest_model_path)
    source_fd = open_regular(source.path)
    try:
        before = os.fstat(source_fd)
        if ModelFile.from_stat(source.path, before).identity != source.identity:
            raise SourceChanged("file changed since it was listed")
        target_fd = open_regular(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # The mode first: copy_verified's fsync then makes it durable with the data.
            os.fchmod(target_fd, stat.S_IMODE(before.st_mode) | 0o444)
            info = copy_verified(source_fd, target_fd, before.st_size)
            after = os.fstat(source_fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise SourceChanged("file changed while it was being published")
            latest = os.fstat(target_fd)  # a rename keeps inode, size and mtime
        finally:
            os.close(target_fd)
        os.replace(temporary, latest_model_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(source_fd)
    return info, latest


def _move_into_place(source: ModelFile, latest_model_path: Path
                     ) -> tuple[ArchiveInfo, os.stat_result]:
    # No second copy on disk; the file itself becomes LATEST_MODEL_PATH (never a hard link:
    # Rasa's --fixed-model-name rewrites the same inode in place).
    with open(open_regular(source.path), "rb", buffering=0) as raw:
        before = os.fstat(raw.fileno())
        if ModelFile.from_stat(source.path, before).identity != source.identity:
            raise SourceChanged("file changed since it was listed")
        info = check_archive_stream(raw)
        after = os.fstat(raw.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SourceChanged("file changed while it was being checked")
    if os.stat(source.path).st_ino != before.st_ino:
        raise SourceChanged("file replaced while it was being checked")
    os.rename(source.path, latest_model_path)
    return info, after


def adopt_record(source: ModelFile | None, info: ArchiveInfo, latest_stat: os.stat_result,
                 arrived_at: float, arrival_seq: int) -> PublishRecord:
    """A record for a LATEST_MODEL_PATH we did not publish (someone else wrote it, or the
    record was lost between the rename and its write): `arrived_at` is its source's arrival
    (or latest's own, when it has no source here)."""
    published_at = min(latest_stat.st_mtime, time.time())
    return PublishRecord(
        source=source.name if source else "", source_size=source.size if source else -1,
        source_mtime_ns=source.mtime_ns if source else -1,
        source_inode=source.inode if source else -1,
        arrived_at=arrived_at, published_at=published_at,
        latest_size=latest_stat.st_size, latest_mtime_ns=latest_stat.st_mtime_ns,
        latest_inode=latest_stat.st_ino, duration_s=0.0,
        model_id=info.model_id, trained_at=info.trained_at, arrival_seq=arrival_seq,
        digest=info.digest)


def same_content(first: Path, second: Path, chunk: int = 1024 * 1024) -> bool:
    with open(open_regular(first), "rb") as a, open(open_regular(second), "rb") as b:
        while True:
            left, right = a.read(chunk), b.read(chunk)
            if left != right:
                return False
            if not left:
                return True


def remove_temporary_files(latest_model_path: Path) -> list[Path]:
    """Remove temp files left by a process killed mid-write (a publish, the record, the
    journal). Call it holding the folder lock: every writer of them holds it."""
    prefix = internal_prefix(latest_model_path) + "tmp-"
    removed = []
    try:
        entries = list(os.scandir(latest_model_path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
