"""Writing results: atomic parquet files and the dead-letter records.

Every file is written under a temporary name in its final directory and renamed into place
with ``os.replace``, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ops.files import atomic_path


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write ``table`` to ``path`` atomically (temp file in the same directory + rename).

    Parameters
    ----------
    table : pyarrow.Table
        What to write.
    path : path-like
        Final file name; parent directories are created.

    Returns
    -------
    Path
        The final path.
    """
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)
