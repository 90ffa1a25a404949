"""Settings: read once from the environment (and a .env file), checked in one place.

Every problem is reported as one line naming the setting, the value and what is allowed,
before anything is created or started.
"""

from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
PUBLISH_MODES = ("copy", "move")

# Defaults in one visible place. The first four are the original Node.js tool's; the two
# paths inside TARGET_DIR follow it when only TARGET_DIR is set (with the default TARGET_DIR
# they are the original's "models/latest.tar.gz" and "models/lost+found").
DEFAULTS = {
    "TARGET_DIR": "models",
    "LATEST_MODEL_PATH": "{TARGET_DIR}/latest.tar.gz",
    "THROTTLE_DELAY": "5000",
    "IGNORE_FILE_PATHS": "{TARGET_DIR}/lost+found",
    "KEEP_PREVIOUS": "0",
    "MODEL_PATTERN": "*.tar.gz",
    "LOG_LEVEL": "INFO",
    "BROKEN_GRACE_PERIOD": "3600",
    "RESCAN_INTERVAL": "60",
    "LOG_FORMAT": "text",
    "RASA_URL": "",
    "RASA_MODEL_PATH": "{LATEST_MODEL_PATH}",
    "RASA_TOKEN": "",
    "RASA_RETRY_FOR": "300",
    "RASA_TIMEOUT": "120",
    "METRICS_PORT": "",
    "PUBLISH_MODE": "copy",
    "METRICS_BIND": "0.0.0.0",
    "RASA_SYNC_INTERVAL": "60",
    "RASA_MAX_SWAPPING": "1",
    "RASA_TRAINING_WAIT": "600",
    "MODEL_SERVER_PORT": "",
    "MODEL_SERVER_BIND": "0.0.0.0",
    "MODEL_SERVER_TOKEN": "",
    "MODEL_SERVER_MAX_SWAPPING": "1",
    "MODEL_SERVER_SWAP_TIMEOUT": "300",
}

# A burst of events can postpone a reconcile by at most this many debounce delays.
DEBOUNCE_CAP_FACTOR = 4


class SettingError(ValueError):
    """A setting that cannot be used; str() is the one-line message for the user."""


@dataclass(frozen=True)
class Settings:
    target_dir: Path
    latest_model_path: Path
    throttle_delay_s: float
    ignore_paths: tuple[Path, ...]
    keep_previous: int
    model_pattern: str
    run_dir: Path
    log_level: str
    broken_grace_s: float
    rescan_interval_s: float = 60.0
    log_format: str = "text"
    rasa_urls: tuple[str, ...] = ()
    rasa_model_path: str = ""
    rasa_token: str = field(default="", repr=False)  # never printed
    rasa_retry_for_s: float = 300.0
    rasa_timeout_s: float = 120.0
    metrics_port: int | None = None
    publish_mode: str = "copy"
    metrics_bind: str = "0.0.0.0"
    # Rasa in sync: check each replica's GET /status this often (0: only at start and
    # after a publish), swap at most this many at once, wait this long for training jobs.
    rasa_sync_interval_s: float = 60.0
    rasa_max_swapping: int = 1
    rasa_training_wait_s: float = 600.0
    # The model server for Rasa's `models: url` pull (off while the port is None).
    model_server_port: int | None = None
    model_server_bind: str = "0.0.0.0"
    model_server_token: str = field(default="", repr=False)  # never printed
    model_server_max_swapping: int = 1
    model_server_swap_timeout_s: float = 300.0

    @property
    def debounce_cap_s(self) -> float:
        return self.throttle_delay_s * DEBOUNCE_CAP_FACTOR

    def as_environment(self) -> dict[str, str]:
        """The settings as absolute, normalised variables for the programs supervisord starts."""
        return {
            "TARGET_DIR": str(self.target_dir),
            "LATEST_MODEL_PATH": str(self.latest_model_path),
            "THROTTLE_DELAY": str(round(self.throttle_delay_s * 1000)),
            "IGNORE_FILE_PATHS": ",".join(str(p) for p in self.ignore_paths),
            "KEEP_PREVIOUS": str(self.keep_previous),
            "MODEL_PATTERN": self.model_pattern,
            "RUN_DIR": str(self.run_dir),
            "LOG_LEVEL": self.log_level,
            "BROKEN_GRACE_PERIOD": str(round(self.broken_grace_s)),
            "RESCAN_INTERVAL": str(round(self.rescan_interval_s)),
            "LOG_FORMAT": self.log_format,
            "RASA_URL": ",".join(self.rasa_urls),
            "RASA_MODEL_PATH": self.rasa_model_path,
            "RASA_TOKEN": self.rasa_token,
            "RASA_RETRY_FOR": str(round(self.rasa_retry_for_s)),
            "RASA_TIMEOUT": str(round(self.rasa_timeout_s)),
            "METRICS_PORT": "" if self.metrics_port is None else str(self.metrics_port),
            "PUBLISH_MODE": self.publish_mode,
            "METRICS_BIND": self.metrics_bind,
            "RASA_SYNC_INTERVAL": str(round(self.rasa_sync_interval_s)),
            "RASA_MAX_SWAPPING": str(self.rasa_max_swapping),
            "RASA_TRAINING_WAIT": str(round(self.rasa_training_wait_s)),
            "MODEL_SERVER_PORT": ("" if self.model_server_port is None
                                  else str(self.model_server_port)),
            "MODEL_SERVER_BIND": self.model_server_bind,
            "MODEL_SERVER_TOKEN": self.model_server_token,
            "MODEL_SERVER_MAX_SWAPPING": str(self.model_server_max_swapping),
            "MODEL_SERVER_SWAP_TIMEOUT": str(round(self.model_server_swap_timeout_s)),
        }


def _fail(name: str, value: str, allowed: str) -> SettingError:
    return SettingError(f"{name}={value!r} is not allowed: {allowed}")


def _whole_number(env, name: str, allowed: str) -> int:
    raw = env.get(name, DEFAULTS[name]).strip()
    if not raw.isdigit():
        raise _fail(name, raw, allowed)
    return int(raw)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable_dir(name: str, path: Path) -> None:
    """The folder exists, or could be created: its nearest existing ancestor is a writable dir."""
    if path.exists():
        if not path.is_dir():
            raise _fail(name, str(path), "a folder (this path is a file)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise _fail(name, str(path), "a folder this user can write to")
        return
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise _fail(name, str(path), f"a folder that can be created ({ancestor} is not writable)")


def default_run_dir(target_dir: Path) -> Path:
    """One private folder per user and watched folder, so two instances never share one."""
    # crc32, not hashlib: every program reads settings, and OpenSSL costs megabytes of memory.
    digest = f"{zlib.crc32(str(target_dir).encode()):08x}"
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / f"rasa-model-rotator-{os.getuid()}-{digest}"


def _check_run_dir(path: Path) -> None:
    _check_creatable_dir("RUN_DIR", path)
    if path.exists():
        owner = path.stat().st_uid
        if owner != os.getuid():
            raise _fail("RUN_DIR", str(path),
                        f"a folder owned by this user (uid {os.getuid()}), it is owned by {owner}")


def _rasa_urls(env) -> tuple[str, ...]:
    raw = env.get("RASA_URL", DEFAULTS["RASA_URL"])
    if not raw.strip():
        return ()
    import urllib.parse

    urls = []
    for url in (u.strip() for u in raw.split(",")):
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail("RASA_URL", url, "comma-separated base URLs such as http://rasa:5005")
        if parts.query or parts.fragment:
            raise SettingError("RASA_URL has a query or fragment, which is not allowed: give "
                               "the base URL only, and the token in RASA_TOKEN")
        urls.append(url)
    return tuple(urls)


def _optional_port(env, name: str) -> int | None:
    raw = env.get(name, DEFAULTS[name]).strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise _fail(name, raw, "a TCP port from 1 to 65535, or empty for off")
    return int(raw)


def _bind_address(env, name: str) -> str:
    raw = env.get(name, DEFAULTS[name]).strip()
    import ipaddress

    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise _fail(name, raw, "an IP address to listen on, e.g. 0.0.0.0 (all) or "
                    "127.0.0.1 (this host only)") from None
    return raw


def load_environment(env_file: str | None = None) -> None:
    """Load ENV_FILE (default ./.env when present) into os.environ; the real environment wins."""
    name = env_file if env_file is not None else os.environ.get("ENV_FILE", "")
    if name and not Path(name).is_file():
        raise _fail("ENV_FILE", name, "the path of a readable .env file")
    path = name or ".env"
    if Path(path).is_file():
        # Imported only when there is a file to read: it costs each program ~3 MiB.
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def read_settings(env=None) -> Settings:
    """Check every setting; raise SettingError naming the first bad one. Touches nothing."""
    env = os.environ if env is None else env

    target_dir = Path(env.get("TARGET_DIR", DEFAULTS["TARGET_DIR"]) or ".").absolute()
    _check_creatable_dir("TARGET_DIR", target_dir)

    latest_raw = env.get("LATEST_MODEL_PATH",
                         DEFAULTS["LATEST_MODEL_PATH"].format(TARGET_DIR=target_dir))
    if not latest_raw or latest_raw.endswith("/"):
        raise _fail("LATEST_MODEL_PATH", latest_raw, "a file path such as models/latest.tar.gz")
    latest = Path(latest_raw).absolute()
    if latest.is_dir() or latest.is_symlink():
        raise _fail("LATEST_MODEL_PATH", latest_raw,
                    "a regular file path (this is a folder or a link)")
    if latest.parent != target_dir:
        _check_creatable_dir("LATEST_MODEL_PATH", latest.parent)

    throttle_ms = _whole_number(env, "THROTTLE_DELAY", "whole milliseconds, 0 or more (e.g. 5000)")
    keep = _whole_number(env, "KEEP_PREVIOUS", "a whole number of models, 0 or more")
    grace = _whole_number(env, "BROKEN_GRACE_PERIOD", "whole seconds, 0 or more (e.g. 3600)")
    rescan = _whole_number(env, "RESCAN_INTERVAL", "whole seconds, 0 (off) or more (e.g. 60)")

    pattern = env.get("MODEL_PATTERN", DEFAULTS["MODEL_PATTERN"]).strip()
    if not pattern or "/" in pattern:
        raise _fail("MODEL_PATTERN", pattern, "a file-name pattern without '/' (e.g. *.tar.gz)")

    ignore_raw = env.get("IGNORE_FILE_PATHS",
                         DEFAULTS["IGNORE_FILE_PATHS"].format(TARGET_DIR=target_dir))
    ignore = tuple(Path(p.strip()).absolute() for p in ignore_raw.split(",") if p.strip())

    level = env.get("LOG_LEVEL", DEFAULTS["LOG_LEVEL"]).strip().upper()
    if level not in LOG_LEVELS:
        raise _fail("LOG_LEVEL", level, "one of " + ", ".join(LOG_LEVELS))

    run_raw = env.get("RUN_DIR", "").strip()
    run_dir = Path(run_raw).absolute() if run_raw else default_run_dir(target_dir)
    _check_run_dir(run_dir)
    if run_dir == target_dir:
        raise _fail("RUN_DIR", str(run_dir), "a folder other than TARGET_DIR")

    log_format = env.get("LOG_FORMAT", DEFAULTS["LOG_FORMAT"]).strip().lower()
    if log_format not in LOG_FORMATS:
        raise _fail("LOG_FORMAT", log_format, "one of " + ", ".join(LOG_FORMATS))
    rasa_urls = _rasa_urls(env)
    rasa_model_path = (env.get("RASA_MODEL_PATH", "").strip()
                       or DEFAULTS["RASA_MODEL_PATH"].format(LATEST_MODEL_PATH=latest))
    retry_for = _whole_number(env, "RASA_RETRY_FOR", "whole seconds, 0 or more (e.g. 300)")
    rasa_timeout = _whole_number(env, "RASA_TIMEOUT", "whole seconds, 1 or more (e.g. 120)")
    if rasa_timeout < 1:
        raise _fail("RASA_TIMEOUT", str(rasa_timeout), "whole seconds, 1 or more (e.g. 120)")

    publish_mode = env.get("PUBLISH_MODE", DEFAULTS["PUBLISH_MODE"]).strip().lower()
    if publish_mode not in PUBLISH_MODES:
        raise _fail("PUBLISH_MODE", publish_mode, "one of " + ", ".join(PUBLISH_MODES))
    if publish_mode == "move" and (_nearest_existing(target_dir).stat().st_dev
                                   != _nearest_existing(latest.parent).stat().st_dev):
        raise _fail("PUBLISH_MODE", publish_mode, "copy, when LATEST_MODEL_PATH is on another "
                    "file system than TARGET_DIR (a rename cannot cross file systems)")

    max_swapping = _whole_number(env, "RASA_MAX_SWAPPING", "a whole number, 1 or more")
    if max_swapping < 1:
        raise _fail("RASA_MAX_SWAPPING", str(max_swapping), "a whole number, 1 or more")
    server_swapping = _whole_number(env, "MODEL_SERVER_MAX_SWAPPING",
                                    "a whole number, 0 (no limit) or more")

    return Settings(
        target_dir=target_dir,
        latest_model_path=latest,
        throttle_delay_s=throttle_ms / 1000,
        ignore_paths=ignore,
        keep_previous=keep,
        model_pattern=pattern,
        run_dir=run_dir,
        log_level=level,
        broken_grace_s=float(grace),
        rescan_interval_s=float(rescan),
        log_format=log_format,
        rasa_urls=rasa_urls,
        rasa_model_path=rasa_model_path,
        rasa_token=env.get("RASA_TOKEN", ""),
        rasa_retry_for_s=float(retry_for),
        rasa_timeout_s=float(rasa_timeout),
        metrics_port=_optional_port(env, "METRICS_PORT"),
        publish_mode=publish_mode,
        metrics_bind=_bind_address(env, "METRICS_BIND"),
        rasa_sync_interval_s=float(_whole_number(
            env, "RASA_SYNC_INTERVAL", "whole seconds, 0 (off) or more (e.g. 60)")),
        rasa_max_swapping=max_swapping,
        rasa_training_wait_s=float(_whole_number(
            env, "RASA_TRAINING_WAIT", "whole seconds, 0 or more (e.g. 600)")),
        model_server_port=_optional_port(env, "MODEL_SERVER_PORT"),
        model_server_bind=_bind_address(env, "MODEL_SERVER_BIND"),
        model_server_token=env.get("MODEL_SERVER_TOKEN", ""),
        model_server_max_swapping=server_swapping,
        model_server_swap_timeout_s=float(_whole_number(
            env, "MODEL_SERVER_SWAP_TIMEOUT", "whole seconds, 1 or more (e.g. 300)")),
    )


def prepare_folders(settings: Settings) -> None:
    """Create TARGET_DIR, the latest model's folder and a private (0700) RUN_DIR."""
    settings.target_dir.mkdir(parents=True, exist_ok=True)
    settings.latest_model_path.parent.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The queue's key and the control sockets live here: nobody else may look in.
    if stat.S_IMODE(settings.run_dir.stat().st_mode) != 0o700:
        settings.run_dir.chmod(0o700)
