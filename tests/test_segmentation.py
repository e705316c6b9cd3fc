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
    assert rows.loc["scene_probs", "ce"] == pytest.approx(expected["ce"], rel=1e-5)
    assert rows.loc["scene_probs", "iou"] == pytest.approx(expected["iou"], rel=1e-5)
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


def test_every_pixel_ignored_gives_nan_with_a_note(folders, scores_and_labels):
    logits, _ = scores_and_labels
    write_pair(folders, "x", logits, np.full((12, 10), 255))
    row = evaluate(*folders, "--ignore-index", "255").loc["x"]
    assert math.isnan(row["ce"]) and "ce: every pixel is --ignore-index" in row["notes"]


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
