"""Conventions (BasicSR Y channel and crop, MATLAB ssim.m downsampling) and MS-SSIM."""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import pytorch_msssim
import torch
from PIL import Image
from typer.testing import CliRunner

from lossctl import losses as L
from lossctl.cli import app

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy_pairs, one_line_error, random_rgb, save_image
from .test_losses import skimage_ssim

runner = CliRunner()
RGB_SAMPLES = ["blur", "jpeg_artifacts", "noise", "upscale_x4"]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def csv_rows(*args) -> pd.DataFrame:
    result = invoke("eval", *args, "--format", "csv")
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout)).set_index("name")


# BasicSR's calculate_psnr / calculate_ssim(test_y_channel=True, crop_border=N), written here from
# the published formulas: 0-255 scale, float64, bgr2ycbcr's luma, OpenCV's 11x11 Gaussian, valid crop.
def basicsr_y(rgb255: np.ndarray) -> np.ndarray:
    image = rgb255.astype(np.float32) / 255.0
    luma = image @ np.array([65.481, 128.553, 24.966], dtype=np.float32) + 16.0
    return luma.astype(np.float64)  # bgr2ycbcr(...)*255 / 255 cancel: luma is on the 0-255 scale


def basicsr_psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    mse = np.mean((pred - gt) ** 2)
    return 10.0 * np.log10(255.0 * 255.0 / mse)


def basicsr_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    mu1 = cv2.filter2D(pred, -1, window)[5:-5, 5:-5]
    mu2 = cv2.filter2D(gt, -1, window)[5:-5, 5:-5]
    sigma1 = cv2.filter2D(pred**2, -1, window)[5:-5, 5:-5] - mu1**2
    sigma2 = cv2.filter2D(gt**2, -1, window)[5:-5, 5:-5] - mu2**2
    sigma12 = cv2.filter2D(pred * gt, -1, window)[5:-5, 5:-5] - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1**2 + mu2**2 + c1) * (sigma1 + sigma2 + c2))
    return float(ssim_map.mean())


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_basicsr_preset_reproduces_basicsr_psnr_and_ssim(precision):
    rows = csv_rows(
        SAMPLE_PRED,
        SAMPLE_GT,
        "--preset",
        "basicsr",
        "--scale",
        "4",
        "-m",
        "psnr,ssim",
        "--precision",
        precision,
    )
    for name in RGB_SAMPLES:
        pred = np.asarray(Image.open(next(SAMPLE_PRED.glob(f"{name}.*"))).convert("RGB"))[4:-4, 4:-4]
        gt = np.asarray(Image.open(SAMPLE_GT / f"{name}.png").convert("RGB"))[4:-4, 4:-4]
        y_pred, y_gt = basicsr_y(pred), basicsr_y(gt)
        assert rows.loc[name, "psnr"] == pytest.approx(basicsr_psnr(y_pred, y_gt), abs=1e-4), name
        assert rows.loc[name, "ssim"] == pytest.approx(basicsr_ssim(y_pred, y_gt), abs=1e-5), name


def test_y_channel_and_crop_border_options_equal_the_preset():
    preset = csv_rows(SAMPLE_PRED, SAMPLE_GT, "--preset", "basicsr", "--scale", "3", "-m", "psnr,l1")
    options = csv_rows(SAMPLE_PRED, SAMPLE_GT, "--y-channel", "--crop-border", "3", "-m", "psnr,l1")
    pd.testing.assert_frame_equal(preset[["psnr", "l1"]], options[["psnr", "l1"]])
    rgb = csv_rows(SAMPLE_PRED, SAMPLE_GT, "--preset", "basicsr", "--scale", "3", "--rgb", "-m", "psnr")
    cropped = csv_rows(SAMPLE_PRED, SAMPLE_GT, "--crop-border", "3", "-m", "psnr")
    pd.testing.assert_frame_equal(rgb[["psnr"]], cropped[["psnr"]])


def test_y_channel_leaves_grayscale_images_alone():
    plain = csv_rows(SAMPLE_PRED, SAMPLE_GT, "-m", "psnr")
    luma = csv_rows(SAMPLE_PRED, SAMPLE_GT, "--y-channel", "-m", "psnr")
    assert luma.loc["gray/camera_denoise", "psnr"] == plain.loc["gray/camera_denoise", "psnr"]
    assert luma.loc["blur", "psnr"] != plain.loc["blur", "psnr"]


def test_the_convention_is_recorded_in_every_report(tmp_path):
    csv, report = tmp_path / "r.csv", tmp_path / "r.json"
    result = invoke(
        "eval",
        SAMPLE_PRED,
        SAMPLE_GT,
        "--preset",
        "basicsr",
        "--scale",
        "4",
        "-m",
        "psnr",
        "--csv",
        csv,
        "--json",
        report,
    )
    assert "preset basicsr, Y channel, crop 4" in result.stdout
    expected = {"preset": "basicsr", "y_channel": True, "crop_border": 4}
    assert json.loads(report.read_text())["params"]["convention"] == expected
    sidecar = json.loads((tmp_path / "r.csv.meta.json").read_text())
    assert sidecar["params"]["convention"] == expected and "rows" not in sidecar
    markdown = invoke(
        "eval", SAMPLE_PRED, SAMPLE_GT, "--preset", "matlab", "-m", "ssim", "--format", "markdown"
    ).stdout
    assert "preset matlab" in markdown.splitlines()[0]


def test_compare_refuses_reports_with_different_conventions(tmp_path):
    invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "psnr", "--json", tmp_path / "a.json", "-q")
    invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "psnr", "--y-channel", "--json", tmp_path / "b.json", "-q")
    result = invoke("compare", tmp_path / "a.json", tmp_path / "b.json")
    assert result.exit_code == 2 and "convention" in result.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--preset", "basicsr"], "give --scale N"),
        (["--preset", "photoshop"], "unknown preset 'photoshop'; presets: skimage, basicsr, matlab"),
        (["--scale", "4"], "--scale is used by --preset basicsr only"),
        (["--preset", "matlab", "--scale", "4"], "--scale is used by --preset basicsr only"),
        (["--crop-border", "-1"], "--crop-border must be >= 0"),
        (["--preset", "basicsr", "--scale", "0"], "--scale must be at least 1"),
    ],
)
def test_convention_usage_errors(args, fragment):
    one_line_error(invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args), 2, fragment)


def test_crop_larger_than_the_image_is_a_pair_error(folders, rng):
    pred, gt = folders
    save_image(pred / "small.png", random_rgb(rng, 8, 8))
    save_image(gt / "small.png", random_rgb(rng, 8, 8))
    save_image(pred / "big.png", random_rgb(rng, 32, 32))
    save_image(gt / "big.png", random_rgb(rng, 32, 32))
    result = invoke("eval", pred, gt, "--crop-border", "4", "--format", "csv")
    assert result.exit_code == 3
    rows = pd.read_csv(io.StringIO(result.stdout)).set_index("name")
    assert rows.loc["small", "error"] == "image of 8x8 is too small for --crop-border 4"
    assert rows.loc["big", "status"] == "ok"


def matlab_ssim_downsample_reference(image: np.ndarray) -> np.ndarray:
    """ssim.m: imfilter(img, ones(f)/f^2, 'symmetric', 'same'), then img(1:f:end, 1:f:end)."""
    factor = max(1, math.floor(min(image.shape) / 256 + 0.5))
    if factor == 1:
        return image
    before = (factor + 1) // 2 - 1
    after = factor - 1 - before
    padded = np.pad(image, ((before, after), (before, after)), mode="symmetric")
    filtered = np.zeros_like(image)
    for dy in range(factor):
        for dx in range(factor):
            filtered += padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return (filtered / factor**2)[::factor, ::factor]


@pytest.mark.parametrize("shape", [(300, 520), (700, 800), (1100, 1000), (200, 200)])
def test_matlab_downsampling_matches_ssim_m(shape):
    image = np.random.default_rng(0).random(shape)
    got = L.matlab_downsample(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, matlab_ssim_downsample_reference(image), rtol=1e-12, atol=1e-14)


def test_the_matlab_preset_in_eval_is_ssim_m_s_downsampling(folders, rng):
    """`eval --preset matlab` on a pair large enough to be downsampled (400 px: f = 2): SSIM equals
    scikit-image's SSIM of the images as ssim.m downsamples them, and the other metrics are those
    of the plain images (the bundled samples are 256 px, where ssim.m does not downsample)."""
    pred, gt = folders
    smooth = cv2.GaussianBlur(rng.random((400, 416, 3)), (0, 0), 6)  # downsampling averages noise away
    clean = np.round(255 * (smooth - smooth.min()) / (smooth.max() - smooth.min())).astype(np.uint8)
    save_image(gt / "x.png", clean)
    save_image(
        pred / "x.png",
        np.clip(clean.astype(np.int64) + rng.integers(-30, 31, clean.shape), 0, 255).astype(np.uint8),
    )
    matlab = csv_rows(pred, gt, "--preset", "matlab", "-m", "psnr,ssim").loc["x"]
    plain = csv_rows(pred, gt, "-m", "psnr,ssim").loc["x"]
    p, g = (
        np.asarray(Image.open(folder / "x.png"), dtype=np.float64).transpose(2, 0, 1) / 255
        for folder in (pred, gt)
    )
    p, g = (np.stack([matlab_ssim_downsample_reference(plane) for plane in image]) for image in (p, g))
    assert p.shape == (3, 200, 208)
    assert matlab["ssim"] == pytest.approx(skimage_ssim(p, g), rel=1e-5)
    assert matlab["ssim"] > plain["ssim"] + 0.05
    assert matlab["psnr"] == plain["psnr"]


def test_matlab_preset_downsamples_ssim_only():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 3, 600, 520, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = L.ssim(L.matlab_downsample(pred), L.matlab_downsample(target))
    torch.testing.assert_close(L.ssim(pred, target, downsample=True), expected)
    assert L.ssim(pred, target, downsample=True) > L.ssim(pred, target)


@pytest.mark.parametrize("shape", [(2, 3, 161, 170), (1, 1, 256, 256), (1, 3, 200, 333)])
def test_ms_ssim_matches_pytorch_msssim_on_random_images(shape):
    generator = torch.Generator().manual_seed(2)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = pytorch_msssim.ms_ssim(pred, target, data_range=1, size_average=False)
    torch.testing.assert_close(L.ms_ssim(pred, target, reduction="none"), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        L.ms_ssim(pred.float(), target.float(), reduction="none").double(), expected, rtol=1e-5, atol=0
    )


def test_ms_ssim_clips_negative_terms_as_pytorch_msssim_does():
    """A channel whose prediction is anticorrelated with its target has negative contrast-structure
    terms, which MS-SSIM's ReLU sets to 0 before raising them to the scale weights (a negative base
    would give NaN); the other channel keeps a positive MS-SSIM."""
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(2, 2, 192, 200, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    pred[:, 0] = 1 - target[:, 0]
    expected = pytorch_msssim.ms_ssim(pred, target, data_range=1, size_average=False)
    assert (expected > 0.3).all()  # the correlated channel's half of the mean
    torch.testing.assert_close(L.ms_ssim(pred, target, reduction="none"), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        L.ms_ssim(pred.float(), target.float(), reduction="none").double(), expected, rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("name", ["ssim", "ms_ssim"])
def test_ssim_gradients_are_right(name):
    """Autograd through lossctl's fused, partly in-place SSIM steps: along a random direction it
    equals a central finite difference, and it is pytorch-msssim's gradient up to that library's
    float32 Gaussian window (a 2e-7 difference for SSIM, 1e-5 for MS-SSIM, relative)."""
    generator = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 170, 181, generator=generator, dtype=torch.float64)
    start = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    direction = torch.randn(target.shape, generator=generator, dtype=torch.float64)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    function = getattr(L, name)
    function(ours, target).backward()
    getattr(pytorch_msssim, name)(theirs, target, data_range=1).backward()
    step = 1e-6
    finite_difference = (
        function(start + step * direction, target) - function(start - step * direction, target)
    ) / (2 * step)
    assert (ours.grad * direction).sum().item() == pytest.approx(finite_difference.item(), rel=1e-6)
    assert ((ours.grad - theirs.grad).norm() / theirs.grad.norm()).item() < 5e-5


def test_ms_ssim_of_the_samples_matches_pytorch_msssim():
    rows = csv_rows(SAMPLE_PRED, SAMPLE_GT, "-m", "ms_ssim")
    for name in RGB_SAMPLES:

        def load(path):
            return torch.from_numpy(
                np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
            ).permute(2, 0, 1)[None]

        pred, gt = load(next(SAMPLE_PRED.glob(f"{name}.*"))), load(SAMPLE_GT / f"{name}.png")
        expected = pytorch_msssim.ms_ssim(pred, gt, data_range=1, size_average=False).item()
        assert rows.loc[name, "ms_ssim"] == pytest.approx(expected, rel=1e-5), name


def test_ms_ssim_rejects_small_images_in_the_library():
    with pytest.raises(ValueError, match="smaller than the 161 px"):
        L.ms_ssim(torch.rand(1, 1, 160, 300), torch.rand(1, 1, 160, 300))


def test_ms_ssim_loss_trains():
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(1, 3, 176, 176, generator=generator)
    pred = (target + 0.2 * torch.randn(target.shape, generator=generator)).clamp(0, 1).requires_grad_()
    optimiser = torch.optim.Adam([pred], lr=0.01)
    first = L.ms_ssim_loss(pred, target).item()
    for _ in range(10):
        optimiser.zero_grad()
        loss = L.ms_ssim_loss(pred, target)
        loss.backward()
        optimiser.step()
    assert torch.isfinite(pred.grad).all() and L.ms_ssim_loss(pred, target).item() < first


def test_check_honours_the_preset():
    assert invoke("check", SAMPLE_PRED, SAMPLE_GT, "--min", "psnr=15.75").exit_code == 0  # coins: 15.7512 dB
    result = invoke(
        "check", SAMPLE_PRED, SAMPLE_GT, "--min", "psnr=15.75", "--preset", "basicsr", "--scale", "4"
    )
    assert result.exit_code == 1 and "mask/coins_mask" in result.stdout  # 15.7460 dB after the crop


def test_a_crop_larger_than_the_images_is_an_error_row_for_every_pair(folders, rng):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b", "c"), 16, 16)
    result = invoke("eval", pred, gt, "-m", "l1", "--crop-border", "10", "--format", "csv")
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert sorted(rows["name"].astype(str)) == ["a", "b", "c"]
    assert (rows["status"] == "error").all()
