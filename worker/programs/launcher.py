"""`python -m worker`: check the settings, then run supervisord in this very process (so in a
container supervisord is PID 1) with the programs laid out in conf/supervisord.conf.

supervisord runs in-process rather than by exec so that the thread draining our own pipe
between it and stdout (worker/programs/relay.py) lives and dies with supervisord itself: nothing it
wrote last is lost, and no helper process is left to be killed first when PID 1 exits.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from worker.runfiles import CONTROL_PASSWORD_FILE, CONTROL_USERNAME, control_credentials
from worker.settings import DEFAULTS, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUPERVISORD_CONF = PROJECT_ROOT / "conf" / "supervisord.conf"
SUPERVISOR_PID_ENV = "ROTATOR_SUPERVISOR_PID"  # the programs end when this process is gone
WRITABLE_POLL_S = 2.0


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


def write_control_password(run_dir: Path) -> str:
    """A new random password for supervisord's control socket, 0600 in RUN_DIR."""
    import secrets  # here: `status` imports this module and needs no OpenSSL

    password = secrets.token_hex(16)
    temporary = run_dir / f".{CONTROL_PASSWORD_FILE}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    os.replace(temporary, run_dir / CONTROL_PASSWORD_FILE)
    return password


def run_supervisorctl(settings: Settings, args: list[str]) -> int:
    """supervisorctl for this instance, in this process: the password never shows in a
    process list."""
    url, username, password = control_credentials(settings.run_dir)
    os.environ.setdefault("RUN_DIR", str(settings.run_dir))  # conf/supervisord.conf names it
    from supervisor import supervisorctl

    try:
        supervisorctl.main(["-c", str(SUPERVISORD_CONF), "-s", url, "-u", username,
                            "-p", password, *args])
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0




def run_supervisord(settings: Settings) -> int:
    """Run supervisord (and through it the programs) until it exits; its exit status.
    The folders exist already (`python -m worker` prepared them)."""
    env = program_environment(settings)
    env["SUPERVISOR_USERNAME"] = CONTROL_USERNAME
    env["SUPERVISOR_PASSWORD"] = write_control_password(settings.run_dir)
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    os.environ.clear()
    os.environ.update(env)

    # Always our own pipe, drained at once (worker/programs/relay.py): publishing never waits for
    # anyone to read stdout, nor ends when stdout fails. It also wraps supervisord's lines
    # into JSON, keeps a regular-file stdout from being written at two offsets, and works
    # where stdout cannot be opened again (a pipe owned by another user, a socket).
    from worker.programs.relay import StdoutRelay

    relay = StdoutRelay(wrap_json=settings.log_format == "json")
    args = ["-c", str(SUPERVISORD_CONF)]
    if os.getuid() == 0:
        # Root without `user=` is a CRIT line at every start; naming root is the documented
        # way to say it is meant (a non-root uid may have no passwd entry: never name it).
        args += ["--user", "root"]
    # supervisord talks TLS to nobody (its control socket is a Unix socket), yet supervisor's
    # xmlrpc imports http.client, which imports ssl where it can: OpenSSL's libssl, the _ssl
    # module and ssl's classes, 1.6 MiB of this process's PSS at idle, for an HTTPSConnection
    # never made. Marked absent, http.client simply goes without it.
    sys.modules.setdefault("ssl", None)
    from supervisor import supervisord

    try:
        supervisord.main(args)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    finally:
        relay.finish()
    return 0


def unwritable_target(env) -> Path | None:
    """TARGET_DIR when it exists as a folder this user cannot write (a fresh bind mount that
    Docker created root-owned), else None."""
    target = Path(env.get("TARGET_DIR", DEFAULTS["TARGET_DIR"]) or ".").absolute()
    try:
        if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
            return target
    except OSError:
        return None
    return None


def unwritable_message(target: Path, waiting: bool) -> str:
    uid, gid = os.getuid(), os.getgid()
    then = ("waiting until it is writable" if waiting else "exiting")
    return (f"rasa-model-rotator: TARGET_DIR={str(target)!r} is not writable by uid {uid} "
            f"gid {gid} (this process): give it to them, e.g. `chown {uid}:{gid} FOLDER` on "
            f"the folder mounted there, or mount a named volume instead of a host folder; "
            f"{then}")


def wait_until_target_writable(env) -> None:
    """As PID 1 (a container), an unwritable TARGET_DIR is reported once and waited out:
    exiting would only have the restart policy print the same line again and again, while
    the fix (a chown on the host) needs no new container. Elsewhere the settings check
    refuses it with exit status 2."""
    target = unwritable_target(env)
    if target is None or os.getpid() != 1:
        return
    if os.statvfs(target).f_flag & os.ST_RDONLY:
        return  # a read-only mount: no chown fixes that; the settings check refuses it
    print(unwritable_message(target, waiting=True), file=sys.stderr, flush=True)
    while unwritable_target(env) is not None:
        time.sleep(WRITABLE_POLL_S)
