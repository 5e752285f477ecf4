"""Metrics and statistics for comparing heads.

- `classification_metrics`: accuracy, top-5, macro-F1, NLL and ECE from logits.
- `select_head`: the best head on the val split (which heads to fine-tune; the recommendation is
  `verdict.recommend`'s).
- `mean_ci`: Student-t interval of a mean over seeds (the t quantile from `scipy.stats.t`).
- `paired_diff_ci`: paired t interval of a - b over seeds (same seeds, same splits).
- `sign_flip`: one paired sign-flip randomisation procedure over test images giving both the
  two-sided p-value of a per-image difference and its interval (the test inverted);
  `sign_flip_p_value` is its p-value alone.
- `holm`: Holm–Bonferroni adjusted p-values of a family of tests.
- `measure_latency`: median wall-clock time per batch and per image.

Seeds answer "how much does training noise move this number?"; the bootstrap answers "how much
does the choice of test images move it?". They are different questions; report the one you mean.
Tests of a difference are per test image (the seeds of a run are too few for a test that
survives a multiple-test correction), and every p-value of a run's findings is Holm-adjusted.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from headbench.errors import HeadbenchError, unknown
from headbench.runtime import resolve_device

ECE_BINS = 15


# ----------------------------------------------------------------------------- metrics

def confusion_matrix(pred: Any, y: Any, num_classes: int) -> np.ndarray:
    """Counts (true class, predicted class), shape (K, K)."""
    pred, y = np.asarray(pred, dtype=np.int64), np.asarray(y, dtype=np.int64)
    counts = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def macro_f1(pred: Any, y: Any, num_classes: int) -> float:
    """Mean per-class F1 over classes present in `y` or in `pred` (others are undefined)."""
    cm = confusion_matrix(pred, y, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    return float(np.mean(2 * tp[present] / (2 * tp + fp + fn)[present]))


def per_class_metrics(pred: Any, y: Any, num_classes: int) -> dict[str, np.ndarray]:
    """Precision TP/(TP+FP), recall TP/(TP+FN), F1 and support (images of the class in `y`) of
    each class, arrays of length K in class order. As scikit-learn's
    `precision_recall_fscore_support` with zero_division=0: a ratio with nothing to divide by
    (a class never predicted, or absent from `y`) is 0."""
    cm = confusion_matrix(pred, y, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)
    return {"precision": ratio(tp, predicted), "recall": ratio(tp, support),
            "f1": ratio(2 * tp, predicted + support), "support": support}


def expected_calibration_error(probs: Any, y: Any, bins: int = ECE_BINS) -> float:
    """Sum over `bins` equal-width top-1 confidence bins (lo, hi] of |accuracy − confidence|,
    weighted by each bin's share of images."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gaps = np.abs(np.bincount(which, weights=correct, minlength=bins)
                  - np.bincount(which, weights=conf, minlength=bins))
    return float(gaps.sum() / count.sum())


def classification_metrics(logits: Any, y: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy, top-5, macro-F1, NLL and ECE of (N, K) logits against labels y.

    Returns:
        dict with `accuracy`, `top5` (None unless num_classes > 5), `macro_f1` (classes absent
        from both y and the predictions excluded), `nll` (mean cross-entropy, nats), `ece`
        (15 equal-width confidence bins) and `n`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or logits.shape != (len(y), num_classes) or len(y) == 0:
        raise ValueError(f"logits must be (N, {num_classes}) with N = len(y) = {len(y)} > 0, "
                         f"got {logits.shape}")
    pred = logits.argmax(axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    top5 = None
    if num_classes > 5:
        best5 = np.argpartition(-logits, 4, axis=1)[:, :5]
        top5 = float(np.mean((best5 == y[:, None]).any(axis=1)))
    return {"accuracy": float(np.mean(pred == y)), "top5": top5,
            "macro_f1": macro_f1(pred, y, num_classes),
            "nll": float(-np.mean(log_probs[np.arange(len(y)), y])),
            "ece": expected_calibration_error(np.exp(log_probs), y), "n": int(len(y))}


# ----------------------------------------------------------------------------- selection

def select_head(heads: Sequence[Any]) -> Any:
    """The best head on the val split only: highest mean val accuracy over seeds, then lowest
    mean val NLL; the first listed wins a full tie. Never looks at test. It ranks the heads to
    fine-tune and the reference of the named claims; the recommendation is
    `verdict.recommend`'s (the one-standard-error rule), not this.

    Args:
        heads: `run.HeadResult`s (anything with `seed_metric(role, key)`).
    """
    if not heads:
        raise HeadbenchError("no trained heads to select from")

    def score(head: Any) -> tuple[float, float]:
        acc, nll = head.seed_metric("val"), head.seed_metric("val", "nll")
        return (float(np.mean(list(acc.values()))) if acc else -math.inf,
                -float(np.mean(list(nll.values()))) if nll else -math.inf)
    return max(heads, key=score)


# ----------------------------------------------------------------------------- Student t

def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise HeadbenchError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (n - 1 df) of values over seeds.

    Returns:
        (mean, lo, hi); with a single value (value, nan, nan) -- one seed says nothing about
        seed-to-seed spread.

    Example:
        >>> m, lo, hi = mean_ci([0.80, 0.82, 0.84])
        >>> round(m, 2), round(hi - m, 4)
        (0.82, 0.0497)
    """
    _check_confidence(confidence)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    # not stats.t.interval: with equal values (scale 0) it gives nan, not a zero-width interval
    t = float(stats.t.ppf(0.5 + confidence / 2.0, v.size - 1))
    half = t * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


def ci_summary(values: Sequence[float | None], confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> dict | None:
    """`{"mean", "lo", "hi", "values"}` over seeds for results.json: lo/hi are None with one
    value (no interval) and clipped to `bounds` (an accuracy's t interval can pass 1 with few
    seeds); None values are dropped; None when nothing is left."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean, lo, hi = mean_ci(values, confidence)
    low, high = bounds or (-math.inf, math.inf)

    def clip(v: float | None) -> float | None:
        return float(min(max(v, low), high)) if v is not None and math.isfinite(v) else None
    return {"mean": float(mean), "lo": clip(lo), "hi": clip(hi), "values": values}


def paired_diff_ci(a: Sequence[float], b: Sequence[float],
                   confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b and its paired t interval; a[i] and b[i] share seed i."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return mean_ci(a - b, confidence)


# ----------------------------------------------------------------------------- tests

def _paired(values_a: Any, values_b: Any) -> np.ndarray:
    """a − b per image as float64; equal-length, non-empty 1-d inputs only."""
    d = np.asarray(values_a, dtype=np.float64) - np.asarray(values_b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or np.shape(values_a) != np.shape(values_b):
        raise ValueError("values_a and values_b must be equal-length, non-empty 1-d arrays")
    return d


def sign_flip_p_value(values_a: Any, values_b: Any, n_resamples: int = 20000,
                      seed: int = 0) -> float:
    """Two-sided paired sign-flip randomisation p-value of mean(a − b) over images.

    Args:
        values_a, values_b: per-image values of two heads on the same images, in the same
            order (e.g. correctness or consistency averaged over seeds).
        n_resamples: random sign patterns drawn.
        seed: seeds the draws.

    Under the null that the two heads are exchangeable on every image, each per-image
    difference is as likely to have either sign, so the statistic is compared with its
    distribution under random sign flips: p = (1 + #{|T*| ≥ |T|}) / (1 + n_resamples), a valid
    p-value at any number of images. Chosen over the bootstrap's shift method, whose p-value is
    only asymptotically right and too small on small test sets; with 0/1 values it is the
    randomisation form of McNemar's test. Each resample is drawn by counts: the images sharing
    one value of the difference flip Binomial(count, 1/2) of their signs, so a resample costs
    O(distinct values), not O(images).

    Example:
        >>> sign_flip_p_value([0.5, 0.5, 1.0], [0.5, 0.5, 1.0])
        1.0
    """
    return _SignFlips(_paired(values_a, values_b), n_resamples, seed).p_at(0.0)


# kept over scipy.stats.permutation_test, which cannot invert the test on shared sign patterns
class _SignFlips:
    """The random sign patterns of one paired difference d, drawn once: the p-value of the test
    of mean(d) = δ for any shift δ, on the same patterns."""

    def __init__(self, d: np.ndarray, n_resamples: int, seed: int):
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
        self.values, self.counts = np.unique(d, return_counts=True)
        rng = np.random.default_rng(seed)
        flips = rng.binomial(self.counts, 0.5, (n_resamples, len(self.counts)))
        self.signs = 2 * flips - self.counts
        self.n = n_resamples

    def p_at(self, delta: float) -> float:
        shifted = self.values - delta
        observed = abs(float(self.counts @ shifted))
        scale = float(self.counts @ np.abs(shifted))
        if observed <= 1e-12 * max(1.0, scale):
            return 1.0
        # sums of equal terms in another order: compare with a tolerance, not bit for bit
        extreme = np.abs(self.signs @ shifted) >= observed - 1e-9 * scale
        return (1 + int(extreme.sum())) / (1 + self.n)


def sign_flip(values_a: Any, values_b: Any, confidence: float = 0.95, n_resamples: int = 20000,
              seed: int = 0) -> tuple[float, float, float, float]:
    """(mean of a − b, interval low, high, two-sided p) of a paired per-image difference, all
    from one paired sign-flip randomisation procedure over images.

    The p-value tests mean(a − b) = 0 as `sign_flip_p_value` does; the interval is that test
    inverted: the shifts δ for which the same test of mean(a − b) = δ, on the same random sign
    patterns, has p ≥ 1 − confidence (found by bisection on each side of the mean). So the
    interval excludes 0 exactly when p < 1 − confidence, and one procedure gives both. It is the
    interval of the unadjusted test: a Holm-adjusted p above 0.05 beside a 95 % interval that
    excludes 0 is not a contradiction (the correction is for the number of comparisons).

    The sign patterns are drawn once for every δ (`sign_flip_p_value` draws them alike).

    Example:
        >>> mean, lo, hi, p = sign_flip([1] * 40 + [0] * 10, [0] * 30 + [1] * 20)
        >>> round(mean, 2), lo > 0, p < 0.05
        (0.4, True, True)
        >>> mean, lo, hi, p = sign_flip([1] * 40 + [0] * 10, [0] * 20 + [1] * 30)
        >>> round(mean, 2), lo <= 0 <= hi, p >= 0.05  # 0 inside exactly when p says so
        (0.2, True, True)
    """
    _check_confidence(confidence)
    d = _paired(values_a, values_b)
    flips = _SignFlips(d, n_resamples, seed)
    p_at, values = flips.p_at, flips.values
    alpha, mean = 1.0 - confidence, float(d.mean())
    bounds = []
    for end in (float(values.min()), float(values.max())):
        inside, outside = mean, end
        if p_at(outside) >= alpha:  # too few images to reject any shift on this side
            bounds.append(outside)
            continue
        for _ in range(40):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if p_at(middle) >= alpha else (inside, middle)
            if abs(outside - inside) < 1e-6:
                break
        bounds.append(inside)
    p = p_at(0.0)
    if p >= alpha:  # a difference of 0 ties on a discrete statistic: keep it inside, as p says
        bounds = [min(bounds[0], 0.0), max(bounds[1], 0.0)]
    return mean, bounds[0], bounds[1], p


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by (m − i + 1), made non-decreasing along
    that order and capped at 1. Calling every test with adjusted p < α significant keeps the
    chance of any false claim among all m tests at most α, whatever their dependence.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.005])]
        [0.03, 0.06, 0.06, 0.02]
    """
    # scipy.stats has no Holm adjustment (statsmodels has, but is not a dependency)
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError("p-values must be a 1-d sequence of numbers in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = scaled
    return [float(x) for x in adjusted]


# ----------------------------------------------------------------------------- latency

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _autocast_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise unknown("autocast dtype", dtype, _DTYPES)
    return _DTYPES[dtype]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batch(module: nn.Module, x: torch.Tensor, warmup: int, repeats: int,
                autocast: torch.dtype | None) -> list[float]:
    """Seconds of each timed forward pass on x (after `warmup` untimed ones)."""
    device = x.device
    ctx = (torch.autocast(device.type, dtype=autocast) if autocast is not None
           else contextlib.nullcontext())
    times = []
    with torch.inference_mode(), ctx:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            module(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def _quartiles(times: Sequence[float], scale: float) -> tuple[float, float]:
    """(first, third) quartile of `times` × scale (the one value twice for one time)."""
    if len(times) < 2:
        return times[0] * scale, times[0] * scale
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1 * scale, q3 * scale


def measure_latency_interleaved(modules: Sequence[nn.Module], input_shapes: Sequence[Sequence[int]],
                                device: str | torch.device | None = None, rounds: int = 15,
                                warmup: int = 2,
                                autocast_dtype: str | torch.dtype | None = None
                                ) -> list[dict[str, Any]]:
    """Batch-1 latency of several modules timed in turns (one call of each per round), so
    that a disturbance of the machine slows all of them alike rather than one: per module
    {`ms_per_image` (the median), `ms_per_image_range` (the interquartile range)}. Modules
    run as `measure_latency` runs them (eval, inference mode, channels_last), then go back."""
    device = resolve_device(device)
    autocast = _autocast_dtype(autocast_dtype)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn((1, *shape), generator=generator).to(device).contiguous(
        memory_format=torch.channels_last) for shape in input_shapes]
    homes = [(m, next(m.parameters()).device, m.training) for m in modules]
    times: list[list[float]] = [[] for _ in modules]
    try:
        for m in modules:
            m.to(device=device, memory_format=torch.channels_last).eval()
        for r in range(warmup + rounds):
            for i, (m, x) in enumerate(zip(modules, inputs)):
                (seconds,) = _time_batch(m, x, 0, 1, autocast)
                if r >= warmup:
                    times[i].append(seconds)
    finally:
        for m, home, training in homes:
            m.to(device=home, memory_format=torch.contiguous_format).train(training)
    return [{"ms_per_image": statistics.median(t) * 1e3, "ms_per_image_range": _quartiles(t, 1e3)}
            for t in times]


def measure_latency(module: nn.Module, input_shape: Sequence[int],
                    device: str | torch.device | None = None,
                    batch_sizes: Sequence[int] = (1, 32), warmup: int = 2, repeats: int = 5,
                    autocast_dtype: str | torch.dtype | None = None,
                    channels_last: bool = False) -> dict[int, dict[str, float]]:
    """Median forward time of `module` on random inputs of shape (batch, *input_shape).

    The module runs in eval mode under `torch.inference_mode`; CUDA is synchronised around each
    timed call. Its device, mode and memory format are restored afterwards.

    Args:
        input_shape: one input without the batch dimension, e.g. (3, 224, 224) for a model or
            (C, H, W) of the feature map for a head.
        batch_sizes: batch sizes to time.
        warmup, repeats: untimed calls, then timed calls whose median is reported.
        autocast_dtype: None (float32), 'float16' or 'bfloat16'.
        channels_last: run module and input in channels-last memory format.

    Returns:
        batch size -> {`ms_per_batch`, `ms_per_image`, `images_per_s`, `ms_per_image_range`
        (the interquartile range of the timed calls)}, e.g.
        `measure_latency(head, (1280, 7, 7))[32]["images_per_s"]`.
    """
    if repeats < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise HeadbenchError("latency needs repeats >= 1, warmup >= 0 and batch sizes >= 1")
    device = resolve_device(device)
    autocast = _autocast_dtype(autocast_dtype)
    param = next(module.parameters(), None)
    home = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.to(device).eval()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    per_batch = {}
    try:
        for bs in batch_sizes:
            x = torch.randn((bs, *input_shape), generator=generator).to(device)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            times = _time_batch(module, x, warmup, repeats, autocast)
            seconds = statistics.median(times)
            per_batch[int(bs)] = {"ms_per_batch": seconds * 1e3,
                                  "ms_per_image": seconds * 1e3 / bs,
                                  "images_per_s": bs / seconds,
                                  "ms_per_image_range": _quartiles(times, 1e3 / bs)}
    finally:
        if channels_last:
            module.to(memory_format=torch.contiguous_format)
        module.to(home).train(was_training)
    return per_batch
