"""Is a model archive whole? And copy one while proving it is, in about the time of a copy.

A Rasa model is a gzip-compressed tar streamed into its final path, so a half-written or
killed training leaves a file under the final name. "Whole" here means: every gzip member
ends with a matching CRC-32 and length, nothing follows the last one, and the tar inside
walks to its end: every header valid (tarfile checks each checksum), no member with a
negative size, the end-of-archive marker (two 512-byte zero blocks) right after the last
member, and nothing but zero padding after it. Python's tarfile alone stops quietly at a bad
header after the first member, so the end is checked here.

Memory stays flat in the number and size of members: tarfile keeps every TarInfo it reads in
`tar.members`; the walk drops them as it goes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import threading
import zlib
from dataclasses import dataclass

from worker.folder.openfile import open_regular

# 64 KiB input chunks keep zlib's output in reused small buffers: about 4x faster than 1 MiB
# chunks here (no page faults on fresh allocations), and memory stays flat at any size.
READ_CHUNK = 64 * 1024
COPY_CHUNK = 16 * 1024 * 1024
STOP_WAIT_S = 2.0  # how long an abandoned copy may keep a stopping publish waiting
METADATA_NAME = "metadata.json"
METADATA_MAX_BYTES = 1024 * 1024
_GZIP_WBITS = zlib.MAX_WBITS | 16  # expect a gzip header and trailer

# copy_file_range refuses these on some file systems and kernels (cross-device before 5.3,
# some network and FUSE file systems): copy through user space instead.
_COPY_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


class BrokenArchive(Exception):
    """The file is not (yet) a whole gzip + tar archive; str() says why."""


class SourceChanged(BrokenArchive):
    """The file changed while it was read: no verdict on the archive itself."""


@dataclass(frozen=True)
class ArchiveInfo:
    size: int
    model_id: str | None = None
    trained_at: str | None = None
    rasa_version: str | None = None  # metadata.json's rasa_open_source_version
    digest: str | None = None  # the content's fingerprint (hex), see _GunzipStream


class _GunzipStream:
    """The decompressed bytes of a gzip file, checking CRCs, as a read-only file that can
    seek forward. tarfile skips member data by seeking: this inflates and drops it in place,
    which costs half of letting tarfile's stream mode read and join it."""

    def __init__(self, raw):
        self._raw = raw
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._pending = b""  # compressed bytes read but not yet inflated
        self._in_member = False
        self._members_ended = 0
        self._position = 0
        self.compressed_bytes = 0
        # The archive's identity by content, taken in this pass at next to no cost (hashing
        # every byte would triple the check's time): SHA-256 over its first chunk (the gzip
        # header), each gzip member's trailer (CRC-32 and length of ALL its uncompressed
        # content, verified by zlib just now) and the compressed size. Another model, or
        # any changed byte, gives another fingerprint; a touch or a restored mtime does not.
        self.digest = hashlib.sha256()
        self._consumed_tail = b""  # the last 8 compressed bytes zlib consumed: a trailer
        # The last block handed out by read(): tarfile's header reads are one block each,
        # so this is the block at which it stopped walking (see _check_end_of_archive).
        self.last_read_at = -1
        self.last_read = b""

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size if size is not None and size >= 0 else float("inf")
        while wanted > 0:
            chunk = self._inflate(int(min(wanted, READ_CHUNK)))
            if not chunk:
                break
            parts.append(chunk)
            wanted -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.last_read_at, self.last_read = self._position, data
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._position
        if whence == 2 or offset < self._position:
            raise io.UnsupportedOperation("a gzip stream only seeks forward")
        while self._position < offset:
            chunk = self._inflate(min(offset - self._position, READ_CHUNK))
            if not chunk:
                break  # past the end: the next read finds nothing, as tarfile expects
            self._position += len(chunk)
        return self._position

    def _inflate(self, limit: int) -> bytes:
        """Up to `limit` decompressed bytes; b"" at the end of the file."""
        while True:
            if not self._pending:
                self._pending = self._raw.read(READ_CHUNK)
                if not self._pending:
                    return b""
                if not self.compressed_bytes:
                    self.digest.update(self._pending)
                self.compressed_bytes += len(self._pending)
            self._in_member = True
            given = self._pending
            chunk = self._inflater.decompress(given, limit)
            self._pending = self._inflater.unconsumed_tail
            consumed = len(given) - len(self._pending)
            if self._inflater.eof:
                consumed -= len(self._inflater.unused_data)
            self._consumed_tail = (self._consumed_tail
                                   + given[max(0, consumed - 8):consumed])[-8:]
            if self._inflater.eof:
                self.digest.update(self._consumed_tail)  # this member's CRC-32 and length
                self._consumed_tail = b""
                # zlib has checked this member's CRC-32 and length. A gzip file may hold
                # several members back to back; any other trailing bytes fail as a header.
                self._members_ended += 1
                self._pending = self._inflater.unused_data
                self._inflater = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = False
            if chunk:
                return chunk

    def fingerprint(self) -> str:
        """The content's fingerprint, once the stream was read to its end (finish())."""
        digest = self.digest.copy()
        digest.update(self.compressed_bytes.to_bytes(8, "big"))
        return digest.hexdigest()

    def finish(self) -> None:
        """Read to the end; raise BrokenArchive unless the last gzip member ended cleanly."""
        try:
            while self._inflate(READ_CHUNK):
                pass
        except zlib.error as error:
            raise BrokenArchive(f"corrupt gzip data ({error})") from None
        if self._in_member or not self._members_ended:
            raise BrokenArchive("gzip stream ends early (file truncated or still being written)")


def check_archive_stream(raw) -> ArchiveInfo:
    """Read a whole gzip + tar archive from a binary file object; raise BrokenArchive if not."""
    gunzip = _GunzipStream(raw)
    metadata: dict = {}
    try:
        with tarfile.open(fileobj=gunzip, mode="r:") as tar:
            while True:
                member = tar.next()
                tar.members.clear()  # tarfile would keep every header: memory flat instead
                if member is None:
                    break
                if member.size < 0:
                    raise BrokenArchive(f"not a valid gzip + tar archive (member "
                                        f"{member.name!r} has a negative size)")
                # metadata.json sorts last in Rasa's archives: read it in this same pass.
                if (member.name == METADATA_NAME and member.isfile()
                        and member.size <= METADATA_MAX_BYTES):
                    extracted = tar.extractfile(member)
                    metadata = _parse_metadata(extracted.read() if extracted else b"")
            try:
                _check_end_of_archive(gunzip, tar.offset)
            except BrokenArchive:
                gunzip.finish()  # a gzip stream that ends early says more: still written
                raise
    except (tarfile.TarError, zlib.error, EOFError, io.UnsupportedOperation) as error:
        raise BrokenArchive(_describe(error)) from None
    gunzip.finish()
    return ArchiveInfo(
        size=gunzip.compressed_bytes,
        model_id=_text(metadata.get("model_id")),
        trained_at=_text(metadata.get("trained_at")),
        rasa_version=_text(metadata.get("rasa_open_source_version")),
        digest=gunzip.fingerprint(),
    )


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
ZERO = b"\0"


def _check_end_of_archive(gunzip: _GunzipStream, end: int) -> None:
    """After the last member (at `end`) come two zero blocks, then only zero padding.

    tarfile stopped because the header block at `end` was zeros, invalid or short; it read
    that block last. Anything but zeros from there to the end of the stream means a header
    that is not one (garbage, or a tar cut and glued) or a size that jumped backwards.
    """
    if gunzip.last_read_at != end:
        raise BrokenArchive("not a valid gzip + tar archive (a member size points outside "
                            "the archive)")
    zeros = 0
    chunk = gunzip.last_read
    while chunk:
        if chunk.count(0) != len(chunk):
            at = end + zeros + len(chunk) - len(chunk.lstrip(ZERO))
            raise BrokenArchive(f"not a valid gzip + tar archive (data at byte {at} of the "
                                f"tar, where the next member or the end-of-archive should be)")
        zeros += len(chunk)
        chunk = gunzip.read(READ_CHUNK)
    if zeros < END_OF_ARCHIVE:
        raise BrokenArchive("archive ends early (file truncated or still being written): "
                            "the tar has no end-of-archive blocks")


def check_archive(path, follow: bool = False) -> ArchiveInfo:
    """Is the file at `path` a whole archive? Raises BrokenArchive (or OSError) if not.

    Never blocks: a FIFO, device or socket at `path` is refused (NotRegularFile), and so is a
    symbolic link unless `follow`.
    """
    fd = open_regular(path, follow=follow)
    with open(fd, "rb", buffering=0) as raw:
        return check_archive_stream(raw)


def _parse_metadata(data: bytes) -> dict:
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(value) -> str | None:
    return None if value is None else str(value)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, EOFError) or any(
            sign in text for sign in ("unexpected end of data", "truncated header", "empty file")):
        return "archive ends early (file truncated or still being written)"
    return f"not a valid gzip + tar archive ({text})"


def copy_verified(source_fd: int, target_fd: int, size: int) -> ArchiveInfo:
    """Copy `size` bytes from source to target, fsync the target, and check the archive, all
    at once.

    The kernel copies (copy_file_range, no trip through user space) and then flushes the copy
    to disk in a thread, while this thread decompresses the same bytes from the page cache:
    the check hides behind the disk write and costs about nothing. Raises BrokenArchive or
    OSError; the caller removes the target then.
    """
    copier = _Copier(source_fd, target_fd, size)
    copier.start()
    try:
        with open(source_fd, "rb", buffering=0, closefd=False) as raw:
            info = check_archive_stream(raw)
    except BaseException:
        copier.stop(STOP_WAIT_S)
        raise
    copier.join()
    if info.size != size:
        raise SourceChanged(f"file changed size while being read ({size} -> {info.size} bytes)")
    return info


class _Copier(threading.Thread):
    def __init__(self, source_fd: int, target_fd: int, size: int):
        super().__init__(name="copy", daemon=True)
        self._source_fd, self._target_fd, self._size = source_fd, target_fd, size
        self._stopping = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            copy_range(self._source_fd, self._target_fd, self._size, self._stopping)
            if not self._stopping.is_set():
                os.fsync(self._target_fd)
        except BaseException as error:  # handed to the caller's thread in join()
            self._error = error

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the syscall in flight. A stopped copier issues no further call on the
        file descriptors, so the caller may close them even if this returns on `timeout`
        (say, while an fsync of a large copy finishes and SIGTERM wants us gone)."""
        self._stopping.set()
        super().join(timeout)

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self._error is not None:
            raise self._error


def copy_range(source_fd: int, target_fd: int, size: int, stopping=None) -> None:
    """Copy `size` bytes between file descriptors from offset 0, in the kernel when it can."""
    copied = 0
    use_kernel = hasattr(os, "copy_file_range")
    while copied < size:
        if stopping is not None and stopping.is_set():
            return
        want = min(COPY_CHUNK, size - copied)
        if use_kernel:
            try:
                done = os.copy_file_range(source_fd, target_fd, want, copied, copied)
            except OSError as error:
                if error.errno not in _COPY_FALLBACK_ERRNOS:
                    raise
                done = 0
            if done == 0:
                use_kernel = False  # unsupported here, or a file system that reports 0
                continue
        else:
            data = os.pread(source_fd, min(want, 1024 * 1024), copied)
            if not data:
                raise SourceChanged(f"file shrank while being copied ({copied} of {size} bytes)")
            done = os.pwrite(target_fd, data, copied)
        copied += done
