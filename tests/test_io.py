"""Pairing folders and decoding every supported format and mode as METRICS.md requires."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

import lossctl.io
from lossctl.engine import EvalConfig, evaluate
from lossctl.errors import ImageReadError, LossctlError
from lossctl.io import decode_image, decode_label_map, load_pair, pair_folders
from lossctl.metrics import parse_metric_names, resolve_params

from .conftest import png_bytes, random_rgb, save_image


def test_pairs_match_by_relative_path_without_extension(folders, rng):
    pred, gt = folders
    save_image(pred / "a" / "x.png", random_rgb(rng))
    save_image(gt / "a" / "x.jpg", random_rgb(rng))
    save_image(pred / "b.png", random_rgb(rng))
    save_image(gt / "b.bmp", random_rgb(rng))
    (pred / "notes.txt").write_text("not an image")
    pairing = pair_folders(pred, gt)
    assert [(p.name, p.pred.name, p.gt.name, p.status) for p in pairing.pairs] == [
        ("a/x", "x.png", "x.jpg", "pending"),
        ("b", "b.png", "b.bmp", "pending"),
    ]
    assert [path.name for path in pairing.skipped] == ["notes.txt"]


def test_hidden_files_and_folders_are_skipped_and_counted(folders, rng):
    """Notebooks' .ipynb_checkpoints/ and macOS's ._x.png made unmatched rows and exit 3 in CI."""
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "x.png", clean)
    save_image(gt / "x.png", clean)
    save_image(pred / ".ipynb_checkpoints" / "x-checkpoint.png", clean)
    save_image(pred / "sub" / "._x.png", clean)
    save_image(gt / "sub" / "y.png", clean)
    save_image(pred / "sub" / "y.png", clean)
    pairing = pair_folders(pred, gt)
    assert [(pair.name, pair.status) for pair in pairing.pairs] == [("sub/y", "pending"), ("x", "pending")]
    assert sorted(path.name for path in pairing.skipped) == ["._x.png", ".ipynb_checkpoints"]


def test_unmatched_files_on_either_side_are_reported_not_dropped(folders, rng):
    pred, gt = folders
    save_image(pred / "both.png", random_rgb(rng))
    save_image(gt / "both.png", random_rgb(rng))
    save_image(pred / "only_pred.png", random_rgb(rng))
    save_image(gt / "sub" / "only_gt.png", random_rgb(rng))
    statuses = {p.name: p.status for p in pair_folders(pred, gt).pairs}
    assert statuses == {"both": "pending", "only_pred": "unmatched", "sub/only_gt": "unmatched"}


def test_two_files_with_one_name_are_an_ambiguity_naming_both(folders, rng):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(pred / "x.jpg", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    save_image(gt / "y.png", random_rgb(rng))
    save_image(pred / "y.png", random_rgb(rng))
    save_image(gt / "z.png", random_rgb(rng))  # and on the ground truth's side
    save_image(gt / "z.jpg", random_rgb(rng))
    save_image(pred / "z.png", random_rgb(rng))
    (pair_x, pair_y, pair_z) = pair_folders(pred, gt).pairs
    assert pair_x.status == "error"
    assert pair_x.problem == "ambiguous pred: 2 files share this name (x.jpg, x.png)"
    assert pair_y.status == "pending"
    assert pair_z.status == "error"
    assert pair_z.problem == "ambiguous gt: 2 files share this name (z.jpg, z.png)"


def test_upper_case_extensions_are_images(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    Image.fromarray(clean).save(pred / "a.PNG", format="PNG")
    Image.fromarray(clean).save(pred / "b.JPG", format="JPEG")
    save_image(gt / "a.png", clean)
    save_image(gt / "b.png", clean)
    pairing = pair_folders(pred, gt)
    assert [(pair.name, pair.status) for pair in pairing.pairs] == [("a", "pending"), ("b", "pending")]
    assert pairing.skipped == []


def test_folder_errors(tmp_path, folders, rng):
    pred, gt = folders
    with pytest.raises(LossctlError, match="prediction folder not found"):
        pair_folders(tmp_path / "missing", gt)
    with pytest.raises(LossctlError, match="no images found in prediction folder"):
        pair_folders(pred, gt)
    save_image(pred / "a.png", random_rgb(rng))
    with pytest.raises(LossctlError, match="no images found in ground-truth folder"):
        pair_folders(pred, gt)
    save_image(gt / "b.png", random_rgb(rng))
    with pytest.raises(LossctlError, match="no prediction .* has a ground truth"):
        pair_folders(pred, gt)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(LossctlError, match="not a folder"):
        pair_folders(tmp_path / "file.png", gt)


def test_8_bit_modes(tmp_path, rng):
    rgb = random_rgb(rng)
    gray = rgb[:, :, 0]
    rgba = np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)])
    cases = {
        "rgb.png": (rgb, None, rgb),
        "gray.png": (gray, None, gray[:, :, None]),
        "rgba.png": (rgba, "RGBA", rgb),  # alpha dropped, not composited
        "la.png": (np.dstack([gray, gray]), "LA", gray[:, :, None]),
        "rgb.bmp": (rgb, None, rgb),
        "rgb.ppm": (rgb, None, rgb),
        "gray.pgm": (gray, None, gray[:, :, None]),
        "rgb.tif": (rgb, None, rgb),
        "rgb_lossless.webp": (rgb, None, rgb),
    }
    for name, (pixels, mode, expected) in cases.items():
        path = tmp_path / name
        if name.endswith(".webp"):
            Image.fromarray(pixels).save(path, lossless=True)
        else:
            save_image(path, pixels, mode)
        decoded = decode_image(path)
        assert (decoded.bit_depth, decoded.scale) == (8, 255.0), name
        np.testing.assert_array_equal(decoded.pixels, expected, err_msg=name)


def _handmade_png(pixels: np.ndarray, interlaced: bool = False, rows_stored: int | None = None) -> bytes:
    """An 8-bit PNG of ``(H, W)`` or ``(H, W, 3)`` uint8 ``pixels``, every scanline unfiltered:
    Adam7-interlaced if ``interlaced`` (Pillow reads interlaced PNG but does not write it); with
    only the first ``rows_stored`` scanlines in its data if given, negative: all but the last ones (a
    file Pillow reads without error)."""
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    # Adam7: (first row, first column, row step, column step) of each pass
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]  # fmt: skip
    scanlines = (
        [row for first_row, first_column, row_step, column_step in passes if first_column < width
         for row in pixels[first_row::row_step, first_column::column_step]]
        if interlaced
        else list(pixels)
    )[:rows_stored]  # fmt: skip
    raw = b"".join(b"\x00" + row.tobytes() for row in scanlines)
    return png_bytes(width, height, 8, color_type, raw, interlaced)


def test_png_and_jpeg_decoded_into_lossctl_s_own_memory_equal_pillow_s_pixels(tmp_path, rng):
    """8-bit PNG and JPEG are decoded by Pillow straight into lossctl's array (see
    ``io._load_in_place``); every variant must give what Pillow's own image holds."""
    rgb = random_rgb(rng, 37, 41)
    gray = rgb[:, :, 1].copy()
    variants = {
        "rgb.png": lambda path: Image.fromarray(rgb).save(path),
        "gray.png": lambda path: Image.fromarray(gray).save(path),
        "rgba.png": lambda path: Image.fromarray(np.dstack([rgb, gray])).save(path),
        "rgb_transparency.png": lambda path: Image.fromarray(rgb).save(path, transparency=(1, 2, 3)),
        "gray_transparency.png": lambda path: Image.fromarray(gray).save(path, transparency=7),
        "rgb_interlaced.png": lambda path: path.write_bytes(_handmade_png(rgb, interlaced=True)),
        "gray_interlaced.png": lambda path: path.write_bytes(_handmade_png(gray, interlaced=True)),
        "animated.png": lambda path: Image.fromarray(rgb).save(
            path, save_all=True, append_images=[Image.fromarray(255 - rgb)]
        ),
        "one_pixel.png": lambda path: Image.fromarray(rgb[:1, :1]).save(path),
        "rgb.jpg": lambda path: Image.fromarray(rgb).save(path, quality=90),
        "gray.jpg": lambda path: Image.fromarray(gray).save(path),
        "progressive.jpg": lambda path: Image.fromarray(rgb).save(path, progressive=True),
        "cmyk.jpg": lambda path: Image.fromarray(rgb).convert("CMYK").save(path),
    }
    for name, write in variants.items():
        path = tmp_path / name
        write(path)
        with Image.open(path) as image:
            expected = np.asarray(image.convert("L" if image.mode == "L" else "RGB"))
        decoded = decode_image(path)
        assert decoded.pixels.flags.c_contiguous, name
        np.testing.assert_array_equal(decoded.pixels, expected.reshape(decoded.pixels.shape), err_msg=name)
        assert decoded.pixels.shape[2] == (1 if expected.ndim == 2 else 3), name
    np.testing.assert_array_equal(decode_image(tmp_path / "rgb_interlaced.png").pixels, rgb)


def test_8_bit_png_is_decoded_in_place_and_falls_back_where_pillow_cannot(tmp_path, rng, monkeypatch):
    rgb = random_rgb(rng)
    Image.fromarray(rgb).save(tmp_path / "x.png")

    def no_copies(*args, **kwargs):
        raise AssertionError("decoded in place: Image.tobytes is not needed")

    with monkeypatch.context() as patched:
        patched.setattr(Image.Image, "tobytes", no_copies)
        np.testing.assert_array_equal(decode_image(tmp_path / "x.png").pixels, rgb)

    from lossctl import io as lossctl_io

    calls = []
    with monkeypatch.context() as patched:  # larger than decoded in place: Pillow's own memory
        patched.setattr(lossctl_io, "DECODED_IN_PLACE_MAX_BYTES", rgb.shape[0] * rgb.shape[1] * 4 - 1)
        patched.setattr(Image.core, "map_buffer", lambda *args: calls.append(args))
        np.testing.assert_array_equal(decode_image(tmp_path / "x.png").pixels, rgb)
    assert not calls

    def no_mapping(*args, **kwargs):
        raise TypeError("this Pillow cannot map a buffer")

    monkeypatch.setattr(Image.core, "map_buffer", no_mapping)
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png").pixels, rgb)


@pytest.mark.parametrize("channels", [1, 3])
def test_rows_a_png_does_not_store_are_zero_whatever_was_decoded_before(tmp_path, rng, channels, monkeypatch):
    """Pillow leaves unwritten the rows a PNG's data lacks (it reads such a file without error, and
    any truncated file under LOAD_TRUNCATED_IMAGES); lossctl's array must not keep another image's
    pixels there."""
    shape = (37, 41) if channels == 1 else (37, 41, 3)
    pixels = rng.integers(1, 256, shape, dtype=np.uint8)
    (tmp_path / "short.png").write_bytes(_handmade_png(pixels, rows_stored=18))
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    bright = np.full(shape, 200, dtype=np.uint8)
    Image.fromarray(bright).save(tmp_path / "bright.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for name in ("short.png", "cut.png"):
        decode_image(tmp_path / "bright.png")  # leaves freed memory full of 200s
        decoded = decode_image(tmp_path / name).pixels
        with Image.open(tmp_path / name) as image:
            expected = np.asarray(image).reshape(decoded.shape)
        np.testing.assert_array_equal(decoded, expected, err_msg=name)
    short = decode_image(tmp_path / "short.png").pixels
    np.testing.assert_array_equal(short[:18], pixels[:18].reshape(short[:18].shape))
    assert not short[18:].any()


def test_palette_images_are_expanded_to_rgb(tmp_path, rng):
    rgb = random_rgb(rng)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    palette_image.save(tmp_path / "p.png")
    decoded = decode_image(tmp_path / "p.png")
    np.testing.assert_array_equal(decoded.pixels, np.asarray(palette_image.convert("RGB")))


def test_one_bit_images_scale_by_one(tmp_path, rng):
    mask = rng.integers(0, 2, size=(16, 16)).astype(bool)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    decoded = decode_image(tmp_path / "mask.png")
    assert (decoded.bit_depth, decoded.scale) == (1, 1.0)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], mask.astype(np.uint8))


def test_16_bit_grayscale_png_tiff_and_pgm_keep_16_bits(tmp_path, rng):
    gray16 = rng.integers(0, 65536, size=(16, 20), dtype=np.uint16)
    for name in ("g16.png", "g16.tif", "g16.pgm"):
        Image.fromarray(gray16).save(tmp_path / name)
        decoded = decode_image(tmp_path / name)
        assert (decoded.bit_depth, decoded.scale) == (16, 65535.0), name
        np.testing.assert_array_equal(decoded.pixels[:, :, 0], gray16, err_msg=name)


def test_16_bit_rgb_png_and_tiff_keep_16_bits(tmp_path, rng):
    rgb16 = rng.integers(0, 65536, size=(16, 20, 3), dtype=np.uint16)
    save_image(tmp_path / "c16.png", rgb16)
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    rgba16 = np.dstack([rgb16, rgb16[:, :, :1]])
    cv2.imwrite(str(tmp_path / "c16a.png"), rgba16[:, :, [2, 1, 0, 3]])
    for name in ("c16.png", "c16.tif", "c16a.png"):
        decoded = decode_image(tmp_path / name)
        assert (decoded.bit_depth, decoded.scale) == (16, 65535.0), name
        np.testing.assert_array_equal(decoded.pixels, rgb16, err_msg=name)


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_png_whose_data_ends_before_its_last_row_is_an_error_not_black_rows(
    tmp_path, rng, channels, interlaced
):
    """Pillow reads it without an error and leaves the missing rows black: the pair would score as
    if the model had drawn them. OpenCV refuses the same file at 16 bits."""
    shape = (37, 41) if channels == 1 else (37, 41, 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    complete = _handmade_png(pixels, interlaced=interlaced)
    (tmp_path / "complete.png").write_bytes(complete)
    np.testing.assert_array_equal(decode_image(tmp_path / "complete.png").pixels.reshape(shape), pixels)
    (tmp_path / "short.png").write_bytes(_handmade_png(pixels, interlaced=interlaced, rows_stored=-3))
    with pytest.raises(ImageReadError, match="the image data ends before its last row"):
        decode_image(tmp_path / "short.png")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append((data[position + 4 : position + 8], data[position + 8 : position + 8 + length]))
        position += length + 12
    return chunks


def _without_last_rows(png: bytes, rows: int) -> bytes:
    """``png`` (not interlaced) with its last ``rows`` scanlines cut from a still complete
    compressed stream: the file Pillow reads without an error, the missing rows left as they were."""
    chunks = _png_chunks(png)
    height = struct.unpack(">I", chunks[0][1][4:8])[0]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = len(raw) // height
    out, idat_written = b"\x89PNG\r\n\x1a\n", False
    for kind, body in chunks:
        if kind == b"IDAT":
            if idat_written:
                continue
            body, idat_written = zlib.compress(raw[: (height - rows) * stride]), True
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return out


def _png_of_mode(mode: str, rng, size=(29, 23), **save) -> tuple[bytes, Image.Image]:
    height, width = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(1, 65536, size, dtype=np.uint16))
    elif mode == "1":
        image = Image.fromarray(rng.integers(0, 2, size, dtype=np.uint8) * 255).convert("1")
    elif mode == "P":
        image = Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8)).quantize(200)
    else:
        channels = len(Image.new(mode, (1, 1)).getbands())
        image = Image.fromarray(
            rng.integers(1, 256, (height, width, channels), dtype=np.uint8).squeeze(), mode
        )
    stream = io.BytesIO()
    image.save(stream, "PNG", **save)
    return stream.getvalue(), image


SHORT_PNG_MODES = ["P", "LA", "I;16", "1", "L", "RGB"]


@pytest.mark.parametrize("mode", SHORT_PNG_MODES)
@pytest.mark.parametrize("in_place", [True, False])
def test_a_short_png_of_any_mode_is_an_error_not_black_rows(tmp_path, rng, mode, in_place, monkeypatch):
    """Palette, gray+alpha, 16-bit gray and 1-bit PNG are decoded into Pillow's own memory, as are
    8-bit images too large to be decoded in place (here: every image, with the limit at 0)."""
    if not in_place:
        monkeypatch.setattr(lossctl.io, "DECODED_IN_PLACE_MAX_BYTES", 0)
    complete, image = _png_of_mode(mode, rng)
    (tmp_path / "complete.png").write_bytes(complete)
    with Image.open(tmp_path / "complete.png") as reopened:
        assert reopened.mode == mode
    assert decode_image(tmp_path / "complete.png").pixels.shape[:2] == (29, 23)
    (tmp_path / "short.png").write_bytes(_without_last_rows(complete, 2))
    with pytest.raises(ImageReadError, match="the image data ends before its last row"):
        decode_image(tmp_path / "short.png")


@pytest.mark.parametrize("mode", SHORT_PNG_MODES)
def test_modes_decoded_in_pillow_s_memory_equal_pillow_s_own_reading(tmp_path, rng, mode, monkeypatch):
    monkeypatch.setattr(lossctl.io, "DECODED_IN_PLACE_MAX_BYTES", 0)
    complete, _ = _png_of_mode(mode, rng, transparency=3) if mode == "P" else _png_of_mode(mode, rng)
    (tmp_path / "x.png").write_bytes(complete)
    decoded = decode_image(tmp_path / "x.png").pixels
    with Image.open(tmp_path / "x.png") as image:
        if mode == "P":
            image = image.convert("RGB")
        expected = np.asarray(image)
    if mode == "1":
        expected = expected.astype(np.uint8)
    expected = expected.reshape(*expected.shape[:2], -1)[:, :, : decoded.shape[2]]
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("mode", ["P", "I;16", "L"])
def test_a_short_png_label_map_is_an_error_not_background(tmp_path, rng, mode):
    complete, _ = _png_of_mode(mode, rng)
    (tmp_path / "labels.png").write_bytes(complete)
    decode_label_map(tmp_path / "labels.png")
    (tmp_path / "short.png").write_bytes(_without_last_rows(complete, 1))
    with pytest.raises(ImageReadError, match="the image data ends before its last row"):
        decode_label_map(tmp_path / "short.png")


@pytest.mark.parametrize("mode", ["P", "LA", "I;16"])
def test_a_last_row_equal_to_the_mark_in_pillow_s_memory_still_decodes(tmp_path, rng, mode):
    complete, image = _png_of_mode(mode, rng)
    pixels = np.array(image)
    mark = {"P": 0x5A, "I;16": 0x5AA5}.get(mode)
    if mode == "LA":
        pixels[-1] = (0x5A, 0xA5)
    else:
        pixels[-1] = mark
    marked = Image.fromarray(pixels) if mode == "I;16" else Image.fromarray(pixels, mode)
    if mode == "P":
        marked.putpalette(image.getpalette())
    marked.save(tmp_path / "x.png")
    decoded = decode_image(tmp_path / "x.png").pixels
    with Image.open(tmp_path / "x.png") as again:
        expected = np.asarray(again.convert("RGB") if mode == "P" else again)
    expected = expected.reshape(*expected.shape[:2], -1)[:, :, : decoded.shape[2]]
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("channels, interlaced", [(1, False), (4, False), (1, True)])
def test_an_image_whose_last_row_looks_unwritten_still_decodes(tmp_path, rng, channels, interlaced):
    """The row decoded last is marked with a pattern before decoding; a real row equal to it is told
    apart by decoding again under another pattern."""
    pixels = rng.integers(0, 256, (9, 7, channels), dtype=np.uint8)
    last = 7 if interlaced else 8  # Adam7's last pass fills the odd rows
    pixels[last] = np.frombuffer((b"\x5a\xa5" * 20)[: 7 * channels], dtype=np.uint8).reshape(7, channels)
    if interlaced:  # Pillow writes no Adam7
        (tmp_path / "x.png").write_bytes(_handmade_png(pixels[:, :, 0], interlaced=True))
    else:
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(tmp_path / "x.png")
    decoded = decode_image(tmp_path / "x.png").pixels
    np.testing.assert_array_equal(decoded, pixels[:, :, : decoded.shape[2]])


def test_16_bit_rgb_pair_differing_only_in_the_low_byte_has_nonzero_error(folders, rng):
    """Pillow alone keeps only the high byte of 16-bit RGB PNG; METRICS.md requires all 16 bits."""
    pred, gt = folders
    high = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint16) << 8
    save_image(gt / "x.png", high)
    save_image(pred / "x.png", high | 0x7F)
    loaded = load_pair(pair_folders(pred, gt).pairs[0])
    difference = loaded.pred.pixels.astype(np.float64) - loaded.gt.pixels
    assert np.all(difference == 0x7F)


def test_float_tiff_is_used_as_stored(tmp_path, rng):
    values = rng.normal(0.5, 0.7, size=(8, 8)).astype(np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    decoded = decode_image(tmp_path / "f.tif")
    assert (decoded.bit_depth, decoded.scale) == (32, 1.0)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], values)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a recognised image"),
        (b"hello, I am text", "not a recognised image"),
    ],
)
def test_unreadable_files_raise_a_one_line_reason(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as caught:
        decode_image(path)
    assert "\n" not in str(caught.value)


def test_truncated_png_is_an_image_read_error(tmp_path, rng):
    save_image(tmp_path / "full.png", random_rgb(rng, 64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        decode_image(tmp_path / "cut.png")


@pytest.mark.parametrize(
    "pred_size, gt_size",
    [((32, 40), (32, 41)), ((20, 30), (30, 20))],  # transposed: as many pixels, not the same size
)
def test_size_mismatch_is_a_pair_error(folders, rng, pred_size, gt_size):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng, *pred_size))
    save_image(gt / "x.png", random_rgb(rng, *gt_size))
    message = f"size mismatch: pred is {pred_size[1]}x{pred_size[0]}, gt is {gt_size[1]}x{gt_size[0]}"
    with pytest.raises(ImageReadError, match=message):
        load_pair(pair_folders(pred, gt).pairs[0])


def test_grayscale_against_rgb_is_allowed_and_reports_three_channels(folders, rng):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng)[:, :, 0])
    save_image(gt / "x.png", random_rgb(rng))
    loaded = load_pair(pair_folders(pred, gt).pairs[0])
    assert (loaded.pred.channels, loaded.gt.channels, loaded.channels) == (1, 3, 3)
    assert loaded.bit_depth == 8


def test_weight_maps_are_matched_by_name_and_checked(tmp_path, folders, rng):
    pred, gt = folders
    weights = tmp_path / "weights"
    for name in ("good", "missing", "rgb", "small"):
        save_image(pred / f"{name}.png", random_rgb(rng))
        save_image(gt / f"{name}.png", random_rgb(rng))
    save_image(weights / "good.png", np.full((32, 40), 255, dtype=np.uint8))
    save_image(weights / "rgb.png", random_rgb(rng))
    save_image(weights / "small.png", np.zeros((8, 8), dtype=np.uint8))
    loaded = {p.name: load_pair(p, with_weights=True) for p in pair_folders(pred, gt, weights).pairs}
    np.testing.assert_array_equal(loaded["good"].weight, np.ones((32, 40, 1), dtype=np.float32))
    assert loaded["good"].weight_problem is None
    assert loaded["missing"].weight_problem == "no weight map with this name"
    assert "not grayscale" in loaded["rgb"].weight_problem
    assert "is 8x8, the images 40x32" in loaded["small"].weight_problem


def test_two_weight_maps_of_one_name_are_named_not_called_missing(tmp_path, folders, rng):
    pred, gt = folders
    weights = tmp_path / "weights"
    clean = random_rgb(rng)
    save_image(pred / "a.png", clean)
    save_image(gt / "a.png", clean)
    save_image(weights / "a.png", np.full((32, 40), 255, dtype=np.uint8))
    save_image(weights / "a.bmp", np.zeros((32, 40), dtype=np.uint8))
    (pair,) = pair_folders(pred, gt, weights).pairs
    loaded = load_pair(pair, with_weights=True)
    assert pair.status == "pending" and loaded.weight is None
    assert loaded.weight_problem == "ambiguous weight map: 2 files share this name (a.bmp, a.png)"


def test_16_bit_gray_with_alpha_png_is_its_gray_channel(tmp_path, rng):
    """Alpha is dropped; the gray channel keeps its 16 bits (OpenCV reads this PNG as 16-bit BGRA)."""
    gray = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    rows = np.dstack([gray, alpha]).astype(">u2").reshape(6, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    (tmp_path / "la16.png").write_bytes(png_bytes(5, 6, 16, 4, raw))  # 16-bit gray + alpha
    decoded = decode_image(tmp_path / "la16.png")
    assert decoded.pixels.shape == (6, 5, 1) and decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], gray)


def test_16_bit_ppm_keeps_16_bits(tmp_path, rng):
    rgb16 = rng.integers(0, 65536, size=(6, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.ppm"), rgb16[:, :, ::-1])
    decoded = decode_image(tmp_path / "c16.ppm")
    assert (decoded.bit_depth, decoded.scale) == (16, 65535.0)
    np.testing.assert_array_equal(decoded.pixels, rgb16)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"P6\n0 4\n65535\n", "it has no pixels"),
        (b"P6\n20000 10000\n65535\n", "is over the limit of"),
    ],
)
def test_a_bad_16_bit_ppm_is_an_image_read_error_not_a_crash(tmp_path, folders, rng, header, message):
    (tmp_path / "bad.ppm").write_bytes(header)
    with pytest.raises(ImageReadError, match=message) as caught:
        decode_image(tmp_path / "bad.ppm")
    assert "\n" not in str(caught.value)
    pred, gt = folders  # and the run goes on: the pair is an error row, the others are computed
    (pred / "bad.ppm").write_bytes(header)
    (gt / "bad.ppm").write_bytes(header)
    save_image(pred / "good.png", random_rgb(rng))
    save_image(gt / "good.png", random_rgb(rng))
    names = parse_metric_names("psnr")
    config = EvalConfig(metrics=names, params=resolve_params(names, []), device="cpu")
    results = {result.pair.name: result for result in evaluate(pair_folders(pred, gt).pairs, config)}
    assert results["good"].status == "ok" and results["bad"].status == "error"
    assert message in results["bad"].error


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_colour_tiff_is_used_as_stored(tmp_path, rng, dtype):
    values = rng.normal(0.5, 0.5, size=(6, 7, 3)).astype(dtype)
    tifffile.imwrite(tmp_path / "f.tif", values, photometric="rgb")
    decoded = decode_image(tmp_path / "f.tif")
    assert (decoded.scale, decoded.bit_depth) == (1.0, np.dtype(dtype).itemsize * 8)
    np.testing.assert_array_equal(decoded.pixels, values)


def test_16_bit_gray_with_alpha_tiff_is_refused_not_read_at_8_bits(tmp_path, rng):
    """Pillow has no mode for it, and OpenCV reads it through libtiff's 8-bit RGBA interface: a
    pair differing in the low bytes only would score as identical."""
    values = rng.integers(0, 65536, size=(6, 7, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "la16.tif", values, photometric="minisblack", extrasamples=[2])
    with pytest.raises(ImageReadError, match="reads this 16-bit TIFF layout at 8 bits only") as caught:
        decode_image(tmp_path / "la16.tif")
    assert "\n" not in str(caught.value)


# An 8x8 TIFF whose StripOffsets is a LONG8 pointing at 0xFF bytes (found by fuzzing): Pillow seeks
# to it and raises OverflowError, which is none of the errors Pillow documents for a bad file.
OVERFLOWING_TIFF = bytes.fromhex(
    "49492a000800000009000001040001000000080000000101040001000000080000000201030001000000080000000301"
    "030001000000010000000601030001000000010000001101100001000000ba0000001601040001000000080000001701"
    "040001000000400000001c010300010000000100000000000000" + "64" * 64 + "ff" * 8
)


def test_any_exception_a_damaged_file_raises_fails_its_pair_only(tmp_path, folders, rng):
    (tmp_path / "bad.tif").write_bytes(OVERFLOWING_TIFF)
    with pytest.raises(ImageReadError, match="cannot decode it \\(OverflowError: ") as caught:
        decode_image(tmp_path / "bad.tif")
    assert "\n" not in str(caught.value)
    pred, gt = folders
    for side in (pred, gt):
        (side / "bad.tif").write_bytes(OVERFLOWING_TIFF)
        save_image(side / "good.png", random_rgb(rng))
    names = parse_metric_names("psnr")
    config = EvalConfig(metrics=names, params=resolve_params(names, []), device="cpu", workers=1)
    results = {result.pair.name: result for result in evaluate(pair_folders(pred, gt).pairs, config)}
    assert results["good"].status == "ok" and results["bad"].status == "error"
    assert "OverflowError" in results["bad"].error


def test_a_bug_in_lossctl_s_own_decoding_stays_an_internal_error(tmp_path, rng, monkeypatch):
    """Only what damaged files make Pillow raise becomes an error row; a TypeError of lossctl's
    own would otherwise fail every pair as 'cannot decode it' and exit 3 instead of 1."""
    import lossctl.io

    save_image(tmp_path / "x.png", random_rgb(rng))

    def broken(*args):
        raise TypeError("a bug")

    monkeypatch.setattr(lossctl.io, "_decode_with_pillow", broken)
    with pytest.raises(TypeError, match="a bug"):
        decode_image(tmp_path / "x.png")


def test_an_image_over_pillows_own_guard_gets_lossctls_message(tmp_path):
    """Pillow refuses images over twice its limit in Image.open, before lossctl's own check."""
    (tmp_path / "bomb.png").write_bytes(png_bytes(20000, 10000, 8, 2, b""))  # a header, no pixels
    with pytest.raises(ImageReadError, match="over the limit of .* pixels .*raise it with --max-pixels"):
        decode_image(tmp_path / "bomb.png")


def test_opencv_failures_are_one_line_read_errors(tmp_path, rng):
    """A 16-bit RGB PNG whose header claims 100000 x 100000 pixels: OpenCV refuses it."""
    save_image(tmp_path / "ok.png", rng.integers(0, 65536, size=(4, 4, 3), dtype=np.uint16))
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[16:24] = (100000).to_bytes(4, "big") * 2
    (tmp_path / "huge.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as caught:
        decode_image(tmp_path / "huge.png")
    assert "\n" not in str(caught.value)


def test_symbolic_link_loops_are_walked_once(folders, rng):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    (pred / "loop").symlink_to(pred, target_is_directory=True)
    assert [p.name for p in pair_folders(pred, gt).pairs] == ["x"]


def test_all_zero_weight_map_is_a_weight_problem(tmp_path, folders, rng):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    save_image(tmp_path / "w" / "x.png", np.zeros((32, 40), dtype=np.uint8))
    loaded = load_pair(pair_folders(pred, gt, tmp_path / "w").pairs[0], with_weights=True)
    assert loaded.weight is None and loaded.weight_problem == "weight map x.png is all zero"


@pytest.mark.parametrize("spoil", ["nan", "inf", "negative", "over_one"])
def test_float_weight_maps_outside_zero_to_one_are_a_weight_problem(tmp_path, folders, rng, spoil):
    """Float maps are taken as stored: NaN gave weighted_tv NaN and negative weights a meaningless
    ratio (weights 1 and -1: 0), without a note."""
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    weights = rng.random((32, 40)).astype(np.float32)
    weights[5, 7] = {"nan": np.nan, "inf": np.inf, "negative": -0.5, "over_one": 1.5}[spoil]
    (tmp_path / "w").mkdir()
    Image.fromarray(weights, mode="F").save(tmp_path / "w" / "x.tif")
    loaded = load_pair(pair_folders(pred, gt, tmp_path / "w").pairs[0], with_weights=True)
    assert loaded.weight is None and "weight map x.tif has values outside [0, 1]" in loaded.weight_problem
    weights[5, 7] = 1.0  # in range: used as stored
    Image.fromarray(weights, mode="F").save(tmp_path / "w" / "x.tif")
    loaded = load_pair(pair_folders(pred, gt, tmp_path / "w").pairs[0], with_weights=True)
    assert loaded.weight_problem is None and np.array_equal(loaded.weight[..., 0], weights)
