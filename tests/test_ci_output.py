"""CI-facing output, exactly: GitHub workflow commands, JUnit XML, Markdown, and the report writers.

Every expected string here is written out by hand from the formats' rules (GitHub's escaping of
workflow commands, JUnit's counts, GitHub-flavoured Markdown's escapes), not from lossctl's code.
"""

from __future__ import annotations

import json
import math
import os
from xml.etree import ElementTree

import pandas as pd
from typer.testing import CliRunner

from lossctl.check import (
    CheckConfig,
    Failure,
    Limit,
    Rule,
    Verdict,
    check_frame,
    check_markdown,
    failure_rows,
    github_annotations,
    to_junit,
)
from lossctl.cli import app
from lossctl.report import ReportInfo, format_precise, format_value, summarize, to_csv, to_json, to_markdown
from lossctl.safe_text import printable, xml_safe

from .conftest import frame_of, noisy, noisy_pairs, random_rgb, save_image

runner = CliRunner()

PSNR_30 = Limit("psnr", "min", 30.0)
L1_01 = Limit("l1", "max", 0.1)


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def junit_suite(verdict: Verdict, frame: pd.DataFrame) -> ElementTree.Element:
    text = to_junit(verdict, frame)
    declaration, body = text.split("\n", 1)
    assert declaration.startswith("<?xml ") and body.endswith("</testsuite>\n")
    return ElementTree.fromstring(body)


def counts(suite: ElementTree.Element) -> dict[str, str]:
    return {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped")}


# --- GitHub Actions workflow commands ------------------------------------------------------------


def test_github_annotations_escape_data_and_properties_by_githubs_rules():
    """Data: % -> %25 (first, so that no escape is escaped again), CR -> %0D, LF -> %0A. Properties
    (file=, title=) also : -> %3A and , -> %2C. A raw newline would end the command mid-message, a
    raw ',' or ':' in file= would cut the path short. file= is the path itself, for GitHub to link;
    the message shows a name as every line for people does: one line, control characters as
    escapes (so its CR LF are the text \\r\\n, not GitHub's %0D%0A)."""
    verdict = Verdict(
        pairs=2,
        failures=[Failure("100%\r\nx", PSNR_30, 20.0, file="p/a:b,c%d\r\ne.png")],
        missing=[("o:1", "unmatched", "no ground truth, 50%", "p/o:1,%.png")],
    )
    assert github_annotations(verdict) == [
        "::error file=p/a%3Ab%2Cc%25d%0D%0Ae.png,title=lossctl check::100%25\\r\\nx: psnr = 20, limit psnr >= 30",
        "::error file=p/o%3A1%2C%25.png,title=lossctl check::o:1: unmatched: no ground truth, 50%25",
    ]


def test_github_annotations_escape_percent_before_the_escapes_it_introduces():
    """A literal '%0A' in a name must arrive as the text '%0A', not as a line break: '%' first."""
    verdict = Verdict(pairs=1, failures=[Failure("%0A\n", PSNR_30, 20.0, file="%2C,%0D\r")])
    assert github_annotations(verdict) == [
        "::error file=%252C%2C%250D%0D,title=lossctl check::%250A\\n: psnr = 20, limit psnr >= 30"
    ]


def test_github_annotations_one_per_failing_pair_and_per_missing_pair_unless_allowed():
    failures = [Failure("a", PSNR_30, 20.0, "p/a.png"), Failure("a", L1_01, 0.5, "p/a.png")]
    missing = [("b", "error", "size mismatch", "p/b.png"), ("c", "unmatched", "no prediction", "g/c.png")]
    verdict = Verdict(pairs=4, failures=failures, missing=missing)
    assert github_annotations(verdict) == [
        "::error file=p/a.png,title=lossctl check::a: psnr = 20, limit psnr >= 30; l1 = 0.5, limit l1 <= 0.1",
        "::error file=p/b.png,title=lossctl check::b: error: size mismatch",
        "::error file=g/c.png,title=lossctl check::c: unmatched: no prediction",
    ]
    allowed = Verdict(pairs=4, failures=failures, missing=missing, allow_missing=True)
    assert github_annotations(allowed) == [
        "::error file=p/a.png,title=lossctl check::a: psnr = 20, limit psnr >= 30; l1 = 0.5, limit l1 <= 0.1"
    ]


def test_github_annotations_from_the_command_line_escape_a_hostile_file_name(folders, rng):
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["50%:a,b"])
    clean = random_rgb(rng)
    save_image(pred / "x:y.png", clean)  # no ground truth: unmatched, fails the check
    result = invoke("check", pred, gt, "--max", "l1=0", "--github")
    assert result.exit_code == 3, result.output
    escaped_pred = str(pred).replace("%", "%25").replace(":", "%3A").replace(",", "%2C")
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert len(annotations) == 2 and annotations[1] == (
        f"::error file={escaped_pred}/x%3Ay.png,title=lossctl check::x:y: unmatched: no ground truth with this name"
    )
    assert annotations[0].startswith(
        f"::error file={escaped_pred}/50%25%3Aa%2Cb.png,title=lossctl check::50%25:a,b: l1 = "
    )
    assert annotations[0].endswith(", limit l1 <= 0")


def test_github_annotation_of_a_mean_threshold_has_no_file_and_keeps_its_reason():
    verdict = Verdict(
        pairs=2,
        failures=[Failure("mean (all pairs)", Limit("ssim", "min", 0.5), math.nan, detail="NaN in b")],
        mode="mean",
        computed=2,
    )
    assert github_annotations(verdict) == [
        "::error title=lossctl check::mean (all pairs): ssim = NaN, limit ssim >= 0.5 (NaN in b)"
    ]


def test_printable_escapes_controls_and_workflow_command_markers_and_nothing_else():
    assert printable("plain name/é 😀 a:b #[x] ##") == "plain name/é 😀 a:b #[x] ##"
    assert printable("a\tb\nc\rd\x00e\x1b[31mf\x7fg\x85h\x9bi") == (
        "a\\tb\\nc\\rd\\x00e\\x1b[31mf\\x7fg\\x85h\\x9bi"
    )
    # A line: only a '::' that starts it (after spaces) is read as a command, so only that one is
    # broken, and a C++ error's 'c10::Error' stays as it is.
    assert printable("::stop-commands::x") == ":\\x3astop-commands::x"
    assert printable(" \u3000::x") == " \u3000:\\x3ax"
    assert printable("c10::Error: x") == "c10::Error: x"
    assert printable(":::") == ":\\x3a:"
    # A table cell may be folded into a new line at any character: every '::' is broken.
    assert printable("::stop-commands::x", cell=True) == ":\\x3astop-commands:\\x3ax"
    assert printable(":::", cell=True) == ":\\x3a:" and printable("::::", cell=True) == ":\\x3a:\\x3a"
    assert printable("a##[error]b") == printable("a##[error]b", cell=True) == "a##\\x5berror]b"
    # Bytes that are not UTF-8 stay as they are: the terminal shows them as the report files hold them.
    assert printable(os.fsdecode(b"caf\xe9")) == os.fsdecode(b"caf\xe9")


def test_xml_safe_escapes_only_what_xml_cannot_hold():
    assert xml_safe("a\tb\nc\rd <&> \x7f\x85 é") == "a\tb\nc\rd <&> \x7f\x85 é"
    assert xml_safe("a\x00b\x1bc\x0bd\ufffee\uffff") == "a\\x00b\\x1bc\\x0bd\\ufffee\\uffff"
    assert xml_safe(os.fsdecode(b"caf\xe9\xff")) == "caf\\xe9\\xff"


def workflow_commands(text: str) -> list[str]:
    """The lines of a log GitHub Actions would run: after leading spaces, '::' at the start; in its
    legacy form, '##[' anywhere."""
    return [line for line in text.splitlines() if line.lstrip().startswith("::") or "##[" in line]


HOSTILE_NAMES = [
    "::stop-commands::x",  # turns off every later workflow command of the step
    " ::error::forged",  # the runner trims leading spaces
    "a\n::error::second line",  # a line break in the name would start a line of its own
    "##[error]legacy",  # the legacy form is read anywhere in a line
    "x" * 45 + "::warning::folded",  # a table folds a long name into a new line at any character
    "esc\x1b]0;title\x07",  # ESC drives the terminal
]


def test_no_line_for_people_can_pass_for_a_workflow_command(folders, rng):
    """Only the --github annotations may read as workflow commands: a pair's name shown in a table,
    a problem line or a verdict line cannot, whatever it holds (and no control character reaches
    the terminal)."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["ok", *HOSTILE_NAMES])
    save_image(pred / "::group::unmatched.png", random_rgb(rng))
    eval_result = invoke("eval", pred, gt, "-m", "psnr")
    assert eval_result.exit_code == 3, eval_result.output
    check_result = invoke("check", pred, gt, "--min", "psnr=100", "--github")
    assert check_result.exit_code == 3, check_result.output  # the unmatched pair fails the check
    for result in (eval_result, check_result):
        shown = result.stdout + result.stderr
        for_people = [line for line in shown.splitlines() if not line.startswith("::error file=")]
        assert not any(char in line for line in for_people for char in "\x1b\x07"), shown
        assert ":\\x3agroup::unmatched: unmatched: no ground truth with this name" in shown, shown
    assert workflow_commands(eval_result.stdout + eval_result.stderr) == []
    commands = workflow_commands(check_result.stdout + check_result.stderr)
    assert len(commands) == len(HOSTILE_NAMES) + 2, commands  # 'ok' fails psnr >= 100 too
    assert all(line.startswith("::error file=") for line in commands), commands


def test_compare_shows_no_name_as_a_workflow_command(folders, tmp_path, rng):
    """compare's worst-regressions table and its removed/added lines, as a table and (on stderr)
    beside a CSV."""
    pred, gt = folders
    noisy_pairs(pred, gt, rng, ["::stop-commands::a", "##[error]b"])
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    assert invoke("eval", pred, gt, "-m", "psnr", "-q", "--format", "csv", "--json", base).exit_code == 0
    (pred / "##[error]b.png").unlink()
    save_image(pred / "::stop-commands::a.png", random_rgb(rng))  # a regression
    assert invoke("eval", pred, gt, "-m", "psnr", "-q", "--format", "csv", "--json", new).exit_code == 3
    for output, stream in (("table", "stdout"), ("csv", "stderr")):
        result = invoke("compare", base, new, "--format", output)
        assert result.exit_code == 1, result.output
        shown = getattr(result, stream)
        assert workflow_commands(shown) == [], shown
        assert "no longer computed: ##\\x5berror]b: unmatched: no prediction with this name\n" in shown
    table = invoke("compare", base, new).stdout
    assert ":\\x3astop-commands:\\x3aa" in table, table


def test_check_mean_names_its_nan_pairs_as_text(folders, rng):
    """In --mean mode a NaN mean names its NaN pairs in the table's value cell: as text (Rich read
    '[red]' as a style and 'x[/]y' stopped the run with an internal MarkupError), on one line (a
    name's line break started a log line of its own, '::stop-commands::...' after spaces)."""
    pred, gt = folders
    names = ["[red]ok", "a\n::stop-commands::tok", "x[/]y"]
    noisy_pairs(pred, gt, rng, names, 4, 4)  # under SSIM's 11x11 window: NaN
    arguments = [str(pred), str(gt), "--mean", "--min", "ssim=0.5", "--device", "cpu"]
    for columns in ("80", "300"):  # folded, and on one line
        result = runner.invoke(app, ["check", *arguments], env={"COLUMNS": columns})
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and "internal error" not in result.output
        assert workflow_commands(result.stdout + result.stderr) == []
    assert "NaN (NaN in [red]ok, a\\n:\\x3astop-commands:\\x3atok, x[/]y)" in result.stdout, result.stdout


# --- JUnit XML ------------------------------------------------------------------------------------


def test_junit_each_mode_counts_pairs_not_limits_and_lists_every_failed_limit():
    frame = frame_of(
        ["two", "one", "fine", "bad", "gone"],
        status=["ok", "ok", "ok", "error", "unmatched"],
        error=["", "", "", "size mismatch", "no ground truth"],
        psnr=[20, 20, 40, math.nan, math.nan],
        l1=[0.5, 0.05, 0.05, math.nan, math.nan],
    )
    config = CheckConfig((Rule((PSNR_30, L1_01)),))
    suite = junit_suite(check_frame(frame, config), frame)
    assert counts(suite) == {"tests": "5", "failures": "2", "errors": "2", "skipped": "0"}
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["two", "one", "fine", "bad", "gone"]
    assert {case.get("classname") for case in cases} == {"lossctl.check"}
    two = cases[0].find("failure")
    assert two.get("type") == "threshold"
    assert two.get("message") == "psnr = 20, limit psnr >= 30; l1 = 0.5, limit l1 <= 0.1"
    assert two.text == "psnr = 20, limit psnr >= 30\nl1 = 0.5, limit l1 <= 0.1"
    assert list(cases[2]) == []
    assert [(child.tag, child.attrib) for child in cases[3]] == [
        ("error", {"message": "error: size mismatch", "type": "error"})
    ]
    assert [(child.tag, child.attrib) for child in cases[4]] == [
        ("error", {"message": "unmatched: no ground truth", "type": "unmatched"})
    ]
    allowed = junit_suite(
        check_frame(frame, CheckConfig((Rule((PSNR_30, L1_01)),), allow_missing=True)), frame
    )
    assert counts(allowed) == {"tests": "5", "failures": "2", "errors": "0", "skipped": "2"}
    skipped = [
        (case.get("name"), child.tag, child.attrib)
        for case in allowed
        for child in case
        if child.tag != "failure"
    ]
    assert skipped == [
        ("bad", "skipped", {"message": "error: size mismatch"}),
        ("gone", "skipped", {"message": "unmatched: no ground truth"}),
    ]


def test_junit_mean_mode_has_one_case_per_failed_mean_threshold():
    frame = frame_of(
        ["faces/a", "cars/b", "lost"],
        status=["ok", "ok", "unmatched"],
        error=["", "", "no ground truth"],
        psnr=[20, 40, math.nan],
    )
    config = CheckConfig((Rule((PSNR_30,)), Rule((Limit("psnr", "min", 25.0),), ("faces/**",))), mode="mean")
    suite = junit_suite(check_frame(frame, config), frame)
    assert counts(suite) == {"tests": "2", "failures": "1", "errors": "1", "skipped": "0"}
    cases = suite.findall("testcase")
    # mean (all pairs) is (20 + 40) / 2 = 30 and passes; no case named "mean" beside the failed one
    assert [case.get("name") for case in cases] == ["mean (faces/**)", "lost"]
    assert cases[0].find("failure").get("message") == "psnr = 20, limit psnr >= 25"


def test_junit_keeps_a_names_folders_and_escapes_hostile_characters():
    name = 'dir/<a href="x">&amp;</a>\'\t\n'
    frame = frame_of([name], psnr=[20])
    text = to_junit(check_frame(frame, CheckConfig((Rule((PSNR_30,)),))), frame)
    case = ElementTree.fromstring(text.split("\n", 1)[1]).find("testcase")
    assert case.get("name") == name  # attribute values round-trip exactly, tab and newline too
    assert "<a href" not in text


def test_junit_is_well_formed_for_file_names_xml_cannot_hold(folders, tmp_path, rng):
    """Linux file names may hold control characters (ESC) and bytes that are not UTF-8, which XML
    cannot hold: ElementTree wrote both as they are, and the JUnit file was not XML at all (CI's
    test report step failed or dropped every result). They are shown as escapes."""
    pred, gt = folders
    for name in ("esc\x1b[31mred", os.fsdecode(b"caf\xe9")):
        clean = random_rgb(rng)
        save_image(gt / f"{name}.png", clean)
        save_image(pred / f"{name}.png", noisy(rng, clean, 60))
    junit = tmp_path / "results.xml"
    assert invoke("check", pred, gt, "--min", "psnr=30", "--junit", junit).exit_code == 1
    suite = ElementTree.parse(junit).getroot()
    assert counts(suite) == {"tests": "2", "failures": "2", "errors": "0", "skipped": "0"}
    assert sorted(case.get("name") for case in suite) == ["caf\\xe9", "esc\\x1b[31mred"]


# --- Markdown (check) -----------------------------------------------------------------------------


def test_check_markdown_is_exact_and_a_hostile_name_stays_in_its_cell():
    verdict = Verdict(
        pairs=4,
        failures=[Failure("a|b`c<d\ne", PSNR_30, 20.0, "p.png"), Failure("z", L1_01, 0.5, "z.png")],
        missing=[("o_1", "unmatched", "no ground truth with this name", "o.png")],
        unmatched_rules=["faces/*"],
    )
    assert check_markdown(verdict) == (
        "❌ **FAIL: 3 of 4 pairs failed**\n"
        "\n"
        "| name | metric | value | limit | by |\n"
        "|---|---|---|---|---|\n"
        "| z | l1 | 0.5 | \\<= 0.1 | 0.4 |\n"
        "| a\\|b\\`c\\<d\\\\ne | psnr | 20 | \\>= 30 | 10 |\n"
        "\n"
        "- o\\_1: unmatched: no ground truth with this name \\(fails the check\\)\n"
        "- note: rule paths faces/\\* match no pair, so its thresholds checked nothing\n"
    )


def test_check_markdown_of_missing_pairs_only():
    missing = [("o", "error", "bad `file` <x>", "o.png")]
    assert check_markdown(Verdict(pairs=2, missing=missing)) == (
        "❌ **FAIL: 1 of 2 pairs failed**\n\n- o: error: bad \\`file\\` \\<x\\> \\(fails the check\\)\n"
    )
    assert check_markdown(Verdict(pairs=2, missing=missing, allow_missing=True)) == (
        "✅ **PASS: 2 pairs, 0 failed \\(1 missing or unreadable, allowed\\)**\n"
        "\n"
        "- o: error: bad \\`file\\` \\<x\\> \\(allowed\\)\n"
    )


def test_failure_rows_put_a_nan_first_as_the_worst_and_keep_its_reason():
    verdict = Verdict(
        pairs=3,
        failures=[
            Failure("a", Limit("psnr", "min", 27.0), 25.0),
            Failure("mean (all pairs)", Limit("psnr", "min", 27.0), math.nan, detail="NaN in n"),
            Failure("b", Limit("l1", "max", 0.1), 0.25),
        ],
    )
    assert failure_rows(verdict) == [
        ["b", "l1", "0.25", "<= 0.1", "0.15"],
        ["mean (all pairs)", "psnr", "NaN (NaN in n)", ">= 27", "NaN"],
        ["a", "psnr", "25", ">= 27", "2"],
    ]


def test_verdict_line_counts_pairs_not_failed_limits():
    two_limits = [Failure("a", PSNR_30, 20.0), Failure("a", L1_01, 0.5)]
    verdict = Verdict(pairs=2, failures=two_limits, computed=2)
    assert (verdict.line(), verdict.exit_code) == ("FAIL: 1 of 2 pairs failed", 1)
    mean_missing = Verdict(pairs=3, missing=[("x", "unmatched", "r", "")], mode="mean", computed=2)
    assert (mean_missing.line(), mean_missing.exit_code) == ("FAIL: 1 of 3 pairs failed", 3)
    mean_fail = Verdict(
        pairs=3, failures=[Failure("mean (all pairs)", PSNR_30, 20.0)], mode="mean", computed=3
    )
    assert (mean_fail.line(), mean_fail.exit_code) == (
        "FAIL: 1 mean threshold(s) failed over 3 computed pairs",
        1,
    )


# --- Report writers (eval --format) ---------------------------------------------------------------


def report_info(metrics) -> ReportInfo:
    return ReportInfo("p", "g", metrics, {}, "cpu", "fp32", "0", "0")


def test_eval_markdown_is_exact_with_hostile_names_nan_and_inf():
    frame = frame_of(
        ["a`b", "c\nd", "e<f&lt;g"],
        status=["ok", "ok", "error"],
        error=["", "", "size | mis\rmatch"],
        psnr=[30.123456, math.inf, math.nan],
    )
    frame["notes"] = ["", "x|y", ""]
    info = report_info(["psnr"])
    text = to_markdown(frame, summarize(frame, ["psnr"]), info, per_image=True)
    # pooled PSNR: 10 log10(1 / mean(10^-3.0123456, 0)) = 30.123456 + 10 log10(2) = 33.1338 dB
    assert text == (
        "**lossctl eval** — 3 pairs: 2 ok, 1 error, 0 unmatched — preset skimage\n"
        "\n"
        "| metric | mean | std | min | median | max | n |\n"
        "|---|---|---|---|---|---|---|\n"
        "| psnr ↑ | 30.12 | 0 | 30.12 | inf | inf | 2 |\n"
        "\n"
        "pooled PSNR (from the mean MSE): 33.13 dB; 1 identical pair(s) with PSNR = inf left out of the PSNR mean and std\n"
        "\n"
        "| name | status | psnr |\n"
        "|---|---|---|\n"
        "| a\\`b | ok | 30.12 |\n"
        "| c\\\\nd | ok | inf |\n"
        "| e\\<f\\&lt;g | error | — |\n"
        "\n"
        "- c\\\\nd: note: x\\|y\n"
        "- e\\<f\\&lt;g: error: size \\| mis\\\\rmatch\n"
    )


def test_eval_markdown_counts_only_values_in_n_and_shows_nan_as_a_dash():
    frame = frame_of(["a", "b", "c"], psnr=[20.0, math.nan, -math.inf])
    frame["notes"] = ["", "too small", ""]
    text = to_markdown(frame, summarize(frame, ["psnr"]), report_info(["psnr"]), per_image=True)
    assert "| psnr ↑ | 20 | 0 | -inf | -inf | 20 | 2 |\n" in text.splitlines(keepends=True)
    assert text.splitlines()[-7:] == [
        "| name | status | psnr |",
        "|---|---|---|",
        "| a | ok | 20 |",
        "| b | ok | — |",
        "| c | ok | -inf |",
        "",
        "- b: note: too small",
    ]


def test_number_formatting_for_people_and_for_thresholds():
    assert [format_value(v) for v in (1 / 3, 123456.0, math.inf, -math.inf, math.nan, None)] == [
        "0.3333",
        "1.235e+05",
        "inf",
        "-inf",
        "—",
        "—",
    ]
    assert [format_precise(v) for v in (1 / 3, 30.0, -math.inf, math.nan)] == [
        "0.333333",
        "30",
        "-inf",
        "NaN",
    ]


def test_json_rows_spell_nan_as_null_and_infinities_as_strings():
    frame = frame_of(["a", "b", "c"], psnr=[math.nan, math.inf, -math.inf])
    frame["notes"] = ["", "", ""]
    document = json.loads(to_json(frame, summarize(frame, ["psnr"]), report_info(["psnr"])))
    assert [row["psnr"] for row in document["rows"]] == [None, "inf", "-inf"]


def test_csv_quotes_a_note_that_a_spreadsheet_would_run():
    frame = frame_of(["a"], psnr=[math.nan])
    frame["notes"] = ['=HYPERLINK("x")']
    assert to_csv(frame).splitlines() == [
        "name,pred,gt,status,error,psnr,notes",
        'a,p/a.png,g/a.png,ok,,,"\'=HYPERLINK(""x"")"',
    ]
