"""The one helper that keeps control characters out of logs and reasons (issue 21 item 11)."""

import os
import unicodedata

import pytest

from skygrade.ops.text import escape_controls


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("2890001o.fits", "2890001o.fits"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("c1 \x85 \x9b", "c1 \\x85 \\x9b"),
        ("ls \u2028 ps \u2029", "ls \\u2028 ps \\u2029"),
        ("café Ω /drop/2026-11-24", "café Ω /drop/2026-11-24"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_controls_are_escaped_and_the_rest_kept(raw, escaped):
    assert escape_controls(raw) == escaped


def test_a_name_that_is_not_utf8_is_escaped_not_an_encoding_error():
    name = os.fsdecode(b"2890001o\xff.fits")  # a lone surrogate
    assert escape_controls(name) == "2890001o\\udcff.fits"
    escape_controls(name).encode("utf-8")


def test_escaping_twice_changes_nothing_and_any_object_is_accepted():
    once = escape_controls("x\ny\x1b")
    assert escape_controls(once) == once
    assert escape_controls(OSError(2, "No such file", "/drop/a\nb")) == (
        "[Errno 2] No such file: '/drop/a\\nb'"
    )
    every = escape_controls("".join(map(chr, range(0x10000))))
    assert not [ch for ch in every if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs")]
