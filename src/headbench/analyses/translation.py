"""Translation (``shifts``): accuracy and consistency of every head on translated test crops.

Every view is a crop of the same resize to max(S/crop_pct, S + 2·margin) with
margin = max(shifts), its window offset by (dx, dy); so no padding enters any view. Two
consistency figures:

- *Consistency at s* (the curve): the fraction of (image, direction) pairs whose top-1 class
  agrees between the unshifted view and the view shifted by s in that direction: pairs exactly
  s pixels apart. Consistency at 0 is 1 by definition. *Accuracy at s* is averaged over the
  directions.
- *Zhang consistency* (Zhang 2019, "Making convolutional networks shift-invariant again"):
  the fraction of pairs of two independently shifted crops of the same image whose top-1
  classes agree, many pairs per image. Both shifts of a pair are drawn uniformly within
  ±margin; here from `ZHANG_OFFSETS` integer offsets (dx, dy) drawn once (seeded) uniformly
  from the square [-margin, margin]², the two of a pair distinct, `ZHANG_PAIRS` pairs per image,
  the same pairs for every head and seed. Capping the distinct offsets caps the extra feature
  extractions (one per offset); random offsets rather than a regular grid, because a grid's
  differences are all multiples of its step, and a CNN's consistency depends on the shift
  modulo its stride. An ImageNet ResNet50 scores about 89% (Zhang: ±16 px on 224 px crops).

Because every view comes from the larger resize, accuracy at shift 0 can differ slightly from
the run's test accuracy (standard resize). Per test image, the section also keeps each head's
consistency averaged over seeds (and directions or pairs), so findings can test a difference
between heads image by image (`translation_finding`). The report shows the accuracy and
consistency curves and, next to them, the Zhang consistency per head.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import progress as _progress
from ..config import analysis_option, parse_shifts
from ..evaluate import ci_summary
from ..images import View
from ..figures import Paragraph, Plot, as_ci, ci_lines, ci_note, finite, keyed_series, pct, per_head
from ..results import HeadResult
from ..run import Run
from .context import UNIT, RunContext
from .findings import (Draft, mean_of, paired_difference, per_image_values, per_seed, percent,
                       verdict)
from .registry import register_analysis

DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
ZHANG_OFFSETS = 16  # distinct shift positions (one feature extraction each)
ZHANG_PAIRS = 10    # pairs of shifted crops per test image
ZHANG_SEED = 0
CONSISTENCY_DEFINITION = (
    "fraction of (test image, direction) pairs whose top-1 class agrees between the unshifted "
    "view and the view shifted by s pixels in that direction")


def zhang_definition(margin: int, offsets: int, pairs: int) -> str:
    """The Zhang consistency's definition as stored in the section."""
    return (f"Zhang 2019 consistency: fraction of pairs of two differently shifted crops of the "
            f"same test image whose top-1 classes agree; {pairs} pairs per image, each pair two "
            f"distinct offsets (dx, dy) out of {offsets} drawn once (seed {ZHANG_SEED}) uniformly "
            f"from the integer square [-{margin}, {margin}]², the same pairs for every head and "
            f"seed")


def shift_views(shifts: Sequence[int], directions: Sequence[tuple[int, int]] = DIRECTIONS) -> dict:
    """The crops of the translation curve: (s, direction) -> View; shift 0 is (0, None).

    All views share margin = max(shifts), so they are crops of one and the same resize.

    Example:
        >>> sorted(k for k in shift_views([0, 8]) if k[0] == 8)
        [(8, (-1, 0)), (8, (0, -1)), (8, (0, 1)), (8, (1, 0))]
    """
    margin = max(shifts)
    views = {(0, None): View(margin=margin)}
    for s in shifts:
        for d in (directions if s > 0 else ()):
            views[(s, tuple(d))] = View(shift=(s * d[0], s * d[1]), margin=margin)
    return views


def zhang_offsets(margin: int, count: int = ZHANG_OFFSETS,
                  seed: int = ZHANG_SEED) -> list[tuple[int, int]]:
    """`count` distinct integer offsets (dx, dy) drawn uniformly from [-margin, margin]² (all of
    them when there are fewer), sorted.

    Example:
        >>> zhang_offsets(1, count=100) == [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        True
    """
    if margin < 1:
        raise ValueError(f"Zhang consistency needs a margin of at least 1 px, got {margin}")
    side = 2 * margin + 1
    cells = np.random.default_rng(seed).choice(side * side, min(count, side * side),
                                               replace=False)
    return sorted((int(c // side) - margin, int(c % side) - margin) for c in cells)


def zhang_pairs(n_images: int, n_offsets: int, pairs: int = ZHANG_PAIRS,
                seed: int = ZHANG_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Offset indices (first, second), each (n_images, pairs): for every image `pairs` draws
    of two distinct offsets, uniformly over the ordered pairs.

    Example:
        >>> first, second = zhang_pairs(3, 4, pairs=5)
        >>> first.shape, bool((first != second).all())
        ((3, 5), True)
    """
    if n_offsets < 2 or pairs < 1:
        raise ValueError("Zhang pairs need at least 2 offsets and 1 pair per image")
    rng = np.random.default_rng(seed)
    first = rng.integers(n_offsets, size=(n_images, pairs))
    second = (first + rng.integers(1, n_offsets, size=(n_images, pairs))) % n_offsets
    return first, second


def pair_agreement(top1: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per image, the fraction of its pairs whose two top-1 classes agree.

    Args:
        top1: (offsets, N) top-1 class of every image at every offset.
        first, second: (N, pairs) offset indices of each pair (`zhang_pairs`).

    Example:
        >>> top1 = np.array([[0, 1], [0, 2]])  # image 0 agrees at both offsets, image 1 not
        >>> pair_agreement(top1, np.array([[0], [0]]), np.array([[1], [1]])).tolist()
        [1.0, 0.0]
    """
    images = np.arange(top1.shape[1])[:, None]
    return (top1[first, images] == top1[second, images]).mean(axis=1)


def shift_consistency(reference: np.ndarray, shifted: Sequence[np.ndarray]) -> float:
    """Fraction of (image, view) pairs whose top-1 class equals the reference view's.

    Args:
        reference: top-1 classes on the unshifted views, shape (N,).
        shifted: one (N,) array of top-1 classes per shifted view (e.g. per direction).

    Example:
        >>> shift_consistency(np.array([0, 1]), [np.array([0, 1]), np.array([0, 0])])
        0.75
    """
    shifted = np.stack([np.asarray(p) for p in shifted])
    return float((shifted == np.asarray(reference)[None]).mean())


def _rounded(values: np.ndarray) -> list[float]:
    """Per-image values for results.json: 4 decimals keep the section small."""
    return np.round(np.asarray(values, dtype=np.float64), 4).tolist()


def translation_analysis(ctx: RunContext, shifts: Sequence[int],
                         directions: Sequence[tuple[int, int]] = DIRECTIONS,
                         zhang_offset_count: int = ZHANG_OFFSETS,
                         pairs: int = ZHANG_PAIRS) -> dict:
    """Accuracy and consistency of every head on test crops translated by each shift, and
    Zhang 2019's consistency within ±max(shifts).

    Returns the `analyses["shifts"]` section of results.json: `shifts`, `margin`, `directions`,
    `seed_ids`, `consistency_definition`, and per head `accuracy` and `consistency`, each
    {str(shift): ci over seeds}, and `per_image` {"consistency": {str(shift > 0): [N]}}: per
    test image (test split order) consistency averaged over seeds and directions. With a
    margin of at least 1 px also `zhang_consistency_definition`, `zhang_pairs_per_image`,
    `zhang_offsets` [[dx, dy], ...], and per head `zhang_consistency` (ci over seeds) and
    `per_image["zhang_consistency"]` [N] (averaged over seeds and pairs).
    """
    shifts = list(parse_shifts(shifts))
    directions = [tuple(int(v) for v in d) for d in directions]
    if not shifts or not directions or any(d == (0, 0) for d in directions):
        raise ValueError("translation needs shifts and non-zero directions")
    margin = max(shifts)
    views = shift_views(shifts, directions)
    offsets = zhang_offsets(margin, zhang_offset_count) if margin > 0 else []
    zviews = [View(shift=o, margin=margin) for o in offsets]
    distinct = list(dict.fromkeys([*views.values(), *zviews]))  # shared crops computed once
    y = ctx.labels("test")
    _progress.log(f"translation: {len(distinct)} crops of {len(y)} test images, shifts {shifts}"
                  f" px" + (f", Zhang pairs within ±{margin} px" if offsets else ""))
    models = ctx.models()
    top1 = {view: ctx.top1(ctx.view_features("test", view), models) for view in distinct}
    preds = {key: top1[view] for key, view in views.items()}
    first, second = zhang_pairs(len(y), len(offsets), pairs) if offsets else (None, None)
    heads = {}
    for label in (h.head for h in ctx.heads):
        acc: dict[int, list] = {s: [] for s in shifts}
        cons: dict[int, list] = {s: [] for s in shifts}
        cons_image = {s: np.zeros(len(y)) for s in shifts if s > 0}
        zhang, zhang_image = [], np.zeros(len(y))
        for seed in ctx.seeds:
            ref = preds[(0, None)][(label, seed)]
            for s in shifts:
                views_s = [ref] if s == 0 else [preds[(s, d)][(label, seed)] for d in directions]
                acc[s].append(float(np.mean([np.mean(p == y) for p in views_s])))
                cons[s].append(shift_consistency(ref, views_s))
                if s > 0:
                    cons_image[s] += np.mean([p == ref for p in views_s], axis=0) / len(ctx.seeds)
            if offsets:
                at = np.stack([top1[v][(label, seed)] for v in zviews])
                agree = pair_agreement(at, first, second)
                zhang.append(float(agree.mean()))
                zhang_image += agree / len(ctx.seeds)
        heads[label] = {"accuracy": {str(s): ci_summary(acc[s], bounds=UNIT) for s in shifts},
                        "consistency": {str(s): ci_summary(cons[s], bounds=UNIT) for s in shifts},
                        "per_image": {"consistency": {str(s): _rounded(v)
                                                      for s, v in cons_image.items()}}}
        if offsets:
            heads[label]["zhang_consistency"] = ci_summary(zhang, bounds=UNIT)
            heads[label]["per_image"]["zhang_consistency"] = _rounded(zhang_image)
    section = {"shifts": shifts, "margin": margin, "directions": [list(d) for d in directions],
               "seed_ids": list(ctx.seeds), "consistency_definition": CONSISTENCY_DEFINITION}
    if offsets:
        section.update(zhang_consistency_definition=zhang_definition(margin, len(offsets), pairs),
                       zhang_pairs_per_image=pairs, zhang_offsets=[list(o) for o in offsets])
    section["heads"] = heads
    return section


# ----------------------------------------------------------------------------------------------
# findings and report section

def translation_finding(section: dict, ref: HeadResult, other: HeadResult) -> list[Draft]:
    """The reference head against `other` on Zhang's consistency (in older sections:
    consistency at the largest shift); per test image: that consistency averaged over seeds."""
    a, b = ref.head, other.head
    heads, seeds = section.get("heads", {}), section.get("seed_ids", [])
    s = str(max(section["shifts"]))
    if a not in heads or b not in heads or s == "0":
        return []
    ha, hb = heads[a], heads[b]
    acc_a, acc_b = (h["accuracy"][s]["mean"] for h in (ha, hb))
    at_s = [mean_of(per_seed(h["consistency"].get(s), seeds)) for h in (ha, hb)]
    if "zhang_consistency" in ha and "zhang_consistency" in hb:  # the reported figure
        what = f"Zhang consistency within ±{section.get('margin', s)} px"
        va, vb = (per_seed(h["zhang_consistency"], seeds) for h in (ha, hb))
        ia, ib = (per_image_values(h.get("per_image", {}).get("zhang_consistency"))
                  for h in (ha, hb))
        curve = f"; at {s} px from unshifted {percent(at_s[0])} vs {percent(at_s[1])}"
    else:
        what, curve = f"consistency at {s} px from unshifted", ""
        va, vb = (per_seed(h["consistency"].get(s), seeds) for h in (ha, hb))
        ia, ib = (per_image_values(h.get("per_image", {}).get("consistency", {}).get(s))
                  for h in (ha, hb))
    d = paired_difference(va, vb, ia, ib)
    return [Draft(d, "translation", a, b, lambda d: (
        f"translation: {what} {a} {percent(mean_of(va))} vs {b} {percent(mean_of(vb))}, "
        f"{d.phrase()}{curve}; accuracy at {s} px {percent(acc_a)} vs {percent(acc_b)} — "
        f"{verdict(d, a, b, 'more consistent under shifts')}"))]


def _curve_plot(run: Run, section: dict, metric: str) -> Plot | None:
    keys = [k for k in section.get("shifts") or [] if finite(k)]
    series = {name: keyed_series(d.get(metric), keys) for name, d in per_head(section).items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    ylabel = {"accuracy": "test accuracy (%)",
              "consistency": "same prediction as unshifted (%)"}[metric]
    fig = ci_lines(run, series, "shift (pixels)", ylabel)
    directions = section.get("directions")
    how = (f"Test images shifted by the given number of pixels in "
           f"{len(directions) if isinstance(directions, list) else '?'} directions "
           f"(margin {section.get('margin', '?')} px); bars: {ci_note(len(run.seeds))}.")
    if metric == "accuracy":
        return Plot("shift-accuracy", "Test accuracy vs translation", how, fig)
    definition = section.get("consistency_definition") or (
        "share of test images whose prediction equals the prediction on the unshifted image")
    return Plot("shift-consistency", "Consistency vs translation",
                f"{how} Consistency: {definition}.", fig)


def shift_accuracy_plot(run: Run, section: dict) -> Plot | None:
    """Test accuracy vs shift, one line per head."""
    return _curve_plot(run, section, "accuracy")


def shift_consistency_plot(run: Run, section: dict) -> Plot | None:
    """Consistency with the unshifted view vs shift, one line per head."""
    return _curve_plot(run, section, "consistency")


def zhang_paragraph(run: Run, section: dict) -> Paragraph | None:
    """The Zhang 2019 consistency per head, after its definition; None when the section has
    none. It is the reported figure, so it stands next to the consistency curve."""
    values = [f"{name} {pct(as_ci(d.get('zhang_consistency')))}"
              for name, d in per_head(section).items() if as_ci(d.get("zhang_consistency"))]
    definition = section.get("zhang_consistency_definition")
    if not values or not isinstance(definition, str):
        return None
    return Paragraph("zhang-consistency", f"{definition}. By head: {', '.join(values)}.")


def translation_cost(shifts: Sequence[int], run: Run) -> float:
    """Backbone passes of the analysis, in test images: one per crop of the curve and per Zhang
    offset (crops of the run's input size)."""
    offsets = min(ZHANG_OFFSETS, (2 * max(shifts) + 1) ** 2) if max(shifts) > 0 else 0
    return (len(shift_views(shifts)) + offsets) * len(run.dataset.splits["test"].paths)


register_analysis("shifts", translation_analysis, "translation", option=analysis_option("shifts"),
                  pair_findings=translation_finding,
                  report=(shift_accuracy_plot, shift_consistency_plot, zhang_paragraph),
                  suggest="0,8,16,32", cost=translation_cost)


__all__ = ["DIRECTIONS", "ZHANG_OFFSETS", "ZHANG_PAIRS", "pair_agreement", "shift_consistency",
           "shift_accuracy_plot", "shift_consistency_plot", "shift_views", "translation_analysis",
           "translation_finding", "zhang_definition", "zhang_offsets", "zhang_pairs",
           "zhang_paragraph"]
