"""Metrics and statistics against hand-computed values and reference implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import f1_score
from torch import nn

from headbench.errors import HeadbenchError
from headbench.evaluate import (classification_metrics, holm, mean_ci, measure_latency,
                                paired_diff_ci, sign_flip, sign_flip_p_value)


def hand_logits() -> tuple[np.ndarray, np.ndarray]:
    """6 images, 6 classes: predictions [0, 1, 1, 1, 2, 4] against labels [0, 0, 1, 1, 2, 3].

    Image 1 ranks its true class second (a top-5 hit); image 5 ranks it last (a top-5 miss).
    """
    y = np.array([0, 0, 1, 1, 2, 3])
    logits = np.zeros((6, 6))
    for i, p in enumerate([0, 1, 1, 1, 2, 4]):
        logits[i, p] = 5.0
    logits[1, 0] = 4.0
    logits[5, 3] = -5.0
    return logits, y


def test_accuracy_top5_and_macro_f1_on_hand_example():
    logits, y = hand_logits()
    m = classification_metrics(logits, y, num_classes=6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top5"] == pytest.approx(5 / 6)
    # per-class F1: 2/3, 4/5, 1, 0 (class 3 missed), 0 (class 4 predicted); class 5 excluded
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1 + 0 + 0) / 5)
    assert m["macro_f1"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"))
    assert m["n"] == 6


def test_top5_is_none_with_five_classes_or_fewer():
    logits = np.random.default_rng(0).standard_normal((4, 5))
    assert classification_metrics(logits, np.array([0, 1, 2, 3]), 5)["top5"] is None


def test_nll_equals_torch_cross_entropy():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((50, 7)) * 30).astype(np.float32)  # large: tests stability
    y = rng.integers(0, 7, 50)
    expected = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y)).item()
    assert classification_metrics(logits, y, 7)["nll"] == pytest.approx(expected, rel=1e-9)


def test_ece_is_zero_for_confident_correct_predictions():
    y = np.array([0, 1, 2, 1])
    logits = 50.0 * np.eye(3)[y]
    assert classification_metrics(logits, y, 3)["ece"] == pytest.approx(0.0, abs=1e-9)


def test_ece_on_hand_case():
    # confidences 0.9, 0.9 (one right, one wrong) and 0.6, 0.6 (both right):
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    m = classification_metrics(np.log(probs), y, 2)
    assert m["ece"] == pytest.approx(0.4)


def unit_standard_error(n: int) -> np.ndarray:
    """n values of mean 0 whose standard error (sample sd / sqrt(n)) is 1."""
    v = np.arange(n) - (n - 1) / 2
    return v / (v.std(ddof=1) / math.sqrt(n))


# the t quantiles of the hand-written incomplete-beta code mean_ci used before scipy (to 1e-12)
@pytest.mark.parametrize("confidence, n, quantile", [
    (0.95, 5, 2.7764451051977987), (0.95, 2, 12.706204736172367), (0.9, 10, 1.833112932657059),
    (0.99, 3, 9.924843200915348), (0.95, 30, 2.0452296421326537),
    (0.95, 100_001, 1.9599877075224867)])
def test_mean_ci_half_width_is_the_t_quantile_of_before(confidence, n, quantile):
    mean, lo, hi = mean_ci(unit_standard_error(n), confidence)
    assert abs(mean) < 1e-12
    assert abs(hi - quantile) < 1e-10 and abs(-lo - quantile) < 1e-10


def test_mean_ci_and_paired_diff_ci_keep_their_values_of_before():
    before = [(mean_ci([0.71, 0.74, 0.69, 0.73, 0.70], 0.9),
               (0.7139999999999999, 0.6942300662127584, 0.7337699337872413)),
              (mean_ci([0.80, 0.82, 0.84]), (0.82, 0.77031724576499, 0.8696827542350098)),
              (paired_diff_ci([0.80, 0.83, 0.78, 0.81], [0.781, 0.809, 0.762, 0.79]),
               (0.01949999999999999, 0.01744573974323907, 0.02155426025676091))]
    for now, then in before:
        assert np.abs(np.subtract(now, then)).max() < 1e-10, (now, then)


def test_mean_ci_of_equal_values_is_a_zero_width_interval():
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_mean_ci_width_is_t_times_standard_error():
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert mean - lo == pytest.approx(hi - mean)
    values = [0.71, 0.74, 0.69, 0.73, 0.70]
    expected = stats.t.interval(0.9, 4, loc=np.mean(values), scale=stats.sem(values))
    assert mean_ci(values, confidence=0.9)[1:] == pytest.approx(expected)


def test_mean_ci_of_one_seed_has_no_interval():
    mean, lo, hi = mean_ci([0.8])
    assert mean == 0.8 and math.isnan(lo) and math.isnan(hi)


def test_mean_ci_rejects_confidence_outside_unit_interval():
    with pytest.raises(HeadbenchError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


def test_paired_diff_ci_covers_zero_for_identical_and_excludes_it_for_clear_difference():
    a = np.array([0.80, 0.83, 0.78, 0.81])
    diff, lo, hi = paired_diff_ci(a, a)
    assert lo <= 0.0 <= hi and diff == 0.0
    # seed effects shared by both heads cancel in the paired difference
    b = a - 0.02 + np.array([0.001, -0.001, 0.002, 0.0])
    diff, lo, hi = paired_diff_ci(a, b)
    assert diff == pytest.approx(0.0195) and lo > 0.0


def test_sign_flip_interval_covers_zero_for_identical_and_excludes_it_for_clear_difference():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    assert sign_flip(a, a) == (0.0, 0.0, 0.0, 1.0)
    b = rng.random(400) < 0.6
    diff, lo, hi, p = sign_flip(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert 0.0 < lo < diff < hi and p < 0.001


def test_the_sign_flip_interval_excludes_zero_exactly_when_its_p_value_is_below_the_level():
    """One procedure: the interval is the test inverted, so the two never disagree (the
    findings print them side by side)."""
    rng = np.random.default_rng(11)
    for i in range(60):
        n = int(rng.integers(8, 200))
        a = rng.integers(0, 4, n) / 3
        b = np.clip(a + rng.integers(-1, 2, n) / 3 - rng.random() * 0.2, 0, 1)
        diff, lo, hi, p = sign_flip(a, b, n_resamples=2000, seed=i)
        assert lo <= diff <= hi
        assert (lo > 0 or hi < 0) == (p < 0.05), (i, lo, hi, p)
        assert p == sign_flip_p_value(a, b, n_resamples=2000, seed=i)


def test_sign_flip_interval_has_its_coverage():
    """Over draws with a known mean difference, the 95 % interval holds it about 95 % of times."""
    rng = np.random.default_rng(3)
    hits = []
    for i in range(200):
        d = rng.choice([-1.0, 0.0, 1.0], size=120, p=[0.15, 0.6, 0.25])
        _, lo, hi, _ = sign_flip(d, np.zeros_like(d), n_resamples=999, seed=i)
        hits.append(lo <= 0.1 <= hi)  # the true mean: 0.25 − 0.15
    assert 0.90 <= np.mean(hits) <= 0.99


def test_holm_on_hand_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_accepts_an_empty_family():
    assert holm([0.5, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    assert holm([0.04]) == [0.04]
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([0.2, 1.5])


def test_sign_flip_p_value_on_hand_cases():
    # 3 images, each +0.5: of the 8 sign patterns, 2 reach |sum| = 1.5
    assert sign_flip_p_value([1.0, 1.0, 0.5], [0.5, 0.5, 0.0]) == pytest.approx(2 / 8, abs=0.01)
    # +0.5 three times and -0.5 once: |sum| >= 1 in 10 of 16 patterns
    assert sign_flip_p_value([1, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(10 / 16,
                                                                               abs=0.01)
    assert sign_flip_p_value([0.5, 0.25], [0.5, 0.25]) == 1.0
    assert sign_flip_p_value([1.0, 0.5], [0.0, 0.0], seed=3) == sign_flip_p_value(
        [1.0, 0.5], [0.0, 0.0], seed=3)


def test_sign_flip_p_value_on_0_1_values_agrees_with_mcnemar():
    a, b = [1] * 12 + [0] * 2 + [1] * 30, [0] * 12 + [1] * 2 + [1] * 30
    exact = stats.binomtest(12, 14).pvalue  # McNemar's exact test: 2·(1 + 14 + 91) / 2^14
    assert exact == pytest.approx(212 / 16384)
    assert sign_flip_p_value(a, b) == pytest.approx(exact, abs=0.003)


def test_sign_flip_p_value_is_within_three_standard_errors_of_scipys_exact_test():
    """scipy.stats.permutation_test swaps within pairs over all 2^n patterns (n small); the
    20000-draw Monte-Carlo p-value lies within three of its standard errors of that."""
    rng = np.random.default_rng(5)
    pairs = [(rng.random(12) + shift, rng.random(12)) for shift in (0.0, 0.15, 0.3)]
    for _ in range(3):  # ties, as with correctness averaged over 3 seeds
        a = rng.integers(0, 4, 14) / 3
        pairs.append((a, np.clip(a - rng.integers(-1, 3, 14) / 3, 0, 1)))
    for a, b in pairs:
        exact = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                       permutation_type="samples", vectorized=True,
                                       n_resamples=np.inf).pvalue
        error = math.sqrt(exact * (1 - exact) / 20000) + 1 / 20001  # + the (1 + k) / (1 + n)
        assert abs(sign_flip_p_value(a, b) - exact) <= 3 * error, (a, b, exact)


def test_sign_flip_p_value_holds_its_level_under_the_null():
    rng = np.random.default_rng(7)
    p = [sign_flip_p_value(rng.integers(0, 4, 60) / 3, rng.integers(0, 4, 60) / 3,
                           n_resamples=999, seed=i) for i in range(300)]
    assert np.mean(np.array(p) < 0.05) <= 0.08


def test_measure_latency_returns_positive_times_and_restores_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1))
    model.train()
    result = measure_latency(model, (3, 16, 16), device="cpu", batch_sizes=(1, 4), repeats=2,
                             channels_last=True)
    assert set(result) == {1, 4}
    for bs, r in result.items():
        assert r["ms_per_batch"] > 0 and r["images_per_s"] > 0
        assert r["ms_per_image"] == pytest.approx(r["ms_per_batch"] / bs)
        assert r["images_per_s"] == pytest.approx(1000 / r["ms_per_image"])
    assert model.training
    assert model[0].weight.is_contiguous()


def test_measure_latency_rejects_unknown_autocast_dtype():
    with pytest.raises(HeadbenchError, match="bfloat16"):
        measure_latency(nn.Linear(2, 2), (2,), device="cpu", autocast_dtype="bfloat61")


def test_ci_summary_clips_accuracy_intervals_to_their_range():
    from headbench.evaluate import ci_summary
    wide = ci_summary([0.2, 0.9], bounds=(0.0, 1.0))  # two seeds: t(1) = 12.7
    assert wide["lo"] == 0.0 and wide["hi"] == 1.0 and wide["mean"] == pytest.approx(0.55)
    assert ci_summary([0.5])["lo"] is None and ci_summary([None]) is None
