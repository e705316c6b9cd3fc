"""The batching engine: decode pairs in worker threads, group them by shape, compute on a device.

Decoding runs ahead of computing in a thread pool (Pillow and OpenCV release the GIL while they
decode), with a bounded number of pairs in flight, so decoding the next batch overlaps computing the
current one and memory is bounded by the batch and the prefetch depth, not by the number of pairs.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .conventions import Convention
from .errors import ImageReadError, LossctlError
from .io import LoadedPair, Pair, load_pair
from .metrics import METRICS, PairBatch, ParamValue

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
MAX_BATCH_VALUES = 1 << 25  # values per input tensor of a batch; SSIM needs about 10x that in memory


@dataclass(frozen=True)
class EvalConfig:
    metrics: Sequence[str]
    params: dict[str, dict[str, ParamValue]]
    device: str = "auto"
    batch_size: int = 16
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    precision: str = "float32"
    with_weights: bool = False
    convention: Convention = field(default_factory=Convention)


@dataclass
class PairResult:
    """One report row: a pair, what is known of its images, its status and its metric values."""

    pair: Pair
    status: str
    error: str = ""
    height: int | None = None
    width: int | None = None
    channels: int | None = None
    bit_depth: int | str | None = None
    notes: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise LossctlError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LossctlError(f"device {spec} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LossctlError(
                f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type != "cpu":
        raise LossctlError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def _to_device(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack ``(H, W, C)`` arrays into an ``(N, C, H, W)`` tensor on ``device``, in their stored type.

    Pixels travel as stored (uint8 is a quarter of float32) and are scaled on the device.
    """
    stacked = np.stack(arrays)
    if stacked.dtype == np.uint16:  # torch < 2.3 cannot wrap uint16 arrays
        stacked = stacked.astype(np.int32)
    batch = torch.from_numpy(stacked)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2)


def _scaled(raw: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    values = raw.to(dtype)
    return values / scale if scale != 1.0 else values


def _expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a grayscale batch to ``channels`` (a view, no copy)."""
    return images.expand(-1, channels, -1, -1)


def _note_nan_images(batch: PairBatch, raw: torch.Tensor, side: str) -> None:
    if raw.is_floating_point():
        batch.note(raw.isnan().flatten(1).any(dim=1).tolist(), f"{side} contains NaN values")


def compute_batch(items: Sequence[LoadedPair], config: EvalConfig, device: torch.device) -> list[PairResult]:
    """Compute every selected metric for a batch of pairs with equal :attr:`LoadedPair.batch_key`."""
    dtype = PRECISIONS[config.precision]
    first = items[0]
    convention = config.convention
    if (problem := convention.check_size(first.pred.height, first.pred.width)) is not None:
        return [PairResult(pair=item.pair, status="error", error=problem) for item in items]
    raw_pred = _to_device([item.pred.pixels for item in items], device)
    raw_gt = _to_device([item.gt.pixels for item in items], device)
    channels = first.channels
    pred = _expand_channels(_scaled(raw_pred, first.pred.scale, dtype), channels)
    target = _expand_channels(_scaled(raw_gt, first.gt.scale, dtype), channels)
    diff = None
    if (
        not raw_pred.is_floating_point()
        and not raw_gt.is_floating_point()
        and first.pred.scale == first.gt.scale
    ):
        # Subtract the stored integers, then scale: one rounding instead of three, so that float32
        # keeps full relative precision for differences of a few 16-bit levels.
        integer_diff = raw_pred.to(torch.int32) - raw_gt.to(torch.int32)
        diff = _expand_channels(_scaled(integer_diff, first.pred.scale, dtype), channels)
    weights = None
    if config.with_weights:
        nan_map = np.full(first.gt.pixels.shape[:2] + (1,), np.nan, dtype=np.float32)
        weight_arrays = [nan_map if item.weight is None else item.weight for item in items]
        weights = convention.apply(_to_device(weight_arrays, device).to(dtype))
    pred, target = convention.apply(pred), convention.apply(target)
    diff = None if diff is None else convention.apply(diff, offset=False)
    batch = PairBatch(pred, target, weights, diff=diff)
    _note_nan_images(batch, raw_pred, "pred")
    _note_nan_images(batch, raw_gt, "gt")
    for index, item in enumerate(items):
        if item.weight_problem and "weighted_tv" in config.metrics:
            batch.notes[index].append(f"weighted_tv: {item.weight_problem}")
    with torch.no_grad():
        columns = [METRICS[name].compute(batch, config.params.get(name, {})) for name in config.metrics]
        values = torch.stack([column.to(torch.float64) for column in columns]).cpu().tolist()
    return [
        PairResult(
            pair=item.pair,
            status="ok",
            height=item.pred.height,
            width=item.pred.width,
            channels=item.channels,
            bit_depth=item.bit_depth,
            notes=batch.notes[index],
            values={name: values[row][index] for row, name in enumerate(config.metrics)},
        )
        for index, item in enumerate(items)
    ]


def _load(pair: Pair, with_weights: bool) -> LoadedPair | PairResult:
    try:
        return load_pair(pair, with_weights)
    except ImageReadError as error:
        return PairResult(pair=pair, status="error", error=str(error))


def _batch_values(items: Sequence[LoadedPair]) -> int:
    first = items[0]
    return len(items) * first.channels * first.pred.height * first.pred.width


class _Batcher:
    """Collects decoded pairs into same-shape batches; says which batch is ready to compute."""

    def __init__(self, batch_size: int, max_buffered: int):
        self.batch_size, self.max_buffered = batch_size, max_buffered
        self.buckets: dict[tuple, list[LoadedPair]] = {}
        self.buffered = 0

    def add(self, item: LoadedPair) -> list[LoadedPair] | None:
        bucket = self.buckets.setdefault(item.batch_key, [])
        bucket.append(item)
        self.buffered += 1
        if len(bucket) >= self.batch_size or _batch_values(bucket) >= MAX_BATCH_VALUES:
            return self._take(item.batch_key)
        if self.buffered > self.max_buffered:  # many distinct shapes: flush the fullest bucket
            return self._take(max(self.buckets, key=lambda key: len(self.buckets[key])))
        return None

    def _take(self, key: tuple) -> list[LoadedPair]:
        bucket = self.buckets.pop(key)
        self.buffered -= len(bucket)
        return bucket

    def drain(self) -> Iterator[list[LoadedPair]]:
        while self.buckets:
            yield self._take(next(iter(self.buckets)))


def _decoded(pairs: Iterable[Pair], config: EvalConfig, prefetch: int) -> Iterator[LoadedPair | PairResult]:
    """Decode ``pairs`` in a thread pool, at most ``prefetch`` ahead, yielding in input order."""
    with ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="lossctl-decode") as pool:
        in_flight: deque[Future] = deque()
        for pair in pairs:
            in_flight.append(pool.submit(_load, pair, config.with_weights))
            if len(in_flight) >= prefetch:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def evaluate(
    pairs: Sequence[Pair],
    config: EvalConfig,
    on_progress: Callable[[int], None] | None = None,
) -> list[PairResult]:
    """Compute every metric of ``config`` for every pair; one result per pair, in input order.

    Unmatched and conflicting pairs, unreadable files and size mismatches become results with
    status ``unmatched`` or ``error`` and a reason; every other pair is computed.
    """
    if config.batch_size < 1:
        raise LossctlError(f"--batch-size must be at least 1; got {config.batch_size}")
    if config.workers < 1:
        raise LossctlError(f"--workers must be at least 1; got {config.workers}")
    if config.precision not in PRECISIONS:
        raise LossctlError(f"--precision must be float32 or float64; got {config.precision!r}")
    device = resolve_device(config.device)
    results: dict[str, PairResult] = {}

    def record(batch_results: Iterable[PairResult]) -> None:
        done = 0
        for result in batch_results:
            results[result.pair.name] = result
            done += 1
        if on_progress and done:
            on_progress(done)

    computable = [pair for pair in pairs if pair.status == "pending"]
    record(
        PairResult(pair=pair, status=pair.status, error=_reason(pair))
        for pair in pairs
        if pair.status != "pending"
    )
    batcher = _Batcher(config.batch_size, max_buffered=4 * config.batch_size)
    prefetch = 2 * config.batch_size + 2 * config.workers
    for item in _decoded(computable, config, prefetch):
        if isinstance(item, PairResult):
            record([item])
        elif (ready := batcher.add(item)) is not None:
            record(compute_batch(ready, config, device))
    for ready in batcher.drain():
        record(compute_batch(ready, config, device))
    return [results[pair.name] for pair in pairs]


def _reason(pair: Pair) -> str:
    reasons = [pair.problem] if pair.problem else []
    if pair.gt is None:
        reasons.append("no ground truth with this name")
    elif pair.pred is None:
        reasons.append("no prediction with this name")
    return "; ".join(reasons)
