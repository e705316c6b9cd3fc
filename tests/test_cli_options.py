"""Command-line options of eval's pictures, compare, merge, metrics and --debug reach what they
control: each test fails if its option is dropped, replaced by its default or weakened on the way."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser

import pandas as pd
import pytest
from typer.testing import CliRunner

from lossctl.cli import app

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy_pairs, one_line_error, pair_with_unit_weights

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


class _Cards(HTMLParser):
    """The gallery cards (by pair name) and the thumbnails' links of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and "card" in (attributes.get("class") or ""):
            self.cards.append(attributes["data-name"])
        if tag == "img" and "thumb" in (attributes.get("class") or ""):
            self.links += [attributes[key] for key in ("src", "data-full") if attributes.get(key)]


def cards(text: str) -> _Cards:
    parser = _Cards()
    parser.feed(text)
    return parser


# ---------------------------------------------------------------- eval: pictures inside the inputs


def test_html_images_folder_is_refused_inside_the_gt_folder(folders, rng):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["x"], 16, 16)
    result = invoke("eval", pred, gt, "-m", "l1", "--html", gt / "page.html", "--html-images", "files", "-q")
    one_line_error(result, 2, "page_files is the input folder")
    assert sorted(path.name for path in gt.iterdir()) == ["x.png"]  # nothing written into GT


def test_maps_are_refused_inside_the_weights_folder(tmp_path, rng):
    """A map is written under the pair's own name: in --weights it would replace the weight map."""
    pred, gt, weights = pair_with_unit_weights(tmp_path, rng)
    before = (weights / "x.png").read_bytes()
    for target in (weights, weights / "maps"):
        args = ["-m", "l1,weighted_tv", "--weights", weights, "--maps", target, "-q"]
        result = invoke("eval", pred, gt, *args)
        one_line_error(result, 2, "its maps would replace the pictures")
    assert (weights / "x.png").read_bytes() == before and not (weights / "maps").exists()


# ---------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def l1_reports(tmp_path_factory):
    """BASE: the samples' l1 and psnr; NEW: the same with l1 worse by 0.3 (noise), 0.2 (blur) and
    0.1 (jpeg_artifacts), and psnr of blur 0.3 dB lower."""
    folder = tmp_path_factory.mktemp("audit_compare")
    base = folder / "base.json"
    result = invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "l1,psnr", "--json", base, "-q", "--format", "csv")
    assert result.exit_code == 0, result.output
    document = json.loads(base.read_text())
    for row in document["rows"]:
        row["l1"] += {"noise": 0.3, "blur": 0.2, "jpeg_artifacts": 0.1}.get(row["name"], 0.0)
        if row["name"] == "blur":
            row["psnr"] -= 0.3
    new = folder / "new.json"
    new.write_text(json.dumps(document))
    psnr_base = {row["name"]: row["psnr"] for row in json.loads(base.read_text())["rows"]}["blur"]
    return base, new, folder, psnr_base


NO_PSNR = ("--tolerance", "psnr=1")  # blur's 0.3 dB is no regression: only l1 ranks the cards


def test_compare_html_limit_keeps_the_worst_n_cards(l1_reports, tmp_path):
    base, new, _, _ = l1_reports
    for limit, shown in (("1", ["noise"]), ("2", ["noise", "blur"])):
        page = tmp_path / f"c{limit}.html"
        result = invoke("compare", base, new, *NO_PSNR, "--html", page, "--html-limit", limit, "-q")
        assert result.exit_code == 1, result.output
        text = page.read_text(encoding="utf-8")
        assert cards(text).cards == shown
        assert f"{len(shown)} of the 3 pairs that got worse" in text
    page = tmp_path / "all.html"
    assert invoke("compare", base, new, *NO_PSNR, "--html", page, "-q").exit_code == 1
    assert cards(page.read_text(encoding="utf-8")).cards == ["noise", "blur", "jpeg_artifacts"]


def test_compare_html_images_files_go_beside_the_page(l1_reports, tmp_path):
    base, new, _, _ = l1_reports
    page = tmp_path / "changes.html"
    result = invoke("compare", base, new, "--html", page, "--html-images", "files", "--html-limit", "1", "-q")
    assert result.exit_code == 1, result.output
    text = page.read_text(encoding="utf-8")
    assert "data:image" not in text
    links = cards(text).links
    assert links and all(link.startswith("changes_files/") and (tmp_path / link).is_file() for link in links)
    one_line_error(
        invoke("compare", base, new, "--html", page, "--html-images", "zip"), 2, "--html-images zip"
    )


def test_compare_map_scale_pair_gives_each_map_its_own_scale(l1_reports, tmp_path):
    base, new, _, _ = l1_reports
    shared, pair = tmp_path / "shared.html", tmp_path / "pair.html"
    assert invoke("compare", base, new, "--html", shared, "--html-limit", "2", "-q").exit_code == 1
    assert (
        invoke(
            "compare", base, new, "--html", pair, "--html-limit", "2", "--map-scale", "pair", "-q"
        ).exit_code
        == 1
    )
    assert "on one scale for every map" in shared.read_text(encoding="utf-8")
    text = pair.read_text(encoding="utf-8")
    assert "each map on its own scale" in text and "on one scale for every map" not in text


@pytest.mark.parametrize(
    ("absolute", "relative", "regressed"),
    [
        ("0.5", "0.001", False),  # 0.5 dB > 0.3 dB > 0.001 * |base|: the absolute one applies
        ("0.01", "0.02", False),  # 0.02 * |base| (about 0.56 dB) > 0.3 dB > 0.01: the relative one applies
        ("0.01", "0.001", True),  # both smaller than 0.3 dB
    ],
)
def test_compare_the_larger_of_the_two_tolerances_applies(l1_reports, absolute, relative, regressed):
    base, new, _, psnr_base = l1_reports
    args = ["--tolerance", "l1=1", "--tolerance", f"psnr={absolute}", "--rel-tolerance", f"psnr={relative}"]
    result = invoke("compare", base, new, *args, "--format", "json")
    assert result.exit_code == (1 if regressed else 0), result.output
    document = json.loads(result.stdout)
    rows = [row for row in document["rows"] if row["name"] == "blur" and row["metric"] == "psnr"]
    assert len(rows) == 1
    expected = max(float(absolute), float(relative) * abs(psnr_base))
    assert rows[0]["tolerance"] == pytest.approx(expected, rel=1e-12)
    assert rows[0]["regression"] is regressed


def test_compare_refuses_a_tolerance_given_twice_for_one_metric(l1_reports):
    """``--tolerance psnr=0.5 --tolerance psnr=0.1`` kept the last value without a word (the verdict
    depended on the order), where ``--param`` refuses a parameter given twice."""
    base, new, _, _ = l1_reports
    for first, second in (("0.5", "0.1"), ("0.1", "0.5")):
        result = invoke(
            "compare",
            base,
            new,
            "--tolerance",
            "l1=1",
            "--tolerance",
            f"psnr={first}",
            "--tolerance",
            f"psnr={second}",
        )
        one_line_error(result, 2, f"--tolerance psnr={second}: psnr already has one ({first}); give it once")
    result = invoke("compare", base, new, "--rel-tolerance", "psnr=0.1", "--rel-tolerance", "psnr=0.1")
    one_line_error(result, 2, "--rel-tolerance psnr=0.1: psnr already has one (0.1); give it once")
    # One of each kind is no duplicate: the larger applies (see the test above).
    assert invoke("compare", base, new, *NO_PSNR, "--tolerance", "l1=1", "--rel-tolerance", "l1=0.5").exit_code == 0


# ---------------------------------------------------------------- merge


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit_merge")
    paths = [folder / f"shard-{index}.json" for index in range(2)]
    for index, path in enumerate(paths):
        args = ["-m", "l1,psnr", "--shard", f"{index}/2", "--json", path, "-q", "--format", "csv"]
        result = invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args)
        assert result.exit_code == 0, result.output
    single = folder / "single.json"
    assert (
        invoke(
            "eval", SAMPLE_PRED, SAMPLE_GT, "-m", "l1,psnr", "--json", single, "-q", "--format", "csv"
        ).exit_code
        == 0
    )
    return paths, json.loads(single.read_text())


def test_merge_format_json_prints_the_merged_report(shards):
    paths, single = shards
    result = invoke("merge", *paths, "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert sorted(row["name"] for row in document["rows"]) == sorted(row["name"] for row in single["rows"])
    values = {row["name"]: row["l1"] for row in single["rows"]}
    for row in document["rows"]:
        assert row["l1"] == values[row["name"]]


def test_merge_honours_no_per_image(shards):
    paths, _ = shards
    shown = invoke("merge", *paths, "--format", "markdown").stdout
    assert "| name | status |" in shown  # 7 pairs: per-image rows by default
    hidden = invoke("merge", *paths, "--format", "markdown", "--no-per-image")
    assert hidden.exit_code == 0, hidden.output
    assert "| metric | mean |" in hidden.stdout and "| name | status |" not in hidden.stdout


@pytest.mark.parametrize("name", ["merged.csv", "merged.CSV"])
def test_merge_output_ending_in_csv_is_a_csv_with_its_sidecar(shards, tmp_path, name):
    paths, single = shards
    output = tmp_path / name
    result = invoke("merge", *paths, "-o", output, "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(output)  # a CSV, not JSON
    assert sorted(frame["name"]) == sorted(row["name"] for row in single["rows"])
    sidecar = json.loads((tmp_path / f"{name}.meta.json").read_text())
    assert "rows" not in sidecar and sidecar["summary"]
    assert pd.read_csv(io.StringIO(result.stdout))["name"].tolist() == frame["name"].tolist()


def test_merge_output_ending_in_json_is_json(shards, tmp_path):
    paths, single = shards
    output = tmp_path / "merged.json"
    assert invoke("merge", *paths, "-o", output, "--format", "csv").exit_code == 0
    document = json.loads(output.read_text())
    assert len(document["rows"]) == len(single["rows"])
    assert not (tmp_path / "merged.json.meta.json").exists()


# ---------------------------------------------------------------- metrics, --debug


def test_metrics_table_shows_each_default_parameter():
    result = runner.invoke(app, ["metrics"], terminal_width=250, env={"COLUMNS": "250"})
    assert result.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 2}
    assert "eps=0.001" in lines["charbonnier"]
    assert "q=0.5" in lines["quantile"]
    assert "threshold=0.5" in lines["iou"]
    assert "window=11" in lines["ssim"] and "sigma=1.5" in lines["ssim"]


def test_debug_shows_the_internal_errors_traceback(monkeypatch, folders, rng):
    from lossctl import run

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run, "run_evaluation", broken)
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["x"], 16, 16)
    plain = invoke("eval", pred, gt, "-m", "l1", "-q")
    one_line_error(plain, 1, "internal error: RuntimeError: boom (rerun with --debug for details)")
    debug = invoke("eval", pred, gt, "-m", "l1", "-q", "--debug")
    assert debug.exit_code == 1
    assert isinstance(debug.exception, RuntimeError) and str(debug.exception) == "boom"
    assert "internal error" not in debug.stderr


# ---------------------------------------------------------------- output paths against input reports


def test_compare_html_may_not_replace_the_new_report(l1_reports):
    base, new, _, _ = l1_reports
    original = new.read_bytes()
    one_line_error(invoke("compare", base, new, "--html", new), 2, "is an input report")
    assert new.read_bytes() == original


def test_compare_html_may_not_replace_a_csv_reports_sidecar(tmp_path):
    """compare reads a CSV report's parameters from FILE.meta.json beside it: --html there replaced them."""
    base = tmp_path / "base.csv"
    assert (
        invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "l1", "--csv", base, "-q", "--format", "csv").exit_code
        == 0
    )
    sidecar = tmp_path / "base.csv.meta.json"
    original = sidecar.read_bytes()
    one_line_error(invoke("compare", base, base, "--html", sidecar), 2, "is an input report")
    assert sidecar.read_bytes() == original
