"""Heat maps: the colormap table, map values against independent references, and the PNGs that
``lossctl eval --maps`` writes checked against the numbers of the report."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from lossctl import colormap, maps
from lossctl import losses as L
from lossctl.cli import app
from lossctl.engine import EvalConfig, pair_batch
from lossctl.io import load_pair, pair_folders

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy, noisy_pairs, random_rgb, save_image

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of 8-bit sRGB, from the sRGB and CIE 1976 definitions."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def test_colormap_is_magma_and_perceptually_uniform():
    lut = colormap.LUT
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert len({tuple(row) for row in lut}) == 256  # every level has its own colour
    # magma's published ends: #000004 (black-violet) and #fcfdbf (pale yellow)
    assert lut[0].tolist() == [0x00, 0x00, 0x04] and lut[-1].tolist() == [0xFC, 0xFD, 0xBF]
    lab = srgb_to_lab(lut)
    lightness = lab[:, 0]
    assert np.all(np.diff(lightness) > 0)  # strictly brighter at every level
    # magma is uniform in CAM02-UCS; in CIELAB, its close cousin, lightness stays within 6 L* of a
    # straight line and the colour difference over every 15 levels within a factor 2 of the median
    assert np.abs(lightness - np.linspace(lightness[0], lightness[-1], 256)).max() < 6
    steps = np.linalg.norm(np.diff(lab[::15], axis=0), axis=1)
    assert steps.max() < 2 * np.median(steps) and steps.min() > 0.5 * np.median(steps)


def test_levels_map_the_scale_onto_the_table():
    values = np.array([[0.0, 0.5, 1.0, -3.0, 7.0, np.nan]])
    assert colormap.levels(values, 0.0, 1.0).tolist() == [[0, 128, 255, 0, 255, 0]]
    assert colormap.colorize(values, 0.0, 1.0)[0, 2].tolist() == colormap.LUT[255].tolist()
    with pytest.raises(ValueError, match="high > low"):
        colormap.levels(values, 1.0, 1.0)


def test_natural_scales_start_at_no_error_and_end_at_identical():
    assert maps.MapScale.natural("l1", 0.01, 0.3) == maps.MapScale(0.0, 0.3)
    assert maps.MapScale.natural("ssim", 0.2, 0.99) == maps.MapScale(0.2, 1.0)
    assert maps.MapScale.natural("l1", 0.0, 0.0) == maps.MapScale(0.0, 1.0)  # identical images
    assert maps.MapScale.natural("ssim", 1.0, 1.0) == maps.MapScale(0.0, 1.0)


def sample_batch(name: str, config: EvalConfig):
    pair = next(p for p in pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs if p.name == name)
    loaded = load_pair(pair)
    return loaded, pair_batch([loaded], config, torch.device("cpu"))


@pytest.mark.parametrize("name", ["blur", "gray/camera_denoise", "hdr16/rgb16"])
def test_l1_map_is_the_channel_mean_of_the_absolute_difference(name):
    loaded, batch = sample_batch(name, EvalConfig(metrics=["l1"], params={}, precision="float64"))
    got = maps.metric_maps(batch, "l1", {})[0].numpy()
    pred = loaded.pred.pixels.astype(np.float64) / loaded.pred.scale
    gt = loaded.gt.pixels.astype(np.float64) / loaded.gt.scale
    expected = np.abs(pred - gt).mean(axis=2)  # a grayscale side broadcasts like the repeated channels
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["blur", "gray/camera_denoise"])
def test_ssim_map_is_scikit_images_ssim_map_over_the_valid_region(name):
    params = {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "downsample": 0}
    loaded, batch = sample_batch(
        name, EvalConfig(metrics=["ssim"], params={"ssim": params}, precision="float64")
    )
    got = maps.metric_maps(batch, "ssim", params)[0].numpy()
    pred = loaded.pred.pixels.astype(np.float64) / loaded.pred.scale
    gt = loaded.gt.pixels.astype(np.float64) / loaded.gt.scale
    _, full = structural_similarity(
        pred, gt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        channel_axis=2, full=True,
    )  # fmt: skip
    expected = full[5:-5, 5:-5].mean(axis=2)
    assert got.shape == (256 - 10, 256 - 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_ssim_map_mean_is_ssim_also_after_matlab_downsampling(rng):
    pred = torch.from_numpy(rng.random((2, 3, 400, 390)))  # min side 390: matlab downsamples by 2
    target = (pred + 0.1 * torch.from_numpy(rng.standard_normal((2, 3, 400, 390)))).clamp(0, 1)
    for downsample in (False, True):
        window_map = L.ssim_map(pred, target, downsample=downsample)
        expected_side = 390 // 2 - 10 if downsample else 390 - 10
        assert window_map.shape[-1] == expected_side
        torch.testing.assert_close(
            window_map.mean(dim=(1, 2, 3)), L.ssim(pred, target, reduction="none", downsample=downsample)
        )


def eval_with_maps(maps_dir, *args, pred=SAMPLE_PRED, gt=SAMPLE_GT):
    result = invoke("eval", pred, gt, "--maps", maps_dir, "--format", "csv", "-q", *args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False, na_values=[""])
    return maps_dir, frame.set_index("name")


RUNS = {
    "l1": ["-m", "l1"],
    "ssim, one scale per pair": ["-m", "ssim", "--map-metric", "ssim", "--map-scale", "pair"],
    "l1, Y channel cropped by 4": ["-m", "l1", "--preset", "basicsr", "--scale", "4"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The samples evaluated once per run of RUNS, with their heat maps."""
    return {label: eval_with_maps(tmp_path_factory.mktemp("maps"), *args) for label, args in RUNS.items()}


@pytest.mark.parametrize("label", list(RUNS))
def test_every_heat_map_shows_the_reported_number(runs, label):
    maps_dir, rows = runs[label]
    metric = "ssim" if "ssim" in label else "l1"
    heat_maps = {
        path.relative_to(maps_dir).with_suffix("").as_posix(): path for path in maps_dir.rglob("*.png")
    }
    assert sorted(heat_maps) == sorted(rows.index)  # one map per pair, at the pair's relative path
    scales = set()
    for name, path in heat_maps.items():
        written = maps.read_heat_map(path)
        assert written.metric == metric
        assert written.mean == pytest.approx(rows.loc[name, metric], rel=1e-5, abs=1e-7)
        # the colours themselves: every pixel is within half a level of its value, so their mean too
        half_level = (written.scale.high - written.scale.low) / 510
        assert abs(written.values.mean() - rows.loc[name, metric]) <= half_level + 1e-6
        crop = 4 if "cropped" in label else 0
        window = 10 if metric == "ssim" else 0
        assert written.values.shape == (256 - 2 * crop - window, 256 - 2 * crop - window)
        scales.add(written.scale)
        if "per pair" in label:  # each map spans its own range, up to 1 (identical)
            assert written.scale.high == 1.0 and written.values.min() == pytest.approx(written.scale.low)
    if "per pair" not in label:  # one scale for every map, from 0 to the largest error of any
        assert len(scales) == 1
        scale = scales.pop()
        assert scale.low == 0.0
        highest = max(maps.read_heat_map(path).values.max() for path in heat_maps.values())
        assert highest == pytest.approx(scale.high)


def test_heat_map_png_has_a_labelled_colour_bar_and_states_its_scale(runs):
    maps_dir, rows = runs["l1"]
    with Image.open(maps_dir / "blur.png") as image:
        text = dict(image.text)
        rgb = np.asarray(image.convert("RGB"))
    assert set(maps.PNG_KEYS) <= set(text) and text["lossctl:colormap"] == "magma"
    assert text["lossctl:box"] == "0,0,256,256" and rgb.shape[1] > 256 + maps.BAR_WIDTH
    bar = rgb[:, 256 + maps.BAR_GAP + maps.BAR_WIDTH // 2]
    bar_colours = [tuple(pixel) for pixel in bar if tuple(pixel) in {tuple(c) for c in colormap.LUT}]
    assert bar_colours[0] == tuple(colormap.LUT[255]) and bar_colours[-1] == tuple(colormap.LUT[0])
    labels = rgb[:, 256 + maps.BAR_GAP + maps.BAR_WIDTH + maps.LABEL_GAP :]
    assert (labels.sum(axis=2) < 200).any()  # dark text beside the bar: the scale's ends and the metric
    assert float(text["lossctl:low"]) == 0.0 and float(text["lossctl:high"]) > rows["l1"].max()


def test_render_states_the_scale_ends_as_text():
    image, box = maps.render_heat_map(np.zeros((8, 8)), maps.MapScale(0.0, 0.25), "l1")
    assert box == (0, 0, 8, 8) and image.height >= maps.MIN_HEIGHT  # room for the labels on tiny maps


def test_pairs_without_a_map_are_left_out_of_the_maps_folder(tmp_path, folders, rng):
    pred, gt = folders
    clean = random_rgb(rng, 8, 8)  # smaller than the SSIM window
    save_image(gt / "tiny.png", clean)
    save_image(pred / "tiny.png", noisy(rng, clean))
    clean = random_rgb(rng)
    save_image(gt / "fine.png", clean)
    save_image(pred / "fine.png", noisy(rng, clean))
    maps_dir, rows = eval_with_maps(tmp_path / "maps", "-m", "ssim", "--map-metric", "ssim", pred=pred, gt=gt)
    assert math.isnan(rows.loc["tiny", "ssim"])
    assert [path.name for path in maps_dir.iterdir()] == ["fine.png"]


def test_a_rerun_removes_the_earlier_map_of_a_pair_that_has_none_now(tmp_path, folders, rng):
    """The maps folder shows what the report says: a pair that fails now keeps no map from a run
    before (on another scale). A file lossctl did not write is never removed."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("kept", "broken", "theirs"))
    maps_dir, _ = eval_with_maps(tmp_path / "maps", "-m", "l1", pred=pred, gt=gt)
    assert sorted(path.name for path in maps_dir.iterdir()) == ["broken.png", "kept.png", "theirs.png"]
    Image.new("RGB", (4, 4)).save(maps_dir / "theirs.png")  # the user's own picture, not a map
    (pred / "broken.png").write_bytes(b"not a png")
    (pred / "theirs.png").write_bytes(b"not a png")
    rerun = invoke("eval", pred, gt, "--maps", maps_dir, "-m", "l1", "-q", "--format", "csv")
    assert rerun.exit_code == 3 and "broken," in rerun.stdout  # two pairs failed, the report says so
    assert sorted(path.name for path in maps_dir.iterdir()) == ["kept.png", "theirs.png"]
    assert not maps.is_heat_map(maps_dir / "theirs.png") and maps.is_heat_map(maps_dir / "kept.png")


def test_a_heat_map_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A failure (or Ctrl-C) while a map is written leaves no half PNG under its name."""
    image, info = (
        Image.new("RGB", (8, 8)),
        maps.heat_map_info("l1", maps.MapScale(0.0, 1.0), 0.5, (0, 0, 8, 8)),
    )
    target = tmp_path / "x.png"
    maps.save_heat_map(target, image, info)
    before = target.read_bytes()

    def fail_midway(self, stream, *args, **kwargs):
        stream.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", fail_midway)
    with pytest.raises(OSError):
        maps.save_heat_map(target, image, info)
    assert target.read_bytes() == before and [path.name for path in tmp_path.iterdir()] == ["x.png"]


def test_maps_are_never_written_into_an_input_folder(folders, rng):
    """A map is written under its pair's own name: --maps PRED replaced the predictions."""
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", noisy(rng, clean))
    before = (pred / "x.png").read_bytes()
    for target in (pred, gt, pred / "maps"):
        result = invoke("eval", pred, gt, "-m", "l1", "--maps", target, "-q")
        assert result.exit_code == 2 and "its maps would replace the pictures" in result.stderr, result.output
    assert (pred / "x.png").read_bytes() == before and not (pred / "maps").exists()


def test_maps_beyond_the_first_pass_cache_are_drawn_the_same(runs, tmp_path, monkeypatch):
    from lossctl import gallery

    monkeypatch.setattr(gallery, "MAP_CACHE_VALUES", 2 * 256 * 256)  # keep 2 maps, compute 5 again
    maps_dir, _ = eval_with_maps(tmp_path / "maps", *RUNS["l1"])
    cached_dir, _ = runs["l1"]
    for path in cached_dir.rglob("*.png"):
        assert (maps_dir / path.relative_to(cached_dir)).read_bytes() == path.read_bytes()


def test_ssim_heat_maps_use_the_runs_window_and_sigma(tmp_path):
    maps_dir = tmp_path / "maps"
    args = ["-m", "ssim", "--map-metric", "ssim", "--param", "ssim.window=7", "--param", "ssim.sigma=2.5"]
    result = invoke("eval", SAMPLE_PRED, SAMPLE_GT, "--maps", maps_dir, "--format", "csv", "-q", *args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(io.StringIO(result.stdout)).set_index("name")
    paths = sorted(maps_dir.rglob("*.png"))
    assert paths
    for path in paths:
        name = path.relative_to(maps_dir).with_suffix("").as_posix()
        written = maps.read_heat_map(path)
        assert written.values.shape == (256 - 6, 256 - 6)
        assert written.mean == pytest.approx(rows.loc[name, "ssim"], rel=1e-5, abs=1e-7)
