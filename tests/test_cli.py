"""Every command, option and exit code through Typer's CliRunner, and the README's commands."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lossctl.cli import _LazyProgress, _partial_path, app
from lossctl.metrics import METRICS

from .conftest import (
    REPO,
    SAMPLE_GT,
    SAMPLE_PRED,
    noisy,
    noisy_pairs,
    one_line_error,
    pair_with_unit_weights,
    random_rgb,
    save_image,
)

runner = CliRunner()
SAMPLES = [str(SAMPLE_PRED), str(SAMPLE_GT)]
ROW_COLUMNS = ["name", "pred", "gt", "height", "width", "channels", "bit_depth", "status", "error", "notes"]
IMAGE_METRICS = [name for name, metric in METRICS.items() if metric.compute is not None]


def invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def mixed(folders, rng):
    """Two good pairs, an unreadable prediction, a size mismatch and a prediction without gt."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b"))
    (pred / "broken.png").write_bytes(b"not an image")
    save_image(gt / "broken.png", random_rgb(rng))
    save_image(pred / "sizes.png", random_rgb(rng, 10, 10))
    save_image(gt / "sizes.png", random_rgb(rng, 12, 10))
    save_image(pred / "extra.png", random_rgb(rng))
    return pred, gt


def test_eval_on_the_samples_prints_the_summary_and_exits_0():
    result = invoke("eval", *SAMPLES)
    assert result.exit_code == 0, result.output
    assert "7 pairs: 7 ok, 0 error, 0 unmatched" in result.stdout
    for name in IMAGE_METRICS:
        assert name in result.stdout
    assert "per image" in result.stdout and "hdr16/rgb16" in result.stdout
    assert "pooled PSNR" in result.stdout


def test_quiet_runs_leave_stderr_empty():
    result = invoke("eval", *SAMPLES, "--quiet", "--format", "csv")
    assert result.exit_code == 0 and result.stderr == ""


def test_progress_bar_appears_only_after_a_second():
    progress = _LazyProgress(total=3, enabled=True)
    progress.advance(1)
    assert progress.progress is None  # under a second: nothing drawn
    progress.started_at -= 2
    progress.advance(1)
    assert progress.progress is not None and progress.progress.tasks[0].completed == 2
    progress.close()
    assert _LazyProgress(total=3, enabled=False).advance(3) is None


def test_per_image_table_can_be_switched(mixed):
    assert "per image" not in invoke("eval", *SAMPLES, "--no-per-image").stdout
    assert "per image" in invoke("eval", *mixed, "--per-image").stdout


def test_csv_report_has_the_documented_columns_and_one_row_per_pair(tmp_path, mixed):
    report = tmp_path / "report.csv"
    result = invoke("eval", *mixed, "--csv", report)
    assert result.exit_code == 3, result.output
    frame = pd.read_csv(report, keep_default_na=False, na_values=[""])
    assert list(frame.columns) == ROW_COLUMNS + IMAGE_METRICS
    rows = frame.set_index("name")
    assert rows["status"].to_dict() == {
        "a": "ok",
        "b": "ok",
        "broken": "error",
        "extra": "unmatched",
        "sizes": "error",
    }
    assert rows.loc["sizes", "error"] == "size mismatch: pred is 10x10, gt is 10x12"
    assert rows.loc["extra", "error"] == "no ground truth with this name"
    assert rows.loc["a", "height"] == 32 and rows.loc["a", "width"] == 40 and rows.loc["a", "channels"] == 3
    assert rows.loc["a", "bit_depth"] == 8
    assert rows.loc["a", "psnr"] > 20
    assert math.isnan(rows.loc["broken", "psnr"])
    assert ",3,8,ok," in report.read_text()  # bit depth stays an integer beside failed rows
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temp files


def test_json_report_has_rows_summary_params_device_and_versions(tmp_path):
    report = tmp_path / "report.json"
    result = invoke("eval", *SAMPLES, "--json", report, "--param", "charbonnier.eps=1e-4")
    assert result.exit_code == 0
    document = json.loads(report.read_text())
    assert document["params"]["charbonnier"] == {"eps": 1e-4}
    assert document["params"]["ssim"] == {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "downsample": 0}
    assert document["params"]["convention"] == {"preset": "skimage", "y_channel": False, "crop_border": 0}
    assert document["device"] == "cpu" and document["precision"] == "float32"
    assert document["lossctl"] and document["torch"]
    assert document["counts"] == {"pairs": 7, "ok": 7, "error": 0, "unmatched": 0, "skipped_files": 0}
    assert len(document["rows"]) == 7 and list(document["summary"]) == IMAGE_METRICS
    psnr = document["summary"]["psnr"]
    values = [row["psnr"] for row in document["rows"]]
    assert psnr["mean"] == pytest.approx(np.mean(values))
    assert psnr["median"] == pytest.approx(np.median(values))
    assert psnr["std"] == pytest.approx(np.std(values))
    mses = [row["mse"] for row in document["rows"]]
    assert psnr["pooled"] == pytest.approx(10 * math.log10(1 / np.mean(mses)), rel=1e-5)


def test_two_outputs_never_name_the_same_file_nor_an_input(tmp_path, folders, rng):
    """One report would silently replace the other, or the report a command has just read."""
    report = tmp_path / "r.csv"
    same = invoke("eval", *SAMPLES, "-m", "l1", "--csv", report, "--html", report)
    one_line_error(same, 2, "--csv and --html name the same file")
    assert not report.exists()  # refused before the run
    (tmp_path / "link.json").symlink_to(report)
    linked = invoke("check", *SAMPLES, "--max", "l1=1", "--csv", report, "--json", tmp_path / "link.json")
    one_line_error(linked, 2, "--csv and --json name the same file")
    assert invoke("eval", *SAMPLES, "-m", "l1", "--csv", os.devnull, "--json", os.devnull).exit_code == 0
    assert invoke("eval", *SAMPLES, "-m", "l1", "--json", tmp_path / "a.json").exit_code == 0
    original = (tmp_path / "a.json").read_bytes()
    compared = invoke("compare", tmp_path / "a.json", tmp_path / "a.json", "--html", tmp_path / "a.json")
    one_line_error(compared, 2, "is an input report: writing it would replace what was read")
    assert (tmp_path / "a.json").read_bytes() == original
    merged = invoke("merge", tmp_path / "a.json", "--output", tmp_path / "a.json")
    one_line_error(merged, 2, "is an input report")
    pred, gt = folders
    clean = random_rgb(rng, 16, 16)
    save_image(pred / "x.png", noisy(rng, clean))
    save_image(gt / "x.png", clean)
    inside = invoke("eval", pred, gt, "--html", pred / "page.html", "--html-images", "files")
    one_line_error(inside, 2, "page_files is the input folder")
    assert sorted(path.name for path in pred.iterdir()) == ["x.png"]
    # The CSV's sidecar is written too, and --maps is a folder: neither may be another output.
    sidecar = invoke("eval", *SAMPLES, "-m", "l1", "--csv", report, "--html", f"{report}.meta.json")
    one_line_error(sidecar, 2, "--html and --csv's sidecar name the same file")
    folder = invoke(
        "eval", *SAMPLES, "-m", "l1", "--json", tmp_path / "m.json", "--maps", tmp_path / "m.json"
    )
    one_line_error(folder, 2, "is the --maps folder; give each output its own name")
    assert not (tmp_path / "m.json").exists()


def test_a_complete_run_removes_the_partial_reports_an_interrupted_one_left(tmp_path):
    """A stale r.csv.partial beside a complete r.csv only misled."""
    stale = [tmp_path / name for name in ("r.csv.partial", "r.csv.partial.meta.json", "r.json.partial")]
    for path in [*stale, tmp_path / "other.csv.partial"]:
        path.write_text("rows of an earlier, interrupted run")
    result = invoke(
        "eval", *SAMPLES, "-m", "l1", "--csv", tmp_path / "r.csv", "--json", tmp_path / "r.json", "-q"
    )
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in stale) and (tmp_path / "other.csv.partial").exists()


def test_reports_are_written_through_symbolic_links(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    (tmp_path / "link.csv").symlink_to(real)
    assert invoke("eval", *SAMPLES, "-m", "psnr", "--csv", tmp_path / "link.csv").exit_code == 0
    assert (tmp_path / "link.csv").is_symlink() and real.read_text().startswith("name,pred,gt")


def test_markdown_escapes_file_names(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    for name in ("a*b_c", "<b>x</b>"[:3] + "x", "pipe|name"):
        save_image(pred / f"{name}.png", noisy(rng, clean))
        save_image(gt / f"{name}.png", clean)
    text = invoke("eval", pred, gt, "-m", "psnr", "--format", "markdown").stdout
    assert "| a\\*b\\_c | ok |" in text and "| pipe\\|name | ok |" in text and "| \\<b\\>x | ok |" in text


def test_parameters_change_the_values():
    def charbonnier(*extra):
        result = invoke("eval", *SAMPLES, "-m", "charbonnier", "--format", "json", *extra)
        return {row["name"]: row["charbonnier"] for row in json.loads(result.stdout)["rows"]}

    default, small = charbonnier(), charbonnier("-p", "charbonnier.eps=1e-6")
    assert all(small[name] < default[name] for name in default)


def test_a_parameter_set_twice_is_refused_not_silently_overwritten():
    """-p ssim.window=7 -p ssim.window=9 kept 9, and --threshold beside -p iou.threshold kept one."""
    twice = invoke("eval", *SAMPLES, "-m", "ssim", "-p", "ssim.window=7", "-p", "ssim.window=9")
    one_line_error(
        twice, 2, "--param ssim.window=9: ssim.window is already set (ssim.window=7); give it once"
    )
    both = invoke("eval", *SAMPLES, "-m", "iou", "--threshold", "0.3", "-p", "iou.threshold=0.7")
    one_line_error(both, 2, "--threshold and --param iou.threshold set the same value; give one")


@pytest.mark.parametrize("output_format", ["csv", "json", "markdown"])
def test_machine_formats_keep_stdout_clean(output_format):
    result = invoke("eval", *SAMPLES, "--format", output_format, "--metrics", "psnr,ssim")
    assert result.exit_code == 0
    text = result.stdout
    if output_format == "csv":
        assert list(pd.read_csv(io.StringIO(text)).columns) == ROW_COLUMNS + ["psnr", "ssim"]
    elif output_format == "json":
        assert json.loads(text)["metrics"] == ["psnr", "ssim"]
    else:
        assert text.startswith("**lossctl eval**") and "| psnr ↑ |" in text and "| blur | ok |" in text


def test_metric_subset_is_computed_in_registry_order():
    result = invoke("eval", *SAMPLES, "--metrics", "ssim,l1", "--format", "csv")
    assert list(pd.read_csv(io.StringIO(result.stdout)).columns)[-2:] == ["l1", "ssim"]


def test_a_repeated_metrics_option_adds_metrics(tmp_path):
    """-m psnr -m ssim kept only ssim, without a word (-p, --min and --max are repeatable)."""
    result = invoke("eval", *SAMPLES, "-m", "ssim", "-m", "psnr,l1", "--format", "csv")
    assert list(pd.read_csv(io.StringIO(result.stdout)).columns)[-3:] == ["l1", "psnr", "ssim"]
    report = tmp_path / "r.csv"
    checked = invoke("check", *SAMPLES, "--max", "l1=1", "-m", "ssim", "-m", "psnr", "--csv", report)
    assert checked.exit_code == 0, checked.output
    assert list(pd.read_csv(report).columns)[-3:] == ["l1", "psnr", "ssim"]


def test_identical_pairs_are_inf_per_image_and_left_out_of_the_mean(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "same.png", clean)
    save_image(gt / "same.png", clean)
    other = noisy(rng, clean)
    save_image(pred / "other.png", other)
    save_image(gt / "other.png", clean)
    document = json.loads(invoke("eval", pred, gt, "-m", "psnr,ms_ssim", "--format", "json").stdout)
    rows = {row["name"]: row["psnr"] for row in document["rows"]}
    assert rows["same"] == "inf"
    summary = document["summary"]["psnr"]
    assert summary["infinite"] == 1 and summary["count"] == 2 and summary["nan"] == 0
    assert summary["mean"] == pytest.approx(rows["other"]) and summary["std"] == 0
    assert summary["median"] == summary["max"] == "inf" and summary["min"] == pytest.approx(rows["other"])
    # The pooled PSNR keeps the identical pair's MSE of 0: 10 log10(1 / mean(mse)) over both pairs.
    mse_other = np.mean(((other.astype(np.float64) - clean) / 255) ** 2)
    assert summary["pooled"] == pytest.approx(10 * math.log10(1 / ((0 + mse_other) / 2)), abs=1e-4)
    # 32x40 is under MS-SSIM's 161 px: NaN for both pairs, counted as such, no mean.
    ms_ssim = document["summary"]["ms_ssim"]
    assert ms_ssim["nan"] == 2 and ms_ssim["count"] == 0 and ms_ssim["mean"] is None
    csv_text = invoke("eval", pred, gt, "-m", "psnr", "--format", "csv").stdout
    assert ",inf" in csv_text
    table = invoke("eval", pred, gt, "-m", "psnr").stdout
    assert "1 identical pair(s) with PSNR = inf left out" in table


def test_an_infinite_mse_gives_a_pooled_psnr_of_minus_inf_not_an_internal_error(folders, rng):
    """A float image with an infinite pixel: MSE inf, PSNR -inf, and the pooled PSNR -inf (it was
    log10(1 / inf): a math domain error, exit 1)."""
    pred, gt = folders
    values = rng.random((16, 16)).astype(np.float32)
    broken = values.copy()
    broken[3, 3] = np.inf
    Image.fromarray(broken, mode="F").save(pred / "broken.tif")
    Image.fromarray(values, mode="F").save(gt / "broken.tif")
    Image.fromarray(values, mode="F").save(pred / "same.tif")
    Image.fromarray(values, mode="F").save(gt / "same.tif")
    result = invoke("eval", pred, gt, "-m", "mse,psnr", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    rows = {row["name"]: row for row in document["rows"]}
    assert (
        rows["broken"]["mse"] == "inf" and rows["broken"]["psnr"] == "-inf" and rows["same"]["psnr"] == "inf"
    )
    assert document["summary"]["psnr"]["pooled"] == "-inf"
    table = invoke("eval", pred, gt, "-m", "mse,psnr").stdout
    assert "pooled PSNR (from the mean MSE): -inf dB" in table
    assert "identical pair(s)" not in table  # one of the two infinities is not an identical pair
    assert "2 pair(s) with psnr = -inf or inf left out" in table and "1 pair(s) with mse = inf" in table


@pytest.mark.parametrize("output_format", ["csv", "json", "markdown"])
def test_machine_formats_with_failed_pairs_say_so_on_stderr(mixed, output_format):
    """Exit 3 with a report on stdout and nothing in a CI log to say why."""
    result = invoke("eval", *mixed, "--format", output_format, "-q")
    assert result.exit_code == 3
    assert result.stderr == (
        "note: 3 of 5 pairs were not computed (2 error, 1 unmatched): see the report's status and error "
        "columns (exit code 3)\n"
    )


def test_failed_pairs_exit_3_and_are_listed(mixed):
    result = invoke("eval", *mixed)
    assert result.exit_code == 3
    assert "5 pairs: 2 ok, 2 error, 1 unmatched" in result.stdout
    assert "sizes: error: size mismatch" in result.stdout
    assert "extra: unmatched: no ground truth with this name" in result.stdout


def test_weights_folder(tmp_path, rng):
    pred, gt, weights = pair_with_unit_weights(tmp_path, rng)
    weighted = json.loads(
        invoke("eval", pred, gt, "--weights", weights, "-m", "tv,weighted_tv", "--format", "json").stdout
    )
    row = weighted["rows"][0]
    edge_aware = json.loads(invoke("eval", pred, gt, "-m", "weighted_tv", "--format", "json").stdout)["rows"][
        0
    ]
    assert row["weighted_tv"] != pytest.approx(edge_aware["weighted_tv"])
    # Unit weights: each direction's sum of |differences| over C * 15 * 16 weights, where tv divides
    # the same sums by C * 16 * 16.
    assert row["weighted_tv"] == pytest.approx(row["tv"] * (16 * 16) / (15 * 16), rel=1e-5)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--metrics", "psnr,nope"], "unknown metric nope; valid metrics: l1, mse, rmse, psnr, ssim"),
        (["--param", "charbonnier.eps=x"], "charbonnier.eps must be a number"),
        (["--param", "charbonnier.eps=inf"], "charbonnier.eps must be a finite number"),
        (["--param", "huber.size=1"], "huber has no parameter 'size'"),
        (["--metrics", "psnr", "--param", "huber.delta=2"], "huber is not among the selected metrics"),
        (["--device", "cuda:7"], "cuda:7 requested but"),
        (["--device", "tpu"], "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
        (["--device", "meta"], "unsupported device 'meta'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "many"], "--batch-size must be a positive integer or auto; got 'many'"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--csv", "/nonexistent/folder/report.csv"], "folder /nonexistent/folder does not exist"),
        (["--metrics", "psnr", "--weights", "."], "--weights is only used by weighted_tv"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, fragment):
    one_line_error(invoke("eval", *SAMPLES, *args), 2, fragment)


def test_folder_errors_exit_2_with_one_line(tmp_path, folders, rng):
    pred, gt = folders
    one_line_error(invoke("eval", tmp_path / "missing", gt), 2, "prediction folder not found")
    one_line_error(invoke("eval", pred, gt), 2, "no images found in prediction folder")
    save_image(pred / "a.png", random_rgb(rng))
    save_image(gt / "b.png", random_rgb(rng))
    one_line_error(invoke("eval", pred, gt), 2, "has a ground truth with the same relative path")
    one_line_error(invoke("eval", *SAMPLES, "--csv", tmp_path), 2, "is a folder")


def test_invalid_choice_is_a_usage_error():
    result = invoke("eval", *SAMPLES, "--format", "xml")
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("eval", *SAMPLES, "--workers", "abc"), "'--workers'"),
        (("eval", *SAMPLES, "--format", "xml"), "Invalid value for '--format': 'xml' is not one of 'table',"),
        (("eval", *SAMPLES, "--bogus"), "--bogus"),
        (("eval", SAMPLES[0]), "'GT'"),
        (("eval", *SAMPLES, "extra"), "extra"),
        (("evl",), "evl"),
        (("eval", *SAMPLES, "--html-limit", "many"), "--html-limit"),
    ],
)
def test_option_parsing_errors_are_one_line_with_a_pointer_to_help(args, fragment):
    result = invoke(*args)
    one_line_error(result, 2, fragment)
    assert "--help" in result.stderr


def test_no_arguments_still_shows_the_help():
    result = invoke()
    assert result.exit_code in (0, 2) and "Usage" in result.output and "eval" in result.output


def test_metrics_command_lists_every_metric_with_direction_and_defaults():
    table = invoke("metrics")
    assert table.exit_code == 0
    for name in METRICS:
        assert name in table.stdout
    listing = json.loads(invoke("metrics", "--format", "json").stdout)
    assert [entry["name"] for entry in listing] == list(METRICS)
    # Every default and direction as METRICS.md's table gives it (iou, ce and pixel_accuracy: lossctl's).
    ssim = {"window": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03}
    contract = {
        "l1": ("lower", {}),
        "mse": ("lower", {}),
        "rmse": ("lower", {}),
        "psnr": ("higher", {}),
        "ssim": ("higher", {**ssim, "downsample": 0}),
        "ms_ssim": ("higher", ssim),
        "charbonnier": ("lower", {"eps": 1e-3}),
        "smooth_l1": ("lower", {"beta": 1.0}),
        "huber": ("lower", {"delta": 1.0}),
        "log_cosh": ("lower", {}),
        "quantile": ("lower", {"q": 0.5}),
        "bce": ("lower", {}),
        "dice": ("higher", {}),
        "iou": ("higher", {"threshold": 0.5}),
        "ce": ("lower", {}),
        "pixel_accuracy": ("higher", {}),
        "tv": ("lower", {}),
        "weighted_tv": ("lower", {}),
    }
    assert {entry["name"]: (entry["better"], entry["params"]) for entry in listing} == contract


def test_version_and_module_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "lossctl", "--version"], capture_output=True, text=True, check=True
    )
    assert re.fullmatch(r"lossctl \d+\.\d+\.\d+\n", completed.stdout)


def test_decoding_processes_keep_pillows_warnings_quiet_as_the_cli_does(folders, rng):
    """A palette PNG whose transparency is bytes makes Pillow warn while converting it to RGB."""
    pred, gt = folders
    for side in (pred, gt):
        image = Image.fromarray(rng.integers(0, 4, size=(16, 16), dtype=np.uint8), mode="P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
        image.save(side / "palette.png", transparency=bytes([0, 128, 255, 255]))
    with Image.open(pred / "palette.png") as image, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image.convert("RGB")
    assert caught, "the file no longer makes Pillow warn: the test proves nothing"
    command = [sys.executable, "-m", "lossctl", "eval", str(pred), str(gt), "--metrics", "l1"]
    completed = subprocess.run(
        [*command, "--decoder", "processes", "--workers", "2", "--format", "csv"],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Warning" not in completed.stderr


def test_a_fifo_given_to_csv_gets_the_report_and_stays_a_fifo(tmp_path, mixed):
    """Renaming a temporary file over it replaced a FIFO (and, as root, /dev/null itself)."""
    pred, gt = mixed
    (tmp_path / "out").mkdir()
    fifo = tmp_path / "out" / "report.csv"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = invoke("eval", str(pred), str(gt), "--metrics", "l1", "--csv", str(fifo), "-q")
    reader.join(timeout=30)
    assert result.exit_code == 3, result.output  # the fixture's broken pairs
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    frame = pd.read_csv(io.StringIO(received[0]), dtype={"name": str})
    assert list(frame.columns[-1:]) == ["l1"] and len(frame) == len(list(pred.rglob("*.png")))
    assert [path.name for path in fifo.parent.iterdir()] == ["report.csv"]  # no sidecar beside it
    assert _partial_path(fifo) == fifo  # Ctrl-C: the partial rows go to the stream too
    assert _partial_path(tmp_path / "x.csv") == tmp_path / "x.csv.partial"


def test_sigterm_stops_like_ctrl_c_and_leaves_no_process_holding_the_output(folders, rng, tmp_path):
    """A plain kill (SIGTERM) ended the main process alone: the decoding processes, children of
    multiprocessing's fork server, lived on holding stdout, and a reader of it waited forever."""
    pred, gt = folders
    for index in range(400):
        clean = random_rgb(rng, 96, 96)
        save_image(gt / f"{index:03d}.png", clean)
        save_image(pred / f"{index:03d}.png", noisy(rng, clean))
    report = tmp_path / "r.json"
    command = [sys.executable, "-m", "lossctl", "eval", str(pred), str(gt), "-q", "--json", str(report)]
    slow = ["--decoder", "processes", "--workers", "2", "--batch-size", "1", "--precision", "float64"]
    process = subprocess.Popen([*command, *slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.2)  # the decoding processes are running; the run takes 2.7 s here
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)  # every process writing to the pipes has ended
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not report.exists()


def test_a_table_into_a_pipe_closed_early_keeps_the_run_s_exit_code(folders, rng):
    """rich exits 1 itself on a closed pipe (README: an internal error); csv/json kept 0 or 3."""
    pred, gt = folders
    for index in range(600):
        clean = random_rgb(rng, 16, 16)
        save_image(gt / f"{index:03d}.png", clean)
        save_image(pred / f"{index:03d}.png", noisy(rng, clean))
    command = [sys.executable, "-m", "lossctl", "eval", str(pred), str(gt), "--per-image", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()  # the table is far larger than the pipe's buffer
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 0, err
    assert err == ""


def test_help_and_metrics_start_without_torch_or_pandas():
    code = "import sys; from lossctl.cli import app; import lossctl.metrics; print('torch' in sys.modules, 'pandas' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["False", "False"]


def readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [block.strip() for block in blocks]


def test_ci_runs_the_readme_test_command_exactly():
    install_and_run, install_and_test = readme_commands()[:2]
    assert install_and_run.endswith("lossctl eval sample_images/pred sample_images/gt")
    assert install_and_test.endswith("python -m pytest -q")
    assert install_and_test in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_python_examples_run():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    restored, target = namespace["restored"], namespace["target"]
    assert namespace["losses"].psnr(restored.detach(), target) > 35


def test_readme_example_output_is_what_lossctl_prints(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "80")
    readme = (REPO / "README.md").read_text()
    examples = re.findall(r"```\n\$ (lossctl .*?)\n(.*?)```", readme, flags=re.S)
    assert len(examples) >= 2

    def lines(text: str) -> list[str]:  # the closing line names the device, which varies
        return [line.rstrip() for line in text.strip().splitlines() if "device" not in line]

    for command, shown in examples:
        assert lines(invoke(*shlex.split(command)[1:]).stdout) == lines(shown), command


def test_readme_examples_run(tmp_path, monkeypatch):
    """Every `lossctl ...` example in the README and in `lossctl eval --help` runs as documented."""
    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text()
    examples = re.findall(r"^\$ (lossctl .*)$", readme, flags=re.M)
    examples.append(readme_commands()[0].split(" && ")[-1])
    for example in examples:
        result = invoke(*shlex.split(example)[1:])
        assert result.exit_code == 0, (example, result.output)
    help_text = invoke("eval", "--help").stdout + invoke("check", "--help").stdout
    for example in re.findall(r"lossctl (?:eval|check) (?:pred/|sample_images).*", help_text):
        arguments = shlex.split(example.replace("pred/ gt/", f"{SAMPLE_PRED} {SAMPLE_GT}"))[1:]
        if ">" in arguments:
            arguments = arguments[: arguments.index(">")]
        arguments = [
            str(tmp_path / a) if a.endswith((".csv", ".json", ".html", "maps/")) else a for a in arguments
        ]
        result = invoke(*arguments)
        assert result.exit_code == 0, (example, result.output)


def test_an_interrupt_inside_exec_of_source_text_still_exits_130(tmp_path):
    """CPython 3.11 kills itself with SIGINT at exit once a KeyboardInterrupt has left an exec() of
    source text, caught or not, where the program runs as ``python -m`` (a script's SystemExit
    exits at once); dataclasses run such exec() calls on import, and a SIGTERM there
    (lossctl.decoding's, 0.33 s into a run) made ``python -m lossctl`` die by SIGINT, not exit 130."""
    (tmp_path / "interrupted_run.py").write_text(
        "import sys, lossctl.run\n"
        "def interrupted(*args, **kwargs):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "lossctl.run.run_evaluation = interrupted\n"
        f"sys.argv = ['lossctl', 'eval', {str(SAMPLE_PRED)!r}, {str(SAMPLE_GT)!r}, '-q']\n"
        "from lossctl.cli import main\n"
        "main()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "interrupted_run"], capture_output=True, text=True, cwd=tmp_path
    )
    assert completed.returncode == 130, completed.stderr
    assert completed.stderr.strip() == "error: interrupted"


def test_the_summary_title_is_one_line_whatever_the_tables_width():
    """A table's title wraps at the table's width: with one metric the run's line was split in two."""
    first = invoke("eval", *SAMPLES, "-m", "psnr", "--no-per-image").stdout.splitlines()[0]
    assert first.rstrip() == "lossctl eval — 7 pairs: 7 ok, 0 error, 0 unmatched — preset skimage"
