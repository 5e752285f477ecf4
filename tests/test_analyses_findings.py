"""Findings: what the numbers of a typed run support, never more."""
from __future__ import annotations

import numpy as np

from headbench.analyses.findings import PairedDiff, findings
from headbench.analyses.resolution import not_applicable
from headbench.config import CompareConfig
from headbench.heads import HeadSpec
from headbench.run import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics,
                           Predictions, Run, SeedResult, SplitItems)
from headbench.train import TrainConfig


# --------------------------------------------------------------------------------------------
# builders of typed runs

def _metrics(accuracy: float, nll: float = 0.5) -> Metrics:
    return Metrics(accuracy=accuracy, top5=None, macro_f1=accuracy, nll=nll, ece=0.0, n=100)


def _head(name: str, test: list[float], train: list[float], params: int,
          val: list[float] | None = None) -> HeadResult:
    val = val or test
    seeds = [SeedResult(seed=s, best_epoch=1, epochs_run=1, train_time_s=0.0,
                        train=_metrics(tr), val=_metrics(va), test=_metrics(te), history=[])
             for s, (tr, va, te) in enumerate(zip(train, val, test))]
    spec = HeadSpec(name)
    return HeadResult(head=spec.label, spec=spec, any_size=spec.info.any_size,
                      exact_cam=spec.info.exact_cam, head_params=params, total_params=params,
                      head_flops=0, total_flops=0, weight_decay=1e-3, wd_sweep={},
                      best_seed=0, model_dir=f"heads/{spec.label}", model_size_bytes=None,
                      latency_ms_b1=0.0, throughput_b32=0.0, architecture="",
                      seeds=seeds, summary=HeadSummary.of(seeds))


def _run(heads: list[HeadResult], correct: dict[str, list[bool]] | None = None,
         best_head: str | None = "gap") -> Run:
    """A run of `heads` whose test predictions are right where `correct[head]` says, for
    every seed (all test labels are class 0)."""
    n = len(next(iter(correct.values()))) if correct else 1
    test = SplitItems([f"a/{i}.png" for i in range(n)], np.zeros(n, dtype=np.int64), ["0"] * n)
    empty = SplitItems([], np.zeros(0, dtype=np.int64), [])
    dataset = DatasetInfo(root="/nonexistent", name="x", layout="class folders",
                          classes=["a", "b"], split_description="", counts={}, leakage=[],
                          skipped=[], splits={"train": empty, "val": empty, "test": test})
    backbone = BackboneInfo("resnet18", "resnet18", "none", None, {}, [512, 2, 2], 0, 0, 0.0, 0.0)
    run = Run(options=CompareConfig("x"), dataset=dataset, backbone=backbone, precision="fp32",
              device="cpu", train_config=TrainConfig(), machine={}, heads=heads,
              best_head=best_head)
    for label, ok in (correct or {}).items():
        seeds = [s.seed for s in run.head(label).seeds]
        pred = np.tile(np.where(ok, 0, 1), (len(seeds), 1))
        ones = np.ones(pred.shape)
        run.predictions[label] = Predictions(seeds, pred, ones, ones, ones)
    return run


def _gap_flatten(gap: list[float], flatten: list[float]) -> list[HeadResult]:
    return [_head("gap", gap, [0.95] * len(gap), 20490),
            _head("flatten", flatten, [1.0] * len(flatten), 1003530)]


def _accuracy_finding(items):
    return next(f for f in items if f.kind == "accuracy")


# --------------------------------------------------------------------------------------------
# accuracy

def test_findings_never_call_overlapping_seeds_a_win():
    f = _accuracy_finding(findings(_run(_gap_flatten([0.80, 0.86, 0.83], [0.82, 0.81, 0.84]))))
    assert (f.a, f.b) == ("gap", "flatten")
    assert f.lo < 0 < f.hi
    assert not f.significant
    assert "no significant difference" in f.text
    assert "over 3 seeds" in f.text


def test_findings_mark_a_clear_difference_significant():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
               {"gap": [True] * 90 + [False] * 10, "flatten": [True] * 70 + [False] * 30})
    f = _accuracy_finding(findings(run))
    assert f.significant and f.lo > 0
    assert f.bootstrap_ci[0] > 0
    assert "gap is more accurate" in f.text
    assert "49× fewer head parameters" in f.text
    assert "flatten's train − test gap" in f.text
    assert "paired bootstrap over 100 test images" in f.text


def test_findings_need_every_interval_to_exclude_zero():
    # Seeds differ clearly, but the test images show no difference: not significant.
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
               {"gap": [True, False] * 20, "flatten": [True, False] * 20})
    f = _accuracy_finding(findings(run))
    assert f.seed_ci[0] > 0 and f.bootstrap_ci[0] <= 0 <= f.bootstrap_ci[1]
    assert not f.significant


def test_findings_with_one_seed_say_so_and_use_the_bootstrap_only():
    run = _run(_gap_flatten([0.90], [0.60]),
               {"gap": [True] * 90 + [False] * 10, "flatten": [True] * 60 + [False] * 40})
    f = _accuracy_finding(findings(run))
    assert "no interval over seeds with 1 seed" in f.text
    assert "bootstrap only" in f.text
    assert f.significant and f.seed_ci is None


def test_findings_with_one_seed_and_no_predictions_claim_nothing():
    f = _accuracy_finding(findings(_run(_gap_flatten([0.90], [0.60]))))
    assert not f.significant
    assert "no difference is claimed" in f.text


def test_findings_compare_every_head_with_the_selected_one():
    heads = _gap_flatten([0.80, 0.81, 0.82], [0.70, 0.72, 0.71])
    heads.append(_head("gmp", [0.85, 0.86, 0.84], [0.9] * 3, 20490))
    out = [f for f in findings(_run(heads, best_head="gmp")) if f.kind == "accuracy"]
    # gmp (selected) against gap and flatten, then gap against flatten: the forum question
    assert [(f.a, f.b) for f in out] == [("gmp", "gap"), ("gmp", "flatten"), ("gap", "flatten")]


def test_findings_without_best_head_select_on_val_not_test():
    # flatten is better on test, gap on val: the selected head (the reference of every
    # accuracy finding) is gap.
    heads = [_head("gap", [0.70, 0.71, 0.72], [0.9] * 3, 20490, val=[0.90, 0.91, 0.92]),
             _head("flatten", [0.90, 0.91, 0.92], [1.0] * 3, 1003530, val=[0.70, 0.72, 0.71])]
    f = _accuracy_finding(findings(_run(heads, best_head=None)))
    assert (f.a, f.b) == ("gap", "flatten")


def test_findings_of_a_run_without_trained_heads_are_empty():
    assert findings(_run([])) == []


# --------------------------------------------------------------------------------------------
# the analyses sections

def _ci(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "lo": None, "hi": None, "values": values}


def test_findings_compare_gap_and_flatten_on_the_analyses():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81]))
    run.analyses = {
        "shifts": {"shifts": [0, 16], "seed_ids": [0, 1, 2], "heads": {
            "gap": {"accuracy": {"16": _ci([0.9, 0.9, 0.9])},
                    "consistency": {"16": _ci([0.95, 0.96, 0.97])}},
            "flatten": {"accuracy": {"16": _ci([0.7, 0.7, 0.7])},
                        "consistency": {"16": _ci([0.70, 0.75, 0.72])}}}},
        "shots": {"shots": ["1", "all"], "seed_ids": [0, 1, 2], "heads": {
            h: {"1": {"test_accuracy": _ci([0.5, 0.52, 0.5]), "overfit_gap": _ci([0.5, 0.5, 0.5])}}
            for h in ("gap", "flatten")}},
        "sizes": {"sizes": [32, 64], "base": 64, "seed_ids": [0, 1, 2], "heads": {
            "gap": {"32": _ci([0.6, 0.62, 0.61]), "64": _ci([0.9, 0.91, 0.92])},
            "flatten": {"32": not_applicable((2, 2)), "64": _ci([0.8, 0.82, 0.81])}}}}
    out = findings(run)
    kinds = {f.kind: f for f in out}
    assert kinds["translation"].significant
    assert "more consistent" in kinds["translation"].text
    assert not kinds["small_data"].significant
    assert "no significant difference" in kinds["small_data"].text
    assert "1 image per class" in kinds["small_data"].text
    assert kinds["overfitting"].a == "flatten"
    texts = [f.text for f in out if f.kind == "resolution"]
    assert any("flatten cannot run at 32 px (built for a 2×2 map)" in t for t in texts)
    assert any(t.startswith("resolution: gap at 32 px") for t in texts)


def test_findings_take_the_best_any_size_head_as_reference_without_gap():
    heads = [_head("gmp", [0.90, 0.91, 0.92], [0.95] * 3, 20490),
             _head("gem", [0.85, 0.86, 0.84], [0.95] * 3, 20491, val=[0.5, 0.5, 0.5]),
             _head("flatten", [0.70, 0.72, 0.71], [1.0] * 3, 1003530)]
    overfit = [f for f in findings(_run(heads, best_head="gmp")) if f.kind == "overfitting"]
    assert [(f.a, f.b) for f in overfit] == [("flatten", "gmp")]


def test_zero_width_seed_interval_alone_is_not_significant():
    assert not PairedDiff(0.1, 2, t=(0.1, 0.1)).significant
    assert PairedDiff(0.1, 2, t=(0.1, 0.1), boot=(0.02, 0.2), n_images=50).significant
