"""`python -m worker status [--json]`: what is published, the last call to each Rasa server,
and whether the programs are running. Exits non-zero when unhealthy, for health probes."""

from __future__ import annotations

import json
import os
import time

from worker.folder import read_record, stat_or_none
from worker.rasa_state import read_replicas
from worker.settings import Settings

REQUIRED_PROGRAMS = ("reader", "rotator")


def supervisor_url(settings: Settings) -> str:
    # supervisord tells its children where it listens; otherwise it is ours, in RUN_DIR.
    return os.environ.get("SUPERVISOR_SERVER_URL") or f"unix://{settings.run_dir}/supervisor.sock"


def program_states(settings: Settings) -> tuple[dict[str, dict] | None, str]:
    from supervisor import childutils

    try:
        rpc = childutils.getRPCInterface({"SUPERVISOR_SERVER_URL": supervisor_url(settings)})
        processes = rpc.supervisor.getAllProcessInfo()
    except Exception as error:  # socket missing, refused, or an RPC fault
        return None, f"supervisord not reachable at {supervisor_url(settings)} ({error})"
    return {p["name"]: {"state": p["statename"], "pid": p["pid"],
                        "description": p["description"]} for p in processes}, ""


def published_model(settings: Settings) -> dict | None:
    latest = settings.latest_model_path
    latest_stat = stat_or_none(latest)
    if latest_stat is None:
        return None
    info = {"path": str(latest), "size": latest_stat.st_size,
            "mtime": _iso(latest_stat.st_mtime)}
    record = read_record(latest)
    if record is not None and record.describes(latest_stat):
        info.update({
            "source": str(settings.target_dir / record.source) if record.source else None,
            "source_mtime": _iso(record.source_mtime_ns / 1e9) if record.source_size >= 0
            else None,
            "model_id": record.model_id, "trained_at": record.trained_at,
            "published_at": _iso(record.published_at),
            "publish_duration_s": round(record.duration_s, 3)})
    return info


def gather(settings: Settings) -> dict:
    programs, problem = program_states(settings)
    problems = [problem] if problem else []
    if programs is not None:
        for name in REQUIRED_PROGRAMS:
            state = programs.get(name, {}).get("state", "missing")
            if state != "RUNNING":
                problems.append(f"program {name} is {state}")
    # Rasa's replicas are shown, never counted against our health: restarting the rotator
    # would not bring a Rasa server back.
    rasa = read_replicas(settings.run_dir)
    return {"healthy": not problems, "problems": problems,
            "published": published_model(settings), "programs": programs or {},
            "rasa": rasa, "target_dir": str(settings.target_dir)}


def render(report: dict) -> str:
    lines = [f"rasa-model-rotator: {'healthy' if report['healthy'] else 'UNHEALTHY'}"]
    lines += [f"  problem: {problem}" for problem in report["problems"]]
    published = report["published"]
    if published is None:
        lines.append(f"published: nothing yet (watching {report['target_dir']})")
    else:
        lines.append(f"published: {published['path']} ({published['size']} bytes, "
                     f"mtime {published['mtime']})")
        for key in ("source", "source_mtime", "model_id", "trained_at", "published_at",
                    "publish_duration_s"):
            if published.get(key) is not None:
                lines.append(f"  {key}: {published[key]}")
    for name, program in sorted(report["programs"].items()):
        lines.append(f"program {name}: {program['state']} ({program['description']})")
    lines += render_rasa(report["rasa"])
    return "\n".join(lines)


def run_status(settings: Settings, as_json: bool) -> int:
    report = gather(settings)
    print(json.dumps(report, indent=1) if as_json else render(report))
    return 0 if report["healthy"] else 1


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


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

