"""Data sources, opened by URI: ``builtin:...``, a local path, or (later) ``s3://...``.

Each source type lives in its own module and implements ``DataSource``
(``data/common.py``). Sources are cached per process so the batches a worker runs share
one parsed copy.
"""

from __future__ import annotations

from functools import lru_cache

from recursive_training.data.builtin import open_builtin
from recursive_training.data.common import DataSource
from recursive_training.data.files import FileSource

__all__ = ["DataSource", "open_source"]


@lru_cache(maxsize=4)
def open_source(uri: str, input_format: str = "auto") -> DataSource:
    """Open the data source named by ``uri`` (cached per process)."""
    if uri.startswith("builtin:"):
        return open_builtin(uri)
    return FileSource(uri, input_format)
