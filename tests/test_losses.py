"""Loss and metric functions against float64 formulas written here, torch.nn and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lossctl import losses as L

from .conftest import SAMPLE_GT, SAMPLE_PRED

REDUCTIONS = ["none", "mean", "sum"]


def pair(seed: int = 0, shape=(2, 3, 24, 28), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return pred.to(dtype), target.to(dtype)


def reduce_reference(values: np.ndarray, reduction: str) -> np.ndarray:
    return {"none": values, "mean": values.mean(), "sum": values.sum()}[reduction]


# Element-wise references in float64 numpy, written from the METRICS.md definitions.
ELEMENTWISE = {
    "l1": (L.l1_loss, {}, lambda p, g: np.abs(p - g)),
    "mse": (L.mse_loss, {}, lambda p, g: (p - g) ** 2),
    "charbonnier": (L.charbonnier_loss, {}, lambda p, g: np.sqrt((p - g) ** 2 + 1e-3**2)),
    "charbonnier_eps": (L.charbonnier_loss, {"eps": 0.05}, lambda p, g: np.sqrt((p - g) ** 2 + 0.05**2)),
    "log_cosh": (L.log_cosh_loss, {}, lambda p, g: np.log(np.cosh(p - g))),
    "quantile": (L.quantile_loss, {}, lambda p, g: np.maximum(0.5 * (g - p), -0.5 * (g - p))),
    "quantile_0.9": (L.quantile_loss, {"q": 0.9}, lambda p, g: np.maximum(0.9 * (g - p), -0.1 * (g - p))),
    "bce": (
        L.bce_loss,
        {},
        lambda p, g: -(g * np.maximum(np.log(p), -100) + (1 - g) * np.maximum(np.log(1 - p), -100)),
    ),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_losses_match_float64_formulas(name, reduction):
    function, kwargs, reference = ELEMENTWISE[name]
    pred, target = pair(seed=1)
    with np.errstate(divide="ignore"):
        expected = reduce_reference(reference(pred.numpy(), target.numpy()), reduction)
    got = function(pred, target, reduction=reduction, **kwargs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


TORCH_EQUIVALENTS = [
    (L.l1_loss, {}, F.l1_loss, {}),
    (L.mse_loss, {}, F.mse_loss, {}),
    (L.smooth_l1_loss, {}, F.smooth_l1_loss, {}),
    (L.smooth_l1_loss, {"beta": 0.05}, F.smooth_l1_loss, {"beta": 0.05}),
    (L.smooth_l1_loss, {"beta": 0.0}, F.smooth_l1_loss, {"beta": 0.0}),
    (L.huber_loss, {}, F.huber_loss, {}),
    (L.huber_loss, {"delta": 0.1}, F.huber_loss, {"delta": 0.1}),
    (L.bce_loss, {}, F.binary_cross_entropy, {}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ours, kwargs, theirs, their_kwargs", TORCH_EQUIVALENTS)
def test_losses_match_torch_nn(ours, kwargs, theirs, their_kwargs, reduction):
    for dtype in (torch.float64, torch.float32):
        pred, target = pair(seed=2, dtype=dtype)
        expected = theirs(pred, target, reduction=reduction, **their_kwargs)
        torch.testing.assert_close(ours(pred, target, reduction=reduction, **kwargs), expected)


def test_bce_clamps_logs_at_minus_100_like_torch():
    pred = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.3], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.6], dtype=torch.float64)
    expected = F.binary_cross_entropy(pred, target, reduction="none")
    torch.testing.assert_close(L.bce_loss(pred, target, reduction="none"), expected)
    assert L.bce_loss(pred[:1], target[:1]).item() == 100.0


def test_write_up_examples():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert L.l1_loss(pred, torch.tensor([[1.0, 2.0], [3.0, 6.0]])).item() == 0.5
    target = torch.tensor([[3.0, 5.0], [8.0, 6.0]])
    assert L.mse_loss(pred, target, reduction="none").tolist() == [[4.0, 9.0], [25.0, 4.0]]
    assert L.mse_loss(pred, target, reduction="sum").item() == 42.0
    assert L.mse_loss(pred, target, reduction="mean").item() == 10.5


def test_log_cosh_is_stable_for_large_errors():
    pred = torch.tensor([1000.0, -1000.0, 0.0])
    got = L.log_cosh_loss(pred, torch.zeros(3), reduction="none")
    expected = torch.tensor([1000.0 - math.log(2), 1000.0 - math.log(2), 0.0])
    torch.testing.assert_close(got, expected)


def per_image(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_image_level_metrics_match_float64_formulas(reduction):
    pred, target = pair(seed=3)
    p, g = pred.numpy(), target.numpy()
    mse = per_image((p - g) ** 2).mean(axis=1)
    cases = {
        L.rmse: np.sqrt(mse),
        L.psnr: 10 * np.log10(1 / mse),
        L.dice_coefficient: 2 * per_image(p * g).sum(1) / (per_image(p).sum(1) + per_image(g).sum(1)),
    }
    for function, expected in cases.items():
        np.testing.assert_allclose(
            function(pred, target, reduction=reduction), reduce_reference(expected, reduction)
        )


def test_psnr_matches_scikit_image_and_is_inf_for_identical_images():
    pred, target = pair(seed=4)
    got = L.psnr(pred, target, reduction="none")
    for index in range(pred.shape[0]):
        expected = peak_signal_noise_ratio(target[index].numpy(), pred[index].numpy(), data_range=1)
        assert got[index].item() == pytest.approx(expected, rel=1e-12)
    assert L.psnr(target, target, reduction="none").tolist() == [math.inf, math.inf]
    scaled = L.psnr(pred * 255, target * 255, data_range=255.0, reduction="none")
    torch.testing.assert_close(scaled, got)


def test_psnr_loss_is_negative_psnr():
    """Erratum: the write-up's PSNRLoss returns +PSNR, which a minimiser would drive down."""
    pred, target = pair(seed=5)
    loss = L.psnr_loss(pred, target, eps=0.0, reduction="none")
    torch.testing.assert_close(loss, -L.psnr(pred, target, reduction="none"))
    assert L.PSNRLoss()(pred, target) < 0
    identical = L.psnr_loss(target, target.clone(), reduction="none")
    torch.testing.assert_close(identical, torch.full((2,), -80.0, dtype=torch.float64))


def skimage_ssim(pred: np.ndarray, target: np.ndarray, **kwargs) -> float:
    return structural_similarity(
        target,
        pred,
        gaussian_weights=True,
        sigma=kwargs.get("sigma", 1.5),
        win_size=kwargs.get("win_size"),
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )


@pytest.mark.parametrize("shape", [(2, 3, 32, 48), (1, 1, 11, 11), (3, 1, 40, 17), (1, 3, 64, 64)])
def test_ssim_matches_scikit_image_on_random_images(shape):
    pred, target = pair(seed=6, shape=shape)
    got = L.ssim(pred, target, reduction="none")
    for index in range(shape[0]):
        expected = skimage_ssim(pred[index].numpy(), target[index].numpy())
        assert got[index].item() == pytest.approx(expected, abs=1e-12)


def test_ssim_window_and_sigma_parameters_match_scikit_image():
    """scikit-image's Gaussian has 2 int(3.5 sigma + 0.5) + 1 taps: 9 for sigma 1, as chosen here."""
    pred, target = pair(seed=7, shape=(1, 3, 40, 40))
    got = L.ssim(pred, target, window_size=9, sigma=1.0, reduction="none")
    expected = skimage_ssim(pred[0].numpy(), target[0].numpy(), sigma=1.0, win_size=9)
    assert got.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("window_size, sigma", [(7, 0.9), (51, 7.0)])
def test_ssim_of_short_and_long_windows_matches_scikit_image_in_both_precisions(window_size, sigma):
    """Windows of fewer than 50 taps are filtered by two 1-D passes on a CPU, longer ones by
    OpenCV's separable filter (its 2-D filter would switch to a DFT); skimage's window for a
    sigma has 2 int(3.5 sigma + 0.5) + 1 taps."""
    pred, target = pair(seed=8, shape=(2, 3, 64, 70))
    expected = [
        skimage_ssim(pred[index].numpy(), target[index].numpy(), sigma=sigma, win_size=window_size)
        for index in range(2)
    ]
    got = L.ssim(pred, target, window_size=window_size, sigma=sigma, reduction="none")
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    single = L.ssim(pred.float(), target.float(), window_size=window_size, sigma=sigma, reduction="none")
    assert single.tolist() == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("shape", [(0, 3, 200, 200), (2, 0, 200, 200)])
def test_ssim_of_no_images_or_no_channels_is_empty_or_nan_not_an_error(shape):
    pred, target = torch.rand(shape), torch.rand(shape)
    assert L.ssim(pred, target, reduction="none").shape == (shape[0],)
    assert math.isnan(L.ssim(pred, target).item()) and math.isnan(L.ms_ssim(pred, target).item())
    assert math.isnan(L.ssim_loss(pred, target).item())


IMAGE = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
BIG = torch.rand(1, 1, 161, 161, generator=torch.Generator().manual_seed(6))
PROBS = torch.softmax(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)), dim=1)
LABELS = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(8))
NAN = float("nan")


def test_tv_of_no_images_is_empty_or_nan_not_an_error():
    assert L.tv_loss(torch.rand(0, 3, 8, 8), reduction="none").shape == (0,)
    assert math.isnan(L.TVLoss()(torch.rand(0, 3, 8, 8)).item())


def test_the_loss_wrappers_and_modules_pass_every_setting_through():
    pred, target = pair(seed=16, shape=(1, 3, 600, 600))
    downsampled = 1 - L.ssim(pred, target, downsample=True)
    torch.testing.assert_close(L.ssim_loss(pred, target, downsample=True), downsampled)
    torch.testing.assert_close(L.SSIMLoss(downsample=True)(pred, target), downsampled)
    three_scales = 1 - L.ms_ssim(pred, target, weights=(0.2, 0.3, 0.5))
    torch.testing.assert_close(L.ms_ssim_loss(pred, target, weights=(0.2, 0.3, 0.5)), three_scales)
    torch.testing.assert_close(L.MSSSIMLoss(weights=(0.2, 0.3, 0.5))(pred, target), three_scales)
    assert not torch.allclose(three_scales, L.ms_ssim_loss(pred, target))
    ignoring = 1 - L.multiclass_dice(PROBS, LABELS, ignore_index=2).mean(dim=1)
    torch.testing.assert_close(L.dice_loss(PROBS, LABELS, reduction="none", ignore_index=2), ignoring)
    torch.testing.assert_close(L.DiceLoss(reduction="none", ignore_index=2)(PROBS, LABELS), ignoring)
    assert not torch.allclose(ignoring, L.dice_loss(PROBS, LABELS, reduction="none"))


def load_sample(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    def load(path):
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255).permute(
            2, 0, 1
        )

    pred_path = next(SAMPLE_PRED.glob(f"{name}.*"))
    return load(pred_path)[None], load(SAMPLE_GT / f"{name}.png")[None]


@pytest.mark.parametrize("name", ["blur", "jpeg_artifacts", "noise", "upscale_x4"])
def test_ssim_and_psnr_match_scikit_image_on_real_photos(name):
    pred, target = load_sample(name)
    assert L.ssim(pred, target).item() == pytest.approx(
        skimage_ssim(pred[0].numpy(), target[0].numpy()), abs=1e-10
    )
    psnr = peak_signal_noise_ratio(target[0].numpy(), pred[0].numpy(), data_range=1)
    assert L.psnr(pred, target).item() == pytest.approx(psnr, abs=1e-10)
    # float32 agrees with float64 within the tolerances of METRICS.md.
    assert L.ssim(pred.float(), target.float()).item() == pytest.approx(L.ssim(pred, target).item(), rel=1e-5)
    assert L.psnr(pred.float(), target.float()).item() == pytest.approx(psnr, abs=1e-4)


def test_ssim_of_identical_images_is_one_and_loss_zero():
    _, target = pair(seed=8)
    torch.testing.assert_close(
        L.ssim(target, target.clone(), reduction="none"), torch.ones(2, dtype=torch.float64)
    )
    torch.testing.assert_close(L.SSIMLoss()(target, target.clone()), torch.tensor(0.0, dtype=torch.float64))


def tv_reference(p: np.ndarray) -> np.ndarray:
    total = np.zeros(p.shape[0])
    n, c, h, w = p.shape
    for index in range(n):
        image = p[index]
        total[index] = np.abs(np.diff(image, axis=1)).sum() + np.abs(np.diff(image, axis=2)).sum()
    return total / (c * h * w)


def test_tv_is_anisotropic_and_normalised_by_chw():
    pred, _ = pair(seed=9)
    np.testing.assert_allclose(L.tv_loss(pred, reduction="none"), tv_reference(pred.numpy()))
    np.testing.assert_allclose(L.tv_loss(pred, reduction="sum"), tv_reference(pred.numpy()).sum())


def test_isotropic_tv_differs_from_anisotropic():
    """Erratum: the write-up's text describes isotropic TV while its code is anisotropic."""
    pred, _ = pair(seed=10, shape=(1, 1, 8, 8))
    p = pred[0, 0].numpy()
    dy, dx = np.diff(p, axis=0)[:, :-1], np.diff(p, axis=1)[:-1, :]
    expected = np.sqrt(dy**2 + dx**2).sum() / 64
    assert L.tv_loss(pred, isotropic=True).item() == pytest.approx(expected)
    assert L.tv_loss(pred, isotropic=True).item() != pytest.approx(L.tv_loss(pred).item())


def weighted_tv_reference(p: np.ndarray, w_y: np.ndarray, w_x: np.ndarray) -> np.ndarray:
    """BasicSR WeightedTVLoss per image: weighted L1 of each difference, normalised by C sum(w)."""
    out = np.zeros(p.shape[0])
    channels = p.shape[1]
    for index in range(p.shape[0]):
        dy, dx = np.abs(np.diff(p[index], axis=1)), np.abs(np.diff(p[index], axis=2))
        out[index] = (w_y[index] * dy).sum() / (channels * w_y[index].sum()) + (w_x[index] * dx).sum() / (
            channels * w_x[index].sum()
        )
    return out


def test_weighted_tv_with_a_weight_map_matches_basicsr():
    pred, _ = pair(seed=11)
    weight = torch.rand(2, 1, 24, 28, dtype=torch.float64)
    w = weight.numpy()
    expected = weighted_tv_reference(pred.numpy(), w[:, :, :-1, :], w[:, :, :, :-1])
    np.testing.assert_allclose(L.weighted_tv_loss(pred, weight, reduction="none"), expected)


def test_weighted_tv_weights_each_difference():
    """Erratum: weights must act per pixel, not on differences already summed to a scalar."""
    pred = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    pred[:, :, :, 2:] = 1.0  # one vertical edge, between columns 1 and 2
    weight = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert L.weighted_tv_loss(pred, weight).item() == pytest.approx(4 / 12)  # 4 unit steps over 12 weights
    weight[:, :, :, 1] = 0.0  # zero weight exactly on the edge removes it
    assert L.weighted_tv_loss(pred, weight).item() == 0.0
    assert L.weighted_tv_loss(pred, torch.zeros_like(weight)).item() == 0.0  # all-zero weights: 0, not NaN


def test_edge_aware_weights_follow_the_target():
    pred, target = pair(seed=12)
    w_y, w_x = L.edge_aware_weights(target)
    t = target.numpy()
    np.testing.assert_allclose(w_y, np.exp(-np.abs(np.diff(t, axis=2)).mean(axis=1, keepdims=True)))
    np.testing.assert_allclose(w_x, np.exp(-np.abs(np.diff(t, axis=3)).mean(axis=1, keepdims=True)))
    expected = weighted_tv_reference(pred.numpy(), w_y.numpy(), w_x.numpy())
    np.testing.assert_allclose(L.weighted_tv_loss(pred, (w_y, w_x), reduction="none"), expected)


def test_dice_of_two_empty_masks_is_one():
    empty = torch.zeros(2, 1, 8, 8)
    assert L.dice_coefficient(empty, empty, reduction="none").tolist() == [1.0, 1.0]
    assert L.dice_loss(empty, empty).item() == 0.0


def test_reductions_of_image_level_metrics():
    pred, target = pair(seed=13)
    per_image_values = L.ssim(pred, target, reduction="none")
    assert per_image_values.shape == (2,)
    torch.testing.assert_close(L.ssim(pred, target, reduction="sum"), per_image_values.sum())
    torch.testing.assert_close(L.ssim(pred, target), per_image_values.mean())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: L.l1_loss(torch.zeros(2, 3), torch.zeros(3, 2)), "same shape"),
        (lambda: L.mse_loss(torch.zeros(2, dtype=torch.int64), torch.zeros(2)), "floating-point"),
        (lambda: L.psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)), r"\(N, C, H, W\)"),
        (lambda: L.l1_loss(torch.zeros(2), torch.zeros(2), reduction="avg"), "reduction"),
        (lambda: L.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)), "smaller than the 11x11"),
        (lambda: L.ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), window_size=4), "odd"),
        (lambda: L.bce_loss(torch.full((2,), 1.5), torch.zeros(2)), r"\[0, 1\]"),
        (lambda: L.huber_loss(torch.zeros(2), torch.zeros(2), delta=0), "delta"),
        (lambda: L.quantile_loss(torch.zeros(2), torch.zeros(2), q=2), "q must"),
        (lambda: L.l1_loss([0.0], torch.zeros(1)), "torch.Tensor"),
        (lambda: L.L1Loss(reduction="bogus"), "reduction"),
        # Settings a sign or a NaN would otherwise slip through (C1, C2 and PSNR square the range).
        (lambda: L.psnr(IMAGE, IMAGE, data_range=-1.0), "data_range must be > 0; got -1.0"),
        (lambda: L.psnr(IMAGE, IMAGE, data_range=0.0), "data_range must be > 0"),
        (lambda: L.psnr_loss(IMAGE, IMAGE, data_range=-255.0), "data_range must be > 0"),
        (lambda: L.psnr_loss(IMAGE, IMAGE, eps=-1e-3), "eps must be >= 0"),
        (lambda: L.ssim(IMAGE, IMAGE, data_range=-1.0), "data_range must be > 0"),
        (lambda: L.ms_ssim(BIG, BIG, data_range=0.0), "data_range must be > 0"),
        (lambda: L.ssim(IMAGE, IMAGE, k1=-0.01), "k1 must be >= 0"),
        (lambda: L.ssim(IMAGE, IMAGE, k2=NAN), "k2 must be >= 0; got nan"),
        (lambda: L.ssim(IMAGE, IMAGE, sigma=NAN), "sigma must be > 0; got nan"),
        (lambda: L.ssim(IMAGE, IMAGE, sigma=1e-300), "sigma is too small"),
        (lambda: L.ssim(IMAGE, IMAGE, k1=1e200), "k1 \\* data_range is too large"),
        (lambda: L.SSIMLoss(data_range=-1.0), "data_range must be > 0"),
        (lambda: L.charbonnier_loss(IMAGE, IMAGE, eps=NAN), "eps must be >= 0; got nan"),
        (lambda: L.huber_loss(IMAGE, IMAGE, delta=NAN), "delta must be > 0; got nan"),
        (lambda: L.smooth_l1_loss(IMAGE, IMAGE, beta=NAN), "beta must be >= 0; got nan"),
        (lambda: L.dice_loss(PROBS, LABELS, smooth=-1.0), "smooth must be >= 0"),
        (lambda: L.dice_loss(IMAGE, IMAGE, ignore_index=0), "ignore_index applies to a label map"),
        (lambda: L.ms_ssim(BIG, BIG, weights=()), "one weight per scale"),
        (lambda: L.MSSSIMLoss(weights=()), "one weight per scale"),
        (lambda: L.matlab_downsample(torch.zeros(1, 1, 600, 600, dtype=torch.int64)), "floating-point"),
        (lambda: L.tv_loss(torch.zeros(1, 3, 0, 8)), "images have no pixels"),
        (lambda: L.edge_aware_tv_loss(torch.zeros(1, 3, 0, 8), torch.zeros(1, 3, 0, 8)), "no pixels"),
        (lambda: L.psnr(torch.zeros(1, 3, 8, 0), torch.zeros(1, 3, 8, 0)), "no pixels"),
        # Infinite settings gave inf or NaN losses; a target outside [0, 1] a Dice of 1.99.
        (lambda: L.charbonnier_loss(IMAGE, IMAGE, eps=math.inf), "eps must be finite; got inf"),
        (lambda: L.psnr(IMAGE, IMAGE, data_range=math.inf), "data_range must be finite"),
        (lambda: L.dice_loss(PROBS, LABELS, smooth=math.inf), "smooth must be finite"),
        (lambda: L.huber_loss(IMAGE, IMAGE, delta="1"), "delta must be a number; got str"),
        (lambda: L.bce_loss(torch.full((2,), 0.5), torch.tensor([0.0, 255.0])), "target must hold probabilities"),
        (lambda: L.dice_coefficient(IMAGE, IMAGE * 255), "scale a 0/255 mask to 0/1"),
        # The wrong type of setting was a TypeError, AttributeError or RuntimeError from inside.
        (lambda: L.ssim(IMAGE, IMAGE, window_size=7.0), "window_size must be a positive odd integer; got 7.0"),
        (lambda: L.ms_ssim(BIG, BIG, weights=torch.ones(5)), "weights must be a tuple of numbers"),
        (lambda: L.ms_ssim(BIG, BIG, weights=(NAN,) * 5), "weights must be finite numbers"),
        (lambda: L.binary_iou(IMAGE, IMAGE, threshold=NAN), "threshold must be >= 0; got nan"),
        (lambda: L.multiclass_dice(PROBS, [0, 1]), "labels must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _bright_against_dark() -> tuple[torch.Tensor, torch.Tensor]:
    """Low-contrast images 0.75 apart in brightness, and flat 16/255 against flat 235/255 planes."""
    generator = torch.Generator().manual_seed(17)
    target = 0.1 + 0.05 * torch.rand(2, 3, 200, 200, generator=generator, dtype=torch.float64)
    pred = (target + 0.75 + 0.01 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(
        0, 1
    )
    pred[1], target[1] = 235 / 255, 16 / 255
    return pred, target


@pytest.mark.parametrize("metric", [L.ssim, L.ms_ssim])
def test_float32_ssim_of_images_far_apart_in_brightness_meets_the_1e_5_contract(metric):
    """The variance of d = x - y is E[d^2] - E[d]^2: with d large everywhere, float32 lost 1e-4
    relative against C2 (up to 2.7e-4 on black against white) until d was centred."""
    pred, target = _bright_against_dark()
    reference = metric(pred, target, reduction="none")
    single = metric(pred.float(), target.float(), reduction="none").double()
    assert ((single - reference) / reference).abs().max().item() < 1e-6


def _noisy_mask_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A two-level mask against a noisy copy: s = x + y keeps far from its plane mean everywhere,
    and varies little locally (the bundled mask sample, cropped as --crop-border 4 crops it)."""
    from PIL import Image

    pred, target = (
        torch.from_numpy(np.asarray(Image.open(folder / "mask" / "coins_mask.png"), dtype=np.float64) / 255)
        for folder in (SAMPLE_PRED, SAMPLE_GT)
    )
    crop = (Ellipsis, slice(4, -4), slice(4, -4))
    return pred[crop].expand(1, 3, -1, -1), target[crop].expand(1, 3, -1, -1)


@pytest.mark.parametrize("metric", [L.ssim, L.ms_ssim])
def test_float32_ssim_of_a_noisy_mask_meets_the_1e_5_contract(metric):
    """Each variance of s is a difference of two filtered maps of order s^2: their float32
    rounding, alike across flat stretches, moved SSIM by up to 1.2e-5 (9.6e-6 here) until such
    planes were filtered in float64."""
    pred, target = _noisy_mask_pair()
    reference = metric(pred, target, reduction="none")
    single = metric(pred.float(), target.float(), reduction="none").double()
    assert ((single - reference) / reference).abs().max().item() < 2e-6


def _far_apart_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pairs whose means are far apart, so SSIM's luminance term is near 0 (float64)."""
    noise = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    return {
        "white against black": (torch.ones_like(noise), torch.zeros_like(noise)),
        "black against noise": (torch.zeros_like(noise), noise),
        "dark against bright": ((0.02 * noise).round(decimals=3), (0.5 + 0.5 * noise.flip(-1)).round(decimals=3)),
    }


def _as_on_cuda(monkeypatch) -> None:
    """Every float32 plane through the path CUDA takes (float64 maps of s and of d's mean, and a
    float64 luminance, with no estimate: it would make the host wait)."""
    import importlib

    ssim_module = importlib.import_module("lossctl.losses.ssim")
    maps_of = ssim_module._ssim_maps_of
    monkeypatch.setattr(
        ssim_module,
        "_ssim_maps",
        lambda x, y, centres, *args: maps_of(x, y, centres, *args, wide_totals=x.dtype == torch.float32),
    )


@pytest.mark.parametrize("device", ["cpu", "cpu as on cuda", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("metric", [L.ssim, L.ms_ssim])
@pytest.mark.parametrize("case", list(_far_apart_pairs()))
def test_float32_ssim_far_below_one_keeps_its_relative_precision(metric, case, device, monkeypatch):
    """The luminance 1 - 2 mu_d^2 / D is off by float32's rounding, absolute, so an SSIM of 1e-4
    (white against black) was 2.7e-4 relative from float64, MS-SSIM 3.5e-5, black against noise
    4.5e-5: it is made from float64 means in float64 now, for the planes a CPU's estimate picks
    and on CUDA always."""
    pred, target = _far_apart_pairs()[case]
    reference = metric(pred, target, reduction="none")
    if device == "cpu as on cuda":
        _as_on_cuda(monkeypatch)
        device = "cpu"
    single = metric(pred.float().to(device), target.float().to(device), reduction="none").double().cpu()
    assert ((single - reference) / reference).abs().max().item() < 2e-6


def test_only_planes_whose_float32_rounding_matters_are_filtered_in_float64(monkeypatch):
    import importlib

    ssim_module = importlib.import_module("lossctl.losses.ssim")
    wide = []
    maps_of = ssim_module._ssim_maps_of
    monkeypatch.setattr(
        ssim_module, "_ssim_maps_of", lambda *args, **kw: (wide.append(kw.get("wide_totals", False)), maps_of(*args, **kw))[1]
    )
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    L.ssim(photo, (photo + 0.05 * torch.rand(photo.shape)).clamp(0, 1))
    assert wide == [False]
    wide.clear()
    L.ssim(*(images.float() for images in _noisy_mask_pair()))
    assert wide == [False, True]
    wide.clear()
    L.ssim(*_noisy_mask_pair())  # float64: nothing to check
    assert wide == [False]


def test_half_precision_is_computed_in_float32():
    pred, target = pair(seed=14, dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        got = L.ssim(pred.to(dtype), target.to(dtype))
        assert got.dtype == torch.float32
        expected = L.ssim(pred.to(dtype).double(), target.to(dtype).double())
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_nan_inputs_give_nan_not_a_finite_number():
    """A NaN prediction must surface as NaN: a finite loss would hide a diverged model."""
    pred, target = pair(seed=15, shape=(1, 1, 12, 12))
    pred[0, 0, 3, 3] = float("nan")
    for value in (
        L.rmse(pred, target),
        L.charbonnier_loss(pred, target),
        L.log_cosh_loss(pred, target),
        L.psnr(pred, target),
        L.ssim(pred, target),
        L.binary_cross_entropy_error(pred, target).mean(),
    ):
        assert torch.isnan(value)
    with pytest.raises(ValueError, match="NaN"):
        L.bce_loss(pred, target)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: L.CharbonnierLoss(eps=-1), "eps must be >= 0"),
        (lambda: L.HuberLoss(delta=0), "delta must be > 0"),
        (lambda: L.QuantileLoss(q=2), "q must be in"),
        (lambda: L.PSNRLoss(data_range=0), "data_range must be > 0"),
        (lambda: L.DiceLoss(smooth=-1), "smooth must be >= 0"),
        (lambda: L.SmoothL1Loss(beta=math.nan), "beta must be >= 0"),
    ],
)
def test_modules_check_their_settings_when_made(make, message):
    """They were checked at the first forward only (SSIMLoss alone checked when made)."""
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_scalars_are_numbers_for_settings():
    """A data range from an array's max is a NumPy scalar: refusing it as 'not a number' would be wrong."""
    import numpy as np

    assert L.psnr(IMAGE, IMAGE * 0.5, data_range=np.float32(1.0)) == L.psnr(IMAGE, IMAGE * 0.5)
    assert L.ssim(IMAGE, IMAGE * 0.5, window_size=np.int64(11)) == L.ssim(IMAGE, IMAGE * 0.5)


def test_module_repr_shows_the_settings():
    assert repr(L.CharbonnierLoss(eps=0.1)) == "CharbonnierLoss(eps=0.1, reduction='mean')"
    assert "window_size=7" in repr(L.SSIMLoss(window_size=7)) and "downsample=False" in repr(L.SSIMLoss())
    assert repr(L.L1Loss(reduction="sum")) == "L1Loss(reduction='sum')"


def test_bce_keeps_float32_precision_for_confident_negatives():
    """log(1 - p) rounded a small p away in float32 (p = 1e-6: 1.3% off); log1p(-p), as torch.nn's
    BCELoss takes it, keeps METRICS.md's 1e-5."""
    pred = torch.tensor([1e-7, 1e-6, 1e-5, 0.3, 1 - 1e-6], dtype=torch.float64).float().double()
    target = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    reference = L.bce_loss(pred, target, reduction="none")  # of the inputs as float32 holds them
    for requires_grad in (False, True):
        single = L.bce_loss(pred.float().requires_grad_(requires_grad), target.float(), reduction="none")
        torch.testing.assert_close(single.double(), reference, rtol=1e-5, atol=0)
    expected = torch.nn.functional.binary_cross_entropy(pred.float(), target.float(), reduction="none")
    torch.testing.assert_close(L.bce_loss(pred.float(), target.float(), reduction="none"), expected)


def test_cross_entropy_ignores_a_pixel_whose_log_probability_is_minus_inf():
    """An ignored pixel's -inf times 0 was NaN (log of a one-hot prediction, as the docstring suggests)."""
    one_hot = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): class 0, then class 1
    target = torch.tensor([[[255, 1]]])
    for reduction in ("none", "mean", "sum"):
        ours = L.cross_entropy_loss(one_hot.log(), target, reduction=reduction, ignore_index=255)
        theirs = torch.nn.functional.cross_entropy(one_hot.log(), target, reduction=reduction, ignore_index=255)
        torch.testing.assert_close(ours, theirs)


def test_charbonnier_eps_that_rounds_to_zero_keeps_a_finite_gradient():
    pred = torch.tensor([0.5, 0.25], requires_grad=True)
    L.charbonnier_loss(pred, torch.tensor([0.5, 0.75]), eps=1e-46).backward()  # 0 in float32
    assert torch.isfinite(pred.grad).all() and pred.grad[0] == 0


def test_dice_refuses_logits_as_bce_does():
    """The most common segmentation mistake: logits gave DiceLoss 3.3 and a class Dice of -15."""
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 4
    labels = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(5))
    masks = (labels == 1).float().unsqueeze(1)
    for call in (
        lambda: L.DiceLoss()(logits, labels),
        lambda: L.multiclass_dice(logits, labels),
        lambda: L.dice_coefficient(logits[:, :1], masks),
        lambda: L.DiceLoss()(logits[:, :1], masks),
    ):
        with pytest.raises(ValueError, match=r"in \[0, 1\].*apply sigmoid \(or softmax\) to logits first"):
            call()
    assert 0 <= L.DiceLoss()(logits.softmax(dim=1), labels).item() <= 1


def test_log_cosh_keeps_relative_precision_for_tiny_errors_in_float32():
    diff = torch.tensor([1.5e-5, 1e-3, 0.3, 5.0, 9.99, 10.0, 50.0], dtype=torch.float64)
    expected = torch.log(torch.cosh(diff))
    got = L.log_cosh_loss(diff.float(), torch.zeros(7), reduction="none")
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("block_values", [1, 100, 24 * 70, 3 * 24 * 70, 10**9])
def test_ssim_computed_in_blocks_of_planes_or_rows_equals_the_whole(monkeypatch, block_values):
    import importlib

    ssim_module = importlib.import_module("lossctl.losses.ssim")
    pred, target = pair(seed=16, shape=(2, 3, 64, 70))
    pred.requires_grad_(True)
    whole = L.ms_ssim(pred.repeat(1, 1, 3, 3), target.repeat(1, 1, 3, 3), reduction="none")
    whole_ssim = L.ssim(pred, target, reduction="none")
    (whole_grad,) = torch.autograd.grad(whole_ssim.sum(), pred)
    monkeypatch.setattr(ssim_module, "CPU_BLOCK_VALUES", block_values)
    blocked = L.ssim(pred, target, reduction="none")
    torch.testing.assert_close(blocked, whole_ssim, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(blocked.sum(), pred)[0], whole_grad, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        L.ms_ssim(pred.repeat(1, 1, 3, 3), target.repeat(1, 1, 3, 3), reduction="none"),
        whole,
        rtol=0,
        atol=1e-14,
    )
    if block_values == 1:  # one band of rows at a time, more than one band per plane
        assert len(list(ssim_module._blocks(6, 64, 70, 11, block_values))) == 6 * 2


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 3e-7), (torch.float64, 1e-14)])
def test_ssim_without_gradient_uses_opencv_filtering_with_the_same_values(dtype, atol):
    pred, target = pair(seed=21, shape=(2, 3, 170, 181), dtype=dtype)
    plain = (L.ssim(pred, target, reduction="none"), L.ms_ssim(pred, target, reduction="none"))
    tracked = pred.clone().requires_grad_(True)  # gradients need the torch filter
    with_grad = (L.ssim(tracked, target, reduction="none"), L.ms_ssim(tracked, target, reduction="none"))
    for fast, differentiable in zip(plain, with_grad, strict=True):
        torch.testing.assert_close(fast, differentiable.detach(), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("height, width", [(8, 10), (7, 10), (8, 9), (7, 9), (1, 1)])
def test_ms_ssim_halving_is_avg_pool2d_with_its_padding_bit_for_bit(dtype, height, width):
    import importlib

    halve = importlib.import_module("lossctl.losses.ssim")._halve
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(5), dtype=dtype)
    expected = F.avg_pool2d(images, kernel_size=2, padding=[height % 2, width % 2])
    torch.testing.assert_close(halve(images), expected, rtol=0, atol=0)


def test_ms_ssim_reuses_precomputed_first_scale_components():
    pred, target = pair(seed=22, shape=(1, 3, 170, 170))
    components = L.ssim_components(pred, target)
    torch.testing.assert_close(components[0].mean(dim=1), L.ssim(pred, target, reduction="none"))
    torch.testing.assert_close(
        L.ms_ssim(pred, target, reduction="none", first_scale=components),
        L.ms_ssim(pred, target, reduction="none"),
    )


@pytest.mark.parametrize("band_values", [1, 70, 3 * 70 * 5, 10**9])
def test_total_variation_in_bands_of_rows_equals_the_whole(monkeypatch, band_values):
    import importlib

    tv_module = importlib.import_module("lossctl.losses.tv")
    pred, target = pair(seed=23, shape=(2, 3, 37, 70))
    weight = torch.rand(2, 1, 37, 70, dtype=torch.float64)
    losses = {
        "tv": lambda p: L.tv_loss(p, reduction="none"),
        "isotropic": lambda p: L.tv_loss(p, isotropic=True, reduction="none"),
        "weighted": lambda p: L.weighted_tv_loss(p, weight, reduction="none"),
        "edge_aware": lambda p: L.edge_aware_tv_loss(p, target, reduction="none"),
    }
    tracked = pred.clone().requires_grad_(True)
    whole = {name: loss(tracked) for name, loss in losses.items()}
    grads = {name: torch.autograd.grad(value.sum(), tracked)[0] for name, value in whole.items()}
    torch.testing.assert_close(
        whole["edge_aware"], L.weighted_tv_loss(tracked, L.edge_aware_weights(target), reduction="none")
    )
    monkeypatch.setattr(tv_module, "TV_BAND_VALUES", band_values)
    if band_values == 1:
        assert len(tv_module._row_bands(pred)) == 37
    for name, loss in losses.items():
        banded = loss(tracked)
        torch.testing.assert_close(banded, whole[name], rtol=0, atol=1e-14)
        torch.testing.assert_close(
            torch.autograd.grad(banded.sum(), tracked)[0], grads[name], rtol=0, atol=1e-14
        )
