"""Opening a file the tool reads without ever blocking on it.

A FIFO opened for reading blocks until a writer comes; a device or a socket may do anything.
Any of them can sit where a model, LATEST_MODEL_PATH, its record, its lock or the arrival
journal should be (put there by mistake, or swapped in between a listing and an open). So
every open goes through here: O_NONBLOCK (the open itself cannot wait), O_NOFOLLOW where a
link must not be followed, then fstat: anything but a regular file is refused before a byte
is read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or folder where a regular file belongs."""


def open_regular(path, flags: int = os.O_RDONLY, mode: int = 0o644, follow: bool = False) -> int:
    """os.open() that cannot block and returns only a regular file's descriptor.

    `follow=False` also refuses a symbolic link at `path` itself (ELOOP). The returned
    descriptor is blocking again (regular files ignore O_NONBLOCK, but callers should not
    inherit a surprise). Raises NotRegularFile or the OSError of the open.
    """
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags | extra, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})",
                                 str(path))
        current = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, current & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_file(path, limit: int) -> bytes:
    """The content of a small regular file (a record, a journal); at most `limit` bytes."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as raw:
            return raw.read(limit)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"
