"""`python -m worker` started the way a user starts it: supervisord, reader, rotator, a real
folder, real inotify, real kills. Each test waits for a condition with a generous deadline."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    content_of,
    model_files,
    run_worker,
    set_mtime,
    wait_for,
    wait_for_latest,
    write_model,
)
from worker.folder.archive import BrokenArchive, check_archive


def only_models(models: Path, *names: str, timeout: float = 30) -> None:
    expected = sorted([*names, "latest.tar.gz"])
    wait_for(lambda: model_files(models) == expected, timeout,
             message=f"the folder to hold exactly {expected}, has {model_files(models)}")


def temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def copy_in_progress(folder: Path) -> bool:
    for name in temporary_files(folder):
        try:
            if (folder / name).stat().st_size > 1024 * 1024:
                return True
        except FileNotFoundError:
            pass
    return False


class LatestWatcher(threading.Thread):
    """Opens latest.tar.gz every few milliseconds and checks each copy it gets is whole."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.partial: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                check_archive(self.path)
                self.reads += 1
            except FileNotFoundError:
                pass
            except BrokenArchive as error:
                self.partial.append(str(error))
            time.sleep(0.002)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def test_gradual_rasa_writes_never_show_a_partial_latest(start_tool, models):
    tool = start_tool()
    tool.ready()
    watcher = LatestWatcher(models / "latest.tar.gz")
    watcher.start()
    try:
        first = models / "20261126-101010-brave-fox.tar.gz"
        write_model(first, 6_000_000, chunks=6, chunk_pause_s=0.1)
        wait_for_latest(models, first.read_bytes())
        reads_of_first = watcher.reads
        second = models / "20261126-101110-calm-cat.tar.gz"
        write_model(second, 6_000_000, chunks=6, chunk_pause_s=0.1)
        wait_for_latest(models, second.read_bytes())
        only_models(models, second.name)
    finally:
        watcher.stop()
    assert watcher.partial == []
    # The second model was written and published while latest.tar.gz existed throughout.
    assert watcher.reads - reads_of_first > 20, "the watcher barely read latest.tar.gz"
    # The log arrives through a pipe: wait for the lines rather than race the reader thread.
    tool.wait_for_line(f"published {first}")
    tool.wait_for_line(f"deleted {first}")


def test_a_model_renamed_in_is_published(start_tool, models):
    tool = start_tool()
    tool.ready()
    staging = models / ".incoming"  # does not match *.tar.gz: no event counts for it
    write_model(staging, 200_000)
    os.rename(staging, models / "renamed.tar.gz")
    wait_for_latest(models, (models / "renamed.tar.gz").read_bytes())
    assert "published" in tool.wait_for_line("renamed.tar.gz")


def test_models_present_at_start_are_reconciled(start_tool, models):
    now = time.time()
    for index, name in enumerate(["a", "b", "c"]):
        write_model(models / f"{name}.tar.gz", 50_000)
        set_mtime(models / f"{name}.tar.gz", now - 300 + index * 100)
    # mtime decides for files with no event: c, even though a was written last.
    newest = (models / "c.tar.gz").read_bytes()
    tool = start_tool()
    wait_for_latest(models, newest)
    only_models(models, "c.tar.gz")
    tool.wait_for_line("deleted")


def test_rollback_survives_a_restart_with_keep_previous(start_tool, models, tmp_path):
    tool = start_tool(KEEP_PREVIOUS="1")
    tool.ready()
    archive = tmp_path / "archive"
    archive.mkdir()
    old = archive / "old.tar.gz"
    write_model(old, 50_000, model_id="old")
    set_mtime(old, time.time() - 3600)
    write_model(models / "new.tar.gz", 50_000, model_id="new")
    wait_for_latest(models, (models / "new.tar.gz").read_bytes())
    os.rename(old, models / "old.tar.gz")  # mv keeps the old mtime
    rolled_back = (models / "old.tar.gz").read_bytes()
    wait_for_latest(models, rolled_back)
    tool.stop()
    restarted = start_tool(KEEP_PREVIOUS="1")
    restarted.ready()
    time.sleep(1.0)  # three debounce delays: any wrong republish would have happened
    assert content_of(models / "latest.tar.gz") == rolled_back
    assert model_files(models) == ["latest.tar.gz", "new.tar.gz", "old.tar.gz"]
    assert "published" not in restarted.output


def test_a_truncated_archive_is_never_published_and_deleted_after_grace(start_tool, models):
    tool = start_tool(BROKEN_GRACE_PERIOD="3")
    tool.ready()
    whole = models / "whole.tar.gz"
    write_model(whole, 100_000)
    wait_for_latest(models, whole.read_bytes())
    killed = models / "killed.tar.gz"
    write_model(killed, 300_000, chunks=3, stop_after_chunk=2)  # closed mid-write
    tool.wait_for_line(f"skipped {killed}")
    assert content_of(models / "latest.tar.gz") == whole.read_bytes()
    assert killed.exists()
    line = tool.wait_for_line(f"deleted {killed}", timeout=30)
    assert "broken archive unchanged" in line
    assert content_of(models / "latest.tar.gz") == whole.read_bytes()


def test_a_slow_write_survives_while_another_model_is_published(start_tool, models):
    tool = start_tool()
    tool.ready()
    slow = models / "slow.tar.gz"
    writer = threading.Thread(target=write_model, args=(slow, 2_000_000),
                              kwargs={"chunks": 8, "chunk_pause_s": 0.5})
    writer.start()
    wait_for(lambda: slow.exists() and slow.stat().st_size > 0)
    quick = models / "quick.tar.gz"
    write_model(quick, 100_000)
    wait_for_latest(models, quick.read_bytes())
    time.sleep(1.0)  # more than three debounce delays with the slow file still open
    assert slow.exists(), "a file still being written was deleted"
    writer.join()
    wait_for_latest(models, slow.read_bytes())
    only_models(models, "slow.tar.gz")
    assert tool.process.poll() is None


def test_a_stream_of_arrivals_that_never_pauses_still_publishes(start_tool, models):
    """The debounce cap: a new model every 0.2 s, never a pause of THROTTLE_DELAY (1.5 s),
    must not postpone publishing for ever: a model is published while the stream goes on."""
    tool = start_tool(THROTTLE_DELAY="1500")
    tool.ready()
    stopping = threading.Event()

    def stream() -> None:
        for index in range(10_000):
            staging = models / ".incoming"  # not a model name: only the rename is news
            write_model(staging, 1_000, model_id=f"stream-{index}")
            os.rename(staging, models / f"stream-{index:05d}.tar.gz")
            if stopping.wait(0.2):
                return

    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    try:
        wait_for(lambda: (models / "latest.tar.gz").exists(), 60,
                 message="a publish while models keep arriving")
        assert writer.is_alive()
    finally:
        stopping.set()
        writer.join(10)
    tool.wait_for_line("published")


def test_kill_9_reader_misses_nothing(start_tool, models):
    tool = start_tool()
    tool.ready()
    for round_ in range(2):
        reader = tool.program_pid("reader")
        os.kill(reader, signal.SIGKILL)
        model = models / f"while-reader-down-{round_}.tar.gz"
        write_model(model, 100_000)
        wait_for_latest(models, model.read_bytes())
        wait_for(lambda r=reader: tool.program_pid("reader") != r)
    only_models(models, "while-reader-down-1.tar.gz")


def test_kill_9_rotator_misses_nothing_and_the_reader_reconnects(start_tool, models):
    tool = start_tool()
    tool.ready()
    rotator = tool.program_pid("rotator")
    os.kill(rotator, signal.SIGKILL)
    # Written while the rotator is down: found by its start-up reconcile.
    down = models / "while-rotator-down.tar.gz"
    write_model(down, 100_000)
    wait_for_latest(models, down.read_bytes())
    # Written after: reaches the new rotator only through the reader's reconnect
    # (the stale socket and the cached dead connection are both in the way).
    mark = tool.line_count()
    after = models / "after-restart.tar.gz"
    write_model(after, 100_000)
    wait_for_latest(models, after.read_bytes())
    tool.wait_for_line("reconnected to the rotator", after=0)
    assert tool.program_pid("rotator") != rotator
    only_models(models, "after-restart.tar.gz")
    assert not [line for line in tool.lines[mark:] if "already serving" in line]


def test_kill_9_rotator_in_the_middle_of_a_publish(start_tool, models, tmp_path):
    tool = start_tool()
    tool.ready()
    small = models / "small.tar.gz"
    write_model(small, 100_000)
    wait_for_latest(models, small.read_bytes())
    staged = tmp_path / "big.tar.gz"
    write_model(staged, 400 * 1024 * 1024, chunks=8, compresslevel=1)
    rotator = tool.program_pid("rotator")
    big = models / "big.tar.gz"
    os.rename(staged, big)
    # A copy under way (the reader's journal writes use small temp files of the same kind).
    wait_for(lambda: copy_in_progress(models), timeout=30, interval=0.001,
             message="a publish in progress")
    os.kill(rotator, signal.SIGKILL)
    assert content_of(models / "latest.tar.gz") == small.read_bytes(), "latest changed half-way"
    wait_for_latest(models, big.read_bytes(), timeout=60)
    wait_for(lambda: not temporary_files(models), message="the leftover temporary file removed")
    tool.wait_for_line("temporary file of an interrupted publish")
    only_models(models, "big.tar.gz")


def test_inotify_queue_overflow_triggers_a_rescan(start_tool, models):
    tool = start_tool()
    tool.ready()
    reader = tool.program_pid("reader")
    os.kill(reader, signal.SIGSTOP)
    try:
        # More close_write events than the kernel queues (16384): the rest are dropped.
        for index in range(17_000):
            with open(models / f"noise-{index}.txt", "w"):
                pass
        model = models / "after-the-flood.tar.gz"
        write_model(model, 100_000)  # its own event is among the dropped ones
    finally:
        os.kill(reader, signal.SIGCONT)
    wait_for_latest(models, model.read_bytes(), timeout=60)
    tool.wait_for_line("inotify queue overflowed")
    assert len(list(models.glob("noise-*.txt"))) == 17_000, "non-model files were touched"


def test_the_watched_folder_removed_and_created_again(start_tool, models):
    tool = start_tool()
    tool.ready()
    first = models / "first.tar.gz"
    write_model(first, 100_000)
    wait_for_latest(models, first.read_bytes())
    for path in models.iterdir():
        path.unlink()
    models.rmdir()
    tool.wait_for_line("is gone")
    models.mkdir(exist_ok=True)
    wait_for(lambda: tool.output.count("watching") >= 2, message="a new watch")
    second = models / "second.tar.gz"
    write_model(second, 100_000)
    wait_for_latest(models, second.read_bytes())


def test_sigterm_stops_everything_quickly_and_cleanly(start_tool, models, tmp_path):
    tool = start_tool()
    tool.ready()
    pids = [tool.process.pid, tool.program_pid("reader"), tool.program_pid("rotator")]
    staged = tmp_path / "big.tar.gz"
    write_model(staged, 300 * 1024 * 1024, chunks=6, compresslevel=1)
    os.rename(staged, models / "big.tar.gz")
    wait_for(lambda: temporary_files(models), interval=0.001, message="a publish in progress")
    started = time.monotonic()
    code = tool.stop()
    assert time.monotonic() - started < 5
    assert code == 0
    assert temporary_files(models) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived supervisord"
    assert not (tmp_path / "run" / "queue.sock").exists()


def test_once_and_dry_run(models, tmp_path):

    from tests.helpers import tool_environment

    now = time.time()
    for index, name in enumerate(["a", "b"]):
        write_model(models / f"{name}.tar.gz", 50_000)
        set_mtime(models / f"{name}.tar.gz", now - 300 + index * 100)
    env = tool_environment(tmp_path)

    def once(*args):
        return run_worker("once", *args, cwd=tmp_path, env=env)

    dry = once("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would-publish" in dry.stdout and "would-delete" in dry.stdout
    assert model_files(models) == ["a.tar.gz", "b.tar.gz"]
    real = once()
    assert real.returncode == 0, real.stderr
    assert f"published {models / 'b.tar.gz'}" in real.stdout
    assert f"deleted {models / 'a.tar.gz'}" in real.stdout
    assert model_files(models) == ["b.tar.gz", "latest.tar.gz"]
    again = once()
    assert "nothing to do" in again.stdout


def test_two_instances_side_by_side(start_tool, tmp_path):
    folders = []
    tools = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folders.append(folder)
        tools.append(start_tool(TARGET_DIR=str(folder), RUN_DIR=str(tmp_path / f"run-{name}")))
    for tool in tools:
        tool.ready()
    for folder in folders:
        write_model(folder / "m.tar.gz", 50_000, model_id=folder.name)
    for folder in folders:
        wait_for_latest(folder, (folder / "m.tar.gz").read_bytes())


@pytest.mark.parametrize("bad", [{"THROTTLE_DELAY": "soon"}, {"KEEP_PREVIOUS": "-1"}])
def test_bad_settings_start_nothing(start_tool, tmp_path, bad):
    tool = start_tool(**bad)
    assert tool.process.wait(5) != 0
    tool.stop()
    assert not (tmp_path / "models").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("interval", ["1", "0"])
def test_the_periodic_rescan_finds_a_model_no_event_announced(start_tool, models, interval):
    tool = start_tool(RESCAN_INTERVAL=interval)
    # settled, not ready: the reconcile the reader's start-up rescan asks for comes
    # THROTTLE_DELAY after it, and would find the model written below by a look.
    tool.settled()
    assert tool.supervisorctl("stop", "reader").returncode == 0  # no more events
    model = models / "unannounced.tar.gz"
    write_model(model, 100_000)
    if interval == "0":
        time.sleep(3)  # what a 1 s rescan needs, three times over
        assert not (models / "latest.tar.gz").exists(), "published with the rescan off"
    else:
        wait_for_latest(models, model.read_bytes(), timeout=30)


def test_move_mode_end_to_end(start_tool, models):
    tool = start_tool(PUBLISH_MODE="move")
    tool.ready()
    for name in ("first", "second"):
        model = models / f"{name}.tar.gz"
        write_model(model, 100_000)
        content = model.read_bytes()
        wait_for_latest(models, content)
        assert not model.exists(), "the source should have been moved"
    assert model_files(models) == ["latest.tar.gz"]
    tool.wait_for_line("moved in")


@pytest.mark.parametrize("env_file", [".env", "custom.env"])
def test_settings_from_an_env_file_reach_the_programs(start_tool, models, tmp_path, env_file):
    """`.env` (or ENV_FILE) is read by `python -m worker`; the programs supervisord starts
    must run with those settings too."""
    (tmp_path / env_file).write_text("KEEP_PREVIOUS=1\nLOG_FORMAT=json\n")
    extra = {"ENV_FILE": env_file} if env_file != ".env" else {}
    tool = start_tool(**extra)
    tool.ready()
    for name in ("a", "b", "c"):
        model = models / f"{name}.tar.gz"
        write_model(model, 50_000)
        wait_for_latest(models, model.read_bytes())
    only_models(models, "b.tar.gz", "c.tar.gz")  # KEEP_PREVIOUS=1 kept b
    assert tool.wait_for_line('"event": "published"')  # LOG_FORMAT=json in the rotator


def test_a_failing_reconcile_is_retried_not_crashed(start_tool, models, tmp_path):
    """The published file's folder turned into a file: every reconcile fails until it is
    fixed. The rotator must report it and keep trying, not crash-loop into FATAL."""
    public = tmp_path / "public"
    tool = start_tool(LATEST_MODEL_PATH=str(public / "latest.tar.gz"))
    tool.ready()
    rotator = tool.program_pid("rotator")
    shutil.rmtree(public)  # it holds the lock file already
    public.write_text("not a folder")
    model = models / "m.tar.gz"
    write_model(model, 50_000)
    tool.wait_for_line("reconcile failed")
    public.unlink()
    wait_for_latest(public, model.read_bytes(), 30,
                    message=f"published once the folder can be made again\n{tool.output}")
    assert tool.program_pid("rotator") == rotator, "the rotator was restarted"


# -- issue 8: never lose a model, end to end -------------------------------------------------

def test_a_rollback_seen_while_the_rotator_was_down_survives_its_restart(start_tool, models,
                                                                         tmp_path):
    """Observation 3: an older model moved back in while the rotator was down (the reader
    was up and saw moved_to) was deleted by the restarted rotator under the mtime rule."""
    tool = start_tool()
    tool.ready()
    new = models / "new.tar.gz"
    write_model(new, 50_000, model_id="new")
    wait_for_latest(models, new.read_bytes())
    assert tool.supervisorctl("stop", "rotator").returncode == 0
    archive = tmp_path / "archive"
    archive.mkdir()
    old = archive / "old.tar.gz"
    write_model(old, 50_000, model_id="old")
    set_mtime(old, time.time() - 3600)
    rolled_back = old.read_bytes()
    os.rename(old, models / "old.tar.gz")  # mv keeps the old mtime
    journal = models / ".latest.tar.gz.arrivals.json"
    wait_for(lambda: '"old.tar.gz"' in (content_of(journal) or b"").decode(),
             message="the reader to keep the arrival it could not deliver")
    assert tool.supervisorctl("start", "rotator").returncode == 0
    wait_for_latest(models, rolled_back)
    only_models(models, "old.tar.gz")
    assert "deleted" not in "".join(line for line in tool.lines if "old.tar.gz" in line)


def test_rasa_writing_latest_itself_is_never_overwritten(start_tool, models):
    """Observation 5: Rasa's --fixed-model-name latest streams into latest.tar.gz in place;
    the rotator published an older model over it meanwhile, and Rasa's model was lost."""
    tool = start_tool(RESCAN_INTERVAL="1", KEEP_PREVIOUS="1")
    tool.ready()
    for name in ("a", "b"):
        write_model(models / f"{name}.tar.gz", 50_000, model_id=name)
        wait_for_latest(models, (models / f"{name}.tar.gz").read_bytes())
    # latest holds b a moment before its line reaches us: mark after the line.
    tool.wait_for_line(f"INFO published {models / 'b.tar.gz'} ->")
    mark = tool.line_count()
    # Rasa's way: open the final path with O_TRUNC, stream for a while, close.
    write_model(models / "latest.tar.gz", 3_000_000, model_id="rasa", chunks=12,
                chunk_pause_s=0.15)
    rasa_model = (models / "latest.tar.gz").read_bytes()
    tool.wait_for_line("adopted", after=mark)
    only_models(models, "b.tar.gz")  # a arrived before Rasa's model; b kept (KEEP_PREVIOUS)
    time.sleep(1.5)  # a rescan (1 s) and a debounce after it: any wrong publish has happened
    assert content_of(models / "latest.tar.gz") == rasa_model
    assert " INFO published " not in "\n".join(tool.lines[mark:])


def test_a_normal_start_logs_no_warning(start_tool, models):
    """Issue 11: the reader starts right beside the rotator, which needs a moment to serve
    its queue; that is no reason for a WARNING."""
    tool = start_tool()
    tool.ready()
    model = models / "m.tar.gz"
    write_model(model, 50_000)
    wait_for_latest(models, model.read_bytes())
    warnings = [line for line in tool.lines
                if " reader WARNING " in line or " rotator WARNING " in line]
    assert warnings == []


def test_supervisord_loads_no_tls_and_the_reader_no_openssl_yet_both_work(start_tool, models):
    """Idle memory (issue 20): supervisord talks TLS to nobody and the reader hashes only its
    queue's authentication challenge, so neither maps OpenSSL (1.6 and 1.1 MiB of PSS). Both
    still do their work: the reader's events reach the rotator through the authenticated
    queue, and supervisord answers supervisorctl."""
    tool = start_tool()
    tool.ready()
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 100_000)
    wait_for_latest(models, model.read_bytes())
    libraries = {name: Path(f"/proc/{pid}/maps").read_text()
                 for name, pid in (("supervisord", tool.process.pid),
                                   ("reader", tool.program_pid("reader")))}
    assert "libssl" not in libraries["supervisord"] and "_ssl." not in libraries["supervisord"]
    assert "libcrypto" not in libraries["reader"] and "_hashlib" not in libraries["reader"]
    status = run_worker("supervisorctl", "status", cwd=tool.workdir, env=tool.env)
    assert status.returncode == 0 and "reader" in status.stdout, status.stdout + status.stderr
