"""Findings: plain-words statements of what a run's numbers support, each with its interval.

- ``accuracy``: every head against the selected head (`run.best_head`, chosen on val, so the
  test split never picks the reference): a paired t interval over seeds (seeds matched by id)
  and, when the run has test predictions, a paired bootstrap over test images of the per-image
  correctness averaged over seeds.
- ``overfitting``, ``translation``, ``small_data``: gap (or the best any-size head on val)
  against each fixed-size head: train − test gap, consistency at the largest shift, test
  accuracy at the smallest shot count; paired t over seeds.
- ``resolution``: which heads run at other input sizes and how accuracy changes there.

A difference is `significant` only when every interval computed for it excludes zero;
otherwise the text says "no significant difference". With one seed there is no interval over
seeds, which the text says; the bootstrap is then the only evidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..evaluate import bootstrap_diff_ci, paired_diff_ci, select_head
from ..run import Finding, HeadResult, Run


def findings(run: Run) -> list[Finding]:
    """The run's findings, in order: accuracy against the selected head, the reference head
    against each fixed-size head, resolution."""
    heads = [h for h in run.heads if h.seeds]
    if not heads:
        return []
    # Averaging over seeds pools every seed's predictions while keeping the bootstrap's unit
    # the test image (the same image under several seeds is not independent evidence).
    correct = {h.head: run.correct(h.head).mean(axis=0) for h in heads if h.head in run.predictions}
    best = _selected_head(run, heads)
    out = [_accuracy_finding(best, h, correct) for h in heads if h is not best]
    analyses = run.analyses
    ref = _reference_head(heads)
    for other in [h for h in heads if h.fixed_size] if ref else []:
        if ref is not best and other is not best:  # the forum question, whatever won
            out.append(_accuracy_finding(ref, other, correct))
        out.append(_overfit_finding(ref, other))
        if "shifts" in analyses:
            out.append(_translation_finding(ref, other, analyses["shifts"]))
        if "shots" in analyses:
            out.append(_shots_finding(ref, other, analyses["shots"]))
    if "sizes" in analyses:
        out += _resolution_findings(analyses["sizes"], [h for h in (ref, best) if h])
    return [f for f in out if f]


def _selected_head(run: Run, heads: list[HeadResult]) -> HeadResult:
    """The run's selected head (chosen on val by compare), else the one `select_head` picks."""
    named = [h for h in heads if h.head == run.best_head]
    return named[0] if named else select_head(heads)


def _reference_head(heads: list[HeadResult]) -> HeadResult | None:
    """gap (the best of its variants on val) if present, else the best any-size head on val."""
    pool = [h for h in heads if h.any_size]
    gap = [h for h in pool if h.spec.name == "gap"]  # the head the forum question is about
    return select_head(gap or pool) if pool else None


def _mean(values: dict[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


@dataclass
class PairedDiff:
    """A paired difference a − b with its intervals (t over seeds, bootstrap over images)."""

    diff: float
    n_seeds: int
    t: tuple[float, float] | None = None
    boot: tuple[float, float] | None = None
    n_images: int = 0

    @property
    def significant(self) -> bool:
        """Every computed interval excludes zero, all on the same side.

        A zero-width interval over seeds (every seed moved by exactly the same amount) says
        nothing about test-set sampling, so alone it never makes a difference significant.
        """
        intervals = [ci for ci in (self.t, self.boot) if ci is not None]
        if self.boot is None and self.t is not None and self.t[0] == self.t[1]:
            return False
        return bool(intervals) and (all(lo > 0 for lo, _ in intervals)
                                    or all(hi < 0 for _, hi in intervals))

    @property
    def lo_hi(self) -> tuple[float | None, float | None]:
        return self.t or self.boot or (None, None)

    def phrase(self, what: str = "difference") -> str:
        """'(difference +0.030, 95% CI [+0.010, +0.050] over 5 seeds; ...)'."""
        parts = [f"{what} {self.diff:+.3f}"]
        if self.t:
            parts.append(f"95% CI [{self.t[0]:+.3f}, {self.t[1]:+.3f}] over {self.n_seeds} seeds")
        else:
            parts.append(f"no interval over seeds with {self.n_seeds} seed"
                         f"{'s' if self.n_seeds != 1 else ''}")
        text = "(" + ", ".join(parts)
        if self.boot:
            only = " only" if not self.t else ""
            text += (f"; paired bootstrap{only} over {self.n_images} test images "
                     f"[{self.boot[0]:+.3f}, {self.boot[1]:+.3f}]")
        return text + ")"

    def finding(self, kind: str, a: str, b: str, text: str) -> Finding:
        lo, hi = self.lo_hi
        return Finding(text=text, kind=kind, a=a, b=b, diff=self.diff, lo=lo, hi=hi,
                       significant=self.significant, n_seeds=self.n_seeds,
                       seed_ci=list(self.t) if self.t else None,
                       bootstrap_ci=list(self.boot) if self.boot else None)


def paired_difference(a: dict[int, float], b: dict[int, float],
                      correct_a: np.ndarray | None = None,
                      correct_b: np.ndarray | None = None) -> PairedDiff:
    """a − b over the seeds both have (t interval from 2 seeds on), plus a bootstrap over
    test images when per-image correctness (N,) of both is given.

    Example:
        >>> d = paired_difference({0: 0.9, 1: 0.92, 2: 0.91}, {0: 0.7, 1: 0.71, 2: 0.72})
        >>> round(d.diff, 3), d.n_seeds, d.significant
        (0.2, 3, True)
    """
    seeds = sorted(set(a) & set(b))
    diff = float(np.mean([a[s] - b[s] for s in seeds])) if seeds else float("nan")
    t = None
    if len(seeds) >= 2:
        _, lo, hi = paired_diff_ci([a[s] for s in seeds], [b[s] for s in seeds])
        t = (float(lo), float(hi))
    boot, n_images = None, 0
    if correct_a is not None and correct_b is not None and len(correct_a) == len(correct_b) > 0:
        boot_diff, lo, hi = bootstrap_diff_ci(correct_a, correct_b)
        boot, n_images = (float(lo), float(hi)), len(correct_a)
        if not seeds:
            diff = boot_diff
    return PairedDiff(diff, len(seeds), t, boot, n_images)


def _verdict(d: PairedDiff, better: str, worse: str, claim: str = "more accurate") -> str:
    if d.significant:
        return f"{better if d.diff > 0 else worse} is {claim}"
    if d.t is None and d.boot is None:
        return "no interval can be computed, so no difference is claimed"
    return "no significant difference (the interval covers zero)"


def _accuracy_finding(best: HeadResult, other: HeadResult, correct: dict) -> Finding:
    a, b = best.head, other.head
    va, vb = best.seed_metric("test"), other.seed_metric("test")
    d = paired_difference(va, vb, correct.get(a), correct.get(b))
    text = (f"{a} vs {b}: test accuracy {_mean(va):.3f} vs {_mean(vb):.3f} {d.phrase()}"
            f"{_params_phrase(best, other)}; {b}'s train − test gap {_mean(other.overfit()):.3f}"
            f" vs {_mean(best.overfit()):.3f} — {_verdict(d, a, b)}")
    return d.finding("accuracy", a, b, text)


def _params_phrase(a: HeadResult, b: HeadResult) -> str:
    pa, pb = a.head_params, b.head_params
    if not pa or not pb:
        return ""
    if pa == pb:
        return " with as many head parameters"
    ratio, word = (pb / pa, "fewer") if pa < pb else (pa / pb, "more")
    return f" with {ratio:.{0 if ratio >= 10 else 1}f}× {word} head parameters"


def _overfit_finding(ref: HeadResult, other: HeadResult) -> Finding:
    a, b = other.head, ref.head
    va, vb = other.overfit(), ref.overfit()
    d = paired_difference(va, vb)
    text = (f"overfitting: {a}'s train − test gap {_mean(va):.3f} vs {b}'s {_mean(vb):.3f} "
            f"{d.phrase()} — {_verdict(d, a, b, 'more overfit')}")
    return d.finding("overfitting", a, b, text)


def _per_seed(ci: dict | None, seeds: Sequence[int]) -> dict[int, float]:
    """An analysis cell's per-seed values as {seed: value} (seeds from its `seed_ids`)."""
    if not ci or "values" not in ci:
        return {}
    return {int(s): float(v) for s, v in zip(seeds, ci["values"])}


def _translation_finding(ref: HeadResult, other: HeadResult, shifts: dict) -> Finding | None:
    a, b = ref.head, other.head
    heads, seeds = shifts.get("heads", {}), shifts.get("seed_ids", [])
    s = str(max(shifts["shifts"]))
    if a not in heads or b not in heads or s == "0":
        return None
    ca, cb = (_per_seed(heads[h]["consistency"].get(s), seeds) for h in (a, b))
    acc_a, acc_b = (heads[h]["accuracy"][s]["mean"] for h in (a, b))
    d = paired_difference(ca, cb)
    text = (f"translation by {s} px: consistency {a} {_mean(ca):.3f} vs {b} {_mean(cb):.3f} "
            f"{d.phrase()}, accuracy {acc_a:.3f} vs {acc_b:.3f} — "
            f"{_verdict(d, a, b, 'more consistent under shifts')}")
    return d.finding("translation", a, b, text)


def _shots_finding(ref: HeadResult, other: HeadResult, shots: dict) -> Finding | None:
    a, b = ref.head, other.head
    heads, seeds = shots.get("heads", {}), shots.get("seed_ids", [])
    if a not in heads or b not in heads or not shots.get("shots"):
        return None
    k = shots["shots"][0]
    va, vb = (_per_seed(heads[h][k]["test_accuracy"], seeds) for h in (a, b))
    ga, gb = (heads[h][k]["overfit_gap"]["mean"] for h in (a, b))
    per = ("the whole training split" if k == "all"
           else f"{k} image{'s' if k != '1' else ''} per class")
    d = paired_difference(va, vb)
    text = (f"small data ({per}): test accuracy {a} {_mean(va):.3f} vs {b} {_mean(vb):.3f} "
            f"{d.phrase()}; train − test gap {ga:.3f} vs {gb:.3f} — "
            f"{_verdict(d, a, b, 'more accurate with this little data')}")
    return d.finding("small_data", a, b, text)


def _resolution_findings(sizes: dict, refs: list[HeadResult]) -> list[Finding]:
    heads, base, seeds = sizes.get("heads", {}), str(sizes.get("base")), sizes.get("seed_ids", [])
    others = [str(s) for s in sizes.get("sizes", []) if str(s) != base]
    out = []
    fixed = sorted(h for h, per in heads.items()
                   if any("not_applicable" in per.get(s, {}) for s in others))
    if fixed and others:
        reason = next(heads[fixed[0]][s]["not_applicable"] for s in others
                      if "not_applicable" in heads[fixed[0]].get(s, {}))
        text = (f"resolution: {', '.join(fixed)} cannot run at {', '.join(others)} px ({reason});"
                f" the other heads run at every size")
        out.append(Finding(text=text, kind="resolution", a=None, b=None, diff=None, lo=None,
                           hi=None, significant=False))
    for label in dict.fromkeys(r.head for r in refs):
        if label not in heads or "values" not in heads[label].get(base, {}):
            continue
        at_base = _per_seed(heads[label][base], seeds)
        for s in others:
            at_s = _per_seed(heads[label].get(s), seeds)
            if not at_s:
                continue
            d = paired_difference(at_s, at_base)
            text = (f"resolution: {label} at {s} px {_mean(at_s):.3f} vs {_mean(at_base):.3f} at "
                    f"{base} px {d.phrase('change')} — "
                    + ("accuracy changes significantly" if d.significant else
                       "no significant change" if d.t or d.boot else
                       "no interval can be computed, so no change is claimed"))
            out.append(d.finding("resolution", f"{label}@{s}", f"{label}@{base}", text))
    return out


__all__ = ["findings", "PairedDiff", "paired_difference"]
