"""Settings: read once from the environment (and a .env file), checked in one place.

Every setting is declared once below (default, allowed values, meaning); the checks, the error
lines, the environment handed to the programs and the README's settings table come from that
declaration. Every problem is reported as one line naming the setting, the value (never a
secret) and what is allowed, before anything is created or started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
PUBLISH_MODES = ("copy", "move")
REMOTE_STORAGES = ("aws",)

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400

# Unix socket paths in RUN_DIR fit in 107 bytes. The longest: supervisord binds
# "supervisor.sock.<its pid>" (pid_max is at most 4194304, 7 digits) and links it into place.
UNIX_SOCKET_PATH_MAX = 107
RUN_DIR_MAX_BYTES = UNIX_SOCKET_PATH_MAX - len("/supervisor.sock.") - 7


@dataclass(frozen=True)
class Declared:
    """One setting as the user sees it: its variable, default, what is allowed, what it does."""

    name: str
    default: str
    allowed: str
    meaning: str
    shown_default: str = ""  # the README's form of the default, when it is not `default`
    low: int | None = None  # whole numbers: the inclusive bounds
    high: int | None = None
    secret: bool = False  # the value never appears in any output


def _whole(name: str, default: str, unit: str, low: int, high: int, meaning: str,
           zero: str = "", bound: str = "") -> Declared:
    """A whole number within bounds; `zero` says what 0 means, `bound` names the maximum."""
    first = f"{low} ({zero})" if zero and low == 0 else str(low)
    limit = f"; at most {bound}" if bound else ""
    return Declared(name, default, f"whole {unit}, {first} to {high} (e.g. {default}{limit})",
                    meaning, low=low, high=high)


# Defaults in one visible place. The first four are the original Node.js tool's; the two paths
# inside TARGET_DIR follow it when only TARGET_DIR is set (with the default TARGET_DIR they are
# the original's "models/latest.tar.gz" and "models/lost+found").
DECLARED: tuple[Declared, ...] = (
    Declared("TARGET_DIR", "models", "a folder path without surrounding spaces or control "
             "characters; not a system folder (`/`, `/etc`, `/usr`, `/var`, ...)",
             "the folder Rasa writes models into; created if missing"),
    Declared("LATEST_MODEL_PATH", "{TARGET_DIR}/latest.tar.gz",
             "a regular file path (or none yet), not TARGET_DIR, file name of at most "
             "NAME_MAX - 14 bytes (241 on most file systems)",
             "where the newest whole model is published",
             shown_default="`models/latest.tar.gz` (`$TARGET_DIR/latest.tar.gz`)"),
    _whole("THROTTLE_DELAY", "5000", "milliseconds", 0, DAY * 1000,
           "debounce in milliseconds: reconcile this long after the last write event",
           bound="a day"),
    Declared("IGNORE_FILE_PATHS", "{TARGET_DIR}/lost+found",
             "comma-separated paths; one outside TARGET_DIR protects nothing (a warning says so)",
             "paths never deleted",
             shown_default="`models/lost+found` (`$TARGET_DIR/lost+found`)"),
    _whole("KEEP_PREVIOUS", "0", "number of models", 0, 10000,
           "older whole models kept besides the published one"),
    Declared("MODEL_PATTERN", "*.tar.gz", "a file-name pattern without '/' or control "
             "characters (e.g. *.tar.gz)", "which file names are models (a name pattern, no `/`)"),
    _whole("BROKEN_GRACE_PERIOD", "3600", "seconds", 0, 30 * DAY,
           "seconds a broken (truncated) archive must stay unchanged before it is deleted",
           bound="30 days"),
    _whole("RESCAN_INTERVAL", "60", "seconds", 0, WEEK,
           "seconds between full reconciles that need no event (network volumes, mounts); "
           "`0` turns it off", zero="off", bound="a week"),
    Declared("RUN_DIR", "", "a folder owned by this user (or none yet), not a symbolic link, "
             f"not TARGET_DIR, not a system folder, a path of at most {RUN_DIR_MAX_BYTES} bytes "
             "(for its sockets)",
             "private (0700) folder for the queue socket and key, supervisord's socket and "
             "pidfile",
             shown_default="`$XDG_RUNTIME_DIR` or `$TMPDIR` or `/tmp`, "
                           "`/rasa-model-rotator-<uid>-<hash of TARGET_DIR>`"),
    Declared("LOG_LEVEL", "INFO", "one of " + ", ".join(LOG_LEVELS), "how much is logged"),
    Declared("LOG_FORMAT", "text", "one of " + ", ".join(LOG_FORMATS),
             "`text` for people, `json` for log collectors (one object per line: `time`, "
             "`level`, `program`, `event`, `message`, and the action's fields). Control "
             "characters, backslashes and undecodable bytes in names are escaped (`\\n`, "
             "`\\\\`, `\\xff`), so a file name can never forge a log line"),
    Declared("RASA_URL", "", "comma-separated base URLs such as http://rasa:5005 (http or "
             "https, a host, a port from 1 to 65535, no query)",
             "Rasa base URLs (one per replica); after each real publish each gets "
             "`PUT /model`. A password in the URL is never printed", shown_default="(off)"),
    Declared("RASA_MODEL_PATH", "{LATEST_MODEL_PATH}", "a path without surrounding spaces or "
             "control characters",
             "the published file's path as the Rasa server sees it (its container may mount "
             "the volume elsewhere)", shown_default="`LATEST_MODEL_PATH`"),
    Declared("RASA_TOKEN", "", "any text without control characters or surrounding spaces",
             "sent as `?token=` (Rasa's `--auth-token`); never printed in any log line, error "
             "or status", shown_default="(none)", secret=True),
    _whole("RASA_RETRY_FOR", "300", "seconds", 0, DAY,
           "seconds to keep retrying a Rasa server that is down, times out or answers 5xx",
           bound="a day"),
    _whole("RASA_TIMEOUT", "120", "seconds", 1, HOUR,
           "seconds one `PUT /model` may take (Rasa answers once the model is loaded)",
           bound="an hour"),
    Declared("METRICS_PORT", "", "a TCP port from 1 to 65535 that is free on METRICS_BIND, or "
             "empty for off", "serve Prometheus metrics from the rotator on this port",
             shown_default="(off)"),
    Declared("PUBLISH_MODE", "copy", "one of " + ", ".join(PUBLISH_MODES) + " (move: "
             "LATEST_MODEL_PATH on TARGET_DIR's file system)",
             "`copy` (the original tool's behaviour: the source stays) or `move` (the source "
             "itself is renamed to `LATEST_MODEL_PATH`)"),
    Declared("METRICS_BIND", "0.0.0.0", "an IP address to listen on, e.g. 0.0.0.0 (all) or "
             "127.0.0.1 (this host only)", "the address the metrics port listens on"),
    _whole("RASA_SYNC_INTERVAL", "60", "seconds", 0, DAY,
           "seconds between checks of each replica's `GET /status` (`0`: only at start and "
           "after each publish)", zero="off", bound="a day"),
    _whole("RASA_MAX_SWAPPING", "1", "number of replicas", 1, 1000,
           "replicas loading a new model at once"),
    _whole("RASA_TRAINING_WAIT", "600", "seconds", 0, DAY,
           "how long to wait for a replica's active training jobs to finish before swapping "
           "anyway", bound="a day"),
    Declared("MODEL_SERVER_PORT", "", "a TCP port from 1 to 65535 that is free on "
             "MODEL_SERVER_BIND, or empty for off",
             "serve the published model over HTTP for Rasa's `models: url` pull on this port",
             shown_default="(off)"),
    Declared("MODEL_SERVER_BIND", "0.0.0.0", "an IP address to listen on, e.g. 0.0.0.0 (all) "
             "or 127.0.0.1 (this host only)", "the address the model server listens on"),
    Declared("MODEL_SERVER_TOKEN", "", "any text without control characters or surrounding "
             "spaces", "the token Rasa's pull must send (`models: token`); never printed",
             shown_default="(none)", secret=True),
    _whole("MODEL_SERVER_MAX_SWAPPING", "1", "number of replicas", 0, 1000,
           "replicas moving to a new model at once through the model server", zero="no limit"),
    _whole("MODEL_SERVER_SWAP_TIMEOUT", "300", "seconds", 1, DAY,
           "seconds a replica that fetched a new model counts as swapping", bound="a day"),
    Declared("ENV_FILE", "", "the path of a readable UTF-8 .env file that python-dotenv parses "
             "without error", "a `.env` file to read settings from",
             shown_default="`./.env` if present"),
    Declared("RASA_MIN_MODEL_VERSION", "", "a Rasa version such as 3.6.21, or empty for off",
             "models trained by an older Rasa are not published (kept, reported); with "
             "RASA_URL the replicas' own `GET /version` minimum counts too (the higher wins)",
             shown_default="(off)"),
    Declared("RASA_SMOKE_TEXT", "", "any text without control characters or surrounding "
             "spaces", "with RASA_URL: after a replica loads a new model, `POST /model/parse` "
             "with this text must answer, or the model counts as refused",
             shown_default="(none)"),
    # Object storage for Rasa's `--remote-storage aws` (worker/remote/storage.py). The names
    # are Rasa's own (rasa/nlu/persistor.py), so one Secret/ConfigMap serves both containers.
    Declared("REMOTE_STORAGE", "", "empty (off) or " + ", ".join(REMOTE_STORAGES),
             "`aws`: also publish to S3-compatible object storage (AWS, MinIO, Ceph, R2) for "
             "Rasa's `--remote-storage aws`; credentials and region are boto3's own "
             "variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), "
             "never printed", shown_default="(off)"),
    Declared("BUCKET_NAME", "", "a bucket name: 3 to 63 lowercase letters, digits, dots and "
             "hyphens, beginning and ending with a letter or digit; required with "
             "REMOTE_STORAGE", "the bucket (Rasa reads the same variable)",
             shown_default="(none)"),
    Declared("AWS_ENDPOINT_URL", "", "empty (AWS itself) or a URL such as http://minio:9000 "
             "(http or https, a host, no user info, no query)",
             "the S3-compatible endpoint (Rasa reads the same variable)",
             shown_default="(AWS)"),
    Declared("REMOTE_MODEL_KEY", "{LATEST_MODEL_NAME}", "an object key of 1 to 1024 UTF-8 "
             "bytes ending in .tar.gz, not beginning with '/', without control characters",
             "the key that always holds the published model (replicas start with "
             "`rasa run --remote-storage aws --model KEY`)",
             shown_default="`latest.tar.gz` (the file name of `LATEST_MODEL_PATH`)"),
)
DECLARED_BY_NAME = {declared.name: declared for declared in DECLARED}
DEFAULTS = {declared.name: declared.default for declared in DECLARED
            if declared.name not in ("RUN_DIR", "ENV_FILE")}
SECRETS = tuple(declared.name for declared in DECLARED if declared.secret)

# A burst of events can postpone a reconcile by at most this many debounce delays.
DEBOUNCE_CAP_FACTOR = 4

# Our own files beside LATEST_MODEL_PATH add at most this many bytes to its name: the publish
# temporary file ".NAME.tmp-" + 8 hex digits (worker/folder/files.py); the lock and the record
# (".NAME.lock", ".NAME.json") add 6.
OWN_NAME_EXTRA_BYTES = len(".") + len(".tmp-") + 8


# Folders that hold the system: never managed (pruned, chmod-ed) by this tool. The trees are
# refused with everything inside them, the others only as themselves.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/sbin", "/sys", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32",
                "/usr/lib64", "/usr/libx32")
SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/snap", "/srv",
                  "/tmp", "/usr", "/usr/include", "/usr/local", "/usr/share", "/usr/src",
                  "/var", "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/run",
                  "/var/spool", "/var/tmp", "/lost+found")


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
    # Loadable, not just whole: the version gate's minimum, the canary's smoke text.
    rasa_min_model_version: str = ""
    rasa_smoke_text: str = ""
    # Object storage (off while remote_storage is ""): bucket, endpoint, the fixed key.
    remote_storage: str = ""
    bucket_name: str = ""
    aws_endpoint_url: str = ""
    remote_model_key: str = ""

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
            "RASA_MIN_MODEL_VERSION": self.rasa_min_model_version,
            "RASA_SMOKE_TEXT": self.rasa_smoke_text,
            "REMOTE_STORAGE": self.remote_storage,
            "BUCKET_NAME": self.bucket_name,
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "REMOTE_MODEL_KEY": self.remote_model_key,
        }

    def shown(self) -> dict[str, str]:
        """as_environment() safe to print: no token, no password in a URL."""
        shown = self.as_environment()
        for name in SECRETS:
            shown[name] = "(set)" if shown[name] else ""
        shown["RASA_URL"] = ",".join(without_password(url) for url in self.rasa_urls)
        return shown

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.shown().items()) + ")"

    def warnings(self) -> list[str]:
        """Settings that work but do not do what they seem to: one line each, for the log."""
        lines = []
        for path in self.ignore_paths:
            if path.parent != self.target_dir:
                lines.append(f"IGNORE_FILE_PATHS entry {str(path)!r} is not directly inside "
                             f"TARGET_DIR {str(self.target_dir)!r}: it protects nothing (only "
                             f"files directly inside TARGET_DIR are ever deleted)")
        return lines


# -- reading one value ----------------------------------------------------------------------

def _fail(name: str, value: str, allowed: str) -> SettingError:
    return SettingError(f"{name}={value!r} is not allowed: {allowed}")


def _refuse(name: str, value: str, allowed: str | None = None) -> SettingError:
    """The one-line refusal for `name`, with its declared `allowed` text by default."""
    allowed = allowed or DECLARED_BY_NAME[name].allowed
    if name in SECRETS:
        return SettingError(f"{name} is not allowed (value not shown): {allowed}")
    return _fail(name, value, allowed)


def _raw(env, name: str) -> str:
    return env.get(name, DEFAULTS.get(name, ""))


def _whole_number(env, name: str) -> int:
    """A whole number of ASCII digits ("²" and "٥" are digits to str.isdigit) within bounds."""
    declared = DECLARED_BY_NAME[name]
    raw = _raw(env, name).strip()
    # int() of thousands of digits raises its own error: the bound is checked on the text.
    if not re.fullmatch(r"[0-9]{1,12}", raw) or not declared.low <= int(raw) <= declared.high:
        raise _refuse(name, raw)
    return int(raw)


def _choice(env, name: str, choices: tuple[str, ...], upper: bool = False) -> str:
    raw = _raw(env, name).strip()
    value = raw.upper() if upper else raw.lower()
    if not raw.isascii() or value not in choices:  # "ınfo".upper() is "INFO"
        raise _refuse(name, raw)
    return value


def _has_control_characters(text: str) -> bool:
    """C0 and C1 controls, DEL, and lone surrogates (bytes that were not UTF-8)."""
    return any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or 0xD800 <= ord(char) < 0xE000
               for char in text)


def _text(env, name: str, raw: str | None = None) -> str:
    """A value taken as it is: refused with surrounding spaces or control characters, which
    are nearly always a mistake (a folder named " /srv/m" would be created and watched)."""
    raw = _raw(env, name) if raw is None else raw
    if raw != raw.strip() or _has_control_characters(raw):
        raise _refuse(name, raw)
    return raw


def _secret(env, name: str) -> str:
    return _text(env, name)


def _rasa_version(env, name: str) -> str:
    raw = _text(env, name)
    if not raw:
        return raw
    # Only when set: worker/folder/loadable.py brings the folder's archive and journal modules into
    # every program's memory (supervisord's too).
    from worker.folder.loadable import parse_version

    if parse_version(raw) is None:
        raise _refuse(name, raw)
    return raw


def _optional_port(env, name: str) -> int | None:
    raw = _raw(env, name).strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise _refuse(name, raw)
    return int(raw)


def _bind_address(env, name: str) -> str:
    import ipaddress

    raw = _raw(env, name).strip()
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise _refuse(name, raw) from None
    return raw


def without_password(url: str) -> str:
    """The URL with its user info (a password, or a token used as the user) replaced by ***:
    safe to print. Everything up to the last "@" counts, so a password holding an unescaped
    "/", "?" or "#" is hidden too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _rasa_urls(env) -> tuple[str, ...]:
    import urllib.parse

    raw = _raw(env, "RASA_URL")
    urls = []
    for url in (u.strip() for u in raw.split(",")):
        if not url:
            continue
        # Neither user info nor a query (which may hold the token: ?token=...) is shown.
        shown = re.split(r"[?#]", without_password(url))[0]
        if shown != without_password(url):
            shown += "?..."
        if _has_control_characters(url) or " " in url:
            raise _refuse("RASA_URL", shown)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse("RASA_URL", shown)
        if parts.query or parts.fragment:
            raise _fail("RASA_URL", shown, "a base URL without "
                        "query or fragment (give the token in RASA_TOKEN)")
        try:
            port = parts.port  # ValueError: out of range, or not ASCII digits
        except ValueError:
            raise _refuse("RASA_URL", shown) from None
        if port == 0:
            raise _refuse("RASA_URL", shown)
        urls.append(url)
    return tuple(urls)


# -- paths ----------------------------------------------------------------------------------

def _name_max(path: Path) -> int:
    try:
        return os.pathconf(_nearest_existing(path), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_names_fit(name: str, raw: str, path: Path) -> None:
    limit = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise _fail(name, raw, f"a path whose names are at most {limit} bytes each (the "
                        f"file system's limit, NAME_MAX)")


def _usable(name: str, raw: str, path: Path) -> None:
    """The path can be looked up: no symbolic link loop, no component that is a file."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _fail(name, raw, "a path without a symbolic link loop") from None
        raise _fail(name, raw, f"a path this user can look up ({error.strerror})") from None


def _real_folder(name: str, raw: str) -> Path:
    """The folder's real absolute path: symbolic links and `..` resolved."""
    if not raw:
        raise _refuse(name, raw)
    path = Path(os.path.realpath(raw))
    _usable(name, raw, path)
    _check_names_fit(name, raw, path)
    return path


def _real_entry(name: str, raw: str) -> Path:
    """The real path of the folder holding `raw`, with the last name kept as it is: the entry
    itself (a link, a file) is what the setting names, never what a link points to."""
    head, last = os.path.split(raw.rstrip("/") if raw != "/" else raw)
    if last in ("", ".", ".."):
        return _real_folder(name, raw)
    path = Path(os.path.realpath(head or ".")) / last
    _usable(name, raw, path)
    _check_names_fit(name, raw, path)
    return path


def _is_system_folder(path: Path) -> bool:
    text = str(path)
    return text in SYSTEM_FOLDERS or any(
        text == tree or text.startswith(tree + "/") for tree in SYSTEM_TREES)


def _refuse_system_folder(name: str, raw: str, path: Path) -> None:
    if _is_system_folder(path):
        where = "" if str(path) == raw else f" ({path})"
        raise _fail(name, raw, f"a folder of its own, not a system folder{where} such as /, "
                    "/etc, /usr or /var")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_creatable_dir(name: str, path: Path, shown: str | None = None) -> None:
    """The folder exists, or could be created: its nearest existing ancestor is a writable dir."""
    shown = str(path) if shown is None else shown
    if path.exists():
        if not path.is_dir():
            raise _fail(name, shown, "a folder (this path is a file)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise _fail(name, shown, "a folder this user can write to")
        return
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise _fail(name, shown, f"a folder that can be created ({ancestor} is not writable)")


def default_run_dir(target_dir: Path) -> Path:
    """One private folder per user and watched folder, so two instances never share one
    (worker/runfiles.py derives it the same way for the health check)."""
    from worker.runfiles import default_run_dir as derived

    return Path(derived(str(target_dir)))


def _check_run_dir(path: Path, shown: str, read_only: bool) -> None:
    """RUN_DIR holds the queue's key: never a link someone planted, never another's folder.

    `read_only` (the `status` command): root may read a RUN_DIR owned by the programs' user."""
    if len(os.fsencode(path)) > RUN_DIR_MAX_BYTES:
        raise _fail("RUN_DIR", shown, f"a path of at most {RUN_DIR_MAX_BYTES} bytes (the "
                    f"sockets inside it must fit Unix's {UNIX_SOCKET_PATH_MAX}-byte limit)")
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        _check_creatable_dir("RUN_DIR", path, shown)
        return
    if stat.S_ISLNK(st.st_mode):
        raise _fail("RUN_DIR", shown, "a folder, not a symbolic link (someone may have planted "
                    "it to steer where this tool writes)")
    _check_creatable_dir("RUN_DIR", path, shown)
    if st.st_uid != os.getuid() and not (read_only and os.getuid() == 0):
        raise _fail("RUN_DIR", shown, f"a folder owned by this user (uid {os.getuid()}), it is "
                    f"owned by uid {st.st_uid}")


def _latest_model_path(env, target_dir: Path) -> Path:
    raw = _text(env, "LATEST_MODEL_PATH", env.get(
        "LATEST_MODEL_PATH", DEFAULTS["LATEST_MODEL_PATH"].format(TARGET_DIR=target_dir)))
    if not raw or raw.endswith("/"):
        raise _fail("LATEST_MODEL_PATH", raw, "a file path such as models/latest.tar.gz")
    latest = _real_entry("LATEST_MODEL_PATH", raw)
    if latest == target_dir:
        raise _fail("LATEST_MODEL_PATH", raw, "a file path, not TARGET_DIR itself")
    try:
        mode = os.lstat(latest).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise _fail("LATEST_MODEL_PATH", raw, "a regular file path or one that does not exist "
                    f"yet (this is {_kind_of(mode)})")
    limit = _name_max(latest.parent)
    if len(os.fsencode(latest.name)) + OWN_NAME_EXTRA_BYTES > limit:
        raise _fail("LATEST_MODEL_PATH", raw, f"a file name of at most "
                    f"{limit - OWN_NAME_EXTRA_BYTES} bytes: the tool keeps files named "
                    f"'.NAME.tmp-XXXXXXXX' beside it, and this file system allows {limit} "
                    f"(NAME_MAX)")
    if latest.parent != target_dir:
        _check_creatable_dir("LATEST_MODEL_PATH", latest.parent, raw)
    return latest


def _kind_of(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO,
             "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


# -- the .env file --------------------------------------------------------------------------

def check_env_file(path: str, shown_name: str = "ENV_FILE") -> None:
    """Refuse a .env file that python-dotenv cannot fully parse: it would warn and silently
    skip the bad lines, and the user's setting would not apply. Never shows a line's text (it
    may hold a token)."""
    from dotenv.parser import parse_stream

    try:
        with open(path, encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                if binding.error:
                    raise _fail(shown_name, path, f"a .env file python-dotenv can parse: line "
                                f"{binding.original.line} is not KEY=value (the line is not "
                                f"shown: it may hold a secret)")
    except UnicodeDecodeError:
        raise _fail(shown_name, path, "a .env file in UTF-8") from None
    except OSError as error:
        raise _fail(shown_name, path, f"a readable .env file ({error.strerror})") from None


def load_environment(env_file: str | None = None) -> None:
    """Load ENV_FILE (default ./.env when present) into os.environ; the real environment wins."""
    name = env_file if env_file is not None else os.environ.get("ENV_FILE", "")
    if name and not Path(name).is_file():
        raise _fail("ENV_FILE", name, "the path of a readable .env file")
    path = name or ".env"
    if Path(path).is_file():
        # Imported only when there is a file to read: it costs each program ~3 MiB.
        check_env_file(path)
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


# -- all settings ---------------------------------------------------------------------------

def read_settings(env=None, read_only: bool = False) -> Settings:
    """Check every setting; raise SettingError naming the first bad one. Touches nothing.

    `read_only`: the caller only reads RUN_DIR (the `status` command)."""
    env = os.environ if env is None else env

    target_raw = _text(env, "TARGET_DIR")
    target_dir = _real_folder("TARGET_DIR", target_raw)
    _refuse_system_folder("TARGET_DIR", target_raw, target_dir)
    _check_creatable_dir("TARGET_DIR", target_dir, target_raw)

    latest = _latest_model_path(env, target_dir)

    throttle_ms = _whole_number(env, "THROTTLE_DELAY")
    keep = _whole_number(env, "KEEP_PREVIOUS")
    grace = _whole_number(env, "BROKEN_GRACE_PERIOD")
    rescan = _whole_number(env, "RESCAN_INTERVAL")

    pattern = _raw(env, "MODEL_PATTERN").strip()
    if not pattern or "/" in pattern or _has_control_characters(pattern):
        raise _refuse("MODEL_PATTERN", pattern)

    ignore_raw = env.get("IGNORE_FILE_PATHS",
                         DEFAULTS["IGNORE_FILE_PATHS"].format(TARGET_DIR=target_dir))
    ignore = tuple(_real_entry("IGNORE_FILE_PATHS", _text(env, "IGNORE_FILE_PATHS", p.strip()))
                   for p in ignore_raw.split(",") if p.strip())

    level = _choice(env, "LOG_LEVEL", LOG_LEVELS, upper=True)

    run_raw = _text(env, "RUN_DIR", env.get("RUN_DIR", ""))
    run_dir = _real_entry("RUN_DIR", run_raw) if run_raw else default_run_dir(target_dir)
    shown_run_dir = run_raw or str(run_dir)
    _refuse_system_folder("RUN_DIR", shown_run_dir, run_dir)
    _check_run_dir(run_dir, shown_run_dir, read_only)
    if run_dir == target_dir:
        raise _fail("RUN_DIR", shown_run_dir, "a folder other than TARGET_DIR")

    log_format = _choice(env, "LOG_FORMAT", LOG_FORMATS)
    rasa_urls = _rasa_urls(env)
    rasa_model_path = (_text(env, "RASA_MODEL_PATH", env.get("RASA_MODEL_PATH", ""))
                       or DEFAULTS["RASA_MODEL_PATH"].format(LATEST_MODEL_PATH=latest))

    publish_mode = _choice(env, "PUBLISH_MODE", PUBLISH_MODES)
    if publish_mode == "move" and (_nearest_existing(target_dir).stat().st_dev
                                   != _nearest_existing(latest.parent).stat().st_dev):
        raise _fail("PUBLISH_MODE", publish_mode, "copy, when LATEST_MODEL_PATH is on another "
                    "file system than TARGET_DIR (a rename cannot cross file systems)")

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
        rasa_token=_secret(env, "RASA_TOKEN"),
        rasa_retry_for_s=float(_whole_number(env, "RASA_RETRY_FOR")),
        rasa_timeout_s=float(_whole_number(env, "RASA_TIMEOUT")),
        metrics_port=_optional_port(env, "METRICS_PORT"),
        publish_mode=publish_mode,
        metrics_bind=_bind_address(env, "METRICS_BIND"),
        rasa_sync_interval_s=float(_whole_number(env, "RASA_SYNC_INTERVAL")),
        rasa_max_swapping=_whole_number(env, "RASA_MAX_SWAPPING"),
        rasa_training_wait_s=float(_whole_number(env, "RASA_TRAINING_WAIT")),
        model_server_port=_optional_port(env, "MODEL_SERVER_PORT"),
        model_server_bind=_bind_address(env, "MODEL_SERVER_BIND"),
        model_server_token=_secret(env, "MODEL_SERVER_TOKEN"),
        model_server_max_swapping=_whole_number(env, "MODEL_SERVER_MAX_SWAPPING"),
        model_server_swap_timeout_s=float(_whole_number(env, "MODEL_SERVER_SWAP_TIMEOUT")),
        rasa_min_model_version=_rasa_version(env, "RASA_MIN_MODEL_VERSION"),
        rasa_smoke_text=_text(env, "RASA_SMOKE_TEXT", env.get("RASA_SMOKE_TEXT", "")),
        **_remote_storage(env, latest),
    )


def _remote_storage(env, latest: Path) -> dict:
    """REMOTE_STORAGE and what it needs; BUCKET_NAME is required only when it is on."""
    import urllib.parse

    raw = _raw(env, "REMOTE_STORAGE").strip()
    remote = raw.lower()
    if not raw.isascii() or remote not in ("", *REMOTE_STORAGES):
        raise _refuse("REMOTE_STORAGE", raw)
    bucket = _raw(env, "BUCKET_NAME").strip()
    if remote and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise _refuse("BUCKET_NAME", bucket)
    endpoint = _raw(env, "AWS_ENDPOINT_URL").strip()
    if endpoint:
        shown = re.split(r"[?#]", without_password(endpoint))[0]
        try:
            parts = urllib.parse.urlsplit(endpoint)
            port_ok = parts.port != 0
        except ValueError:
            port_ok = False
        if (_has_control_characters(endpoint) or " " in endpoint or not port_ok
                or parts.scheme not in ("http", "https") or not parts.hostname
                or "@" in parts.netloc or parts.query or parts.fragment):
            raise _refuse("AWS_ENDPOINT_URL", shown)
    key = _text(env, "REMOTE_MODEL_KEY", env.get("REMOTE_MODEL_KEY", "") or latest.name)
    # Checked only when used: LATEST_MODEL_PATH's name (the default) may be any file name.
    if remote and (key.startswith("/") or not key.endswith(".tar.gz")
                   or len(key.encode(errors="surrogateescape")) > 1024):
        raise _refuse("REMOTE_MODEL_KEY", key)
    return {"remote_storage": remote, "bucket_name": bucket, "aws_endpoint_url": endpoint,
            "remote_model_key": key}


def check_ports_free(settings: Settings) -> None:
    """Before supervisord starts: the ports the programs will listen on are free, so a port in
    use is one line naming the setting rather than a crash loop later."""
    import socket

    wanted = [("METRICS_PORT", settings.metrics_port, "METRICS_BIND", settings.metrics_bind),
              ("MODEL_SERVER_PORT", settings.model_server_port, "MODEL_SERVER_BIND",
               settings.model_server_bind)]
    if (settings.metrics_port is not None
            and settings.metrics_port == settings.model_server_port):
        raise _fail("METRICS_PORT", str(settings.metrics_port), "a port other than "
                    "MODEL_SERVER_PORT")
    for name, port, bind_name, address in wanted:
        if port is None:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As the HTTP servers bind: a port in TIME_WAIT is free to them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise _fail(bind_name, address, "an address of this host (binding it failed: "
                            f"{error.strerror})") from None
            raise _fail(name, str(port), f"a port free on {bind_name} {address} (binding it "
                        f"failed: {error.strerror})") from None
        finally:
            probe.close()


# -- the folders ----------------------------------------------------------------------------

def prepare_folders(settings: Settings) -> None:
    """Create TARGET_DIR, the latest model's folder and a private (0700) RUN_DIR."""
    settings.target_dir.mkdir(parents=True, exist_ok=True)
    settings.latest_model_path.parent.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(settings.run_dir)


def prepare_run_dir(run_dir: Path) -> None:
    """Create RUN_DIR 0700, or adopt it only when it is a real folder of this user.

    Checked on the opened folder (O_NOFOLLOW), and its mode set through that descriptor, so a
    link planted between the settings check and now is refused, never followed."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        run_dir.mkdir(mode=0o700)
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise _fail("RUN_DIR", str(run_dir), f"a folder, not a symbolic link or a file "
                    f"({error.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise _fail("RUN_DIR", str(run_dir), f"a folder owned by this user (uid "
                        f"{os.getuid()}), it is owned by uid {st.st_uid}")
        # The queue's key and the control sockets live here: nobody else may look in.
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


# -- the README's settings table ------------------------------------------------------------

def readme_table() -> str:
    """The settings table of README.md, derived from DECLARED (a test keeps them equal)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for declared in DECLARED:
        default = declared.shown_default or f"`{declared.default}`"
        rows.append(f"| `{declared.name}` | {cell(default)} | {cell(declared.allowed)} | "
                    f"{cell(declared.meaning)} |")
    return "\n".join(rows)
