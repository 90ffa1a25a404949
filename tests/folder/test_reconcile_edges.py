"""The folder rules' rarer paths, found untested by the mutation check (issue 20): the dry
run, the report-once memory, the publish record kept in line, latest known by content, the
version gate with nothing published. Real files in a temporary folder, the real Reconciler."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, replace

import pytest

from tests.folder.test_reconcile import add_model, kinds, make_settings, names
from tests.helpers import model_bytes, set_mtime
from worker.folder.arrivals import Arrival
from worker.folder.files import (
    keep_latest_newest,
    list_models,
    parse_record,
    read_record,
    record_path,
    same_content,
)
from worker.folder.loadable import record_loaded
from worker.folder.reconcile import Reconciler
from worker.folder.statefile import InvalidState
from worker.surface.status import not_published, published_model


def snapshot(folder) -> dict[str, tuple[int, int, int]]:
    """Every file's name and version: a dry run must leave all of them as they were."""
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.iterdir()}


# -- the dry run (`python -m worker once --dry-run`) ----------------------------------------

def test_a_dry_run_over_a_latest_of_someone_else_adopts_nothing(tmp_path):
    """latest.tar.gz written by another program, no record, a temp file of a killed write:
    a real run adopts latest (writes the record and the journal) and removes the temp file;
    a dry run only says what it would prune."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    source = add_model(folder, "a.tar.gz", age_s=300)
    add_model(folder, "older.tar.gz", age_s=400)
    settings.latest_model_path.write_bytes(source.read_bytes())
    set_mtime(settings.latest_model_path, time.time() - 250)
    (folder / ".latest.tar.gz.tmp-0123abcd").write_bytes(b"left by a killed write")
    before = snapshot(folder)
    outcome = Reconciler(settings).reconcile(dry_run=True)
    assert kinds(outcome) == [("would-delete", "older.tar.gz")]
    assert snapshot(folder) == before
    # What the dry run left alone, a real run does.
    assert kinds(Reconciler(settings).reconcile()) == [("deleted", "older.tar.gz")]
    assert not (folder / ".latest.tar.gz.tmp-0123abcd").exists()
    assert read_record(settings.latest_model_path).source == "a.tar.gz"


def test_a_dry_run_reports_an_invalid_journal_and_leaves_it_where_it_is(tmp_path, caplog):
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    journal = folder / ".latest.tar.gz.arrivals.json"
    journal.write_text('{"version": "not ours"}')
    before = snapshot(folder)
    with caplog.at_level("WARNING"):
        outcome = Reconciler(settings).reconcile(dry_run=True)
    assert kinds(outcome) == [("would-publish", "a.tar.gz")]
    assert snapshot(folder) == before, "a dry run set the journal aside"
    assert "is not a valid state file" in caplog.text and "read as absent" in caplog.text


def test_a_dry_run_skips_a_broken_newest_model_and_would_publish_the_next(tmp_path):
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "old.tar.gz", age_s=300)
    add_model(folder, "whole.tar.gz", age_s=200)
    add_model(folder, "broken.tar.gz", age_s=100, data=model_bytes(20_000)[:-100])
    before = snapshot(folder)
    outcome = Reconciler(settings).reconcile(dry_run=True)
    assert kinds(outcome) == [("would-skip", "broken.tar.gz"), ("would-publish", "whole.tar.gz"),
                              ("skipped", "broken.tar.gz"), ("would-delete", "old.tar.gz")]
    assert snapshot(folder) == before


# -- a problem is reported once, not at every reconcile -----------------------------------

def test_a_broken_model_is_reported_once_and_again_after_it_was_gone(tmp_path):
    """The memory of what was reported follows the files: a broken model within its grace
    is one line, not one per reconcile; moved away and back (same inode, size and mtime),
    it is news again."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    broken = add_model(folder, "broken.tar.gz", age_s=10, data=b"not an archive")
    reconciler = Reconciler(settings)
    assert kinds(reconciler.reconcile()) == [("skipped", "broken.tar.gz")]
    assert reconciler.reconcile().actions == []
    away = tmp_path / "broken.tar.gz"
    os.rename(broken, away)
    assert reconciler.reconcile().actions == []
    os.rename(away, broken)
    assert kinds(reconciler.reconcile()) == [("skipped", "broken.tar.gz")]


def test_a_record_failure_is_reported_again_after_a_save_succeeded(tmp_path):
    """A record that cannot be saved is one error while it lasts; once a save succeeds the
    failure is over, and the next one is reported again (not silenced for ever)."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    record = record_path(settings.latest_model_path)
    reconciler = Reconciler(settings)

    def failures() -> list[str]:
        return [a.detail for a in reconciler.reconcile().actions if a.kind == "failed"]

    record.mkdir()  # a folder where the record goes: every save fails
    add_model(folder, "a.tar.gz", age_s=300)
    assert len(failures()) == 1
    add_model(folder, "b.tar.gz", age_s=200)
    assert failures() == [], "the same failure was reported twice"
    record.rmdir()
    assert failures() == []
    assert read_record(settings.latest_model_path).source == "b.tar.gz"
    record.unlink()
    record.mkdir()
    add_model(folder, "c.tar.gz", age_s=100)
    assert len(failures()) == 1, "a new failure after a successful save was not reported"


# -- the publish record -----------------------------------------------------------------

def test_a_record_rewritten_by_another_program_is_written_again(tmp_path):
    """The record describes latest; another program wrote over it with another model's
    name: the rotator that published latest writes its own again."""
    settings = make_settings(tmp_path)
    add_model(settings.target_dir, "a.tar.gz", age_s=300, model_id="a")
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    ours = read_record(settings.latest_model_path)
    record_path(settings.latest_model_path).write_text(
        json.dumps({**asdict(ours), "model_id": "someone-else", "source": "other.tar.gz"}))
    assert reconciler.reconcile().actions == []
    assert read_record(settings.latest_model_path) == ours
    # Written over with something that is no record at all: kept aside for a person to
    # look at (nothing is lost), and ours written again.
    from worker.folder.statefile import REJECTED_SUFFIX

    path = record_path(settings.latest_model_path)
    path.write_text('{"not": "a record"}')
    assert reconciler.reconcile().actions == []
    assert read_record(settings.latest_model_path) == ours
    assert path.with_name(path.name + REJECTED_SUFFIX).read_text() == '{"not": "a record"}'


def test_the_publish_line_says_whether_the_model_was_copied_or_moved(tmp_path):
    for mode, verb in (("copy", "copied"), ("move", "moved")):
        settings = make_settings(tmp_path / mode, PUBLISH_MODE=mode)
        add_model(settings.target_dir, "a.tar.gz", age_s=300)
        (published,) = Reconciler(settings).reconcile().actions
        assert f" {verb} in " in published.detail, published.detail
        # The whole line as the log shows it: no warning part when there is none.
        line = re.escape(f"published {settings.target_dir / 'a.tar.gz'} -> "
                         f"{settings.latest_model_path} (")
        assert re.fullmatch(line + rf"[0-9.]+ [KMG]?i?B {verb} in \d+ ms, model_id a\.tar\.gz\)",
                            str(published)), str(published)


# -- latest known by its content ------------------------------------------------------------

def test_a_touched_latest_whose_source_was_moved_keeps_its_record(tmp_path):
    """PUBLISH_MODE=move leaves no source beside latest; a touch (a backup restoring times)
    changes latest's mtime, not its bytes: it is still the model the record names, published
    when it was, not a model "written by another program"."""
    settings = make_settings(tmp_path, PUBLISH_MODE="move")
    add_model(settings.target_dir, "a.tar.gz", age_s=300, model_id="a")
    Reconciler(settings).reconcile()
    before = read_record(settings.latest_model_path)
    set_mtime(settings.latest_model_path, time.time() - 10)
    assert Reconciler(settings).reconcile().actions == []
    after = read_record(settings.latest_model_path)
    assert (after.source, after.published_at, after.model_id) == (
        "a.tar.gz", before.published_at, "a")
    assert after.describes(settings.latest_model_path.stat())


@pytest.mark.parametrize("journal_lost_before", [False, True])
def test_a_lost_record_and_a_touched_latest_make_no_newer_arrival(tmp_path,
                                                                  journal_lost_before):
    """The record is lost and latest touched, its source gone (PUBLISH_MODE=move): the
    journal knows latest's bytes, so latest keeps its arrival. A model that arrived after it
    (though before the touch) is newer: published, not deleted as older. A journal lost
    earlier learns latest's arrival again from the record at the next reconcile."""
    settings = make_settings(tmp_path, PUBLISH_MODE="move")
    folder = settings.target_dir
    start = time.time()
    clock = [start]
    add_model(folder, "a.tar.gz", age_s=300)
    Reconciler(settings, clock=lambda: clock[0]).reconcile()
    if journal_lost_before:
        (folder / ".latest.tar.gz.arrivals.json").unlink()
        assert Reconciler(settings, clock=lambda: clock[0]).reconcile().actions == []
    clock[0] = start + 100
    later = add_model(folder, "b.tar.gz", model_id="b")
    set_mtime(later, start + 10)  # found by a look: arrived at its mtime
    set_mtime(settings.latest_model_path, start + 50)  # touched after b arrived
    record_path(settings.latest_model_path).unlink()
    content = later.read_bytes()
    outcome = Reconciler(settings, clock=lambda: clock[0]).reconcile()
    assert kinds(outcome) == [("published", "b.tar.gz")]
    assert settings.latest_model_path.read_bytes() == content


# -- the version gate -------------------------------------------------------------------

def test_models_below_the_minimum_version_are_kept_when_nothing_is_published(tmp_path):
    """RASA_MIN_MODEL_VERSION above every model: nothing is published, so nothing is older
    than the published model: every model stays (KEEP_PREVIOUS is 0)."""
    settings = make_settings(tmp_path, RASA_MIN_MODEL_VERSION="3.6.0")
    folder = settings.target_dir
    for index in range(3):
        add_model(folder, f"m{index}.tar.gz", age_s=300 - index * 50)
    outcome = Reconciler(settings).reconcile()
    assert sorted(kinds(outcome)) == [("skipped", f"m{index}.tar.gz") for index in range(3)]
    assert names(folder) == [".latest.tar.gz.loadable.json", ".latest.tar.gz.lock",
                             "m0.tar.gz", "m1.tar.gz", "m2.tar.gz"]


def test_a_model_another_program_wrote_into_latest_is_news(tmp_path):
    """Another program wrote a model of its own into latest.tar.gz (no source here) after b
    arrived: latest holds the newest arrival, b is older and pruned, never published over
    it (the journal's memory of the previous latest is no excuse to place it earlier)."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    start = time.time()
    clock = [start]
    add_model(folder, "a.tar.gz", age_s=300)
    Reconciler(settings, clock=lambda: clock[0]).reconcile()
    clock[0] = start + 100
    older = add_model(folder, "b.tar.gz", model_id="b")
    set_mtime(older, start + 10)  # found by a look: arrived at its mtime
    foreign = model_bytes(30_000, model_id="theirs")
    settings.latest_model_path.write_bytes(foreign)  # in place, after b arrived
    set_mtime(settings.latest_model_path, start + 50)
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    assert kinds(reconciler.reconcile()) == [("deleted", "a.tar.gz")]
    assert settings.latest_model_path.read_bytes() == foreign
    assert read_record(settings.latest_model_path).model_id == "theirs"
    clock[0] += 5  # b was found by a look: its event, if any, would have come by now
    assert kinds(reconciler.reconcile()) == [("deleted", "b.tar.gz")]
    assert settings.latest_model_path.read_bytes() == foreign


def test_a_latest_adopted_without_a_source_shows_no_source_in_status(tmp_path):
    """Adopted with no source here, the record says so (source "", size -1): `status`
    shows neither a source nor a source mtime (not one from 1970)."""
    settings = make_settings(tmp_path)
    settings.latest_model_path.write_bytes(model_bytes(20_000, model_id="theirs"))
    set_mtime(settings.latest_model_path, time.time() - 100)
    assert Reconciler(settings).reconcile().actions == []
    shown = published_model(settings)
    assert (shown["source"], shown["source_mtime"], shown["model_id"]) == (None, None, "theirs")
    # The record's own words for "no source", and no publish duration (we did not copy it:
    # the metrics show 0 s and the publish time as latest's own).
    record = read_record(settings.latest_model_path)
    assert (record.source, record.source_size, record.source_mtime_ns, record.source_inode,
            record.duration_s) == ("", -1, -1, -1, 0.0), record


# -- the record as read back --------------------------------------------------------------

def test_a_record_is_read_with_or_without_a_digest_and_with_arrival_seq_0(tmp_path):
    """A record written before digests (none) or after an upgrade (arrival_seq 0, the
    older versions' value) is valid; a digest that is not hexadecimal is not."""
    settings = make_settings(tmp_path)
    add_model(settings.target_dir, "a.tar.gz", age_s=300)
    Reconciler(settings).reconcile()
    record = read_record(settings.latest_model_path)
    old = replace(record, digest=None, arrival_seq=0)
    assert parse_record(json.loads(json.dumps(asdict(old)))) == old
    # A model whose metadata.json names no model_id nor trained_at: both null in the record.
    bare = replace(record, model_id=None, trained_at=None)
    assert parse_record(json.loads(json.dumps(asdict(bare)))) == bare
    with pytest.raises(InvalidState, match="'digest' is not a hexadecimal digest"):
        parse_record({**asdict(record), "digest": "not-hex"})
    with pytest.raises(InvalidState, match="'arrival_seq' is not a whole number from 0 to"):
        parse_record({**asdict(record), "arrival_seq": -1})


def test_a_model_below_a_minimum_that_was_lowered_is_published_and_no_longer_listed(
        tmp_path):
    """RASA_MIN_MODEL_VERSION kept a model back (`status` lists it as not published); once
    the minimum is gone the model is published, and `status` lists nothing held back."""
    gated = make_settings(tmp_path, RASA_MIN_MODEL_VERSION="3.6.0")
    add_model(gated.target_dir, "a.tar.gz", age_s=300)
    assert kinds(Reconciler(gated).reconcile()) == [("skipped", "a.tar.gz")]
    first = not_published(gated)
    assert [entry["reason"] for entry in first] == ["version"]
    clock = [time.time()]
    gated_again = Reconciler(gated, clock=lambda: clock[0] + 60).reconcile()
    assert kinds(gated_again) == [("skipped", "a.tar.gz")] and not gated_again.published
    assert not_published(gated) == first, "the refusal's time moved"
    settings = make_settings(tmp_path)
    assert kinds(Reconciler(settings).reconcile()) == [("published", "a.tar.gz")]
    assert not_published(settings) == []


def test_a_lost_journal_keeps_a_future_dated_published_source_in_its_place(tmp_path):
    """The published source has an mtime a day ahead (cp -p from a host whose clock runs
    ahead) and the journal is lost: the source keeps the arrival its record names. Found
    again by the file-time rule it would arrive "now", after b, written while the rotator
    was stopped, and b would be deleted as older instead of published."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    start = time.time()
    clock = [start]
    add_model(folder, "future.tar.gz", age_s=-24 * 3600)
    first = Reconciler(settings, clock=lambda: clock[0])
    assert first.reconcile().actions == []  # quiet THROTTLE_DELAY after it was first seen
    clock[0] = start + 2
    assert kinds(first.reconcile()) == [("published", "future.tar.gz")]
    clock[0] = start + 100
    later = add_model(folder, "b.tar.gz", model_id="b")
    set_mtime(later, start + 50)
    content = later.read_bytes()
    (folder / ".latest.tar.gz.arrivals.json").unlink()
    outcome = Reconciler(settings, clock=lambda: clock[0]).reconcile()
    assert kinds(outcome)[0] == ("published", "b.tar.gz")
    assert settings.latest_model_path.read_bytes() == content


# -- a file that goes while the reconcile runs ------------------------------------------------

def test_a_model_deleted_by_someone_else_during_the_prune_is_no_error(tmp_path):
    """A person removes an old model while the rotator prunes: the one already gone is not
    reported as deleted (we did not delete it), and the reconcile goes on. The removal
    happens at the moment the rotator logs its first deletion (a logging handler); the
    running rotator checked that model at an earlier reconcile."""
    import logging

    settings = make_settings(tmp_path, KEEP_PREVIOUS="1")
    folder = settings.target_dir
    oldest = add_model(folder, "a.tar.gz", age_s=400)
    add_model(folder, "b.tar.gz", age_s=300)

    class SomeoneElse(logging.Handler):
        def emit(self, record):
            if getattr(record, "event", None) == "deleted":
                oldest.unlink(missing_ok=True)

    log = logging.getLogger("test.someone-else")
    log.setLevel(logging.INFO)  # the deletion lines are INFO
    reconciler = Reconciler(settings, log)
    assert kinds(reconciler.reconcile()) == [("published", "b.tar.gz")]  # a kept, checked
    for name in ("c.tar.gz", "d.tar.gz"):
        add_model(folder, name, age_s=100)
        reconciler.note_arrival(name, time.time())  # their close_write
    log.addHandler(SomeoneElse())
    outcome = reconciler.reconcile()
    assert kinds(outcome) == [("published", "d.tar.gz"), ("deleted", "b.tar.gz")]
    assert not oldest.exists()


def test_a_source_changed_after_it_was_listed_is_refused_as_changed(tmp_path):
    """The model grew between the listing and the publish: SourceChanged (a skip, tried
    again later), not an I/O error, and no temporary file is left."""
    from worker.folder.archive import SourceChanged
    from worker.folder.files import list_models, publish_atomically

    settings = make_settings(tmp_path)
    folder = settings.target_dir
    path = add_model(folder, "a.tar.gz", age_s=300)
    [listed] = list_models(folder, "*.tar.gz", settings.latest_model_path)
    with open(path, "ab") as more:
        more.write(b"more")
    with pytest.raises(SourceChanged):
        publish_atomically(listed, settings.latest_model_path)
    assert names(folder) == ["a.tar.gz"]


def test_a_symlink_to_a_newer_model_is_no_model(tmp_path):
    """A link with a model's name, pointing at a newer model outside the folder, is never
    a candidate (nor an error): only regular files in the folder are models."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    outside = add_model(tmp_path, "outside.tar.gz", age_s=10)
    (folder / "link.tar.gz").symlink_to(outside)
    assert kinds(Reconciler(settings).reconcile()) == [("published", "a.tar.gz")]


def test_the_retry_after_an_error_is_the_readmes_5_s():
    """README: a failed publish is retried "after THROTTLE_DELAY, but no sooner than 5 s"
    (the fault tests check the wait against this constant)."""
    from worker.folder.reconcile import RETRY_AFTER_ERROR_S

    assert RETRY_AFTER_ERROR_S == 5.0


def test_a_model_found_without_its_event_waits_the_readmes_grace(tmp_path):
    """README: a model found by a look before its event is not deleted "for
    max(THROTTLE_DELAY, 2 s) after it was first seen"."""
    short = Reconciler(make_settings(tmp_path / "short", THROTTLE_DELAY="500"))
    long = Reconciler(make_settings(tmp_path / "long", THROTTLE_DELAY="3000"))
    assert (short._event_grace_s(), long._event_grace_s()) == (2.0, 3.0)


def test_outcome_says_whether_something_was_published(tmp_path):
    settings = make_settings(tmp_path)
    reconciler = Reconciler(settings)
    assert reconciler.reconcile().published is False
    add_model(settings.target_dir, "a.tar.gz", age_s=300)
    assert reconciler.reconcile().published is True
    assert published_model(settings)["source"].endswith("a.tar.gz")


def test_status_with_nothing_published_shows_nothing(tmp_path):
    assert published_model(make_settings(tmp_path)) is None


def test_a_symlink_at_latest_is_replaced_by_the_model(tmp_path):
    """Someone "published" by a symlink: latest must be a regular file (a Rasa restart and
    the model server read it), so the newest model is copied over the link."""
    settings = make_settings(tmp_path)
    source = add_model(settings.target_dir, "a.tar.gz", age_s=300)
    settings.latest_model_path.symlink_to(add_model(tmp_path, "elsewhere.tar.gz"))
    outcome = Reconciler(settings).reconcile()
    assert ("published", "a.tar.gz") in kinds(outcome)
    assert not settings.latest_model_path.is_symlink()
    assert settings.latest_model_path.read_bytes() == source.read_bytes()


def test_a_refusal_memory_that_cannot_be_saved_is_one_error(tmp_path):
    settings = make_settings(tmp_path, RASA_MIN_MODEL_VERSION="3.6.0")
    (settings.target_dir / ".latest.tar.gz.loadable.json").mkdir()  # every save fails
    add_model(settings.target_dir, "a.tar.gz", age_s=300)
    outcome = Reconciler(settings).reconcile()  # a folder there: read as empty, then saved
    assert [(a.kind, a.path.name) for a in outcome.actions] == [
        ("failed", ".latest.tar.gz.loadable.json"), ("skipped", "a.tar.gz"),
        ("failed", ".latest.tar.gz.loadable.json")]
    assert "could not save the refusal memory" in outcome.actions[2].detail


# -- what the mutation check found next (issue 20, second round) ---------------------------------

def test_a_known_broken_newer_arrival_does_not_hold_back_an_older_one_still_written(tmp_path):
    """x arrives first and is still being written; b arrives after it (copied with an old
    mtime, `cp -p`) and is broken. Once x is quiet it is published: the broken b, known from
    the last reconcile, is passed over, not the end of the search."""
    settings = make_settings(tmp_path, THROTTLE_DELAY="10000")
    folder = settings.target_dir
    start = time.time()
    clock = [start]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    still_written = add_model(folder, "x.tar.gz", model_id="x")
    set_mtime(still_written, start - 1)
    assert reconciler.reconcile().actions == []  # x is not quiet for 9 s more
    clock[0] = start + 1
    broken = add_model(folder, "b.tar.gz", data=model_bytes(20_000)[:-100])
    set_mtime(broken, start - 100)
    assert kinds(reconciler.reconcile()) == [("skipped", "b.tar.gz")]
    clock[0] = start + 12
    assert kinds(reconciler.reconcile())[:1] == [("published", "x.tar.gz")]
    assert settings.latest_model_path.read_bytes() == still_written.read_bytes()


def test_the_model_a_replica_loaded_is_kept_and_older_ones_are_still_pruned(tmp_path):
    """KEEP_PREVIOUS=0: the last model a replica loaded stays (latest returns to it if the
    new one is refused); the prune goes on past it and deletes what is older still."""
    keeping = make_settings(tmp_path, KEEP_PREVIOUS="1")
    folder = keeping.target_dir
    add_model(folder, "ancient.tar.gz", age_s=400)
    add_model(folder, "good.tar.gz", age_s=300)
    assert kinds(Reconciler(keeping).reconcile()) == [("published", "good.tar.gz")]
    record_loaded(keeping.latest_model_path, read_record(keeping.latest_model_path), "r1")
    settings = make_settings(tmp_path)  # KEEP_PREVIOUS=0
    add_model(folder, "new.tar.gz", age_s=100)
    outcome = Reconciler(settings).reconcile()
    assert kinds(outcome) == [("published", "new.tar.gz"), ("deleted", "ancient.tar.gz")]
    assert (folder / "good.tar.gz").exists()


def test_a_folder_that_is_gone_lists_no_models(tmp_path):
    """The models folder removed (or its mount gone) between two reconciles: nothing to
    list, no error (the watcher reports the folder itself)."""
    gone = tmp_path / "models"
    assert list_models(gone, "*.tar.gz", gone / "latest.tar.gz") == []


def test_a_model_named_like_latest_elsewhere_is_a_model(tmp_path):
    """LATEST_MODEL_PATH in another folder: a file of the watched folder that has its name
    is just a model (latest is recognised as a file, not by its name)."""
    folder = tmp_path / "models"
    folder.mkdir()
    add_model(folder, "latest.tar.gz")
    elsewhere = tmp_path / "published" / "latest.tar.gz"
    elsewhere.parent.mkdir()
    assert [m.path.name for m in list_models(folder, "*.tar.gz", elsewhere)] == \
        ["latest.tar.gz"]
    assert list_models(folder, "*.tar.gz", folder / "latest.tar.gz") == []


def test_the_rules_forget_their_verdict_on_a_file_that_is_gone(tmp_path):
    """A long-running rotator checks each new file version once and keeps the verdict while
    that version is there, not after: the memory follows the folder, not its history."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "good.tar.gz", age_s=300)
    reconciler = Reconciler(settings)
    for round_ in range(3):
        broken = add_model(folder, f"broken{round_}.tar.gz", age_s=100,
                           data=model_bytes(20_000)[:-100])
        reconciler.reconcile()
        assert broken.name in {identity[0] for identity in reconciler._checks}
        broken.unlink()
    reconciler.reconcile()
    assert not {i[0] for i in reconciler._checks} & {f"broken{n}.tar.gz" for n in range(3)}


def test_a_report_about_a_file_version_is_remembered_while_that_version_is_there():
    """The report-once memory: a key about a file version (alone, or with an error's errno
    or "unreadable") is kept while that version is in the folder; other keys always."""
    from worker.folder.reconcile import _still_relevant

    version = ("a.tar.gz", 7, 20_000, 1_000)
    changed = ("a.tar.gz", 7, 20_000, 2_000)
    for key in (version, (version, "unreadable"), (version, 28)):
        assert _still_relevant(key, {version}), key
        assert not _still_relevant(key, {changed}), key
    for key in (("journal", 28), ("loadable", "bad"), (("<latest>", 7, 20_000, 1_000), 28)):
        assert _still_relevant(key, set()), key


def test_only_the_verdict_on_what_latest_holds_now_is_kept(tmp_path):
    """Another program writes latest again and again (Rasa's --fixed-model-name): each
    version is checked once, and the verdicts on the versions it replaced are forgotten."""
    settings = make_settings(tmp_path)
    reconciler = Reconciler(settings)
    for round_ in range(3):
        version = tmp_path / f"foreign{round_}.tar.gz"
        add_model(tmp_path, version.name, model_id=f"foreign{round_}")
        os.replace(version, settings.latest_model_path)
        reconciler.reconcile()
        reconciler.reconcile()  # the next one forgets the version before
        on_latest = [i for i in reconciler._checks if i[0] == "<latest>"]
        assert len(on_latest) == 1, on_latest


def test_latest_is_made_newer_than_a_model_with_the_same_mtime(tmp_path):
    """Rasa started with `--model <folder>` loads the newest mtime; a tie leaves its pick to
    the listing's order, so latest's mtime goes just above. A dangling link among the
    candidates is passed over."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    Reconciler(settings).reconcile()
    other = add_model(folder, "other.tar.gz", age_s=300)
    os.utime(other, ns=(0, settings.latest_model_path.stat().st_mtime_ns))
    (folder / "dangling.tar.gz").symlink_to(folder / "gone.tar.gz")
    notes = folder / "notes.txt"  # newer, but Rasa's glob (*.tar.gz) never sees it
    notes.write_text("not a model")
    os.utime(notes, ns=(0, time.time_ns() + 86400 * 10**9))
    record = read_record(settings.latest_model_path)
    changed = keep_latest_newest(folder, settings.latest_model_path, record)
    assert changed is not None and changed.st_mtime_ns > other.stat().st_mtime_ns
    assert changed.st_mtime_ns < notes.stat().st_mtime_ns
    assert settings.latest_model_path.stat().st_mtime_ns == changed.st_mtime_ns


def test_same_content_compares_every_chunk(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    head = os.urandom(3000)
    first.write_bytes(head + b"a")
    second.write_bytes(head + b"b")
    assert not same_content(first, second, chunk=1000)  # equal in the first three chunks
    second.write_bytes(head + b"a")
    assert same_content(first, second, chunk=1000)


def test_a_change_after_the_event_is_not_quiet(tmp_path):
    """A close_write announced the file at t; its mtime is 1 s later (written again since):
    only THROTTLE_DELAY of quiet, not the event, lets it be copied."""
    settings = make_settings(tmp_path, THROTTLE_DELAY="10000")
    reconciler = Reconciler(settings)
    event_at = time.time()
    arrival = Arrival(at=event_at, seq=1, seen=event_at, ino=1, size=10,
                      mtime_ns=int((event_at + 1) * 1e9), event_at=event_at)
    assert not reconciler._quiet(arrival, arrival.mtime_ns, event_at + 2)
    assert reconciler._quiet(arrival, int((event_at - 1) * 1e9), event_at + 2)


# -- the files module's guards (mutation check, third pass) ---------------------------------------

def test_a_journal_saved_by_this_version_is_read_with_its_format_number_1(tmp_path):
    """The journal's format is 1 on disk: a journal saved by a running rotator survives an
    upgrade (a changed number would set every existing journal aside)."""
    from worker.folder.arrivals import ArrivalJournal, journal_path

    latest = tmp_path / "latest.tar.gz"
    journal_path(latest).write_text(json.dumps({
        "version": 1, "seq": 1, "high_water": 100.0, "scanned_at": None,
        "files": {"a.tar.gz": {"at": 100.0, "seq": 1, "seen": 100.0, "ino": 5, "size": 10,
                               "mtime_ns": 1, "event_at": 100.0}}}))
    problems = []
    journal = ArrivalJournal.load(latest, lambda path, problem: problems.append(problem))
    assert problems == [] and list(journal.entries) == ["a.tar.gz"]


def test_an_invalid_record_read_without_a_handler_is_absent(tmp_path):
    settings = make_settings(tmp_path)
    record_path(settings.latest_model_path).write_text('{"source": 7}')
    assert read_record(settings.latest_model_path) is None
    seen = []
    assert read_record(settings.latest_model_path, lambda *problem: seen.append(problem)) is None
    assert len(seen) == 1


def test_a_publish_records_how_long_it_took(tmp_path):
    """The metrics show the record's duration_s as the last publish's duration."""
    settings = make_settings(tmp_path)
    add_model(settings.target_dir, "a.tar.gz", age_s=300)
    Reconciler(settings).reconcile()
    assert 0 <= read_record(settings.latest_model_path).duration_s < 60


def test_temp_files_go_only_when_they_are_ours(tmp_path):
    """A leftover temp file of ours is removed; a link with our prefix (not a file we write)
    stays, and a folder that is gone has nothing to remove."""
    from worker.folder.files import remove_temporary_files

    settings = make_settings(tmp_path)
    folder = settings.target_dir
    leftover = folder / ".latest.tar.gz.tmp-0123abcd"
    leftover.write_bytes(b"killed mid-write")
    target = folder / "keep.tar.gz"
    target.write_bytes(b"someone's")
    link = folder / ".latest.tar.gz.tmp-link"
    link.symlink_to(target)
    assert remove_temporary_files(settings.latest_model_path) == [leftover]
    assert link.is_symlink() and target.exists()
    assert remove_temporary_files(tmp_path / "gone" / "latest.tar.gz") == []


def test_every_model_is_listed_whatever_other_names_come_between(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for index in range(5):
        add_model(folder, f"m{index}.tar.gz")
    for index in range(5):  # created after the models: tmpfs lists them first
        (folder / f"notes{index}.txt").write_text("not a model")
        (folder / f".hidden{index}.tar.gz").write_text("not a candidate")
    listed = sorted(m.path.name for m in list_models(folder, "*.tar.gz", folder / "latest.tar.gz"))
    assert listed == [f"m{index}.tar.gz" for index in range(5)]


def test_a_foreign_latest_is_settled_by_an_event_after_its_last_change(tmp_path):
    """Another program's latest, not whole: replaced at once only if a close_write came
    after its last change; one changed 1 s after its event waits BROKEN_GRACE_PERIOD."""
    reconciler = Reconciler(make_settings(tmp_path))
    event_at = time.time()

    def arrival(mtime_s: float) -> Arrival:
        return Arrival(at=event_at, seq=1, seen=event_at, ino=1, size=10,
                       mtime_ns=int(mtime_s * 1e9), event_at=event_at)

    after, before = arrival(event_at + 1), arrival(event_at - 1)
    assert reconciler._foreign_latest_settled_at(after, after.mtime_ns, event_at + 2) is not None
    assert reconciler._foreign_latest_settled_at(before, before.mtime_ns, event_at + 2) is None


def test_a_foreign_latest_s_source_is_found_by_content_not_by_size(tmp_path, caplog):
    """Another program wrote latest; a model of the very same size but other bytes is not
    its source: the record names none, and the log says who wrote latest."""
    settings = make_settings(tmp_path)
    folder = settings.target_dir
    settings.latest_model_path.write_bytes(model_bytes(20_000, model_id="theirs"))
    set_mtime(settings.latest_model_path, time.time() - 100)
    same_size = folder / "other.tar.gz"
    theirs = bytearray(settings.latest_model_path.read_bytes())
    theirs[len(theirs) // 2] ^= 0xFF  # one byte differs
    same_size.write_bytes(bytes(theirs))
    set_mtime(same_size, time.time() - 300)
    with caplog.at_level("INFO"):
        Reconciler(settings).reconcile()
    assert read_record(settings.latest_model_path).source == ""
    assert "(written by another program)" in caplog.text, caplog.text


def test_news_after_a_lost_journal_and_a_clock_gone_back_sorts_after_what_is_published(
        tmp_path):
    """The publish record's arrival is respected when the journal is rebuilt: a model whose
    event comes after the journal was lost, timed by a clock that went back an hour, is
    newer than the published one (else it would be older than latest, and deleted)."""
    from worker.folder.arrivals import journal_path

    settings = make_settings(tmp_path)
    folder = settings.target_dir
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    add_model(folder, "a.tar.gz", age_s=300)
    assert kinds(reconciler.reconcile()) == [("published", "a.tar.gz")]
    journal_path(settings.latest_model_path).unlink()
    clock[0] -= 3600
    add_model(folder, "b.tar.gz", age_s=7200)
    reconciler.note_arrival("b.tar.gz", clock[0])
    assert kinds(reconciler.reconcile()) == [("published", "b.tar.gz")]


def test_the_source_s_late_event_moves_latest_s_place_in_a_real_run_never_in_a_dry_run(
        tmp_path):
    """s is found by a look and published; its event comes in later and places it after
    the models known by then, and latest's place moves with it (the record says so). Where
    the record still names the old place (its save failed), a dry run writes nothing and
    the next real run writes the new place."""
    from worker.folder.arrivals import ArrivalJournal

    settings = make_settings(tmp_path)
    folder, latest = settings.target_dir, settings.latest_model_path
    add_model(folder, "a.tar.gz", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()  # a complete look at the folder
    add_model(folder, "s.tar.gz", age_s=2)
    reconciler.reconcile()
    assert read_record(latest).source == "s.tar.gz"
    old_place = record_path(latest).read_bytes()
    reconciler.note_arrival("s.tar.gz", time.time())
    reconciler.reconcile()
    moved = ArrivalJournal.load(latest).entries["s.tar.gz"].key
    assert read_record(latest).arrival_key == moved
    assert parse_record(json.loads(old_place)).arrival_key < moved

    record_path(latest).write_bytes(old_place)
    before = snapshot(folder)
    Reconciler(settings).reconcile(dry_run=True)
    assert snapshot(folder) == before, "a dry run wrote"
    Reconciler(settings).reconcile()
    assert read_record(latest).arrival_key == moved


def test_an_event_is_forgotten_once_the_journal_holds_it(tmp_path):
    """The rotator's memory of events holds only what the journal does not have yet: the
    events a reconcile bound are dropped once the journal is saved (a failed save keeps
    them: tests/test_faults.py), and an event for a file that is gone is dropped."""
    settings = make_settings(tmp_path)
    reconciler = Reconciler(settings)
    add_model(settings.target_dir, "a.tar.gz", age_s=300)
    reconciler.note_arrival("a.tar.gz", time.time())
    reconciler.note_arrival("gone.tar.gz", time.time())
    reconciler.reconcile()
    assert reconciler.pending == {}


def test_a_model_changed_under_its_publish_waits_the_delay_and_the_next_one_goes(
        tmp_path, monkeypatch):
    """The newest model changes between the listing and its copy (SourceChanged: a real
    change to the real file, its mtime, made at the moment the publish starts): it is skipped
    and looked at again after THROTTLE_DELAY, and the next model that arrived after latest
    is published meanwhile."""
    import worker.folder.reconcile as reconcile

    settings = make_settings(tmp_path)  # THROTTLE_DELAY 1 s
    folder = settings.target_dir
    add_model(folder, "a.tar.gz", age_s=300)
    clock = [time.time()]
    reconciler = Reconciler(settings, clock=lambda: clock[0])
    reconciler.reconcile()
    add_model(folder, "m.tar.gz", age_s=200)
    newest = add_model(folder, "n.tar.gz", age_s=100)
    real_publish, changed = reconcile.publish_atomically, []

    def changed_first(model, *args):
        if model.name == "n.tar.gz" and not changed:
            changed.append(model.name)
            os.utime(newest)  # now: no longer the version listed
        return real_publish(model, *args)

    monkeypatch.setattr(reconcile, "publish_atomically", changed_first)
    outcome = reconciler.reconcile()
    assert changed == ["n.tar.gz"]
    assert kinds(outcome) == [("skipped", "n.tar.gz"), ("published", "m.tar.gz"),
                              ("deleted", "a.tar.gz")]
    assert outcome.recheck_at == pytest.approx(clock[0] + 1.0, abs=0.5)
