"""The mutation check's report: each survivor is matched with its explanation by (module,
operator, stripped source line); unexplained survivors fail it, stale entries are listed."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.mutation import (
    Explanation,
    Survivor,
    carry_over,
    killed_by_a_recheck,
    load_explanations,
    match_explanations,
    mutant_id,
    print_report,
    survivors_to_recheck,
)

WHY = "equivalent: both branches return the same value"


def survivor(line="if a < b:", operator="core/ReplaceComparisonOperator_Lt_LtE",
             module="worker/x.py", number=3) -> Survivor:
    return Survivor(module, operator, line, f"{module}:{number} {operator} #0")


def explanation(line="if a < b:", operator="core/ReplaceComparisonOperator_Lt_LtE",
                module="worker/x.py") -> Explanation:
    return Explanation(module, operator, line, WHY, "notes entry 1")


def test_a_survivor_is_explained_by_its_module_operator_and_line():
    explained, unexplained, stale = match_explanations(
        [survivor()], [explanation()], {"worker/x.py"})
    assert list(explained) == ["worker/x.py:3 core/ReplaceComparisonOperator_Lt_LtE #0"]
    assert unexplained == [] and stale == []


def test_an_entry_that_differs_in_any_part_of_the_key_explains_nothing():
    for other in (explanation(line="if a <= b:"),
                  explanation(operator="core/ReplaceComparisonOperator_Lt_GtE"),
                  explanation(module="worker/y.py")):
        explained, unexplained, stale = match_explanations(
            [survivor()], [other], {"worker/x.py", "worker/y.py"})
        assert explained == {} and unexplained == [survivor()]
        assert stale == [other], "an entry that matches nothing is not listed as stale"


def test_one_entry_covers_the_same_change_on_identical_lines():
    twins = [survivor(number=3), survivor(number=30)]
    explained, unexplained, _ = match_explanations(twins, [explanation()], {"worker/x.py"})
    assert len(explained) == 2 and unexplained == []


def test_mutated_tells_two_changes_of_one_operator_on_one_line_apart():
    """NumberReplacer makes `n += 1` into `n += 2` and `n += 0`: an entry naming the
    changed line explains only that one."""
    operator = "core/NumberReplacer"
    plus, zero = (Survivor("worker/x.py", operator, "n += 1", f"worker/x.py:3 {operator} #{i}",
                           mutated=mutated) for i, mutated in ((0, "n += 2"), (1, "n += 0")))
    entry = Explanation("worker/x.py", operator, "n += 1", WHY, "notes entry 1", "n += 2")
    explained, unexplained, stale = match_explanations([plus, zero], [entry], {"worker/x.py"})
    assert list(explained) == [plus.name] and unexplained == [zero] and stale == []
    _, unexplained, stale = match_explanations([zero], [entry], {"worker/x.py"})
    assert unexplained == [zero] and stale == [entry]


def test_entries_about_modules_outside_the_session_are_not_stale():
    """The Rasa helper's notes are read by a report on the folder's session: not stale."""
    _, _, stale = match_explanations([], [explanation(module="worker/rasa/sync.py")],
                                     {"worker/x.py"})
    assert stale == []


def test_a_mutant_killed_by_any_recheck_is_killed():
    """A fast recheck, then a broader one over what the fast one left: either kill counts."""
    rechecks = {"tests/fast.py": {"m1": "killed", "m2": "survived", "m3": "survived"},
                "tests/broad.py": {"m2": "killed", "m3": "survived"}}
    assert killed_by_a_recheck(rechecks) == {"m1", "m2"}


def test_the_notes_are_read_and_checked(tmp_path):
    notes = tmp_path / "mutation_survivors.toml"
    notes.write_text(textwrap.dedent(f"""\
        [[survivor]]
        module = "worker/x.py"
        operator = "core/ReplaceComparisonOperator_Lt_LtE"
        line = "  if a < b:  "
        why = "{WHY}"

        [[survivor]]
        module = "worker/x.py"
        operator = "core/ReplaceComparisonOperator_Lt_LtE"
        line = "if a < b:"
        why = "{WHY}"

        [[survivor]]
        module = "worker/x.py"
        operator = "core/NumberReplacer"
        line = "x = 1"
        why = "no test: it looked hard"

        [[survivor]]
        module = "worker/x.py"
        line = "x = 2"
        why = "{WHY}"
        """))
    entries, problems = load_explanations([notes])
    assert [(e.module, e.operator, e.line) for e in entries] == [
        ("worker/x.py", "core/ReplaceComparisonOperator_Lt_LtE", "if a < b:")]
    assert problems == [
        f"{notes} entry 2: the same mutant as {notes} entry 1",
        f"{notes} entry 3: why starts with none of equivalent:, unobservable:, accepted:",
        f"{notes} entry 4: operator missing"]


def real_session(session: Path, module: str, check: str, run: bool = True,
                 tree: str = "copy-0") -> None:
    """A Cosmic Ray session over tiny.py (`module`) whose test is check.py (`check`),
    initialised and, with `run`, executed."""
    copy = session / tree
    copy.mkdir(parents=True)
    (copy / "tiny.py").write_text(module)
    (copy / "check.py").write_text(check)
    config = session / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        [cosmic-ray]
        module-path = "tiny.py"
        timeout = 60.0
        excluded-modules = []
        test-command = "{shlex.join([sys.executable, 'check.py'])}"
        [cosmic-ray.distributor]
        name = "local"
        """))
    tools = Path(sys.executable).parent
    commands = [["init", config, session / "session.sqlite"]]
    if run:
        commands.append(["exec", config, session / "session.sqlite"])
    for command in commands:
        subprocess.run([tools / "cosmic-ray", *command], cwd=copy, check=True,
                       capture_output=True)


def outcomes(session: Path) -> dict[tuple[int, str], str | None]:
    """{(line, operator): test outcome or None} of a session's mutants."""
    import sqlite3

    database = sqlite3.connect(session / "session.sqlite")
    rows = database.execute("SELECT s.start_pos_row, s.operator_name, r.test_outcome "
                            "FROM mutation_specs s LEFT JOIN work_results r "
                            "ON r.job_id = s.job_id").fetchall()
    database.close()
    return {(row, operator): outcome for row, operator, outcome in rows}


def test_the_report_of_a_real_session_fails_until_its_survivor_is_explained(tmp_path,
                                                                           capsys):
    """A real Cosmic Ray session over a two-line module: `a > b` as `a >= b` survives a
    check that never compares equal values; all other changes are killed."""
    session = tmp_path / "session"
    real_session(session, "def bigger(a, b):\n    return a > b\n",
                 "import tiny\nassert tiny.bigger(2, 1) and not tiny.bigger(1, 2)\n")
    notes = tmp_path / "mutation_survivors.toml"
    entry = ('[[survivor]]\nmodule = "tiny.py"\n'
             'operator = "core/ReplaceComparisonOperator_Gt_GtE"\n'
             f'line = "return a > b"\nwhy = "{WHY}"\n')
    stale = ('[[survivor]]\nmodule = "tiny.py"\n'
             'operator = "core/ReplaceComparisonOperator_Gt_Lt"\n'
             f'line = "return a > b"\nwhy = "{WHY}"\n')

    notes.write_text("")
    assert print_report(session, diff=True, notes=[notes]) == 1
    out = capsys.readouterr().out
    assert "UNEXPLAINED: tiny.py:2 core/ReplaceComparisonOperator_Gt_GtE #0: return a > b" \
        in out
    assert "+    return a >= b" in out, "--diff did not show the change"
    row = next(line.split() for line in out.splitlines() if line.startswith("tiny.py "))
    assert row[:6] == ["tiny.py", "7", "6", "1", "0", "1"]

    notes.write_text(entry + "\n" + stale)
    assert print_report(session, diff=False, notes=[notes]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("tiny.py "))
    assert row[:6] == ["tiny.py", "7", "6", "1", "1", "0"]
    assert "UNEXPLAINED:" not in out
    assert f"stale: {notes} entry 2 matches no survivor" in out


def test_a_recheck_takes_what_no_recheck_killed_and_with_unexplained_no_explained_one(
        tmp_path):
    """The survivor `>=` of a real session: rechecked once per test set, never after a
    recheck killed it, and left out by --unexplained once an entry explains it."""
    session = tmp_path / "session"
    real_session(session, "def bigger(a, b):\n    return a > b\n",
                 "import tiny\nassert tiny.bigger(2, 1) and not tiny.bigger(1, 2)\n")
    survivor_id = "tiny.py:2 core/ReplaceComparisonOperator_Gt_GtE #0"
    explained = Explanation("tiny.py", "core/ReplaceComparisonOperator_Gt_GtE", "return a > b",
                            WHY, "notes entry 1")
    other = Explanation("tiny.py", "core/ReplaceComparisonOperator_Gt_GtE", "return a < b",
                        WHY, "notes entry 2")

    def ids(rechecks, explanations=None):
        return [mutant_id(m)
                for m in survivors_to_recheck(session, rechecks, "slow", explanations)]

    assert ids({}) == [survivor_id]
    assert ids({}, [other]) == [survivor_id]
    assert ids({}, [explained]) == []
    assert ids({"slow": {survivor_id: "survived"}}) == [], "rechecked twice with one set"
    assert ids({"fast": {survivor_id: "survived"}}) == [survivor_id]
    assert ids({"fast": {survivor_id: "killed"}}) == [], "a killed survivor rechecked"


def test_a_new_session_carries_over_only_what_was_killed_on_unchanged_code(tmp_path):
    """The code moves down two lines and gains a comparison: the old session's killed
    mutants of `a > b` carry over at their new place, its survivor (`>=`) and the new
    line's mutants stay to be tested."""
    check = "import tiny\nassert tiny.bigger(2, 1) and not tiny.bigger(1, 2)\n"
    old, new = tmp_path / "old", tmp_path / "new"
    real_session(old, "def bigger(a, b):\n    return a > b\n", check)
    before = outcomes(old)
    assert before[(2, "core/ReplaceComparisonOperator_Gt_GtE")] == "SURVIVED"
    assert before[(2, "core/ReplaceComparisonOperator_Gt_Lt")] == "KILLED"
    real_session(new, "def smaller(a, b):\n    return a < b\n\n\n"
                      "def bigger(a, b):\n    return a > b\n", check, run=False, tree="tree")

    carried = carry_over(old, new)

    after = outcomes(new)
    killed_before = {operator for (_, operator), outcome in before.items()
                     if outcome == "KILLED"}
    assert carried == len(killed_before) > 0
    assert {operator for (row, operator), outcome in after.items()
            if row == 6 and outcome == "KILLED"} == killed_before
    assert after[(6, "core/ReplaceComparisonOperator_Gt_GtE")] is None, "a survivor carried"
    assert all(outcome is None for (row, _), outcome in after.items() if row == 2), \
        "a mutant of the new line carried"
    assert carry_over(old, new) == 0, "a second carry-over wrote results twice"

    # With explanations: the survivor an entry covers is carried too, as a survivor.
    gte = Explanation("tiny.py", "core/ReplaceComparisonOperator_Gt_GtE", "return a > b", WHY,
                      "notes entry 1")
    lt = Explanation("tiny.py", "core/ReplaceComparisonOperator_Lt_Gt", "return a < b", WHY,
                     "notes entry 2")  # a mutant of the new line: never run, never carried
    assert carry_over(old, new, [gte, lt]) == 1
    after = outcomes(new)
    assert after[(6, "core/ReplaceComparisonOperator_Gt_GtE")] == "SURVIVED"
    assert after[(2, "core/ReplaceComparisonOperator_Lt_Gt")] is None


def test_a_survivor_a_recheck_killed_is_carried_with_that_recheck_s_outcome(tmp_path):
    """The old session's survivor `>=` was killed by a recheck with other tests: the new
    session takes it over as killed by that recheck, at its new place."""
    check = "import tiny\nassert tiny.bigger(2, 1) and not tiny.bigger(1, 2)\n"
    old, new = tmp_path / "old", tmp_path / "new"
    real_session(old, "def bigger(a, b):\n    return a > b\n", check)
    (old / "recheck.json").write_text(json.dumps({
        "tests/slow.py": {"tiny.py:2 core/ReplaceComparisonOperator_Gt_GtE #0": "killed"},
        "tests/other.py": {"tiny.py:2 core/ReplaceComparisonOperator_Gt_GtE #0": "survived"}}))
    real_session(new, "\n\ndef bigger(a, b):\n    return a > b\n", check, run=False,
                 tree="tree")

    carry_over(old, new)

    assert outcomes(new)[(4, "core/ReplaceComparisonOperator_Gt_GtE")] == "SURVIVED"
    assert json.loads((new / "recheck.json").read_text()) == {
        "tests/slow.py": {"tiny.py:4 core/ReplaceComparisonOperator_Gt_GtE #0": "killed"}}
    assert survivors_to_recheck(new, json.loads((new / "recheck.json").read_text()),
                                "tests/slow.py") == []

    # A session that has run it already (found surviving the fast set): the kill is carried
    # once.
    ran = tmp_path / "ran"
    real_session(ran, "\n\ndef bigger(a, b):\n    return a > b\n", check, tree="tree")
    assert outcomes(ran)[(4, "core/ReplaceComparisonOperator_Gt_GtE")] == "SURVIVED"
    assert carry_over(old, ran) == 1
    assert carry_over(old, ran) == 0
    assert json.loads((ran / "recheck.json").read_text()) == {
        "tests/slow.py": {"tiny.py:4 core/ReplaceComparisonOperator_Gt_GtE #0": "killed"}}


def test_a_resume_refuses_other_tests_instead_of_ignoring_them(tmp_path, capsys):
    """A session's test command is fixed at its start: a resume asked to run other tests
    would report a score they never produced."""
    from tests.mutation import main, pytest_command

    session = tmp_path / "session"
    session.mkdir()
    (session / "session.sqlite").write_bytes(b"")
    (session / "config.toml").write_text(
        f'[cosmic-ray]\nmodule-path = ["worker/x.py"]\n'
        f'test-command = {json.dumps(pytest_command("tests/a.py"))}\n')
    for other in (["--tests", "tests/b.py"], ["--modules", "worker/y.py"]):
        with pytest.raises(SystemExit) as refused:
            main(["run", "--session", str(session), *other])
        assert "a resume keeps them" in str(refused.value), refused.value
    with pytest.raises(SystemExit) as refused:  # a usage error: it needs an old session
        main(["run", "--session", str(session), "--carry-explained"])
    assert refused.value.code == 2
    assert "--carry-explained needs --carry-from" in capsys.readouterr().err


def test_the_repository_s_explanations_are_valid():
    """`report` fails on an invalid entry (a duplicate, a missing field, a `why` of no known
    kind): the files in the tree must load clean, whatever session is reported."""
    from tests.helpers import PROJECT_ROOT
    from tests.mutation import EXPLANATIONS

    files = sorted(PROJECT_ROOT.glob(EXPLANATIONS))
    entries, problems = load_explanations(files)
    assert len(files) >= 2 and entries
    assert problems == []
