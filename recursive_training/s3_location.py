"""Where S3 data lives and how to reach it: plain value types, without boto3.

The config validates S3 URIs and carries ``S3Settings`` to every worker; keeping these
types apart from the client code (``s3.py``) lets them be imported without loading boto3.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

SCHEME: Final = "s3://"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3_uri(location: str) -> bool:
    """True when ``location`` names an S3 object or prefix."""
    return location.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix) parsed from ``s3://bucket/key``."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Split ``s3://bucket/key``; ValueError saying what is wrong with a bad URI."""
        if not is_s3_uri(uri):
            raise ValueError(f"{uri!r} is not an S3 URI; expected s3://bucket/key")
        bucket, _, key = uri.removeprefix(SCHEME).partition("/")
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise ValueError(
                f"{uri!r} does not start with a valid bucket name ({bucket!r}): 3-63 lowercase "
                "letters, digits, dots or hyphens"
            )
        return cls(bucket, key)

    def child(self, name: str) -> S3Location:
        """The object ``name`` inside this location taken as a folder."""
        return S3Location(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class S3Settings:
    """Where and how to talk to S3; hashable so clients and sources can be cached on it."""

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 8.0
    # Where the credentials come from when not from the AWS default chain: a named profile
    # of the shared config files, or the prefix of environment variables holding them
    # (PREFIX + ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN). Names only, never secrets.
    profile: str | None = None
    credentials_env: str | None = None

    def describe_endpoint(self) -> str:
        """The endpoint a client built from these settings talks to, for messages."""
        configured = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        return configured or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
