"""Findings: what the numbers of a typed run support, never more."""
from __future__ import annotations

import numpy as np
import pytest

from headbench.analyses.findings import PairedDiff, findings, holm_correct, paired_difference
from headbench.analyses.resolution import not_applicable
from headbench.config import CompareConfig
from headbench.heads import HeadSpec
from headbench.results import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics,
                               Predictions, SeedResult, SplitItems)
from headbench.run import Run
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


def _run(heads: list[HeadResult], correct: dict | None = None,
         best_head: str | None = "gap") -> Run:
    """A run of `heads` whose test predictions are right where `correct[head]` says: (N,) for
    every seed, or (seeds, N) (all test labels are class 0)."""
    n = np.shape(next(iter(correct.values())))[-1] if correct else 1
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
        pred = np.broadcast_to(np.where(ok, 0, 1), (len(seeds), n))
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
    run = _run(_gap_flatten([0.80, 0.86, 0.83], [0.82, 0.81, 0.84]),
               {"gap": [True, False] * 20, "flatten": [False, True] * 20})
    f = _accuracy_finding(findings(run))
    assert (f.a, f.b) == ("gap", "flatten")
    assert f.lo < 0 < f.hi
    assert not f.significant and f.p_adjusted > 0.05
    assert "no significant difference after the Holm correction" in f.text
    assert "test accuracy 83.0 % vs 82.3 %" in f.text  # % like the table
    assert f.seed_ci is not None and "seeds" not in f.text  # one procedure in the line


def test_findings_without_per_image_values_are_not_tested():
    # Seeds alone differ clearly, but the run has no test predictions: nothing is claimed.
    f = _accuracy_finding(findings(_run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]))))
    assert f.seed_ci[0] > 0
    assert not f.significant and f.p_value is None and f.p_adjusted is None and f.test is None
    assert "95 % interval over 3 seeds [+17.5, +22.5] pp (described, not tested)" in f.text
    assert "no difference is claimed" in f.text


def test_findings_mark_a_clear_difference_significant():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
               {"gap": [True] * 90 + [False] * 10, "flatten": [True] * 70 + [False] * 30})
    f = _accuracy_finding(findings(run))
    assert f.significant and f.lo > 0 and (f.lo, f.hi) == tuple(f.image_ci)
    # 20 discordant images, all for gap: no random sign pattern is as extreme
    assert f.test == "paired sign-flip test"
    assert f.p_value == pytest.approx(1 / 20001) and f.p_adjusted == f.p_value
    assert "gap is more accurate" in f.text
    assert f.text.startswith("gap vs flatten with 49× fewer head parameters: test accuracy "
                             "91.0 % vs 71.0 %, difference +20.0 pp, 95 % interval [")
    assert ("p < 0.001 (paired sign-flip test over 100 test images, unadjusted); Holm p < 0.001 "
            "over the 1 comparison of the heads family") in f.text
    assert f.family == "heads" and f.n_tests == 1 and "\n" not in f.text


def test_findings_test_per_image_not_over_seeds():
    # Seeds differ clearly, but the test images show no difference: not significant.
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
               {"gap": [True, False] * 20, "flatten": [True, False] * 20})
    f = _accuracy_finding(findings(run))
    assert f.seed_ci[0] > 0 and f.image_ci[0] <= 0 <= f.image_ci[1]
    assert f.p_value == 1.0
    assert not f.significant


def test_findings_with_one_seed_are_tested_over_images():
    run = _run(_gap_flatten([0.90], [0.60]),
               {"gap": [True] * 90 + [False] * 10, "flatten": [True] * 60 + [False] * 40})
    f = _accuracy_finding(findings(run))
    assert "paired sign-flip test over 100 test images" in f.text
    assert f.significant and f.seed_ci is None


def test_findings_with_several_seeds_use_the_sign_flip_test_on_averaged_correctness():
    gap = np.array([[True] * 90 + [False] * 10, [True] * 80 + [False] * 20])
    flatten = np.array([[True] * 60 + [False] * 40, [False] * 40 + [True] * 60])
    run = _run(_gap_flatten([0.90, 0.80], [0.60, 0.60]), {"gap": gap, "flatten": flatten})
    f = _accuracy_finding(findings(run))
    assert f.test == "paired sign-flip test"
    assert f.image_ci[0] > 0 and f.significant
    assert f.diff == pytest.approx(0.25)


def test_findings_with_one_seed_and_no_predictions_claim_nothing():
    f = _accuracy_finding(findings(_run(_gap_flatten([0.90], [0.60]))))
    assert not f.significant
    assert "(1 seed, no per-image values: not tested)" in f.text
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


def _shifts_section(zhang: bool = True, per_image: bool = True) -> dict:
    """gap consistent under shifts on every image, flatten on 75% of pairs (100 images)."""
    def head(per_seed: list[float], images: list[float]) -> dict:
        out = {"accuracy": {"16": _ci([0.9, 0.9, 0.9])}, "consistency": {"16": _ci(per_seed)}}
        if zhang:
            out["zhang_consistency"] = _ci(per_seed)
        if per_image:
            out["per_image"] = {"consistency": {"16": images}}
            if zhang:
                out["per_image"]["zhang_consistency"] = images
        return out
    section = {"shifts": [0, 16], "margin": 16, "seed_ids": [0, 1, 2], "heads": {
        "gap": head([1.0, 1.0, 1.0], [1.0] * 100),
        "flatten": head([0.70, 0.75, 0.80], [1.0, 0.9, 0.6, 0.5] * 25)}}
    return section


def test_findings_compare_gap_and_flatten_on_the_analyses():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81]))
    small = {"test_accuracy": _ci([0.5, 0.52, 0.5]), "overfit_gap": _ci([0.5, 0.5, 0.5]),
             "per_image": {"test_accuracy": [1.0, 0.0] * 50}}
    run.analyses = {
        "shifts": _shifts_section(),
        "shots": {"shots": ["1", "all"], "seed_ids": [0, 1, 2],
                  "heads": {h: {"1": small} for h in ("gap", "flatten")}},
        "sizes": {"sizes": [32, 64], "base": 64, "seed_ids": [0, 1, 2], "heads": {
            "gap": {"32": _ci([0.6, 0.62, 0.61]), "64": _ci([0.9, 0.91, 0.92])},
            "flatten": {"32": not_applicable((2, 2)), "64": _ci([0.8, 0.82, 0.81])}}}}
    out = findings(run)
    kinds = {f.kind: f for f in out}
    translation = kinds["translation"]
    assert translation.significant and translation.test == "paired sign-flip test"
    assert "Zhang consistency within ±16 px gap 100.0 % vs flatten 75.0 %" in translation.text
    assert "at 16 px from unshifted 100.0 % vs 75.0 %" in translation.text
    assert "gap is more consistent under shifts" in translation.text
    # two tests (translation, small data), each in its analysis's own family; the rest untested
    assert "Holm p < 0.001 over the 1 comparison of the shifts family" in translation.text
    assert kinds["small_data"].family == "shots" and kinds["small_data"].n_tests == 1
    assert sorted(f.kind for f in out if f.p_value is not None) == ["small_data", "translation"]
    assert not kinds["small_data"].significant and kinds["small_data"].p_value == 1.0
    assert "no significant difference" in kinds["small_data"].text
    assert "1 image per class" in kinds["small_data"].text
    assert kinds["overfitting"].a == "flatten"
    assert "(described, not tested): a difference of two splits" in kinds["overfitting"].text
    assert kinds["overfitting"].p_value is None and kinds["overfitting"].family is None
    texts = [f.text for f in out if f.kind == "resolution"]
    assert any("flatten cannot run at 32 px (built for a 2×2 map)" in t for t in texts)
    change = next(t for t in texts if t.startswith("resolution: gap at 32 px"))
    assert "not tested" in change and "no change is claimed" in change


def test_translation_findings_of_older_sections_use_the_curve():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81]))
    run.analyses = {"shifts": _shifts_section(zhang=False)}
    f = next(f for f in findings(run) if f.kind == "translation")
    assert f.significant and "consistency at 16 px from unshifted gap 100.0 %" in f.text
    run.analyses = {"shifts": _shifts_section(zhang=False, per_image=False)}
    f = next(f for f in findings(run) if f.kind == "translation")
    assert not f.significant and f.seed_ci[0] > 0
    assert "(described, not tested)" in f.text


def test_resolution_findings_are_tested_when_sizes_keep_per_image_values():
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81]))
    at_32, at_64 = _ci([0.5, 0.5, 0.5]), _ci([0.9, 0.91, 0.92])
    at_32["per_image"], at_64["per_image"] = [1.0, 0.0] * 50, [1.0] * 90 + [0.0] * 10
    run.analyses = {"sizes": {"sizes": [32, 64], "base": 64, "seed_ids": [0, 1, 2],
                              "heads": {"gap": {"32": at_32, "64": at_64}}}}
    f = next(f for f in findings(run) if f.kind == "resolution")
    assert (f.a, f.b) == ("gap@32", "gap@64")
    assert f.significant and f.test == "paired sign-flip test" and f.family == "sizes"
    assert "accuracy changes significantly" in f.text


def test_findings_take_the_best_any_size_head_as_reference_without_gap():
    heads = [_head("gmp", [0.90, 0.91, 0.92], [0.95] * 3, 20490),
             _head("gem", [0.85, 0.86, 0.84], [0.95] * 3, 20491, val=[0.5, 0.5, 0.5]),
             _head("flatten", [0.70, 0.72, 0.71], [1.0] * 3, 1003530)]
    overfit = [f for f in findings(_run(heads, best_head="gmp")) if f.kind == "overfitting"]
    assert [(f.a, f.b) for f in overfit] == [("flatten", "gmp")]


def test_findings_read_opponent_by_opponent_with_each_analysis_in_registry_order():
    heads = _gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81])
    heads.insert(1, _head("avgpool", [0.85, 0.84, 0.86], [0.99] * 3, 200000))
    heads.append(_head("gmp", [0.93, 0.92, 0.94], [0.95] * 3, 20490))
    run = _run(heads, best_head="gmp")
    section = _shifts_section()
    section["heads"]["avgpool"] = section["heads"]["flatten"]
    small = {"test_accuracy": _ci([0.5, 0.52, 0.5]), "overfit_gap": _ci([0.5, 0.5, 0.5])}
    run.analyses = {"shots": {"shots": ["1"], "seed_ids": [0, 1, 2],
                              "heads": {h: {"1": small} for h in ("gap", "avgpool", "flatten")}},
                    "shifts": section}
    pairs = [(f.kind, f.a, f.b) for f in findings(run) if "gmp" not in (f.a, f.b)]
    # the heads family (the named claims after every head against the recommended gmp), the
    # overfitting gaps, then each analysis in registry order (shifts before shots), whatever
    # order the run holds them in, opponent by opponent
    assert pairs == [("accuracy", "gap", "flatten"), ("accuracy", "gap", "avgpool"),
                     ("overfitting", "avgpool", "gap"), ("overfitting", "flatten", "gap"),
                     ("translation", "gap", "avgpool"), ("translation", "gap", "flatten"),
                     ("small_data", "gap", "avgpool"), ("small_data", "gap", "flatten")]


def test_intervals_over_seeds_are_never_tested():
    assert not PairedDiff(0.1, 2, t=(0.1, 0.1)).significant
    assert not PairedDiff(0.3, 5, t=(0.25, 0.35)).significant


def test_a_paired_difference_is_significant_only_after_the_correction():
    d = paired_difference({0: 0.9}, {0: 0.5}, [1] * 90 + [0] * 10, [1] * 50 + [0] * 50)
    assert d.p_value < 0.001 and not d.significant
    holm_correct([d])
    assert d.significant and d.p_adjusted == d.p_value and d.n_tests == 1


# --------------------------------------------------------------------------------------------
# the family-wise correction

EQUAL_HEADS = ["gap", "gmp", "gem", "catavgmax", "attention", "fastai", "dense_map", "avgpool",
               "flatten"]


def _equal_heads_run(rng_seed: int, worse: str | None = None, n: int = 200) -> Run:
    """Nine heads whose per-image correctness is drawn from one and the same distribution
    (Bernoulli(0.8), 3 seeds, each its own draw); head `worse` at 0.4 instead."""
    rng = np.random.default_rng(rng_seed)
    correct = {h: rng.random((3, n)) < (0.4 if h == worse else 0.8) for h in EQUAL_HEADS}
    heads = [_head(h, list(correct[h].mean(axis=1)), [0.95] * 3, 20490,
                   val=[0.9 if h == "gap" else 0.8] * 3) for h in EQUAL_HEADS]
    return _run(heads, correct)


def _first_seed_with_a_false_uncorrected_claim() -> int:
    for rng_seed in range(100):
        out = [f for f in findings(_equal_heads_run(rng_seed)) if f.p_value is not None]
        if min(f.p_value for f in out) < 0.05:
            return rng_seed
    raise AssertionError("no chance difference found in 100 draws")


def test_holm_claims_no_difference_between_equal_heads_where_uncorrected_tests_do():
    rng_seed = _first_seed_with_a_false_uncorrected_claim()
    out = findings(_equal_heads_run(rng_seed))
    tested = [f for f in out if f.p_value is not None]
    assert len(tested) == 8  # gap (selected) against each other head, on accuracy
    assert min(f.p_value for f in tested) < 0.05  # uncorrected: a difference "found"
    assert not any(f.significant for f in out)  # corrected: none
    assert all(f.p_adjusted >= f.p_value for f in tested)
    chance = min(tested, key=lambda f: f.p_value)
    assert "no significant difference after the Holm correction" in chance.text
    assert "over the 8 comparisons of the heads family" in chance.text
    if chance.image_ci[0] > 0 or chance.image_ci[1] < 0:  # p < 0.05 unadjusted: said plainly
        assert "the unadjusted interval excludes 0" in chance.text


def test_the_heads_family_is_a_fixed_set_and_analyze_never_changes_it():
    """Every head against the recommended one plus the named claims, each pair once; adding an
    analysis adds its own family and leaves the heads family's p-values as they were."""
    heads = _gap_flatten([0.90, 0.91, 0.92], [0.80, 0.82, 0.81])
    heads.append(_head("avgpool", [0.85, 0.84, 0.86], [0.99] * 3, 200000))
    heads.append(_head("gmp", [0.93, 0.92, 0.94], [0.95] * 3, 20490))
    rng = np.random.default_rng(0)
    correct = {h.head: rng.random((3, 150)) < 0.85 for h in heads}
    run = _run(heads, correct, best_head="gmp")
    before = {(f.a, f.b): f.p_adjusted for f in findings(run) if f.family == "heads"}
    assert set(before) == {("gmp", "gap"), ("gmp", "flatten"), ("gmp", "avgpool"),
                           ("gap", "flatten"), ("gap", "avgpool")}
    run.analyses = {"shifts": _shifts_section()}
    after = findings(run)
    assert {(f.a, f.b): f.p_adjusted for f in after if f.family == "heads"} == before
    assert {f.family for f in after if f.p_value is not None} == {"heads", "shifts"}
    run.best_head = "gap"  # the recommended head is a claim's head: (gap, flatten) once
    pairs = [(f.a, f.b) for f in findings(run) if f.family == "heads"]
    assert pairs == [("gap", "flatten"), ("gap", "avgpool"), ("gap", "gmp")]


def test_holm_keeps_a_large_real_difference_significant():
    out = findings(_equal_heads_run(_first_seed_with_a_false_uncorrected_claim(), worse="gem"))
    significant = [f for f in out if f.significant]
    assert [(f.a, f.b) for f in significant] == [("gap", "gem")]
    assert significant[0].p_adjusted < 0.001
    assert "gap is more accurate" in significant[0].text


def test_report_states_the_correction_next_to_the_findings():
    from headbench.report.page import render
    run = _run(_gap_flatten([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
               {"gap": [True] * 90 + [False] * 10, "flatten": [True] * 70 + [False] * 30})
    run.findings = findings(run)
    section = render(run, []).split('<section id="findings">')[1].split("</section>")[0]
    assert "Holm–Bonferroni within each family" in section and "heads (1)" in section
    assert "sign-flip" in section and "not a contradiction" in section
    assert "Holm p &lt; 0.001 over the 1 comparison of the heads family" in section
    run.findings = findings(_run(_gap_flatten([0.90, 0.91], [0.70, 0.72])))
    assert "none is tested and none claims a difference" in render(run, [])
