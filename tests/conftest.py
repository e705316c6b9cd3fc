"""Shared test helpers: writing images of every mode, and the bundled sample folders."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PRED = REPO / "sample_images" / "pred"
SAMPLE_GT = REPO / "sample_images" / "gt"
CUDA = torch.cuda.is_available()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU; the only tests that see one")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("cuda") and not CUDA:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test but those marked ``cuda`` runs as on CI's machine, without a GPU: on a machine
    with one, ``--device auto`` would take the GPU path, where a test of the CPU path (its Ctrl-C
    and out-of-memory handling, for one) no longer tests what it says. Processes a test starts see
    no GPU either."""
    if request.node.get_closest_marker("cuda"):
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def frame_of(names, status=None, error=None, **metrics) -> pd.DataFrame:
    """A report's frame: ``names`` with ``status`` (ok by default), ``error`` and each metric's values."""
    columns = {
        "name": names,
        "pred": [f"p/{name}.png" for name in names],
        "gt": [f"g/{name}.png" for name in names],
        "status": status or ["ok"] * len(names),
        "error": error or [""] * len(names),
    }
    return pd.DataFrame(
        {**columns, **{metric: [float(v) for v in values] for metric, values in metrics.items()}}
    )


def evaluate_folders(pred, gt, metrics=None, weights=None, params=(), **options):
    """Every pair of the ``pred`` and ``gt`` folders evaluated by the library (``metrics`` as for
    ``--metrics``, ``params`` as ``--param`` values, ``options`` EvalConfig's), by pair name."""
    from lossctl.engine import EvalConfig, evaluate
    from lossctl.io import pair_folders
    from lossctl.metrics import parse_metric_names, resolve_params

    names = parse_metric_names(metrics)
    config = EvalConfig(
        metrics=names, params=resolve_params(names, list(params)), with_weights=weights is not None, **options
    )
    return {result.pair.name: result for result in evaluate(pair_folders(pred, gt, weights).pairs, config)}


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, data: bytes, interlaced: bool = False) -> bytes:
    """A PNG made by hand, for layouts and damage Pillow does not write: its IHDR, one IDAT holding
    ``data`` (scanlines with their filter bytes, compressed here) and IEND."""

    def chunk(kind: bytes, content: bytes) -> bytes:
        return struct.pack(">I", len(content)) + kind + content + struct.pack(">I", zlib.crc32(kind + content))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlaced))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


def save_image(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Write ``pixels`` (H, W) or (H, W, C) to ``path``; 16-bit colour goes through OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.dtype == np.uint16 and pixels.ndim == 3:
        assert cv2.imwrite(str(path), pixels[:, :, ::-1])
    else:
        Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def one_line_error(result, code: int, fragment: str) -> None:
    """A command's error as the CLI promises it: exit ``code``, one ``error: ...`` line on stderr
    naming ``fragment``, no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def random_rgb(rng: np.random.Generator, height: int = 32, width: int = 40) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def noisy(rng: np.random.Generator, pixels: np.ndarray, spread: int = 20) -> np.ndarray:
    """``pixels`` plus uniform integer noise, clipped to the dtype's range."""
    top = np.iinfo(pixels.dtype).max
    noise = rng.integers(-spread, spread + 1, size=pixels.shape)
    return np.clip(pixels.astype(np.int64) + noise, 0, top).astype(pixels.dtype)


def pair_with_unit_weights(root: Path, rng: np.random.Generator) -> tuple[Path, Path, Path]:
    """``root/p``, ``root/g`` and ``root/w``: one 16x16 RGB pair and its all-255 weight map."""
    pred, gt, weights = root / "p", root / "g", root / "w"
    noisy_pairs(pred, gt, rng, ["x"], 16, 16)
    save_image(weights / "x.png", np.full((16, 16), 255, dtype=np.uint8))
    return pred, gt, weights


def noisy_pairs(
    pred: Path, gt: Path, rng: np.random.Generator, names: Iterable, height: int = 32, width: int = 40
) -> None:
    """For each of ``names``: ``gt/NAME.png`` a random RGB image and ``pred/NAME.png`` a noisy copy."""
    for name in names:
        clean = random_rgb(rng, height, width)
        save_image(gt / f"{name}.png", clean)
        save_image(pred / f"{name}.png", noisy(rng, clean))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    return pred, gt
