"""Text that is safe to log and to keep as a reason: no control character gets through.

A file name is chosen by whoever writes into the drop directory, and it reaches the log, the
ledger, the parquet ``reason`` column and the observer page. A newline in it split the log
line (a forged second line, issue 21 item 11); an escape sequence could rewrite a terminal.
:func:`escape_controls` is the one helper every logged name and every reason goes through.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls"]

#: C0 controls and DEL, C1 controls, the Unicode line and paragraph separators, and lone
#: surrogates (what ``os.fsdecode`` makes of bytes of a file name that are not UTF-8: they
#: cannot be encoded to a log file or a parquet string).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: object) -> str:
    """``str(text)`` with every control character written as a backslash escape.

    Newline, carriage return and tab become ``\\n``, ``\\r`` and ``\\t``; every other C0 or C1
    control and DEL becomes ``\\xHH``; U+2028, U+2029 and lone surrogates become ``\\uHHHH``.
    Anything else, backslashes and non-ASCII letters included, is kept, so escaping twice
    changes nothing and an ordinary name reads as it is.

    Parameters
    ----------
    text : object
        A file name, path, reason or exception (anything ``str`` accepts).

    Returns
    -------
    str
        One line of printable text.

    Examples
    --------
    >>> escape_controls("2890001o.fits\\nINFO forged line")
    '2890001o.fits\\\\nINFO forged line'
    >>> escape_controls("\\x1b[2Jcleared \\x85 caf\\u00e9")
    '\\\\x1b[2Jcleared \\\\x85 café'
    """
    text = str(text)
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def duration_text(seconds: float) -> str:
    """A wait or a loss in the unit a person reads it in.

    >>> duration_text(45), duration_text(720), duration_text(5400)
    ('45 s', '12 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
