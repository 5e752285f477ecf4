"""Resolution (``sizes``): every head, trained at the base size, evaluated at other input sizes.

A head built for one feature-map size (`Head.fixed_size`, e.g. flatten, avgpool) is reported
as not applicable where the feature map differs from the one it was built for, never silently
resized; heads that accept any map size run at every size. Each accuracy `ci` also carries
`per_image` [N]: correctness per test image averaged over seeds (findings test it per image).
Findings: which heads cannot run at other sizes, and how the accuracy of the reference and the
selected head changes there.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import progress as _progress
from ..config import analysis_option, parse_sizes
from ..evaluate import ci_summary
from ..images import View
from ..figures import Plot, ci_lines, finite, keyed_series, per_head
from ..results import Finding, HeadResult
from ..run import Run
from .context import UNIT, RunContext
from .findings import (Draft, PairedDiff, mean_of, paired_difference, per_image_values, per_seed,
                       percent)
from .registry import register_analysis


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
    base = ctx.input_size
    sizes = sorted(set(parse_sizes(sizes)) | {base})
    _progress.log(f"resolution: test images at {sizes} px (heads trained at {base} px)")
    y = ctx.labels("test")
    labels = [h.head for h in ctx.heads]
    fresh = {label: ctx.make_head(label) for label in labels}  # capabilities only, no weights
    heads: dict[str, dict] = {label: {} for label in labels}
    map_sizes = {}
    step = ctx.backbone.size_step  # a ViT's patch: other sides are not whole patches
    for size in sizes:
        if size % step:
            for label in labels:
                heads[label][str(size)] = {"not_applicable": f"{size} px is not a whole number "
                                                             f"of {step} px patches"}
            continue
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


# ----------------------------------------------------------------------------------------------
# findings and report section

def resolution_findings(section: dict, refs: list[HeadResult]) -> list[Finding | Draft]:
    """The heads that cannot run at the other sizes (described), then for each of `refs` (the
    reference and the selected head) its accuracy at each other size against the base size."""
    heads, base = section.get("heads", {}), str(section.get("base"))
    seeds = section.get("seed_ids", [])
    others = [str(s) for s in section.get("sizes", []) if str(s) != base]
    out: list[Finding | Draft] = []
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
        at_base = per_seed(heads[label][base], seeds)
        for s in others:
            at_s = per_seed(heads[label].get(s), seeds)
            if not at_s:
                continue
            d = paired_difference(at_s, at_base,
                                  per_image_values(heads[label][s].get("per_image")),
                                  per_image_values(heads[label][base].get("per_image")))
            out.append(_resolution_change(d, label, s, base, at_s, at_base))
    return out


def _resolution_change(d: PairedDiff, label: str, s: str, base: str, at_s: dict[int, float],
                       at_base: dict[int, float]) -> Draft:
    def text(d: PairedDiff) -> str:
        verdict = ("accuracy changes significantly" if d.significant else
                   "not tested per image, so no change is claimed" if d.p_value is None else
                   "no significant change after the Holm correction")
        return (f"resolution: {label} at {s} px {percent(mean_of(at_s))} vs "
                f"{percent(mean_of(at_base))} at {base} px, {d.phrase('change')} — {verdict}")
    return Draft(d, "resolution", f"{label}@{s}", f"{label}@{base}", text)


def size_accuracy_plot(run: Run, section: dict) -> Plot | None:
    """Test accuracy vs input size, one line per head; the heads that cannot run named."""
    keys = [k for k in section.get("sizes") or [] if finite(k)]
    heads = per_head(section)
    series = {n: keyed_series(d, keys) for n, d in heads.items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    fig = ci_lines(run, series, "input size (pixels)", "test accuracy (%)")
    if finite(section.get("base")):
        fig.axes[0].axvline(section["base"], color="grey", linestyle=":", linewidth=1)
    skipped = sorted({f"{n} ({v['not_applicable']})" for n, d in heads.items() for v in d.values()
                      if isinstance(v, dict) and "not_applicable" in v})
    caption = (f"Heads trained at {section.get('base', '?')} px (dotted line), evaluated at each "
               "input size.")
    if skipped:
        caption += " Not applicable: " + "; ".join(skipped) + "."
    return Plot("size-accuracy", "Test accuracy vs input size", caption, fig)


def resolution_cost(sizes: Sequence[int], run: Run) -> float:
    """Backbone passes of the analysis, in test images at the run's input size (a pass costs
    about its pixel count)."""
    base = int(run.analysed_backbone().data_config["input_size"][-1])
    return sum((s / base) ** 2 for s in sizes) * len(run.dataset.splits["test"].paths)


register_analysis("sizes", resolution_analysis, "input size", option=analysis_option("sizes"),
                  findings=resolution_findings, report=(size_accuracy_plot,),
                  suggest="160,224,288", cost=resolution_cost)


__all__ = ["not_applicable", "resolution_analysis", "resolution_findings", "size_accuracy_plot"]
