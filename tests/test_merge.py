"""``lossctl eval --shard K/N`` and ``lossctl merge``: the merged report is the single run's report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lossctl.cli import app
from lossctl.report import sidecar_path

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy, noisy_pairs, one_line_error, random_rgb, save_image
from .hostile_folders import build_hostile_folders

runner = CliRunner()
SAMPLES = [SAMPLE_PRED, SAMPLE_GT]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def shard_reports(folder: Path, inputs, count: int, *options) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"shard-{index}-of-{count}.json"
        result = invoke("eval", *inputs, "--shard", f"{index}/{count}", "--json", path, "-q", *options)
        assert result.exit_code in (0, 3), result.output
        assert f"shard {index}/{count}: " not in result.stderr  # -q: no shard line
        paths.append(path)
    return paths


def single_and_merged(tmp_path: Path, inputs, count: int, *options) -> tuple[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    single, merged = tmp_path / f"single-{count}.json", tmp_path / f"merged-{count}.json"
    invoke("eval", *inputs, "--json", single, "-q", *options)
    result = invoke("merge", *shard_reports(tmp_path, inputs, count, *options), "-o", merged)
    assert result.exit_code in (0, 3), result.output
    return single.read_text(), merged.read_text()


@pytest.fixture
def hostile(tmp_path):
    pred, gt, _ = build_hostile_folders(tmp_path / "hostile")
    return pred, gt


@pytest.mark.parametrize("count", [1, 2, 3, 5, 30])
def test_merged_shards_are_the_single_run_report_byte_for_byte(tmp_path, hostile, count):
    """Every broken-input case (errors, unmatched pairs, skipped files) is sharded and merged too.

    --batch-size 1 makes each pair's float32 values independent of which pairs share its batch."""
    single, merged = single_and_merged(tmp_path, hostile, count, "--batch-size", "1")
    assert merged == single
    document = json.loads(merged)
    assert document["counts"]["error"] > 0 and document["counts"]["unmatched"] > 0
    assert document["counts"]["skipped_files"] > 0 and "shard" not in document


def test_merged_csv_and_sidecar_are_the_single_runs(tmp_path, hostile):
    single = tmp_path / "single.csv"
    invoke("eval", *hostile, "--csv", single, "-q", "--batch-size", "1")
    merged = tmp_path / "merged.csv"
    result = invoke("merge", *shard_reports(tmp_path, hostile, 3, "--batch-size", "1"), "-o", merged)
    assert result.exit_code == 3  # like eval: some pairs failed, the report is complete
    assert merged.read_text() == single.read_text()
    assert sidecar_path(merged).read_text() == sidecar_path(single).read_text()


def test_with_batches_the_merged_rows_agree_with_the_single_run_to_float32_rounding(tmp_path):
    """Batches of other sizes round float32 sums differently (as --batch-size does in one run):
    every row, status and note is the same, and every value agrees to 1e-6 relative."""
    single, merged = (json.loads(text) for text in single_and_merged(tmp_path, SAMPLES, 2))
    assert [row["name"] for row in merged["rows"]] == [row["name"] for row in single["rows"]]
    for mine, theirs in zip(merged["rows"], single["rows"], strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=1e-6), (theirs["name"], key)
            else:
                assert mine[key] == value
    assert {key: value for key, value in merged.items() if key not in ("rows", "summary")} == {
        key: value for key, value in single.items() if key not in ("rows", "summary")
    }


def test_merges_of_different_n_all_give_the_single_run_report(tmp_path):
    options = ("--batch-size", "1", "-m", "l1,psnr,bce,dice")  # 8- and 16-bit, gray, RGB, JPEG, mask
    reports = [single_and_merged(tmp_path / str(count), SAMPLES, count, *options) for count in (2, 3, 7)]
    assert {merged for _, merged in reports} == {single for single, _ in reports}


def test_shards_of_different_n_are_not_mixed(tmp_path):
    halves = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")
    thirds = shard_reports(tmp_path, SAMPLES, 3, "-m", "psnr")
    result = invoke("merge", halves[0], *thirds[1:])
    one_line_error(result, 2, "is shard 1/3 but")
    assert (
        "shard-0-of-2.json is shard 0/2: the shards of one merge must come from one split (the same N)"
        in (result.stderr)
    )


def test_a_missing_shard_is_named(tmp_path):
    shards = shard_reports(tmp_path, SAMPLES, 4, "-m", "psnr")
    one_line_error(invoke("merge", shards[0], shards[2]), 2, "shards 1/4, 3/4 are missing")
    one_line_error(invoke("merge", *shards[:3], "-o", tmp_path / "out.json"), 2, "shard 3/4 is missing")
    assert not (tmp_path / "out.json").exists()
    huge = 10**20  # the first ten missing are named, without walking every shard number
    last = tmp_path / "last.json"
    invoke("eval", *SAMPLES, "-m", "psnr", "--shard", f"{huge - 1}/{huge}", "--json", last, "-q")
    result = invoke("merge", last)
    one_line_error(result, 2, f"shards 0/{huge}, 1/{huge}, 2/{huge}, 3/{huge}, 4/{huge}, 5/{huge}, ")
    assert f"and {huge - 11} more are missing" in result.stderr


@pytest.mark.parametrize("index", [-1, 2, 5])
def test_a_shard_record_with_an_impossible_number_is_damaged(tmp_path, index):
    shard = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")[0]
    damaged = json.loads(shard.read_text())
    damaged["shard"]["index"] = index
    shard.write_text(json.dumps(damaged))
    one_line_error(invoke("merge", shard), 2, f"is damaged: shard {index}/2 is not a shard number")


def test_an_interrupted_shards_partial_report_is_named_as_such(tmp_path):
    shard = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")[0]
    partial = tmp_path / f"{shard.name}.partial"
    partial.write_text(shard.read_text())
    one_line_error(invoke("merge", partial), 2, "is the partial report of an interrupted shard run")


def test_a_shard_given_twice_is_named(tmp_path):
    shards = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")
    copy = tmp_path / "copy.json"
    copy.write_text(shards[1].read_text())
    one_line_error(invoke("merge", *shards, copy), 2, "shard 1/2 given twice: ")


def test_shards_made_with_other_parameters_are_refused(tmp_path):
    first = shard_reports(tmp_path / "a", SAMPLES, 2, "-m", "charbonnier")
    other = shard_reports(tmp_path / "b", SAMPLES, 2, "-m", "charbonnier", "-p", "charbonnier.eps=1e-4")
    result = invoke("merge", first[0], other[1])
    one_line_error(
        result,
        2,
        'come from different runs: different parameters (charbonnier: {"eps": 0.0001} vs {"eps": 0.001})',
    )
    precision = shard_reports(tmp_path / "c", SAMPLES, 2, "-m", "charbonnier", "--precision", "float64")
    one_line_error(invoke("merge", first[0], precision[1]), 2, "different precision (float64 vs float32)")


def test_shards_made_with_other_weights_or_pixel_limits_are_refused(tmp_path, folders, rng):
    """Neither was recorded: merge mixed weight-map and edge-aware weighted_tv values, and error
    rows a single run would not have had."""
    pred, gt = folders
    weights = tmp_path / "weights"
    for name in ("a", "b", "c"):
        clean = random_rgb(rng, 16, 16)
        save_image(gt / f"{name}.png", clean)
        save_image(pred / f"{name}.png", noisy(rng, clean))
        save_image(weights / f"{name}.png", rng.integers(1, 256, (16, 16), dtype=np.uint8))
    inputs, metrics = (pred, gt), ("-m", "tv,weighted_tv")
    plain = shard_reports(tmp_path / "plain", inputs, 2, *metrics)
    weighted = shard_reports(tmp_path / "weighted", inputs, 2, *metrics, "--weights", weights)
    one_line_error(
        invoke("merge", plain[0], weighted[1]), 2, "come from different runs: different parameters"
    )
    limited = shard_reports(tmp_path / "limited", inputs, 2, *metrics, "--max-pixels", "100")
    one_line_error(invoke("merge", plain[0], limited[1]), 2, "come from different runs: different parameters")
    single, merged = single_and_merged(tmp_path / "same", inputs, 2, *metrics, "--weights", weights)
    assert single == merged and f'"weights": "{weights}"' in merged
    single, merged = single_and_merged(tmp_path / "limit", inputs, 2, *metrics, "--max-pixels", "1000")
    assert single == merged and '"max_pixels": 1000' in merged


def test_shards_of_a_folder_that_changed_between_runs_are_refused(tmp_path, folders, rng):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b", "c"))
    first = shard_reports(tmp_path / "before", (pred, gt), 2, "-m", "psnr")[0]
    save_image(pred / "d.png", random_rgb(rng))
    save_image(gt / "d.png", random_rgb(rng))
    second = shard_reports(tmp_path / "after", (pred, gt), 2, "-m", "psnr")[1]
    one_line_error(invoke("merge", first, second), 2, "different number of pairs (4 vs 3)")


@pytest.mark.parametrize("change", ["saved as jpeg", "resized", "gt removed"])
def test_shards_of_files_that_changed_under_the_same_names_are_refused(tmp_path, folders, rng, change):
    """Only the names were compared: a prediction saved again as .jpg (or resized, or a pair whose
    ground truth went) between the shard runs merged into a report no single run could give."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b", "c", "d"))
    first = shard_reports(tmp_path / "before", (pred, gt), 2, "-m", "psnr")[0]
    if change == "saved as jpeg":
        Image.open(pred / "a.png").save(pred / "a.jpg")
        (pred / "a.png").unlink()
    elif change == "resized":
        save_image(pred / "a.png", random_rgb(rng, 16, 16))
    else:
        (gt / "a.png").unlink()
    second = shard_reports(tmp_path / "after", (pred, gt), 2, "-m", "psnr")[1]
    one_line_error(invoke("merge", first, second), 2, "come from different runs: different input files")


def test_shards_of_a_metric_this_lossctl_does_not_know_are_refused(tmp_path):
    """Shards written by a later lossctl: the merge was an internal error (KeyError)."""
    shards = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")
    for path in shards:
        document = json.loads(path.read_text())
        document["lossctl"], document["metrics"] = "9.0", [*document["metrics"], "sharpness"]
        for row in document["rows"]:
            row["sharpness"] = 0.5
        path.write_text(json.dumps(document))
    one_line_error(invoke("merge", *shards), 2, "has metric 'sharpness', which lossctl")
    for path in shards:
        document = json.loads(path.read_text())
        document["lossctl"], document["metrics"] = "0", document["metrics"][:-1]
        for row in document["rows"]:
            row["sharpness"] = "sharp"  # an unknown column: a per-class value must be a number
        path.write_text(json.dumps(document))
    one_line_error(invoke("merge", *shards), 2, "is damaged: sharpness 'sharp'")


def test_overlapping_or_incomplete_shards_are_refused(tmp_path):
    shards = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")
    documents = [json.loads(path.read_text()) for path in shards]
    moved = documents[1]["shard"]["positions"][0]
    documents[0]["shard"]["positions"][0] = moved  # shard 0's first row claims a place of shard 1
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(documents[0]))
    one_line_error(invoke("merge", edited, shards[1]), 2, "is in both")
    documents = [json.loads(path.read_text()) for path in shards]
    del documents[0]["rows"][0], documents[0]["shard"]["positions"][0]
    edited.write_text(json.dumps(documents[0]))
    one_line_error(invoke("merge", edited, shards[1]), 2, "the shards hold 6 of 7 pairs")


def test_files_that_are_not_shard_reports_are_named(tmp_path):
    whole = tmp_path / "whole.json"
    invoke("eval", *SAMPLES, "-m", "psnr", "--json", whole)
    one_line_error(invoke("merge", whole), 2, "whole.json is a whole report, not a shard report")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    one_line_error(invoke("merge", garbage), 2, "garbage.json is not JSON")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    one_line_error(invoke("merge", listing), 2, "list.json is not a lossctl JSON report")
    one_line_error(invoke("merge", tmp_path / "absent.json"), 2, "shard report not found: ")
    shard = shard_reports(tmp_path, SAMPLES, 1, "-m", "psnr")[0]
    damaged = json.loads(shard.read_text())
    damaged["shard"]["positions"] = damaged["shard"]["positions"][:-1]
    shard.write_text(json.dumps(damaged))
    one_line_error(invoke("merge", shard), 2, "7 rows but 6 pair positions")


def _set_metrics(document):
    document["metrics"] = "psnr"


def _set_counts(document):
    document["counts"] = []


def _set_psnr(document):
    document["rows"][0]["psnr"] = "abc"


def _set_height(document):
    document["rows"][0]["height"] = "abc"


def _set_nested_param(document):
    document["params"]["decoding"] = 5


def _rename_a_row(document):
    document["rows"][0]["name"] += "_renamed"


def _set_position_past_the_end(document):
    document["shard"]["positions"][0] = document["shard"]["pairs"]


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (_rename_a_row, "the shards' pairs are not the pairing they were made from"),
        (_set_position_past_the_end, "is damaged: a pair position outside 0..6"),
        (_set_metrics, "'metrics' is not a list of names"),
        (_set_counts, "'counts' is not an object"),
        (_set_psnr, "is damaged: psnr 'abc' of "),
        (_set_height, "is damaged: height 'abc' of "),
        (_set_nested_param, "is damaged: params 'decoding' is not an object"),
    ],
)
def test_hand_edited_fields_are_named_as_damage_not_an_internal_error(tmp_path, edit, fragment):
    shards = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr")
    document = json.loads(shards[0].read_text())
    edit(document)
    shards[0].write_text(json.dumps(document))
    one_line_error(invoke("merge", *shards), 2, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--shard", "2/2", "--json", "s.json"], "K must be 0..1"),
        (["--shard", "x", "--json", "s.json"], "--shard must look like K/N"),
        (["--shard", "0/2"], "--shard 0/2 writes a shard report for lossctl merge: give --json FILE"),
    ],
)
def test_bad_shard_options_exit_2_with_one_line(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("eval", *SAMPLES, *args), 2, fragment)


def test_a_shard_run_says_what_share_it_took(tmp_path):
    result = invoke("eval", *SAMPLES, "-m", "psnr", "--shard", "1/3", "--json", tmp_path / "s.json")
    assert result.exit_code == 0
    assert result.stderr.startswith("shard 1/3: 2 of 7 pairs, ") and "join the shard reports" in result.stderr
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["shard"]["index"] == 1 and document["shard"]["count"] == 3
    assert document["shard"]["pairs"] == 7 and len(document["rows"]) == 2


def test_merge_prints_the_table_and_exits_like_eval(tmp_path):
    shards = shard_reports(tmp_path, SAMPLES, 2, "-m", "psnr,ssim")
    result = invoke("merge", *shards)
    assert result.exit_code == 0
    assert "lossctl eval — 7 pairs: 7 ok, 0 error, 0 unmatched" in result.stdout
    assert json.loads(invoke("merge", *shards, "--format", "json").stdout)["counts"]["pairs"] == 7
    one_line_error(invoke("merge", *shards, "-o", tmp_path / "missing" / "r.json"), 2, "does not exist")


def test_segmentation_shards_check_class_counts_against_the_whole_runs_first_prediction(
    tmp_path, folders, rng
):
    """A shard without the run's first .npy must still flag a prediction with another class count."""
    pred, gt = folders
    for name, classes in (("a", 3), ("b", 3), ("c", 4)):
        np.save(pred / f"{name}.npy", rng.random((classes, 6, 5)).astype(np.float32))
        Image.fromarray(rng.integers(0, 3, (6, 5), dtype=np.uint8)).save(gt / f"{name}.png")
    single, merged = single_and_merged(tmp_path, (pred, gt), 3, "--batch-size", "1")
    assert merged == single
    rows = {row["name"]: row for row in json.loads(merged)["rows"]}
    assert rows["c"]["error"] == "prediction has 4 classes, but this run's first prediction has 3"
    assert not math.isnan(rows["a"]["ce"])
