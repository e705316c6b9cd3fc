"""lossctl compare: direction-aware regressions between two reports, tolerances, exit codes."""

from __future__ import annotations

import io
import json
import math
import re
import shlex

import pandas as pd
import pytest
from typer.testing import CliRunner

from lossctl.cli import app
from lossctl.compare import Tolerance, worsening
from lossctl.report import spreadsheet_safe, unquote_spreadsheet_safe

from .conftest import (
    REPO,
    SAMPLE_GT,
    SAMPLE_PRED,
    noisy_pairs,
    one_line_error,
    pair_with_unit_weights,
)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def base_document(tmp_path_factory):
    path = tmp_path_factory.mktemp("reports") / "base.json"
    assert invoke("eval", SAMPLE_PRED, SAMPLE_GT, "--json", path, "-q", "--format", "csv").exit_code == 0
    return json.loads(path.read_text())


def write_report(path, document, edit=None):
    document = json.loads(json.dumps(document))
    if edit:
        edit({row["name"]: row for row in document["rows"]}, document)
    path.write_text(json.dumps(document))
    return path


def test_identical_reports_pass(tmp_path, base_document):
    base = write_report(tmp_path / "base.json", base_document)
    result = invoke("compare", base, base)
    assert result.exit_code == 0 and "OK: no regression beyond tolerance (7 pairs compared)" in result.stdout


def test_regressions_are_direction_aware_and_worst_first(tmp_path, base_document):
    def worse(rows, _):
        rows["blur"]["psnr"] -= 0.5  # PSNR down: worse
        rows["noise"]["psnr"] += 1.0  # PSNR up: better
        rows["noise"]["l1"] *= 1.2  # L1 up: worse
        rows["jpeg_artifacts"]["l1"] *= 0.5  # L1 down: better
        rows["upscale_x4"]["psnr"] -= 2.0

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, worse)
    result = invoke("compare", base, new, "--format", "csv")
    assert result.exit_code == 1
    rows = pd.read_csv(io.StringIO(result.stdout))
    regressions = rows[rows["regression"]]
    assert list(zip(regressions["name"], regressions["metric"], strict=True)) == [
        ("upscale_x4", "psnr"),
        ("blur", "psnr"),
        ("noise", "l1"),
    ]
    assert regressions.iloc[0]["worse_by"] == pytest.approx(2.0)
    assert not rows[(rows["name"] == "jpeg_artifacts") & (rows["metric"] == "l1")]["regression"].item()
    table = invoke("compare", base, new)
    assert "REGRESSED: 3 pairs regressed beyond tolerance" in table.stdout


def test_tolerances_absolute_and_relative(tmp_path, base_document):
    def worse(rows, _):
        rows["blur"]["psnr"] -= 0.05
        rows["noise"]["l1"] *= 1.04

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, worse)
    assert invoke("compare", base, new).exit_code == 1
    assert invoke("compare", base, new, "--tolerance", "psnr=0.1").exit_code == 1
    assert (
        invoke("compare", base, new, "--tolerance", "psnr=0.1", "--rel-tolerance", "l1=0.05").exit_code == 0
    )
    assert (
        invoke("compare", base, new, "--tolerance", "psnr=0.01", "--rel-tolerance", "l1=0.05").exit_code == 1
    )


def test_removed_added_and_no_longer_computed_pairs(tmp_path, base_document):
    def change(rows, document):
        document["rows"] = [row for row in document["rows"] if row["name"] != "noise"]
        document["rows"].append({**rows["blur"], "name": "brand_new"})
        rows["blur"].update(status="error", error="pred blur.png: not a recognised image file")

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, change)
    result = invoke("compare", base, new)
    assert result.exit_code == 1
    assert "removed: noise (in BASE, not in NEW)" in result.stdout
    assert "added: brand_new (in NEW only)" in result.stdout
    assert "no longer computed: blur: error: pred blur.png" in result.stdout
    document = json.loads(invoke("compare", base, new, "--format", "json").stdout)
    assert document["removed"] == ["noise"] and document["added"] == ["brand_new"]
    as_csv = invoke("compare", base, new, "--format", "csv")  # its rows are the pairs compared only
    assert as_csv.exit_code == 1 and "removed: noise (in BASE, not in NEW)" in as_csv.stderr
    assert as_csv.stderr.strip().splitlines()[-1].startswith("REGRESSED:")
    assert document["no_longer_computed"][0]["name"] == "blur" and document["regressed"] is True


def test_the_means_are_over_the_pairs_computed_in_both_reports(tmp_path, base_document):
    """A pair removed from NEW (here the worst by l1) made every mean look 'better' although the
    only change was a pair that got worse: means over each report's own pairs mixed two sets."""

    def change(rows, document):
        worst = max(document["rows"], key=lambda row: row["l1"])["name"]
        document["rows"] = [row for row in document["rows"] if row["name"] != worst]
        (other,) = [row for row in document["rows"] if row["name"] != worst][:1]
        other["l1"] *= 1.5

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, change)
    document = json.loads(invoke("compare", base, new, "--format", "json").stdout)
    l1 = next(entry for entry in document["summary"] if entry["metric"] == "l1")
    assert document["summary_pairs"] == 6 and l1["worse_by"] > 0
    kept = [row for row in json.loads(new.read_text())["rows"]]
    assert l1["new_mean"] == pytest.approx(sum(row["l1"] for row in kept) / 6)
    assert "means over the 6 pairs computed in both reports" in invoke("compare", base, new).stdout
    assert (
        "Means over the 6 pairs computed in both reports:"
        in invoke("compare", base, new, "--format", "markdown").stdout
    )


def test_pairs_not_computed_in_base_are_listed_not_dropped(tmp_path, base_document):
    def broken_in_base(rows, document):
        rows["blur"].update(status="error", error="pred blur.png: truncated")
        rows["noise"].update(status="error", error="pred noise.png: truncated")

    def noise_still_broken(rows, document):
        rows["noise"].update(status="error", error="pred noise.png: truncated")

    base = write_report(tmp_path / "base.json", base_document, broken_in_base)
    new = write_report(tmp_path / "new.json", base_document, noise_still_broken)
    result = invoke("compare", base, new)
    assert result.exit_code == 0 and "(5 pairs compared)" in result.stdout
    assert "not compared: blur: newly computed (BASE: error)" in result.stdout
    assert "not compared: noise: not computed in either report (BASE: error)" in result.stdout
    document = json.loads(invoke("compare", base, new, "--format", "json").stdout)
    assert [entry["name"] for entry in document["not_compared"]] == ["blur", "noise"]


def test_per_class_columns_are_named_as_not_compared(tmp_path):
    seg = REPO / "sample_images" / "seg"
    report = tmp_path / "seg.json"
    invoke("eval", seg / "pred", seg / "gt", "--ignore-index", "255", "--json", report, "-q")
    result = invoke("compare", report, report)
    assert result.exit_code == 0, result.output
    assert (
        "per-class columns not compared: dice_class_K, iou_class_K (their class means are)" in result.stdout
    )


def test_weighted_tv_from_other_weight_maps_is_not_compared(tmp_path, rng):
    pred, gt, weights = pair_with_unit_weights(tmp_path, rng)
    edge_aware, weighted = tmp_path / "edge.json", tmp_path / "weighted.json"
    invoke("eval", pred, gt, "-m", "weighted_tv", "--json", edge_aware, "-q")
    invoke("eval", pred, gt, "-m", "weighted_tv", "--weights", weights, "--json", weighted, "-q")
    result = invoke("compare", edge_aware, weighted)
    assert result.exit_code == 2 and "different metric parameters" in result.stderr, result.output
    assert "weighted_tv: {} vs {'weights': " in result.stderr


@pytest.mark.parametrize(
    "name", ["-neg", "'-neg", "''-neg", "'x", "''", "'", "=1+1", "'=", "@a", "plain", "\tx"]
)
def test_spreadsheet_quoting_reads_back_every_name_exactly(name):
    assert unquote_spreadsheet_safe(spreadsheet_safe(name)) == name


def test_a_csv_report_of_names_that_look_quoted_compares_equal_to_its_json(tmp_path, rng):
    """A pair named '-neg read back from CSV as -neg: a run compared with itself 'removed' a pair."""
    pred, gt = tmp_path / "p", tmp_path / "g"
    noisy_pairs(pred, gt, rng, ("-neg", "'-neg", "'plain"), 16, 16)
    as_json, as_csv = tmp_path / "r.json", tmp_path / "r.csv"
    invoke("eval", pred, gt, "-m", "psnr", "--json", as_json, "--csv", as_csv, "-q")
    result = invoke("compare", as_json, as_csv)
    assert result.exit_code == 0 and "(3 pairs compared)" in result.stdout, result.output


def test_damaged_sidecars_and_params_are_named(tmp_path, base_document):
    base = write_report(tmp_path / "base.json", base_document)
    csv = tmp_path / "r.csv"
    invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "psnr", "--csv", csv, "-q", "--format", "csv")
    sidecar = tmp_path / "r.csv.meta.json"
    for content, fragment in (
        ("{broken", "cannot read " + str(sidecar)),
        ("[1]", f"{sidecar} is not a lossctl report sidecar"),
        ('{"params": []}', f"{csv} is damaged: its 'params' is not an object"),
    ):
        sidecar.write_text(content)
        result = invoke("compare", base, csv)
        assert result.exit_code == 2 and fragment in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    params_list = write_report(tmp_path / "list.json", {**base_document, "params": []})
    result = invoke("compare", base, params_list)
    assert result.exit_code == 2 and "list.json is damaged: its 'params' is not an object" in result.stderr


def test_nan_and_infinite_values(tmp_path, base_document):
    def change(rows, document):
        rows["blur"]["ssim"] = None  # became NaN: infinitely worse
        rows["noise"]["psnr"] = "inf"  # became identical: better

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, change)
    document = json.loads(invoke("compare", base, new, "--format", "json", "--tolerance", "ssim=1").stdout)
    first = document["rows"][0]
    assert (first["name"], first["metric"], first["worse_by"], first["regression"]) == (
        "blur",
        "ssim",
        "inf",
        True,
    )
    assert worsening("psnr", math.inf, math.inf) == 0 and worsening("psnr", math.inf, 40.0) == math.inf
    assert worsening("l1", math.nan, math.nan) == 0 and worsening("l1", 0.1, math.nan) == math.inf


def test_reports_with_different_parameters_are_refused(tmp_path, base_document):
    def change(rows, document):
        document["params"]["charbonnier"]["eps"] = 1e-4

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, change)
    result = invoke("compare", base, new)
    assert result.exit_code == 2
    assert "different metric parameters" in result.stderr and "charbonnier" in result.stderr


def test_csv_reports_are_compared_on_the_columns_they_share(tmp_path, base_document):
    base = write_report(tmp_path / "base.json", base_document)
    subset = tmp_path / "subset.csv"
    invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "psnr,l1", "--csv", subset, "-q", "--format", "csv")
    result = invoke("compare", base, subset)
    assert result.exit_code == 0, result.output
    assert "only in BASE (base.json), not compared: mse, rmse, ssim" in result.stdout
    assert "not checked" not in result.stdout  # the CSV's .meta.json sidecar records its parameters
    (tmp_path / "subset.csv.meta.json").unlink()
    result = invoke("compare", base, subset)
    assert result.exit_code == 0
    assert (
        "metric parameters not checked: NEW (subset.csv) is CSV without its .meta.json sidecar"
        in result.stdout
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.json", "missing.json"], "report not found"),
        ([".", "base.json"], ". is a folder, not a report (give the --csv or --json file eval wrote)"),
        (["base.json", "base.json", "--tolerance", "psnr"], "--tolerance must look like METRIC=VALUE"),
        (["base.json", "base.json", "--tolerance", "psnr=-1"], "must be a finite number >= 0"),
        (["base.json", "base.json", "--rel-tolerance", "nope=1"], "unknown metric 'nope'"),
        (["base.json", "bad.json"], "not a lossctl JSON report"),
        (["base.json", "bad.csv"], "has no 'name' column"),
        (["base.json", "psnr_only.csv", "--tolerance", "ssim=1"], "tolerance given for ssim"),
    ],
)
def test_usage_errors_exit_2(tmp_path, base_document, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    write_report(tmp_path / "base.json", base_document)
    (tmp_path / "bad.json").write_text("[1, 2]")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "psnr_only.csv").write_text("name,status,psnr\nblur,ok,28\n")
    one_line_error(invoke("compare", *args), 2, fragment)


def test_markdown_output(tmp_path, base_document):
    def worse(rows, _):
        rows["blur"]["psnr"] -= 1

    base = write_report(tmp_path / "base.json", base_document)
    new = write_report(tmp_path / "new.json", base_document, worse)
    text = invoke("compare", base, new, "--format", "markdown").stdout
    assert text.startswith("❌ **REGRESSED: 1 pairs regressed") and "| blur | psnr |" in text


def test_ci_doc_commands_run_on_the_samples(tmp_path, monkeypatch):
    """docs/ci.md's own sample commands, as written, pass on sample_images/."""
    (tmp_path / "sample_images").symlink_to(REPO / "sample_images")
    monkeypatch.chdir(tmp_path)
    text = (REPO / "docs" / "ci.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[-1]
    for command in block.strip().splitlines():
        result = invoke(*shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "lossctl.xml").exists()


def test_compare_csv_quotes_names_a_spreadsheet_would_run_as_formulas(tmp_path, base_document):
    """As eval's CSV does: a pair named '=cmd' must not reach a spreadsheet as a formula."""

    def rename(rows, document):
        rows["blur"]["name"] = "=HYPERLINK(1)"

    base = write_report(tmp_path / "base.json", base_document, rename)
    result = invoke("compare", base, base, "--format", "csv")
    assert result.exit_code == 0, result.output
    names = pd.read_csv(io.StringIO(result.stdout))["name"].tolist()
    assert "'=HYPERLINK(1)" in names and "=HYPERLINK(1)" not in names


def test_a_removed_pair_alone_is_a_regression(tmp_path, base_document):
    """A pipeline that stops writing some outputs must not compare as OK."""

    def remove(rows, document):
        document["rows"] = [row for row in document["rows"] if row["name"] != "noise"]

    result = invoke(
        "compare",
        write_report(tmp_path / "b.json", base_document),
        write_report(tmp_path / "n.json", base_document, remove),
    )
    assert result.exit_code == 1 and "REGRESSED: 1 pairs removed (6 pairs compared)" in result.stdout


def test_a_relative_tolerance_is_of_the_base_values_size():
    assert Tolerance(relative=0.1).allowed(-0.5) == pytest.approx(0.05)  # a negative SSIM keeps its slack
    assert Tolerance(relative=0.01, absolute=0.2).allowed(math.inf) == 0.2  # not inf


def test_an_identical_pair_that_stops_being_identical_regresses_under_a_relative_tolerance(
    tmp_path, base_document
):
    """1% of an infinite PSNR is no tolerance: inf -> 30 dB is a regression."""

    def identical(rows, _):
        rows["noise"]["psnr"] = "inf"

    def dropped(rows, _):
        rows["noise"]["psnr"] = 30.0

    base, new = (
        write_report(tmp_path / "b.json", base_document, identical),
        write_report(tmp_path / "n.json", base_document, dropped),
    )
    result = invoke("compare", base, new, "--rel-tolerance", "psnr=0.01", "--format", "json")
    assert result.exit_code == 1
    (row,) = [row for row in json.loads(result.stdout)["rows"] if row["regression"]]
    assert (row["name"], row["metric"], row["worse_by"], row["tolerance"]) == ("noise", "psnr", "inf", 0.0)


def test_reports_made_under_different_conventions_are_refused(tmp_path, base_document):
    def y_channel(rows, document):
        document["params"]["convention"]["y_channel"] = True

    base, new = (
        write_report(tmp_path / "b.json", base_document),
        write_report(tmp_path / "n.json", base_document, y_channel),
    )
    result = invoke("compare", base, new)
    assert result.exit_code == 2 and "convention" in result.stderr


def test_unchanged_means_are_the_same(tmp_path, base_document):
    base = write_report(tmp_path / "b.json", base_document)
    text = invoke("compare", base, base, "--format", "markdown").stdout
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert table and all(line.endswith("| same |") for line in table), table


def test_csv_pair_names_that_read_as_missing_values_come_back(tmp_path, folders, rng):
    """pandas reads NA and null as NaN unless told not to: compare then failed as an internal error."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("NA", "null", "x"))
    report = tmp_path / "r.csv"
    assert invoke("eval", pred, gt, "-m", "psnr", "--csv", report, "-q").exit_code == 0
    result = invoke("compare", report, report, "--format", "json")
    assert result.exit_code == 0, result.output
    assert sorted({row["name"] for row in json.loads(result.stdout)["rows"]}) == ["NA", "null", "x"]


def test_report_paths_are_shown_as_they_are_not_read_as_markup(tmp_path, base_document):
    """The means table's title read Rich markup: a folder named [v2] vanished from the path shown."""
    folder = tmp_path / "[v2]"
    folder.mkdir()
    base = write_report(folder / "base.json", base_document)
    first = invoke("compare", base, base).stdout.splitlines()[0]
    assert first == f"{base} -> {base}: means over the 7 pairs computed in both reports"
