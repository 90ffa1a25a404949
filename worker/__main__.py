"""Command line: `python -m worker [run | reader | rotator | model-server | once [--dry-run]]`."""

from __future__ import annotations

import argparse
import signal
import sys

from worker.settings import SettingError, load_environment, prepare_folders, read_settings


def _stop_on_sigterm() -> None:
    # Python's default for SIGTERM is to die on the spot; raising SystemExit instead runs
    # the `finally` blocks that remove a half-copied temporary file and the queue socket.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Publish the newest whole Rasa model under a fixed name; prune the rest.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run supervisord with the reader and the rotator (the default)")
    sub.add_parser("reader", help="the inotify reader program (started by supervisord)")
    sub.add_parser("rotator", help="the debouncing rotator program (started by supervisord)")
    sub.add_parser("guard", help="event listener: stop supervisord when a program cannot "
                                 "stay up (started by supervisord)")
    sub.add_parser("model-server", help="serve the published model to Rasa's model pull "
                                        "(MODEL_SERVER_PORT; started by supervisord)")
    once = sub.add_parser("once", help="reconcile the folder once, print each action, exit")
    once.add_argument("--dry-run", action="store_true", help="print actions, change nothing")
    status = sub.add_parser("status", help="what is published, the last Rasa calls, and "
                                           "whether the programs run; exit 1 when unhealthy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    command = args.command or "run"

    try:
        load_environment()
        settings = read_settings()
    except SettingError as error:
        print(f"rasa-model-rotator: {error}", file=sys.stderr)
        return 2

    from worker.logs import setup_logging

    if command == "status":
        from worker.status import run_status

        return run_status(settings, args.json)
    log = setup_logging(command, settings.log_level,
                        stream=sys.stderr if command == "guard" else None,
                        log_format=settings.log_format)
    if command == "run":
        from worker.launcher import exec_supervisord

        exec_supervisord(settings)  # does not return
    _stop_on_sigterm()
    if command == "reader":
        from worker.reader import run_reader

        prepare_folders(settings)
        run_reader(settings, log)
    elif command == "rotator":
        from worker.rotator import run_rotator

        prepare_folders(settings)
        run_rotator(settings, log)
    elif command == "guard":
        from worker.guard import run_guard

        run_guard(log)
    elif command == "model-server":
        from worker.model_server import run_model_server

        run_model_server(settings, log)
    elif command == "once":
        from worker.reconcile import Reconciler

        if not args.dry_run:
            prepare_folders(settings)
        outcome = Reconciler(settings, log).reconcile(dry_run=args.dry_run)
        if not outcome.actions:
            log.info("nothing to do: %s is in order", settings.target_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
