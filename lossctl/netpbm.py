"""Netpbm graymaps and pixmaps (PGM ``P2``/``P5``, PPM ``P3``/``P6``) read at their stored levels.

A Netpbm sample means ``sample / maxval``, for any maxval from 1 to 65535. Pillow rescales samples
to 8 or 16 bits when the maxval is not 255 or 65535 (rounding them: a 10-bit graymap's levels
move by up to half a 16-bit level), and reads 16-bit pixmaps, binary or plain, as 8 bits; OpenCV
rescales plain files whose maxval is under 255. So lossctl reads the levels itself and scales
them by the maxval. Bitmaps (``P1``/``P4``) are left to Pillow, which reads them exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import ImageReadError

CHANNELS = {b"P2": 1, b"P5": 1, b"P3": 3, b"P6": 3}
PLAIN = {b"P2", b"P3"}  # samples as ASCII decimals; the others as bytes (big-endian 16-bit words)
MAX_MAXVAL = 65535

_SEPARATOR = rb"(?:\s|#[^\r\n]*)+"  # whitespace, and comments from '#' to the end of the line
_HEADER = re.compile(rb"(P[2356])" + (_SEPARATOR + rb"(\d+)") * 3 + rb"\s")


@dataclass(frozen=True)
class NetpbmHeader:
    magic: bytes
    width: int
    height: int
    maxval: int
    raster_start: int  # offset of the first sample, after the one whitespace byte ending the header

    @property
    def channels(self) -> int:
        return CHANNELS[self.magic]


def read_header(data: bytes) -> NetpbmHeader | None:
    """The header of a PGM or PPM file, or None for any other file.

    Raises :class:`ImageReadError` when the file starts like one but its header is malformed."""
    if data[:2] not in CHANNELS:
        return None
    match = _HEADER.match(data)
    if match is None:
        raise ImageReadError("malformed Netpbm header (expected magic, width, height and maxval)")
    width, height, maxval = (int(field) for field in match.groups()[1:])
    if not 1 <= maxval <= MAX_MAXVAL:
        raise ImageReadError(f"Netpbm maxval must be 1 to {MAX_MAXVAL}; this file has {maxval}")
    if width == 0 or height == 0:
        raise ImageReadError(f"the image is {width}x{height}: it has no pixels")
    return NetpbmHeader(match.group(1), width, height, maxval, match.end())


def read_levels(data: bytes, header: NetpbmHeader) -> np.ndarray:
    """The first image's samples, ``(H, W, C)``: uint8 for a maxval up to 255, else uint16.

    Raises :class:`ImageReadError` for a raster with too few samples or with a sample above the
    maxval (the file is then not what its header says; no sample is clipped or rescaled)."""
    count = header.height * header.width * header.channels
    stored = np.uint8 if header.maxval <= 255 else np.uint16
    if header.magic in PLAIN:
        tokens = data[header.raster_start :].split(maxsplit=count)[:count]
        if len(tokens) < count:
            raise ImageReadError(f"truncated: the raster holds {len(tokens)} of {count} samples")
        try:
            samples = np.array(tokens).astype(np.int64)
        except (ValueError, OverflowError):
            raise ImageReadError("malformed plain Netpbm raster (a sample is not a decimal number)") from None
        if samples.min() < 0:
            raise ImageReadError("malformed plain Netpbm raster (a sample is negative)")
    else:
        word = np.dtype(np.uint8) if header.maxval <= 255 else np.dtype(">u2")
        available = (len(data) - header.raster_start) // word.itemsize
        if available < count:
            raise ImageReadError(f"truncated: the raster holds {available} of {count} samples")
        samples = np.frombuffer(data, word, count, offset=header.raster_start)
    if samples.max() > header.maxval:
        raise ImageReadError(f"a sample ({samples.max()}) is above the file's maxval {header.maxval}")
    return samples.astype(stored).reshape(header.height, header.width, header.channels)
