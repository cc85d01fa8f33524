"""Writing results: atomic parquet files and the dead-letter records.

Every file is written under a temporary name in its final directory and renamed into place
with ``os.replace``, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
