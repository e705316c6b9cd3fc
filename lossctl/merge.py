"""Join shard reports (``lossctl eval --shard K/N --json FILE``) into the report of a single run.

The shards must come from one split of one run: the same N, the same folders and pairing, the
same metrics, parameters, precision and versions; together they must hold every pair exactly
once. The merged rows are in the single run's order and its summary is recomputed from them, so
the merged report is the one ``lossctl eval`` would have written in one process.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .errors import LossctlError
from .metrics import METRICS
from .report import ReportInfo, summarize, unpack_params
from .results import ROW_COLUMNS, sorted_per_class
from .run import Evaluation
from .sharding import pairing_digest

# Header fields every shard of one run shares, with the words an error message uses for them.
SHARED_FIELDS = {
    "pred": "prediction folder",
    "gt": "ground-truth folder",
    "metrics": "metrics",
    "params": "parameters",
    "precision": "precision",
    "lossctl": "lossctl version",
    "torch": "torch version",
}
SHARED_SHARD_FIELDS = {
    "count": "number of shards N",
    "pairs": "number of pairs",
    "pairing": "pairing",
    "inputs": "input files (their paths, matching or image sizes changed between the shard runs)",
}
INTEGER_COLUMNS = ("height", "width", "channels")


@dataclass(frozen=True)
class ShardReport:
    """One shard report: ``source`` names it in messages (a file, or a torchrun rank)."""

    source: str
    document: dict[str, Any]

    @property
    def shard(self) -> dict[str, Any]:
        return self.document["shard"]

    @property
    def label(self) -> str:
        return f"shard {self.shard['index']}/{self.shard['count']}"


def read_shard(path: Path) -> ShardReport:
    """Read and check the form of one shard report; a LossctlError naming the file otherwise."""
    if not path.is_file():
        raise LossctlError(f"shard report not found: {path}")
    if path.name.endswith(".partial"):  # read as a shard it was 'damaged: 4 rows but 40 pair positions'
        raise LossctlError(f"{path} is the partial report of an interrupted shard run: run that shard again")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise LossctlError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    except ValueError as error:
        raise LossctlError(f"{path} is not JSON: {str(error).splitlines()[0]}") from None
    return shard_report(document, str(path))


def shard_report(document: Any, source: str) -> ShardReport:
    """Check that ``document`` is a shard report made by ``lossctl eval --shard K/N --json``."""
    made_by = "make shard reports with lossctl eval --shard K/N --json FILE"
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise LossctlError(f"{source} is not a lossctl JSON report (no 'rows' list); {made_by}")
    shard = document.get("shard")
    if shard is None:
        raise LossctlError(f"{source} is a whole report, not a shard report; {made_by}")
    fields_ok = isinstance(shard, dict) and all(
        isinstance(shard.get(key), int) for key in ("index", "count", "pairs")
    )
    if not fields_ok or not isinstance(shard.get("positions"), list):
        raise LossctlError(f"{source} has a damaged 'shard' record; {made_by}")
    if not 0 <= shard["index"] < shard["count"]:
        raise LossctlError(
            f"{source} is damaged: shard {shard['index']}/{shard['count']} is not a shard number"
        )
    positions = shard["positions"]
    if not all(isinstance(row, dict) for row in document["rows"]):
        raise LossctlError(f"{source} is damaged: a row that is not an object")
    if len(positions) != len(document["rows"]):
        raise LossctlError(
            f"{source} is damaged: {len(document['rows'])} rows but {len(positions)} pair positions"
        )
    if any(not isinstance(p, int) or not 0 <= p < shard["pairs"] for p in positions):
        raise LossctlError(f"{source} is damaged: a pair position outside 0..{shard['pairs'] - 1}")
    missing = [field for field in (*SHARED_FIELDS, "counts") if field not in document]
    if missing:
        raise LossctlError(f"{source} is damaged: no {', '.join(missing)}")
    _check_field_types(document, source)
    return ShardReport(source, document)


def _check_field_types(document: dict[str, Any], source: str) -> None:
    """The types the merge reads: a hand-edited report must fail here, not inside it."""
    metrics = document["metrics"]
    if not isinstance(metrics, list) or not all(isinstance(name, str) for name in metrics):
        raise LossctlError(f"{source} is damaged: 'metrics' is not a list of names")
    if unknown := [name for name in metrics if name not in METRICS]:
        raise LossctlError(
            f"{source} has metric {unknown[0]!r}, which lossctl {__version__} does not know (made by lossctl "
            f"{document.get('lossctl')}?): merge with the lossctl that made the shards"
        )
    if not isinstance(document.get("device", ""), str):
        raise LossctlError(f"{source} is damaged: 'device' is not text")
    for key in ("params", "counts"):
        if not isinstance(document[key], dict):
            raise LossctlError(f"{source} is damaged: {key!r} is not an object")
    for key, value in document["params"].items():
        if not isinstance(value, dict):
            raise LossctlError(f"{source} is damaged: params {key!r} is not an object")
    for row in document["rows"]:
        for column in INTEGER_COLUMNS:
            if not (
                row.get(column) is None
                or (isinstance(row[column], int) and not isinstance(row[column], bool))
            ):
                raise LossctlError(f"{source} is damaged: {column} {row[column]!r} of {row.get('name')!r}")
        per_class = [key for key in row if key not in ROW_COLUMNS and key not in metrics]
        for metric in (*metrics, *per_class):
            value = row.get(metric)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (value is None or number or value in ("inf", "-inf")):
                raise LossctlError(f"{source} is damaged: {metric} {value!r} of {row.get('name')!r}")


def _check_same_run(reports: Sequence[ShardReport]) -> None:
    first = reports[0]
    for report in reports[1:]:
        if report.shard["count"] != first.shard["count"]:
            raise LossctlError(
                f"{report.source} is {report.label} but {first.source} is {first.label}: the shards of "
                "one merge must come from one split (the same N)"
            )
        differences = [
            (words, first.document[key], report.document[key])
            for key, words in SHARED_FIELDS.items()
            if report.document[key] != first.document[key]
        ]
        differences += [
            (words, first.shard.get(key), report.shard.get(key))
            for key, words in SHARED_SHARD_FIELDS.items()
            if report.shard.get(key) != first.shard.get(key)
        ]
        skipped = (
            first.document["counts"].get("skipped_files"),
            report.document["counts"].get("skipped_files"),
        )
        if skipped[0] != skipped[1]:
            differences.append(("number of skipped files", *skipped))
        if differences:
            words, mine, theirs = differences[0]
            # Digests (the pairing, the inputs) say nothing to a person.
            detail = "" if str(mine).startswith("sha256:") else f" ({_difference(theirs, mine)})"
            raise LossctlError(
                f"{report.source} and {first.source} come from different runs: different {words}{detail}"
            )


def _difference(theirs: Any, mine: Any) -> str:
    """``theirs vs mine``; for two mappings, only the keys whose values differ."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        keys = [key for key in {**mine, **theirs} if theirs.get(key) != mine.get(key)]
        return "; ".join(f"{key}: {_short(theirs.get(key))} vs {_short(mine.get(key))}" for key in keys)
    return f"{_short(theirs)} vs {_short(mine)}"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_shard_numbers(reports: Sequence[ShardReport]) -> None:
    count = reports[0].shard["count"]
    seen: dict[int, ShardReport] = {}
    for report in reports:
        index = report.shard["index"]
        if index in seen:
            raise LossctlError(f"{report.label} given twice: {seen[index].source} and {report.source}")
        seen[index] = report
    missing_count = count - len(seen)
    if missing_count:
        # The first ten only: N may be far larger than the shards given.
        missing = list(itertools.islice((index for index in range(count) if index not in seen), 10))
        names = ", ".join(f"{index}/{count}" for index in missing)
        more = f" and {missing_count - 10} more" if missing_count > 10 else ""
        verb = "is" if missing_count == 1 else "are"
        raise LossctlError(
            f"shard{'s' if missing_count > 1 else ''} {names}{more} {verb} missing: the merge needs all "
            f"{count} shards 0/{count} to {count - 1}/{count}"
        )


def _rows_in_order(reports: Sequence[ShardReport]) -> list[dict[str, Any]]:
    """Every row at its position in the whole pairing; each pair exactly once."""
    total = reports[0].shard["pairs"]
    rows: list[dict[str, Any] | None] = [None] * total
    owners: list[ShardReport | None] = [None] * total
    for report in reports:
        for position, row in zip(report.shard["positions"], report.document["rows"], strict=True):
            if owners[position] is not None:
                raise LossctlError(
                    f"pair {row.get('name')!r} is in both {owners[position].source} and {report.source}: "
                    "the shards overlap (were the folders' files changed between the shard runs?)"
                )
            rows[position], owners[position] = row, report
    absent = [position for position, row in enumerate(rows) if row is None]
    if absent:
        raise LossctlError(
            f"the shards hold {total - len(absent)} of {total} pairs: {len(absent)} pairs are in no shard "
            "(were the folders' files changed between the shard runs?)"
        )
    ordered = [row for row in rows if row is not None]
    if pairing_digest([row.get("name") for row in ordered]) != reports[0].shard["pairing"]:
        raise LossctlError(
            "the shards' pairs are not the pairing they were made from (a shard report was edited?)"
        )
    return ordered


def _json_value(value: Any) -> float:
    if value is None:
        return math.nan
    return {"inf": math.inf, "-inf": -math.inf}.get(value, value) if isinstance(value, str) else value


def frame_from_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> pd.DataFrame:
    """The frame :meth:`lossctl.results.ResultTable.frame` built, from its JSON rows: the same columns,
    in the same order, with the same types."""
    fixed = set(ROW_COLUMNS) | set(metrics)
    per_class = sorted_per_class({key for row in rows for key in row if key not in fixed})
    columns = ROW_COLUMNS + list(metrics) + per_class
    frame = pd.DataFrame(
        {column: pd.Series([row.get(column) for row in rows], dtype=object) for column in columns},
        columns=columns,
    )
    for column in INTEGER_COLUMNS:
        frame[column] = pd.array([row.get(column) for row in rows], dtype="Int64")
    for column in (*metrics, *per_class):
        frame[column] = pd.Series([_json_value(row.get(column)) for row in rows], dtype="float64")
    return frame


def _devices(reports: Sequence[ShardReport]) -> str:
    devices = dict.fromkeys(report.document.get("device", "") for report in reports)
    return ", ".join(device for device in devices if device)


def merge_reports(reports: Sequence[ShardReport]) -> Evaluation:
    """The single-run evaluation that the shard reports make together."""
    if not reports:
        raise LossctlError("no shard reports given")
    _check_same_run(reports)
    _check_shard_numbers(reports)
    reports = sorted(reports, key=lambda report: report.shard["index"])
    first = reports[0].document
    metrics = list(first["metrics"])
    frame = frame_from_rows(_rows_in_order(reports), metrics)
    info = ReportInfo(
        pred_root=first["pred"],
        gt_root=first["gt"],
        metrics=metrics,
        device=_devices(reports),
        precision=first["precision"],
        lossctl_version=first["lossctl"],
        torch_version=first["torch"],
        skipped_files=first["counts"].get("skipped_files", 0),
        **unpack_params(first["params"]),
    )
    return Evaluation(frame, summarize(frame, metrics), info)


def merge_files(paths: Sequence[Path]) -> Evaluation:
    """``lossctl merge``: read every shard report, check them, and join them."""
    return merge_reports([read_shard(path) for path in paths])
