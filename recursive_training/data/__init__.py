"""Data sources, opened by URI: ``builtin:...``, a local path, or ``s3://bucket/key``.

Each source type lives in its own module and implements ``DataSource``
(``data/common.py``): builtin data (``builtin.py``, ``panel.py``), long Parquet read a
shard at a time (``long.py``), other local files (``files.py``) and S3 objects
(``s3.py``). Sources are cached per process so the batches a worker runs share one parsed
copy (or, for S3, one listing and one fetch of each object).
"""

from __future__ import annotations

from functools import lru_cache

from recursive_training.data.builtin import open_builtin
from recursive_training.data.common import DataSource
from recursive_training.data.long import open_local
from recursive_training.s3_location import S3Settings, is_s3_uri

__all__ = ["DataSource", "open_source"]


@lru_cache(maxsize=4)
def open_source(uri: str, input_format: str = "auto", s3: S3Settings | None = None) -> DataSource:
    """Open the data source named by ``uri`` (cached per process; ``s3`` is used for s3://)."""
    if uri.startswith("builtin:"):
        return open_builtin(uri)
    if is_s3_uri(uri):
        from recursive_training.data.s3 import open_s3  # boto3, for S3 sources only

        return open_s3(uri, input_format, s3 or S3Settings())
    return open_local(uri, input_format)
