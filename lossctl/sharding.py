"""Splitting one evaluation into N shards, the same way in every process that asks.

A shard is ``K/N`` with ``K`` counted from 0, like ``SLURM_ARRAY_TASK_ID`` under ``--array=0-7``,
Kubernetes' ``JOB_COMPLETION_INDEX`` and torchrun's ``RANK``. Pairs are balanced by pixel count,
read from the image headers without decoding, with a greedy longest-processing-time assignment:
heaviest pair first, each to the lightest shard so far, ties broken by the pair's name and the
shard's number. Every process that pairs the same folders therefore computes the same assignment
on its own, with no communication, and the shards cover every pair exactly once.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LossctlError
from .io import SCORE_EXTENSION, Pair, score_header

SHARD_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``, ``0 <= index < count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise LossctlError(f"--shard {self}: the number of shards must be at least 1")
        if not 0 <= self.index < self.count:
            raise LossctlError(
                f"--shard {self}: K must be 0..{self.count - 1} (shards are numbered from 0, "
                f"like SLURM_ARRAY_TASK_ID under --array=0-{self.count - 1})"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"3/8"`` into ``Shard(3, 8)``; a LossctlError that shows the expected form otherwise."""
    match = SHARD_PATTERN.fullmatch(text)
    if match is None:
        raise LossctlError(
            f"--shard must look like K/N with K counted from 0, e.g. --shard 0/8 or "
            f"--shard $SLURM_ARRAY_TASK_ID/8; got {text!r}"
        )
    return Shard(int(match.group(1)), int(match.group(2)))


def header_pixels(path: Path) -> int | None:
    """Width x height from the file's header, without decoding the pixels; None when unreadable.

    A ``.npy`` array ``C x H x W`` counts ``H x W`` pixels.
    """
    try:
        if path.suffix.lower() == SCORE_EXTENSION:
            header = score_header(path)
            if header is None or len(header[0]) < 2:
                return None
            shape, _ = header
            return int(shape[-1] * shape[-2])
        from PIL import Image

        with Image.open(path) as image:  # lazy: reads the header only
            width, height = image.size
        return width * height
    except Exception:  # an unreadable file is the engine's to report; here it only weighs
        return None


def pair_pixels(pair: Pair) -> int | None:
    """A pair's cost: the prediction's pixels (the ground truth's when the prediction's header
    cannot be read). Pairs that will not be decoded (unmatched, naming conflicts) weigh 1."""
    if pair.status != "pending":
        return 1
    for side in (pair.pred, pair.gt):
        if side is not None and (pixels := header_pixels(side)) is not None:
            return pixels
    return None


def pixel_weights(pairs: Sequence[Pair], workers: int = 1) -> list[int | None]:
    """:func:`pair_pixels` of every pair, headers read in ``workers`` threads."""
    if workers <= 1 or len(pairs) < 2:
        return [pair_pixels(pair) for pair in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lossctl-headers") as pool:
        return list(pool.map(pair_pixels, pairs, chunksize=64))


def with_fallback(weights: Sequence[int | None]) -> list[int]:
    """Unreadable headers (None) weigh the median of the readable ones (1 when none is readable)."""
    known = [weight for weight in weights if weight is not None]
    fallback = int(statistics.median_low(known)) if known else 1
    return [max(1, fallback if weight is None else weight) for weight in weights]


def assign(weights: Sequence[int], names: Sequence[str], count: int) -> list[list[int]]:
    """Positions of the items in each of ``count`` shards, each shard's in ascending order.

    Greedy longest processing time (within 4/3 of the best possible largest shard): items by
    descending weight, ties by name; each goes to the shard with the least weight so far, ties by
    the lower shard number. Deterministic for the same weights and names. The specification of
    :func:`shard_positions`, which the runs use.
    """
    filled = _filled_shards(weights, names, count)
    return filled + [[] for _ in range(count - len(filled))]


def shard_positions(weights: Sequence[int], names: Sequence[str], shard: Shard) -> list[int]:
    """``assign(weights, names, shard.count)[shard.index]``, without making the shards that receive
    no item: ``--shard 0/10000000`` of a few pairs took gigabytes."""
    filled = _filled_shards(weights, names, shard.count)
    return filled[shard.index] if shard.index < len(filled) else []


def _filled_shards(weights: Sequence[int], names: Sequence[str], count: int) -> list[list[int]]:
    """The first ``min(count, items)`` shards of :func:`assign`: no item ever goes to a later one,
    since until the last item some earlier shard is still empty, and an empty shard of a lower
    number comes first among the least loaded."""
    if len(weights) != len(names):
        raise ValueError(f"weights and names differ in length: {len(weights)} vs {len(names)}")
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}")
    order = sorted(range(len(weights)), key=lambda position: (-weights[position], names[position]))
    used = min(count, len(weights))
    loads = [(0, shard) for shard in range(used)]
    shards: list[list[int]] = [[] for _ in range(used)]
    for position in order:
        load, shard = heapq.heappop(loads)
        shards[shard].append(position)
        heapq.heappush(loads, (load + weights[position], shard))
    return [sorted(positions) for positions in shards]


def pairing_digest(names: Sequence[str]) -> str:
    """An identity of the whole pairing: SHA-256 of its names in order."""
    return _digest(list(names))


def inputs_digest(pairs: Sequence[Pair], weights: Sequence[int]) -> str:
    """An identity of what the shards split: each pair's files, whether they matched, and the
    weights (pixels) the split was planned by. Shards whose folders changed between their runs
    differ here even where the names stayed (a prediction saved again as .jpg, resized, removed)."""
    return _digest(
        [[pair.pred_file, pair.gt_file, pair.weight_file, pair.status, weight] for pair, weight in zip(pairs, weights, strict=True)]
    )


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(value).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """This shard's pairs and what its report records so that shards can be merged and checked."""

    pairs: list[Pair]
    record: dict[str, Any]
    pixels: int
    total_pixels: int


def plan_shard(pairs: Sequence[Pair], shard: Shard, workers: int = 1) -> ShardPlan:
    """The pairs of ``shard`` and its report record: ``index``, ``count``, the whole pairing's
    ``pairs`` count and ``pairing`` digest, and the ``positions`` of this shard's pairs in it.

    Every shard reads every header (no communication), in ``workers`` threads.
    """
    weights = with_fallback(pixel_weights(pairs, workers))
    names = [pair.name for pair in pairs]
    positions = shard_positions(weights, names, shard)
    record = {
        "index": shard.index,
        "count": shard.count,
        "pairs": len(pairs),
        "pairing": pairing_digest(names),
        "inputs": inputs_digest(pairs, weights),
        "positions": positions,
    }
    return ShardPlan(
        [pairs[position] for position in positions],
        record,
        sum(weights[position] for position in positions),
        sum(weights),
    )
