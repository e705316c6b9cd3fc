"""Text that comes from the folders (pair names, and the errors and notes that quote them) made safe
to show: on a terminal or in a CI log (:func:`printable`), and in XML (:func:`xml_safe`).

A file name may hold any character but ``/`` and NUL. Both functions show the characters that
cannot be shown as themselves as Python-style escapes (``\\n``, ``\\x1b``), so the text stays
readable and tells what the name holds; the report files (CSV, JSON) keep the names exactly.
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
# GitHub Actions runs a log line (stdout or stderr) as a workflow command when, after leading
# spaces, it starts with '::' (such as '::stop-commands::', which turns off the annotations that
# follow), and, in its legacy form, when '##[' appears anywhere in it. A table folds a long name
# over several lines at any character, so every '::' is broken, not only one that starts the text.
_WORKFLOW_COMMAND = re.compile(r"::|##\[")
_WORKFLOW_ESCAPES = {"::": ":\\x3a", "##[": "##\\x5b"}


def printable(text: str) -> str:
    """``text`` as one line that a terminal or a CI log shows as text and nothing else.

    Control characters (C0, DEL, C1: line breaks, ESC) become escapes (``\\n``, ``\\x1b``), and the
    character sequences GitHub Actions reads as a workflow command in a log, ``::`` and ``##[``,
    become ``:\\x3a`` and ``##\\x5b``. Everything else, bytes that are not UTF-8 included (printed
    as their own bytes), is left as it is.
    """
    text = _CONTROL.sub(_escape, text)
    return _WORKFLOW_COMMAND.sub(lambda match: _WORKFLOW_ESCAPES[match.group()], text)


# What XML 1.0 cannot hold even as a character reference: C0 controls but tab, line feed and
# carriage return; lone surrogates (a file name's bytes that are not UTF-8); U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold shown as escapes (``\\x1b``; a byte that is
    not UTF-8 as ``\\xe9``), so that a document holding it is well-formed."""
    return _NOT_XML.sub(_escape, text)
