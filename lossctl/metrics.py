"""The metric registry: every per-image metric ``lossctl eval`` reports, by its METRICS.md name.

A metric is one :class:`Metric` entry whose ``compute`` maps a :class:`PairBatch` to one value per
image, calling the functions of :mod:`lossctl.losses` (the library users train with). To add a
metric, add its function there and one entry to ``METRICS`` here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from ._lazy import lazy_import
from .errors import LossctlError

if TYPE_CHECKING:
    import torch

    from . import losses as L
    from .levels import PixelLevels
else:
    L = lazy_import("lossctl.losses")

ParamValue = float | int


@dataclass(frozen=True)
class Param:
    """A settable metric parameter (``--param METRIC.KEY=VALUE``) with its validity rule."""

    key: str
    default: ParamValue
    rule: str
    is_valid: Callable[[ParamValue], bool]
    integer: bool = False

    def parse(self, metric: str, text: str) -> ParamValue:
        try:
            value: ParamValue = int(text) if self.integer else float(text)
        except ValueError:
            raise LossctlError(f"{metric}.{self.key} must be {self._kind}; got {text!r}") from None
        return self._checked(metric, value, text)

    def check(self, metric: str, value: object) -> ParamValue:
        """``value`` given as a number (the library's :class:`~lossctl.engine.EvalConfig`), checked
        as :meth:`parse` checks text; an integer for a number parameter is taken as a float, a bool
        only for an integer one (``ssim.downsample=True``)."""
        if self.integer and isinstance(value, numbers.Integral):
            return self._checked(metric, int(value), value)
        if not self.integer and isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                return self._checked(metric, float(value), value)
            except OverflowError:  # an int beyond float's range
                raise LossctlError(f"{metric}.{self.key} must be a finite number; got {value}") from None
        raise LossctlError(f"{metric}.{self.key} must be {self._kind}; got {value!r}")

    @property
    def _kind(self) -> str:
        return "an integer" if self.integer else "a number"

    def _checked(self, metric: str, value: ParamValue, given: object) -> ParamValue:
        if not math.isfinite(value):
            raise LossctlError(f"{metric}.{self.key} must be a finite number; got {given}")
        if not self.is_valid(value):
            raise LossctlError(f"{metric}.{self.key} must be {self.rule}; got {given}")
        return value


class _Noted:
    """Why a value is NaN, per image of a batch: metrics add notes, the report shows them.

    Flags given as a tensor stay on the batch's device until the notes are read: reading them at once
    would make the host wait, mid-batch, for every kernel a GPU has queued. The engine copies them to
    the host with the batch's values (see :meth:`note_entries` and :func:`notes_from`)."""

    def __init__(self, count: int):
        self.count = count
        self._entries: list[tuple[Sequence[bool] | torch.Tensor, str]] = []

    def note(self, images: Sequence[bool] | torch.Tensor, text: str) -> None:
        """Attach ``text`` to the notes of each image flagged in ``images`` (booleans, or a bool
        tensor of one flag per image)."""
        self._entries.append((images if hasattr(images, "device") else list(images), text))

    def note_image(self, index: int, text: str) -> None:
        """Attach ``text`` to the notes of image ``index``."""
        self.note([position == index for position in range(self.count)], text)

    def note_entries(self) -> list[tuple[Sequence[bool] | torch.Tensor, str]]:
        """The notes added so far, in order, as (flags, text)."""
        return list(self._entries)

    @property
    def notes(self) -> list[list[str]]:
        """Each image's notes, in the order they were added (flags in tensors are read now)."""
        return notes_from(self._entries, self.count)


def notes_from(entries: Sequence[tuple[Sequence[bool] | torch.Tensor, str]], count: int) -> list[list[str]]:
    """Each of ``count`` images' notes from :meth:`_Noted.note_entries` (flags in tensors read now)."""
    per_image: list[list[str]] = [[] for _ in range(count)]
    for images, text in entries:
        flags = images.tolist() if hasattr(images, "device") else images
        for index, flagged in enumerate(flags):
            if flagged:
                per_image[index].append(text)
    return per_image


ELEMENTWISE_CHUNK_VALUES = 1 << 24  # per chunk of a batch, for element-wise metrics of huge images


class PairBatch(_Noted):
    """A batch of same-shaped image pairs on the compute device, with shared intermediates.

    ``pred``, ``target``: ``(N, C, H, W)`` in [0, 1]; ``diff``, when given (or a function making it
    on first use), their difference computed before scaling (see the engine). ``weights``:
    ``(N, 1, H, W)`` weight maps for ``weighted_tv`` (NaN for pairs without one) or ``None`` for
    edge-aware weights from the target. ``levels``: 8-bit pairs as their stored levels (see
    :mod:`lossctl.levels`) when the engine made them; element-wise metrics then read their counts
    instead of every value, and TV their integer differences. Metrics record why a value is NaN
    with :meth:`note`.
    """

    def __init__(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor | None = None,
        diff: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        levels: PixelLevels | None = None,
    ):
        self.pred, self.target, self.weights, self.levels = pred, target, weights, levels
        self._diff = diff
        self._ssim_components: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(pred.shape[0])

    @property
    def diff(self) -> torch.Tensor:
        """``pred - target``; the engine passes it in when it can compute it more exactly."""
        if self._diff is None:
            self._diff = self.pred - self.target
        elif callable(self._diff):
            self._diff = self._diff()
        return self._diff

    @cached_property
    def mse(self) -> torch.Tensor:
        return self.image_mean_of(L.squared_error, "diff")

    def image_mean_of(self, kernel: Callable[..., torch.Tensor], *inputs: str) -> torch.Tensor:
        """Per-image mean of the element-wise ``kernel(*inputs)`` over all ``C*H*W`` values, each
        input named ``'pred'``, ``'target'`` or ``'diff'``; in the batch's dtype."""
        count = self.pred[0].numel()
        return (self.image_sum_of(kernel, *inputs) / count).to(self.pred.dtype)

    def image_sum_of(self, kernel: Callable[..., torch.Tensor], *inputs: str) -> torch.Tensor:
        """Per-image sum of the element-wise ``kernel(*inputs)`` (see :meth:`image_mean_of`), in float64.

        From the level counts when there are some; otherwise over every value, images of more than
        ``ELEMENTWISE_CHUNK_VALUES`` values in chunks (so that a huge image needs the kernel's
        temporaries of one chunk, not of the image).
        """
        import torch

        if self.levels is not None:
            return self.levels.image_sums(kernel, inputs, self.pred.dtype)
        flat = [getattr(self, name).flatten(1) for name in inputs]
        count = flat[0].shape[1]
        chunk = max(1, ELEMENTWISE_CHUNK_VALUES // flat[0].shape[0])
        return sum(
            kernel(*(values[:, start : start + chunk] for values in flat)).sum(dim=1, dtype=torch.float64)
            for start in range(0, count, chunk)
        )

    def ssim_components(self, p: Mapping[str, ParamValue]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`lossctl.losses.ssim_components` at full scale, computed once for ssim and ms_ssim."""
        key = _ssim_window(p)
        if key not in self._ssim_components:
            self._ssim_components[key] = L.ssim_components(self.pred, self.target, 1.0, *key)
        return self._ssim_components[key]


class SegmentationBatch(_Noted):
    """Same-shaped segmentation pairs on the device: ``log_probs`` ``(N, C, H, W)`` and ``labels``
    ``(N, H, W)`` (ignored pixels hold any class; ``valid`` marks the others).

    Per-class values (``(N, C)``, NaN for a class in neither the labels nor the prediction) are
    collected in ``per_class`` for the report's ``dice_class_K`` / ``iou_class_K`` columns.
    """

    def __init__(self, log_probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
        self.log_probs, self.labels, self.valid = log_probs, labels, valid
        super().__init__(labels.shape[0])
        self.per_class: dict[str, torch.Tensor] = {}
        self.note(self.valid_pixels == 0, "every pixel is --ignore-index: no segmentation metric is defined")

    @property
    def num_classes(self) -> int:
        return self.log_probs.shape[1]

    @cached_property
    def predicted(self) -> torch.Tensor:
        return self.log_probs.argmax(dim=1)

    @cached_property
    def overlaps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return L.class_overlaps(self.predicted, self.labels, self.num_classes, self.valid)

    @cached_property
    def valid_pixels(self) -> torch.Tensor:
        return self.valid.flatten(1).sum(dim=1)

    def absent(self) -> torch.Tensor:
        """``(N, C)``: classes in neither the (valid) labels nor the predicted map."""
        _, predicted, truth = self.overlaps
        return (predicted + truth) == 0


@dataclass(frozen=True)
class Metric:
    """A metric of image pairs (``compute``), of segmentation pairs (``segmentation``), or both."""

    name: str
    better: str  # "higher" or "lower"
    definition: str
    compute: Callable[[PairBatch, Mapping[str, ParamValue]], torch.Tensor] | None
    params: tuple[Param, ...] = field(default=())
    segmentation: Callable[[SegmentationBatch, Mapping[str, ParamValue]], torch.Tensor] | None = None

    @property
    def defaults(self) -> dict[str, ParamValue]:
        return {param.key: param.default for param in self.params}


def _nan_where(values: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    return values.masked_fill(invalid, float("nan"))


def _all_nan(batch: PairBatch, note: str) -> torch.Tensor:
    batch.note([True] * batch.count, note)
    return batch.pred.new_full((batch.pred.shape[0],), float("nan"))


def _ssim_window(p: Mapping[str, ParamValue]) -> tuple[int, float, float, float]:
    """The ``window_size, sigma, k1, k2`` arguments of the SSIM functions from ``SSIM_WINDOW`` params."""
    return int(p["window"]), float(p["sigma"]), float(p["k1"]), float(p["k2"])


def _ssim(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    window, downsample = int(p["window"]), bool(p["downsample"])
    height, width = batch.pred.shape[-2:]
    factor = L.matlab_downsample_factor(height, width) if downsample else 1
    if min(-(-height // factor), -(-width // factor)) < window:
        shrunk = f" after downsampling by {factor}" if factor > 1 else ""
        return _all_nan(batch, f"ssim: {width}x{height} is smaller than the {window}x{window} window{shrunk}")
    if not downsample:
        return batch.ssim_components(p)[0].mean(dim=1)
    return L.ssim(batch.pred, batch.target, 1.0, *_ssim_window(p), reduction="none", downsample=downsample)


def _ms_ssim(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    window = int(p["window"])
    height, width = batch.pred.shape[-2:]
    smallest = L.ms_ssim_min_size(window)
    if min(height, width) < smallest:
        return _all_nan(
            batch, f"ms_ssim: {width}x{height} is smaller than the {smallest} px that 5 scales need"
        )
    return L.ms_ssim(
        batch.pred,
        batch.target,
        1.0,
        *_ssim_window(p),
        reduction="none",
        first_scale=batch.ssim_components(p),
    )


def _outside_unit_interval(x: torch.Tensor) -> torch.Tensor:
    return ~((x >= 0) & (x <= 1))  # NaN too


def _bce(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    out_of_range = batch.image_sum_of(_outside_unit_interval, "pred") > 0
    batch.note(out_of_range, "bce: prediction outside [0, 1]")
    return _nan_where(batch.image_mean_of(L.binary_cross_entropy_error, "pred", "target"), out_of_range)


def _product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * y


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _dice(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    """:func:`lossctl.losses.dice_coefficient` from per-image sums."""
    intersection = batch.image_sum_of(_product, "pred", "target")
    total = batch.image_sum_of(_identity, "pred") + batch.image_sum_of(_identity, "target")
    return L.dice_from_sums(intersection, total).to(batch.pred.dtype)


def _iou(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    """:func:`lossctl.losses.binary_iou` from per-image counts."""
    threshold = p["threshold"]
    intersection = batch.image_sum_of(lambda x, y: L.iou_overlap(x, y, threshold)[0], "pred", "target")
    union = batch.image_sum_of(lambda x, y: L.iou_overlap(x, y, threshold)[1], "pred", "target")
    return L.iou_from_counts(intersection, union).to(batch.pred.dtype)


def _tv(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    if batch.levels is not None:
        return batch.levels.total_variation().to(batch.pred.dtype)
    return L.tv_loss(batch.pred, reduction="none")


def _weighted_tv(batch: PairBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    if batch.weights is None:
        if batch.levels is not None:
            return batch.levels.edge_aware_tv().to(batch.pred.dtype)
        return L.edge_aware_tv_loss(batch.pred, batch.target, reduction="none")
    return L.weighted_tv_loss(batch.pred, batch.weights, reduction="none")


def _class_mean(batch: SegmentationBatch, name: str, per_class: torch.Tensor) -> torch.Tensor:
    per_class = per_class.masked_fill(batch.absent(), float("nan"))
    batch.per_class[name] = per_class
    return per_class.nanmean(dim=1)


def _segmentation_dice(batch: SegmentationBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    probs = batch.log_probs.exp() * batch.valid.unsqueeze(1)
    one_hot = L.one_hot_labels(batch.labels, batch.num_classes, probs.dtype) * batch.valid.unsqueeze(1)
    intersection = (probs * one_hot).sum(dim=(2, 3))
    total = probs.sum(dim=(2, 3)) + one_hot.sum(dim=(2, 3))
    return _class_mean(batch, "dice", L.dice_from_sums(intersection, total))


def _segmentation_iou(batch: SegmentationBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    hits, predicted, truth = (count.to(batch.log_probs.dtype) for count in batch.overlaps)
    return _class_mean(batch, "iou", hits / (predicted + truth - hits))


def _cross_entropy(batch: SegmentationBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    picked = batch.log_probs.gather(1, batch.labels.unsqueeze(1)).squeeze(1)
    total = (-picked).where(batch.valid, 0.0).flatten(1).sum(dim=1)
    empty = batch.valid_pixels == 0  # noted by the batch
    return (total / batch.valid_pixels.clamp_min(1)).masked_fill(empty, float("nan"))


def _pixel_accuracy(batch: SegmentationBatch, p: Mapping[str, ParamValue]) -> torch.Tensor:
    hits = batch.overlaps[0].sum(dim=1).to(batch.log_probs.dtype)
    return hits / batch.valid_pixels.to(hits.dtype)


def _positive(value: ParamValue) -> bool:
    return value > 0


def _non_negative(value: ParamValue) -> bool:
    return value >= 0


SSIM_WINDOW = (
    Param("window", 11, "an odd integer >= 3", lambda v: v >= 3 and v % 2 == 1, integer=True),
    # Bounds keep the window's 2 sigma^2 from underflowing and C = k^2 from overflowing.
    Param("sigma", 1.5, "at least 1e-150", lambda v: v >= 1e-150),
    Param("k1", 0.01, "> 0 and at most 1e150", lambda v: 0 < v <= 1e150),
    Param("k2", 0.03, "> 0 and at most 1e150", lambda v: 0 < v <= 1e150),
)

METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("l1", "lower", "mean |p - g| (MAE)", lambda b, p: b.image_mean_of(L.absolute_error, "diff")),
        Metric("mse", "lower", "mean (p - g)^2 (the L2 loss of torch.nn.MSELoss)", lambda b, p: b.mse),
        Metric("rmse", "lower", "sqrt(mse)", lambda b, p: L.rmse_from_mse(b.mse)),
        Metric(
            "psnr",
            "higher",
            "10 log10(1 / mse) dB; inf for identical images",
            lambda b, p: L.psnr_from_mse(b.mse),
        ),
        Metric(
            "ssim",
            "higher",
            "SSIM (Wang et al. 2004) as scikit-image: Gaussian window, valid region, mean over channels",
            _ssim,
            (
                *SSIM_WINDOW,
                Param("downsample", 0, "0 or 1 (1: as MATLAB's ssim.m)", lambda v: v in (0, 1), integer=True),
            ),
        ),
        Metric(
            "ms_ssim",
            "higher",
            "multi-scale SSIM as pytorch-msssim: 5 scales, NaN under 161 px",
            _ms_ssim,
            SSIM_WINDOW,
        ),
        Metric(
            "charbonnier",
            "lower",
            "mean sqrt((p - g)^2 + eps^2)",
            lambda b, p: b.image_mean_of(lambda d: L.charbonnier_error(d, p["eps"]), "diff"),
            (Param("eps", 1e-3, ">= 0", _non_negative),),
        ),
        Metric(
            "smooth_l1",
            "lower",
            "torch.nn.functional.smooth_l1_loss",
            lambda b, p: b.image_mean_of(lambda d: L.smooth_l1_error(d, p["beta"]), "diff"),
            (Param("beta", 1.0, ">= 0", _non_negative),),
        ),
        Metric(
            "huber",
            "lower",
            "torch.nn.functional.huber_loss",
            lambda b, p: b.image_mean_of(lambda d: L.huber_error(d, p["delta"]), "diff"),
            (Param("delta", 1.0, "> 0", _positive),),
        ),
        Metric(
            "log_cosh",
            "lower",
            "mean log(cosh(p - g))",
            lambda b, p: b.image_mean_of(L.log_cosh_error, "diff"),
        ),
        Metric(
            "quantile",
            "lower",
            "pinball loss, mean max(q (g - p), (q - 1)(g - p))",
            lambda b, p: b.image_mean_of(lambda d: L.quantile_error(d, p["q"]), "diff"),
            (Param("q", 0.5, "in [0, 1]", lambda v: 0 <= v <= 1),),
        ),
        Metric(
            "bce", "lower", "binary cross-entropy, p as probability, g as target (torch.nn.BCELoss)", _bce
        ),
        Metric(
            "dice",
            "higher",
            "soft Dice 2 sum(p g) / (sum(p) + sum(g)); 1 when both are empty; segmentation: mean over classes",
            _dice,
            segmentation=_segmentation_dice,
        ),
        Metric(
            "iou",
            "higher",
            "intersection over union of p >= threshold and g >= 0.5; segmentation: mean over classes of argmax",
            _iou,
            (Param("threshold", 0.5, "in [0, 1]", lambda v: 0 <= v <= 1),),
            segmentation=_segmentation_iou,
        ),
        Metric(
            "ce",
            "lower",
            "segmentation: cross-entropy of the class scores against the label map (torch cross_entropy)",
            None,
            segmentation=_cross_entropy,
        ),
        Metric(
            "pixel_accuracy",
            "higher",
            "segmentation: share of pixels whose argmax class is the label",
            None,
            segmentation=_pixel_accuracy,
        ),
        Metric(
            "tv",
            "lower",
            "anisotropic total variation of p, divided by C H W",
            _tv,
        ),
        Metric(
            "weighted_tv",
            "lower",
            "BasicSR WeightedTVLoss of p; weights from --weights or exp(-|grad g|)",
            _weighted_tv,
        ),
    )
}


def parse_metric_names(text: str | None) -> list[str]:
    """Parse ``--metrics l1,psnr`` (``None`` or ``'all'``: every metric), in registry order."""
    if text is None or text.strip() == "all":
        return list(METRICS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise LossctlError(f"unknown metric {', '.join(unknown)}; valid metrics: {', '.join(METRICS)}")
    if not names:
        raise LossctlError(f"--metrics is empty; valid metrics: {', '.join(METRICS)}")
    return [name for name in METRICS if name in names]


def checked_metrics_and_params(
    metrics: Sequence[str], params: Mapping[str, Mapping[str, ParamValue]]
) -> dict[str, dict[str, ParamValue]]:
    """What :func:`parse_metric_names` and :func:`resolve_params` make sure of on the command line,
    for the library's :class:`~lossctl.engine.EvalConfig`: ``metrics`` is a non-empty list of known
    names, and ``params`` holds only their known parameters, with valid values. Returns every
    parameter of the ``metrics``: the given values over the defaults. Raises :class:`LossctlError`.
    """
    valid = f"valid metrics: {', '.join(METRICS)}"
    names = None if isinstance(metrics, str) else list(metrics)  # a one-pass iterable is read once
    if names is None or not all(isinstance(name, str) for name in names):
        raise LossctlError(f"metrics must be a list of metric names; got {metrics!r}; {valid}")
    metrics = names
    if unknown := [name for name in metrics if name not in METRICS]:
        raise LossctlError(f"unknown metric {', '.join(unknown)}; {valid}")
    if not metrics:
        raise LossctlError(f"no metric to compute; {valid}")
    if twice := sorted({name for name in metrics if metrics.count(name) > 1}):
        raise LossctlError(f"metric {', '.join(twice)} given twice; give each once")
    if not isinstance(params, Mapping):
        raise LossctlError(f"params must map metric names to their parameters; got {params!r}")
    resolved = {name: METRICS[name].defaults for name in metrics if METRICS[name].params}
    for name, values in params.items():
        if name not in metrics:
            raise LossctlError(f"params given for {name!r}, which is not among the metrics {', '.join(metrics)}")
        known = {param.key: param for param in METRICS[name].params}
        if not isinstance(values, Mapping):
            raise LossctlError(f"params of {name} must map parameter names to values; got {values!r}")
        for key, value in values.items():
            if key not in known:
                keys = ", ".join(known) or "none"
                raise LossctlError(f"{name} has no parameter {key!r}; its parameters: {keys}")
            resolved[name][key] = known[key].check(name, value)
    return resolved


def resolve_params(
    names: Sequence[str],
    overrides: Sequence[str],
    defaults: Mapping[str, Mapping[str, ParamValue]] | None = None,
    source: str = "--param",
) -> dict[str, dict[str, ParamValue]]:
    """Default parameters of the metrics ``names`` (updated by a preset's ``defaults``), then the
    ``METRIC.KEY=VALUE`` overrides; ``source`` names where they come from in errors."""
    params = {name: METRICS[name].defaults for name in names if METRICS[name].params}
    for metric, values in (defaults or {}).items():
        if metric in params:
            params[metric].update(values)
    given: dict[str, str] = {}
    for override in overrides:
        target, _, text = override.partition("=")
        metric, _, key = target.strip().partition(".")
        if not text or not key:
            raise LossctlError(
                f"{source} must look like METRIC.KEY=VALUE (e.g. charbonnier.eps=1e-4); got {override!r}"
            )
        if metric not in METRICS:
            raise LossctlError(
                f"{source} {override}: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}"
            )
        known = {param.key: param for param in METRICS[metric].params}
        if key not in known:
            valid = ", ".join(f"{metric}.{k}" for k in known) or "none"
            raise LossctlError(
                f"{source} {override}: {metric} has no parameter {key!r}; its parameters: {valid}"
            )
        if metric not in names:
            raise LossctlError(f"{source} {override}: {metric} is not among the selected metrics")
        if (earlier := given.get(f"{metric}.{key}")) is not None:
            raise LossctlError(f"{source} {override}: {metric}.{key} is already set ({earlier}); give it once")
        given[f"{metric}.{key}"] = override
        try:
            params[metric][key] = known[key].parse(metric, text.strip())
        except LossctlError as error:
            raise LossctlError(f"{source} {override}: {error}") from None
    return params
