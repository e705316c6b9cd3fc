"""The benchmark scripts run as written: the generator is deterministic, and bench/gpu_check.py,
which only a lent GPU machine runs for real, works end to end as a small dry run on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO

sys.path.append(str(REPO / "bench"))
from throughput import make_pairs, spread_sample  # noqa: E402


def _contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_generated_pairs_do_not_depend_on_the_number_of_processes(tmp_path):
    serial = make_pairs(tmp_path / "serial", 3, 48, workers=1)
    parallel = make_pairs(tmp_path / "parallel", 3, 48, workers=2)
    fewer = make_pairs(tmp_path / "fewer", 2, 48, workers=1)
    for side in (0, 1):
        assert _contents(serial[side]) == _contents(parallel[side])
        assert _contents(fewer[side]).items() <= _contents(serial[side]).items()
    assert _contents(serial[0]) != _contents(serial[1])  # pred is not gt


def test_the_floor_sample_is_spread_over_the_pairs():
    names = [f"{index:05d}.png" for index in range(10)]
    assert spread_sample(names, None) == names
    assert spread_sample(names, 10) == spread_sample(names, 50) == names
    assert spread_sample(names, 5) == names[::2]
    assert spread_sample(names, 3) == ["00000.png", "00004.png", "00008.png"]
    assert spread_sample(names, 1) == names[:1]


def test_gpu_check_runs_end_to_end_as_a_dry_run_on_the_cpu():
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu"]
    sizes = ["--pairs", "4", "--size", "176", "--peer-pairs", "2", "--large-pairs", "2", "--large-size", "64"]
    completed = subprocess.run([*command, *sizes, "--floor-sample", "2"], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    for title in ("agreement", "dtype matrix", "pytest -m cuda", "bench/breakdown.py", "bench/bench.py", "bench/throughput.py"):
        assert title in output
    assert "failed" not in output and "FAILS" not in output and "| NO |" not in output
    assert "| lossctl eval (whole process) | all (default) | 4 |" in output
    assert "| pytorch-msssim | " in output  # the peers agree on numbers, not just run
    assert "| 2 x 64x64 RGB PNG | cpu |" in output
    assert "| 4 x 768x768, matlab preset: 4 pairs | all | 0 |" in output  # the waits section runs


def test_no_bench_script_shadows_a_standard_library_module():
    """``python bench/X.py`` puts bench/ first on sys.path: a bench/profile.py was imported by cProfile
    (through torch._dynamo, which torchvision imports) in place of the standard library's."""
    shadowing = {path.stem for path in (REPO / "bench").glob("*.py")} & sys.stdlib_module_names
    assert not shadowing
