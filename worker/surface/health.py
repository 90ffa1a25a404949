"""Is the tool healthy? The verdict `status` prints, and the light check that Docker and
Kubernetes run every few seconds: `python -m worker.surface.health [--hold SECONDS]`, or as
the probes run it (the same, for less CPU: run()'s docstring):
`python -S -c "from worker.surface.health import run; run()" [--hold SECONDS]`.

The verdict: supervisord runs, the reader and the rotator are RUNNING (STARTING: starting)
as supervisord last recorded it and as /proc still confirms (worker/surface/program_states.py),
and the rotator makes progress as its marks in RUN_DIR and its queue socket tell
(worker/surface/liveness.py). Exit 0 when healthy; 1 when starting or unhealthy
(Docker reserves 2).

The light check answers exactly that and nothing more: it finds RUN_DIR as the settings do
without reading the other settings (the tool checked them at its start), reads RUN_DIR
through worker/runfiles.py's rules, and imports neither the settings, the folder logic nor
logging. A probe then costs about as much CPU as starting Python itself.

`--hold SECONDS` is for Docker, whose probes cost a `docker exec` each (tens of ms of CPU in
dockerd, containerd and runc) and which runs the next probe one interval after the previous
one ended. With a short interval the first healthy answer comes at once; once the tool has
been healthy for SETTLED_S, and the previous probe answered healthy, the probe holds: it
checks again every RECHECK_S (two small files, /proc and one connection to the rotator) and
answers at once when the verdict changes, else healthy after SECONDS. So an idle container
pays for one exec per SECONDS, a failure is still seen within RECHECK_S, and a recovery is
answered at once.
"""

from __future__ import annotations

import os
import sys
import time

from worker.runfiles import Untrusted, read_run_file, run_dir_of, write_run_file
from worker.surface import liveness
from worker.surface.program_states import ask_supervisord, read_programs
from worker.text import printable

REQUIRED_PROGRAMS = ("reader", "rotator")
# --hold: answer at once during the first SETTLED_S of health (Docker's first probes must see
# "healthy" without waiting), then check again every RECHECK_S while holding.
SETTLED_S = 10.0
RECHECK_S = 5.0
LAST_ANSWER_FILE = "health.last"  # what the last holding probe answered
MAX_HOLD_S = 300


def program_states(run_dir) -> tuple[dict[str, dict] | None, str]:
    """supervisord's programs by name ({state, pid, description, problem?}), or None and why
    not: from what supervisord wrote in RUN_DIR, checked against /proc; from an existing
    supervisord (SUPERVISOR_SERVER_URL, conf/supervisor-include.conf) over XML-RPC."""
    url = os.environ.get("SUPERVISOR_SERVER_URL")
    if url:
        with_site_packages()  # supervisor's XML-RPC client
        return ask_supervisord(url, os.environ.get("SUPERVISOR_USERNAME", ""),
                               os.environ.get("SUPERVISOR_PASSWORD", ""))
    programs, problem = read_programs(run_dir)
    return programs, printable(problem)


def with_site_packages() -> None:
    """The probes run `python -S` (run()): where the check needs a package (python-dotenv for
    a .env, supervisor's XML-RPC client under an existing supervisord), site-packages are put
    on the path first, as `site` would have done at the start; once (a holding probe asks
    supervisord again at every recheck)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


class Verdict:
    """What the check found: condition ('ready', 'starting' or 'unhealthy'), what it waits
    for, the problems, supervisord's programs (None: not reachable) and the rotator's marks."""

    def __init__(self, condition: str, waiting: str, problems: list[str],
                 programs: dict[str, dict] | None, marks: dict | None):
        self.condition, self.waiting, self.problems = condition, waiting, problems
        self.programs, self.marks = programs, marks

    @property
    def healthy(self) -> bool:
        return self.condition == "ready"

    def lines(self) -> list[str]:
        """The first lines of `status`: the word, then what it waits for or what is wrong."""
        word = {"ready": "healthy", "starting": "starting"}.get(self.condition, "UNHEALTHY")
        lines = [f"rasa-model-rotator: {word}"]
        if self.waiting:
            lines.append(f"  waiting: {self.waiting}")
        lines += [f"  problem: {problem}" for problem in self.problems]
        return [printable(line) for line in lines]


def judge_tool(run_dir) -> Verdict:
    """The health verdict for the instance whose RUN_DIR this is."""
    programs, problem = program_states(run_dir)
    problems = [problem] if problem else []
    condition, waiting, marks = "unhealthy", "", None
    if programs is not None:
        starting = []
        for name in REQUIRED_PROGRAMS:
            program = programs.get(name, {})
            state = program.get("state", "missing")
            if program.get("problem"):
                problems.append(f"program {name}: {program['problem']}")
            elif state == "STARTING":
                starting.append(name)
            elif state != "RUNNING":
                problems.append(f"program {name} is {state}")
        rotator = programs.get("rotator", {})
        rotator_pid = (rotator.get("pid") if rotator.get("state") == "RUNNING"
                       and not rotator.get("problem") else None)
        if rotator_pid:
            marks = liveness.read_state(run_dir)
            condition, reason = liveness.judge(marks, rotator_pid, run_dir)
            if condition == "unhealthy":
                problems.append(reason)
            elif condition == "starting":
                waiting = reason
        if starting and not problems:
            condition, waiting = "starting", f"program {', '.join(starting)} is STARTING"
    if problems:
        condition = "unhealthy"
    return Verdict(condition, waiting, problems, programs, marks)


def settled(verdict: Verdict) -> bool:
    """Healthy for SETTLED_S at least: the rotator ended more than one reconcile, or its first
    ended that long ago (its marks hold the monotonic time of the last change)."""
    marks = verdict.marks or {}
    if not verdict.healthy:
        return False
    reconciles = marks.get("reconciles")
    if isinstance(reconciles, int) and reconciles > 1:
        return True
    return time.monotonic() - marks.get("since", time.monotonic()) >= SETTLED_S


def check(run_dir, hold_s: float = 0.0) -> Verdict:
    """The verdict now; with `hold_s`, a settled healthy verdict is held (checked again every
    RECHECK_S) until it changes or `hold_s` has passed. Not after an answer that was not
    healthy (RUN_DIR/LAST_ANSWER_FILE): a recovery is answered at once too."""
    verdict = judge_tool(run_dir)
    if hold_s > 0 and settled(verdict) and _last_answer(run_dir) == "healthy":
        deadline = time.monotonic() + hold_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(RECHECK_S, left))
            verdict = judge_tool(run_dir)
            if not verdict.healthy:
                break
    if hold_s > 0:
        _note_answer(run_dir, "healthy" if verdict.healthy else "not healthy")
    return verdict


def _last_answer(run_dir) -> str:
    try:
        return read_run_file(run_dir, LAST_ANSWER_FILE, 64).decode("ascii", "replace")
    except (OSError, Untrusted):
        return ""


def _note_answer(run_dir, answer: str) -> None:
    """Kept for the next probe, only by RUN_DIR's owner (a probe run by root leaves nothing
    in another user's folder), and only when it changed."""
    import contextlib

    # A full or foreign RUN_DIR: the next probe does not hold, nothing worse.
    if _last_answer(run_dir) != answer:
        with contextlib.suppress(OSError, Untrusted):
            write_run_file(run_dir, LAST_ANSWER_FILE, answer.encode())


def _hold_seconds(argv: list[str]) -> float | None:
    """SECONDS of `--hold SECONDS`, 0 without it, None when the arguments are not that."""
    if not argv:
        return 0.0
    if len(argv) == 2 and argv[0] == "--hold" and argv[1].isascii() and argv[1].isdigit():
        seconds = int(argv[1])
        return float(seconds) if seconds <= MAX_HOLD_S else None
    return None


def main(argv: list[str]) -> int:
    hold_s = _hold_seconds(argv)
    if hold_s is None:
        print(
            f"usage: python -m worker.surface.health [--hold SECONDS] (SECONDS a whole number from "
            f"0 to {MAX_HOLD_S})",
            file=sys.stderr,
        )
        return 1  # a probe reads any failure as unhealthy; Docker reserves 2
    if os.environ.get("ENV_FILE") or os.path.isfile(".env"):
        # Only then: python-dotenv and the settings module cost more than the check itself.
        with_site_packages()
        from worker.settings import SettingError, load_environment

        try:
            load_environment()
        except SettingError as error:
            print(f"rasa-model-rotator: {error}", file=sys.stderr)
            return 1
    verdict = check(run_dir_of(os.environ), hold_s)
    print("\n".join(verdict.lines()))
    return 0 if verdict.healthy else 1


def run() -> None:
    """The probes' entry point (Dockerfile, conf/kubernetes), from the project's folder:
    `python -S -c "from worker.surface.health import run; run()" [--hold SECONDS]`. Without
    `-m` (runpy imports importlib.util, contextlib and collections) and without `site` (the
    interpreter's and a virtualenv's .pth files; loaded above when a .env needs
    python-dotenv), a probe costs less CPU (figures: README, "Benchmarks")."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
