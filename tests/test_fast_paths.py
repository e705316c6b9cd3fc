"""The 8-bit level fast path, its selection by the engine, the conventions and the heat maps, on
inputs the other tests leave out (levels exactly on an IoU threshold, 8-bit against 16-bit, kernels
mixing the difference with one side, basicsr with --crop-border alone, matlab-downsampled SSIM
maps): each test checks numbers against an independent float64 (or exact rational) formula, or
against the per-value float path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossctl.levels
from lossctl import maps
from lossctl.conventions import Convention, resolve_convention
from lossctl.engine import EvalConfig, _from_levels, pair_batch
from lossctl.io import load_pair, pair_folders
from lossctl.levels import PixelLevels, compared_levels, count_levels
from lossctl.metrics import METRICS

from .conftest import evaluate_folders, noisy, random_rgb, save_image
from .test_netpbm import netpbm_bytes

# 160 x 150 RGB = 72,000 values: above levels.MIN_VALUES, so the engine's own rule picks the level
# path for 8-bit pairs (no monkeypatching of the threshold).
HEIGHT, WIDTH = 160, 150


def spy_on_counting(monkeypatch) -> list[int]:
    """Pairs counted by lossctl.levels.count_levels (one entry per call: the pairs it counted)."""
    calls: list[int] = []
    real = lossctl.levels.count_levels

    def count_levels(preds, gts):
        calls.append(len(preds))
        return real(preds, gts)

    monkeypatch.setattr(lossctl.levels, "count_levels", count_levels)
    return calls


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_iou_with_thresholds_on_exact_levels_of_maxval_100_images(folders, rng, monkeypatch, precision):
    """A Netpbm maxval of 100 puts levels exactly on IoU's thresholds (30/100 = 0.3, and the
    ground truth's 0.5 = 50/100): the level table must hold ``a / 100`` rounded exactly as the
    engine's division rounds it, else levels flip sides of the threshold (float32
    ``a * (1/100)`` != ``a / 100`` for many ``a``) and IoU moves by ~0.01-0.02."""
    pred, gt = folders
    gt_levels = rng.integers(0, 101, (HEIGHT, WIDTH, 3))
    pred_levels = np.clip(gt_levels + rng.integers(-8, 9, gt_levels.shape), 0, 100)
    (gt / "x.ppm").write_bytes(netpbm_bytes("P6", gt_levels, 100))
    (pred / "x.ppm").write_bytes(netpbm_bytes("P6", pred_levels, 100))
    calls = spy_on_counting(monkeypatch)
    result = evaluate_folders(pred, gt, "iou,l1,mse", params=["iou.threshold=0.3"], precision=precision)["x"]
    assert calls == [1]  # read from its levels
    predicted, truth = pred_levels >= 30, gt_levels >= 50  # exact, in integers
    expected_iou = (predicted & truth).sum() / (predicted | truth).sum()
    difference = (pred_levels - gt_levels) / 100.0
    rel = 1e-6 if precision == "float32" else 1e-12
    assert result.values["iou"] == pytest.approx(expected_iou, rel=rel)
    assert result.values["l1"] == pytest.approx(np.abs(difference).mean(), rel=rel)
    assert result.values["mse"] == pytest.approx((difference**2).mean(), rel=rel)
    monkeypatch.setattr(lossctl.levels, "MIN_VALUES", 1 << 40)  # the per-value float path agrees
    per_value = evaluate_folders(pred, gt, "iou", params=["iou.threshold=0.3"], precision=precision)["x"]
    assert calls == [1]
    assert per_value.values["iou"] == pytest.approx(expected_iou, rel=rel)


@pytest.mark.parametrize("sixteen_bit_side", ["pred", "gt"])
def test_an_8_bit_image_against_a_16_bit_one_is_not_read_from_levels(
    folders, rng, monkeypatch, sixteen_bit_side
):
    """A 16-bit side has levels above 255 that 256-bin level counts would drop: such a pair must
    take the float path, with each side scaled by its own depth."""
    pred, gt = folders
    eight = random_rgb(rng, HEIGHT, WIDTH)
    sixteen = noisy(rng, eight.astype(np.uint16) * 257, 3000)
    pred_pixels, gt_pixels = (sixteen, eight) if sixteen_bit_side == "pred" else (eight, sixteen)
    save_image(pred / "x.png", pred_pixels)
    save_image(gt / "x.png", gt_pixels)
    calls = spy_on_counting(monkeypatch)
    result = evaluate_folders(pred, gt, "l1,mse,dice,tv", precision="float64")["x"]
    assert calls == []
    assert result.status == "ok" and result.bit_depth in ("16/8", "8/16")
    p = pred_pixels.astype(np.float64) / (65535.0 if sixteen_bit_side == "pred" else 255.0)
    g = gt_pixels.astype(np.float64) / (65535.0 if sixteen_bit_side == "gt" else 255.0)
    tv = (np.abs(np.diff(p, axis=0)).sum() + np.abs(np.diff(p, axis=1)).sum()) / p.size
    assert result.values["l1"] == pytest.approx(np.abs(p - g).mean(), rel=1e-12)
    assert result.values["mse"] == pytest.approx(((p - g) ** 2).mean(), rel=1e-12)
    assert result.values["dice"] == pytest.approx(2 * (p * g).sum() / (p.sum() + g.sum()), rel=1e-12)
    assert result.values["tv"] == pytest.approx(tv, rel=1e-12)


def test_levels_are_counted_on_a_cpu_only(folders, rng):
    """The level path runs in NumPy/OpenCV on the host: a GPU batch must not be given one (its
    host tensors would meet the device's in the same metric)."""
    pred, gt = folders
    clean = random_rgb(rng, HEIGHT, WIDTH)
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", noisy(rng, clean))
    loaded = load_pair(pair_folders(pred, gt).pairs[0])
    config = EvalConfig(metrics=["l1"], params={})
    assert _from_levels(loaded, config, torch.device("cpu"))
    assert not _from_levels(loaded, config, torch.device("cuda"))
    assert not _from_levels(loaded, config, torch.device("cuda:0"))


@pytest.mark.parametrize("scales", [(255.0, 255.0), (1.0, 255.0), (100.0, 255.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_of_kernels_mixing_diff_with_pred_or_target(rng, scales, dtype):
    """``PixelLevels.image_sums`` of a kernel of ``diff`` and another input (its 256 x 256 grid):
    ``diff`` is ``pred - target`` with its sign, against NumPy in float64."""
    pred_scale, gt_scale = scales
    top = int(pred_scale)
    pred = rng.integers(0, top + 1, (40, 50, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    preds, gts = [compared_levels(pred, 3, 0)], [compared_levels(gt, 3, 0)]
    pixel_levels = PixelLevels(preds, gts, count_levels(preds, gts), pred_scale, gt_scale)
    p, g = pred.astype(np.float64) / pred_scale, gt.astype(np.float64) / gt_scale
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    for inputs, kernel, expected in (
        (("pred", "diff"), lambda x, d: x * d, (p * (p - g)).sum()),
        (("diff", "target"), lambda d, y: d * (1 + y), ((p - g) * (1 + g)).sum()),
        (("diff", "pred"), lambda d, x: torch.clamp(d, min=0) + x, (np.clip(p - g, 0, None) + p).sum()),
    ):
        got = pixel_levels.image_sums(kernel, inputs, dtype)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=rel), inputs


def test_the_basicsr_preset_takes_crop_border_in_place_of_scale():
    """The preset's own error says ``give --scale N (or --crop-border N)``: a crop alone is enough."""
    assert resolve_convention("basicsr", None, None, 4) == Convention(
        "basicsr", y_channel=True, crop_border=4
    )
    assert resolve_convention("basicsr", 2, None, 3) == Convention("basicsr", y_channel=True, crop_border=3)
    assert resolve_convention("basicsr", 4, False, None) == Convention(
        "basicsr", y_channel=False, crop_border=4
    )


def test_the_ssim_heat_map_under_matlab_downsampling_averages_to_the_reported_ssim(folders, rng):
    """With ``ssim.downsample=1`` (the matlab preset) the map is of the downsampled images: its
    mean is the reported ssim, and it is the downsampled size less the window's border."""
    pred, gt = folders
    clean = random_rgb(rng, 400, 390)  # min side 390: ssim.m downsamples by 2
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", noisy(rng, clean, 40))
    params = {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "downsample": 1}
    config = EvalConfig(metrics=["ssim"], params={"ssim": params}, precision="float64")
    batch = pair_batch([load_pair(pair_folders(pred, gt).pairs[0])], config, torch.device("cpu"))
    heat = maps.metric_maps(batch, "ssim", params)
    assert heat.shape == (1, 400 // 2 - 10, 390 // 2 - 10)
    reported = METRICS["ssim"].compute(batch, params)
    assert heat.mean().item() == pytest.approx(reported.item(), rel=1e-12)


def test_a_maps_range_leaves_out_nan_pixels():
    """A NaN pixel (a NaN in a float image) must not make the colour scale NaN."""
    values = np.array([[np.nan, 0.25], [0.5, np.inf]])
    assert maps.map_range(values) == (0.25, 0.5)
    assert all(np.isnan(maps.map_range(np.full((2, 2), np.nan))))


def test_a_colour_beyond_the_tables_brightest_is_a_value_error_not_an_index_error():
    """``colormap.index_of`` promises ValueError for a colour not in the table (read_heat_map's
    callers catch it), also for white, whose key sorts after every colour of magma."""
    from lossctl import colormap

    assert colormap.index_of(colormap.LUT[[0, 255]]).tolist() == [0, 255]
    for colour in ([255, 255, 255], [0, 0, 0]):
        with pytest.raises(ValueError, match="not in the colormap"):
            colormap.index_of(np.array([colour], dtype=np.uint8))
