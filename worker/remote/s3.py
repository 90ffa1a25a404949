"""The bucket, through boto3: the few S3 calls remote storage makes, and what their errors mean.

Imported only when REMOTE_STORAGE is on (boto3 and botocore cost each process that imports
them about 20 MiB). Credentials, region and retries of the connection are boto3's own
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, ...); the endpoint and
the bucket are Rasa's variables, read by worker/settings.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

# boto3's own loggers speak at INFO ("Found credentials in environment variables") and at
# DEBUG print every request's headers, the access key id among them: never through ours.
for _name in ("boto3", "botocore", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Our metadata on every object we write (x-amz-meta-*): what a check compares, without a GET.
META_SHA256 = "sha256"
META_MODEL_ID = "model-id"
META_PUBLISHED_AT = "published-at"  # Unix time of the local publish: orders the versions
# The checksum of every upload (and part) that S3 verifies before it keeps the object: CRC32,
# boto3's own default, so every store boto3 works with accepts it. SHA-256 cost 15-35 % of
# the upload's speed here (tests/benchmark_remote.py); the model's SHA-256 is in our
# metadata anyway, computed once from the file.
CHECKSUM = "CRC32"
# CopyObject copies at most 5 GiB in one call; a larger model is uploaded to the key instead.
MAX_COPY_BYTES = 5 * 1024**3

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden",
           "ExpiredToken", "InvalidToken", "AllAccessDisabled", "403"}
_FULL = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded",
         "StorageFull", "InsufficientStorage", "EntityTooLarge", "TooManyBuckets", "507"}


@dataclass(frozen=True)
class StoredObject:
    """What a HEAD (or a listing) tells about one key."""

    key: str
    size: int
    sha256: str | None = None
    model_id: str | None = None
    last_modified: float = 0.0  # Unix time, whole seconds on many stores
    published_at: float | None = None  # our metadata

    @property
    def age_key(self) -> tuple[float, str]:
        """Newest last: by our publish time (LastModified has a resolution of a second)."""
        return (self.published_at if self.published_at is not None else self.last_modified,
                self.key)


class Cancelled(Exception):
    """An upload given up on purpose (a newer publish): its multipart upload is aborted."""


class _Done(BaseSubscriber):
    def __init__(self, wake):
        self._wake = wake

    def on_done(self, future, **kwargs):
        self._wake()


class Bucket:
    """One bucket at one endpoint. Every method raises botocore's or boto3's errors as they
    are: `describe_failure` turns them into one line."""

    def __init__(self, name: str, endpoint_url: str, connect_timeout_s: float,
                 read_timeout_s: float, attempts: int):
        self.name = name
        config = Config(connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                        retries={"max_attempts": attempts, "mode": "standard"})
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, config=config)

    def head(self, key: str) -> StoredObject | None:
        """The key's size and our metadata; None when it does not exist."""
        try:
            answer = self.client.head_object(Bucket=self.name, Key=key)
        except botocore.exceptions.ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = answer.get("Metadata") or {}
        try:
            published_at = float(metadata.get(META_PUBLISHED_AT, ""))
        except ValueError:
            published_at = None
        return StoredObject(key, answer["ContentLength"], metadata.get(META_SHA256),
                            metadata.get(META_MODEL_ID) or None,
                            answer["LastModified"].timestamp(), published_at)

    def upload(self, fd: int, key: str, metadata: dict[str, str], cancelled,
               news: threading.Condition) -> None:
        """Upload the open file `fd` to `key` (multipart when large, CRC32 checksums).

        The parts are read through /proc/self/fd/N, which opens the very inode of `fd`: a
        publish that renames a new file over the path meanwhile changes nothing read here.
        Waits on `news` (notified by whoever may make `cancelled()` true); when `cancelled()`
        is true the upload stops and its multipart upload is aborted."""
        finished = threading.Event()

        def done() -> None:
            finished.set()
            with news:
                news.notify_all()

        # The transfer manager's defaults, as `upload_file` uses them: multipart above 8 MiB,
        # 8 MiB parts, 10 threads. One manager per upload: its threads end with it, rather
        # than idle with their memory between publishes.
        transfers = create_transfer_manager(self.client, TransferConfig(max_concurrency=4))
        try:
            future = transfers.upload(
                f"/proc/self/fd/{fd}", self.name, key,
                extra_args={"ChecksumAlgorithm": CHECKSUM, "Metadata": metadata},
                subscribers=[_Done(done)])
            while not finished.is_set():
                with news:
                    news.wait_for(lambda: finished.is_set() or cancelled(), timeout=5.0)
                if not finished.is_set() and cancelled():
                    future.cancel()
                    # Waits for the parts in flight and the abort of the multipart upload.
                    with contextlib.suppress(Exception):
                        future.result()
                    raise Cancelled
            future.result()
        finally:
            transfers.shutdown()

    def copy(self, source_key: str, key: str, metadata: dict[str, str]) -> None:
        """Make `key` hold what `source_key` holds: one atomic server-side copy."""
        self.client.copy_object(Bucket=self.name, Key=key, MetadataDirective="REPLACE",
                                Metadata=metadata, ChecksumAlgorithm=CHECKSUM,
                                CopySource={"Bucket": self.name, "Key": source_key})

    def listing(self, prefix: str) -> list[StoredObject]:
        """Every key under `prefix` (without our metadata)."""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            for item in page.get("Contents", ()):
                found.append(StoredObject(item["Key"], item["Size"],
                                          last_modified=item["LastModified"].timestamp()))
        return found

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def close(self) -> None:
        self.client.close()


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "")
               or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _client_error(error: BaseException) -> botocore.exceptions.ClientError | None:
    """boto3 wraps some ClientErrors (S3UploadFailedError): find the one it wraps."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, botocore.exceptions.ClientError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def describe_failure(error: BaseException, bucket: str, key: str,
                     endpoint: str) -> tuple[str, str]:
    """(cause, one line naming bucket and key) for any error of a bucket call. The cause is
    one of: unreachable, timeout, cut, denied, no-bucket, full, error."""
    where = f"bucket {bucket!r} key {key!r}"
    shown_endpoint = endpoint or "AWS"
    client_error = _client_error(error)
    if client_error is not None:
        code = _code(client_error)
        message = client_error.response.get("Error", {}).get("Message", "") or code
        if code in ("NoSuchBucket",):
            return "no-bucket", (f"{where}: the bucket does not exist at {shown_endpoint} "
                                 "(create it, or check BUCKET_NAME and AWS_ENDPOINT_URL)")
        if code in _DENIED:
            return "denied", (f"{where}: access denied ({code}: {message}); check the "
                              "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the "
                              "bucket's policy")
        if code in _FULL:
            return "full", (f"{where}: the storage refused the upload as full or over quota "
                            f"({code}: {message})")
        return "error", f"{where}: {code}: {message}"
    if isinstance(error, (botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ReadTimeoutError)):
        return "timeout", (f"{where}: {shown_endpoint} did not answer in time "
                           f"({type(error).__name__})")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return "unreachable", f"{where}: cannot connect to {shown_endpoint}"
    if isinstance(error, (botocore.exceptions.ConnectionClosedError,
                          botocore.exceptions.ResponseStreamingError,
                          ConnectionError)):
        return "cut", f"{where}: {shown_endpoint} closed the connection mid-transfer"
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return "denied", (f"{where}: no credentials (set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, or give the pod a role)")
    if isinstance(error, OSError):
        return "error", f"{where}: {error.strerror or error}"
    return "error", f"{where}: {type(error).__name__}: {error}"


def credentials_in_environment() -> tuple[str, ...]:
    """The values no output may show: boto3's credential variables as set now."""
    names = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
             "AWS_SECURITY_TOKEN")
    return tuple(os.environ[name] for name in names if os.environ.get(name))
