"""Every check that needs an NVIDIA GPU, in one run: run it as is on a machine with CUDA.

1. CPU vs CUDA agreement of `lossctl eval` on sample_images/ (every metric, float32 and float64):
   the largest relative difference per metric, against METRICS.md's 1e-5 (PSNR: 1e-4 dB absolute).
2. The CUDA dtype matrix of lossctl.losses: every loss in float32, float64, float16 and bfloat16,
   forward and backward, against a float64 CPU reference.
3. GPU throughput of `lossctl eval` (bench/throughput.py) on 2,000 pairs of 512x512 and 200 of 2048x2048.
4. bench/bench.py on the GPU: lossctl against the decode floor and the peers, with their agreement.

    PYTHONPATH=. python bench/gpu_check.py | tee gpu_results.md
    PYTHONPATH=. python bench/gpu_check.py agreement dtypes   # some sections only
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import torch

from lossctl import losses as L
from lossctl.engine import EvalConfig, evaluate
from lossctl.io import pair_folders
from lossctl.metrics import METRICS, resolve_params

REPO = Path(__file__).resolve().parent.parent


def run_samples(device: str, precision: str) -> dict[str, dict[str, float]]:
    names = list(METRICS)
    config = EvalConfig(metrics=names, params=resolve_params(names, []), device=device, precision=precision)
    pairs = pair_folders(REPO / "sample_images" / "pred", REPO / "sample_images" / "gt").pairs
    return {result.pair.name: result.values for result in evaluate(pairs, config)}


def agreement() -> list[str]:
    lines = ["| precision | metric | max difference CPU vs CUDA | limit | ok |", "|---|---|---|---|---|"]
    for precision in ("float32", "float64"):
        cpu, cuda = run_samples("cpu", precision), run_samples("cuda", precision)
        for metric in METRICS:
            worst = 0.0
            for name in cpu:
                a, b = cpu[name][metric], cuda[name][metric]
                if math.isinf(a) and a == b:
                    continue
                difference = abs(a - b) if metric == "psnr" else abs(a - b) / max(abs(a), 1e-12)
                worst = max(worst, difference)
            limit = 1e-4 if metric == "psnr" else 1e-5
            kind = "dB" if metric == "psnr" else "rel"
            lines.append(
                f"| {precision} | {metric} | {worst:.2e} {kind} | {limit:g} | {'yes' if worst <= limit else 'NO'} |"
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


def dtype_matrix() -> list[str]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 64, 64, generator=generator, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(target.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    lines = ["| loss | " + " | ".join(str(d).removeprefix("torch.") for d in dtypes) + " |", "|---" * 5 + "|"]
    for name, loss in LOSSES.items():
        reference = loss(pred, target).item()
        cells = []
        for dtype in dtypes:
            p = pred.to("cuda", dtype).requires_grad_()
            try:
                value = loss(p, target.to("cuda", dtype))
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
                cells.append(f"FAILS: {type(error).__name__}")
        lines.append(f"| {name} (ref {reference:.4g}) | " + " | ".join(cells) + " |")
    return lines


def throughput() -> list[str]:
    lines = [
        "| workload | device | cores | decode floor | lossctl eval | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for pairs, size in ((2000, 512), (200, 2048)):
        completed = subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "throughput.py"),
                "--pairs",
                str(pairs),
                "--size",
                str(size),
                "--device",
                "cuda",
            ],
            capture_output=True,
            text=True,
        )
        lines.append(
            completed.stdout.strip()
            or f"| {pairs} x {size} | cuda | failed: {completed.stderr.strip()[-200:]} |"
        )
    return lines


def against_peers() -> list[str]:
    """bench/bench.py on the GPU: lossctl, the decode floor and the peers on 2,000 pairs of 512x512."""
    command = [sys.executable, str(REPO / "bench" / "bench.py"), "--device", "cuda", "--pairs", "2000"]
    completed = subprocess.run(
        [*command, "--peer-pairs", "200", "--repeat", "1"], capture_output=True, text=True
    )
    return [completed.stdout.strip() or f"failed: {completed.stderr.strip()[-300:]}"]


SECTIONS = {
    "agreement": ("CPU vs CUDA agreement", agreement),
    "dtypes": ("CUDA dtype matrix", dtype_matrix),
    "throughput": ("Throughput", throughput),
    "peers": ("Against the peers (bench/bench.py)", against_peers),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    chosen = parser.parse_args().sections or list(SECTIONS)
    if unknown := set(chosen) - set(SECTIONS):
        parser.error(f"unknown section {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs CUDA; none is available here")
    print(f"# GPU checks on {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    for key in chosen:
        title, section = SECTIONS[key]
        print(f"## {title}\n")
        print("\n".join(section()) + "\n", flush=True)


if __name__ == "__main__":
    main()
