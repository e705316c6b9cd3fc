"""``torchrun -m lossctl eval``: 2 ranks with gloo on the CPU give the single run's report; a
failed rank is named and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossctl.cli import app
from lossctl.distributed import Launch, from_environment, rank_device, timeout
from lossctl.errors import LossctlError
from lossctl.report import sidecar_path

from .conftest import REPO, SAMPLE_GT, SAMPLE_PRED

runner = CliRunner()
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(
    *args, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    command = [*TORCHRUN, *(str(arg) for arg in args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=120)


def lossctl_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_ranks_write_the_single_run_report(tmp_path):
    """Bit for bit: one pair per batch and one thread per process (torchrun's OMP_NUM_THREADS=1),
    since float32 sums round differently with other batches or thread counts."""
    options = ["--batch-size", "1", "--quiet", "--format", "csv"]
    single_csv, single_json = tmp_path / "single.csv", tmp_path / "single.json"
    single = subprocess.run(
        [sys.executable, "-m", "lossctl", "eval", SAMPLE_PRED, SAMPLE_GT, "--csv", single_csv, "--json", single_json, *options],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
    )  # fmt: skip
    ranks_csv, ranks_json = tmp_path / "ranks.csv", tmp_path / "ranks.json"
    ran = torchrun(
        "-m", "lossctl", "eval", SAMPLE_PRED, SAMPLE_GT, "--csv", ranks_csv, "--json", ranks_json, *options
    )
    assert ran.returncode == 0, ran.stderr
    assert ranks_json.read_text() == single_json.read_text()
    assert ranks_csv.read_text() == single_csv.read_text()
    assert sidecar_path(ranks_csv).read_text() == sidecar_path(single_csv).read_text()
    assert ran.stdout == single.stdout  # rank 0 alone prints, and only the report
    assert json.loads(ranks_json.read_text())["device"] == "cpu"


def test_a_rank_that_raises_is_named_by_rank_0_and_nothing_is_written(tmp_path):
    report = tmp_path / "report.json"
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "raise", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", report, "-q"
    )
    assert ran.returncode != 0
    assert lossctl_lines(ran.stderr) == ["error: rank 1 of 2 failed: RuntimeError: disk on fire"]
    assert not report.exists()


def test_a_rank_that_dies_stops_the_job_and_torchrun_names_it(tmp_path):
    report = tmp_path / "report.json"
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "die", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", report, "-q"
    )
    assert ran.returncode != 0
    assert "rank      : 1 (local_rank: 1)" in ran.stderr and "exitcode  : 7" in ran.stderr
    assert not report.exists()


def test_a_rank_that_hangs_is_named_after_the_timeout(tmp_path):
    report = tmp_path / "report.json"
    started = time.monotonic()
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "hang", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", report, "-q",
        env={"LOSSCTL_TIMEOUT": "2"},
    )  # fmt: skip
    assert ran.returncode != 0 and time.monotonic() - started < 60
    (line,) = lossctl_lines(ran.stderr)
    assert line.startswith("error: rank 1 of 2 did not finish within 2 s of rank 0")
    assert not report.exists()


def test_a_rank_that_hangs_before_joining_is_a_one_line_error(tmp_path):
    """Rank 0's wait for the process group ended in 'internal error: DistStoreError'."""
    report = tmp_path / "report.json"
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "hang_before_joining", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", report,
        "-q", env={"LOSSCTL_TIMEOUT": "2"},
    )  # fmt: skip
    assert ran.returncode != 0
    (line,) = lossctl_lines(ran.stderr)
    assert line.startswith("error: not all 2 ranks joined within 2 s"), ran.stderr
    assert not report.exists()


def test_rank_0_finishing_its_share_after_the_timeout_is_no_failure(tmp_path):
    """The other ranks timed out waiting for rank 0 at the end, and torchrun blamed them."""
    report = tmp_path / "report.json"
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "slow_rank_0", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", report, "-q",
        env={"LOSSCTL_TIMEOUT": "2"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert len(json.loads(report.read_text())["rows"]) == 7


def test_ranks_other_than_0_do_not_check_the_outputs_only_rank_0_writes(tmp_path):
    """On another machine rank 1 found no ./out, exited 2 without a word, and stopped the job."""
    (tmp_path / "out").mkdir()
    ran = torchrun(
        REPO / "tests" / "rank_fails.py", "elsewhere", "eval", SAMPLE_PRED, SAMPLE_GT, "--json", "out/report.json",
        "-q", cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "out" / "report.json").is_file()


def test_an_error_of_a_rank_outside_its_share_is_printed_by_that_rank(tmp_path):
    """Rank 0 reports the errors of every rank's share; one before it (here a bad setting) was lost."""
    ran = torchrun(REPO / "tests" / "rank_fails.py", "refuse", "eval", SAMPLE_PRED, SAMPLE_GT, "-q")
    assert ran.returncode != 0
    assert "error: rank 1 of 2: LOSSCTL_TIMEOUT must be a number of seconds; got 'soon'" in lossctl_lines(ran.stderr)


def test_the_launch_comes_from_torchruns_environment():
    assert from_environment({}) is None
    assert from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: a plain run
    launch = from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert launch == Launch(3, 8, 1) and str(launch.shard) == "3/8"
    with pytest.raises(LossctlError, match="must be integers"):
        from_environment({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(LossctlError, match="WORLD_SIZE='two'"):
        from_environment({"RANK": "0", "WORLD_SIZE": "two"})


def test_each_rank_computes_on_its_own_gpu_unless_told_otherwise(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rank_device("auto", 3) == "cuda:3" and rank_device("cuda", 1) == "cuda:1"
    assert rank_device("cpu", 3) == "cpu" and rank_device("cuda:0", 3) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", 3) == "auto"


def test_the_timeout_is_read_from_lossctl_timeout(monkeypatch):
    monkeypatch.setenv("LOSSCTL_TIMEOUT", "90")
    assert timeout().total_seconds() == 90
    monkeypatch.setenv("LOSSCTL_TIMEOUT", "soon")
    with pytest.raises(LossctlError, match="LOSSCTL_TIMEOUT must be a number of seconds"):
        timeout()


def test_shard_and_torchrun_do_not_combine(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(
        app, ["eval", str(SAMPLE_PRED), str(SAMPLE_GT), "--shard", "0/2", "--json", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 2 and "under torchrun the ranks already share the pairs" in result.stderr
