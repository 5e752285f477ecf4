"""The self-contained HTML report of a run folder, and the summary table the terminal shows.

`write_report(run_dir)` reads `results.json` (plus `predictions.csv`, `skipped.csv` and the images
the run points at) and writes `report.html`: one file with inline CSS, plots as base64 SVG
`<img class="plot">`, JPEG thumbnails and CAM overlays, readable without JavaScript (a few lines
of inline JS only sort the summary table and expand/collapse the head sections).

Plots, each present only when its data is in the run (the `id` of its `<figure>`):
    accuracy-vs-params   test accuracy ± 95% CI over seeds vs head parameters (log x)
    learning-curves      train / val loss and accuracy per epoch, best seed of every head
    shift-accuracy       test accuracy vs translation shift (analyses.shifts)
    shift-consistency    prediction consistency vs translation shift (analyses.shifts)
    size-accuracy        test accuracy vs input size (analyses.sizes)
    shots-accuracy       test accuracy vs training images per class (analyses.shots)
    confusion-matrix     test confusion matrix of the best head, its best seed
    time-latency         training time per seed and latency at batch 1, per head

`summary_table(results)` is the same table as the report's, as a rich Table for the terminal.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure  # a bare Figure needs no GUI backend and no pyplot state
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageOps
from rich import box
from rich.table import Table
from rich.text import Text

from . import io as _io
from . import progress as _progress
from .errors import HeadbenchError

TOP_LOSS_IMAGES = 6
THUMB_PX = 128
CAM_PX = 224
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


# ----------------------------------------------------------------------------------------------
# public API

def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` from the run folder's files and return its path.

    Analyses that did not run are left out; images that cannot be read are skipped.

    Example:
        >>> write_report("runs/20250101-120000-hymenoptera-resnet50")  # doctest: +SKIP
        PosixPath('runs/20250101-120000-hymenoptera-resnet50/report.html')
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    page = _render(_Run(run_dir, results, _read_predictions(run_dir)))
    return _io.atomic_write_text(run_dir / "report.html", page)


def load_results(run_dir: str | Path) -> dict:
    """`run_dir/results.json` as a dict; a HeadbenchError when it is missing or unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise HeadbenchError(f"run folder {run_dir} does not exist; pass a folder written by "
                             "`headbench compare` (runs/<date>-<data>-<backbone>/)")
    if not path.is_file():
        raise HeadbenchError(f"no results.json in {run_dir}; pass a folder written by "
                             "`headbench compare` (runs/<date>-<data>-<backbone>/)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HeadbenchError(f"cannot read {path}: {e}; re-run `headbench compare`") from None
    if not isinstance(results, dict) or not isinstance(results.get("heads"), list):
        raise HeadbenchError(f"{path} has no 'heads' list; re-run `headbench compare`")
    return results


SUMMARY_COLUMNS = ["head", "test acc ± 95% CI", "train − test gap", "head params",
                   "train time / seed", "latency b1", "throughput b32"]
# The same headers on two lines, so the terminal table fits in 80 columns.
_TERMINAL_HEADERS = ["head", "test acc\n± 95% CI", "train − test\ngap", "head\nparams",
                     "train time\n/ seed", "latency\nb1", "throughput\nb32"]


def summary_rows(results: dict) -> list[list[tuple[str, float | str | None]]]:
    """The summary table as rows of (text, sort value), best mean test accuracy first."""
    rows = []
    for h in _heads_by_accuracy(results):
        s = h.get("summary") or {}
        acc, gap = _ci(s.get("test_accuracy")), _ci(s.get("overfit_gap"))
        rows.append([
            (str(h.get("head", "?")), str(h.get("head", "?"))),
            (_pct(acc), acc and acc["mean"]),
            (_pp(gap), gap and gap["mean"]),
            (_count(h.get("head_params")), h.get("head_params")),
            (_seconds(s.get("train_time_s")), s.get("train_time_s")),
            (_ms(h.get("latency_ms_b1")), h.get("latency_ms_b1")),
            (_rate(h.get("throughput_b32")), h.get("throughput_b32")),
        ])
    return rows


def summary_table(results: dict) -> Table:
    """The summary as a rich Table (same columns as the report); the best head in bold green."""
    seeds = _n_seeds(results)
    ds, bb = results.get("dataset") or {}, results.get("backbone") or {}
    # Text(), not str: folder and head names are data, never rich markup.
    title = f"{ds.get('name', 'data')} · {bb.get('name', 'backbone')} · {seeds} seed" + (
        "s" if seeds != 1 else "")
    table = Table(title=Text(title), caption=Text(_ci_note(seeds)), box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    rows = summary_rows(results)
    for i, name in enumerate(_TERMINAL_HEADERS):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    best = _best_head(results)
    for row in rows:
        table.add_row(*(Text(text) for text, _ in row),
                      style="bold green" if row[0][0] == best else None)
    return table


# ----------------------------------------------------------------------------------------------
# reading the run folder

@dataclass
class _Run:
    dir: Path
    results: dict
    predictions: list[dict]

    @property
    def heads(self) -> list[dict]:
        return [h for h in self.results.get("heads", []) if isinstance(h, dict)]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in (self.results.get("dataset") or {}).get("classes") or []]

    @property
    def analyses(self) -> dict:
        return self.results.get("analyses") or {}


def _read_predictions(run_dir: Path) -> list[dict]:
    """predictions.csv rows with numeric seed/loss/probabilities; [] when the file is absent."""
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                row.update(seed=int(row["seed"]), loss=float(row["loss"]),
                           p_pred=float(row["p_pred"]))
            except (KeyError, TypeError, ValueError):
                continue
            rows.append(row)
    return rows


def _head_predictions(run: _Run, head: str, seed: Any) -> list[dict]:
    """Test predictions of one seed of `head`; the lowest seed when `seed` is not recorded."""
    rows = [r for r in run.predictions if r.get("head") == head]
    seed = _int(seed)
    if seed is None and rows:
        seed = min(r["seed"] for r in rows)
    return [r for r in rows if r["seed"] == seed]


def _class_name(value: str, classes: list[str]) -> str:
    """predictions.csv stores class names; older files may store indices."""
    if value in classes or not value.isdigit() or int(value) >= len(classes):
        return value
    return classes[int(value)]


def _heads_by_accuracy(results: dict) -> list[dict]:
    heads = [h for h in results.get("heads", []) if isinstance(h, dict)]
    return sorted(heads, key=lambda h: -(_mean(h, "test_accuracy") or -1.0))


def _best_head(results: dict) -> str | None:
    if results.get("best_head"):
        return results["best_head"]
    heads = [h for h in results.get("heads", []) if isinstance(h, dict)]  # old runs: best on val
    return max(heads, key=lambda h: _mean(h, "val_accuracy") or -1.0).get("head") if heads else None


def _mean(head: dict, key: str) -> float | None:
    ci = _ci((head.get("summary") or {}).get(key))
    return ci["mean"] if ci else None


def _ci(value: Any) -> dict | None:
    """A {"mean", "lo", "hi"} dict with float mean (lo/hi may be None), or None."""
    if not isinstance(value, dict) or not _finite(value.get("mean")):
        return None
    return dict(mean=float(value["mean"]),
                lo=float(value["lo"]) if _finite(value.get("lo")) else None,
                hi=float(value["hi"]) if _finite(value.get("hi")) else None)


def _n_seeds(results: dict) -> int:
    return max((len(h.get("seeds") or []) for h in results.get("heads", [])
                if isinstance(h, dict)), default=0)


# ----------------------------------------------------------------------------------------------
# formatting

def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _pct(ci: dict | None) -> str:
    """An accuracy as '91.2 ± 2.2%' (95% CI), '91.2%' with one seed."""
    return _ci_text(ci, "{:.1f}", "%")


def _pp(ci: dict | None) -> str:
    """A difference of accuracies in percentage points: '+3.1 ± 1.0 pp'."""
    return _ci_text(ci, "{:+.1f}", " pp")


def _ci_text(ci: dict | None, fmt: str, unit: str) -> str:
    """Mean ± half-width in percent; [lo, hi] when the interval is not symmetric."""
    if ci is None:
        return "—"
    mean = 100 * ci["mean"]
    if ci["lo"] is None or ci["hi"] is None:
        return fmt.format(mean) + unit
    lo, hi = 100 * ci["lo"], 100 * ci["hi"]
    if math.isclose(hi - mean, mean - lo, rel_tol=1e-6, abs_tol=1e-9):
        return f"{fmt.format(mean)} ± {hi - mean:.1f}{unit}"
    return f"{fmt.format(mean)}{unit} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _count(n: Any) -> str:
    if not _finite(n):
        return "—"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _seconds(s: Any) -> str:
    if not _finite(s):
        return "—"
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    return f"{int(s // 60)}m {s % 60:02.0f}s"


def _ms(x: Any) -> str:
    return f"{x:.3g} ms" if _finite(x) else "—"


def _rate(x: Any) -> str:
    return f"{x:,.0f} img/s" if _finite(x) else "—"


def _ci_note(seeds: int) -> str:
    if seeds > 1:
        return f"±: 95% Student-t interval of the mean over {seeds} seeds"
    return "one seed: no interval (run more seeds for one)"


def _e(x: Any) -> str:
    """HTML-escaped text of anything that comes from the run (class names, paths, head names)."""
    return html.escape(str(x), quote=True)


def _mpl(x: Any) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(x).replace("$", r"\$")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "head"


# ----------------------------------------------------------------------------------------------
# images

def _svg_data(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jpeg_data(path: Path, max_px: int) -> str | None:
    """A downscaled JPEG data URL of the image at `path`; None when it cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_px * 2, max_px * 2))  # fast JPEG decode at reduced size
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _inside(base: Path, rel: str) -> Path | None:
    """`base/rel` when it stays inside `base` (results.json is data, not a path to anywhere)."""
    path = (base / rel).resolve()
    return path if path.is_relative_to(base.resolve()) else None


# ----------------------------------------------------------------------------------------------
# plots: each builder returns a _Plot, or None when its data is not in the run

@dataclass
class _Plot:
    id: str
    title: str
    caption: str
    src: str


def _head_colors(run: _Run) -> dict[str, str]:
    return {h.get("head"): _COLORS[i % len(_COLORS)] for i, h in enumerate(run.heads)}


def _errorbar(ax, xs, cis, **kwargs) -> None:
    """Means as a line with CI error bars where every point has an interval."""
    means = [100 * c["mean"] for c in cis]
    yerr = None
    if all(c["lo"] is not None and c["hi"] is not None for c in cis):
        yerr = [[100 * (c["mean"] - c["lo"]) for c in cis],
                [100 * (c["hi"] - c["mean"]) for c in cis]]
    ax.errorbar(xs, means, yerr=yerr, capsize=3, marker="o", markersize=4, **kwargs)


def _clip_percent_axis(ax) -> None:
    """With few seeds a t interval can pass 0% or 100%; the frame cuts such bars off there."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), min(hi, 102.0))


def _plot_accuracy_vs_params(run: _Run) -> _Plot | None:
    colors = _head_colors(run)
    points = [(h.get("head"), h.get("head_params"),
               _ci((h.get("summary") or {}).get("test_accuracy"))) for h in run.heads]
    points = [p for p in points if _finite(p[1]) and p[1] > 0 and p[2]]
    if not points:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    labels: dict[tuple, list[str]] = {}  # heads at the same point share one label
    for name, params, ci in points:
        _errorbar(ax, [params], [ci], color=colors.get(name), linestyle="none")
        labels.setdefault((params, round(100 * ci["mean"], 6)), []).append(_mpl(name))
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(6, 4), fontsize=8)
    _clip_percent_axis(ax)
    ax.set_xscale("log")
    ax.set_xlabel("head parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    caption = ("Mean test accuracy over seeds; bars: " + _ci_note(_n_seeds(run.results)) + ". "
               "Up and to the left is better: more accuracy for fewer head parameters.")
    return _Plot("accuracy-vs-params", "Test accuracy vs head parameters", caption, _svg_data(fig))


def _best_seed_history(head: dict) -> list[dict]:
    seeds = [s for s in head.get("seeds") or [] if isinstance(s, dict)]
    best = [s for s in seeds if s.get("seed") == head.get("best_seed")] or seeds[:1]
    return [e for e in (best[0].get("history") or []) if isinstance(e, dict)] if best else []


def _plot_learning_curves(run: _Run) -> _Plot | None:
    colors = _head_colors(run)
    curves = {h.get("head"): _best_seed_history(h) for h in run.heads}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, hist in curves.items():
        for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "acc", 100)):
            for split, style in (("train", "--"), ("val", "-")):
                pts = [(e.get("epoch"), e.get(f"{split}_{key}")) for e in hist]
                pts = [(x, scale * y) for x, y in pts if _finite(x) and _finite(y)]
                if pts:
                    ax.plot(*zip(*pts), style, color=colors.get(name), linewidth=1.3,
                            label=_mpl(name) if split == "val" else None)
    ax_loss.set(xlabel="epoch", ylabel="loss (cross-entropy)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8, loc="lower right")
    caption = "Best seed of each head (chosen by val loss). Solid: val; dashed: train."
    return _Plot("learning-curves", "Learning curves", caption, _svg_data(fig))


def _plot_ci_lines(run: _Run, series: dict[str, tuple[list, list[dict]]], xlabel: str,
                   ylabel: str, xticks: list | None = None,
                   xticklabels: list | None = None) -> Figure:
    """One line with CI bars per head; `series` maps head -> (x values, ci dicts)."""
    colors = _head_colors(run)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (xs, cis) in series.items():
        _errorbar(ax, xs, cis, color=colors.get(name), label=_mpl(name))
    _clip_percent_axis(ax)
    if xticks is not None:
        ax.set_xticks(xticks, [_mpl(t) for t in xticklabels])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _keyed_series(per_key: Any, keys: list, pick: Callable[[Any], Any] = lambda v: v):
    """(x values, ci dicts) for the keys that have a CI in `per_key` ({"8": ci, ...})."""
    xs, cis = [], []
    for k in keys:
        ci = _ci(pick((per_key or {}).get(str(k)))) if isinstance(per_key, dict) else None
        if ci:
            xs.append(k)
            cis.append(ci)
    return xs, cis


def _plot_shifts(run: _Run, metric: str) -> _Plot | None:
    a = run.analyses.get("shifts")
    if not isinstance(a, dict):
        return None
    keys = [k for k in a.get("shifts") or [] if _finite(k)]
    series = {name: _keyed_series((d or {}).get(metric), keys)
              for name, d in (a.get("heads") or {}).items() if isinstance(d, dict)}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    ylabel = {"accuracy": "test accuracy (%)",
              "consistency": "same prediction as unshifted (%)"}[metric]
    fig = _plot_ci_lines(run, series, "shift (pixels)", ylabel)
    how = (f"Test images shifted by the given number of pixels in "
           f"{len(a.get('directions') or [])} directions (margin {a.get('margin', '?')} px); "
           f"bars: {_ci_note(_n_seeds(run.results))}.")
    if metric == "accuracy":
        return _Plot("shift-accuracy", "Test accuracy vs translation", how, _svg_data(fig))
    definition = a.get("consistency_definition") or (
        "share of test images whose prediction equals the prediction on the unshifted image")
    return _Plot("shift-consistency", "Consistency vs translation",
                 f"{how} Consistency: {definition}.", _svg_data(fig))


def _plot_sizes(run: _Run) -> _Plot | None:
    a = run.analyses.get("sizes")
    if not isinstance(a, dict):
        return None
    keys = [k for k in a.get("sizes") or [] if _finite(k)]
    heads = {n: d for n, d in (a.get("heads") or {}).items() if isinstance(d, dict)}
    series = {n: _keyed_series(d, keys) for n, d in heads.items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    fig = _plot_ci_lines(run, series, "input size (pixels)", "test accuracy (%)")
    if _finite(a.get("base")):
        fig.axes[0].axvline(a["base"], color="grey", linestyle=":", linewidth=1)
    skipped = sorted({f"{n} ({v['not_applicable']})" for n, d in heads.items() for v in d.values()
                      if isinstance(v, dict) and "not_applicable" in v})
    caption = (f"Heads trained at {a.get('base', '?')} px (dotted line), evaluated at each "
               "input size.")
    if skipped:
        caption += " Not applicable: " + "; ".join(skipped) + "."
    return _Plot("size-accuracy", "Test accuracy vs input size", caption, _svg_data(fig))


def _plot_shots(run: _Run) -> _Plot | None:
    a = run.analyses.get("shots")
    if not isinstance(a, dict):
        return None
    keys = [str(k) for k in a.get("shots") or []]
    series = {n: _keyed_series(d, keys, lambda v: (v or {}).get("test_accuracy"))
              for n, d in (a.get("heads") or {}).items() if isinstance(d, dict)}
    series = {n: ([keys.index(k) for k in xs], cis) for n, (xs, cis) in series.items() if xs}
    if not series:
        return None
    fig = _plot_ci_lines(run, series, "training images per class", "test accuracy (%)",
                         xticks=list(range(len(keys))), xticklabels=keys)
    caption = (f"Each head retrained on the given number of training images per class "
               f"({a.get('seeds', '?')} seeds); same test split.")
    return _Plot("shots-accuracy", "Test accuracy vs shots per class", caption, _svg_data(fig))


def _plot_confusion(run: _Run) -> _Plot | None:
    best = _best_head(run.results)
    head = next((h for h in run.heads if h.get("head") == best), None)
    classes = run.classes
    if head is None or not classes:
        return None
    rows = _head_predictions(run, best, head.get("best_seed"))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    for r in rows:
        t, p = (index.get(_class_name(r.get(c, ""), classes)) for c in ("label", "pred"))
        if t is not None and p is not None:
            cm[t, p] += 1
    if cm.sum() == 0:
        return None
    side = min(4 + 0.35 * k, 14)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="share of the true class")
    if k <= 40:
        labels = [_mpl(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0, fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class")
    caption = (f"Head {best}, seed {head.get('best_seed')} (best by val loss), "
               f"{int(cm.sum())} test images; colour: share of the row, numbers: counts.")
    return _Plot("confusion-matrix", f"Confusion matrix of the best head ({best})", caption,
                 _svg_data(fig))


def _plot_time_latency(run: _Run) -> _Plot | None:
    heads = _heads_by_accuracy(run.results)[::-1]  # barh draws bottom-up: best on top
    names = [_mpl(h.get("head")) for h in heads]
    train = [(h.get("summary") or {}).get("train_time_s") for h in heads]
    latency = [h.get("latency_ms_b1") for h in heads]
    if not any(_finite(v) for v in train + latency):
        return None
    colors = _head_colors(run)
    fig = Figure(figsize=(11, 1.2 + 0.35 * len(heads)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, values, label in ((axes[0], train, "training time per seed (s)"),
                              (axes[1], latency, "latency at batch 1, backbone + head (ms)")):
        ax.barh(range(len(heads)), [v if _finite(v) else 0 for v in values],
                color=[colors.get(h.get("head")) for h in heads])
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(heads)), names)
    device = run.results.get("device", "?")
    caption = (f"Training time: mean over seeds, on cached features. Latency: one image through "
               f"backbone and head on {device}, precision {run.results.get('precision', '?')}.")
    return _Plot("time-latency", "Training time and latency", caption, _svg_data(fig))


def _plots(run: _Run) -> list[_Plot]:
    builders = [("accuracy-vs-params", _plot_accuracy_vs_params),
                ("learning-curves", _plot_learning_curves),
                ("shift-accuracy", lambda r: _plot_shifts(r, "accuracy")),
                ("shift-consistency", lambda r: _plot_shifts(r, "consistency")),
                ("size-accuracy", _plot_sizes), ("shots-accuracy", _plot_shots),
                ("confusion-matrix", _plot_confusion), ("time-latency", _plot_time_latency)]
    plots = []
    for name, build in builders:
        try:
            plot = build(run)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # One malformed entry must not cost the user the whole report; say which plot.
            _progress.warn(f"report: plot {name} left out of {run.dir / 'report.html'}: "
                           f"results.json entry not understood ({e!r})")
            continue
        if plot is not None:
            plots.append(plot)
    return plots


# ----------------------------------------------------------------------------------------------
# HTML

def _render(run: _Run) -> str:
    r = run.results
    ds, bb = r.get("dataset") or {}, r.get("backbone") or {}
    title = f"headbench · {ds.get('name', 'data')} · {bb.get('name', 'backbone')}"
    body = [f"<h1>{_e(title)}</h1>",
            _nav(),
            _section("run", "Run", _run_facts(run)),
            _section("summary", "Summary", _summary_html(run)),
            _section("findings", "Findings", _findings_html(run)),
            _section("plots", "Plots", _plots_html(run)),
            _section("heads", "Heads", "".join(_head_html(run, h) for h in
                                               _heads_by_accuracy(r))),
            f"<footer>headbench {_e(r.get('headbench_version', ''))} · run folder "
            f"<code>{_e(r.get('run_dir', run.dir))}</code> · created {_e(r.get('created', '?'))}"
            "</footer>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{_JS}</script>\n</body></html>\n")


def _section(id_: str, title: str, content: str) -> str:
    return f'<section id="{id_}"><h2>{title}</h2>\n{content}\n</section>'


def _nav() -> str:
    links = [("run", "Run"), ("summary", "Summary"), ("findings", "Findings"), ("plots", "Plots"),
             ("heads", "Heads")]
    return "<nav>" + " · ".join(f'<a href="#{i}">{t}</a>' for i, t in links) + "</nav>"


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML)."""
    return ('<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
            + "</table>")


def _run_facts(run: _Run) -> str:
    r = run.results
    ds, bb = r.get("dataset") or {}, r.get("backbone") or {}
    machine, timing = r.get("machine") or {}, r.get("timing") or {}
    classes = run.classes
    shape = bb.get("feature_shape")
    pairs = [
        ("dataset", f"{_e(ds.get('name', '?'))} <code>{_e(ds.get('root', '?'))}</code> "
                    f"({_e(ds.get('layout', '?'))} layout)"),
        ("classes", f"{len(classes)}: " + ", ".join(_e(c) for c in classes[:50])
                    + (", …" if len(classes) > 50 else "")),
        ("splits", _e(ds.get("split_description", "?")) + _split_totals(ds.get("counts"))),
        ("skipped files", _skipped_html(run)),
        ("leakage", _leakage_html(ds.get("leakage"))),
        ("backbone", f"{_e(bb.get('name', '?'))} "
                     f"(timm <code>{_e(bb.get('timm_name', '?'))}</code>), "
                     f"{_count(bb.get('params'))} params, {_count(bb.get('flops'))} FLOPs"
                     + (f", feature map {'×'.join(_e(x) for x in shape)}" if shape else "")),
        ("weights", f"{_e(bb.get('weights', '?'))}"
                    + (f" <code>{_e(bb['weights_checksum'])}</code>"
                       if bb.get("weights_checksum") else "")),
        ("input", _e(_data_config_text(bb.get("data_config")))),
        ("precision / device", f"{_e(r.get('precision', '?'))} on {_e(r.get('device', '?'))}"),
        ("machine", _e(", ".join(f"{k} {v}" for k, v in machine.items() if v is not None))),
        ("run time", _e(", ".join(f"{k.removesuffix('_s')} {_seconds(v)}"
                                  for k, v in timing.items() if k.endswith("_s") and _finite(v)))),
    ]
    return _kv_table(pairs) + _counts_html(ds.get("counts"), classes)


def _data_config_text(dc: Any) -> str:
    if not isinstance(dc, dict):
        return "?"
    size = "×".join(str(x) for x in (dc.get("input_size") or [])[1:]) or "?"
    return (f"{size} px, {dc.get('interpolation', '?')}, crop_pct {dc.get('crop_pct', '?')}, "
            f"mean {dc.get('mean', '?')}, std {dc.get('std', '?')}")


def _split_totals(counts: Any) -> str:
    if not isinstance(counts, dict):
        return ""
    parts = [f"{role} {sum(v for v in (counts.get(role) or {}).values() if _finite(v))}"
             for role in ("train", "val", "test") if role in counts]
    return " — " + ", ".join(parts) + " images" if parts else ""


def _counts_html(counts: Any, classes: list[str]) -> str:
    """Per-class counts per split; folded when there are many classes."""
    if not isinstance(counts, dict) or not classes:
        return ""
    roles = [r for r in ("train", "val", "test") if isinstance(counts.get(r), dict)]
    head = "<tr><th>class</th>" + "".join(f"<th>{r}</th>" for r in roles) + "</tr>"
    rows = "".join(f"<tr><td>{_e(c)}</td>"
                   + "".join(f'<td class="num">{_e(counts[r].get(c, 0))}</td>' for r in roles)
                   + "</tr>" for c in classes)
    open_ = " open" if len(classes) <= 12 else ""
    return (f"<details{open_}><summary>images per class and split</summary>"
            f'<table class="grid"><thead>{head}</thead><tbody>{rows}</tbody></table></details>')


def _skipped_html(run: _Run) -> str:
    n = (run.results.get("dataset") or {}).get("n_skipped")
    rows = []
    path = run.dir / "skipped.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    n = n if _finite(n) else len(rows)
    if not n:
        return "none"
    listed = "".join(f"<li><code>{_e(x.get('path', '?'))}</code>: {_e(x.get('reason', '?'))}</li>"
                     for x in rows[:100])
    more = f"<li>… {len(rows) - 100} more in skipped.csv</li>" if len(rows) > 100 else ""
    return (f"<details><summary>{_e(n)} (listed in skipped.csv)</summary>"
            f"<ul>{listed}{more}</ul></details>" if rows else f"{_e(n)} (see skipped.csv)")


def _leakage_html(leakage: Any) -> str:
    if not leakage:
        return "none found (no byte-identical file in two splits)"
    items = []
    for leak in leakage[:50]:
        if isinstance(leak, dict) and isinstance(leak.get("roles"), dict):
            items.append("<li>" + "; ".join(
                f"{_e(role)}: " + ", ".join(f"<code>{_e(p)}</code>" for p in paths)
                for role, paths in leak["roles"].items()) + "</li>")
        else:
            items.append(f"<li>{_e(leak)}</li>")
    return (f'<details open><summary class="warn">warning: {len(leakage)} byte-identical '
            f"file(s) appear in more than one split; accuracies may be optimistic</summary>"
            f"<ul>{''.join(items)}</ul></details>")


def _summary_html(run: _Run) -> str:
    best = _best_head(run.results)
    header = "".join(f'<th scope="col" title="click to sort">{_e(c)}</th>' for c in SUMMARY_COLUMNS)
    body = []
    for row in summary_rows(run.results):
        cls = ' class="best"' if row[0][0] == best else ""
        cells = "".join(
            f'<td{"" if i == 0 else " class=num"} data-value="{_e("" if v is None else v)}">'
            f"{_e(text)}</td>" for i, (text, v) in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    note = (f"<p>Selected head: <strong>{_e(best)}</strong> (highest mean validation accuracy: "
            "chosen on the val split, never on test; highlighted). "
            f"{_e(_ci_note(_n_seeds(run.results)))}. Gap: train minus test accuracy in "
            "percentage points. Latency and throughput include the backbone. "
            '<span class="js-only">Click a column header to sort.</span></p>')
    return (f'<table id="summary-table" class="sortable grid"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def _findings_html(run: _Run) -> str:
    findings = [f for f in run.results.get("findings") or []
                if isinstance(f, dict) and f.get("text")]
    if not findings:
        return "<p>No findings were recorded for this run.</p>"
    items = "".join(f'<li{" class=significant" if f.get("significant") else ""}>'
                    f'{_e(f["text"])}</li>' for f in findings)
    return f"<ul>{items}</ul>"


_ANALYSIS_NAMES = {"shifts": "translation (shifts)", "sizes": "input size (sizes)",
                   "shots": "shots per class (shots)", "cam": "class activation maps (cam)"}


def _plots_html(run: _Run) -> str:
    figures = [f'<figure id="{p.id}"><figcaption><strong>{_e(p.title)}</strong></figcaption>'
               f'<img class="plot" alt="{p.id}: {_e(p.title)}" src="{p.src}">'
               f"<p>{_e(p.caption)}</p></figure>" for p in _plots(run)]
    missing = [v for k, v in _ANALYSIS_NAMES.items() if k not in run.analyses]
    note = ""
    if missing:
        note = (f"<p>Analyses not in this run: {', '.join(missing)}; add them with "
                "<code>headbench analyze RUN_DIR</code> (see <code>--help</code>).</p>")
    return "\n".join(figures) + note


def _head_html(run: _Run, head: dict) -> str:
    name = str(head.get("head", "?"))
    best = name == _best_head(run.results)
    acc = _pct(_ci((head.get("summary") or {}).get("test_accuracy")))
    badge = ' <span class="badge">best</span>' if best else ""
    parts = [f"<h4>Architecture</h4><pre>{_e(head.get('architecture', '(not recorded)'))}</pre>",
             f"<h4>Parameters and cost</h4>{_cost_html(run, head)}",
             f"<h4>Seeds</h4>{_seeds_html(head)}",
             _top_loss_html(run, head),
             _cam_html(run, name)]
    return (f'<details class="head" id="head-{_slug(name)}"><summary><strong>{_e(name)}</strong>'
            f" — test accuracy {_e(acc)}{badge}</summary>{''.join(parts)}</details>")


def _cost_html(run: _Run, head: dict) -> str:
    bb = run.results.get("backbone") or {}
    sweep = head.get("wd_sweep") or {}
    sweep_text = ", ".join(f"{k}: {v:.4f}" if _finite(v) else f"{k}: —" for k, v in sweep.items())
    pairs = [("head params", _count(head.get("head_params"))),
             ("backbone params", _count(bb.get("params"))),
             ("total params", _count(head.get("total_params"))),
             ("head FLOPs", _count(head.get("head_flops"))),
             ("total FLOPs", _count(head.get("total_flops"))),
             ("model size on disk", _count(head.get("model_size_bytes")) + "B"
              if _finite(head.get("model_size_bytes")) else "—"),
             ("latency b1 / throughput b32",
              f"{_ms(head.get('latency_ms_b1'))} / {_rate(head.get('throughput_b32'))}"),
             ("weight decay (chosen on val)", _e(head.get("weight_decay", "—"))
              + (f" — val loss per weight decay: {_e(sweep_text)}" if sweep_text else "")),
             ("fixed input size", "yes" if head.get("fixed_size") else "no"),
             ("saved model", f"<code>{_e(head.get('model_dir', '—'))}</code>")]
    return _kv_table(pairs)


def _seeds_html(head: dict) -> str:
    seeds = [s for s in head.get("seeds") or [] if isinstance(s, dict)]
    if not seeds:
        return "<p>No per-seed results recorded.</p>"
    cols = ["seed", "best epoch", "epochs run", "train acc", "val acc", "test acc", "test NLL",
            "test ECE", "train time"]
    rows = []
    for s in seeds:
        m = {role: s.get(role) or {} for role in ("train", "val", "test")}
        acc = [(f"{100 * m[r]['accuracy']:.1f}%" if _finite(m[r].get("accuracy")) else "—")
               for r in ("train", "val", "test")]
        cells = [s.get("seed", "?"), s.get("best_epoch", "—"), s.get("epochs_run", "—"), *acc,
                 f"{m['test']['nll']:.3f}" if _finite(m["test"].get("nll")) else "—",
                 f"{m['test']['ece']:.3f}" if _finite(m["test"].get("ece")) else "—",
                 _seconds(s.get("train_time_s"))]
        mark = ' class="best"' if s.get("seed") == head.get("best_seed") else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head_row = "".join(f"<th>{c}</th>" for c in cols)
    return (f'<table class="grid"><thead><tr>{head_row}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table><p>Highlighted: the seed whose weights were saved "
            "(lowest val loss).</p>")


def _top_loss_html(run: _Run, head: dict) -> str:
    name, seed = str(head.get("head")), head.get("best_seed")
    rows = sorted(_head_predictions(run, name, seed), key=lambda r: -r["loss"])[:TOP_LOSS_IMAGES]
    if not rows:
        return ""
    root = Path(str((run.results.get("dataset") or {}).get("root", "")))
    figures, missing = [], 0
    for r in rows:
        src = _jpeg_data(root / r.get("path", ""), THUMB_PX)
        if src is None:
            missing += 1
            continue
        true, pred = (_class_name(r.get(c, ""), run.classes) for c in ("label", "pred"))
        figures.append(
            f'<figure class="thumb"><img src="{src}" alt="{_e(r.get("path", ""))}" '
            f'title="{_e(r.get("path", ""))}"><figcaption>true <b>{_e(true)}</b><br>'
            f"pred <b>{_e(pred)}</b> (p={r['p_pred']:.2f})<br>loss {r['loss']:.2f}"
            "</figcaption></figure>")
    note = f"<p>{missing} image(s) not found under <code>{_e(root)}</code>.</p>" if missing else ""
    return (f"<h4>Highest-loss test images (seed {_e(seed)})</h4>"
            f'<div class="thumbs">{"".join(figures)}</div>{note}')


def _cam_html(run: _Run, name: str) -> str:
    cam = ((run.analyses.get("cam") or {}).get("heads") or {}).get(name)
    if not isinstance(cam, dict) or not cam.get("files"):
        return ""
    figures = []
    for rel in cam["files"]:
        path = _inside(run.dir, str(rel))
        src = _jpeg_data(path, CAM_PX) if path else None
        if src is None:
            continue
        # File names read ok_3_true-ants_pred-ants.png: right or wrong, index, classes.
        label = Path(str(rel)).stem.replace("_true-", " · true ").replace("_pred-", " · pred ")
        figures.append(f'<figure class="cam"><img src="{src}" alt="CAM {_e(label)}">'
                       f"<figcaption>{_e(label)}</figcaption></figure>")
    if not figures:
        return ""
    return (f"<h4>Class activation maps ({_e(cam.get('method', '?'))})</h4>"
            f'<div class="thumbs">{"".join(figures)}</div>')


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1em 1.5em;color:#222;background:#fff}
h1{font-size:1.6em;margin:.2em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h4{margin:1em 0 .4em}nav{margin-bottom:1em}
code,pre{font:13px/1.35 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:30em}
table{border-collapse:collapse;margin:.4em 0}
th,td{padding:.25em .7em;text-align:left;vertical-align:top}
table.grid th,table.grid td{border-bottom:1px solid #e4e4e4}td.num{text-align:right;
font-variant-numeric:tabular-nums}table.kv th{font-weight:600;white-space:nowrap;color:#444}
tr.best td{background:#e6f4ea;font-weight:600}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap;background:#f3f3f3}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
li.significant{font-weight:600}.warn{color:#a40000;font-weight:600}
figure{margin:1.2em 0}img.plot{max-width:100%;height:auto;display:block}
figure p{color:#555;margin:.3em 0;max-width:60em}
.thumbs{display:flex;flex-wrap:wrap;gap:.8em}.thumbs figure{margin:0;width:140px;font-size:12px}
.thumbs figure.cam{width:236px}.thumbs img{width:100%;display:block}
details.head{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.5em 0}
details.head>summary{cursor:pointer}.badge{background:#2e7d32;color:#fff;border-radius:3px;
padding:0 .4em;font-size:12px}.js-only{display:none}.js .js-only{display:inline}
button{margin-right:.5em}footer{margin-top:2em;color:#777;font-size:12px}
"""

# Sorting and expand/collapse only; the page is complete without it.
_JS = r"""
(function () {
  document.documentElement.className += ' js';
  function key(cell) {
    var v = cell.getAttribute('data-value');
    if (v === null || v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === 'number' && typeof b === 'number') return a - b;
    return String(a).localeCompare(String(b));
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = key(r1.cells[col]), b = key(r2.cells[col]);
          if (a === null || b === null) return compare(a, b);  // blanks last either way
          return asc ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); }
      });
    });
  });
  var heads = document.getElementById('heads');
  if (heads) {
    var bar = document.createElement('p');
    [['expand all', true], ['collapse all', false]].forEach(function (b) {
      var button = document.createElement('button');
      button.type = 'button';
      button.textContent = b[0];
      button.addEventListener('click', function () {
        heads.querySelectorAll('details.head').forEach(function (d) { d.open = b[1]; });
      });
      bar.appendChild(button);
    });
    heads.insertBefore(bar, heads.children[1]);
  }
})();
"""
