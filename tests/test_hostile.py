"""Inputs nobody curated: spreadsheet formulas in names, huge images, Ctrl-C, look-alike names."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lossctl import decoding, engine
from lossctl.cli import app
from lossctl.io import load_pair, pair_folders
from lossctl.metrics import resolve_params

from .conftest import noisy, noisy_pairs, random_rgb, save_image
from .hostile_folders import build_hostile_folders

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def test_names_that_look_like_formulas_are_quoted_in_csv_and_compare_reads_them_back(tmp_path, folders, rng):
    pred, gt = folders
    names = ["=HYPERLINK(1)", "+cmd", "-2", "@SUM(A1)", "plain"]
    noisy_pairs(pred, gt, rng, names, 8, 8)
    report = tmp_path / "r.csv"
    assert invoke("eval", pred, gt, "-m", "psnr", "--csv", report).exit_code == 0
    frame = pd.read_csv(report)
    assert sorted(frame["name"]) == sorted(["'=HYPERLINK(1)", "'+cmd", "'-2", "'@SUM(A1)", "plain"])
    assert all(cell.startswith("'") for cell in frame["pred"] if not cell.startswith(str(pred)))
    assert invoke("compare", report, report).exit_code == 0
    json_report = tmp_path / "r.json"
    invoke("eval", pred, gt, "-m", "psnr", "--json", json_report)
    result = invoke("compare", json_report, report, "--format", "json")
    document = json.loads(result.stdout)
    assert result.exit_code == 0 and document["added"] == [] and document["removed"] == []


def test_compare_html_from_csv_reports_opens_files_whose_path_looks_like_a_formula(tmp_path, rng):
    """The CSV quotes a pred path starting with '=' as it quotes names; compare --html read only the
    names back, so every picture of such a folder was 'cannot read file'."""
    clean = random_rgb(rng, 16, 16)
    for folder, image in (("gt", clean), ("=base", noisy(rng, clean, 2)), ("=new", noisy(rng, clean, 60))):
        (tmp_path / folder).mkdir()
        save_image(tmp_path / folder / "a.png", image)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative folders: the CSV's pred paths themselves start with '='
    try:
        for side in ("base", "new"):
            assert invoke("eval", f"={side}", "gt", "-m", "l1,psnr", "--csv", f"{side}.csv").exit_code == 0
        assert pd.read_csv("new.csv")["pred"][0].startswith("'=new")
        result = invoke("compare", "base.csv", "new.csv", "--html", "c.html")
        page = Path("c.html").read_text()
    finally:
        os.chdir(cwd)
    assert result.exit_code == 1, result.output  # a regression: the page shows it
    assert "cannot read file" not in page and page.count("data:image/png;base64,") >= 3


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_is_reported_in_every_format(tmp_path, rng):
    """Linux names are bytes: b'caf\xe9.png' (Latin-1) is the str 'caf\udce9.png' in Python, which
    strict UTF-8 cannot write; every report with such a pair was an internal error."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    clean = random_rgb(rng, 16, 16)
    name = os.fsdecode(b"caf\xe9")
    save_image(pred / f"{name}.png", noisy(rng, clean))
    save_image(gt / f"{name}.png", clean)
    csv_report, json_report, page = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "r.html"
    result = invoke(
        "eval", pred, gt, "-m", "l1,psnr", "--csv", csv_report, "--json", json_report, "--html", page
    )
    assert result.exit_code == 0, result.output
    assert os.fsencode(pred / f"{name}.png") in csv_report.read_bytes()  # the file's own bytes
    assert json.loads(json_report.read_text())["rows"][0]["name"] == name
    assert "data:image/png;base64," in page.read_text(errors="replace")
    linked = tmp_path / f"{name}.html"  # a page whose name is not UTF-8 links its pictures' folder
    assert invoke("eval", pred, gt, "-m", "l1", "--html", linked, "--html-images", "files").exit_code == 0
    assert b'src="caf%E9_files/' in linked.read_bytes() and (tmp_path / f"{name}_files").is_dir()
    for report in (csv_report, json_report):  # and compare reads the names and files back
        compared = invoke("compare", report, report, "--html", tmp_path / "c.html", "--format", "json")
        assert compared.exit_code == 0, compared.output
        assert "cannot read file" not in (tmp_path / "c.html").read_text(errors="replace")


@pytest.mark.parametrize("decoder", ["threads", "processes"])  # processes start before the engine
def test_max_pixels_guards_against_decompression_bombs(folders, rng, decoder):
    pred, gt = folders
    for name, size in (("small", 8), ("large", 40)):
        clean = random_rgb(rng, size, size)
        save_image(pred / f"{name}.png", clean)
        save_image(gt / f"{name}.png", clean)
    guarded = ("-m", "l1", "--max-pixels", "1000", "--decoder", decoder, "--workers", "2")
    result = invoke("eval", pred, gt, *guarded, "--format", "csv")
    assert result.exit_code == 3
    rows = pd.read_csv(io.StringIO(result.stdout)).set_index("name")
    assert rows.loc["large", "error"] == (
        "pred large.png: 40x40 = 1600 pixels is over the limit of 1000 (a decompression-bomb guard; raise it with --max-pixels)"
    )
    assert rows.loc["small", "status"] == "ok"
    assert invoke("eval", pred, gt, "-m", "l1", "--max-pixels", "2000").exit_code == 0
    assert invoke("eval", pred, gt, "-m", "l1", "--max-pixels", "0").exit_code == 2


def test_16_bit_colour_png_is_guarded_too(folders, rng):
    pred, gt = folders
    image = rng.integers(0, 65535, size=(40, 40, 3), dtype=np.uint16)
    save_image(pred / "x.png", image)
    save_image(gt / "x.png", image)
    result = invoke("eval", pred, gt, "-m", "l1", "--max-pixels", "1000", "--format", "csv")
    assert "1600 pixels is over the limit of 1000" in result.stdout


def test_ctrl_c_keeps_a_partial_report_and_never_a_truncated_one(tmp_path, folders, rng, monkeypatch):
    pred, gt = folders
    for index in range(6):
        clean = random_rgb(rng, 8 + index, 8)  # six shapes: six batches
        save_image(pred / f"{index}.png", clean)
        save_image(gt / f"{index}.png", clean)
    computed = engine.compute_batch

    def interrupt_on_the_fourth(items, config, device, calls=[]):  # noqa: B006 - a call counter
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return computed(items, config, device)

    monkeypatch.setattr(engine, "compute_batch", interrupt_on_the_fourth)
    csv, report = tmp_path / "r.csv", tmp_path / "r.json"
    # One worker: with two, the fourth call to compute_batch may be for the third pair or the fourth.
    options = ("--batch-size", "1", "--workers", "1")
    result = invoke("eval", pred, gt, "-m", "l1", "--csv", csv, "--json", report, *options)
    assert result.exit_code == 130
    assert (
        result.stderr.strip()
        == f"error: interrupted after 3 of 6 pairs; partial report kept in {csv}.partial, {report}.partial"
    )
    assert not csv.exists() and not report.exists()
    assert len(pd.read_csv(f"{csv}.partial")) == 3
    assert json.loads((tmp_path / "r.json.partial").read_text())["counts"]["pairs"] == 3


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="counts shared-memory blocks in /dev/shm")
def test_a_real_ctrl_c_while_processes_decode_ahead_exits_cleanly(tmp_path, folders, rng):
    """SIGINT, as a terminal sends it to the whole process group, once the decoding processes have
    handed back pixels (the main process then imports torch or computes): exit 130 with one line,
    no traceback from the main process or a decoding process, and every shared block freed."""
    pred, gt = folders
    for index in range(48):
        clean = random_rgb(rng, 256, 256)
        save_image(pred / f"{index:02d}.png", noisy(rng, clean))
        save_image(gt / f"{index:02d}.png", clean)

    def blocks() -> set[str]:
        return {path.name for path in Path("/dev/shm").glob("psm_*")}

    before = blocks()
    command = [sys.executable, "-m", "lossctl", "eval", str(pred), str(gt), "-q", "--device", "cpu"]
    options = ["--decoder", "processes", "--workers", "2", "--csv", str(tmp_path / "r.csv")]
    process = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not blocks() - before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert process.returncode == 130, stderr
    assert stderr.startswith("error: interrupted") and len(stderr.strip().splitlines()) == 1, stderr
    assert not blocks() - before


def test_an_interrupt_while_decoding_processes_start_stops_them_cleanly(folders, rng, monkeypatch):
    """SIGINT delivered while the first decode started the process pool (0.4 s into a run): the pool
    could not be shut down ('internal error: RuntimeError: cannot join thread before it is started'),
    a half-started worker printed a traceback, and the decode in hand leaked its shared block."""
    from concurrent.futures import process

    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(4), 32, 32)
    pairs = pair_folders(pred, gt).pairs
    real_start = process._ExecutorManagerThread.start

    def interrupted_start(self):
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, as the pool starts its manager thread
        return real_start(self)

    def blocks() -> set[str]:
        return {path.name for path in Path("/dev/shm").glob("psm_*")}

    before = blocks()
    monkeypatch.setattr(process._ExecutorManagerThread, "start", interrupted_start)
    made = []
    init = decoding.DecodeAhead.__init__
    monkeypatch.setattr(
        decoding.DecodeAhead, "__init__", lambda self, *a, **k: (made.append(self), init(self, *a, **k))[1]
    )
    with pytest.raises(KeyboardInterrupt):
        decoding.DecodeAhead(pairs, False, workers=2, prefetch=4, processes=True)
    (ahead,) = made
    assert ahead._closed and len(ahead._in_flight) == 0
    ahead._decoders.pool.shutdown(wait=True)  # shut down already: a no-op that must not raise
    assert not blocks() - before


def test_interrupts_are_held_until_the_block_ends_then_delivered():
    from lossctl.signals import interrupts_deferred

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler would run here, at the next bytecode
            reached.append("end of block")
    assert reached == ["end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_names_that_differ_only_in_case_are_pointed_out(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "Photo.png", clean)
    save_image(gt / "photo.png", clean)
    result = invoke("eval", pred, gt)
    assert (
        result.exit_code == 2
        and "(1 would match if case were ignored, e.g. Photo and photo)" in result.stderr
    )
    save_image(pred / "other.png", clean)
    save_image(gt / "other.png", clean)
    rows = pd.read_csv(io.StringIO(invoke("eval", pred, gt, "-m", "l1", "--format", "csv").stdout)).set_index(
        "name"
    )
    assert (
        rows.loc["Photo", "error"]
        == "no ground truth with this name; gt has photo, which differs only in case"
    )
    assert (
        rows.loc["photo", "error"]
        == "no prediction with this name; pred has Photo, which differs only in case"
    )


def test_unreadable_files_are_error_rows(folders, rng, monkeypatch):
    pred, gt = folders
    clean = random_rgb(rng)
    for name in ("locked", "open"):
        save_image(pred / f"{name}.png", clean)
        save_image(gt / f"{name}.png", clean)
    (pred / "locked.png").chmod(0)
    if os.geteuid() == 0:  # root reads files whatever their permissions: refuse as the kernel would
        read_bytes = Path.read_bytes

        def denied(path):
            if path.name == "locked.png" and not path.stat().st_mode & 0o444:
                raise PermissionError(13, "Permission denied", str(path))
            return read_bytes(path)

        monkeypatch.setattr(Path, "read_bytes", denied)
    rows = pd.read_csv(io.StringIO(invoke("eval", pred, gt, "-m", "l1", "--format", "csv").stdout)).set_index(
        "name"
    )
    assert rows.loc["locked", "error"] == "pred locked.png: cannot read file: Permission denied"
    assert rows.loc["open", "status"] == "ok"


def test_out_of_memory_splits_the_batch_and_loses_no_pair(folders, rng, monkeypatch):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(5))
    reference = pd.read_csv(io.StringIO(invoke("eval", pred, gt, "-m", "psnr", "--format", "csv").stdout))
    computed, sizes = engine.compute_batch, []

    def small_memory(items, config, device):
        sizes.append(len(items))
        if len(items) > 2 or items[0].pair.name == "3":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        return computed(items, config, device)

    monkeypatch.setattr(engine, "compute_batch", small_memory)
    result = invoke("eval", pred, gt, "-m", "psnr", "--format", "csv")
    rows = pd.read_csv(io.StringIO(result.stdout))
    assert sizes == [5, 2, 3, 1, 2, 1, 1]  # halves until each part fits; pair 3 never does
    assert result.exit_code == 3
    assert rows.set_index("name").loc[3, "error"] == "out of memory computing this pair"
    ok = rows[rows["status"] == "ok"]
    pd.testing.assert_series_equal(ok["psnr"], reference.loc[ok.index, "psnr"])


def test_a_folder_of_every_hostile_case_reports_each_pair_exactly(tmp_path):
    pred, gt, expected = build_hostile_folders(tmp_path)
    report = tmp_path / "report.json"
    result = invoke("eval", pred, gt, "-m", "l1,psnr", "--json", report, "--format", "csv")
    assert result.exit_code == 3
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert sorted(rows.index) == sorted(expected)
    for name, (status, reason) in expected.items():
        assert rows.loc[name, "status"] == status, name
        assert rows.loc[name, "error"].startswith(reason), (name, rows.loc[name, "error"])
        assert "\n" not in rows.loc[name, "error"]
    assert json.loads(report.read_text())["counts"]["skipped_files"] == 1  # notes.txt
    assert "Traceback" not in result.output

    check = invoke("check", pred, gt, "--min", "psnr=20")
    assert check.exit_code == 3
    failing = sum(status != "ok" for status, _ in expected.values())
    assert f"FAIL: {failing} of {len(expected)} pairs failed" in check.stdout
    allowed = invoke("check", pred, gt, "--min", "psnr=20", "--allow-missing")
    assert (
        allowed.exit_code == 0
        and f"PASS: {len(expected)} pairs, 0 failed ({failing} missing or unreadable, allowed)"
        in allowed.stdout
    )


def test_decoding_in_processes_gives_the_same_report_as_threads(tmp_path):
    pred, gt, expected = build_hostile_folders(tmp_path)
    reports = {}
    for decoder in ("threads", "processes"):
        result = invoke(
            "eval", pred, gt, "-m", "l1,psnr,ssim", "--decoder", decoder, "--workers", "2", "--format", "csv"
        )
        assert result.exit_code == 3, result.output
        reports[decoder] = result.stdout
    assert reports["processes"] == reports["threads"]
    assert len(pd.read_csv(io.StringIO(reports["processes"]))) == len(expected)


def _die_on_poison(pair, with_weights):
    """A decoder that kills its worker process on the pair named 'poison' (as a decoder crash would)."""
    if pair.name == "poison":
        os._exit(1)
    return decoding._load_in_process(pair, with_weights)


def test_a_pair_that_kills_its_decoding_process_is_an_error_row_and_the_rest_is_computed(
    folders, rng, monkeypatch
):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b", "poison", "c", "d"), 16, 16)
    monkeypatch.setattr(decoding, "_load_in_process", _die_on_poison)
    result = invoke(
        "eval", pred, gt, "-m", "l1", "--decoder", "processes", "--workers", "2", "--format", "csv"
    )
    assert result.exit_code == 3, result.output
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["poison", "error"] == (
        "the decoding process died on this pair (a decoder crash or out of memory)"
    )
    assert (rows.drop(index="poison")["status"] == "ok").all() and len(rows) == 5


def _die_once(pair, with_weights):
    """A decoder whose worker is killed once (the out-of-memory killer, say), on the pair named 'b'."""
    marker = Path(pair.pred_file).parent.parent / "killed-once"
    if pair.name == "b" and not marker.exists():
        marker.write_text("")
        os._exit(1)
    return decoding._load_in_process(pair, with_weights)


def test_a_worker_killed_once_costs_one_new_pool_not_one_per_pair(folders, rng, monkeypatch):
    """Every pair in flight when the pool broke was retried alone, each in a pool of its own: one
    killed worker made a 400-pair run take 45 s instead of 3."""
    pred, gt = folders
    for index in range(12):
        clean = random_rgb(rng, 16, 16)
        save_image(pred / f"{'b' if index == 3 else index}.png", noisy(rng, clean))
        save_image(gt / f"{'b' if index == 3 else index}.png", clean)
    pools = []
    new_pool = decoding._Decoders._new_pool
    monkeypatch.setattr(
        decoding._Decoders,
        "_new_pool",
        lambda self, workers: (pools.append(workers), new_pool(self, workers))[1],
    )
    monkeypatch.setattr(decoding, "_load_in_process", _die_once)
    result = invoke(
        "eval", pred, gt, "-m", "l1", "--decoder", "processes", "--workers", "2", "--format", "csv"
    )
    assert result.exit_code == 0, result.output
    assert (pd.read_csv(io.StringIO(result.stdout))["status"] == "ok").sum() == 12
    assert pools == [2, 2]  # the first pool and the one that replaced it


def test_one_file_reached_under_two_names_is_noted(folders, rng):
    pred, gt = folders
    for name in ("a", "b", "c"):
        clean = random_rgb(rng, 16, 16)
        save_image(gt / f"{name}.png", clean)
    save_image(pred / "a.png", noisy(rng, random_rgb(rng, 16, 16)))
    (pred / "b.png").symlink_to(pred / "a.png")
    os.link(gt / "c.png", pred / "c.png")
    result = invoke("eval", pred, gt, "-m", "psnr", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["a", "notes"] == "pred is the same file as the pred of b"
    assert rows.loc["b", "notes"] == "pred is the same file as the pred of a"
    assert rows.loc["c", "notes"] == "pred and gt are the same file"
    assert rows.loc["c", "psnr"] == float("inf") and (rows["status"] == "ok").all()


def test_an_unreadable_subfolder_is_an_error_row_and_the_rest_is_computed(folders, rng, monkeypatch):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("top", "locked/inside", "open/inside"), 16, 16)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(pred / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = invoke("eval", pred, gt, "-m", "l1", "--format", "csv")
    assert result.exit_code == 3, result.output
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("name")
    assert rows.loc["locked/", "status"] == "error"
    assert rows.loc["locked/", "error"] == (
        "cannot read pred folder locked: Permission denied; its images are not in this report"
    )
    assert rows.loc["locked/inside", "status"] == "unmatched"
    assert rows.loc["top", "status"] == "ok" and rows.loc["open/inside", "status"] == "ok"
    check = invoke("check", pred, gt, "--max", "l1=1")
    assert check.exit_code == 3 and "Traceback" not in check.output


def test_a_subfolder_unreadable_on_both_sides_is_one_row_with_both_reasons(
    tmp_path, folders, rng, monkeypatch
):
    """Two rows of one name: the report lost one (its rows are keyed by name), and the shard or
    torchrun rank holding both was refused as damaged."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("top", "locked/inside"), 16, 16)
    real_scandir = os.scandir
    locked = {os.fspath(pred / "locked"), os.fspath(gt / "locked")}

    def scandir(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = invoke("eval", pred, gt, "-m", "l1", "--format", "json")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert [row["name"] for row in document["rows"]] == ["top", "locked/"]
    assert document["rows"][1]["error"] == (
        "cannot read pred folder locked: Permission denied; cannot read gt folder locked: Permission denied; "
        "its images are not in this report"
    )
    assert document["counts"]["pairs"] == 2
    assert (
        invoke("eval", pred, gt, "-m", "l1", "--shard", "0/1", "--json", tmp_path / "s.json").exit_code == 3
    )
    merged = invoke("merge", tmp_path / "s.json", "--format", "json")
    assert merged.exit_code == 3, merged.output  # was refused: "2 rows but 3 pair positions"
    assert json.loads(merged.stdout)["rows"] == document["rows"]


def _load_without_room_in_shared_memory(pair, with_weights):
    """A worker that finds no room in /dev/shm (as in a container with a small one)."""
    decoding.SHM_HEADROOM = 1 << 62
    return decoding._load_in_process(pair, with_weights)


def test_decoding_processes_send_pixels_through_the_pipe_when_shared_memory_is_full(
    folders, rng, monkeypatch
):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b", "c"), 24, 24)
    threads = invoke("eval", pred, gt, "-m", "l1,ssim", "--decoder", "threads", "--format", "csv")
    monkeypatch.setattr(decoding, "_load_in_process", _load_without_room_in_shared_memory)
    processes = invoke(
        "eval", pred, gt, "-m", "l1,ssim", "--decoder", "processes", "--workers", "2", "--format", "csv"
    )
    assert processes.exit_code == threads.exit_code == 0
    assert processes.stdout == threads.stdout


def test_a_pair_the_gpu_cannot_hold_is_computed_on_the_cpu_with_a_note(folders, rng, monkeypatch):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(gt / "x.png", clean)
    save_image(pred / "x.png", noisy(rng, clean))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    config = engine.EvalConfig(
        metrics=["l1", "psnr"], params=resolve_params(["l1", "psnr"], []), device="cpu"
    )
    item = load_pair(pair_folders(pred, gt).pairs[0])
    (result,) = engine._after_out_of_memory([item], config, torch.device("cuda"))
    assert result.status == "ok"
    assert result.notes == ["computed on the CPU: cuda ran out of memory"]
    p = np.asarray(Image.open(pred / "x.png"), dtype=np.float64) / 255
    g = np.asarray(Image.open(gt / "x.png"), dtype=np.float64) / 255
    assert result.values["l1"] == pytest.approx(np.abs(p - g).mean(), rel=1e-6)


def test_a_python_memory_error_splits_the_batch_like_any_out_of_memory(folders, rng, monkeypatch):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, range(4))
    computed = engine.compute_batch

    def small_memory(items, config, device):
        if len(items) > 1:
            raise MemoryError()  # numpy / Python allocations raise this, with no message
        return computed(items, config, device)

    monkeypatch.setattr(engine, "compute_batch", small_memory)
    result = invoke("eval", pred, gt, "-m", "l1", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(io.StringIO(result.stdout))
    assert len(rows) == 4 and (rows["status"] == "ok").all()
