"""The loss library's modules and reductions: every torch.nn.Module passes its settings and its
reduction through, and each reduction is the per-image values' sum or mean, against independent
references (float64 formulas, torch.nn.functional, scikit-image, pytorch-msssim)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from lossctl import losses as L


def images(seed: int, shape=(3, 3, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    pred = (target + 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0.01, 0.99)
    return pred, target


def reduced(values: np.ndarray, reduction: str):
    return {"none": values, "mean": values.mean(), "sum": values.sum()}[reduction]


# modules pass `reduction` through
def _per_image(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


MODULE_CASES = {
    "L1Loss": (lambda r: L.L1Loss(reduction=r), lambda p, g: np.abs(p - g)),
    "MSELoss": (lambda r: L.MSELoss(reduction=r), lambda p, g: (p - g) ** 2),
    "RMSELoss": (lambda r: L.RMSELoss(reduction=r), lambda p, g: np.sqrt(_per_image((p - g) ** 2).mean(1))),
    "SmoothL1Loss": (
        lambda r: L.SmoothL1Loss(beta=0.1, reduction=r),
        lambda p, g: np.where(np.abs(p - g) < 0.1, 0.5 * (p - g) ** 2 / 0.1, np.abs(p - g) - 0.05),
    ),
    "LogCoshLoss": (lambda r: L.LogCoshLoss(reduction=r), lambda p, g: np.log(np.cosh(p - g))),
    "QuantileLoss": (
        lambda r: L.QuantileLoss(q=0.8, reduction=r),
        lambda p, g: np.maximum(0.8 * (g - p), -0.2 * (g - p)),
    ),
    "BCELoss": (
        lambda r: L.BCELoss(reduction=r),
        lambda p, g: -(g * np.log(p) + (1 - g) * np.log(1 - p)),
    ),
    "TVLoss": (
        lambda r: L.TVLoss(reduction=r),
        lambda p, g: (
            (
                np.abs(np.diff(p, axis=2)).reshape(p.shape[0], -1).sum(1)
                + np.abs(np.diff(p, axis=3)).reshape(p.shape[0], -1).sum(1)
            )
            / np.prod(p.shape[1:])
        ),
    ),
}


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("name", sorted(MODULE_CASES))
def test_every_module_honours_its_reduction(name, reduction):
    make, reference = MODULE_CASES[name]
    pred, target = images(1)
    module = make(reduction)
    got = module(pred) if name == "TVLoss" else module(pred, target)
    np.testing.assert_allclose(
        got.numpy(), reduced(reference(pred.numpy(), target.numpy()), reduction), rtol=1e-7, atol=1e-15
    )


def test_weighted_tv_module_honours_its_reduction():
    pred, _ = images(2)
    weight = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p, w = pred.numpy(), weight.numpy()
    w_y, w_x = w[:, :, :-1, :], w[:, :, :, :-1]
    dy, dx = np.abs(np.diff(p, axis=2)), np.abs(np.diff(p, axis=3))
    expected = np.array([
        (w_y[i] * dy[i]).sum() / (3 * w_y[i].sum()) + (w_x[i] * dx[i]).sum() / (3 * w_x[i].sum())
        for i in range(3)
    ])  # fmt: skip
    np.testing.assert_allclose(L.WeightedTVLoss(reduction="none")(pred, weight).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(
        L.WeightedTVLoss(reduction="sum")(pred, weight).item(), expected.sum(), rtol=1e-10
    )


# SSIMLoss / MSSSIMLoss pass their settings
def test_ssim_loss_module_uses_its_window_sigma_constants_and_data_range():
    pred, target = images(4, shape=(2, 3, 32, 32))
    # skimage sizes its Gaussian from sigma (radius int(3.5 sigma + 0.5)): sigma 0.9 gives the 7 taps
    module = L.SSIMLoss(data_range=255.0, window_size=7, sigma=0.9, k1=0.02, k2=0.05, reduction="none")
    got = module(pred * 255, target * 255)
    expected = [
        1 - structural_similarity(
            target[i].numpy() * 255, pred[i].numpy() * 255, win_size=7, sigma=0.9, K1=0.02, K2=0.05,
            gaussian_weights=True, use_sample_covariance=False, data_range=255.0, channel_axis=0,
        )
        for i in range(2)
    ]  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_ms_ssim_loss_module_uses_its_window_sigma_constants_and_data_range():
    pred, target = images(5, shape=(2, 3, 100, 100))
    module = L.MSSSIMLoss(data_range=255.0, window_size=7, sigma=1.0, k2=0.05, reduction="none")
    got = module(pred * 255, target * 255)
    expected = 1 - pytorch_msssim.ms_ssim(
        pred * 255,
        target * 255,
        data_range=255.0,
        size_average=False,
        win_size=7,
        win_sigma=1.0,
        K=(0.01, 0.05),
    )
    np.testing.assert_allclose(
        got.numpy(), expected.numpy(), rtol=0, atol=2e-6
    )  # pytorch-msssim's float32 window


# PSNRLoss passes data_range and eps
def test_psnr_loss_module_uses_its_data_range_and_eps():
    pred, target = images(6)
    mse = _per_image((pred.numpy() - target.numpy()) ** 2).mean(1)
    got = L.PSNRLoss(data_range=255.0, eps=0.0, reduction="none")(pred * 255, target * 255)
    np.testing.assert_allclose(got.numpy(), -10 * np.log10(255.0**2 / (mse * 255**2)), rtol=1e-10)
    got = L.PSNRLoss(eps=0.01, reduction="none")(pred, target)
    np.testing.assert_allclose(got.numpy(), -10 * np.log10(1 / (mse + 0.01)), rtol=1e-10)


# 1 - score losses: 'sum' is the sum of each image's 1 - score
def test_sum_of_one_minus_score_losses_is_the_sum_over_images():
    pred, target = images(7, shape=(3, 1, 16, 16))
    p, g = _per_image(pred.numpy()), _per_image(target.numpy())
    dice = 2 * (p * g).sum(1) / (p.sum(1) + g.sum(1))
    assert L.dice_loss(pred, target, reduction="sum").item() == pytest.approx((1 - dice).sum(), rel=1e-10)
    assert L.DiceLoss(reduction="sum")(pred, target).item() == pytest.approx((1 - dice).sum(), rel=1e-10)
    ssim = np.array([
        structural_similarity(target[i, 0].numpy(), pred[i, 0].numpy(), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=1.0)
        for i in range(3)
    ])  # fmt: skip
    assert L.ssim_loss(pred, target, reduction="sum").item() == pytest.approx((1 - ssim).sum(), rel=1e-9)
    big_pred, big_target = images(8, shape=(2, 1, 161, 161))
    ms = pytorch_msssim.ms_ssim(big_pred, big_target, data_range=1.0, size_average=False)
    assert L.ms_ssim_loss(big_pred, big_target, reduction="sum").item() == pytest.approx(
        (1 - ms).sum().item(), abs=4e-6
    )


# CrossEntropyLoss ignore_index
def test_cross_entropy_module_passes_ignore_index_and_defaults_to_torch_s():
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 256, 3, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 256, (2, 3, 3), generator=generator)
    labels[0, 0] = 255
    labels[1, 1] = 7
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            L.CrossEntropyLoss(ignore_index=7, reduction=reduction)(logits, labels),
            F.cross_entropy(logits, labels, ignore_index=7, reduction=reduction),
        )
        torch.testing.assert_close(  # torch's default, -100: label 255 is a class here
            L.CrossEntropyLoss(reduction=reduction)(logits, labels),
            F.cross_entropy(logits, labels, reduction=reduction),
        )


# per-channel weights of WeightedTVLoss
def test_weighted_tv_accepts_a_weight_per_channel_as_documented():
    pred, _ = images(10, shape=(2, 3, 12, 12))
    weight = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    p, w = pred.numpy(), weight.numpy()
    w_y, w_x = w[:, :, :-1, :], w[:, :, :, :-1]
    dy, dx = np.abs(np.diff(p, axis=2)), np.abs(np.diff(p, axis=3))
    # BasicSR weighted mean: sum(w |d|) / sum(w), w already holding every channel
    expected = [
        (w_y[i] * dy[i]).sum() / w_y[i].sum() + (w_x[i] * dx[i]).sum() / w_x[i].sum() for i in range(2)
    ]
    np.testing.assert_allclose(
        L.weighted_tv_loss(pred, weight, reduction="none").numpy(), expected, rtol=1e-10
    )


# log-cosh of large negative errors is finite
def test_log_cosh_of_large_negative_errors_alone():
    diff = torch.tensor([-1000.0, -50.0, -20.0], dtype=torch.float64)
    expected = diff.abs() + torch.log1p(torch.exp(-2 * diff.abs())) - math.log(2)
    got = L.log_cosh_loss(diff, torch.zeros(3, dtype=torch.float64), reduction="none")
    torch.testing.assert_close(got, expected)
    got32 = L.log_cosh_loss(diff.float(), torch.zeros(3), reduction="none")
    assert torch.isfinite(got32).all()


# binary IoU and quantile ends
def test_binary_iou_counts_the_threshold_itself_and_two_empty_masks_score_one():
    pred = torch.tensor([0.5, 0.2, 0.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    assert L.binary_iou(pred, target).item() == 1.0  # P = pred >= 0.5 is exactly G
    empty = torch.zeros(2, 1, 4, 4)
    assert L.binary_iou(empty, empty, reduction="none").tolist() == [1.0, 1.0]


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_quantile_loss_accepts_the_ends_of_0_1(q):
    pred, target = images(12)
    e = target.numpy() - pred.numpy()
    expected = np.maximum(q * e, (q - 1) * e).mean()
    assert L.quantile_loss(pred, target, q=q).item() == pytest.approx(expected, rel=1e-12)
    assert L.QuantileLoss(q=q)(pred, target).item() == pytest.approx(expected, rel=1e-12)
