"""The batching engine: decode pairs in worker threads or processes, group them by shape,
compute on a device.

On a GPU (and on a CPU decoding in processes) decoding runs ahead of computing in a pool of workers
(Pillow and OpenCV release the GIL while they decode), with a bounded number of pairs in flight,
so decoding the next batch overlaps computing the current one. On a CPU decoding in threads, each
worker thread decodes a few pairs and computes them itself. Either way the images held at once are
bounded by the batch and the prefetch depth (on that CPU path, by about a block per thread), not by
the number of pairs (each pair's result row is kept for the report). A batch that does not fit in
memory is split, and a single pair that does not fit on the GPU is computed on the CPU.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import levels
from .conventions import Convention
from .decoding import DecodeAhead, Decoded, DecodeFailure, decodable, decode_pair, use_processes
from .errors import LossctlError
from .io import LoadedPair, LoadedSegmentation, Pair, first_class_count, set_max_pixels
from .levels import PixelLevels

# Executes the lazily imported lossctl.losses now: importlib's LazyLoader is not thread-safe, and
# the compute threads would otherwise race to load it on first use.
from .losses import ssim_components  # noqa: F401
from .metrics import METRICS, PairBatch, ParamValue, SegmentationBatch, checked_metrics_and_params, notes_from
from .sharding import pair_pixels

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
MAX_BATCH_VALUES = 1 << 25  # values per input tensor of a batch when the device's memory is not known
# Peak device memory of a batch, in values of the compute precision per input value: pred, target
# and their difference, the full-size temporaries of tv and weighted_tv, and headroom. SSIM works in
# blocks of at most 2^26 values and element-wise metrics in chunks, so they add a bounded amount.
WORKING_SET_PER_VALUE = 12
AUTO_BATCH_SIZE = {"cpu": 16, "cuda": 64}


@dataclass(frozen=True)
class EvalConfig:
    metrics: Sequence[str]
    params: dict[str, dict[str, ParamValue]]
    device: str = "auto"
    batch_size: int | None = None  # None: auto, see batch_size_for
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    precision: str = "float32"
    with_weights: bool = False
    convention: Convention = field(default_factory=Convention)
    # Segmentation scores: "probs", "logits" or "auto" (probabilities where they sum to 1).
    pred_kind: str = "auto"
    ignore_index: int | None = None
    num_classes: int | None = None  # None: iter_results() reads the first segmentation prediction's
    max_pixels: int | None = None  # None: Pillow's decompression-bomb limit
    decoder: str = "auto"  # decode in "threads", "processes", or "auto" (see decoding.use_processes)


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


_QUIET_FROM_NUMPY = threading.Lock()
# The tensor type that holds each stored pixel type: torch < 2.3 cannot hold uint16.
_HOST_TYPES = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.uint16): torch.int32,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}
# What a GPU is sent: 16-bit values as their bits in int16, half the bytes of int32 over PCIe and
# in pinned memory, widened on the device (see _widened_16_bit).
_SENT_TYPES = {**_HOST_TYPES, np.dtype(np.uint16): torch.int16}


def _to_device(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack ``(H, W, C)`` arrays into an ``(N, C, H, W)`` tensor on ``device``, in their stored type.

    Pixels travel as stored (uint8 is a quarter of float32, 16-bit values half) and are scaled on the
    device. On a GPU they are stacked straight into pinned host memory (one copy, not a stack and
    then a pinned copy) and uploaded without blocking. On a CPU, bytes of several channels are split
    into planes (see :func:`_planar_bytes`), and any other single array is wrapped, not copied (a
    huge image is often a batch of one); the result is only read.
    """
    first = arrays[0]
    if (
        device.type == "cpu"
        and first.dtype == np.uint8
        and first.shape[2] > 1
        and len(arrays) * first.size <= PLANAR_SPLIT_VALUES
    ):
        return _planar_bytes(arrays)
    if device.type == "cpu" and len(arrays) == 1 and first.dtype != np.uint16:
        # Pillow's arrays are read-only and nothing writes to this tensor. catch_warnings changes
        # the process-wide filters, so the compute threads take turns.
        with _QUIET_FROM_NUMPY, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(first[np.newaxis]).permute(0, 3, 1, 2)
    if device.type == "cpu":
        host = torch.empty((len(arrays), *first.shape), dtype=_HOST_TYPES[first.dtype])
        np.stack(arrays, out=host.numpy())
        return host.permute(0, 3, 1, 2)
    host = torch.empty((len(arrays), *first.shape), dtype=_SENT_TYPES[first.dtype], pin_memory=True)
    np.stack(arrays, out=host.numpy().view(first.dtype))  # 16-bit: the bits, copied as they are
    sent = host.to(device, non_blocking=True)
    if first.dtype == np.uint16:
        sent = _widened_16_bit(sent)
    return sent.permute(0, 3, 1, 2)


def _widened_16_bit(bits: torch.Tensor) -> torch.Tensor:
    """The unsigned 16-bit values whose bits ``bits`` (int16) holds, as int32: 0..65535."""
    return bits.to(torch.int32).bitwise_and_(0xFFFF)


# Bytes are split into planes (_planar_bytes) only while the split copies stay in cache: 40% faster
# for a 512x512 RGB image, 10-15% at 1536x1536, even at 2048x2048, slower beyond, where the copies
# also add two bytes of memory per value to a huge image that is otherwise wrapped without copying.
PLANAR_SPLIT_VALUES = 1 << 23


def _planar_bytes(arrays: list[np.ndarray]) -> torch.Tensor:
    """:func:`_to_device` of ``(H, W, C)`` uint8 arrays on a CPU, one plane per channel in memory:
    bytes split into planes by OpenCV convert to float (:func:`_scaled`) in 60% of the time
    interleaved ones do (0.17 against 0.28 ms for a 512x512 RGB image, splitting included)."""
    import cv2

    height, width, channels = arrays[0].shape
    planar = torch.empty((len(arrays), channels, height, width), dtype=torch.uint8)
    for array, planes in zip(arrays, planar.numpy(), strict=True):
        # OpenCV writes into arrays of the right shape and type that it is given...
        for split, plane in zip(cv2.split(array, list(planes)), planes, strict=True):
            if not np.shares_memory(split, plane):  # ...and this covers one that would not
                plane[...] = split
    return planar


def _scaled(raw: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``raw / scale`` in ``dtype``, one plane per channel (the raw pixels are interleaved, unless
    :func:`_planar_bytes` split them): SSIM's filters and pooling read planes, and converting in the
    same pass costs less than reading interleaved values in each of their steps (SSIM and MS-SSIM
    of a 512x512 RGB pair 10% faster)."""
    values = raw.to(dtype, memory_format=torch.contiguous_format)
    if scale == 1.0:
        return values
    return values.div_(scale) if values is not raw else values / scale  # in place: one image-sized copy


def _expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a grayscale batch to ``channels`` (a view, no copy)."""
    return images.expand(-1, channels, -1, -1)


def _note_nan_images(batch: PairBatch, raw: torch.Tensor, side: str) -> None:
    if raw.is_floating_point():
        batch.note(raw.isnan().flatten(1).any(dim=1), f"{side} contains NaN values")


def pair_batch(items: Sequence[LoadedPair], config: EvalConfig, device: torch.device) -> PairBatch:
    """The :class:`PairBatch` the metrics see for pairs with equal :attr:`LoadedPair.batch_key`:
    scaled to [0, 1] in the configured precision, grayscale repeated to the pair's channels, and the
    convention (crop, Y channel) applied. Heat maps are drawn from this same batch."""
    dtype = PRECISIONS[config.precision]
    first = items[0]
    convention = config.convention
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

        def diff() -> torch.Tensor:
            # Subtract the stored integers, then scale: one rounding instead of three, so that
            # float32 keeps full relative precision for differences of a few 16-bit levels.
            # int16 holds any difference of 8-bit values at half the memory of int32.
            signed = torch.int16 if raw_pred.dtype == raw_gt.dtype == torch.uint8 else torch.int32
            integer_diff = raw_pred.to(signed) - raw_gt.to(signed)
            scaled = _expand_channels(_scaled(integer_diff, first.pred.scale, dtype), channels)
            return convention.apply(scaled, offset=False)

    weights = None
    if config.with_weights:
        nan_map = np.full(first.gt.pixels.shape[:2] + (1,), np.nan, dtype=np.float32)
        weight_arrays = [nan_map if item.weight is None else item.weight for item in items]
        weights = convention.apply(_to_device(weight_arrays, device).to(dtype))
    pred, target = convention.apply(pred), convention.apply(target)
    batch = PairBatch(pred, target, weights, diff=diff, levels=_pixel_levels(items, config, device))
    _note_nan_images(batch, raw_pred, "pred")
    _note_nan_images(batch, raw_gt, "gt")
    return batch


def _pixel_levels(
    items: Sequence[LoadedPair], config: EvalConfig, device: torch.device
) -> PixelLevels | None:
    """A CPU batch of 8-bit pairs as their stored levels and level counts (see
    :mod:`lossctl.levels`), or None where :func:`_from_levels` says no."""
    first = items[0]
    if not _from_levels(first, config, device):
        return None
    crop = config.convention.crop_border
    preds = [levels.compared_levels(item.pred.pixels, first.channels, crop) for item in items]
    gts = [levels.compared_levels(item.gt.pixels, first.channels, crop) for item in items]
    return PixelLevels(preds, gts, levels.count_levels(preds, gts), first.pred.scale, first.gt.scale)


def _from_levels(first: LoadedPair, config: EvalConfig, device: torch.device) -> bool:
    """Whether a batch of pairs like ``first`` is computed from stored levels: 8-bit pairs on a CPU,
    unless the values compared are not the stored levels (Y channel of RGB) or an image has fewer
    values than a table of level pairs, so that counting would not pay."""
    crop = config.convention.crop_border
    compared = first.channels * (first.height - 2 * crop) * (first.width - 2 * crop)
    return (
        device.type == "cpu"
        and first.pred.pixels.dtype == np.uint8
        and first.gt.pixels.dtype == np.uint8
        and not (config.convention.y_channel and first.channels == 3)
        and compared >= levels.MIN_VALUES
    )


def compute_batch(items: Sequence[LoadedPair], config: EvalConfig, device: torch.device) -> list[PairResult]:
    """Compute every selected metric for a batch of pairs with equal :attr:`LoadedPair.batch_key`."""
    return start_batch(items, config, device)()


def start_batch(
    items: Sequence[LoadedPair], config: EvalConfig, device: torch.device
) -> Callable[[], list[PairResult]]:
    """Queue :func:`compute_batch`'s work on ``device`` and return the function that waits for it
    and gives the results. On a GPU the work runs while the caller prepares the next batch; the
    batch's tensors are not kept, only its values on their way to the host."""
    first = items[0]
    if (problem := config.convention.check_size(first.pred.height, first.pred.width)) is not None:
        errors = [PairResult(pair=item.pair, status="error", error=problem) for item in items]
        return lambda: errors
    batch = pair_batch(items, config, device)
    for index, item in enumerate(items):
        if item.weight_problem and "weighted_tv" in config.metrics:
            batch.note_image(index, f"weighted_tv: {item.weight_problem}")
    with torch.no_grad():
        values = _start_metric_values(batch, config, lambda metric: metric.compute)
    shapes = [(item.pair, item.pred.height, item.pred.width, item.channels, item.bit_depth) for item in items]

    def results() -> list[PairResult]:
        rows, notes = values()
        return [
            PairResult(
                pair=pair,
                status="ok",
                height=height,
                width=width,
                channels=channels,
                bit_depth=bit_depth,
                notes=notes[index],
                values=rows[index],
            )
            for index, (pair, height, width, channels, bit_depth) in enumerate(shapes)
        ]

    return results


def _metric_values(batch, config: EvalConfig, kernel_of) -> tuple[list[dict[str, float]], list[list[str]]]:
    """Each image's values of the selected metrics that apply to this kind of batch (NaN for the
    others), and its notes, with one device-to-host copy for the whole batch."""
    return _start_metric_values(batch, config, kernel_of)()


def _start_metric_values(
    batch, config: EvalConfig, kernel_of
) -> Callable[[], tuple[list[dict[str, float]], list[list[str]]]]:
    """:func:`_metric_values` with the copy to the host started, not awaited: the result gives them."""
    count = batch.count
    columns = []
    for name in config.metrics:
        kernel = kernel_of(METRICS[name])
        columns.append(
            None if kernel is None else kernel(batch, config.params.get(name, {})).to(torch.float64)
        )
    # On a GPU each copy to the host waits for the work queued before it: one copy, not one per metric.
    device = next((column.device for column in columns if column is not None), torch.device("cpu"))
    nan = torch.full((count,), float("nan"), dtype=torch.float64, device=device)
    per_class = {name: table.to(torch.float64) for name, table in getattr(batch, "per_class", {}).items()}
    parts = [torch.stack([nan if column is None else column for column in columns])] if columns else []
    parts += per_class.values()
    entries = batch.note_entries()
    flags = [images.to(device, torch.float64) for images, _ in entries if isinstance(images, torch.Tensor)]
    parts += flags
    flat = torch.cat([part.flatten() for part in parts]) if parts else torch.empty(0, dtype=torch.float64)
    copied = None
    if flat.device.type == "cuda":
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(flat.device))
        flat = host
    # The function below keeps no device tensor: only the values, on their way to the host.
    metrics, tables = list(config.metrics), [(name, table.shape[1]) for name, table in per_class.items()]
    entries = [(None if isinstance(images, torch.Tensor) else images, text) for images, text in entries]

    def rows() -> tuple[list[dict[str, float]], list[list[str]]]:
        if copied is not None:
            copied.synchronize()
        values = flat.tolist()
        result: list[dict[str, float]] = [{} for _ in range(count)]
        for row, name in enumerate(metrics):
            for index in range(count):
                result[index][name] = values[row * count + index]
        start = len(metrics) * count
        for name, classes in tables:
            for index in range(count):
                per_image = values[start + index * classes : start + (index + 1) * classes]
                result[index].update({f"{name}_class_{k}": value for k, value in enumerate(per_image)})
            start += count * classes
        host_entries = []
        for images, text in entries:  # flags read from the device follow the values, in order
            if images is None:
                images, start = values[start : start + count], start + count
            host_entries.append((images, text))
        return result, notes_from(host_entries, count)

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
    # -inf is a logit of probability 0; NaN, +inf (a float64 beyond float32, too) or a pixel with
    # every score -inf leave no distribution at that pixel.
    unusable = (
        (scores.isnan() | (scores == float("inf")) | (scores == float("-inf")).all(dim=1, keepdim=True))
        .flatten(1)
        .any(dim=1)
    )
    # Read once for the batch: on a GPU each read waits for the device.
    any_outside, probs_flags, deviations = outside.any(dim=1).tolist(), is_probs.tolist(), deviation.tolist()
    unusable_flags = unusable.tolist()
    problems: list[str | None] = []
    for index in range(len(items)):
        if config.num_classes is not None and classes != config.num_classes:
            problems.append(
                f"prediction has {classes} classes, but this run's first prediction has {config.num_classes}"
            )
        elif unusable_flags[index]:
            problems.append("scores hold NaN, +inf, or a pixel whose every score is -inf")
        elif any_outside[index]:
            label = int(labels[index].flatten()[outside[index]][0])
            ignore = f" or --ignore-index {config.ignore_index}" if config.ignore_index is not None else ""
            problems.append(
                f"label {label} is not a class of the {classes}-class prediction (0..{classes - 1}{ignore})"
            )
        elif config.pred_kind == "probs" and not probs_flags[index]:
            problems.append(
                f"scores are not probabilities (in [0, 1], summing to 1; largest deviation {deviations[index]:.3g}); use --pred-kind logits"
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
        # Probabilities are normalised per pixel, as F.cross_entropy of their log does: 'auto' reads
        # scores as probabilities when they sum to 1 within 1e-3, and every metric sees one distribution.
        log_probs = torch.where(
            probabilities.view(-1, 1, 1, 1), scores.log().log_softmax(dim=1), torch.log_softmax(scores, dim=1)
        )
        batch = SegmentationBatch(log_probs, labels.where(valid, 0), valid)
        with torch.no_grad():
            values, notes = _metric_values(batch, config, lambda metric: metric.segmentation)
        read_as_probabilities = [
            probs_flags[index] if config.pred_kind == "auto" else config.pred_kind == "probs"
            for index in good
        ]
        for position, index in enumerate(good):
            item = items[index]
            kind = "probabilities" if read_as_probabilities[position] else "logits"
            results[index] = PairResult(
                pair=item.pair,
                status="ok",
                height=item.height,
                width=item.width,
                channels=classes,
                bit_depth=item.bit_depth,
                notes=[f"scores read as {kind}", *notes[position]],
                values=values[position],
            )
    return [results[index] for index in range(len(items))]


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# Values per input tensor of one CPU computation: about one 512x512 RGB pair where every metric
# passes over the pixels in float, and two where 8-bit pairs are computed from their levels.
CPU_BLOCK_VALUES = 1 << 20
LEVELS_BLOCK_VALUES = 1 << 21


def _block_values(first: LoadedPair | LoadedSegmentation, config: EvalConfig, device: torch.device) -> int:
    """The values per CPU block for pairs like ``first`` (see :func:`cpu_blocks`)."""
    from_levels = isinstance(first, LoadedPair) and _from_levels(first, config, device)
    return LEVELS_BLOCK_VALUES if from_levels else CPU_BLOCK_VALUES


def cpu_blocks(
    items: Sequence[LoadedPair | LoadedSegmentation], block_values: int
) -> Iterator[Sequence[LoadedPair | LoadedSegmentation]]:
    """A batch in blocks of about ``block_values`` values per tensor (at least one pair).

    A CPU computes each element-wise step of every metric as a pass over memory; blocks that stay in
    cache make the whole metric set 3-4x faster than batches of 16 large images. Where 8-bit pairs
    are computed from level counts (:mod:`lossctl.levels`) and SSIM works in its own blocks of one
    plane, few metrics pass over the block's pixels, and larger blocks share each metric's per-call
    cost among more pairs. 200 8-bit 512x512 RGB pairs on 2 cores, whole process: 3.94 s in blocks
    of one pair, 3.62 s of two (peak memory 478 -> 514 MiB), 3.58 s of five (617 MiB), 3.72 s of
    ten; 100 16-bit pairs: 3.55 s in blocks of one, 4.1 s of two.
    """
    start = 0
    while start < len(items):
        stop = start + max(1, block_values // _batch_values(items[start : start + 1]))
        yield items[start:stop]
        start = stop


def keep_freed_memory_for_reuse() -> None:
    """Make glibc's malloc keep freed blocks of up to 64 MiB for reuse (process-wide; a no-op
    without glibc).

    By default it maps each block over 128 KiB afresh from the kernel and unmaps it when freed
    (raising that threshold only slowly), so every temporary of a metric on a CPU block paid page
    faults and zeroing: the whole default metric set ran 15-20% slower on 512x512 pairs. Peak
    memory grows by the blocks kept (about 8% here).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)


@contextmanager
def _one_thread_per_operation() -> Iterator[None]:
    """torch and OpenCV each run an operation on one thread while the engine computes blocks in
    parallel threads. Splitting every small operation over all cores makes each wait for the
    slowest core at a barrier: with decoding threads (or another process) busy on the same cores,
    that made the metrics 3-10x slower than one thread per operation on a 2-core machine."""
    import cv2

    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


class _TasksInOrder:
    """A pool of threads running tasks that each return a list of results, which come back in the
    order the tasks were given, with at most two tasks per thread waiting (so that what the tasks
    hold stays bounded)."""

    def __init__(self, threads: int, name: str):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.in_flight: deque[Future] = deque()

    def submit(self, task: Callable[..., list[PairResult]], *args: Any) -> Iterator[PairResult]:
        """Start ``task(*args)``; yield the results of earlier tasks that are done or must be
        waited for to keep the number in flight bounded."""
        self.in_flight.append(self.pool.submit(task, *args))
        while len(self.in_flight) > 2 * self.threads or (self.in_flight and self.in_flight[0].done()):
            yield from self.in_flight.popleft().result()

    def finish(self) -> Iterator[PairResult]:
        while self.in_flight:
            yield from self.in_flight.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Computer:
    """Computes ready batches and gives back their results in the order the batches were given. On
    a CPU, as blocks (see :func:`cpu_blocks`) in a pool of threads, at most two blocks per thread in
    flight. On a GPU, in this thread, one batch queued on the device while this thread prepares the
    next: each batch's results are collected when the next one has been started (or at
    :meth:`finish`), not awaited as soon as its work is queued."""

    def __init__(self, config: EvalConfig, device: torch.device, pooled: bool | None = None):
        self.config, self.device = config, device
        self.tasks = None
        self.pending: Callable[[], list[PairResult]] | None = None
        if device.type == "cpu" if pooled is None else pooled:
            self.tasks = _TasksInOrder(os.cpu_count() or 1, "lossctl-compute")

    def submit(self, items: Sequence[LoadedPair | LoadedSegmentation]) -> Iterator[PairResult]:
        """Start computing ``items``; yield the results of earlier batches that are done or must be
        waited for to keep the number in flight bounded."""
        if self.tasks is None:
            previous, self.pending = self.pending, self._start(items)
            if previous is not None:
                yield from previous()
            return
        for block in cpu_blocks(items, _block_values(items[0], self.config, self.device)):
            yield from self.tasks.submit(compute_within_memory, block, self.config, self.device)

    def _start(self, items: Sequence[LoadedPair | LoadedSegmentation]) -> Callable[[], list[PairResult]]:
        if isinstance(items[0], LoadedPair):
            try:
                return start_batch(items, self.config, self.device)
            except Exception as error:
                if not _out_of_memory(error):
                    raise
            results = _after_out_of_memory(items, self.config, self.device)
        else:
            results = compute_within_memory(items, self.config, self.device)
        return lambda: results

    def finish(self) -> Iterator[PairResult]:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            yield from previous()
        if self.tasks is not None:
            yield from self.tasks.finish()

    def close(self) -> None:
        self.pending = None
        if self.tasks is not None:
            self.tasks.close()


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
    return _after_out_of_memory(items, config, device)


def _after_out_of_memory(
    items: Sequence[LoadedPair | LoadedSegmentation], config: EvalConfig, device: torch.device
) -> list[PairResult]:
    """:func:`compute_within_memory` for a batch that just ran out of memory: in halves, or on the CPU."""
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


def _batch_values(items: Sequence[LoadedPair | LoadedSegmentation]) -> int:
    first = items[0]
    return len(items) * first.channels * first.height * first.width


class _Batcher:
    """Collects decoded pairs into same-shape batches; says which batch is ready to compute."""

    def __init__(self, batch_size: int, max_buffered: int, max_values: int = MAX_BATCH_VALUES):
        self.batch_size, self.max_buffered, self.max_values = batch_size, max_buffered, max_values
        self.buckets: dict[tuple, list[LoadedPair]] = {}
        self.buffered = 0

    def add(self, item: LoadedPair) -> list[LoadedPair] | None:
        bucket = self.buckets.setdefault(item.batch_key, [])
        bucket.append(item)
        self.buffered += 1
        if len(bucket) >= self.batch_size or _batch_values(bucket) >= self.max_values:
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


def start_decoding(
    pairs: Sequence[Pair], config: EvalConfig, prefetch: int, processes: bool = False
) -> DecodeAhead:
    """Start decoding ``pairs`` in ``config.workers`` threads (or processes), at most ``prefetch``
    ahead; iterate the result for them in input order."""
    return DecodeAhead(
        pairs, config.with_weights, config.workers, prefetch, processes, max_pixels=config.max_pixels
    )


def _with_failures_as_results(item: Decoded) -> LoadedPair | LoadedSegmentation | PairResult:
    if isinstance(item, DecodeFailure):
        return PairResult(pair=item.pair, status="error", error=item.reason)
    return item


def decode_pairs(
    pairs: Sequence[Pair], config: EvalConfig, prefetch: int, processes: bool = False
) -> Iterator[LoadedPair | LoadedSegmentation | PairResult]:
    """``pairs`` decoded as :func:`start_decoding` does (from the first ``next()``), in input order,
    a pair that cannot be read as an error :class:`PairResult`."""
    with closing(start_decoding(pairs, config, prefetch, processes)) as decoded:
        yield from map(_with_failures_as_results, decoded)


def checked_config(config: EvalConfig) -> EvalConfig:
    """``config`` with every parameter of its metrics (the defaults where ``params`` gives none);
    raise :class:`LossctlError` for a setting no evaluation can run with (see
    :func:`~lossctl.metrics.checked_metrics_and_params` for the metrics and their parameters)."""
    params = checked_metrics_and_params(config.metrics, config.params)
    if config.batch_size is not None and config.batch_size < 1:
        raise LossctlError(f"--batch-size must be at least 1; got {config.batch_size}")
    if config.workers < 1:
        raise LossctlError(f"--workers must be at least 1; got {config.workers}")
    if config.pred_kind not in ("auto", "probs", "logits"):
        raise LossctlError(f"--pred-kind must be auto, probs or logits; got {config.pred_kind!r}")
    if config.precision not in PRECISIONS:
        raise LossctlError(f"--precision must be float32 or float64; got {config.precision!r}")
    if config.max_pixels is not None and config.max_pixels < 1:
        raise LossctlError(f"--max-pixels must be at least 1; got {config.max_pixels}")
    return replace(config, params=params)


def batch_size_for(config: EvalConfig, device: torch.device) -> int:
    """Pairs per batch: ``batch_size=None`` (auto) takes 64 pairs on a GPU and 16 on a CPU (which
    computes in cache-sized blocks anyway)."""
    return config.batch_size or AUTO_BATCH_SIZE.get(device.type, 16)


def decode_window(
    batch_size: int, workers: int, max_values: int | None = None, pairs: Sequence[Pair] = ()
) -> int:
    """Pairs decoded ahead of the computation: two batches and two per worker. Where ``max_values``
    (:func:`max_batch_values`) makes batches of pairs like the first smaller than ``batch_size``
    (judged from its header, as RGB), the window is two of those smaller batches: two batches of 64
    pairs of 8192x8192 RGB would hold 51 GB."""
    pixels = pair_pixels(pairs[0]) if pairs and max_values is not None else None
    per_batch = min(batch_size, max(1, max_values // (3 * pixels))) if pixels else batch_size
    return 2 * per_batch + 2 * workers


def max_batch_values(config: EvalConfig, device: torch.device) -> int:
    """The most input values a batch may hold: on a GPU, no more than half of the free device
    memory can take at ``WORKING_SET_PER_VALUE``; a batch that still runs out of memory is split
    (see :func:`compute_within_memory`)."""
    if device.type != "cuda":
        return MAX_BATCH_VALUES
    free, _ = torch.cuda.mem_get_info(device)
    value_bytes = torch.finfo(PRECISIONS[config.precision]).bits // 8
    return max(1, free // 2 // (WORKING_SET_PER_VALUE * value_bytes))


def iter_results(
    pairs: Sequence[Pair], config: EvalConfig, head_start: DecodeAhead | None = None
) -> Iterator[PairResult]:
    """Compute every metric of ``config`` for every pair, yielding one result per pair as it is
    done (not in input order), so that a caller can keep just what its report needs.

    Unmatched and conflicting pairs, unreadable files and size mismatches become results with
    status ``unmatched`` or ``error`` and a reason; every other pair is computed. A pair's own notes
    (see :class:`Pair`) come first in its result's. Close the iterator (or let it finish) to stop
    the decoding and compute threads.

    ``head_start``: decoding of the decodable ``pairs`` in processes that the caller started before
    importing this module (see :func:`lossctl.run.run_evaluation`); it is used where this run
    decodes them in processes too (on a CPU, narrowed to the engine's window), and closed either way.
    """
    try:
        config = checked_config(config)
    except LossctlError:
        if head_start is not None:
            head_start.close()
        raise
    not_for = _not_applicable_notes(config.metrics)
    with closing(_computed(pairs, config, head_start)) as results:
        for result in results:
            if result.pair.notes:
                result.notes[:0] = result.pair.notes
            if result.status == "ok" and (note := not_for[result.pair.is_segmentation]):
                result.notes.append(note)
            yield result


def _not_applicable_notes(metrics: Sequence[str]) -> dict[bool, str]:
    """By ``is_segmentation``: why a pair's report leaves the chosen metrics of the other kind
    empty (``-m ce`` on image pairs gave empty cells, exit 0, and no word)."""
    segmentation_only = ", ".join(name for name in metrics if METRICS[name].compute is None)
    image_only = ", ".join(name for name in metrics if METRICS[name].segmentation is None)
    notes = {False: "", True: ""}
    if segmentation_only:
        notes[False] = f"{segmentation_only}: for segmentation pairs (.npy class scores), not image pairs"
    if image_only:
        notes[True] = f"{image_only}: for image pairs, not segmentation pairs (.npy class scores)"
    return notes


def _computed(
    pairs: Sequence[Pair], config: EvalConfig, head_start: DecodeAhead | None = None
) -> Iterator[PairResult]:
    """:func:`iter_results`' results, before their notes are completed; ``config`` as
    :func:`checked_config` returns it."""
    with ExitStack() as stack:
        if head_start is not None:
            stack.callback(head_start.close)
        device = resolve_device(config.device)
        set_max_pixels(config.max_pixels)
        for pair in pairs:
            if pair.status != "pending":
                yield PairResult(pair=pair, status=pair.status, error=_reason(pair))
        computable = decodable(pairs)
        if config.num_classes is None:  # a shard is given the whole pairing's
            config = replace(config, num_classes=first_class_count(computable))
        batch_size = batch_size_for(config, device)
        processes = use_processes(config.decoder, config.workers, len(computable))
        if head_start is not None and not (
            processes and head_start.decodes(computable, config.with_weights, config.max_pixels)
        ):
            head_start.close()  # decoding other pairs, or otherwise than this run does
            head_start = None
        if device.type == "cpu":
            keep_freed_memory_for_reuse()
            stack.enter_context(_one_thread_per_operation())
            if not processes:
                yield from _decoded_and_computed_in_threads(computable, config, device, batch_size)
                return
        # Decoding starts before the free GPU memory is read: that first call creates the CUDA
        # context, a fraction of a second to seconds that the decoders need not wait for.
        if head_start is not None:
            decoded = head_start
        else:
            window = decode_window(batch_size, config.workers)
            decoded = stack.enter_context(closing(start_decoding(computable, config, window, processes)))
        max_values = max_batch_values(config, device)
        prefetch = decode_window(batch_size, config.workers, max_values, computable)
        if head_start is not None and device.type == "cuda":
            # A CPU's cores are needed for computing once the engine is in; a GPU keeps the deeper
            # window, so that the decoders never wait while it works through what they decoded.
            prefetch = max(prefetch, decoded.prefetch)
        decoded.resize(prefetch)
        batcher = _Batcher(batch_size, max_buffered=4 * batch_size, max_values=max_values)
        computer = _Computer(config, device)
        stack.callback(computer.close)
        for item in map(_with_failures_as_results, decoded):
            if isinstance(item, PairResult):
                yield item
            elif (ready := batcher.add(item)) is not None:
                yield from computer.submit(ready)
        for ready in batcher.drain():
            yield from computer.submit(ready)
        yield from computer.finish()


def _decoded_and_computed_in_threads(
    pairs: Sequence[Pair], config: EvalConfig, device: torch.device, batch_size: int
) -> Iterator[PairResult]:
    """A CPU's pipeline where pairs are decoded in threads: each of ``config.workers`` threads
    decodes a few consecutive pairs and computes them itself (:func:`_decode_and_compute`), at most
    two tasks per thread waiting. Pairs of one shape are batched within a task only: a CPU computes
    blocks of one or two 512x512 pairs anyway, and a task of small images holds up to a batch.

    Handing each pair from a decoding thread to a computing thread cost more than it saved: on two
    cores, two decoding and two computing threads took 7% more CPU time than two threads doing both
    (the hand-overs, and the GIL passed among four threads instead of two), and one thread of each
    idles one side whenever the metric set makes the other slower. 200 8-bit 512x512 pairs in
    process: 1.62 -> 1.51 s (l1, mse, psnr, ssim, tv), 2.39 -> 2.22 s (every metric); peak memory
    512 -> 404 MiB; 20,000 32x32 pairs 13.5 -> 9.1 s.
    """
    per_task = _pairs_per_task(pairs, batch_size)
    tasks = _TasksInOrder(config.workers, "lossctl-work")
    try:
        for start in range(0, len(pairs), per_task):
            yield from tasks.submit(_decode_and_compute, pairs[start : start + per_task], config, device)
        yield from tasks.finish()
    finally:
        tasks.close()


def _pairs_per_task(pairs: Sequence[Pair], batch_size: int) -> int:
    """Consecutive pairs a thread decodes and computes together: about ``LEVELS_BLOCK_VALUES``
    values, judged from the first pair's header (RGB assumed), one to ``batch_size`` pairs."""
    pixels = pair_pixels(pairs[0]) if pairs else None
    if not pixels:
        return 1
    return max(1, min(batch_size, LEVELS_BLOCK_VALUES // (3 * pixels)))


def _decode_and_compute(pairs: Sequence[Pair], config: EvalConfig, device: torch.device) -> list[PairResult]:
    """Decode ``pairs`` and compute those that can be read, in CPU blocks of pairs of one shape.

    The pairs decoded and not yet computed hold at most ``LEVELS_BLOCK_VALUES`` values and one pair
    more, whatever the task's length: a task sized from a small first image may meet huge ones.
    """
    results: list[PairResult] = []
    shapes: dict[tuple, list[LoadedPair | LoadedSegmentation]] = {}
    held = 0
    for pair in pairs:
        item = _with_failures_as_results(decode_pair(pair, config.with_weights))
        if isinstance(item, PairResult):
            results.append(item)
            continue
        shapes.setdefault(item.batch_key, []).append(item)
        held += _batch_values([item])
        if held >= LEVELS_BLOCK_VALUES:
            results.extend(_computed_in_blocks(shapes, config, device))
            shapes, held = {}, 0
    results.extend(_computed_in_blocks(shapes, config, device))
    return results


def _computed_in_blocks(
    shapes: dict[tuple, list[LoadedPair | LoadedSegmentation]], config: EvalConfig, device: torch.device
) -> list[PairResult]:
    results = []
    for items in shapes.values():
        for block in cpu_blocks(items, _block_values(items[0], config, device)):
            results.extend(compute_within_memory(block, config, device))
    return results


def evaluate(pairs: Sequence[Pair], config: EvalConfig) -> list[PairResult]:
    """:func:`iter_results` collected in input order (one result per pair); the command line
    streams them into a report instead (:func:`lossctl.run.run_evaluation`)."""
    with closing(iter_results(pairs, config)) as computed:
        results = {result.pair.name: result for result in computed}
    return [results[pair.name] for pair in pairs]


def _reason(pair: Pair) -> str:
    reasons = []
    if pair.pred is None and pair.gt is None:
        pass  # a folder that could not be read: the problem says so
    elif pair.gt is None:
        reasons.append("no ground truth with this name")
    elif pair.pred is None:
        reasons.append("no prediction with this name")
    return "; ".join([*reasons, pair.problem] if pair.problem else reasons)
