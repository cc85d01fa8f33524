"""A dependency-free progress line for long batch work (archives, backfills, training).

On a terminal it redraws one line (``\\r``); in a log file or CI it writes a plain line at most
every ``min_interval_s`` seconds, so a night-long backfill does not flood the log.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Count done / total with rate and ETA.

    Parameters
    ----------
    total : int or None
        Number of items, or None when unknown.
    label : str
        What is being counted ("exposures").
    stream : file-like, optional
        Where to write (default ``sys.stderr``).
    min_interval_s : float
        Minimum seconds between two lines when the stream is not a terminal.

    Examples
    --------
    >>> import io
    >>> p = Progress(2, "exposures", stream=io.StringIO())
    >>> p.update(note="a.fits"); p.update(); p.close()
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        stream: TextIO | None = None,
        min_interval_s: float = 5.0,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self._start = time.monotonic()
        self._last = -float("inf")

    def line(self, note: str = "") -> str:
        """The current progress text."""
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta_txt = _fmt_duration(eta) if eta == eta else "?"
            text = (
                f"{self.label}: {self.done}/{self.total} ({pct:5.1f}%) "
                f"{rate * 60:.1f}/min, elapsed {_fmt_duration(elapsed)}, ETA {eta_txt}"
            )
        else:
            text = f"{self.label}: {self.done} done, {rate * 60:.1f}/min"
        return f"{text} {note}".rstrip()

    def update(self, n: int = 1, note: str = "") -> None:
        """Record ``n`` more items done and redraw when due."""
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self.tty:
            self.stream.write("\r\033[K" + self.line(note))
            self.stream.flush()
        elif finished or now - self._last >= self.min_interval_s:
            self.stream.write(self.line(note) + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        """End the progress line (a newline on a terminal)."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
