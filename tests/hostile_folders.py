"""A pred/gt folder pair holding every kind of file a crashed or careless job leaves behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _bad_crc(path: Path) -> None:
    """Flip a byte inside the IDAT data so that the chunk's CRC no longer matches."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 2] ^= 0xFF
    path.write_bytes(bytes(data))


def build_hostile_folders(root: Path, seed: int = 0) -> tuple[Path, Path, dict[str, tuple[str, str]]]:
    """Write ``root/pred`` and ``root/gt``; return them and ``{name: (status, error start)}``."""
    rng = np.random.default_rng(seed)
    pred, gt = root / "pred", root / "gt"

    def image(height: int = 16, width: int = 16) -> np.ndarray:
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    expected: dict[str, tuple[str, str]] = {}

    def good(name: str) -> None:
        clean = image()
        _png(gt / f"{name}.png", clean)
        _png(pred / f"{name}.png", np.clip(clean.astype(int) + 3, 0, 255).astype(np.uint8))
        expected[name] = ("ok", "")

    for name in ("plain", "with space", "ünïcödé 画像", "sub/deeper/x"):
        good(name)

    clean = image(64, 64)
    _png(gt / "truncated_png.png", clean)
    full = _png(pred / "truncated_png.png", clean).read_bytes()
    (pred / "truncated_png.png").write_bytes(full[: len(full) // 2])
    expected["truncated_png"] = ("error", "pred truncated_png.png: ")

    _png(gt / "truncated_jpeg.png", clean)
    Image.fromarray(clean).save(pred / "truncated_jpeg.jpg", quality=90)
    jpeg = (pred / "truncated_jpeg.jpg").read_bytes()
    (pred / "truncated_jpeg.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    expected["truncated_jpeg"] = ("error", "pred truncated_jpeg.jpg: ")

    _png(gt / "zero_bytes.png", clean)
    (pred / "zero_bytes.png").write_bytes(b"")
    expected["zero_bytes"] = ("error", "pred zero_bytes.png: not a recognised image file")

    _png(gt / "text.png", clean)
    (pred / "text.png").write_text("this is not an image\n")
    expected["text"] = ("error", "pred text.png: not a recognised image file")

    _png(gt / "bad_crc.png", clean)
    _bad_crc(_png(pred / "bad_crc.png", clean))
    expected["bad_crc"] = ("error", "pred bad_crc.png: ")

    _png(gt / "sizes.png", image(16, 16))
    _png(pred / "sizes.png", image(16, 17))
    expected["sizes"] = ("error", "size mismatch: pred is 17x16, gt is 16x16")

    _png(gt / "twice.png", clean)
    _png(pred / "twice.png", clean)
    Image.fromarray(clean).save(pred / "twice.jpg")
    expected["twice"] = ("error", "ambiguous pred: 2 files share this name (twice.jpg, twice.png)")

    _png(pred / "only_pred.png", clean)
    expected["only_pred"] = ("unmatched", "no ground truth with this name")
    _png(gt / "only_gt.png", clean)
    expected["only_gt"] = ("unmatched", "no prediction with this name")

    _png(pred / "Case.png", clean)
    _png(gt / "case.png", clean)
    expected["Case"] = (
        "unmatched",
        "no ground truth with this name; gt has case, which differs only in case",
    )
    expected["case"] = (
        "unmatched",
        "no prediction with this name; pred has Case, which differs only in case",
    )

    (pred / "loop").symlink_to(pred, target_is_directory=True)  # followed once, not forever
    (pred / "folder.png").mkdir()  # a folder where a file is expected: searched, not opened
    (pred / "notes.txt").write_text("not an image")  # skipped and counted
    return pred, gt, expected
