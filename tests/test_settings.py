import os
import subprocess
import sys
import time

import pytest

from tests.helpers import run_worker, tool_environment
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
    ("LOG_LEVEL", "\u0131nfo", "DEBUG, INFO"),
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
    {"THROTTLE_DELAY": "\u00b2"},
    {"KEEP_PREVIOUS": "\u0665"},
    {"RESCAN_INTERVAL": "99999999999"},
    {"THROTTLE_DELAY": "99999999999"},
    {"RASA_URL": "http://h:99999"},
    {"RASA_URL": "http://h:abc"},
    {"TARGET_DIR": " models"},
    {"TARGET_DIR": "/"},
    {"LATEST_MODEL_PATH": "models/" + "x" * 250},
    {"METRICS_BIND": "everywhere"},
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
    assert result.returncode == 2
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


# -- hostile and careless settings (issue 9) -------------------------------------------------

def refused(tmp_path, **settings) -> str:
    """The one-line refusal of read_settings for these settings (TARGET_DIR in tmp_path)."""
    env = {"TARGET_DIR": str(tmp_path / "models"), **settings}
    with pytest.raises(SettingError) as raised:
        read_settings(env)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["THROTTLE_DELAY", "KEEP_PREVIOUS", "RESCAN_INTERVAL",
                                  "RASA_TIMEOUT", "METRICS_PORT", "MODEL_SERVER_PORT"])
@pytest.mark.parametrize("value", ["²", "٥", "5٥", "１２"])
def test_only_ascii_digits_are_numbers(tmp_path, name, value):
    # str.isdigit() says yes to all of these; int() takes "٥" as 5 and refuses "²".
    assert refused(tmp_path, **{name: value}).startswith(f"{name}={value!r} is not allowed")


@pytest.mark.parametrize("name, value, bound", [
    ("RESCAN_INTERVAL", "99999999999", "604800"),
    ("RESCAN_INTERVAL", "604801", "604800"),
    ("THROTTLE_DELAY", "99999999999", "86400000"),
    ("THROTTLE_DELAY", "9" * 5000, "86400000"),  # int() itself refuses over 4300 digits
    ("BROKEN_GRACE_PERIOD", "99999999999", "2592000"),
    ("RASA_RETRY_FOR", "99999999999", "86400"),
    ("RASA_TIMEOUT", "0", "3600"),
    ("RASA_SYNC_INTERVAL", "86401", "86400"),
    ("RASA_TRAINING_WAIT", "86401", "86400"),
    ("RASA_MAX_SWAPPING", "0", "1000"),
    ("MODEL_SERVER_SWAP_TIMEOUT", "0", "86400"),
    ("MODEL_SERVER_MAX_SWAPPING", "1001", "1000"),
    ("KEEP_PREVIOUS", "10001", "10000"),
])
def test_numbers_have_bounds_and_say_them(tmp_path, name, value, bound):
    message = refused(tmp_path, **{name: value})
    assert message.startswith(f"{name}=") and f" to {bound} " in message


def test_the_bounds_themselves_are_accepted(tmp_path):
    settings = read_settings({"TARGET_DIR": str(tmp_path / "m"), "THROTTLE_DELAY": "86400000",
                              "RESCAN_INTERVAL": "604800", "BROKEN_GRACE_PERIOD": "2592000",
                              "MODEL_SERVER_MAX_SWAPPING": "0", "RASA_SYNC_INTERVAL": "0"})
    assert settings.throttle_delay_s == 86400 and settings.rescan_interval_s == 604800
    assert settings.model_server_max_swapping == 0


@pytest.mark.parametrize("url", ["http://h:99999", "http://h:abc", "http://h:0", "http://h:٥",
                                 "http://h:-1", "http://ra sa:5005", "http://h\n:5005"])
def test_rasa_urls_with_unusable_ports_or_hosts_are_refused(tmp_path, url):
    assert refused(tmp_path, RASA_URL=url).startswith("RASA_URL=")


@pytest.mark.parametrize("url", ["ftp://user:s3cret@h", "http://user:s3cret@h:99999",
                                 "http://user:s3cret@h:abc/x", "http://user:s3cret@:5005",
                                 "http://ok:5005,gopher://user:s3cret@h",
                                 "http://user:s3/cret@h:99999", "http://s3cret@h:0",
                                 "http://user:s3#cret@h:99999", "user:s3cret@h:5005",
                                 "http://h:5005/?token=s3cret", "http://h:5005#s3cret"])
def test_a_password_in_rasa_url_is_never_shown(tmp_path, url):
    message = refused(tmp_path, RASA_URL=url)
    assert message.startswith("RASA_URL=")
    assert "s3" not in message and "cret" not in message
    assert "***@" in message or "@" not in url


@pytest.mark.parametrize("name", ["RASA_TOKEN", "MODEL_SERVER_TOKEN"])
@pytest.mark.parametrize("token", [" s3cret", "s3cret\n", "s3c\x1bret"])
def test_a_token_is_never_shown_even_when_refused(tmp_path, name, token):
    message = refused(tmp_path, **{name: token})
    assert message.startswith(f"{name} is not allowed")
    assert "s3c" not in message


def test_settings_print_no_secret(tmp_path):
    settings = read_settings({"TARGET_DIR": str(tmp_path / "m"), "RASA_TOKEN": "tok3n",
                              "MODEL_SERVER_TOKEN": "t0ken2",
                              "RASA_URL": "http://user:s3cret@rasa:5005"})
    assert settings.rasa_urls == ("http://user:s3cret@rasa:5005",)  # the client needs it
    for text in (repr(settings), str(settings), str(settings.shown())):
        assert "s3cret" not in text and "tok3n" not in text and "t0ken2" not in text
        assert "http://***@rasa:5005" in text


@pytest.mark.parametrize("value", [" /srv/m", "models ", "mo\ndels", "\tmodels", ""])
def test_target_dir_with_surrounding_spaces_or_control_characters_is_refused(tmp_path, value):
    assert refused(tmp_path, TARGET_DIR=value).startswith(f"TARGET_DIR={value!r}")


@pytest.mark.parametrize("name", ["LATEST_MODEL_PATH", "RUN_DIR", "RASA_MODEL_PATH"])
def test_other_paths_with_surrounding_spaces_are_refused(tmp_path, name):
    value = f" {tmp_path}/x "
    assert refused(tmp_path, **{name: value}).startswith(f"{name}={value!r}")


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr", "/var", "/proc", "/sys/kernel",
                                    "/dev/shm", "/usr/lib/x", "/boot", "/root", "/tmp",
                                    "/etc/../usr/."])
def test_system_folders_are_refused_as_target_dir_and_run_dir(tmp_path, folder):
    assert "system folder" in refused(tmp_path, TARGET_DIR=folder)
    assert "system folder" in refused(tmp_path, RUN_DIR=folder)


def test_a_link_to_a_system_folder_is_refused(tmp_path):
    (tmp_path / "etc-link").symlink_to("/etc")
    message = refused(tmp_path, TARGET_DIR=str(tmp_path / "etc-link"))
    assert "system folder (/etc)" in message


def test_paths_are_resolved_at_start(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "other").mkdir()
    settings = read_settings({
        "TARGET_DIR": str(tmp_path / "link"),
        "LATEST_MODEL_PATH": str(tmp_path / "other" / ".." / "link" / "latest.tar.gz"),
        "IGNORE_FILE_PATHS": f"{tmp_path}/link/keep.tar.gz, {tmp_path}/other/../real/x.tar.gz",
        "RUN_DIR": str(tmp_path / "other" / ".." / "run")})
    assert settings.target_dir == real
    assert settings.latest_model_path == real / "latest.tar.gz"
    assert settings.ignore_paths == (real / "keep.tar.gz", real / "x.tar.gz")
    assert settings.run_dir == tmp_path / "run"
    environment = settings.as_environment()
    assert environment["TARGET_DIR"] == str(real)
    assert environment["LATEST_MODEL_PATH"] == str(real / "latest.tar.gz")
    assert environment["IGNORE_FILE_PATHS"] == f"{real}/keep.tar.gz,{real}/x.tar.gz"
    assert settings.warnings() == []


def test_a_link_as_the_last_name_stays_the_entry_itself(tmp_path):
    """IGNORE_FILE_PATHS names a directory entry: a link there is protected as the link."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "keep.tar.gz").symlink_to(tmp_path / "elsewhere.tar.gz")
    settings = read_settings({"TARGET_DIR": str(models),
                              "IGNORE_FILE_PATHS": str(models / "keep.tar.gz")})
    assert settings.ignore_paths == (models / "keep.tar.gz",)


def test_a_symbolic_link_loop_is_refused_in_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert "loop" in refused(tmp_path, TARGET_DIR=str(tmp_path / "a" / "models"))


def test_latest_model_path_must_be_a_regular_file_and_not_target_dir(tmp_path):
    import socket

    models = tmp_path / "models"
    models.mkdir()
    fifo = models / "fifo.tar.gz"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(models / "sock.tar.gz"))
    (models / "link.tar.gz").symlink_to(models / "x.tar.gz")
    try:
        for path in (fifo, models / "sock.tar.gz", "/dev/null", models / "link.tar.gz",
                     models, f"{models}/.", f"{models}/sub/.."):
            message = refused(tmp_path, LATEST_MODEL_PATH=str(path))
            assert message.startswith("LATEST_MODEL_PATH="), message
        kinds = {fifo: "a FIFO", models / "sock.tar.gz": "a socket", "/dev/null": "a device",
                 models / "link.tar.gz": "a symbolic link", models / "sub": "a folder"}
        (models / "sub").mkdir()
        for path, kind in kinds.items():
            assert f"(this is {kind})" in refused(tmp_path, LATEST_MODEL_PATH=str(path))
    finally:
        sock.close()
    assert "not TARGET_DIR" in refused(tmp_path, LATEST_MODEL_PATH=str(models))


def test_a_latest_name_too_long_for_our_own_files_is_refused_saying_the_limit(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = "l" * (limit - 14 - len(".tar.gz")) + ".tar.gz"
    settings = read_settings({"TARGET_DIR": str(tmp_path / "m"),
                              "LATEST_MODEL_PATH": str(tmp_path / "m" / longest)})
    assert len(settings.latest_model_path.name) == limit - 14
    message = refused(tmp_path, LATEST_MODEL_PATH=str(tmp_path / "m" / ("l" + longest)))
    assert f"at most {limit - 14} bytes" in message and f"allows {limit}" in message
    # Bytes count, not characters: "é" is two bytes in UTF-8.
    assert "at most" in refused(tmp_path, LATEST_MODEL_PATH=str(tmp_path / ("é" * 121)))


def test_the_longest_allowed_latest_name_works_end_to_end(tmp_path):
    """The 14 bytes reserved above are what the tool's own files really add: publish with
    the longest allowed name through `python -m worker once` (lock, temporary file, record)."""
    from tests.helpers import model_bytes, set_mtime

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.tar.gz").write_bytes(model_bytes())
    set_mtime(models / "a.tar.gz", time.time() - 60)
    latest = models / ("l" * (limit - 14))
    env = tool_environment(tmp_path, TARGET_DIR=str(models), LATEST_MODEL_PATH=str(latest))
    result = run_worker("once", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert latest.read_bytes() == (models / "a.tar.gz").read_bytes()
    assert (models / f".{latest.name}.json").exists()


def test_a_env_file_with_syntax_errors_is_refused_naming_file_and_line(tmp_path):
    (tmp_path / "bad.env").write_text('THROTTLE_DELAY=1000\nRASA_TOKEN="s3cret\nKEEP_PREVIOUS=2\n')
    env = tool_environment(tmp_path, ENV_FILE="bad.env")
    result = run_worker("once", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "ENV_FILE='bad.env'" in result.stderr and "line 2" in result.stderr
    assert "s3cret" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "models").exists()


def test_the_default_env_file_with_a_bad_line_is_refused_too(tmp_path):
    (tmp_path / ".env").write_text("KEEP_PREVIOUS=4\nthis line is not a setting\n")
    env = tool_environment(tmp_path)
    result = run_worker("once", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "'.env'" in result.stderr and "line 2" in result.stderr


def test_an_ignore_entry_outside_target_dir_is_a_warning(tmp_path):
    settings = read_settings({"TARGET_DIR": str(tmp_path / "m"),
                              "IGNORE_FILE_PATHS": f"{tmp_path}/m/keep.tar.gz,{tmp_path}/x.tar.gz,"
                                                   f"{tmp_path}/m/sub/y.tar.gz"})
    warnings = settings.warnings()
    assert len(warnings) == 2
    assert all(w.startswith("IGNORE_FILE_PATHS entry") and "protects nothing" in w
               for w in warnings)
    assert "x.tar.gz" in warnings[0] and "y.tar.gz" in warnings[1]


def test_the_readme_settings_table_is_the_declaration():
    """Every setting, its default, allowed range and meaning: README and code agree."""
    from tests.helpers import PROJECT_ROOT
    from worker.settings import DECLARED, readme_table

    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme_table() in readme
    declared = {d.name for d in DECLARED}
    environment = read_settings({}).as_environment().keys()
    assert set(environment) <= declared, set(environment) - declared


def test_a_run_dir_too_long_for_its_sockets_is_refused(tmp_path):
    """supervisord could not bind RUN_DIR/supervisor.sock ("AF_UNIX path too long") and
    `python -m worker` ended after starting; now it is one line at start."""
    from worker.settings import RUN_DIR_MAX_BYTES

    base = str(tmp_path / "r")
    fits = base + "x" * (RUN_DIR_MAX_BYTES - len(base))
    assert read_settings({"TARGET_DIR": str(tmp_path / "m"), "RUN_DIR": fits}).run_dir
    message = refused(tmp_path, RUN_DIR=fits + "x")
    assert f"at most {RUN_DIR_MAX_BYTES} bytes" in message
    env = tool_environment(tmp_path, RUN_DIR=fits)
    tool = subprocess.Popen([sys.executable, "-m", "worker"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        from tests.helpers import wait_for

        socket_path = os.path.join(fits, "queue.sock")
        wait_for(lambda: os.path.exists(socket_path) or tool.poll() is not None,
                 message="the rotator serving its queue in the longest RUN_DIR")
        assert tool.poll() is None, tool.stdout.read()
    finally:
        os.killpg(tool.pid, 15)
        tool.wait(20)


def test_a_env_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / ".env").write_bytes(b"KEEP_PREVIOUS=1\nRASA_TOKEN=\xff\xfe\n")
    result = run_worker("once", cwd=tmp_path, env=tool_environment(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("rasa-model-rotator: ENV_FILE='.env'")
    assert "UTF-8" in result.stderr
