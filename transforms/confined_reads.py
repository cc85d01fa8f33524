"""Confined reads: open an exposure once beneath the drop directory, then read only that file.

A file named in the drop directory can change between the watcher's check and the grade (a
night folder swapped for a symlink to somewhere else: before, the grader then read a file
outside the drop). :func:`pinned` opens the file once, component by component with
``O_NOFOLLOW`` beneath the drop directory (:func:`skygrade.ops.files.open_beneath`), and while it is
held every read that :mod:`skygrade.transforms.fits_walk` and :mod:`skygrade.transforms.exposure`
make of that path goes to the open file, never the name again:
:func:`~skygrade.transforms.exposure.read_meta` records in the metadata the file's ``(st_dev,
st_ino)`` and, on Linux, a ``/proc/<pid>/fd/<n>`` name of the open descriptor, through which the CCD
workers (other processes) read the same open file. A path it refuses raises ``ExposureError`` with
reason ``outside_drop`` when read; a worker that finds another file than the one pinned raises
``file_changed``.

:func:`open_exposure` is how those readers open a file: the pinned one, one named by a worker's
``source``, else the path itself.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from skygrade.ops.files import OutsideRootError, open_beneath
from skygrade.transforms.exposure_errors import ExposureError

__all__ = ["open_exposure", "pin_of", "pinned", "pinned_source"]


@dataclass(frozen=True)
class _Pin:
    """A path held open by :func:`pinned`: its descriptor, or why it was refused."""

    fd: int | None
    file_id: tuple[int, int] | None
    error: ExposureError | None = None


_PINS: dict[str, list[_Pin]] = {}  # path -> its pins, innermost last
_PINS_LOCK = threading.Lock()


@contextlib.contextmanager
def pinned(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Iterator[None]:
    """Open ``path`` once, beneath ``root``; inside the block the readers read only that file.

    ``path`` is opened with :func:`skygrade.ops.files.open_beneath` (no symlink followed anywhere
    below ``root``, the open file's real path checked to be inside it). While the block runs, every
    read of ``path`` in this process (:func:`check_integrity`, :func:`read_meta`,
    :func:`read_ccd`...) reads that open file whatever the name now points to, and the
    metadata :func:`read_meta` returns carries what CCD workers in other processes need to
    read it too (see "Confined reads" in the module docstring). If ``path`` cannot be opened
    so, those reads raise ``ExposureError`` instead: ``outside_drop`` (a symlink on the way,
    or outside ``root``, or not a regular file) or ``unreadable``. The descriptor is closed
    when the block ends.

    Parameters
    ----------
    path : path-like
        The exposure, as it will be passed to the readers (the same string).
    root : path-like
        The drop directory.

    Examples
    --------
    >>> with pinned("/drop/2026-11-24/2817001o.fits", "/drop"):  # doctest: +SKIP
    ...     meta = read_meta("/drop/2026-11-24/2817001o.fits")
    """
    spath = os.fspath(path)
    try:
        fd = open_beneath(root, spath)
    except OutsideRootError as exc:
        pin = _Pin(None, None, ExposureError(spath, None, "outside_drop", _refusal(exc, root)))
    except OSError as exc:
        pin = _Pin(None, None, ExposureError(spath, None, "unreadable", f"cannot open: {exc}"))
    else:
        st = os.fstat(fd)
        pin = _Pin(fd, (st.st_dev, st.st_ino))
    with _PINS_LOCK:
        _PINS.setdefault(spath, []).append(pin)
    try:
        yield
    finally:
        with _PINS_LOCK:
            pins = _PINS[spath]
            pins.remove(pin)
            if not pins:
                del _PINS[spath]
        if pin.fd is not None:
            os.close(pin.fd)


def _refusal(exc: OSError, root) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"not opened: {exc.strerror}{where}; only regular files inside {os.fspath(root)} are read"
    )


def pin_of(spath: str) -> _Pin | None:
    with _PINS_LOCK:
        pins = _PINS.get(spath)
        return pins[-1] if pins else None


def pinned_source(pin: _Pin) -> str | None:
    """A name of the pinned descriptor that another process can open (Linux), or None."""
    name = f"/proc/{os.getpid()}/fd/{pin.fd}"
    return name if pin.fd is not None and os.path.exists(name) else None


def open_exposure(spath: str, source: str | None = None, file_id=None):
    """The file to read for ``spath``: the pinned one (see :func:`pinned`), the one named by
    ``source`` (a worker reading a file pinned in another process), else ``spath`` itself;
    checked to be file ``file_id`` (``(st_dev, st_ino)``) when that is given."""
    pin = pin_of(spath)
    try:
        if pin is not None:
            if pin.error is not None:
                raise pin.error
            file_id = pin.file_id
            try:  # a file description of its own (its own offset) on the same open file
                fh = open(f"/proc/self/fd/{pin.fd}", "rb")  # noqa: SIM115 -- the caller's
            except OSError:
                fh = os.fdopen(os.dup(pin.fd), "rb")
        elif source is not None:
            fh = open(source, "rb")  # noqa: SIM115 -- the caller closes it
        else:
            fh = open(spath, "rb", opener=_open_nonblocking)  # noqa: SIM115 -- the caller's
    except (FileNotFoundError, IsADirectoryError, ExposureError):
        raise
    except OSError as exc:
        raise ExposureError(spath, None, "unreadable", f"cannot open: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        # A FIFO (or device) put in the place of a file after its stat: never read from it.
        fh.close()
        raise ExposureError(spath, None, "unreadable", "not a regular file")
    os.set_blocking(fh.fileno(), True)
    if file_id is not None:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != tuple(file_id):
            fh.close()
            raise ExposureError(
                spath,
                None,
                "file_changed",
                "not the file opened for grading any more (replaced or moved meanwhile)",
            )
    return fh


def _open_nonblocking(path: str, flags: int) -> int:
    """``open``'s opener: O_NONBLOCK, so that opening a FIFO cannot wait for a writer."""
    return os.open(path, flags | os.O_NONBLOCK)
