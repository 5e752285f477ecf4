"""The report's plots: one function per plot, each a matplotlib Figure built from a `Run`.

Every function returns a `Plot` (id, title, caption, Figure), or None when its data is not in
the run. The id is the `id` of the plot's `<figure>` in report.html:

    accuracy-vs-params   test accuracy ± 95% CI over seeds vs head parameters (log x)
    learning-curves      train / val loss and accuracy per epoch, best seed of every head
    shift-accuracy       test accuracy vs translation shift (analyses["shifts"])
    shift-consistency    prediction consistency vs translation shift (analyses["shifts"])
    size-accuracy        test accuracy vs input size (analyses["sizes"])
    shots-accuracy       test accuracy vs training images per class (analyses["shots"])
    confusion-matrix     test confusion matrix of the selected head, its best seed
    time-latency         training time per seed and latency at batch 1, per head

Run fields are typed; analysis sections are plain dicts written by each analysis (layouts in
docs/DESIGN.md), so their plots skip entries they do not understand. No HTML here: see page.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure  # a bare Figure needs no GUI backend and no pyplot state
from matplotlib.ticker import MaxNLocator

from .. import progress as _progress
from ..run import CI, Run
from .format import as_ci, ci_note, finite, heads_by_accuracy, mpl

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class Plot:
    """One plot of the report: `id` names its `<figure>`; `caption` is plain text."""

    id: str
    title: str
    caption: str
    figure: Figure


# ----------------------------------------------------------------------------------------------
# helpers

def head_colors(run: Run) -> dict[str, str]:
    """One colour per head, the same in every plot."""
    return {h.head: COLORS[i % len(COLORS)] for i, h in enumerate(run.heads)}


def _errorbar(ax, xs: list, cis: list[CI], **kwargs) -> None:
    """Means as a line with CI error bars where every point has an interval."""
    means = [100 * c.mean for c in cis]
    yerr = None
    if all(c.lo is not None and c.hi is not None for c in cis):
        yerr = [[100 * (c.mean - c.lo) for c in cis], [100 * (c.hi - c.mean) for c in cis]]
    ax.errorbar(xs, means, yerr=yerr, capsize=3, marker="o", markersize=4, **kwargs)


def _clip_percent_axis(ax) -> None:
    """With few seeds a t interval can pass 0% or 100%; the frame cuts such bars off there."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), min(hi, 102.0))


def _ci_lines(run: Run, series: dict[str, tuple[list, list[CI]]], xlabel: str, ylabel: str,
              xticks: list | None = None, xticklabels: list | None = None) -> Figure:
    """One line with CI bars per head; `series` maps head -> (x values, CIs)."""
    colors = head_colors(run)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (xs, cis) in series.items():
        _errorbar(ax, xs, cis, color=colors.get(name), label=mpl(name))
    _clip_percent_axis(ax)
    if xticks is not None:
        ax.set_xticks(xticks, [mpl(t) for t in xticklabels])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _section(run: Run, name: str) -> dict | None:
    """The analysis section `name` when it ran and is a dict."""
    section = run.analyses.get(name)
    return section if isinstance(section, dict) else None


def _per_head(section: dict) -> dict[str, dict]:
    """section["heads"] without the entries that are not dicts."""
    heads = section.get("heads")
    if not isinstance(heads, dict):
        return {}
    return {n: d for n, d in heads.items() if isinstance(d, dict)}


def _keyed_series(per_key: Any, keys: list,
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


# ----------------------------------------------------------------------------------------------
# the plots

def accuracy_vs_params(run: Run) -> Plot | None:
    colors = head_colors(run)
    points = [(h.head, h.head_params, h.summary.test_accuracy) for h in run.heads
              if h.head_params > 0]
    if not points:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    labels: dict[tuple, list[str]] = {}  # heads at the same point share one label
    for name, params, ci in points:
        _errorbar(ax, [params], [ci], color=colors[name], linestyle="none")
        labels.setdefault((params, round(100 * ci.mean, 6)), []).append(mpl(name))
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(6, 4), fontsize=8)
    _clip_percent_axis(ax)
    ax.set_xscale("log")
    ax.set_xlabel("head parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    caption = ("Mean test accuracy over seeds; bars: " + ci_note(len(run.seeds)) + ". "
               "Up and to the left is better: more accuracy for fewer head parameters.")
    return Plot("accuracy-vs-params", "Test accuracy vs head parameters", caption, fig)


def learning_curves(run: Run) -> Plot | None:
    colors = head_colors(run)
    curves = {h.head: next((s.history for s in h.seeds if s.seed == h.best_seed), [])
              for h in run.heads}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, history in curves.items():
        for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "acc", 100)):
            for split, style in (("train", "--"), ("val", "-")):
                pts = [(e.epoch, scale * getattr(e, f"{split}_{key}")) for e in history]
                pts = [(x, y) for x, y in pts if finite(y)]
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[name], linewidth=1.3,
                            label=mpl(name) if split == "val" else None)
    ax_loss.set(xlabel="epoch", ylabel="loss (cross-entropy)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8, loc="lower right")
    caption = "Best seed of each head (chosen by val loss). Solid: val; dashed: train."
    return Plot("learning-curves", "Learning curves", caption, fig)


def _shifts(run: Run, metric: str) -> Plot | None:
    a = _section(run, "shifts")
    if a is None:
        return None
    keys = [k for k in a.get("shifts") or [] if finite(k)]
    series = {name: _keyed_series(d.get(metric), keys) for name, d in _per_head(a).items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    ylabel = {"accuracy": "test accuracy (%)",
              "consistency": "same prediction as unshifted (%)"}[metric]
    fig = _ci_lines(run, series, "shift (pixels)", ylabel)
    directions = a.get("directions")
    how = (f"Test images shifted by the given number of pixels in "
           f"{len(directions) if isinstance(directions, list) else '?'} directions "
           f"(margin {a.get('margin', '?')} px); bars: {ci_note(len(run.seeds))}.")
    if metric == "accuracy":
        return Plot("shift-accuracy", "Test accuracy vs translation", how, fig)
    definition = a.get("consistency_definition") or (
        "share of test images whose prediction equals the prediction on the unshifted image")
    return Plot("shift-consistency", "Consistency vs translation",
                f"{how} Consistency: {definition}.", fig)


def shift_accuracy(run: Run) -> Plot | None:
    return _shifts(run, "accuracy")


def shift_consistency(run: Run) -> Plot | None:
    return _shifts(run, "consistency")


def size_accuracy(run: Run) -> Plot | None:
    a = _section(run, "sizes")
    if a is None:
        return None
    keys = [k for k in a.get("sizes") or [] if finite(k)]
    heads = _per_head(a)
    series = {n: _keyed_series(d, keys) for n, d in heads.items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    fig = _ci_lines(run, series, "input size (pixels)", "test accuracy (%)")
    if finite(a.get("base")):
        fig.axes[0].axvline(a["base"], color="grey", linestyle=":", linewidth=1)
    skipped = sorted({f"{n} ({v['not_applicable']})" for n, d in heads.items() for v in d.values()
                      if isinstance(v, dict) and "not_applicable" in v})
    caption = (f"Heads trained at {a.get('base', '?')} px (dotted line), evaluated at each "
               "input size.")
    if skipped:
        caption += " Not applicable: " + "; ".join(skipped) + "."
    return Plot("size-accuracy", "Test accuracy vs input size", caption, fig)


def shots_accuracy(run: Run) -> Plot | None:
    a = _section(run, "shots")
    if a is None or not isinstance(a.get("shots"), list):
        return None
    keys = [str(k) for k in a["shots"]]
    series = {n: _keyed_series(d, keys, lambda v: v.get("test_accuracy"))
              for n, d in _per_head(a).items()}
    series = {n: ([keys.index(k) for k in xs], cis) for n, (xs, cis) in series.items() if xs}
    if not series:
        return None
    fig = _ci_lines(run, series, "training images per class", "test accuracy (%)",
                    xticks=list(range(len(keys))), xticklabels=keys)
    caption = (f"Each head retrained on the given number of training images per class "
               f"({a.get('seeds', '?')} seeds); same test split.")
    return Plot("shots-accuracy", "Test accuracy vs shots per class", caption, fig)


def confusion_matrix(run: Run) -> Plot | None:
    head = run.selected()
    if head is None or head.head not in run.predictions:
        return None
    p, classes = run.predictions[head.head], run.classes
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (run.labels("test"), p.pred[p.of_seed(head.best_seed)]), 1)
    if cm.sum() == 0:
        return None
    side = min(4 + 0.35 * k, 14)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="share of the true class")
    if k <= 40:
        labels = [mpl(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0, fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 20:
        for t in range(k):
            for q in range(k):
                ax.text(q, t, str(cm[t, q]), ha="center", va="center", fontsize=8,
                        color="white" if share[t, q] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    caption = (f"Head {head.head}, seed {head.best_seed} (best by val loss), "
               f"{int(cm.sum())} test images; colour: share of the row, numbers: counts.")
    return Plot("confusion-matrix", f"Confusion matrix of the best head ({head.head})", caption,
                fig)


def time_latency(run: Run) -> Plot | None:
    heads = heads_by_accuracy(run)[::-1]  # barh draws bottom-up: best on top
    train = [h.summary.train_time_s for h in heads]
    latency = [h.latency_ms_b1 for h in heads]
    if not any(finite(v) for v in train + latency):
        return None
    colors = head_colors(run)
    fig = Figure(figsize=(11, 1.2 + 0.35 * len(heads)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, values, label in ((axes[0], train, "training time per seed (s)"),
                              (axes[1], latency, "latency at batch 1, backbone + head (ms)")):
        ax.barh(range(len(heads)), [v if finite(v) else 0 for v in values],
                color=[colors[h.head] for h in heads])
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(heads)), [mpl(h.head) for h in heads])
    caption = (f"Training time: mean over seeds, on cached features. Latency: one image through "
               f"backbone and head on {run.device}, precision {run.precision}.")
    return Plot("time-latency", "Training time and latency", caption, fig)


# id -> function, in the order of the page
PLOTS: dict[str, Callable[[Run], Plot | None]] = {
    "accuracy-vs-params": accuracy_vs_params, "learning-curves": learning_curves,
    "shift-accuracy": shift_accuracy, "shift-consistency": shift_consistency,
    "size-accuracy": size_accuracy, "shots-accuracy": shots_accuracy,
    "confusion-matrix": confusion_matrix, "time-latency": time_latency,
}
_FROM_ANALYSES = {"shift-accuracy", "shift-consistency", "size-accuracy", "shots-accuracy"}


def all_plots(run: Run) -> list[Plot]:
    """Every plot whose data is in the run, in page order.

    A plot drawn from an analysis section that holds something unexpected is left out with a
    warning: one malformed entry must not cost the user the whole report.
    """
    plots = []
    for id_, build in PLOTS.items():
        try:
            plot = build(run)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            if id_ not in _FROM_ANALYSES:
                raise
            _progress.warn(f"report: plot {id_} left out: its analysis section in results.json "
                           f"is not understood ({e!r})")
            continue
        if plot is not None:
            plots.append(plot)
    return plots
