"""Everyday faults found from outside the process (issue 16, and issue 17 item 4), one plain
regression test per case.

Where the fault is the process tree's (a SIGSTOP, a kill -9, a writer streaming into latest),
the test starts `python -m worker` as a user does and uses real signals and real files; where
it is plain logic over a folder (a touch of latest, a lost or hostile state file, a clock that
ran ahead), it drives the real Reconciler on a temporary folder. Each test waits for a
condition with a generous deadline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    content_of,
    model_bytes,
    model_files,
    run_worker,
    set_mtime,
    settings_in,
    tool_environment,
    wait_for_latest,
    write_model,
)
from worker.folder.arrivals import journal_path
from worker.folder.files import read_record, record_path
from worker.folder.reconcile import Reconciler

DAY = 86_400.0
HOUR = 3600.0


def make_settings(tmp_path: Path, **overrides):
    """This file's default: a 0.3 s debounce."""
    return settings_in(tmp_path, **{"THROTTLE_DELAY": "300", **overrides})


def put_model(folder: Path, name: str, mtime: float | None = None) -> bytes:
    data = model_bytes(20_000, model_id=name)
    path = folder / name
    path.write_bytes(data)
    if mtime is not None:
        set_mtime(path, mtime)
    return data


def move_in(tmp_path: Path, folder: Path, name: str, age_s: float) -> bytes:
    """A rollback: an old model (mtime `age_s` ago) renamed into the folder (moved_to)."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    data = put_model(staging, name, time.time() - age_s)
    os.rename(staging / name, folder / name)
    return data


class LatestHistory(threading.Thread):
    """Reads latest.tar.gz every few milliseconds and keeps each content it held, in order,
    so a test sees a flip back to an older model even if it lasts a few hundred ms."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.held: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            data = content_of(self.path)
            if data is not None and (not self.held or self.held[-1] != data):
                self.held.append(data)
            time.sleep(0.005)

    def stop(self) -> list[bytes]:
        self.stopping.set()
        self.join(10)
        return self.held


# -- 1. a touch of latest is no arrival ----------------------------------------------------

@pytest.mark.parametrize("mode", ["copy", "move"])
def test_a_touch_of_latest_never_makes_a_newer_model_look_older(tmp_path, mode, caplog):
    """Publish A, B arrives, latest is touched 0.2 s later (a touch, rsync or a backup
    restoring times changes no byte): B is published, never deleted as older."""
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, PUBLISH_MODE=mode)
    folder = settings.target_dir
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    a = put_model(folder, "a.tar.gz", clock[0] - 10)
    reconciler.note_arrival("a.tar.gz", clock[0] - 10)
    reconciler.reconcile()
    assert content_of(settings.latest_model_path) == a
    if mode == "copy":
        (folder / "a.tar.gz").unlink()  # the source is gone: latest is known by itself
        reconciler.reconcile()
    clock[0] += 5
    b = put_model(folder, "b.tar.gz", clock[0])
    reconciler.note_arrival("b.tar.gz", clock[0])
    set_mtime(settings.latest_model_path, clock[0] + 0.2)
    clock[0] += 1
    reconciler.reconcile()
    assert content_of(settings.latest_model_path) == b
    assert "written by another program" not in caplog.text
    assert "b.tar.gz: older" not in caplog.text


def test_a_touch_of_latest_seen_by_a_restarted_rotator_is_no_arrival(tmp_path, caplog):
    """The same with a new process: only the record (its digest) says what latest holds."""
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, PUBLISH_MODE="move")
    folder = settings.target_dir
    a = put_model(folder, "a.tar.gz", time.time() - 100)
    Reconciler(settings).reconcile()
    assert content_of(settings.latest_model_path) == a
    b = put_model(folder, "b.tar.gz", time.time() - 50)
    os.utime(settings.latest_model_path)  # touch: now, later than b's time
    Reconciler(settings).reconcile()
    assert content_of(settings.latest_model_path) == b
    assert "written by another program" not in caplog.text


def test_a_touch_with_the_touch_command_from_outside(start_tool, models):
    tool = start_tool(PUBLISH_MODE="move")
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    lines = tool.line_count()
    b = put_model(models, "b.tar.gz")
    time.sleep(0.2)
    subprocess.run(["touch", str(models / "latest.tar.gz")], check=True)
    wait_for_latest(models, b)
    assert "written by another program" not in "\n".join(tool.lines[lines:])


# -- 2. a stopped rotator takes in what the reader saw before it decides -------------------

def test_a_stopped_rotator_keeps_a_rollback_that_arrived_while_it_was_stopped(
        start_tool, tmp_path, models):
    """SIGSTOP (docker pause, a cgroup freeze, a debugger); B arrives, then a rollback R
    (mtime an hour ago) is moved in; the rescan timer (2 s) runs out during the stop. At
    SIGCONT the rotator must take in the reader's news first: R is the last arrival."""
    tool = start_tool(RESCAN_INTERVAL="2")
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    history = LatestHistory(models / "latest.tar.gz")
    history.start()
    rotator = tool.program_pid("rotator")
    os.kill(rotator, signal.SIGSTOP)
    try:
        b = put_model(models, "b.tar.gz")
        time.sleep(0.3)
        r = move_in(tmp_path, models, "r.tar.gz", HOUR)
        time.sleep(4)  # the rescan timer runs out while the rotator is stopped
    finally:
        os.kill(rotator, signal.SIGCONT)
    wait_for_latest(models, r)
    time.sleep(3)  # quiet again (and a rescan later): still R, never back to B
    held = history.stop()
    assert content_of(models / "latest.tar.gz") == r
    assert (models / "r.tar.gz").exists()
    assert b not in held, "latest held B (an arrival older than R) on the way"


# -- 3. a rotator killed -9 loses nothing the reader saw -----------------------------------

def test_a_rotator_killed_within_throttle_delay_keeps_a_rollback(start_tool, tmp_path, models):
    """Publish A; B arrives; 0.2 s later R (mtime an hour ago) is moved in; 0.2 s later the
    rotator is killed -9 (the OOM killer), before its debounce ran out. The restarted
    rotator publishes R: the arrivals were durable before they were handed over."""
    tool = start_tool(THROTTLE_DELAY="2000", KEEP_PREVIOUS="1")
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    history = LatestHistory(models / "latest.tar.gz")
    history.start()
    rotator = tool.program_pid("rotator")
    b = put_model(models, "b.tar.gz")
    time.sleep(0.2)
    r = move_in(tmp_path, models, "r.tar.gz", HOUR)
    time.sleep(0.2)
    os.kill(rotator, signal.SIGKILL)
    wait_for_latest(models, r)
    # Today's code showed R for a moment, then went back to B and deleted R: look again
    # once the restarted rotator has taken in the reader's reconnection and gone quiet.
    tool.wait_for_line("rescan requested: reader reconnected", 60)
    time.sleep(4)
    held = history.stop()
    assert content_of(models / "latest.tar.gz") == r
    assert b not in held, "latest held B (an arrival older than R) on the way"
    # KEEP_PREVIOUS=1 keeps the arrival before R (B), not the older A.
    assert model_files(models) == ["b.tar.gz", "latest.tar.gz", "r.tar.gz"]


# -- 4. a lost journal after a clock that ran ahead ----------------------------------------

@pytest.mark.parametrize("journal", ["deleted", "garbage"])
def test_a_lost_journal_after_a_clock_that_ran_ahead_deletes_no_new_model(tmp_path, journal):
    """A was published while the clock ran a day ahead (record and journal say so); the clock
    is corrected and the journal is lost: a new model B must still be published."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir

    def ahead():
        return time.time() + DAY

    a = put_model(folder, "a.tar.gz", time.time() - 60)
    early = Reconciler(settings, clock=ahead)
    early.note_arrival("a.tar.gz", ahead())
    early.reconcile()
    assert content_of(settings.latest_model_path) == a
    if journal == "deleted":
        journal_path(settings.latest_model_path).unlink()
    else:
        journal_path(settings.latest_model_path).write_bytes(b"\x00garbage{")
    restarted = Reconciler(settings)
    restarted.reconcile()
    b = put_model(folder, "b.tar.gz")
    restarted.note_arrival("b.tar.gz", time.time())
    restarted.reconcile()
    assert content_of(settings.latest_model_path) == b
    assert (folder / "b.tar.gz").exists()


def test_a_record_whose_arrival_is_nan_is_no_time(tmp_path):
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    put_model(folder, "a.tar.gz", time.time() - 60)
    Reconciler(settings).reconcile()
    path = record_path(settings.latest_model_path)
    data = json.loads(path.read_text())
    data["arrived_at"] = math.nan
    path.write_text(json.dumps(data))  # Python writes NaN, as a hostile writer may
    restarted = Reconciler(settings)
    restarted.reconcile()
    b = put_model(folder, "b.tar.gz")
    restarted.note_arrival("b.tar.gz", time.time())
    restarted.reconcile()
    assert content_of(settings.latest_model_path) == b
    assert (folder / "b.tar.gz").exists()


# -- 5. hostile state files ------------------------------------------------------------------

def _valid_journal_with(**changes) -> bytes:
    entry = {"at": 1.0, "seq": 1, "seen": 1.0, "ino": 1, "size": 1, "mtime_ns": 1,
             "event_at": None}
    data = {"version": 1, "seq": 1, "high_water": 1.0, "scanned_at": None,
            "files": {"x.tar.gz": entry}}
    for key, value in changes.items():
        if key.startswith("entry_"):
            entry[key[len("entry_"):]] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


HOSTILE_JOURNALS = {
    "deep": b"[" * 200_000,
    "seq-infinity": _valid_journal_with().replace(b'"seq": 1,', b'"seq": Infinity,', 1),
    "seq-401-digits": _valid_journal_with().replace(b'"seq": 1,', b'"seq": ' + b"9" * 401
                                                    + b",", 1),
    "at-soon": _valid_journal_with(entry_at="soon"),
    "entry-not-a-dict": _valid_journal_with(files={"x.tar.gz": [1, 2, 3]}),
    "files-a-list": _valid_journal_with(files=[1]),
    "high-water-nan": _valid_journal_with().replace(b'"high_water": 1.0', b'"high_water": NaN'),
    "not-an-object": b"[]",
    "too-large": b" " * (9 * 1024 * 1024),
}


def _record_with(**changes) -> bytes:
    """A record as the tool writes it, with fields changed."""
    data = {"source": "a.tar.gz", "source_size": 1, "source_mtime_ns": 1, "source_inode": 1,
            "arrived_at": 1.0, "published_at": 1.0, "latest_size": 1, "latest_mtime_ns": 1,
            "latest_inode": 1, "duration_s": 0.0, "model_id": None, "trained_at": None,
            "arrival_seq": 1}
    data.update(changes)
    return json.dumps(data).encode()


HOSTILE_RECORDS = {
    "deep": b"[" * 200_000,
    "seq-infinity": _record_with().replace(b'"arrival_seq": 1', b'"arrival_seq": Infinity'),
    "seq-401-digits": _record_with().replace(b'"arrival_seq": 1',
                                                 b'"arrival_seq": ' + b"9" * 401),
    "arrived-soon": _record_with(arrived_at="soon"),
    "size-a-list": _record_with(latest_size=[1]),
    "source-a-path": _record_with(source="../etc/passwd"),
    "not-an-object": b'"a"',
}


def _reconcile_over_hostile_state(settings, path: Path, content: bytes, caplog) -> None:
    """`content` at the state file `path`; two reconciles publish a model all the same, the
    file is set aside once (one WARNING naming it), never obeyed."""
    caplog.set_level(logging.INFO)
    path.write_bytes(content)
    model = put_model(settings.target_dir, "a.tar.gz", time.time() - 60)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    reconciler.reconcile()  # once set aside, not reported again
    assert content_of(settings.latest_model_path) == model
    assert path.with_name(path.name + ".rejected").exists()
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and "not a valid state file" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert path.name in warnings[0].getMessage()


@pytest.mark.parametrize("kind", sorted(HOSTILE_JOURNALS))
def test_a_hostile_journal_is_set_aside_and_rebuilt(tmp_path, kind, caplog):
    settings = make_settings(tmp_path)
    path = journal_path(settings.latest_model_path)
    _reconcile_over_hostile_state(settings, path, HOSTILE_JOURNALS[kind], caplog)
    assert json.loads(path.read_bytes())["version"] == 1  # rebuilt


@pytest.mark.parametrize("kind", sorted(HOSTILE_RECORDS))
def test_a_hostile_record_is_set_aside_and_rebuilt(tmp_path, kind, caplog):
    settings = make_settings(tmp_path)
    _reconcile_over_hostile_state(settings, record_path(settings.latest_model_path),
                                  HOSTILE_RECORDS[kind], caplog)
    assert read_record(settings.latest_model_path).source == "a.tar.gz"  # rebuilt


@pytest.mark.parametrize("command", [("once",), ("once", "--dry-run"), ("status",)])
def test_hostile_state_files_end_no_command_in_a_traceback(tmp_path, models, command):
    latest = models / "latest.tar.gz"
    a = put_model(models, "a.tar.gz", time.time() - 60)
    latest.write_bytes(a)  # so that `status` reads the record
    journal_path(latest).write_bytes(HOSTILE_JOURNALS["seq-infinity"])
    record_path(latest).write_bytes(HOSTILE_RECORDS["deep"])
    result = run_worker(*command, cwd=tmp_path, timeout=120,
                        env=tool_environment(tmp_path, TARGET_DIR=str(tmp_path / "models")))
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "not a valid state file" in output
    if command[0] == "once":
        assert result.returncode == 0, output
        assert "not a valid state file" in output
        rejected = [p.name for p in models.iterdir() if p.name.endswith(".rejected")]
        assert bool(rejected) == (command == ("once",)), rejected  # a dry run changes nothing


def test_the_rotator_starts_over_hostile_state_files(start_tool, models):
    """Today's failure: the rotator died at every start, the guard stopped supervisord."""
    latest = models / "latest.tar.gz"
    journal_path(latest).write_bytes(HOSTILE_JOURNALS["seq-infinity"])
    record_path(latest).write_bytes(HOSTILE_RECORDS["deep"])
    tool = start_tool()
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    assert tool.output.count("not a valid state file") == 2, tool.output
    assert tool.process.poll() is None


# -- 7. a writer streaming into latest itself (issue 17 item 4) ----------------------------

def test_a_writer_streaming_into_latest_with_pauses_is_never_replaced(start_tool, models):
    """Rasa's --fixed-model-name latest: the same inode truncated and rewritten, here with
    pauses (0.5 s) longer than THROTTLE_DELAY (300 ms). Nothing is published over it until
    its close_write: no byte lost, latest never replaced mid-write."""
    tool = start_tool(THROTTLE_DELAY="300")
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    latest = models / "latest.tar.gz"
    replaced = []
    writing = threading.Event()
    writing.set()

    def watch(inode: int) -> None:
        while writing.is_set():
            try:
                if os.stat(latest).st_ino != inode:
                    replaced.append(time.monotonic())
                    return
            except FileNotFoundError:
                replaced.append(time.monotonic())
                return
            time.sleep(0.02)

    with open(latest, "w+b") as raw:  # O_TRUNC: the same inode, as Rasa opens it
        watcher = threading.Thread(target=watch, args=(os.fstat(raw.fileno()).st_ino,),
                                   daemon=True)
        watcher.start()
        write_model(raw, 600_000, model_id="streamed", chunks=6, chunk_pause_s=0.5)
        raw.flush()
        writing.clear()
        watcher.join(5)
        raw.seek(0)
        written = raw.read()
    assert replaced == [], "latest.tar.gz was replaced while its writer was writing it"
    time.sleep(1)  # the close_write is taken in; latest stays the writer's model
    wait_for_latest(models, written)


def test_a_temp_file_of_a_process_killed_mid_write_is_removed_at_the_next_reconcile(tmp_path):
    """The reader now writes the journal at every arrival (through a temp file and a rename,
    under the folder lock): a reader killed -9 inside that write leaves the temp file, and
    the next reconcile, holding the lock, removes it (not only a rotator's restart)."""
    settings = make_settings(tmp_path)
    leftover = settings.target_dir / ".latest.tar.gz.tmp-0badf00d"
    leftover.write_bytes(b'{"version": 1, "se')
    a = put_model(settings.target_dir, "a.tar.gz", time.time() - 60)
    Reconciler(settings).reconcile()
    assert not leftover.exists()
    assert content_of(settings.latest_model_path) == a


# -- found by the chaos suite after the fixes ----------------------------------------------

def test_a_touch_of_a_model_after_the_reader_journaled_it_keeps_its_place(tmp_path):
    """The reader journals X's event, then Y's and R's; X is touched before the rotator
    takes in X's event. The same event with a new mtime keeps X's place in the order: it
    must not sort after Y and R (which were then deleted as older than X)."""
    settings = make_settings(tmp_path)
    from worker.folder.arrivals import ArrivalJournal

    journal = ArrivalJournal(journal_path(settings.latest_model_path), "latest.tar.gz")
    now = time.time()
    journal.note_event("x.tar.gz", now, (1, 100, 1_000), now)  # by the reader
    journal.note_event("y.tar.gz", now + 0.1, (2, 100, 2_000), now + 0.1)
    journal.note_event("r.tar.gz", now + 0.2, (3, 100, 3_000), now + 0.2)
    touched = journal.note_event("x.tar.gz", now, (1, 100, 9_000), now + 0.5)  # the rotator
    assert touched.key < journal.entries["y.tar.gz"].key < journal.entries["r.tar.gz"].key
    assert touched.mtime_ns == 9_000 and touched.seen == now + 0.5


def test_a_touched_model_never_overtakes_the_models_after_it(start_tool, tmp_path, models):
    """End to end, as the chaos suite found it: publish A; X arrives and is touched 0.05 s
    later; then Y and a rollback R arrive. R is the last arrival: published, never deleted."""
    tool = start_tool(PUBLISH_MODE="move")
    tool.ready()
    a = put_model(models, "a.tar.gz")
    wait_for_latest(models, a)
    put_model(models, "x.tar.gz")
    time.sleep(0.05)
    os.utime(models / "x.tar.gz")
    put_model(models, "y.tar.gz")
    r = move_in(tmp_path, models, "r.tar.gz", HOUR)
    wait_for_latest(models, r)
    time.sleep(2)  # quiet: still R
    assert content_of(models / "latest.tar.gz") == r


def test_a_rollback_found_before_its_event_waits_for_it(tmp_path):
    """The reader fell behind (blocked sending B to a stopped rotator, R's moved_to still
    unread in inotify); at SIGCONT a reconcile finds R by a look, with its hour-old mtime.
    R is kept until its event can come in, and the event makes it the last arrival."""
    settings = make_settings(tmp_path, PUBLISH_MODE="move")
    folder = settings.target_dir
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    a = put_model(folder, "a.tar.gz", clock[0] - 10)
    reconciler.note_arrival("a.tar.gz", clock[0] - 10)
    reconciler.reconcile()
    assert content_of(settings.latest_model_path) == a
    clock[0] += 5
    b = put_model(folder, "b.tar.gz", clock[0])
    reconciler.note_arrival("b.tar.gz", clock[0])
    r = put_model(folder, "r.tar.gz", clock[0] - HOUR)  # moved in; its event not read yet
    clock[0] += 1
    outcome = reconciler.reconcile()
    assert content_of(settings.latest_model_path) == b
    assert (folder / "r.tar.gz").exists(), "a rollback deleted before its event came in"
    assert outcome.recheck_at is not None
    reconciler.note_arrival("r.tar.gz", clock[0] - 0.5)  # the event, read after SIGCONT
    clock[0] += 0.5
    reconciler.reconcile()
    assert content_of(settings.latest_model_path) == r


def test_a_file_found_late_whose_event_never_comes_is_pruned_after_the_grace(tmp_path):
    """The same without an event (a file written by another host on a network volume, or
    with the reader down): judged by its file time once the grace has passed."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    put_model(folder, "a.tar.gz", clock[0] - 10)
    reconciler.note_arrival("a.tar.gz", clock[0] - 10)
    reconciler.reconcile()
    clock[0] += 5
    b = put_model(folder, "b.tar.gz", clock[0])
    reconciler.note_arrival("b.tar.gz", clock[0])
    put_model(folder, "old.tar.gz", clock[0] - HOUR)  # no event will ever come
    clock[0] += 1
    outcome = reconciler.reconcile()
    assert content_of(settings.latest_model_path) == b
    assert (folder / "old.tar.gz").exists()
    clock[0] = outcome.recheck_at + 0.01
    reconciler.reconcile()
    assert not (folder / "old.tar.gz").exists()
    assert content_of(settings.latest_model_path) == b


def test_a_published_model_whose_event_comes_late_stays_latest(tmp_path):
    """Chaos seed 110: the rotator, stopped, misses the reader's news. At SIGCONT a look finds
    S (closed last) and a rollback R (old mtime), and publishes S by file times. Then the
    reader's batch comes in, R before S: both are placed after the models known by then, and
    S stays after R. Latest must stay S (it went to R for 0.3 s, then back to S)."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    put_model(folder, "a.tar.gz", time.time() - 300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()  # a is published; a complete look at the folder
    move_in(tmp_path, folder, "r.tar.gz", HOUR)
    s = put_model(folder, "s.tar.gz", time.time() - 2)
    reconciler.reconcile()  # found by a look, before their events
    assert content_of(settings.latest_model_path) == s
    when = time.time()
    reconciler.note_arrival("r.tar.gz", when)
    reconciler.note_arrival("s.tar.gz", when)
    for _ in range(2):
        reconciler.reconcile()
        assert content_of(settings.latest_model_path) == s
    assert not (folder / "r.tar.gz").exists()  # it arrived before s
    assert read_record(settings.latest_model_path).source == "s.tar.gz"
    # A restart (the record and journal as saved) keeps it so.
    assert Reconciler(settings).reconcile().actions == []
    assert content_of(settings.latest_model_path) == s

