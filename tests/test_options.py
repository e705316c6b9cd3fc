"""Every command-line option reaches what it controls, in eval and in check (which builds its own
run): each test fails if the option is dropped or replaced by its default on the way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lossctl import decoding
from lossctl.cli import app

from .conftest import REPO, SAMPLE_GT, SAMPLE_PRED, noisy, pair_with_unit_weights, random_rgb, save_image

runner = CliRunner()
SEG_PRED, SEG_GT = REPO / "sample_images" / "seg" / "pred", REPO / "sample_images" / "seg" / "gt"


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def one_pair(folders, rng, size=16):
    pred, gt = folders
    clean = random_rgb(rng, size, size)
    dirty = noisy(rng, clean)
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", dirty)
    return pred, gt, clean, dirty


def psnr64(a, b):
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return 10 * np.log10(1.0 / mse)


def test_check_precision_float64_reaches_the_engine(folders, rng, tmp_path):
    pred, gt, clean, dirty = one_pair(folders, rng)
    out = tmp_path / "r.json"
    result = invoke("check", pred, gt, "--min", "psnr=0", "--precision", "float64", "--json", out, "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["precision"] == "float64"
    assert doc["rows"][0]["psnr"] == pytest.approx(psnr64(dirty, clean), rel=1e-12, abs=0)


def test_check_max_pixels_reaches_the_decoder(folders, rng):
    pred, gt, *_ = one_pair(folders, rng)  # 16x16 = 256 pixels
    assert invoke("check", pred, gt, "--min", "psnr=0").exit_code == 0
    result = invoke("check", pred, gt, "--min", "psnr=0", "--max-pixels", "100")
    assert result.exit_code == 3, result.output  # the pair is over the limit: unreadable


def test_check_workers_reaches_the_engine(folders, rng):
    pred, gt, *_ = one_pair(folders, rng)
    result = invoke("check", pred, gt, "--min", "psnr=0", "--workers", "0")
    assert result.exit_code == 2, result.output
    assert "--workers must be at least 1" in result.stderr


def decoders_chosen(monkeypatch) -> list[str]:
    """The --decoder values the run asks decoding.use_processes about (nothing else shows them)."""
    seen = []
    original = decoding.use_processes

    def spy(decoder, *args, **kwargs):
        seen.append(decoder)
        return original(decoder, *args, **kwargs)

    monkeypatch.setattr(decoding, "use_processes", spy)
    return seen


def test_check_decoder_reaches_the_run(folders, rng, monkeypatch):
    seen = decoders_chosen(monkeypatch)
    pred, gt, *_ = one_pair(folders, rng)
    result = invoke("check", pred, gt, "--min", "psnr=0", "--decoder", "threads", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {"threads"}


def test_check_ignore_index_reaches_the_engine():
    # scene_probs.png holds label 255: without --ignore-index the pair is unreadable (exit 3)
    assert invoke("check", SEG_PRED, SEG_GT, "--min", "pixel_accuracy=0").exit_code == 3
    result = invoke("check", SEG_PRED, SEG_GT, "--min", "pixel_accuracy=0", "--ignore-index", "255")
    assert result.exit_code == 0, result.output


def test_check_pred_kind_logits_reaches_the_engine(tmp_path):
    out = tmp_path / "r.json"
    result = invoke(
        "check",
        SEG_PRED,
        SEG_GT,
        "--max",
        "ce=1e9",
        "--ignore-index",
        "255",
        "--pred-kind",
        "logits",
        "--json",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(out.read_text())["rows"] if r["name"] == "scene_probs")
    x = np.load(SEG_PRED / "scene_probs.npy").astype(np.float64)  # (C, H, W), read as logits
    labels = np.asarray(Image.open(SEG_GT / "scene_probs.png")).astype(np.int64)
    keep = labels != 255
    m = x.max(axis=0)
    lse = m + np.log(np.exp(x - m).sum(axis=0))
    picked = np.take_along_axis(x, np.where(keep, labels, 0)[None], axis=0)[0]
    expected = float(np.mean((lse - picked)[keep]))
    assert row["ce"] == pytest.approx(expected, rel=1e-4)


def test_check_y_channel_and_crop_border_reach_the_convention(folders, rng, tmp_path):
    pred, gt, clean, dirty = one_pair(folders, rng, size=20)
    out = tmp_path / "r.json"
    result = invoke(
        "check",
        pred,
        gt,
        "--min",
        "psnr=0",
        "--y-channel",
        "--crop-border",
        "3",
        "--precision",
        "float64",
        "--json",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (
        doc["params"]["convention"]["y_channel"] is True and doc["params"]["convention"]["crop_border"] == 3
    )

    def luma(rgb):  # BT.601 as MATLAB's rgb2ycbcr, on the 0-255 scale
        return rgb.astype(np.float64) / 255 @ np.array([65.481, 128.553, 24.966]) + 16.0

    y_pred, y_gt = luma(dirty)[3:-3, 3:-3], luma(clean)[3:-3, 3:-3]
    expected = 10 * np.log10(255.0**2 / np.mean((y_pred - y_gt) ** 2))
    assert doc["rows"][0]["psnr"] == pytest.approx(expected, abs=1e-3)


def test_check_preset_and_scale_reach_the_convention(tmp_path):
    out = tmp_path / "r.json"
    result = invoke(
        "check",
        SAMPLE_PRED,
        SAMPLE_GT,
        "--min",
        "psnr=0",
        "--preset",
        "basicsr",
        "--scale",
        "3",
        "--json",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    expected = {"preset": "basicsr", "y_channel": True, "crop_border": 3}
    assert json.loads(out.read_text())["params"]["convention"] == expected


def test_eval_decoder_reaches_the_run(folders, rng, monkeypatch):
    seen = decoders_chosen(monkeypatch)
    pred, gt, *_ = one_pair(folders, rng)
    result = invoke("eval", pred, gt, "-m", "psnr", "--decoder", "threads", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {"threads"}


def test_eval_threshold_reaches_iou(folders, rng, tmp_path):
    pred, gt = folders
    truth = (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255
    scores = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    save_image(gt / "m.png", truth)
    save_image(pred / "m.png", scores)
    out = tmp_path / "r.json"
    result = invoke("eval", pred, gt, "-m", "iou", "--threshold", "0.8", "--json", out, "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["params"]["iou"]["threshold"] == 0.8
    p, g = scores.astype(np.float64) / 255 >= 0.8, truth > 127
    expected = np.logical_and(p, g).sum() / np.logical_or(p, g).sum()
    assert doc["rows"][0]["iou"] == pytest.approx(expected, rel=1e-6)


def test_check_weights_adds_weighted_tv(tmp_path, rng):
    pred, gt, weights = pair_with_unit_weights(tmp_path, rng)
    out = tmp_path / "r.json"
    result = invoke("check", pred, gt, "--min", "psnr=0", "--weights", weights, "--json", out, "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert "weighted_tv" in doc["metrics"] and doc["rows"][0]["weighted_tv"] is not None


def many_pairs(folders, rng, count):
    pred, gt = folders
    for i in range(count):
        clean = random_rgb(rng, 8, 8)
        save_image(gt / f"p{i:02d}.png", clean)
        save_image(pred / f"p{i:02d}.png", noisy(rng, clean))
    return pred, gt


def test_per_image_rows_shown_by_default_up_to_20_pairs(folders, rng):
    pred, gt = many_pairs(folders, rng, 20)
    assert (
        "| name | status | l1 |" in invoke("eval", pred, gt, "-m", "l1", "-q", "--format", "markdown").stdout
    )
    save_image(gt / "p20.png", random_rgb(rng, 8, 8))
    save_image(pred / "p20.png", random_rgb(rng, 8, 8))
    assert (
        "| name | status |" not in invoke("eval", pred, gt, "-m", "l1", "-q", "--format", "markdown").stdout
    )


def test_markdown_honours_no_per_image(folders, rng):
    pred, gt, *_ = one_pair(folders, rng)
    text = invoke("eval", pred, gt, "-m", "l1", "-q", "--format", "markdown", "--no-per-image").stdout
    assert "| metric | mean |" in text and "| name | status |" not in text


def test_quiet_shard_run_leaves_stderr_empty(folders, rng, tmp_path):
    pred, gt, *_ = one_pair(folders, rng)
    result = invoke(
        "eval",
        pred,
        gt,
        "-m",
        "l1",
        "--shard",
        "0/1",
        "--json",
        tmp_path / "s.json",
        "-q",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_csv_sidecar_holds_no_rows(folders, rng, tmp_path):
    pred, gt, *_ = one_pair(folders, rng)
    assert invoke("eval", pred, gt, "-m", "l1", "--csv", tmp_path / "r.csv", "-q").exit_code == 0
    sidecar = json.loads((tmp_path / "r.csv.meta.json").read_text())
    assert "rows" not in sidecar and sidecar["metrics"] == ["l1"]
