import os
import subprocess
import sys
import time

import pytest

from tests.helpers import tool_environment
from worker.settings import SettingError, read_settings


def test_defaults_are_the_original_tools(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = read_settings({})
    assert settings.target_dir == tmp_path / "models"
    assert settings.latest_model_path == tmp_path / "models" / "latest.tar.gz"
    assert settings.throttle_delay_s == 5.0
    assert settings.ignore_paths == (tmp_path / "models" / "lost+found",)
    assert settings.keep_previous == 0
    assert settings.model_pattern == "*.tar.gz"
    assert settings.log_level == "INFO"


def test_default_run_dirs_differ_per_folder(tmp_path):
    first = read_settings({"TARGET_DIR": str(tmp_path / "a")}).run_dir
    second = read_settings({"TARGET_DIR": str(tmp_path / "b")}).run_dir
    assert first != second


@pytest.mark.parametrize("name, value, allowed", [
    ("THROTTLE_DELAY", "abc", "milliseconds"),
    ("THROTTLE_DELAY", "-5", "milliseconds"),
    ("THROTTLE_DELAY", "1.5", "milliseconds"),
    ("KEEP_PREVIOUS", "-1", "whole number"),
    ("KEEP_PREVIOUS", "two", "whole number"),
    ("BROKEN_GRACE_PERIOD", "soon", "seconds"),
    ("RESCAN_INTERVAL", "1m", "seconds"),
    ("PUBLISH_MODE", "link", "copy, move"),
    ("LOG_FORMAT", "xml", "text, json"),
    ("METRICS_PORT", "70000", "TCP port"),
    ("RASA_URL", "ftp://rasa", "base URLs"),
    ("RASA_RETRY_FOR", "forever", "seconds"),
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ("MODEL_PATTERN", "sub/*.tar.gz", "without '/'"),
    ("MODEL_PATTERN", "", "pattern"),
    ("LATEST_MODEL_PATH", "", "file path"),
])
def test_bad_values_name_the_setting(tmp_path, name, value, allowed):
    with pytest.raises(SettingError) as raised:
        read_settings({"TARGET_DIR": str(tmp_path / "models"), name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}=")
    assert repr(value) in message
    assert allowed in message
    assert "\n" not in message


def test_unusable_paths(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SettingError, match="^TARGET_DIR=.*a folder"):
        read_settings({"TARGET_DIR": str(a_file)})
    with pytest.raises(SettingError, match="^LATEST_MODEL_PATH=.*folder"):
        read_settings({"TARGET_DIR": str(tmp_path / "m"), "LATEST_MODEL_PATH": str(tmp_path)})
    with pytest.raises(SettingError, match="^RUN_DIR=.*a folder"):
        read_settings({"TARGET_DIR": str(tmp_path / "m"), "RUN_DIR": str(a_file)})
    with pytest.raises(SettingError, match="^TARGET_DIR=.*can be created"):
        read_settings({"TARGET_DIR": str(a_file / "below")})


def test_run_dir_of_another_user_is_refused(tmp_path):
    other = tmp_path / "run"
    other.mkdir()
    os.chown(other, 12345, 12345)
    with pytest.raises(SettingError, match="^RUN_DIR=.*owned by this user"):
        read_settings({"TARGET_DIR": str(tmp_path / "m"), "RUN_DIR": str(other)})


BAD_SETTINGS = [
    {"THROTTLE_DELAY": "fast"},
    {"THROTTLE_DELAY": "-1"},
    {"KEEP_PREVIOUS": "-3"},
    {"LOG_LEVEL": "chatty"},
    {"MODEL_PATTERN": "a/b"},
    {"BROKEN_GRACE_PERIOD": "x"},
    {"RESCAN_INTERVAL": "-60"},
    {"PUBLISH_MODE": "hardlink"},
    {"RASA_TIMEOUT": "0"},
    {"TARGET_DIR": "a-file/models"},
    {"TARGET_DIR": "a-file"},
    {"LATEST_MODEL_PATH": "a-file/latest.tar.gz"},
    {"RUN_DIR": "a-file"},
    {"ENV_FILE": "missing.env"},
]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: "=".join(next(iter(bad.items()))))
def test_python_m_worker_refuses_bad_settings_fast_and_touches_nothing(tmp_path, bad):
    (tmp_path / "a-file").write_text("not a folder")
    env = tool_environment(tmp_path, **bad)
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "worker"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=10)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 1.0 + 1.0, f"took {elapsed:.2f} s"  # a second, plus interpreter start-up
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    name = next(iter(bad))
    assert name in lines[0] and "not allowed" in lines[0]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was created"


def test_env_file_is_read_and_the_real_environment_wins(tmp_path):
    (tmp_path / "custom.env").write_text("THROTTLE_DELAY=1234\nKEEP_PREVIOUS=2\n")
    env = tool_environment(tmp_path, ENV_FILE="custom.env", KEEP_PREVIOUS="1")
    env.pop("THROTTLE_DELAY")
    code = ("from worker.settings import load_environment, read_settings;"
            "load_environment(); s = read_settings();"
            "print(s.throttle_delay_s, s.keep_previous)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1.234", "1"]


def test_dot_env_is_read_by_default(tmp_path):
    (tmp_path / ".env").write_text("KEEP_PREVIOUS=4\n")
    env = tool_environment(tmp_path)
    code = "from worker.settings import load_environment, read_settings;" \
           "load_environment(); print(read_settings().keep_previous)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "4"



def test_move_mode_across_file_systems_is_refused(tmp_path):
    import os

    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("needs /dev/shm on another file system than the temporary folder")
    with pytest.raises(SettingError, match="^PUBLISH_MODE=.*another file system"):
        read_settings({"TARGET_DIR": str(tmp_path / "m"), "PUBLISH_MODE": "move",
                       "LATEST_MODEL_PATH": "/dev/shm/rotator-latest.tar.gz"})
