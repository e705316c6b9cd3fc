"""Per-pair results collected column by column, in the pairs' order, as they are computed.

A report of 20,000 pairs should cost little more memory than one of 1,000: each finished pair is
folded into arrays (its metric values as one row of a float array, its sizes as small integers,
its reason and notes only when it has any) instead of being kept as an object with a dict of
values. The DataFrame of the report is built from these columns once, at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .engine import PairResult
    from .io import Pair

ROW_COLUMNS = ["name", "pred", "gt", "height", "width", "channels", "bit_depth", "status", "error", "notes"]
_MISSING = -1  # height/width/channels of a pair that was never decoded


class ResultTable:
    """The report rows of ``pairs`` for the metric columns ``metrics``; rows not yet added are
    missing from :meth:`frame` (an interrupted run reports the pairs it finished)."""

    def __init__(self, pairs: Sequence[Pair], metrics: Sequence[str]):
        self.pairs, self.metrics = pairs, list(metrics)
        self._row = {pair.name: index for index, pair in enumerate(pairs)}
        count = len(pairs)
        self._done = np.zeros(count, dtype=bool)
        self._values = np.full((count, len(self.metrics)), math.nan)
        self._sizes = np.full((count, 3), _MISSING, dtype=np.int32)  # height, width, channels
        self._status = np.empty(count, dtype=object)
        self._bit_depth = np.full(count, None, dtype=object)
        self._error: dict[int, str] = {}
        self._notes: dict[int, str] = {}
        self._extra: dict[int, dict[str, float]] = {}  # per-class values of segmentation pairs
        self._texts: dict[str, str] = {}

    def add(self, result: PairResult) -> None:
        row = self._row[result.pair.name]
        self._done[row] = True
        self._status[row] = result.status
        self._bit_depth[row] = result.bit_depth
        self._sizes[row] = [
            _MISSING if size is None else size for size in (result.height, result.width, result.channels)
        ]
        if result.error:
            self._error[row] = self._shared(result.error)
        if result.notes:
            self._notes[row] = self._shared("; ".join(result.notes))
        if result.values:
            self._values[row] = [result.values.get(name, math.nan) for name in self.metrics]
            extra = {name: value for name, value in result.values.items() if name not in self.metrics}
            if extra:
                self._extra[row] = extra

    def _shared(self, text: str) -> str:
        """One string object for every row with the same text (e.g. the note of every image too
        small for MS-SSIM)."""
        return self._texts.setdefault(text, text)

    def extra_columns(self) -> list[str]:
        """The ``METRIC_class_K`` columns of segmentation pairs, by metric then class number."""
        return sorted_per_class({name for values in self._extra.values() for name in values})

    def frame(self) -> pd.DataFrame:
        """One row per finished pair, in the pairs' order: ``ROW_COLUMNS`` then one column per metric
        and per class."""
        rows = np.flatnonzero(self._done)
        pairs = [self.pairs[row] for row in rows]
        sizes = self._sizes[rows]
        columns: dict[str, object] = {
            "name": _text(pair.name for pair in pairs),
            "pred": _text(pair.pred_file or "" for pair in pairs),
            "gt": _text(pair.gt_file or "" for pair in pairs),
        }
        for index, column in enumerate(("height", "width", "channels")):
            values = sizes[:, index].astype(np.int64)
            columns[column] = pd.arrays.IntegerArray(values, values == _MISSING)
        # Object dtype keeps 8 an integer (and "8/16" a string) beside the empty cells of failed pairs.
        columns["bit_depth"] = pd.Series(self._bit_depth[rows], dtype=object)
        columns["status"] = _text(self._status[rows])
        columns["error"] = _text(self._error.get(row, "") for row in rows)
        columns["notes"] = _text(self._notes.get(row, "") for row in rows)
        for index, name in enumerate(self.metrics):
            columns[name] = self._values[rows, index]
        for name in self.extra_columns():
            columns[name] = np.array([self._extra.get(row, {}).get(name, math.nan) for row in rows])
        return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def _text(values: Iterable[str]) -> np.ndarray:
    """A text column as object dtype, even with no rows (an empty shard)."""
    return np.array(list(values), dtype=object)


def per_class_metric(name: str) -> str | None:
    """The metric of a ``METRIC_class_K`` column name, or None for any other name."""
    metric, _, number = name.rpartition("_class_")
    return metric if metric and number.isdecimal() else None


def sorted_per_class(names: Iterable[str]) -> list[str]:
    """``METRIC_class_K`` column names by metric, then class number."""

    def order(name: str) -> tuple[str, int]:
        metric, _, number = name.rpartition("_class_")
        return metric, int(number) if number.isdigit() else -1

    return sorted(names, key=order)
