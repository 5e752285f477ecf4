"""The analyses on a real (tiny) run: the run context, every built-in analysis, the registry and
`analyze` on a run folder.

The run is built here without compare: resnet18 (random weights) at 64 px on generated shapes,
2 classes, gap + flatten heads with 2 random-init seeds each, saved with `Run.save` and the
heads' per-seed weights.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headbench.analyses import (RunContext, analysis_info, list_analyses, register_analysis,
                                run_analyses, unregister_analysis)
from headbench.analyses.cam import cam_analysis
from headbench.analyses.resolution import resolution_analysis
from headbench.analyses.shots import shots_analysis, stratified_subset
from headbench.analyses.translation import shift_views, translation_analysis
from headbench.analyze import analyze
from headbench.config import CompareConfig
from headbench.errors import HeadbenchError
from headbench.evaluate import classification_metrics
from headbench.export import save_head_weights
from headbench.heads import HeadSpec, create_head
from headbench.results import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics,
                               Predictions, SeedResult, SplitItems)
from headbench.run import Run
from headbench.train import TrainConfig, predict_logits, seeded

CLASSES = ["circle", "square"]
SEEDS = [0, 1]
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# a tiny run, in memory and on disk

def _splits(root: Path) -> dict[str, SplitItems]:
    from headbench.data import file_digest
    out = {}
    for role, part in (("train", slice(0, 3)), ("val", slice(3, 4)), ("test", slice(4, 6))):
        paths = [p for c in CLASSES for p in sorted((root / c).glob("*.png"))[part]]
        out[role] = SplitItems([p.relative_to(root).as_posix() for p in paths],
                               np.array([CLASSES.index(p.parent.name) for p in paths]),
                               [file_digest(p) for p in paths])
    return out


def _head_result(label: str, states: dict, features: dict, splits: dict) -> HeadResult:
    """The HeadResult of random-init head `label`, its metrics measured on the features."""
    seeds = []
    for seed, state in states.items():
        head = create_head(label, 512, 2, (2, 2))
        head.load_state_dict(state)
        logits = {role: predict_logits(head, features[role], device=CPU) for role in splits}
        m = {role: Metrics(**classification_metrics(logits[role], splits[role].labels, 2))
             for role in splits}
        seeds.append(SeedResult(seed=seed, best_epoch=1, epochs_run=1, train_time_s=0.0,
                                history=[], **m))
    spec = HeadSpec(label)
    return HeadResult(head=label, spec=spec, any_size=spec.info.any_size,
                      exact_cam=spec.info.exact_cam, head_params=0, total_params=0, head_flops=0,
                      total_flops=0, weight_decay=1e-3, wd_sweep={"0.001": 0.7}, best_seed=0,
                      model_dir=f"heads/{label}", model_size_bytes=None, latency_ms_b1=0.0,
                      throughput_b32=0.0, architecture="", seeds=seeds,
                      summary=HeadSummary.of(seeds))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(run saved in run_dir, its backbone, head states, base features, cache folder)."""
    from headbench.backbones import create_backbone
    from headbench.features import extract
    from headbench.synthetic import make_shapes_dataset
    tmp = tmp_path_factory.mktemp("analyses")
    root = make_shapes_dataset(tmp / "shapes", classes=CLASSES, per_class=6, image_size=80)
    cache = tmp / "cache"
    backbone = create_backbone("resnet18", weights="none", input_size=64)
    splits = _splits(root)
    features = {role: extract(backbone, [root / p for p in s.paths], s.digests, precision="fp32",
                              cache_dir=cache, device=CPU).take(np.arange(len(s)))
                for role, s in splits.items()}
    states = {}
    for label in ("gap", "flatten"):
        states[label] = {}
        for seed in SEEDS:
            with seeded(seed):
                states[label][seed] = create_head(label, 512, 2, (2, 2)).state_dict()
    dataset = DatasetInfo(root=str(root), name="shapes", layout="class folders", classes=CLASSES,
                          split_description="first 3 / 1 / 2 per class", counts={}, leakage=[],
                          skipped=[], splits=splits)
    info = BackboneInfo(backbone.name, backbone.timm_name, backbone.weights,
                        backbone.weights_checksum, backbone.data_config,
                        list(features["test"].shape[1:]), 0, 0, 0.0, 0.0)
    run = Run(options=CompareConfig(str(root), backbone="resnet18", weights="none",
                                    heads="gap,flatten", seeds=2, cache_dir=str(cache)),
              dataset=dataset, backbone=info, precision="fp32", device="cpu",
              train_config=TrainConfig(epochs=2, batch_size=4, weight_decays=(1e-3,)),
              machine={}, heads=[_head_result(label, states[label], features, splits)
                                 for label in states], best_head="gap")
    for label, per_seed in states.items():
        head = create_head(label, 512, 2, (2, 2))
        logits = []
        for seed, state in per_seed.items():
            head.load_state_dict(state)
            logits.append(predict_logits(head, features["test"], device=CPU))
        run.predictions[label] = Predictions.of_logits(SEEDS, logits, splits["test"].labels)
    run.save(tmp / "run")
    for label, per_seed in states.items():
        for seed, state in per_seed.items():
            save_head_weights(state, run.model_dir(label) / f"seed{seed}.safetensors")
    return run, backbone, states, features, cache


@pytest.fixture(scope="module")
def ctx(tiny):
    """The context compare would hand over (features in memory, no disk reads)."""
    run, backbone, states, features, cache = tiny
    return RunContext(run=run, backbone=backbone, states=states, features=dict(features),
                      cache_dir=cache, device=CPU)


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    """A copy of the tiny run folder that a test may change."""
    return Path(shutil.copytree(tiny[0].run_dir, tmp_path / "run"))


# --------------------------------------------------------------------------------------------
# the run context

def test_context_from_run_dir_rebuilds_backbone_and_every_seed(tiny):
    run, backbone, states, features, cache = tiny
    loaded = RunContext.from_run_dir(run.run_dir)
    assert loaded.cache_dir == cache  # the run's, by default
    assert loaded.precision == "fp32" and loaded.verify_digests
    assert loaded.backbone.weights_checksum == backbone.weights_checksum
    assert loaded.backbone.data_config == backbone.data_config
    assert loaded.feature_shape == (512, 2, 2) and loaded.input_size == 64
    assert loaded.seeds == SEEDS and loaded.classes == CLASSES
    for label in states:
        assert set(loaded.states[label]) == set(SEEDS)
        for seed in SEEDS:
            for key, value in states[label][seed].items():
                torch.testing.assert_close(loaded.states[label][seed][key], value)
    # base features come back from the cache, after the images' digests were checked
    np.testing.assert_array_equal(loaded.view_features("test"), features["test"])
    assert loaded.paths("test")[0].is_file()


def test_context_from_run_dir_refuses_other_backbone_weights(run_copy):
    run = Run.load(run_copy)
    run.backbone.weights_checksum = "0" * 16
    run.save_results()
    with pytest.raises(HeadbenchError, match="weights source changed"):
        RunContext.from_run_dir(run_copy)


def test_context_from_run_dir_names_a_missing_seed_file(run_copy):
    (run_copy / "heads" / "flatten" / "seed1.safetensors").unlink()
    with pytest.raises(HeadbenchError, match=r"seed1\.safetensors' is missing"):
        RunContext.from_run_dir(run_copy)


def test_context_refuses_a_changed_image_before_extracting(run_copy, tiny):
    loaded = RunContext.from_run_dir(run_copy, cache_dir=tiny[4])
    changed = loaded.paths("test")[0]
    backup = changed.read_bytes()
    try:
        Image.new("RGB", (80, 80)).save(changed)
        with pytest.raises(HeadbenchError, match="missing or changed since the run"):
            loaded.view_features("test")
    finally:
        changed.write_bytes(backup)


def test_context_make_head_loads_the_seed_weights(ctx, tiny):
    states = tiny[2]
    head = ctx.make_head("flatten", 1)
    assert head.fixed_size and not head.training
    torch.testing.assert_close(head.fc.weight, states["flatten"][1]["fc.weight"])
    assert set(ctx.models()) == {(h, s) for h in ("gap", "flatten") for s in SEEDS}


# --------------------------------------------------------------------------------------------
# the built-in analyses, on the in-memory context

def test_resolution_marks_flatten_not_applicable_at_other_sizes(ctx):
    out = resolution_analysis(ctx, [32, 96])
    assert out["sizes"] == [32, 64, 96] and out["base"] == 64
    assert out["map_sizes"] == {"32": [1, 1], "64": [2, 2], "96": [3, 3]}
    assert out["heads"]["flatten"]["96"] == {"not_applicable": "built for a 2×2 map"}
    assert out["heads"]["flatten"]["32"] == {"not_applicable": "built for a 2×2 map"}
    assert 0 <= out["heads"]["flatten"]["64"]["mean"] <= 1
    for size in ("32", "64", "96"):
        assert len(out["heads"]["gap"][size]["values"]) == 2
    # at the base size every head scores what the run measured
    run_acc = {h.head: h.summary.test_accuracy.values for h in ctx.heads}
    assert out["heads"]["gap"]["64"]["values"] == pytest.approx(run_acc["gap"])


def test_translation_analysis_reports_curves_for_every_head(ctx):
    out = translation_analysis(ctx, [4, 0])
    assert out["shifts"] == [0, 4] and out["margin"] == 4
    assert out["seed_ids"] == SEEDS
    for name in ("gap", "flatten"):
        curves = out["heads"][name]
        assert curves["consistency"]["0"]["mean"] == 1.0
        assert 0 <= curves["consistency"]["4"]["mean"] <= 1
        assert set(curves["accuracy"]) == {"0", "4"}
    # Shifted views are cached under their own keys: a second run extracts nothing.
    from headbench.features import extract
    view = shift_views([0, 4])[(4, (1, 0))]
    test = ctx.items("test")
    fs = extract(ctx.backbone, ctx.paths("test"), test.digests, view=view, precision="fp32",
                 cache_dir=ctx.cache_dir, device="cpu")
    assert fs.n_extracted == 0


def test_stratified_subset_takes_k_per_class_and_differs_per_seed():
    labels = np.repeat([0, 1, 2], [10, 10, 3])
    idx0, short = stratified_subset(labels, 5, seed=0)
    assert np.bincount(labels[idx0]).tolist() == [5, 5, 3]
    assert short == [2]
    idx1, _ = stratified_subset(labels, 5, seed=1)
    assert not np.array_equal(idx0, idx1)
    one, _ = stratified_subset(labels, 1, seed=0)
    assert set(one) <= set(idx0)  # nested for one seed
    assert len(stratified_subset(labels, "all", seed=0)[0]) == len(labels)


def test_shots_analysis_trains_on_k_per_class(ctx):
    out = shots_analysis(ctx, [1, "all"])
    assert out["shots"] == ["1", "all"] and out["n_train"] == {"1": 2, "all": 6}
    cell = out["heads"]["gap"]["1"]
    assert len(cell["test_accuracy"]["values"]) == 2
    np.testing.assert_allclose(cell["overfit_gap"]["mean"],
                               cell["train_accuracy"]["mean"] - cell["test_accuracy"]["mean"])
    # 'all' reuses the run's own heads: the run's test accuracies, seed by seed
    run_acc = ctx.run.head("flatten").summary.test_accuracy.values
    assert out["heads"]["flatten"]["all"]["test_accuracy"]["values"] == pytest.approx(run_acc)


def test_cam_analysis_writes_named_overlays(ctx):
    out = cam_analysis(ctx, 1)
    assert out["heads"]["gap"]["method"] == "exact CAM"
    assert out["heads"]["flatten"]["method"] == "Grad-CAM"
    assert out["heads"]["gap"]["seed"] == 0  # the best seed
    files = out["heads"]["gap"]["files"]
    assert 1 <= len(files) <= 2
    for rel in files:
        name = Path(rel).name
        assert name.startswith(("ok_", "wrong_")) and "_true-" in name and "_pred-" in name
        assert Image.open(ctx.run.run_dir / rel).size == (64, 64)


def test_cam_needs_at_least_one_image(ctx):
    with pytest.raises(HeadbenchError, match="cam must be at least 1") as e:
        cam_analysis(ctx, 0)
    assert e.value.param == "cam"


# --------------------------------------------------------------------------------------------
# the registry: an analysis added inside a test, without editing headbench

def _noise_std(value) -> float:
    try:
        std = float(value)
    except (TypeError, ValueError):
        std = float("nan")
    if not std >= 0:
        raise HeadbenchError(f"noise must be a standard deviation ≥ 0, got {value}",
                             param="noise")
    return std


def _noise_analysis(ctx: RunContext, std: float) -> dict:
    """Accuracy of every head's best seed on test features plus gaussian noise of `std`."""
    X = torch.as_tensor(np.asarray(ctx.view_features("test"), dtype=np.float32))
    noisy = X + std * torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    y = ctx.labels("test")
    heads = {}
    for h in ctx.heads:
        pred = predict_logits(ctx.make_head(h.head, h.best_seed), noisy, device=CPU).argmax(1)
        heads[h.head] = {"seed": h.best_seed, "accuracy": float(np.mean(pred == y))}
    return {"std": std, "heads": heads}


@pytest.fixture
def noise():
    entry = register_analysis("noise", _noise_analysis, title="accuracy under feature noise",
                              parse=_noise_std)
    assert analysis_info("noise") is entry
    yield entry
    unregister_analysis("noise")


def test_registered_analysis_runs_through_run_analyses(ctx, noise):
    assert [a.name for a in list_analyses()] == ["shifts", "sizes", "shots", "cam", "noise"]
    assert noise.title == "accuracy under feature noise"
    out = run_analyses(ctx, {"noise": 1e-12})
    assert set(out) == {"noise"}
    section = out["noise"]
    assert section["std"] == 1e-12 and section["time_s"] >= 0
    assert section["title"] == "accuracy under feature noise"  # the report needs no registry
    assert set(section["heads"]) == {"gap", "flatten"}
    for h in ctx.heads:  # noise this small changes no prediction: the best seed's accuracy
        assert section["heads"][h.head] == {
            "seed": h.best_seed, "accuracy": pytest.approx(h.seed_metric("test")[h.best_seed])}
    assert run_analyses(ctx, {"noise": 0.0}) == {}  # a false option is not asked for


def test_run_analyses_runs_built_ins_in_registry_order(ctx):
    out = run_analyses(ctx, {"cam": 1, "sizes": (96,)})
    assert list(out) == ["sizes", "cam"]
    assert all(out[name]["time_s"] >= 0 for name in out)


def test_run_analyses_names_an_unknown_analysis(ctx):
    with pytest.raises(HeadbenchError, match="unknown analysis 'shift': did you mean shifts"):
        run_analyses(ctx, {"shift": (0, 8)})


@pytest.fixture
def report_calls(monkeypatch):
    """`analyze` ends with report.write_report(run_dir): record the calls instead."""
    import headbench.report
    calls = []
    monkeypatch.setattr(headbench.report, "write_report", calls.append)
    return calls


def test_analyze_adds_sections_keeps_earlier_ones_and_rewrites_findings(run_copy, tiny, noise,
                                                                      report_calls):
    run = analyze(run_copy, sizes=[96], cache_dir=tiny[4], quiet=True)
    assert [Path(r.run_dir) for r in report_calls] == [run_copy]
    assert run.run_dir == run_copy
    assert run.analyses["sizes"]["heads"]["flatten"]["96"] == {
        "not_applicable": "built for a 2×2 map"}
    analyze(run_copy, noise="0.5", shifts="4", quiet=True)  # the registered one, by keyword
    on_disk = Run.load(run_copy)
    assert set(on_disk.analyses) == {"sizes", "shifts", "noise"}  # earlier analyses are kept
    assert on_disk.analyses["noise"]["std"] == 0.5
    kinds = {f.kind for f in on_disk.findings}
    assert {"accuracy", "overfitting", "translation", "resolution"} <= kinds


def test_analyze_runs_a_registered_analysis_alone(run_copy, tiny, noise, report_calls):
    run = analyze(run_copy, noise=0.5, quiet=True)
    assert set(run.analyses) == {"noise"}
    assert Run.load(run_copy).analyses["noise"]["heads"].keys() == {"gap", "flatten"}


@pytest.mark.parametrize("options,param,message", [
    ({}, "shifts", "nothing to analyse"),
    ({"shifts": "-8"}, "shifts", "shifts takes comma-separated whole numbers from 0 to 2048"),
    ({"sizes": "8"}, "sizes", "sizes takes comma-separated whole numbers from 32 to 2048"),
    ({"shots": "0,five"}, "shots", "shots must be images per class"),
    ({"cam": -1}, "cam", "cam must be a whole number ≥ 0"),
    ({"cam": 1, "precision": "fp8"}, "precision", "unknown precision 'fp8'"),
    ({"shift": 8}, "shift", "unknown analysis 'shift': did you mean shifts"),
])
def test_analyze_checks_options_before_opening_the_run(tmp_path, options, param, message):
    with pytest.raises(HeadbenchError, match=message) as e:
        analyze(tmp_path / "no-such-run", **options)
    assert e.value.param == param


def test_analysis_options_are_sorted_and_distinct():
    from headbench.config import parse_shifts, parse_shots, parse_sizes
    assert parse_shifts("16,8,8") == (0, 8, 16)
    assert parse_sizes([288, 160]) == (160, 288)
    assert parse_shots("all,25,1") == (1, 25, "all")


def test_analyze_checks_options_of_registered_analyses_first(tmp_path, noise):
    with pytest.raises(HeadbenchError, match="noise must be a standard deviation") as e:
        analyze(tmp_path / "no-such-run", noise=-1)
    assert e.value.param == "noise"


def test_analyze_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(HeadbenchError, match="not a headbench run folder"):
        analyze(tmp_path, cam=1)


# --------------------------------------------------------------------------------------------
# end to end: compare with analyses, then analyze on the run folder

def test_compare_and_analyze_write_the_analyses_sections(tmp_path):
    from headbench.compare import compare
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square"), per_class=10,
                               image_size=72)
    run = compare(data, backbone="resnet18", weights="none", input_size=64,
                  heads=["gap", "flatten"], seeds=2, epochs=2, weight_decays=(1e-3,),
                  cache_dir=tmp_path / "cache", out=tmp_path, shifts=[0, 8], shots=[1],
                  cam=1, report=False)
    analyses = Run.load(run.run_dir).analyses
    assert set(analyses) == {"shifts", "shots", "cam"}
    assert set(analyses["shifts"]["heads"]["flatten"]["consistency"]) == {"0", "8"}
    assert analyses["shots"]["heads"]["gap"]["1"]["test_accuracy"]["mean"] >= 0
    for rel in analyses["cam"]["heads"]["gap"]["files"]:
        assert (run.run_dir / rel).is_file()
    assert any(f.kind == "accuracy" for f in run.findings)

    updated = analyze(run.run_dir, sizes=[96], cache_dir=tmp_path / "cache", quiet=True)
    on_disk = Run.load(run.run_dir)
    assert on_disk.analyses["sizes"]["heads"]["flatten"]["96"] == {
        "not_applicable": "built for a 2×2 map"}
    assert "shifts" in on_disk.analyses  # earlier analyses are kept
    assert updated.findings == on_disk.findings
    assert (run.run_dir / "report.html").is_file()
