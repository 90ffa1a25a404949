"""The mutation check's report: each survivor is matched with its explanation by (module,
operator, stripped source line); unexplained survivors fail it, stale entries are listed."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.mutation import (
    Explanation,
    Survivor,
    killed_by_a_recheck,
    load_explanations,
    match_explanations,
    print_report,
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


def test_the_report_of_a_real_session_fails_until_its_survivor_is_explained(tmp_path,
                                                                           capsys):
    """A real Cosmic Ray session over a two-line module: `a > b` as `a >= b` survives a
    check that never compares equal values; all other changes are killed."""
    session = tmp_path / "session"
    copy = session / "copy-0"
    copy.mkdir(parents=True)
    (copy / "tiny.py").write_text("def bigger(a, b):\n    return a > b\n")
    (copy / "check.py").write_text(
        "import tiny\nassert tiny.bigger(2, 1) and not tiny.bigger(1, 2)\n")
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
    for command in (["init", config, session / "session.sqlite"],
                    ["exec", config, session / "session.sqlite"]):
        subprocess.run([tools / "cosmic-ray", *command], cwd=copy, check=True,
                       capture_output=True)
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
