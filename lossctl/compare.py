"""Compare two ``lossctl eval`` reports (CSV or JSON): per-image, direction-aware regressions.

A regression is a change in the worse direction (PSNR down, L1 up) by more than the metric's
tolerance: ``max(absolute, relative * |base|)``, 0 unless given. A pair that disappears, or that
turns from ``ok`` to ``error``, is a regression too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import FILE_NAME_BYTES
from .errors import LossctlError
from .metrics import METRICS
from .report import (
    TEXT_COLUMNS,
    format_precise,
    print_line,
    print_title,
    sidecar_path,
    to_csv,
    unquote_spreadsheet_safe,
)
from .results import per_class_metric
from .safe_text import printable


@dataclass(frozen=True)
class LoadedReport:
    path: Path
    frame: pd.DataFrame
    metrics: list[str]
    params: dict[str, Any] | None  # None: a CSV report without its .meta.json sidecar
    per_class: list[str] = field(default_factory=list)  # metrics with METRIC_class_K columns


def _from_json_number(value: Any) -> Any:
    return {"inf": math.inf, "-inf": -math.inf}.get(value, value) if isinstance(value, str) else value


def load_report(path: Path) -> LoadedReport:
    """Read a report written by ``lossctl eval --csv`` or ``--json``."""
    if path.is_dir():
        raise LossctlError(f"{path} is a folder, not a report (give the --csv or --json file eval wrote)")
    if not path.is_file():
        raise LossctlError(f"report not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
                raise LossctlError(f"{path} is not a lossctl JSON report (no 'rows' list)")
            frame = pd.DataFrame(document["rows"])
            params = document.get("params", {})
        else:
            frame = pd.read_csv(
                path,
                keep_default_na=False,
                na_values=[""],
                dtype={"name": str, "error": str},
                encoding_errors=FILE_NAME_BYTES,
            )
            for column in TEXT_COLUMNS:  # pred and gt too: compare --html opens those files
                if column in frame.columns:
                    frame[column] = frame[column].map(
                        lambda text: unquote_spreadsheet_safe(text) if isinstance(text, str) else text
                    )
            params = None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise LossctlError(f"cannot read report {path}: {str(error).splitlines()[0]}") from None
    if path.suffix.lower() != ".json" and (sidecar := sidecar_path(path)).is_file():
        params = _sidecar_params(sidecar)
    if params is not None and not isinstance(params, dict):
        raise LossctlError(f"{path} is damaged: its 'params' is not an object")
    for column in ("name", "status"):
        if column not in frame.columns:
            raise LossctlError(f"{path} is not a lossctl report: it has no {column!r} column")
    metrics = [name for name in METRICS if name in frame.columns]
    for name in metrics:
        frame[name] = pd.to_numeric(frame[name].map(_from_json_number), errors="coerce").astype("float64")
    if frame["name"].duplicated().any():
        raise LossctlError(
            f"{path} has duplicate pair names: {', '.join(frame['name'][frame['name'].duplicated()][:3])}"
        )
    per_class = sorted({metric for column in frame.columns if (metric := per_class_metric(str(column)))})
    return LoadedReport(path, frame.set_index("name", drop=False), metrics, params, per_class)


def _sidecar_params(sidecar: Path) -> Any:
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise LossctlError(f"cannot read {sidecar}: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise LossctlError(f"{sidecar} is not a lossctl report sidecar (not a JSON object)")
    return document.get("params")


@dataclass(frozen=True)
class Tolerance:
    absolute: float = 0.0
    relative: float = 0.0

    def allowed(self, base: float) -> float:
        return max(self.absolute, self.relative * abs(base)) if math.isfinite(base) else self.absolute


def parse_tolerances(absolute: Sequence[str], relative: Sequence[str]) -> dict[str, Tolerance]:
    """``--tolerance psnr=0.1`` and ``--rel-tolerance l1=0.05`` into one Tolerance per metric."""
    values: dict[str, dict[str, float]] = {}
    for option, items, key in (
        ("--tolerance", absolute, "absolute"),
        ("--rel-tolerance", relative, "relative"),
    ):
        for item in items:
            metric, _, text = item.partition("=")
            metric = metric.strip()
            if not text:
                raise LossctlError(f"{option} must look like METRIC=VALUE (e.g. psnr=0.1); got {item!r}")
            if metric not in METRICS:
                raise LossctlError(
                    f"{option} {item}: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}"
                )
            try:
                value = float(text)
            except ValueError:
                raise LossctlError(f"{option} {item}: {text!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise LossctlError(f"{option} {item}: the tolerance must be a finite number >= 0")
            given = values.setdefault(metric, {})
            if key in given:  # keeping either would make the verdict depend on the order given
                raise LossctlError(f"{option} {item}: {metric} already has one ({given[key]:g}); give it once")
            given[key] = value
    return {metric: Tolerance(**given) for metric, given in values.items()}


def worsening(metric: str, base: float, new: float) -> float:
    """How much worse ``new`` is than ``base`` in the metric's direction (negative: better).

    A value that became NaN is infinitely worse; equal values (infinite PSNR too) are 0.
    """
    if math.isnan(base) and math.isnan(new):
        return 0.0
    if math.isnan(new):
        return math.inf
    if math.isnan(base) or base == new:
        return 0.0 if base == new else -math.inf
    return base - new if METRICS[metric].better == "higher" else new - base


@dataclass
class Comparison:
    base: LoadedReport
    new: LoadedReport
    rows: pd.DataFrame  # one row per pair and metric compared
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    status_regressions: list[tuple[str, str, str]] = field(default_factory=list)  # name, new status, reason
    not_compared: list[tuple[str, str]] = field(default_factory=list)  # name, why (not computed in BASE)
    notes: list[str] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    summary_pairs: int = 0  # the pairs computed in both reports, which the summary's means are over

    @property
    def means_scope(self) -> str:
        return f"over the {self.summary_pairs} pairs computed in both reports"

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["regression"]]

    @property
    def exit_code(self) -> int:
        return 1 if len(self.regressions) or self.removed or self.status_regressions else 0

    def line(self) -> str:
        compared = self.rows["name"].nunique()
        if self.exit_code == 0:
            return f"OK: no regression beyond tolerance ({compared} pairs compared)"
        parts = []
        if len(self.regressions):
            parts.append(f"{self.regressions['name'].nunique()} pairs regressed beyond tolerance")
        if self.status_regressions:
            parts.append(f"{len(self.status_regressions)} pairs no longer computed")
        if self.removed:
            parts.append(f"{len(self.removed)} pairs removed")
        return "REGRESSED: " + ", ".join(parts) + f" ({compared} pairs compared)"


def _check_parameters(
    base: LoadedReport, new: LoadedReport, metrics: Sequence[str], notes: list[str]
) -> None:
    if base.params is None or new.params is None:
        csv = " and ".join(
            f"{which} ({r.path.name})" for which, r in (("BASE", base), ("NEW", new)) if r.params is None
        )
        notes.append(
            f"metric parameters not checked: {csv} is CSV without its .meta.json sidecar, which records them"
        )
        return
    differing = [
        f"{key}: {base.params.get(key, {})} vs {new.params.get(key, {})}"
        for key in ("convention", *metrics)
        if base.params.get(key, {}) != new.params.get(key, {})
    ]
    if differing:
        raise LossctlError(
            "the reports were made with different metric parameters, so their values are not comparable: "
            + "; ".join(differing)
        )


def compare_reports(base: LoadedReport, new: LoadedReport, tolerances: dict[str, Tolerance]) -> Comparison:
    metrics = [name for name in base.metrics if name in new.metrics]
    notes: list[str] = []
    for report, other, label in ((base, new, "BASE"), (new, base, "NEW")):
        alone = [name for name in report.metrics if name not in other.metrics]
        if alone:
            notes.append(f"only in {label} ({report.path.name}), not compared: {', '.join(alone)}")
    if not metrics:
        raise LossctlError(f"{base.path} and {new.path} have no metric column in common")
    if per_class := sorted(set(base.per_class) | set(new.per_class)):
        columns = ", ".join(f"{name}_class_K" for name in per_class)
        notes.append(f"per-class columns not compared: {columns} (their class means are)")
    unused = sorted(set(tolerances) - set(metrics))
    if unused:
        raise LossctlError(f"tolerance given for {', '.join(unused)}, which is not in both reports")
    _check_parameters(base, new, metrics, notes)

    base_frame, new_frame = base.frame, new.frame
    comparison = Comparison(base, new, pd.DataFrame(), notes=notes)
    comparison.removed = [name for name in base_frame.index if name not in new_frame.index]
    comparison.added = [name for name in new_frame.index if name not in base_frame.index]
    records = []
    for name in base_frame.index.intersection(new_frame.index, sort=False):
        before, after = base_frame.loc[name], new_frame.loc[name]
        if before["status"] == "ok" and after["status"] != "ok":
            comparison.status_regressions.append((name, str(after["status"]), str(after.get("error", ""))))
            continue
        if before["status"] != "ok":
            why = (
                "newly computed (BASE: {})"
                if after["status"] == "ok"
                else "not computed in either report (BASE: {})"
            )
            comparison.not_compared.append((name, why.format(before["status"])))
            continue
        for metric in metrics:
            old, current = float(before[metric]), float(after[metric])
            worse = worsening(metric, old, current)
            allowed = tolerances.get(metric, Tolerance()).allowed(old)
            records.append(
                {
                    "name": name,
                    "metric": metric,
                    "base": old,
                    "new": current,
                    "delta": 0.0 if old == current else current - old,
                    "worse_by": worse,
                    "tolerance": allowed,
                    "regression": worse > allowed,
                }
            )
    columns = ["name", "metric", "base", "new", "delta", "worse_by", "tolerance", "regression"]
    # Typed even with no pair compared: an empty column of object dtype used as a mask is taken by
    # pandas as a list of column labels, so every rows[rows["regression"]] gave a frame of no columns.
    rows = pd.DataFrame(records, columns=columns).astype({"regression": bool})
    if len(rows):
        rows = rows.sort_values(["regression", "worse_by"], ascending=[False, False], kind="stable")
    comparison.rows = rows.reset_index(drop=True)
    comparison.summary, comparison.summary_pairs = _summary_changes(base, new, metrics)
    return comparison


def _summary_changes(
    base: LoadedReport, new: LoadedReport, metrics: Sequence[str]
) -> tuple[list[dict[str, Any]], int]:
    """The change of each metric's mean over the pairs computed in both reports, and their number:
    means over all of each report's pairs moved with the pairs added, removed or no longer
    computed (a bad pair removed made every mean 'better' beside a pair that got worse)."""
    from .report import summarize

    computed = [frame.index[frame["status"] == "ok"] for frame in (base.frame, new.frame)]
    both = computed[0].intersection(computed[1], sort=False)
    before, after = (
        summarize(base.frame.loc[both].reset_index(drop=True), metrics),
        summarize(new.frame.loc[both].reset_index(drop=True), metrics),
    )
    changes = []
    for metric in metrics:
        old, current = before[metric]["mean"], after[metric]["mean"]
        change = None if old is None or current is None else current - old
        worse = None if change is None else worsening(metric, old, current)
        changes.append(
            {
                "metric": metric,
                "better": METRICS[metric].better,
                "base_mean": old,
                "new_mean": current,
                "change": change,
                "worse_by": worse,
            }
        )
    return changes, len(both)


REGRESSION_HEADER = ["name", "metric", "base", "new", "worse by", "tolerance"]
SUMMARY_HEADER = ["metric", "base mean", "new mean", "change", "verdict"]


def regression_rows(comparison: Comparison) -> list[list[str]]:
    return [
        [
            row.name,
            row.metric,
            format_precise(row.base),
            format_precise(row.new),
            format_precise(row.worse_by),
            format_precise(row.tolerance),
        ]
        for row in comparison.regressions.itertuples(index=False)
    ]


def summary_rows(comparison: Comparison) -> list[list[str]]:
    def verdict(entry: dict[str, Any]) -> str:
        worse = entry["worse_by"]
        if worse is None:
            return "—"
        return "worse" if worse > 0 else "better" if worse < 0 else "same"

    return [
        [
            entry["metric"],
            format_precise(entry["base_mean"]),
            format_precise(entry["new_mean"]),
            format_precise(entry["change"]),
            verdict(entry),
        ]
        for entry in comparison.summary
    ]


def other_lines(comparison: Comparison) -> list[str]:
    lines = [f"removed: {name} (in BASE, not in NEW)" for name in comparison.removed]
    lines += [
        f"no longer computed: {name}: {status}: {reason}"
        for name, status, reason in comparison.status_regressions
    ]
    lines += [f"not compared: {name}: {why}" for name, why in comparison.not_compared]
    lines += [f"added: {name} (in NEW only)" for name in comparison.added]
    return lines + [f"note: {note}" for note in comparison.notes]


def render_comparison(console, comparison: Comparison, limit: int = 50) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    print_title(console, f"{comparison.base.path} -> {comparison.new.path}: means {comparison.means_scope}")
    table = Table(box=box.SIMPLE_HEAD)
    for index, header in enumerate(SUMMARY_HEADER):
        table.add_column(header, justify="left" if index == 0 else "right")
    styles = {"worse": "red", "better": "green"}
    for row in summary_rows(comparison):
        table.add_row(*row[:-1], Text(row[-1], style=styles.get(row[-1], "")))
    console.print(table)
    rows = regression_rows(comparison)
    if rows:
        worst = Table(
            title="regressions beyond tolerance, worst first", title_justify="left", box=box.SIMPLE_HEAD
        )
        for index, header in enumerate(REGRESSION_HEADER):
            worst.add_column(header, justify="left" if index < 2 else "right", overflow="fold")
        for row in rows[:limit]:
            worst.add_row(Text(printable(row[0], cell=True)), *row[1:])
        console.print(worst)
        if len(rows) > limit:
            console.print(f"... and {len(rows) - limit} more (--format csv lists them all)")
    for line in other_lines(comparison):
        print_line(console, line)
    console.print(
        comparison.line(),
        style="bold red" if comparison.exit_code else "bold green",
        markup=False,
        soft_wrap=True,
    )


def comparison_csv(comparison: Comparison) -> str:
    return to_csv(comparison.rows, text_columns=("name",))


def comparison_json(comparison: Comparison) -> str:
    from .report import _json_number

    def clean(record: dict[str, Any]) -> dict[str, Any]:
        return {key: _json_number(value) for key, value in record.items()}

    document = {
        "base": str(comparison.base.path),
        "new": str(comparison.new.path),
        "verdict": comparison.line(),
        "regressed": bool(comparison.exit_code),
        "summary": [clean(entry) for entry in comparison.summary],
        "summary_pairs": comparison.summary_pairs,
        "removed": comparison.removed,
        "added": comparison.added,
        "no_longer_computed": [
            {"name": name, "status": status, "error": reason}
            for name, status, reason in comparison.status_regressions
        ],
        "not_compared": [{"name": name, "why": why} for name, why in comparison.not_compared],
        "notes": comparison.notes,
        "rows": [clean(record) for record in comparison.rows.to_dict(orient="records")],
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def comparison_markdown(comparison: Comparison, limit: int = 50) -> str:
    from .report import markdown_table, markdown_text

    icon = "❌" if comparison.exit_code else "✅"
    out = [
        f"{icon} **{markdown_text(comparison.line())}**",
        "",
        f"Means {comparison.means_scope}:",
        "",
        *markdown_table(SUMMARY_HEADER, summary_rows(comparison)),
    ]
    rows = regression_rows(comparison)
    if rows:
        out += [
            "",
            "Regressions beyond tolerance, worst first:",
            "",
            *markdown_table(REGRESSION_HEADER, rows[:limit]),
        ]
        if len(rows) > limit:
            out.append(f"\n… and {len(rows) - limit} more")
    if lines := other_lines(comparison):
        out += ["", *(f"- {markdown_text(line)}" for line in lines)]
    return "\n".join(out) + "\n"
