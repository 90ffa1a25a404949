"""`.ci/peers` picks a Python 3.10 that runs, as a machine that never ran CI has it.

On such a machine pyenv's shim `python3.10` is first on PATH but exits 127 while 3.10 is not an
active pyenv version; the old finder took it and CI failed before any test ran. These tests run
the finder only: they never install Rasa.
"""

import os
import subprocess
from pathlib import Path

PEERS = Path(__file__).resolve().parent.parent / ".ci" / "peers"


def _dead_python310(folder: Path) -> Path:
    """A `python3.10` that fails like pyenv's shim for an inactive version."""
    folder.mkdir()
    shim = folder / "python3.10"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.10: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    return folder


def _run_peers(tmp_path: Path, *args: str, **env_changes: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON310", "PYENV_VERSION")}
    env["RASA_VENV"] = str(tmp_path / "empty-rasa-venv")  # a new machine: no cached venv
    env.update(env_changes)
    return subprocess.run(["bash", str(PEERS), *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _version_of(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_a_python310_that_exits_127_first_on_path_is_passed_over(tmp_path):
    dead = _dead_python310(tmp_path / "shims")
    (tmp_path / "empty-rasa-venv").mkdir()
    done = _run_peers(tmp_path, "find-python310", PATH=f"{dead}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    found = done.stdout.strip()
    assert found and Path(found).parent != dead, done.stdout
    assert _version_of(found) == "(3, 10)"
    assert not any((tmp_path / "empty-rasa-venv").iterdir()), "the finder installed something"


def test_a_python310_named_by_the_user_comes_first(tmp_path):
    found = _run_peers(tmp_path, "find-python310").stdout.strip()
    assert found, "this machine has no Python 3.10 (pyenv install 3.10)"
    link = tmp_path / "my-python"
    link.symlink_to(found)
    done = _run_peers(tmp_path, "find-python310", PYTHON310=str(link))
    assert done.stdout.strip() == str(link)


def test_no_python310_that_runs_is_one_line_saying_how_to_get_one(tmp_path):
    dead = _dead_python310(tmp_path / "shims")
    done = _run_peers(tmp_path, "find-python310", PATH=f"{dead}:/usr/bin:/bin",
                      PYENV_ROOT=str(tmp_path / "no-pyenv"), HOME=str(tmp_path),
                      PYTHON310=str(dead / "python3.10"))
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pyenv install 3.10" in lines[0] and "RASA_VENV" in lines[0]


def test_a_folder_that_is_not_a_venv_is_never_removed(tmp_path):
    precious = tmp_path / "empty-rasa-venv"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    done = _run_peers(tmp_path)
    assert done.returncode != 0
    assert "not touching it" in done.stderr
    assert (precious / "notes.txt").read_text() == "mine"


def _fake_rasa_venv(folder: Path, version: str, extra_lines: int = 0) -> Path:
    """A venv whose `bin/rasa --version` answers like Rasa 3.6 (warnings first, then a table)."""
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("home = /nowhere\n")
    rasa = folder / "bin" / "rasa"
    rasa.write_text(
        "#!/bin/sh\n"
        "echo 'tracker_store.py:1044: MovedIn20Warning: Deprecated API features detected!' >&2\n"
        f"echo 'Rasa Version      :         {version}'\n"
        "echo 'Minimum Compatible Version: 3.6.21'\n"
        f"i=0; while [ $i -lt {extra_lines} ]; do echo 'Python Path       :         /x'; "
        "i=$((i+1)); done\n")
    rasa.chmod(0o755)
    return folder


def test_a_cached_rasa_venv_is_reused_only_when_rasa_says_3_6_21(tmp_path):
    right = _fake_rasa_venv(tmp_path / "right", "3.6.21")
    # Much output after the version line: a check that stops reading early (grep -q in a pipe
    # under pipefail) takes the broken pipe for a wrong version and rebuilds for nothing.
    chatty = _fake_rasa_venv(tmp_path / "chatty", "3.6.21", extra_lines=20000)
    older = _fake_rasa_venv(tmp_path / "older", "3.6.20")
    broken = tmp_path / "broken"
    (broken / "bin").mkdir(parents=True)
    for venv, ready in ((right, True), (chatty, True), (older, False), (broken, False)):
        done = _run_peers(tmp_path, "rasa-venv-ready", RASA_VENV=str(venv))
        assert (done.returncode == 0) == ready, (venv.name, done.returncode, done.stderr)
