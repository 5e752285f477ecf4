"""Resolution (``sizes``): every head, trained at the base size, evaluated at other input sizes.

A head built for one feature-map size (`Head.fixed_size`, e.g. flatten, avgpool) is reported
as not applicable where the feature map differs from the one it was built for, never silently
resized; heads that accept any map size run at every size. Each accuracy `ci` also carries
`per_image` [N]: correctness per test image averaged over seeds (findings test it per image).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import progress as _progress
from ..config import parse_sizes
from ..evaluate import ci_summary
from .context import UNIT, RunContext


def not_applicable(map_size: Sequence[int]) -> dict:
    """The entry of a fixed-size head at a size whose feature map it was not built for.

    Example:
        >>> not_applicable((7, 7))
        {'not_applicable': 'built for a 7×7 map'}
    """
    return {"not_applicable": f"built for a {map_size[0]}×{map_size[1]} map"}


def resolution_analysis(ctx: RunContext, sizes: Sequence[int]) -> dict:
    """Accuracy of every head (trained at the base size) on test images at other input sizes.

    The base size is always evaluated too. Returns the `analyses["sizes"]` section: `sizes`,
    `base`, `map_sizes` {str(size): [H, W]}, `seed_ids` and per head {str(size): ci over seeds,
    or `not_applicable(...)`}.
    """
    from ..data import View
    base = ctx.input_size
    sizes = sorted(set(parse_sizes(sizes)) | {base})
    _progress.log(f"resolution: test images at {sizes} px (heads trained at {base} px)")
    y = ctx.labels("test")
    labels = [h.head for h in ctx.heads]
    fresh = {label: ctx.make_head(label) for label in labels}  # capabilities only, no weights
    heads: dict[str, dict] = {label: {} for label in labels}
    map_sizes = {}
    for size in sizes:
        map_size = tuple(int(d) for d in ctx.backbone.feature_shape(input_size=size)[1:])
        map_sizes[str(size)] = list(map_size)
        runs = [label for label in labels if fresh[label].accepts(map_size)]
        for label in set(labels) - set(runs):
            heads[label][str(size)] = not_applicable(fresh[label].map_size)
        if not runs:
            continue
        view = View() if size == base else View(size=size)
        preds = ctx.top1(ctx.view_features("test", view), ctx.models(runs))
        for label in runs:
            right = np.stack([preds[(label, s)] == y for s in ctx.seeds])  # (seeds, N)
            cell = ci_summary(right.mean(axis=1).tolist(), bounds=UNIT)
            cell["per_image"] = np.round(right.mean(axis=0), 4).tolist()  # for per-image tests
            heads[label][str(size)] = cell
    heads = {label: {str(s): heads[label][str(s)] for s in sizes} for label in labels}
    return {"sizes": sizes, "base": base, "map_sizes": map_sizes, "seed_ids": list(ctx.seeds),
            "heads": heads}


__all__ = ["not_applicable", "resolution_analysis"]
