"""A small client for the two Rasa HTTP calls the sync needs: `GET /status` and `PUT /model`.

The standard library's urllib is enough. Every call returns an `Answer` and never raises:
whatever a URL, a network or a server does, the replica's thread carries on. Every text that
comes back (reason phrases, bodies, exception messages) passes through `Secrets.scrub` first,
so neither RASA_TOKEN nor the password of RASA_URL's user info is ever printed.
"""

from __future__ import annotations

import base64
import json
import re
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
    space, `/` kept or encoded), or encoded twice (`%252F`); a mix of these too. One regular
    expression per secret matches each character in any of those forms.
    """

    def __init__(self, *secrets: str):
        self._patterns = [self._pattern(secret) for secret in secrets if secret]

    @staticmethod
    def _pattern(secret: str) -> re.Pattern:
        parts = []
        for char in secret:
            encoded = "".join(f"%(?:25)?{_hex_any_case(byte)}" for byte in char.encode())
            forms = [re.escape(char), encoded]
            if char == " ":
                forms.append(r"\+")
            if char == "/":
                forms.append(r"\\/")  # JSON may escape the slash
            parts.append("(?:" + "|".join(forms) + ")")
        return re.compile("".join(parts))

    def scrub(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub("***", text)
        return text


def _hex_any_case(byte: int) -> str:
    """A regular expression for the two hex digits of `byte`, in upper or lower case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")


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
        self._opener = urllib.request.build_opener(_NoRedirect)

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

    def _call(self, method: str, path: str, body: bytes | None) -> Answer:
        try:
            endpoint = self._base.rstrip("/") + path
            if self._token:
                endpoint += "?" + urllib.parse.urlencode({"token": self._token})
            headers = dict(self._headers)
            if body is not None:
                headers["Content-Type"] = "application/json"
            request = urllib.request.Request(endpoint, data=body, method=method,
                                             headers=headers)
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return Answer(response.status, self.secrets.scrub(response.reason or ""),
                              _json_or_none(response.read(MAX_BODY_BYTES + 1)))
        except urllib.error.HTTPError as error:
            detail = str(error.reason or "")
            try:
                text = error.read(MAX_BODY_BYTES).decode("utf-8", "replace").strip()
            except Exception:  # noqa: BLE001 - the body is a bonus, the status is the answer
                text = ""
            message = _rasa_message(text)
            if message:
                detail = f"{detail}: {message}" if detail else message
            return Answer(error.code, self.secrets.scrub(detail[:300]))
        except urllib.error.URLError as error:
            return Answer(None, self.secrets.scrub(str(error.reason)[:300]))
        except Exception as error:  # noqa: BLE001 - InvalidURL, timeouts, resets, anything
            reason = str(error) or type(error).__name__
            return Answer(None, self.secrets.scrub(f"{type(error).__name__}: {reason}"[:300]))


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


def _rasa_message(text: str) -> str:
    """Rasa's error bodies are JSON with a `message`; anything else is shown shortened."""
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return " ".join(data["message"].split())[:200]
    return ""
