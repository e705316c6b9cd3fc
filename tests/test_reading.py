"""Reading images and writing reports, where the rest of the suite left a gap: the modes Pillow
converts (RGBA outside PNG and JPEG, palette with alpha), the pixel limit at its boundary, weight maps
as stored, transposed label maps, the decoding window's order and failures, and atomic report files
(flushed before the rename, no temporary left, permissions, symbolic links, non-UTF-8 names)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import lossctl.io
from lossctl.errors import ImageReadError
from lossctl.io import decode_image, load_pair, pair_folders

from .conftest import png_bytes, random_rgb, save_image


@pytest.fixture
def max_pixels_restored():
    yield
    lossctl.io.set_max_pixels(None)


def _rgba(rng, height=12, width=9):
    rgb = random_rgb(rng, height, width)
    alpha = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    return rgb, np.dstack([rgb, alpha])


@pytest.mark.parametrize("extension, options", [("tif", {}), ("webp", {"lossless": True})])
def test_rgba_outside_png_and_jpeg_drops_alpha_and_keeps_rgb_in_order(tmp_path, rng, extension, options):
    """RGBA TIFF and WebP go through Pillow's own memory, not the in-place path that RGBA PNG takes:
    their first three channels are R, G, B as stored (alpha dropped, not composited)."""
    rgb, rgba = _rgba(rng)
    path = tmp_path / f"x.{extension}"
    Image.fromarray(rgba, mode="RGBA").save(path, **options)
    with Image.open(path) as reference:
        assert reference.mode == "RGBA"
        expected = np.asarray(reference)[:, :, :3]
    np.testing.assert_array_equal(expected, rgb)
    decoded = decode_image(path)
    assert (decoded.bit_depth, decoded.scale) == (8, 255.0)
    np.testing.assert_array_equal(decoded.pixels, rgb)


def test_palette_with_alpha_tiff_is_expanded_to_rgb(tmp_path, rng):
    """Pillow opens a palette+alpha TIFF as mode PA: its colours, not an 'unsupported mode' error."""
    palette = Image.fromarray(random_rgb(rng, 10, 11)).quantize(colors=8).convert("PA")
    path = tmp_path / "pa.tif"
    palette.save(path)
    with Image.open(path) as reference:
        assert reference.mode == "PA"
        expected = np.asarray(reference.convert("RGB"))
    decoded = decode_image(path)
    assert (decoded.bit_depth, decoded.scale) == (8, 255.0)
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_an_image_of_exactly_max_pixels_is_decoded_and_one_more_is_refused(tmp_path, rng, max_pixels_restored):
    rgb = random_rgb(rng, 10, 12)
    save_image(tmp_path / "x.png", rgb)
    lossctl.io.set_max_pixels(120)  # exactly the image's 10x12
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png").pixels, rgb)
    lossctl.io.set_max_pixels(119)
    with pytest.raises(ImageReadError, match="12x10 = 120 pixels is over the limit of 119"):
        decode_image(tmp_path / "x.png")


def test_raising_max_pixels_raises_pillows_own_guard_too(max_pixels_restored):
    """--max-pixels above Pillow's default must not leave Pillow refusing (at twice its default)
    the images lossctl was told to allow: checked at Image.open, before any pixel is decoded."""
    default = lossctl.io.DEFAULT_MAX_PIXELS
    width, height = 30_000, (5 * default) // (2 * 30_000)  # 2.5 times Pillow's default
    lossctl.io.set_max_pixels(3 * default)
    assert Image.MAX_IMAGE_PIXELS >= 3 * default
    with Image.open(io.BytesIO(png_bytes(width, height, 8, 0, b""))) as image:  # no DecompressionBombError
        assert image.size == (width, height)
    lossctl.io.set_max_pixels(None)
    assert Image.MAX_IMAGE_PIXELS == default


def test_a_weight_map_with_some_zero_pixels_is_used_as_stored(tmp_path, folders, rng):
    """Only an all-zero map is a weight problem; a mask with zeros in it is the usual case."""
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    mask = rng.integers(0, 256, size=(32, 40), dtype=np.uint8)
    mask[:, :20] = 0
    save_image(tmp_path / "w" / "x.png", mask)
    loaded = load_pair(pair_folders(pred, gt, tmp_path / "w").pairs[0], with_weights=True)
    assert loaded.weight_problem is None
    np.testing.assert_allclose(loaded.weight[:, :, 0], mask.astype(np.float32) / 255, rtol=0, atol=1e-7)


def test_a_16_bit_weight_map_is_scaled_by_65535(tmp_path, folders, rng):
    pred, gt = folders
    save_image(pred / "x.png", random_rgb(rng))
    save_image(gt / "x.png", random_rgb(rng))
    mask = rng.integers(1, 65536, size=(32, 40), dtype=np.uint16)
    (tmp_path / "w").mkdir()
    Image.fromarray(mask).save(tmp_path / "w" / "x.png")
    loaded = load_pair(pair_folders(pred, gt, tmp_path / "w").pairs[0], with_weights=True)
    assert loaded.weight_problem is None
    np.testing.assert_allclose(loaded.weight[:, :, 0], mask / 65535.0, rtol=1e-6)


def test_a_transposed_label_map_is_a_size_mismatch(folders, rng):
    """Scores C x 4 x 6 against a 4-wide, 6-high label map: as many pixels, not the same size."""
    pred, gt = folders
    np.save(pred / "x.npy", rng.random((3, 4, 6)).astype(np.float32))
    Image.fromarray(rng.integers(0, 3, size=(6, 4), dtype=np.uint8)).save(gt / "x.png")
    with pytest.raises(ImageReadError, match="size mismatch: pred is 6x4, gt is 4x6"):
        load_pair(pair_folders(pred, gt).pairs[0])


# --- reports written atomically (lossctl.atomic) ---------------------------------------------


def test_a_report_whose_writing_fails_leaves_the_old_file_and_no_temporary_file(tmp_path):
    from lossctl.atomic import write_atomic

    target = tmp_path / "report.csv"
    target.write_text("old report\n")

    def half_then_fail(stream):
        stream.write("name,l1\nhalf")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old report\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.csv"]


def test_a_report_is_complete_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """The temporary file is flushed and closed before the rename: a crash right after the rename
    must not leave a report that is half on disk."""
    import os

    import lossctl.atomic

    content = "name,l1\n" + "".join(f"pair{index},0.{index}\n" for index in range(2000))
    seen: list[str] = []
    replace = os.replace

    def recording_replace(source, destination):
        with open(source, encoding="utf-8", newline="") as stream:
            seen.append(stream.read())
        return replace(source, destination)

    monkeypatch.setattr(lossctl.atomic.os, "replace", recording_replace)
    lossctl.atomic.write_atomic(tmp_path / "report.csv", lambda stream: [stream.write(line) for line in content.splitlines(keepends=True)])
    assert seen == [content]
    assert (tmp_path / "report.csv").read_text(encoding="utf-8") == content


def test_a_report_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    from lossctl.atomic import write_atomic

    (tmp_path / "reports").mkdir()
    target = tmp_path / "reports" / "latest.csv"
    target.write_text("old\n")
    link = tmp_path / "report.csv"
    link.symlink_to(target)
    write_atomic(link, "new\n")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text() == "new\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.csv", "reports"]
    assert sorted(path.name for path in target.parent.iterdir()) == ["latest.csv"]


def test_a_report_gets_the_permissions_open_would_give_it(tmp_path):
    import os
    import stat

    from lossctl.atomic import write_atomic, write_atomic_bytes

    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.csv", "x\n")
        write_atomic_bytes(tmp_path / "map.png", lambda stream: stream.write(b"\x89PNG"))
    finally:
        os.umask(mask)
    for name in ("report.csv", "map.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name  # not mkstemp's 0o600


def test_a_file_name_that_is_not_utf8_is_written_as_its_own_bytes(tmp_path):
    from lossctl.atomic import write_atomic

    name = b"caf\xe9.png".decode("utf-8", "surrogateescape")
    write_atomic(tmp_path / "report.csv", f"{name},0.5\n")
    assert (tmp_path / "report.csv").read_bytes() == b"caf\xe9.png,0.5\n"


# --- decoding ahead (lossctl.decoding) -------------------------------------------------------


@pytest.mark.parametrize("processes", [False, True])
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_decoding_ahead_yields_every_pair_in_order_with_its_pixels_and_failures_as_rows(
    folders, rng, processes, prefetch
):
    """Every decodable pair comes out once, in order, whatever the window (a window of 0 is one):
    pixels as decode_image reads them, an unreadable file as a DecodeFailure naming it."""
    from contextlib import closing

    from lossctl.decoding import DecodeAhead, DecodeFailure, decodable

    pred, gt = folders
    names = [f"p{index}" for index in range(5)]
    for name in names:
        save_image(gt / f"{name}.png", random_rgb(rng, 6, 7))
        save_image(pred / f"{name}.png", random_rgb(rng, 6, 7))
    (pred / "p2.png").write_bytes(b"not an image")
    pairs = decodable(pair_folders(pred, gt).pairs)
    assert [pair.name for pair in pairs] == names
    with closing(DecodeAhead(pairs, False, workers=2, prefetch=prefetch, processes=processes)) as decoded:
        items = list(decoded)
    assert [item.pair.name for item in items] == names
    assert isinstance(items[2], DecodeFailure) and items[2].reason.startswith("pred p2.png: ")
    for item in items[:2] + items[3:]:
        np.testing.assert_array_equal(item.pred.pixels, np.asarray(Image.open(item.pair.pred)))
        np.testing.assert_array_equal(item.gt.pixels, np.asarray(Image.open(item.pair.gt)))


def test_pairs_in_error_or_unmatched_are_not_decoded(folders, rng):
    from lossctl.decoding import decodable

    pred, gt = folders
    for name in ("a", "b"):
        save_image(gt / f"{name}.png", random_rgb(rng, 4, 4))
        save_image(pred / f"{name}.png", random_rgb(rng, 4, 4))
    save_image(pred / "b.jpg", random_rgb(rng, 4, 4))  # b: ambiguous prediction
    save_image(pred / "c.png", random_rgb(rng, 4, 4))  # c: no ground truth
    pairs = pair_folders(pred, gt).pairs
    assert {pair.name: pair.status for pair in pairs} == {"a": "pending", "b": "error", "c": "unmatched"}
    assert [pair.name for pair in decodable(pairs)] == ["a"]
