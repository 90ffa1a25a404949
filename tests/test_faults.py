"""Faults on real files: a full disk (a small tmpfs in a private mount namespace), a model the
tool cannot read (another uid through setpriv), FIFOs where files belong, the same folder
spelled two ways. Each test drives the real Reconciler in a child process, so a namespace, a
uid or a process that blocks forever stays in that child. Needs root, as CI has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, model_bytes, run_worker, set_mtime, write_model
from worker.folder.archive import check_archive
from worker.folder.files import list_models, read_record
from worker.folder.reconcile import RETRY_AFTER_ERROR_S, Reconciler
from worker.settings import read_settings

UID, GID = 1000, 1000
DEBIAN_PYTHON = "/usr/bin/python3.11"

# Shared by every driver: settings for a folder, a model writer, a snapshot of the folder.
PRELUDE = textwrap.dedent('''
    import io, json, os, sys, tarfile, time
    from pathlib import Path
    from worker.folder.reconcile import Reconciler
    from worker.settings import read_settings

    def settings_for(folder, run, **extra):
        env = {"TARGET_DIR": str(folder), "RUN_DIR": str(run), "THROTTLE_DELAY": "0"}
        env.update(extra)
        return read_settings(env)

    def model(path, payload, model_id, age_s=100):
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for name, data in (("components/a.bin", os.urandom(payload)),
                               ("metadata.json", json.dumps({"model_id": model_id}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path.read_bytes()

    def snapshot(folder, latest_bytes_of):
        latest = folder / "latest.tar.gz"
        held = latest.read_bytes() if latest.exists() else None
        return {"files": sorted(p.name for p in folder.iterdir()),
                "latest": next((k for k, v in latest_bytes_of.items() if v == held), held and "?")}

    def free_bytes(folder):
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize

    def kinds(outcome):
        return [[a.kind, a.path.name, a.detail] for a in outcome.actions]
''')


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the fault tests need root (unshare --mount, setpriv), as CI has")


def run_on_tmpfs(tmp_path: Path, size: str, script: str, timeout: float = 120) -> dict:
    """Run `script` (after PRELUDE) with argv[1] a fresh tmpfs of `size`, mounted in a
    private mount namespace that dies with the child. It prints one JSON line."""
    need_root()
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    code = PRELUDE + textwrap.dedent(script)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount -t tmpfs -o size="$1" rotator-full-disk "$2" && shift 2 && exec "$@"', "sh",
         size, str(mount_point), sys.executable, "-c", code, str(mount_point),
         str(tmp_path / "run")],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True,
        timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_full_disk_during_the_copy_loses_nothing_and_is_retried(tmp_path):
    """Observation 1: ENOSPC while copying B logged a failure, then deleted B as "older than
    the published model". Now B stays, no temp file stays, and B is published once space
    is freed; only then is A pruned."""
    report = run_on_tmpfs(tmp_path, "4m", '''
        disk, run = Path(sys.argv[1]), Path(sys.argv[2])
        folder = disk / "models"
        folder.mkdir()
        settings = settings_for(folder, run)
        contents = {"a": model(folder / "a.tar.gz", 20_000, "a", age_s=200)}
        reconciler = Reconciler(settings)
        reconciler.reconcile()
        contents["b"] = model(folder / "b.tar.gz", 1_500_000, "b", age_s=100)
        filler = disk / "filler"
        filler.write_bytes(b"x" * (free_bytes(disk) - 700_000))  # B fits, its copy does not
        steps = {}
        for step in ("full", "still-full"):
            before = time.time()
            outcome = reconciler.reconcile()
            steps[step] = {"actions": kinds(outcome), **snapshot(folder, contents),
                           "retry_in": outcome.recheck_at and outcome.recheck_at - before}
        steps["restarted-full"] = {"actions": kinds(Reconciler(settings).reconcile()),
                                   **snapshot(folder, contents)}
        filler.unlink()
        outcome = reconciler.reconcile()
        steps["freed"] = {"actions": kinds(outcome), **snapshot(folder, contents)}
        print(json.dumps(steps))
    ''')
    full = report["full"]
    assert [a[0] for a in full["actions"]] == ["failed"], full
    assert "No space left on device" in full["actions"][0][2]
    assert full["latest"] == "a" and "b.tar.gz" in full["files"], full
    # Retried, but not at once (THROTTLE_DELAY is 0 here): a disk that stays full would
    # otherwise cost a copy attempt in a tight loop.
    assert full["retry_in"] and full["retry_in"] >= RETRY_AFTER_ERROR_S, full
    for step in ("full", "still-full", "restarted-full"):
        assert "b.tar.gz" in report[step]["files"], report[step]
        assert not [n for n in report[step]["files"] if ".tmp-" in n], report[step]
        assert not [a for a in report[step]["actions"] if a[0] == "deleted"], report[step]
    freed = report["freed"]
    assert freed["latest"] == "b", freed
    assert [a[:2] for a in freed["actions"]] == [["published", "b.tar.gz"],
                                                ["deleted", "a.tar.gz"]]


def test_a_full_disk_is_one_failure_not_one_per_newer_model(tmp_path):
    """ENOSPC concerns the folder, not the model: with two newer models that do not fit,
    the newest is tried, fails, and the older one is not tried (it would fail the same way,
    or, smaller, be published though an even newer model waits). Once space is freed the
    newest is published."""
    report = run_on_tmpfs(tmp_path, "4m", '''
        disk, run = Path(sys.argv[1]), Path(sys.argv[2])
        folder = disk / "models"
        folder.mkdir()
        settings = settings_for(folder, run)
        contents = {"a": model(folder / "a.tar.gz", 20_000, "a", age_s=300)}
        reconciler = Reconciler(settings)
        reconciler.reconcile()
        contents["b"] = model(folder / "b.tar.gz", 900_000, "b", age_s=200)
        contents["c"] = model(folder / "c.tar.gz", 900_000, "c", age_s=100)
        filler = disk / "filler"
        filler.write_bytes(b"x" * (free_bytes(disk) - 500_000))  # neither copy fits
        steps = {"full": {"actions": kinds(reconciler.reconcile()), **snapshot(folder, contents)}}
        filler.unlink()
        steps["freed"] = {"actions": kinds(reconciler.reconcile()), **snapshot(folder, contents)}
        print(json.dumps(steps))
    ''')
    full = report["full"]
    assert [a[:2] for a in full["actions"]] == [["failed", "c.tar.gz"]], full
    assert "No space left on device" in full["actions"][0][2]
    assert full["latest"] == "a", full
    freed = report["freed"]
    assert freed["latest"] == "c", freed
    assert freed["actions"][0][:2] == ["published", "c.tar.gz"], freed


def test_a_full_disk_while_the_record_is_written_keeps_what_latest_holds(tmp_path):
    """Observation 1, second part: the disk filled up exactly when the publish record was
    written. latest holds B by then: B's source must stay (now and after a restart), no temp
    file may stay, and once space is back the record describes B again."""
    report = run_on_tmpfs(tmp_path, "4m", '''
        from worker.folder.files import read_record
        disk, run = Path(sys.argv[1]), Path(sys.argv[2])
        folder = disk / "models"
        folder.mkdir()
        settings = settings_for(folder, run)
        contents = {"a": model(folder / "a.tar.gz", 20_000, "a", age_s=200)}
        first = Reconciler(settings)
        first.reconcile()
        contents["b"] = model(folder / "b.tar.gz", 900_000, "b", age_s=100)
        pages = -(-(folder / "b.tar.gz").stat().st_size // 4096) * 4096
        # A Rasa server still reads the old latest: its blocks stay in use after the rename.
        reader = open(folder / "latest.tar.gz", "rb")
        filler = disk / "filler"
        filler.write_bytes(b"x" * (free_bytes(disk) - pages))  # room for B's copy, no more
        before = time.time()
        outcome = first.reconcile()
        steps = {"publish": {"actions": kinds(outcome), **snapshot(folder, contents),
                             "free": free_bytes(disk),
                             "retry_in": outcome.recheck_at and outcome.recheck_at - before}}
        restarted = Reconciler(settings)
        steps["restart"] = {"actions": kinds(restarted.reconcile()), **snapshot(folder, contents)}
        filler.unlink()
        reader.close()
        first.reconcile()  # the rotator that published B writes B's record now
        steps["retried"] = {"record": read_record(settings.latest_model_path).source}
        (folder / ".latest.tar.gz.json").unlink()  # and a new process adopts B by content
        steps["freed"] = {"actions": kinds(Reconciler(settings).reconcile()),
                          **snapshot(folder, contents),
                          "record": read_record(settings.latest_model_path).source}
        print(json.dumps(steps))
    ''')
    publish = report["publish"]
    assert publish["latest"] == "b", publish
    assert ["published", "b.tar.gz"] in [a[:2] for a in publish["actions"]], publish
    assert any(a[0] == "failed" and "record could not be saved" in a[2]
               for a in publish["actions"]), publish
    assert publish["retry_in"] and publish["retry_in"] >= RETRY_AFTER_ERROR_S, publish
    for step in ("publish", "restart", "freed"):
        assert "b.tar.gz" in report[step]["files"], f"latest's source deleted at {step}"
        assert report[step]["latest"] == "b", report[step]
        assert not [n for n in report[step]["files"] if ".tmp-" in n], report[step]
    assert report["retried"]["record"] == "b.tar.gz", "the record was not written again"
    assert report["freed"]["record"] == "b.tar.gz"


def test_a_model_that_cannot_be_deleted_and_a_latest_that_cannot_be_touched_are_reported(
        tmp_path):
    """A model the prune cannot delete (a mount point: EBUSY) is reported once and kept, and
    the prune goes on to the next one. A latest whose mtime cannot be raised above a newer
    file for Rasa's restart pick (a read-only mount: EROFS) is reported once. Each reconcile
    ends normally: an error let through would crash the rotator at every reconcile."""
    report = run_on_tmpfs(tmp_path, "8m", '''
        import subprocess
        disk, run = Path(sys.argv[1]), Path(sys.argv[2])
        folder = disk / "models"
        folder.mkdir()
        settings = settings_for(folder, run)
        contents = {name: model(folder / f"{name}.tar.gz", 20_000, name, age_s=age)
                    for name, age in (("older", 400), ("old", 300), ("a", 200))}
        stand_in = disk / "stand-in"
        stand_in.write_bytes(contents["old"])
        os.utime(stand_in, (time.time() - 300, time.time() - 300))
        subprocess.run(["mount", "--bind", stand_in, folder / "old.tar.gz"], check=True)
        reconciler = Reconciler(settings)
        steps = {"prune": kinds(reconciler.reconcile()),
                 "prune again": kinds(reconciler.reconcile())}
        latest = folder / "latest.tar.gz"
        subprocess.run(["mount", "--bind", latest, latest], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", latest], check=True)
        (folder / "partial.tar.gz").write_bytes(b"\\x1f\\x8b" + os.urandom(100))  # newer
        steps["pick"] = kinds(reconciler.reconcile())
        steps["pick again"] = kinds(reconciler.reconcile())
        print(json.dumps({**steps, **snapshot(folder, contents)}))
    ''')
    assert [a[:2] for a in report["prune"] if a[0] != "failed"] == [
        ["published", "a.tar.gz"], ["deleted", "older.tar.gz"]], report
    failed = [a for a in report["prune"] if a[0] == "failed"]
    assert len(failed) == 1 and failed[0][1] == "old.tar.gz", report
    assert "could not delete" in failed[0][2] and "busy" in failed[0][2], report
    assert report["prune again"] == [], report
    assert "old.tar.gz" in report["files"] and "older.tar.gz" not in report["files"]
    failed = [a for a in report["pick"] if a[0] == "failed"]
    assert len(failed) == 1 and "could not keep it the newest file" in failed[0][2], report
    assert not any(a[0] == "failed" for a in report["pick again"]), report
    assert report["latest"] == "a", report


def test_an_unreadable_newer_model_is_kept_and_published_once_readable(tmp_path):
    """Observation 1: the newest model unreadable (mode 000, the tool not root) was deleted
    as "older than the published model". The tool runs as uid 1000 here. It holds back
    neither the next model (m is published meanwhile) nor the prune (a goes)."""
    need_root()
    if not os.path.exists(DEBIAN_PYTHON):
        pytest.fail(f"needs {DEBIAN_PYTHON}, a Python 3.11 that uid {UID} can run")
    base = Path(tempfile.mkdtemp(prefix="rotator-unreadable-"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, UID, GID)
        code = PRELUDE + textwrap.dedent('''
            base = Path(sys.argv[1])
            folder = base / "models"
            folder.mkdir()
            settings = settings_for(folder, base / "run")
            contents = {"a": model(folder / "a.tar.gz", 20_000, "a", age_s=200)}
            reconciler = Reconciler(settings)
            reconciler.reconcile()
            contents["m"] = model(folder / "m.tar.gz", 20_000, "m", age_s=150)
            contents["b"] = model(folder / "b.tar.gz", 20_000, "b", age_s=100)
            os.chmod(folder / "b.tar.gz", 0)
            for name in ("m.tar.gz", "b.tar.gz"):  # the reader's events, in this order
                reconciler.note_arrival(name, time.time())
            steps = {}
            for step in ("unreadable", "again"):
                before = time.time()
                outcome = reconciler.reconcile()
                steps[step] = {"actions": kinds(outcome), **snapshot(folder, contents),
                               "retry_in": outcome.recheck_at and outcome.recheck_at - before}
            os.chmod(folder / "b.tar.gz", 0o644)
            steps["readable"] = {"actions": kinds(reconciler.reconcile()),
                                 **snapshot(folder, contents)}
            print(json.dumps(steps))
        ''')
        result = subprocess.run(
            ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", DEBIAN_PYTHON,
             "-c", code, str(base)], env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin"},
            capture_output=True, text=True, timeout=120, cwd=base)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    unreadable = report["unreadable"]
    assert unreadable["latest"] == "m" and "b.tar.gz" in unreadable["files"], unreadable
    assert any(a[0] == "failed" and "Permission denied" in a[2]
               for a in unreadable["actions"]), unreadable
    assert [a[:2] for a in unreadable["actions"] if a[0] != "failed"] == [
        ["published", "m.tar.gz"], ["deleted", "a.tar.gz"]], unreadable
    assert "b.tar.gz" in report["again"]["files"]
    for step in ("unreadable", "again"):  # retried, but not in a tight loop
        assert report[step]["retry_in"] and report[step]["retry_in"] >= RETRY_AFTER_ERROR_S, \
            report[step]
    assert report["again"]["actions"] == [], "the same failure logged at every retry"
    readable = report["readable"]
    assert readable["latest"] == "b", readable
    assert [a[:2] for a in readable["actions"]] == [["published", "b.tar.gz"],
                                                   ["deleted", "m.tar.gz"]], readable


def test_an_unreadable_latest_is_left_alone_and_looked_at_again_later(tmp_path):
    """latest.tar.gz put there by another user (mode 000, the tool not root), no record: the
    tool cannot tell what it holds. It replaces nothing and deletes nothing, says so once,
    and looks again after RETRY_AFTER_ERROR_S (not in a tight loop); once readable, the
    usual rules decide."""
    need_root()
    if not os.path.exists(DEBIAN_PYTHON):
        pytest.fail(f"needs {DEBIAN_PYTHON}, a Python 3.11 that uid {UID} can run")
    base = Path(tempfile.mkdtemp(prefix="rotator-unreadable-latest-"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, UID, GID)
        folder = base / "models"
        folder.mkdir()
        os.chown(folder, UID, GID)
        theirs = folder / "latest.tar.gz"
        write_model(theirs, 20_000, model_id="theirs")
        set_mtime(theirs, time.time() - 300)
        os.chmod(theirs, 0)  # root's file: uid 1000 cannot read it
        inode = theirs.stat().st_ino
        code = PRELUDE + textwrap.dedent('''
            base = Path(sys.argv[1])
            folder = base / "models"
            settings = settings_for(folder, base / "run")
            model(folder / "a.tar.gz", 20_000, "a", age_s=200)
            model(folder / "b.tar.gz", 20_000, "b", age_s=100)
            reconciler = Reconciler(settings)
            steps = {}
            for step in ("unreadable", "again"):
                before = time.time()
                outcome = reconciler.reconcile()
                steps[step] = {"actions": kinds(outcome),
                               "files": sorted(p.name for p in folder.iterdir()),
                               "latest_ino": (folder / "latest.tar.gz").stat().st_ino,
                               "retry_in": outcome.recheck_at and outcome.recheck_at - before}
            print(json.dumps(steps))
        ''')
        result = subprocess.run(
            ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", DEBIAN_PYTHON,
             "-c", code, str(base)], env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin"},
            capture_output=True, text=True, timeout=120, cwd=base)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        os.chmod(theirs, 0o644)
        settings = read_settings({"TARGET_DIR": str(folder), "RUN_DIR": str(base / "root-run"),
                                  "THROTTLE_DELAY": "0"})
        readable = [(a.kind, a.path.name) for a in Reconciler(settings).reconcile().actions]
        record = read_record(settings.latest_model_path)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    unreadable = report["unreadable"]
    assert [a[:2] for a in unreadable["actions"]] == [["failed", "latest.tar.gz"]], unreadable
    assert "cannot be read" in unreadable["actions"][0][2]
    for step in ("unreadable", "again"):
        assert report[step]["latest_ino"] == inode, "an unreadable latest was replaced"
        assert {"a.tar.gz", "b.tar.gz"} <= set(report[step]["files"]), report[step]
    assert report["again"]["actions"] == [], "the same failure logged at every retry"
    for step in ("unreadable", "again"):  # looked at again, but not in a tight loop
        assert report[step]["retry_in"] and report[step]["retry_in"] >= RETRY_AFTER_ERROR_S, \
            report[step]
    # Readable, the usual rules decide: by file times (no event was seen) b is the newest.
    assert readable == [("published", "b.tar.gz"), ("deleted", "a.tar.gz")], readable
    assert record.model_id == "b"


FIFO_DRIVER = PRELUDE + textwrap.dedent('''
    base, where = Path(sys.argv[1]), sys.argv[2]
    folder = base / "models"
    settings = settings_for(folder, base / "run")
    os.mkfifo(folder / where)  # after the start: put there while the rotator runs
    contents = {"a": (folder / "a.tar.gz").read_bytes()}
    outcome = Reconciler(settings).reconcile()
    print(json.dumps({"actions": kinds(outcome), **snapshot(folder, contents)}))
''')


@pytest.mark.parametrize("where", ["latest.tar.gz", ".latest.tar.gz.json",
                                   ".latest.tar.gz.lock", ".latest.tar.gz.arrivals.json"])
def test_a_fifo_where_a_file_of_ours_belongs_never_blocks(tmp_path, where):
    """Observation 8: a FIFO at LATEST_MODEL_PATH (or at its record, lock or journal) kept
    the rotator in open() forever."""
    folder = tmp_path / "models"
    folder.mkdir()
    write_model(folder / "a.tar.gz", 20_000)
    set_mtime(folder / "a.tar.gz", time.time() - 100)
    if where.endswith(".json"):
        # Published first, so that a restarted rotator reads the record and the journal.
        Reconciler(read_settings({"TARGET_DIR": str(folder), "RUN_DIR": str(tmp_path / "run"),
                                  "THROTTLE_DELAY": "0"})).reconcile()
        (folder / where).unlink()
    try:
        result = subprocess.run([sys.executable, "-c", FIFO_DRIVER, str(tmp_path), where],
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a reconcile blocked on a FIFO at {where}")
    if where == ".latest.tar.gz.lock":
        # Nothing can be done without the lock: a clear error, not a hang.
        assert result.returncode != 0 and "not a regular file" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["latest"] == "a", report


def test_a_fifo_swapped_in_for_a_model_during_a_reconcile_never_blocks(tmp_path):
    """Observation 8: the model listed as a regular file, then replaced by a FIFO before
    it is opened (publish and check)."""
    settings = read_settings({"TARGET_DIR": str(tmp_path / "models"),
                              "RUN_DIR": str(tmp_path / "run"), "THROTTLE_DELAY": "0"})
    folder = settings.target_dir
    folder.mkdir()
    path = folder / "b.tar.gz"
    write_model(path, 20_000)
    set_mtime(path, time.time() - 100)
    [listed] = list_models(folder, "*.tar.gz", settings.latest_model_path)
    path.unlink()
    os.mkfifo(path)
    import threading

    from worker.folder.files import publish_atomically

    errors = []

    def attempt():
        try:
            publish_atomically(listed, settings.latest_model_path)
        except OSError as error:
            errors.append(error)
        try:
            check_archive(path)
        except OSError as error:
            errors.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        with open(path, "wb"):  # let the blocked open go, so the test process can end
            pass
        pytest.fail("opening a FIFO swapped in for a model blocked")
    assert len(errors) == 2 and all("not a regular file" in str(e) for e in errors), errors
    assert not settings.latest_model_path.exists()
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name] == []


def _alias_settings(tmp_path, **env):
    base = {"RUN_DIR": str(tmp_path / "run"), "THROTTLE_DELAY": "0"}
    base.update(env)
    return read_settings(base)


@pytest.mark.parametrize("spelling", ["symlinked-target", "dotdot-latest", "symlinked-ignore"])
def test_the_same_folder_spelled_two_ways(tmp_path, spelling):
    """Observation 4: with TARGET_DIR a symlink and LATEST_MODEL_PATH the real path (or a
    path with `..`), latest.tar.gz was taken for a model and published onto itself, and the
    real sources deleted; an IGNORE_FILE_PATHS entry spelled through the other path was
    deleted. Latest and ignored files are recognised by identity now."""
    real = tmp_path / "real-models"
    (real / "sub").mkdir(parents=True)
    link = tmp_path / "models-link"
    link.symlink_to(real)
    env = {"TARGET_DIR": str(link), "LATEST_MODEL_PATH": str(real / "latest.tar.gz")}
    if spelling == "dotdot-latest":
        env = {"TARGET_DIR": str(real),
               "LATEST_MODEL_PATH": str(real / "sub" / ".." / "latest.tar.gz")}
    if spelling == "symlinked-ignore":
        env = {"TARGET_DIR": str(real), "IGNORE_FILE_PATHS": str(link / "keep.tar.gz")}
    settings = _alias_settings(tmp_path, **env)
    for age, name in ((300, "keep.tar.gz"), (200, "a.tar.gz"), (100, "b.tar.gz")):
        write_model(real / name, 10_000, model_id=name)
        set_mtime(real / name, time.time() - age)
    newest = (real / "b.tar.gz").read_bytes()
    reconciler = Reconciler(settings)
    first = reconciler.reconcile()
    published = [a.path.name for a in first.actions if a.kind == "published"]
    assert published == ["b.tar.gz"], first.actions
    for again in (reconciler, Reconciler(settings)):
        outcome = again.reconcile()
        assert outcome.actions == [], f"latest taken for a model: {outcome.actions}"
    assert (real / "latest.tar.gz").read_bytes() == newest
    assert (real / "b.tar.gz").exists(), "the published model's source was deleted"
    assert read_record(real / "latest.tar.gz").source == "b.tar.gz"
    if spelling == "symlinked-ignore":
        assert (real / "keep.tar.gz").exists(), "an ignored file spelled another way deleted"
    names = {m.name for m in list_models(settings.target_dir, "*", settings.latest_model_path,
                                         settings.ignore_paths)}
    assert "latest.tar.gz" not in names


def test_a_hidden_temp_file_is_never_a_model_even_with_pattern_star(tmp_path):
    """Issue 9: `once --dry-run` during a publish reported the publish's temp file as a
    model. Hidden names are never models, whatever MODEL_PATTERN and wherever latest is."""
    settings = _alias_settings(tmp_path, TARGET_DIR=str(tmp_path / "models"), MODEL_PATTERN="*",
                               LATEST_MODEL_PATH=str(tmp_path / "public" / "latest.tar.gz"))
    folder = settings.target_dir
    folder.mkdir()
    in_flight = folder / ".latest.tar.gz.tmp-0123abcd"
    in_flight.write_bytes(model_bytes(10_000)[:3000])
    os.chmod(in_flight, 0)
    other = folder / ".model.tar.gz.part"
    other.write_bytes(b"partial")
    outcome = Reconciler(settings).reconcile(dry_run=True)
    assert outcome.actions == [], outcome.actions


def test_events_survive_a_journal_that_cannot_be_saved(tmp_path):
    """Found beyond the list: with the disk full, the arrival journal cannot be written. The
    events bound in that reconcile must not be forgotten, or once space is back a rollback
    seen after a newer model would be ordered by its old file time and lose."""
    report = run_on_tmpfs(tmp_path, "2m", '''
        disk, run = Path(sys.argv[1]), Path(sys.argv[2])
        folder = disk / "models"
        folder.mkdir()
        settings = settings_for(folder, run)
        contents = {"a": model(folder / "a.tar.gz", 20_000, "a", age_s=7200)}
        reconciler = Reconciler(settings)
        reconciler.reconcile()
        contents["new"] = model(folder / "new.tar.gz", 20_000, "new", age_s=1)
        reconciler.note_arrival("new.tar.gz", time.time())
        contents["rollback"] = model(folder / "rollback.tar.gz", 20_000, "rollback",
                                     age_s=3600)  # moved back in: its old mtime
        reconciler.note_arrival("rollback.tar.gz", time.time())
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # every last block
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.close(fd)
        full = kinds(reconciler.reconcile())
        filler.unlink()
        reconciler.reconcile()
        print(json.dumps({"full": full, **snapshot(folder, contents)}))
    ''')
    assert any("could not save arrival times" in a[2] for a in report["full"]), report
    assert report["latest"] == "rollback", report
    assert "rollback.tar.gz" in report["files"]


def test_once_with_a_fifo_at_the_lock_says_so_in_one_line(tmp_path):
    """`python -m worker once` cannot take the folder lock when a FIFO stands in its place:
    one error line and exit 1, never a hang or a traceback."""
    folder = tmp_path / "models"
    folder.mkdir()
    os.mkfifo(folder / ".latest.tar.gz.lock")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TARGET_DIR": str(folder),
           "RUN_DIR": str(tmp_path / "run")}
    result = run_worker("once", cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1 and "not a regular file" in output, output
