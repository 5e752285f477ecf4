"""The report's plots: the run's own plots, one function each, and the blocks of the analyses'
sections (`all_plots` for the Plots section, `head_galleries` for each head's section).

Every function returns a `figures.Plot` (id, title, caption, Figure), or None when its data is
not in the run. The id is the `id` of the plot's `<figure>` in report.html:

    verdict-forest       every head's paired test difference to the recommended head (first
                         screen, beside the verdict; not in the Plots section)
    pareto-latency       several backbones: test accuracy of every pair vs its latency at
                         batch 1, the Pareto front drawn, the recommended pair ringed
    pareto-params        the same against parameters in all (backbone + head)
    accuracy-vs-params   test accuracy ± 95% CI over seeds vs head parameters (log x)
    learning-curves      train / val loss and accuracy per epoch, best seed of every head
    (each registered analysis that ran: its report parts, in registry order, e.g.
     shift-accuracy, shift-consistency, size-accuracy, shots-accuracy)
    confusion-matrix     test confusion matrix of the selected head, its best seed
    confusion-per-head   every head's test confusion matrix, small multiples (per_class.py:
                         in the Per class section, after the summary; not in the Plots section)
    time-latency         training time per seed and latency at batch 1, per head

Run fields are typed; analysis sections are plain dicts written by each analysis, so their
parts skip entries they do not understand. No HTML here: see page.py.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .. import progress as _progress
from ..analyses import Analysis, list_analyses
from ..figures import (COLORS, Gallery, Paragraph, Plot, ci_note, clip_percent_axis, errorbar,
                       finite, head_colors, mpl, new_figure)
from ..pairs import pareto_front
from ..run import Run
from .format import heads_by_accuracy


# ----------------------------------------------------------------------------------------------
# the run's own plots

def verdict_forest(run: Run) -> Plot | None:
    """Every head's test accuracy minus the recommended head's (paired over test images, from the
    run's accuracy findings), sorted, with its interval over test images; significant ones marked."""
    rec, rows = run.best_head, []
    for f in run.findings:
        if f.kind != "accuracy" or rec not in (f.a, f.b) or not f.image_ci:
            continue
        lo, hi = f.image_ci
        if f.a == rec:  # as the other head minus the recommended one
            rows.append((f.b, -f.diff, -hi, -lo, f.significant))
        else:
            rows.append((f.a, f.diff, lo, hi, f.significant))
    if not rows:
        return None
    rows.sort(key=lambda r: r[1])
    colors = head_colors(run)
    fig = new_figure(7, 1.3 + 0.32 * len(rows))
    ax = fig.subplots()
    for i, (name, diff, lo, hi, significant) in enumerate(rows):
        ax.errorbar([100 * diff], [i], xerr=[[100 * (diff - lo)], [100 * (hi - diff)]],
                    fmt="D" if significant else "o", color=colors.get(name, "black"), capsize=3,
                    markersize=7 if significant else 5)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [mpl(r[0]) + (" *" if r[4] else "") for r in rows])
    ax.set_xlabel(f"test accuracy minus {mpl(rec)}'s (percentage points)")
    ax.grid(True, axis="x", alpha=0.3)
    caption = (f"Each head against the recommended {rec} on the test split: the difference in "
               "accuracy per test image, averaged over seeds (point), and its 95 % interval from "
               "the paired sign-flip test over test images (the test inverted; not adjusted for "
               "the number of comparisons; * and a diamond: significant after Holm within the "
               "heads family, which is why an interval may exclude 0 without a *). "
               "The recommendation was made on val; this is what test says about it.")
    return Plot("verdict-forest", f"Every head against {rec} on test", caption, fig)


def pareto_latency(run: Run) -> Plot | None:
    """Several backbones: test accuracy of every pair against its latency at batch 1."""
    return _pareto(run, "pareto-latency", lambda h: h.latency_ms_b1,
                   f"latency at batch 1, backbone + head (ms, {run.device}, log scale)",
                   "Test accuracy vs latency: every backbone and head", "{:g}")


def pareto_params(run: Run) -> Plot | None:
    """Several backbones: test accuracy of every pair against its parameters in all."""
    return _pareto(run, "pareto-params", lambda h: h.total_params / 1e6,
                   "parameters, backbone + head (millions, log scale)",
                   "Test accuracy vs parameters: every backbone and head", "{:.3g}")


def _pareto(run: Run, plot_id: str, cost: Callable[[Any], float], xlabel: str,
            title: str, ticks: str) -> Plot | None:
    """Every frozen pair as a point (colour: its backbone), the Pareto front as a step line,
    the recommended pair ringed."""
    pairs = [h for h in run.heads if h.backbone and not h.finetuned and finite(cost(h))]
    if not run.backbones or not pairs:
        return None
    colors = {b.name: COLORS[i % len(COLORS)] for i, b in enumerate(run.backbones)}
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    front = pareto_front([(h.head, cost(h), h.summary.test_accuracy.mean) for h in pairs])
    on = [next(h for h in pairs if h.head == label) for label in front]
    labels: dict[tuple, list[str]] = {}  # the front's pairs named; at one point, one label
    for h in pairs:
        errorbar(ax, [cost(h)], [h.summary.test_accuracy], color=colors[h.backbone],
                 linestyle="none", alpha=1.0 if h in on else 0.45)
        if h in on or h is run.selected():
            xy = (cost(h), round(100 * h.summary.test_accuracy.mean, 6))
            labels.setdefault(xy, []).append(mpl(h.name))
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.step([cost(h) for h in on], [100 * h.summary.test_accuracy.mean for h in on],
            where="post", color="black", linewidth=1, linestyle="--", label="Pareto front")
    best = run.selected()
    if best in pairs:
        ax.plot([cost(best)], [100 * best.summary.test_accuracy.mean], "o", markersize=16,
                markerfacecolor="none", markeredgecolor="black", markeredgewidth=2,
                label=f"recommended: {mpl(best.head)}")
    for name, color in colors.items():
        ax.plot([], [], "o", color=color, label=mpl(name))
    ax.set_xscale("log")
    for axis_ticks in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_ticks(FuncFormatter(lambda x, _: ticks.format(x)))
    clip_percent_axis(ax)
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    caption = ("Mean test accuracy over seeds of every backbone and head; bars: "
               + ci_note(len(run.seeds)) + ". Dashed: the Pareto front (no other pair is both "
               "as cheap and as accurate), its pairs named and drawn solid (the table lists "
               "every pair). Ringed: the recommended pair, chosen on the selection "
               "data (the cheapest by backbone latency within one standard error of the best), "
               "never on test.")
    return Plot(plot_id, title, caption, fig)


def accuracy_vs_params(run: Run) -> Plot | None:
    colors = head_colors(run)
    points = [(h.head, h.head_params, h.summary.test_accuracy) for h in run.heads
              if h.head_params > 0]
    if not points:
        return None
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    labels: dict[tuple, list[str]] = {}  # heads at the same point share one label
    for name, params, ci in points:
        errorbar(ax, [params], [ci], color=colors[name], linestyle="none")
        labels.setdefault((params, round(100 * ci.mean, 6)), []).append(mpl(name))
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(6, 4), fontsize=8)
    clip_percent_axis(ax)
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
    fig = new_figure(11, 4.2)
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
    fig = new_figure(side + 1.5, side)
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
    fig = new_figure(11, 1.2 + 0.35 * len(heads))
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


# The run's own plots in page order: the analyses' sections go between the two groups.
BEFORE_ANALYSES: list[Callable[[Run], Plot | None]] = [pareto_latency, pareto_params,
                                                        accuracy_vs_params, learning_curves]
AFTER_ANALYSES: list[Callable[[Run], Plot | None]] = [confusion_matrix, time_latency]


def all_plots(run: Run) -> list[Plot | Paragraph]:
    """Every plot whose data is in the run, with the analyses' paragraphs, in page order."""
    blocks = [build(run) for build in BEFORE_ANALYSES]
    for entry in list_analyses():
        section = run.analyses.get(entry.name)
        if isinstance(section, dict):
            blocks += [_analysis_part(entry, part, run, section) for part in entry.report]
    blocks += [build(run) for build in AFTER_ANALYSES]
    return [b for b in blocks if b is not None]


def head_galleries(run: Run, label: str) -> list[Gallery]:
    """What the analyses that ran show in head `label`'s section (e.g. its CAM overlays)."""
    out = []
    for entry in list_analyses():
        section = run.analyses.get(entry.name)
        if entry.head_report is not None and isinstance(section, dict):
            out.append(_analysis_part(entry, entry.head_report, run, label, section))
    return [g for g in out if g is not None]


def _analysis_part(entry: Analysis, part: Callable, run: Run, *args: Any) -> Any:
    """`part(run, *args)`, one part of an analysis's section; left out with a warning when the
    section holds something unexpected: one malformed entry must not cost the user the whole
    report."""
    try:
        return part(run, *args)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        _progress.warn(f"report: {part.__name__} of analysis {entry.name} left out: its "
                       f"section in results.json is not understood ({e!r})")
        return None
