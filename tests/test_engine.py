"""The batching engine and metric registry: every metric, every pair, independent of batching."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lossctl import losses as L
from lossctl.conventions import Convention
from lossctl.engine import EvalConfig, _to_device, _widened_16_bit, resolve_device
from lossctl.errors import LossctlError
from lossctl.io import pair_folders
from lossctl.metrics import METRICS, parse_metric_names, resolve_params

from .conftest import SAMPLE_GT, SAMPLE_PRED, evaluate_folders, noisy, noisy_pairs, random_rgb, save_image

METRICS_MD_NAMES = [
    "l1", "mse", "rmse", "psnr", "ssim", "ms_ssim", "charbonnier", "smooth_l1", "huber",
    "log_cosh", "quantile", "bce", "dice", "iou", "ce", "pixel_accuracy", "tv", "weighted_tv",
]  # fmt: skip


def test_registry_has_the_metrics_md_names_plus_iou_and_pixel_accuracy():
    assert list(METRICS) == METRICS_MD_NAMES
    assert {metric.better for metric in METRICS.values()} == {"higher", "lower"}
    assert [name for name, metric in METRICS.items() if metric.better == "higher"] == [
        "psnr",
        "ssim",
        "ms_ssim",
        "dice",
        "iou",
        "pixel_accuracy",
    ]


def test_metric_selection_and_parameters():
    assert parse_metric_names("psnr, l1") == ["l1", "psnr"]
    with pytest.raises(LossctlError, match="unknown metric nope; valid metrics: l1, mse"):
        parse_metric_names("l1,nope")
    params = resolve_params(["charbonnier", "ssim"], ["charbonnier.eps=1e-4", "ssim.window=7"])
    assert params == {
        "charbonnier": {"eps": 1e-4},
        "ssim": {"window": 7, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "downsample": 0},
    }
    for override, message in [
        ("eps=1", "METRIC.KEY=VALUE"),
        ("nope.eps=1", "unknown metric 'nope'"),
        ("charbonnier.beta=1", "charbonnier has no parameter 'beta'; its parameters: charbonnier.eps"),
        ("charbonnier.eps=abc", "charbonnier.eps must be a number"),
        ("charbonnier.eps=-1", "charbonnier.eps must be >= 0"),
        ("charbonnier.eps=inf", "charbonnier.eps must be a finite number"),
        ("ssim.sigma=nan", "ssim.sigma must be a finite number"),
        ("ssim.sigma=0", "ssim.sigma must be at least 1e-150"),
        ("ssim.sigma=1e-300", "ssim.sigma must be at least 1e-150"),  # its square underflowed
        ("ssim.k1=1e200", r"ssim.k1 must be > 0 and at most 1e150"),  # k1^2 overflowed
        ("ssim.window=8", "ssim.window must be an odd integer"),
        ("huber.delta=1", "huber is not among the selected metrics"),
    ]:
        with pytest.raises(LossctlError, match=message):
            resolve_params(["charbonnier", "ssim"], [override])


def float64_reference(pred_path, gt_path) -> dict[str, float]:
    """Every metric for one RGB pair, computed here in float64 numpy from METRICS.md."""
    p = np.asarray(Image.open(pred_path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255
    g = np.asarray(Image.open(gt_path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255
    d = p - g
    mse = np.mean(d**2)
    dy_p, dx_p = np.diff(p, axis=1), np.diff(p, axis=2)
    w_y = np.exp(-np.abs(np.diff(g, axis=1)).mean(axis=0))
    w_x = np.exp(-np.abs(np.diff(g, axis=2)).mean(axis=0))
    tensor = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    return {
        "l1": np.mean(np.abs(d)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "psnr": 10 * math.log10(1 / mse),
        "ssim": L.ssim(tensor(p), tensor(g)).item(),  # checked against scikit-image in test_losses
        "charbonnier": np.mean(np.sqrt(d**2 + 1e-6)),
        "smooth_l1": np.mean(np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5)),
        "huber": np.mean(np.where(np.abs(d) <= 1, 0.5 * d**2, np.abs(d) - 0.5)),
        "log_cosh": np.mean(np.log(np.cosh(d))),
        "quantile": np.mean(np.maximum(0.5 * -d, -0.5 * -d)),
        "bce": np.mean(-(g * np.maximum(np.log(p), -100) + (1 - g) * np.maximum(np.log1p(-p), -100))),
        "dice": 2 * np.sum(p * g) / (np.sum(p) + np.sum(g)),
        "tv": (np.abs(dy_p).sum() + np.abs(dx_p).sum()) / p.size,
        "weighted_tv": (w_y * np.abs(dy_p)).sum() / (3 * w_y.sum())
        + (w_x * np.abs(dx_p)).sum() / (3 * w_x.sum()),
    }


@pytest.mark.parametrize("precision, rel", [("float32", 1e-5), ("float64", 1e-10)])
def test_every_metric_on_real_photos_matches_a_float64_reference(precision, rel):
    results = evaluate_folders(SAMPLE_PRED, SAMPLE_GT, precision=precision)
    for name in ("blur", "jpeg_artifacts", "noise", "upscale_x4"):
        result = results[name]
        assert result.status == "ok"
        gt_path = SAMPLE_GT / f"{name}.png"
        with np.errstate(divide="ignore"):
            expected = float64_reference(result.pair.pred, gt_path)
        for metric, value in expected.items():
            tolerance = {"abs": 1e-4} if metric == "psnr" else {"rel": rel}
            assert result.values[metric] == pytest.approx(value, **tolerance), (name, metric)


def test_results_do_not_depend_on_batching_workers_or_cpu_blocks(folders, rng, monkeypatch):
    import lossctl.engine
    import lossctl.metrics

    pred, gt = folders
    for index in range(9):
        # the last two are large enough to be computed from their 8-bit levels (LEVELS_BLOCK_VALUES)
        size = (160, 150) if index >= 7 else (24, 32) if index % 2 else (40, 36)
        clean = random_rgb(rng, *size)
        save_image(gt / f"img{index}.png", clean)
        save_image(pred / f"img{index}.png", noisy(rng, clean))
    reference = evaluate_folders(pred, gt, batch_size=1, workers=1)
    settings = [(3, 2, 1 << 20, 1 << 24), (16, 4, 1 << 20, 1 << 24), (16, 2, 1, 1000), (16, 2, 5000, 7)]
    for batch_size, workers, block_values, chunk_values in settings:
        monkeypatch.setattr(lossctl.engine, "CPU_BLOCK_VALUES", block_values)
        monkeypatch.setattr(lossctl.engine, "LEVELS_BLOCK_VALUES", block_values)
        monkeypatch.setattr(lossctl.metrics, "ELEMENTWISE_CHUNK_VALUES", chunk_values)
        other = evaluate_folders(pred, gt, batch_size=batch_size, workers=workers)
        for name, result in reference.items():
            for metric, value in result.values.items():
                assert other[name].values[metric] == pytest.approx(value, rel=1e-6, abs=1e-12, nan_ok=True), (
                    name,
                    metric,
                )


def test_grayscale_prediction_is_repeated_against_rgb_ground_truth(folders, rng):
    pred, gt = folders
    gray = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
    save_image(pred / "x.png", gray)
    save_image(gt / "x.png", np.dstack([gray, gray, noisy(rng, gray)]))
    result = evaluate_folders(pred, gt, metrics="mse")["x"]
    expected = (
        np.mean((np.asarray(Image.open(gt / "x.png"), dtype=np.float64)[:, :, 2] / 255 - gray / 255) ** 2) / 3
    )
    assert (result.channels, result.values["mse"]) == (3, pytest.approx(expected, rel=1e-5))


def test_mixed_bit_depths_are_scaled_each_by_its_own_depth(folders, rng):
    pred, gt = folders
    gray8 = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    save_image(pred / "x.png", gray8)
    save_image(gt / "x.png", gray8.astype(np.uint16) * 257)  # the same intensities at 16 bits
    result = evaluate_folders(pred, gt, metrics="l1,psnr")["x"]
    assert result.bit_depth == "8/16"
    assert result.values["l1"] == pytest.approx(0.0, abs=1e-7)


def test_identical_images_give_infinite_psnr(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "x.png", clean)
    save_image(gt / "x.png", clean)
    values = evaluate_folders(pred, gt)["x"].values
    assert values["psnr"] == math.inf and values["mse"] == 0.0 and values["ssim"] == pytest.approx(1.0)


def test_undefined_values_are_nan_with_a_note_and_the_pair_stays_ok(folders, rng):
    pred, gt = folders
    save_image(pred / "tiny.png", random_rgb(rng, 8, 9))
    save_image(gt / "tiny.png", random_rgb(rng, 8, 9))
    floats = rng.normal(0.5, 1.0, size=(16, 16)).astype(np.float32)
    Image.fromarray(floats, mode="F").save(pred / "float.tif")
    Image.fromarray(np.clip(floats, 0, 1), mode="F").save(gt / "float.tif")
    results = evaluate_folders(pred, gt)
    tiny, floating = results["tiny"], results["float"]
    assert tiny.status == "ok" and math.isnan(tiny.values["ssim"])
    not_for_images = "ce, pixel_accuracy: for segmentation pairs (.npy class scores), not image pairs"
    assert tiny.notes == [
        "ssim: 9x8 is smaller than the 11x11 window",
        "ms_ssim: 9x8 is smaller than the 161 px that 5 scales need",
        not_for_images,  # every metric was asked for
    ]
    assert not math.isnan(tiny.values["psnr"])
    assert floating.status == "ok" and math.isnan(floating.values["bce"])
    assert floating.notes == [
        "ms_ssim: 16x16 is smaller than the 161 px that 5 scales need",
        "bce: prediction outside [0, 1]",
        not_for_images,
    ]


@pytest.mark.parametrize(
    "height, width, undefined",
    [
        (11, 11, ["ms_ssim"]),
        (10, 40, ["ssim", "ms_ssim"]),
        (161, 161, []),
        (160, 200, ["ms_ssim"]),
        (200, 160, ["ms_ssim"]),
    ],
)
def test_ssim_and_ms_ssim_are_defined_from_exactly_their_smallest_size(
    folders, rng, height, width, undefined
):
    """SSIM needs the 11x11 window, MS-SSIM 161 px on the shorter side ((11 - 1) 2^4 + 1)."""
    pred, gt = folders
    clean = random_rgb(rng, height, width)
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", noisy(rng, clean))
    result = evaluate_folders(pred, gt, metrics="ssim,ms_ssim")["x"]
    assert result.status == "ok"
    for name in ("ssim", "ms_ssim"):
        assert math.isnan(result.values[name]) == (name in undefined), name
    assert [note.split(":")[0] for note in result.notes] == undefined


def test_weight_maps_drive_weighted_tv_and_missing_ones_are_noted(tmp_path, folders, rng):
    pred, gt = folders
    weights = tmp_path / "weights"
    noisy_pairs(pred, gt, rng, ("a", "b"), 16, 16)
    weight = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    save_image(weights / "a.png", weight)
    p = np.asarray(Image.open(pred / "a.png"), dtype=np.float64).transpose(2, 0, 1) / 255
    w = weight.astype(np.float64) / 255

    def expected(p, w):
        return (w[:-1, :] * np.abs(np.diff(p, axis=1))).sum() / (3 * w[:-1, :].sum()) + (
            w[:, :-1] * np.abs(np.diff(p, axis=2))
        ).sum() / (3 * w[:, :-1].sum())

    results = evaluate_folders(pred, gt, metrics="weighted_tv", weights=weights)
    assert results["a"].values["weighted_tv"] == pytest.approx(expected(p, w), rel=1e-5)
    assert math.isnan(results["b"].values["weighted_tv"])
    assert results["b"].notes == ["weighted_tv: no weight map with this name"]
    # --crop-border crops the weight map with the images: the same pixels keep the same weights.
    cropped = evaluate_folders(pred, gt, metrics="weighted_tv", weights=weights, convention=Convention(crop_border=3))
    assert cropped["a"].values["weighted_tv"] == pytest.approx(
        expected(p[:, 3:-3, 3:-3], w[3:-3, 3:-3]), rel=1e-5
    )


def test_unreadable_and_mismatched_pairs_are_errors_and_the_rest_is_computed(folders, rng):
    pred, gt = folders
    save_image(pred / "good.png", random_rgb(rng))
    save_image(gt / "good.png", random_rgb(rng))
    (pred / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save_image(gt / "broken.png", random_rgb(rng))
    save_image(pred / "sizes.png", random_rgb(rng, 10, 10))
    save_image(gt / "sizes.png", random_rgb(rng, 10, 12))
    save_image(pred / "lonely.png", random_rgb(rng))
    results = evaluate_folders(pred, gt)
    assert {name: result.status for name, result in results.items()} == {
        "broken": "error",
        "good": "ok",
        "lonely": "unmatched",
        "sizes": "error",
    }
    assert results["broken"].error.startswith("pred broken.png: ")
    assert results["sizes"].error == "size mismatch: pred is 10x10, gt is 12x10"
    assert results["lonely"].error == "no ground truth with this name"
    assert len(results["good"].values) == len(METRICS)
    # Notes about metrics (ce and pixel_accuracy do not apply to images) belong to computed pairs.
    not_for_images = "ce, pixel_accuracy: for segmentation pairs (.npy class scores), not image pairs"
    assert results["good"].notes[-1] == not_for_images  # after ms_ssim's note that 40x32 is too small
    assert all(results[name].notes == [] for name in ("broken", "sizes", "lonely"))


def test_device_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(LossctlError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(LossctlError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.cuda
def test_cuda_agrees_with_cpu():
    """Within METRICS.md's 1e-5 of float64 on the CPU; NaN (ce on image pairs) where it is NaN."""
    cpu = evaluate_folders(SAMPLE_PRED, SAMPLE_GT, device="cpu", precision="float64")
    cuda = evaluate_folders(SAMPLE_PRED, SAMPLE_GT, device="cuda")
    for name, result in cpu.items():
        assert cuda[name].status == "ok" and cuda[name].values.keys() == result.values.keys(), name
        for metric, value in result.values.items():
            tolerance = {"abs": 1e-4} if metric == "psnr" else {"rel": 1e-5, "abs": 1e-9}
            assert cuda[name].values[metric] == pytest.approx(value, nan_ok=True, **tolerance), (name, metric)


EXTREME_16_BIT = np.array([0, 1, 255, 256, 32767, 32768, 32769, 65534, 65535], dtype=np.uint16)


def test_16_bit_bits_widen_to_their_unsigned_values():
    """What a GPU is sent for 16-bit pixels: their bits as int16, widened on the device."""
    bits = torch.from_numpy(EXTREME_16_BIT.view(np.int16).copy())
    assert _widened_16_bit(bits).dtype == torch.int32
    assert _widened_16_bit(bits).tolist() == EXTREME_16_BIT.tolist()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_cuda_upload_keeps_every_stored_value(dtype):
    """The pixels reach the GPU as the CPU holds them, 16-bit values over 32767 included."""
    values = EXTREME_16_BIT if dtype == np.uint16 else np.arange(9).astype(dtype) * 31
    arrays = [np.tile(values.reshape(3, 3, 1), (1, 1, 3)), np.tile(values[::-1].reshape(3, 3, 1), (1, 1, 3))]
    on_cpu = _to_device(arrays, torch.device("cpu"))
    on_cuda = _to_device(arrays, torch.device("cuda"))
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == on_cpu.dtype
    assert torch.equal(on_cuda.cpu(), on_cpu)


@pytest.mark.parametrize("side", ["pred", "gt"])
def test_nan_pixels_give_nan_values_and_a_note_naming_their_side(folders, rng, side):
    pred, gt = folders
    values = rng.random((16, 16)).astype(np.float32)
    broken = values.copy()
    broken[4, 4] = np.nan
    Image.fromarray(broken if side == "pred" else values, mode="F").save(pred / "x.tif")
    Image.fromarray(broken if side == "gt" else values, mode="F").save(gt / "x.tif")
    result = evaluate_folders(pred, gt)["x"]
    other = "gt" if side == "pred" else "pred"
    assert result.status == "ok" and f"{side} contains NaN values" in result.notes
    assert f"{other} contains NaN values" not in result.notes
    for name in ("l1", "mse", "rmse", "psnr", "charbonnier", "bce", "ssim"):
        assert math.isnan(result.values[name]), name


def test_float32_keeps_its_tolerance_for_one_level_16_bit_offsets(folders):
    """Flat 16-bit images one level apart: each side rounds to float32, the difference must not."""
    pred, gt = folders
    save_image(pred / "x.png", np.full((16, 16), 32769, dtype=np.uint16))
    save_image(gt / "x.png", np.full((16, 16), 32768, dtype=np.uint16))
    single, double = evaluate_folders(pred, gt, precision="float32")["x"], evaluate_folders(pred, gt, precision="float64")["x"]
    for name in ("l1", "mse", "rmse", "huber", "quantile", "log_cosh", "charbonnier"):
        assert single.values[name] == pytest.approx(double.values[name], rel=1e-5), name
    assert single.values["psnr"] == pytest.approx(double.values["psnr"], abs=1e-4)
    assert double.values["l1"] == pytest.approx(1 / 65535, rel=1e-12)


def test_16_bit_rgb_errors_keep_every_bit(folders, rng):
    """METRICS.md: a 16-bit RGB pair differing only in the low byte has a non-zero error. And the
    widest difference, 0 against 65535, must not wrap around in the integer differences."""
    pred, gt = folders
    high = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint16) << 8
    save_image(gt / "low_byte.png", high)
    save_image(pred / "low_byte.png", high | 0x7F)
    extremes = np.zeros((16, 16, 3), dtype=np.uint16)
    extremes[::2] = 65535
    save_image(gt / "extremes.png", extremes)
    save_image(pred / "extremes.png", 65535 - extremes)
    for precision in ("float32", "float64"):
        results = evaluate_folders(pred, gt, precision=precision)
        low_byte, widest = results["low_byte"].values, results["extremes"].values
        assert low_byte["l1"] == pytest.approx(0x7F / 65535, rel=1e-6)
        assert low_byte["mse"] == pytest.approx((0x7F / 65535) ** 2, rel=1e-5)
        assert widest["l1"] == pytest.approx(1.0, rel=1e-6) and widest["mse"] == pytest.approx(1.0, rel=1e-6)
        assert widest["psnr"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 9, 4, 3), (3, 6, 6, 1)])
def test_cpu_bytes_are_held_one_plane_per_channel_and_scaled_exactly(rng, shape):
    from lossctl.engine import _scaled, _to_device

    arrays = list(rng.integers(0, 256, shape, dtype=np.uint8))
    raw = _to_device(arrays, torch.device("cpu"))
    expected = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    assert raw.dtype == torch.uint8 and torch.equal(raw, expected)
    assert raw.is_contiguous()  # (N, C, H, W): planes
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(_scaled(raw, 255.0, dtype), expected.to(dtype) / 255.0)


def test_cpu_bytes_are_split_into_planes_whether_opencv_writes_into_them_or_not(rng, monkeypatch):
    import cv2

    from lossctl.engine import _to_device

    arrays = list(rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8))
    expected = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    assert torch.equal(_to_device(arrays, torch.device("cpu")), expected)
    split = cv2.split
    monkeypatch.setattr(cv2, "split", lambda array, planes=None: split(array))  # fresh arrays
    assert torch.equal(_to_device(arrays, torch.device("cpu")), expected)


def test_cpu_bytes_of_large_batches_are_wrapped_not_split(rng, monkeypatch):
    """Splitting into planes pays only while the copies stay in cache; a huge image is wrapped."""
    from lossctl import engine

    monkeypatch.setattr(engine, "PLANAR_SPLIT_VALUES", 5 * 7 * 3)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert engine._to_device([image], torch.device("cpu")).is_contiguous()  # split: planes
    large = rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    wrapped = engine._to_device([large], torch.device("cpu"))
    assert np.shares_memory(wrapped.numpy(), large)
    assert torch.equal(wrapped, torch.from_numpy(large).permute(2, 0, 1)[None])
    assert torch.equal(engine._scaled(wrapped, 255.0, torch.float32), wrapped.float() / 255.0)


def test_evaluations_exempt_objects_from_garbage_collection_once_per_process():
    """The first evaluation freezes the objects alive once torch is imported (Python's full
    collections would walk them all); later ones must not, or each would pin the garbage alive then."""
    import gc

    from lossctl.run import EvalRequest, run_evaluation

    request = EvalRequest(SAMPLE_PRED, SAMPLE_GT, ["l1"], {}, device="cpu", workers=1)
    run_evaluation(request)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    garbage = [[]]
    garbage[0].append(garbage)  # a cycle only a collection frees
    del garbage
    run_evaluation(request)
    assert gc.get_freeze_count() == frozen


def test_decoding_starts_when_the_decoder_is_made_not_at_the_first_item(monkeypatch):
    import threading

    import lossctl.decoding

    started = threading.Event()
    decode_pair = lossctl.decoding.decode_pair

    def recording_decode_pair(*args, **kwargs):
        started.set()
        return decode_pair(*args, **kwargs)

    monkeypatch.setattr(lossctl.decoding, "decode_pair", recording_decode_pair)
    pairs = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs
    decoder = lossctl.decoding.DecodeAhead(pairs, with_weights=False, workers=1, prefetch=2)
    try:
        assert started.wait(timeout=10)
        assert [item.pair.name for item in decoder] == [pair.name for pair in pairs]
    finally:
        decoder.close()


def test_the_engine_starts_decoding_before_it_reads_the_free_device_memory(monkeypatch):
    """On a GPU the first memory query creates the CUDA context (up to seconds): the decoders
    must be at work by then (here the path that a GPU shares: decoding in processes)."""
    import lossctl.engine

    calls = []
    start_decoding, max_batch_values = lossctl.engine.start_decoding, lossctl.engine.max_batch_values

    def recording_start_decoding(*args, **kwargs):
        calls.append("start_decoding")
        return start_decoding(*args, **kwargs)

    def recording_max_batch_values(*args, **kwargs):
        calls.append("max_batch_values")
        return max_batch_values(*args, **kwargs)

    monkeypatch.setattr(lossctl.engine, "start_decoding", recording_start_decoding)
    monkeypatch.setattr(lossctl.engine, "max_batch_values", recording_max_batch_values)
    results = evaluate_folders(SAMPLE_PRED, SAMPLE_GT, "l1,psnr", device="cpu", decoder="processes", workers=2)
    assert calls == ["start_decoding", "max_batch_values"]
    assert sorted(results) == sorted(pair.name for pair in pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs)
    assert all(result.status == "ok" for result in results.values())


def test_resizing_the_decode_window_withdraws_queued_pairs_and_keeps_every_pair_in_order(monkeypatch):
    import threading

    import lossctl.decoding

    release = threading.Event()
    decode_pair = lossctl.decoding.decode_pair

    def held_decode_pair(*args, **kwargs):
        release.wait(timeout=10)  # the one worker holds the first pair; the rest stay queued
        return decode_pair(*args, **kwargs)

    monkeypatch.setattr(lossctl.decoding, "decode_pair", held_decode_pair)
    pairs = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs
    decoder = lossctl.decoding.DecodeAhead(pairs, with_weights=False, workers=1, prefetch=len(pairs))
    try:
        decoder.resize(2)
        assert decoder.prefetch == 2
        assert len(decoder._in_flight) == 2  # the decoding pair and the first one still queued
        decoder.resize(3)
        assert len(decoder._in_flight) == 3  # a withdrawn pair is submitted again, in its turn
        release.set()
        assert [item.pair.name for item in decoder] == [pair.name for pair in pairs]
    finally:
        decoder.close()


def test_an_evaluation_decoding_in_processes_starts_them_before_importing_torch(tmp_path):
    """The main process imports torch for 1-3 s; the decoders should be at work meanwhile."""
    script = tmp_path / "probe.py"
    script.write_text(
        f"""
import sys
from pathlib import Path

import lossctl.decoding
from lossctl.metrics import resolve_params
from lossctl.run import EvalRequest, run_evaluation

made = []
init = lossctl.decoding.DecodeAhead.__init__


def recording_init(self, *args, **kwargs):
    made.append("torch" in sys.modules)
    init(self, *args, **kwargs)


if __name__ == "__main__":
    lossctl.decoding.DecodeAhead.__init__ = recording_init
    request = EvalRequest(
        Path({str(SAMPLE_PRED)!r}), Path({str(SAMPLE_GT)!r}), ["l1"], resolve_params(["l1"], []),
        device="cpu", workers=2, decoder="processes",
    )
    evaluation = run_evaluation(request)
    print(made, sorted(set(evaluation.frame["status"])))
"""
    )
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["[False]", "['ok']"]  # made once, before torch; every pair computed
    assert "leaked" not in completed.stderr


def test_the_head_start_window_is_sized_from_what_the_first_pair_decodes_to(folders, rng, monkeypatch):
    """Segmentation scores are far larger than their images' pixels suggest (C float32 planes and
    int64 labels): 2 GiB of 150-class 64x64 pairs is 862 pairs, not 87,381."""
    import lossctl.decoding as decoding

    monkeypatch.setattr(decoding, "_physical_memory", lambda: 64 << 30)
    pred, gt = folders
    np.save(pred / "a.npy", rng.random((150, 64, 64)).astype(np.float32))
    Image.fromarray(rng.integers(0, 150, (64, 64)).astype(np.uint8)).save(gt / "a.png")
    save_image(pred / "b.png", random_rgb(rng, 64, 64))
    save_image(gt / "b.png", random_rgb(rng, 64, 64))
    segmentation, image = pair_folders(pred, gt).pairs
    assert decoding.decoded_bytes(segmentation, with_weights=False) == 150 * 64 * 64 * 4 + 8 * 64 * 64
    assert decoding.head_start_window([segmentation], with_weights=False) == (2 << 30) // (
        150 * 64 * 64 * 4 + 8 * 64 * 64
    )
    assert decoding.decoded_bytes(image, with_weights=True) == 64 * 64 * 16  # up to 16-bit RGB, weights
    monkeypatch.setattr(decoding, "_physical_memory", lambda: 1 << 28)  # an eighth of memory at most
    assert decoding.head_start_window([image], with_weights=False) == (1 << 25) // (64 * 64 * 12)
    monkeypatch.setattr(decoding, "_physical_memory", lambda: 64 << 30)
    # 2 GiB of 64x64 pairs would be 43,690: pairs also hold memory besides their pixels
    assert decoding.head_start_window([image], with_weights=False) == decoding.HEAD_START_PAIRS == 1024


def test_a_head_start_that_decodes_otherwise_than_the_run_is_stopped_and_not_used(monkeypatch):
    import lossctl.decoding
    import lossctl.engine as engine

    calls = []
    start_decoding = engine.start_decoding
    monkeypatch.setattr(
        engine, "start_decoding", lambda *args, **kwargs: calls.append(1) or start_decoding(*args, **kwargs)
    )
    pairs = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs
    decodable = lossctl.decoding.decodable(pairs)
    head_start = lossctl.decoding.DecodeAhead(
        decodable, with_weights=True, workers=2, prefetch=4, processes=True
    )
    config = EvalConfig(
        metrics=["l1"], params=resolve_params(["l1"], []), device="cpu", workers=2, decoder="processes"
    )
    results = list(engine.iter_results(pairs, config, head_start))
    assert head_start._closed and calls == [1]  # decoded anew, as this run asks (no weights)
    assert sorted(result.pair.name for result in results) == sorted(pair.name for pair in pairs)
    assert head_start.decodes(decodable, True, None) and not head_start.decodes(decodable, False, None)


def test_pixels_decoded_in_processes_are_copied_out_of_shared_memory_by_taker_threads(monkeypatch):
    """The consumer (on a GPU, the thread that feeds it) should not spend 0.2-0.7 ms an image
    copying pixels out of shared memory: taker threads do it as each decode finishes."""
    import threading

    import lossctl.decoding as decoding

    takers = []
    take = decoding._SharedArray.take

    def recording_take(value):
        takers.append(threading.current_thread().name)
        return take(value)

    monkeypatch.setattr(decoding._SharedArray, "take", staticmethod(recording_take))
    pairs = decoding.decodable(pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs)
    decoder = decoding.DecodeAhead(pairs, with_weights=False, workers=2, prefetch=len(pairs), processes=True)
    try:
        for future, _ in list(decoder._in_flight):
            future.result()
        time.sleep(0.5)  # the takers copy as decodes finish
        items = list(decoder)
        assert not decoder._takes  # every take handed over and forgotten
    finally:
        decoder.close()
    assert [item.pair.name for item in items] == [pair.name for pair in pairs]
    assert takers and all(name.startswith("lossctl-take") for name in takers)


def test_ctrl_c_while_waiting_for_a_decoding_process_stops_the_consumer():
    """A KeyboardInterrupt raised while the consumer waits for a decode must reach the caller
    (exit 130 with a partial report), not be taken for a failed decode and waited out."""
    from concurrent.futures import Future

    import lossctl.decoding as decoding

    class Interrupted(Future):
        def exception(self, timeout=None):
            raise KeyboardInterrupt

        def result(self, timeout=None):
            raise KeyboardInterrupt

    pairs = decoding.decodable(pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs)
    decoder = decoding.DecodeAhead(pairs, with_weights=False, workers=1, prefetch=2, processes=True)
    try:
        _, pair = decoder._in_flight.popleft()
        decoder._in_flight.appendleft((Interrupted(), pair))
        with pytest.raises(KeyboardInterrupt):
            next(decoder)
    finally:
        decoder.close()


def test_a_shared_block_freed_twice_is_no_error():
    import lossctl.decoding as decoding

    shared = decoding._SharedArray.put(np.arange(10, dtype=np.uint8))
    decoding._release(shared)
    decoding._release(shared)


def test_an_evaluation_failing_after_its_decoding_head_start_stops_it(monkeypatch):
    """The head start is made before the device is checked; an error after it must not leave its
    processes decoding, nor their shared-memory blocks behind."""
    from pathlib import Path

    import lossctl.decoding
    from lossctl.run import EvalRequest, run_evaluation

    made = []
    init = lossctl.decoding.DecodeAhead.__init__

    def recording_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    def blocks() -> set[str]:
        return {path.name for path in Path("/dev/shm").glob("psm_*")}

    monkeypatch.setattr(lossctl.decoding.DecodeAhead, "__init__", recording_init)
    before = blocks()
    request = EvalRequest(
        SAMPLE_PRED,
        SAMPLE_GT,
        ["l1"],
        resolve_params(["l1"], []),
        device="cuda:99",
        workers=2,
        decoder="processes",
    )
    with pytest.raises(LossctlError, match="cuda:99"):
        run_evaluation(request)
    assert len(made) == 1 and made[0]._closed
    made[0]._decoders.pool.shutdown(wait=True)  # decodes running at the failure finish and are freed
    assert not blocks() - before


def _loaded_sample_batches(config):
    from lossctl.io import load_pair

    loaded = [
        load_pair(pair) for pair in pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs if pair.status == "pending"
    ]
    by_shape = {}
    for item in loaded:
        by_shape.setdefault(item.batch_key, []).append(item)
    return list(by_shape.values())


def test_notes_keep_their_order_whether_flagged_by_lists_or_by_tensors_read_with_the_values():
    import lossctl.engine as engine
    from lossctl.metrics import PairBatch

    images = torch.zeros(3, 1, 4, 4)
    batch = PairBatch(images, images)
    flags = [True, False, True]
    batch.note(flags, "first")
    flags[1] = True  # the batch keeps the flags as they were
    batch.note(torch.tensor([False, True, True]), "second")  # stays a tensor until read
    batch.note_image(2, "third")
    expected = [["first"], ["second"], ["first", "second", "third"]]
    assert batch.notes == expected
    config = EvalConfig(metrics=["l1", "ssim"], params=resolve_params(["l1", "ssim"], []))
    rows, notes = engine._metric_values(batch, config, lambda metric: metric.compute)
    # ssim (on 4x4 images) adds a note of its own to every image, after these
    assert [image_notes[:-1] for image_notes in notes] == expected
    assert all(image_notes[-1].startswith("ssim: 4x4 is smaller") for image_notes in notes)
    assert [row["l1"] for row in rows] == [0.0, 0.0, 0.0]


def test_a_gpu_style_computer_collects_each_batch_once_the_next_is_started():
    """On a GPU one batch computes while the next is prepared: its results come back after the
    next batch is submitted, or at finish(), in order and equal to computing each batch alone."""
    import lossctl.engine as engine

    names = parse_metric_names(None)
    config = EvalConfig(metrics=names, params=resolve_params(names, []), device="cpu")
    device = torch.device("cpu")
    batches = _loaded_sample_batches(config)
    assert len(batches) >= 2
    computer = engine._Computer(config, device, pooled=False)
    yielded = []
    for index, batch in enumerate(batches):
        got = list(computer.submit(batch))
        expected_before = batches[index - 1] if index else []
        assert [result.pair.name for result in got] == [item.pair.name for item in expected_before]
        yielded += got
    yielded += list(computer.finish())
    alone = [result for batch in batches for result in engine.compute_batch(batch, config, device)]

    def described(results):  # repr: NaN equals NaN
        return [(r.pair.name, r.status, repr(r.values), r.notes) for r in results]

    assert described(yielded) == described(alone)


def test_a_gpu_style_computer_splits_a_batch_that_runs_out_of_memory(monkeypatch):
    import lossctl.engine as engine

    start_batch = engine.start_batch

    def small_memory(items, config, device):
        if len(items) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return start_batch(items, config, device)

    monkeypatch.setattr(engine, "start_batch", small_memory)
    config = EvalConfig(metrics=["l1", "ssim"], params=resolve_params(["l1", "ssim"], []), device="cpu")
    batches = [batch for batch in _loaded_sample_batches(config) if len(batch) > 1]
    assert batches
    computer = engine._Computer(config, torch.device("cpu"), pooled=False)
    results = [result for batch in batches for result in computer.submit(batch)] + list(computer.finish())
    assert sorted(result.pair.name for result in results) == sorted(
        item.pair.name for b in batches for item in b
    )
    assert all(result.status == "ok" and not math.isnan(result.values["l1"]) for result in results)


def test_a_cpu_task_computes_as_it_decodes_once_it_holds_a_block(folders, rng, monkeypatch):
    """Tasks are sized from the first pair's header; when later pairs are far larger, a thread must
    not decode a whole task's worth of them before computing any (memory)."""
    import lossctl.engine

    pred, gt = folders
    for index, side in enumerate([8] + [64] * 7):
        clean = random_rgb(rng, side, side)
        save_image(gt / f"{index}.png", clean)
        save_image(pred / f"{index}.png", noisy(rng, clean))
    events = []
    decode_pair, compute_within_memory = lossctl.engine.decode_pair, lossctl.engine.compute_within_memory

    def recording_decode_pair(pair, with_weights):
        events.append("decode")
        return decode_pair(pair, with_weights)

    def recording_compute(items, config, device):
        events.append(f"compute {len(items)}")
        return compute_within_memory(items, config, device)

    monkeypatch.setattr(lossctl.engine, "LEVELS_BLOCK_VALUES", 3 * 64 * 64)
    monkeypatch.setattr(lossctl.engine, "decode_pair", recording_decode_pair)
    monkeypatch.setattr(lossctl.engine, "compute_within_memory", recording_compute)
    results = evaluate_folders(pred, gt, "l1,ssim", device="cpu", workers=1, decoder="threads")
    assert len(results) == 8 and all(result.status == "ok" for result in results.values())
    # One task of all eight pairs (sized from the 8x8 one), computed pair by pair once it holds a
    # 64x64 image's worth: the 8x8 pair and the first 64x64 one, then each 64x64 one alone.
    assert events == ["decode", "decode", "compute 1", "compute 1"] + ["decode", "compute 1"] * 6


def test_the_decode_window_is_two_batches_of_the_size_memory_allows(folders, rng):
    """Two batches and two pairs per worker; where the device's memory makes batches of large images
    smaller than --batch-size, the window shrinks with them instead of holding 2 x 64 huge pairs."""
    from lossctl.engine import decode_window

    pred, gt = folders
    save_image(pred / "a.png", random_rgb(rng, 100, 100))
    save_image(gt / "a.png", random_rgb(rng, 100, 100))
    pairs = pair_folders(pred, gt).pairs
    assert decode_window(64, 16) == 2 * 64 + 2 * 16
    assert decode_window(64, 16, 1 << 40, pairs) == 2 * 64 + 2 * 16
    assert decode_window(64, 16, 5 * 3 * 100 * 100, pairs) == 2 * 5 + 2 * 16
    assert decode_window(64, 16, 1, pairs) == 2 * 1 + 2 * 16


def test_decoding_processes_keep_the_window_memory_allows(folders, rng, monkeypatch):
    import lossctl.decoding
    import lossctl.engine

    pred, gt = folders
    for index in range(6):
        save_image(pred / f"{index}.png", random_rgb(rng, 40, 40))
        save_image(gt / f"{index}.png", random_rgb(rng, 40, 40))
    windows = []
    resize = lossctl.decoding.DecodeAhead.resize
    monkeypatch.setattr(lossctl.engine, "max_batch_values", lambda config, device: 2 * 3 * 40 * 40)
    monkeypatch.setattr(
        lossctl.decoding.DecodeAhead, "resize", lambda self, n: (windows.append(n), resize(self, n))[1]
    )
    results = evaluate_folders(pred, gt, "l1", device="cpu", decoder="processes", workers=2, batch_size=16)
    assert windows == [2 * 2 + 2 * 2] and all(result.status == "ok" for result in results.values())
