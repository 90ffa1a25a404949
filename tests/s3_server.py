"""A real S3 API on 127.0.0.1 for the remote storage tests, and a TCP proxy for its faults.

The server is moto in server mode (`python -m moto.server`), a process of its own; our client
is boto3 as in production. Faults go through `FaultProxy`, a small TCP proxy of ours in front
of it (refuse, hang, cut mid-transfer, answer with a canned error), so the server keeps its
data across them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from tests.helpers import end_process, wait_for
from tests.real_rasa import free_port

REGION = "eu-west-1"  # not us-east-1: Rasa's create_bucket sends it as LocationConstraint
# Distinctive, with the characters that URL and signature code treats specially.
SECRET = "Sx+k9/TopSecret+Slash/Plus+Q7zR1mN0pL4wV8yB2cD6eF3gH5"
ACCESS_KEY = "AKIAROTATORTEST0001"


class MotoServer:
    """`python -m moto.server` on a free port of 127.0.0.1; `reset()` empties it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._answers, 60, 0.1, "moto server answering")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=2):
                return True
        except OSError:
            return False

    def post(self, path: str, body: bytes = b"", content_type: str = "application/json"):
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def reset(self) -> None:
        self.post("/moto-api/reset")
        # A previous test may have turned signature checks on: off again (never checked).
        self.post("/moto-api/reset-auth", b"inf", "text/plain")

    def stop(self) -> None:
        end_process(self.process)


def client_environment(endpoint: str, secret: str = SECRET, key_id: str = ACCESS_KEY,
                       bucket: str = "models") -> dict[str, str]:
    """What a container gets: Rasa's variables and boto3's own."""
    return {"REMOTE_STORAGE": "aws", "BUCKET_NAME": bucket, "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


def s3_client(endpoint: str, secret: str = SECRET, key_id: str = ACCESS_KEY,
              check_responses: bool = True):
    """boto3's client. `check_responses=False`: no check of a GET's body against its checksum
    header (moto's CopyObject makes the key visible before it sets the key's checksum, so
    for an instant the header may lag the body; a test that judges the body itself needs
    this)."""
    import boto3
    from botocore.config import Config

    config = Config(response_checksum_validation="when_supported" if check_responses
                    else "when_required")
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key_id,
        aws_secret_access_key=secret, config=config)


def create_bucket(endpoint: str, name: str = "models") -> None:
    s3_client(endpoint).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})


def turn_on_signature_checks(server: MotoServer, deny: tuple[str, ...] = ()
                             ) -> tuple[str, str]:
    """Create an IAM user allowed s3:* but the actions in `deny`, then make moto check
    every signature and policy. Returns the user's (access key id, secret)."""
    import boto3

    iam = boto3.session.Session().client(
        "iam", endpoint_url=server.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET)
    iam.create_user(UserName="rotator")
    policy = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
        + ([{"Effect": "Deny", "Action": list(deny), "Resource": "*"}] if deny else [])}))
    iam.attach_user_policy(UserName="rotator", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="rotator")["AccessKey"]
    server.post("/moto-api/reset-auth", b"0", "text/plain")
    return key["AccessKeyId"], key["SecretAccessKey"]


class FaultProxy:
    """Forwards 127.0.0.1:port to `target`. `mode`: pass | refuse | hang | cut | answer.

    refuse: the listener is closed (connections are refused). hang: connections are accepted
    and never answered. cut: each connection is closed after `cut_after` bytes from the
    client. answer: every request gets `canned` (raw HTTP) back. `delay_s`: a pause per chunk
    forwarded to the server (a slow link)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.mode = "pass"
        self.cut_after = 1 << 20
        self.canned = b""
        self.delay_s = 0.0
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener: socket.socket | None = None
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def set(self, mode: str) -> None:
        if mode == "refuse" and self.listener is not None:
            self._close_listener()
        elif mode != "refuse" and self.listener is None:
            self._listen()
        if mode != self.mode:
            self._drop_connections()  # no connection outlives the mode it was made in
        self.mode = mode

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            self._track(client)
            mode = self.mode
            if mode == "hang":
                continue  # kept open, never answered, until the mode changes
            if mode == "answer":
                threading.Thread(target=self._answer, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            limit = self.cut_after if mode == "cut" else None
            threading.Thread(target=self._pump, args=(client, upstream, limit, self.delay_s),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None, 0.0),
                             daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
            client.sendall(self.canned)
            time.sleep(0.2)
        except OSError:
            pass
        finally:
            client.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None,
              delay_s: float) -> None:
        sent = 0
        try:
            while data := source.recv(1 << 16):
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[:max(0, limit - sent)])
                    break
                sink.sendall(data)
                sent += len(data)
                if delay_s:
                    time.sleep(delay_s)
            else:
                sink.shutdown(socket.SHUT_WR)
                return
        except OSError:
            pass
        for sock in (source, sink):  # cut: both ends closed mid-transfer
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _close_listener(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the
        # kernel's socket listening until that accept() returns.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.listener = None

    def close(self) -> None:
        if self.listener is not None:
            self._close_listener()
        self._drop_connections()


def s3_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A raw HTTP answer as S3 gives an error."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
