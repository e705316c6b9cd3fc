"""Metrics of 8-bit pairs computed from their stored integer levels instead of float values.

Element-wise metrics: in a pair of 8-bit images every element-wise error (L1, MSE, Charbonnier,
BCE, ...) depends only on the two stored levels ``a`` (pred) and ``b`` (gt) of a value, so an
image's sum of ``f(p, g)`` is ``sum_ab counts[a, b] f(a / scale_p, b / scale_g)``: one pass over the
bytes to count (OpenCV's ``calcHist``) and a 256 x 256 table per metric, instead of a float pass over
every value per metric and per temporary. The kernels are the library's own, evaluated on exactly
the floats the per-value path would give them (``a / scale`` in the compute precision, differences
of the stored integers for ``diff``), and the products are summed in float64, so the result is the
per-value mean up to the order of summation. On a 2-core CPU this makes the ten element-wise
metrics of a 512x512 RGB pair about 20x cheaper (see bench/RESULTS.md).

Total variation and edge-aware weighted TV: the absolute differences of neighbouring 8-bit levels
are exact small integers (OpenCV's saturating ``absdiff`` on the bytes), and so are their sums over
channels; the weights ``exp(-G / (C scale))`` of the edge-aware form depend only on such an integer
sum ``G`` and come from a float64 table. Sums are taken in float64, so both equal their float64
definition (:func:`lossctl.losses.tv_loss`, :func:`lossctl.losses.edge_aware_tv_loss`) up to the
order of summation, at a twentieth of the float passes' time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

LEVELS = 256
# Counting pays once an image has more values than its table has entries; below that (thumbnails,
# many per CPU block) the per-value path is cheaper and needs no 512 KiB table per image.
MIN_VALUES = LEVELS * LEVELS
EXACT_COUNT = 1 << 24  # float32 counts are whole numbers up to here


@dataclass(frozen=True)
class PixelLevels:
    """A batch of 8-bit pairs as their stored levels.

    ``preds``, ``gts``: each image's ``(H, W, C)`` uint8 levels as the metrics compare them (see
    :func:`compared_levels`). ``counts``: per image, how many of its values have each pair of levels,
    ``counts[n, a, b]`` values with level ``a`` in the prediction and ``b`` in the ground truth
    (float64 ``(N, 256, 256)``, see :func:`count_levels`). ``pred_scale``, ``gt_scale``: the divisors
    to [0, 1] (255 for 8 bits, 1 for 1 bit)."""

    preds: Sequence[np.ndarray]
    gts: Sequence[np.ndarray]
    counts: torch.Tensor
    pred_scale: float
    gt_scale: float

    def image_sums(
        self, kernel: Callable[..., torch.Tensor], inputs: Sequence[str], dtype: torch.dtype
    ) -> torch.Tensor:
        """``(N,)`` float64: per image, the sum over its values of the element-wise
        ``kernel(*inputs)``, each input one of ``'pred'``, ``'target'``, ``'diff'``."""
        import torch

        if tuple(inputs) == ("diff",) and self.pred_scale == self.gt_scale:
            differences = torch.arange(1 - LEVELS, LEVELS, dtype=torch.int32).to(dtype) / self.pred_scale
            return _sums_over(self.diff_counts, kernel(differences), self.diff_counts.sum(dim=0) > 0)
        if tuple(inputs) in (("pred",), ("target",)):
            side = 0 if inputs[0] == "pred" else 1
            counts = self.side_counts[side]
            table = kernel(_level_values((self.pred_scale, self.gt_scale)[side], dtype))
            return _sums_over(counts, table, counts.sum(dim=0) > 0)
        grid = {
            "pred": _level_values(self.pred_scale, dtype).view(-1, 1),
            "target": _level_values(self.gt_scale, dtype).view(1, -1),
        }
        if "diff" in inputs:
            if self.pred_scale == self.gt_scale:  # as the engine: integers subtracted, then scaled
                levels = torch.arange(LEVELS, dtype=torch.int32)
                grid["diff"] = (levels.view(-1, 1) - levels.view(1, -1)).to(dtype) / self.pred_scale
            else:
                grid["diff"] = grid["pred"] - grid["target"]
        table = kernel(*(grid[name] for name in inputs)).expand(LEVELS, LEVELS)
        return _sums_over(self.counts, table, self.present)

    @cached_property
    def diff_counts(self) -> torch.Tensor:
        """``(N, 511)``: per image, how many values have each level difference ``a - b`` (from -255)."""
        import torch

        levels = torch.arange(LEVELS)
        difference = (levels.view(-1, 1) - levels.view(1, -1) + LEVELS - 1).reshape(-1)
        flat = self.counts.reshape(self.counts.shape[0], -1)
        return flat.new_zeros(flat.shape[0], 2 * LEVELS - 1).index_add_(1, difference, flat)

    @cached_property
    def side_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 256)`` each: per image, how many prediction values, and how many ground-truth
        values, have each level."""
        return self.counts.sum(dim=2), self.counts.sum(dim=1)

    @cached_property
    def present(self) -> torch.Tensor:
        """``(256, 256)`` bool: the level pairs some value of the batch has."""
        return self.counts.sum(dim=0) > 0

    def total_variation(self) -> torch.Tensor:
        """``(N,)`` float64: :func:`lossctl.losses.tv_loss` (anisotropic) of each prediction,
        ``(sum |dy| + sum |dx|) / (C H W)``, from the integer differences of its levels."""
        import torch

        totals = []
        for pred in self.preds:
            total = math.fsum(
                math.fsum(cv2.sumElems(difference)) for band in _abs_differences(pred) for difference in band
            )
            totals.append(total / self.pred_scale / pred.size)
        return torch.tensor(totals, dtype=torch.float64)

    def edge_aware_tv(self) -> torch.Tensor:
        """``(N,)`` float64: :func:`lossctl.losses.edge_aware_tv_loss` of each pair: for each
        direction ``d``, ``sum(w_d |grad_d p|) / (C sum(w_d))`` with ``w_d = exp(-mean_C |grad_d g|)``,
        summed over the two directions; from the integer differences of the levels.

        Per pixel, with ``G`` and ``P`` the channel sums of ``|grad_d g|`` and ``|grad_d p|`` in
        levels, the numerator is ``w P / scale_p`` and the weight is ``w = exp(-G / (C scale_g))``, the
        same for every channel (hence the ``C`` below the denominator's sum)."""
        import torch

        channels = self.preds[0].shape[2]  # the batch's images share their shape
        weight_of = np.exp(-np.arange(channels * LEVELS) / (channels * self.gt_scale))
        values = []
        for pred, gt in zip(self.preds, self.gts, strict=True):
            weighted, total_weight = [0.0, 0.0], [0.0, 0.0]  # per direction: vertical, horizontal
            for pred_band, gt_band in zip(_abs_differences(pred), _abs_differences(gt), strict=True):
                for direction, (pred_difference, gt_difference) in enumerate(
                    zip(pred_band, gt_band, strict=True)
                ):
                    if pred_difference.size == 0:  # a single row or column: no differences that way
                        continue
                    weights = weight_of.take(_channel_sum(gt_difference).astype(np.intp))
                    # Not np.dot: NumPy's BLAS would start threads of its own in every compute thread.
                    weighted[direction] += np.einsum("ij,ij->", weights, _channel_sum(pred_difference))
                    total_weight[direction] += weights.sum()
            values.append(
                sum(
                    part / self.pred_scale / (channels * weight)
                    for part, weight in zip(weighted, total_weight, strict=True)
                    if weight > 0
                )
            )
        return torch.tensor(values, dtype=torch.float64)


def _sums_over(counts: torch.Tensor, table: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float64: per image, ``sum(counts[n] * table)`` over the entries some image of the
    batch has (``present``, shaped like ``table``). Entries no value has (levels a 1-bit image never
    uses, say) may hold NaN in the table, and 0 * NaN is NaN."""
    import torch

    table = torch.where(present, table.to(torch.float64), 0.0)
    return counts.reshape(counts.shape[0], -1) @ table.reshape(-1)


def _level_values(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The value of every level, ``a / scale``, rounded as the engine's scaling rounds it."""
    import torch

    values = torch.arange(LEVELS, dtype=dtype)
    return values if scale == 1.0 else values / scale


def compared_levels(pixels: np.ndarray, channels: int, crop_border: int) -> np.ndarray:
    """An ``(H, W, C)`` uint8 image as the metrics compare it: ``crop_border`` pixels dropped on
    every side and a grayscale image repeated to ``channels`` (a view unless repeated)."""
    if crop_border:
        pixels = pixels[crop_border:-crop_border, crop_border:-crop_border]
    if pixels.shape[2] != channels:
        pixels = np.repeat(pixels, channels, axis=2)
    return pixels


def count_levels(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> torch.Tensor:
    """``(N, 256, 256)`` float64 counts of the level pairs of each pair of equally shaped
    ``(H, W, C)`` uint8 images."""
    import torch

    counts = np.zeros((len(preds), LEVELS, LEVELS))
    for index, pair in enumerate(zip(preds, gts, strict=True)):
        # Counts do not depend on the layout: each side is one row of values. calcHist counts in
        # float32, exact up to 2^24 per bin, so huge images are counted in stretches of that many
        # values (bands of rows could not be narrower than a row, which may hold more).
        sides = [np.ascontiguousarray(pixels).reshape(1, -1) for pixels in pair]
        for first in range(0, sides[0].shape[1], EXACT_COUNT):
            stretch = [side[:, first : first + EXACT_COUNT] for side in sides]
            counts[index] += cv2.calcHist(stretch, [0, 1], None, [LEVELS, LEVELS], [0, LEVELS, 0, LEVELS])
    return torch.from_numpy(counts)


# Images of more values than this are differenced in bands of rows, so that the differences, their
# channel sums and the weights need a band's memory rather than the image's (a 12000 x 12000 RGB
# pair would otherwise need about 5 GB of temporaries).
BAND_VALUES = 1 << 24


def _abs_differences(pixels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``|p[i+1, j] - p[i, j]|`` and ``|p[i, j+1] - p[i, j]|`` of an ``(H, W, C)`` uint8 image, uint8
    (exact: the absolute difference of two bytes fits in a byte), in bands of rows: over all bands,
    each difference exactly once. One band unless the image has more than ``BAND_VALUES`` values."""
    height, width, channels = pixels.shape
    rows = max(1, BAND_VALUES // max(1, width * channels))
    for first in range(0, height, rows):
        end = min(first + rows, height)
        band = pixels[first : min(end + 1, height)]  # one row more, for the vertical differences
        yield tuple(
            cv2.absdiff(later, earlier).reshape(later.shape) if later.size else later  # keeps C = 1
            for later, earlier in ((band[1:], band[:-1]), (band[: end - first, 1:], band[: end - first, :-1]))
        )


def _channel_sum(levels: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 sums over the channels of ``(H, W, C)`` uint8 ``levels`` (whole numbers,
    exact: at most ``C * 255``)."""
    if levels.shape[2] == 1:
        return levels[:, :, 0].astype(np.float32)
    return cv2.transform(levels.astype(np.float32), np.ones((1, levels.shape[2])))
