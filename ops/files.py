"""Atomic file writes (a reader, or a crash, never sees half a file), and confined opens.

Everything skygrade writes (exposures in the simulator, parquet rows, quarantine records,
model bundles) goes through :func:`atomic_path`: the content is written under a hidden
temporary name in the destination directory and renamed into place with ``os.replace``.
The file gets the usual permissions (0666 minus the umask), not ``mkstemp``'s 0600, so a
daemon running as another user can read what the telescope or a backfill wrote.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode())


class OutsideRootError(OSError):
    """:func:`open_beneath` refused a path: a symlink on the way, or a file outside the root."""


def fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (Linux ``/proc/self/fd``), or None where unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_beneath(root: str | os.PathLike, path: str | os.PathLike) -> int:
    """Open the regular file ``path`` for reading, never leaving the directory ``root``.

    Every component below ``root`` is opened relative to the previous one with ``O_NOFOLLOW``,
    so a symlink anywhere on the way (a night folder swapped for a link to ``/etc``, say) is
    refused, not followed, and what is opened is the file that is there at that moment; the
    caller then reads that descriptor and never the name again (no time-of-check to
    time-of-use gap). Where ``/proc/self/fd`` exists, the real path of the open descriptor
    is checked to lie under the real ``root`` as well.

    Parameters
    ----------
    root : path-like
        The directory the file must be in (itself may be reached through symlinks).
    path : path-like
        The file, absolute under ``root`` or relative to it.

    Returns
    -------
    int
        A descriptor opened ``O_RDONLY | O_CLOEXEC`` (the caller closes it).

    Raises
    ------
    OutsideRootError
        ``path`` is not below ``root``, a component is a symlink, or the descriptor's real path
        is outside ``root``; or the file is not a regular file (``errno`` ``EINVAL``).
    FileNotFoundError, OSError
        A component does not exist, or cannot be opened.
    """
    root_s, path_s = os.path.abspath(root), os.path.abspath(os.path.join(root, path))
    rel = os.path.relpath(path_s, root_s)
    parts = Path(rel).parts
    if not parts or rel == "." or parts[0] == "..":
        raise OutsideRootError(errno.EXDEV, f"not below {root_s}", path_s)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    directory = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow | os.O_CLOEXEC
    fd = os.open(root_s, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # O_NONBLOCK: a FIFO named like an exposure must not block the open.
            flags = (os.O_RDONLY | nofollow | os.O_CLOEXEC | os.O_NONBLOCK) if last else directory
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    link = os.path.join(root_s, *parts[: i + 1])
                    if os.path.islink(link):
                        raise OutsideRootError(
                            errno.ELOOP, "a symlink on the way is not followed", link
                        ) from None
                raise
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutsideRootError(errno.EINVAL, "not a regular file", path_s)
        real = fd_path(fd)
        real_root = os.path.realpath(root_s)
        if real is not None and os.path.commonpath([real, real_root]) != real_root:
            raise OutsideRootError(errno.EXDEV, f"open file is {real}, outside {real_root}", path_s)
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise
