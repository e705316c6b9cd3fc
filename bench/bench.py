"""lossctl against the decode floor and the scientific Python libraries, on the same pairs.

Writes N deterministic pairs of photographic-looking RGB PNGs (bench/throughput.py's generator),
then measures, in one run:

- the decode floor: one core opening and decoding every pred and gt with Pillow, divided by the
  number of cores (perfectly parallel decoding, the most any Pillow-based evaluator can do);
  ``--floor-sample K`` times K evenly spread pairs and scales (see bench/throughput.py);
- ``lossctl eval`` as a whole process (start-up and torch import included), with the full default
  metric set and with the peers' set (l1, mse, psnr, ssim, tv); and on the first pair alone, whose
  time (start-up, one pair) is subtracted to give the rest's rate against the floor; with
  ``--workers 15,8``, every metric again with each of those decoder counts (the default is one per
  core, which leaves none to the main thread that feeds the GPU); with ``--head-start 1,4096``,
  every metric again with decoding processes that many pairs ahead during start-up;
- each peer computing L1, MSE, PSNR, SSIM and TV per pair with Pillow decoding in the loop, timed
  in this process after its imports and a warm-up pair (which flatters the peers against a whole
  process): pytorch-msssim, piq, scikit-image, torchmetrics. A peer that is not installed is listed
  as skipped;
- ``lossctl.run.run_evaluation`` on the peers' set in this process, timed the same way.

Every time is the best of ``--repeat`` runs, the peers' too.

It checks that every peer agrees with lossctl on each pair's PSNR and SSIM, and prints Markdown
rows for bench/RESULTS.md.

    python bench/bench.py --pairs 200 --size 512 --device cpu --peer-pairs 50
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from throughput import decode_floor, eval_command, make_pairs  # noqa: E402

PEER_METRICS = "l1,mse,psnr,ssim,tv"


# `lossctl eval` with the decoding head start (lossctl.decoding.head_start_window) set to
# sys.argv[1] pairs, bounded by an eighth of memory only: which window pays on a machine is measured,
# not guessed (processes decode during the torch import only where `--decoder` picks processes).
WITH_HEAD_START = (
    "import sys; import lossctl.decoding as decoding; "
    "decoding.HEAD_START_PAIRS, decoding.HEAD_START_BYTES = int(sys.argv.pop(1)), 1 << 62; "
    "sys.argv[0] = 'lossctl'; from lossctl.cli import main; main()"
)


def run_lossctl(
    pred: Path, gt: Path, device: str, metrics: str | None, *options: str, head_start: int | None = None
) -> tuple[float, pd.DataFrame]:
    command = eval_command(
        pred, gt, "--device", device, "--format", "csv", *(["--metrics", metrics] if metrics else []), *options
    )
    if head_start is not None:  # python -m lossctl ... -> python -c WITH_HEAD_START PAIRS ...
        command = [command[0], "-c", WITH_HEAD_START, str(head_start), *command[3:]]
    start = time.perf_counter()
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    return elapsed, pd.read_csv(io.StringIO(completed.stdout), dtype={"name": str}).set_index("name")


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _torch_pair(pred_path: Path, gt_path: Path, device: str):
    import torch

    def tensor(path: Path):
        return torch.from_numpy(_load(path)).permute(2, 0, 1).unsqueeze(0).to(device)

    return tensor(pred_path), tensor(gt_path)


def _torch_basics(x, y) -> tuple[float, float, float, float]:
    """L1, MSE, PSNR and anisotropic TV (of the prediction) as plain torch expressions."""
    diff = x - y
    mse = float((diff * diff).mean())
    tv = (
        float((x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., 1:] - x[..., :-1]).abs().sum())
        / x.numel()
    )
    return float(diff.abs().mean()), mse, 10 * np.log10(1 / mse), tv


def peer_pytorch_msssim(pred: Path, gt: Path, device: str) -> tuple[float, float]:
    from pytorch_msssim import ssim

    x, y = _torch_pair(pred, gt, device)
    _, _, psnr, _ = _torch_basics(x, y)
    return psnr, float(ssim(x, y, data_range=1.0))


def _import_piq_submodules():
    """piq's ``__init__`` imports torchvision (for its learned metrics); its SSIM, PSNR and TV
    modules do not, so load them without running the package ``__init__``."""
    if "piq" not in sys.modules:
        spec = importlib.util.find_spec("piq")
        if spec is None:
            raise ImportError("piq")
        package = types.ModuleType("piq")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["piq"] = package
    from piq.psnr import psnr
    from piq.ssim import ssim
    from piq.tv import total_variation

    return psnr, ssim, total_variation


def peer_piq(pred: Path, gt: Path, device: str) -> tuple[float, float]:
    psnr, ssim, total_variation = _import_piq_submodules()
    x, y = _torch_pair(pred, gt, device)
    _torch_basics(x, y)
    total_variation(x, norm_type="l1")
    return float(psnr(x, y, data_range=1.0)), float(ssim(x, y, data_range=1.0, downsample=False))


def peer_skimage(pred: Path, gt: Path, device: str) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = _load(pred).astype(np.float64), _load(gt).astype(np.float64)
    np.abs(x - y).mean()
    np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum()
    score = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    return float(peak_signal_noise_ratio(y, x, data_range=1.0)), float(score)


def peer_torchmetrics(pred: Path, gt: Path, device: str) -> tuple[float, float]:
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
        total_variation,
    )

    x, y = _torch_pair(pred, gt, device)
    _torch_basics(x, y)
    total_variation(x)
    score = structural_similarity_index_measure(x, y, data_range=1.0)
    return float(peak_signal_noise_ratio(x, y, data_range=1.0)), float(score)


PEERS: dict[str, Callable[[Path, Path, str], tuple[float, float]]] = {
    "pytorch-msssim": peer_pytorch_msssim,
    "piq": peer_piq,
    "scikit-image": peer_skimage,
    "torchmetrics": peer_torchmetrics,
}
SSIM_DEFINED_AS_LOSSCTL = {"pytorch-msssim", "piq", "scikit-image"}  # torchmetrics also averages the border


def time_peer(name: str, names: list[str], pred: Path, gt: Path, device: str, repeat: int = 1):
    """A peer's time for ``names`` (the best of ``repeat`` runs, after its imports and a warm-up
    pair) and its PSNR and SSIM per pair, or None and why it was skipped."""
    peer = PEERS[name]
    try:
        peer(pred / f"{names[0]}.png", gt / f"{names[0]}.png", device)  # imports and warm-up
    except ImportError as error:
        return None, f"skipped: {error.name or error} is not installed"
    except Exception as error:  # a broken peer must not cost the figures of the others
        reason = str(error).splitlines()[0] if str(error) else ""
        return None, f"skipped: it failed ({type(error).__name__}: {reason})"

    def every_pair() -> list[tuple[float, float]]:
        return [peer(pred / f"{n}.png", gt / f"{n}.png", device) for n in names]

    elapsed, values = min((_timed(every_pair) for _ in range(repeat)), key=lambda run: run[0])
    return (elapsed, pd.DataFrame(values, index=names, columns=["psnr", "ssim"])), ""


def first_pair(pred: Path, gt: Path, folder: Path) -> tuple[Path, Path]:
    """``folder/pred`` and ``folder/gt`` holding (links to) the first pair only."""
    first = sorted(pred.iterdir())[0].name
    for side, source in (("pred", pred), ("gt", gt)):
        (folder / side).mkdir(parents=True)
        (folder / side / first).symlink_to(source / first)
    return folder / "pred", folder / "gt"


def time_lossctl_in_process(pred: Path, gt: Path, device: str, repeat: int = 1) -> float:
    """``lossctl.run.run_evaluation`` on the peers' metric set, timed as the peers are: after its
    imports and a warm-up on one pair, the best of ``repeat`` runs (:func:`time_peer`)."""
    from lossctl.metrics import parse_metric_names, resolve_params
    from lossctl.run import EvalRequest, run_evaluation

    names = parse_metric_names(PEER_METRICS)
    with tempfile.TemporaryDirectory() as folder:
        one_pred, one_gt = first_pair(pred, gt, Path(folder))
        run_evaluation(EvalRequest(one_pred, one_gt, names, resolve_params(names, []), device=device))
    request = EvalRequest(pred, gt, names, resolve_params(names, []), device=device)
    return min(_timed(run_evaluation, request)[0] for _ in range(repeat))


def _counts(text: str) -> list[int]:
    return [int(count) for count in text.split(",") if count.strip()]


def _timed(function: Callable, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peer-pairs", type=int, default=50, help="pairs each peer computes (they are slow)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs of each evaluator")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--floor-sample", type=int, help="time the floor on this many pairs (default: all)")
    parser.add_argument(
        "--workers",
        default="",
        help="also time every metric with each of these --workers counts (e.g. 15,8; default: none)",
    )
    parser.add_argument(
        "--head-start",
        default="",
        help="also time every metric with each of these decoding head starts, in pairs (e.g. 1,4096)",
    )
    args = parser.parse_args()
    worker_counts = _counts(args.workers)
    head_starts = _counts(args.head_start)

    import torch

    cores = os.cpu_count() or 1
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores; python {platform.python_version()}, "
        f"torch {torch.__version__}; device {args.device}; {time.strftime('%Y-%m-%d')}"
    )
    with tempfile.TemporaryDirectory() as folder:
        pred, gt = make_pairs(Path(folder), args.pairs, args.size)
        floor = min(decode_floor(pred, gt, args.floor_sample) for _ in range(args.repeat))
        sampled = (
            f", timed on {args.floor_sample} of them"
            if args.floor_sample and args.floor_sample < args.pairs
            else ""
        )
        print(
            f"\ndecode floor: {floor:.2f} s for {args.pairs} pairs ({args.pairs / floor:.0f} pairs/s{sampled})\n"
        )
        print("| evaluator | metrics | pairs | time | pairs/s | x decode floor |")
        print("|---|---|---|---|---|---|")
        reference, lossctl_rate = None, 0.0
        one_pred, one_gt = first_pair(pred, gt, Path(folder) / "first")
        for label, metrics in (("all (default)", None), ("l1, mse, psnr, ssim, tv", PEER_METRICS)):
            runs = [run_lossctl(pred, gt, args.device, metrics) for _ in range(args.repeat)]
            elapsed, frame = min(runs, key=lambda run: run[0])
            reference = frame if reference is None else reference
            lossctl_rate = args.pairs / elapsed  # the last one: the peers' metric set
            print(
                f"| lossctl eval (whole process) | {label} | {args.pairs} | {elapsed:.2f} s | {lossctl_rate:.1f} | {elapsed / floor:.2f}x |"
            )
            # Start-up (Python, torch, the device) against the rest: what the target's ratio is made of.
            start_up = min(run_lossctl(one_pred, one_gt, args.device, metrics)[0] for _ in range(args.repeat))
            rest, rest_floor = elapsed - start_up, floor * (args.pairs - 1) / args.pairs
            print(
                f"| lossctl eval, start-up (one pair) | {label} | 1 | {start_up:.2f} s | - | - |\n"
                f"| lossctl eval, after start-up (difference) | {label} | {args.pairs - 1} | {rest:.2f} s | "
                f"{(args.pairs - 1) / rest:.1f} | {rest / rest_floor:.2f}x |"
            )
        for workers in worker_counts:  # the default is one decoder per core, the main thread beside them
            elapsed = min(
                run_lossctl(pred, gt, args.device, None, "--workers", str(workers))[0] for _ in range(args.repeat)
            )
            print(
                f"| lossctl eval --workers {workers} (whole process) | all (default) | {args.pairs} | "
                f"{elapsed:.2f} s | {args.pairs / elapsed:.1f} | {elapsed / floor:.2f}x |"
            )
        for pairs in head_starts:
            elapsed = min(
                run_lossctl(pred, gt, args.device, None, head_start=pairs)[0] for _ in range(args.repeat)
            )
            print(
                f"| lossctl eval, head start of {pairs} pairs (whole process) | all (default) | {args.pairs} | "
                f"{elapsed:.2f} s | {args.pairs / elapsed:.1f} | {elapsed / floor:.2f}x |"
            )
        in_process = time_lossctl_in_process(pred, gt, args.device, args.repeat)
        per_pair_floor = floor / args.pairs
        print(
            f"| lossctl run_evaluation (in process, like the peers) | l1, mse, psnr, ssim, tv | {args.pairs} | "
            f"{in_process:.2f} s | {args.pairs / in_process:.1f} | {in_process / (per_pair_floor * args.pairs):.2f}x |"
        )
        best_peer = 0.0
        names = sorted(reference.index)[: args.peer_pairs]
        agreement = []
        for name in args.peers.split(","):
            timed, why = time_peer(name, names, pred, gt, args.device, args.repeat)
            if timed is None:
                print(f"| {name} | - | - | {why} | - | - |")
                continue
            elapsed, values = timed
            rate = len(names) / elapsed
            best_peer = max(best_peer, rate)
            per_pair_floor = floor * len(names) / args.pairs
            print(
                f"| {name} (in process) | l1, mse, psnr, ssim, tv | {len(names)} | {elapsed:.2f} s | {rate:.1f} | {elapsed / per_pair_floor:.2f}x |"
            )
            ours = reference.loc[names]
            agreement.append(
                (
                    name,
                    float((values["psnr"] - ours["psnr"]).abs().max()),
                    float((values["ssim"] - ours["ssim"]).abs().max()),
                )
            )
        if best_peer:
            print(
                f"\nlossctl / best peer on the peers' metric set: {lossctl_rate / best_peer:.1f}x as a whole process "
                f"(start-up and torch import included), {args.pairs / in_process / best_peer:.1f}x in process"
            )
        print("\n| peer | max abs PSNR difference (dB) | max abs SSIM difference |")
        print("|---|---|---|")
        for name, psnr_gap, ssim_gap in agreement:
            note = (
                "" if name in SSIM_DEFINED_AS_LOSSCTL else " (averages the padded border: a different SSIM)"
            )
            print(f"| {name} | {psnr_gap:.2e} | {ssim_gap:.2e}{note} |")


if __name__ == "__main__":
    main()
