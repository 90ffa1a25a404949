"""Loadable, not just whole (worker/folder/loadable.py and its rules in worker/folder/reconcile.py):
the version gate, the refusal memory, and the last loaded model, on real files in a temporary
folder."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from tests.folder.test_reconcile import make_settings
from tests.helpers import set_mtime
from worker.folder.archive import check_archive
from worker.folder.files import read_record
from worker.folder.loadable import (
    MAX_REFUSED,
    REFUSED,
    FileMark,
    LoadableBook,
    below_minimum,
    book_path,
    highest_version,
    parse_version,
    record_loaded,
    record_refusal,
)
from worker.folder.reconcile import Reconciler


def rasa_model(path: Path, model_id: str, version: str | None = "3.6.21",
               age_s: float = 60.0) -> Path:
    """A Rasa-like archive whose metadata.json names the Rasa version that trained it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        payload = os.urandom(4096)
        info = tarfile.TarInfo("components/part.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
        metadata = {"model_id": model_id, "trained_at": "2026-11-26T10:10:10"}
        if version is not None:
            metadata["rasa_open_source_version"] = version
        data = json.dumps(metadata).encode()
        info = tarfile.TarInfo("metadata.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    set_mtime(path, time.time() - age_s)
    return path


def published_id(settings) -> str | None:
    return check_archive(settings.latest_model_path).model_id


# -- versions --------------------------------------------------------------------------------

def test_versions_compare_as_rasa_compares_them():
    assert below_minimum("3.6.20", "3.6.21")
    assert below_minimum("3.5.0", "3.6.21")
    assert not below_minimum("3.6.21", "3.6.21")
    assert not below_minimum("3.7.0", "3.6.21")
    assert not below_minimum("3.10.0", "3.9.2")  # numbers, not text
    assert below_minimum("3.7.0rc1", "3.7.0")  # a pre-release comes before its release
    assert below_minimum("3.7.0.dev1", "3.7.0a1")
    assert below_minimum(None, "3.6.21") and below_minimum("soon", "3.6.21")
    assert not below_minimum("3.5.0", None)  # no minimum: no gate
    assert parse_version("3.6") == parse_version("3.6.0")
    assert highest_version(["3.6.0", "3.6.21", "junk", None]) == "3.6.21"
    assert highest_version([]) is None


# -- the book as untrusted input -----------------------------------------------------------

def test_a_bad_refusal_memory_is_set_aside_never_fatal(settings):
    path = book_path(settings.latest_model_path)
    for bad in (b"{not json", json.dumps({"version": 1, "refused": [{"name": 5}]}).encode(),
                json.dumps({"version": 1, "refused": [{"name": "../x", "inode": 1, "size": 1,
                                                       "mtime_ns": 1, "at": 1.0}]}).encode(),
                json.dumps({"version": 1, "refused": [{}] * (MAX_REFUSED + 1)}).encode(),
                b"[" * 300_000):
        path.write_bytes(bad)
        book = LoadableBook.load(settings.latest_model_path)
        assert book.refused == {} and book.loaded is None
        assert "set aside" in book.problem
        assert not path.exists() and path.with_name(path.name + ".rejected").exists()
    # The reconcile reports it once and goes on publishing.
    rasa_model(settings.target_dir / "a.tar.gz", "A")
    path.write_bytes(b"garbage")
    outcome = Reconciler(settings).reconcile()
    assert any(a.kind == "failed" and "refusal memory" in a.detail for a in outcome.actions)
    assert published_id(settings) == "A"


def test_the_book_keeps_at_most_its_bound_and_round_trips(settings):
    book = LoadableBook.load(settings.latest_model_path)
    for index in range(MAX_REFUSED + 5):
        book.refuse(FileMark(f"m{index}.tar.gz", index, 1, 1, at=1.0, reason=REFUSED))
    book.mark_loaded(FileMark("good.tar.gz", 9, 9, 9, at=2.0, model_id="G"))
    book.save()
    again = LoadableBook.load(settings.latest_model_path)
    assert len(again.refused) == MAX_REFUSED and "m0.tar.gz" not in again.refused
    assert again.loaded.model_id == "G" and not again.problem


# -- the version gate ----------------------------------------------------------------------

def test_a_model_below_the_minimum_version_is_kept_not_published_reported_once(tmp_path):
    settings = make_settings(tmp_path, RASA_MIN_MODEL_VERSION="3.6.21")
    folder = settings.target_dir
    rasa_model(folder / "good.tar.gz", "G", "3.6.21", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    assert published_id(settings) == "G"
    rasa_model(folder / "old.tar.gz", "OLD", "3.5.0", age_s=100)
    outcome = reconciler.reconcile()
    assert published_id(settings) == "G"
    assert (folder / "old.tar.gz").exists()
    skipped = [a for a in outcome.actions if a.kind == "skipped"]
    assert len(skipped) == 1 and skipped[0].reason == "version"
    assert "3.5.0" in skipped[0].detail and "3.6.21" in skipped[0].detail
    assert reconciler.reconcile().actions == []  # reported once
    book = LoadableBook.load(settings.latest_model_path)
    assert book.refused["old.tar.gz"].reason == "version"
    # A newer compatible model is published as usual (and the old one pruned as older).
    rasa_model(folder / "new.tar.gz", "NEW", "3.6.21", age_s=10)
    reconciler.reconcile()
    assert published_id(settings) == "NEW"


def test_no_minimum_no_gate(settings):
    rasa_model(settings.target_dir / "old.tar.gz", "OLD", "3.5.0")
    Reconciler(settings).reconcile()
    assert published_id(settings) == "OLD"


# -- refusals and the last loaded model ------------------------------------------------------

def test_latest_returns_to_the_last_loaded_model_after_a_refusal(settings):
    folder = settings.target_dir
    rasa_model(folder / "good.tar.gz", "G", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    record_loaded(settings.latest_model_path, read_record(settings.latest_model_path), "r1")
    rasa_model(folder / "bad.tar.gz", "B", age_s=100)
    reconciler.reconcile()
    assert published_id(settings) == "B"
    # KEEP_PREVIOUS is 0, and yet the model a replica last loaded is kept.
    assert (folder / "good.tar.gz").exists()
    assert record_refusal(settings.latest_model_path, read_record(settings.latest_model_path),
                          "http://r1:5005", "PUT /model answered 400")
    outcome = reconciler.reconcile()
    assert published_id(settings) == "G"
    assert ("published", "good.tar.gz") in [(a.kind, a.path.name) for a in outcome.actions]
    # Reported (log line, and the metric's reason label) when latest leaves it.
    assert [(a.kind, a.path.name, a.reason) for a in outcome.actions if a.kind == "skipped"] \
        == [("skipped", "bad.tar.gz", "refused")]
    assert (folder / "bad.tar.gz").exists(), "a refused model is never deleted for it"
    # Not published again while its file is the same, also by a new rotator (a restart).
    for fresh in (reconciler, Reconciler(settings)):
        fresh.reconcile()
        assert published_id(settings) == "G"
    # A newer model wins as usual.
    rasa_model(folder / "newer.tar.gz", "N", age_s=10)
    reconciler.reconcile()
    assert published_id(settings) == "N"


def test_a_refused_model_is_tried_again_once_its_file_changes(settings):
    folder = settings.target_dir
    rasa_model(folder / "good.tar.gz", "G", age_s=300)
    reconciler = Reconciler(settings)
    reconciler.reconcile()
    record_loaded(settings.latest_model_path, read_record(settings.latest_model_path), "r1")
    bad = rasa_model(folder / "bad.tar.gz", "B", age_s=100)
    reconciler.reconcile()
    record_refusal(settings.latest_model_path, read_record(settings.latest_model_path), "r1",
                   "400")
    reconciler.reconcile()
    assert published_id(settings) == "G"
    rasa_model(bad, "B2", age_s=5)  # rewritten: a new file version
    reconciler.note_arrival("bad.tar.gz", time.time())
    reconciler.reconcile()
    assert published_id(settings) == "B2"
    assert "bad.tar.gz" not in LoadableBook.load(settings.latest_model_path).refused


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


def test_a_bad_minimum_version_is_one_clear_line(tmp_path):
    from worker.settings import SettingError

    for bad in ("soon", "3.x", " 3.6.21"):
        with pytest.raises(SettingError) as refused:
            make_settings(tmp_path, RASA_MIN_MODEL_VERSION=bad)
        assert str(refused.value).startswith("RASA_MIN_MODEL_VERSION=")
        assert "a Rasa version such as 3.6.21" in str(refused.value)


def test_a_newer_model_kept_below_the_minimum_stops_no_prune_of_older_ones(tmp_path):
    """The prune goes on past a model it keeps because it arrived after latest (here one
    below the minimum version, never published): what arrived before latest is deleted."""
    settings = make_settings(tmp_path, RASA_MIN_MODEL_VERSION="3.6.21", KEEP_PREVIOUS="0")
    folder = settings.target_dir
    rasa_model(folder / "older.tar.gz", "O", age_s=400)
    rasa_model(folder / "good.tar.gz", "G", age_s=300)
    rasa_model(folder / "below.tar.gz", "B", "3.5.0", age_s=100)
    Reconciler(settings).reconcile()
    assert published_id(settings) == "G"
    assert (folder / "below.tar.gz").exists()
    assert not (folder / "older.tar.gz").exists()
