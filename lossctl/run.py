"""One evaluation from two folders to report data: pair, compute, build the frame and summary.

Shared by ``lossctl eval`` and ``lossctl check``; it knows nothing of the terminal.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .conventions import Convention
from .errors import LossctlError
from .metrics import METRICS, ParamValue
from .sharding import Shard


@dataclass(frozen=True)
class EvalRequest:
    pred_root: Path
    gt_root: Path
    metrics: Sequence[str]
    params: dict[str, dict[str, ParamValue]]
    weights_root: Path | None = None
    device: str = "auto"
    batch_size: int | None = None  # None: chosen from the device (see engine.batch_size_for)
    workers: int | None = None
    precision: str = "float32"
    convention: Convention = Convention()
    pred_kind: str = "auto"
    ignore_index: int | None = None
    all_metrics: bool = False  # True: keep only the metrics that apply to the pairs found
    max_pixels: int | None = None
    decoder: str = "auto"


@dataclass(frozen=True)
class Evaluation:
    frame: pd.DataFrame
    summary: dict[str, dict[str, Any]]
    info: Any  # report.ReportInfo


def run_evaluation(
    request: EvalRequest,
    on_start: Callable[[int], Callable[[int], None]] | None = None,
    shard: Shard | None = None,
) -> Evaluation:
    """Evaluate every pair of ``request``, or only those of ``shard`` (a shard report, which
    :mod:`lossctl.merge` joins). ``on_start(total)`` may return a progress callback."""
    if request.weights_root is not None and "weighted_tv" not in request.metrics:
        raise LossctlError("--weights is only used by weighted_tv, which is not among the selected metrics")

    from . import io

    pairing = io.pair_folders(request.pred_root, request.gt_root, request.weights_root)
    if request.all_metrics:
        metrics = applicable_metrics(request.metrics, pairing.pairs)
        request = replace(
            request, metrics=metrics, params={k: v for k, v in request.params.items() if k in metrics}
        )
    pairs, record, num_classes = pairing.pairs, None, None
    if shard is not None:
        pairs, record, num_classes = _shard_pairs(pairing.pairs, shard, request)
    with ExitStack() as stack:
        head_start = _decoding_head_start(pairs, request)
        if head_start is not None:
            stack.callback(head_start.close)
        # torch is imported here, while the head start's processes decode.
        from .engine import iter_results, resolve_device
        from .results import ResultTable

        _stop_collecting_imported_objects()
        config = eval_config(request)
        if shard is not None:
            config = replace(config, num_classes=num_classes)
        device = resolve_device(request.device)
        on_progress = on_start(len(pairs)) if on_start else None
        table = ResultTable(pairs, request.metrics)
        with closing(iter_results(pairs, config, head_start)) as computed:
            try:
                for result in computed:
                    table.add(result)
                    if on_progress:
                        on_progress(1)
            except KeyboardInterrupt:
                raise RunInterrupted(
                    _evaluation(table, request, pairing, device, record), len(pairs)
                ) from None
    return _evaluation(table, request, pairing, device, record)


def _decoding_head_start(pairs: Sequence[Any], request: EvalRequest):
    """Where the pairs will be decoded in processes, start decoding them now, before the engine
    (and torch, 1-3 s) is imported, up to :func:`lossctl.decoding.head_start_window` pairs ahead
    (the engine narrows that on a CPU); else None. A CPU decoding in threads computes as it decodes
    and gains nothing from it. 200 512x512 pairs decoded in 2 processes on 2 cores, whole process:
    4.30 -> 4.06 s (about 130 pairs are decoded while torch is imported)."""
    from .decoding import DecodeAhead, decodable, head_start_window, use_processes

    decoded = decodable(pairs)
    workers = _workers(request)
    if not decoded or workers < 1 or (request.max_pixels is not None and request.max_pixels < 1):
        return None  # the engine reports the setting
    if not use_processes(request.decoder, workers, len(decoded)):
        return None
    with_weights = request.weights_root is not None
    window = head_start_window(decoded, with_weights)
    return DecodeAhead(decoded, with_weights, workers, window, processes=True, max_pixels=request.max_pixels)


@functools.cache  # once per process: a later call would also pin whatever garbage is alive then
def _stop_collecting_imported_objects() -> None:
    """Exempt every object alive now (torch's 200,000, once imported) from garbage collection.

    Python's full collections traverse every tracked object with all threads stopped: about 0.1 s
    each with torch loaded, one or two during a 200-pair run, and 0.3-0.4 s in all at interpreter
    exit. The imported modules' objects live until exit anyway. ``lossctl eval`` of 200 512x512
    pairs on 2 cores: 4.10 -> 3.67 s (median of five, alternated).
    """
    gc.freeze()


def eval_config(request: EvalRequest):
    """The engine's :class:`~lossctl.engine.EvalConfig` for ``request`` (also used to draw heat maps)."""
    from .engine import EvalConfig

    return EvalConfig(
        metrics=request.metrics,
        params=request.params,
        device=request.device,
        batch_size=request.batch_size,
        workers=_workers(request),
        precision=request.precision,
        with_weights=request.weights_root is not None,
        convention=request.convention,
        pred_kind=request.pred_kind,
        ignore_index=request.ignore_index,
        max_pixels=request.max_pixels,
        decoder=request.decoder,
    )


def _workers(request: EvalRequest) -> int:
    return request.workers if request.workers is not None else (os.cpu_count() or 1)


def _shard_pairs(pairs, shard: Shard, request: EvalRequest):
    """The pairs of ``shard``, its report record, and the class count of the whole pairing's first
    segmentation prediction, so that every shard checks pairs against the same."""
    from .decoding import decodable
    from .io import first_class_count, set_max_pixels
    from .sharding import plan_shard

    set_max_pixels(request.max_pixels)  # headers over the limit weigh like an unreadable file
    plan = plan_shard(pairs, shard, _workers(request))
    num_classes = first_class_count(decodable(pairs))
    record = {**plan.record, "pixels": plan.pixels, "total_pixels": plan.total_pixels}
    return plan.pairs, record, num_classes


class RunInterrupted(Exception):
    """Ctrl-C: ``evaluation`` holds the pairs finished, of ``total``."""

    def __init__(self, evaluation: Evaluation, total: int):
        super().__init__(f"interrupted after {len(evaluation.frame)} of {total} pairs")
        self.evaluation, self.total = evaluation, total


def _evaluation(table, request: EvalRequest, pairing, device, shard: dict | None = None) -> Evaluation:
    import torch

    from . import report

    frame = table.frame()
    info = report.ReportInfo(
        pred_root=str(request.pred_root),
        gt_root=str(request.gt_root),
        metrics=request.metrics,
        params=request.params,
        device=str(device),
        precision=request.precision,
        lossctl_version=__version__,
        torch_version=torch.__version__,
        skipped_files=len(pairing.skipped),
        convention=request.convention.as_dict(),
        segmentation={"pred_kind": request.pred_kind, "ignore_index": request.ignore_index}
        if any(pair.is_segmentation for pair in pairing.pairs)
        else None,
        shard=shard,
        weights_root=None if request.weights_root is None else str(request.weights_root),
        max_pixels=request.max_pixels,
    )
    return Evaluation(frame, report.summarize(frame, request.metrics), info)


def applicable_metrics(metrics: Sequence[str], pairs: Sequence[Any]) -> list[str]:
    """The metrics that apply to the kinds of pair present: image metrics for image predictions,
    segmentation metrics for ``.npy`` predictions."""
    scores = [pair.is_segmentation for pair in pairs]
    wanted = []
    for name in metrics:
        metric = METRICS[name]
        if (metric.compute is not None and not all(scores)) or (
            metric.segmentation is not None and any(scores)
        ):
            wanted.append(name)
    return wanted
