"""The bare-VM home: a plain supervisord of its own whose config includes our include file,
in place, from an install folder laid out as the README says (venv in .venv, .env)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from tests.helpers import PROJECT_ROOT, run_worker, wait_for, wait_for_latest, write_model
from tests.test_container import probe_command


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_an_existing_supervisord_runs_the_include_file(tmp_path):
    install = tmp_path / "opt" / "rasa-model-rotator"
    install.mkdir(parents=True)
    for part in ("worker", "conf"):
        shutil.copytree(PROJECT_ROOT / part, install / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (install / ".venv").symlink_to(sys.prefix)  # the venv these tests run in
    models = tmp_path / "srv" / "models"
    (install / ".env").write_text(
        f"TARGET_DIR={models}\nRUN_DIR={tmp_path / 'rotator-run'}\nTHROTTLE_DELAY=300\n")
    logs = tmp_path / "log"
    logs.mkdir()
    config = tmp_path / "supervisord.conf"
    config.write_text(textwrap.dedent(f"""
        [supervisord]
        nodaemon=true
        logfile={logs}/supervisord.log
        pidfile={tmp_path}/supervisord.pid
        childlogdir={logs}

        [unix_http_server]
        file={tmp_path}/supervisor.sock

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [supervisorctl]
        serverurl=unix://{tmp_path}/supervisor.sock

        [program:other]
        command=sleep 3600

        [include]
        files = {install}/conf/supervisor-include.conf
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("TARGET_DIR", "RUN_DIR")}
    supervisord = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=supervisord.stdout.read, daemon=True).start()

    def ctl(*args):
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                               str(config), *args], env=env, capture_output=True, text=True)

    try:
        # The other program, reader, rotator and model-server (idle: MODEL_SERVER_PORT unset).
        status = wait_for(lambda: (lambda out: out if len(re.findall("RUNNING", out)) == 4
                                   else None)(ctl("status").stdout), 30,
                          message="four programs RUNNING")
        assert re.search(r"rasa-model-rotator:reader\s+RUNNING", status), status
        assert re.search(r"rasa-model-rotator:rotator\s+RUNNING", status), status
        model = models / "20261126-101010-brave-fox.tar.gz"
        write_model(model, 100_000)
        wait_for_latest(models, model.read_bytes(), 30,
                        message="the model published")
        rotator_log = wait_for(lambda: [p for p in logs.iterdir() if "rotator" in p.name
                                        and "published" in p.read_text()], 10,
                               message="the rotator's log file in childlogdir")
        assert rotator_log
        # status finds the system's supervisord through SUPERVISOR_SERVER_URL.
        health = run_worker(
            "status", cwd=install,
            env={**env, "SUPERVISOR_SERVER_URL": f"unix://{tmp_path}/supervisor.sock"})
        assert health.returncode == 0, health.stdout + health.stderr
        assert f"source: {model}" in health.stdout
        # So does the probes' light check, under `python -S` (supervisor's XML-RPC client is
        # in site-packages), also where no .env makes it load site for python-dotenv.
        probe = subprocess.run(
            probe_command(), cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={**env, "PYTHONPATH": str(install), "RUN_DIR": str(tmp_path / "rotator-run"),
                 "SUPERVISOR_SERVER_URL": f"unix://{tmp_path}/supervisor.sock"})
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.startswith("rasa-model-rotator: healthy"), probe.stdout

        # kill -9 of that supervisord: its programs end with it, not orphaned.
        programs = [int(re.search(rf"rasa-model-rotator:{name}\s+RUNNING\s+pid (\d+)",
                                  ctl("status").stdout).group(1))
                    for name in ("reader", "rotator", "model-server")]
        supervisord.kill()
        supervisord.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in programs), 10,
                 message=f"programs {programs} ended with their supervisord")
    finally:
        if supervisord.poll() is None:
            ctl("shutdown")
            supervisord.wait(20)


def test_after_kill_9_of_supervisord_no_orphans_and_a_new_start_just_works(start_tool, models):
    tool = start_tool()
    tool.ready()
    programs = [tool.program_pid(name) for name in ("reader", "rotator")]
    os.kill(tool.process.pid, signal.SIGKILL)  # supervisord runs in `python -m worker`
    tool.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in programs), 10,
             message=f"programs {programs} ended with their supervisord")
    # Its sockets, pidfile and key are still in RUN_DIR: the next start must not mind.
    again = start_tool()
    again.ready()
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 50_000)
    wait_for_latest(models, model.read_bytes(), 30,
                    message=f"published after the restart\n{again.output}")
    assert again.process.poll() is None
    assert "another rotator is already serving" not in again.output, again.output
