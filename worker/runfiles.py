"""Reading what lies in RUN_DIR without trusting it (`status`, the health check,
`supervisorctl`), and where RUN_DIR is.

`status` reads files the programs left in RUN_DIR (`programs.state`, `rotator.state`,
`rasa-replicas.json`), `supervisorctl` the control password. Run by root (`docker exec`), it reads
the RUN_DIR of the image's user, who can plant anything in it: a link to a root-only file
(whose content would then be sent as the password, or printed), a FIFO (a read that never
returns), a huge or deeply nested file (a traceback), another user's socket.

So every file is opened relative to RUN_DIR itself (opened once, no link followed), with
O_NOFOLLOW|O_NONBLOCK, and must be a regular file with one name, owned by RUN_DIR's owner,
no larger than asked. JSON is parsed with its nesting bounded. Whatever fails is one
`Untrusted` error naming the file and what was wrong. The one file a reader writes (the
health check's last answer) is written only by RUN_DIR's owner, never through a link.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_JSON_DEPTH = 32
# supervisord's control socket asks for these (conf/supervisord.conf); the password is new at
# every start, written 0600 in RUN_DIR by worker/programs/launcher.py.
CONTROL_USERNAME = "rotator"
CONTROL_PASSWORD_FILE = "supervisor.password"


class Untrusted(Exception):
    """A RUN_DIR entry that cannot be read safely; the message names it and says why."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_run_dir(run_dir: os.PathLike | str) -> tuple[int, int]:
    """(descriptor of RUN_DIR, its owner's uid); RUN_DIR itself must not be a link."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise Untrusted(f"RUN_DIR {run_dir} cannot be opened ({error.strerror})") from None
    return fd, os.fstat(fd).st_uid


def read_run_file(run_dir: os.PathLike | str, name: str, limit: int) -> bytes:
    """The content of RUN_DIR/name, a regular file of at most `limit` bytes owned by RUN_DIR's
    owner, never through a link, never blocking. FileNotFoundError when it is not there."""
    dir_fd, owner = _open_run_dir(run_dir)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            raise
        except OSError as error:
            shown = "a symbolic link" if error.errno == errno.ELOOP else error.strerror
            raise Untrusted(f"{name} in RUN_DIR is not trusted: {shown}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{name} in RUN_DIR is not trusted: {_kind(st.st_mode)}")
        if st.st_uid != owner:
            raise Untrusted(f"{name} in RUN_DIR is not trusted: owned by uid {st.st_uid}, "
                            f"RUN_DIR by uid {owner}")
        if st.st_nlink != 1:
            raise Untrusted(f"{name} in RUN_DIR is not trusted: it has {st.st_nlink} names "
                            "(a hard link)")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise Untrusted(f"{name} in RUN_DIR is not trusted: larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def write_run_file(run_dir: os.PathLike | str, name: str, data: bytes) -> None:
    """Replace RUN_DIR/name with `data` (a new file, renamed into place), only when this user
    owns RUN_DIR: never through a link, never into another user's folder (root running a
    probe there)."""
    dir_fd, owner = _open_run_dir(run_dir)
    try:
        if owner != os.geteuid():
            raise Untrusted(f"RUN_DIR is owned by uid {owner}, not by this user")
        temporary = f".{name}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            os.unlink(temporary, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def read_run_json(run_dir: os.PathLike | str, name: str, limit: int):
    """RUN_DIR/name parsed as JSON (read as read_run_file does), nested at most
    MAX_JSON_DEPTH deep. Untrusted for anything else; FileNotFoundError when absent."""
    import json  # not at the top: the health check reads no JSON, and json imports re

    data = read_run_file(run_dir, name, limit)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise Untrusted(f"{name} in RUN_DIR is not valid JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise Untrusted(f"{name} in RUN_DIR is nested deeper than {MAX_JSON_DEPTH}")
    return value


def _depth(value, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def default_run_dir(target_dir: str) -> str:
    """One private folder per user and watched folder (its real path), so two instances never
    share one."""
    # crc32, not hashlib: every program reads settings, and OpenSSL costs megabytes of memory.
    # Imported here: the health probes (RUN_DIR set, as in the image) never need it.
    import zlib

    digest = f"{zlib.crc32(target_dir.encode(errors='surrogateescape')):08x}"
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(os.path.realpath(base), f"rasa-model-rotator-{os.getuid()}-{digest}")


def run_dir_of(env) -> str:
    """RUN_DIR as worker/settings.py resolves it, without checking anything else: the real
    path of the folder holding RUN_DIR (its last name kept, never followed), or the default
    for TARGET_DIR. For the health check, which must not pay for reading every setting."""
    raw = env.get("RUN_DIR", "")
    if not raw:
        return default_run_dir(os.path.realpath(env.get("TARGET_DIR", "models") or "."))
    head, last = os.path.split(raw.rstrip("/") if raw != "/" else raw)
    if last in ("", ".", ".."):
        return os.path.realpath(raw)
    return os.path.join(os.path.realpath(head or "."), last)


def read_control_password(run_dir: os.PathLike | str) -> str | None:
    """The control password, or None. Read as anything in RUN_DIR is: root running `status`
    or `supervisorctl` on the image user's RUN_DIR never sends the content of a file that user
    linked there."""
    try:
        password = read_run_file(run_dir, CONTROL_PASSWORD_FILE, 256).decode("ascii").strip()
    except (OSError, Untrusted, UnicodeDecodeError):
        return None
    return password if password.isalnum() else None


def control_credentials(run_dir: os.PathLike | str) -> tuple[str, str, str]:
    """(server URL, username, password) for this instance's supervisord, or for the one named
    by SUPERVISOR_SERVER_URL (with SUPERVISOR_USERNAME/SUPERVISOR_PASSWORD, as supervisord
    gives its children)."""
    url = os.environ.get("SUPERVISOR_SERVER_URL")
    if url:
        return (url, os.environ.get("SUPERVISOR_USERNAME", ""),
                os.environ.get("SUPERVISOR_PASSWORD", ""))
    return (f"unix://{os.path.join(run_dir, 'supervisor.sock')}", CONTROL_USERNAME,
            read_control_password(run_dir) or "")
