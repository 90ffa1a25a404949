"""Hostile input and hostile neighbours (issue 9): links planted by another user, crafted
messages on the queue, file names that try to forge log lines, ports already taken.

Everything runs for real: `python -m worker` and its programs, another user (uid 1000, through
`setpriv`) planting links in a shared sticky folder, a client holding the real queue key.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import (
    PROJECT_ROOT,
    free_port,
    model_bytes,
    set_mtime,
    tool_environment,
    wait_for,
    wait_for_latest,
)
from worker.logs import printable
from worker.programs.channel import QueueClient
from worker.settings import SettingError, default_run_dir, prepare_folders, read_settings

OTHER_UID = 1000


def as_other_user(*command: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to act as another user (setpriv), as CI has")
    subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
                    *command], check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp():
    """A folder like /tmp: sticky and writable by everyone, so uid 1000 can plant links."""
    folder = Path(tempfile.mkdtemp(prefix="rmr-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def victim(tmp_path):
    """A root-owned folder that the tool must never chmod nor write into."""
    folder = tmp_path / "victim"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "precious").write_text("root's")
    return folder


def run_worker(tmp_path, *args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=tmp_path,
                          env=env or tool_environment(tmp_path), capture_output=True,
                          timeout=timeout)


def default_run_dir_env(tmp_path, shared: Path, monkeypatch) -> tuple[dict, Path]:
    """The environment of an instance using the default RUN_DIR in `shared`, and that path."""
    env = tool_environment(tmp_path)
    del env["RUN_DIR"]
    env.pop("XDG_RUNTIME_DIR", None)
    env["TMPDIR"] = str(shared)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(shared))
    return env, default_run_dir(Path(os.path.realpath(tmp_path / "models")))


def assert_untouched(victim: Path) -> None:
    assert oct(victim.stat().st_mode & 0o7777) == "0o755", "the victim folder was chmod-ed"
    assert sorted(p.name for p in victim.iterdir()) == ["precious"], "something written there"


def one_line_refusal(result, name: str) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, stderr, result.stdout)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rasa-model-rotator: {name}="), lines[0]
    return lines[0]


# -- RUN_DIR: never a planted link, never another user's folder -----------------------------

def test_a_link_planted_at_the_default_run_dir_is_refused(tmp_path, shared_tmp, victim,
                                                           monkeypatch):
    env, run_dir = default_run_dir_env(tmp_path, shared_tmp, monkeypatch)
    as_other_user("ln", "-s", str(victim), str(run_dir))
    assert run_dir.lstat().st_uid == OTHER_UID
    line = one_line_refusal(run_worker(tmp_path, env=env), "RUN_DIR")
    assert "symbolic link" in line
    assert_untouched(victim)
    assert not (tmp_path / "models").exists(), "refused, yet something was created"


def test_a_dangling_link_at_run_dir_is_a_one_line_refusal(tmp_path, shared_tmp, monkeypatch):
    env, run_dir = default_run_dir_env(tmp_path, shared_tmp, monkeypatch)
    target = shared_tmp / "not-yet"
    as_other_user("ln", "-s", str(target), str(run_dir))
    for command in ((), ("once",), ("rotator",)):
        line = one_line_refusal(run_worker(tmp_path, *command, env=env), "RUN_DIR")
        assert "symbolic link" in line
    assert not target.exists() and not os.path.lexists(tmp_path / "models")


def test_a_run_dir_made_by_another_user_is_refused(tmp_path, shared_tmp, monkeypatch):
    env, run_dir = default_run_dir_env(tmp_path, shared_tmp, monkeypatch)
    as_other_user("mkdir", "-m", "0777", str(run_dir))
    line = one_line_refusal(run_worker(tmp_path, env=env), "RUN_DIR")
    assert f"owned by uid {OTHER_UID}" in line
    assert not (run_dir / "queue.key").exists() and not (run_dir / "supervisor.sock").exists()


def test_a_link_planted_after_the_check_is_still_never_followed(tmp_path, shared_tmp, victim,
                                                                monkeypatch):
    """Between reading the settings and creating RUN_DIR, a link appears: creating it must
    open the folder without following links, and check and chmod what it opened."""
    _, run_dir = default_run_dir_env(tmp_path, shared_tmp, monkeypatch)
    settings = read_settings({"TARGET_DIR": str(tmp_path / "models")})
    assert settings.run_dir == run_dir
    as_other_user("ln", "-s", str(victim), str(run_dir))
    with pytest.raises(SettingError, match="^RUN_DIR=.*symbolic link"):
        prepare_folders(settings)
    assert_untouched(victim)


def test_status_run_by_root_reads_the_run_dir_of_the_programs_user(tmp_path):
    """`docker exec <c> python -m worker status` is root; the programs run as uid 1000."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, OTHER_UID, OTHER_UID)
    env = tool_environment(tmp_path)
    result = run_worker(tmp_path, "status", "--json", env=env)
    assert result.returncode == 1, result.stderr  # no supervisord: unhealthy, but it answers
    report = json.loads(result.stdout)
    assert report["problems"][0] == ("supervisord is not running (no programs.state in "
                                     f"RUN_DIR {run_dir})"), report
    # Never for the programs, which write there.
    for command in ((), ("once",), ("rotator",), ("reader",)):
        line = one_line_refusal(run_worker(tmp_path, *command, env=env), "RUN_DIR")
        assert f"owned by uid {OTHER_UID}" in line


# -- the queue: a crafted message never crashes the rotator --------------------------------

GARBAGE = [
    42, None, "arrived", b"arrived", ["arrived", []], ("arrived",), ("arrived", [], 3),
    ("unknown", []), (("arrived",), []), ("arrived", "m.tar.gz"), ("arrived", {"m": 1.0}),
    ("arrived", [("m.tar.gz",)]), ("arrived", [("m.tar.gz", "now")]),
    ("arrived", [("m.tar.gz", float("nan"))]), ("arrived", [("m.tar.gz", float("inf"))]),
    ("arrived", [("m.tar.gz", True)]), ("arrived", [(b"m.tar.gz", 1.0)]),
    ("arrived", [(None, 1.0)]), ("arrived", [("../etc/passwd", 1.0)]),
    ("arrived", [("ok.tar.gz", 1.0), 7]), ("rescan", 5), ("rescan", None),
    ("rescan", "x" * 100_000), ("arrived", [["m.tar.gz", 1.0]]),
]


def test_crafted_queue_messages_are_dropped_and_publishing_goes_on(start_tool, tmp_path, models):
    tool = start_tool()
    tool.ready()
    rotator = tool.program_pid("rotator")
    client = QueueClient(tmp_path / "run")
    client.connect()
    start = tool.line_count()
    for message in GARBAGE:
        assert client.send(message), message
    wait_for(lambda: sum("dropped a message from the queue" in line
                         for line in tool.lines[start:]) == len(GARBAGE),
             message=f"one warning per crafted message\n{tool.output}")
    dropped = [line for line in tool.lines[start:] if "dropped a message" in line]
    assert all(" rotator WARNING " in line for line in dropped)
    assert all(len(line) < 300 for line in dropped), "the message itself was repeated"
    # A real model is still published, by the same rotator process.
    model = models / "20261126-101010-brave-fox.tar.gz"
    model.write_bytes(model_bytes())
    wait_for_latest(models, model.read_bytes(),
                    message=f"the model published\n{tool.output}")
    assert tool.program_pid("rotator") == rotator
    assert "Traceback" not in tool.output
    # And the reader's real messages still count.
    assert client.send(("rescan", "a real reason"))
    tool.wait_for_line("rescan requested: a real reason", after=start)


# -- names in logs ---------------------------------------------------------------------------

FORGED = "2026-01-01T00:00:00.000Z rotator INFO published forged.tar.gz"


def hostile_names(models: Path) -> tuple[bytes, bytes]:
    """Two whole models: one whose name carries a newline and a forged log line (older, so
    it is deleted), one whose name is not UTF-8 (newer, so it is published)."""
    forged = os.fsencode(models) + b"/x\n" + FORGED.encode() + b"\x1b[2J\\.tar.gz"
    raw = os.fsencode(models) + b"/\xff\xfe.tar.gz"
    for index, path in enumerate((forged, raw)):
        with open(path, "wb") as out:
            out.write(model_bytes(model_id=f"m{index}"))
        os.utime(path, (time.time() - 120 + index * 60,) * 2)
    return forged, raw


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_file_names_never_forge_a_log_line(tmp_path, models, log_format):
    forged, raw = hostile_names(models)
    env = tool_environment(tmp_path, LOG_FORMAT=log_format)
    result = run_worker(tmp_path, "once", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    text = output.decode("utf-8")  # strict: the output is valid UTF-8
    assert "Logging error" not in text and "Traceback" not in text
    lines = text.splitlines()
    assert not any(line.startswith("2026-01-01") or "\x1b" in line for line in lines), text
    assert (models / "latest.tar.gz").read_bytes() == Path(os.fsdecode(raw)).read_bytes()
    assert not os.path.lexists(forged), "the older model was not pruned"
    escaped_forged = printable(os.fsdecode(forged))
    escaped_raw = printable(os.fsdecode(raw))
    assert "\\n2026-01-01T00:00:00.000Z" in escaped_forged and "\\x1b[2J\\\\.tar" in escaped_forged
    assert escaped_raw.endswith("/\\xff\\xfe.tar.gz")
    if log_format == "text":
        assert any("published " + escaped_raw in line for line in lines), text
        assert any("deleted " + escaped_forged in line for line in lines), text
    else:
        entries = [json.loads(line) for line in lines]
        assert all(isinstance(entry, dict) for entry in entries)
        messages = [entry["message"] for entry in entries]
        assert any(m.startswith("published " + escaped_raw) for m in messages), messages
        assert any(m.startswith("deleted " + escaped_forged) for m in messages), messages


def test_a_forged_name_in_the_running_tools_log(start_tool, models):
    """The same through supervisord: the reader's and rotator's lines as they reach stdout."""
    tool = start_tool()
    tool.ready()
    start = tool.line_count()
    name = "y\n" + FORGED.replace("forged", "forged2") + ".tar.gz"
    (models / name).write_bytes(model_bytes())
    wait_for_latest(models, (models / name).read_bytes())
    published = tool.wait_for_line("INFO published", after=start)
    assert printable(str(models / name)) in published
    assert not any(line.startswith("2026-01-01") for line in tool.lines), tool.output


@pytest.mark.parametrize("text, shown", [
    ("plain name.tar.gz", "plain name.tar.gz"),
    ("rosé-ünïcode.tar.gz", "rosé-ünïcode.tar.gz"),
    ("a\nb", "a\\nb"), ("a\rb\tc", "a\\rb\\tc"), ("\x1b[31m", "\\x1b[31m"),
    ("\x00\x7f", "\\x00\\x7f"),
    ("back\\slash", "back\\\\slash"), ("\\n", "\\\\n"),
    ("\x85", "\\u0085"), ("\u2028\u2029", "\\u2028\\u2029"), ("\u202eevil", "\\u202eevil"),
    (os.fsdecode(b"\xff\x80"), "\\xff\\x80"), ("\ud800", "\\ud800"),
    ("no\u00a0break", "no\\u00a0break"), ("\U000e0001", "\\U000e0001"),
])
def test_printable_escapes_unambiguously(text, shown):
    assert printable(text) == shown
    assert printable(text).isprintable()
    printable(text).encode("utf-8")  # never a lone surrogate


def test_printable_never_makes_two_names_look_alike():
    """A byte that is not UTF-8 (\\xff), the character U+00FF, a real backslash followed by
    "xff", and the C1 control U+0085 versus the byte 0x85: all shown differently."""
    names = [os.fsdecode(b"\xff"), "\u00ff", "\\xff", "\x85", os.fsdecode(b"\x85"), "\\x85",
             "\\\\xff"]
    shown = [printable(name) for name in names]
    assert len(set(shown)) == len(names), shown


# -- ports ------------------------------------------------------------------------------------

def busy_port(address="127.0.0.1") -> socket.socket:
    holder = socket.socket()
    holder.bind((address, 0))
    holder.listen()
    return holder


def test_a_metrics_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    with busy_port("0.0.0.0") as holder:
        port = holder.getsockname()[1]
        result = run_worker(tmp_path, env=tool_environment(tmp_path, METRICS_PORT=str(port)))
    line = one_line_refusal(result, "METRICS_PORT")
    assert f"METRICS_PORT='{port}'" in line and "METRICS_BIND 0.0.0.0" in line
    assert not (tmp_path / "run" / "supervisor.sock").exists()
    assert not (tmp_path / "models").exists()


def test_a_metrics_bind_address_not_of_this_host_is_one_line(tmp_path):
    env = tool_environment(tmp_path, METRICS_PORT="9", METRICS_BIND="192.0.2.1")  # TEST-NET-1
    line = one_line_refusal(run_worker(tmp_path, env=env), "METRICS_BIND")
    assert "an address of this host" in line


def test_the_rotator_publishes_without_metrics_when_its_port_is_taken(tmp_path, models):
    """The port free at start and taken by the time the rotator binds (or a restart after
    someone took it): one line, then publishing as ever; never a crash loop."""
    model = models / "a.tar.gz"
    model.write_bytes(model_bytes())
    set_mtime(model, time.time() - 60)
    with busy_port() as holder:
        port = holder.getsockname()[1]
        env = tool_environment(tmp_path, METRICS_PORT=str(port), METRICS_BIND="127.0.0.1")
        rotator = subprocess.Popen([sys.executable, "-m", "worker", "rotator"], cwd=tmp_path,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            wait_for_latest(models, model.read_bytes())
            time.sleep(0.5)
            assert rotator.poll() is None, "the rotator ended"
        finally:
            rotator.terminate()
            output = rotator.communicate(timeout=20)[0]
    lines = [line for line in output.splitlines() if "METRICS_PORT" in line]
    assert len(lines) == 1, output
    assert f"METRICS_PORT={port} cannot be served on METRICS_BIND 127.0.0.1" in lines[0]
    assert "publishing without metrics" in lines[0]
    assert "Traceback" not in output


def test_metrics_listen_only_on_metrics_bind(start_tool):
    with busy_port() as probe:
        port = probe.getsockname()[1]
    tool = start_tool(METRICS_PORT=str(port), METRICS_BIND="127.0.0.2")
    tool.ready()
    body = wait_for(lambda: _fetch(f"http://127.0.0.2:{port}/metrics"))
    assert "rotator_publishes_total" in body
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


# -- settings that used to pass and fail later -------------------------------------------------

def test_the_largest_allowed_delays_do_not_break_the_rotator(start_tool, models):
    """THROTTLE_DELAY and RESCAN_INTERVAL at their bounds: the rotator takes events and waits,
    as with small values (larger ones gave OverflowError at the first event)."""
    tool = start_tool(THROTTLE_DELAY="86400000", RESCAN_INTERVAL="604800",
                      BROKEN_GRACE_PERIOD="2592000", LOG_LEVEL="DEBUG")
    tool.ready()
    rotator = tool.program_pid("rotator")
    (models / "a.tar.gz").write_bytes(model_bytes())
    tool.wait_for_line("arrived: a.tar.gz")
    time.sleep(1.5)
    assert tool.program_pid("rotator") == rotator
    assert "Traceback" not in tool.output and "Error" not in tool.output


def test_an_ignore_entry_outside_target_dir_is_said_at_start(tmp_path, models):
    env = tool_environment(tmp_path, IGNORE_FILE_PATHS=f"{models}/keep.tar.gz,{tmp_path}/x.tar.gz")
    result = run_worker(tmp_path, "once", env=env)
    assert result.returncode == 0
    lines = [line for line in result.stdout.decode().splitlines() if "IGNORE_FILE_PATHS" in line]
    assert len(lines) == 1, result.stdout
    assert " WARNING IGNORE_FILE_PATHS entry " in lines[0] and "x.tar.gz" in lines[0]
    assert "protects nothing" in lines[0]


def _unescape(shown: str) -> str:
    """The inverse of printable(), written independently: proves nothing is ambiguous."""
    import re

    def one(match):
        escape = match.group(0)
        if escape in ("\\\\", "\\n", "\\r", "\\t"):
            return {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t"}[escape]
        code = int(escape[2:], 16)
        if escape[1] == "x" and code >= 0x80:
            return chr(0xDC00 + code)  # a byte that was not UTF-8
        return chr(code)

    return re.sub(r"\\(?:[\\nrt]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})", one, shown)


def test_printable_is_one_line_utf8_and_reversible():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    names = st.one_of(st.text(), st.binary().map(os.fsdecode))

    @settings(max_examples=3000, deadline=None)
    @given(names)
    def check(text):
        shown = printable(text)
        assert "\n" not in shown and "\r" not in shown and shown.isprintable()
        shown.encode("utf-8")
        assert _unescape(shown) == text

    check()


# -- issue 18: a flood of connections under a process limit ---------------------------------

DEBIAN_PYTHON = "/usr/bin/python3.11"
FLOOD_UID = 1818  # a uid of its own: RLIMIT_NPROC counts every process and thread of a uid
PROCESS_LIMIT = 200  # supervisord needs 200 (minprocs); the tool runs about 20; a thread per
#                     connection needs 300 more


def test_a_flood_of_connections_under_a_process_limit_never_stops_publishing(start_tool):
    """Item 1: with RLIMIT_NPROC for the tool's uid, waves of idle connections to
    MODEL_SERVER_PORT made `can't start new thread` escape the model server's accept loop;
    after five crashes the guard shut supervisord down and nothing was published any more.
    /healthz must answer while every connection place is held."""
    if os.geteuid() != 0:
        pytest.fail("needs root to run the tool as a uid of its own (setpriv), as CI has")
    home = Path(tempfile.mkdtemp(prefix="rmr-flood-", dir="/tmp"))
    try:
        models = home / "models"
        models.mkdir()
        for folder in (home, models):
            os.chown(folder, FLOOD_UID, FLOOD_UID)
        port = free_port()
        if not os.path.exists(DEBIAN_PYTHON):
            pytest.fail(f"needs {DEBIAN_PYTHON}, a Python 3.11 that uid {FLOOD_UID} can run")
        # Our venv's interpreter may sit in a folder only root can enter; its pure-Python
        # packages (supervisor, inotify_simple) are read through PYTHONPATH.
        packages = sysconfig.get_paths()["purelib"]
        tool = start_tool(
            workdir=home, RUN_DIR=str(home / "run"), MODEL_SERVER_PORT=str(port),
            MODEL_SERVER_BIND="127.0.0.1", python=DEBIAN_PYTHON,
            PYTHONPATH=os.pathsep.join((str(PROJECT_ROOT), packages)),
            prefix=("prlimit", f"--nproc={PROCESS_LIMIT}", "setpriv", f"--reuid={FLOOD_UID}",
                    f"--regid={FLOOD_UID}", "--clear-groups"))
        tool.ready(60)
        tool.wait_for_line("model-server INFO serving", 60)
        for wave in range(5):
            idle = []
            try:
                for _ in range(300):  # more than the server's 256 places
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                time.sleep(1)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=30) as answer:
                    assert answer.status == 200, f"wave {wave}"
            finally:
                for sock in idle:
                    sock.close()
        time.sleep(2)  # the guard's verdict on any crash comes within supervisord's tick
        assert tool.process.poll() is None, tool.output
        data = model_bytes(model_id="after-the-flood")
        (models / "20261202-030000-after.tar.gz").write_bytes(data)
        wait_for_latest(models, data, 60,
                        message=f"published after the flood\n{tool.output}")
        assert "can't start new thread" not in tool.output
        assert "shutting down supervisord" not in tool.output
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- issue 18, items 4 and 5: `status` over a RUN_DIR it cannot trust -------------------------

FAKE_SUPERVISORD = r'''
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(5)
member = "<member><name>{}</name><value><{}>{}</{}></value></member>"
def process(name):
    return ("<value><struct>" + member.format("name", "string", name, "string")
            + member.format("statename", "string", "RUNNING", "string")
            + member.format("pid", "int", os.getpid(), "int")
            + member.format("description", "string", "fake", "string") + "</struct></value>")
body = ('<?xml version="1.0"?><methodResponse><params><param><value><array><data>'
        + process("reader") + process("rotator") + "</data></array></value></param></params>"
        "</methodResponse>").encode()
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(5)
    data = b""
    try:
        while b"</methodCall>" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    with open(log, "ab") as out:
        out.write(data + b"\n----\n")
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n" + body)
    conn.close()
'''


def test_root_s_status_trusts_nothing_the_run_dir_s_owner_planted(tmp_path, shared_tmp):
    """Item 4: uid 1000 linked `supervisor.password` to a root-only file and served
    `supervisor.sock` itself: root's `status` sent that file as the Basic password. It also
    printed a root-only file behind a linked `rasa-replicas.json` and hung on a FIFO at
    `rotator.state`. Now `status` sends nothing to supervisord (it reads `programs.state`),
    so nothing reaches a socket uid 1000 serves, and it reads no password at all.
    (root's `python -m worker supervisorctl` refuses another user's RUN_DIR outright.)"""
    if os.geteuid() != 0 or not os.path.exists(DEBIAN_PYTHON):
        pytest.fail(f"needs root and {DEBIAN_PYTHON} (for uid {OTHER_UID}), as CI has")
    run_dir = shared_tmp / "run"
    run_dir.mkdir(mode=0o700)
    secret = tmp_path / "root-only"
    secret.write_text("RootOnlySecret42")
    secret.chmod(0o600)
    listing = tmp_path / "root-only.json"
    listing.write_text(json.dumps([{"url": "http://root-only-host:5005", "state": "in-sync"}]))
    listing.chmod(0o600)
    (run_dir / "supervisor.password").symlink_to(secret)
    (run_dir / "programs.state").symlink_to(secret)
    (run_dir / "rasa-replicas.json").symlink_to(listing)
    os.mkfifo(run_dir / "rotator.state")
    for name in ("supervisor.password", "programs.state", "rasa-replicas.json",
                 "rotator.state", ""):
        os.lchown(run_dir / name, OTHER_UID, OTHER_UID)
    log = run_dir / "requests.log"
    server = subprocess.Popen(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups",
         DEBIAN_PYTHON, "-c", FAKE_SUPERVISORD, str(run_dir / "supervisor.sock"), str(log)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        env = tool_environment(tmp_path, RUN_DIR=str(run_dir))

        def root_status():
            shown = [run_worker(tmp_path, "status", *args, env=env) for args in (("--json",), ())]
            for result in shown:
                assert result.returncode == 1, result.stdout + result.stderr
                assert b"Traceback" not in result.stderr, result.stderr
            return b"".join(r.stdout + r.stderr for r in shown).decode()

        output = root_status()
        assert not log.exists(), log.read_bytes()  # status calls nobody
        assert "RootOnlySecret42" not in output and "root-only-host" not in output
        assert "programs.state in RUN_DIR is not trusted: a symbolic link" in output
        # A programs.state uid 1000 wrote, naming root's processes: not theirs, not healthy.
        (run_dir / "programs.state").unlink()
        (run_dir / "programs.state").write_text(
            f"supervisord {os.getpid()}\nrotator RUNNING {os.getpid()} 1.0\n")
        os.chown(run_dir / "programs.state", OTHER_UID, OTHER_UID)
        output += root_status()
        assert (f"supervisord is not running (pid {os.getpid()} runs as uid 0, RUN_DIR is "
                f"owned by uid {OTHER_UID})") in output
        assert not log.exists(), log.read_bytes()
    finally:
        server.kill()
        server.wait(10)
    assert "RootOnlySecret42" not in output
    assert "root-only-host" not in output
    assert "rasa-replicas.json in RUN_DIR is not trusted: a symbolic link" in output


def test_status_over_garbage_in_its_own_run_dir(start_tool, tmp_path):
    """Item 5: nested `[`, `"bytes": 1e999`, a text `converged_at`, `last_error_at: 1e300`
    made tracebacks, a FIFO made `status` hang. Each is survived, and said."""
    tool = start_tool()
    tool.ready()
    wait_for(lambda: run_worker(tmp_path, "status", env=tool.env).returncode == 0, 60,
             message="healthy first")
    rotator = tool.program_pid("rotator")
    run_dir = Path(tool.env["RUN_DIR"])
    nested = "[" * 100_000
    cases = [
        ("rotator.state", nested),
        ("rotator.state", f"pid={rotator} phase=reconciling since=1.0 reconciles=1 bytes=1e999"),
        ("rotator.state", f"pid={rotator} phase=idle since=soon reconciles=1 bytes=-1"),
        ("rotator.state", f"pid={rotator} phase=idle since=1e999 reconciles=1 bytes=0"),
        ("rotator.state", json.dumps({"pid": rotator, "phase": "idle", "since": 1.0})),
        ("rotator.state", "fifo"),
        ("rotator.state", "x" * 100_000),
        ("rasa-replicas.json", nested),
        ("rasa-replicas.json", json.dumps([{
            "url": "http://rasa:5005", "state": "in-sync", "converged_at": "yesterday",
            "checked_at": 1e300, "last_error": "boom\nINFO forged", "last_swap": {
                "status": "x", "outcome": 7, "duration_s": "slow", "at": 1.7e9}}]
            ).replace('"checked_at": 1e+300', '"checked_at": 1e300, "last_error_at": 1e300')),
        ("rasa-replicas.json", json.dumps([{"url": 5}, "x", None, {"url": "http://ok:1",
                                           "training_jobs": 1e999}]).replace("Infinity", "1e999")),
        ("rasa-replicas.json", "fifo"),
        # remote-storage.json (REMOTE_STORAGE): read by every `status`, on or off.
        ("remote-storage.json", nested),
        ("remote-storage.json", json.dumps({
            "bucket": "b", "key": ["k"], "endpoint": 7, "state": "failing\nINFO forged",
            "checked_at": "now", "last_error": "boom\nINFO forged", "last_error_at": 1e300,
            "last_upload": {"key": None, "size": "big", "duration_s": -1, "at": 1.7e9}})),
        ("remote-storage.json", "fifo"),
    ]
    for name, content in cases:
        path = run_dir / name
        path.unlink(missing_ok=True)
        if content == "fifo":
            os.mkfifo(path)
        else:
            path.write_text(content)
        for args in ((), ("--json",)):
            result = run_worker(tmp_path, "status", *args, env=tool.env)
            shown = (result.stdout + result.stderr).decode()
            assert "Traceback" not in shown, (name, content[:80], shown)
            assert result.returncode in (0, 1), shown
            assert "\nINFO forged" not in shown
            if args:
                json.loads(result.stdout)
        path.unlink()


def test_status_over_a_publish_record_with_fields_of_the_wrong_type(tmp_path, models):
    """Item 5, the same for the record beside latest.tar.gz: it describes the file (inode,
    size, mtime) but its other fields are not what they should be. No traceback; the
    record's fields are not shown."""
    latest = models / "latest.tar.gz"
    latest.write_bytes(model_bytes(model_id="m"))
    st = latest.stat()
    record = {"source": 7, "source_size": 1, "source_mtime_ns": "soon", "source_inode": 1,
              "arrived_at": 1.0, "published_at": 1e300, "latest_size": st.st_size,
              "latest_mtime_ns": st.st_mtime_ns, "latest_inode": st.st_ino,
              "duration_s": "slow", "model_id": ["m"], "trained_at": None}
    (models / ".latest.tar.gz.json").write_text(json.dumps(record))
    for args in ((), ("--json",)):
        result = run_worker(tmp_path, "status", *args)
        assert result.returncode == 1, result.stderr
        assert b"Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["published"]["size"] == st.st_size
