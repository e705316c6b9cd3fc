"""Image-regression gates: thresholds on metrics, from the command line or a config file.

A threshold is ``--min psnr=32`` or ``--max l1=0.02``. Thresholds apply to each pair (default) or
to the mean over the pairs; rules in a config file may tighten them for pairs whose name matches a
glob (``faces/**``). A value exactly at its limit passes; NaN never passes.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pandas as pd

from .errors import LossctlError
from .metrics import METRICS
from .report import format_precise, print_line
from .safe_text import printable, xml_safe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BOUNDS = ("min", "max")
MODES = ("each", "mean")
CONFIG_KEYS = ("min", "max", "mode", "metrics", "params", "allow-missing", "rules")
RULE_KEYS = ("paths", "min", "max")


@dataclass(frozen=True)
class Limit:
    """``metric >= value`` (bound ``min``) or ``metric <= value`` (bound ``max``)."""

    metric: str
    bound: str
    value: float

    def passes(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return measured >= self.value if self.bound == "min" else measured <= self.value

    def excess(self, measured: float) -> float:
        """How far ``measured`` is on the wrong side of the limit (NaN for NaN)."""
        return self.value - measured if self.bound == "min" else measured - self.value

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.bound == 'min' else '<='} {self.value:g}"


@dataclass(frozen=True)
class Rule:
    """Limits for the pairs whose name matches one of ``patterns`` (every pair when empty)."""

    limits: tuple[Limit, ...]
    patterns: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return not self.patterns or any(glob_regex(pattern).fullmatch(name) for pattern in self.patterns)

    @property
    def label(self) -> str:
        return ", ".join(self.patterns) if self.patterns else "all pairs"


@dataclass(frozen=True)
class CheckConfig:
    rules: tuple[Rule, ...] = ()
    mode: str = "each"
    metrics: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    allow_missing: bool = False
    source: Path | None = None

    @property
    def threshold_metrics(self) -> list[str]:
        return sorted({limit.metric for rule in self.rules for limit in rule.limits}, key=list(METRICS).index)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: ``**`` spans folders, ``*`` and ``?`` stay within one name."""
    parts = re.split(r"(\*\*/?|\*|\?)", pattern)
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(translated.get(part, re.escape(part)) for part in parts))


def parse_limit(text: str, bound: str, where: str = "command line") -> Limit:
    """``psnr=32`` for ``--min`` / ``--max``."""
    metric, _, value = text.partition("=")
    metric = metric.strip()
    if not value:
        raise LossctlError(f"--{bound} must look like METRIC=VALUE (e.g. psnr=32); got {text!r} ({where})")
    return _limit(metric, bound, value.strip(), where)


def _limit(metric: str, bound: str, value: Any, where: str) -> Limit:
    if metric not in METRICS:
        raise LossctlError(
            f"unknown metric {metric!r} in {bound} thresholds ({where}); valid metrics: {', '.join(METRICS)}"
        )
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LossctlError(f"threshold {bound} {metric} must be a number; got {value!r} ({where})") from None
    if isinstance(value, bool) or math.isnan(number):
        raise LossctlError(f"threshold {bound} {metric} must be a number; got {value!r} ({where})")
    return Limit(metric, bound, number)


def find_config(start: Path) -> Path | None:
    """The nearest ``lossctl.toml``, or ``pyproject.toml`` with ``[tool.lossctl]``, from ``start`` up."""
    for folder in (start, *start.parents):
        candidate = folder / "lossctl.toml"
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "lossctl" in _tool_table(_read_toml(pyproject)):
            return pyproject
    return None


def _tool_table(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """A pyproject's ``[tool]`` table, empty where there is none (or ``tool`` is not a table)."""
    tool = document.get("tool", {})
    return tool if isinstance(tool, dict) else {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except OSError as error:
        raise LossctlError(f"cannot read config {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise LossctlError(f"config {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise LossctlError(f"config {path} is not valid TOML: it is not UTF-8 text") from None


def load_config(path: Path) -> CheckConfig:
    """Read thresholds from ``[tool.lossctl]`` of a pyproject.toml, or the top level of another file."""
    document = _read_toml(path)
    table, prefix = _tool_table(document).get("lossctl"), "tool.lossctl"
    if table is None and path.name == "pyproject.toml":  # its top level is the project's, not ours
        raise LossctlError(f"{path} has no [tool.lossctl] table of thresholds")
    if table is None:
        table, prefix = document, ""
    elif not isinstance(table, dict):
        raise LossctlError(f"{path}: tool.lossctl must be a table of thresholds")
    where = str(path)

    def key_name(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    _reject_unknown(table, CONFIG_KEYS, key_name, where)
    mode = table.get("mode", "each")
    if mode not in MODES:
        raise LossctlError(f"{where}: {key_name('mode')} must be 'each' or 'mean'; got {mode!r}")
    metrics = _string_list(table.get("metrics", []), key_name("metrics"), where)
    for name in metrics:
        if name not in METRICS:
            raise LossctlError(
                f"{where}: unknown metric {name!r} in {key_name('metrics')}; valid metrics: {', '.join(METRICS)}"
            )
    allow_missing = table.get("allow-missing", False)
    if not isinstance(allow_missing, bool):
        raise LossctlError(f"{where}: {key_name('allow-missing')} must be true or false")
    rules = [Rule(_limits_table(table, key_name, where))]
    raw_rules = table.get("rules", [])
    if not isinstance(raw_rules, list) or not all(isinstance(rule, dict) for rule in raw_rules):
        raise LossctlError(
            f"{where}: {key_name('rules')} must be an array of tables ([[{key_name('rules')}]])"
        )
    for index, raw in enumerate(raw_rules):
        rule_key = key_name(f"rules[{index}]")

        def rule_key_name(key: str, rule_key: str = rule_key) -> str:
            return f"{rule_key}.{key}"

        _reject_unknown(raw, RULE_KEYS, rule_key_name, where)
        patterns = raw.get("paths")
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = _string_list(patterns, rule_key_name("paths"), where)
        if not patterns:
            raise LossctlError(f"{where}: {rule_key_name('paths')} must name at least one glob")
        rules.append(Rule(_limits_table(raw, rule_key_name, where), tuple(patterns)))
    params = tuple(_string_list(table.get("params", []), key_name("params"), where))
    return CheckConfig(tuple(rules), mode, tuple(metrics), params, allow_missing, path)


def _reject_unknown(table: Mapping[str, Any], allowed: Sequence[str], key_name, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise LossctlError(f"{where}: unknown key {key_name(key)!r}; allowed keys: {', '.join(allowed)}")


def _string_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise LossctlError(f"{where}: {key} must be a list of strings")
    return value


def _limits_table(table: Mapping[str, Any], key_name, where: str) -> tuple[Limit, ...]:
    limits = []
    for bound in BOUNDS:
        values = table.get(bound, {})
        if not isinstance(values, dict):
            raise LossctlError(f"{where}: {key_name(bound)} must be a table of METRIC = VALUE")
        for metric, value in values.items():
            limits.append(_limit(metric, bound, value, f"{where}, key {key_name(bound)}.{metric}"))
    return tuple(limits)


def merge_command_line(config: CheckConfig, limits: Iterable[Limit]) -> CheckConfig:
    """Command-line limits replace the file's global limit for the same metric and bound."""
    given = list(limits)
    replaced = {(limit.metric, limit.bound) for limit in given}
    base = config.rules[0].limits if config.rules else ()
    kept = tuple(limit for limit in base if (limit.metric, limit.bound) not in replaced)
    return replace(config, rules=(Rule(kept + tuple(given)), *config.rules[1:]))


def limits_for(name: str, rules: Sequence[Rule]) -> list[Limit]:
    """The limits that apply to pair ``name``: a later matching rule overrides an earlier one."""
    chosen: dict[tuple[str, str], Limit] = {}
    for rule in rules:
        if rule.matches(name):
            chosen.update({(limit.metric, limit.bound): limit for limit in rule.limits})
    return list(chosen.values())


@dataclass(frozen=True)
class Failure:
    name: str
    limit: Limit
    value: float
    file: str = ""
    detail: str = ""  # e.g. which pairs made a mean NaN

    @property
    def excess(self) -> float:
        return self.limit.excess(self.value)

    @property
    def message(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.limit.metric} = {format_precise(self.value)}, limit {self.limit}{detail}"


@dataclass
class Verdict:
    pairs: int
    failures: list[Failure] = field(default_factory=list)
    missing: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, status, reason, file
    allow_missing: bool = False
    mode: str = "each"
    computed: int = 0  # the pairs computed (status ok), which the thresholds were applied to
    unmatched_rules: list[str] = field(default_factory=list)  # path rules no pair's name matched

    @property
    def failures_by_name(self) -> dict[str, list[Failure]]:
        grouped: dict[str, list[Failure]] = {}
        for failure in self.failures:
            grouped.setdefault(failure.name, []).append(failure)
        return grouped

    @property
    def failed_pairs(self) -> set[str]:
        names = {failure.name for failure in self.failures}
        if not self.allow_missing:
            names |= {name for name, *_ in self.missing}
        return names

    @property
    def exit_code(self) -> int:
        if self.missing and not self.allow_missing:
            return 3
        return 1 if self.failures else 0

    def line(self) -> str:
        failed = len(self.failed_pairs)
        if self.mode == "mean" and self.failures:
            return f"FAIL: {len(self.failures)} mean threshold(s) failed over {self.computed} computed pairs"
        if self.exit_code == 0:
            skipped = f" ({len(self.missing)} missing or unreadable, allowed)" if self.missing else ""
            return f"PASS: {self.pairs} pairs, 0 failed{skipped}"
        return f"FAIL: {failed} of {self.pairs} pairs failed"


def check_frame(frame: pd.DataFrame, config: CheckConfig) -> Verdict:
    """Apply ``config``'s rules to a results frame (``results.ResultTable.frame``)."""
    ok = frame[frame["status"] == "ok"]
    verdict = Verdict(pairs=len(frame), allow_missing=config.allow_missing, mode=config.mode, computed=len(ok))
    # A rule whose globs match no pair at all never applies: most likely a typo, which passed quietly.
    verdict.unmatched_rules = [
        rule.label for rule in config.rules if rule.patterns and not any(map(rule.matches, frame["name"]))
    ]
    for row in frame[frame["status"] != "ok"].itertuples(index=False):
        verdict.missing.append((row.name, row.status, row.error, row.pred or row.gt))
    if config.mode == "each":
        for row in ok.to_dict(orient="records"):
            for limit in limits_for(row["name"], config.rules):
                value = float(row[limit.metric])
                if not limit.passes(value):
                    verdict.failures.append(Failure(row["name"], limit, value, row["pred"]))
        return verdict
    for rule in config.rules:
        members = ok[[rule.matches(name) for name in ok["name"]]]
        for limit in rule.limits:
            values = members[limit.metric]
            label = f"mean ({rule.label})"
            if not len(values):  # no pair matches the rule: as in 'each' mode, nothing to fail
                continue
            if values.isna().any():
                nan_pairs = list(members["name"][values.isna()])
                listed = ", ".join(nan_pairs[:3]) + (
                    f" and {len(nan_pairs) - 3} more" if len(nan_pairs) > 3 else ""
                )
                verdict.failures.append(Failure(label, limit, math.nan, detail=f"NaN in {listed}"))
                continue
            # An infinity in the better direction (identical pairs' PSNR) is left out, as the summary
            # does; one in the worse direction (a cross-entropy of inf) makes the mean that infinity.
            worst = math.inf if METRICS[limit.metric].better == "lower" else -math.inf
            finite = values[values.abs() != math.inf]
            if (values == worst).any():
                mean = worst
            else:
                mean = float(finite.mean()) if len(finite) else float(values.iloc[0])
            if not limit.passes(mean):
                verdict.failures.append(Failure(label, limit, mean))
    return verdict


def failure_rows(verdict: Verdict) -> list[list[str]]:
    """``[name, metric, value, limit, by]`` for each failure, worst first within each metric."""
    ordered = sorted(
        verdict.failures,
        key=lambda f: (f.limit.metric, -(f.excess if not math.isnan(f.excess) else math.inf)),
    )
    return [
        [
            f.name,
            f.limit.metric,
            format_precise(f.value) + (f" ({f.detail})" if f.detail else ""),
            str(f.limit).split(" ", 1)[1],
            format_precise(f.excess),
        ]
        for f in ordered
    ]


def missing_lines(verdict: Verdict) -> list[str]:
    state = "allowed" if verdict.allow_missing else "fails the check"
    return [f"{name}: {status}: {reason} ({state})" for name, status, reason, _ in verdict.missing]


def rule_notes(verdict: Verdict) -> list[str]:
    return [f"note: rule paths {label} match no pair, so its thresholds checked nothing" for label in verdict.unmatched_rules]


def to_junit(verdict: Verdict, frame: pd.DataFrame) -> str:
    """JUnit XML: one test case per pair (in mean mode, per mean threshold, and one per pair that
    was not computed: it fails the check as in 'each' mode). Names and messages keep every
    character XML can hold; the others are shown as escapes (:func:`lossctl.safe_text.xml_safe`)."""
    suite = ElementTree.Element("testsuite", name="lossctl check")
    failures = errors = skipped = 0
    by_name = verdict.failures_by_name
    missing = {name: (status, reason) for name, status, reason, _ in verdict.missing}
    names = list(frame["name"]) if verdict.mode == "each" else [*([*by_name] or ["mean"]), *missing]
    for name in names:
        case = ElementTree.SubElement(suite, "testcase", classname="lossctl.check", name=xml_safe(name))
        if name in missing:
            status, reason = missing[name]
            message = xml_safe(f"{status}: {reason}")
            if verdict.allow_missing:
                ElementTree.SubElement(case, "skipped", message=message)
                skipped += 1
            else:
                ElementTree.SubElement(case, "error", message=message, type=status)
                errors += 1
        elif name in by_name:
            failures += 1
            messages = [xml_safe(failure.message) for failure in by_name[name]]
            element = ElementTree.SubElement(case, "failure", message="; ".join(messages), type="threshold")
            element.text = "\n".join(messages)
    tests = len(names)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def github_annotations(verdict: Verdict) -> list[str]:
    """GitHub Actions ``::error`` workflow commands, one per failing pair. ``file=`` is the file's
    path, escaped by GitHub's rules for properties; the message shows names as every line for
    people does (:func:`lossctl.safe_text.printable`: one line, no control character)."""

    def escape(text: str, is_property: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if is_property else text

    def annotation(file: str, text: str) -> str:
        location = f"file={escape(file, True)}," if file else ""
        return f"::error {location}title={escape('lossctl check', True)}::{escape(printable(text))}"

    lines = [
        annotation(failures[0].file, f"{name}: " + "; ".join(failure.message for failure in failures))
        for name, failures in verdict.failures_by_name.items()
    ]
    if not verdict.allow_missing:
        lines += [
            annotation(file, f"{name}: {status}: {reason}") for name, status, reason, file in verdict.missing
        ]
    return lines


FAILURE_HEADER = ["name", "metric", "value", "limit", "by"]


def render_check(console, verdict: Verdict) -> None:
    """The failing pairs as a table, the missing pairs, then the one-line verdict."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = failure_rows(verdict)
    if rows:
        table = Table(title="failed thresholds", title_justify="left", box=box.SIMPLE_HEAD)
        for index, header in enumerate(FAILURE_HEADER):
            table.add_column(header, justify="left" if index < 2 else "right", overflow="fold")
        for row in rows:
            # Text, not markup: a mean's value cell names its NaN pairs (`NaN in a, b`).
            table.add_row(*(Text(printable(cell, cell=True)) for cell in row))
        console.print(table)
    for line in missing_lines(verdict):
        print_line(console, line, style="yellow" if verdict.allow_missing else "red")
    for line in rule_notes(verdict):
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(
        verdict.line(),
        style="bold green" if verdict.exit_code == 0 else "bold red",
        markup=False,
        soft_wrap=True,
    )


def check_markdown(verdict: Verdict) -> str:
    from .report import markdown_table, markdown_text

    icon = "✅" if verdict.exit_code == 0 else "❌"
    out = [f"{icon} **{markdown_text(verdict.line())}**"]
    if rows := failure_rows(verdict):
        out += ["", *markdown_table(FAILURE_HEADER, rows)]
    if lines := [*missing_lines(verdict), *rule_notes(verdict)]:
        out += ["", *(f"- {markdown_text(line)}" for line in lines)]
    return "\n".join(out) + "\n"
