"""Where `lossctl eval`'s time goes, per pair: decoding, moving the pixels to the device, each metric.

Decodes N generated pairs (bench/throughput.py's generator) with lossctl's own loader, then times,
on the chosen device, the engine's `pair_batch` (upload, scaling, 8-bit level counts) and every
metric of the default set on the engine's blocks (on a CPU: one thread per operation and blocks of
8-bit pairs as the engine makes them; each of its threads does this work in parallel). Prints a
Markdown table for bench/RESULTS.md.

    python bench/breakdown.py --pairs 16 --size 512 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import make_pairs  # noqa: E402

from lossctl import engine  # noqa: E402
from lossctl.io import load_pair, pair_folders  # noqa: E402
from lossctl.metrics import METRICS, resolve_params  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = engine.resolve_device(args.device)
    if device.type == "cpu":
        engine.keep_freed_memory_for_reuse()  # as the engine does for CPU runs
    names = [name for name, metric in METRICS.items() if metric.compute is not None]
    params = resolve_params(names, [])
    with tempfile.TemporaryDirectory() as folder:
        pred_root, gt_root = make_pairs(Path(folder), args.pairs, args.size)
        pairs = pair_folders(pred_root, gt_root).pairs
        start = time.perf_counter()
        loaded = [load_pair(pair) for pair in pairs]
        decode = (time.perf_counter() - start) / len(pairs)
    # As the engine blocks 8-bit pairs on a CPU (two 512x512 RGB pairs); a GPU takes the whole batch.
    block = max(1, engine.LEVELS_BLOCK_VALUES // (3 * args.size**2)) if device.type == "cpu" else len(loaded)
    timings = dict.fromkeys(["upload, scale, count levels", *names], 0.0)
    config = engine.EvalConfig(metrics=names, params=params)
    single = engine._one_thread_per_operation() if device.type == "cpu" else nullcontext()
    with single, torch.no_grad():
        for repeat in range(args.repeat + 1):
            for first in range(0, len(loaded), block):
                items = loaded[first : first + block]
                synchronize(device)
                start = time.perf_counter()
                batch = engine.pair_batch(items, config, device)
                synchronize(device)
                lap = time.perf_counter()
                if repeat:
                    timings["upload, scale, count levels"] += lap - start
                for name in names:
                    METRICS[name].compute(batch, params.get(name, {}))
                    synchronize(device)
                    now = time.perf_counter()
                    if repeat:
                        timings[name] += now - lap
                    lap = now
    per_pair = {name: seconds / args.repeat / len(loaded) for name, seconds in timings.items()}
    compute = sum(per_pair.values())
    print(f"{args.pairs} pairs of {args.size}x{args.size} RGB, device {device}, torch {torch.__version__}\n")
    print("| stage | ms per pair | share of one pair's work |")
    print("|---|---|---|")
    total = decode + compute
    print(f"| decode pred + gt (lossctl.io, one core) | {decode * 1e3:.2f} | {decode / total:.0%} |")
    for name, seconds in per_pair.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / total:.0%} |")
    print(f"| **all metrics + upload** | {compute * 1e3:.2f} | {compute / total:.0%} |")


if __name__ == "__main__":
    main()
