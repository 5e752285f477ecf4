"""The verdict: the one-standard-error rule on constructed selection scores, and its sentence."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from headbench.results import Finding
from headbench.verdict import binomial_se, one_standard_error, recommend, selection_score, sentence


def head(name: str, params: int, flops: int = 0, val: float = 0.9, n: int = 100):
    metrics = SimpleNamespace(accuracy=val, n=n)
    return SimpleNamespace(head=name, head_params=params, head_flops=flops,
                           seeds=[SimpleNamespace(seed=0, val=metrics, test=SimpleNamespace(n=150))],
                           seed_metric=lambda role, key="accuracy", v=val: {0: v})


def hits(n: int, right: int) -> np.ndarray:
    return np.array([1.0] * right + [0.0] * (n - right))


def test_the_cheapest_head_within_one_standard_error_of_the_best_is_recommended():
    heads = [head("fastai", 1_300_000), head("flatten", 125_000), head("gap", 2_562)]
    correct = {"fastai": hits(200, 186), "flatten": hits(200, 184), "gap": hits(200, 184)}
    verdict = recommend(heads, correct)
    assert verdict.best == "fastai" and verdict.scores["fastai"] == 0.93
    spread = np.std(correct["fastai"], ddof=1) / math.sqrt(200)
    assert verdict.se["fastai"] == pytest.approx(max(spread, binomial_se(0.93, 200)))
    assert verdict.scores["gap"] >= verdict.scores["fastai"] - verdict.se["fastai"]
    assert verdict.recommended == "gap" and verdict.n_images == 200


def test_a_clearly_better_expensive_head_wins():
    heads = [head("fastai", 1_300_000), head("gap", 2_562)]
    verdict = recommend(heads, {"fastai": hits(200, 190), "gap": hits(200, 160)})
    assert verdict.recommended == verdict.best == "fastai"


def test_equal_parameters_are_ordered_by_flops_and_an_exact_tie_goes_to_the_cheaper():
    heads = [head("gem", 2_563, 10), head("gap", 2_562, 10), head("dense_map", 2_562, 99)]
    scores, se = {"gem": 0.9, "gap": 0.9, "dense_map": 0.9}, {"gem": 0.0, "gap": 0.0, "dense_map": 0.0}
    assert one_standard_error(heads, scores, se) == ("gap", "gap")


def test_a_perfect_score_on_few_images_keeps_a_standard_error():
    """sd is 0 when a head gets every val image right in every seed: the Laplace-smoothed
    binomial error keeps the rule from trusting 37 images as certainty."""
    score, se = selection_score(np.ones(37))
    assert score == 1.0 and se == pytest.approx(binomial_se(1.0, 37)) and 0.02 < se < 0.03
    heads = [head("gem", 2_563), head("gap", 2_562)]
    one_slip = np.array([1.0] * 36 + [2 / 3])  # one image wrong in one of three seeds
    verdict = recommend(heads, {"gem": np.ones(37), "gap": one_slip})
    assert verdict.best == "gem" and verdict.recommended == "gap"


def finding(a: str, b: str, diff: float, lo: float, hi: float, significant: bool) -> Finding:
    return Finding(text="", kind="accuracy", a=a, b=b, diff=diff, lo=lo, hi=hi,
                   significant=significant, image_ci=[lo, hi], test="paired sign-flip test",
                   p_value=0.01 if significant else 0.5, p_adjusted=0.02 if significant else 1.0)


def test_the_sentence_of_a_tie_names_the_cheapest_and_the_largest_test_difference():
    heads = [head("fastai", 1_317_888), head("flatten", 125_442), head("gap", 2_562)]
    one_slip = np.array([1.0] * 36 + [2 / 3])
    verdict = recommend(heads, {"fastai": hits(37, 37), "flatten": one_slip, "gap": one_slip})
    found = [finding("gap", "flatten", -0.009, -0.034, 0.016, False),
             finding("gap", "fastai", 0.004, -0.02, 0.028, False)]
    text = sentence(verdict, heads, found)
    assert text.startswith("no head is measurably better than the cheapest, gap (2,562 head "
                           "parameters): recommended")
    assert "the largest difference on test was flatten +0.9 pp [-1.6, +3.4]" in text
    assert "150 test images resolve about ±2 pp" in text and "disagree" not in text


def test_the_sentence_of_a_win_says_by_how_much_in_selection():
    heads = [head("fastai", 1_317_888), head("gap", 2_562)]
    verdict = recommend(heads, {"fastai": hits(300, 290), "gap": hits(300, 250)})
    text = sentence(verdict, heads, [finding("fastai", "gap", 0.08, 0.05, 0.11, True)])
    folds = recommend(heads, {"fastai": hits(300, 290), "gap": hits(300, 250)}, "cv")
    assert "on 300 train + val images in cross-validation" in sentence(folds, heads, [])
    assert text.startswith("fastai is recommended (1,317,888 head parameters): it beats every "
                           "cheaper head in selection by more than one standard error (96.7 % vs "
                           "gap's 83.3 % on 300 val images)")


def test_the_sentence_says_when_selection_and_test_disagree():
    heads = [head("flatten", 125_442), head("gap", 2_562)]
    verdict = recommend(heads, {"flatten": hits(40, 38), "gap": hits(40, 38)})
    assert verdict.recommended == "gap"
    text = sentence(verdict, heads, [finding("flatten", "gap", 0.05, 0.02, 0.08, True)])
    assert "selection and test disagree: flatten is better on test by +5.0 pp [+2.0, +8.0]" in text
    assert text.endswith("the recommendation is made on selection data only and stands")
