"""lossctl check: thresholds, config files, verdicts, exit codes, JUnit and GitHub output."""

from __future__ import annotations

import json
import math
import os
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lossctl.check import (
    CheckConfig,
    Limit,
    Rule,
    check_frame,
    failure_rows,
    glob_regex,
    limits_for,
    load_config,
    merge_command_line,
    to_junit,
)
from lossctl.cli import app

from .conftest import (
    SAMPLE_GT,
    SAMPLE_PRED,
    frame_of,
    noisy,
    noisy_pairs,
    one_line_error,
    random_rgb,
    save_image,
)

runner = CliRunner()
SAMPLES = [str(SAMPLE_PRED), str(SAMPLE_GT)]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def sample_values(metric: str) -> dict[str, float]:
    document = json.loads(invoke("eval", *SAMPLES, "-m", metric, "--format", "json").stdout)
    return {row["name"]: row[metric] for row in document["rows"]}


@pytest.fixture
def psnr_of_samples():
    return sample_values("psnr")


def test_passing_check_prints_the_verdict_and_exits_0(psnr_of_samples):
    result = invoke("check", *SAMPLES, "--min", "psnr=15", "--min", "ssim=0.25")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("PASS: 7 pairs, 0 failed")


def test_a_value_exactly_at_the_limit_passes(psnr_of_samples):
    lowest = min(psnr_of_samples.values())
    assert invoke("check", *SAMPLES, "--min", f"psnr={lowest!r}").exit_code == 0
    assert (
        invoke("check", *SAMPLES, "--min", f"psnr={float(np.nextafter(lowest, math.inf))!r}").exit_code == 1
    )
    highest_l1 = max(sample_values("l1").values())
    assert invoke("check", *SAMPLES, "--max", f"l1={highest_l1!r}").exit_code == 0


def test_failing_pairs_are_listed_with_value_limit_and_excess(psnr_of_samples):
    result = invoke("check", *SAMPLES, "--min", "psnr=27")
    assert result.exit_code == 1
    failing = sorted(name for name, value in psnr_of_samples.items() if value < 27)
    assert f"FAIL: {len(failing)} of 7 pairs failed" in result.stdout
    for name in failing:
        assert name in result.stdout
    coins = psnr_of_samples["mask/coins_mask"]
    assert f"{coins:.6g}" in result.stdout and f"{27 - coins:.6g}" in result.stdout
    assert "blur" not in result.stdout  # 28.03 dB passes: only failing pairs are shown


def test_only_thresholded_metrics_are_computed_unless_metrics_adds_more(tmp_path):
    report = tmp_path / "r.csv"
    invoke("check", *SAMPLES, "--min", "psnr=10", "--csv", report)
    assert list(pd.read_csv(report).columns)[10:] == ["psnr"]
    invoke("check", *SAMPLES, "--min", "psnr=10", "--metrics", "l1,ssim", "--csv", report)
    assert list(pd.read_csv(report).columns)[10:] == ["l1", "psnr", "ssim"]


def test_mean_mode_applies_thresholds_to_the_mean(psnr_of_samples):
    mean = float(np.mean(list(psnr_of_samples.values())))
    assert invoke("check", *SAMPLES, "--min", f"psnr={mean - 0.01}", "--mean").exit_code == 0
    result = invoke("check", *SAMPLES, "--min", f"psnr={mean + 0.01}", "--mean")
    assert result.exit_code == 1 and "mean (all pairs)" in result.stdout


def test_nan_values_fail_and_never_pass_silently(folders, rng):
    pred, gt = folders
    save_image(pred / "tiny.png", random_rgb(rng, 8, 8))  # too small for SSIM's window: NaN
    save_image(gt / "tiny.png", random_rgb(rng, 8, 8))
    result = invoke("check", pred, gt, "--min", "ssim=0")
    assert result.exit_code == 1 and "NaN" in result.stdout
    mean = invoke("check", pred, gt, "--min", "ssim=0", "--mean", "--format", "markdown")
    assert mean.exit_code == 1 and r"| mean \(all pairs\) | ssim | NaN \(NaN in tiny\) |" in mean.stdout, (
        mean.stdout
    )


def test_missing_and_unreadable_pairs_exit_3_unless_allowed(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "good.png", clean)
    save_image(gt / "good.png", clean)
    save_image(pred / "orphan.png", clean)
    (pred / "broken.png").write_bytes(b"junk")
    save_image(gt / "broken.png", clean)
    result = invoke("check", pred, gt, "--min", "psnr=20")
    assert result.exit_code == 3 and "FAIL: 2 of 3 pairs failed" in result.stdout
    assert "orphan: unmatched: no ground truth with this name (fails the check)" in result.stdout
    allowed = invoke("check", pred, gt, "--min", "psnr=20", "--allow-missing")
    assert (
        allowed.exit_code == 0
        and "PASS: 3 pairs, 0 failed (2 missing or unreadable, allowed)" in allowed.stdout
    )


def test_junit_xml_parses_with_the_right_counts(tmp_path, folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    for name, spread in (("good", 1), ("bad", 60)):
        save_image(pred / f"{name}.png", noisy(rng, clean, spread))
        save_image(gt / f"{name}.png", clean)
    save_image(pred / "orphan.png", clean)
    junit = tmp_path / "results.xml"
    assert invoke("check", pred, gt, "--min", "psnr=30", "--junit", junit).exit_code == 3
    suite = ElementTree.parse(junit).getroot()
    assert suite.tag == "testsuite"
    assert {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped")} == {
        "tests": "3",
        "failures": "1",
        "errors": "1",
        "skipped": "0",
    }
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert "psnr" in cases["bad"].find("failure").get("message")
    assert cases["good"].find("failure") is None
    assert cases["orphan"].find("error").get("type") == "unmatched"
    invoke("check", pred, gt, "--min", "psnr=30", "--junit", junit, "--allow-missing")
    assert ElementTree.parse(junit).getroot().get("skipped") == "1"


def test_github_annotations_name_the_failing_files(folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "a,b.png", noisy(rng, clean, 60))
    save_image(gt / "a,b.png", clean)
    result = invoke("check", pred, gt, "--min", "psnr=30", "--github")
    line = next(line for line in result.stdout.splitlines() if line.startswith("::error"))
    assert line.startswith(f"::error file={pred}/a%2Cb.png,title=lossctl check::a,b: psnr = ")
    assert "limit psnr >= 30" in line


def test_markdown_format_for_pull_request_comments():
    text = invoke("check", *SAMPLES, "--min", "psnr=27", "--format", "markdown").stdout
    assert text.startswith("❌ **FAIL: ") and "| name | metric | value | limit | by |" in text


def write(path, text):
    path.write_text(text)
    return path


def test_config_file_thresholds_and_command_line_override(tmp_path, monkeypatch, psnr_of_samples):
    config = write(tmp_path / "lossctl.toml", "[min]\npsnr = 27\n")
    assert invoke("check", *SAMPLES, "--config", config).exit_code == 1
    assert invoke("check", *SAMPLES, "--config", config, "--min", "psnr=10").exit_code == 0
    monkeypatch.chdir(tmp_path)  # found from the working folder without --config
    assert invoke("check", *SAMPLES).exit_code == 1
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # and from a folder below it
    assert invoke("check", *SAMPLES).exit_code == 1


def test_pyproject_tool_table_is_read(tmp_path, monkeypatch):
    write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.lossctl]\nmode = "mean"\n\n[tool.lossctl.min]\npsnr = 20\n',
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("check", *SAMPLES)
    assert result.exit_code == 0 and "PASS" in result.stdout


def test_per_path_rules_tighten_the_limits(tmp_path, psnr_of_samples):
    config = write(
        tmp_path / "lossctl.toml",
        '[min]\npsnr = 15\n\n[[rules]]\npaths = ["gray/**", "hdr16/*"]\nmin = { psnr = 40 }\n',
    )
    result = invoke("check", *SAMPLES, "--config", config)
    assert result.exit_code == 1 and "FAIL: 1 of 7 pairs failed" in result.stdout
    assert "gray/camera_denoise" in result.stdout  # 29 dB < 40; hdr16/rgb16 has 46.8 dB


def test_params_from_the_config_reach_the_metrics(tmp_path):
    report = tmp_path / "r.json"
    config = write(tmp_path / "lossctl.toml", '[max]\ncharbonnier = 1\nparams = ["charbonnier.eps=0.5"]\n')
    result = invoke("check", *SAMPLES, "--config", config, "--json", report)
    assert (
        result.exit_code == 2 and "unknown metric 'params'" in result.stderr
    )  # params under [max] is a typo
    write(config, 'params = ["charbonnier.eps=0.5"]\n[max]\ncharbonnier = 1\n')
    assert invoke("check", *SAMPLES, "--config", config, "--json", report).exit_code == 0
    assert json.loads(report.read_text())["params"]["charbonnier"] == {"eps": 0.5}
    # The command line's --param overrides the file's, as its --min/--max do.
    overridden = invoke("check", *SAMPLES, "--config", config, "--json", report, "-p", "charbonnier.eps=0.25")
    assert overridden.exit_code == 0, overridden.output
    assert json.loads(report.read_text())["params"]["charbonnier"] == {"eps": 0.25}


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[min]\npsnrr = 30\n", "unknown metric 'psnrr' in min thresholds"),
        ("minimum = 3\n", "unknown key 'minimum'; allowed keys: min, max, mode"),
        ('mode = "median"\n', "mode must be 'each' or 'mean'"),
        ('[min]\npsnr = "high"\n', "threshold min psnr must be a number"),
        ("[[rules]]\nmin = { psnr = 3 }\n", "rules[0].paths must name at least one glob"),
        ('[[rules]]\npaths = "a/*"\nlimit = 3\n', "unknown key 'rules[0].limit'"),
        ("[min\npsnr = 3\n", "is not valid TOML"),
        (
            'metrics = ["ssim"]\nparams = ["ssim.window=0"]\n',
            "params entry ssim.window=0: ssim.window must be",
        ),
        (
            'params = ["charbonnier.eps=1e-4"]\n',
            "params entry charbonnier.eps=1e-4: charbonnier is not among",
        ),
        ('params = ["psnr.range=2"]\n', "params entry psnr.range=2: psnr has no parameter 'range'"),
    ],
)
def test_config_mistakes_exit_2_naming_the_key_and_file(tmp_path, content, fragment):
    config = write(tmp_path / "lossctl.toml", content)
    result = invoke("check", *SAMPLES, "--config", config, "--min", "psnr=1")
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and str(config) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_pyproject_given_without_a_lossctl_table_says_so(tmp_path):
    """Its top level was read as thresholds: 'unknown key project'."""
    config = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    result = invoke("check", *SAMPLES, "--config", config, "--min", "psnr=1")
    assert (
        result.exit_code == 2
        and f"error: {config} has no [tool.lossctl] table of thresholds" in result.stderr
    )


def test_config_files_that_are_not_toml_tables_exit_2_not_as_an_internal_error(tmp_path, monkeypatch):
    """Exit 1 is check's 'thresholds failed': an internal error must not look like one."""
    latin = tmp_path / "latin" / "lossctl.toml"
    latin.parent.mkdir()
    latin.write_bytes("[min]\n# caf\u00e9\npsnr = 3\n".encode("latin-1"))
    result = invoke("check", *SAMPLES, "--config", latin, "--min", "psnr=1")
    assert result.exit_code == 2 and "is not valid TOML: it is not UTF-8 text" in result.stderr
    (tmp_path / "tool").mkdir()
    write(tmp_path / "tool" / "pyproject.toml", "tool = 1\n")  # found while looking for [tool.lossctl]
    monkeypatch.chdir(tmp_path / "tool")
    assert invoke("check", *SAMPLES, "--min", "psnr=1").exit_code == 0
    scalar = write(tmp_path / "tool" / "scalar.toml", "[tool]\nlossctl = 3\n")
    result = invoke("check", *SAMPLES, "--config", scalar, "--min", "psnr=1")
    assert result.exit_code == 2 and "tool.lossctl must be a table of thresholds" in result.stderr


def test_mean_mode_junit_lists_the_pairs_that_were_not_computed(tmp_path, folders, rng):
    """The run exits 3; a JUnit file of one passing 'mean' case showed CI green."""
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "good.png", noisy(rng, clean, 1))
    save_image(gt / "good.png", clean)
    save_image(pred / "orphan.png", clean)
    junit = tmp_path / "results.xml"
    assert invoke("check", pred, gt, "--min", "psnr=20", "--mean", "--junit", junit).exit_code == 3
    suite = ElementTree.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["orphan"].find("error").get("type") == "unmatched" and cases["mean"].find("failure") is None


def test_mean_mode_passes_a_rule_that_matches_no_pair_as_each_mode_does(tmp_path):
    config = write(tmp_path / "lossctl.toml", '[[rules]]\npaths = ["portraits/**"]\nmin = { psnr = 25 }\n')
    for mode in ("--each", "--mean"):
        result = invoke("check", *SAMPLES, "--config", config, mode)
        assert result.exit_code == 0, (mode, result.output)


def test_pyproject_key_names_carry_the_tool_prefix(tmp_path):
    config = write(tmp_path / "pyproject.toml", "[tool.lossctl]\nthreshold = 1\n")
    result = invoke("check", *SAMPLES, "--config", config)
    assert result.exit_code == 2 and "unknown key 'tool.lossctl.threshold'" in result.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "no thresholds given"),
        (["--min", "psnr"], "--min must look like METRIC=VALUE"),
        (["--max", "nope=1"], "unknown metric 'nope'"),
        (["--min", "psnr=abc"], "threshold min psnr must be a number"),
        (["--min", "psnr=3", "--config", "/no/such.toml"], "config file not found"),
        (["--min", "psnr=3", "--junit", "/no/such/dir/x.xml"], "does not exist"),
    ],
)
def test_usage_errors_exit_2(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config file above
    one_line_error(invoke("check", *SAMPLES, *args), 2, fragment)


def test_glob_rules():
    assert glob_regex("faces/**").fullmatch("faces/a/b")
    assert glob_regex("**/x").fullmatch("x") and glob_regex("**/x").fullmatch("a/b/x")
    assert not glob_regex("faces/*").fullmatch("faces/a/b")
    assert glob_regex("img_??").fullmatch("img_01") and not glob_regex("img_??").fullmatch("img_1/")
    rules = [Rule((Limit("psnr", "min", 30),)), Rule((Limit("psnr", "min", 35),), ("faces/**",))]
    assert limits_for("faces/x", rules) == [Limit("psnr", "min", 35)]
    assert limits_for("cars/x", rules) == [Limit("psnr", "min", 30)]


def test_infinite_psnr_passes_a_minimum():
    frame = pd.DataFrame(
        [{"name": "same", "pred": "p", "gt": "g", "status": "ok", "error": "", "psnr": math.inf}]
    )
    verdict = check_frame(frame, CheckConfig((Rule((Limit("psnr", "min", 60),)),)))
    assert verdict.exit_code == 0
    mean = check_frame(frame, CheckConfig((Rule((Limit("psnr", "min", 60),)),), mode="mean"))
    assert mean.exit_code == 0


def test_each_overrides_a_config_in_mean_mode_and_param_reaches_the_metric(tmp_path, psnr_of_samples):
    config = write(tmp_path / "lossctl.toml", 'mode = "mean"\n[min]\npsnr = 20\n')
    assert invoke("check", *SAMPLES, "--config", config).exit_code == 0  # the mean is 29 dB
    assert invoke("check", *SAMPLES, "--config", config, "--each").exit_code == 1  # coins_mask: 15.8 dB
    report = tmp_path / "r.json"
    invoke("check", *SAMPLES, "--max", "charbonnier=1", "-p", "charbonnier.eps=0.25", "--json", report)
    assert json.loads(report.read_text())["params"]["charbonnier"] == {"eps": 0.25}


def test_help_names_the_config_table():
    """The epilogue is rich markup: an unescaped [tool.lossctl] was taken for a tag and vanished."""
    result = invoke("check", "--help")
    assert result.exit_code == 0 and "[tool.lossctl] in pyproject.toml" in " ".join(result.stdout.split())


def test_the_same_folder_as_pred_and_gt_is_refused(tmp_path):
    """Every pair identical: PSNR inf, SSIM 1, a green check of nothing (a CI variable's typo)."""
    (tmp_path / "link").symlink_to(SAMPLE_GT, target_is_directory=True)
    for gt in (SAMPLE_GT, tmp_path / "link"):
        result = invoke("check", SAMPLE_GT, gt, "--min", "psnr=30")
        assert result.exit_code == 2 and "are the same folder" in result.stderr, result.output


def test_a_rule_whose_paths_match_no_pair_is_pointed_out(tmp_path):
    """A typo in a rule's glob made its thresholds check nothing, and the gate passed quietly."""
    config = write(
        tmp_path / "lossctl.toml", '[min]\npsnr = 1\n[[rules]]\npaths = "blurr*"\nmin = { psnr = 99 }\n'
    )
    result = invoke("check", *SAMPLES, "--config", config)
    assert result.exit_code == 0, result.output
    assert "note: rule paths blurr* match no pair, so its thresholds checked nothing" in result.stdout
    markdown = invoke("check", *SAMPLES, "--config", config, "--format", "markdown")
    assert "- note: rule paths blurr\\* match no pair" in markdown.stdout


def test_mean_mode_counts_the_computed_pairs(folders, rng):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ("a", "b"))
    save_image(gt / "lonely.png", random_rgb(rng))
    result = invoke("check", pred, gt, "--mean", "--min", "psnr=99", "--allow-missing")
    assert result.exit_code == 1 and "FAIL: 1 mean threshold(s) failed over 2 computed pairs" in result.stdout


def test_a_config_can_come_through_a_pipe(tmp_path):
    """--config <(...) gave 'config file not found: /dev/fd/63'."""
    read, write_end = os.pipe()
    os.write(write_end, b"[min]\npsnr = 1\n")
    os.close(write_end)
    try:
        result = invoke("check", *SAMPLES, "--config", f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert result.exit_code == 0, result.output


def minimum(metric, value, *paths) -> Rule:
    return Rule((Limit(metric, "min", value),), paths)


def test_a_command_line_limit_replaces_the_files_in_mean_mode_too():
    """In --each mode the later of two limits decides anyway; in mean mode both were kept, so a
    command-line --min psnr=10 could not loosen a file's psnr = 40."""
    merged = merge_command_line(
        CheckConfig((minimum("psnr", 40.0),), mode="mean"), [Limit("psnr", "min", 10.0)]
    )
    assert merged.rules[0].limits == (Limit("psnr", "min", 10.0),)
    assert check_frame(frame_of(["a", "b"], psnr=[20, 30]), merged).exit_code == 0  # mean 25 >= 10


def test_one_nan_among_the_pairs_fails_the_mean():
    """pandas' mean skips NaN: one undefined value must fail --mean, not vanish from it."""
    verdict = check_frame(
        frame_of(["a", "b"], ssim=[0.9, math.nan]), CheckConfig((minimum("ssim", 0.5),), mode="mean")
    )
    assert verdict.exit_code == 1
    (failure,) = verdict.failures
    assert math.isnan(failure.value) and failure.detail == "NaN in b"


def test_infinities_count_against_the_mean_by_the_metrics_direction():
    """An identical pair (PSNR inf) must not lift the mean over every minimum; a ce of inf (a
    certain wrong class) must not be dropped from a maximum's mean."""
    psnr = check_frame(
        frame_of(["same", "bad"], psnr=[math.inf, 20]), CheckConfig((minimum("psnr", 30.0),), mode="mean")
    )
    assert psnr.exit_code == 1 and psnr.failures[0].value == 20.0
    ce_limit = CheckConfig((Rule((Limit("ce", "max", 1.0),)),), mode="mean")
    ce = check_frame(frame_of(["a", "b"], ce=[math.inf, 0.1]), ce_limit)
    assert ce.exit_code == 1 and ce.failures[0].value == math.inf


def test_mean_mode_junit_is_one_testcase():
    frame = frame_of(["a", "b", "c"], psnr=[40, 41, 42])
    verdict = check_frame(frame, CheckConfig((minimum("psnr", 30.0),), mode="mean"))
    suite = ElementTree.fromstring(to_junit(verdict, frame).split("\n", 1)[1])
    assert suite.get("tests") == "1" and len(list(suite.iter("testcase"))) == 1


def test_the_junit_message_names_every_failed_limit_of_a_pair():
    frame = frame_of(["a"], psnr=[20], l1=[0.5])
    config = CheckConfig((Rule((Limit("psnr", "min", 30.0), Limit("l1", "max", 0.1))),))
    suite = ElementTree.fromstring(to_junit(check_frame(frame, config), frame).split("\n", 1)[1])
    assert (
        suite.find("testcase/failure").get("message")
        == "psnr = 20, limit psnr >= 30; l1 = 0.5, limit l1 <= 0.1"
    )


def test_a_rule_matching_only_a_pair_that_failed_to_compute_is_not_called_unmatched():
    frame = frame_of(["faces/a", "cars/b"], status=["error", "ok"], psnr=[math.nan, 40])
    config = CheckConfig((minimum("psnr", 1.0), minimum("psnr", 30.0, "faces/**")))
    assert check_frame(frame, config).unmatched_rules == []


def test_rule_paths_match_whole_names_not_prefixes():
    """A loosening rule for "easy" must not cover easy_v2 (a prefix match let it pass)."""
    assert not minimum("psnr", 40.0, "faces/*").matches("faces/a/b")
    config = CheckConfig((minimum("psnr", 30.0), minimum("psnr", 10.0, "easy")))
    verdict = check_frame(frame_of(["easy", "easy_v2"], psnr=[15, 15]), config)
    assert verdict.exit_code == 1 and verdict.failed_pairs == {"easy_v2"}


def test_a_config_file_does_not_allow_missing_pairs_unless_it_says_so(tmp_path, folders, rng):
    pred, gt = folders
    clean = random_rgb(rng)
    save_image(pred / "good.png", clean)
    save_image(gt / "good.png", clean)
    save_image(pred / "orphan.png", clean)
    config = write(tmp_path / "lossctl.toml", "[min]\npsnr = 1\n")
    assert load_config(config).allow_missing is False
    assert invoke("check", pred, gt, "--config", config).exit_code == 3


def test_failures_are_listed_worst_first_with_a_positive_excess():
    verdict = check_frame(frame_of(["a", "b"], psnr=[25, 10]), CheckConfig((minimum("psnr", 27.0),)))
    assert failure_rows(verdict) == [["b", "psnr", "10", ">= 27", "17"], ["a", "psnr", "25", ">= 27", "2"]]
