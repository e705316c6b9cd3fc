"""Files written whole or not at all: a temporary file beside the target, renamed into place, so
that a crash or Ctrl-C never leaves half a report or half a heat map under the target's name."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, TextIO

# A file name that is not UTF-8 (bytes Python holds as lone surrogates) is written as its own bytes,
# so that a report names the very file; JSON escapes them (as "\udce9"), and compare reads them back.
FILE_NAME_BYTES = "surrogateescape"


def is_stream(path: Path) -> bool:
    """Whether ``path`` is written into rather than replaced: a device such as ``/dev/null``, a
    FIFO, or ``/dev/stdout`` when it is a pipe (anything that exists and is neither a regular file
    nor a folder)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomic(path: Path, content: str | Callable[[TextIO], object]) -> None:
    """Write ``content`` (text, or a function that writes to a stream) to ``path`` as UTF-8 through a
    temporary file renamed into place.

    A symbolic link is followed, so the file it points to is replaced and the link kept. A stream
    (:func:`is_stream`) is written straight into: a file renamed over it would replace the device
    or the pipe, which as root can be ``/dev/null`` itself.
    """
    text = {"encoding": "utf-8", "errors": FILE_NAME_BYTES, "newline": ""}
    if is_stream(path):
        with open(path, "w", **text) as stream:
            _write_content(stream, content)
        return
    with _replacing(path, "w", **text) as stream:
        _write_content(stream, content)


def write_atomic_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """:func:`write_atomic` of what ``write(stream)`` writes to a binary stream (a PNG)."""
    with _replacing(path, "wb") as stream:
        write(stream)


def _write_content(stream: TextIO, content: str | Callable[[TextIO], object]) -> None:
    if isinstance(content, str):
        stream.write(content)
    else:
        content(stream)


@contextmanager
def _replacing(path: Path, mode: str, **options):
    """A stream to a temporary file beside ``path`` (through a link: beside its target), renamed
    over it when the block ends without error, and removed otherwise."""
    path = Path(os.path.realpath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        stream: IO = os.fdopen(handle, mode, **options)
        with stream:
            yield stream
        os.chmod(temporary, 0o666 & ~_current_umask())  # as open() would have made it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
