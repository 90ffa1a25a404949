"""`python -m worker status`, LOG_FORMAT=json and METRICS_PORT, on a running tool."""

import json
import socket
import subprocess
import sys
import urllib.request

from tests.helpers import PROJECT_ROOT, content_of, wait_for, write_model


def status(tool, *args):
    return subprocess.run([sys.executable, "-m", "worker", "status", *args], cwd=tool.workdir,
                          env=tool.env, capture_output=True, text=True, timeout=30)


def test_status_tells_what_is_published_and_what_runs(start_tool, models):
    tool = start_tool()
    tool.ready()
    before = status(tool)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "published: nothing yet" in before.stdout
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 100_000, model_id="fox-42")
    wait_for(lambda: content_of(models / "latest.tar.gz") == model.read_bytes())
    text = status(tool)
    assert text.returncode == 0
    assert "rasa-model-rotator: healthy" in text.stdout
    assert f"source: {model}" in text.stdout
    assert "model_id: fox-42" in text.stdout and "trained_at: 2026-11-26T10:10:10" in text.stdout
    assert "program reader: RUNNING" in text.stdout and "program rotator: RUNNING" in text.stdout
    report = json.loads(status(tool, "--json").stdout)
    assert report["healthy"] is True
    assert report["published"]["source"] == str(model)
    assert report["published"]["size"] == model.stat().st_size
    assert report["programs"]["rotator"]["state"] == "RUNNING"


def test_status_is_unhealthy_when_a_program_is_down(start_tool):
    tool = start_tool()
    tool.ready()
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c",
           str(PROJECT_ROOT / "conf" / "supervisord.conf")]
    subprocess.run([*ctl, "stop", "reader"], env=tool.env, check=True, capture_output=True)
    result = status(tool)
    assert result.returncode == 1
    assert "UNHEALTHY" in result.stdout and "program reader is STOPPED" in result.stdout


def test_status_is_unhealthy_without_supervisord(tmp_path):
    from tests.helpers import tool_environment

    result = subprocess.run([sys.executable, "-m", "worker", "status", "--json"], cwd=tmp_path,
                            env=tool_environment(tmp_path), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False and "supervisord not reachable" in report["problems"][0]


def test_json_logs_are_one_object_per_line(start_tool, models):
    tool = start_tool(LOG_FORMAT="json")
    tool.ready()
    model = models / "m.tar.gz"
    write_model(model, 50_000)
    wait_for(lambda: content_of(models / "latest.tar.gz") == model.read_bytes())
    line = tool.wait_for_line('"event": "published"')
    entry = json.loads(line)
    assert {"time", "level", "program", "event", "message", "path"} <= set(entry)
    assert entry["program"] == "rotator" and entry["path"] == str(model)
    ours = [json.loads(x) for x in tool.lines if x.startswith("{")]
    assert {e["program"] for e in ours} >= {"reader", "rotator"}
    # Only supervisord's own lines are not ours to format.
    others = [x for x in tool.lines if not x.startswith("{")]
    assert all(" INFO " in x or " CRIT " in x or " WARN " in x for x in others), others


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_prometheus_metrics(start_tool, models):
    port = free_port()
    tool = start_tool(METRICS_PORT=str(port))
    tool.ready()
    for name in ("a", "b"):
        write_model(models / f"{name}.tar.gz", 50_000)
        wait_for(lambda n=name: content_of(models / "latest.tar.gz")
                 == (models / f"{n}.tar.gz").read_bytes())
    wait_for(lambda: not (models / "a.tar.gz").exists())

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return page.read().decode()

    text = wait_for(lambda: (lambda t: t if "rotator_deletions_total 1.0" in t else None)(
        scrape()), 10, message="metrics after a publish and a deletion")
    assert "rotator_publishes_total 2.0" in text
    assert "rotator_queue_events_total" in text and "rotator_rescans_total" in text
    assert "rotator_last_publish_duration_seconds" in text
