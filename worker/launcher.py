"""`python -m worker`: check the settings, then become supervisord (exec, so in a container
supervisord is PID 1) running the programs laid out in conf/supervisord.conf."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from worker.settings import Settings, prepare_folders

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUPERVISORD_CONF = PROJECT_ROOT / "conf" / "supervisord.conf"


def program_environment(settings: Settings) -> dict[str, str]:
    """What supervisord and its programs need: absolute settings (so any working folder
    works), this interpreter, and where the `worker` package lives."""
    env = dict(os.environ)
    env.update(settings.as_environment())
    env["ROTATOR_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # The settings are all in the environment now; a .env elsewhere must not override them.
    env.pop("ENV_FILE", None)
    return env


def _stdout_reopenable() -> bool:
    try:
        with open("/dev/stdout", "wb"):
            return True
    except OSError:
        return False


def _relay_output_through_own_pipe() -> None:
    """supervisord forwards the programs' output by opening /dev/stdout again. When stdout
    is a pipe created by another user (the container runtime's, for a container running as
    a non-root user), that open fails with EACCES and no program starts. Put a pipe of our
    own in between, drained to the real stdout by `cat` (it outlives the exec below and is
    reaped by supervisord when the pipe closes)."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.dup2(read_end, 0)
        os.close(read_end)
        os.close(write_end)
        os.execvp("cat", ["cat"])
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)


def exec_supervisord(settings: Settings) -> None:
    prepare_folders(settings)
    if not _stdout_reopenable():
        _relay_output_through_own_pipe()
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(SUPERVISORD_CONF)]
    os.execvpe(argv[0], argv, program_environment(settings))
