"""The ``lossctl`` command line: parse options, call the engine, render the report.

Heavy modules (torch, pandas) are imported inside the commands that need them, so ``--help``
and ``lossctl metrics`` start quickly.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import LossctlError
from .metrics import METRICS, parse_metric_names, resolve_params

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PAIRS_FAILED = 0, 1, 2, 3
PER_IMAGE_AUTO_LIMIT = 20

app = typer.Typer(
    name="lossctl",
    help="Image losses and quality metrics (PSNR, SSIM, L1, ...) for folders of predictions and ground truth.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


class Precision(str, Enum):
    float32 = "float32"
    float64 = "float64"


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    stderr.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lossctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
) -> None:
    """Image losses and quality metrics for folders of predictions and ground truth."""


class _LazyProgress:
    """A rich progress bar on stderr that appears only once work has run for over a second."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.started_at = total, enabled, time.monotonic()
        self.done, self.progress, self.task = 0, None, None

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        if self.progress is None and time.monotonic() - self.started_at > 1.0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("evaluating", total=self.total, completed=self.done - count)
        if self.progress is not None:
            self.progress.advance(self.task, count)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


EVAL_EPILOG = """[b]Examples[/b]

  lossctl eval sample_images/pred sample_images/gt
  lossctl eval pred/ gt/ --metrics psnr,ssim,l1 --csv report.csv
  lossctl eval pred/ gt/ --param charbonnier.eps=1e-4 --format json > report.json

Exit codes: 0 every pair computed; 3 some pairs failed or were unmatched (the report is still complete); 2 usage or input error."""


@app.command("eval", epilog=EVAL_EPILOG)
def eval_command(
    pred: Annotated[
        Path, typer.Argument(help="Folder of predictions (searched recursively).", show_default=False)
    ],
    gt: Annotated[
        Path,
        typer.Argument(
            help="Folder of ground-truth images, paired by relative path without extension.",
            show_default=False,
        ),
    ],
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            "-m",
            metavar="NAMES",
            help="Comma-separated metric names (see [b]lossctl metrics[/b]); default: all.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="METRIC.KEY=VALUE",
            help="Metric parameter METRIC.KEY=VALUE, e.g. charbonnier.eps=1e-4; repeatable.",
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            metavar="DIR",
            help="Folder of grayscale weight maps for weighted_tv, paired by name.",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option("--device", metavar="DEVICE", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", help="Pairs per batch (pairs are grouped by shape).")
    ] = 16,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="Decoding threads \\[default: number of cores].",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option("--precision", help="Compute in float32, or float64 for exact reference work."),
    ] = Precision.float32,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the per-pair report as CSV to FILE.", metavar="FILE")
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write rows, summary and parameters as JSON to FILE.", metavar="FILE"),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="What goes to stdout.")
    ] = OutputFormat.table,
    per_image: Annotated[
        bool | None,
        typer.Option(
            "--per-image/--no-per-image",
            help=f"Show per-image rows \\[default: when at most {PER_IMAGE_AUTO_LIMIT} pairs].",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error.")] = False,
) -> None:
    """Compute every loss and quality metric for each prediction / ground-truth pair."""
    try:
        code = _run_eval(
            pred,
            gt,
            metrics,
            param or [],
            weights,
            device,
            batch_size,
            workers,
            precision.value,
            csv_path,
            json_path,
            output_format,
            per_image,
            quiet,
        )
    except LossctlError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except Exception as error:
        if debug:
            raise
        raise _fail(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for details)", EXIT_INTERNAL
        ) from None
    raise typer.Exit(code)


def _check_output_path(path: Path | None, option: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise LossctlError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise LossctlError(f"{option} {path}: folder {path.parent} does not exist")


def _run_eval(
    pred_root,
    gt_root,
    metrics_text,
    param_overrides,
    weights_root,
    device,
    batch_size,
    workers,
    precision,
    csv_path,
    json_path,
    output_format,
    per_image,
    quiet,
) -> int:
    names = parse_metric_names(metrics_text)
    params = resolve_params(names, param_overrides)
    if weights_root is not None and "weighted_tv" not in names:
        raise LossctlError("--weights is only used by weighted_tv, which is not among the selected metrics")
    _check_output_path(csv_path, "--csv")
    _check_output_path(json_path, "--json")

    from . import io
    from .engine import EvalConfig, evaluate, resolve_device

    pairing = io.pair_folders(pred_root, gt_root, weights_root)
    config = EvalConfig(
        metrics=names,
        params=params,
        device=device,
        batch_size=batch_size,
        workers=workers if workers is not None else (os.cpu_count() or 1),
        precision=precision,
        with_weights=weights_root is not None,
    )
    resolved_device = resolve_device(device)
    progress = _LazyProgress(len(pairing.pairs), enabled=not quiet and stderr.is_terminal)
    try:
        results = evaluate(pairing.pairs, config, on_progress=progress.advance)
    finally:
        progress.close()

    import torch

    from . import report

    frame = report.results_frame(results, names)
    summary = report.summarize(frame, names)
    info = report.ReportInfo(
        pred_root=str(pred_root),
        gt_root=str(gt_root),
        metrics=names,
        params=params,
        device=str(resolved_device),
        precision=precision,
        lossctl_version=__version__,
        torch_version=torch.__version__,
        skipped_files=len(pairing.skipped),
    )
    show_per_image = per_image if per_image is not None else len(frame) <= PER_IMAGE_AUTO_LIMIT
    for path, text in (
        (csv_path, lambda: report.to_csv(frame)),
        (json_path, lambda: report.to_json(frame, summary, info)),
    ):
        if path is not None:
            try:
                report.write_atomic(path, text())
            except OSError as error:
                raise LossctlError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        if output_format == OutputFormat.table:
            report.render_table(Console(), frame, summary, info, show_per_image)
        elif output_format == OutputFormat.csv:
            sys.stdout.write(report.to_csv(frame))
        elif output_format == OutputFormat.json:
            sys.stdout.write(report.to_json(frame, summary, info))
        else:
            sys.stdout.write(report.to_markdown(frame, summary, info, show_per_image))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `lossctl eval ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    counts = report.status_counts(frame)
    return EXIT_OK if counts["ok"] == counts["pairs"] else EXIT_PAIRS_FAILED


class MetricsFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("metrics")
def metrics_command(
    output_format: Annotated[
        MetricsFormat, typer.Option("--format", help="table or json.")
    ] = MetricsFormat.table,
) -> None:
    """List every metric with its better direction, default parameters and definition."""
    if output_format == MetricsFormat.json:
        import json

        listing = [
            {"name": m.name, "better": m.better, "params": m.defaults, "definition": m.definition}
            for m in METRICS.values()
        ]
        typer.echo(json.dumps(listing, indent=2))
        return
    table = Table(title="lossctl metrics (names as in CSV/JSON columns and --metrics)", title_justify="left")
    for header in ("metric", "better", "parameters", "definition"):
        table.add_column(header, overflow="fold")
    for metric in METRICS.values():
        params = ", ".join(f"{key}={value:g}" for key, value in metric.defaults.items())
        table.add_row(metric.name, metric.better, params or "—", metric.definition)
    Console().print(table)


def main() -> None:
    app()
