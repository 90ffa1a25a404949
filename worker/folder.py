"""The folder as plain functions: list the models, publish one atomically, remember what was
published, tidy our own leftovers. No processes, no queues, no policy (see reconcile.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.archive import ArchiveInfo, SourceChanged, check_archive_stream, copy_verified
from worker.names import internal_prefix, is_model_name


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

    def describes(self, latest_stat: os.stat_result | None) -> bool:
        return latest_stat is not None and (
            (latest_stat.st_size, latest_stat.st_mtime_ns, latest_stat.st_ino)
            == (self.latest_size, self.latest_mtime_ns, self.latest_inode))

    def is_source(self, model: ModelFile) -> bool:
        return (model.name, model.size, model.mtime_ns, model.inode) == (
            self.source, self.source_size, self.source_mtime_ns, self.source_inode)


def record_path(latest_model_path: Path) -> Path:
    return latest_model_path.with_name(internal_prefix(latest_model_path) + "json")


@contextlib.contextmanager
def folder_lock(latest_model_path: Path):
    """One reconcile at a time per published file: the rotator, `once`, a second instance."""
    path = latest_model_path.with_name(internal_prefix(latest_model_path) + "lock")
    # Opened read-only: closing it raises no close_write event, and flock needs no more.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def list_models(folder: Path, pattern: str, latest_model_path: Path,
                ignore_paths: tuple[Path, ...] = ()) -> list[ModelFile]:
    """Regular files directly in `folder` whose names match; never links, folders, or ignored."""
    models = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    ignored = set(ignore_paths)
    for entry in entries:
        if not is_model_name(entry.name, pattern, latest_model_path, folder):
            continue
        path = folder / entry.name
        if path in ignored:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted since the listing
        if stat.S_ISREG(st.st_mode):
            models.append(ModelFile.from_stat(path, st))
    return models


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def read_record(latest_model_path: Path) -> PublishRecord | None:
    try:
        data = json.loads(record_path(latest_model_path).read_text())
        return PublishRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(latest_model_path: Path, record: PublishRecord) -> None:
    target = record_path(latest_model_path)
    temporary = _temporary_name(latest_model_path)
    temporary.write_text(json.dumps(asdict(record), indent=1))
    os.replace(temporary, target)


def _temporary_name(latest_model_path: Path) -> Path:
    # Same folder (os.replace must not cross file systems); a name that is no model's.
    return latest_model_path.with_name(
        f"{internal_prefix(latest_model_path)}tmp-{os.urandom(4).hex()}")


def publish_atomically(source: ModelFile, latest_model_path: Path, arrived_at: float,
                       mode: str = "copy") -> PublishRecord:
    """Publish `source` as LATEST_MODEL_PATH so that a reader only ever sees a whole archive.

    copy: copy to a temporary file beside the target while proving the archive whole, fsync,
    rename over the target, fsync the folder. On any failure (or signal) the temporary file
    is removed and the old LATEST_MODEL_PATH stays as it was.
    move: prove the archive whole, then rename the source itself over the target.
    Raises BrokenArchive or OSError.
    """
    started = time.time()
    # Freeing the replaced file's blocks (a TRIM on file systems mounted with `discard`)
    # would land in the same journal commit as our folder fsync: hold it open until the new
    # file is durable, so that work happens after the publish, not inside it.
    replaced = _open_if_exists(latest_model_path)
    try:
        if mode == "move":
            info = _move_into_place(source, latest_model_path)
        else:
            info = _copy_into_place(source, latest_model_path)
        _fsync_folder(latest_model_path.parent)
        latest = latest_model_path.stat()
        record = PublishRecord(
            source=source.name, source_size=source.size, source_mtime_ns=source.mtime_ns,
            source_inode=source.inode, arrived_at=arrived_at, published_at=started,
            latest_size=latest.st_size, latest_mtime_ns=latest.st_mtime_ns,
            latest_inode=latest.st_ino, duration_s=time.time() - started,
            model_id=info.model_id, trained_at=info.trained_at)
        write_record(latest_model_path, record)
    finally:
        if replaced is not None:
            os.close(replaced)
    return record


def _open_if_exists(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _copy_into_place(source: ModelFile, latest_model_path: Path) -> ArchiveInfo:
    temporary = _temporary_name(latest_model_path)
    source_fd = os.open(source.path, os.O_RDONLY)
    try:
        before = os.fstat(source_fd)
        if ModelFile.from_stat(source.path, before).identity != source.identity:
            raise SourceChanged("file changed since it was listed")
        target_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # The mode first: copy_verified's fsync then makes it durable with the data.
            os.fchmod(target_fd, stat.S_IMODE(before.st_mode) | 0o444)
            info = copy_verified(source_fd, target_fd, before.st_size)
            after = os.fstat(source_fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise SourceChanged("file changed while it was being published")
        finally:
            os.close(target_fd)
        os.replace(temporary, latest_model_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(source_fd)
    return info


def _move_into_place(source: ModelFile, latest_model_path: Path) -> ArchiveInfo:
    # No second copy on disk; the file itself becomes LATEST_MODEL_PATH (never a hard link:
    # Rasa's --fixed-model-name rewrites the same inode in place).
    with open(source.path, "rb", buffering=0) as raw:
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
    return info


def adopt_record(latest_model_path: Path, source: ModelFile | None, info: ArchiveInfo,
                 latest_stat: os.stat_result) -> PublishRecord:
    """A record for a LATEST_MODEL_PATH we did not publish (or whose record was lost).

    Its own mtime is when it was written, the best guess of when it was published.
    """
    published_at = latest_stat.st_mtime
    return PublishRecord(
        source=source.name if source else "", source_size=source.size if source else -1,
        source_mtime_ns=source.mtime_ns if source else -1,
        source_inode=source.inode if source else -1,
        arrived_at=published_at, published_at=published_at,
        latest_size=latest_stat.st_size, latest_mtime_ns=latest_stat.st_mtime_ns,
        latest_inode=latest_stat.st_ino, duration_s=0.0,
        model_id=info.model_id, trained_at=info.trained_at)


def same_content(first: Path, second: Path, chunk: int = 1024 * 1024) -> bool:
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            left, right = a.read(chunk), b.read(chunk)
            if left != right:
                return False
            if not left:
                return True


def remove_temporary_files(latest_model_path: Path) -> list[Path]:
    """Remove publish temp files left by a rotator that was killed mid-publish."""
    prefix = internal_prefix(latest_model_path) + "tmp-"
    removed = []
    for entry in os.scandir(latest_model_path.parent):
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
