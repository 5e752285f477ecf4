"""Several backbones in one run (`--backbone resnet50,mobilenet,vgg16`): one scan, the same
splits, every head on every backbone that accepts it, one recommended pair."""
from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import headbench as hb
from headbench import pairs, verdict
from headbench.cli import main
from headbench.config import CompareConfig
from headbench.errors import HeadbenchError
from headbench.run import Run, results_schema
from headbench.synthetic import make_shapes_dataset

BACKBONES = ("resnet50", "mobilenet", "vgg16")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "triangle"), per_class=14,
                               image_size=64)


@pytest.fixture(scope="module")
def run(shapes, cache, tmp_path_factory, one_thread) -> Run:
    """The issue's command, from the CLI: three backbones, random weights, 64 px."""
    out = tmp_path_factory.mktemp("out")
    code = main(["compare", str(shapes), "--backbone", ",".join(BACKBONES), "--weights", "none",
                 "--input-size", "64", "--heads", "gap,flatten", "--seeds", "1", "--epochs", "4",
                 "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    assert code == 0
    (run_dir,) = (out / "runs").iterdir()
    return Run.load(run_dir)


def test_one_run_holds_every_pair_in_its_own_model_folder(run):
    assert run.run_dir.name.endswith("-shapes-resnet50_mobilenet_vgg16")
    assert [b.name for b in run.backbones] == list(BACKBONES)
    assert [h.head for h in run.heads] == [f"{b}/{h}" for b in BACKBONES
                                           for h in ("gap", "flatten")]
    for h in run.heads:
        assert h.backbone == h.head.split("/")[0] and h.name == h.head.split("/")[1]
        assert h.model_dir == f"heads/{h.backbone}/{h.name}"
        meta = json.loads((run.run_dir / h.model_dir / "model.json").read_text())
        assert meta["backbone"]["name"] == h.backbone
        assert h.total_params == run.backbone_of(h).params + h.head_params
    with open(run.run_dir / "results.csv", newline="") as f:
        assert {r["backbone"] for r in csv.DictReader(f)} == set(BACKBONES)


def test_every_backbone_sees_the_same_splits_and_test_images(run):
    tests = {h.backbone: run.predictions[h.head].pred.shape for h in run.heads}
    assert len(set(tests.values())) == 1
    assert all(s.test.n == len(run.dataset.splits["test"]) for h in run.heads for s in h.seeds)


def test_results_name_the_recommended_pair(run):
    results = json.loads((run.run_dir / "results.json").read_text())
    best = run.head(run.best_head)
    assert results["best"] == {"backbone": best.backbone, "head": best.name}
    assert results["best_head"] == run.verdict.recommended == f"{best.backbone}/{best.name}"
    assert "latency" in run.verdict.rule
    assert f"{best.name} on {best.backbone}" in run.verdict.text
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(results, results_schema())


def test_the_recommended_pair_is_the_cheapest_within_one_standard_error(run):
    v = run.verdict
    floor = v.scores[v.best] - v.se[v.best]
    within = [h for h in run.heads if v.scores[h.head] >= floor - 1e-12]
    cost = pairs.cost_of(run)
    assert run.best_head == min(within, key=cost).head


def test_the_gap_vs_flatten_answer_is_compared_between_backbones_in_its_own_family(run):
    across = [f for f in run.findings if f.family == pairs_family()]
    assert len(across) == 3  # one claim, every two of three backbones
    assert all(f.kind == "claim by backbone" and f.n_tests == 3 for f in across)
    within = {f.family for f in run.findings if f.kind == "accuracy"}
    assert {f"heads on {b}" for b in BACKBONES} <= within


def pairs_family() -> str:
    from headbench.analyses.findings import CLAIMS_ACROSS
    return CLAIMS_ACROSS


def test_each_pair_predicts_from_its_model_folder(run, shapes):
    image = next(Path(shapes).glob("circle/*.png"))
    for h in run.heads[::2]:
        model = hb.load_model(run.run_dir / h.model_dir)
        (row,) = hb.predict(model, [image], topk=1)
        assert row["top"][0]["label"] in run.classes


def test_the_report_draws_the_pareto_fronts(run):
    hb.write_report(run)
    html = (run.run_dir / "report.html").read_text()
    for plot_id in ("pareto-latency", "pareto-params"):
        assert f'<figure id="{plot_id}">' in html


def test_a_pair_the_backbone_does_not_accept_is_skipped_and_listed(shapes, cache, tmp_path,
                                                                   one_thread):
    # at 32 px mobilenet's map is 1×1: avgpool's 2×2 pool does not fit it
    run = hb.compare(shapes, backbone="resnet50,mobilenet", weights="none", input_size="64,32",
                     heads="gap,avgpool", seeds=1, epochs=2, out=tmp_path, cache_dir=cache,
                     report=False, shots="none", cam=0)
    assert [h.head for h in run.heads] == ["resnet50/gap", "resnet50/avgpool", "mobilenet/gap"]
    (skipped,) = run.skipped_pairs
    assert (skipped["backbone"], skipped["head"]) == ("mobilenet", "avgpool")
    assert Run.load(run.run_dir).skipped_pairs == run.skipped_pairs
    # each backbone resolves from its own base size: the sections cannot merge
    sizes = hb.analyze(run.run_dir, sizes="48", cache_dir=cache).analyses["sizes"]
    best = run.selected().backbone
    other = ({"resnet50", "mobilenet"} - {best}).pop()
    assert sizes["base"] == {"resnet50": 64, "mobilenet": 32}[best]
    assert set(sizes["heads"]) == {h.head for h in run.heads if h.backbone == best}
    assert sizes["backbones"][other]["base"] == {"resnet50": 64, "mobilenet": 32}[other]


def test_a_head_no_backbone_accepts_is_one_line(shapes, tmp_path):
    with pytest.raises(HeadbenchError, match="avgpool' fits none of the backbones") as e:
        hb.compare(shapes, backbone="resnet50,mobilenet", weights="none", input_size=32,
                   heads="gap,avgpool", out=tmp_path)
    assert e.value.param == "heads" and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("options, param", [
    (dict(backbone="resnet50,resnet50"), "backbone"),
    (dict(backbone="resnet50,vgg16", weights="none,none,none"), "weights"),
    (dict(backbone="resnet50,vgg16", input_size="64,96,128"), "input_size"),
    (dict(backbone="resnet50,nosuchnet"), "backbone"),
])
def test_bad_backbone_lists_fail_naming_the_option(options, param):
    with pytest.raises(HeadbenchError) as e:
        CompareConfig("x", **options)
    assert e.value.param == param and "\n" not in str(e.value)


def test_a_run_folder_whose_pair_names_no_backbone_of_the_run_is_one_line(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir, copy)
    results = json.loads((copy / "results.json").read_text())
    results["heads"][0]["backbone"] = "vgg19"
    (copy / "results.json").write_text(json.dumps(results))
    with pytest.raises(HeadbenchError, match=r"heads\[0\]\.backbone 'vgg19' is not one of"):
        Run.load(copy)


def test_a_weights_path_with_a_comma_is_refused_in_a_list():
    with pytest.raises(HeadbenchError, match="may not contain a comma") as e:
        CompareConfig("x", backbone="resnet50,vgg16", weights=["none", "/m/a,b.pt"])
    assert e.value.param == "weights"


def test_weights_and_sizes_take_one_value_or_one_per_backbone():
    one = CompareConfig("x", backbone=["resnet50", "vgg16"], weights="none", input_size=64)
    assert one.backbones() == [("resnet50", "none", 64), ("vgg16", "none", 64)]
    each = CompareConfig("x", backbone="resnet50,vgg16", weights="none,hub", input_size="64,96")
    assert each.backbones() == [("resnet50", "none", 64), ("vgg16", "hub", 96)]
    assert CompareConfig.from_dict(each.to_dict()).backbones() == each.backbones()
    single = CompareConfig("x")  # one backbone: options as before
    assert (single.backbone, single.weights, single.several) == ("efficientnet_lite0", "default",
                                                                 False)


def _info(name: str, ms: float, spread: tuple[float, float], params: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, latency_ms_b1=ms, latency_range_ms_b1=list(spread),
                           params=params)


def test_backbones_whose_timed_calls_overlap_tie_on_latency():
    infos = [_info("slow", 30.0, (29, 33), 10), _info("fast", 5.0, (4.8, 5.4), 10),
             _info("fast2", 5.2, (5.0, 5.9), 5), _info("mid", 6.5, (6.0, 7.0), 1)]
    assert pairs.latency_classes(infos) == {"fast": 0, "fast2": 0, "mid": 1, "slow": 2}


def _pair(backbone: str, head: str, total: int, head_params: int) -> SimpleNamespace:
    return SimpleNamespace(head=f"{backbone}/{head}", backbone=backbone, total_params=total,
                           head_params=head_params, head_flops=head_params)


def test_the_cheapest_pair_within_one_se_wins_and_a_clearly_better_slow_one_beats_it():
    run = SimpleNamespace(backbones=[_info("fast", 5.0, (4.8, 5.4), 3_000_000),
                                     _info("slow", 30.0, (29, 33), 25_000_000)])
    heads = [_pair("fast", "gap", 3_003_000, 3000), _pair("slow", "gap", 25_006_000, 6000),
             _pair("slow", "flatten", 25_100_000, 100_000)]
    cost = pairs.cost_of(run)
    se = {h.head: 0.02 for h in heads}
    close = {"fast/gap": 0.90, "slow/gap": 0.91, "slow/flatten": 0.90}
    assert verdict.one_standard_error(heads, close, se, cost) == ("fast/gap", "slow/gap")
    far = {"fast/gap": 0.80, "slow/gap": 0.91, "slow/flatten": 0.90}
    assert verdict.one_standard_error(heads, far, se, cost)[0] == "slow/gap"


def test_the_pareto_front_keeps_only_pairs_nothing_beats():
    points = [("a", 1.0, 0.80), ("b", 2.0, 0.85), ("c", 2.0, 0.70), ("d", 3.0, 0.84),
              ("e", 4.0, 0.90)]
    assert pairs.pareto_front(points) == ["a", "b", "e"]
    assert pairs.pareto_front([("a", 1.0, 0.8), ("twin", 1.0, 0.8)]) == ["a", "twin"]


def test_a_run_of_one_backbone_keeps_its_layout(tmp_path):
    fields = results_schema()["required"]
    assert "backbones" not in fields and "best" not in fields
    assert np.all([f in results_schema()["properties"] for f in ("backbones", "best")])


TWO = dict(backbone="resnet18,mobilenet", weights="none", input_size=64, heads="gap,flatten",
           seeds=1, epochs=3, report=False, shots="none", cam=0)


def _numbers(run: Run) -> list:
    return [(h.head, s.test.accuracy, s.val.accuracy, s.best_epoch) for h in run.heads
            for s in h.seeds]


def test_an_interrupted_run_of_several_backbones_resumes_where_it_stopped(shapes, cache,
                                                                          tmp_path, monkeypatch,
                                                                          one_thread):
    compare_module = importlib.import_module("headbench.compare")  # hb.compare is the function
    whole = hb.compare(shapes, cache_dir=cache, out=tmp_path / "whole", **TWO)
    original, calls = compare_module._train_heads, []

    def stop_at_the_second_backbone(work, *args, **kwargs):
        calls.append(work.backbone.name)
        if len(calls) == 2:  # the first backbone's heads are committed
            raise KeyboardInterrupt
        return original(work, *args, **kwargs)
    monkeypatch.setattr(compare_module, "_train_heads", stop_at_the_second_backbone)
    with pytest.raises(KeyboardInterrupt):
        hb.compare(shapes, cache_dir=cache, out=tmp_path / "cut", **TWO)
    (run_dir,) = (tmp_path / "cut" / "runs").iterdir()
    assert {p.name for p in (run_dir / "heads" / "resnet18").iterdir()} == {"gap", "flatten"}
    monkeypatch.setattr(compare_module, "_train_heads", original)
    fit, trained = compare_module._train.fit_heads, []

    def counting(make, *args, **kwargs):
        trained.extend(make)
        return fit(make, *args, **kwargs)
    monkeypatch.setattr(compare_module._train, "fit_heads", counting)
    resumed = hb.compare(shapes, cache_dir=cache, out=tmp_path / "cut", **TWO)
    assert resumed.run_dir == run_dir and sorted(trained) == ["mobilenet/flatten",
                                                              "mobilenet/gap"]
    assert _numbers(resumed) == _numbers(whole)
    assert resumed.best == whole.best


def test_augmented_views_and_fine_tuning_work_per_pair(shapes, cache, tmp_path, one_thread):
    run = hb.compare(shapes, cache_dir=cache, out=tmp_path,
                     **dict(TWO, heads="gap", epochs=2, aug_views=1, finetune=True,
                            finetune_epochs=1, selection="val"))
    labels = [h.head for h in run.heads]
    assert {"resnet18/gap", "resnet18/gap+aug1", "mobilenet/gap", "mobilenet/gap+aug1"} <= \
        set(labels)
    (tuned,) = [h for h in run.heads if h.finetuned]
    base = run.head(tuned.variant.of)
    assert tuned.backbone == base.backbone and tuned.head == f"{base.head}+ft"
    assert tuned.model_dir == f"heads/{tuned.head}"
    model = hb.load_model(run.run_dir / tuned.model_dir)
    assert model.backbone.name == tuned.backbone
    assert Run.load(run.run_dir).best == run.best


def test_the_analyses_cover_every_pair(run, cache):
    # compare ran the default analyses (small-data curve, CAM) on every backbone's heads
    for name in ("shots", "cam"):
        assert set(run.analyses[name]["heads"]) == {h.head for h in run.heads}
        assert "backbones" not in run.analyses[name]
    again = hb.analyze(run.run_dir, cam=1, cache_dir=cache)
    for label, cams in again.analyses["cam"]["heads"].items():
        assert cams["files"] and all((again.run_dir / f).is_file() and
                                     f.startswith(f"analyses/cam/{label}/") for f in cams["files"])
    html = (again.run_dir / "report.html").read_text()
    assert html.count('<figure class="cam">') >= len(again.heads)
