"""The request -> engine hand-over (lossctl.run) and the library entry point (lossctl.engine.evaluate
with EvalConfig): every request field reaches the engine, the default worker count is the machine's,
the decoding head start honours the run's settings, and every bad argument of the library is a
LossctlError with a clear message before anything is decoded."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest

import lossctl.decoding
import lossctl.engine
from lossctl.conventions import Convention
from lossctl.engine import EvalConfig, evaluate
from lossctl.errors import LossctlError
from lossctl.io import pair_folders
from lossctl.metrics import METRICS, resolve_params
from lossctl.run import EvalRequest, eval_config, run_evaluation

from .conftest import SAMPLE_GT, SAMPLE_PRED, noisy_pairs, pair_with_unit_weights


def request_for(pred, gt, metrics=("l1",), **fields) -> EvalRequest:
    names = list(metrics)
    return EvalRequest(Path(pred), Path(gt), names, resolve_params(names, []), **fields)


# --- eval_config: every field of the request reaches EvalConfig -------------------------------


def test_eval_config_carries_every_field_of_the_request(tmp_path):
    """Each field set to a value other than its default: dropping one, or replacing it by the
    default, on the way to the engine fails here (the CLI's tests only see a few through effects)."""
    convention = Convention(y_channel=True, crop_border=2)
    request = EvalRequest(
        tmp_path / "p",
        tmp_path / "g",
        ["charbonnier", "weighted_tv"],
        {"charbonnier": {"eps": 0.25}},
        weights_root=tmp_path / "w",
        device="cpu",
        batch_size=3,
        workers=5,
        precision="float64",
        convention=convention,
        pred_kind="logits",
        ignore_index=255,
        max_pixels=12345,
        decoder="threads",
    )
    config = eval_config(request)
    assert config == EvalConfig(
        metrics=["charbonnier", "weighted_tv"],
        params={"charbonnier": {"eps": 0.25}},
        device="cpu",
        batch_size=3,
        workers=5,
        precision="float64",
        with_weights=True,
        convention=convention,
        pred_kind="logits",
        ignore_index=255,
        num_classes=None,
        max_pixels=12345,
        decoder="threads",
    )


def test_the_requested_device_reaches_the_engine(monkeypatch):
    """On a machine without a GPU ``auto`` and ``cpu`` compute alike, so only the specs the engine
    is asked to resolve show it: with a GPU, ``--device cpu`` replaced by ``auto`` would run on it."""
    seen = []
    resolve = lossctl.engine.resolve_device

    def spy(spec):
        seen.append(spec)
        return resolve(spec)

    monkeypatch.setattr(lossctl.engine, "resolve_device", spy)
    evaluation = run_evaluation(request_for(SAMPLE_PRED, SAMPLE_GT, device="cpu", workers=1))
    assert seen and set(seen) == {"cpu"}
    assert evaluation.info.device == "cpu"


def tasks_of(monkeypatch) -> list[int]:
    """The number of pairs each CPU task decodes and computes (engine._decode_and_compute)."""
    sizes = []
    original = lossctl.engine._decode_and_compute

    def spy(pairs, config, device):
        sizes.append(len(pairs))
        return original(pairs, config, device)

    monkeypatch.setattr(lossctl.engine, "_decode_and_compute", spy)
    return sizes


def test_the_requested_batch_size_reaches_the_engine(folders, rng, monkeypatch):
    """A CPU run decoding in threads gives each task up to a batch of small pairs: 6 8x8 pairs are
    one task of 6 at the automatic batch size (16 on a CPU), six tasks of 1 at --batch-size 1."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(6), 8, 8)
    sizes = tasks_of(monkeypatch)
    run_evaluation(request_for(pred, gt, device="cpu", workers=1, decoder="threads"))
    assert sizes == [6]
    sizes.clear()
    evaluation = run_evaluation(request_for(pred, gt, device="cpu", workers=1, decoder="threads", batch_size=1))
    assert sizes == [1] * 6
    assert list(evaluation.frame["status"]) == ["ok"] * 6


# --- _workers: the default is the number of cores ---------------------------------------------


def test_workers_default_to_the_number_of_cores(folders, rng, monkeypatch):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(3), 8, 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    request = request_for(pred, gt, device="cpu", decoder="threads")
    assert eval_config(request).workers == 3
    threads = []
    init = lossctl.engine._TasksInOrder.__init__

    def spy(self, count, name):
        threads.append(count)
        init(self, count, name)

    monkeypatch.setattr(lossctl.engine._TasksInOrder, "__init__", spy)
    run_evaluation(request)
    assert threads == [3]  # the CPU pipeline's decode-and-compute threads
    assert eval_config(dataclasses.replace(request, workers=1)).workers == 1


@pytest.mark.parametrize("decoder", ["processes", "threads", "auto"])
@pytest.mark.parametrize(
    ("field", "message"),
    [("workers", "--workers must be at least 1; got 0"), ("max_pixels", "--max-pixels must be at least 1; got 0")],
)
def test_a_zero_setting_is_refused_before_any_decoding_whatever_the_decoder(field, message, decoder):
    """``workers=0`` is not taken for "the default" (0 is falsy), nor handed to a process pool; a
    run refused for ``max_pixels=0`` does not first start processes decoding (with no limit)."""
    made = []
    init = lossctl.decoding.DecodeAhead.__init__

    def spy(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    settings = {"workers": 2, "decoder": decoder, field: 0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lossctl.decoding.DecodeAhead, "__init__", spy)
        with pytest.raises(LossctlError, match=message):
            run_evaluation(request_for(SAMPLE_PRED, SAMPLE_GT, device="cpu", **settings))
    assert made == []  # no head start was begun for a run that cannot start


# --- _decoding_head_start: the run's settings apply to it, so that the engine uses it ----------


def head_start_spies(monkeypatch):
    made, started = [], []
    init = lossctl.decoding.DecodeAhead.__init__
    start_decoding = lossctl.engine.start_decoding

    def recording_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    def recording_start(*args, **kwargs):
        started.append(args[0])
        return start_decoding(*args, **kwargs)

    monkeypatch.setattr(lossctl.decoding.DecodeAhead, "__init__", recording_init)
    monkeypatch.setattr(lossctl.engine, "start_decoding", recording_start)
    return made, started


def test_the_head_start_applies_max_pixels_and_is_the_decoding_the_engine_uses(monkeypatch):
    """--max-pixels is the decompression-bomb guard: the processes decoding ahead of the engine
    must apply it (not Pillow's default), and so be the decoding the engine uses, not one it throws
    away after it decoded images over the limit."""
    made, started = head_start_spies(monkeypatch)
    request = request_for(SAMPLE_PRED, SAMPLE_GT, device="cpu", workers=2, decoder="processes", max_pixels=100)
    evaluation = run_evaluation(request)
    assert len(made) == 1 and made[0].max_pixels == 100
    assert evaluation.info.max_pixels == 100
    assert started == []  # the engine decoded nothing anew
    frame = evaluation.frame
    decodable = [pair.name for pair in pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs if pair.status == "pending"]
    rows = frame[frame["name"].isin(decodable)]
    assert len(rows) == len(decodable) > 0
    assert set(rows["status"]) == {"error"} and rows["error"].str.contains("over the limit of 100").all()


def test_a_head_start_with_weights_is_the_decoding_the_engine_uses(tmp_path, rng, monkeypatch):
    pred, gt, weights = pair_with_unit_weights(tmp_path, rng)
    made, started = head_start_spies(monkeypatch)
    request = request_for(pred, gt, ["weighted_tv"], weights_root=weights, device="cpu", workers=2, decoder="processes")
    evaluation = run_evaluation(request)
    assert len(made) == 1 and made[0].with_weights
    assert started == []
    assert list(evaluation.frame["status"]) == ["ok"]


# --- the library entry point: every bad argument is a clear error, before any decoding ---------


BAD_CONFIGS = [
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"batch_size": -2}, "--batch-size must be at least 1"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"workers": -1}, "--workers must be at least 1"),
    ({"precision": "float16"}, "--precision must be float32 or float64"),
    ({"pred_kind": "softmax"}, "--pred-kind must be auto, probs or logits"),
    ({"max_pixels": 0}, "--max-pixels must be at least 1"),
    ({"max_pixels": -5}, "--max-pixels must be at least 1"),
    ({"device": "gpu0"}, "unknown device 'gpu0'"),
    ({"device": "meta"}, "unsupported device 'meta'"),
    ({"device": "cuda"}, "CUDA is not available"),
    ({"decoder": "gpu"}, "--decoder must be one of"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_CONFIGS, ids=[str(bad) for bad, _ in BAD_CONFIGS])
def test_evaluate_refuses_a_bad_argument_before_decoding(bad, message, monkeypatch):
    decoded = []
    monkeypatch.setattr(lossctl.decoding, "decode_pair", lambda *a, **k: decoded.append(a) or 1 / 0)
    pairs = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs
    config = EvalConfig(metrics=["l1"], params={}, **{"device": "cpu", "workers": 1, **bad})
    with pytest.raises(LossctlError, match=message.replace("(", r"\(")):
        evaluate(pairs, config)
    assert decoded == []


# --- the library checks metrics and their parameters as the command line does -------------------

VALID = "valid metrics: " + ", ".join(METRICS)
BAD_METRICS_AND_PARAMS = [
    (["nope", "l1"], {}, f"unknown metric nope; {VALID}"),  # was KeyError: 'nope'
    ("l1", {}, f"metrics must be a list of metric names; got 'l1'; {VALID}"),  # was KeyError: 'l'
    ([], {}, f"no metric to compute; {VALID}"),  # ran, computing nothing
    # was KeyError: 'eps'
    (["charbonnier"], {"charbonnier": {"epsilon": 1e-3}}, "charbonnier has no parameter 'epsilon'; its parameters: eps"),
    (["charbonnier"], {"charbonnier": {"eps": -1.0}}, "charbonnier.eps must be >= 0; got -1.0"),  # ran
    (["iou"], {"iou": {"threshold": "x"}}, "iou.threshold must be a number; got 'x'"),  # was TypeError
    (["iou"], {"iou": {"threshold": True}}, "iou.threshold must be a number; got True"),
    (["ssim"], {"ssim": {"window": 7.0}}, "ssim.window must be an integer; got 7.0"),
    (["psnr", "l1", "psnr"], {}, "metric psnr given twice; give each once"),
    (["charbonnier"], {"charbonnier": {"eps": 10**400}}, f"charbonnier.eps must be a finite number; got {10**400}"),
    (["huber"], {"huber": {"delta": math.inf}}, "huber.delta must be a finite number; got inf"),
    (["l1"], {"ssim": {"window": 7}}, "params given for 'ssim', which is not among the metrics l1"),
    (["ssim"], {"ssim": 7}, "params of ssim must map parameter names to values; got 7"),
    (["l1"], [("l1", {})], "params must map metric names to their parameters; got [('l1', {})]"),
]


@pytest.mark.parametrize(("metrics", "params", "message"), BAD_METRICS_AND_PARAMS)
def test_evaluate_refuses_unknown_metrics_and_bad_params_with_a_clear_error(metrics, params, message):
    pairs = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs
    with pytest.raises(LossctlError) as error:
        evaluate(pairs, EvalConfig(metrics=metrics, params=params, device="cpu", workers=1))
    assert str(error.value) == message


def test_the_library_takes_any_iterable_of_names_and_bools_for_integer_parameters():
    from lossctl.metrics import checked_metrics_and_params

    params = checked_metrics_and_params(iter(["psnr", "ssim"]), {"ssim": {"downsample": True, "k1": 1}})
    assert params == {"ssim": {"window": 11, "sigma": 1.5, "k1": 1.0, "k2": 0.03, "downsample": 1}}
    assert type(params["ssim"]["k1"]) is float and type(params["ssim"]["downsample"]) is int


def test_evaluate_fills_in_the_default_params_of_a_metric_given_none(folders, rng):
    """``EvalConfig(metrics=["charbonnier"], params={})`` raised KeyError: 'eps' from the middle
    of the run; a metric without params given takes its defaults (eps = 1e-3), as on the CLI."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["x"], 8, 8)
    pairs = pair_folders(pred, gt).pairs
    [result] = evaluate(pairs, EvalConfig(metrics=["charbonnier"], params={}, device="cpu", workers=1, precision="float64"))
    from PIL import Image

    p = np.asarray(Image.open(pred / "x.png"), dtype=np.float64) / 255
    g = np.asarray(Image.open(gt / "x.png"), dtype=np.float64) / 255
    assert result.values["charbonnier"] == pytest.approx(np.mean(np.sqrt((p - g) ** 2 + 1e-6)), rel=1e-12)


def test_the_weight_maps_of_weights_root_reach_weighted_tv(folders, rng, tmp_path):
    """With --weights, weighted_tv is sum_d sum(w_d |grad_d p|) / (C sum(w_d)) of the given maps
    (BasicSR WeightedTVLoss), not the edge-aware weights it falls back on without them."""
    from PIL import Image

    from .conftest import save_image

    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["x"], 12, 16)
    weights = tmp_path / "w"
    w = rng.integers(0, 256, size=(12, 16), dtype=np.uint8)
    save_image(weights / "x.png", w)
    request = request_for(
        pred, gt, ["weighted_tv"], weights_root=weights, device="cpu", workers=1, precision="float64"
    )
    evaluation = run_evaluation(request)
    p = np.asarray(Image.open(pred / "x.png"), dtype=np.float64) / 255
    w = w.astype(np.float64)[:, :, None]
    dy, dx = np.abs(np.diff(p, axis=0)), np.abs(np.diff(p, axis=1))
    expected = (w[:-1] * dy).sum() / (3 * w[:-1].sum()) + (w[:, :-1] * dx).sum() / (3 * w[:, :-1].sum())
    assert evaluation.frame["weighted_tv"].tolist() == [pytest.approx(expected, rel=1e-10)]
    assert evaluation.info.weights_root == str(weights)


@pytest.mark.parametrize(("decoder", "workers", "in_threads"), [("processes", 2, False), ("threads", 3, True)])
def test_the_requested_decoder_reaches_the_engine(folders, rng, monkeypatch, decoder, workers, in_threads):
    """``auto`` picks threads for 2 workers and processes for 3 workers of 24 pairs: the engine must
    follow --decoder instead (the CLI's test spies decoding.use_processes, which only the run's head
    start calls by that name; the engine imported its own)."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(24), 8, 8)
    sizes = tasks_of(monkeypatch)  # the CPU pipeline that decodes in threads
    evaluation = run_evaluation(request_for(pred, gt, device="cpu", workers=workers, decoder=decoder))
    assert bool(sizes) == in_threads
    assert list(evaluation.frame["status"]) == ["ok"] * 24


def test_shards_cover_every_pair_once_and_record_their_pixels(folders, rng):
    """Two shards of pairs of 256, 128, 64 and 16 pixels and an unmatched prediction (weight 1):
    longest-processing-time puts the 256-pixel pair alone in shard 0 and the rest in shard 1.
    Each shard reports exactly its pairs, with the values of the whole run, counts them for the
    progress bar, and records its pixels and the whole pairing's."""
    from lossctl.sharding import Shard

    from .conftest import random_rgb, save_image

    pred, gt = folders
    sizes = {"a": (8, 8), "b": (8, 16), "c": (16, 16), "d": (4, 4)}
    for name, (height, width) in sizes.items():
        noisy_pairs(pred, gt, rng, [name], height, width)
    save_image(pred / "e.png", random_rgb(rng, 8, 8))  # no ground truth
    request = request_for(pred, gt, device="cpu", workers=1)
    whole = run_evaluation(request).frame.set_index("name")
    totals, frames, records = [], [], []
    for index in range(2):
        evaluation = run_evaluation(request, on_start=lambda total: totals.append(total), shard=Shard(index, 2))
        frames.append(evaluation.frame.set_index("name"))
        records.append(evaluation.info.shard)
    assert [sorted(frame.index) for frame in frames] == [["c"], ["a", "b", "d", "e"]]
    assert totals == [1, 4]
    assert [(r["index"], r["count"], r["pairs"]) for r in records] == [(0, 2, 5), (1, 2, 5)]
    assert [r["positions"] for r in records] == [[2], [0, 1, 3, 4]]
    assert [(r["pixels"], r["total_pixels"]) for r in records] == [(256, 465), (209, 465)]
    for frame in frames:
        for name, row in frame.iterrows():
            assert row["status"] == whole.loc[name, "status"]
            if row["status"] == "ok":
                assert row["l1"] == whole.loc[name, "l1"]
    # More shards than pairs: each pair in exactly one shard, the shards beyond the pairs empty.
    names = []
    for index in range(8):
        evaluation = run_evaluation(request, shard=Shard(index, 8))
        names += list(evaluation.frame["name"])
        if index >= 5:
            assert evaluation.frame.empty and evaluation.info.shard["positions"] == []
            assert evaluation.info.shard["pixels"] == 0
    assert sorted(names) == ["a", "b", "c", "d", "e"]


def test_ctrl_c_keeps_the_finished_pairs_of_the_shards_total(folders, rng, monkeypatch):
    """RunInterrupted counts against the pairs this run (this shard) evaluates, not the pairing's."""
    from lossctl.run import RunInterrupted
    from lossctl.sharding import Shard

    pred, gt = folders
    for name, (height, width) in {"a": (8, 8), "b": (8, 16), "c": (16, 16), "d": (4, 4)}.items():
        noisy_pairs(pred, gt, rng, [name], height, width)
    iter_results = lossctl.engine.iter_results

    def interrupted_after_one(pairs, config, head_start=None):
        results = iter_results(pairs, config, head_start)
        yield next(results)
        results.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(lossctl.engine, "iter_results", interrupted_after_one)
    request = request_for(pred, gt, device="cpu", workers=1)
    with pytest.raises(RunInterrupted) as caught:  # shard 1/2 holds a, b and d (c weighs the most)
        run_evaluation(request, shard=Shard(1, 2))
    assert caught.value.total == 3 and str(caught.value) == "interrupted after 1 of 3 pairs"
    assert len(caught.value.evaluation.frame) == 1 and caught.value.evaluation.info.shard["positions"] == [0, 1, 3]


IMAGE_METRICS = ["l1", "mse", "rmse", "psnr", "ssim", "ms_ssim", "charbonnier", "smooth_l1", "huber",
                 "log_cosh", "quantile", "bce", "dice", "iou", "tv", "weighted_tv"]  # fmt: skip
SEGMENTATION_METRICS = ["dice", "iou", "ce", "pixel_accuracy"]


def test_applicable_metrics_by_the_kinds_of_pair_present(tmp_path):
    from lossctl.metrics import METRICS
    from lossctl.run import applicable_metrics

    from .conftest import REPO

    seg_pred, seg_gt = REPO / "sample_images" / "seg" / "pred", REPO / "sample_images" / "seg" / "gt"
    images, scores = pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs, pair_folders(seg_pred, seg_gt).pairs
    assert applicable_metrics(list(METRICS), images) == IMAGE_METRICS
    assert applicable_metrics(list(METRICS), scores) == SEGMENTATION_METRICS
    assert applicable_metrics(list(METRICS), [*images, *scores]) == list(METRICS)
    assert applicable_metrics(["ce", "l1"], images) == ["l1"]
    # a run of every metric on segmentation pairs keeps the parameters of the metrics it runs only
    request = dataclasses.replace(
        request_for(seg_pred, seg_gt, list(METRICS), device="auto", workers=1, ignore_index=255), all_metrics=True
    )
    evaluation = run_evaluation(request)
    assert evaluation.info.metrics == SEGMENTATION_METRICS
    assert evaluation.info.params == {"iou": {"threshold": 0.5}}
    assert list(evaluation.frame.columns[evaluation.frame.columns.isin(list(METRICS))]) == SEGMENTATION_METRICS
    assert evaluation.info.device == "cpu"  # what "auto" resolved to, on this machine without a GPU


def test_a_mixed_folder_records_its_segmentation_options(folders, rng):
    import shutil

    from .conftest import REPO

    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["image"], 8, 8)
    shutil.copy(REPO / "sample_images" / "seg" / "pred" / "scene_probs.npy", pred)
    shutil.copy(REPO / "sample_images" / "seg" / "gt" / "scene_probs.png", gt)
    request = request_for(pred, gt, ["l1", "ce"], device="cpu", workers=1, pred_kind="probs", ignore_index=255)
    evaluation = run_evaluation(request)
    assert evaluation.info.segmentation == {"pred_kind": "probs", "ignore_index": 255}
    assert list(evaluation.frame["status"]) == ["ok", "ok"]


def test_a_head_start_under_another_pixel_limit_is_not_taken_for_this_runs_decoding():
    """The engine keeps a head start only if it decodes as the run asks: one made without the
    run's --max-pixels (Pillow's default limit) would hand over images the run refuses."""
    pairs = [pair for pair in pair_folders(SAMPLE_PRED, SAMPLE_GT).pairs if pair.status == "pending"]
    head_start = lossctl.decoding.DecodeAhead(pairs, False, workers=1, prefetch=1, max_pixels=None)
    try:
        assert head_start.decodes(pairs, False, None)
        assert not head_start.decodes(pairs, False, 100)
    finally:
        head_start.close()
