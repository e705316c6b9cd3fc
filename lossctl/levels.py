"""Element-wise metrics of 8-bit pairs from how often each pair of pixel levels occurs.

In a pair of 8-bit images every element-wise error (L1, MSE, Charbonnier, BCE, ...) depends only on
the two stored levels ``a`` (pred) and ``b`` (gt) of a value, so an image's sum of ``f(p, g)`` is
``sum_ab counts[a, b] f(a / scale_p, b / scale_g)``: one pass over the bytes to count (OpenCV's
``calcHist``) and a 256 x 256 table per metric, instead of a float pass over every value per metric
and per temporary. The kernels are the library's own, evaluated on exactly the floats the per-value
path would give them (``a / scale`` in the compute precision, differences of the stored integers
for ``diff``), and the products are summed in float64, so the result is the per-value mean up to
the order of summation. On a 2-core CPU this makes the ten element-wise metrics of a 512x512 RGB
pair about 20x cheaper (see bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

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
    """Per image, how many of its values have each pair of 8-bit levels: ``counts[n, a, b]`` values
    with level ``a`` in the prediction and ``b`` in the ground truth (float64 ``(N, 256, 256)``).
    ``pred_scale``, ``gt_scale``: the divisors to [0, 1] (255 for 8 bits, 1 for 1 bit)."""

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
            table = kernel(differences).to(torch.float64)
            return self.diff_counts @ torch.where(self.diff_counts.sum(dim=0) > 0, table, 0.0)
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
        table = kernel(*(grid[name] for name in inputs)).to(torch.float64).expand(LEVELS, LEVELS)
        # Levels no value has (1-bit images use two) may give NaN, and 0 * NaN is NaN.
        table = torch.where(self.present, table, 0.0)
        return self.counts.reshape(self.counts.shape[0], -1) @ table.reshape(-1)

    @cached_property
    def diff_counts(self) -> torch.Tensor:
        """``(N, 511)``: per image, how many values have each level difference ``a - b`` (from -255)."""
        import torch

        levels = torch.arange(LEVELS)
        difference = (levels.view(-1, 1) - levels.view(1, -1) + LEVELS - 1).reshape(-1)
        flat = self.counts.reshape(self.counts.shape[0], -1)
        return flat.new_zeros(flat.shape[0], 2 * LEVELS - 1).index_add_(1, difference, flat)

    @cached_property
    def present(self) -> torch.Tensor:
        """``(256, 256)`` bool: the level pairs some value of the batch has."""
        return self.counts.sum(dim=0) > 0


def _level_values(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The value of every level, ``a / scale``, rounded as the engine's scaling rounds it."""
    import torch

    values = torch.arange(LEVELS, dtype=dtype)
    return values if scale == 1.0 else values / scale


def count_levels(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], channels: int, crop_border: int
) -> torch.Tensor:
    """``(N, 256, 256)`` float64 counts of the level pairs of each ``(H, W, C)`` uint8 pair, with
    ``crop_border`` pixels dropped on every side and a grayscale side repeated to ``channels``."""
    import cv2
    import torch

    counts = np.zeros((len(preds), LEVELS, LEVELS))
    for index, pair in enumerate(zip(preds, gts, strict=True)):
        sides = []
        for pixels in pair:
            if crop_border:
                pixels = pixels[crop_border:-crop_border, crop_border:-crop_border]
            if pixels.shape[2] != channels:
                pixels = np.repeat(pixels, channels, axis=2)
            sides.append(np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1))
        # calcHist counts in float32, exact up to 2^24 per bin: huge images are counted in bands.
        rows = max(1, EXACT_COUNT // sides[0].shape[1])
        for first in range(0, sides[0].shape[0], rows):
            band = [side[first : first + rows] for side in sides]
            counts[index] += cv2.calcHist(band, [0, 1], None, [LEVELS, LEVELS], [0, LEVELS, 0, LEVELS])
    return torch.from_numpy(counts)
