"""S3 access for data, results and state: URIs, one client factory, and error translation.

Credentials come from boto3's default chain (environment, shared profile, web identity /
IRSA, instance metadata), unless the settings name a profile or an environment-variable
prefix of their own (outputs written to another store than the data is read from); nothing
here logs them. The endpoint and
region come from the run's config, else from boto3's own environment handling
(``AWS_ENDPOINT_URL``, ``AWS_REGION``), so MinIO, R2 and other S3-compatible stores work.
Every call retries a bounded number of times with backoff and connect/read timeouts, so an
unreachable endpoint fails with a clear error instead of hanging. Botocore errors become
the package's own errors (``DataError``, ``OutputError``, ``StateError``) naming the bucket,
the key and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

import boto3
import pyarrow.fs as pafs
from botocore import exceptions as botocore_errors
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from recursive_training.exceptions import ConfigError, OutputError, TrainingError
from recursive_training.s3_location import S3Location, S3Settings

_THROTTLING_CODES: Final = frozenset({"SlowDown", "Throttling", "RequestTimeout"})
_MISSING_KEY_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES: Final = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_CREDENTIAL_HINTS: Final = {
    "InvalidAccessKeyId": "the access key id is not known to the server",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is invalid",
    "TokenRefreshRequired": "the session token has expired",
}
_CREDENTIAL_FIX: Final = (
    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the pod's IRSA role, "
    "and that --s3-endpoint-url points at the store those credentials belong to"
)


def client(settings: S3Settings) -> Any:
    """A boto3 S3 client for ``settings`` (one per process; clients are thread-safe)."""
    return _client(settings, os.getpid())


ENV_CREDENTIAL_KEYS: Final = ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN")


def session(settings: S3Settings) -> boto3.session.Session:
    """A boto3 session with the credentials the settings name (default: the AWS chain)."""
    if settings.credentials_env:
        prefix = settings.credentials_env
        values = {key: os.environ.get(prefix + key) for key in ENV_CREDENTIAL_KEYS}
        key_id, secret, token = values.values()
        missing = [prefix + key for key in ENV_CREDENTIAL_KEYS[:2] if not values[key]]
        if missing:
            raise ConfigError(
                f"credentials for {settings.describe_endpoint()} come from the environment "
                f"variables {prefix}*, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; set them or remove the "
                "credentials-env setting"
            )
        return boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token
        )
    return boto3.session.Session(profile_name=settings.profile)


@lru_cache(maxsize=8)
def _client(settings: S3Settings, pid: int) -> Any:
    """Build the client; ``pid`` in the key keeps a forked worker from reusing the parent's."""
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        region_name=settings.region,
    )
    return session(settings).client("s3", endpoint_url=settings.endpoint_url, config=config)


def describe_error(
    error: Exception, location: S3Location, action: str, settings: S3Settings
) -> str:
    """One line saying what went wrong talking to S3 about ``location`` and what to do."""
    where = str(location)
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        if code == "NoSuchBucket":
            return (
                f"cannot {action} {where}: bucket {location.bucket!r} does not exist at "
                f"{settings.describe_endpoint()}; check the bucket name, --s3-endpoint-url "
                "and --s3-region"
            )
        if code in _MISSING_KEY_CODES:
            return (
                f"cannot {action} {where}: no such object; check the key (S3 keys are "
                "case-sensitive)"
            )
        if code in _CREDENTIAL_HINTS:
            return f"cannot {action} {where}: {_CREDENTIAL_HINTS[code]} ({code}); {_CREDENTIAL_FIX}"
        if code in _DENIED_CODES:
            return (
                f"cannot {action} {where}: access denied; the credentials from the AWS chain lack "
                "permission for it (s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket)"
            )
        if code == "PreconditionFailed":
            return f"cannot {action} {where}: the object changed while this run was reading it"
        message = details.get("Message") or error
        return f"cannot {action} {where}: {code or 'error'}: {message}"
    if isinstance(error, NoCredentialsError):
        return (
            f"cannot {action} {where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IRSA service account"
        )
    if isinstance(error, PartialCredentialsError | ProfileNotFound):
        return (
            f"cannot {action} {where}: incomplete AWS credential settings ({error}); "
            f"{_CREDENTIAL_FIX}"
        )
    if isinstance(error, ReadTimeoutError | ConnectTimeoutError):
        waited, flag = (
            ("answer", f"--s3-read-timeout {settings.read_timeout:g}s")
            if isinstance(error, ReadTimeoutError)
            else ("accept a connection", f"--s3-connect-timeout {settings.connect_timeout:g}s")
        )
        return (
            f"cannot {action} {where}: S3 endpoint {settings.describe_endpoint()} did not "
            f"{waited} within {flag} in {settings.max_attempts} attempts (--s3-max-attempts); "
            "check the server, or raise those settings for a slow one"
        )
    if isinstance(error, botocore_errors.ConnectionError | HTTPClientError):
        return (
            f"cannot {action} {where}: S3 endpoint {settings.describe_endpoint()} is unreachable "
            f"or dropped the connection, {settings.max_attempts} attempts made "
            f"({type(error).__name__}); check --s3-endpoint-url, the network and the server"
        )
    return f"cannot {action} {where}: {error}"


@contextmanager
def translated(
    kind: type[TrainingError], location: S3Location, action: str, settings: S3Settings
) -> Iterator[None]:
    """Re-raise botocore errors inside the block as ``kind`` with ``describe_error``'s line."""
    try:
        yield
    except (ClientError, BotoCoreError) as e:
        error = kind(describe_error(e, location, action, settings))
        error.retryable = transient(e)
        raise error from e


def transient(error: Exception) -> bool:
    """True for an S3 failure a later attempt may not meet: the connection, a 5xx, throttling."""
    if isinstance(error, botocore_errors.ConnectionError | HTTPClientError):
        return True
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in _THROTTLING_CODES
    return False


@dataclass(frozen=True)
class S3Object:
    """One listed object: where it is, how big, and which version (ETag) was listed."""

    location: S3Location
    size: int
    etag: str


def find(location: S3Location, settings: S3Settings, kind: type[TrainingError]) -> S3Object | None:
    """The object with exactly this key, or None; a missing bucket is an error, not None.

    A one-key listing, not a HEAD: HEAD cannot tell a missing bucket from a missing key.
    """
    if not location.key:
        return None
    with translated(kind, location, "look up", settings):
        listed = client(settings).list_objects_v2(
            Bucket=location.bucket, Prefix=location.key, MaxKeys=1
        )
    return next(
        (
            S3Object(location, int(item["Size"]), item["ETag"])
            for item in listed.get("Contents", [])
            if item["Key"] == location.key
        ),
        None,
    )


def exists(location: S3Location, settings: S3Settings, kind: type[TrainingError]) -> bool:
    """True when an object has exactly this key; a missing bucket is an error, not False."""
    return find(location, settings, kind) is not None


def list_folder(
    location: S3Location,
    settings: S3Settings,
    kind: type[TrainingError],
    recursive: bool = False,
) -> list[S3Object]:
    """The objects under ``location`` taken as a folder: directly under it, or (``recursive``)
    in its sub-folders too."""
    prefix = f"{location.key.rstrip('/')}/" if location.key.strip("/") else ""
    objects = []
    with translated(kind, location, "list", settings):
        pages = (
            client(settings)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=location.bucket, Prefix=prefix, Delimiter="" if recursive else "/")
        )
        for page in pages:
            objects += [
                S3Object(S3Location(location.bucket, item["Key"]), int(item["Size"]), item["ETag"])
                for item in page.get("Contents", [])
            ]
    return objects


def arrow_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the same endpoint, region, credentials, retries and
    timeouts as ``client``."""
    endpoint = settings.describe_endpoint()
    options: dict[str, Any] = {}
    if endpoint != "AWS S3":
        parts = urlsplit(endpoint)
        options = {
            "endpoint_override": parts.netloc or parts.path,
            "scheme": parts.scheme or "https",
        }
    region = settings.region or os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION"))
    if region:
        options["region"] = region
    if settings.profile or settings.credentials_env:
        # pyarrow reads only the default chain: hand it the keys the settings name.
        credentials = session(settings).get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        options.update(
            access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token
        )
    return pafs.S3FileSystem(
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.read_timeout,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
        **options,
    )


def get_bytes(
    location: S3Location,
    settings: S3Settings,
    kind: type[TrainingError],
    *,
    etag: str | None = None,
    byte_range: tuple[int, int] | None = None,
    action: str = "read",
) -> bytes:
    """An object's bytes (or bytes ``first..last`` inclusive), only if it is still ``etag``."""
    arguments: dict[str, str] = {"Bucket": location.bucket, "Key": location.key}
    if etag is not None:
        arguments["IfMatch"] = etag
    if byte_range is not None:
        arguments["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    with translated(kind, location, action, settings):
        body = client(settings).get_object(**arguments)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()


def put_bytes(
    location: S3Location,
    data: bytes,
    settings: S3Settings,
    *,
    content_type: str,
    metadata: dict[str, str],
) -> None:
    """Store ``data`` in one PUT: S3 makes it visible whole or not at all."""
    with translated(OutputError, location, "write", settings):
        client(settings).put_object(
            Bucket=location.bucket,
            Key=location.key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata,
        )


def delete(location: S3Location, settings: S3Settings) -> None:
    """Remove the object (no error when it is already gone)."""
    with translated(OutputError, location, "delete", settings):
        client(settings).delete_object(Bucket=location.bucket, Key=location.key)
