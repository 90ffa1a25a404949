"""A small client for the two Rasa HTTP calls the sync needs: `GET /status` and `PUT /model`.

The standard library's urllib is enough. Every call returns an `Answer` and never raises:
whatever a URL, a network or a server does, the replica's thread carries on. Every text that
comes back (reason phrases, bodies, exception messages) passes through `Secrets.scrub` first,
so neither RASA_TOKEN nor the password of RASA_URL's user info is ever printed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import html.entities
import http.client
import json
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

# /status answers a few hundred bytes; a server that sends more is not Rasa.
MAX_BODY_BYTES = 64 * 1024


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print. Never raises."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        # `.port` raises on a port that is not a number: keep the text after the host as is.
        port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        if port:
            host = f"{host}:{port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<RASA_URL that cannot be parsed>"


class Secrets:
    """Scrubs the token and the URL's password from text, in any encoding a server may echo.

    A server may echo the request back raw, percent-encoded (`%2F` or `%2f`, `%20` or `+` for a
    space, `/` kept or encoded), or encoded twice (`%252F`); a mix of these too; and a body
    may hold a character as a JSON escape (`\\u00f6`, `\\/`), an HTML entity (`&amp;`,
    `&#246;`, `&#xf6;`), its UTF-8 bytes read as latin-1 (a raw reason phrase), and any run of
    white space where the secret has one (a collapsed or re-wrapped body). One regular
    expression per secret matches each character in any of those forms.
    """

    def __init__(self, *secrets: str):
        self._patterns = [self._pattern(secret) for secret in secrets if secret]

    @staticmethod
    def _pattern(secret: str) -> re.Pattern:
        parts = []
        for run in re.findall(r"%[0-9A-Fa-f]{2}|\s+|\S", secret):
            if run.isspace():
                space = "|".join(_char_forms(" ") + [r"\s", r"\+"])
                parts.append(f"(?:{space})+")
            elif len(run) == 3:
                # A percent-escape in the secret as written (a URL's password): an echo may
                # write its hex digits in the other case (%ff for %FF), or encode each char.
                first, second = ("(?:" + "|".join(_char_forms(c)) + ")" for c in run[1:])
                parts.append("(?:" + "|".join(_char_forms("%")) + ")"
                             f"(?:{_hex_any_case_text(run[1:].lower())}|{first}{second})")
            else:
                parts.append("(?:" + "|".join(_char_forms(run)) + ")")
        return re.compile("".join(parts))

    def scrub(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub("***", text)
        return text

    def excerpt(self, text: str, limit: int = 200) -> str:
        """A peer's text as we may show it: scrubbed whole, white space collapsed, scrubbed
        again, and only then cut to `limit` characters (a cut first could leave the start of
        a secret whole)."""
        text = " ".join(self.scrub(text).split())
        text = self.scrub(text)
        return text[:limit] + ("..." if len(text) > limit else "")


def _char_forms(char: str) -> list[str]:
    """Regular expressions for one character of a secret, in every form a peer may echo."""
    utf8 = char.encode()
    code = ord(char)
    forms = [re.escape(char),
             "".join(f"%(?:25)?{_hex_any_case(byte)}" for byte in utf8),
             _json_escape(code),
             rf"&#0*{code};", rf"&#[xX]0*{_hex_any_case_text(f'{code:x}')};"]
    name = html.entities.codepoint2name.get(code)
    if name:
        forms.append(rf"&{name};")
    if len(utf8) > 1:  # its UTF-8 bytes decoded as latin-1 (how http.client reads a reason)
        forms.append(re.escape(utf8.decode("latin-1")))
    if char == "/":
        forms.append(r"\\/")  # JSON may escape the slash
    return [form for form in forms if form]


def _json_escape(code: int) -> str:
    """The character as a JSON `\\u` escape, in either case: beyond U+FFFF JSON writes a
    surrogate pair (`\\ud83d\\ude00`), as json.dumps does."""
    units = [code] if code <= 0xFFFF else [0xD800 + ((code - 0x10000) >> 10),
                                           0xDC00 + ((code - 0x10000) & 0x3FF)]
    return "".join(rf"\\[uU]0*{_hex_any_case_text(f'{unit:x}')}" for unit in units)


def _hex_any_case_text(digits: str) -> str:
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)


def _hex_any_case(byte: int) -> str:
    """A regular expression for the two hex digits of `byte`, in upper or lower case."""
    return _hex_any_case_text(f"{byte:02x}")


@dataclass(frozen=True)
class Answer:
    """What one call gave: an HTTP status (None: no answer), the parsed JSON, a short reason."""

    status: int | None
    reason: str
    data: object = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the Authorization header (user info) to wherever it points.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class RasaClient:
    """One Rasa server at `url` (user info becomes a Basic Authorization header)."""

    def __init__(self, url: str, token: str, timeout_s: float):
        self.shown_url = display_url(url)
        self.timeout_s = timeout_s
        self._token = token
        self._headers: dict[str, str] = {}
        self._base = url
        password = ""
        try:
            parts = urllib.parse.urlsplit(url)
            password = urllib.parse.unquote(parts.password or "")
            if parts.username is not None:
                user = urllib.parse.unquote(parts.username)
                credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
                self._headers["Authorization"] = f"Basic {credentials}"
            netloc = parts.netloc.rpartition("@")[2]
            self._base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        except ValueError:
            pass  # each call then answers with the parse error, scrubbed
        self.secrets = Secrets(token, password, _raw_password(url))
        self._opener = urllib.request.build_opener(_NoRedirect, _DeadlineHTTPHandler,
                                                   _DeadlineHTTPSHandler)

    def status(self) -> Answer:
        """GET /status: 200 with {model_id, model_file, num_active_training_jobs}; 409 no model."""
        return self._call("GET", "/status", None)

    def put_model(self, model_file: str, remote_storage: str = "") -> Answer:
        """PUT /model {"model_file": ...}: 204 once loaded (Rasa answers nothing meanwhile).
        `remote_storage` ("aws"): `model_file` is a key Rasa downloads from its bucket."""
        body = {"model_file": model_file}
        if remote_storage:
            body["remote_storage"] = remote_storage
        return self._call("PUT", "/model", json.dumps(body).encode())

    def version(self) -> Answer:
        """GET /version: 200 with {version, minimum_compatible_version}."""
        return self._call("GET", "/version", None)

    def parse(self, text: str) -> Answer:
        """POST /model/parse {"text": ...}: 200 with {intent, entities, ...} from the model."""
        return self._call("POST", "/model/parse", json.dumps({"text": text}).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> Answer:
        deadline = _Deadline(self.timeout_s)
        try:
            endpoint = self._base.rstrip("/") + path
            if self._token:
                endpoint += "?" + urllib.parse.urlencode({"token": self._token})
            headers = dict(self._headers)
            if body is not None:
                headers["Content-Type"] = "application/json"
            request = urllib.request.Request(endpoint, data=body, method=method,
                                             headers=headers)
            request.deadline = deadline
            deadline.start()
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_BODY_BYTES + 1)
                deadline.finish()  # before the socket closes: the timer never touches it after
                if deadline.expired:
                    return self._late()
                return Answer(response.status, self.secrets.excerpt(_reason(response.reason)),
                              _json_or_none(raw))
        except urllib.error.HTTPError as error:
            try:
                raw = error.read(MAX_BODY_BYTES + 1)
            except Exception:  # noqa: BLE001 - the body is a bonus, the status is the answer
                raw = b""
            deadline.finish()
            if deadline.expired:
                return self._late()
            detail = _reason(str(error.reason or ""))
            message = _rasa_message(raw)
            if message:
                detail = f"{detail}: {message}" if detail else message
            return Answer(error.code, self.secrets.excerpt(detail, 300))
        except urllib.error.URLError as error:
            deadline.finish()
            if deadline.expired:
                return self._late()
            return Answer(None, self.secrets.excerpt(str(error.reason), 300))
        except Exception as error:  # noqa: BLE001 - InvalidURL, timeouts, resets, anything
            deadline.finish()
            if deadline.expired:
                return self._late()
            reason = str(error) or type(error).__name__
            return Answer(None, self.secrets.excerpt(f"{type(error).__name__}: {reason}", 300))
        finally:
            deadline.finish()

    def _late(self) -> Answer:
        return Answer(None, f"no whole answer within {self.timeout_s:.0f} s (RASA_TIMEOUT)")


class _Deadline:
    """One call's deadline, from connect to the last byte of the answer.

    urllib's timeout bounds each socket operation only: a server that sends one byte per
    second keeps a call going for as long as it likes. At the deadline the connection's
    socket is shut down, which ends a blocked connect, send or recv at once. (The TLS
    handshake of an https URL is bounded by the per-operation timeout alone.)"""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._sock = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shut_down(sock)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._sock is not None:
                _shut_down(self._sock)


def _shut_down(sock) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


class _DeadlineConnection:
    """Mixed into http.client's connections: the socket is handed to the call's deadline."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self):
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, deadline=req.deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, deadline=req.deadline), req,
                            context=self._context)


def _reason(reason: str) -> str:
    """http.client reads the status line as latin-1: a UTF-8 reason phrase is shown as the
    text it is."""
    try:
        return reason.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return reason


def _raw_password(url: str) -> str:
    """The password as written in the URL (maybe percent-encoded), to scrub that form too."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")
    if not userinfo[1]:
        return ""
    return userinfo[0].partition(":")[2]


def _json_or_none(raw: bytes):
    if len(raw) > MAX_BODY_BYTES:
        return None
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def _rasa_message(raw: bytes) -> str:
    """Rasa's error bodies are JSON with a `message`; anything else is shown as text. Not cut
    here: the excerpt is cut after it is scrubbed. A body larger than we read is not shown
    at all (a secret could straddle where the read stopped)."""
    if len(raw) > MAX_BODY_BYTES:
        return f"(a body of more than {MAX_BODY_BYTES} bytes, not shown)"
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return html.unescape(text)
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return html.unescape(data["message"])
    return ""
