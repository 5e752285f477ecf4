"""Translation (``shifts``): accuracy and consistency of every head on translated test crops.

Every view is a crop of the same resize to max(S/crop_pct, S + 2·margin) with
margin = max(shifts), its window offset by s·(dx, dy) for each direction; so no padding enters
any view. *Consistency at s* is the fraction of (image, direction) pairs whose top-1 class
agrees between the unshifted view and the view shifted by s in that direction: pairs exactly s
pixels apart. (Zhang 2019 compares two random shifts per image, so its pairs are at varying
distances; an ImageNet ResNet50 scores about 89% there.) Consistency at 0 is 1 by definition.
*Accuracy at s* is averaged over the directions. Because every view comes from the larger
resize, accuracy at shift 0 can differ slightly from the run's test accuracy (standard resize).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import progress as _progress
from ..config import parse_shifts
from ..evaluate import ci_summary
from .context import UNIT, RunContext

DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
CONSISTENCY_DEFINITION = (
    "fraction of (test image, direction) pairs whose top-1 class agrees between the unshifted "
    "view and the view shifted by s pixels in that direction")


def shift_views(shifts: Sequence[int], directions: Sequence[tuple[int, int]] = DIRECTIONS) -> dict:
    """The crops of the translation analysis: (s, direction) -> View; shift 0 is (0, None).

    All views share margin = max(shifts), so they are crops of one and the same resize.

    Example:
        >>> sorted(k for k in shift_views([0, 8]) if k[0] == 8)
        [(8, (-1, 0)), (8, (0, -1)), (8, (0, 1)), (8, (1, 0))]
    """
    from ..data import View
    margin = max(shifts)
    views = {(0, None): View(margin=margin)}
    for s in shifts:
        for d in (directions if s > 0 else ()):
            views[(s, tuple(d))] = View(shift=(s * d[0], s * d[1]), margin=margin)
    return views


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


def translation_analysis(ctx: RunContext, shifts: Sequence[int],
                         directions: Sequence[tuple[int, int]] = DIRECTIONS) -> dict:
    """Accuracy and consistency of every head on test crops translated by each shift.

    Returns the `analyses["shifts"]` section of results.json: `shifts`, `margin`, `directions`,
    `seed_ids`, `consistency_definition` and per head `accuracy` and `consistency`, each
    {str(shift): ci over seeds}.
    """
    shifts = list(parse_shifts(shifts))
    directions = [tuple(int(v) for v in d) for d in directions]
    if not shifts or not directions or any(d == (0, 0) for d in directions):
        raise ValueError("translation needs shifts and non-zero directions")
    views = shift_views(shifts, directions)
    y = ctx.labels("test")
    _progress.log(f"translation: {len(views)} crops of {len(y)} test images, shifts {shifts} px")
    models = ctx.models()
    preds = {key: ctx.top1(ctx.view_features("test", view), models) for key, view in views.items()}
    heads = {}
    for label in (h.head for h in ctx.heads):
        acc: dict[int, list] = {s: [] for s in shifts}
        cons: dict[int, list] = {s: [] for s in shifts}
        for seed in ctx.seeds:
            ref = preds[(0, None)][(label, seed)]
            for s in shifts:
                views_s = [ref] if s == 0 else [preds[(s, d)][(label, seed)] for d in directions]
                acc[s].append(float(np.mean([np.mean(p == y) for p in views_s])))
                cons[s].append(shift_consistency(ref, views_s))
        heads[label] = {"accuracy": {str(s): ci_summary(acc[s], bounds=UNIT) for s in shifts},
                        "consistency": {str(s): ci_summary(cons[s], bounds=UNIT) for s in shifts}}
    return {"shifts": shifts, "margin": max(shifts), "directions": [list(d) for d in directions],
            "seed_ids": list(ctx.seeds), "consistency_definition": CONSISTENCY_DEFINITION,
            "heads": heads}


__all__ = ["DIRECTIONS", "shift_views", "shift_consistency", "translation_analysis"]
