"""The verdict: which head to use, chosen on the selection data by the one-standard-error rule,
and the one sentence that says so.

The **selection score** of a head is its per-image accuracy on the selection data (`selection`:
the val split, or every train + val image in cross-validation when the val split is small),
averaged over its seeds and then over the images; its **standard error** is the sd of those per-image values over
√n, and at least the binomial one of the score smoothed by Laplace's rule ((n·score + 1) / (n +
2)): a head that classifies every val image in every seed has sd 0, and the rule would then
keep only the heads that scored 100 % on a few dozen images. The **recommendation** is the cheapest head (fewest head parameters, then FLOPs) whose score
is within one standard error of the best score: Breiman's one-standard-error rule, a heuristic
that prefers the simpler model when the data cannot tell them apart (never called a test). The
test split never enters the choice; the sentence reports it afterwards from the run's paired
findings over test images, and says so plainly when a head beats the recommended one there.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .results import Finding, HeadResult, Verdict

RULE = ("one standard error (Breiman): the cheapest head (head parameters, then FLOPs) whose "
        "selection score is within one standard error of the best")


def selection_score(per_image: np.ndarray) -> tuple[float, float]:
    """(score, standard error) of per-image val accuracies (each averaged over seeds); the
    standard error is at least `binomial_se` of the score."""
    values = np.asarray(per_image, dtype=np.float64)
    n, score = len(values), float(values.mean())
    spread = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return score, max(spread, binomial_se(score, n))


def binomial_se(score: float, n: int) -> float:
    """The standard error of an accuracy `score` on n images with the score smoothed by
    Laplace's rule, so that 0 % and 100 % keep an uncertainty (1 with no image)."""
    if n < 1:
        return 1.0
    p = (n * score + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / n)


def cost(head: HeadResult) -> tuple[int, int]:
    """What 'cheapest' orders by: head parameters, then head FLOPs."""
    return head.head_params, head.head_flops


Cost = Callable[[HeadResult], tuple]  # what 'cheapest' orders by: `cost`, `pairs.cost_of`


def one_standard_error(heads: Sequence[HeadResult], scores: dict[str, float],
                       se: dict[str, float], cost: Cost = cost) -> tuple[str, str]:
    """(recommended, best): the best-scoring head (ties: the cheaper) and the cheapest head
    whose score is at least the best's minus the best's standard error."""
    best = max(heads, key=lambda h: (scores[h.head], tuple(-c for c in cost(h)))).head
    floor = scores[best] - se[best]
    within = [h for h in heads if scores[h.head] >= floor - 1e-12]
    return min(within, key=cost).head, best


def recommend(heads: Sequence[HeadResult], correct: dict[str, np.ndarray],
              selection: str = "val", cost: Cost = cost, rule: str = RULE) -> Verdict:
    """The verdict's choice on the selection data (its sentence is `sentence`, once the findings
    are known). `correct`: head -> per-image accuracy on the selection data (`selection`:
    "val", or "cv" for cross-validation over train + val), averaged over its seeds; a head
    without it counts by its mean val accuracy with a binomial standard error. `cost` and
    `rule`: what 'cheapest' means (several backbones: `pairs.cost_of`, `pairs.RULE`)."""
    if not heads:
        raise ValueError("no heads to recommend from")
    scores, se, n = {}, {}, 0
    for h in heads:
        if h.head in correct:
            scores[h.head], se[h.head] = selection_score(correct[h.head])
            n = max(n, len(correct[h.head]))
    for h in heads:
        if h.head not in scores:
            acc = h.seed_metric("val")
            p = float(np.mean(list(acc.values()))) if acc else 0.0
            size = h.seeds[0].val.n if h.seeds else 0
            scores[h.head], se[h.head] = p, binomial_se(p, size)
            n = max(n, size)
    recommended, best = one_standard_error(heads, scores, se, cost)
    return Verdict(text="", rule=rule, selection=selection, n_images=n, scores=scores, se=se,
                   best=best, recommended=recommended)


def sentence(verdict: Verdict, heads: Sequence[HeadResult], found: Sequence[Finding],
             cost: Cost = cost) -> str:
    """The answer in one sentence: the recommended head, why (selection), and what the test
    split says about it (the run's paired accuracy findings, Holm-adjusted)."""
    by = {h.head: h for h in heads}
    rec = by[verdict.recommended]
    versus = [f for f in found if f.kind == "accuracy" and verdict.recommended in (f.a, f.b)
              and f.image_ci]
    beaten = [f for f in versus if f.significant and _gain(f, verdict.recommended) < 0]
    if verdict.recommended == verdict.best:
        cheaper = [h for h in heads if cost(h) < cost(rec)]
        first = (f"{_name(rec)} is recommended ({_cost_text(rec)}): "
                 + (f"it beats every cheaper {_kind(rec)} in selection by more than one "
                    f"standard error "
                    f"({_pp(verdict.scores[rec.head])} vs {_best_of(cheaper, verdict)} on "
                    f"{_selection_images(verdict)})"
                    if cheaper else f"it scores best in selection ({_selection_images(verdict)})"
                    f" and no {_kind(rec)} is cheaper"))
    else:
        within = (f"({_pp(verdict.scores[verdict.best])} vs {_pp(verdict.scores[rec.head])} "
                  f"± {_pp(verdict.se[verdict.best])} on {_selection_images(verdict)})")
        first = (f"no head is measurably better than the cheapest, {_name(rec)} "
                 f"({_cost_text(rec)}): recommended — the best in selection, {verdict.best}, "
                 f"is within one standard error {within}"
                 if _kind(rec) == "head" else
                 f"{_name(rec)} ({_cost_text(rec)}) is recommended: the cheapest pair within "
                 f"one standard error of the best in selection, {verdict.best} {within}")
    if beaten:
        f = min(beaten, key=lambda f: _gain(f, verdict.recommended))
        other = f.b if f.a == verdict.recommended else f.a
        return (f"{first}; selection and test disagree: {other} is better on test by "
                f"{_signed_pp(-_gain(f, verdict.recommended))} {_interval(f, verdict.recommended, -1)}"
                f", significant after Holm over {f.n_tests} comparisons — the recommendation "
                "is made on selection data only and stands")
    if not versus:
        return first
    f = max(versus, key=lambda f: abs(f.diff))  # the largest either way
    other = f.b if f.a == verdict.recommended else f.a
    width = np.median([(g.image_ci[1] - g.image_ci[0]) / 2 for g in versus])
    return (f"{first}; the largest difference on test was {other} "
            f"{_signed_pp(-_gain(f, verdict.recommended))} "
            f"{_interval(f, verdict.recommended, -1)}, not significant after Holm "
            f"({_test_images(heads)} test images resolve about ±{100 * width:.0f} pp)")


def _name(head: HeadResult) -> str:
    """The recommended head as the sentence names it: 'gap', or 'gap on resnet50'."""
    backbone = getattr(head, "backbone", None)
    return head.head if backbone is None else f"{head.name} on {backbone}"


def _cost_text(head: HeadResult) -> str:
    if getattr(head, "backbone", None) is None:
        return f"{_count(head.head_params)} head parameters"
    return (f"{head.latency_ms_b1:.1f} ms per image at batch 1, {_count(head.total_params)} "
            "parameters")


def _kind(head: HeadResult) -> str:
    return "head" if getattr(head, "backbone", None) is None else "pair"


def _selection_images(verdict: Verdict) -> str:
    if verdict.selection == "cv":
        return f"{verdict.n_images:,} train + val images in cross-validation"
    return f"{verdict.n_images:,} val images"


def _gain(f: Finding, head: str) -> float:
    """The recommended head's accuracy minus the other's, per image, from a finding."""
    return f.diff if f.a == head else -f.diff


def _interval(f: Finding, head: str, sign: int) -> str:
    """The finding's interval over test images, as the other head minus `head` (sign -1)."""
    lo, hi = f.image_ci
    if (f.a == head) == (sign < 0):
        lo, hi = -hi, -lo
    return f"[{_pp_value(lo)}, {_pp_value(hi)}]"


def _test_images(heads: Sequence[HeadResult]) -> str:
    sizes = {s.test.n for h in heads for s in h.seeds if getattr(s.test, "n", None)}
    return f"{max(sizes):,}" if sizes else "the"


def _best_of(heads: Sequence[HeadResult], verdict: Verdict) -> str:
    top = max(heads, key=lambda h: verdict.scores[h.head])
    return f"{top.head}'s {_pp(verdict.scores[top.head])}"


def _pp(x: float) -> str:
    return f"{100 * x:.1f} %"


def _signed_pp(x: float) -> str:
    return f"{_pp_value(x)} pp"


def _pp_value(x: float) -> str:
    """A fraction as signed percentage points, one decimal ('+0.0', never '-0.0')."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def _count(n: int) -> str:
    return f"{n:,}"
