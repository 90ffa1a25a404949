"""The guard runs inside supervisord (worker/programs/guard.py, an `[rpcinterface:guard]` plugin),
not as a program: started as a user starts the tool, it still ends supervisord when the rotator
cannot stay up. Its verdicts themselves are tested in tests/programs/test_guard.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import _children, _cmdline, wait_for


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_rotator_that_keeps_dying_ends_supervisord_and_no_guard_process_runs(start_tool,
                                                                               models):
    tool = start_tool()
    tool.ready()
    commands = [_cmdline(pid) for pid in _children(tool.process.pid)]
    assert not [c for c in commands if "guard" in c], commands
    listed = subprocess.run([sys.executable, "-m", "worker", "supervisorctl", "status"],
                            cwd=tool.workdir, env=tool.env, capture_output=True, text=True,
                            timeout=60)
    assert "guard" not in listed.stdout and "rotator" in listed.stdout, listed.stdout

    for _ in range(12):  # 5 crashes within 60 s, or FATAL after its retries: either ends it
        if tool.process.poll() is not None:
            break
        try:
            rotator = tool.program_pid("rotator")
        except AssertionError:
            break  # none came back: supervisord is going down
        os.kill(rotator, signal.SIGKILL)
        wait_for(lambda pid=rotator: not _alive(pid), 30, message=f"rotator {rotator} gone")
    assert tool.process.wait(60) == 0, tool.output
    assert "shutting down supervisord: program rotator" in tool.output, tool.output


def test_the_programs_state_lost_to_a_full_run_dir_is_written_once_there_is_room(start_tool,
                                                                                 tmp_path):
    """RUN_DIR on a small tmpfs (in a mount namespace of the tool's own) fills up; the
    reader is killed and restarted meanwhile, so supervisord's record of it cannot be
    written and the check sees a pid that is gone. Once there is room again the record
    lands without waiting for another state change (the guard retries on supervisord's
    5 s tick), and the check is healthy again."""
    if os.geteuid() != 0:
        pytest.fail("needs root (unshare --mount, nsenter), as CI has")
    disk = tmp_path / "rundisk"
    disk.mkdir()
    mount = ('mount -t tmpfs -o size=1m rotator-run-disk "$1" && shift && exec "$@"')
    tool = start_tool(prefix=("unshare", "--mount", "--propagation", "private", "--",
                              "sh", "-c", mount, "sh", str(disk)),
                      RUN_DIR=str(disk / "run"))
    tool.ready()

    def inside(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(tool.process.pid), "-m", "--", *command],
                              cwd=tool.workdir, env=tool.env, capture_output=True, text=True,
                              timeout=60)

    def health() -> subprocess.CompletedProcess:
        return inside(sys.executable, "-m", "worker.surface.health")

    wait_for(lambda: health().returncode == 0, 60, message=f"healthy\n{tool.output}")
    inside("sh", "-c", f'cat /dev/zero > "{disk}/filler"')  # fails once full: meant
    reader = tool.program_pid("reader")
    before_kill = tool.line_count()
    os.kill(reader, signal.SIGKILL)
    tool.wait_for_line("cannot write programs.state in RUN_DIR", 60, after=before_kill)
    # The new reader is RUNNING: its last state change is made, and lost.
    tool.wait_for_line("success: reader entered RUNNING", 60, after=before_kill)
    stale = health()
    assert stale.returncode == 1 and f"pid {reader} is gone" in stale.stdout, stale.stdout
    assert inside("rm", f"{disk}/filler").returncode == 0
    tool.wait_for_line("programs.state in RUN_DIR is written again", 60)
    wait_for(lambda: health().returncode == 0, 60, message=f"healthy again\n{tool.output}")
