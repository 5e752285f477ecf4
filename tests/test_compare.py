"""`compare` end to end on a small generated dataset: the run folder, reproducibility, bad files."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import headbench as hb
from headbench.errors import HeadbenchError
from headbench.synthetic import make_shapes_dataset

CLASSES = ("circle", "square", "triangle")
OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap", "flatten"], seeds=2,
               epochs=4, input_size=64, precision="fp32", report=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=CLASSES,
                               per_class=14, image_size=64)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(shapes, cache, tmp_path_factory) -> hb.CompareResult:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"), **OPTIONS)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_writes_the_documented_run_folder(run):
    d = run.run_dir
    assert d.parent.name == "runs" and d.name.endswith("-shapes-efficientnet_lite0")
    for name in ("config.json", "dataset.json", "results.json", "results.csv", "skipped.csv",
                 "predictions.csv"):
        assert (d / name).is_file(), name
    for head in ("gap", "flatten"):
        files = {p.name for p in (d / "heads" / head).iterdir()}
        assert {"model.safetensors", "model.json", "seed0.safetensors", "seed1.safetensors"} <= files
    # one row per head × seed plus a mean row per head
    rows = _rows(d / "results.csv")
    assert sorted((r["head"], r["seed"]) for r in rows) == sorted(
        (h, s) for h in ("gap", "flatten") for s in ("0", "1", "mean"))


def test_results_hold_metrics_params_and_costs_per_head(run):
    gap, flatten = run["gap"], run["flatten"]
    assert gap["head_params"] == 1280 * 3 + 3
    assert flatten["head_params"] == 1280 * 2 * 2 * 3 + 3  # 64 px → 2×2 map
    assert flatten["fixed_size"] and not gap["fixed_size"]
    for head in (gap, flatten):
        acc = head["summary"]["test_accuracy"]
        assert 0 <= acc["mean"] <= 1 and acc["lo"] <= acc["mean"] <= acc["hi"]
        assert len(head["seeds"]) == 2
        assert head["latency_ms_b1"] > 0 and head["throughput_b32"] > 0
        assert head["head_flops"] > 0 and head["model_size_bytes"] > 0
        assert set(head["seeds"][0]["test"]) >= {"accuracy", "macro_f1", "nll", "ece"}
        # selection is on val: the chosen weight decay is the sweep's lowest val loss
        sweep = head["wd_sweep"]
        assert float(min(sweep, key=sweep.get)) == head["weight_decay"]
        gap_ci = head["summary"]["overfit_gap"]["mean"]
        assert gap_ci == pytest.approx(head["summary"]["train_accuracy"]["mean"] - acc["mean"])
    assert run.best_head in ("gap", "flatten")


def test_splits_never_share_an_image(run):
    dataset = json.loads((run.run_dir / "dataset.json").read_text())
    roles = {}
    for item in dataset["items"]:
        roles.setdefault(item["path"], set()).add(item["role"])
    assert all(len(r) == 1 for r in roles.values())
    assert {i["role"] for i in dataset["items"]} == {"train", "val", "test"}
    assert len(dataset["items"]) == 14 * 3


def test_rerun_reuses_the_cache_and_reproduces_every_number(run, shapes, cache, tmp_path):
    again = hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    assert again.results["timing"]["n_extracted"] == 0
    assert run.results["timing"]["n_extracted"] == 14 * 3
    for head in ("gap", "flatten"):
        first = [(s["train"], s["val"], s["test"], s["best_epoch"]) for s in run[head]["seeds"]]
        second = [(s["train"], s["val"], s["test"], s["best_epoch"]) for s in again[head]["seeds"]]
        assert first == second


def test_bad_files_are_skipped_listed_and_the_run_completes(shapes, cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    good = next((data / "circle").glob("*.png")).read_bytes()
    (data / "circle" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "square" / "empty.jpg").write_bytes(b"")
    (data / "triangle" / "notes.txt").write_text("not an image")
    result = hb.compare(data, cache_dir=cache, out=tmp_path, **dict(OPTIONS, seeds=1))
    skipped = {Path(r["path"]).name: r["reason"] for r in _rows(result.run_dir / "skipped.csv")}
    assert set(skipped) == {"truncated.png", "empty.jpg", "notes.txt"}
    assert all(skipped.values())
    assert result.results["dataset"]["n_skipped"] == 3
    # the copies of good images come from the cache (same bytes); the truncated file is
    # decoded, fails and computes no features
    assert result.results["timing"]["n_extracted"] == 0


def test_empty_class_folder_is_one_clear_error_before_any_work(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "hexagon").mkdir()
    with pytest.raises(HeadbenchError, match="hexagon.*no images"):
        hb.compare(data, cache_dir=tmp_path / "cache", out=tmp_path, **OPTIONS)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value, words", [
    ("heads", ["gapp"], "unknown head 'gapp'.*gap"),
    ("seeds", 0, "--seeds"),
    ("dropout", -0.1, "dropout"),
    ("heads", ["gap", "gap"], "more than once"),
    ("split", (0.5, 0.5), "three positive fractions"),
])
def test_impossible_options_are_one_line_errors(shapes, tmp_path, option, value, words):
    with pytest.raises(HeadbenchError, match=words) as info:
        hb.compare(shapes, cache_dir=tmp_path, out=tmp_path, **dict(OPTIONS, **{option: value}))
    assert "\n" not in str(info.value)


def test_out_that_is_a_file_is_refused_before_any_work(shapes, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(HeadbenchError, match="--out.*is a file"):
        hb.compare(shapes, cache_dir=tmp_path / "cache", out=afile, **OPTIONS)
    assert not (tmp_path / "cache").exists()
