"""`python -m worker status [--json]`: what is published, the last call to each Rasa server,
and whether the programs are running and making progress. Exits non-zero unless healthy
(also while starting), with the verdict of worker/surface/health.py, whose light check
(`python -m worker.surface.health`) is what Docker and Kubernetes run every few seconds. No
logging."""

from __future__ import annotations

import json
import time

from worker.folder.files import read_record, stat_or_none
from worker.rasa.state import read_replicas
from worker.remote.state import read_remote_state
from worker.runfiles import Untrusted
from worker.settings import Settings
from worker.surface.health import judge_tool
from worker.text import printable


def published_model(settings: Settings) -> dict | None:
    latest = settings.latest_model_path
    latest_stat = stat_or_none(latest)
    if latest_stat is None:
        return None
    info = {"path": str(latest), "size": latest_stat.st_size,
            "mtime": _iso(latest_stat.st_mtime)}
    def invalid(path, problem) -> None:  # the rotator sets it aside; `status` only says so
        info["record_problem"] = f"{path.name} is not a valid state file ({problem})"

    record = read_record(latest, invalid)
    try:
        described = record is not None and record.describes(latest_stat)
    except (TypeError, ValueError):  # a record whose fields have the wrong types
        described = False
    if described and _record_fields_shown(record):
        info.update({
            "source": str(settings.target_dir / record.source) if record.source else None,
            "source_mtime": _iso(record.source_mtime_ns / 1e9) if record.source_size >= 0
            else None,
            "model_id": record.model_id, "trained_at": record.trained_at,
            "published_at": _iso(record.published_at),
            "publish_duration_s": round(record.duration_s, 3)})
    return info


def not_published(settings: Settings) -> list[dict]:
    """Whole models kept but not published: refused by a replica, or below the minimum Rasa
    version (worker/folder/loadable.py)."""
    from worker.folder.loadable import LoadableBook

    book = LoadableBook.load(settings.latest_model_path, set_aside=False)
    entries = [{"path": str(settings.target_dir / mark.name), "model_id": mark.model_id,
                "reason": mark.reason, "detail": mark.detail, "by": mark.by,
                "at": _iso(mark.at)} for mark in book.refused.values()]
    if book.problem:
        entries.append({"path": str(book.path), "reason": "unreadable", "detail": book.problem})
    return entries


def _record_fields_shown(record) -> bool:
    """The publish record's fields have the types `status` prints (it can be written by
    anyone who can write TARGET_DIR)."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (all(isinstance(getattr(record, name, None), (str, type(None)))
                for name in ("source", "model_id", "trained_at"))
            and all(number(getattr(record, name, None))
                    for name in ("source_mtime_ns", "source_size", "published_at",
                                 "duration_s")))


def gather(settings: Settings) -> dict:
    verdict = judge_tool(settings.run_dir)
    condition, waiting, problems = verdict.condition, verdict.waiting, verdict.problems
    programs = verdict.programs
    # Rasa's replicas are shown, never counted against our health: restarting the rotator
    # would not bring a Rasa server back.
    try:
        rasa = read_replicas(settings.run_dir)
    except Untrusted as error:
        rasa = [{"url": "(rasa-replicas.json)", "state": "unknown", "last_error": str(error),
                 "last_error_at": None}]
    try:
        remote = read_remote_state(settings.run_dir)
    except Untrusted as error:
        remote = {"bucket": "?", "key": "?", "endpoint": "(remote-storage.json)",
                  "state": "unknown", "last_error": str(error), "last_error_at": None}
    return {"healthy": condition == "ready", "state": _STATE_WORDS[condition],
            "waiting": waiting, "problems": problems,
            "published": published_model(settings), "programs": programs or {},
            "rasa": rasa, "remote": remote,
            "target_dir": str(settings.target_dir),
            "not_published": not_published(settings)}


_STATE_WORDS = {"ready": "healthy", "starting": "starting", "unhealthy": "unhealthy"}


def render(report: dict) -> str:
    word = {"healthy": "healthy", "starting": "starting"}.get(report["state"], "UNHEALTHY")
    lines = [f"rasa-model-rotator: {word}"]
    if report["waiting"]:
        lines.append(f"  waiting: {report['waiting']}")
    lines += [f"  problem: {problem}" for problem in report["problems"]]
    published = report["published"]
    if published is None:
        lines.append(f"published: nothing yet (watching {report['target_dir']})")
    else:
        lines.append(f"published: {published['path']} ({published['size']} bytes, "
                     f"mtime {published['mtime']})")
        for key in ("source", "source_mtime", "model_id", "trained_at", "published_at",
                    "publish_duration_s", "record_problem"):
            if published.get(key) is not None:
                lines.append(f"  {key}: {published[key]}")
    for entry in report.get("not_published", []):
        lines.append(f"not published ({entry['reason']}): {entry['path']}: {entry['detail']}")
    for name, program in sorted(report["programs"].items()):
        lines.append(f"program {name}: {program['state']} ({program['description']})")
    lines += render_rasa(report["rasa"])
    lines += render_remote(report.get("remote"))
    return "\n".join(printable(line) for line in lines)



def run_status(settings: Settings, as_json: bool) -> int:
    report = gather(settings)
    print(json.dumps(report, indent=1) if as_json else render(report))
    return 0 if report["healthy"] else 1


def _iso(timestamp) -> str:
    """A time as ISO 8601 UTC; '?' for anything that is not one (a hostile file's field)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def render_remote(remote: dict | None) -> list[str]:
    """Remote storage: does the key hold the published model, and the last failure. Shown,
    never counted against our health: restarting us would not bring a bucket back."""
    if remote is None:
        return ["remote storage: off (REMOTE_STORAGE unset)"]
    line = (f"remote storage s3://{remote['bucket']}/{remote['key']} at {remote['endpoint']}: "
            f"{remote.get('state', 'unknown')}")
    if remote.get("model_id") or remote.get("sha256"):
        line += (f", holds model_id {remote.get('model_id') or '(none)'} "
                 f"(sha256 {str(remote.get('sha256'))[:16]}, {remote.get('version_key')})")
    if remote.get("checked_at"):
        line += f", checked {_iso(remote['checked_at'])}"
    lines = [line]
    upload = remote.get("last_upload")
    if upload:
        lines.append(f"  last upload: {upload['key']} ({upload['size']} bytes) at "
                     f"{_iso(upload['at'])} ({upload['duration_s']} s)")
    if remote.get("last_error") and remote.get("state") in ("failing", "unknown"):
        lines.append(f"  last error ({remote.get('cause')}) at "
                     f"{_iso(remote.get('last_error_at'))}: {remote['last_error']}")
    return lines


def render_rasa(replicas: list[dict]) -> list[str]:
    """One line per Rasa replica: what it serves against what is published, and why not."""
    if not replicas:
        return ["rasa: off (RASA_URL unset)"]
    lines = []
    for replica in replicas:
        served = replica.get("model_id") or "no model"
        state = replica.get("state", "unknown")
        line = f"rasa {replica['url']}: {state}, serves {served}"
        if replica.get("published_model_id") and not replica.get("in_sync"):
            line += f" (published {replica['published_model_id']})"
        if replica.get("converged_at"):
            line += f", converged {_iso(replica['converged_at'])}"
        if replica.get("checked_at"):
            line += f", checked {_iso(replica['checked_at'])}"
        lines.append(line)
        swap = replica.get("last_swap")
        if swap:
            status = swap["status"] if swap["status"] is not None else "no answer"
            lines.append(f"  last PUT /model: {swap['outcome']} {status} at "
                         f"{_iso(swap['at'])} ({swap['duration_s']} s)")
        if replica.get("last_error"):
            lines.append(f"  last error at {_iso(replica['last_error_at'])}: "
                         f"{replica['last_error']}")
    return lines

