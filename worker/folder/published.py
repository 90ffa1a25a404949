"""The published model as one open file: what a download sends, and the ETag that names it.

Each request opens LATEST_MODEL_PATH once and works from that descriptor only: a publish that
renames a new file over the path during a transfer does not change the inode already open,
so the bytes sent and the ETag always describe the same whole file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

# How much of each end of the file goes into the ETag. For a gzip archive (every Rasa model)
# the first block holds the gzip header (the write time, the archive's name) and the last one
# the trailer: CRC-32 and length of the whole uncompressed content.
FINGERPRINT_BLOCK = 4096
ETAG_PATTERN = re.compile(r'"rmr-[0-9a-f]+-[0-9a-f]{16}"')
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.tar\.gz")


class NotPublished(Exception):
    """Nothing servable at LATEST_MODEL_PATH; str() says why."""


@dataclass
class PublishedFile:
    """An open, regular LATEST_MODEL_PATH: the descriptor, its size and its ETag."""

    fd: int
    size: int
    etag: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PublishedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def content_etag(fd: int, size: int) -> str:
    """A strong ETag derived from the bytes of the open file, never from its mtime or inode.

    So it stays the same across our restarts, a `touch` of the file (the mtime bump that makes
    Rasa's newest-mtime rule pick latest.tar.gz), a chown by Kubernetes' fsGroup, a copy to
    another volume, and the moment between the rename of a publish and its record; and it
    differs whenever the content differs (another model, even of the same size).
    """
    head = os.pread(fd, FINGERPRINT_BLOCK, 0)
    tail_start = max(0, size - FINGERPRINT_BLOCK)
    tail = os.pread(fd, FINGERPRINT_BLOCK, tail_start)
    return f'"rmr-{size:x}-{zlib.crc32(head):08x}{zlib.crc32(tail):08x}"'


def is_our_etag(value: str) -> bool:
    """True for a value we issued (now or before a restart); Rasa without a pulled model sends
    a random hex fingerprint instead."""
    return ETAG_PATTERN.fullmatch(value) is not None


def download_name(latest_model_path: Path) -> str:
    """The `filename` header: Rasa saves the download under this name in a temporary folder
    and loads the newest `*.tar.gz` there, so it must be a plain name ending in .tar.gz."""
    name = latest_model_path.name
    return name if _SAFE_NAME.fullmatch(name) else "model.tar.gz"


def open_published(latest_model_path: Path) -> PublishedFile:
    """Open LATEST_MODEL_PATH for one response. Raises NotPublished when there is nothing to
    serve (missing, not a regular file, empty, unreadable)."""
    try:
        # O_NONBLOCK: opening a FIFO put there by mistake must not wait for a writer.
        # O_NOFOLLOW: the rotator publishes a regular file, never a link.
        fd = os.open(latest_model_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotPublished("nothing published yet") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotPublished("LATEST_MODEL_PATH is a symbolic link, not a published "
                               "file") from None
        raise NotPublished(f"cannot open LATEST_MODEL_PATH ({error.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotPublished("LATEST_MODEL_PATH is not a regular file")
        if st.st_size == 0:
            raise NotPublished("LATEST_MODEL_PATH is empty")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return PublishedFile(fd=fd, size=st.st_size, etag=content_etag(fd, st.st_size))
    except BaseException:
        os.close(fd)
        raise
