"""The manager-queue channel and its three traps, with real processes killed by SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import PROJECT_ROOT, wait_for
from worker.programs.channel import ChannelError, QueueClient, QueueServer

# A stand-in rotator: serves the queue and prints each message it receives.
SERVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from worker.programs.channel import QueueServer
    server = QueueServer(Path(sys.argv[1]))
    print("serving", flush=True)
    while True:
        print(repr(server.queue.get()), flush=True)
""")


class ServerProcess:
    def __init__(self, run_dir):
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(run_dir)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        first = self.process.stdout.readline().strip()
        assert first == "serving", first

    def next_message(self) -> str:
        return self.process.stdout.readline().strip()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    return folder


def connected_client(run_dir) -> QueueClient:
    client = QueueClient(run_dir)
    client.connect()
    return client


def test_messages_arrive_in_order(run_dir):
    server = ServerProcess(run_dir)
    try:
        client = connected_client(run_dir)
        for index in range(3):
            assert client.send(("arrived", [(f"m{index}.tar.gz", 1.0)]))
        assert [server.next_message() for _ in range(3)] == [
            repr(("arrived", [(f"m{index}.tar.gz", 1.0)])) for index in range(3)]
    finally:
        server.kill()


def test_key_file_is_private_and_changes_per_start(run_dir):
    server = ServerProcess(run_dir)
    key = (run_dir / "queue.key").read_bytes()
    assert oct((run_dir / "queue.key").stat().st_mode & 0o777) == "0o600"
    server.kill()
    server = ServerProcess(run_dir)
    try:
        assert (run_dir / "queue.key").read_bytes() != key
    finally:
        server.kill()


def test_a_wrong_key_is_refused(run_dir):
    server = ServerProcess(run_dir)
    try:
        (run_dir / "queue.key").write_bytes(b"x" * 32)
        with pytest.raises(ChannelError, match="refused"):
            QueueClient(run_dir).connect()
    finally:
        server.kill()


def test_trap2_stale_socket_after_sigkill_is_reclaimed(run_dir):
    server = ServerProcess(run_dir)
    server.kill()
    socket_path = run_dir / "queue.sock"
    assert socket_path.exists(), "SIGKILL should leave the socket file behind"
    # Without the refused-connect check the bind fails with EADDRINUSE.
    server = ServerProcess(run_dir)
    try:
        assert connected_client(run_dir).send(("rescan", "after restart"))
        assert server.next_message() == repr(("rescan", "after restart"))
    finally:
        server.kill()


def test_trap2_a_live_server_socket_is_never_removed(run_dir):
    server = ServerProcess(run_dir)
    try:
        with pytest.raises(ChannelError, match="already serving"):
            QueueServer(run_dir)
        assert connected_client(run_dir).send(("rescan", "still here"))
        assert server.next_message() == repr(("rescan", "still here"))
    finally:
        server.kill()


def test_trap1_reconnect_after_the_server_restarts(run_dir):
    """After a restart, a fresh proxy must not reuse the dead cached connection."""
    server = ServerProcess(run_dir)
    client = connected_client(run_dir)
    assert client.send(("rescan", "one"))
    assert server.next_message() == repr(("rescan", "one"))
    # Anything still holding the old proxy (a traceback, a log record) keeps its thread's
    # cached connection alive; that is when the trap bites.
    lingering = client._proxy
    server.kill()
    assert not client.send(("rescan", "lost")), "a send to a dead server reported success"
    server = ServerProcess(run_dir)
    try:
        # Reconnect from the same thread, as the reader does, several times over.
        for attempt in range(3):
            client.connect()
            assert client.send(("rescan", f"two-{attempt}"))
            assert server.next_message() == repr(("rescan", f"two-{attempt}"))
    finally:
        server.kill()
    del lingering


def test_connect_without_a_server_fails_clearly(run_dir):
    with pytest.raises(ChannelError, match="not started"):
        QueueClient(run_dir).connect()
    server = ServerProcess(run_dir)
    server.kill()
    with pytest.raises(ConnectionRefusedError):
        QueueClient(run_dir).connect()


def test_the_server_does_not_wake_up_when_idle(run_dir):
    server = ServerProcess(run_dir)
    try:
        connected_client(run_dir)
        pid = server.process.pid

        def switches():
            total = 0
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as status:
                    for line in status:
                        if "ctxt_switches" in line:
                            total += int(line.split()[1])
            return total

        wait_for(lambda: switches() > 0)
        before = switches()
        import time
        time.sleep(3)
        # serve_forever() would poll its stop flag once a second: three wake-ups or more.
        assert switches() - before < 3
    finally:
        server.kill()


def test_malformed_tells_what_is_wrong_and_never_raises():
    """Whatever arrives on the queue: a short reason for anything that is not a message the
    reader sends, "" for those it does send, and no exception."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests.test_hostile import GARBAGE
    from worker.programs.channel import malformed

    assert malformed(("arrived", [("m.tar.gz", 1764151815.25), ("n.tar.gz", 0)])) == ""
    assert malformed(("arrived", [])) == ""
    assert malformed(("rescan", "inotify queue overflow")) == ""
    for message in GARBAGE:
        reason = malformed(message)
        assert reason and len(reason) < 200, (message, reason)

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
                        st.binary(), st.sampled_from(["arrived", "rescan"]))
    values = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.tuples(inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=12)

    @settings(max_examples=2000, deadline=None)
    @given(st.one_of(values, st.tuples(st.sampled_from(["arrived", "rescan"]), values)))
    def check(message):
        assert isinstance(malformed(message), str)

    check()
