"""Findings: plain-words statements of what a run's numbers support, each with its evidence.

The heads they are about: the selected head (`run.best_head`, chosen on val, so the test split
never picks it), and the reference head of the named claims (`heads.NAMED_CLAIMS`: gap, else
the best any-size head on val) against each head a claim pits against it and each fixed-size
head (its opponents). In order:

- ``accuracy``: every head against the selected head; per opponent, the reference against it
  on accuracy and ``overfitting`` (train − test gap: no per-image values, a gap is a
  difference of two splits, so it is reported with its interval over seeds only and never
  tested), then each analysis's `pair_findings` on it (translation, small data);
- each analysis's `findings` on its whole section (resolution);
- ``augmentation`` / ``finetune``: every variant against the frozen head it varies.

An analysis writes its findings with the tools of this module (`paired_difference`, `Draft`,
`verdict`, `per_seed`, `per_image_values`, `mean_of`); see the analysis registry.

When a difference is called significant: every finding with per-image values of both sides
gets a two-sided paired test over the test images (`evaluate.paired_test`: McNemar's exact test
when every value is 0 or 1, e.g. correctness with one seed; otherwise a sign-flip randomisation
test on values averaged over seeds). The p-values of ALL tested findings of the run, the
analyses' included, are adjusted together by Holm–Bonferroni (`evaluate.holm`): a difference
is significant when its adjusted p < 0.05, in the direction of its sign. That keeps the chance
of claiming any difference between heads that are in truth equal at most 5%, however many heads
and metrics are compared. The paired t interval over seeds is reported alongside but not tested
(with 3 seeds a corrected t-test could never pass); a finding without per-image values says
"not tested" and claims nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..evaluate import bootstrap_diff_ci, holm, paired_diff_ci, paired_test, select_head
from ..heads import NAMED_CLAIMS
from ..results import Finding, HeadResult
from ..run import Run
from .registry import list_analyses

ALPHA = 0.05  # family-wise error rate of one run's findings


def findings(run: Run) -> list[Finding]:
    """The run's findings, in the order of the module's docstring; every test Holm-adjusted
    over all of them."""
    heads = [h for h in run.heads if h.seeds]
    if not heads:
        return []
    # Averaging over seeds pools every seed's predictions while keeping the test's unit the
    # test image (the same image under several seeds is not independent evidence).
    correct = {h.head: run.correct(h.head).mean(axis=0) for h in heads if h.head in run.predictions}
    best = _selected_head(run, heads)
    out = [_accuracy_finding(best, h, correct) for h in heads if h is not best]
    ran = [(a, run.analyses[a.name]) for a in list_analyses()
           if isinstance(run.analyses.get(a.name), dict)]
    ref = reference_head(heads)
    for other in _opponents(heads, ref):
        if ref is not best and other is not best:  # the forum question, whatever won
            out.append(_accuracy_finding(ref, other, correct))
        out.append(_overfit_finding(ref, other))
        out += [f for a, section in ran if a.pair_findings
                for f in a.pair_findings(section, ref, other)]
    about = [h for h in (ref, best) if h]
    out += [f for a, section in ran if a.findings for f in a.findings(section, about)]
    out += [_variant_finding(run, h) for h in heads if h.variant and h.variant.of in correct]
    out = [f for f in out if f]
    holm_correct([f.d for f in out if isinstance(f, Draft)])
    return [f.finding() if isinstance(f, Draft) else f for f in out]


def _selected_head(run: Run, heads: list[HeadResult]) -> HeadResult:
    """The run's selected head (chosen on val by compare), else the one `select_head` picks."""
    named = [h for h in heads if h.head == run.best_head]
    return named[0] if named else select_head(heads)


def reference_head(heads: list[HeadResult]) -> HeadResult | None:
    """The head the named claims are about (gap; the best of its specs on val) if present, else
    the best any-size head on val; frozen heads on the base view only (the analyses compare
    those)."""
    pool = [h for h in heads if h.any_size and h.variant is None]
    claimed = {c.head for c in NAMED_CLAIMS}
    named = [h for h in pool if h.spec.name in claimed]
    return select_head(named or pool) if pool else None


def _opponents(heads: list[HeadResult], ref: HeadResult | None) -> list[HeadResult]:
    """The heads a named claim pits against the reference, and every fixed-size head (the
    input-size question), in the run's order."""
    if ref is None:
        return []
    versus = {c.versus for c in NAMED_CLAIMS if c.head == ref.spec.name}
    return [h for h in heads if h is not ref and (h.fixed_size or h.spec.name in versus)]


def mean_of(values: dict[int, float]) -> float:
    """The mean of {seed: value}; nan without values."""
    return float(np.mean(list(values.values()))) if values else float("nan")


def p_text(p: float) -> str:
    """'p = 0.031', 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass
class PairedDiff:
    """A paired difference a − b: its t interval over seeds (reported, never tested) and, with
    per-image values, a paired bootstrap interval and a two-sided test over test images whose
    p-value `holm_correct` adjusts together with the run's other tests.

    Attributes:
        diff: mean over the seeds both have (over images when there is no seed).
        image_diff: mean over images of the per-image difference: the tested statistic; its
            sign gives the direction of a significant difference.
    """

    diff: float
    n_seeds: int
    t: tuple[float, float] | None = None
    boot: tuple[float, float] | None = None
    n_images: int = 0
    test: str | None = None
    p_value: float | None = None
    image_diff: float = 0.0
    p_adjusted: float | None = None
    n_tests: int = 0

    @property
    def significant(self) -> bool:
        """The Holm-adjusted p-value is below ALPHA (never before the correction, never for a
        difference tested over seeds only)."""
        return self.p_adjusted is not None and self.p_adjusted < ALPHA and self.image_diff != 0

    @property
    def lo_hi(self) -> tuple[float | None, float | None]:
        return self.t or self.boot or (None, None)

    def phrase(self, what: str = "difference") -> str:
        """'(difference +0.030, 95% CI [+0.010, +0.050] over 3 seeds; paired over 100 test
        images: bootstrap 95% CI [...], McNemar exact test p = 0.002, Holm-adjusted p = 0.03
        over 14 tests)'."""
        parts = [f"{what} {self.diff:+.3f}"]
        if self.t:
            parts.append(f"95% CI [{self.t[0]:+.3f}, {self.t[1]:+.3f}] over {self.n_seeds} seeds")
        else:
            parts.append(f"no interval over seeds with {self.n_seeds} seed"
                         f"{'s' if self.n_seeds != 1 else ''}")
        text = "(" + ", ".join(parts)
        if self.p_value is None:
            return text + ("; interval over seeds only, not tested)" if self.t
                           else "; no per-image values, not tested)")
        text += (f"; paired over {self.n_images} test images: bootstrap 95% CI "
                 f"[{self.boot[0]:+.3f}, {self.boot[1]:+.3f}], {self.test} {p_text(self.p_value)}")
        if self.p_adjusted is not None:
            text += (f", Holm-adjusted {p_text(self.p_adjusted)} over {self.n_tests} "
                     f"test{'s' if self.n_tests != 1 else ''}")
        return text + ")"

    def finding(self, kind: str, a: str, b: str, text: str) -> Finding:
        lo, hi = self.lo_hi
        return Finding(text=text, kind=kind, a=a, b=b, diff=self.diff, lo=lo, hi=hi,
                       significant=self.significant, n_seeds=self.n_seeds,
                       seed_ci=list(self.t) if self.t else None,
                       bootstrap_ci=list(self.boot) if self.boot else None, test=self.test,
                       p_value=self.p_value, p_adjusted=self.p_adjusted)


def paired_difference(a: dict[int, float], b: dict[int, float],
                      per_image_a: Any = None, per_image_b: Any = None) -> PairedDiff:
    """a − b over the seeds both have (t interval from 2 seeds on), plus a paired bootstrap
    interval and test over test images when per-image values (N,) of both are given.

    Example:
        >>> d = paired_difference({0: 0.9, 1: 0.92, 2: 0.91}, {0: 0.7, 1: 0.71, 2: 0.72},
        ...                       [1] * 90 + [0] * 10, [1] * 70 + [0] * 30)
        >>> round(d.diff, 3), d.n_seeds, d.test, d.significant  # not before the correction
        (0.2, 3, 'McNemar exact test', False)
        >>> holm_correct([d]); d.significant
        True
    """
    seeds = sorted(set(a) & set(b))
    diff = float(np.mean([a[s] - b[s] for s in seeds])) if seeds else float("nan")
    t = None
    if len(seeds) >= 2:
        _, lo, hi = paired_diff_ci([a[s] for s in seeds], [b[s] for s in seeds])
        t = (float(lo), float(hi))
    d = PairedDiff(diff, len(seeds), t)
    both = per_image_a is not None and per_image_b is not None
    if both and len(per_image_a) == len(per_image_b) > 0:
        d.image_diff, lo, hi = bootstrap_diff_ci(per_image_a, per_image_b)
        d.boot, d.n_images = (float(lo), float(hi)), len(per_image_a)
        d.p_value, d.test = paired_test(per_image_a, per_image_b)
        if not seeds:
            d.diff = d.image_diff
    return d


def holm_correct(diffs: Iterable[PairedDiff]) -> None:
    """Holm–Bonferroni over the tested ones of `diffs` (one run's family of tests): sets each
    one's `p_adjusted` and `n_tests`."""
    tested = [d for d in diffs if d.p_value is not None]
    for d, p in zip(tested, holm([d.p_value for d in tested])):
        d.p_adjusted, d.n_tests = p, len(tested)


@dataclass
class Draft:
    """A finding waiting for the correction: its text is written once `d.p_adjusted` is known."""

    d: PairedDiff
    kind: str
    a: str
    b: str
    text: Callable[[PairedDiff], str]

    def finding(self) -> Finding:
        return self.d.finding(self.kind, self.a, self.b, self.text(self.d))


def verdict(d: PairedDiff, better: str, worse: str, claim: str = "more accurate") -> str:
    """The end of a finding's text: which head is `claim`, or why no difference is claimed."""
    if d.significant:
        return f"{better if d.image_diff > 0 else worse} is {claim}"
    if d.p_value is None:
        return "not tested per image, so no difference is claimed"
    return "no significant difference after the Holm correction"


def per_image_values(x: Any) -> np.ndarray | None:
    """Per-image values of an analysis section as an array; None when absent."""
    return np.asarray(x, dtype=np.float64) if isinstance(x, list) and x else None


def _accuracy_finding(best: HeadResult, other: HeadResult, correct: dict) -> Draft:
    a, b = best.head, other.head
    va, vb = best.seed_metric("test"), other.seed_metric("test")
    d = paired_difference(va, vb, correct.get(a), correct.get(b))
    return Draft(d, "accuracy", a, b, lambda d: (
        f"{a} vs {b}: test accuracy {mean_of(va):.3f} vs {mean_of(vb):.3f} {d.phrase()}"
        f"{_params_phrase(best, other)}; {b}'s train − test gap {mean_of(other.overfit()):.3f}"
        f" vs {mean_of(best.overfit()):.3f} — {verdict(d, a, b)}"))


def _variant_finding(run: Run, v: HeadResult) -> Draft:
    """A variant against the frozen head it varies. Augmented views: paired by seed (same
    initialisation and batch order), per image on seed-averaged correctness. Fine-tuned: one
    seed against the seed it started from, per image (McNemar, paired bootstrap)."""
    base = run.head(v.variant.of)
    if v.finetuned:
        seed = v.variant.from_seed
        va = {seed: v.seeds[0].test.accuracy}
        vb = {seed: base.seed_metric("test")[seed]}
        ia = run.correct(v.head)[0].astype(float)
        ib = run.correct(base.head)[run.predictions[base.head].of_seed(seed)].astype(float)
        what, kind = f"fine-tuning {base.head} (from its seed {seed})", "finetune"
    else:
        va, vb = v.seed_metric("test"), base.seed_metric("test")
        ia, ib = run.correct(v.head).mean(axis=0), run.correct(base.head).mean(axis=0)
        what, kind = f"{v.variant.aug_views} augmented views for {base.head}", "augmentation"
    d = paired_difference(va, vb, ia, ib)
    chosen = select_head([base, v]).head  # which of the two val prefers
    return Draft(d, kind, v.head, base.head, lambda d: (
        f"{what}: test accuracy {mean_of(va):.3f} vs {mean_of(vb):.3f} frozen "
        f"{d.phrase('change')} — " + _helps(d) + f"; val selects {chosen}"))


def _helps(d: PairedDiff) -> str:
    if d.significant:
        return "it helps" if d.image_diff > 0 else "it hurts"
    if d.p_value is None:
        return "not tested per image, so no change is claimed"
    return "it does not measurably help: no significant change after the Holm correction"


def _params_phrase(a: HeadResult, b: HeadResult) -> str:
    pa, pb = a.head_params, b.head_params
    if not pa or not pb:
        return ""
    if pa == pb:
        return " with as many head parameters"
    ratio, word = (pb / pa, "fewer") if pa < pb else (pa / pb, "more")
    return f" with {ratio:.{0 if ratio >= 10 else 1}f}× {word} head parameters"


def _overfit_finding(ref: HeadResult, other: HeadResult) -> Draft:
    a, b = other.head, ref.head
    va, vb = other.overfit(), ref.overfit()
    d = paired_difference(va, vb)
    return Draft(d, "overfitting", a, b, lambda d: (
        f"overfitting: {a}'s train − test gap {mean_of(va):.3f} vs {b}'s {mean_of(vb):.3f} "
        f"{d.phrase()} — {verdict(d, a, b, 'more overfit')}"))


def per_seed(ci: dict | None, seeds: Sequence[int]) -> dict[int, float]:
    """An analysis cell's per-seed values as {seed: value} (seeds from its `seed_ids`)."""
    if not ci or "values" not in ci:
        return {}
    return {int(s): float(v) for s, v in zip(seeds, ci["values"])}


__all__ = ["ALPHA", "Draft", "PairedDiff", "findings", "holm_correct", "mean_of", "p_text",
           "paired_difference", "per_image_values", "per_seed", "reference_head", "verdict"]
