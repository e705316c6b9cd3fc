"""HTML reports of eval and compare: contents, order, escaping, offline, errors (the browser test
is tests/test_browser.py)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lossctl import colormap, html_report
from lossctl.cli import app
from lossctl.report import format_value

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy, noisy_pairs, random_rgb, save_image

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


class Outline(HTMLParser):
    """The parts of a report page the tests look at: cards, thumbnails, tags that could fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[str] = []
        self.thumbs: list[dict[str, str]] = []
        self.fetching: list[tuple[str, str]] = []
        self.svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and "card" in attributes.get("class", ""):
            self.cards.append(attributes["data-name"])
        if tag == "img" and "thumb" in attributes.get("class", ""):
            self.thumbs.append(attributes)
        if tag == "svg":
            self.svgs += 1
        for key in ("src", "href", "data-full"):
            value = attributes.get(key) or ""
            if value and not value.startswith("data:image/png;base64,") and not (tag == "svg"):
                self.fetching.append((tag, value))
        if tag in ("link", "iframe", "object", "embed"):
            self.fetching.append((tag, ""))

    def handle_data(self, data):
        self.text.append(data)


def outline(text: str) -> Outline:
    parser = Outline()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    page = folder / "report.html"
    result = invoke(
        "eval", SAMPLE_PRED, SAMPLE_GT, "-m", "l1,psnr,ssim", "--html", page, "--format", "csv", "-q"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False, na_values=[""])
    return page.read_text(encoding="utf-8"), frame


def decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_page_has_the_summary_a_histogram_per_metric_and_the_gallery_worst_first(sample_report):
    text, frame = sample_report
    page = outline(text)
    metrics = [column for column in frame.columns[10:]]
    assert page.svgs == len(metrics)  # one histogram per metric
    assert "pooled PSNR (from the mean MSE): 23.09 dB" in text
    assert '<td class="num">0.03066</td>' in text  # l1's mean, as the terminal table shows it
    worst_first = frame.sort_values("l1", ascending=False)["name"].tolist()
    assert page.cards == worst_first
    assert "The 7 worst of 7 computed pairs by l1" in text
    assert len(page.thumbs) == 3 * 7  # prediction, ground truth, heat map per pair


def test_page_works_offline(sample_report):
    text, _ = sample_report
    page = outline(text)
    assert page.fetching == []  # every picture is a data URI; no stylesheet, script or frame to fetch
    assert "<script src" not in text and "@import" not in text and "url(" not in text


def test_gallery_heat_maps_show_the_reported_numbers(sample_report):
    text, frame = sample_report
    page = outline(text)
    l1 = frame.set_index("name")["l1"]
    heat_thumbs = [thumb for thumb in page.thumbs if "l1 map" in thumb["data-caption"]]
    assert len(heat_thumbs) == 7
    for thumb in heat_thumbs:
        name = thumb["data-caption"].split(" — ")[0] if " — " in thumb["data-caption"] else None
        mean = float(re.search(r"mean ([0-9.e-]+)", thumb["data-caption"]).group(1))
        assert any(mean == pytest.approx(value, rel=1e-5) for value in l1), (name, mean)
        enlarged = decode(thumb["data-full"] or thumb["src"])
        assert enlarged.width > 256  # the map at full size and its colour bar
    scale = re.search(r"on one scale for every map, 0 to ([0-9.]+)", text)
    assert scale is not None


def test_enlarged_heat_map_colours_are_the_report_numbers(sample_report):
    """Decode the map that the page embeds, pixel by pixel, back to values: their mean is l1."""
    text, frame = sample_report
    rows = frame.set_index("name")["l1"]
    page = outline(text)
    blur = next(thumb for thumb in page.thumbs if thumb["data-caption"].startswith("blur: l1 map"))
    low, high = float(blur["data-low"]), float(blur["data-high"])  # the scale, stated exactly
    assert low == 0.0 and f"colour scale 0 to {high:.4g}" in blur["data-caption"]
    image = np.asarray(decode(blur["data-full"]).convert("RGB"))
    values = colormap.index_of(image[:256, :256]) * (high / 255)
    assert abs(values.mean() - rows["blur"]) <= high / 510 + 1e-7  # within half a colour level


def test_pictures_can_go_beside_the_page(tmp_path):
    page_path = tmp_path / "report.html"
    args = ["-m", "l1", "--html", page_path, "--html-images", "files", "-q"]
    assert invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args).exit_code == 0
    text = page_path.read_text(encoding="utf-8")
    assert len(text) < 100_000 and "data:image" not in text
    page = outline(text)
    assert len(page.thumbs) == 3 * 7
    for thumb in page.thumbs:
        for link in (thumb["src"], thumb["data-full"]):
            if link:
                assert link.startswith("report_files/") and (tmp_path / link).is_file()
        with Image.open(tmp_path / thumb["src"]) as image:
            assert max(image.size) == 200  # a thumbnail, downscaled with Pillow
    one_line_error(invoke("eval", SAMPLE_PRED, SAMPLE_GT, "--html-images", "zip"), 2, "--html-images zip")


def test_names_are_escaped(folders, rng, tmp_path):
    pred, gt = folders
    hostile = ["<img src=x onerror=alert(1)>", "a&b \"quoted\" 'single'", "Straße"]
    noisy_pairs(pred, gt, rng, hostile)
    page_path = tmp_path / "r.html"
    result = invoke("eval", pred, gt, "-m", "l1", "--html", page_path, "-q")
    assert result.exit_code == 0, result.output
    text = page_path.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "a&amp;b &quot;quoted&quot; &#x27;single&#x27;" in text
    page = outline(text)
    # Lower-cased as the page's filter lower-cases what is typed (toLowerCase): casefold made
    # Straße strasse, which typing Straße never matched.
    assert sorted(page.cards) == sorted(name.lower() for name in hostile) and "straße" in page.cards
    assert page.fetching == []


def test_failed_pairs_are_listed_with_their_reasons(folders, rng, tmp_path):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(gt / "good.png", clean)
    save_image(pred / "good.png", noisy(rng, clean))
    (pred / "broken.png").write_bytes(b"not an image")
    save_image(gt / "broken.png", random_rgb(rng))
    save_image(pred / "sizes.png", random_rgb(rng, 10, 10))
    save_image(gt / "sizes.png", random_rgb(rng, 12, 10))
    save_image(pred / "extra.png", random_rgb(rng))
    page_path = tmp_path / "r.html"
    result = invoke("eval", pred, gt, "--html", page_path, "-q")
    assert result.exit_code == 3
    text = page_path.read_text(encoding="utf-8")
    assert "Pairs not computed (3)" in text
    for fragment in ("broken", "size mismatch: pred is 10x10, gt is 10x12", "no ground truth with this name"):
        assert fragment in text
    assert outline(text).cards == ["good"]


def test_a_pair_without_a_map_keeps_its_card_with_the_reason(folders, rng, tmp_path):
    pred, gt = folders
    for name, size in (("tiny", 8), ("fine", 32)):
        clean = random_rgb(rng, size, size)
        save_image(gt / f"{name}.png", clean)
        save_image(pred / f"{name}.png", noisy(rng, clean))
    page_path = tmp_path / "r.html"
    args = ["-m", "l1,ssim", "--map-metric", "ssim", "--html", page_path, "-q"]
    assert invoke("eval", pred, gt, *args).exit_code == 0
    text = page_path.read_text(encoding="utf-8")
    page = outline(text)
    assert page.cards == ["fine", "tiny"]  # an empty ssim sorts last
    assert "ssim: 8x8 is smaller than the 11x11 window" in text
    assert [thumb["data-caption"] for thumb in page.thumbs][3:] == ["tiny: prediction", "tiny: ground truth"]


def test_gallery_limit_keeps_the_summary_of_every_pair(tmp_path):
    page_path = tmp_path / "r.html"
    args = ["-m", "l1,ssim", "--html", page_path, "--html-limit", "2", "--html-sort", "ssim", "-q"]
    result = invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args, "--format", "csv")
    frame = pd.read_csv(io.StringIO(result.stdout))
    text = page_path.read_text(encoding="utf-8")
    assert outline(text).cards == frame.sort_values("ssim")["name"].head(2).tolist()  # lowest SSIM first
    assert "The 2 worst of 7 computed pairs by ssim" in text and "cover all 7 computed pairs" in text
    assert "ssim (↑ higher is better), 7 pairs" in text  # the histogram counts every pair


def test_the_gallery_says_which_pairs_have_no_value_to_sort_by(folders, rng, tmp_path):
    """Pairs without a value of the sort metric come last; the page said they were sorted by it."""
    pred, gt = folders
    for name, size in (("large", 32), ("small", 8)):  # 8x8 is smaller than SSIM's window: NaN
        clean = random_rgb(rng, size, size)
        save_image(pred / f"{name}.png", noisy(rng, clean))
        save_image(gt / f"{name}.png", clean)
    page_path = tmp_path / "r.html"
    invoke("eval", pred, gt, "-m", "l1,ssim,ce", "--html", page_path, "--html-sort", "ssim", "-q")
    text = page_path.read_text(encoding="utf-8")
    assert outline(text).cards == ["large", "small"]
    assert "The 1 pairs with no ssim value come last, in name order." in text
    invoke("eval", pred, gt, "-m", "l1,ssim,ce", "--html", page_path, "--html-sort", "ce", "-q")
    assert "No pair has a ce value (see their notes), so they are in name order." in page_path.read_text()


def test_a_segmentation_run_has_no_heat_map_to_draw_and_still_gets_its_page(tmp_path):
    """README: segmentation pairs have no heat map. The page failed instead, once every pair had
    been computed, for want of the default map metric l1."""
    seg = SAMPLE_PRED.parent / "seg"
    page_path = tmp_path / "r.html"
    result = invoke(
        "eval",
        seg / "pred",
        seg / "gt",
        "--ignore-index",
        "255",
        "--html",
        page_path,
        "-q",
        "--html-sort",
        "iou",
    )
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    assert "computed pairs by iou" in page and "no heat map for segmentation pairs" in page
    assert "class scores (.npy) have no picture" in page and "label maps are not drawn" in page
    assert "Segmentation pairs have no heat map." in page and "Heat maps show" not in page


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--maps", "{tmp}/m", "--map-metric", "psnr"],
            "--map-metric psnr: no heat map for it; choose one of l1, ssim",
        ),
        (["--maps", "{tmp}/m", "--map-metric", "nope"], "--map-metric nope: no heat map for it"),
        (["--maps", "{tmp}/m", "-m", "psnr"], "--map-metric l1: l1 is not among the metrics computed"),
        (["--maps", "{tmp}/m", "--map-scale", "wide"], "--map-scale wide: choose shared or pair"),
        (["--maps", "{tmp}/file.txt"], "is a file; give a folder"),
        (["--maps", "{tmp}/file.txt/sub"], "cannot create --maps folder"),
        (["--html", "{tmp}"], "--html {tmp} is a folder; give a file name"),
        (["--html", "{tmp}/no/such/r.html"], "does not exist"),
        (["--html", "{tmp}/r.html", "--html-limit", "0"], "--html-limit must be at least 1"),
        (["--html", "{tmp}/r.html", "--html-sort", "nope"], "--html-sort nope: unknown metric"),
        (
            ["--html", "{tmp}/r.html", "-m", "l1", "--html-sort", "psnr"],
            "--html-sort psnr: not among the metrics",
        ),
    ],
)
def test_picture_option_errors_exit_2_with_one_line(tmp_path, args, fragment):
    (tmp_path / "file.txt").write_text("x")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    one_line_error(invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args), 2, fragment.replace("{tmp}", str(tmp_path)))


def test_map_options_are_checked_only_by_name_without_pictures():
    assert invoke("eval", SAMPLE_PRED, SAMPLE_GT, "-m", "psnr", "--format", "csv").exit_code == 0
    one_line_error(invoke("eval", SAMPLE_PRED, SAMPLE_GT, "--map-metric", "x"), 2, "--map-metric x")


def test_histogram_bins_count_every_finite_value_and_mention_infinite_ones():
    svg = html_report.histogram_svg("psnr", [10.0, 10.0, 20.0, 30.0, float("inf"), float("nan")], bins=4)
    counts = [int(count) for count in re.findall(r": (\d+) pairs?</title></rect>", svg)]
    assert sum(counts) == 4 and counts == [2, 1, 1]
    assert "1 pair(s) at inf not shown" in svg
    assert "no finite values" in html_report.histogram_svg("psnr", [float("nan")])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """BASE: the samples; NEW: the same with the noise prediction blurred and the blur prediction gone."""
    folder = tmp_path_factory.mktemp("compare")
    new_pred = folder / "new_pred"
    for path in SAMPLE_PRED.rglob("*.*"):
        if "blur" not in path.name:
            target = new_pred / path.relative_to(SAMPLE_PRED)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    noise = Image.open(new_pred / "noise.png")
    noise.resize((16, 16)).resize((256, 256)).save(new_pred / "noise.png")
    base, new = folder / "base.json", folder / "new.json"
    for pred, report in ((SAMPLE_PRED, base), (new_pred, new)):
        result = invoke("eval", pred, SAMPLE_GT, "-m", "l1,psnr", "--json", report, "-q", "--format", "csv")
        assert result.exit_code in (0, 3), result.output
    return base, new, folder


def test_compare_html_shows_before_and_after_of_the_pairs_that_got_worse(reports):
    base, new, folder = reports
    page_path = folder / "changes.html"
    result = invoke("compare", base, new, "--html", page_path, "-q")
    assert result.exit_code == 1  # the verdict is unchanged by --html
    text = page_path.read_text(encoding="utf-8")
    page = outline(text)
    assert page.cards == ["noise", "blur"]  # worse values first, then pairs no longer computed
    captions = [thumb["data-caption"] for thumb in page.thumbs]
    assert "noise: prediction before (BASE)" in captions and "noise: prediction after (NEW)" in captions
    means = [float(m) for m in re.findall(r"noise: l1 map 256x256, mean ([0-9.e-]+)", " ".join(captions))]
    rows = {
        which: {row["name"]: row for row in json.loads(path.read_text())["rows"]}["noise"]["l1"]
        for which, path in (("base", base), ("new", new))
    }
    assert means == pytest.approx([rows["base"], rows["new"]], rel=1e-5)
    assert "no longer computed: blur: unmatched: no prediction with this name" in text
    assert page.fetching == []


def test_compare_html_says_why_a_picture_is_missing(reports, tmp_path):
    base, new, _ = reports
    document = json.loads(new.read_text())
    for row in document["rows"]:
        row["pred"] = row["pred"].replace("new_pred", "moved_away")
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(document))
    page_path = tmp_path / "changes.html"
    assert invoke("compare", base, moved, "--html", page_path, "-q").exit_code == 1
    text = page_path.read_text(encoding="utf-8")
    assert "pred noise.png: cannot read file: No such file or directory" in text


def test_compare_html_says_when_the_reports_files_cannot_be_found(tmp_path, rng, monkeypatch):
    """Reports name files as eval was given them: compared from another folder, the page was a
    gallery of blanks, each ground truth blamed on the prediction, and nothing said so."""
    clean = random_rgb(rng, 32, 32)
    for folder, image in (("gt", clean), ("base", noisy(rng, clean, 2)), ("new", noisy(rng, clean, 60))):
        (tmp_path / folder).mkdir()
        save_image(tmp_path / folder / "a.png", image)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    for side in ("base", "new"):
        assert invoke("eval", side, "gt", "-m", "l1", "--json", f"reports/{side}.json", "-q").exit_code == 0
    monkeypatch.chdir(tmp_path / "reports")  # neither here nor beside the reports: base/a.png
    result = invoke("compare", "base.json", "new.json", "--html", "c.html")
    assert result.exit_code == 1
    note = (
        "note: --html: 2 before/after pair(s) of those that got worse could not be read (first: pred a.png:"
    )
    assert note in result.stdout and "run compare there, or eval with absolute folders" in result.stdout
    page = (tmp_path / "reports" / "c.html").read_text(encoding="utf-8")
    assert "not drawn: pred a.png: cannot read file" in page  # the ground truth's panel
    assert note.removeprefix("note: ") in page


def test_compare_html_errors(reports, tmp_path):
    base, new, _ = reports
    one_line_error(invoke("compare", base, new, "--html", tmp_path), 2, "is a folder")
    one_line_error(
        invoke("compare", base, new, "--html", tmp_path / "c.html", "--map-metric", "ssim"),
        2,
        "--map-metric ssim: ssim is not among the metrics computed",
    )


@pytest.mark.parametrize(
    ("recorded", "fragment"),
    [
        (
            {"convention": {"preset": "skimage", "crop_border": 0, "future_option": True}},
            "cannot draw maps under",
        ),
        ({"convention": {"preset": "jpeg2000"}}, "cannot draw maps under"),
        ({"convention": {"crop_border": -2}}, "cannot draw maps under"),
        (
            {"l1": {"scale": 2}},
            "l1 parameters cannot be used for its maps: --param l1.scale=2: l1 has no parameter",
        ),
    ],
)
def test_compare_html_refuses_parameters_it_cannot_draw_maps_under(reports, tmp_path, recorded, fragment):
    """A report of a later lossctl (or one edited by hand): an internal error (TypeError) before."""
    edited = []
    for report in reports[:2]:  # both alike: reports of different parameters are refused anyway
        document = json.loads(report.read_text())
        document["params"].update(recorded)
        edited.append(tmp_path / report.name)
        edited[-1].write_text(json.dumps(document))
    one_line_error(invoke("compare", *edited, "--html", tmp_path / "c.html"), 2, fragment)


def test_compare_html_from_csv_reports_uses_their_sidecars(reports, tmp_path):
    _, _, folder = reports
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    for pred, report in ((SAMPLE_PRED, base), (folder / "new_pred", new)):
        invoke(
            "eval",
            pred,
            SAMPLE_GT,
            "-m",
            "l1,ssim",
            "--csv",
            report,
            "-q",
            "--preset",
            "basicsr",
            "--scale",
            "2",
        )
    page_path = tmp_path / "changes.html"
    result = invoke("compare", base, new, "--html", page_path, "--map-metric", "ssim", "-q")
    assert result.exit_code == 1, result.output
    page = outline(page_path.read_text(encoding="utf-8"))
    captions = " ".join(thumb["data-caption"] for thumb in page.thumbs)
    # the sidecar's convention (Y channel, 2 px cropped) reaches the maps: 256 - 4 - 10 = 242
    assert "noise: ssim map 242x242" in captions
    means = [float(m) for m in re.findall(r"noise: ssim map 242x242, mean ([0-9.e-]+)", captions)]
    values = [pd.read_csv(path).set_index("name").loc["noise", "ssim"] for path in (base, new)]
    assert means == pytest.approx(values, rel=1e-5)
    assert "Neither report records its parameters" not in page_path.read_text(encoding="utf-8")
    # Without the sidecars the convention is unknown: the page says its maps use the default one.
    for report in (base, new):
        Path(f"{report}.meta.json").unlink()
    assert invoke("compare", base, new, "--html", page_path, "--map-metric", "ssim", "-q").exit_code == 1
    text = page_path.read_text(encoding="utf-8")
    assert "Neither report records its parameters" in text and "noise: ssim map 246x246" in text


def test_failed_pair_names_and_reasons_are_escaped_in_the_table(folders, rng, tmp_path):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(gt / "good.png", clean)
    save_image(pred / "good.png", noisy(rng, clean))
    save_image(pred / "<b>lonely</b>.png", clean)  # unmatched: a row of the failed-pairs table
    page = tmp_path / "r.html"
    assert invoke("eval", pred, gt, "-m", "l1", "--html", page, "-q").exit_code == 3  # the unmatched pair
    text = page.read_text(encoding="utf-8")
    assert "<b>lonely</b>" not in text and "&lt;b&gt;lonely&lt;/b&gt;" in text


def test_notes_of_a_card_are_escaped(folders, rng, tmp_path):
    pred, gt = folders
    for name in ("a", "<i>b"):
        save_image(gt / f"{name}.png", random_rgb(rng))
    save_image(pred / "a.png", random_rgb(rng))
    (pred / "<i>b.png").symlink_to(pred / "a.png")  # a's card notes: "... the same file as the pred of <i>b"
    page = tmp_path / "r.html"
    assert invoke("eval", pred, gt, "-m", "l1", "--html", page, "-q").exit_code == 0
    text = page.read_text(encoding="utf-8")
    assert "the pred of &lt;i&gt;b" in text and "<i>" not in text


def test_pictures_beside_the_page_are_one_file_each(tmp_path):
    page_path = tmp_path / "report.html"
    args = ["-m", "l1", "--html", page_path, "--html-images", "files", "-q"]
    assert invoke("eval", SAMPLE_PRED, SAMPLE_GT, *args).exit_code == 0
    thumbs = outline(page_path.read_text(encoding="utf-8")).thumbs
    sources = [thumb["src"] for thumb in thumbs]
    fulls = [thumb["data-full"] for thumb in thumbs if thumb["data-full"]]
    assert len(set(sources)) == len(sources) and not set(sources) & set(fulls)
    for full in fulls:
        with Image.open(tmp_path / full) as image:
            assert max(image.size) > 200  # the enlarged view, not a thumbnail written over it


def test_compare_card_lines_are_escaped(tmp_path, rng):
    clean = random_rgb(rng, 32, 32)
    for folder in ("gt", "base", "new"):
        (tmp_path / folder).mkdir()
    save_image(tmp_path / "gt" / "<i>z.png", clean)
    save_image(tmp_path / "base" / "<i>z.png", noisy(rng, clean, 2))
    (tmp_path / "new" / "<i>z.png").write_bytes(b"not an image")  # NEW: an error row naming the file
    for folder in ("gt", "base", "new"):  # one pair computed in both (with none, compare --html crashes)
        save_image(tmp_path / folder / "ok.png", clean)
    for side in ("base", "new"):
        invoke(
            "eval", tmp_path / side, tmp_path / "gt", "-m", "l1", "--json", tmp_path / f"{side}.json", "-q"
        )
    page = tmp_path / "c.html"
    invoke("compare", tmp_path / "base.json", tmp_path / "new.json", "--html", page, "-q")
    text = page.read_text(encoding="utf-8")
    assert "no longer computed: error: pred &lt;i&gt;z.png" in text and "<i>" not in text


def test_compare_html_with_no_pair_computed_in_both_reports_is_no_internal_error(tmp_path, rng):
    """Every pair of NEW failed, so no pair is compared: compare --html ended in "internal error:
    KeyError: 'name'" (the regressions of no rows were a frame of no columns)."""
    clean = random_rgb(rng, 32, 32)
    for folder in ("gt", "base", "new"):
        (tmp_path / folder).mkdir()
    save_image(tmp_path / "gt" / "a.png", clean)
    save_image(tmp_path / "base" / "a.png", noisy(rng, clean, 2))
    (tmp_path / "new" / "a.png").write_bytes(b"not an image")
    for side in ("base", "new"):
        invoke(
            "eval", tmp_path / side, tmp_path / "gt", "-m", "l1", "--json", tmp_path / f"{side}.json", "-q"
        )
    result = invoke(
        "compare", tmp_path / "base.json", tmp_path / "new.json", "--html", tmp_path / "c.html", "-q"
    )
    assert result.exit_code == 1 and "internal error" not in result.output, result.output


def test_cards_are_ranked_from_one_with_each_metrics_direction(sample_report):
    text, frame = sample_report
    ranks = [int(rank) for rank in re.findall(r'<span class="rank">#(\d+)</span>', text)]
    assert ranks == list(range(1, len(frame) + 1))
    worst = frame.sort_values("l1", ascending=False).iloc[0]
    card = text[text.index('<span class="rank">#1</span>') : text.index('<span class="rank">#2</span>')]
    for metric, arrow in (("l1", "↓"), ("psnr", "↑"), ("ssim", "↑")):  # lower / higher is better
        assert f'<span class="metric">{metric} {arrow}</span> <b>{format_value(worst[metric])}</b>' in card
