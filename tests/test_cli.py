"""The `headbench` command: exact numbers users quote, and one-line errors without tracebacks."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from headbench import cli, progress
from headbench.cli import main
from headbench.progress import printable


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_params_gives_the_exact_resnet50_counts(capsys):
    code, out, _ = _run(capsys, "params", "--backbone", "resnet50", "--num-classes", "10",
                        "--hidden", "1024", "--json")
    assert code == 0
    rows = {r["head"]: r for r in json.loads(out)}
    assert rows["flatten[1024]"]["feature_map"] == "2048×7×7"
    # 100352·1024 + 1024 + 1024·10 + 10
    assert rows["flatten[1024]"]["head_params"] == 100352 * 1024 + 1024 + 1024 * 10 + 10 == 102_771_722
    assert rows["gap[1024]"]["head_params"] == 2048 * 1024 + 1024 + 1024 * 10 + 10 == 2_108_426


def test_params_at_320_grows_flatten_and_leaves_gap_unchanged(capsys):
    code, out, _ = _run(capsys, "params", "--backbone", "resnet50", "--hidden", "1024",
                        "--input-size", "320", "--json")
    rows = {r["head"]: r for r in json.loads(out)}
    assert rows["flatten[1024]"]["feature_map"] == "2048×10×10"
    assert rows["flatten[1024]"]["head_params"] == 204800 * 1024 + 1024 + 1024 * 10 + 10
    assert rows["gap[1024]"]["head_params"] == 2_108_426


def test_params_table_lists_every_default_head(capsys):
    code, out, _ = _run(capsys, "params", "--backbone", "vgg16", "--num-classes", "5")
    assert code == 0
    for head in ("gap", "flatten", "avgpool", "dense_map", "gmp", "gem", "catavgmax",
                 "attention", "fastai"):
        assert head in out
    assert "512×7×7" in out


def test_explain_prints_the_worked_examples_computed_live(capsys):
    code, out, _ = _run(capsys, "explain")
    assert code == 0
    assert "(1, 2, 2, 1)" in out and "[[[[3.]]]]" in out and "[[[[5.]]]]" in out
    assert "[[5.]]" in out and "(1, 1, 1, 1)" in out and "[5., 14.]" in out
    assert "102,771,722" in out and "2,108,426" in out
    assert "2048×7×7" in out


@pytest.mark.parametrize("argv, words", [
    (["params", "--backbone", "resnet5O"], "unknown backbone 'resnet5O'"),
    (["params", "--backbone", "resnet50", "--heads", "gapp"], "unknown head 'gapp'"),
    (["params", "--backbone", "resnet50", "--num-classes", "1"], "classes"),
    (["params", "--backbone", "resnet50", "--dropout", "-0.5"], "dropout"),
    (["params", "--backbone", "resnet50", "--hidden", "a,b"], "--hidden"),
    (["compare", "/no/such/folder"], "/no/such/folder"),
    (["predict", "/no/such/model", "x.jpg"], "/no/such/model"),
    (["predict", "/no/such/model", "x.jpg", "--topk", "0"], "--topk"),
    (["predict", "/no/such/model", "x.jpg", "--input-size", "0"], "--input-size"),
    (["predict", "/no/such/model", "x.jpg", "--input-size", "31"], "--input-size"),
    (["predict", "/no/such/model", "x.jpg", "--input-size", "-5"], "--input-size"),
    (["predict", "/no/such/model", "x.jpg", "--topk", "two"], "--topk"),
    (["predict", "/no/such/model"], "paths"),
    (["explain", "--input-size", "0"], "--input-size"),
    (["analyze", "/no/such/run"], "--shifts, --sizes, --shots, --cam"),
    (["report", "/no/such/run"], "/no/such/run"),
])
def test_user_errors_are_one_line_with_exit_code_2(capsys, argv, words):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err
    assert "Traceback" not in err


def test_unknown_backbone_suggests_the_closest_names(capsys):
    _, _, err = _run(capsys, "params", "--backbone", "resnet5O")
    assert "did you mean" in err and "resnet50" in err


def test_console_script_runs_without_traceback_on_bad_input():
    proc = subprocess.run([sys.executable, "-m", "headbench", "compare", "/no/such/folder"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_bad_analysis_option_fails_before_any_work(capsys, tmp_path):
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "d", classes=("circle", "square"), per_class=4,
                               image_size=32)
    code, _, err = _run(capsys, "compare", str(data), "--shots", "0,x", "--cache-dir",
                        str(tmp_path / "cache"), "--out", str(tmp_path))
    assert code == 2 and "--shots" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_quiet_is_accepted_after_the_subcommand(capsys):
    code, out, err = _run(capsys, "params", "--backbone", "resnet18", "--heads", "gap",
                          "--quiet", "--json")
    assert code == 0 and json.loads(out)[0]["head"] == "gap"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A small compare run made through the CLI: (run folder, what it printed)."""
    from headbench.synthetic import make_shapes_dataset
    tmp = tmp_path_factory.mktemp("cli")
    data = make_shapes_dataset(tmp / "shapes", classes=("circle", "square"), per_class=6,
                               image_size=48)
    with pytest.MonkeyPatch.context() as mp:
        out = []
        mp.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
        code = main(["compare", str(data), "--heads", "gap,flatten", "--seeds", "2",
                     "--epochs", "3", "--weight-decays", "0.01", "--no-report", "--quiet",
                     "--out", str(tmp), "--cache-dir", str(tmp / "cache")])
    assert code == 0
    folder = [line for line in out if line.startswith("run folder: ")]
    return Path(folder[0].removeprefix("run folder: ")), out


@pytest.mark.slow
def test_compare_prints_findings_selected_head_and_run_folder(cli_run):
    from headbench.run import Run
    run_dir, out = cli_run
    run = Run.load(run_dir)
    assert out[0] == f"verdict: {run.verdict.text}" and out[1] == "findings:"
    assert any(line.startswith(("- gap vs flatten", "- flatten vs gap")) for line in out)
    assert run.verdict.selection == "cv"  # 6 val images: cross-validated
    assert f"recommended: {run.best_head} (one-standard-error rule on 5-fold cross-validation " \
           f"over train + val (2 partitions)), model in " \
           f"{run.model_dir()}" in out
    assert not any(line.startswith("report:") for line in out)  # --no-report
    assert run.options.seeds == 2 and run.options.weight_decays == (0.01,)


@pytest.mark.slow
def test_analyze_and_report_commands_on_a_cli_run(cli_run, capsys):
    run_dir, _ = cli_run
    code, out, err = _run(capsys, "analyze", str(run_dir), "--shifts", "8", "--quiet")
    assert code == 0, err
    assert out.rstrip().endswith(f"report: {run_dir / 'report.html'}")
    code, out, _ = _run(capsys, "report", str(run_dir))
    assert code == 0 and out.strip() == str(run_dir / "report.html")


def test_findings_of_the_headline_claims_are_printed_even_when_not_significant(capsys):
    from headbench.heads import NAMED_CLAIMS
    from headbench.run import Finding
    assert [(c.head, c.versus) for c in NAMED_CLAIMS if c.headline] == [("gap", "flatten")]

    def finding(a, b, significant=False):
        return Finding(text=f"{a} vs {b}", kind="accuracy", a=a, b=b, diff=0.0, lo=None,
                       hi=None, significant=significant)
    cli._print_findings([finding("flatten", "gap"), finding("gap", "avgpool"),
                         finding("gmp", "gem", significant=True)])
    out = capsys.readouterr().out.splitlines()
    assert out == ["findings:", "- flatten vs gap", "- gmp vs gem",
                   "- 1 more comparison: no significant difference after the Holm correction, "
                   "or not tested (results.json, report.html)"]


# ----------------------------------------------------------------------------------------------
# terminal output: names are shown, never obeyed

@pytest.mark.parametrize("text, shown", [
    ("a\x1b[2Jb", "a\\x1b[2Jb"), ("bell\x07", "bell\\x07"), ("cr\rlf\n", "cr\\x0dlf\\x0a"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"), ("csi\x9b31m", "csi\\x9b31m"),
    ("bidi\u202eexe.png", "bidi\\u202eexe.png"), ("bad\udcff", "bad\\xff"),
    ("café [bold]日本 \\x1b", "café [bold]日本 \\x1b"),
])
def test_printable_escapes_control_characters_only(text, shown):
    assert printable(text) == shown


def test_log_and_warn_escape_names_and_ignore_markup(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", False)
    progress.log("class \x1b[31mred[/] [bold]x")
    progress.warn("file a\x07.png")
    out, err = capsys.readouterr()
    assert out == "class \\x1b[31mred[/] [bold]x\n"
    assert err == "warning: file a\\x07.png\n"


def test_tables_are_printed_with_names_escaped(capsys):
    from rich.table import Table
    from rich.text import Text
    table = Table(title=Text("data\x1b]0;title\x07"))
    table.add_column("head")
    table.add_row(Text("gap\x1b[5m"))
    progress.show(table)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    # escaped after layout (a safety net): widths may be off, bytes never pass
    assert "data\\x1b]0;" in out and "gap\\x1b[5m" in out


def test_error_messages_escape_control_characters(capsys):
    code, _, err = _run(capsys, "compare", "/no/such/\x1b[31mfolder")
    assert code == 2 and "\x1b" not in err and "/no/such/\\x1b[31mfolder" in err


# ----------------------------------------------------------------------------------------------
# disk errors: one line, exit code 1

def _failing_report(monkeypatch, error: BaseException) -> None:
    def cmd_report(args):
        raise error
    monkeypatch.setattr(cli, "cmd_report", cmd_report)


@pytest.mark.parametrize("code, strerror, line", [
    (errno.ENOSPC, "No space left on device",
     "error: cannot write '/runs/r/results.json': no space left on device"),
    (errno.EROFS, "Read-only file system",
     "error: cannot write '/runs/r/results.json': read-only file system"),
    (errno.EACCES, "Permission denied",
     "error: cannot access '/runs/r/results.json': permission denied"),
])
def test_disk_error_is_one_line_with_exit_code_1(capsys, monkeypatch, code, strerror, line):
    _failing_report(monkeypatch, OSError(code, strerror, "/runs/r/results.json"))
    code, out, err = _run(capsys, "report", "/runs/r")
    assert code == 1 and out == "" and err == line + "\n"


def test_disk_error_names_escaped_path_and_works_without_one(capsys, monkeypatch):
    _failing_report(monkeypatch, OSError(errno.ENOSPC, "No space left", "/r/\x1b[2J"))
    line = "error: cannot write '/r/\\x1b[2J': no space left on device\n"
    assert _run(capsys, "report", "r")[2] == line
    _failing_report(monkeypatch, OSError(errno.EIO, "Input/output error"))
    assert _run(capsys, "report", "r")[2] == "error: input/output error\n"


def test_disk_error_with_debug_shows_the_traceback(monkeypatch):
    _failing_report(monkeypatch, OSError(errno.EROFS, "Read-only file system", "/runs/r"))
    with pytest.raises(OSError, match="Read-only"):
        main(["report", "/runs/r", "--debug"])


def test_closed_pipe_ends_quietly(capsys, monkeypatch):
    _failing_report(monkeypatch, BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert _run(capsys, "report", "r") == (141, "", "")


def test_ctrl_c_says_what_is_kept_by_command(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_compare", interrupted)
    monkeypatch.setattr(cli, "cmd_report", interrupted)
    code, _, err = _run(capsys, "compare", "data")
    assert code == 130 and "rerun the same command to resume" in err and err.count("\n") == 1
    assert _run(capsys, "report", "r") == (130, "", "interrupted\n")


def test_follow_links_flag_sets_the_option():
    from headbench.config import CompareConfig
    parser = cli.build_parser()
    given = cli.config_values(parser.parse_args(["compare", "d", "--follow-links"]), CompareConfig)
    assert given == {"data": "d", "follow_links": True}
    assert "follow_links" not in cli.config_values(parser.parse_args(["compare", "d"]),
                                                   CompareConfig)


@pytest.mark.slow
def test_report_on_a_full_disk_is_one_line(cli_run, capsys, monkeypatch):
    import headbench.io
    run_dir, _ = cli_run

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(headbench.io, "atomic_write", full)
    code, out, err = _run(capsys, "report", str(run_dir))
    assert code == 1 and err.startswith(f"error: cannot write '{run_dir}/")
    assert err.endswith("': no space left on device\n") and err.count("\n") == 1


def _can_bind_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    here = str(Path(__file__).parent)
    probe = subprocess.run(["unshare", "-rm", "mount", "--bind", here, here], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_bind_mount_read_only(),
                    reason="needs unshare and mount in a private user and mount namespace "
                           "(root ignores a mode-0555 folder)")
def test_report_on_a_read_only_run_folder_is_one_line(cli_run):
    run_dir, _ = cli_run
    mount = f"mount --bind '{run_dir}' '{run_dir}' && mount -o remount,bind,ro '{run_dir}'"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && exec \"$0\" -m headbench "
                           f"report '{run_dir}'", sys.executable], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"error: cannot write '{run_dir}/report.html': read-only file system\n"


def test_every_option_of_every_command_has_help_with_its_default():
    """`--help` is where a user looks first: every option says what it does and its default
    (flags that are off unless given say what they do)."""
    import argparse
    parser = cli.build_parser()
    missing = []
    for name, sub in parser.subcommands.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            text = action.help or ""
            flag = not action.option_strings or action.nargs == 0
            if not text or (not flag and "default" not in text and not action.required):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_compare_help_groups_its_options_and_says_where_the_cache_is():
    from headbench.config import GROUPS, CompareConfig, fields_of
    grouped = {n for names in GROUPS.values() for n in names}
    assert {f.name for f in fields_of(CompareConfig) if not f.metadata.get("positional")} \
        <= grouped
    text = cli.build_parser().subcommands["compare"].format_help()
    titles = [t for t in GROUPS if f"\n{t}:\n" in text]
    assert titles == list(GROUPS)
    from headbench.features import default_cache_dir
    assert str(default_cache_dir()) in " ".join(text.split())


def test_version(capsys):
    from headbench.version import __version__
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"headbench {__version__}"
