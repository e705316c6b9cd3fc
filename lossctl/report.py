"""Results as a DataFrame, their summary, and rendering to table, CSV, JSON and Markdown."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .metrics import METRICS, ParamValue
from .safe_text import escape_controls, printable

STATUSES = ("ok", "error", "unmatched")
ARROWS = {"higher": "↑", "lower": "↓"}


@dataclass(frozen=True)
class ReportInfo:
    """What a report records besides its rows: inputs, metrics, parameters and environment."""

    pred_root: str
    gt_root: str
    metrics: Sequence[str]
    params: dict[str, dict[str, ParamValue]]
    device: str
    precision: str
    lossctl_version: str
    torch_version: str
    skipped_files: int = 0
    convention: dict[str, Any] | None = None
    segmentation: dict[str, Any] | None = None
    shard: dict[str, Any] | None = None  # a shard report's place in the whole run (lossctl.sharding)
    weights_root: str | None = None  # --weights: weighted_tv's weight maps
    max_pixels: int | None = None  # --max-pixels, where given

    @property
    def all_params(self) -> dict[str, Any]:
        """Every parameter a report needs to be reproduced: the convention, each metric's, and where
        given, ``--max-pixels`` (which pairs are decoded) and ``--weights`` (as weighted_tv's)."""
        extra = {"segmentation": self.segmentation} if self.segmentation else {}
        if self.max_pixels is not None:
            extra["decoding"] = {"max_pixels": self.max_pixels}
        params = dict(self.params)
        if self.weights_root is not None:
            params["weighted_tv"] = {**params.get("weighted_tv", {}), "weights": self.weights_root}
        return {"convention": self.convention or {}, **extra, **params}


def unpack_params(all_params: dict[str, Any]) -> dict[str, Any]:
    """The :class:`ReportInfo` fields that :attr:`ReportInfo.all_params` packed into a report's
    ``params``: its inverse, so that a report read back (a shard's) is written again the same."""
    params = dict(all_params)
    fields: dict[str, Any] = {
        "convention": params.pop("convention", None),
        "segmentation": params.pop("segmentation", None),
        "max_pixels": params.pop("decoding", {}).get("max_pixels"),
        "weights_root": None,
    }
    if "weights" in params.get("weighted_tv", {}):
        weighted_tv = dict(params.pop("weighted_tv"))
        fields["weights_root"] = weighted_tv.pop("weights")
        if weighted_tv:
            params["weighted_tv"] = weighted_tv
    return {**fields, "params": params}


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = {status: int((frame["status"] == status).sum()) for status in STATUSES}
    return {"pairs": len(frame), **counts}


def summarize(frame: pd.DataFrame, metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per metric over the pairs that succeeded: mean, std (population), min, median, max, count.

    NaN values (a metric undefined for a pair, with the reason in ``notes``) are left out and
    counted in ``nan``. Infinite values (the PSNR of identical images; a cross-entropy whose true
    class had probability 0) are left out of the mean and std and counted in ``infinite``, so that
    a mean is never inf; ``pooled`` is the PSNR of the mean MSE, ``10 log10(1 / mean(mse))``.
    """
    ok = frame[frame["status"] == "ok"]
    summary: dict[str, dict[str, Any]] = {}
    for name in metrics:
        values = ok[name].dropna()
        finite = values[values.abs() != math.inf]
        entry: dict[str, Any] = {
            "better": METRICS[name].better,
            "mean": float(finite.mean()) if len(finite) else None,
            "std": float(finite.std(ddof=0)) if len(finite) else None,
            "min": float(values.min()) if len(values) else None,
            "median": _median(values),
            "max": float(values.max()) if len(values) else None,
            "count": len(values),
            "nan": int(ok[name].isna().sum()),
            "infinite": len(values) - len(finite),
        }
        if name == "psnr":
            entry["pooled"] = _pooled_psnr(values)
        summary[name] = entry
    return summary


def _median(values: pd.Series) -> float | None:
    """The median; NaN where it falls between -inf and inf (without numpy's warning)."""
    if not len(values):
        return None
    with np.errstate(invalid="ignore"):
        return float(values.median())


def _pooled_psnr(psnr: pd.Series) -> float | None:
    """``10 log10(1 / mean(mse))`` from the pairs' PSNR: inf where every pair is identical, -inf
    where a pair's MSE is inf (an infinite pixel in a float image), None without pairs."""
    if not len(psnr):
        return None
    mean_mse = float((10.0 ** (-psnr / 10.0)).mean())
    if mean_mse == 0:
        return math.inf
    return -math.inf if math.isinf(mean_mse) else 10 * math.log10(1 / mean_mse)


def format_value(value: float | None, digits: int = 4, missing: str = "—") -> str:
    """A metric value for people: ``digits`` significant digits, ``inf``, and ``missing`` for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def format_precise(value: float | None) -> str:
    """A value for a threshold or a comparison: 6 significant digits, and NaN spelled out."""
    return format_value(value, digits=6, missing="NaN")


def _json_number(value: Any) -> Any:
    """Strict JSON has no NaN or infinity: NaN becomes null, infinities the strings 'inf'/'-inf'."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_number(None if value is pd.NA else value) for key, value in record.items()}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = ("name", "pred", "gt", "error", "notes")


def spreadsheet_safe(text: object) -> object:
    """Prefix ``'`` to text a spreadsheet would run as a formula (it starts with = + - @, tab or CR),
    and to text that would read back as such an escape (``'`` then one of those, or a second ``'``),
    so that :func:`unquote_spreadsheet_safe` gives back exactly the text.

    Spreadsheets show the cell without the quote; :func:`lossctl.compare.load_report` removes it.
    """
    if isinstance(text, str) and (text.startswith(FORMULA_STARTS) or _looks_escaped(text)):
        return "'" + text
    return text


def unquote_spreadsheet_safe(text: str) -> str:
    """Undo :func:`spreadsheet_safe`."""
    return text[1:] if _looks_escaped(text) else text


def _looks_escaped(text: str) -> bool:
    return text.startswith("'") and text[1:].startswith((*FORMULA_STARTS, "'"))


CSV_CHUNK_ROWS = 1000  # rows formatted at a time: pandas would otherwise format every cell at once


def to_csv(
    frame: pd.DataFrame, stream: TextIO | None = None, text_columns: Sequence[str] = TEXT_COLUMNS
) -> str | None:
    """CSV, one row per pair, written to ``stream`` (or returned as text when there is none).
    Empty cell: no value (NaN); ``inf``: identical images' PSNR.

    Cells of ``text_columns`` that a spreadsheet would evaluate as a formula are quoted
    (:func:`spreadsheet_safe`).
    """
    safe = frame.copy(deep=False)
    for column in text_columns:
        safe[column] = safe[column].map(spreadsheet_safe)
    return safe.to_csv(stream, index=False, lineterminator="\n", chunksize=CSV_CHUNK_ROWS)


def sidecar_path(csv_path: Path) -> Path:
    """Where ``--csv FILE`` records its header (parameters, convention, summary): ``FILE.meta.json``."""
    return Path(f"{csv_path}.meta.json")


def to_json(
    frame: pd.DataFrame, summary: dict[str, dict[str, Any]], info: ReportInfo, rows: bool = True
) -> str:
    """The JSON report; ``rows=False`` gives its header alone (the CSV sidecar)."""
    document = {
        "lossctl": info.lossctl_version,
        "torch": info.torch_version,
        "device": info.device,
        "precision": info.precision,
        "pred": info.pred_root,
        "gt": info.gt_root,
        "metrics": list(info.metrics),
        "params": info.all_params,
        "counts": {**status_counts(frame), "skipped_files": info.skipped_files},
        "summary": {name: _clean(entry) for name, entry in summary.items()},
    }
    if info.shard is not None:
        document["shard"] = info.shard
    if rows:
        document["rows"] = [_clean(record) for record in frame.astype(object).to_dict(orient="records")]
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _counts_line(frame: pd.DataFrame, info: ReportInfo) -> str:
    counts = status_counts(frame)
    line = f"{counts['pairs']} pairs: {counts['ok']} ok, {counts['error']} error, {counts['unmatched']} unmatched"
    if info.skipped_files:
        line += f" ({info.skipped_files} non-image files skipped)"
    return line


def _convention_text(info: ReportInfo) -> str:
    from .conventions import Convention

    return Convention(**info.convention).describe() if info.convention else "preset skimage"


def _summary_line(summary: dict[str, dict[str, Any]]) -> str | None:
    """The pooled PSNR and the infinite values each mean leaves out, or None."""
    parts = []
    psnr = summary.get("psnr")
    if psnr and psnr["count"]:
        parts.append(f"pooled PSNR (from the mean MSE): {format_value(psnr['pooled'])} dB")
        if psnr["infinite"] and psnr["min"] != -math.inf:
            parts.append(
                f"{psnr['infinite']} identical pair(s) with PSNR = inf left out of the PSNR mean and std"
            )
    for name, entry in summary.items():
        if entry.get("infinite") and (name != "psnr" or entry["min"] == -math.inf):
            parts.append(
                f"{entry['infinite']} pair(s) with {name} = {_infinities(entry)} left out of the {name} mean and std"
            )
    return "; ".join(parts) or None


def _infinities(entry: dict[str, Any]) -> str:
    """Which infinities a summary entry's values hold, from its min and max."""
    signs = [text for text, bound in (("-inf", entry["min"]), ("inf", entry["max"])) if bound == float(text)]
    return " or ".join(signs)


def _problem_lines(frame: pd.DataFrame) -> list[str]:
    lines = []
    for row in frame.itertuples(index=False):
        if row.status != "ok":
            lines.append(f"{row.name}: {row.status}: {row.error}")
        elif row.notes:
            lines.append(f"{row.name}: note: {row.notes}")
    return lines


def _summary_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [
            f"{name} {ARROWS[entry['better']]}",
            *(format_value(entry[key]) for key in ("mean", "std", "min", "median", "max")),
            str(entry["count"]),
        ]
        for name, entry in summary.items()
    ]


SUMMARY_HEADER = ["metric", "mean", "std", "min", "median", "max", "n"]


# & too: a name such as a&lt;b would otherwise be shown as a<b (an HTML entity).
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~&])")


def markdown_text(text: object) -> str:
    """``text`` as literal Markdown on one line: control characters shown as escapes (line breaks as
    ``\\n``, :func:`~lossctl.safe_text.escape_controls`), then special characters escaped."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", escape_controls(str(text)))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A GitHub-flavoured Markdown table, every cell escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(markdown_text(cell) for cell in row) + " |" for row in rows]


def to_markdown(
    frame: pd.DataFrame, summary: dict[str, dict[str, Any]], info: ReportInfo, per_image: bool
) -> str:
    out = [f"**lossctl eval** — {_counts_line(frame, info)} — {_convention_text(info)}", ""]
    out += markdown_table(SUMMARY_HEADER, _summary_rows(summary))
    if (summary_line := _summary_line(summary)) is not None:
        out += ["", summary_line]
    if per_image:
        rows = [
            [row["name"], row["status"], *(format_value(row[name]) for name in info.metrics)]
            for _, row in frame.iterrows()
        ]
        out += [""] + markdown_table(["name", "status", *info.metrics], rows)
    if problems := _problem_lines(frame):
        out += ["", *(f"- {markdown_text(line)}" for line in problems)]
    return "\n".join(out) + "\n"


def _extreme_styles(frame: pd.DataFrame, name: str) -> dict[int, str]:
    """Colour the best value of a column green and the worst red (when they differ)."""
    values = frame[name].where(frame["status"] == "ok").dropna()
    if values.nunique() < 2:
        return {}
    best, worst = (
        (values.idxmax(), values.idxmin())
        if METRICS[name].better == "higher"
        else (
            values.idxmin(),
            values.idxmax(),
        )
    )
    return {best: "green", worst: "red"}


def print_title(console: Console, title: str) -> None:
    """A table's title as one line of its own (the terminal wraps it, as the verdict lines), in the
    style Rich gives table titles: a ``Table`` title wraps at the table's width (a one-metric table
    split the run's summary line over two lines) and reads markup (a path holding ``[v2]`` lost
    that part)."""
    console.print(Text(title, style="table.title"), soft_wrap=True)


def print_line(console: Console, line: str, style: str | None = None) -> None:
    """One line for people that quotes what came from the folders (pair names, their errors and
    notes): made safe to show (:func:`~lossctl.safe_text.printable`), printed as plain text (no
    markup, no highlighting) that the terminal wraps."""
    console.print(printable(line), style=style, markup=False, highlight=False, soft_wrap=True)


def render_table(
    console: Console,
    frame: pd.DataFrame,
    summary: dict[str, dict[str, Any]],
    info: ReportInfo,
    per_image: bool,
) -> None:
    """Print the summary table (and the per-image table) sized to the console's width."""
    print_title(console, f"lossctl eval — {_counts_line(frame, info)} — {_convention_text(info)}")
    summary_table = Table(box=box.SIMPLE_HEAD)
    for index, header in enumerate(SUMMARY_HEADER):
        summary_table.add_column(header, justify="right" if index else "left", no_wrap=True)
    for row in _summary_rows(summary):
        summary_table.add_row(*row)
    console.print(summary_table)
    if (summary_line := _summary_line(summary)) is not None:
        console.print(summary_line, soft_wrap=True)
    if per_image:
        _render_per_image(console, frame, info.metrics)
    for line in _problem_lines(frame):
        print_line(console, line, style="yellow" if ": note: " in line else "red")
    console.print(
        f"↑ higher is better, ↓ lower is better; device {info.device}, {info.precision}", style="dim"
    )


def _render_per_image(console: Console, frame: pd.DataFrame, metrics: Sequence[str]) -> None:
    """Per-image values, metrics split over several tables when they do not fit the width."""
    name_width = min(max(frame["name"].str.len().max(), 4), 40)
    column_width = 13
    per_table = max(1, (console.width - name_width - 12) // column_width)
    for start in range(0, len(metrics), per_table):
        chunk = metrics[start : start + per_table]
        table = Table(title="per image" if start == 0 else None, title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column("name", overflow="fold", max_width=40)
        table.add_column("status")
        styles = {name: _extreme_styles(frame, name) for name in chunk}
        for name in chunk:
            table.add_column(f"{name} {ARROWS[METRICS[name].better]}", justify="right", no_wrap=True)
        for index, row in frame.iterrows():
            status_style = "green" if row["status"] == "ok" else "red"
            cells = [
                f"[{styles[name][index]}]{format_value(row[name])}[/]"
                if index in styles[name]
                else format_value(row[name])
                for name in chunk
            ]
            table.add_row(Text(printable(row["name"], cell=True)), f"[{status_style}]{row['status']}[/]", *cells)
        console.print(table)
