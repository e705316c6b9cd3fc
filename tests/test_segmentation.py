"""Segmentation outputs: .npy class scores against label maps, and binary masks."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from lossctl.cli import app

from .conftest import REPO, save_image

runner = CliRunner()
SEG_PRED, SEG_GT = REPO / "sample_images" / "seg" / "pred", REPO / "sample_images" / "seg" / "gt"


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def evaluate(*args, code: int = 0) -> pd.DataFrame:
    result = invoke("eval", *args, "--format", "csv")
    assert result.exit_code == code, result.output
    return pd.read_csv(io.StringIO(result.stdout), keep_default_na=False, na_values=[""]).set_index("name")


def write_pair(folders, name, scores, labels, mode="L"):
    pred, gt = folders
    np.save(pred / f"{name}.npy", scores.astype(np.float32))
    Image.fromarray(labels.astype(np.uint8), mode=mode).save(gt / f"{name}.png")


def reference(scores: np.ndarray, labels: np.ndarray, probabilities: bool, ignore: int | None = None) -> dict:
    """Every segmentation metric for one pair, in float64, written here from the definitions."""
    classes = scores.shape[0]
    logits = torch.from_numpy(scores.astype(np.float64))
    log_probs = logits.log() if probabilities else torch.log_softmax(logits, dim=0)
    target = torch.from_numpy(labels.astype(np.int64))
    ce = F.nll_loss(log_probs[None], target[None], ignore_index=-100 if ignore is None else ignore).item()
    probs = log_probs.exp().numpy()
    valid = np.ones(labels.shape, bool) if ignore is None else labels != ignore
    predicted = probs.argmax(axis=0)
    dice, iou = [], []
    for c in range(classes):
        truth, hard = (labels == c) & valid, (predicted == c) & valid
        union = (truth | hard).sum()
        if union == 0:
            dice.append(math.nan)
            iou.append(math.nan)
            continue
        soft = probs[c] * valid
        dice.append(2 * (soft * truth).sum() / (soft.sum() + truth.sum()))
        iou.append((truth & hard).sum() / union)
    accuracy = ((predicted == labels) & valid).sum() / valid.sum()
    return {
        "ce": ce,
        "dice": np.nanmean(dice),
        "iou": np.nanmean(iou),
        "pixel_accuracy": accuracy,
        "dice_k": dice,
        "iou_k": iou,
    }


@pytest.fixture
def scores_and_labels(rng):
    labels = rng.integers(0, 4, size=(12, 10))
    logits = rng.normal(0, 1.5, size=(4, 12, 10)) + 2.5 * np.eye(4)[labels].transpose(2, 0, 1)
    return logits, labels


def test_logits_and_probabilities_against_float64_references(folders, scores_and_labels):
    logits, labels = scores_and_labels
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    write_pair(folders, "logits", logits, labels)
    write_pair(folders, "probs", probs, labels)
    rows = evaluate(*folders)
    for name, scores, is_probs in (("logits", logits, False), ("probs", probs, True)):
        expected = reference(scores.astype(np.float32), labels, is_probs)
        row = rows.loc[name]
        assert row["channels"] == 4 and row["bit_depth"] == 8
        for metric in ("ce", "dice", "iou", "pixel_accuracy"):
            assert row[metric] == pytest.approx(expected[metric], rel=1e-5), (name, metric)
        for k in range(4):
            assert row[f"dice_class_{k}"] == pytest.approx(expected["dice_k"][k], rel=1e-5)
            assert row[f"iou_class_{k}"] == pytest.approx(expected["iou_k"][k], rel=1e-5)
        assert f"scores read as {'probabilities' if is_probs else 'logits'}" in row["notes"]
    assert "psnr" not in rows.columns  # image metrics do not apply to a segmentation run


def test_ignore_index_and_the_bundled_samples():
    rows = evaluate(SEG_PRED, SEG_GT, "--ignore-index", "255")
    labels = np.asarray(Image.open(SEG_GT / "scene_probs.png"))  # a palette PNG, read as indices
    assert set(np.unique(labels)) == {0, 1, 2, 3, 255}
    expected = reference(np.load(SEG_PRED / "scene_probs.npy"), labels, True, ignore=255)
    row = rows.loc["scene_probs"]
    for metric in ("ce", "dice", "iou", "pixel_accuracy"):  # ignored pixels count in none of them
        assert row[metric] == pytest.approx(expected[metric], rel=1e-5), metric
    for k in range(4):
        assert row[f"dice_class_{k}"] == pytest.approx(expected["dice_k"][k], rel=1e-5, nan_ok=True)
        assert row[f"iou_class_{k}"] == pytest.approx(expected["iou_k"][k], rel=1e-5, nan_ok=True)
    without = evaluate(SEG_PRED, SEG_GT, code=3)
    assert without.loc["scene_probs", "error"] == "label 255 is not a class of the 4-class prediction (0..3)"
    assert without.loc["scene_logits", "status"] == "ok"


def test_a_class_in_neither_labels_nor_prediction_is_left_out_of_the_means(folders):
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[:, 3:] = 1
    logits = np.full((3, 6, 6), -5.0)
    logits[0][labels == 0] = 5
    logits[1][labels == 1] = 5
    write_pair(folders, "x", logits, labels)
    row = evaluate(*folders).loc["x"]
    assert math.isnan(row["iou_class_2"]) and math.isnan(row["dice_class_2"])
    assert row["iou"] == 1.0 and row["pixel_accuracy"] == 1.0


def test_pred_kind_probs_rejects_scores_that_are_not_probabilities(folders, scores_and_labels):
    logits, labels = scores_and_labels
    write_pair(folders, "x", logits, labels)
    rows = evaluate(*folders, "--pred-kind", "probs", code=3)
    assert rows.loc["x", "error"].startswith("scores are not probabilities")
    forced = evaluate(*folders, "--pred-kind", "logits")
    assert forced.loc["x", "notes"] == "scores read as logits"


def test_per_pair_errors(folders, scores_and_labels, rng):
    pred, gt = folders
    logits, labels = scores_and_labels
    write_pair(folders, "a_first", logits, labels)
    write_pair(folders, "classes", logits[:3], np.minimum(labels, 2))  # 3 classes, the run has 4
    write_pair(folders, "size", logits, labels[:, :5])
    np.save(pred / "rgb_labels.npy", logits.astype(np.float32))
    save_image(gt / "rgb_labels.png", rng.integers(0, 4, size=(12, 10, 3), dtype=np.uint8))
    np.save(pred / "flat.npy", np.zeros((12, 10), np.float32))
    save_image(gt / "flat.png", labels.astype(np.uint8))
    (pred / "junk.npy").write_bytes(b"not numpy")
    save_image(gt / "junk.png", labels.astype(np.uint8))
    rows = evaluate(pred, gt, code=3)
    assert rows.loc["a_first", "status"] == "ok"
    assert rows.loc["classes", "error"] == "prediction has 3 classes, but this run's first prediction has 4"
    assert rows.loc["size", "error"] == "size mismatch: pred is 10x12, gt is 5x12"
    assert (
        rows.loc["rgb_labels", "error"]
        == "gt rgb_labels.png: a label map must be single-channel class indices; this image is RGB"
    )
    assert (
        rows.loc["flat", "error"]
        == "pred flat.npy: a segmentation prediction must be C x H x W; this array is (12, 10)"
    )
    assert rows.loc["junk", "error"].startswith("pred junk.npy: not a readable .npy array")


def test_npy_files_that_stop_the_whole_run_are_error_rows(folders, scores_and_labels):
    """An .npz under a .npy name, a damaged header (NumPy raises a tokenizer error) and a prediction
    with no classes each ended the run with an internal error, the first even as the run's first
    prediction (whose header gives the class count)."""
    pred, gt = folders
    logits, labels = scores_and_labels
    with open(pred / "a_npz.npy", "wb") as stream:  # np.savez would add .npz to the name
        np.savez(stream, scores=logits)
    save_image(gt / "a_npz.png", labels.astype(np.uint8))
    np.save(pred / "b_header.npy", logits.astype(np.float32))
    data = (pred / "b_header.npy").read_bytes()
    (pred / "b_header.npy").write_bytes(data.replace(b"}", b" ", 1))
    save_image(gt / "b_header.png", labels.astype(np.uint8))
    np.save(pred / "c_no_classes.npy", np.zeros((0, 12, 10), np.float32))
    save_image(gt / "c_no_classes.png", labels.astype(np.uint8))
    write_pair(folders, "d_good", logits, labels)
    rows = evaluate(pred, gt, code=3)
    assert rows.loc["d_good", "status"] == "ok"
    assert (
        rows.loc["a_npz", "error"]
        == "pred a_npz.npy: not a .npy array (an .npz archive or another file saved under that name)"
    )
    assert rows.loc["b_header", "error"].startswith("pred b_header.npy: not a readable .npy array (")
    assert rows.loc["c_no_classes", "error"] == (
        "pred c_no_classes.npy: a segmentation prediction needs classes and pixels; this array is (0, 12, 10)"
    )


@pytest.mark.parametrize("where", ["nan", "inf", "all_minus_inf"])
def test_scores_without_a_distribution_at_some_pixel_are_an_error_row(folders, scores_and_labels, where):
    """NaN gave an ok row whose ce and dice were empty without a note, and iou and pixel accuracy
    from an argmax that took NaN for the largest score."""
    logits, labels = scores_and_labels
    broken = logits.copy()
    if where == "all_minus_inf":
        broken[:, 3, 4] = -np.inf
    else:
        broken[1, 3, 4] = np.nan if where == "nan" else np.inf
    write_pair(folders, "x", broken, labels)
    minus_inf = logits.copy()
    minus_inf[0, 5, 5] = -np.inf  # a logit of probability 0 still leaves a distribution
    write_pair(folders, "y", minus_inf, labels)
    rows = evaluate(*folders, code=3)
    assert rows.loc["x", "error"] == "scores hold NaN, +inf, or a pixel whose every score is -inf"
    assert rows.loc["y", "status"] == "ok"


def test_probabilities_that_sum_to_1_within_the_tolerance_are_normalised_for_ce(folders, scores_and_labels):
    """ce is F.cross_entropy of log p, which normalises p; 'auto' reads scores summing to 1 within
    1e-3 as probabilities, and ce was -log p of the true class without the normalisation."""
    logits, labels = scores_and_labels
    probs = np.exp(logits) / np.exp(logits).sum(axis=0) * (1 + 5e-4)
    pred, gt = folders
    np.save(pred / "x.npy", probs)  # float64
    save_image(gt / "x.png", labels.astype(np.uint8))
    rows = evaluate(pred, gt, "--precision", "float64")
    expected = F.cross_entropy(torch.from_numpy(probs).log()[None], torch.from_numpy(labels)[None]).item()
    assert rows.loc["x", "ce"] == pytest.approx(expected, rel=1e-12)
    assert "scores read as probabilities" in rows.loc["x", "notes"]


def test_an_infinite_ce_is_counted_and_fails_a_mean_threshold(folders, scores_and_labels):
    """A true class of probability 0 makes ce inf: the summary mean left it out without a word, and
    check --mean passed."""
    logits, labels = scores_and_labels
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    write_pair(folders, "a", probs, labels)
    zero = probs.copy()
    zero[:, 0, 0] = 0.0
    zero[(labels[0, 0] + 1) % 4, 0, 0] = 1.0
    write_pair(folders, "b", zero, labels)
    result = invoke("eval", *folders, "-m", "ce", "--no-per-image")
    assert result.exit_code == 0, result.output
    assert "1 pair(s) with ce = inf left out of the ce mean and std" in result.stdout
    check = invoke("check", *folders, "--mean", "--max", "ce=3")
    assert check.exit_code == 1 and "inf" in check.stdout, check.output


def test_html_of_a_segmentation_run_needs_no_map_metric(tmp_path):
    page = tmp_path / "seg.html"
    result = invoke("eval", SEG_PRED, SEG_GT, "--ignore-index", "255", "--html", page, "-q")
    assert result.exit_code == 0, result.output
    assert "computed pairs by dice" in page.read_text()
    # Metrics chosen without l1, the default map metric: it was refused before the run.
    chosen = invoke("eval", SEG_PRED, SEG_GT, "--ignore-index", "255", "-m", "ce,iou", "--html", page, "-q")
    assert chosen.exit_code == 0, chosen.output
    assert "computed pairs by iou" in page.read_text()  # the first in the registry's order
    report = tmp_path / "seg.json"
    invoke("eval", SEG_PRED, SEG_GT, "--ignore-index", "255", "--json", report, "-q")
    compared = invoke("compare", report, report, "--html", tmp_path / "cmp.html")
    assert compared.exit_code == 2 and "needs a heat-map metric (l1, ssim) in both reports" in compared.stderr
    assert "(segmentation pairs have none)" in compared.stderr
    # The run keeps only the metrics that apply: an image metric to sort by is a usage error after it.
    sorted_by = invoke(
        "eval", SEG_PRED, SEG_GT, "--ignore-index", "255", "--html", page, "--html-sort", "ssim"
    )
    assert sorted_by.exit_code == 2 and "--html-sort ssim: not among the metrics computed" in sorted_by.stderr


def test_every_pixel_ignored_gives_nan_with_a_note(folders, scores_and_labels):
    logits, _ = scores_and_labels
    write_pair(folders, "x", logits, np.full((12, 10), 255))
    for metrics in ([], ["-m", "dice,iou"]):  # the note is the pair's, not ce's
        row = evaluate(*folders, "--ignore-index", "255", *metrics).loc["x"]
        assert math.isnan(row["dice"]) and math.isnan(row["iou"])
        assert "every pixel is --ignore-index: no segmentation metric is defined" in row["notes"]


def test_binary_masks_report_bce_dice_and_iou_at_a_threshold(folders, rng):
    pred, gt = folders
    mask = rng.random((16, 16)) > 0.5
    soft = np.clip(mask * 0.7 + rng.random((16, 16)) * 0.3, 0, 1)
    save_image(gt / "m.png", (mask * 255).astype(np.uint8))
    save_image(pred / "m.png", np.round(soft * 255).astype(np.uint8))
    p = np.round(soft * 255) / 255
    for threshold in (0.5, 0.8):
        row = evaluate(pred, gt, "-m", "bce,dice,iou", "--threshold", str(threshold)).loc["m"]
        hard = p >= threshold
        assert row["iou"] == pytest.approx((hard & mask).sum() / (hard | mask).sum(), rel=1e-6)
    assert row["dice"] == pytest.approx(2 * (p * mask).sum() / (p.sum() + mask.sum()), rel=1e-5)
    # torch.nn.BCELoss: -(g log p + (1 - g) log(1 - p)), each log clamped at -100 (p is 0 or 1 at places)
    with np.errstate(divide="ignore"):
        log_p, log_not_p = np.maximum(np.log(p), -100), np.maximum(np.log1p(-p), -100)
    bce = -(mask * log_p + (1 - mask) * log_not_p).mean()
    assert row["bce"] == pytest.approx(bce, rel=1e-5)
    result = invoke("eval", pred, gt, "-m", "psnr", "--threshold", "0.5")
    assert result.exit_code == 2 and "--threshold is used by iou" in result.stderr


def test_a_npy_ground_truth_is_an_error(folders, scores_and_labels):
    pred, gt = folders
    logits, labels = scores_and_labels
    write_pair(folders, "ok", logits, labels)
    np.save(pred / "x.npy", logits.astype(np.float32))
    np.save(gt / "x.npy", logits.astype(np.float32))
    rows = evaluate(pred, gt, code=3)
    assert rows.loc["x", "error"] == "gt x.npy: the ground truth of a segmentation must be a label image"


def test_the_report_records_the_segmentation_options(tmp_path):
    report = tmp_path / "r.json"
    invoke("eval", SEG_PRED, SEG_GT, "--ignore-index", "255", "--json", report, "-q")
    import json

    params = json.loads(report.read_text())["params"]
    assert params["segmentation"] == {"pred_kind": "auto", "ignore_index": 255}
    assert params["iou"] == {"threshold": 0.5}


def test_16_bit_label_maps_hold_many_classes(folders, rng):
    pred, gt = folders
    classes = 300
    labels = rng.integers(0, classes, size=(8, 9)).astype(np.uint16)
    logits = rng.normal(0, 1, size=(classes, 8, 9)) + 6 * np.eye(classes)[labels].transpose(2, 0, 1)
    np.save(pred / "x.npy", logits.astype(np.float32))
    Image.fromarray(labels).save(gt / "x.png")
    row = evaluate(pred, gt, "-m", "pixel_accuracy,ce").loc["x"]
    assert row["bit_depth"] == 16
    expected = reference(logits.astype(np.float32), labels.astype(np.int64), False)
    assert row["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    assert row["ce"] == pytest.approx(expected["ce"], rel=1e-5)


def test_chosen_metrics_of_the_other_kind_are_empty_with_a_note():
    """-m ce on image pairs (or psnr on segmentation pairs) gave empty cells, exit 0, and no word."""
    images = evaluate(
        REPO / "sample_images" / "pred", REPO / "sample_images" / "gt", "-m", "l1,ce,pixel_accuracy"
    )
    assert images["l1"].notna().all() and images["ce"].isna().all() and images["pixel_accuracy"].isna().all()
    assert all(
        "ce, pixel_accuracy: for segmentation pairs (.npy class scores), not image pairs" in notes
        for notes in images["notes"]
    )
    scores = evaluate(SEG_PRED, SEG_GT, "--ignore-index", "255", "-m", "psnr,iou")
    assert scores["psnr"].isna().all() and scores["iou"].notna().all()
    assert all("psnr: for image pairs, not segmentation pairs" in notes for notes in scores["notes"])
    default = evaluate(SEG_PRED, SEG_GT, "--ignore-index", "255")  # only the metrics that apply: no note
    assert not any("not segmentation pairs" in notes for notes in default["notes"])


def _write_seg(folders, name, scores, labels):
    pred, gt = folders
    np.save(pred / f"{name}.npy", scores.astype(np.float32))
    Image.fromarray(labels.astype(np.uint8), mode="L").save(gt / f"{name}.png")


def test_scores_in_0_1_that_do_not_sum_to_1_are_logits_not_probabilities(folders, rng):
    labels = rng.integers(0, 3, size=(8, 9))
    scores = rng.random((3, 8, 9))  # in [0, 1], per-pixel sums far from 1
    _write_seg(folders, "x", scores, labels)
    result = invoke("eval", *folders, "-m", "ce", "--format", "csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name").loc["x"]
    assert "scores read as logits" in row["notes"]
    expected = F.cross_entropy(
        torch.from_numpy(scores.astype(np.float32).astype(np.float64))[None], torch.from_numpy(labels)[None]
    ).item()
    assert row["ce"] == pytest.approx(expected, rel=1e-5)
    forced = invoke("eval", *folders, "-m", "ce", "--pred-kind", "probs", "--format", "csv")
    rows = pd.read_csv(io.StringIO(forced.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["x", "status"] == "error" and "not probabilities" in rows.loc["x", "error"]


def test_a_label_equal_to_the_class_count_is_a_pair_error(folders, rng):
    labels = rng.integers(0, 3, size=(8, 9))
    labels[0, 0] = 3  # classes are 0..2
    _write_seg(folders, "x", rng.normal(size=(3, 8, 9)), labels)
    result = invoke("eval", *folders, "-m", "ce", "--format", "csv")
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["x", "status"] == "error"
    assert rows.loc["x", "error"].startswith("label 3 is not a class of the 3-class prediction")


def test_the_scores_note_belongs_to_its_own_pair_when_an_earlier_pair_fails(folders, rng):
    labels = rng.integers(0, 3, size=(8, 9))
    bad = labels.copy()
    bad[0, 0] = 9
    logits = rng.normal(size=(3, 8, 9)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    _write_seg(folders, "a", logits, bad)  # an error row, first in the batch
    _write_seg(folders, "b", probs, labels)
    _write_seg(folders, "c", logits, labels)
    result = invoke("eval", *folders, "-m", "ce", "--format", "csv")
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["a", "status"] == "error"
    assert rows.loc["b", "notes"] == "scores read as probabilities"
    assert rows.loc["c", "notes"] == "scores read as logits"
    target = torch.from_numpy(labels)[None]
    as_stored = {
        name: torch.from_numpy(s.astype(np.float32).astype(np.float64))[None]
        for name, s in (("b", probs), ("c", logits))
    }
    assert float(rows.loc["b", "ce"]) == pytest.approx(
        F.nll_loss(as_stored["b"].log(), target).item(), rel=1e-5
    )
    assert float(rows.loc["c", "ce"]) == pytest.approx(
        F.cross_entropy(as_stored["c"], target).item(), rel=1e-5
    )
