"""`compare` end to end on a small generated dataset: the run folder, reproducibility, bad files."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import headbench as hb
from headbench.cache import list_entries
from headbench.errors import HeadbenchError
from headbench.run import Run, results_schema
from headbench.synthetic import make_shapes_dataset

CLASSES = ("circle", "square", "triangle")
OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap", "flatten"], seeds=2,
               epochs=4, input_size=64, precision="fp32", report=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=CLASSES,
                               per_class=14, image_size=64)


@pytest.fixture(scope="module")
def run(shapes, cache, tmp_path_factory) -> Run:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"), **OPTIONS)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_writes_the_documented_run_folder(run):
    d = run.run_dir
    assert d.parent.name == "runs" and d.name.endswith("-shapes-efficientnet_lite0")
    for name in ("config.json", "dataset.json", "results.json", "results.csv", "skipped.csv",
                 "predictions.csv", "per_class.csv"):
        assert (d / name).is_file(), name
    for head in ("gap", "flatten"):
        files = {p.name for p in (d / "heads" / head).iterdir()}
        assert {"model.safetensors", "model.json", "seed0.safetensors", "seed1.safetensors"} <= files
    # one row per head × seed plus a mean row per head
    rows = _rows(d / "results.csv")
    assert sorted((r["head"], r["seed"]) for r in rows) == sorted(
        (h, s) for h in ("gap", "flatten") for s in ("0", "1", "mean"))


def test_results_hold_metrics_params_and_costs_per_head(run):
    gap, flatten = run.head("gap"), run.head("flatten")
    assert gap.head_params == 1280 * 3 + 3
    assert flatten.head_params == 1280 * 2 * 2 * 3 + 3  # 64 px → 2×2 map
    assert flatten.fixed_size and gap.any_size and gap.exact_cam and not flatten.exact_cam
    for head in (gap, flatten):
        acc = head.summary.test_accuracy
        assert 0 <= acc.mean <= 1 and acc.lo <= acc.mean <= acc.hi and len(acc.values) == 2
        assert [s.seed for s in head.seeds] == [0, 1]
        assert head.latency_ms_b1 > 0 and head.throughput_b32 > 0
        assert head.head_flops > 0 and head.model_size_bytes > 0
        assert head.seeds[0].test.n == sum(run.dataset.counts["test"].values())
        # selection is on val: the chosen weight decay is the sweep's lowest val loss
        assert float(min(head.wd_sweep, key=head.wd_sweep.get)) == head.weight_decay
        assert head.summary.overfit_gap.mean == pytest.approx(
            head.summary.train_accuracy.mean - acc.mean)


def test_the_recommended_head_is_the_cheapest_within_one_standard_error_in_selection(run):
    verdict = run.verdict  # 6 val images: scored by cross-validation over train + val
    assert verdict.selection == "cv"
    assert verdict.n_images == sum(run.dataset.counts[r][c] for r in ("train", "val")
                                   for c in run.classes)
    for h in run.heads:
        assert 0 <= verdict.scores[h.head] <= 1 and 0 <= verdict.se[h.head] <= 0.5
    best = max(verdict.scores.values())
    assert verdict.scores[verdict.best] == best
    within = [h for h in run.heads if verdict.scores[h.head] >= best - verdict.se[verdict.best]]
    cheapest = min(within, key=lambda h: (h.head_params, h.head_flops))
    assert run.best_head == verdict.recommended == cheapest.head
    assert verdict.text.startswith((run.best_head, "no head"))
    assert Run.load(run.run_dir).verdict == verdict
    # the recommended model is the selected head's, saved from its best seed on val loss
    meta = json.loads((run.model_dir() / "model.json").read_text())
    assert meta["head"]["name"] == run.best_head and meta["seed"] == run.selected().best_seed


def test_predictions_are_arrays_per_head_and_seed_matching_the_metrics(run):
    y = run.labels("test")
    for head in run.heads:
        p = run.predictions[head.head]
        assert p.pred.shape == (2, len(y)) and p.seeds == [0, 1]
        accuracy = run.correct(head.head).mean(axis=1)
        assert accuracy.tolist() == pytest.approx([s.test.accuracy for s in head.seeds])


def test_the_run_folder_reads_back_as_the_same_run(run):
    again = Run.load(run.run_dir)
    assert again.best_head == run.best_head and again.options == run.options
    assert [h.head for h in again.heads] == [h.head for h in run.heads]
    assert again.head("gap").seeds == run.head("gap").seeds
    assert again.dataset.splits["test"].paths == run.dataset.splits["test"].paths
    np.testing.assert_array_equal(again.predictions["flatten"].pred, run.predictions["flatten"].pred)
    np.testing.assert_allclose(again.predictions["gap"].loss, run.predictions["gap"].loss, atol=1e-6)
    assert again.findings == run.findings


def test_splits_never_share_an_image(run):
    splits = Run.load(run.run_dir).dataset.splits
    paths = [p for role in ("train", "val", "test") for p in splits[role].paths]
    assert len(paths) == len(set(paths)) == 14 * 3
    assert all(len(splits[role]) for role in ("train", "val", "test"))


def test_train_time_is_head_training_alone_and_evaluation_is_its_own(run):
    t = Run.load(run.run_dir).timing
    assert t.train_s > 0 and t.evaluate_s > 0  # heads evaluated, saved and timed apart
    assert t.extract_s + t.train_s + t.evaluate_s <= t.total_s


def test_rerun_reuses_the_cache_and_reproduces_every_number(run, shapes, cache, tmp_path):
    again = hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    assert again.timing.n_extracted == 0
    assert run.timing.n_extracted == 14 * 3
    for head in ("gap", "flatten"):
        first = [(s.train, s.val, s.test, s.best_epoch) for s in run.head(head).seeds]
        second = [(s.train, s.val, s.test, s.best_epoch) for s in again.head(head).seeds]
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
    assert result.dataset.n_skipped == 3
    # the copies of good images come from the cache (same bytes); the truncated file is
    # decoded, fails and computes no features
    assert result.timing.n_extracted == 0


def test_empty_class_folder_is_one_clear_error_before_any_work(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "hexagon").mkdir()
    with pytest.raises(HeadbenchError, match="hexagon.*no images"):
        hb.compare(data, cache_dir=tmp_path / "cache", out=tmp_path, **OPTIONS)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value, words", [
    ("heads", ["gapp"], "unknown head 'gapp'.*gap"),
    ("seeds", 0, "^seeds must be a whole number ≥ 1"),
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
    with pytest.raises(HeadbenchError, match="^out .*is a file"):
        hb.compare(shapes, cache_dir=tmp_path / "cache", out=afile, **OPTIONS)
    assert not (tmp_path / "cache").exists()


def test_results_json_validates_against_the_shipped_schema(run):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(hb.__file__).parent / "results.schema.json").read_text())
    jsonschema.validate(json.loads((run.run_dir / "results.json").read_text()), schema)
    broken = json.loads((run.run_dir / "results.json").read_text())
    broken["heads"][0]["summary"]["test_accuracy"]["mean"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_shipped_schema_is_generated_from_the_run_model():
    shipped = json.loads((Path(hb.__file__).parent / "results.schema.json").read_text())
    assert shipped == results_schema(), "regenerate: python -m headbench.run > src/headbench/results.schema.json"


def test_a_run_folder_of_headbench_0_1_is_one_clear_line(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run.run_dir, old)
    results = json.loads((old / "results.json").read_text())
    del results["schema"], results["schema_version"]
    (old / "results.json").write_text(json.dumps(results))
    with pytest.raises(HeadbenchError, match="written by headbench 0.1 .*re-run compare") as e:
        Run.load(old)
    assert "\n" not in str(e.value)
    results["schema"], results["schema_version"] = "headbench-run", 99
    (old / "results.json").write_text(json.dumps(results))
    with pytest.raises(HeadbenchError, match="version 99; this headbench reads headbench-run "
                                             "version 1"):
        Run.load(old)


def test_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path):
    with pytest.raises(HeadbenchError, match="is not a headbench run folder"):
        Run.load(tmp_path)
    with pytest.raises(HeadbenchError, match="does not exist"):
        Run.load(tmp_path / "missing")


def test_damaged_results_are_one_clear_line(run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run.run_dir, bad)
    results = json.loads((bad / "results.json").read_text())
    results["heads"][0]["seeds"][0]["test"]["accuracy"] = "high"
    (bad / "results.json").write_text(json.dumps(results))
    with pytest.raises(HeadbenchError, match="are damaged .*re-run compare"):
        Run.load(bad)


def test_global_pool_heads_train_from_a_cache_of_statistics(shapes, cache, run, tmp_path):
    """gap alone needs only the average: the cache keeps C numbers per image, not C·H·W, and
    gap's numbers match the run trained on the maps (float16 averages vs averaged float16)."""
    own_cache = tmp_path / "cache"
    pooled = hb.compare(shapes, cache_dir=own_cache, out=tmp_path,  # no analysis: no maps
                        **{**OPTIONS, "heads": ["gap"], "shots": "none", "cam": 0})
    (entry,) = list_entries(own_cache)
    (maps,) = list_entries(cache)
    c, h, w = pooled.backbone.feature_shape
    assert entry["form"] == "avg" and maps["form"] == "maps" and h * w >= 4
    assert entry["images"] == maps["images"] == sum(len(s.paths) for s in
                                                    pooled.dataset.splits.values())
    assert entry["size_bytes"] < maps["size_bytes"] / 2
    np.testing.assert_allclose(pooled.predictions["gap"].p_label,
                               run.predictions["gap"].p_label, atol=2e-2)
    # a maps entry that already holds every image serves gap too: nothing is extracted
    again = hb.compare(shapes, cache_dir=cache, out=tmp_path, **{**OPTIONS, "heads": ["gap"]})
    assert again.timing.n_extracted == 0 and len(list_entries(cache)) == 1
