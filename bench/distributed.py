"""1 process against N torchrun processes, on the CPU or a GPU; plus what a cluster run costs besides computing.

Writes N pairs of synthetic photographic RGB PNGs (``bench/throughput.py``'s), then measures:
(1) ``lossctl eval`` in one process and under ``torchrun --nproc-per-node P`` for each P, whole
processes, checking that every run's rows agree; (2) the pixel balance of the P-way split;
(3) header reading (every rank reads every header to plan the split); (4) merging: rank 0 joining
32 shard reports of ``--merge-rows`` rows in total.

    python bench/distributed.py --pairs 96 --size 512 --procs 2               # CPU, or every GPU
    python bench/distributed.py --pairs 2000 --size 512 --procs 2 --device cuda:0   # 2 processes on one GPU

``--device auto`` gives each rank its own GPU (``cuda:LOCAL_RANK``); ``--device cuda:0`` puts
every rank on GPU 0, which measures what a second process on one GPU adds (decoding in parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import make_pairs


def run(command: list[str], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``command``, whole process, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if completed.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{completed.stderr}")
        times.append(time.perf_counter() - start)
    return min(times)


def eval_command(pred: Path, gt: Path, device: str, report: Path, extra: list[str]) -> list[str]:
    return [
        "-m",
        "lossctl",
        "eval",
        str(pred),
        str(gt),
        "--device",
        device,
        "-q",
        "--json",
        str(report),
        *extra,
    ]


def rows(report: Path) -> list[dict]:
    return json.loads(report.read_text())["rows"]


def agree(mine: list[dict], theirs: list[dict]) -> float:
    """The largest relative difference of any value, after checking names and statuses match."""
    assert [row["name"] for row in mine] == [row["name"] for row in theirs]
    assert [row["status"] for row in mine] == [row["status"] for row in theirs]
    worst = 0.0
    for a, b in zip(mine, theirs, strict=True):
        for key, value in b.items():
            if isinstance(value, float) and isinstance(a[key], float) and value:
                worst = max(worst, abs(a[key] - value) / abs(value))
    return worst


def balance(pred: Path, gt: Path, count: int, workers: int) -> tuple[float, float]:
    """Header-reading rate (pairs/s) and the largest shard's pixels over the ideal (sum / count)."""
    from lossctl.io import pair_folders
    from lossctl.sharding import assign, pixel_weights, with_fallback

    pairs = pair_folders(pred, gt).pairs
    start = time.perf_counter()
    weights = with_fallback(pixel_weights(pairs, workers))
    rate = len(pairs) / (time.perf_counter() - start)
    shards = assign(weights, [pair.name for pair in pairs], count)
    largest = max(sum(weights[position] for position in shard) for shard in shards)
    return rate, largest / (sum(weights) / count)


def merge_rate(single: Path, total: int, shards: int = 32) -> tuple[float, float, int]:
    """For ``total`` rows copied from report ``single`` into ``shards`` shard reports: rows per
    second that rank 0 joins (parse, check, order, frame, summary), rows per second of writing the
    JSON report (which a single run pays too), and bytes per row of that JSON."""
    from lossctl import report as report_module
    from lossctl.merge import merge_reports, shard_report
    from lossctl.sharding import assign, pairing_digest

    names = [f"{index:08d}" for index in range(total)]
    parts = assign([1] * total, names, shards)
    header = json.loads(single.read_text())
    template = header.pop("rows")
    digest = pairing_digest(names)
    texts = []
    for index, positions in enumerate(parts):
        part_rows = [
            {**template[position % len(template)], "name": names[position]} for position in positions
        ]
        shard = {"index": index, "count": shards, "pairs": total, "pairing": digest, "positions": positions}
        texts.append(json.dumps({**header, "shard": shard, "rows": part_rows}, indent=2))
    start = time.perf_counter()
    merged = merge_reports(
        [shard_report(json.loads(text), f"rank {index}") for index, text in enumerate(texts)]
    )
    joined = time.perf_counter() - start
    start = time.perf_counter()
    text = report_module.to_json(merged.frame, merged.summary, merged.info)
    written = time.perf_counter() - start
    return total / joined, total / written, len(text) // total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--procs", default="2", help="comma-separated process counts to compare with 1")
    parser.add_argument("--merge-rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    args, extra = parser.parse_known_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pred, gt = make_pairs(root, args.pairs, args.size)
        single = root / "single.json"
        one = run([sys.executable, *eval_command(pred, gt, args.device, single, extra)], args.repeat)
        print(f"| {args.pairs} x {args.size}x{args.size} RGB PNG | {args.device} | 1 | {one:.2f} s | "
              f"{args.pairs / one:.1f} | 1.00x | — | — |")  # fmt: skip
        for count in (int(text) for text in args.procs.split(",")):
            report = root / f"ranks-{count}.json"
            torchrun = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(count),
            ]
            elapsed = run([*torchrun, *eval_command(pred, gt, args.device, report, extra)], args.repeat)
            difference = agree(rows(report), rows(single))
            _, largest = balance(pred, gt, count, cores)
            print(f"| {args.pairs} x {args.size}x{args.size} RGB PNG | {args.device} | {count} | {elapsed:.2f} s | "
                  f"{args.pairs / elapsed:.1f} | {one / elapsed:.2f}x | {largest:.3f} | {difference:.1e} |")  # fmt: skip
        rate, _ = balance(pred, gt, 1, cores)
        print(f"\nheader reading: {rate:.0f} pairs/s with {cores} threads")
        joined, written, row_bytes = merge_rate(single, args.merge_rows)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(
            f"merge on rank 0, {args.merge_rows} rows in 32 shards: joined at {joined:.0f} rows/s, "
            f"JSON report written at {written:.0f} rows/s, {row_bytes} bytes per row; peak RSS {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
