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
from headbench.evaluate import (bootstrap_diff_ci, classification_metrics, holm, mcnemar_exact,
                                mean_ci, measure_latency, paired_diff_ci, paired_test,
                                sign_flip_p_value, t_quantile)


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


@pytest.mark.parametrize("df, expected", [(2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042),
                                          (100_000, 1.960)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("p", [0.9, 0.95, 0.995, 0.5001, 0.025])
@pytest.mark.parametrize("df", [1, 3, 7.5, 250])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-12)


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


def test_bootstrap_diff_ci_covers_zero_for_identical_and_excludes_it_for_clear_difference():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    diff, lo, hi = bootstrap_diff_ci(a, a)
    assert (diff, lo, hi) == (0.0, 0.0, 0.0)
    b = rng.random(400) < 0.6
    diff, lo, hi = bootstrap_diff_ci(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert 0.0 < lo < diff < hi


def test_bootstrap_diff_ci_agrees_with_resampling_images():
    rng = np.random.default_rng(2)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.75
    _, lo, hi = bootstrap_diff_ci(a, b, n_boot=4000, seed=1)
    idx = np.random.default_rng(3).integers(0, 300, (4000, 300))
    naive = (a[idx].mean(1) - b[idx].mean(1))
    assert lo == pytest.approx(np.quantile(naive, 0.025), abs=0.01)
    assert hi == pytest.approx(np.quantile(naive, 0.975), abs=0.01)
    assert bootstrap_diff_ci(a, b, n_boot=500, seed=4) == bootstrap_diff_ci(a, b, 500, seed=4)


def test_holm_on_hand_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_accepts_an_empty_family():
    assert holm([0.5, 0.6, 0.01]) == pytest.approx([1.0, 1.0, 0.03])
    assert holm([0.04]) == [0.04]
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([0.2, 1.5])


def test_mcnemar_exact_on_hand_cases():
    five_for_a = ([1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1])  # 5 discordant, all for a
    assert mcnemar_exact(*five_for_a) == pytest.approx(2 / 32)
    nine_one = ([1] * 9 + [0], [0] * 9 + [1])  # P(X <= 1 | 10, 1/2) = 11/1024, two-sided
    assert mcnemar_exact(*nine_one) == pytest.approx(22 / 1024)
    assert mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0  # balanced: capped at 1
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0  # no discordant image
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])


def test_mcnemar_exact_matches_scipy_binomial_test():
    rng = np.random.default_rng(5)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.75
    n_a, n_b = int((a & ~b).sum()), int((b & ~a).sum())
    assert mcnemar_exact(a, b) == pytest.approx(stats.binomtest(n_a, n_a + n_b).pvalue)


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
    assert mcnemar_exact(a, b) == pytest.approx(212 / 16384)  # 2·(1 + 14 + 91) / 2^14
    assert sign_flip_p_value(a, b) == pytest.approx(212 / 16384, abs=0.003)


def test_sign_flip_p_value_holds_its_level_under_the_null():
    rng = np.random.default_rng(7)
    p = [sign_flip_p_value(rng.integers(0, 4, 60) / 3, rng.integers(0, 4, 60) / 3,
                           n_resamples=999, seed=i) for i in range(300)]
    assert np.mean(np.array(p) < 0.05) <= 0.08


def test_paired_test_uses_mcnemar_for_0_1_values_and_sign_flips_otherwise():
    p, name = paired_test([True, True, False], [False, True, False])
    assert name == "McNemar exact test" and p == 1.0
    p, name = paired_test([1.0, 0.5, 1.0], [0.5, 0.5, 0.0])
    assert name == "paired sign-flip test" and 0 < p <= 1


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
