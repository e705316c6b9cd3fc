"""Pictures of a report's pairs: heat maps for ``--maps``, and the gallery cards of the HTML reports.

Pairs are decoded again with the evaluator's loader and turned into the very batch the metrics saw
(:func:`lossctl.engine.pair_batch`), so that each map's mean is the number in the report.

The colour scale is, by default, shared by every map drawn in one run: ``l1`` from 0 to the largest
error of any pair, ``ssim`` from the lowest value of any pair to 1. Colours then mean the same
number in every picture, so a gallery sorted worst-first also looks worst-first, and no value is
clipped. That takes two passes over the pairs (one for the range, one to draw). ``--map-scale pair``
gives each map its own range instead (one pass; it shows where a good pair's small errors are).
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from . import maps
from .engine import EvalConfig, PairResult, decode_pairs, pair_batch, resolve_device
from .errors import LossctlError
from .html_report import Card, Panel
from .io import DecodedImage, LoadedPair, Pair
from .metrics import METRICS, resolve_params
from .report import format_value

THUMB_SIZE = 200  # longest side of a gallery thumbnail, in pixels
LARGE_SIZE = 640  # longest side of the enlarged view (the page stays a few MB per 10 pairs)


@dataclass
class Drawn:
    """One pair's heat map, or why it has none; ``loaded`` keeps the decoded images for display."""

    pair: Pair
    loaded: LoadedPair | None = None
    heat: Image.Image | None = None
    png_info: Any = None
    scale: maps.MapScale | None = None
    mean: float = math.nan
    size: tuple[int, int] | None = None  # the map's width and height
    reason: str = ""


def _computed(
    pairs: Sequence[Pair], config: EvalConfig, metric: str, with_maps: Sequence[bool] | None = None
) -> Iterator[tuple[Pair, LoadedPair | None, np.ndarray | None, str]]:
    """Each pair with its decoded images and its ``metric`` map (float64), or the reason it has none;
    only the pairs flagged in ``with_maps`` (all by default) get a map computed."""
    import torch

    device = resolve_device(config.device)
    params = config.params.get(metric, {})
    prefetch = 2 * config.workers + 2
    for index, (pair, item) in enumerate(zip(pairs, decode_pairs(pairs, config, prefetch), strict=True)):
        if with_maps is not None and not with_maps[index]:
            yield pair, item if isinstance(item, LoadedPair) else None, None, ""
            continue
        if isinstance(item, PairResult):
            yield pair, None, None, item.error
            continue
        if not isinstance(item, LoadedPair):
            yield pair, None, None, "no heat map for segmentation pairs"
            continue
        if (problem := config.convention.check_size(item.height, item.width)) is not None:
            yield pair, item, None, problem
            continue
        with torch.no_grad():
            values = maps.metric_maps(pair_batch([item], config, device), metric, params)[0]
        yield pair, item, values.to(torch.float64).cpu().numpy(), ""


MAP_CACHE_VALUES = 1 << 24  # map values (float64, 128 MB) kept from the first pass of a shared scale


def draw_heat_maps(
    pairs: Sequence[Pair],
    config: EvalConfig,
    metric: str,
    scale_mode: str,
    on_drawn: Callable[[int, Drawn], None],
    on_progress: Callable[[int], None] | None = None,
    needs_images: Callable[[int], bool] = lambda index: True,
) -> maps.MapScale | None:
    """Draw the ``metric`` heat map of each pair and hand it to ``on_drawn(index, drawn)``, in order.

    ``scale_mode`` ``shared`` puts every map on one scale (returned), ``pair`` gives each its own.
    A shared scale needs the range of every map first: the first pass keeps the maps it can (up to
    :data:`MAP_CACHE_VALUES` values), so that the second decodes again only the others and the
    pairs whose images ``on_drawn`` shows (``needs_images(index)``; ``drawn.loaded`` is None for
    the rest).
    """
    config = replace(config, with_weights=False)
    shared = None
    kept: dict[int, tuple[np.ndarray | None, str]] = {}
    if scale_mode == "shared":
        lowest, highest, room = math.inf, -math.inf, MAP_CACHE_VALUES
        for index, (_, _, values, reason) in enumerate(_computed(pairs, config, metric)):
            if values is not None:
                low, high = maps.map_range(values)
                lowest, highest = min(lowest, low), max(highest, high)
            if values is None or values.size <= room:
                kept[index] = (values, reason)
                room -= 0 if values is None else values.size
            if on_progress:
                on_progress(1)
        if math.isfinite(lowest):
            shared = maps.MapScale.natural(metric, lowest, highest)
    again = [index for index in range(len(pairs)) if index not in kept or needs_images(index)]
    with_maps = [index not in kept for index in again]
    computed = _computed([pairs[index] for index in again], config, metric, with_maps)
    for index, pair in enumerate(pairs):
        loaded = None
        if index not in kept or needs_images(index):
            _, loaded, values, reason = next(computed)
        if index in kept:
            values, reason = kept.pop(index)
        drawn = Drawn(pair, loaded, reason=reason)
        if values is not None:
            scale = shared or maps.MapScale.natural(metric, *maps.map_range(values))
            mean = float(values.mean())
            heat, box = maps.render_heat_map(values, scale, metric)
            drawn.heat, drawn.scale, drawn.mean = heat, scale, mean
            drawn.png_info = maps.heat_map_info(metric, scale, mean, box)
            drawn.size = (values.shape[1], values.shape[0])
        on_drawn(index, drawn)
        if on_progress:
            on_progress(1)
    return shared


def display_image(image: DecodedImage) -> Image.Image:
    """An image as stored, scaled to [0, 1] by its bit depth, clipped, as 8-bit gray or RGB."""
    if image.pixels.dtype == np.uint8 and image.scale == 255:
        pixels = image.pixels
    else:
        values = image.pixels.astype(np.float32) * np.float32(255 / image.scale)
        pixels = np.rint(np.clip(np.nan_to_num(values), 0, 255)).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _shrunk(image: Image.Image, longest: int) -> Image.Image:
    """``image`` shrunk (never enlarged) to ``longest`` pixels on its longer side, with Pillow."""
    if max(image.size) <= longest:
        return image
    image = image.copy()
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return image


class ImageStore:
    """Where the gallery's pictures go: into the page as PNG data URIs (``folder`` None), or as PNG
    files into ``folder``, linked from the page by a path relative to it (``href``)."""

    def __init__(self, folder: Path | None = None, href: str = ""):
        self.folder, self.href, self.count = folder, href, 0

    def uri(self, image: Image.Image, longest: int, label: str) -> str:
        """Store ``image`` shrunk to ``longest`` pixels; the URI the page shows it by."""
        image = _shrunk(image, longest)
        if self.folder is None:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=maps.PNG_COMPRESSION)
            return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        self.count += 1
        name = f"{self.count:05d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
        try:
            image.save(self.folder / name, format="PNG", compress_level=maps.PNG_COMPRESSION)
        except OSError as error:
            raise LossctlError(f"cannot write {self.folder / name}: {error.strerror or error}") from None
        return f"{quote(self.href, errors='surrogateescape')}/{name}"  # a page name's own bytes


EMBEDDED = ImageStore()


def panel(
    label: str, image: Image.Image | None, caption: str, missing: str = "", store: ImageStore = EMBEDDED
) -> Panel:
    """A gallery picture: thumbnail, enlarged view and caption, or the reason there is none."""
    if image is None:
        return Panel(label, None, None, caption, missing)
    full = (
        store.uri(image, LARGE_SIZE, label) if max(image.size) > THUMB_SIZE else None
    )  # None: the thumbnail
    return Panel(label, store.uri(image, THUMB_SIZE, label), full, caption)


def heat_caption(drawn: Drawn, metric: str) -> str:
    """What a heat map shows, for its caption: pair, metric, map size, mean (the reported value), scale."""
    if drawn.scale is None or drawn.size is None:
        return ""
    width, height = drawn.size
    return (
        f"{drawn.pair.name}: {metric} map {width}x{height}, mean {format_value(drawn.mean, 6)}, "
        f"colour scale {drawn.scale.text()}"
    )


def heat_panel(drawn: Drawn, metric: str, label: str = "heat map", store: ImageStore = EMBEDDED) -> Panel:
    """The gallery picture of a heat map, with its exact scale; or why the pair has none."""
    made = panel(label, drawn.heat, heat_caption(drawn, metric), drawn.reason or "no heat map", store)
    return replace(made, scale=(drawn.scale.low, drawn.scale.high)) if drawn.scale else made


def worst_first(frame: pd.DataFrame, metric: str) -> list[str]:
    """Names of the ``ok`` pairs, worst ``metric`` value first (NaN last, then by name)."""
    ok = frame[frame["status"] == "ok"]
    values = ok[metric].astype("float64")
    key = -values if METRICS[metric].better == "lower" else values
    order = pd.DataFrame({"name": ok["name"], "nan": values.isna(), "key": key.fillna(0.0)})
    return order.sort_values(["nan", "key", "name"], kind="stable")["name"].tolist()


def _pair_of(row: pd.Series) -> Pair:
    return Pair(name=row["name"], pred_file=str(row["pred"]), gt_file=str(row["gt"]))


def _values(row: pd.Series, metrics: Sequence[str]) -> list[tuple[str, str]]:
    arrows = {"higher": "↑", "lower": "↓"}
    return [(f"{name} {arrows[METRICS[name].better]}", format_value(row[name])) for name in metrics]


def _no_map_reason(row: pd.Series, metric: str) -> str | None:
    if str(row["pred"]).lower().endswith(".npy"):
        return "no heat map for segmentation pairs"
    if pd.isna(row[metric]):
        return row["notes"] or f"{metric} is empty for this pair"
    return None


@dataclass(frozen=True)
class EvalPictures:
    """What :func:`eval_pictures` made: gallery cards (worst first) and the shared scale, if any."""

    cards: list[Card]
    scale: maps.MapScale | None


def eval_pictures(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    config: EvalConfig,
    metric: str,
    scale_mode: str,
    maps_dir: Path | None,
    gallery: Sequence[str],
    on_start: Callable[[int, str], Callable[[int], None]] | None = None,
    store: ImageStore = EMBEDDED,
) -> EvalPictures:
    """Heat maps of ``metric`` for an evaluation: written under ``maps_dir`` (each pair's relative
    path, ``.png``) for every ``ok`` pair when given, and a gallery card for each name of ``gallery``.

    The maps of all pairs drawn share one scale (unless ``scale_mode`` is ``pair``).
    """
    rows = frame.set_index("name", drop=False)
    wanted = list(frame.loc[frame["status"] == "ok", "name"]) if maps_dir is not None else list(gallery)
    in_gallery = set(gallery)
    reasons = {name: _no_map_reason(rows.loc[name], metric) for name in wanted}
    drawable = [name for name in wanted if reasons[name] is None]
    cards: dict[str, Card] = {}

    def card(name: str, pred: Panel, gt: Panel, heat: Panel) -> Card:
        row = rows.loc[name]
        return Card(name, row["status"], _values(row, metrics), [pred, gt, heat], row["notes"] or "")

    written: set[str] = set()

    def on_drawn(index: int, drawn: Drawn) -> None:
        name = drawn.pair.name
        if maps_dir is not None and drawn.heat is not None:
            target = maps_dir / f"{name}.png"
            try:
                maps.save_heat_map(target, drawn.heat, drawn.png_info)
            except OSError as error:
                raise LossctlError(f"cannot write heat map {target}: {error.strerror or error}") from None
            written.add(name)
        if name in in_gallery:
            loaded = drawn.loaded
            pred = display_image(loaded.pred) if loaded else None
            gt = display_image(loaded.gt) if loaded else None
            cards[name] = card(
                name,
                panel("prediction", pred, f"{name}: prediction", side_reason(drawn.reason, "pred"), store),
                panel("ground truth", gt, f"{name}: ground truth", side_reason(drawn.reason, "gt"), store),
                heat_panel(drawn, metric, store=store),
            )

    pairs = [_pair_of(rows.loc[name]) for name in drawable]
    passes = 2 if scale_mode == "shared" else 1
    on_progress = on_start(passes * len(pairs), "drawing heat maps") if on_start else None
    shown = [name in in_gallery for name in drawable]
    scale = draw_heat_maps(pairs, config, metric, scale_mode, on_drawn, on_progress, shown.__getitem__)
    if maps_dir is not None:
        _remove_earlier_maps(maps_dir, [name for name in frame["name"] if name not in written])
    for name in gallery:
        if name not in cards:  # no map: show the pictures anyway, with the reason
            cards[name] = _card_without_map(rows.loc[name], metrics, config, reasons[name] or "", store)
    return EvalPictures([cards[name] for name in gallery], scale)


def _remove_earlier_maps(maps_dir: Path, names: Sequence[str]) -> None:
    """Remove the heat maps an earlier run wrote under ``maps_dir`` for pairs of this run that have
    none now (they failed, or have no value): the folder would show a map of what this report does
    not say, on another scale. Only files lossctl wrote (:func:`lossctl.maps.is_heat_map`)."""
    for name in names:
        path = maps_dir / f"{name}.png"
        if path.is_file() and maps.is_heat_map(path):
            try:
                path.unlink()
            except OSError as error:
                raise LossctlError(f"cannot remove the earlier heat map {path}: {error.strerror or error}") from None


def _card_without_map(
    row: pd.Series, metrics: Sequence[str], config: EvalConfig, reason: str, store: ImageStore
) -> Card:
    """A gallery card for an ``ok`` pair with no heat map: its pictures (when they are images) and why."""
    item = next(decode_pairs([_pair_of(row)], replace(config, workers=1, with_weights=False), 1))
    unseen = {"pred": "class scores (.npy) have no picture", "gt": "label maps are not drawn"}
    pictures = [
        panel(label, display_image(getattr(item, side)) if isinstance(item, LoadedPair) else None,
              f"{row['name']}: {label}", item.error if isinstance(item, PairResult) else unseen[side], store)
        for label, side in (("prediction", "pred"), ("ground truth", "gt"))
    ]  # fmt: skip
    pictures.append(Panel("heat map", None, None, "", reason))
    return Card(row["name"], row["status"], _values(row, metrics), pictures, row["notes"] or "")


def _resolve(text: object, report_path: Path) -> Path | None:
    """An image path recorded in a report: as written (relative to the working folder), else
    relative to the report's folder; None when the report has none."""
    if not isinstance(text, str) or not text:
        return None
    path = Path(text)
    if not path.exists() and not path.is_absolute() and (report_path.parent / path).exists():
        return report_path.parent / path
    return path


def report_config(params: dict[str, Any] | None, metric: str, workers: int) -> EvalConfig:
    """The convention and ``metric`` parameters a report recorded (defaults when it recorded none);
    a usage error where this lossctl cannot draw maps under them (a later version's report)."""
    from .conventions import PRESETS, Convention

    params = params or {}
    recorded = params.get("convention") or {}
    try:
        convention = Convention(**recorded)
    except TypeError:
        convention = None
    if (
        convention is None
        or convention.preset not in PRESETS
        or not isinstance(convention.y_channel, bool)
        or not isinstance(convention.crop_border, int)
        or convention.crop_border < 0
    ):
        raise LossctlError(f"the reports record a convention this lossctl cannot draw maps under: {recorded}")
    values = params.get(metric) or {}
    try:
        if not isinstance(values, dict):
            raise LossctlError(f"not an object: {values!r}")
        overrides = [f"{metric}.{key}={value}" for key, value in values.items()]
        metric_params = resolve_params([metric], overrides, convention.param_defaults).get(metric, {})
    except LossctlError as error:
        raise LossctlError(f"the reports' {metric} parameters cannot be used for its maps: {error}") from None
    return EvalConfig(
        metrics=[metric], params={metric: metric_params}, workers=workers, convention=convention
    )


@dataclass(frozen=True)
class ComparePictures:
    """What :func:`compare_pictures` made: cards, the shared scale (if any), how many got worse, and
    why pairs could not be drawn (a file not found: reports name files as eval was given them)."""

    cards: list[Card]
    scale: maps.MapScale | None
    worse: int  # pairs that got worse, of which ``cards`` shows the first ``limit``
    unreadable: list[str] = field(default_factory=list)


def side_reason(reason: str, side: str) -> str:
    """Why the ``side`` ("pred" or "gt") picture of a pair is missing: the pair's reason, which
    names the side it is about (``pred x.png: cannot read file``), said as the other side's cause."""
    if not reason or reason.startswith(f"{side} "):
        return reason
    return f"not drawn: {reason}"


def compare_pictures(
    comparison: Any,
    metric: str,
    scale_mode: str,
    limit: int,
    workers: int,
    on_start: Callable[[int, str], Callable[[int], None]] | None = None,
    store: ImageStore = EMBEDDED,
) -> ComparePictures:
    """Gallery cards of the pairs that got worse between two reports, worst first: ground truth,
    BASE and NEW predictions and their ``metric`` heat maps (on one scale unless ``scale_mode`` is
    ``pair``). Images are found through the paths the reports recorded."""
    base, new = comparison.base, comparison.new
    regressions = comparison.regressions
    names = list(dict.fromkeys(regressions["name"]))
    status = {name: (state, reason) for name, state, reason in comparison.status_regressions}
    names += [name for name in status if name not in names]
    shown = names[:limit]
    config = report_config(new.params if new.params is not None else base.params, metric, workers)
    pairs, slots = [], []
    for name in shown:
        for side, report in (("base", base), ("new", new)):
            row = report.frame.loc[name]
            if side == "new" and name in status:
                continue
            if pd.isna(row.get(metric)):
                continue
            pred, gt = _resolve(row.get("pred"), report.path), _resolve(row.get("gt"), report.path)
            if pred is None or gt is None:
                continue
            pairs.append(Pair(name=name, pred_file=str(pred), gt_file=str(gt)))
            slots.append((name, side))
    drawn_panels: dict[tuple[str, str], tuple[Panel, Panel | None, Panel]] = {}

    unreadable: list[str] = []

    def on_drawn(index: int, drawn: Drawn) -> None:
        name, side = slots[index]
        label = "before" if side == "base" else "after"
        loaded = drawn.loaded
        if loaded is None and drawn.reason:
            unreadable.append(drawn.reason)
        first = side == "base" or (name, "base") not in drawn_panels  # one ground truth a card
        drawn_panels[(name, side)] = (
            panel(f"{label}: prediction", display_image(loaded.pred) if loaded else None,
                  f"{name}: prediction {label} ({side.upper()})", side_reason(drawn.reason, "pred"), store),
            panel("ground truth", display_image(loaded.gt) if loaded and first else None,
                  f"{name}: ground truth", side_reason(drawn.reason, "gt"), store) if first else None,
            heat_panel(drawn, metric, f"{label}: heat map", store),
        )  # fmt: skip

    passes = 2 if scale_mode == "shared" else 1
    on_progress = on_start(passes * len(pairs), "drawing heat maps") if on_start else None
    scale = draw_heat_maps(pairs, config, metric, scale_mode, on_drawn, on_progress)
    cards = []
    for name in shown:
        before = drawn_panels.get((name, "base"))
        after = drawn_panels.get((name, "new"))
        why_not = status[name][1] if name in status else "no picture"
        missing = Panel("after: prediction", None, None, "", why_not)
        gt_panel = (
            (before and before[1])
            or (after and after[1])
            or Panel("ground truth", None, None, "", "no picture")
        )
        panels = [
            gt_panel,
            before[0] if before else Panel("before: prediction", None, None, "", "no picture"),
            after[0] if after else missing,
            before[2] if before else Panel("before: heat map", None, None, "", "no heat map"),
            after[2] if after else Panel("after: heat map", None, None, "", why_not),
        ]
        rows = comparison.rows[comparison.rows["name"] == name]
        values = [
            (
                f"{row.metric} {'↑' if METRICS[row.metric].better == 'higher' else '↓'}",
                f"{format_value(row.base)} → {format_value(row.new)}",
            )
            for row in rows.itertuples(index=False)
        ]
        regressed = ", ".join(rows.loc[rows["regression"], "metric"])
        lines = [f"worse beyond tolerance: {regressed}"] if regressed else []
        if name in status:
            lines.append(f"no longer computed: {status[name][0]}: {status[name][1]}")
        cards.append(Card(name, "regressed", values, panels, "", lines))
    return ComparePictures(cards, scale, len(names), unreadable)
