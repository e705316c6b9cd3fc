"""Metrics of 8-bit pairs read from their stored levels (level counts, integer differences) equal
the per-value computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossctl.levels
from lossctl.conventions import Convention
from lossctl.levels import compared_levels, count_levels

from .conftest import evaluate_folders, noisy, random_rgb, save_image

FROM_LEVELS = "l1,mse,rmse,psnr,charbonnier,smooth_l1,huber,log_cosh,quantile,bce,dice,iou,tv,weighted_tv"
PARAMS = [
    "charbonnier.eps=1e-2",
    "quantile.q=0.3",
    "iou.threshold=0.3",
    "huber.delta=0.05",
    "smooth_l1.beta=0.02",
]


def run(pred, gt, **options):
    return evaluate_folders(pred, gt, FROM_LEVELS, params=PARAMS, **options)


@pytest.fixture
def odd_pairs(folders, rng):
    """8-bit pairs of every kind the level counts must handle."""
    pred, gt = folders
    clean = random_rgb(rng, 30, 34)
    save_image(gt / "rgb.png", clean)
    save_image(pred / "rgb.png", noisy(rng, clean))
    save_image(gt / "extremes.png", np.where(clean > 127, 255, 0).astype(np.uint8))  # BCE's clamped logs
    save_image(pred / "extremes.png", np.where(noisy(rng, clean) > 100, 255, 0).astype(np.uint8))
    save_image(gt / "identical.png", clean)
    save_image(pred / "identical.png", clean)
    gray = rng.integers(0, 256, (30, 34), dtype=np.uint8)
    save_image(gt / "gray_vs_rgb.png", np.dstack([gray, noisy(rng, gray), gray]))
    save_image(pred / "gray_vs_rgb.png", gray)
    save_image(gt / "one_bit.png", gray)
    save_image(pred / "one_bit.png", gray > 128, mode="1")  # scaled by 1 against a gt scaled by 255
    for name, height, width in (("one_row", 7, 40), ("one_column", 40, 7)):  # one after cropping 3:
        thin = random_rgb(rng, height, width)  # no TV differences in that direction
        save_image(gt / f"{name}.png", thin)
        save_image(pred / f"{name}.png", noisy(rng, thin))
    return pred, gt


@pytest.mark.parametrize("precision, rel", [("float32", 2e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("crop", [0, 3])
@pytest.mark.parametrize("band_values", [lossctl.levels.BAND_VALUES, 50])  # 50: TV one row at a time
def test_level_counts_give_the_per_value_results(odd_pairs, monkeypatch, precision, rel, crop, band_values):
    counted = spy_on_counting(monkeypatch)
    convention = Convention(crop_border=crop)
    monkeypatch.setattr(lossctl.levels, "MIN_VALUES", 1)
    monkeypatch.setattr(lossctl.levels, "BAND_VALUES", band_values)
    from_levels = run(*odd_pairs, precision=precision, convention=convention)
    assert sum(counted.values()) == 7  # every pair was read from its counts
    monkeypatch.setattr(lossctl.levels, "MIN_VALUES", 1 << 40)
    per_value = run(*odd_pairs, precision=precision, convention=convention)
    assert sum(counted.values()) == 7
    for name, result in per_value.items():
        assert result.status == from_levels[name].status == "ok"
        for metric, value in result.values.items():
            assert from_levels[name].values[metric] == pytest.approx(value, rel=rel, abs=1e-12), (
                name,
                metric,
            )
    assert from_levels["identical"].values["psnr"] == float("inf")


def test_y_channel_of_rgb_is_not_read_from_levels(odd_pairs, monkeypatch):
    counted = spy_on_counting(monkeypatch)
    monkeypatch.setattr(lossctl.levels, "MIN_VALUES", 1)
    results = run(*odd_pairs, convention=Convention(y_channel=True))
    assert {result.status for result in results.values()} == {"ok"}
    assert counted == {1: 1}  # the one-bit grayscale pair only: Y of grayscale is the gray itself


def spy_on_counting(monkeypatch) -> dict[int, int]:
    """Pairs counted by lossctl.levels.count_levels, by channel count."""
    counted: dict[int, int] = {}
    real = lossctl.levels.count_levels

    def count_levels(preds, gts):
        channels = preds[0].shape[2]
        counted[channels] = counted.get(channels, 0) + len(preds)
        return real(preds, gts)

    monkeypatch.setattr(lossctl.levels, "count_levels", count_levels)
    return counted


def test_counts_stay_whole_numbers_beyond_float32(rng):
    side = 4097  # 4097^2 = 16,785,409 values in one bin: float32 cannot hold that count
    black = np.zeros((side, side, 1), dtype=np.uint8)
    counts = count_levels([black], [black])
    assert counts.dtype == torch.float64 and counts[0, 0, 0].item() == side * side
    assert counts.sum().item() == side * side


def test_counts_of_a_cropped_gray_side_repeated_to_rgb(rng):
    gray = rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    counts = count_levels([compared_levels(gray, 3, 2)], [compared_levels(rgb, 3, 2)])
    expected = np.zeros((256, 256))
    pred, gt = np.repeat(gray, 3, axis=2)[2:-2, 2:-2], rgb[2:-2, 2:-2]
    np.add.at(expected, (pred.ravel(), gt.ravel()), 1)
    np.testing.assert_array_equal(counts[0].numpy(), expected)


def test_level_counts_are_exact_beyond_float32_whole_numbers_even_in_one_row():
    """calcHist counts in float32 (whole numbers up to 2^24); a row of more values than that was
    counted in one piece, 2^24 + 3 equal pairs as 2^24 + 4."""
    values = (1 << 24) + 3
    row = np.zeros((1, values, 1), dtype=np.uint8)
    counts = count_levels([row], [row])
    assert counts[0, 0, 0].item() == values and counts.sum().item() == values
