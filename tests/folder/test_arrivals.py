"""The README's caps on arrivals: the journal keeps at most 10,000 present files, and the
reader keeps at most 10,000 undelivered arrivals (beyond that, one rescan is asked for)."""

from __future__ import annotations

import logging
import os
import time

from tests.helpers import settings_in
from worker.folder.arrivals import MAX_ENTRIES, ArrivalJournal, journal_path
from worker.programs.reader import MAX_PENDING, Reader


def test_the_caps_are_the_readmes_10000():
    assert MAX_ENTRIES == MAX_PENDING == 10_000


def a_journal_of(tmp_path, count: int) -> ArrivalJournal:
    latest = tmp_path / "latest.tar.gz"
    journal = ArrivalJournal(journal_path(latest), latest.name)
    for index in range(count):
        journal.note_event(f"m{index:05d}.tar.gz", 1000.0 + index, (index + 1, 10, 0), 9e9)
    return journal


def test_the_journal_keeps_the_10000_newest_present_files(tmp_path):
    journal = a_journal_of(tmp_path, MAX_ENTRIES + 3)
    journal.keep_only(set(journal.entries), now=9e9, complete=True)
    assert len(journal.entries) == MAX_ENTRIES
    oldest_kept = min(journal.entries.values(), key=lambda arrival: arrival.key)
    assert oldest_kept.at == 1003.0, "not the newest were kept"
    # Files were dropped: a later look must not take them for new arrivals.
    assert journal.scanned_at is None


def test_a_journal_at_the_cap_forgets_nothing(tmp_path):
    journal = a_journal_of(tmp_path, MAX_ENTRIES)
    journal.keep_only(set(journal.entries), now=9e9, complete=True)
    assert len(journal.entries) == MAX_ENTRIES
    assert journal.scanned_at is not None


def test_a_saved_journal_of_more_than_twice_the_cap_is_set_aside(tmp_path):
    """The reader may add up to 10,000 to a full journal; more than that is no journal of
    ours: it is reported and rebuilt, never loaded into memory."""
    a_journal_of(tmp_path, 2 * MAX_ENTRIES + 1).save()
    problems = []
    journal = ArrivalJournal.load(tmp_path / "latest.tar.gz",
                                  lambda path, problem: problems.append(str(problem)))
    assert journal.entries == {}
    assert problems == [f"more than {2 * MAX_ENTRIES} files"]


def test_more_than_10000_undelivered_arrivals_become_one_rescan(tmp_path, caplog):
    """The rotator is down (nothing serves the queue): the reader keeps its arrivals, up to
    MAX_PENDING; one more and it drops them for one rescan request. Real inotify, a real
    folder, the real Reader."""
    settings = settings_in(tmp_path)
    settings.run_dir.mkdir(mode=0o700)
    reader = Reader(settings, logging.getLogger("test-reader"))
    reader.watch()
    reader.owed_rescan = None  # the start's own rescan, owed until a rotator is there

    staging = tmp_path / "staging"  # not watched: only the rename into the folder is news
    staging.mkdir()

    def arrive(names: list[str]) -> None:
        for name in names:
            (staging / name).touch()
            os.rename(staging / name, settings.target_dir / name)  # moved_to: an arrival
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = reader.inotify.read(timeout=100)
            if not events:
                return
            reader.handle(events)
        raise AssertionError("the reader never caught up with the events")

    with caplog.at_level(logging.WARNING, logger="test-reader"):
        for batch in range(0, MAX_PENDING, 2000):  # well within the kernel's event queue
            arrive([f"m{index:05d}.tar.gz" for index in range(batch, batch + 2000)])
        assert len(reader.pending) == MAX_PENDING and reader.owed_rescan is None
        arrive(["one-more.tar.gz"])
    assert reader.pending == []
    assert reader.owed_rescan == "too many undelivered events"
    assert [r.getMessage() for r in caplog.records if "rescan" in r.getMessage()] == [
        f"more than {MAX_PENDING} arrivals could not be delivered: asking for a full rescan "
        "instead"]


def test_a_saved_journal_above_the_cap_but_within_twice_it_is_loaded(tmp_path):
    """A full journal plus the reader's undelivered arrivals (up to MAX_PENDING more) is
    still ours: loaded whole, not set aside (the next reconcile trims it to the cap)."""
    a_journal_of(tmp_path, MAX_ENTRIES + MAX_PENDING).save()
    problems = []
    journal = ArrivalJournal.load(tmp_path / "latest.tar.gz",
                                  lambda path, problem: problems.append(str(problem)))
    assert problems == []
    assert len(journal.entries) == MAX_ENTRIES + MAX_PENDING


def test_the_journal_of_an_empty_folder_is_read_back(tmp_path):
    """A reconcile of an empty folder saves a journal that has handed out no arrival yet
    (seq 0): the next reconcile reads it as valid, it is not set aside and rebuilt."""
    from worker.folder.reconcile import Reconciler

    settings = settings_in(tmp_path)
    Reconciler(settings).reconcile()
    saved = journal_path(settings.latest_model_path)
    assert saved.exists()
    problems = []
    ArrivalJournal.load(settings.latest_model_path,
                        lambda path, problem: problems.append(str(problem)))
    assert problems == []


def test_the_latest_arrival_handed_out_survives_a_save_and_a_load(tmp_path):
    """An event is news: after a restart (a load), an event timed before the last arrival
    handed out (this host's clock went back) still sorts after it."""
    latest = tmp_path / "latest.tar.gz"
    journal = ArrivalJournal(journal_path(latest), latest.name)
    journal.note_event("a.tar.gz", 2000.0, (1, 10, 0), 2000.0)
    journal.save()
    again = ArrivalJournal.load(latest)
    later = again.note_event("b.tar.gz", 1000.0, (2, 10, 0), 1000.0)
    assert later.key > again.entries["a.tar.gz"].key


def test_a_journal_that_knows_an_empty_file_is_read_back(tmp_path):
    """An empty file with a model's name (`touch`, a training that has only opened its
    file) is journaled with size 0: the journal stays valid, not set aside and rebuilt."""
    from worker.folder.reconcile import Reconciler

    settings = settings_in(tmp_path)
    (settings.target_dir / "empty.tar.gz").touch()
    Reconciler(settings).reconcile()
    problems = []
    journal = ArrivalJournal.load(settings.latest_model_path,
                                  lambda path, problem: problems.append(str(problem)))
    assert problems == []
    assert journal.entries["empty.tar.gz"].size == 0


def test_a_model_written_again_arrives_anew_and_its_own_event_again_keeps_its_place(tmp_path):
    """The event the journal already took in, delivered again after a touch changed the
    file's metadata (the reader's event reaching a rotator that had found it by a look),
    keeps the model's place; a new event for a model written again is a new arrival, after
    the models that arrived meanwhile."""
    latest = tmp_path / "latest.tar.gz"
    journal = ArrivalJournal(journal_path(latest), latest.name)
    first = journal.note_event("a.tar.gz", 1000.0, (1, 10, 0), 1000.0)
    between = journal.note_event("b.tar.gz", 1001.0, (2, 10, 0), 1001.0)
    touched = journal.note_event("a.tar.gz", 1000.0, (1, 10, 5), 1002.0)
    assert touched.key == first.key
    assert (touched.mtime_ns, touched.seen) == (5, 1002.0)  # unchanged from now on
    rewritten = journal.note_event("a.tar.gz", 1003.0, (1, 20, 6), 1003.0)
    assert rewritten.key > between.key
    assert (rewritten.at, rewritten.event_at) == (1003.0, 1003.0)
