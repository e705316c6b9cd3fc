"""Property: whatever images a folder holds, the report has one row per pair, the right status for
each, and for the good ones the values a direct computation gives."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from lossctl.cli import app

runner = CliRunner()

# mode: (channels, dtype, scale, writer)
MODES = {
    "L": (1, np.uint8, 255.0),
    "RGB": (3, np.uint8, 255.0),
    "RGBA": (4, np.uint8, 255.0),
    "1": (1, bool, 1.0),
    "I;16": (1, np.uint16, 65535.0),
    "RGB16": (3, np.uint16, 65535.0),
    "F": (1, np.float32, 1.0),
}


def make_pixels(rng: np.random.Generator, mode: str, height: int, width: int) -> np.ndarray:
    channels, dtype, scale = MODES[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype is bool:
        return rng.random(shape) > 0.5
    if dtype == np.float32:
        return rng.random(shape).astype(np.float32)
    return rng.integers(0, int(scale) + 1, size=shape, dtype=dtype)


def write(path: Path, mode: str, pixels: np.ndarray) -> Path:
    if mode == "RGB16":
        path = path.with_suffix(".png")
        cv2.imwrite(str(path), pixels[:, :, ::-1])
    elif mode == "F":
        path = path.with_suffix(".tif")
        Image.fromarray(pixels, mode="F").save(path)
    else:
        path = path.with_suffix(".png")
        Image.fromarray(pixels).save(path)
    return path


def as_unit(mode: str, pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) float64 in [0, 1] as METRICS.md scales it; alpha dropped."""
    channels, _, scale = MODES[mode]
    values = pixels.astype(np.float64) / scale
    values = values[:, :, None] if values.ndim == 2 else values
    return values[:, :, :3]


pair_strategy = st.tuples(
    st.sampled_from(sorted(MODES)),  # pred mode
    st.sampled_from(sorted(MODES)),  # gt mode
    st.integers(1, 24),  # height
    st.integers(1, 24),  # width
    st.sampled_from(["good", "truncated", "empty", "size_mismatch", "missing_gt"]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(pair_strategy, min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_every_file_gets_exactly_one_row_with_the_right_status_and_values(pairs, seed):
    rng = np.random.default_rng(seed)
    folder = Path(tempfile.mkdtemp())
    try:
        pred_root, gt_root = folder / "pred", folder / "gt"
        pred_root.mkdir()
        gt_root.mkdir()
        expected = {}
        for index, (pred_mode, gt_mode, height, width, fate) in enumerate(pairs):
            name = f"pair{index}"
            gt_pixels = make_pixels(rng, gt_mode, height, width)
            gt_path = write(gt_root / name, gt_mode, gt_pixels)
            pred_height = height + 1 if fate == "size_mismatch" else height
            pred_pixels = make_pixels(rng, pred_mode, pred_height, width)
            pred_path = write(pred_root / name, pred_mode, pred_pixels)
            if fate == "truncated":
                pred_path.write_bytes(pred_path.read_bytes()[:20])
            elif fate == "empty":
                gt_path.write_bytes(b"")
            elif fate == "missing_gt":
                gt_path.unlink()
            p, g = as_unit(pred_mode, pred_pixels), as_unit(gt_mode, gt_pixels)
            channels = max(p.shape[2], g.shape[2])  # a grayscale side is repeated against RGB
            p, g = (
                (np.broadcast_to(side, (*side.shape[:2], channels)) for side in (p, g))
                if fate == "good"
                else (p, g)
            )
            expected[name] = (fate, p, g)
        if all(fate == "missing_gt" for fate, *_ in expected.values()):
            return  # no pair at all: a usage error, tested elsewhere
        result = runner.invoke(app, ["eval", str(pred_root), str(gt_root), "-m", "l1,mse", "--format", "csv"])
        rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False, na_values=[""]).set_index(
            "name"
        )
        assert sorted(rows.index) == sorted(expected), result.output
        all_good = all(fate == "good" for fate, *_ in expected.values())
        assert result.exit_code == (0 if all_good else 3), result.output
        for name, (fate, p, g) in expected.items():
            row = rows.loc[name]
            status = {"good": "ok", "missing_gt": "unmatched"}.get(fate, "error")
            assert row["status"] == status, (name, fate, row["error"])
            if fate == "size_mismatch":
                assert row["error"].startswith("size mismatch")
            if status == "ok":
                assert row["l1"] == pytest.approx(np.abs(p - g).mean(), rel=1e-5, abs=1e-7)
                assert row["mse"] == pytest.approx(((p - g) ** 2).mean(), rel=1e-5, abs=1e-9)
    finally:
        shutil.rmtree(folder)
