"""`python -m worker status [--json]`: what is published, the last call to each Rasa server,
and whether the programs are running and making progress. Exits non-zero unless healthy
(also while starting), for health probes.

It runs every few seconds in every container, so it imports only what it needs: the
one XML-RPC call written out over supervisord's socket (not supervisor's own modules, not
http.client), no logging."""

from __future__ import annotations

import json
import time

from worker.folder import read_record, stat_or_none
from worker.rasa_state import read_replicas
from worker.settings import Settings
from worker.text import printable

REQUIRED_PROGRAMS = ("reader", "rotator")
RPC_TIMEOUT_S = 5.0


def _rpc_call(url: str, username: str, password: str, method: str):
    """One XML-RPC call without parameters to supervisord at unix://PATH or http://HOST:PORT.

    Written out rather than through xmlrpc.client, which imports http.client (and with it the
    email parser and ssl): 15 ms of CPU at every health check, in every container."""
    import base64
    import socket
    from xml.etree import ElementTree

    body = (f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName>'
            f'<params/></methodCall>').encode()
    head = ["POST /RPC2 HTTP/1.0", "Host: localhost", "Content-Type: text/xml",
            f"Content-Length: {len(body)}"]
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        head.append(f"Authorization: Basic {token}")
    if url.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(RPC_TIMEOUT_S)
        sock.connect(url[len("unix://"):])
    else:
        host, _, port = url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
        sock = socket.create_connection((host or "localhost", int(port or 80)), RPC_TIMEOUT_S)
    with sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := sock.recv(65536):  # HTTP/1.0: the server closes after its answer
            chunks.append(chunk)
    answer = b"".join(chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"200":
        raise ConnectionError(f"supervisord answered {status_line.decode(errors='replace')!r}")
    root = ElementTree.fromstring(rest.partition(b"\r\n\r\n")[2])
    fault = root.find("fault/value")
    if fault is not None:
        raise RuntimeError(f"XML-RPC fault {_xmlrpc_value(fault)}")
    return _xmlrpc_value(root.find("params/param/value"))


def _xmlrpc_value(node):
    if len(node) == 0:
        return node.text or ""  # a <value> without a type is a string
    typed = node[0]
    if typed.tag in ("int", "i4"):
        return int(typed.text)
    if typed.tag == "boolean":
        return typed.text == "1"
    if typed.tag == "double":
        return float(typed.text)
    if typed.tag == "array":
        return [_xmlrpc_value(value) for value in typed.findall("data/value")]
    if typed.tag == "struct":
        return {member.findtext("name"): _xmlrpc_value(member.find("value"))
                for member in typed.findall("member")}
    return typed.text or ""


def program_states(settings: Settings) -> tuple[dict[str, dict] | None, str]:
    from worker.launcher import control_credentials

    url, username, password = control_credentials(settings)
    try:
        processes = _rpc_call(url, username, password, "supervisor.getAllProcessInfo")
    except Exception as error:  # socket missing, refused, credentials refused, an RPC fault
        # Never the password: the error of a refused call names the URL without it.
        return None, f"supervisord not reachable at {url} ({_without(error, password)})"
    return {p["name"]: {"state": p["statename"], "pid": p["pid"],
                        "description": p["description"]} for p in processes}, ""


def _without(error: Exception, secret: str) -> str:
    text = str(error)
    return text.replace(secret, "***") if secret else text


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
    from worker import liveness

    programs, problem = program_states(settings)
    problems = [problem] if problem else []
    condition, waiting = "unhealthy", ""
    if programs is not None:
        starting = []
        for name in REQUIRED_PROGRAMS:
            state = programs.get(name, {}).get("state", "missing")
            if state == "STARTING":
                starting.append(name)
            elif state != "RUNNING":
                problems.append(f"program {name} is {state}")
        rotator = programs.get("rotator", {})
        rotator_pid = rotator.get("pid") if rotator.get("state") == "RUNNING" else None
        if rotator_pid:
            condition, reason = liveness.judge(liveness.read_state(settings.run_dir),
                                               rotator_pid, settings.run_dir)
            if condition == "unhealthy":
                problems.append(reason)
            elif condition == "starting":
                waiting = reason
        if starting and not problems:
            condition, waiting = "starting", f"program {', '.join(starting)} is STARTING"
    if problems:
        condition = "unhealthy"
    # Rasa's replicas are shown, never counted against our health: restarting the rotator
    # would not bring a Rasa server back.
    rasa = read_replicas(settings.run_dir)
    return {"healthy": condition == "ready", "state": _STATE_WORDS[condition],
            "waiting": waiting, "problems": problems,
            "published": published_model(settings), "programs": programs or {},
            "rasa": rasa, "target_dir": str(settings.target_dir)}


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
    for name, program in sorted(report["programs"].items()):
        lines.append(f"program {name}: {program['state']} ({program['description']})")
    lines += render_rasa(report["rasa"])
    return "\n".join(printable(line) for line in lines)



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

