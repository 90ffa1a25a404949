"""The guard runs inside supervisord (worker/programs/guard.py, an `[rpcinterface:guard]` plugin),
not as a program: started as a user starts the tool, it still ends supervisord when the rotator
cannot stay up. Its verdicts themselves are tested in tests/programs/test_guard.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
