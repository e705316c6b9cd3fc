"""Finding, pairing and decoding images.

Pairs are matched by relative path without extension (``pred/a/x.png`` pairs with
``gt/a/x.jpg``). Pixels are returned as stored (uint8, uint16 or float32) with the divisor that
scales them to [0, 1] under the pixel conventions of METRICS.md; the engine converts on the device.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from . import netpbm
from .errors import ImageReadError, LossctlError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
SCORE_EXTENSION = ".npy"  # segmentation predictions: C x H x W class probabilities or logits
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | {SCORE_EXTENSION}
LABEL_MODES = {"L", "P", "1", "I;16", "I;16L", "I;16B", "I;16N", "I"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
PNG_GRAY_ALPHA = 4
PNG_COLOR_TYPES_PILLOW_TRUNCATES = {2, PNG_GRAY_ALPHA, 6}  # RGB, gray+alpha, RGBA at 16 bits
RGB_MODES = {"RGB", "RGBA", "RGBX", "RGBa"}
MODES_CONVERTED_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _as_path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


@dataclass(frozen=True, slots=True)
class Pair:
    """A prediction and its ground truth, or one side alone (unmatched), or a naming conflict.

    The files are kept as strings (``pred_file``...) and given as :class:`Path` by ``pred``, ``gt``
    and ``weight``: a Path object with its cached parts costs about 600 bytes, which for a folder of
    20,000 pairs was most of what the run's memory grew by.
    """

    name: str
    pred_file: str | None
    gt_file: str | None
    weight_file: str | None = None
    problem: str | None = None
    weight_problem: str | None = None  # why a weights folder gives this pair no map, where pairing knows
    notes: tuple[str, ...] = ()  # facts worth reporting that do not stop the computation

    @property
    def pred(self) -> Path | None:
        return _as_path(self.pred_file)

    @property
    def gt(self) -> Path | None:
        return _as_path(self.gt_file)

    @property
    def weight(self) -> Path | None:
        return _as_path(self.weight_file)

    @property
    def is_segmentation(self) -> bool:
        """The prediction is a ``.npy`` array of class scores (see :func:`load_segmentation`)."""
        return self.pred_file is not None and self.pred_file.lower().endswith(SCORE_EXTENSION)

    @property
    def status(self) -> str:
        if self.pred_file is None and self.gt_file is None:  # a folder that could not be read
            return "error"
        if self.pred_file is None or self.gt_file is None:
            return "unmatched"
        return "error" if self.problem else "pending"


@dataclass(frozen=True)
class Pairing:
    pairs: list[Pair]
    skipped: list[Path]


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as stored, shaped ``(H, W, C)`` with C = 1 or 3, and the divisor to [0, 1]."""

    pixels: np.ndarray
    scale: float
    bit_depth: int

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


@dataclass(frozen=True)
class LoadedPair:
    """A decoded pair ready to batch. ``weight`` is ``(H, W, 1)`` float32 in [0, 1] when given."""

    pair: Pair
    pred: DecodedImage
    gt: DecodedImage
    weight: np.ndarray | None = None
    weight_problem: str | None = None

    @property
    def height(self) -> int:
        return self.pred.height

    @property
    def width(self) -> int:
        return self.pred.width

    @property
    def channels(self) -> int:
        return max(self.pred.channels, self.gt.channels)

    @property
    def bit_depth(self) -> int | str:
        if self.pred.bit_depth == self.gt.bit_depth:
            return self.pred.bit_depth
        return f"{self.pred.bit_depth}/{self.gt.bit_depth}"

    @property
    def batch_key(self) -> tuple:
        """Pairs with equal keys can be stacked into one batch."""
        return (
            self.pred.height,
            self.pred.width,
            self.pred.channels,
            self.pred.pixels.dtype.str,
            self.pred.scale,
            self.gt.channels,
            self.gt.pixels.dtype.str,
            self.gt.scale,
            self.weight is not None,
        )


@dataclass(frozen=True)
class LoadedSegmentation:
    """A segmentation pair: class scores ``(C, H, W)`` and a label map ``(H, W)`` of class indices."""

    pair: Pair
    scores: np.ndarray
    labels: np.ndarray
    label_bit_depth: int

    @property
    def height(self) -> int:
        return self.labels.shape[0]

    @property
    def width(self) -> int:
        return self.labels.shape[1]

    @property
    def channels(self) -> int:
        return self.scores.shape[0]

    @property
    def bit_depth(self) -> int:
        return self.label_bit_depth

    @property
    def batch_key(self) -> tuple:
        return ("segmentation", *self.scores.shape, self.scores.dtype.str)


@dataclass
class FolderScan:
    """The image files under a folder by key (relative path without extension, '/'-separated), the
    files skipped because their extension is not an image format's, and the subfolders that could
    not be read (relative path, reason). Files are path strings (see :class:`Pair`)."""

    images: dict[str, list[str]]
    skipped: list[Path]
    unreadable: list[tuple[str, str]]


def find_images(root: Path) -> FolderScan:
    """Walk ``root`` (following symbolic links, each real folder once) for its images; hidden files
    and folders (names starting with ``.``) are skipped, as files that are not images are.

    A subfolder that cannot be read is recorded, not fatal; ``root`` itself unreadable raises
    :class:`LossctlError`.
    """
    scan = FolderScan({}, [], [])
    images, skipped = scan.images, scan.skipped
    visited: set[str] = set()

    def unreadable(error: OSError) -> None:
        reason = error.strerror or str(error)
        if Path(error.filename) == root:
            raise LossctlError(f"cannot read folder {error.filename}: {reason}")
        scan.unreadable.append((Path(error.filename).relative_to(root).as_posix(), reason))

    for directory, subdirectories, files in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:  # a symbolic link back into the tree: walk each folder once
            subdirectories.clear()
            continue
        visited.add(real)
        # Hidden entries (.ipynb_checkpoints/, macOS's ._x.png, .git/) are not the user's images:
        # paired, they made unmatched rows and exit 3. They are skipped, hidden folders unwalked.
        hidden = [name for name in subdirectories if name.startswith(".")]
        skipped.extend(os.path.join(directory, name) for name in sorted(hidden))
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        prefix = os.path.relpath(directory, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for file_name in sorted(files):
            stem, extension = os.path.splitext(file_name)
            path = os.path.join(directory, file_name)
            if file_name.startswith(".") or extension.lower() not in INPUT_EXTENSIONS:
                skipped.append(path)
                continue
            images.setdefault(prefix + stem, []).append(path)
    return scan


def _check_folder(path: Path, role: str) -> None:
    if not path.exists():
        raise LossctlError(f"{role} folder not found: {path}")
    if not path.is_dir():
        raise LossctlError(f"{role} path is not a folder: {path}")


def _ambiguity(side: str, paths: list[str]) -> str:
    names = ", ".join(os.path.basename(path) for path in paths)
    return f"ambiguous {side}: {len(paths)} files share this name ({names})"


def _casefolded(images: dict[str, list[str]]) -> dict[str, list[str]]:
    folded: dict[str, list[str]] = {}
    for key in images:
        folded.setdefault(key.casefold(), []).append(key)
    return folded


def pair_folders(pred_root: Path, gt_root: Path, weights_root: Path | None = None) -> Pairing:
    """Pair the images of two folders by relative path without extension, recursively.

    Every image appears in exactly one pair: matched, unmatched (one side only), or in error when
    two files of one folder share a key (``x.png`` and ``x.jpg``). Raises :class:`LossctlError`
    when a folder is missing or no image matches at all.
    """
    _check_folder(pred_root, "prediction")
    _check_folder(gt_root, "ground-truth")
    if weights_root is not None:
        _check_folder(weights_root, "weights")
    pred_scan, gt_scan = find_images(pred_root), find_images(gt_root)
    pred_images, gt_images = pred_scan.images, gt_scan.images
    weight_images = find_images(weights_root).images if weights_root is not None else {}
    if not pred_images:
        raise LossctlError(f"no images found in prediction folder {pred_root}")
    if not gt_images:
        raise LossctlError(f"no images found in ground-truth folder {gt_root}")

    pairs = []

    # The other side's keys by case-folded key, made only when a pair lacks a side (it costs a few
    # hundred bytes per image, for nothing when every image has its match).
    @functools.cache
    def other_side_by_case(side: str) -> dict[str, list[str]]:
        return _casefolded(gt_images if side == "pred" else pred_images)

    for key in sorted(pred_images.keys() | gt_images.keys()):
        preds, gts, weights = pred_images.get(key, []), gt_images.get(key, []), weight_images.get(key, [])
        problems = [
            _ambiguity(side, paths) for side, paths in (("pred", preds), ("gt", gts)) if len(paths) > 1
        ]
        lonely = "pred" if not gts else "gt" if not preds else None
        if lonely and (
            twins := [other for other in other_side_by_case(lonely).get(key.casefold(), []) if other != key]
        ):
            other_side = "gt" if lonely == "pred" else "pred"
            problems.append(f"{other_side} has {', '.join(twins)}, which differs only in case")
        pairs.append(
            Pair(
                name=key,
                pred_file=preds[0] if preds else None,
                gt_file=gts[0] if gts else None,
                weight_file=weights[0] if len(weights) == 1 else None,
                problem="; ".join(problems) or None,
                weight_problem=_ambiguity("weight map", weights) if len(weights) > 1 else None,
            )
        )
    pairs = _note_files_reached_twice(pairs)
    # One row per unreadable folder, both sides' reasons in it: a row per side gave two rows of one
    # name where both sides failed at the same relative path.
    unreadable: dict[str, list[str]] = {}
    for side, scan in (("pred", pred_scan), ("gt", gt_scan)):
        for folder, reason in scan.unreadable:
            unreadable.setdefault(folder, []).append(f"cannot read {side} folder {folder}: {reason}")
    for folder, reasons in unreadable.items():
        problem = "; ".join(reasons) + "; its images are not in this report"
        pairs.append(Pair(name=f"{folder}/", pred_file=None, gt_file=None, problem=problem))
    if not any(pair.pred and pair.gt for pair in pairs):
        look_alikes = [
            (key, twin)
            for key in sorted(pred_images)
            for twin in other_side_by_case("pred").get(key.casefold(), [])
        ]
        example = f", e.g. {look_alikes[0][0]} and {look_alikes[0][1]}" if look_alikes else ""
        hint = f" ({len(look_alikes)} would match if case were ignored{example})" if look_alikes else ""
        raise LossctlError(
            f"no prediction in {pred_root} has a ground truth with the same relative path in {gt_root}{hint}"
        )
    return Pairing(pairs=pairs, skipped=[Path(path) for path in pred_scan.skipped + gt_scan.skipped])


def _file_identity(path: str | None) -> int | None:
    """One integer per file (device and inode), the same for every name that reaches it."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev << 64 | stat.st_ino


def _note_files_reached_twice(pairs: list[Pair]) -> list[Pair]:
    """Note the pairs whose files are one file reached under two names (a symbolic or hard link):
    a prediction that is also another pair's prediction, or a prediction that is its ground truth."""
    sides = ("pred", "gt")
    first_name: dict[int, str] = {}  # 2 * file identity + side: one int per file, for 20,000 pairs
    sharing: dict[int, list[str]] = {}  # only files reached more than once
    same_file: set[str] = set()
    for pair in pairs:
        pred_id, gt_id = _file_identity(pair.pred_file), _file_identity(pair.gt_file)
        if pred_id is not None and pred_id == gt_id:
            same_file.add(pair.name)
        for side, identity in enumerate((pred_id, gt_id)):
            if identity is None:
                continue
            key = 2 * identity + side
            if (first := first_name.setdefault(key, pair.name)) != pair.name:
                sharing.setdefault(key, [first]).append(pair.name)
    notes: dict[str, list[str]] = {name: ["pred and gt are the same file"] for name in same_file}
    for key, names in sharing.items():
        side = sides[key % 2]
        for name in names:
            others = ", ".join(other for other in names if other != name)
            notes.setdefault(name, []).append(f"{side} is the same file as the {side} of {others}")
    return [replace(pair, notes=tuple(notes[pair.name])) if pair.name in notes else pair for pair in pairs]


def _png_bit_depth_and_color_type(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">BB", data[24:26])


def _decode_with_opencv(data: bytes, keep_first_channel: bool, bits: int | None = None) -> DecodedImage:
    """Decode with OpenCV the files Pillow reads wrongly: 16-bit colour PNG and TIFF (Pillow keeps
    only 8 bits) and TIFF that Pillow cannot open (float colour, 16-bit gray with alpha). ``bits``:
    the bits per sample the file declares, where known; OpenCV reads some TIFF layouts through
    libtiff's 8-bit RGBA interface, and those are refused rather than scored at 8 bits."""
    import cv2
    import cv2.utils.logging

    # OpenCV logs decoder errors to stderr; lossctl reports them once, in the pair's row.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        reason = str(error).strip().splitlines()
        raise ImageReadError(
            f"OpenCV cannot decode it ({reason[-1].strip() if reason else 'unknown error'})"
        ) from None
    if pixels is None:
        raise ImageReadError("not a decodable image")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    elif keep_first_channel:
        pixels = pixels[:, :, :1]
    else:
        pixels = pixels[:, :, 2::-1]  # BGR(A) to RGB, alpha dropped
    pixels = np.ascontiguousarray(pixels)
    if bits is not None and pixels.dtype.kind == "u" and pixels.dtype.itemsize * 8 < bits:
        raise ImageReadError(
            f"OpenCV reads this {bits}-bit TIFF layout at {pixels.dtype.itemsize * 8} bits only "
            "(save it as 16-bit PNG or as a TIFF without extra channels)"
        )
    if pixels.dtype == np.uint16:
        return DecodedImage(pixels, 65535.0, 16)
    if pixels.dtype == np.uint8:
        return DecodedImage(pixels, 255.0, 8)
    if pixels.dtype in (np.float32, np.float64):
        return DecodedImage(pixels, 1.0, pixels.dtype.itemsize * 8)
    raise ImageReadError(f"unsupported pixel type {pixels.dtype}")


def _tiff_bits_per_sample(image: Image.Image) -> int:
    return _largest(getattr(image, "tag_v2", {}).get(258, 8))


def _largest(bits: int | tuple[int, ...]) -> int:
    """TIFF's BitsPerSample, one value or one per sample, as its largest."""
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _tiff_header_bits_per_sample(data: bytes) -> int | None:
    """The bits per sample a TIFF's first directory declares, read with Pillow's directory parser
    (which works where Pillow has no mode for the layout); None where it cannot be read."""
    from PIL import TiffImagePlugin

    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = io.BytesIO(data)
        stream.seek(directory.next)
        directory.load(stream)
        return _largest(directory.get(258, 1))
    except Exception:  # a damaged directory: OpenCV's own reading then decides
        return None


# Formats whose Pillow plugins decode into whatever image memory the file object holds.
DECODED_IN_PLACE_FORMATS = {"PNG", "JPEG"}
DECODED_IN_PLACE_CHANNELS = {"L": 1, "RGB": 4, "RGBA": 4, "RGBX": 4}  # Pillow stores RGB as RGBX
# Larger arrays are fresh memory from the kernel for every image (above malloc's mapping threshold:
# 64 MiB where the engine raises it, on a CPU; at most 32 MiB by default), faulted in page by page
# while Pillow decodes into them: a 6000x6000 RGB pair decoded 30-80% slower into them than into
# Pillow's own reused blocks. At 4096x4096 (64 MiB) neither way was slower.
DECODED_IN_PLACE_MAX_BYTES = 1 << 26


def _load_in_place(image: Image.Image, data: bytes) -> np.ndarray | None:
    """Load ``image`` (opened from ``data``), decoding it straight into a NumPy array of Pillow's
    own pixel layout (``(H, W, 1)``, or ``(H, W, 4)`` for the RGB modes), or return None having
    loaded it into Pillow's own memory, where its format, mode or size is not one decoded in place
    or this Pillow does not allow it.

    Pillow decodes into the image memory it finds on the file object, so memory mapped over an
    array (what ``Image.frombuffer`` does for these layouts) receives the pixels without the copy
    that ``Image.tobytes`` (and so ``np.asarray``) makes afterwards. The copy costs little on one
    core but holds the GIL in part: two threads decoding 512x512 RGB PNG ran 10-15% faster.

    Either way a PNG whose data ends before its last row is refused (see :func:`_load_checked`).
    """
    channels = DECODED_IN_PLACE_CHANNELS.get(image.mode)
    width, height = image.size
    if (
        channels is None
        or image.format not in DECODED_IN_PLACE_FORMATS
        or height * width * channels > DECODED_IN_PLACE_MAX_BYTES
    ):
        _load_checked(image, data)
        return None
    return _refusing_unwritten_rows(
        image, data, lambda opened, row, pattern: _decode_into(opened, channels, row, pattern)
    )


def _load_checked(image: Image.Image, data: bytes) -> None:
    """``image.load()`` into Pillow's own memory, refusing a PNG whose data ends before its last
    row (see :func:`_refusing_unwritten_rows`)."""
    if image.format != "PNG":
        image.load()
        return
    _refusing_unwritten_rows(image, data, _decode_into_pillow_memory)


Decoding = Callable[[Image.Image, int | None, bytes], tuple[np.ndarray | None, bool]]


def _refusing_unwritten_rows(image: Image.Image, data: bytes, decode: Decoding) -> np.ndarray | None:
    """What ``decode(image, marked_row, pattern)`` gives (the pixels, and whether the marked row
    still holds the pattern), refusing a file that leaves the row it writes last unwritten.

    A PNG whose data ends before its last row (a complete compressed stream of too few rows) is
    read by Pillow without an error, the missing rows left as they were; the row decoded last is
    therefore filled with a pattern first, and a file that leaves it there twice, under two
    different patterns, is refused (no decoded row equals both). Under Pillow's
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` such files are accepted as Pillow accepts them.
    """
    last_row = None if ImageFile.LOAD_TRUNCATED_IMAGES else _row_decoded_last(image)
    pixels, unwritten = decode(image, last_row, UNWRITTEN_ROW_PATTERNS[0])
    if not unwritten:
        return pixels
    with Image.open(io.BytesIO(data)) as again:
        _, unwritten = decode(again, last_row, UNWRITTEN_ROW_PATTERNS[1])
    if unwritten:
        raise ImageReadError("the image data ends before its last row (a damaged or badly written file)")
    return pixels


UNWRITTEN_ROW_PATTERNS = (b"\x5a\xa5", b"\xa5\x5a")  # repeated along the row decoded last


def _row_decoded_last(image: Image.Image) -> int | None:
    """The row Pillow's decoder writes last: the last row, or for an Adam7-interlaced PNG the last
    odd row (the seventh pass fills the odd rows, after every other pass); None for an interlaced
    PNG of one row, whose last pass writes only some of its pixels."""
    height = image.size[1]
    if image.format == "PNG" and image.info.get("interlace"):
        return None if height < 2 else height - 1 if (height - 1) % 2 else height - 2
    return height - 1


def _repeated(pattern: bytes, size: int) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


def _holds_pattern(row: np.ndarray, pattern: bytes) -> bool:
    return row.tobytes() == _repeated(pattern, row.size)


def _decode_into(
    image: Image.Image, channels: int, marked_row: int | None, pattern: bytes
) -> tuple[np.ndarray | None, bool]:
    """Decode ``image`` into a zeroed array (``marked_row`` filled with ``pattern``): the array, or
    None having loaded it the usual way where this Pillow does not allow decoding into it; and
    whether the marked row still holds the pattern.

    Zeroed, as Pillow's own image memory is: under ``LOAD_TRUNCATED_IMAGES`` a truncated file leaves
    rows unwritten, and they must not hold another image's pixels."""
    width, height = image.size
    pixels = np.zeros((height, width, channels), dtype=np.uint8)
    if marked_row is not None:
        row = pixels[marked_row].reshape(-1)
        row[:] = np.frombuffer(_repeated(pattern, row.size), dtype=np.uint8)
    try:
        memory = Image.core.map_buffer(pixels, image.size, "raw", 0, (image.mode, 0, 1))
        image.im = memory
    except (AttributeError, TypeError, ValueError):  # a Pillow without this internal interface
        image.load()
        return None, False
    image.load()
    if image.im is not memory:
        return None, False
    return pixels, marked_row is not None and _holds_pattern(pixels[marked_row], pattern)


def _decode_into_pillow_memory(
    image: Image.Image, marked_row: int | None, pattern: bytes
) -> tuple[None, bool]:
    """Load ``image`` into image memory of its own mode whose ``marked_row`` holds ``pattern`` (as
    raw data of that mode); whether the row still holds it. Any mode, where
    :func:`_decode_into` has only the layouts NumPy shares."""
    if marked_row is None:
        image.load()
        return None, False
    width = image.size[0]
    row_bytes = len(Image.new(image.mode, (width, 1)).tobytes())
    canvas = Image.new(image.mode, image.size)
    canvas.paste(Image.frombytes(image.mode, (width, 1), _repeated(pattern, row_bytes)), (0, marked_row))
    box = (0, marked_row, width, marked_row + 1)
    marked = canvas.crop(box).tobytes()
    image.im = canvas.im
    image.load()
    return None, image.im is canvas.im and image.crop(box).tobytes() == marked


def _decode_with_pillow(image: Image.Image, pixels: np.ndarray | None = None) -> DecodedImage:
    """The :class:`DecodedImage` of a loaded ``image``; ``pixels``: what :func:`_load_in_place`
    decoded it into, if anything."""
    mode = image.mode
    if pixels is not None:
        if pixels.shape[2] == 1:
            return DecodedImage(pixels, 255.0, 8)
        import cv2

        return DecodedImage(cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB), 255.0, 8)
    if mode in MODES_CONVERTED_TO_RGB:
        image, mode = image.convert("RGB"), "RGB"
    if mode == "1":
        return DecodedImage(np.asarray(image, dtype=np.uint8)[:, :, None], 1.0, 1)
    if mode in ("L", "LA", "La"):
        return DecodedImage(np.asarray(image.getchannel(0))[:, :, None], 255.0, 8)
    if mode in RGB_MODES:
        return DecodedImage(np.ascontiguousarray(np.asarray(image)[:, :, :3]), 255.0, 8)
    if mode in SIXTEEN_BIT_MODES:
        return DecodedImage(np.asarray(image).astype(np.uint16)[:, :, None], 65535.0, 16)
    if mode == "F":
        return DecodedImage(np.asarray(image, dtype=np.float32)[:, :, None], 1.0, 32)
    raise ImageReadError(f"unsupported image mode {mode!r}")


DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb guard, about 89.5 Mpx
max_pixels: int = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> None:
    """Raise (or lower) the largest image decoded, ``--max-pixels``; None restores Pillow's default."""
    global max_pixels
    max_pixels = DEFAULT_MAX_PIXELS if limit is None else limit
    # Pillow refuses images over twice its limit before lossctl could apply its own.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, DEFAULT_MAX_PIXELS)


def _check_pixels(width: int, height: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(a decompression-bomb guard; raise it with --max-pixels)"
        )


PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what a bad file is documented to raise
# What damaged files have made Pillow's plugins raise besides (fuzzed TIFF: OverflowError). Not a
# catch-all: a TypeError or NameError in lossctl's own code must stay an internal error.
DAMAGED_FILE_ERRORS = (OverflowError, struct.error, IndexError, KeyError, ZeroDivisionError, RecursionError)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextmanager
def _decoding_errors_as_read_errors() -> Iterator[None]:
    """What decoding a damaged file raises, as an :class:`ImageReadError` with a one-line reason:
    such a file fails its own pair, never the run."""
    try:
        yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its limit
        raise ImageReadError(
            f"over the limit of {max_pixels} pixels (a decompression-bomb guard; raise it with --max-pixels)"
        ) from None
    except PILLOW_ERRORS as error:
        raise ImageReadError(_first_line(error)) from error
    except MemoryError:
        raise ImageReadError("not enough memory to decode it") from None
    except DAMAGED_FILE_ERRORS as error:
        raise ImageReadError(f"cannot decode it ({type(error).__name__}: {_first_line(error)})") from error


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"cannot read file: {error.strerror or error}") from error


def decode_image(path: Path) -> DecodedImage:
    """Read one image file. Raises :class:`ImageReadError` with a one-line reason."""
    data = _read_file(path)
    with _decoding_errors_as_read_errors():
        return _decode(data)


def _decode(data: bytes) -> DecodedImage:
    header = _png_bit_depth_and_color_type(data)
    if header and header[0] == 16 and header[1] in PNG_COLOR_TYPES_PILLOW_TRUNCATES:
        _check_pixels(*struct.unpack(">II", data[16:24]))
        return _decode_with_opencv(data, keep_first_channel=header[1] == PNG_GRAY_ALPHA)
    if (graymap := netpbm.read_header(data)) is not None:
        _check_pixels(graymap.width, graymap.height)
        bit_depth = 8 if graymap.maxval <= 255 else 16
        return DecodedImage(netpbm.read_levels(data, graymap), float(graymap.maxval), bit_depth)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(*image.size)
            if (
                image.format == "TIFF"
                and image.mode in RGB_MODES
                and (bits := _tiff_bits_per_sample(image)) > 8
            ):
                return _decode_with_opencv(data, keep_first_channel=False, bits=bits)
            return _decode_with_pillow(image, _load_in_place(image, data))
    except UnidentifiedImageError as error:
        if data.startswith(TIFF_SIGNATURES):  # e.g. float colour TIFF, which Pillow cannot open
            return _decode_with_opencv(
                data, keep_first_channel=False, bits=_tiff_header_bits_per_sample(data)
            )
        raise ImageReadError("not a recognised image file") from error


def _decode_side(path: Path, side: str) -> DecodedImage:
    try:
        return decode_image(path)
    except ImageReadError as error:
        raise ImageReadError(f"{side} {path.name}: {error}") from error


def _load_weight(path: Path | None, height: int, width: int) -> tuple[np.ndarray | None, str | None]:
    if path is None:
        return None, "no weight map with this name"
    try:
        weight = decode_image(path)
    except ImageReadError as error:
        return None, f"weight map {path.name}: {error}"
    if weight.channels != 1:
        return None, f"weight map {path.name} is not grayscale"
    if (weight.height, weight.width) != (height, width):
        return None, f"weight map {path.name} is {weight.width}x{weight.height}, the images {width}x{height}"
    if not weight.pixels.any():
        return None, f"weight map {path.name} is all zero"
    # Integer maps are scaled to [0, 1]; a float map (TIFF) must already hold weights there: NaN
    # made weighted_tv NaN, and negative weights a ratio that measures nothing, without a word.
    if weight.pixels.dtype.kind == "f" and not (
        np.isfinite(weight.pixels).all() and weight.pixels.min() >= 0 and weight.pixels.max() <= 1
    ):
        return None, f"weight map {path.name} has values outside [0, 1] (NaN, infinite or negative, or over 1)"
    return (weight.pixels.astype(np.float32) / np.float32(weight.scale)), None


def decode_scores(path: Path) -> np.ndarray:
    """A segmentation prediction: a ``.npy`` array ``C x H x W`` of probabilities or logits."""
    scores = _load_npy(path)
    if scores is None:
        raise ImageReadError("not a .npy array (an .npz archive or another file saved under that name)")
    if scores.ndim != 3:
        raise ImageReadError(f"a segmentation prediction must be C x H x W; this array is {scores.shape}")
    if 0 in scores.shape:
        raise ImageReadError(
            f"a segmentation prediction needs classes and pixels; this array is {scores.shape}"
        )
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ImageReadError(f"a segmentation prediction must hold numbers; this array holds {scores.dtype}")
    return np.ascontiguousarray(scores, dtype=np.float64 if scores.dtype == np.float64 else np.float32)


def decode_label_map(path: Path) -> tuple[np.ndarray, int]:
    """A ground-truth label map: single-channel class indices (8- or 16-bit; a palette PNG's indices;
    a PGM's samples as stored, whatever its maxval)."""
    data = _read_file(path)
    with _decoding_errors_as_read_errors():
        labels = _label_levels(data)
    bit_depth = 1 if labels.dtype == bool else 16 if labels.dtype.itemsize > 1 else 8
    return labels.astype(np.int64), bit_depth


def _label_levels(data: bytes) -> np.ndarray:
    if (graymap := netpbm.read_header(data)) is not None:
        if graymap.channels != 1:
            raise ImageReadError(
                "a label map must be single-channel class indices; this image is a PPM pixmap"
            )
        _check_pixels(graymap.width, graymap.height)
        return netpbm.read_levels(data, graymap)[:, :, 0]
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(*image.size)
            _load_checked(image, data)
            if image.mode not in LABEL_MODES:
                raise ImageReadError(
                    f"a label map must be single-channel class indices; this image is {image.mode}"
                )
            return np.asarray(image)
    except UnidentifiedImageError:
        raise ImageReadError("not a recognised image file") from None


def score_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """The shape and dtype of a ``.npy`` array, from its header (the data is mapped, not read);
    None when it cannot be read."""
    try:
        scores = _load_npy(path, mmap_mode="r")
    except ImageReadError:
        return None
    return None if scores is None else (scores.shape, scores.dtype)


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray | None:
    """``np.load`` of a ``.npy`` file without pickles; None for an ``.npz`` archive (which np.load
    also opens). Raises :class:`ImageReadError` for a file it cannot read: a damaged header makes
    NumPy raise more than its documented errors (a tokenizer error, for one)."""
    try:
        loaded = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except MemoryError:
        raise ImageReadError("not enough memory to read it") from None
    except Exception as error:
        raise ImageReadError(f"not a readable .npy array ({_first_line(error)})") from None
    if not isinstance(loaded, np.ndarray):
        if hasattr(loaded, "close"):
            loaded.close()
        return None
    return loaded


def first_class_count(pairs: Sequence[Pair]) -> int | None:
    """The class count of the first ``.npy`` prediction (by name) that can be read, from its header
    (one with no classes or no pixels is an error of its own pair, not the run's count)."""
    for pair in pairs:
        if pair.is_segmentation and (header := score_header(pair.pred)) is not None:
            shape, _ = header
            if len(shape) == 3 and 0 not in shape:
                return int(shape[0])
    return None


def load_segmentation(pair: Pair) -> LoadedSegmentation:
    """Decode a ``.npy`` prediction and its label map; raise :class:`ImageReadError` on a mismatch."""
    assert pair.pred is not None and pair.gt is not None, "load_segmentation needs a matched pair"
    try:
        scores = decode_scores(pair.pred)
    except ImageReadError as error:
        raise ImageReadError(f"pred {pair.pred.name}: {error}") from None
    if pair.gt.suffix.lower() == SCORE_EXTENSION:
        raise ImageReadError(f"gt {pair.gt.name}: the ground truth of a segmentation must be a label image")
    try:
        labels, bit_depth = decode_label_map(pair.gt)
    except ImageReadError as error:
        raise ImageReadError(f"gt {pair.gt.name}: {error}") from None
    if scores.shape[1:] != labels.shape:
        raise ImageReadError(
            f"size mismatch: pred is {scores.shape[2]}x{scores.shape[1]}, gt is {labels.shape[1]}x{labels.shape[0]}"
        )
    return LoadedSegmentation(pair, scores, labels, bit_depth)


def load_pair(pair: Pair, with_weights: bool = False) -> LoadedPair | LoadedSegmentation:
    """Decode both sides of a pair and check that they can be compared.

    A ``.npy`` prediction makes a segmentation pair (:func:`load_segmentation`). Raises
    :class:`ImageReadError` when a file is unreadable or the sizes differ. A missing or unusable
    weight map is not an error for the pair: it is reported in ``weight_problem``.
    """
    assert pair.pred is not None and pair.gt is not None, "load_pair needs a matched pair"
    if pair.is_segmentation:
        return load_segmentation(pair)
    if pair.gt.suffix.lower() == SCORE_EXTENSION:
        raise ImageReadError(f"gt {pair.gt.name}: a .npy ground truth needs a .npy prediction")
    pred = _decode_side(pair.pred, "pred")
    gt = _decode_side(pair.gt, "gt")
    if (pred.height, pred.width) != (gt.height, gt.width):
        raise ImageReadError(
            f"size mismatch: pred is {pred.width}x{pred.height}, gt is {gt.width}x{gt.height}"
        )
    if not with_weights:
        return LoadedPair(pair, pred, gt)
    if pair.weight_problem:
        return LoadedPair(pair, pred, gt, None, pair.weight_problem)
    weight, problem = _load_weight(pair.weight, gt.height, gt.width)
    return LoadedPair(pair, pred, gt, weight, problem)
