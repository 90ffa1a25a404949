"""The mutation check: Cosmic Ray over `worker/` with the tests that need no peer.

    python -m tests.mutation run [--modules worker/folder/reconcile.py ...] [--tests "PYTEST ARGS"]
                                 [--jobs N] [--session DIR] [--carry-from OLD_SESSION
                                 [--carry-explained]]
    python -m tests.mutation recheck --tests "PYTEST ARGS" [--jobs N] [--session DIR]
                                     [--unexplained]
    python -m tests.mutation report [--session DIR] [--diff]

`run` copies the working tree (less .git, .venv and caches) into the session folder, and
Cosmic Ray mutates that copy, one change at a time, and runs the tests there: Cosmic Ray edits
the source on disk, so it never touches the clone, and its scratch files (the copy, the session
database) stay outside it (default: a folder in the system's temporary directory, printed at
the start). A `run` on a session that exists resumes it where it stopped (Ctrl-C is safe).
`--jobs N` tests N mutants at once, each in its own copy (Cosmic Ray's http workers on
127.0.0.1): worth it where the tests mostly wait (the Rasa tests), not where they compute.
`--carry-from OLD_SESSION` (a new session or a resume) takes over the mutants an earlier
session killed where the code they change is unchanged (same module, operator, mutated
expression and line): after an edit to the code only the mutants the edit touched, the
survivors and the ones never run are tested again. Tests only grow between sessions; a killed
mutant stays killed. `--carry-explained` also takes over the survivors an explanation covers
(a survivor carried as such never raises the score; it saves an hour on the folder side), at
a cost: a carried survivor is not tested again, so an entry a new test has made stale is not
reported as stale. Run a session without it now and then.
`recheck` tests each survivor again, against the current tree, with other (slower) tests:
the fast set for the whole run, the broad one for the few it missed (`--unexplained`:
only the survivors no explanation covers, where the broad set takes minutes each). `report`
prints each module's score (after the recheck, where one ran) and matches every surviving
mutant with its explanation in tests/*/mutation_survivors.toml (by module, operator and the
mutated source line, stripped): it lists each survivor left unexplained (with --diff, its change)
and each entry that matches no survivor (stale), and exits 1 while one is unexplained.

Not part of `python -m pytest tests` nor of CI: a full run takes hours on two cores. Settings
(operators left out, the timeout per mutant) are in tests/mutation.toml.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "tests" / "mutation.toml"
# The folder rules and the Rasa side, with the no-peer tests that cover them.
DEFAULT_MODULES = (
    "worker/folder/reconcile.py",
    "worker/folder/files.py",
    "worker/folder/arrivals.py",
    "worker/rasa/sync.py",
    "worker/rasa/client.py",
)
DEFAULT_TESTS = (
    "tests/folder/test_reconcile.py",
    "tests/folder/test_reconcile_edges.py",
    "tests/rasa/test_rasa.py",
    "tests/programs/test_debounce.py",
)
NOT_COPIED = (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="mutate and test (resumes an existing session)")
    run.add_argument("--modules", nargs="+",
                     help=f"the modules to mutate (default: {' '.join(DEFAULT_MODULES)})")
    run.add_argument("--tests", help="pytest's arguments in one string, e.g. \"tests/rasa/"
                                     "test_rasa.py -k 'not slow'\" (no-peer tests only; "
                                     f"default: {' '.join(DEFAULT_TESTS)})")
    run.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    run.add_argument("--carry-from", type=Path, metavar="OLD_SESSION",
                     help="take over what this session killed on unchanged code")
    run.add_argument("--carry-explained", action="store_true",
                     help="with --carry-from: also its survivors that an entry explains")
    recheck = commands.add_parser("recheck", help="the survivors against other tests")
    recheck.add_argument("--tests", required=True, help="pytest's arguments in one string")
    recheck.add_argument("--jobs", type=int, default=1, help="survivors tested at once")
    recheck.add_argument("--unexplained", action="store_true",
                         help="only the survivors no explanation covers")
    report = commands.add_parser("report", help="score per module and the survivors")
    report.add_argument("--diff", action="store_true",
                        help="show each unexplained survivor's change")
    for sub in (run, recheck, report):
        sub.add_argument("--session", type=Path,
                         default=Path(tempfile.gettempdir()) / "rasa-model-rotator-mutation")
    args = parser.parse_args(argv)
    if args.command == "run" and args.carry_explained and args.carry_from is None:
        parser.error("--carry-explained needs --carry-from OLD_SESSION")
    if args.command == "run":
        return run_session(args.session, args.modules, args.tests, args.jobs, args.carry_from,
                           args.carry_explained)
    if args.command == "recheck":
        return recheck_survivors(args.session, args.tests, args.jobs, args.unexplained)
    return print_report(args.session, args.diff)


def run_session(session: Path, modules: list[str] | None, tests: str | None, jobs: int = 1,
                carry_from: Path | None = None, carry_explained: bool = False) -> int:
    """Start (or resume) a session and test its mutants; the report's exit status. A resume
    keeps the session's modules and tests: others given then are refused, not ignored."""
    copies = [session / f"copy-{index}" for index in range(max(1, jobs))]
    database, config = session / "session.sqlite", session / "config.toml"
    if database.exists():
        made_with = tomllib.loads(config.read_text())["cosmic-ray"]
        if modules and modules != made_with["module-path"] or tests and \
                pytest_command(tests) != made_with["test-command"]:
            raise SystemExit(f"--modules/--tests: {session} was made with modules "
                             f"{made_with['module-path']} and test command "
                             f"{made_with['test-command']!r}; a resume keeps them (leave "
                             "both out), or start a new session for others")
    modules = modules or list(DEFAULT_MODULES)
    tests = tests or " ".join(DEFAULT_TESTS)
    # The tree as it was at init, never mutated: the mutants' positions refer to it. A run
    # stopped mid-mutant leaves a changed file in its copy, so each run copies afresh.
    pristine = session / "tree"
    print(f"mutation session in {session}", flush=True)
    if not database.exists():
        shutil.rmtree(session, ignore_errors=True)
        shutil.copytree(PROJECT_ROOT, pristine, ignore=shutil.ignore_patterns(*NOT_COPIED))
        shutil.copytree(pristine, copies[0])
        write_config(config, modules, tests)
        cosmic_ray("cosmic-ray", "init", config, database, cwd=copies[0])
        cosmic_ray("cr-filter-operators", database, config, cwd=copies[0])
        cosmic_ray("cr-filter-pragma", database, cwd=copies[0])
    if carry_from is not None:
        explanations = None
        if carry_explained:
            explanations = repository_explanations()
        carried = carry_over(carry_from, session, explanations)
        what = "killed mutants and explained survivors" if carry_explained else "killed mutants"
        print(f"carried over from {carry_from}: {carried} {what}", flush=True)
    if not pristine.exists():
        raise SystemExit(f"{session} has no pristine tree ({pristine}): start a new session")
    for copy in copies:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(pristine, copy)
    # Cosmic Ray rewrites a file in place and puts it back within the same second: a cached
    # .pyc with the same mtime and size would run the wrong code.
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    # A SIGTERM ends the run through `finally`, so the workers end with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workers = [start_worker(copy) for copy in copies] if jobs > 1 else []
    try:
        set_distributor(config, [url for url, _ in workers])
        cosmic_ray("cosmic-ray", "exec", config, database, cwd=copies[0])
    finally:
        for _, process in workers:
            process.terminate()
        for _, process in workers:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:  # a worker in the middle of a test
                process.kill()
                process.wait()
    return print_report(session, diff=False)


def start_worker(copy: Path) -> tuple[str, subprocess.Popen]:
    """An http worker that mutates and tests in `copy`; its URL once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(Path(sys.executable).parent / "cosmic-ray"), "http-worker",
                                "--port", str(port)], cwd=copy,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}", process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit(f"the mutation worker in {copy} did not start") from None
            time.sleep(0.2)


def set_distributor(path: Path, worker_urls: list[str]) -> None:
    """Local (one mutant at a time) without workers, else Cosmic Ray's http distributor."""
    import toml

    config = toml.loads(path.read_text())
    section = config["cosmic-ray"]
    section["distributor"] = ({"name": "http", "http": {"worker-urls": worker_urls}}
                              if worker_urls else {"name": "local"})
    path.write_text(toml.dumps(config))


def write_config(path: Path, modules: list[str], tests: str) -> None:
    import toml  # Cosmic Ray's own dependency; tomllib only reads

    config = tomllib.loads(CONFIG.read_text())
    section = config["cosmic-ray"]
    section["module-path"] = modules
    section["test-command"] = pytest_command(tests)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml.dumps(config))


def carry_over(old: Path, new: Path, explanations: list[Explanation] | None = None) -> int:
    """Copy into session `new` the results of the mutants session `old` killed whose code is
    unchanged: the same module, operator and arguments, the same mutated text and the same
    whole line, the n-th such mutant for the n-th (line numbers and occurrences shift with any
    edit above them). A survivor a recheck of `old` killed is carried with that recheck's
    outcome (recheck.json), also one this session has run and found surviving too. With
    `explanations`, also the survivors one of them covers: testing them again could only
    find them killed by a test added since, and carried as survivors they never raise the
    score. The number carried over. Cosmic Ray has no command for this: it reads and writes
    its session database (sqlite, tables mutation_specs and work_results)."""
    import sqlite3

    def mutants(session: Path) -> dict[tuple, list]:
        database = sqlite3.connect(session / "session.sqlite")
        rows = database.execute(
            "SELECT s.job_id, s.module_path, s.operator_name, s.operator_args, s.occurrence,"
            " s.start_pos_row, s.start_pos_col, s.end_pos_row, s.end_pos_col,"
            " r.worker_outcome, r.output,"
            " r.test_outcome, r.diff FROM mutation_specs s LEFT JOIN work_results r"
            " ON r.job_id = s.job_id ORDER BY s.module_path, s.start_pos_row, s.start_pos_col,"
            " s.operator_name, s.occurrence").fetchall()
        database.close()
        sources: dict[str, list[str]] = {}
        found: dict[tuple, list] = {}
        for (job, module, operator, arguments, occurrence, row, col, end_row, end_col,
             *result) in rows:
            if module not in sources:
                sources[module] = (session_tree(session) / module).read_text().splitlines()
            lines = sources[module]
            text = "\n".join(lines[row - 1:end_row])
            expression = text[col:len(text) - len(lines[end_row - 1]) + end_col]
            key = (module, operator, arguments, lines[row - 1].strip(), expression)
            identity = mutant_id({"module_path": module, "start_pos": (row, col),
                                  "operator_name": operator, "occurrence": occurrence})
            found.setdefault(key, []).append((job, identity, result))
        return found

    def rechecks_of(session: Path) -> dict:
        record = session / "recheck.json"
        return json.loads(record.read_text()) if record.exists() else {}

    before, rechecked_before, rechecks = mutants(old), rechecks_of(old), rechecks_of(new)
    database = sqlite3.connect(new / "session.sqlite")
    carried = 0
    with database:
        for key, jobs in mutants(new).items():
            # strict=False: an edit may add or remove mutants of one key
            for (job, identity, result), (_, earlier_identity, earlier) in zip(
                    jobs, before.get(key, []), strict=False):
                # Cosmic Ray stores outcomes in capitals (KILLED); a mutant it left out
                # (a filtered operator) has a SKIPPED result already.
                outcome, diff = str(earlier[2]).lower(), earlier[3] or ""
                explained = outcome == "survived" and explanations is not None and any(
                    entry.explains(Survivor(key[0], key[1], key[3], "", diff,
                                            changed_line(diff))) for entry in explanations)
                killed_by = [tests for tests, outcomes in rechecked_before.items()
                             if outcomes.get(earlier_identity) == "killed"]
                if result[0] is None:
                    if not (outcome == "killed" or explained or killed_by):
                        continue
                    database.execute("INSERT INTO work_results (worker_outcome, output, "
                                     "test_outcome, diff, job_id) VALUES (?, ?, ?, ?, ?)",
                                     (*earlier, job))
                elif str(result[2]).lower() != "survived" or all(
                        rechecks.get(tests, {}).get(identity) == "killed" for tests in killed_by):
                    continue  # this session's own result stands, or was carried before
                for tests in killed_by:
                    rechecks.setdefault(tests, {})[identity] = "killed"
                carried += 1
    database.close()
    if rechecks:
        (new / "recheck.json").write_text(json.dumps(rechecks, indent=1))
    return carried


def session_tree(session: Path) -> Path:
    """The session's unmutated tree (copy-0 in sessions made before it was kept apart)."""
    return session / "tree" if (session / "tree").exists() else session / "copy-0"


def pytest_command(tests: str) -> str:
    """The command Cosmic Ray runs against each mutant: pytest, stopping at the first failure."""
    return shlex.join([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                       *shlex.split(tests)])


def cosmic_ray(tool: str, *args, cwd: Path) -> None:
    executable = Path(sys.executable).parent / tool
    subprocess.run([str(executable), *map(str, args)], cwd=cwd, check=True)


def recheck_survivors(session: Path, tests: str, jobs: int, unexplained: bool = False) -> int:
    """Apply each survivor to a fresh copy of the tree and run `tests`; the outcomes go to
    recheck.json in the session, per test set. A rerun with the same tests skips the
    survivors it already rechecked; a recheck with other tests (a broader set after a fast
    one) takes only the survivors no recheck has killed yet. unexplained: only those no entry
    in the explanation files covers."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    record = session / "recheck.json"
    rechecks = json.loads(record.read_text()) if record.exists() else {}
    done = rechecks.setdefault(tests, {})
    explanations = None
    if unexplained:
        explanations = repository_explanations()
    todo = survivors_to_recheck(session, rechecks, tests, explanations)
    copies = queue_of_copies(session, jobs)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *shlex.split(tests)]
    timeout = tomllib.loads(CONFIG.read_text())["cosmic-ray"]["timeout"]
    lock = threading.Lock()

    def recheck(mutation) -> None:
        copy = copies.get()
        module = copy / mutation["module_path"]
        pristine = module.read_bytes()
        try:
            cosmic_ray("cosmic-ray", "apply", mutation["module_path"],
                       mutation["operator_name"], mutation["occurrence"], cwd=copy)
            try:
                result = subprocess.run(command, cwd=copy, capture_output=True, timeout=timeout)
                outcome = "survived" if result.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                outcome = "killed"  # a hang: the tests' own deadlines would fail it
        finally:
            module.write_bytes(pristine)
            copies.put(copy)
        with lock:
            done[mutant_id(mutation)] = outcome
            record.write_text(json.dumps(rechecks, indent=1))
            print(f"{outcome}: {mutant_id(mutation)}", flush=True)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(recheck, todo))
    return print_report(session, diff=False)


def survivors_to_recheck(session: Path, rechecks: dict, tests: str,
                         explanations: list[Explanation] | None = None) -> list[dict]:
    """The survivors (Cosmic Ray's mutations) a recheck with `tests` still has to run: not
    rechecked with these tests, not killed by any recheck, and (where explanations are
    given) covered by none of them."""
    killed = killed_by_a_recheck(rechecks)
    done = rechecks.get(tests, {})
    return [mutation for mutation, result in survivors_of(session)
            if mutant_id(mutation) not in done and mutant_id(mutation) not in killed
            and not (explanations is not None
                     and any(e.explains(as_survivor(session, mutation, result))
                             for e in explanations))]


def killed_by_a_recheck(rechecks: dict) -> set[str]:
    """The mutants one of the rechecks ({tests: {mutant: outcome}}) killed."""
    return {mutant for outcomes in rechecks.values()
            for mutant, outcome in outcomes.items() if outcome == "killed"}


def queue_of_copies(session: Path, jobs: int):
    """Fresh copies of the tree as it is now (the tests may have changed since the run)."""
    import queue

    copies: queue.Queue = queue.Queue()
    for index in range(max(1, jobs)):
        copy = session / f"recheck-{index}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(PROJECT_ROOT, copy, ignore=shutil.ignore_patterns(*NOT_COPIED))
        copies.put(copy)
    return copies


def repository_explanations() -> list[Explanation]:
    """The valid entries of the repository's explanation files; each invalid one is said on
    stderr (`report` fails on it)."""
    explanations, problems = load_explanations(sorted(PROJECT_ROOT.glob(EXPLANATIONS)))
    for problem in problems:
        print(f"invalid explanation, left out: {problem}", file=sys.stderr)
    return explanations


def mutant_id(mutation: dict) -> str:
    return (f"{mutation['module_path']}:{mutation['start_pos'][0]} "
            f"{mutation['operator_name']} #{mutation['occurrence']}")


def survivors_of(session: Path) -> list[tuple[dict, dict]]:
    dump = subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), "dump",
                           session / "session.sqlite"],
                          capture_output=True, text=True, check=True).stdout
    found = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is not None and result["worker_outcome"] != "skipped" \
                and result["test_outcome"] == "survived":
            found.append((item["mutations"][0], result))
    return found


# Every survivor is either killed by a test or explained in one of these files, one
# [[survivor]] entry each: module, operator (Cosmic Ray's name), line (the mutated source
# line, stripped) and why ("equivalent: ...", "unobservable: ..." or "accepted: ..."), and
# optionally mutated (the line after the change, stripped) where one operator makes two
# changes to one line (NumberReplacer: n + 1 and n - 1) and only one of them is explained.
EXPLANATIONS = "tests/*/mutation_survivors.toml"
WHY_KINDS = ("equivalent:", "unobservable:", "accepted:")


@dataclass(frozen=True)
class Survivor:
    """A mutant the tests did not notice, keyed the way an explanation names it."""

    module: str
    operator: str
    line: str  # the mutated source line, stripped
    name: str  # mutant_id(): module:line operator #occurrence
    diff: str = ""
    mutated: str = ""  # the line after the change, stripped

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module, self.operator, self.line)


@dataclass(frozen=True)
class Explanation:
    module: str
    operator: str
    line: str
    why: str
    where: str  # the file and entry number, for messages
    mutated: str = ""  # if set, only the survivor whose changed line reads so

    def explains(self, survivor: Survivor) -> bool:
        return self.key == survivor.key and self.mutated in ("", survivor.mutated)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module, self.operator, self.line)


def load_explanations(paths) -> tuple[list[Explanation], list[str]]:
    """The entries of every explanations file, and one line per entry that is not valid
    (a missing field, a `why` that does not start with one of WHY_KINDS, a duplicate)."""
    entries, problems, seen = [], [], {}
    for path in sorted(paths):
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            problems.append(f"{path}: not readable TOML ({error})")
            continue
        for index, entry in enumerate(data.get("survivor", []), 1):
            where = f"{path} entry {index}"
            fields = {name: entry.get(name) for name in ("module", "operator", "line", "why")}
            missing = [name for name, value in fields.items()
                       if not isinstance(value, str) or not value.strip()]
            if missing:
                problems.append(f"{where}: {', '.join(missing)} missing")
                continue
            if not fields["why"].startswith(WHY_KINDS):
                problems.append(f"{where}: why starts with none of {', '.join(WHY_KINDS)}")
                continue
            mutated = entry.get("mutated", "")
            if not isinstance(mutated, str):
                problems.append(f"{where}: mutated is not a string")
                continue
            explanation = Explanation(fields["module"], fields["operator"],
                                      fields["line"].strip(), fields["why"], where,
                                      mutated.strip())
            identity = (*explanation.key, explanation.mutated)
            if identity in seen:
                problems.append(f"{where}: the same mutant as {seen[identity]}")
                continue
            seen[identity] = where
            entries.append(explanation)
    return entries, problems


def match_explanations(survivors: list[Survivor], explanations: list[Explanation],
                       modules: set[str]) -> tuple[dict, list[Survivor], list[Explanation]]:
    """Each survivor's explanation, by (module, operator, stripped line): the explained
    ({survivor name: explanation}), the unexplained survivors, and the stale entries (about
    one of `modules`, the session's, yet matching no survivor). One entry covers every
    survivor with its key (the same change twice on one line, or on two identical lines),
    unless its `mutated` names the changed line."""
    explained = {}
    for survivor in survivors:
        entry = next((e for e in explanations if e.explains(survivor)), None)
        if entry is not None:
            explained[survivor.name] = entry
    unexplained = [s for s in survivors if s.name not in explained]
    stale = [e for e in explanations if e.module in modules
             and not any(e.explains(s) for s in survivors)]
    return explained, unexplained, stale


def as_survivor(session: Path, mutation: dict, result: dict) -> Survivor:
    """A surviving mutant (Cosmic Ray's mutation and work result) as explanations name it."""
    text = result.get("diff") or ""
    return Survivor(mutation["module_path"], mutation["operator_name"],
                    source_line(session, mutation, text), mutant_id(mutation), text,
                    changed_line(text))


def changed_line(diff: str) -> str:
    """The line the diff adds (the mutated line after the change), stripped."""
    added = [line[1:] for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    return added[0].strip() if added else ""


def source_line(session: Path, mutation: dict, diff: str) -> str:
    """The mutated line as it was before the change, stripped: the line the diff removes
    (the run's copy of the tree holds whichever mutant is being tested at the moment), else
    that line in the copy."""
    removed = [line[1:] for line in diff.splitlines()
               if line.startswith("-") and not line.startswith("---")]
    if removed:
        return removed[0].strip()
    try:
        lines = (session_tree(session) / mutation["module_path"]).read_text().splitlines()
        return lines[mutation["start_pos"][0] - 1].strip()
    except (OSError, IndexError):
        return ""


def print_report(session: Path, diff: bool, notes: list[Path] | None = None) -> int:
    """Each module's score and its survivors, matched with their explanations; 1 while a
    survivor is unexplained (or an explanation is not valid), else 0."""
    database = session / "session.sqlite"
    if not database.exists():
        print(f"no mutation session in {session}: run `python -m tests.mutation run` first",
              file=sys.stderr)
        return 2
    dump = subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), "dump", database],
                          capture_output=True, text=True, check=True).stdout
    record = session / "recheck.json"
    rechecked = killed_by_a_recheck(json.loads(record.read_text()) if record.exists() else {})
    outcomes: dict[str, Counter] = {}
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        mutation = item["mutations"][0]
        counts = outcomes.setdefault(mutation["module_path"], Counter())
        if result is None:
            counts["pending"] += 1
        elif result["worker_outcome"] == "skipped":
            counts["skipped"] += 1
        elif result["test_outcome"] == "survived" \
                and mutant_id(mutation) not in rechecked:
            counts["survived"] += 1
            survivors.append(as_survivor(session, mutation, result))
        elif result["test_outcome"] == "survived":
            counts["killed"] += 1  # by the recheck's tests
        else:
            counts[result["test_outcome"]] += 1  # killed, incompetent
    if notes is None:
        notes = sorted(PROJECT_ROOT.glob(EXPLANATIONS))
    explanations, problems = load_explanations(notes)
    explained, unexplained, stale = match_explanations(survivors, explanations, set(outcomes))
    for survivor in survivors:
        if survivor.name in explained:
            outcomes[survivor.module]["explained"] += 1
    print(f"{'module':28} {'mutants':>7} {'killed':>7} {'survived':>8} {'explained':>9} "
          f"{'UNEXPLAINED':>11} {'score':>6} {'pending':>7} {'incompetent':>11}")
    for module, counts in sorted(outcomes.items()):
        done = counts["killed"] + counts["survived"]
        mutants = done + counts["pending"] + counts["incompetent"]
        score = f"{100 * counts['killed'] / done:.0f} %" if done else "-"
        print(f"{module:28} {mutants:7} {counts['killed']:7} {counts['survived']:8} "
              f"{counts['explained']:9} {counts['survived'] - counts['explained']:11} "
              f"{score:>6} {counts['pending']:7} {counts['incompetent']:11}")
    for survivor in sorted(unexplained, key=lambda s: s.name):
        print(f"UNEXPLAINED: {survivor.name}: {survivor.line}")
        if diff and survivor.diff:
            print(survivor.diff)
    for entry in stale:
        print(f"stale: {entry.where} matches no survivor: {entry.module} {entry.operator} "
              f"{entry.line!r}")
    if stale and any(counts["pending"] for counts in outcomes.values()):
        print("(mutants are pending: a stale entry may be waiting for one of them)")
    for problem in problems:
        print(f"invalid: {problem}")
    return 1 if unexplained or problems else 0


if __name__ == "__main__":
    sys.exit(main())
