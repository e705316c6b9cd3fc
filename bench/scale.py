"""Peak memory of `lossctl eval` against the number of pairs: it must be bounded by the batch and
the prefetch depth, not grow with the folder.

Writes N small RGB PNG pairs (deterministic), runs `lossctl eval` under `/usr/bin/time -v` with a
CSV report, and prints a Markdown row: pairs, wall time, pairs/s, peak resident memory.

    python bench/scale.py --pairs 1000 20000 --size 32
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from throughput import eval_command  # noqa: E402


def make_pairs(root: Path, pairs: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    pred, gt = root / "pred", root / "gt"
    for folder in (pred, gt):
        folder.mkdir(parents=True)
    for index in range(pairs):
        clean = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        noisy = np.clip(clean.astype(np.int16) + rng.integers(-8, 9, size=clean.shape), 0, 255).astype(
            np.uint8
        )
        subfolder = f"{index // 1000:03d}"  # folders of 1,000 files, as datasets are usually laid out
        (gt / subfolder).mkdir(exist_ok=True)
        (pred / subfolder).mkdir(exist_ok=True)
        Image.fromarray(clean).save(gt / subfolder / f"{index:06d}.png", compress_level=1)
        Image.fromarray(noisy).save(pred / subfolder / f"{index:06d}.png", compress_level=1)
    return pred, gt


def make_huge_pair(root: Path, size: int) -> tuple[Path, Path]:
    """One RGB PNG pair of ``size`` x ``size``: a smooth field plus noise, and a noisier copy."""
    rng = np.random.default_rng(0)
    pred, gt = root / "pred", root / "gt"
    for folder in (pred, gt):
        folder.mkdir(parents=True)
    field = (rng.random((max(2, size // 64), max(2, size // 64), 3)) * 255).astype(np.uint8)
    clean = np.asarray(Image.fromarray(field).resize((size, size), Image.BICUBIC))
    clean = np.clip(clean + rng.normal(0, 4, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(gt / "huge.png", compress_level=1)
    noisy = np.clip(clean + rng.normal(0, 6, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(pred / "huge.png", compress_level=1)
    return pred, gt


def measure(pred: Path, gt: Path, report: Path, extra: list[str]) -> tuple[float, int]:
    command = [
        "/usr/bin/time",
        "-v",
        *eval_command(pred, gt, "--csv", str(report), "--format", "csv", *extra),
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(f"lossctl eval failed ({completed.returncode}): {completed.stderr[-500:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr).group(1))
    return elapsed, peak_kib


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--huge", type=int, metavar="SIZE", help="instead: one SIZE x SIZE pair")
    args, extra = parser.parse_known_args()
    if args.huge:
        with tempfile.TemporaryDirectory() as folder:
            pred, gt = make_huge_pair(Path(folder), args.huge)
            extra = ["--max-pixels", str(args.huge * args.huge + 1), *extra]
            elapsed, peak_kib = measure(pred, gt, Path(folder) / "report.csv", extra)
            report = (Path(folder) / "report.csv").read_text()
        print(f"| 1 | {args.huge}x{args.huge} | {elapsed:.1f} s | - | {peak_kib / 1024 / 1024:.1f} GiB |")
        print(report)
        return
    print("| pairs | size | wall time | pairs/s | peak RSS |")
    print("|---|---|---|---|---|")
    for pairs in args.pairs:
        with tempfile.TemporaryDirectory() as folder:
            pred, gt = make_pairs(Path(folder), pairs, args.size)
            elapsed, peak_kib = measure(pred, gt, Path(folder) / "report.csv", extra)
        print(
            f"| {pairs} | {args.size}x{args.size} | {elapsed:.1f} s | {pairs / elapsed:.0f} | {peak_kib / 1024:.0f} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
