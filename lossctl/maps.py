"""Per-pixel error maps of a pair, and their rendering as heat maps with a labelled colour bar.

A map is what a metric averages, pixel by pixel, so that its mean is the pair's reported value:

- ``l1``: ``|p - g|`` averaged over the channels, ``(H, W)`` after the convention (``--crop-border``,
  ``--y-channel``); its mean over the pixels is the pair's ``l1``.
- ``ssim``: the SSIM map (:func:`lossctl.losses.ssim_map`) averaged over the channels, over the valid
  region only (``window // 2`` pixels in from each side, after the matlab preset's downsampling);
  its mean is the pair's ``ssim``.

Maps are computed from the very batch the metrics see (:func:`lossctl.engine.pair_batch`). A heat
map colours values on a stated scale with the perceptually uniform :mod:`lossctl.colormap` and
puts a colour bar with the scale's ends beside it; the PNG also records the scale in text chunks
(:data:`PNG_KEYS`), so :func:`read_heat_map` recovers the values (to 1/255 of the scale).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from . import colormap
from .atomic import write_atomic_bytes
from .errors import LossctlError
from .report import format_value

if TYPE_CHECKING:
    import torch

    from .metrics import PairBatch, ParamValue

MAP_METRICS = {
    "l1": "|p - g| averaged over channels",
    "ssim": "SSIM map (valid region) averaged over channels",
}
MAP_SCALES = ("shared", "pair")
PNG_KEYS = (
    "lossctl:metric",
    "lossctl:low",
    "lossctl:high",
    "lossctl:mean",
    "lossctl:box",
    "lossctl:colormap",
)


def check_map_metric(name: str, metrics: Iterable[str] | None, option: str = "--map-metric") -> str:
    """``name`` if it is a metric with a map (and among ``metrics``, the run's, when given); else a
    LossctlError."""
    if name not in MAP_METRICS:
        raise LossctlError(f"{option} {name}: no heat map for it; choose one of {', '.join(MAP_METRICS)}")
    if metrics is not None and name not in metrics:
        raise LossctlError(
            f"{option} {name}: {name} is not among the metrics computed, so its map would show no reported number"
        )
    return name


def check_map_scale(name: str) -> str:
    """``name`` if it is a ``--map-scale`` (shared or pair); else a LossctlError."""
    if name not in MAP_SCALES:
        raise LossctlError(f"--map-scale {name}: choose shared or pair")
    return name


def metric_maps(batch: PairBatch, metric: str, params: Mapping[str, ParamValue]) -> torch.Tensor:
    """The ``(N, H', W')`` maps of ``metric`` for a batch; image ``i``'s mean is its reported value."""
    from . import losses as L

    if metric == "l1":
        return L.absolute_error(batch.diff).mean(dim=1)
    if metric == "ssim":
        window_map = L.ssim_map(
            batch.pred,
            batch.target,
            1.0,
            int(params["window"]),
            params["sigma"],
            params["k1"],
            params["k2"],
            downsample=bool(params["downsample"]),
        )
        return window_map.mean(dim=1)
    raise ValueError(f"no map for metric {metric!r}")


@dataclass(frozen=True)
class MapScale:
    """The values at the two ends of the colour bar: ``low`` is the darkest colour, ``high`` the brightest."""

    low: float
    high: float

    @classmethod
    def natural(cls, metric: str, lowest: float, highest: float) -> MapScale:
        """The scale for maps whose values span [lowest, highest]: from 0 for ``l1`` (no error) and up
        to 1 for ``ssim`` (identical), so no value is clipped; a span of zero widens to a unit range."""
        if metric == "l1":
            low, high = 0.0, max(highest, 0.0)
        else:
            low, high = min(lowest, 1.0), 1.0
        if not high > low:
            low, high = (low, low + 1.0) if metric == "l1" else (high - 1.0, high)
        return cls(low, high)

    def text(self) -> str:
        """The scale for people, e.g. ``0 to 0.3142`` (4 significant digits)."""
        return f"{format_value(self.low)} to {format_value(self.high)}"


def map_range(values: np.ndarray) -> tuple[float, float]:
    """The smallest and largest finite value of a map (NaN, NaN when it has none)."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)


BAR_GAP, BAR_WIDTH, LABEL_GAP, MARGIN, MIN_HEIGHT = 8, 14, 4, 4, 96


def render_heat_map(values: np.ndarray, scale: MapScale, metric: str) -> tuple[Image.Image, tuple[int, ...]]:
    """The map coloured on ``scale`` with a vertical colour bar on its right, labelled with the scale's
    ends (``high`` at the top, ``low`` at the bottom) and the metric. Returns the RGB image and the
    map's box ``(left, top, width, height)`` in it."""
    height, width = values.shape
    labels = [format_value(scale.high), metric, format_value(scale.low)]
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), label, font=font) for label in labels]
    text_width = max(box[2] - box[0] for box in boxes)
    text_height = max(box[3] - box[1] for box in boxes)
    canvas_height = max(height, MIN_HEIGHT)
    canvas = Image.new(
        "RGB", (width + BAR_GAP + BAR_WIDTH + LABEL_GAP + text_width + MARGIN, canvas_height), "white"
    )
    canvas.paste(Image.fromarray(colormap.colorize(values, scale.low, scale.high)), (0, 0))
    bar_left = width + BAR_GAP
    bar_top, bar_bottom = text_height // 2 + 1, canvas_height - text_height // 2 - 2
    ramp = np.linspace(255, 0, bar_bottom - bar_top + 1).round().astype(np.uint8)
    bar = np.repeat(colormap.LUT[ramp][:, None, :], BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(bar), (bar_left, bar_top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((bar_left - 1, bar_top - 1, bar_left + BAR_WIDTH, bar_bottom + 1), outline="black")
    text_left = bar_left + BAR_WIDTH + LABEL_GAP
    for label, box, y in zip(labels, boxes, (bar_top, (bar_top + bar_bottom) // 2, bar_bottom), strict=True):
        draw.text((text_left, y - (box[1] + box[3]) // 2), label, fill="black", font=font)
    return canvas, (0, 0, width, height)


def heat_map_info(metric: str, scale: MapScale, mean: float, box: tuple[int, ...]) -> PngInfo:
    """PNG text chunks that state what the picture shows: metric, scale, the map's mean and box."""
    info = PngInfo()
    for key, value in zip(
        PNG_KEYS,
        (metric, repr(scale.low), repr(scale.high), repr(mean), ",".join(map(str, box)), colormap.NAME),
        strict=True,
    ):
        info.add_text(key, value)
    return info


PNG_COMPRESSION = 3  # zlib level: several times faster than Pillow's 6, and no larger on noisy maps


def save_heat_map(path: Path, image: Image.Image, info: PngInfo) -> None:
    """Write the heat map PNG (with its text chunks) whole or not at all, creating its folder;
    OSError on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_bytes(
        path, lambda stream: image.save(stream, format="PNG", pnginfo=info, compress_level=PNG_COMPRESSION)
    )


def is_heat_map(path: Path) -> bool:
    """Whether ``path`` is a heat map lossctl wrote (a PNG with its ``lossctl:metric`` text chunk)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and "lossctl:metric" in getattr(image, "text", {})
    except (OSError, ValueError, SyntaxError):  # not an image, or a damaged one: not ours to remove
        return False


@dataclass(frozen=True)
class HeatMapFile:
    """What :func:`read_heat_map` recovers from a heat map PNG."""

    metric: str
    scale: MapScale
    mean: float
    values: np.ndarray  # the map, quantised to 256 levels of the scale


def read_heat_map(path: Path) -> HeatMapFile:
    """Read back a heat map written by lossctl: its text chunks and its values, each pixel's colour
    looked up in the colormap (values are exact to half a level, ``(high - low) / 510``).

    Raises ValueError when a pixel of the map's box is not a colour of the colormap."""
    with Image.open(path) as image:
        text = dict(image.text)
        rgb = np.asarray(image.convert("RGB"))
    left, top, width, height = (int(part) for part in text["lossctl:box"].split(","))
    index = colormap.index_of(rgb[top : top + height, left : left + width])
    scale = MapScale(float(text["lossctl:low"]), float(text["lossctl:high"]))
    values = scale.low + index * ((scale.high - scale.low) / 255.0)
    return HeatMapFile(text["lossctl:metric"], scale, float(text["lossctl:mean"]), values)
