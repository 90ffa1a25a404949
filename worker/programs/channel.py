"""The channel from the reader to the rotator: a multiprocessing manager serving a queue on a
Unix socket in RUN_DIR, guarded by a random key that is written 0600 and never logged.

The rotator serves the queue and consumes it in-process, so no consumer blocked in a remote
get() can be killed (such a kill makes the manager drop the next item). Events are hints: the
rotator reconciles the whole folder at every start, and the reader asks for a rescan whenever
it may have missed something, so nothing is lost when either side dies.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import threading
from multiprocessing.managers import BaseManager, BaseProxy, RemoteError
from pathlib import Path

# Messages (plain tuples, pickled by the manager):
#   ("arrived", [(name, wall_time), ...])   close_write / moved_to on model names
#   ("rescan", reason)                      events may have been missed: look at everything
ARRIVED = "arrived"
RESCAN = "rescan"

KEY_BYTES = 32
# A rescan reason longer than this is not the reader's.
MAX_REASON_CHARS = 1000


def malformed(message) -> str:
    """Why `message` is not one of the messages above ("" when it is one).

    Exact types only: a subclass could bring its own __eq__ or __iter__. Says what was wrong
    without repeating the message, which may be large or hostile."""
    if type(message) is not tuple or len(message) != 2:
        return f"not a (kind, payload) pair but {_shape(message)}"
    kind, payload = message
    if type(kind) is str and kind == ARRIVED:
        if type(payload) not in (list, tuple):
            return f"'arrived' needs a list of (name, time), not {_shape(payload)}"
        for index, entry in enumerate(payload):
            if type(entry) is not tuple or len(entry) != 2:
                return f"'arrived' entry {index} is not a (name, time) pair but {_shape(entry)}"
            name, when = entry
            if type(name) is not str or not name or name in (".", "..") or "/" in name \
                    or "\0" in name:
                return f"'arrived' entry {index} has no plain file name ({_shape(name)})"
            if type(when) not in (int, float) or not math.isfinite(when):
                return f"'arrived' entry {index} has no finite time ({_shape(when)})"
        return ""
    if type(kind) is str and kind == RESCAN:
        if type(payload) is not str or len(payload) > MAX_REASON_CHARS:
            return f"'rescan' needs a short text as its reason, not {_shape(payload)}"
        return ""
    return f"unknown kind {_shape(kind)}"


def _shape(value) -> str:
    """A short, safe description of a value: its type, and its size or a short form."""
    kind = type(value).__name__
    if type(value) in (int, float, bool) or value is None:
        return f"{kind} {value!r}"
    if type(value) is str:
        return f"str {value[:40]!r}" + ("..." if len(value) > 40 else "")
    try:
        return f"{kind} of {len(value)} items"
    except Exception:  # no len(), or a hostile one
        return kind


class ChannelError(RuntimeError):
    pass


class _ServingManager(BaseManager):
    pass


class _ConnectingManager(BaseManager):
    pass


_ConnectingManager.register("get_queue")


def _key_path(run_dir: Path) -> Path:
    return run_dir / "queue.key"


def _socket_path(run_dir: Path) -> Path:
    return run_dir / "queue.sock"


def _write_new_key(run_dir: Path) -> bytes:
    key = os.urandom(KEY_BYTES)
    temporary = run_dir / f".queue.key.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(temporary, _key_path(run_dir))
    return key


def _claim_socket_path(path: Path) -> None:
    """Remove a socket file left by a killed server, but only once a connect is refused."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    except FileNotFoundError:
        return
    finally:
        probe.close()
    raise ChannelError(f"another rotator is already serving {path}: is RUN_DIR shared?")


class QueueServer:
    """Serves `self.queue` to readers; get() from it directly, in this process."""

    def __init__(self, run_dir: Path):
        self.queue: queue.Queue = queue.Queue()
        self.socket_path = _socket_path(run_dir)
        _claim_socket_path(self.socket_path)
        key = _write_new_key(run_dir)
        served = self.queue
        _ServingManager.register("get_queue", callable=lambda: served)
        self._server = _ServingManager(address=str(self.socket_path), authkey=key).get_server()
        # Only the accept loop: serve_forever() would also wake up every second to poll its
        # stop flag, and an idle rotator should not wake at all. serve_forever() creates the
        # flag that each client's thread checks between requests; so must we.
        self._server.stop_event = threading.Event()
        threading.Thread(target=self._server.accepter, name="queue-accept", daemon=True).start()

    def close(self) -> None:
        self._server.listener.close()
        self.socket_path.unlink(missing_ok=True)


class QueueClient:
    """The reader's end. send() returns False when the rotator is not there right now."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._proxy = None

    @property
    def address(self) -> str:
        return str(_socket_path(self.run_dir))

    def connect(self) -> None:
        """Raise OSError/ChannelError unless a rotator answers with the current key."""
        # Trap: BaseProxy keeps one connection per thread per address in a class-level
        # cache. After the server restarts, every new proxy would reuse the dead connection
        # and fail with BrokenPipeError forever (CPython gh-78947, gh-86320): drop it first.
        BaseProxy._address_to_local.pop(self.address, None)
        self._proxy = None
        try:
            key = _key_path(self.run_dir).read_bytes()
        except FileNotFoundError:
            raise ChannelError("the rotator has not started yet (no queue key)") from None
        manager = _ConnectingManager(address=self.address, authkey=key)
        try:
            manager.connect()
            self._proxy = manager.get_queue()
        except (EOFError, BrokenPipeError) as error:
            raise ChannelError(f"the rotator closed the connection ({error!r})") from None
        except Exception as error:  # AuthenticationError: the key changed under us
            if isinstance(error, OSError):
                raise
            raise ChannelError(f"the rotator refused the connection ({type(error).__name__})") \
                from None

    def send(self, message: tuple) -> bool:
        if self._proxy is None:
            return False
        try:
            self._proxy.put(message)
            return True
        except (OSError, EOFError, RemoteError):
            self._proxy = None
            return False
