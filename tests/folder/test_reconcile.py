"""The folder rules, one test each, on real files in a temporary folder."""

import os
import time
from pathlib import Path

import pytest

from tests.helpers import model_bytes, run_worker, set_mtime, settings_in, write_model
from worker.folder.archive import check_archive
from worker.folder.files import publish_atomically, read_record, record_path
from worker.folder.reconcile import Reconciler

HOUR = 3600


def make_settings(tmp_path, **overrides):
    """This file's defaults: a 1 s debounce, models/keep.tar.gz ignored."""
    return settings_in(tmp_path, **{
        "THROTTLE_DELAY": "1000",
        "IGNORE_FILE_PATHS": str(tmp_path / "models" / "keep.tar.gz"), **overrides})


def add_model(folder: Path, name: str, age_s: float = 60.0, model_id: str | None = None,
              data: bytes | None = None) -> Path:
    path = folder / name
    if data is None:
        write_model(path, 20_000, model_id=model_id or name)
    else:
        path.write_bytes(data)
    set_mtime(path, time.time() - age_s)
    return path


def names(folder: Path) -> list[str]:
    """The folder's names, but the arrival journal (tested on its own)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".latest.tar.gz.arrivals.json")


def kinds(outcome) -> list[tuple[str, str]]:
    return [(a.kind, a.path.name) for a in outcome.actions]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def folder(settings):
    return settings.target_dir


def test_newest_by_mtime_is_published_and_older_deleted(settings, folder):
    add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "b.tar.gz", age_s=200)
    newest = add_model(folder, "c.tar.gz", age_s=100)
    outcome = Reconciler(settings).reconcile()
    assert kinds(outcome) == [("published", "c.tar.gz"), ("deleted", "b.tar.gz"),
                              ("deleted", "a.tar.gz")]
    assert settings.latest_model_path.read_bytes() == newest.read_bytes()
    assert names(folder) == [".latest.tar.gz.json", ".latest.tar.gz.lock", "c.tar.gz",
                             "latest.tar.gz"]


def test_only_whole_models_are_published(settings, folder):
    whole = add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "b.tar.gz", age_s=10, data=model_bytes(50_000)[:-100])
    outcome = Reconciler(settings).reconcile()
    assert ("published", "a.tar.gz") in kinds(outcome)
    assert ("skipped", "b.tar.gz") in kinds(outcome)
    assert settings.latest_model_path.read_bytes() == whole.read_bytes()
    assert (folder / "b.tar.gz").exists(), "a broken archive within its grace period was deleted"


def test_nothing_whole_publishes_nothing(settings, folder):
    add_model(folder, "a.tar.gz", age_s=300, data=b"not gzip at all")
    Reconciler(settings).reconcile()
    assert not settings.latest_model_path.exists()
    assert (folder / "a.tar.gz").exists()


def test_a_broken_archive_is_deleted_after_the_grace_period_with_a_log_line(tmp_path, caplog):
    settings = make_settings(tmp_path, BROKEN_GRACE_PERIOD="60")
    folder = settings.target_dir
    add_model(folder, "young.tar.gz", age_s=30, data=b"broken")
    add_model(folder, "old.tar.gz", age_s=120, data=b"broken")
    with caplog.at_level("INFO"):
        outcome = Reconciler(settings).reconcile()
    assert ("deleted", "old.tar.gz") in kinds(outcome)
    assert ("skipped", "young.tar.gz") in kinds(outcome)
    assert "broken archive unchanged for 120 s" in caplog.text
    assert names(folder) == [".latest.tar.gz.lock", "young.tar.gz"]
    assert outcome.recheck_at == pytest.approx(time.time() + 30, abs=2)


def test_the_most_recent_arrival_wins_over_mtime(settings, folder):
    """A model moved back in (a rollback) keeps its old mtime but arrived last."""
    add_model(folder, "new.tar.gz", age_s=100)
    rolled_back = add_model(folder, "old.tar.gz", age_s=HOUR)
    reconciler = Reconciler(settings)
    reconciler.note_arrival("old.tar.gz", time.time())
    reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == rolled_back.read_bytes()
    assert names(folder) == [".latest.tar.gz.json", ".latest.tar.gz.lock", "latest.tar.gz",
                             "old.tar.gz"]


def test_a_rollback_stays_published_after_a_restart(tmp_path):
    settings = make_settings(tmp_path, KEEP_PREVIOUS="1")
    folder = settings.target_dir
    add_model(folder, "new.tar.gz", age_s=100)
    rolled_back = add_model(folder, "old.tar.gz", age_s=HOUR)
    first = Reconciler(settings)
    first.note_arrival("old.tar.gz", time.time())
    first.reconcile()
    assert settings.latest_model_path.read_bytes() == rolled_back.read_bytes()
    latest_inode = settings.latest_model_path.stat().st_ino
    # A new process knows no events: by mtime new.tar.gz is newer, but it arrived before
    # the rollback was published.
    outcome = Reconciler(settings).reconcile()
    assert outcome.actions == []
    assert settings.latest_model_path.stat().st_ino == latest_inode
    assert names(folder) == [".latest.tar.gz.json", ".latest.tar.gz.lock", "latest.tar.gz",
                             "new.tar.gz", "old.tar.gz"]


def test_a_model_written_while_stopped_is_published_after_a_restart(settings, folder):
    add_model(folder, "a.tar.gz", age_s=100)
    Reconciler(settings).reconcile()
    later = folder / "b.tar.gz"
    write_model(later, 10_000)
    set_mtime(later, time.time() - 2)  # written while stopped, unchanged since
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == later.read_bytes()


def test_keep_previous_keeps_the_most_recent_whole_others(tmp_path):
    settings = make_settings(tmp_path, KEEP_PREVIOUS="2")
    folder = settings.target_dir
    for index, name in enumerate(["a", "b", "c", "d"]):
        add_model(folder, f"{name}.tar.gz", age_s=500 - index * 100)
    add_model(folder, "broken.tar.gz", age_s=150, data=b"junk")  # not counted as kept
    Reconciler(settings).reconcile()
    assert [n for n in names(folder) if n.endswith(".tar.gz")] == [
        "b.tar.gz", "broken.tar.gz", "c.tar.gz", "d.tar.gz", "latest.tar.gz"]


def test_pruning_never_touches_what_it_must_not(settings, folder, tmp_path):
    add_model(folder, "published.tar.gz", age_s=10)
    add_model(folder, "older.tar.gz", age_s=500)
    add_model(folder, "keep.tar.gz", age_s=500)  # in IGNORE_FILE_PATHS
    (folder / "notes.txt").write_text("not a model")
    set_mtime(folder / "notes.txt", time.time() - HOUR)
    (folder / "sub.tar.gz").mkdir()  # a folder whose name matches
    outside = tmp_path / "outside.tar.gz"
    outside.write_bytes(model_bytes(1000))
    set_mtime(outside, time.time() - HOUR)
    (folder / "link.tar.gz").symlink_to(outside)
    nested = folder / "sub.tar.gz" / "deep.tar.gz"
    nested.write_bytes(model_bytes(1000))
    set_mtime(nested, time.time() - HOUR)
    in_flight = folder / "writing.tar.gz"
    in_flight.write_bytes(model_bytes(20_000)[:5000])  # changed just now, not whole yet

    Reconciler(settings).reconcile()

    assert names(folder) == [".latest.tar.gz.json", ".latest.tar.gz.lock", "keep.tar.gz",
                             "latest.tar.gz", "link.tar.gz", "notes.txt", "published.tar.gz",
                             "sub.tar.gz", "writing.tar.gz"]
    assert outside.exists() and nested.exists()


def test_a_whole_model_changed_within_the_throttle_delay_is_not_deleted(settings, folder):
    add_model(folder, "a.tar.gz", age_s=0.2)
    add_model(folder, "b.tar.gz", age_s=0.1)
    reconciler = Reconciler(settings)
    reconciler.note_arrival("b.tar.gz", time.time())  # closed: publishable at once
    outcome = reconciler.reconcile()
    assert ("published", "b.tar.gz") in kinds(outcome)
    assert (folder / "a.tar.gz").exists()
    assert outcome.recheck_at is not None
    time.sleep(max(0.0, outcome.recheck_at - time.time()) + 0.05)
    Reconciler(settings).reconcile()
    assert not (folder / "a.tar.gz").exists()


def test_a_file_that_may_still_be_written_is_not_copied(settings, folder):
    """Observation 10: publishing a file changed within THROTTLE_DELAY (no close seen since)
    meant a full copy, then a "changed" warning. It waits until it is quiet instead."""
    add_model(folder, "old.tar.gz", age_s=100)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    add_model(folder, "fresh.tar.gz", age_s=0.1)
    outcome = reconciler.reconcile()
    assert outcome.actions == [], "a file that may still be written was copied"
    assert outcome.recheck_at is not None
    time.sleep(max(0.0, outcome.recheck_at - time.time()) + 0.05)
    assert ("published", "fresh.tar.gz") in kinds(reconciler.reconcile())


def test_a_second_reconcile_does_nothing(settings, folder):
    add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "b.tar.gz", age_s=200)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    latest = settings.latest_model_path.stat()
    record = record_path(settings.latest_model_path).stat()
    for again in (reconciler, Reconciler(settings)):
        assert again.reconcile().actions == []
    assert settings.latest_model_path.stat().st_ino == latest.st_ino
    assert settings.latest_model_path.stat().st_mtime_ns == latest.st_mtime_ns
    assert record_path(settings.latest_model_path).stat().st_mtime_ns == record.st_mtime_ns


def test_dry_run_changes_nothing(settings, folder):
    add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "b.tar.gz", age_s=200)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    outcome = Reconciler(settings).reconcile(dry_run=True)
    assert kinds(outcome) == [("would-publish", "b.tar.gz"), ("would-delete", "a.tar.gz")]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_latest_published_by_someone_else_is_adopted_with_its_source(settings, folder):
    """Upgrading from the original tool: latest.tar.gz exists, no record of its source."""
    source = add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "older.tar.gz", age_s=400)
    settings.latest_model_path.write_bytes(source.read_bytes())
    set_mtime(settings.latest_model_path, time.time() - 250)
    outcome = Reconciler(settings).reconcile()
    assert kinds(outcome) == [("deleted", "older.tar.gz")]
    assert read_record(settings.latest_model_path).source == "a.tar.gz"
    assert (folder / "a.tar.gz").exists()


def test_a_broken_latest_is_replaced(settings, folder):
    source = add_model(folder, "a.tar.gz", age_s=3 * HOUR)
    settings.latest_model_path.write_bytes(source.read_bytes()[:-50])
    # Unchanged for BROKEN_GRACE_PERIOD (an hour): nobody is writing it any more.
    set_mtime(settings.latest_model_path, time.time() - 2 * HOUR)
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == source.read_bytes()


def test_a_broken_latest_is_replaced_after_its_writer_closed_it(settings, folder):
    source = add_model(folder, "a.tar.gz", age_s=300)
    settings.latest_model_path.write_bytes(source.read_bytes()[:-50])
    set_mtime(settings.latest_model_path, time.time() - 60)
    reconciler = Reconciler(settings)
    reconciler.note_arrival("latest.tar.gz", time.time())  # its close_write: a killed training
    reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == source.read_bytes()


def test_a_broken_latest_paused_longer_than_throttle_delay_is_left_alone(settings, folder):
    """Issue 17 item 4: a writer streaming into latest itself (Rasa's --fixed-model-name)
    may pause longer than THROTTLE_DELAY; until its close_write or BROKEN_GRACE_PERIOD,
    what it wrote so far must not be replaced."""
    source = add_model(folder, "a.tar.gz", age_s=300)
    settings.latest_model_path.write_bytes(source.read_bytes()[:-50])
    set_mtime(settings.latest_model_path, time.time() - 60)  # 60 x THROTTLE_DELAY ago
    before = settings.latest_model_path.read_bytes()
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == before


def test_publish_keeps_the_old_latest_when_the_source_is_broken(settings, folder):
    whole = add_model(folder, "a.tar.gz", age_s=300)
    Reconciler(settings).reconcile()
    add_model(folder, "b.tar.gz", age_s=0, data=model_bytes(80_000)[:-1])
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == whole.read_bytes()
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "a temporary file was left"


def test_publish_atomically_makes_a_durable_whole_copy(settings, folder):
    from worker.folder.files import list_models

    source = add_model(folder, "a.tar.gz", age_s=5)
    model = list_models(folder, "*.tar.gz", settings.latest_model_path)[0]
    published = publish_atomically(model, settings.latest_model_path)
    assert check_archive(settings.latest_model_path).size == source.stat().st_size
    assert published.info.model_id == "a.tar.gz"
    assert published.latest_stat.st_ino == settings.latest_model_path.stat().st_ino
    assert os.stat(settings.latest_model_path).st_ino != source.stat().st_ino, "not a copy"


def test_an_empty_folder_is_in_order(settings):
    outcome = Reconciler(settings).reconcile()
    assert outcome.actions == [] and outcome.recheck_at is None


def test_move_mode_renames_the_source_into_place(tmp_path):
    settings = make_settings(tmp_path, PUBLISH_MODE="move", KEEP_PREVIOUS="1")
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    newest = add_model(folder, "b.tar.gz", age_s=200)
    content, inode = newest.read_bytes(), newest.stat().st_ino
    outcome = Reconciler(settings).reconcile()
    assert ("published", "b.tar.gz") in kinds(outcome)
    assert settings.latest_model_path.read_bytes() == content
    assert settings.latest_model_path.stat().st_ino == inode, "copied, not moved"
    assert names(folder) == [".latest.tar.gz.json", ".latest.tar.gz.lock", "a.tar.gz",
                             "latest.tar.gz"]
    assert Reconciler(settings).reconcile().actions == []


def test_move_mode_never_moves_a_broken_archive(tmp_path):
    settings = make_settings(tmp_path, PUBLISH_MODE="move")
    folder = settings.target_dir
    whole = add_model(folder, "a.tar.gz", age_s=300)
    content = whole.read_bytes()
    Reconciler(settings).reconcile()
    add_model(folder, "b.tar.gz", age_s=1, data=model_bytes(50_000)[:-3])
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == content
    assert (folder / "b.tar.gz").exists()


def test_events_in_one_batch_keep_their_order(settings, folder):
    """A batch of events shares one read time; the one the kernel reported last wins."""
    for name in ("a.tar.gz", "c.tar.gz", "b.tar.gz"):
        add_model(folder, name, age_s=50, data=model_bytes(2000))
    reconciler = Reconciler(settings)
    same_time = time.time()
    for name in ("c.tar.gz", "b.tar.gz", "a.tar.gz"):
        reconciler.note_arrival(name, same_time)
    reconciler.reconcile()
    assert read_record(settings.latest_model_path).source == "a.tar.gz"


def test_reconciles_of_one_folder_take_turns(settings, folder):
    """`once` while the rotator runs, or two instances on one folder, never race."""
    import threading

    from worker.folder.files import folder_lock

    add_model(folder, "a.tar.gz", age_s=300)
    finished = threading.Event()
    with folder_lock(settings.latest_model_path):
        worker = threading.Thread(target=lambda: (Reconciler(settings).reconcile(),
                                                  finished.set()))
        worker.start()
        assert not finished.wait(0.5), "a reconcile ran while another held the folder"
        assert not settings.latest_model_path.exists()
    assert finished.wait(10)
    assert settings.latest_model_path.exists()


# -- issue 8: never lose a model ----------------------------------------------------------

DAY = 24 * HOUR


def rasa_would_load(folder: Path) -> Path:
    """Rasa 3.6's `rasa run --model <folder>` (rasa/model.py, get_latest_model)."""
    import glob

    return Path(max(glob.glob(os.path.join(folder, "*.tar.gz")), key=os.path.getmtime))


def run_once(settings, *args) -> str:
    """`python -m worker once`: a separate process with the same settings."""

    from tests.helpers import PROJECT_ROOT, environment_without_settings

    env = {**environment_without_settings(), **{k: v for k, v in settings.as_environment().items()
                            if k in ("TARGET_DIR", "LATEST_MODEL_PATH", "THROTTLE_DELAY",
                                     "KEEP_PREVIOUS", "RUN_DIR", "IGNORE_FILE_PATHS",
                                     "PUBLISH_MODE")},
           "PYTHONPATH": str(PROJECT_ROOT)}
    result = run_worker("once", *args, cwd=PROJECT_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_future_mtime_never_beats_a_model_seen_arriving_later(tmp_path):
    """Observation 2: a model copied with its mtime a day ahead (cp -p from a host with a
    fast clock) beat the model that really arrived after it once the rotator restarted, and
    `once` beside the rotator flipped latest back too."""
    settings = make_settings(tmp_path, KEEP_PREVIOUS="1", THROTTLE_DELAY="0")
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    future = add_model(folder, "future.tar.gz", age_s=-DAY)  # found by a rescan
    reconciler.reconcile()
    assert read_record(settings.latest_model_path).source == "future.tar.gz"
    real_newest = add_model(folder, "newest.tar.gz", age_s=10)
    reconciler.note_arrival("newest.tar.gz", time.time())  # its close_write
    assert ("published", "newest.tar.gz") in kinds(reconciler.reconcile())
    assert future.exists()  # KEEP_PREVIOUS=1
    for again in (Reconciler(settings), reconciler):  # a restart, then the running one
        assert again.reconcile().actions == []
    assert "published" not in run_once(settings)
    assert settings.latest_model_path.read_bytes() == real_newest.read_bytes()
    assert real_newest.exists()


def test_clock_skew_of_days_behind_loses_nothing(tmp_path):
    """A file server whose clock is a day behind: a model it writes later still has an
    older mtime than the one this host saw arrive. Once the tool has looked at the folder,
    a file that was not there then arrived after that look."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "seen.tar.gz", age_s=10)
    reconciler = Reconciler(settings)
    reconciler.note_arrival("seen.tar.gz", time.time())
    reconciler.reconcile()
    behind = add_model(folder, "from-the-server.tar.gz", age_s=DAY)  # no event (NFS)
    Reconciler(settings).reconcile()
    assert behind.exists(), "a model written after the published one was deleted"
    assert settings.latest_model_path.read_bytes() == behind.read_bytes()


def test_a_restart_and_once_use_the_same_arrival_times(tmp_path):
    """What the rotator learned from events survives it: a rollback seen as an event is
    still the newest arrival for a restarted rotator and for `once`."""
    settings = make_settings(tmp_path, KEEP_PREVIOUS="5")
    folder = settings.target_dir
    archive = tmp_path / "archive"
    archive.mkdir()
    for index in range(3):
        add_model(archive if index == 0 else folder, f"m{index}.tar.gz",
                  age_s=300 - index * 100)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    os.rename(archive / "m0.tar.gz", folder / "m0.tar.gz")  # mv keeps its old mtime
    reconciler.note_arrival("m0.tar.gz", time.time())  # rolled back: m0 arrived last
    reconciler.reconcile()
    assert read_record(settings.latest_model_path).source == "m0.tar.gz"
    (folder / "m0.tar.gz").unlink()  # not even its source is needed to know the order
    assert "published" not in run_once(settings)
    assert Reconciler(settings).reconcile().actions == []


@pytest.mark.parametrize("case", ["crashed-training", "future-broken", "move-rollback",
                                  "copy-future-kept"])
def test_a_rasa_restart_loads_the_published_model(tmp_path, case):
    """Observation 6: `rasa run --model models/` loads the newest mtime among *.tar.gz; a
    training killed mid-write (or any newer-looking file) left Rasa with nothing loaded."""
    mode = "move" if case.startswith("move") else "copy"
    settings = make_settings(tmp_path, PUBLISH_MODE=mode, KEEP_PREVIOUS="1",
                             THROTTLE_DELAY="0")
    folder = settings.target_dir
    reconciler = Reconciler(settings)
    if case == "crashed-training":
        add_model(folder, "a.tar.gz", age_s=300)
        reconciler.reconcile()
        add_model(folder, "killed.tar.gz", age_s=0, data=model_bytes(50_000)[:20_000])
    elif case == "future-broken":
        add_model(folder, "a.tar.gz", age_s=300)
        reconciler.reconcile()
        add_model(folder, "skewed.tar.gz", age_s=-DAY, data=b"not even gzip")
    elif case == "move-rollback":
        add_model(folder, "newer.tar.gz", age_s=100)
        add_model(folder, "old.tar.gz", age_s=HOUR)
        reconciler.note_arrival("old.tar.gz", time.time())  # moved back in: a rollback
    else:
        add_model(folder, "future.tar.gz", age_s=-DAY)
        reconciler.reconcile()
        add_model(folder, "newest.tar.gz", age_s=5)
        reconciler.note_arrival("newest.tar.gz", time.time())
    reconciler.reconcile()
    published = read_record(settings.latest_model_path)
    assert rasa_would_load(folder) == settings.latest_model_path, (
        f"Rasa would load {rasa_would_load(folder).name}, published is {published.source}")
    # The record still describes latest (the model server's ETag rests on its inode).
    assert published.describes(settings.latest_model_path.stat())
    again = Reconciler(settings).reconcile()
    assert not [a for a in again.actions if a.kind in ("published", "deleted")], again
    assert rasa_would_load(folder) == settings.latest_model_path


def test_rasa_fixed_model_name_writing_latest_is_left_alone_then_adopted(tmp_path):
    """Observation 5: Rasa's --fixed-model-name latest truncates and rewrites latest.tar.gz in
    place; the rotator published an older model over it mid-write."""
    settings = make_settings(tmp_path, KEEP_PREVIOUS="0")
    folder = settings.target_dir
    older = add_model(folder, "older.tar.gz", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    inode = settings.latest_model_path.stat().st_ino
    rasa_model = model_bytes(80_000, model_id="rasa-fixed")
    with open(settings.latest_model_path, "r+b") as latest:  # O_TRUNC on the same inode
        latest.truncate(0)
        latest.write(rasa_model[:30_000])
        latest.flush()
        outcome = reconciler.reconcile()
        assert not [a for a in outcome.actions if a.kind in ("published", "deleted")], outcome
        assert "being written by another program" in str(outcome.actions)
        latest.write(rasa_model[30_000:])
    reconciler.note_arrival("latest.tar.gz", time.time())  # its close_write
    outcome = reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == rasa_model
    assert settings.latest_model_path.stat().st_ino == inode
    assert kinds(outcome) == [("deleted", "older.tar.gz")], "the older model outlived it"
    assert read_record(settings.latest_model_path).model_id == "rasa-fixed"
    for again in (reconciler, Reconciler(settings)):
        assert again.reconcile().actions == []
    assert settings.latest_model_path.read_bytes() == rasa_model
    # A model that arrives after Rasa's own write is newer: it is published as usual.
    newer = add_model(folder, "newer.tar.gz", age_s=5)
    reconciler.note_arrival("newer.tar.gz", time.time())
    assert ("published", "newer.tar.gz") in kinds(reconciler.reconcile())
    assert settings.latest_model_path.read_bytes() == newer.read_bytes()
    assert not older.exists()


def test_a_good_model_survives_archives_that_only_look_whole(tmp_path):
    """Observation 7 at the folder level: each of these was published and the good model
    deleted."""
    import gzip
    import tarfile

    settings = make_settings(tmp_path)
    folder = settings.target_dir
    good = add_model(folder, "good.tar.gz", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    raw = gzip.decompress(model_bytes(20_000))
    first_member_end = 512 + (int(raw[124:136].rstrip(b"\0 "), 8) + 511) // 512 * 512
    fakes = {
        "garbage-after-first.tar.gz": raw[:first_member_end] + b"junk" * 300,
        "no-end-blocks.tar.gz": raw.rstrip(b"\0"),
    }
    negative = bytearray(raw)
    header = bytearray(negative[first_member_end:first_member_end + 512])
    header[124:136] = b"\xff" * 11 + b"\x00"
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    negative[first_member_end:first_member_end + 512] = header
    assert tarfile.nti(bytes(header[124:136])) < 0
    fakes["negative-size.tar.gz"] = bytes(negative)
    for index, (name, data) in enumerate(fakes.items()):
        add_model(folder, name, age_s=100 - index, data=gzip.compress(data))
        reconciler.note_arrival(name, time.time())
    outcome = reconciler.reconcile()
    assert not [a for a in outcome.actions if a.kind in ("published", "deleted")], outcome
    assert settings.latest_model_path.read_bytes() == good.read_bytes()
    assert good.exists()


@pytest.mark.parametrize("blocked", ["record", "journal"])
def test_a_folder_at_the_record_or_journal_is_one_error_not_one_per_retry(settings, folder,
                                                                          blocked):
    """Issue 18, item 9: the error names the random temporary file it could not rename; a
    retry with another temporary name is the same cause, logged once."""
    add_model(folder, "a.tar.gz", model_id="a")
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    path = (record_path(settings.latest_model_path) if blocked == "record"
            else folder / ".latest.tar.gz.arrivals.json")
    path.unlink()
    path.mkdir()
    add_model(folder, "b.tar.gz", model_id="b")
    failures = []
    for _ in range(4):
        add_model(folder, f"c{_}.tar.gz", model_id=f"c{_}")  # something to record each time
        failures += [a for a in reconciler.reconcile().actions if a.kind == "failed"]
    assert len(failures) == 1, [a.detail for a in failures]
    assert "tmp-" in failures[0].detail


def test_a_close_without_a_write_is_no_new_arrival(settings, folder):
    """A backup tool opens the published model's source read-write and closes it unchanged
    (a close_write, no write) after a newer model arrived: the newer model is published, the
    old one keeps its place in the order and is pruned; it never becomes latest again."""
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    old = add_model(folder, "old.tar.gz", age_s=10)
    reconciler.note_arrival("old.tar.gz", clock[0] - 10)
    reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == old.read_bytes()
    clock[0] += 5
    new = add_model(folder, "new.tar.gz", age_s=1)
    reconciler.note_arrival("new.tar.gz", clock[0] - 1)
    reconciler.note_arrival("old.tar.gz", clock[0] - 0.5)  # the backup's close, no write
    outcome = reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == new.read_bytes()
    assert kinds(outcome) == [("published", "new.tar.gz"), ("deleted", "old.tar.gz")], \
        "the old model stayed, as if it had arrived after the new one"
    clock[0] += 5
    reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == new.read_bytes()


def test_a_latest_written_in_place_is_looked_at_again_when_its_grace_ends(tmp_path):
    """Another program streams into latest.tar.gz itself (Rasa's --fixed-model-name), no
    close yet: it is left alone, and looked at again once it has been unchanged for
    BROKEN_GRACE_PERIOD: not at once (a busy loop) and not later (a model left waiting)."""
    settings = make_settings(tmp_path, BROKEN_GRACE_PERIOD="60")
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    add_model(settings.target_dir, "a.tar.gz", age_s=100)
    reconciler.reconcile()
    partial = model_bytes(50_000)[:-100]
    settings.latest_model_path.write_bytes(partial)  # in place: the same file, truncated
    set_mtime(settings.latest_model_path, clock[0] - 10)
    outcome = reconciler.reconcile()
    assert settings.latest_model_path.read_bytes() == partial
    assert outcome.recheck_at == pytest.approx(clock[0] + 60 - 10, abs=0.5)


def test_an_expired_broken_model_is_deleted_and_the_older_ones_after_it_too(tmp_path):
    """The prune goes on past a broken archive it deletes: the older whole model behind it
    goes in the same reconcile, not never."""
    settings = make_settings(tmp_path, BROKEN_GRACE_PERIOD="60")
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "x.tar.gz", age_s=250, data=model_bytes(50_000)[:-100])
    newest = add_model(folder, "n.tar.gz", age_s=200)
    outcome = Reconciler(settings).reconcile()
    assert settings.latest_model_path.read_bytes() == newest.read_bytes()
    assert [(kind, name) for kind, name in kinds(outcome) if kind == "deleted"] == [
        ("deleted", "x.tar.gz"), ("deleted", "a.tar.gz")]


def test_a_copied_model_is_readable_by_everyone_and_keeps_its_other_bits(settings, folder):
    """Rasa's trainer may write its models 0600; the published copy adds read for all (a
    replica or the model server under another uid reads it) and keeps the source's bits."""
    source = add_model(folder, "a.tar.gz")
    os.chmod(source, 0o600)
    Reconciler(settings).reconcile()
    assert settings.latest_model_path.stat().st_mode & 0o777 == 0o644
