"""Findings: plain-words statements of what a run's numbers support, one line each, in % like
the table, each with its evidence.

The heads they are about: the recommended head (`run.best_head`, chosen on the selection data,
so the test split never picks it), and the reference head of the named claims
(`heads.NAMED_CLAIMS`: gap, else the best any-size head on val) against each head a claim pits
against it and each fixed-size head (its opponents). In order:

- ``accuracy``: every head against the recommended head, then the named claims themselves (gap
  vs flatten, gap vs avgpool) where the first did not already compare them: the **heads**
  family, fixed before any number is seen (a set: a pair is compared once; heads not in the
  run are left out);
- ``overfitting``: the reference against each opponent on the train − test gap, a difference
  of two splits without per-image values: described with its interval over seeds, never tested;
- each analysis's `pair_findings` on (reference, opponent) and its `findings` on its section
  (translation, resolution, small data): one family per analysis;
- ``augmentation`` / ``finetune``: every variant against the frozen head it varies: the
  **variants** family;
- with several backbones the heads family is one per backbone (`heads on <backbone>`, each
  backbone's best head in selection in the recommended head's place), the recommended pair
  meets each other backbone's best pair in the **backbones** family, and each named claim's
  per-image difference (gap − flatten, ...) is compared between every two backbones (the
  difference of the differences) in the **claims across backbones** family. Overfitting and
  the analyses' findings are about the recommended backbone's heads (its reference head and
  opponents), though the analyses run on every pair.
  Each family keeps its own error rate at 5 %: with k backbones the run makes k heads families,
  so the chance of some false claim among all of them grows with k (as it does with every
  analysis added); the verdict quotes only the recommended pair's comparisons.

How a difference is tested: every finding with per-image values of both sides gets one paired
procedure over the test images, a sign-flip randomisation test of the mean difference
(`evaluate.sign_flip`), whose p-value and 95 % interval come from the same random sign patterns
(the interval is the test inverted, so it excludes 0 exactly when p < 0.05). The p-values are
adjusted by Holm–Bonferroni (`evaluate.holm`) within each family: a difference is significant
when its adjusted p < 0.05, in the direction of its sign, which keeps the chance of any false
claim within a family at most 5 %. The interval is the unadjusted one: it can exclude 0 while
the adjusted p is above 0.05, which is not a contradiction, and the text says so. Because the
families are fixed in advance and separate, `analyze` adding a section never changes the heads
family's p-values (nor the verdict that quotes them). Intervals over seeds are reported, never
tested (with 3 seeds a corrected t-test could never pass); a finding without per-image values
says "not tested" and claims nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..evaluate import holm, paired_diff_ci, select_head, sign_flip
from ..heads import NAMED_CLAIMS
from ..results import Finding, HeadResult
from ..run import Run
from .registry import list_analyses

ALPHA = 0.05  # family-wise error rate of one run's findings


def findings(run: Run) -> list[Finding]:
    """The run's findings, in the order of the module's docstring; every test Holm-adjusted
    within its family."""
    heads = [h for h in run.heads if h.seeds]
    if not heads:
        return []
    # Averaging over seeds pools every seed's predictions while keeping the test's unit the
    # test image (the same image under several seeds is not independent evidence).
    correct = {h.head: run.correct(h.head).mean(axis=0) for h in heads if h.head in run.predictions}
    best = _selected_head(run, heads)
    groups = {}  # backbone -> its heads (None: the run's one backbone)
    for h in heads:
        groups.setdefault(h.backbone, []).append(h)
    tops = {name: best if best in group else _top(run, group) for name, group in groups.items()}
    out = [_family(_accuracy_finding(a, b, correct), heads_family(name))
           for name, group in groups.items() for a, b in head_pairs(group, tops[name])]
    if len(groups) > 1:
        out += [_family(_accuracy_finding(best, top, correct), BACKBONES)
                for top in tops.values() if top is not best]
        out += [_family(f, CLAIMS_ACROSS) for f in _claims_across(groups, correct)]
    ran = [(a, run.analyses[a.name]) for a in list_analyses()
           if isinstance(run.analyses.get(a.name), dict)]
    mine = groups[best.backbone]  # the findings of the analyses: the recommended backbone's
    ref = reference_head(mine)
    opponents = _opponents(mine, ref)
    out += [_overfit_finding(ref, other) for other in opponents]
    for a, section in ran:
        mine = [f for other in opponents if a.pair_findings
                for f in a.pair_findings(section, ref, other)]
        about = [h for h in (ref, best) if h]
        mine += [f for f in (a.findings(section, about) if a.findings else [])]
        out += [_family(f, a.name) for f in mine]
    out += [_family(_variant_finding(run, h), VARIANTS) for h in heads
            if h.variant and h.variant.of in correct]
    out = [f for f in out if f]
    drafts = [f for f in out if isinstance(f, Draft)]
    for family in dict.fromkeys(f.d.family for f in drafts):
        holm_correct([f.d for f in drafts if f.d.family == family])
    return [f.finding() if isinstance(f, Draft) else f for f in out]


HEADS, VARIANTS = "heads", "variants"  # the families of the run's own comparisons
# with several backbones: the recommended pair against each other backbone's best pair, and
# each named claim's difference compared between backbones
BACKBONES, CLAIMS_ACROSS = "backbones", "claims across backbones"


def heads_family(backbone: str | None) -> str:
    """The family of the comparisons between heads of one backbone."""
    return HEADS if backbone is None else f"{HEADS} on {backbone}"


def _top(run: Run, group: list[HeadResult]) -> HeadResult:
    """A backbone's best head in selection (the verdict's scores), else on val."""
    scores = run.verdict.scores if run.verdict else {}
    if all(h.head in scores for h in group):
        return max(group, key=lambda h: scores[h.head])
    return select_head(group)


def _claims_across(groups: dict[str | None, list[HeadResult]], correct: dict) -> list[Draft]:
    """Does a named claim's answer (gap vs flatten, ...) depend on the backbone? For each claim
    and each two backbones with both heads, the per-image difference of the differences
    (a − b on one backbone minus a − b on the other) over the same test images."""
    out = []
    for claim in NAMED_CLAIMS:
        diffs = {}
        for name, group in groups.items():
            frozen = {h.name: h for h in group if h.variant is None}
            a, b = frozen.get(claim.head), frozen.get(claim.versus)
            if a and b and a.head in correct and b.head in correct:
                diffs[name] = (a, b)
        names = list(diffs)
        for i, one in enumerate(names):
            for two in names[i + 1:]:
                out.append(_across(claim, one, two, diffs, correct))
    return out


def _across(claim: Any, one: str, two: str, diffs: dict, correct: dict) -> Draft:
    (a1, b1), (a2, b2) = diffs[one], diffs[two]
    s1, s2 = _seed_gap(a1, b1), _seed_gap(a2, b2)
    d = paired_difference(s1, s2, correct[a1.head] - correct[b1.head],
                          correct[a2.head] - correct[b2.head])
    what = f"{claim.head} − {claim.versus}"
    return Draft(d, "claim by backbone", f"{one}:{what}", f"{two}:{what}", lambda d: (
        f"does {what} depend on the backbone? on {one} {points(mean_of(s1))}, on {two} "
        f"{points(mean_of(s2))}; {d.phrase('difference of the differences')} — "
        + ("it does" if d.significant else "no evidence that it does" if d.p_value is not None
           else "not tested per image")))


def _seed_gap(a: HeadResult, b: HeadResult) -> dict[int, float]:
    """{seed: a's test accuracy − b's} over the seeds both have."""
    va, vb = a.seed_metric("test"), b.seed_metric("test")
    return {s: va[s] - vb[s] for s in va if s in vb}


def _family(f: Any, family: str) -> Any:
    """A draft finding put in `family` (plain findings, untested, are left as they are)."""
    if isinstance(f, Draft):
        f.d.family = family
    return f


def head_pairs(heads: list[HeadResult], best: HeadResult) -> list[tuple[HeadResult, HeadResult]]:
    """The heads family, fixed before looking: every head against the recommended one, then
    each named claim (gap vs flatten, gap vs avgpool) between frozen heads of the run not
    compared already; each pair once."""
    pairs = [(best, h) for h in heads if h is not best]
    frozen = {h.name: h for h in heads if h.variant is None}
    for claim in NAMED_CLAIMS:
        a, b = frozen.get(claim.head), frozen.get(claim.versus)
        if a and b and {a.head, b.head} not in [{x.head, y.head} for x, y in pairs]:
            pairs.append((a, b))
    return pairs


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


def percent(x: float) -> str:
    """A fraction as a percentage, one decimal: '93.7 %'."""
    return f"{100 * x:.1f} %"


def points(x: float) -> str:
    """A difference of fractions in signed percentage points: '+0.7 pp' (never '-0.0')."""
    return f"{round(100 * x, 1) + 0.0:+.1f} pp"


def _bounds(lo: float, hi: float) -> str:
    return f"[{round(100 * lo, 1) + 0.0:+.1f}, {round(100 * hi, 1) + 0.0:+.1f}] pp"


@dataclass
class PairedDiff:
    """A paired difference a − b: its t interval over seeds (reported, never tested) and, with
    per-image values, one paired sign-flip procedure over test images giving its unadjusted
    95 % interval and p-value, which `holm_correct` adjusts within the finding's family.

    Attributes:
        diff: mean over the seeds both have (over images when there is no seed).
        image_diff: mean over images of the per-image difference: the tested statistic; its
            sign gives the direction of a significant difference.
        image: the sign-flip interval of `image_diff` (the test inverted).
        family: the Holm family the p-value is adjusted in (`findings`).
    """

    diff: float
    n_seeds: int
    t: tuple[float, float] | None = None
    image: tuple[float, float] | None = None
    n_images: int = 0
    test: str | None = None
    p_value: float | None = None
    image_diff: float = 0.0
    p_adjusted: float | None = None
    n_tests: int = 0
    family: str | None = None

    @property
    def significant(self) -> bool:
        """The Holm-adjusted p-value is below ALPHA (never before the correction, never for a
        difference tested over seeds only)."""
        return self.p_adjusted is not None and self.p_adjusted < ALPHA and self.image_diff != 0

    @property
    def lo_hi(self) -> tuple[float | None, float | None]:
        """The interval the finding stands on: over test images when tested, else over seeds."""
        return self.image or self.t or (None, None)

    def phrase(self, what: str = "difference") -> str:
        """'difference +3.0 pp, 95 % interval [+1.0, +5.0] pp, p = 0.002 (paired sign-flip test
        over 150 test images, unadjusted); Holm p = 0.03 over the 8 comparisons of the heads
        family' or, untested, the interval over seeds."""
        if self.p_value is None:
            if self.t:
                return (f"{what} {points(self.diff)}, 95 % interval over {self.n_seeds} seeds "
                        f"{_bounds(*self.t)} (described, not tested)")
            return (f"{what} {points(self.diff)} ({self.n_seeds} seed"
                    f"{'s' if self.n_seeds != 1 else ''}, no per-image values: not tested)")
        text = (f"{what} {points(self.image_diff)}, 95 % interval {_bounds(*self.image)}, "
                f"{p_text(self.p_value)} ({self.test} over {self.n_images} test images, "
                "unadjusted)")
        if self.p_adjusted is not None:
            text += (f"; Holm {p_text(self.p_adjusted)} over the {self.n_tests} comparison"
                     f"{'s' if self.n_tests != 1 else ''} of the {self.family or 'run'} family")
        return text

    def finding(self, kind: str, a: str, b: str, text: str) -> Finding:
        lo, hi = self.lo_hi
        return Finding(text=text, kind=kind, a=a, b=b, diff=self.diff, lo=lo, hi=hi,
                       significant=self.significant, n_seeds=self.n_seeds,
                       seed_ci=list(self.t) if self.t else None,
                       image_ci=list(self.image) if self.image else None, test=self.test,
                       p_value=self.p_value, p_adjusted=self.p_adjusted, family=self.family,
                       n_tests=self.n_tests or None)


def paired_difference(a: dict[int, float], b: dict[int, float],
                      per_image_a: Any = None, per_image_b: Any = None) -> PairedDiff:
    """a − b over the seeds both have (t interval from 2 seeds on), plus the paired sign-flip
    interval and test over test images when per-image values (N,) of both are given.

    Example:
        >>> d = paired_difference({0: 0.9, 1: 0.92, 2: 0.91}, {0: 0.7, 1: 0.71, 2: 0.72},
        ...                       [1] * 90 + [0] * 10, [1] * 70 + [0] * 30)
        >>> round(d.diff, 3), d.n_seeds, d.test, d.significant  # not before the correction
        (0.2, 3, 'paired sign-flip test', False)
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
        d.image_diff, lo, hi, d.p_value = sign_flip(per_image_a, per_image_b)
        d.image, d.n_images, d.test = (lo, hi), len(per_image_a), "paired sign-flip test"
        if not seeds:
            d.diff = d.image_diff
    return d


def holm_correct(diffs: Iterable[PairedDiff]) -> None:
    """Holm–Bonferroni over the tested ones of `diffs` (one family of tests): sets each one's
    `p_adjusted` and `n_tests`."""
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
    text = "no significant difference after the Holm correction"
    if d.image and (d.image[0] > 0 or d.image[1] < 0):
        text += (" (the unadjusted interval excludes 0, but Holm's correction for the family's "
                 f"{d.n_tests} comparisons asks more: not a contradiction)")
    return text


def per_image_values(x: Any) -> np.ndarray | None:
    """Per-image values of an analysis section as an array; None when absent."""
    return np.asarray(x, dtype=np.float64) if isinstance(x, list) and x else None


def _accuracy_finding(best: HeadResult, other: HeadResult, correct: dict) -> Draft:
    a, b = best.head, other.head
    va, vb = best.seed_metric("test"), other.seed_metric("test")
    d = paired_difference(va, vb, correct.get(a), correct.get(b))
    return Draft(d, "accuracy", a, b, lambda d: (
        f"{a} vs {b}{_params_phrase(best, other)}: test accuracy {percent(mean_of(va))} vs "
        f"{percent(mean_of(vb))}, {d.phrase()} — {verdict(d, a, b)}"))


def _variant_finding(run: Run, v: HeadResult) -> Draft:
    """A variant against the frozen head it varies. Augmented views: paired by seed (same
    initialisation and batch order), per image on seed-averaged correctness. Fine-tuned: one
    seed against the seed it started from, per image."""
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
        f"{what}: test accuracy {percent(mean_of(va))} vs {percent(mean_of(vb))} frozen, "
        f"{d.phrase('change')} — " + _helps(d) + f"; val selects {chosen}"))


def _helps(d: PairedDiff) -> str:
    if d.significant:
        return "it helps" if d.image_diff > 0 else "it hurts"
    if d.p_value is None:
        return "not tested per image, so no change is claimed"
    return "it does not measurably help: no significant change after the Holm correction"


def _params_phrase(a: HeadResult, b: HeadResult) -> str:
    """How the two compare in parameters: the heads', or in all (backbone and head) when
    they run on different backbones."""
    whole = a.backbone != b.backbone
    pa, pb = (a.total_params, b.total_params) if whole else (a.head_params, b.head_params)
    what = "parameters in all" if whole else "head parameters"
    if not pa or not pb:
        return ""
    if pa == pb:
        return f" with as many {what}"
    ratio, word = (pb / pa, "fewer") if pa < pb else (pa / pb, "more")
    return f" with {ratio:.{0 if ratio >= 10 else 1}f}× {word} {what}"


def _overfit_finding(ref: HeadResult, other: HeadResult) -> Draft:
    a, b = other.head, ref.head
    va, vb = other.overfit(), ref.overfit()
    d = paired_difference(va, vb)
    return Draft(d, "overfitting", a, b, lambda d: (
        f"overfitting: {a}'s train − test gap {points(mean_of(va))} vs {b}'s "
        f"{points(mean_of(vb))}, {d.phrase()}: a difference of two splits has no per-image "
        "values"))


def per_seed(ci: dict | None, seeds: Sequence[int]) -> dict[int, float]:
    """An analysis cell's per-seed values as {seed: value} (seeds from its `seed_ids`)."""
    if not ci or "values" not in ci:
        return {}
    return {int(s): float(v) for s, v in zip(seeds, ci["values"])}


__all__ = ["ALPHA", "BACKBONES", "CLAIMS_ACROSS", "HEADS", "VARIANTS", "heads_family", "Draft",
           "PairedDiff", "findings", "head_pairs",
           "holm_correct", "mean_of", "p_text", "paired_difference", "per_image_values",
           "per_seed", "percent", "points", "reference_head", "verdict"]
