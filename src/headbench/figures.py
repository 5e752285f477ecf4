"""What a report section is made of, for the report and for every analysis that adds a section.

- Blocks: `Plot` (a matplotlib Figure with its caption), `Paragraph` (text), `Gallery` (images
  of the run folder shown as thumbnails). An analysis builds blocks from its section of
  results.json; `report/page.py` turns them into HTML (no HTML here).
- Numbers as text: `pct` ('91.2 ± 2.2%'), `pp`, `as_ci` (an analysis entry as a `CI`), `mpl`.
- Line plots with intervals: `ci_lines` (one line per head with CI bars), `keyed_series`,
  `head_colors` (one colour per head, the same in every plot).

This module sits below both `report/` and `analyses/`, so that an analysis can draw its own
section without importing the report (which imports the analyses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .results import CI
from .run import Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


# ----------------------------------------------------------------------------------------------
# the blocks of a report section

@dataclass
class Plot:
    """One plot of the report: `id` names its `<figure>`; `caption` is plain text."""

    id: str
    title: str
    caption: str
    figure: Figure


@dataclass
class Paragraph:
    """A paragraph of plain text; `id` names its `<p>`."""

    id: str
    text: str


@dataclass
class Gallery:
    """Images of the run folder as thumbnails under a heading (e.g. a head's CAM overlays).

    Attributes:
        images: (path relative to the run folder, caption); paths leaving the run folder and
            images that cannot be read are skipped.
        alt: what each image is, put before its caption in the alt text.
        css: the class of each `<figure>` (the page styles `cam` figures wider).
    """

    title: str
    images: list[tuple[str, str]]
    alt: str = ""
    css: str = "cam"


# ----------------------------------------------------------------------------------------------
# numbers as text

def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def as_ci(value: Any) -> CI | None:
    """A CI from a run field or an analysis entry (`{"mean", "lo", "hi", ...}`); None when
    `value` is not one (analysis sections are plain dicts written by each analysis)."""
    if isinstance(value, CI):
        return value if finite(value.mean) else None
    if not isinstance(value, dict) or not finite(value.get("mean")):
        return None
    lo, hi = value.get("lo"), value.get("hi")
    return CI(float(value["mean"]), float(lo) if finite(lo) else None,
              float(hi) if finite(hi) else None, list(value.get("values") or []))


def pct(ci: CI | None) -> str:
    """An accuracy as '91.2 ± 2.2%' (95% CI), '91.2%' with one seed."""
    return _ci_text(ci, "{:.1f}", "%")


def pp(ci: CI | None) -> str:
    """A difference of accuracies in percentage points: '+3.1 ± 1.0 pp'."""
    return _ci_text(ci, "{:+.1f}", " pp")


def _ci_text(ci: CI | None, fmt: str, unit: str) -> str:
    """Mean ± half-width in percent; [lo, hi] when the interval is not symmetric (clipped)."""
    if ci is None:
        return "—"
    mean = 100 * ci.mean
    if ci.lo is None or ci.hi is None:
        return fmt.format(mean) + unit
    lo, hi = 100 * ci.lo, 100 * ci.hi
    if math.isclose(hi - mean, mean - lo, rel_tol=1e-6, abs_tol=1e-9):
        return f"{fmt.format(mean)} ± {hi - mean:.1f}{unit}"
    return f"{fmt.format(mean)}{unit} [{fmt.format(lo)}, {fmt.format(hi)}]"


def ci_note(seeds: int) -> str:
    if seeds > 1:
        return f"±: 95% Student-t interval of the mean over {seeds} seeds"
    return "one seed: no interval (run more seeds for one)"


def mpl(x: Any) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(x).replace("$", r"\$")


# ----------------------------------------------------------------------------------------------
# line plots with intervals

def new_figure(width: float, height: float) -> Figure:
    """A bare matplotlib Figure: no GUI backend, no pyplot state."""
    # Imported here so that `import headbench` (which registers the analyses) does not load
    # matplotlib; it loads with the first plot.
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def head_colors(run: Run) -> dict[str, str]:
    """One colour per head, the same in every plot."""
    return {h.head: COLORS[i % len(COLORS)] for i, h in enumerate(run.heads)}


def errorbar(ax: Any, xs: list, cis: list[CI], **kwargs: Any) -> None:
    """Means in percent as a line with CI error bars where every point has an interval."""
    means = [100 * c.mean for c in cis]
    yerr = None
    if all(c.lo is not None and c.hi is not None for c in cis):
        yerr = [[100 * (c.mean - c.lo) for c in cis], [100 * (c.hi - c.mean) for c in cis]]
    ax.errorbar(xs, means, yerr=yerr, capsize=3, marker="o", markersize=4, **kwargs)


def clip_percent_axis(ax: Any) -> None:
    """With few seeds a t interval can pass 0% or 100%; the frame cuts such bars off there."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), min(hi, 102.0))


def ci_lines(run: Run, series: dict[str, tuple[list, list[CI]]], xlabel: str, ylabel: str,
             xticks: list | None = None, xticklabels: list | None = None) -> Figure:
    """One line with CI bars per head; `series` maps head -> (x values, CIs)."""
    colors = head_colors(run)
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    for name, (xs, cis) in series.items():
        errorbar(ax, xs, cis, color=colors.get(name), label=mpl(name))
    clip_percent_axis(ax)
    if xticks is not None:
        ax.set_xticks(xticks, [mpl(t) for t in xticklabels])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def per_head(section: dict) -> dict[str, dict]:
    """section["heads"] without the entries that are not dicts (sections are plain JSON)."""
    heads = section.get("heads")
    if not isinstance(heads, dict):
        return {}
    return {n: d for n, d in heads.items() if isinstance(d, dict)}


def keyed_series(per_key: Any, keys: list,
                 pick: Callable[[Any], Any] = lambda v: v) -> tuple[list, list[CI]]:
    """(x values, CIs) for the keys that have a CI in `per_key` ({"8": ci, ...})."""
    xs, cis = [], []
    for k in keys:
        value = per_key.get(str(k)) if isinstance(per_key, dict) else None
        ci = as_ci(pick(value) if isinstance(value, dict) else None)
        if ci:
            xs.append(k)
            cis.append(ci)
    return xs, cis


__all__ = ["COLORS", "Gallery", "Paragraph", "Plot", "as_ci", "ci_lines", "ci_note",
           "clip_percent_axis", "errorbar", "finite", "head_colors", "keyed_series", "mpl",
           "new_figure", "pct", "per_head", "pp"]
