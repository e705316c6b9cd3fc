"""Throughput of `lossctl eval` against the decode floor, on any device.

Writes N pairs of synthetic-but-photographic RGB PNGs (a smooth random field plus noise), then
measures (1) the decode floor: one core decoding every pred and gt with Pillow, divided by the
number of cores; (2) `lossctl eval` as a whole process with the full default metric set.

    python bench/throughput.py --pairs 200 --size 512 --device cpu
    python bench/throughput.py --pairs 200 --size 2048 --device cuda --floor-sample 50

``--floor-sample K`` times one core on K evenly spread pairs and scales to all of them: the pairs
come from one generator, so each decodes in about the same time, and 2,000 pairs need not be
decoded twice on one core (about a minute on a GPU machine's cores) to time one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image


def write_pair(pred: Path, gt: Path, index: int, size: int, seed: int) -> None:
    """Pair ``index``: a bicubic-upsampled random field plus noise (gt) and that plus more noise
    (pred), from its own random stream, so that any subset is written the same in any order."""
    rng = np.random.default_rng((seed, index))
    coarse = max(2, size // 32)
    field = rng.random((coarse, coarse, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray((field * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    clean = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 6, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(gt / f"{index:05d}.png")
    Image.fromarray(noisy).save(pred / f"{index:05d}.png")


def make_pairs(
    root: Path, pairs: int, size: int, seed: int = 0, workers: int | None = None
) -> tuple[Path, Path]:
    """Write ``pairs`` deterministic pairs under ``root/pred`` and ``root/gt``, in ``workers``
    processes (default: every core; PNG encoding takes a GPU machine's core about 0.1 s per
    512x512 pair and 2-3 s per 2048x2048 one)."""
    pred, gt = root / "pred", root / "gt"
    pred.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, pairs)
    if workers <= 1:
        for index in range(pairs):
            write_pair(pred, gt, index, size, seed)
        return pred, gt
    # spawn, not fork: the caller may hold torch's or CUDA's threads.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(write_pair, [pred] * pairs, [gt] * pairs, range(pairs), [size] * pairs, [seed] * pairs))
    return pred, gt


def spread_sample(names: list[str], sample: int | None) -> list[str]:
    """At most ``sample`` of ``names``, evenly spread from the first (all of them without ``sample``)."""
    if not sample or sample >= len(names):
        return names
    return names[:: -(-len(names) // sample)]


def decode_floor(pred: Path, gt: Path, sample: int | None = None) -> float:
    """Seconds one core takes to open and decode every pred and gt with Pillow, divided by the
    number of cores. With ``sample``, only that many pairs, evenly spread, are decoded and the time
    is scaled to all of them."""
    names = sorted(path.name for path in pred.iterdir())
    chosen = spread_sample(names, sample)
    files = [pred / name for name in chosen] + [gt / name for name in chosen]
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    one_core = (time.perf_counter() - start) * len(names) / len(chosen)
    return one_core / (os.cpu_count() or 1)


def eval_command(pred: Path, gt: Path, *options: str) -> list[str]:
    """``python -m lossctl eval PRED GT -q OPTIONS``, run with this interpreter."""
    return [sys.executable, "-m", "lossctl", "eval", str(pred), str(gt), "-q", *options]


def time_eval(pred: Path, gt: Path, device: str, extra: list[str]) -> float:
    command = eval_command(pred, gt, "--device", device, "--format", "csv", *extra)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--floor-sample", type=int, help="time the floor on this many pairs (default: all)")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        pred, gt = make_pairs(Path(folder), args.pairs, args.size)
        floor = min(decode_floor(pred, gt, args.floor_sample) for _ in range(args.repeat))
        elapsed = min(time_eval(pred, gt, args.device, extra) for _ in range(args.repeat))
    print(
        f"| {args.pairs} x {args.size}x{args.size} RGB PNG | {args.device} | {os.cpu_count()} | "
        f"{floor:.2f} s ({args.pairs / floor:.0f} pairs/s) | {elapsed:.2f} s ({args.pairs / elapsed:.1f} pairs/s) | "
        f"{elapsed / floor:.2f}x |"
    )


if __name__ == "__main__":
    main()
