"""The ``lossctl`` command line: parse options, call the library, render the result.

Heavy modules (torch, pandas) are imported inside the commands that need them, so ``--help``
and ``lossctl metrics`` start quickly.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .conventions import resolve_convention
from .errors import LossctlError
from .metrics import METRICS, parse_metric_names, resolve_params
from .safe_text import printable
from .signals import handled

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PAIRS_FAILED = 0, 1, 2, 3
PER_IMAGE_AUTO_LIMIT = 20

# typer.BadParameter is Click's; its module is click.exceptions, or the copy newer Typers carry.
_click_errors = sys.modules[typer.BadParameter.__module__]


class _OneLineUsageErrors(TyperGroup):
    """Click reports a bad command line (an unknown option, a value that does not parse, a missing
    argument) as a usage block in a box; lossctl says it in one line, as it does every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            outcome = super().main(args, prog_name, complete_var, False, **extra)
        except _click_errors.ClickException as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            # Typer 0.29 validates choices through pydantic, whose "Value error, " leaks into the text.
            message = " ".join(error.format_message().split()).replace(": Value error, ", ": ")
            sys.exit(_fail(f"{message}{hint}", error.exit_code).exit_code)
        except typer.Abort:
            sys.exit(_fail("aborted", EXIT_INTERNAL).exit_code)
        # Without standalone mode Click returns the code of a typer.Exit, or None when a command ends.
        sys.exit(outcome if isinstance(outcome, int) else EXIT_OK)


app = typer.Typer(
    cls=_OneLineUsageErrors,
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


class CheckFormat(str, Enum):
    table = "table"
    markdown = "markdown"


class MetricsFormat(str, Enum):
    table = "table"
    json = "json"


class PredKind(str, Enum):
    auto = "auto"
    probs = "probs"
    logits = "logits"


class Precision(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Decoder(str, Enum):
    auto = "auto"
    threads = "threads"
    processes = "processes"


def _batch_size(text: str) -> int | None:
    """``--batch-size``: a positive integer, or ``auto`` (``None``)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise LossctlError(f"--batch-size must be a positive integer or auto; got {text!r}") from None
    if value < 1:
        raise LossctlError(f"--batch-size must be at least 1; got {value}")
    return value


# Options shared by the commands that evaluate folders (eval, check).
PredArgument = Annotated[
    Path,
    typer.Argument(metavar="PRED", help="Folder of predictions (searched recursively).", show_default=False),
]
GtArgument = Annotated[
    Path,
    typer.Argument(
        metavar="GT",
        help="Folder of ground-truth images, paired by relative path without extension.",
        show_default=False,
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="METRIC.KEY=VALUE",
        help="Metric parameter METRIC.KEY=VALUE, e.g. charbonnier.eps=1e-4; repeatable.",
        rich_help_panel="Metrics",
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        metavar="DIR",
        help="Folder of grayscale weight maps for weighted_tv, paired by name.",
        rich_help_panel="Metrics",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="auto (CUDA when available), cpu, cuda or cuda:N.",
        rich_help_panel="Computing",
    ),
]
BatchSizeOption = Annotated[
    str,
    typer.Option(
        "--batch-size",
        metavar="N|auto",
        help="Pairs per batch (pairs are grouped by shape); auto: 64 on a GPU, capped by its free memory, 16 on a CPU.",
        rich_help_panel="Computing",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        metavar="N",
        help="Decoding threads or processes (on a CPU, threads decode and compute) \\[default: number of cores].",
        show_default=False,
        rich_help_panel="Computing",
    ),
]
DecoderOption = Annotated[
    Decoder,
    typer.Option(
        "--decoder",
        help="Decode in threads or processes; auto: processes with more than 2 workers and 8 pairs per worker.",
        rich_help_panel="Computing",
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Compute in float32, or float64 for exact reference work.",
        rich_help_panel="Computing",
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset",
        metavar="NAME",
        help="Convention: skimage (default: RGB, Wang et al. SSIM), basicsr (Y channel, crop --scale), matlab (SSIM downsampled as ssim.m).",
        show_default=False,
        rich_help_panel="Conventions",
    ),
]
ScaleOption = Annotated[
    int | None,
    typer.Option(
        "--scale",
        metavar="N",
        help="Super-resolution scale; --preset basicsr crops N pixels.",
        rich_help_panel="Conventions",
    ),
]
YChannelOption = Annotated[
    bool | None,
    typer.Option(
        "--y-channel/--rgb",
        help="Compute on the BT.601 luma of RGB images, as BasicSR and MATLAB's rgb2ycbcr \\[default: the preset's].",
        show_default=False,
        rich_help_panel="Conventions",
    ),
]
CropBorderOption = Annotated[
    int | None,
    typer.Option(
        "--crop-border",
        metavar="N",
        help="Drop N pixels on every side before every metric \\[default: the preset's].",
        show_default=False,
        rich_help_panel="Conventions",
    ),
]
PredKindOption = Annotated[
    PredKind,
    typer.Option(
        "--pred-kind",
        help="Segmentation .npy predictions hold probabilities or logits (auto: probabilities if they sum to 1).",
        rich_help_panel="Segmentation",
    ),
]
IgnoreIndexOption = Annotated[
    int | None,
    typer.Option(
        "--ignore-index",
        metavar="N",
        help="Label of pixels that segmentation metrics skip (VOC: 255).",
        rich_help_panel="Segmentation",
    ),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        metavar="T",
        help="Binary masks: iou counts prediction >= T as foreground \\[default: 0.5].",
        show_default=False,
        rich_help_panel="Metrics",
    ),
]
MaxPixelsOption = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        metavar="N",
        help="Largest image decoded, in pixels (a decompression-bomb guard) \\[default: Pillow's, 89,478,485].",
        show_default=False,
        rich_help_panel="Computing",
    ),
]
CsvOption = Annotated[
    Path | None,
    typer.Option(
        "--csv", metavar="FILE", help="Write the per-pair report as CSV to FILE.", rich_help_panel="Output"
    ),
]
JsonOption = Annotated[
    Path | None,
    typer.Option(
        "--json",
        metavar="FILE",
        help="Write rows, summary and parameters as JSON to FILE.",
        rich_help_panel="Output",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel="Output")
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Show the traceback of an internal error.", rich_help_panel="Output")
]

MapMetricOption = Annotated[
    str,
    typer.Option(
        "--map-metric",
        metavar="NAME",
        help="Heat map of l1 (|p - g| averaged over channels) or ssim (the SSIM map); its mean is the pair's reported value.",
        rich_help_panel="Pictures",
    ),
]
MapScaleOption = Annotated[
    str,
    typer.Option(
        "--map-scale",
        metavar="shared|pair",
        help="One colour scale for every heat map (colours comparable between pairs), or one per pair.",
        rich_help_panel="Pictures",
    ),
]
HtmlOption = Annotated[
    Path | None,
    typer.Option(
        "--html",
        metavar="FILE",
        help="Write a self-contained HTML report (summary, histograms, gallery worst first) to FILE.",
        rich_help_panel="Pictures",
    ),
]
HtmlImagesOption = Annotated[
    str,
    typer.Option(
        "--html-images",
        metavar="embed|files",
        help="Pictures inside the HTML file (data URIs), or as PNG files in a folder beside it (report.html: report_files/).",
        rich_help_panel="Pictures",
    ),
]
HtmlLimitOption = Annotated[
    int,
    typer.Option(
        "--html-limit",
        metavar="N",
        help="Pairs in the HTML gallery (the worst N; the summary covers all pairs).",
        rich_help_panel="Pictures",
    ),
]


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    # A silenced rank still prints, with its name, an error no other rank can report: its own,
    # before or after its share (its quiet stderr console would drop it).
    console, prefix = (Console(stderr=True), f"{_silenced_rank}: ") if _silenced_rank else (stderr, "")
    console.print(f"error: {prefix}{printable(message)}", style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, ``kill``) stops a command as Ctrl-C does: the decoding processes
    are closed and the finished rows kept. By default it killed the main process alone, and the
    workers (children of multiprocessing's fork server) lived on, holding shared memory and the
    output pipe, so whoever read lossctl's output never saw its end. Not under torchrun, whose
    SIGTERM to every rank must not wait for one still in a collective operation."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        yield
        return
    with handled(signal.SIGTERM, _interrupt):
        yield


@contextmanager
def _reported_errors(debug: bool) -> Iterator[None]:
    """Turn every error into one line on stderr and its exit code; never a traceback (unless --debug)."""
    try:
        with _terminate_as_interrupt():
            yield
    except LossctlError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        if debug:
            raise
        message = f"internal error: {type(error).__name__}: {error} (rerun with --debug for details)"
        raise _fail(message, EXIT_INTERNAL) from None


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
    # Pillow warns about damaged metadata it can read past; a damaged file that cannot be read is
    # reported in its pair's row, so the warnings would only repeat it as multi-line noise.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    # A file name that is not UTF-8 (its bytes held as lone surrogates) is printed as its own bytes,
    # as the report files write it (atomic.FILE_NAME_BYTES): a strict UTF-8 stdout (Python's under
    # a UTF-8 locale other than C.UTF-8) made every report of such a pair an internal error.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    if os.environ.get("RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") != "1":
        _silence_this_rank()


_silenced_rank = ""  # "rank R of W" in a torchrun rank other than 0


def _silence_this_rank() -> None:
    """Under torchrun only rank 0 speaks: it reports for every rank, errors of their shares included.
    A rank still prints, naming itself, an error that stops it outside its share (see :func:`_fail`)."""
    global _silenced_rank
    _silenced_rank = f"rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}"
    stderr.quiet = True
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _LazyProgress:
    """A rich progress bar on stderr that appears only once work has run for over a second."""

    def __init__(self, total: int, enabled: bool, description: str = "evaluating"):
        self.total, self.enabled, self.started_at = total, enabled, time.monotonic()
        self.description = description
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
            self.task = self.progress.add_task(
                self.description, total=self.total, completed=self.done - count
            )
        if self.progress is not None:
            self.progress.advance(self.task, count)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[..., Callable[[int], None]]]:
    bars: list[_LazyProgress] = []

    def start(total: int, description: str = "evaluating") -> Callable[[int], None]:
        bars.append(_LazyProgress(total, enabled=not quiet and stderr.is_terminal, description=description))
        return bars[-1].advance

    try:
        yield start
    finally:
        for bar in bars:
            bar.close()


def _check_output_path(path: Path | None, option: str) -> None:
    if path is None:
        return
    if path.is_dir():
        raise LossctlError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise LossctlError(f"{option} {path}: folder {path.parent} does not exist")


def _check_output_paths(
    outputs: dict[str, Path | None], inputs: Sequence[Path] = (), folders: dict[str, Path | None] | None = None
) -> None:
    """:func:`_check_output_path` of each ``{option: path}``, and that no two name the same file, nor
    an input report (or a CSV's ``.meta.json`` sidecar, which is written and read beside it), nor an
    output folder (``--maps``): one would silently replace the other (``--csv r.csv --html r.csv``).
    A device or a pipe (``/dev/stdout``) is written into, not replaced, and may take several."""
    from .atomic import is_stream
    from .report import sidecar_path

    outputs = dict(outputs)
    if (csv_path := outputs.get("--csv")) is not None and not is_stream(csv_path):
        outputs["--csv's sidecar"] = sidecar_path(csv_path)
    inputs = [*inputs, *(sidecar_path(path) for path in inputs if path.suffix.lower() == ".csv")]
    named = {os.path.realpath(path): "input report" for path in inputs}
    for option, folder in (folders or {}).items():
        if folder is not None:
            named.setdefault(os.path.realpath(folder), option)
    for option, path in outputs.items():
        _check_output_path(path, option)  # a folder is refused there
        if path is None or is_stream(path):
            continue
        same = named.setdefault(os.path.realpath(path), option)
        if same == "input report":
            raise LossctlError(f"{option} {path} is an input report: writing it would replace what was read")
        if same.startswith("--maps"):
            raise LossctlError(f"{option} {path} is the {same} folder; give each output its own name")
        if same != option:
            raise LossctlError(f"{same} and {option} name the same file {path}; give each report its own")


def _write(path: Path | None, write: Callable[[TextIO], object]) -> None:
    """Write a report file atomically; ``write(stream)`` writes its content (so a large CSV is never
    held in memory whole)."""
    if path is None:
        return
    from .atomic import write_atomic

    try:
        write_atomic(path, write)
    except OSError as error:
        raise LossctlError(f"cannot write {path}: {error.strerror or error}") from None


def _prepare_maps_dir(path: Path | None, inputs: Sequence[Path | None] = ()) -> None:
    """Create the ``--maps`` folder (and its parents) and check that it can be written and is not
    one of the ``inputs`` folders or inside one: a map is written under each pair's own name, so it
    would replace the picture itself (or be read as a pair by the next run)."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise LossctlError(f"--maps {path} is a file; give a folder")
    _refuse_inside_inputs(path, f"--maps {path}", inputs, "its maps would replace the pictures")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LossctlError(f"cannot create --maps folder {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LossctlError(f"--maps folder {path} is not writable")


def _refuse_inside_inputs(path: Path, what: str, inputs: Sequence[Path | None], why: str) -> None:
    """A usage error where the folder ``path`` is one of the ``inputs`` folders or inside one."""
    resolved = path.resolve()
    for folder in (Path(folder).resolve() for folder in inputs if folder is not None):
        if resolved == folder or folder in resolved.parents:
            raise LossctlError(f"{what} is the input folder {folder} or inside it: {why}")


@dataclass(frozen=True)
class _Pictures:
    """What ``--maps``, ``--html`` and their options ask for."""

    maps_dir: Path | None
    html_path: Path | None
    metric: str
    scale_mode: str
    limit: int
    sort_metric: str | None = None
    images: str = "embed"

    @property
    def wanted(self) -> bool:
        return self.maps_dir is not None or self.html_path is not None

    @property
    def files_dir(self) -> Path | None:
        """``--html-images files``: the folder ``NAME_files/`` beside the page; else None."""
        if self.html_path is None or self.images == "embed":
            return None
        return self.html_path.with_name(f"{self.html_path.stem}_files")

    def image_store(self):
        """Where the page's pictures go: embedded, or ``--html-images files``: ``NAME_files/`` beside it."""
        from .gallery import ImageStore

        if (folder := self.files_dir) is None:
            return ImageStore()
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise LossctlError(
                f"cannot create {folder} for --html-images files: {error.strerror or error}"
            ) from None
        return ImageStore(folder, folder.name)

    def check(self, metrics: Sequence[str] | None, maps: bool = True) -> None:
        """Check the options; with ``metrics`` (the run's), also that their metrics are computed
        (the map metric's only where ``maps`` are drawn: segmentation pairs have none)."""
        from .maps import check_map_metric, check_map_scale

        check_map_metric(self.metric, metrics if maps else None)
        check_map_scale(self.scale_mode)
        if self.limit < 1:
            raise LossctlError(f"--html-limit must be at least 1; got {self.limit}")
        if self.images not in ("embed", "files"):
            raise LossctlError(f"--html-images {self.images}: choose embed or files")
        sort = self.sort_metric
        if sort is not None and sort not in METRICS:
            raise LossctlError(f"--html-sort {sort}: unknown metric; valid metrics: {', '.join(METRICS)}")
        if sort is not None and metrics is not None and sort not in metrics:
            raise LossctlError(f"--html-sort {sort}: not among the metrics computed ({', '.join(metrics)})")


def _may_draw_maps(pictures: _Pictures, names: Sequence[str], pred: Path, gt: Path) -> bool:
    """Whether the run's heat maps need their metric computed, checked before the run: not where
    every pair is a segmentation pair (they have no maps; ``-m ce,iou --html`` is a whole page)."""
    if not pictures.wanted or pictures.metric in names:
        return True
    from .io import pair_folders

    pairs = pair_folders(pred, gt).pairs
    return not pairs or not all(pair.is_segmentation for pair in pairs)


def _joined(metrics: list[str] | None) -> str | None:
    """``-m psnr,ssim`` and ``-m psnr -m ssim`` alike (a repeated -m kept only the last)."""
    return ",".join(metrics) if metrics else None


def _threshold_override(threshold: float | None, names: list[str], params: Sequence[str] | None) -> list[str]:
    """``--threshold T`` is ``--param iou.threshold=T`` (giving both is a usage error: one of the
    two was kept without a word)."""
    if threshold is None:
        return []
    if "iou" not in names:
        raise LossctlError("--threshold is used by iou, which is not among the selected metrics")
    if any(text.partition("=")[0].strip() == "iou.threshold" for text in params or []):
        raise LossctlError("--threshold and --param iou.threshold set the same value; give one")
    return [f"iou.threshold={threshold!r}"]


def _evaluate_or_keep_partial(
    request, quiet: bool, csv_path: Path | None, json_path: Path | None, shard=None
):
    """Run the evaluation (this shard of it, or this rank's under torchrun, where the other ranks
    exit 0 once rank 0 has their rows); on Ctrl-C keep what is done as ``FILE.partial`` reports
    and exit 130."""
    from . import distributed
    from .run import RunInterrupted, run_evaluation

    launch = distributed.from_environment()
    if launch is not None and shard is not None:
        raise LossctlError("--shard is for separate jobs; under torchrun the ranks already share the pairs")
    try:
        with _progress(quiet) as on_start:
            if launch is None:
                return run_evaluation(request, on_start, shard)
            evaluation = distributed.run_ranks(request, launch, on_start)
            if evaluation is None:
                raise typer.Exit(EXIT_OK)
            return evaluation
    except RunInterrupted as interrupted:
        partial = [_partial_path(path) for path in (csv_path, json_path)]
        _write_reports(*partial, interrupted.evaluation)
        kept = ", ".join(str(path) for path in partial if path)
        done = f"interrupted after {len(interrupted.evaluation.frame)} of {interrupted.total} pairs"
        raise _fail(done + (f"; partial report kept in {kept}" if kept else ""), 130) from None


def _partial_path(path: Path | None) -> Path | None:
    """Where an interrupted run keeps its report: ``FILE.partial``; a stream (``/dev/stdout``, a
    FIFO) gets the partial rows itself."""
    from .atomic import is_stream

    if path is None or is_stream(path):
        return path
    return Path(f"{path}.partial")


def _write_complete_reports(csv_path: Path | None, json_path: Path | None, evaluation) -> None:
    """:func:`_write_reports` of a finished run, and the ``FILE.partial`` reports an interrupted run
    left before it removed: beside the complete report they only misled."""
    from . import report

    _write_reports(csv_path, json_path, evaluation)
    for path in (csv_path, json_path):
        if (partial := _partial_path(path)) is None or partial == path:  # none, or a stream
            continue
        for stale in (partial, report.sidecar_path(partial)):
            if stale.is_file():
                stale.unlink(missing_ok=True)


def _write_reports(csv_path: Path | None, json_path: Path | None, evaluation) -> None:
    """``--csv`` (with its ``.meta.json`` sidecar of parameters and summary, unless the CSV goes to a
    stream such as ``/dev/stdout``, where a sidecar beside it has no place) and ``--json``."""
    from . import report
    from .atomic import is_stream

    frame, summary, info = evaluation.frame, evaluation.summary, evaluation.info
    if csv_path is not None:
        _write(csv_path, lambda stream: report.to_csv(frame, stream))
    if csv_path is not None and not is_stream(csv_path):
        _write(
            report.sidecar_path(csv_path),
            lambda stream: stream.write(report.to_json(frame, summary, info, rows=False)),
        )
    _write(json_path, lambda stream: stream.write(report.to_json(frame, summary, info)))


class _StdoutConsole(Console):
    """rich's Console for stdout, leaving a closed pipe to :func:`_stdout_reader_may_leave`: rich
    itself exits 1 there, which README gives to internal errors, and the run's code is lost."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


@contextmanager
def _stdout_reader_may_leave() -> Iterator[None]:
    """``lossctl ... | head`` closes the pipe early: that is the reader's choice, not an error."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _eval_pictures(evaluation, request, quiet: bool, pictures: _Pictures) -> None:
    """``eval --maps/--html``: draw the heat maps and write the page."""
    from . import gallery, html_report
    from .run import eval_config

    frame, info = evaluation.frame, evaluation.info
    # A run keeps only the metrics that apply to its pairs; segmentation pairs have no heat map, so
    # a run of them alone needs no map metric, and its gallery is sorted by its first metric.
    has_maps = pictures.metric in info.metrics  # not so for a run of segmentation pairs alone
    pictures.check(info.metrics, maps=has_maps)
    sort_metric = pictures.sort_metric or (pictures.metric if has_maps else info.metrics[0])
    config = eval_config(replace(request, metrics=info.metrics, params=info.params))
    names = gallery.worst_first(frame, sort_metric)[: pictures.limit] if pictures.html_path else []
    with _progress(quiet) as on_start:
        drawn = gallery.eval_pictures(
            frame,
            info.metrics,
            config,
            pictures.metric,
            pictures.scale_mode,
            pictures.maps_dir,
            names,
            on_start,
            pictures.image_store(),
        )
    if pictures.html_path is not None:
        page = html_report.eval_page(
            frame, evaluation.summary, info, drawn.cards, sort_metric, pictures.limit, pictures.metric,
            drawn.scale, pictures.scale_mode,
        )  # fmt: skip
        _write(pictures.html_path, lambda stream: stream.write(html_report.render_page(page)))


# Options of the commands that print an evaluation's report (eval, merge).
ReportFormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="What goes to stdout.", rich_help_panel="Output")
]
PerImageOption = Annotated[
    bool | None,
    typer.Option(
        "--per-image/--no-per-image",
        help=f"Show per-image rows \\[default: when at most {PER_IMAGE_AUTO_LIMIT} pairs].",
        show_default=False,
        rich_help_panel="Output",
    ),
]


EVAL_EPILOG = """[b]Examples[/b]

  lossctl eval sample_images/pred sample_images/gt
  lossctl eval pred/ gt/ --metrics psnr,ssim,l1 --csv report.csv
  lossctl eval pred/ gt/ --param charbonnier.eps=1e-4 --format json > report.json
  lossctl eval pred/ gt/ --maps maps/ --html report.html
  lossctl eval pred/ gt/ --shard 0/2 --json shard-0.json
  torchrun --nproc-per-node 4 -m lossctl eval pred/ gt/ --csv report.csv

Exit codes: 0 every pair computed; 3 some pairs failed or were unmatched (the report is still complete); 2 usage or input error; 1 internal error; 130 interrupted (finished rows kept as FILE.partial)."""


@app.command("eval", epilog=EVAL_EPILOG)
def eval_command(
    pred: PredArgument,
    gt: GtArgument,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            "-m",
            metavar="NAMES",
            help="Comma-separated metric names (see [b]lossctl metrics[/b]), or -m repeated; default: all.",
            rich_help_panel="Metrics",
        ),
    ] = None,
    param: ParamOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = "auto",
    workers: WorkersOption = None,
    decoder: DecoderOption = Decoder.auto,
    precision: PrecisionOption = Precision.float32,
    preset: PresetOption = None,
    scale: ScaleOption = None,
    y_channel: YChannelOption = None,
    crop_border: CropBorderOption = None,
    pred_kind: PredKindOption = PredKind.auto,
    ignore_index: IgnoreIndexOption = None,
    threshold: ThresholdOption = None,
    max_pixels: MaxPixelsOption = None,
    shard_text: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Evaluate only shard K of N (K from 0, e.g. $SLURM_ARRAY_TASK_ID/8) into a shard report for [b]lossctl merge[/b]; needs --json.",
            show_default=False,
            rich_help_panel="Computing",
        ),
    ] = None,
    csv_path: CsvOption = None,
    json_path: JsonOption = None,
    maps_dir: Annotated[
        Path | None,
        typer.Option(
            "--maps",
            metavar="DIR",
            help="Write a PNG heat map of each pair, with a labelled colour bar, under DIR at the pair's relative path.",
            rich_help_panel="Pictures",
        ),
    ] = None,
    map_metric: MapMetricOption = "l1",
    map_scale: MapScaleOption = "shared",
    html_path: HtmlOption = None,
    html_limit: HtmlLimitOption = 20,
    html_images: HtmlImagesOption = "embed",
    html_sort: Annotated[
        str | None,
        typer.Option(
            "--html-sort",
            metavar="METRIC",
            help="Order the HTML gallery worst-first by METRIC \\[default: the --map-metric].",
            show_default=False,
            rich_help_panel="Pictures",
        ),
    ] = None,
    output_format: ReportFormatOption = OutputFormat.table,
    per_image: PerImageOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compute every loss and quality metric for each prediction / ground-truth pair."""
    with _reported_errors(debug):  # before importing run (and pandas): Ctrl-C there ended silently
        from .run import EvalRequest

        names = parse_metric_names(_joined(metrics))
        convention = resolve_convention(preset, scale, y_channel, crop_border)
        overrides = [*(param or []), *_threshold_override(threshold, names, param)]
        params = resolve_params(names, overrides, convention.param_defaults)
        request = EvalRequest(
            pred, gt, names, params, weights, device, _batch_size(batch_size), workers, precision.value, convention,
            pred_kind=pred_kind.value, ignore_index=ignore_index, all_metrics=not metrics, max_pixels=max_pixels,
            decoder=decoder.value,
        )  # fmt: skip
        shard = _shard(shard_text, json_path)
        pictures = _Pictures(maps_dir, html_path, map_metric, map_scale, html_limit, html_sort, html_images)
        pictures.check(names if pictures.wanted else None, maps=_may_draw_maps(pictures, names, pred, gt))
        if not _silenced_rank:  # under torchrun only rank 0 writes, on its own machine's disk
            _check_output_paths(
                {"--csv": csv_path, "--json": json_path, "--html": html_path}, folders={"--maps": maps_dir}
            )
            _prepare_maps_dir(maps_dir, (pred, gt, weights))
            if (files_dir := pictures.files_dir) is not None:
                why = "the next run would read its pictures as pairs"
                _refuse_inside_inputs(files_dir, f"--html-images files: {files_dir}", (pred, gt, weights), why)
        evaluation = _evaluate_or_keep_partial(request, quiet, csv_path, json_path, shard)
        _write_complete_reports(csv_path, json_path, evaluation)
        if shard is not None and not quiet:
            _say_shard(evaluation.info.shard, len(evaluation.frame))
        if pictures.wanted:
            _eval_pictures(evaluation, request, quiet, pictures)
        code = _show(evaluation, output_format, per_image)
    raise typer.Exit(code)


def _show(evaluation, output_format: OutputFormat, per_image: bool | None) -> int:
    """Print an evaluation's report to stdout; its exit code (0 every pair computed, else 3)."""
    from . import report

    frame, summary, info = evaluation.frame, evaluation.summary, evaluation.info
    show_per_image = per_image if per_image is not None else len(frame) <= PER_IMAGE_AUTO_LIMIT
    with _stdout_reader_may_leave():
        if output_format == OutputFormat.table:
            report.render_table(_StdoutConsole(), frame, summary, info, show_per_image)
        elif output_format == OutputFormat.csv:
            report.to_csv(frame, sys.stdout)
        elif output_format == OutputFormat.json:
            sys.stdout.write(report.to_json(frame, summary, info))
        else:
            sys.stdout.write(report.to_markdown(frame, summary, info, show_per_image))
    counts = report.status_counts(frame)
    if counts["ok"] == counts["pairs"]:
        return EXIT_OK
    if output_format != OutputFormat.table:  # the table lists them; a CI log of a CSV said nothing
        stderr.print(
            f"note: {counts['pairs'] - counts['ok']} of {counts['pairs']} pairs were not computed "
            f"({counts['error']} error, {counts['unmatched']} unmatched): see the report's status and "
            "error columns (exit code 3)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return EXIT_PAIRS_FAILED


def _shard(text: str | None, json_path: Path | None):
    if text is None:
        return None
    from .sharding import parse_shard

    shard = parse_shard(text)
    if json_path is None:
        raise LossctlError(f"--shard {shard} writes a shard report for lossctl merge: give --json FILE")
    return shard


def _say_shard(record: dict, pairs: int) -> None:
    share = record["pixels"] / record["total_pixels"] if record["total_pixels"] else 0.0
    stderr.print(
        f"shard {record['index']}/{record['count']}: {pairs} of {record['pairs']} pairs, {share:.0%} of the "
        "pixels; join the shard reports with lossctl merge",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


CHECK_EPILOG = """[b]Examples[/b]

  lossctl check sample_images/pred sample_images/gt --min psnr=15 --max l1=0.1
  lossctl check out/ refs/ --max l1=0.02 --mean
  lossctl check out/ refs/ --config lossctl.toml --junit results.xml --github

Thresholds also come from [b]\\[tool.lossctl][/b] in pyproject.toml or a lossctl.toml found from the working folder upward (see README); command-line thresholds override the file's.

Exit codes: 0 pass; 1 thresholds failed; 2 usage or input error; 3 pairs missing or unreadable (unless --allow-missing); 130 interrupted."""


@app.command("check", epilog=CHECK_EPILOG)
def check_command(
    pred: PredArgument,
    gt: GtArgument,
    minimum: Annotated[
        list[str] | None,
        typer.Option(
            "--min",
            metavar="METRIC=VALUE",
            help="Fail when METRIC is below VALUE; repeatable.",
            rich_help_panel="Thresholds",
        ),
    ] = None,
    maximum: Annotated[
        list[str] | None,
        typer.Option(
            "--max",
            metavar="METRIC=VALUE",
            help="Fail when METRIC is above VALUE; repeatable.",
            rich_help_panel="Thresholds",
        ),
    ] = None,
    mean: Annotated[
        bool | None,
        typer.Option(
            "--mean/--each",
            help="Apply thresholds to the mean over the pairs, or to each pair \\[default: each, or the config's mode].",
            show_default=False,
            rich_help_panel="Thresholds",
        ),
    ] = None,
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="FILE", help="Read thresholds from FILE (TOML).", rich_help_panel="Thresholds"
        ),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            "-m",
            metavar="NAMES",
            help="Also compute these metrics, comma-separated or -m repeated (only thresholded ones by default).",
            rich_help_panel="Metrics",
        ),
    ] = None,
    allow_missing: Annotated[
        bool | None,
        typer.Option(
            "--allow-missing",
            help="Unmatched or unreadable pairs do not fail the check.",
            show_default=False,
            rich_help_panel="Thresholds",
        ),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit",
            metavar="FILE",
            help="Write JUnit XML (one test case per pair).",
            rich_help_panel="Output",
        ),
    ] = None,
    github: Annotated[
        bool,
        typer.Option(
            "--github",
            help="Print GitHub Actions ::error annotations for failing pairs.",
            rich_help_panel="Output",
        ),
    ] = False,
    output_format: Annotated[
        CheckFormat,
        typer.Option(
            "--format", help="table, or markdown for a pull-request comment.", rich_help_panel="Output"
        ),
    ] = CheckFormat.table,
    param: ParamOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = "auto",
    workers: WorkersOption = None,
    decoder: DecoderOption = Decoder.auto,
    precision: PrecisionOption = Precision.float32,
    preset: PresetOption = None,
    scale: ScaleOption = None,
    y_channel: YChannelOption = None,
    crop_border: CropBorderOption = None,
    pred_kind: PredKindOption = PredKind.auto,
    ignore_index: IgnoreIndexOption = None,
    threshold: ThresholdOption = None,
    max_pixels: MaxPixelsOption = None,
    csv_path: CsvOption = None,
    json_path: JsonOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Pass or fail image outputs against metric thresholds: a gate for CI."""
    with _reported_errors(debug):  # before the imports (pandas): Ctrl-C there ended silently
        from . import check
        from .run import EvalRequest

        if pred.exists() and gt.exists() and pred.resolve() == gt.resolve():  # a CI variable's typo
            raise LossctlError(f"PRED and GT are the same folder ({pred}): every pair would pass, checking nothing")
        if config_path is not None and (not config_path.exists() or config_path.is_dir()):  # a pipe will do
            raise LossctlError(f"config file not found: {config_path}")
        found = config_path or check.find_config(Path.cwd())
        config = check.load_config(found) if found else check.CheckConfig()
        command_line = [check.parse_limit(text, "min") for text in minimum or []]
        command_line += [check.parse_limit(text, "max") for text in maximum or []]
        config = check.merge_command_line(config, command_line)
        if mean is not None:
            config = replace(config, mode="mean" if mean else "each")
        if allow_missing is not None:
            config = replace(config, allow_missing=allow_missing)
        if not config.threshold_metrics:
            source = f" (none in {found})" if found else ""
            raise LossctlError(f"no thresholds given: use --min/--max or a config file{source}")
        extra = parse_metric_names(_joined(metrics)) if metrics else []
        wanted = set(config.threshold_metrics) | set(config.metrics) | set(extra)
        if weights is not None:
            wanted.add("weighted_tv")
        names = [name for name in METRICS if name in wanted]
        convention = resolve_convention(preset, scale, y_channel, crop_border)
        # The file's parameters first (an error names the file), then the command line's over them.
        from_file = resolve_params(names, config.params, convention.param_defaults, f"{found}: params entry")
        overrides = [*(param or []), *_threshold_override(threshold, names, param)]
        params = resolve_params(names, overrides, from_file)
        if not _silenced_rank:  # under torchrun only rank 0 writes
            _check_output_paths({"--junit": junit, "--csv": csv_path, "--json": json_path})
        request = EvalRequest(
            pred, gt, names, params, weights, device, _batch_size(batch_size), workers, precision.value, convention,
            pred_kind=pred_kind.value, ignore_index=ignore_index, max_pixels=max_pixels, decoder=decoder.value,
        )  # fmt: skip
        evaluation = _evaluate_or_keep_partial(request, quiet, csv_path, json_path)

        verdict = check.check_frame(evaluation.frame, config)
        _write(junit, lambda stream: stream.write(check.to_junit(verdict, evaluation.frame)))
        _write_complete_reports(csv_path, json_path, evaluation)
        with _stdout_reader_may_leave():
            if github:
                for line in check.github_annotations(verdict):
                    sys.stdout.write(line + "\n")
            if output_format == CheckFormat.markdown:
                sys.stdout.write(check.check_markdown(verdict))
            else:
                check.render_check(_StdoutConsole(), verdict)
        code = verdict.exit_code
    raise typer.Exit(code)


COMPARE_EPILOG = """[b]Examples[/b]

  lossctl compare main.json pr.json
  lossctl compare main.json pr.json --tolerance psnr=0.1 --tolerance ssim=0.001 --rel-tolerance l1=0.05
  lossctl compare main.csv pr.csv --format markdown > comment.md
  lossctl compare main.json pr.json --html changes.html

Exit codes: 0 no regression beyond tolerance; 1 regressions (or pairs removed or no longer computed); 2 usage or input error, including reports made with different metric parameters."""


@app.command("compare", epilog=COMPARE_EPILOG)
def compare_command(
    base: Annotated[
        Path, typer.Argument(help="The reference report (lossctl eval --csv/--json).", show_default=False)
    ],
    new: Annotated[Path, typer.Argument(help="The report to check against it.", show_default=False)],
    tolerance: Annotated[
        list[str] | None,
        typer.Option(
            "--tolerance", metavar="METRIC=VALUE", help="Absolute tolerance for METRIC; repeatable."
        ),
    ] = None,
    rel_tolerance: Annotated[
        list[str] | None,
        typer.Option(
            "--rel-tolerance",
            metavar="METRIC=VALUE",
            help="Tolerance relative to the base value; repeatable.",
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="What goes to stdout.", rich_help_panel="Output")
    ] = OutputFormat.table,
    html_path: HtmlOption = None,
    map_metric: MapMetricOption = "l1",
    map_scale: MapScaleOption = "shared",
    html_limit: HtmlLimitOption = 20,
    html_images: HtmlImagesOption = "embed",
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compare two reports: per-image, direction-aware regressions, worst first."""
    with _reported_errors(debug):  # before importing compare (and pandas), as eval does
        from . import compare, report

        tolerances = compare.parse_tolerances(tolerance or [], rel_tolerance or [])
        _check_output_paths({"--html": html_path}, inputs=(base, new))
        pictures = _Pictures(None, html_path, map_metric, map_scale, html_limit, images=html_images)
        pictures.check(None)
        comparison = compare.compare_reports(compare.load_report(base), compare.load_report(new), tolerances)
        if html_path is not None:
            from .maps import MAP_METRICS

            shared = [name for name in comparison.base.metrics if name in comparison.new.metrics]
            if not any(name in shared for name in MAP_METRICS):
                segmentation = " (segmentation pairs have none)" if comparison.base.per_class else ""
                raise LossctlError(
                    f"compare --html needs a heat-map metric ({', '.join(MAP_METRICS)}) in both reports; "
                    f"they share {', '.join(shared)}{segmentation}"
                )
            pictures.check(shared)
            _compare_pictures(comparison, quiet, pictures)
        with _stdout_reader_may_leave():
            if output_format == OutputFormat.table:
                compare.render_comparison(_StdoutConsole(), comparison)
            elif output_format == OutputFormat.csv:
                sys.stdout.write(compare.comparison_csv(comparison))
                # The CSV holds the pairs compared only: what else decided the verdict goes to stderr.
                for line in [*compare.other_lines(comparison), comparison.line()]:
                    report.print_line(stderr, line)
            elif output_format == OutputFormat.json:
                sys.stdout.write(compare.comparison_json(comparison))
            else:
                sys.stdout.write(compare.comparison_markdown(comparison))
        code = comparison.exit_code
    raise typer.Exit(code)


def _compare_pictures(comparison, quiet: bool, pictures: _Pictures) -> None:
    """``compare --html``: before and after, side by side, for the pairs that got worse."""
    from . import gallery, html_report

    with _progress(quiet) as on_start:
        drawn = gallery.compare_pictures(
            comparison, pictures.metric, pictures.scale_mode, pictures.limit, os.cpu_count() or 1, on_start,
            pictures.image_store(),
        )  # fmt: skip
    if drawn.unreadable:  # in the page's notes and the terminal's: a gallery of blanks said nothing
        comparison.notes.append(
            f"--html: {len(drawn.unreadable)} before/after pair(s) of those that got worse could not be read "
            f"(first: {drawn.unreadable[0]}); the reports name files as eval was given them, relative to "
            "the folder it ran in: run compare there, or eval with absolute folders"
        )
    page = html_report.compare_page(
        comparison, drawn.cards, pictures.metric, drawn.scale, pictures.scale_mode, drawn.worse
    )
    _write(pictures.html_path, lambda stream: stream.write(html_report.render_page(page)))


MERGE_EPILOG = """[b]Examples[/b]

  lossctl eval pred/ gt/ --shard 0/2 --json shard-0.json   (one job each, K from 0)
  lossctl eval pred/ gt/ --shard 1/2 --json shard-1.json
  lossctl merge shard-*.json -o report.json

Exit codes: 0 every pair computed; 3 some pairs failed or were unmatched (the report is still complete); 2 a shard missing or given twice, shards that overlap or come from different runs, or a file that is not a shard report; 1 internal error."""


@app.command("merge", epilog=MERGE_EPILOG)
def merge_command(
    shards: Annotated[
        list[Path],
        typer.Argument(
            metavar="SHARD",
            help="Shard reports (lossctl eval --shard K/N --json FILE), all N of one split.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the merged report: CSV (with its .meta.json sidecar) when FILE ends in .csv, else JSON.",
            rich_help_panel="Output",
        ),
    ] = None,
    output_format: ReportFormatOption = OutputFormat.table,
    per_image: PerImageOption = None,
    debug: DebugOption = False,
) -> None:
    """Join shard reports into the report a single run would have written; check they cover every pair once."""
    with _reported_errors(debug):  # before importing merge (and pandas), as eval does
        from . import merge

        _check_output_paths({"--output": output}, inputs=shards)
        evaluation = merge.merge_files(shards)
        csv_output = output is not None and output.suffix.lower() == ".csv"
        _write_reports(output if csv_output else None, None if csv_output else output, evaluation)
        code = _show(evaluation, output_format, per_image)
    raise typer.Exit(code)


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
    try:
        app()
    finally:
        # CPython 3.11 marks a KeyboardInterrupt that leaves an exec() of source text (dataclasses and
        # namedtuples make their methods so, on import) as unhandled even once it is caught, and at
        # exit then kills itself with SIGINT instead of exiting with lossctl's code: a SIGTERM or
        # Ctrl-C during such an import gave 'killed by SIGINT', not 130. An exec() of source text
        # clears the mark as it starts.
        exec("")
