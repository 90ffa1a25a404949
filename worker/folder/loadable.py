"""Loadable, not just whole: which whole models Rasa refuses, and which one it last loaded.

- The version gate: Rasa refuses a model whose metadata.json `rasa_open_source_version` is
  below its MINIMUM_COMPATIBLE_VERSION (`ModelMetadata.__post_init__`); `below_minimum` says
  so before anything is published.
- The refusal memory: a model a replica failed to load is not a candidate again until its
  file changes (another inode, size or mtime).
- The last model a replica loaded: kept whatever KEEP_PREVIOUS says, and published again
  when latest holds a refused model, so a Rasa restart never finds a model it cannot load.

All three live in one small file beside LATEST_MODEL_PATH (`.latest.tar.gz.loadable.json`),
not in RUN_DIR: RUN_DIR is a tmpfs in the image and is emptied at every container start,
while a refusal must outlive restarts of the rotator and of the container; the rotator, the
model server (another program) and `status` all reach that folder. It is written atomically
under the folder lock and read back as untrusted input: bounded size, every field checked; a
file that fails the checks is set aside (renamed to `...loadable.json.rejected`, as
worker/folder/statefile.py does with the record and the journal) and reported, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from worker.folder.arrivals import write_atomically
from worker.folder.names import internal_prefix, temporary_name
from worker.folder.openfile import read_small_file
from worker.folder.statefile import REJECTED_SUFFIX

MAX_BOOK_BYTES = 256 * 1024
MAX_REFUSED = 200  # the oldest refusals are forgotten beyond this (then tried once more)
MAX_TEXT = 300
BOOK_VERSION = 1
# Reasons a whole model is not published.
VERSION = "version"  # below the minimum version the servers accept
REFUSED = "refused"  # a replica failed to load it

# Rasa compares with packaging.version: a release, then a pre-release (a1, b2, rc1) below it.
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:(a|b|rc)(\d+))?(?:\.?(post|dev)(\d+))?")
_PRE_RANK = {"dev": 0, "a": 1, "b": 2, "rc": 3, None: 4}


def parse_version(text: str | None) -> tuple | None:
    """A Rasa version as a comparable tuple (PEP 440's order for the forms Rasa uses); None
    for anything else."""
    if not isinstance(text, str):
        return None
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    major, minor, micro, pre, pre_n, extra, extra_n = match.groups()
    rank = _PRE_RANK[pre]
    if extra == "dev" and pre is None:
        rank = _PRE_RANK["dev"]
    post = int(extra_n) if extra == "post" else -1
    return (int(major), int(minor), int(micro or 0), rank, int(pre_n or 0), post)


def below_minimum(model_version: str | None, minimum: str | None) -> bool:
    """Would a server accepting models from `minimum` on refuse this one? A model without a
    readable version is refused too (Rasa cannot compare it either); no minimum: never."""
    floor = parse_version(minimum)
    if floor is None:
        return False
    version = parse_version(model_version)
    return version is None or version < floor


def highest_version(versions) -> str | None:
    """The highest of the versions that parse (the strictest minimum among replicas)."""
    parsed = [(parse_version(v), v) for v in versions]
    parsed = [(p, v) for p, v in parsed if p is not None]
    return max(parsed)[1] if parsed else None


def book_path(latest_model_path: Path) -> Path:
    return latest_model_path.with_name(internal_prefix(latest_model_path) + "loadable.json")


@dataclass(frozen=True)
class FileMark:
    """One version of one model file: its name and identity, and what is known of it."""

    name: str
    inode: int
    size: int
    mtime_ns: int
    at: float  # when it was marked
    model_id: str | None = None
    reason: str = ""  # VERSION | REFUSED (refusals only)
    detail: str = ""  # what the replica said, or both versions
    by: str = ""  # which replica (URL without credentials) or address

    def marks(self, name: str, inode: int, size: int, mtime_ns: int) -> bool:
        return (self.name, self.inode, self.size, self.mtime_ns) == (name, inode, size, mtime_ns)

    @classmethod
    def checked(cls, data) -> FileMark:
        """From the JSON file: every field of the right type and size, or ValueError."""
        if not isinstance(data, dict):
            raise ValueError("an entry is not an object")
        fields = {}
        for name, kind in (("name", str), ("inode", int), ("size", int), ("mtime_ns", int),
                           ("at", (int, float))):
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"field {name!r} missing or of the wrong type")
            fields[name] = value
        for name in ("model_id", "reason", "detail", "by"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field {name!r} is not text")
            if value is not None:
                fields[name] = value[:MAX_TEXT]
        if "/" in fields["name"] or fields["name"].startswith(".") or not fields["name"]:
            raise ValueError("an entry names no plain model file")
        if fields.get("reason", "") not in ("", VERSION, REFUSED):
            raise ValueError("unknown reason")
        return cls(**fields)


@dataclass
class LoadableBook:
    """The refusals and the last loaded model, in memory; load() and save() under the folder
    lock (worker.folder.files.folder_lock)."""

    path: Path
    refused: dict[str, FileMark] = field(default_factory=dict)
    loaded: FileMark | None = None
    problem: str = ""  # why the file on disk was set aside, for one log line
    changed: bool = False

    @classmethod
    def load(cls, latest_model_path: Path, set_aside: bool = True) -> LoadableBook:
        """The book beside LATEST_MODEL_PATH; empty when missing or bad (a bad file is set
        aside unless `set_aside` is False: `status` only reads). Never raises."""
        book = cls(book_path(latest_model_path))
        try:
            raw = read_small_file(book.path, MAX_BOOK_BYTES + 1)
        except FileNotFoundError:
            return book
        except OSError as error:
            book.problem = f"cannot be read ({error.strerror or error}); ignored"
            return book
        try:
            if len(raw) > MAX_BOOK_BYTES:
                raise ValueError(f"larger than {MAX_BOOK_BYTES} bytes")
            try:
                data = json.loads(raw)
            except RecursionError:  # "[[[[..." nested deeper than the parser's stack
                raise ValueError("nested too deeply") from None
            if not isinstance(data, dict) or data.get("version") != BOOK_VERSION:
                raise ValueError("not a loadable book of version 1")
            entries = data.get("refused")
            if not isinstance(entries, list) or len(entries) > MAX_REFUSED:
                raise ValueError("'refused' is not a list of at most "
                                 f"{MAX_REFUSED} entries")
            marks = [FileMark.checked(entry) for entry in entries]
            book.refused = {mark.name: mark for mark in marks}
            loaded = data.get("loaded")
            book.loaded = None if loaded is None else FileMark.checked(loaded)
        except ValueError as error:
            book.refused, book.loaded = {}, None
            book.problem = f"not valid ({error}); set aside as {book.path.name}{REJECTED_SUFFIX}"
            if not set_aside:
                return book
            with contextlib.suppress(OSError):
                os.replace(book.path, book.path.with_name(book.path.name + REJECTED_SUFFIX))
        return book

    def save(self) -> None:
        data = {"version": BOOK_VERSION, "refused": [asdict(m) for m in self.refused.values()],
                "loaded": asdict(self.loaded) if self.loaded else None}
        latest_name = self.path.name[1:-len(".loadable.json")]
        write_atomically(self.path, json.dumps(data, indent=1).encode(),
                         temporary_name(self.path.parent / latest_name))
        self.changed = False

    # -- questions ------------------------------------------------------------------------

    def refusal(self, name: str, inode: int, size: int, mtime_ns: int) -> FileMark | None:
        """The refusal of exactly this file version (a rewritten file is tried again)."""
        mark = self.refused.get(name)
        return mark if mark is not None and mark.marks(name, inode, size, mtime_ns) else None

    def is_loaded(self, name: str, inode: int, size: int, mtime_ns: int) -> bool:
        return self.loaded is not None and self.loaded.marks(name, inode, size, mtime_ns)

    # -- changes --------------------------------------------------------------------------

    def refuse(self, mark: FileMark) -> None:
        self.refused.pop(mark.name, None)
        self.refused[mark.name] = mark
        while len(self.refused) > MAX_REFUSED:
            del self.refused[next(iter(self.refused))]
        self.changed = True

    def clear(self, name: str) -> None:
        if self.refused.pop(name, None) is not None:
            self.changed = True

    def mark_loaded(self, mark: FileMark) -> bool:
        """Record the model a replica loaded; False when it was known already."""
        if self.loaded is not None and self.loaded.marks(mark.name, mark.inode, mark.size,
                                                         mark.mtime_ns):
            return False
        self.loaded = mark
        self.changed = True
        return True

    def keep_only(self, present: dict[str, tuple[int, int, int]]) -> None:
        """Forget refusals of files gone or changed (`present`: name -> (inode, size,
        mtime_ns)): a rewritten model is a new model."""
        for name, mark in list(self.refused.items()):
            if present.get(name) != (mark.inode, mark.size, mark.mtime_ns):
                self.clear(name)


def mark_of(record, by: str = "", reason: str = "", detail: str = "") -> FileMark:
    """The source of a publish record (worker.folder.files.PublishRecord) as a FileMark."""
    return FileMark(name=record.source, inode=record.source_inode, size=record.source_size,
                    mtime_ns=record.source_mtime_ns, at=time.time(), model_id=record.model_id,
                    reason=reason, detail=detail[:MAX_TEXT], by=by)


def record_refusal(latest_model_path: Path, record, by: str, detail: str) -> bool:
    """A replica failed to load the model published from `record`'s source: remember it,
    under the folder lock. False when there is no source file to remember (adopted)."""
    from worker.folder.files import folder_lock

    if not record.source or record.source_size < 0:
        return False
    with folder_lock(latest_model_path):
        book = LoadableBook.load(latest_model_path)
        book.refuse(mark_of(record, by=by, reason=REFUSED, detail=detail))
        book.save()
    return True


def record_loaded(latest_model_path: Path, record, by: str) -> bool:
    """A replica serves the model published from `record`'s source; False if known."""
    from worker.folder.files import folder_lock

    if not record.source or record.source_size < 0:
        return False
    with folder_lock(latest_model_path):
        book = LoadableBook.load(latest_model_path)
        changed = book.mark_loaded(mark_of(record, by=by))
        if changed:
            book.save()
    return changed
