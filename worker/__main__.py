"""Command line: `python -m worker [run | reader | rotator | model-server |
once [--dry-run] | status [--json] | supervisorctl ...]`."""

from __future__ import annotations

import os
import signal
import sys

from worker.settings import SettingError, load_environment, prepare_folders, read_settings


def _stop_on_sigterm() -> None:
    # Python's default for SIGTERM is to die on the spot; raising SystemExit instead runs
    # the `finally` blocks that remove a half-copied temporary file and the queue socket.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _end_with_supervisord() -> None:
    """A program must not outlive its supervisord (kill -9 of it on a bare VM left reader
    and rotator publishing with nobody to see their output, and blocked the next start):
    ask the kernel for SIGTERM when our parent dies, then check it did not die already."""
    expected = os.environ.get("ROTATOR_SUPERVISOR_PID", "")
    parent = os.getppid()
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not Linux: nothing more to do
    # The parent may have died between our fork and the prctl: we were reparented then.
    if os.getppid() != parent or (expected.isdigit() and int(expected) != parent):
        sys.exit(0)


# Started by supervisord with no other argument (and `run` by people): dispatched without
# argparse, which would stay in each program's memory (1.4 MiB each) for nothing.
PLAIN_COMMANDS = ("run", "reader", "rotator", "model-server")


def _arguments(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Publish the newest whole Rasa model under a fixed name; prune the rest.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run supervisord with the reader and the rotator (the default)")
    sub.add_parser("reader", help="the inotify reader program (started by supervisord)")
    sub.add_parser("rotator", help="the debouncing rotator program (started by supervisord)")
    sub.add_parser("model-server", help="serve the published model to Rasa's model pull "
                                        "(MODEL_SERVER_PORT; started by supervisord)")
    once = sub.add_parser("once", help="reconcile the folder once, print each action, exit")
    once.add_argument("--dry-run", action="store_true", help="print actions, change nothing")
    status = sub.add_parser("status", help="what is published, the last Rasa calls, and "
                                           "whether the programs run; exit 1 when unhealthy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    ctl = sub.add_parser("supervisorctl", help="supervisorctl for this instance's supervisord "
                                                "(its password read from RUN_DIR)")
    ctl.add_argument("ctl_args", nargs=argparse.REMAINDER, help="e.g. status, restart rotator")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == [] or (len(argv) == 1 and argv[0] in PLAIN_COMMANDS):
        args = None
        command = argv[0] if argv else "run"
    else:
        args = _arguments(argv)
        command = args.command or "run"

    try:
        load_environment()
        if command == "run":
            from worker.programs.launcher import wait_until_target_writable

            wait_until_target_writable(os.environ)
        # `status` only reads RUN_DIR: root may inspect the programs' (another user's) folder.
        settings = read_settings(read_only=command == "status")
        if command == "run":
            from worker.settings import check_ports_free

            check_ports_free(settings)
    except SettingError as error:
        message = f"rasa-model-rotator: {error}"
        if command == "run":
            from worker.programs.launcher import unwritable_message, unwritable_target

            target = unwritable_target(os.environ)
            if target is not None:
                message = unwritable_message(target, waiting=False)
        print(message, file=sys.stderr)
        # A health probe must see "unhealthy" (1): Docker reserves exit status 2.
        return 1 if command == "status" else 2

    # The health check runs every few seconds: it imports only what it needs (no logging).
    if command == "status":
        from worker.surface.status import run_status

        return run_status(settings, args.json)
    if command == "supervisorctl":
        from worker.programs.launcher import run_supervisorctl

        return run_supervisorctl(settings, args.ctl_args)
    if command == "run":
        from worker.programs.launcher import run_supervisord

        try:
            prepare_folders(settings)
        except SettingError as error:  # a link planted in RUN_DIR's place since the check
            print(f"rasa-model-rotator: {error}", file=sys.stderr)
            return 2
        return run_supervisord(settings)
    from worker.logs import setup_logging

    log = setup_logging(command, settings.log_level, log_format=settings.log_format)
    if command in ("rotator", "once"):
        for warning in settings.warnings():
            log.warning("%s", warning, extra={"event": "setting_warning"})
    _stop_on_sigterm()
    if command in ("reader", "rotator", "model-server"):
        _end_with_supervisord()
    if command in ("reader", "rotator") or (command == "once" and not args.dry_run):
        try:
            prepare_folders(settings)
        except SettingError as error:  # a link planted in RUN_DIR's place since the check
            log.error("%s", error)
            return 2
    if command == "reader":
        # The reader hashes nothing but its queue connection's authentication challenge
        # (multiprocessing.connection's HMAC), which the built-in md5 does as well: marked
        # absent, OpenSSL's _hashlib and libcrypto stay out, 1.1 MiB less PSS at idle.
        sys.modules.setdefault("_hashlib", None)
        from worker.programs.reader import run_reader

        run_reader(settings, log)
    elif command == "rotator":
        from worker.programs.rotator import run_rotator

        run_rotator(settings, log)
    elif command == "model-server":
        from worker.programs.model_server import run_model_server

        run_model_server(settings, log)
    elif command == "once":
        from worker.folder.reconcile import Reconciler

        try:
            outcome = Reconciler(settings, log).reconcile(dry_run=args.dry_run)
        except OSError as error:  # e.g. a FIFO planted at our lock: one line, not a traceback
            log.error("reconcile failed: %s", error)
            return 1
        if not outcome.actions:
            log.info("nothing to do: %s is in order", settings.target_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
