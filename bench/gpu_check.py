"""Every check that needs an NVIDIA GPU, in one run: run it as is on a machine with CUDA.

1. CUDA (float32 and float64) against the CPU in float64, `lossctl eval` on sample_images/ (every
   metric; the skimage, basicsr and matlab presets, and the segmentation samples): the largest
   relative difference per metric, against METRICS.md's 1e-5 (PSNR: 1e-4 dB absolute); NaN or inf
   on one side only is a difference of inf.
2. The CUDA dtype matrix of lossctl.losses: every loss in float32, float64, float16 and bfloat16,
   forward and backward, against a float64 CPU reference; and where `lossctl eval` makes the host
   wait for the GPU (torch's sync debug mode).
3. The test suite's tests marked ``cuda`` (pytest -m cuda), which only a GPU machine runs.
4. bench/breakdown.py on the device: upload and each metric, per pair, in batches of 32.
5. bench/bench.py on 2,000 pairs of 512x512: `lossctl eval` (whole process and in process) against
   the decode floor and the peers, with their agreement: the issue's first GPU target; every metric
   again with fewer decoders than cores (one core left to the main thread, and half of them), and
   with no decoding head start and one of every pair.
6. bench/throughput.py on 200 pairs of 2048x2048: the second GPU target.

Sections print as they finish, each with its wall time; on a 16-core H100/H200 machine the whole
run should take about 4 minutes (most of it writing the PNGs). The floors are timed on one core on
a sample of the pairs (``--floor-sample``; see bench/throughput.py) so that the run fits a short
loan of the machine.

    PYTHONPATH=. python bench/gpu_check.py | tee gpu_results.md
    PYTHONPATH=. python bench/gpu_check.py agreement dtypes   # some sections only
    python bench/gpu_check.py --device cpu --pairs 8 --large-pairs 2 --large-size 256   # dry run here

The lent H100/H200 machines have torch, OpenCV, pandas, typer, rich, scikit-image and torchmetrics
but no package index; pytorch-msssim and piq (pure Python) travel with the checkout:
``pip install --no-deps --target bench/.peers pytorch-msssim piq`` here (``bench/.peers`` is ignored
by git), then on the device machine, with ``bench/.peers`` carried::

    set -o pipefail; PYTHONUNBUFFERED=1 PYTHONPATH=.:bench/.peers python3 bench/gpu_check.py 2>&1 | tee $OUT/gpu.md

A peer that is missing is listed as skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from lossctl import losses as L
from lossctl.conventions import Convention
from lossctl.engine import EvalConfig, evaluate
from lossctl.io import pair_folders
from lossctl.metrics import METRICS, resolve_params

REPO = Path(__file__).resolve().parent.parent


SAMPLES = REPO / "sample_images"
# (label, pred folder, gt folder, convention, ignore_index): the presets' code paths and segmentation.
AGREEMENT_CASES = (
    ("skimage", SAMPLES / "pred", SAMPLES / "gt", Convention(), None),
    ("basicsr x4", SAMPLES / "pred", SAMPLES / "gt", Convention("basicsr", y_channel=True, crop_border=4), None),
    ("matlab", SAMPLES / "pred", SAMPLES / "gt", Convention("matlab"), None),
    ("segmentation", SAMPLES / "seg" / "pred", SAMPLES / "seg" / "gt", Convention(), 255),
)


def run_pairs(
    pred: Path,
    gt: Path,
    device: str,
    precision: str,
    convention: Convention | None = None,
    ignore_index: int | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric's value per pair of ``pred`` and ``gt``, as `lossctl eval` computes them."""
    names = list(METRICS)
    convention = convention or Convention()
    params = resolve_params(names, [], convention.param_defaults)
    config = EvalConfig(
        metrics=names,
        params=params,
        device=device,
        precision=precision,
        convention=convention,
        ignore_index=ignore_index,
    )
    results = evaluate(pair_folders(pred, gt).pairs, config)
    failed = [f"{result.pair.name}: {result.error}" for result in results if result.status != "ok"]
    if failed:
        raise RuntimeError(f"pairs failed on {device} ({precision}): {'; '.join(failed)}")
    return {result.pair.name: result.values for result in results}


def difference(metric: str, reference: float, value: float) -> float:
    """How far ``value`` is from ``reference``: dB for PSNR, relative otherwise; 0 where both are the
    same non-finite value (NaN: a metric that does not apply, inf: identical images' PSNR), inf
    where only one of them is non-finite."""
    if not (math.isfinite(reference) and math.isfinite(value)):
        same = (math.isnan(reference) and math.isnan(value)) or reference == value
        return 0.0 if same else math.inf
    if metric == "psnr":
        return abs(value - reference)
    return abs(value - reference) / max(abs(reference), 1e-12)


def agreement(args: argparse.Namespace) -> list[str]:
    """Every metric on the sample pairs: ``--device`` in float32 and float64 against the CPU in
    float64, the reference METRICS.md's 1e-5 is stated against. One row per case and precision:
    the metric furthest from the reference (as a share of its limit), and every metric over it."""
    lines = [
        f"| pairs | {args.device} precision | metrics | furthest from CPU float64 | over the limit |",
        "|---|---|---|---|---|",
    ]
    for label, pred, gt, convention, ignore_index in AGREEMENT_CASES:
        reference = run_pairs(pred, gt, "cpu", "float64", convention, ignore_index)
        metrics = sorted({metric for values in reference.values() for metric in values})
        for precision in ("float32", "float64"):
            measured = run_pairs(pred, gt, args.device, precision, convention, ignore_index)
            worst = {
                metric: max(
                    difference(metric, reference[name].get(metric, math.nan), measured[name].get(metric, math.nan))
                    for name in reference
                )
                for metric in metrics
            }
            share = {metric: worst[metric] / (1e-4 if metric == "psnr" else 1e-5) for metric in metrics}
            furthest = max(metrics, key=share.__getitem__)
            unit = "dB" if furthest == "psnr" else "rel"
            over = [f"{metric} ({worst[metric]:.2e})" for metric in metrics if share[metric] > 1]
            lines.append(
                f"| {label} | {precision} | {len(metrics)} | {furthest} {worst[furthest]:.2e} {unit} "
                f"| {', '.join(over) or 'none'} |"
            )
    return lines


LOSSES = {
    "l1_loss": lambda p, t: L.l1_loss(p, t),
    "mse_loss": lambda p, t: L.mse_loss(p, t),
    "rmse": lambda p, t: L.rmse(p, t),
    "charbonnier_loss": lambda p, t: L.charbonnier_loss(p, t),
    "smooth_l1_loss": lambda p, t: L.smooth_l1_loss(p, t),
    "huber_loss": lambda p, t: L.huber_loss(p, t),
    "log_cosh_loss": lambda p, t: L.log_cosh_loss(p, t),
    "quantile_loss": lambda p, t: L.quantile_loss(p, t),
    "bce_loss": lambda p, t: L.bce_loss(p, t),
    "dice_loss": lambda p, t: L.dice_loss(p, t),
    "tv_loss": lambda p, t: L.tv_loss(p),
    "weighted_tv_loss": lambda p, t: L.weighted_tv_loss(p, L.edge_aware_weights(t)),
    "psnr_loss": lambda p, t: L.psnr_loss(p, t),
    "ssim_loss": lambda p, t: L.ssim_loss(p, t),
}


def dtype_matrix(args: argparse.Namespace) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 64, 64, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    lines = ["| loss | " + " | ".join(str(d).removeprefix("torch.") for d in dtypes) + " |", "|---" * 5 + "|"]
    for name, loss in LOSSES.items():
        reference = loss(pred, target).item()
        cells = []
        for dtype in dtypes:
            # A copy: on the CPU, .to() may return pred itself.
            p = pred.to(args.device, dtype, copy=True).requires_grad_()
            try:
                value = loss(p, target.to(args.device, dtype))
                value.backward()
                finite = bool(torch.isfinite(p.grad).all())
                # Half inputs are rounded before the loss sees them, so compare with the rounded inputs.
                rounded = loss(pred.to(dtype).double(), target.to(dtype).double()).item()
                relative = abs(value.item() - rounded) / max(abs(rounded), 1e-12)
                cells.append(
                    f"{relative:.1e}{'' if finite else ' (grad not finite)'} [{value.dtype}]".replace(
                        "torch.", ""
                    )
                )
            except Exception as error:  # noqa: BLE001 - report, keep going
                cells.append(f"FAILS: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:80]}")
        lines.append(f"| {name} (ref {reference:.4g}) | " + " | ".join(cells) + " |")
    return lines


def device_waits(args: argparse.Namespace) -> list[str]:
    """Where `lossctl eval` makes the host wait for the GPU: every synchronizing operation (torch's
    sync debug mode), by source line, while evaluating sample_images/ with every metric, and 4
    generated 768x768 pairs under the matlab preset (SSIM downsampled by 3). A batch should wait
    only on the event of its one copy of values and note flags to the host, collected after the
    next batch has started (engine.start_batch), which this mode does not list: a line listed here
    is a wait that stalls the pipeline (the segmentation checks have a known one per batch; image
    pairs should list none). On a CPU nothing waits: the runs only show that they complete."""
    import tempfile
    import warnings
    from collections import Counter

    from throughput import make_pairs

    cuda = args.device.startswith("cuda")
    lines = ["| run | where | waits |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        pred, gt = make_pairs(Path(folder), 4, 768)
        runs = {
            "sample_images/, every metric": lambda: run_pairs(
                SAMPLES / "pred", SAMPLES / "gt", args.device, "float32"
            ),
            "sample_images/seg/, every metric": lambda: run_pairs(
                SAMPLES / "seg" / "pred", SAMPLES / "seg" / "gt", args.device, "float32", ignore_index=255
            ),
            "4 x 768x768, matlab preset": lambda: run_pairs(
                pred, gt, args.device, "float32", Convention("matlab")
            ),
        }
        for label, run in runs.items():
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pairs = run()
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
            places = Counter(
                f"{Path(w.filename).relative_to(REPO) if Path(w.filename).is_relative_to(REPO) else w.filename}:{w.lineno}"
                for w in caught
                if "synchroniz" in str(w.message)
            )
            lines += [f"| {label} | {place} | {count} |" for place, count in places.most_common()]
            lines.append(f"| {label}: {len(pairs)} pairs | all | {sum(places.values())} |")
    return lines + ([] if cuda else ["\n(a CPU dry run: nothing waits, the runs only complete)"])


# A test module that cannot be imported there (a test-only peer not carried) must not keep the
# cuda tests of the others from running.
COLLECT_ALL = ("--continue-on-collection-errors",)


def cuda_tests(args: argparse.Namespace) -> list[str]:
    """The test suite's tests marked ``cuda`` (skipped everywhere else): pytest's summary."""
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rsxX", "-p", "no:cacheprovider", *COLLECT_ALL],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = completed.stdout.strip().splitlines()
    verdict = "pass" if completed.returncode == 0 else f"FAIL (pytest exit {completed.returncode})"
    return [f"Tests marked cuda: {verdict}", "", "```", *lines[-40:], "```"]


def _run_script(script: str, *options: str) -> list[str]:
    """bench/SCRIPT with OPTIONS in this interpreter: its output, or why it failed."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *options], capture_output=True, text=True
    )
    if completed.returncode != 0:  # what it printed before failing is kept: figures it measured
        return [
            completed.stdout.strip(),
            f"{script} failed (exit {completed.returncode}): {completed.stderr.strip()[-600:]}",
        ]
    return [completed.stdout.strip()]


def against_peers(args: argparse.Namespace) -> list[str]:
    """bench/bench.py: lossctl, the decode floor and the peers on ``--pairs`` pairs of ``--size``."""
    return _run_script(
        "bench.py",
        *("--device", args.device, "--pairs", str(args.pairs), "--size", str(args.size)),
        *("--peer-pairs", str(min(args.peer_pairs, args.pairs)), "--repeat", "1"),
        *("--floor-sample", str(args.floor_sample)),
        *("--workers", ",".join(str(count) for count in _fewer_workers())),
        *("--head-start", f"1,{args.pairs}"),  # none, and every pair (the default: at most 1,024)
    )


def _fewer_workers() -> list[int]:
    """Decoder counts to time beside the default (one per core): one core left to the main thread,
    which takes, stacks and uploads every image, and half the cores."""
    cores = os.cpu_count() or 1
    return sorted({count for count in (cores - 1, cores // 2) if 1 <= count < cores}, reverse=True)


def breakdown(args: argparse.Namespace) -> list[str]:
    """bench/breakdown.py on the device: upload and each metric per pair, batches of 32."""
    return _run_script("breakdown.py", "--device", args.device, "--pairs", "32", "--size", str(args.size))


def large_images(args: argparse.Namespace) -> list[str]:
    """bench/throughput.py on ``--large-pairs`` pairs of ``--large-size``."""
    header = [
        "| workload | device | cores | decode floor | lossctl eval | ratio |",
        "|---|---|---|---|---|---|",
    ]
    return header + _run_script(
        "throughput.py",
        *("--device", args.device, "--pairs", str(args.large_pairs), "--size", str(args.large_size)),
        *("--repeat", "1", "--floor-sample", str(max(1, args.floor_sample // 4))),
    )


SECTIONS = {
    "agreement": ("CPU vs CUDA agreement", agreement),
    "dtypes": ("CUDA dtype matrix", dtype_matrix),
    "waits": ("Where the host waits for the GPU", device_waits),
    "tests": ("The tests marked cuda (pytest -m cuda)", cuda_tests),
    "breakdown": ("Where the time goes on the device (bench/breakdown.py)", breakdown),
    "peers": ("Against the decode floor and the peers (bench/bench.py)", against_peers),
    "large": ("Large images (bench/throughput.py)", large_images),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try this script without a GPU")
    parser.add_argument("--pairs", type=int, default=2000, help="pairs of --size for the peers section")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--peer-pairs", type=int, default=200, help="pairs each peer computes")
    parser.add_argument("--large-pairs", type=int, default=200, help="pairs of --large-size")
    parser.add_argument("--large-size", type=int, default=2048)
    parser.add_argument(
        "--floor-sample", type=int, default=200, help="pairs the floor is timed on (a quarter for large ones)"
    )
    args = parser.parse_args()
    chosen = args.sections or list(SECTIONS)
    if unknown := set(chosen) - set(SECTIONS):
        parser.error(f"unknown section {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check.py needs CUDA; none is available here (--device cpu tries the script itself)")
    name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "the CPU (a dry run)"
    )
    print(f"# GPU checks on {name} (torch {torch.__version__}), {time.strftime('%Y-%m-%d')}\n")
    for key in chosen:
        title, section = SECTIONS[key]
        start = time.perf_counter()
        lines = section(args)
        print(f"## {title} ({time.perf_counter() - start:.0f} s)\n")
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
