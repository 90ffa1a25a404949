"""The folder rules as a stateful property (Hypothesis): random histories of arrivals (seen
as events or found by a rescan, whole or broken, with file times in the past, now or a day
ahead), rollbacks (an old file moved back in), deletions by a person, publishes that fail
(ENOSPC at the copy), restarts (a new Reconciler that gets the reader's undelivered events),
`once`-style second instances, clock jumps, and models Rasa refuses (issue 17): some trained
by a Rasa below the minimum version, and a replica that loads or refuses what latest holds.
After every reconcile:

- nothing newer than what is published is deleted (newer = arrived later, in the history);
- the published file is whole, and its record describes it (same file, same model);
- no temp file is left;
and once the folder is quiet: latest holds the newest loadable whole model there is (after a
refusal: the last loaded model, or newer), and Rasa's restart pick (newest mtime among
*.tar.gz) is the published file.

Real files in a temporary folder; the only seam is the copy, made to fail with ENOSPC.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.helpers import model_bytes
from worker.folder import archive
from worker.folder.archive import BrokenArchive, check_archive
from worker.folder.files import read_record
from worker.folder.loadable import record_loaded, record_refusal
from worker.folder.reconcile import Reconciler
from worker.settings import read_settings

THROTTLE_S = 1.0
DAY = 86_400.0
WHOLE = model_bytes(3000, model_id="template")
MINIMUM = "3.6.21"


def versioned_model(model_id: str, rasa_version: str) -> bytes:
    """A small Rasa-like archive whose metadata.json names the Rasa that trained it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("components/part.bin", os.urandom(1500)),
                           ("metadata.json", json.dumps(
                               {"model_id": model_id,
                                "rasa_open_source_version": rasa_version}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


HOSTILE_RECORDS = {"deep": b"[" * 200_000, "seq-infinity": b'{"arrival_seq": Infinity}',
                   "cut": b"{", "nan": b'{"source": "a", "arrived_at": NaN}',
                   "401-digits": b"9" * 401, "source-a-list": b'{"source": ["a"]}'}
HOSTILE_JOURNALS = {"deep": b"[" * 200_000, "seq-infinity": b'{"version": 1, "seq": Infinity}',
                    "entry-a-list": b'{"version": 1, "seq": 1, "files": {"a": [1]}}',
                    "empty": b"", "high-water-1e400": b'{"version": 1, "seq": 1, '
                                                      b'"high_water": 1e400}'}


class FolderRules(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="rotator-invariants-"))
        self.folder = self.base / "models"
        self.folder.mkdir()
        self.offset = 0.0  # the host clock's jump, seconds
        self.max_now = 0.0  # the latest clock reading so far (a file server's clock)
        self.arrived: dict[str, dict] = {}  # every model ever put in: data, order, whole
        self.present: set[str] = set()  # what we believe is in the folder
        self.order = 0
        self.undelivered: list[tuple[str, float]] = []  # the reader's buffer
        self.failing = False
        self.reconciler: Reconciler | None = None
        self.refused: set[str] = set()  # names a replica could not load
        self.loaded: str | None = None  # the last name a replica loaded

    def now(self) -> float:
        value = time.time() + self.offset
        self.max_now = max(self.max_now, value)
        return value

    @initialize(mode=st.sampled_from(["copy", "move"]), keep=st.integers(0, 1))
    def start(self, mode, keep):
        self.settings = read_settings({
            "TARGET_DIR": str(self.folder), "RUN_DIR": str(self.base / "run"),
            "THROTTLE_DELAY": str(int(THROTTLE_S * 1000)), "PUBLISH_MODE": mode,
            "KEEP_PREVIOUS": str(keep), "BROKEN_GRACE_PERIOD": "3600",
            "RASA_MIN_MODEL_VERSION": MINIMUM})
        self.latest = self.settings.latest_model_path
        self.reconciler = Reconciler(self.settings, clock=self.now)
        self.reconciler.reconcile()  # the rotator's first act: a look at the folder
        original = archive.copy_range

        def copy_range(source_fd, target_fd, size, stopping=None):
            if self.failing:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return original(source_fd, target_fd, size, stopping)

        self._original_copy_range = original
        archive.copy_range = copy_range

    def teardown(self):
        if hasattr(self, "_original_copy_range"):
            archive.copy_range = self._original_copy_range
        shutil.rmtree(self.base, ignore_errors=True)

    # -- what happens to the folder -----------------------------------------------------

    def _put(self, whole: bool, mtime: float, old: bool = False) -> str:
        self.order += 1
        name = f"m{self.order:03d}.tar.gz"
        data = versioned_model(name, "3.5.0" if old else MINIMUM)
        if not whole:
            data = data[: len(data) // 2]
        path = self.folder / name
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        self.arrived[name] = {"data": data, "order": self.order, "whole": whole, "old": old}
        self.present.add(name)
        return name

    @rule(whole=st.booleans(), age=st.sampled_from([0.0, 5.0, 3600.0, -DAY]))
    def arrive_seen(self, whole, age):
        """Rasa writes a model (age 0), a copy keeps its time (5 s), an old model is moved
        back in (a rollback, an hour), a copy from a host a day ahead; the reader sees it."""
        now = self.now()
        name = self._put(whole, now - age)
        self.reconciler.note_arrival(name, now)
        self.undelivered.append((name, now))

    @rule()
    def arrive_too_old(self):
        """A whole model trained by a Rasa below the minimum: never published, and never
        deleted for it."""
        now = self.now()
        name = self._put(True, now, old=True)
        self.reconciler.note_arrival(name, now)
        self.undelivered.append((name, now))

    def _published_record(self):
        record = read_record(self.latest)
        if record is None or not self.latest.exists() or not record.describes(
                self.latest.stat()) or not (self.folder / record.source).exists():
            return None
        return record

    @rule()
    def replica_loads_latest(self):
        record = self._published_record()
        if record is not None:
            record_loaded(self.latest, record, "replica")
            self.loaded = record.source

    @rule()
    def replica_refuses_latest(self):
        record = self._published_record()
        if record is not None:
            record_refusal(self.latest, record, "replica", "PUT /model answered 400")
            self.refused.add(record.source)

    @rule(whole=st.booleans(), ahead=st.booleans())
    def arrive_unseen(self, whole, ahead):
        """A model written where inotify cannot see (NFS from another node), found by the
        periodic rescan; its file time from this host's clock, or a day ahead. Alone in its
        interval between two looks: the order of an unseen file among events of the same
        interval is the file-time rule's, which a clock jump can make differ from history."""
        self.reconcile()
        self._put(whole, self.now() + (DAY if ahead else 0.0))
        self._reconcile(self.reconciler)

    @rule(data=st.data())
    def delete_by_a_person(self, data):
        names = sorted(n for n in self.present if (self.folder / n).exists())
        if names:
            name = data.draw(st.sampled_from(names))
            (self.folder / name).unlink()
            self.present.discard(name)

    @rule(delta=st.sampled_from([-3600.0, 0.0, 0.2, DAY]))
    def touch_latest(self, delta):
        """A touch, an `rsync -t` or a backup restoring times: latest's mtime changes, not a
        byte of it. No arrival: it must never make a newer model look older."""
        if self.latest.exists():
            when = self.now() + delta
            os.utime(self.latest, (when, when))

    @rule(kind=st.sampled_from(sorted(HOSTILE_RECORDS)))
    def corrupt_record(self, kind):
        """Another program writes the models folder: the publish record is garbage."""
        (self.folder / ".latest.tar.gz.json").write_bytes(HOSTILE_RECORDS[kind])

    @precondition(lambda self: self.reconciler is not None)
    @rule(kind=st.sampled_from(sorted(HOSTILE_JOURNALS)))
    def corrupt_journal(self, kind):
        """The journal turns to garbage (or is lost) after a quiet folder. Only then: what it
        alone knew (events of models not yet published) is lost with it, and the file-time
        rule decides for those, as after a reader that was down (README). The rotator takes
        it in (sets it aside, rebuilds it) before anything else happens: with the record
        lost too, only file times would be left."""
        self.settle()
        (self.folder / ".latest.tar.gz.arrivals.json").write_bytes(HOSTILE_JOURNALS[kind])
        self.undelivered.clear()
        self.reconciler = Reconciler(self.settings, clock=self.now)
        for name in sorted(self.present):  # what survives: the folder and the record
            if name != self._held():
                self.present.discard(name)
                (self.folder / name).unlink(missing_ok=True)
        self._reconcile(self.reconciler)

    @rule(on=st.booleans())
    def disk_full(self, on):
        self.failing = on

    @rule(delta=st.sampled_from([-DAY, -60.0, 60.0, DAY]))
    def clock_jump(self, delta):
        self.offset += delta

    @rule()
    def time_passes(self):
        self.offset += THROTTLE_S + 0.5

    @rule()
    def restart(self):
        """A new rotator process; the reader delivers what it could not before."""
        self.reconciler = Reconciler(self.settings, clock=self.now)
        for name, when in self.undelivered:
            self.reconciler.note_arrival(name, when)

    @precondition(lambda self: self.reconciler is not None and not self.reconciler.pending)
    @rule()
    def once_beside(self):
        """`python -m worker once` beside the rotator. Not while the rotator holds events it
        has not reconciled yet (its debounce, at most 4 x THROTTLE_DELAY): `once` cannot
        know them and orders those files by the file-time rule (README)."""
        self._reconcile(Reconciler(self.settings, clock=self.now))

    @rule()
    def reconcile(self):
        self._reconcile(self.reconciler)
        self.undelivered.clear()

    @rule()
    def settle(self):
        """The folder quiet for THROTTLE_DELAY, the disk fine again: then latest holds the
        newest whole model, and a Rasa restart loads it."""
        self.failing = False
        self._reconcile(self.reconciler)  # what the reader saw is bound to files now
        self.offset += THROTTLE_S + 0.5
        for _ in range(2):
            self._reconcile(self.reconciler)
        self.undelivered.clear()
        loadable = [n for n in self.present if self.arrived[n]["whole"]
                    and not self.arrived[n]["old"] and n not in self.refused]
        held = self._held()
        around = list(loadable)
        if held is not None and not (held in self.refused and self.loaded in loadable) \
                and not self.arrived.get(held, {}).get("old"):
            around.append(held)  # a refused latest stays only with nothing to return to
        if not around:
            return
        newest = max(around, key=lambda n: self.arrived[n]["order"])
        assert held == newest, (f"latest holds {held}, the newest loadable whole model is "
                                f"{newest} (refused {sorted(self.refused)}, last loaded "
                                f"{self.loaded})")
        pick = max(glob.glob(os.path.join(self.folder, "*.tar.gz")), key=os.path.getmtime)
        assert Path(pick) == self.latest, f"a Rasa restart would load {pick}"

    # -- checks ---------------------------------------------------------------------------

    def _held(self) -> str | None:
        try:
            data = self.latest.read_bytes()
        except FileNotFoundError:
            return None
        return next((n for n, a in self.arrived.items() if a["data"] == data), "?")

    def _reconcile(self, reconciler: Reconciler) -> None:
        reconciler.reconcile()
        held = self._held()
        held_order = self.arrived[held]["order"] if held in self.arrived else None
        for name in sorted(self.present):
            if (self.folder / name).exists():
                continue
            self.present.discard(name)
            model = self.arrived[name]
            if not model["whole"] or name == held:
                continue  # a broken file after its grace; a source moved into latest
            assert name != self.loaded, f"{name}, the last model a replica loaded, deleted"
            assert held_order is not None and model["order"] < held_order, (
                f"{name} (arrival {model['order']}) deleted; latest holds {held}")
        self._check_latest()

    def _check_latest(self) -> None:
        leftovers = [p.name for p in self.folder.iterdir() if ".tmp-" in p.name]
        assert leftovers == [], f"temp files left: {leftovers}"
        if not self.latest.exists():
            return
        try:
            check_archive(self.latest)
        except BrokenArchive as error:
            raise AssertionError(f"the published file is not whole: {error}") from None
        record = read_record(self.latest)
        assert record is not None and record.describes(self.latest.stat()), \
            "latest and its record disagree"
        assert record.model_id == self._held(), (record.model_id, self._held())

    @invariant()
    def no_temporary_file(self):
        if self.reconciler is not None:
            assert not [p for p in self.folder.iterdir() if ".tmp-" in p.name]


FolderRules.TestCase.settings = hypothesis_settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_folder_rules = FolderRules.TestCase
