"""Text that comes from the folders (pair names, and the errors and notes that quote them) made safe
to show: on a terminal or in a CI log (:func:`printable`), and in XML (:func:`xml_safe`).

A file name may hold any character but ``/`` and NUL. The characters that cannot be shown as
themselves are shown as Python-style escapes (``\\n``, ``\\x1b``), so the text stays readable; a
backslash is not escaped itself, so ordinary names keep their look (a name holding the four
characters ``\\x1b`` looks like one holding ESC). The report files (CSV, JSON) keep names exactly.
"""

from __future__ import annotations

import re

_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as Python's surrogateescape holds it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 controls, DEL and C1 controls: a line break would start a line of its own, ESC and CSI drive
# the terminal (colours, the window title, the cursor).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with its control characters (C0, DEL, C1) shown as escapes: one line, and nothing
    a terminal acts on."""
    return _CONTROL.sub(_escape, text)


# GitHub Actions runs a log line (stdout or stderr) as a workflow command when, after leading
# spaces, it starts with '::' (such as '::stop-commands::', which turns off the annotations that
# follow), and, in its legacy form, when '##[' appears anywhere in it.
_LEGACY_COMMAND = "##["
_LEADING_COMMAND = re.compile(r"^(\s*)::")
_ANY_COMMAND = re.compile(r"::")


def printable(text: str, cell: bool = False) -> str:
    """``text`` shown on a terminal or in a CI log as text only: control characters as escapes
    (:func:`escape_controls`), ``##[`` as ``##\\x5b``, and a ``::`` that would start the line (after
    spaces) as ``:\\x3a`` (GitHub Actions would run either as a workflow command). For a ``cell``
    of a table, which Rich may fold over several lines at any character, every ``::`` is broken.
    Everything else, bytes that are not UTF-8 included (printed as their own bytes), is left as it
    is: ``c10::Error`` in a line stays as it is.
    """
    text = escape_controls(text).replace(_LEGACY_COMMAND, "##\\x5b")
    if cell:
        return _ANY_COMMAND.sub(":\\\\x3a", text)
    return _LEADING_COMMAND.sub(r"\1:\\x3a", text, count=1)


# What XML 1.0 cannot hold even as a character reference: C0 controls but tab, line feed and
# carriage return; lone surrogates (a file name's bytes that are not UTF-8); U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold shown as escapes (``\\x1b``; a byte that is
    not UTF-8 as ``\\xe9``), so that a document holding it is well-formed."""
    return _NOT_XML.sub(_escape, text)
