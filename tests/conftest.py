import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import RunningTool, settings_names, tool_environment  # noqa: E402

# The suites against the real peers (Docker, Rasa) run after the unit and integration tests:
# a fault in the core shows up first, and the slow peers come last.
PEER_SUITES = ("test_docker.py", "test_real_rasa.py", "test_real_rasa_pull.py",
               "test_real_rasa_refusal.py", "test_real_rasa_remote.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in PEER_SUITES)  # stable: order kept within


@pytest.fixture
def start_tool(tmp_path):
    """Start `python -m worker` in tmp_path (models in tmp_path/models); stopped at teardown."""
    started: list[RunningTool] = []

    def start(args=(), workdir=None, prefix=(), python=sys.executable,
              **settings) -> RunningTool:
        env = tool_environment(tmp_path, **settings)
        tool = RunningTool(workdir or tmp_path, env, tuple(args), tuple(prefix), python)
        started.append(tool)
        return tool

    yield start
    for tool in started:
        tool.stop()
        assert tool.process.returncode is not None


@pytest.fixture
def stubs():
    """Rasa-like servers on 127.0.0.1 (tests/rasa_stub.py), closed at teardown."""
    from tests.rasa_stub import RasaStub

    started = []

    def make(*args, **kwargs):
        stub = RasaStub(*args, **kwargs)
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.close()


@pytest.fixture
def models(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    for name in settings_names():
        monkeypatch.delenv(name, raising=False)
    yield
