"""PGM and PPM read at their stored levels and scaled by their maxval, whatever it is."""

from __future__ import annotations

import numpy as np
import pytest

from lossctl.engine import EvalConfig, evaluate
from lossctl.errors import ImageReadError
from lossctl.io import decode_image, decode_label_map, pair_folders
from lossctl.metrics import parse_metric_names, resolve_params

MAXVALS = [1, 100, 255, 1023, 65535]
FORMATS = {"P2": 1, "P3": 3, "P5": 1, "P6": 3}


def netpbm_bytes(magic: str, levels: np.ndarray, maxval: int, comment: bool = True) -> bytes:
    """A Netpbm file written by the spec: header fields separated by whitespace and comments,
    samples as bytes (big-endian words above 255) or, for the plain formats, ASCII decimals."""
    height, width = levels.shape[:2]
    header = f"{magic}\n" + ("# written by the test\n" if comment else "") + f"{width}  {height}\n{maxval}\n"
    if magic in ("P2", "P3"):
        rows = (" ".join(str(int(value)) for value in row.ravel()) for row in levels)
        return (header + "\n".join(rows) + "\n").encode()
    word = ">u2" if maxval > 255 else "u1"
    return header.encode() + levels.astype(word).tobytes()


def random_levels(rng, magic: str, maxval: int, height: int = 5, width: int = 7) -> np.ndarray:
    return rng.integers(0, maxval + 1, size=(height, width, FORMATS[magic]))


@pytest.mark.parametrize("maxval", MAXVALS)
@pytest.mark.parametrize("magic", list(FORMATS))
def test_every_maxval_keeps_its_levels_and_scales_by_the_maxval(tmp_path, rng, magic, maxval):
    levels = random_levels(rng, magic, maxval)
    (tmp_path / "x.pnm").write_bytes(netpbm_bytes(magic, levels, maxval))
    decoded = decode_image(tmp_path / "x.pnm")
    np.testing.assert_array_equal(decoded.pixels, levels)
    assert decoded.pixels.dtype == (np.uint8 if maxval <= 255 else np.uint16)
    assert (decoded.scale, decoded.bit_depth) == (float(maxval), 8 if maxval <= 255 else 16)


@pytest.mark.parametrize("magic", list(FORMATS))
def test_one_level_apart_scores_one_over_the_maxval(folders, magic):
    """Pillow rounds a 10-bit graymap's levels to 16 bits and reads a plain 10-bit pixmap as 8 bits
    (0 and 1 both become 0: PSNR inf); lossctl must score exactly 1 / 1023."""
    pred, gt = folders
    levels = np.full((12, 12, FORMATS[magic]), 512)
    (pred / "x.pnm").write_bytes(netpbm_bytes(magic, levels + 1, 1023))
    (gt / "x.pnm").write_bytes(netpbm_bytes(magic, levels, 1023))
    names = parse_metric_names("l1,psnr")
    config = EvalConfig(metrics=names, params=resolve_params(names, []), device="cpu", precision="float64")
    (result,) = evaluate(pair_folders(pred, gt).pairs, config)
    assert result.status == "ok" and result.bit_depth == 16
    assert result.values["l1"] == pytest.approx(1 / 1023, rel=1e-12)
    assert result.values["psnr"] == pytest.approx(20 * np.log10(1023), rel=1e-12)


def test_header_comments_and_whitespace_anywhere_between_fields(tmp_path, rng):
    levels = random_levels(rng, "P5", 255)
    data = b"P5 # magic\n#another\n\t7\r\n# between\n5 255\n" + levels.astype(np.uint8).tobytes()
    (tmp_path / "x.pgm").write_bytes(data)
    np.testing.assert_array_equal(decode_image(tmp_path / "x.pgm").pixels, levels)


def test_a_raster_whose_first_byte_is_whitespace_or_a_digit_is_read_from_that_byte(tmp_path):
    levels = np.array([[[ord(" ")], [ord("7")], [10]]])
    (tmp_path / "x.pgm").write_bytes(netpbm_bytes("P5", levels, 255, comment=False))
    np.testing.assert_array_equal(decode_image(tmp_path / "x.pgm").pixels, levels)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"P5\n4 4\n255\n" + bytes(15), "truncated: the raster holds 15 of 16 samples"),
        (b"P6\n2 2\n1023\n" + bytes(23), "truncated: the raster holds 11 of 12 samples"),
        (b"P2\n2 2\n255\n1 2 3\n", "truncated: the raster holds 3 of 4 samples"),
        (b"P5\n2 1\n100\n" + bytes([3, 101]), r"a sample \(101\) is above the file's maxval 100"),
        (b"P3\n1 1\n1023\n0 1024 5\n", r"a sample \(1024\) is above the file's maxval 1023"),
        (b"P2\n2 1\n255\n1 x\n", "a sample is not a decimal number"),
        (b"P2\n2 1\n255\n1 -1\n", "a sample is negative"),
        (b"P2\n2 1\n255\n1 99999999999999999999999\n", "a sample is not a decimal number"),
        (b"P5\n2 2\n0\n" + bytes(4), "maxval must be 1 to 65535; this file has 0"),
        (b"P5\n2 2\n70000\n" + bytes(8), "maxval must be 1 to 65535; this file has 70000"),
        (b"P5\n2 two\n255\n" + bytes(4), "malformed Netpbm header"),
        (b"P6\n", "malformed Netpbm header"),
        (b"P5\n0 3\n255\n", "the image is 0x3: it has no pixels"),
        (b"P6\n20000 10000\n255\n", "is over the limit of"),
    ],
)
def test_a_bad_file_is_a_one_line_image_read_error(tmp_path, data, message):
    (tmp_path / "bad.pgm").write_bytes(data)
    with pytest.raises(ImageReadError, match=message) as caught:
        decode_image(tmp_path / "bad.pgm")
    assert "\n" not in str(caught.value)


def test_a_graymap_label_map_keeps_its_class_indices(tmp_path, rng):
    """Pillow would rescale indices 0..20 of a maxval-20 graymap to 0..255."""
    labels = rng.integers(0, 21, size=(6, 9, 1))
    (tmp_path / "labels.pgm").write_bytes(netpbm_bytes("P5", labels, 20))
    decoded, bit_depth = decode_label_map(tmp_path / "labels.pgm")
    np.testing.assert_array_equal(decoded, labels[:, :, 0])
    assert (decoded.dtype, bit_depth) == (np.int64, 8)
    (tmp_path / "overflow.pgm").write_bytes(b"P2\n2 1\n255\n1 99999999999999999999999\n")
    with pytest.raises(ImageReadError, match="a sample is not a decimal number"):
        decode_label_map(tmp_path / "overflow.pgm")  # it stopped a segmentation run
    (tmp_path / "labels.ppm").write_bytes(netpbm_bytes("P6", np.zeros((2, 2, 3)), 255))
    with pytest.raises(ImageReadError, match="single-channel class indices; this image is a PPM pixmap"):
        decode_label_map(tmp_path / "labels.ppm")
