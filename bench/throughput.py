"""Throughput of `lossctl eval` against the decode floor, on any device.

Writes N pairs of synthetic-but-photographic RGB PNGs (a smooth random field plus noise), then
measures (1) the decode floor: one core decoding every pred and gt with Pillow, divided by the
number of cores; (2) `lossctl eval` as a whole process with the full default metric set.

    python bench/throughput.py --pairs 200 --size 512 --device cpu
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_pairs(root: Path, pairs: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pred, gt = root / "pred", root / "gt"
    pred.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    coarse = max(2, size // 32)
    for index in range(pairs):
        field = rng.random((coarse, coarse, 3)).astype(np.float32)
        smooth = np.asarray(
            Image.fromarray((field * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        )
        clean = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        noisy = np.clip(clean + rng.normal(0, 6, clean.shape), 0, 255).astype(np.uint8)
        Image.fromarray(clean).save(gt / f"{index:05d}.png")
        Image.fromarray(noisy).save(pred / f"{index:05d}.png")
    return pred, gt


def decode_floor(pred: Path, gt: Path) -> float:
    files = sorted(pred.iterdir()) + sorted(gt.iterdir())
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    return (time.perf_counter() - start) / (os.cpu_count() or 1)


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
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        pred, gt = make_pairs(Path(folder), args.pairs, args.size)
        floor = min(decode_floor(pred, gt) for _ in range(args.repeat))
        elapsed = min(time_eval(pred, gt, args.device, extra) for _ in range(args.repeat))
    print(
        f"| {args.pairs} x {args.size}x{args.size} RGB PNG | {args.device} | {os.cpu_count()} | "
        f"{floor:.2f} s ({args.pairs / floor:.0f} pairs/s) | {elapsed:.2f} s ({args.pairs / elapsed:.1f} pairs/s) | "
        f"{elapsed / floor:.2f}x |"
    )


if __name__ == "__main__":
    main()
