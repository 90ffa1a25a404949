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
    env["ROTATOR_HOME"] = str(PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # The settings are all in the environment now; a .env elsewhere must not override them.
    env.pop("ENV_FILE", None)
    return env


def exec_supervisord(settings: Settings) -> None:
    prepare_folders(settings)
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(SUPERVISORD_CONF)]
    os.execvpe(argv[0], argv, program_environment(settings))
