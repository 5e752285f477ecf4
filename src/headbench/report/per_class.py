"""The report's per-class section: the recommended head's precision, recall, F1 and support per
class (`per_class_table`), and one small test confusion matrix per head (`confusion_per_head`,
figure id `confusion-per-head`). Both come from each head's best seed (lowest val loss: the seed
whose model is saved), as `HeadResult.per_class` does. page.py places the section after the
summary table.
"""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ..evaluate import confusion_matrix
from ..figures import Plot, mpl, new_figure
from ..run import Run
from .format import heads_by_accuracy

TICK_CLASSES = 12   # class names on the axes up to this many classes
COUNT_CLASSES = 6   # counts written in the cells up to this many
OPEN_CLASSES = 30   # the table is shown unfolded up to this many classes


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _share(x: float) -> str:
    return f"{100 * x:.1f}%"


def per_class_table(run: Run) -> str:
    """The recommended head's per-class test metrics as a sortable HTML table, with the weakest
    class named; a note when the run has none."""
    head = run.selected()
    rows = run.per_class(head) if head is not None else None
    if not rows:
        return ("<p>Per-class metrics are absent: the run holds no test predictions of the "
                "recommended head.</p>")
    cols = ["class", "precision", "recall", "F1", "support"]
    header = "".join(f'<th scope="col" title="click to sort">{c}</th>' for c in cols)
    body = "".join(
        f'<tr><td data-value="{_e(r.class_name)}">{_e(r.class_name)}</td>'
        + "".join(f'<td class="num" data-value="{v:.6g}">{_share(v)}</td>'
                  for v in (r.precision, r.recall, r.f1))
        + f'<td class="num" data-value="{r.support}">{r.support}</td></tr>' for r in rows)
    table = (f'<table id="per-class-table" class="sortable grid"><thead><tr>{header}</tr>'
             f"</thead><tbody>{body}</tbody></table>")
    if len(rows) > OPEN_CLASSES:
        table = f"<details><summary>{len(rows)} classes</summary>{table}</details>"
    present = [r for r in rows if r.support > 0]
    weakest = min(present, key=lambda r: r.f1) if len(present) > 1 else None
    weak = (f" Weakest class: <strong>{_e(weakest.class_name)}</strong> (F1 "
            f"{_share(weakest.f1)}, recall {_share(weakest.recall)})." if weakest else "")
    return (f"<p>Head <strong>{_e(head.head)}</strong> (recommended), seed {_e(head.best_seed)} "
            f"(its saved model, lowest val loss), on the test split.{weak}</p>{table}"
            "<p>Precision: share of the images predicted as the class that are of it; recall: "
            "share of the class's images predicted as it; F1: their harmonic mean; support: the "
            "class's test images. A ratio with nothing to divide by (a class never predicted, "
            "or without test images) is 0, as in scikit-learn. Every head's per-class metrics "
            "are in per_class.csv and in results.json (<code>heads[].per_class</code>). "
            '<span class="js-only">Click a column header to sort.</span></p>')


def confusion_per_head(run: Run) -> Plot | None:
    """One small test confusion matrix per head (best seed, rows normalised), in summary
    order; heads without test predictions are left out."""
    heads = [h for h in heads_by_accuracy(run) if h.head in run.predictions
             and h.best_seed in run.predictions[h.head].seeds]
    if not heads:
        return None
    k, y = len(run.classes), run.labels("test")
    ncols = min(len(heads), 4 if len(heads) <= 12 else 6)
    nrows = math.ceil(len(heads) / ncols)
    fig = new_figure(0.6 + 2.5 * ncols, 0.8 + 2.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    names = [mpl(c if len(c) <= 12 else c[:11] + "…") for c in run.classes]
    image = None
    for i, (ax, h) in enumerate(zip(axes, heads)):
        p = run.predictions[h.head]
        cm = confusion_matrix(p.pred[p.of_seed(h.best_seed)], y, k)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        accuracy = np.trace(cm) / max(cm.sum(), 1)
        best = h.head == run.best_head
        ax.set_title(f"{mpl(h.head)}{' (recommended)' if best else ''}\n"
                     f"seed {h.best_seed}, accuracy {100 * accuracy:.1f}%", fontsize=8,
                     fontweight="bold" if best else "normal")
        if k <= TICK_CLASSES:
            below = i + ncols < len(heads)  # names under the lowest panel of each column
            ax.set_xticks(range(k), [""] * k if below else names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), names if i % ncols == 0 else [""] * k, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if k <= COUNT_CLASSES:
            for t in range(k):
                for q in range(k):
                    ax.text(q, t, str(cm[t, q]), ha="center", va="center", fontsize=7,
                            color="white" if share[t, q] > 0.5 else "black")
    for ax in axes[len(heads):]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="share of the true class")
    fig.supxlabel("predicted class", fontsize=9)
    fig.supylabel("true class", fontsize=9)
    caption = ("Test confusion matrix of every head, best seed (lowest val loss: the saved "
               "model), most accurate head first; rows: true class, columns: predicted class, "
               "colour: share of the row" + (", numbers: counts" if k <= COUNT_CLASSES else "")
               + "; one colour scale for every panel.")
    return Plot("confusion-per-head", "Confusion matrices of every head", caption, fig)


__all__ = ["confusion_per_head", "per_class_table"]
