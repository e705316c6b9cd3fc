"""The batching engine: decode pairs in worker threads, group them by shape, compute on a device.

Decoding runs ahead of computing in a thread pool (Pillow and OpenCV release the GIL while they
decode), with a bounded number of pairs in flight, so decoding the next batch overlaps computing the
current one; the images held at once are bounded by the batch and the prefetch depth, not by the
number of pairs (each pair's result row is kept for the report). A batch that does not fit in
memory is split, and a single pair that does not fit on the GPU is computed on the CPU.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .conventions import Convention
from .errors import ImageReadError, LossctlError
from .io import LoadedPair, LoadedSegmentation, Pair, load_pair, set_max_pixels
from .metrics import METRICS, PairBatch, ParamValue, SegmentationBatch

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
    # Segmentation scores: "probs", "logits" or "auto" (probabilities where they sum to 1).
    pred_kind: str = "auto"
    ignore_index: int | None = None
    num_classes: int | None = None  # None: evaluate() reads the first segmentation prediction's
    max_pixels: int | None = None  # None: Pillow's decompression-bomb limit


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
        values = _metric_values(batch, config, lambda metric: metric.compute)
    return [
        PairResult(
            pair=item.pair,
            status="ok",
            height=item.pred.height,
            width=item.pred.width,
            channels=item.channels,
            bit_depth=item.bit_depth,
            notes=batch.notes[index],
            values=values[index],
        )
        for index, item in enumerate(items)
    ]


def _metric_values(batch, config: EvalConfig, kernel_of) -> list[dict[str, float]]:
    """Each image's values of the selected metrics that apply to this kind of batch (NaN for the
    others), with one device-to-host copy for the whole batch."""
    count = len(batch.notes)
    nan = torch.full((count,), float("nan"), dtype=torch.float64)
    columns = []
    for name in config.metrics:
        kernel = kernel_of(METRICS[name])
        columns.append(
            nan if kernel is None else kernel(batch, config.params.get(name, {})).to(torch.float64).cpu()
        )
    values = torch.stack(columns).tolist() if columns else [[] for _ in range(count)]
    rows = [{name: values[row][index] for row, name in enumerate(config.metrics)} for index in range(count)]
    for name, per_class in getattr(batch, "per_class", {}).items():
        for index, classes in enumerate(per_class.to(torch.float64).cpu().tolist()):
            rows[index].update({f"{name}_class_{k}": value for k, value in enumerate(classes)})
    return rows


def compute_segmentation_batch(
    items: Sequence[LoadedSegmentation], config: EvalConfig, device: torch.device
) -> list[PairResult]:
    """Segmentation metrics for same-shaped ``.npy`` predictions and their label maps.

    Per-pair errors: a class count other than the run's, labels outside the classes (unless
    ``ignore_index``), and, under ``pred_kind='probs'``, scores that are not probabilities.
    """
    dtype = PRECISIONS[config.precision]
    scores = torch.from_numpy(np.stack([item.scores for item in items])).to(device).to(dtype)
    labels = torch.from_numpy(np.stack([item.labels for item in items])).to(device)
    classes = scores.shape[1]
    valid = (
        labels != config.ignore_index
        if config.ignore_index is not None
        else torch.ones_like(labels, dtype=torch.bool)
    )
    outside = (((labels < 0) | (labels >= classes)) & valid).flatten(1)
    in_range = ((scores >= 0) & (scores <= 1)).flatten(1).all(dim=1)
    deviation = (scores.sum(dim=1) - 1).abs().flatten(1).amax(dim=1)
    is_probs = in_range & (deviation <= 1e-3)
    problems: list[str | None] = []
    for index in range(len(items)):
        if config.num_classes is not None and classes != config.num_classes:
            problems.append(
                f"prediction has {classes} classes, but this run's first prediction has {config.num_classes}"
            )
        elif outside[index].any():
            label = int(labels[index].flatten()[outside[index]][0])
            ignore = f" or --ignore-index {config.ignore_index}" if config.ignore_index is not None else ""
            problems.append(
                f"label {label} is not a class of the {classes}-class prediction (0..{classes - 1}{ignore})"
            )
        elif config.pred_kind == "probs" and not is_probs[index]:
            problems.append(
                f"scores are not probabilities (in [0, 1], summing to 1; largest deviation {float(deviation[index]):.3g}); use --pred-kind logits"
            )
        else:
            problems.append(None)
    good = [index for index, problem in enumerate(problems) if problem is None]
    results = {
        index: PairResult(pair=items[index].pair, status="error", error=problem)
        for index, problem in enumerate(problems)
        if problem is not None
    }
    if good:
        keep = torch.tensor(good, device=device)
        scores, labels, valid = scores[keep], labels[keep], valid[keep]
        probabilities = (
            is_probs[keep]
            if config.pred_kind == "auto"
            else torch.full_like(keep, config.pred_kind == "probs", dtype=torch.bool)
        )
        log_probs = torch.where(
            probabilities.view(-1, 1, 1, 1), scores.log(), torch.log_softmax(scores, dim=1)
        )
        batch = SegmentationBatch(log_probs, labels.where(valid, 0), valid)
        with torch.no_grad():
            values = _metric_values(batch, config, lambda metric: metric.segmentation)
        for position, index in enumerate(good):
            item = items[index]
            kind = "probabilities" if bool(probabilities[position]) else "logits"
            results[index] = PairResult(
                pair=item.pair,
                status="ok",
                height=item.height,
                width=item.width,
                channels=classes,
                bit_depth=item.bit_depth,
                notes=[f"scores read as {kind}", *batch.notes[position]],
                values=values[position],
            )
    return [results[index] for index in range(len(items))]


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def compute_within_memory(
    items: Sequence[LoadedPair | LoadedSegmentation], config: EvalConfig, device: torch.device
) -> list[PairResult]:
    """Compute a batch; when the device runs out of memory, retry in halves, then a single pair on
    the CPU, so that no pair is lost to memory (a pair the CPU cannot hold either is an error row)."""
    compute = compute_segmentation_batch if isinstance(items[0], LoadedSegmentation) else compute_batch
    try:
        return compute(items, config, device)
    except Exception as error:
        if not _out_of_memory(error):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if len(items) > 1:
        middle = len(items) // 2
        return compute_within_memory(items[:middle], config, device) + compute_within_memory(
            items[middle:], config, device
        )
    if device.type != "cpu":
        results = compute_within_memory(items, config, torch.device("cpu"))
        for result in results:
            result.notes.append(f"computed on the CPU: {device} ran out of memory")
        return results
    return [PairResult(pair=items[0].pair, status="error", error="out of memory computing this pair")]


def first_class_count(pairs: Sequence[Pair]) -> int | None:
    """The class count of the first ``.npy`` prediction (by name) that can be read, from its header."""
    for pair in pairs:
        if pair.is_segmentation:
            try:
                shape = np.load(pair.pred, mmap_mode="r", allow_pickle=False).shape
            except (OSError, ValueError, EOFError):
                continue
            if len(shape) == 3:
                return int(shape[0])
    return None


def _load(pair: Pair, with_weights: bool) -> LoadedPair | PairResult:
    try:
        return load_pair(pair, with_weights)
    except ImageReadError as error:
        return PairResult(pair=pair, status="error", error=str(error))


def _batch_values(items: Sequence[LoadedPair | LoadedSegmentation]) -> int:
    first = items[0]
    return len(items) * first.channels * first.height * first.width


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
    """Decode ``pairs`` in a thread pool, at most ``prefetch`` ahead, yielding in input order.

    When the consumer stops early (Ctrl-C), queued decodes are cancelled rather than awaited.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="lossctl-decode")
    try:
        in_flight: deque[Future] = deque()
        for pair in pairs:
            in_flight.append(pool.submit(_load, pair, config.with_weights))
            if len(in_flight) >= prefetch:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class EvaluationInterrupted(Exception):
    """Ctrl-C during :func:`evaluate`: ``results`` holds the pairs finished so far, in input order."""

    def __init__(self, results: list[PairResult]):
        super().__init__(f"interrupted after {len(results)} pairs")
        self.results = results


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
    if config.pred_kind not in ("auto", "probs", "logits"):
        raise LossctlError(f"--pred-kind must be auto, probs or logits; got {config.pred_kind!r}")
    if config.precision not in PRECISIONS:
        raise LossctlError(f"--precision must be float32 or float64; got {config.precision!r}")
    if config.max_pixels is not None and config.max_pixels < 1:
        raise LossctlError(f"--max-pixels must be at least 1; got {config.max_pixels}")
    device = resolve_device(config.device)
    set_max_pixels(config.max_pixels)
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
    if config.num_classes is None:  # a shard is given the whole pairing's
        config = replace(config, num_classes=first_class_count(computable))
    try:
        for item in _decoded(computable, config, prefetch):
            if isinstance(item, PairResult):
                record([item])
            elif (ready := batcher.add(item)) is not None:
                record(compute_within_memory(ready, config, device))
        for ready in batcher.drain():
            record(compute_within_memory(ready, config, device))
    except KeyboardInterrupt:
        raise EvaluationInterrupted([results[pair.name] for pair in pairs if pair.name in results]) from None
    return [results[pair.name] for pair in pairs]


def _reason(pair: Pair) -> str:
    reasons = []
    if pair.gt is None:
        reasons.append("no ground truth with this name")
    elif pair.pred is None:
        reasons.append("no prediction with this name")
    return "; ".join([*reasons, pair.problem] if pair.problem else reasons)
