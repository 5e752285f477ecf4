"""Options: every bad value fails with one line naming its flag, before any file is hashed or any
feature extracted; the CLI's flags, defaults and help come from `CompareConfig`."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

import headbench as hb
import headbench.data
import headbench.features
from headbench import cli
from headbench.config import AnalyzeConfig, CompareConfig, fields_of, flag_of
from headbench.errors import HeadbenchError
from headbench.synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A real image folder, so that only the options are wrong."""
    root = tmp_path_factory.mktemp("images")
    return make_shapes_dataset(root / "shapes", classes=("circle", "square"), per_class=4,
                               image_size=32)


class Reached(BaseException):
    """Raised by a spy: work has started (a BaseException: no `except Exception` hides it)."""


@pytest.fixture
def no_work(monkeypatch):
    """Scanning, hashing and extraction replaced by spies that stop the run when called; the
    list names the spies reached."""
    reached = []

    def spy(name):
        def called(*args, **kwargs):
            reached.append(name)
            raise Reached(name)
        return called

    monkeypatch.setattr(headbench.data, "scan_folder", spy("data.scan_folder"))
    monkeypatch.setattr(headbench.data, "file_digest", spy("data.file_digest"))
    monkeypatch.setattr(headbench.features, "extract", spy("features.extract"))
    return reached


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# (CLI arguments, the same as Python options, the parameter at fault, the start of the CLI line)
BAD_OPTIONS = [
    (["--dropout", "1.5"], dict(dropout=1.5), "dropout", "--dropout must be in [0, 1), got 1.5"),
    (["--hidden", "0"], dict(hidden=[0]), "hidden", "--hidden takes comma-separated whole"),
    (["--workers", "-1"], dict(workers=-1), "workers", "--workers must be a whole number ≥ 0"),
    (["--split-seed", "-1"], dict(split_seed=-1), "split_seed", "--split-seed must be a whole"),
    (["--backbone", "resnet5O"], dict(backbone="resnet5O"), "backbone",
     "--backbone: unknown backbone 'resnet5O': did you mean resnet50"),
    (["--weights", "/missing.safetensors"], dict(weights="/missing.safetensors"), "weights",
     "--weights file '/missing.safetensors' does not exist"),
    (["--weights", "embedded", "--backbone", "resnet18"],
     dict(weights="embedded", backbone="resnet18"),
     "weights", "--weights 'embedded' exist only for efficientnet_lite0"),
    (["--precision", "fp8"], dict(precision="fp8"), "precision",
     "--precision: unknown precision 'fp8': did you mean fp32"),
    (["--input-size", "0"], dict(input_size=0), "input_size", "--input-size must be a whole"),
    (["--seeds", "0"], dict(seeds=0), "seeds", "--seeds must be a whole number ≥ 1"),
    (["--epochs", "0"], dict(epochs=0), "epochs", "--epochs must be a whole number ≥ 1"),
    (["--batch-size", "1"], dict(batch_size=1), "batch_size", "--batch-size must be a whole"),
    (["--lr", "0"], dict(lr=0), "lr", "--lr must list one or more numbers > 0"),
    (["--weight-decays", "-1"], dict(weight_decays=[-1]), "weight_decays",
     "--weight-decays must list one or more numbers ≥ 0"),
    (["--min-delta", "1"], dict(min_delta=1), "min_delta", "--min-delta must be in [0, 1)"),
    (["--schedule", "step"], dict(schedule="step"), "schedule",
     "--schedule: unknown schedule 'step'"),
    (["--split", "0.5,0.5"], dict(split=(0.5, 0.5)), "split", "--split (0.5, 0.5) must be three"),
    (["--val-fraction", "1.5"], dict(val_fraction=1.5), "val_fraction",
     "--val-fraction must be in [0, 1), got 1.5"),
    (["--shifts", "-1"], dict(shifts=[-1]), "shifts", "--shifts takes comma-separated whole"),
    (["--sizes", "8"], dict(sizes=[8]), "sizes",
     "--sizes takes comma-separated whole numbers from 32 to 2048"),
    (["--shots", "0"], dict(shots=[0]), "shots", "--shots must be images per class ≥ 1"),
    (["--shots", "0,x"], dict(shots="0,x"), "shots", "--shots must be images per class ≥ 1"),
    (["--cam", "-1"], dict(cam=-1), "cam", "--cam must be a whole number ≥ 0"),
    (["--heads", ""], dict(heads=[]), "heads", "--heads is empty"),
    (["--heads", "gap,gap"], dict(heads=["gap", "gap"]), "heads",
     "--heads names gap more than once"),
    (["--heads", "gpa"], dict(heads=["gpa"]), "heads",
     "--heads: unknown head 'gpa': did you mean gmp, gap"),
]


@pytest.mark.parametrize("argv, options, param, line", BAD_OPTIONS,
                         ids=[" ".join(case[0]) for case in BAD_OPTIONS])
def test_bad_option_fails_with_its_flag_before_any_work(images, tmp_path, no_work, capsys,
                                                         argv, options, param, line):
    paths = dict(out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(HeadbenchError) as e:
        hb.compare(images, **options, **paths)
    assert e.value.param == param
    assert "\n" not in str(e.value)

    code = cli.main(["compare", str(images), *argv, "--out", paths["out"],
                     "--cache-dir", paths["cache_dir"]])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"error: {line}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert no_work == []
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("which", ["out", "cache_dir"])
def test_out_or_cache_dir_naming_a_file_fails_before_any_work(images, tmp_path, no_work, capsys,
                                                               which):
    paths = dict(out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    paths[which] = str(_a_file(tmp_path))
    with pytest.raises(HeadbenchError) as e:
        hb.compare(images, **paths)
    assert e.value.param == which

    code = cli.main(["compare", str(images), "--out", paths["out"], "--cache-dir",
                     paths["cache_dir"]])
    _, err = capsys.readouterr()
    flag = "--out" if which == "out" else "--cache-dir"
    assert code == 2 and err.startswith(f"error: {flag} '{paths[which]}' is a file, not a folder")
    assert err.count("\n") == 1 and no_work == []


def test_checking_out_and_cache_dir_creates_no_folder(images, tmp_path):
    config = CompareConfig(images, out=tmp_path / "a" / "b", cache_dir=tmp_path / "c" / "d")
    config.check_paths()
    assert sorted(tmp_path.iterdir()) == []
    inside_a_file = CompareConfig(images, out=_a_file(tmp_path) / "runs")
    with pytest.raises(HeadbenchError, match="^out .* is inside the file") as e:
        inside_a_file.check_paths()
    assert e.value.param == "out"


def test_missing_data_folder_fails_before_any_work(tmp_path, no_work, capsys):
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(HeadbenchError) as e:
        hb.compare(missing, out=str(tmp_path))
    assert e.value.param == "data"

    code = cli.main(["compare", missing, "--out", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and err == f"error: data folder '{missing}' does not exist; pass a folder " \
                                "of class folders\n"
    assert no_work == []


def test_the_spies_stop_a_run_whose_options_are_good(images, tmp_path, no_work):
    with pytest.raises(Reached):
        hb.compare(images, heads="gap", out=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert no_work == ["data.scan_folder"]


def test_debug_shows_the_traceback_of_a_bad_option(images, no_work):
    with pytest.raises(HeadbenchError, match="dropout"):
        cli.main(["compare", str(images), "--dropout", "1.5", "--debug"])


def test_config_parses_comma_lists_and_numbers_as_typed():
    c = CompareConfig("images", heads="gap, flatten", hidden="1024,512", seeds="2",
                      weight_decays="1e-3", split="0.6,0.2,0.2", val_fraction="0.2",
                      shifts="16,8", shots="all,5", patience="0")
    assert [h.label for h in c.heads] == ["gap[1024,512]", "flatten[1024,512]"]
    assert c.seeds == 2 and c.weight_decays == (1e-3,) and c.split == (0.6, 0.2, 0.2)
    assert c.val_fraction == 0.2 and c.shifts == (0, 8, 16) and c.shots == (5, "all")
    assert c.train_config().patience is None  # 0: early stopping off


# ----------------------------------------------------------------------------------------------
# the CLI is generated from the dataclasses

def _help(capsys, monkeypatch, *argv) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_compare_option_has_a_flag(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "compare")
    for f in fields_of(CompareConfig):
        name = f.name if f.metadata.get("positional") else flag_of(f)
        assert f" {name} " in text, name


def test_every_analyze_option_has_a_flag(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "analyze")
    for f in fields_of(AnalyzeConfig):
        assert f" {f.name if f.metadata.get('positional') else flag_of(f)} " in text


def test_compare_help_shows_the_defaults_of_compare_config(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "compare")
    defaults = {f.name: f.default for f in dataclasses.fields(CompareConfig)}
    assert f"seeds per head (intervals are over seeds) (default: {defaults['seeds']})" in text
    assert f"--epochs EPOCHS maximum epochs (early stopping on val) " \
           f"(default: {defaults['epochs']})" in text
    assert f"(default: {defaults['backbone']})" in text
    assert "(default: " + ",".join(f"{v:g}" for v in defaults["split"]) + ")" in text
    assert "--no-report do not write report.html" in text


def test_cli_options_reach_compare_config_and_absent_ones_keep_its_defaults(images, monkeypatch,
                                                                            capsys):
    seen = []

    def fake_compare(config):
        seen.append(config)
        raise HeadbenchError("stopped by the test")

    monkeypatch.setattr(importlib.import_module("headbench.compare"), "compare", fake_compare)
    assert cli.main(["compare", str(images)]) == 2
    assert cli.main(["compare", str(images), "--heads", "gap,flatten", "--hidden", "64",
                     "--seeds", "2", "--patience", "0", "--no-report", "--name", "mine",
                     "--shifts", "8", "--weight-decays", "0.01"]) == 2
    assert seen[0] == CompareConfig(str(images))
    assert seen[1] == CompareConfig(str(images), heads=["gap", "flatten"], hidden=[64], seeds=2,
                                    patience=0, report=False, run_name="mine", shifts=[8],
                                    weight_decays=[0.01])
    assert capsys.readouterr().err == "error: stopped by the test\n" * 2


def test_head_parameters_without_a_flag_keep_their_name(images, monkeypatch, capsys):
    def fake_compare(config):
        raise HeadbenchError("pool_size 9 is larger than the 7×7 map", param="pool_size")

    monkeypatch.setattr(importlib.import_module("headbench.compare"), "compare", fake_compare)
    assert cli.main(["compare", str(images)]) == 2
    assert capsys.readouterr().err == "error: pool_size 9 is larger than the 7×7 map\n"


def test_python_dash_m_headbench_shows_the_help():
    proc = subprocess.run([sys.executable, "-m", "headbench", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "headbench compare path/to/images" in proc.stdout and "analyze" in proc.stdout
    assert "CompareConfig" not in proc.stdout  # a user's description, not the developers'


def test_compare_runs_the_analyses_without_a_backbone_pass_by_default_and_analyze_none():
    """The small-data curve and a few CAM overlays are in every compare (none: off); analyze
    adds only what it is asked for."""
    assert CompareConfig("x").requested() == {"shots": (1, 5, 25, "all"), "cam": 2}
    assert CompareConfig("x", shots="none", cam=0).requested() == {}
    assert AnalyzeConfig("run").requested() == {}
    assert CompareConfig("x", "resnet50").backbone == "resnet50"  # data stays the first field


def test_the_suggested_analyses_cost_their_backbone_passes_at_the_run_s_rate():
    from types import SimpleNamespace
    from headbench.analyses.registry import suggestions
    backbone = SimpleNamespace(throughput_b32=200.0, data_config={"input_size": [3, 224, 224]})
    run = SimpleNamespace(
        analyses={"shots": {}},
        timing=SimpleNamespace(n_extracted=400, extract_s=4.0),  # 100 images per second
        backbone=backbone, backbones=[], analysed_backbone=lambda: backbone,
        dataset=SimpleNamespace(splits={"test": SimpleNamespace(paths=["x"] * 100)}))
    found = {name: (value, seconds, measured) for name, value, seconds, measured in suggestions(run)}
    # translation: 1 unshifted + 3 shifts × 4 directions + 16 Zhang offsets, of 100 test images
    assert found["shifts"] == ("0,8,16,32", pytest.approx(29.0), True)
    # input size: 100 images at (160/224)², 1 and (288/224)² of the run's pixels
    assert found["sizes"][1] == pytest.approx((160**2 + 224**2 + 288**2) / 224**2)
    run.analyses["shifts"] = {}
    run.timing = SimpleNamespace(n_extracted=0, extract_s=0.01)  # a cached run: a lower bound
    assert [(n, m) for n, _, _, m in suggestions(run)] == [("sizes", False)]
