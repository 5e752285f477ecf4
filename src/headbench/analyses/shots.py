"""Small data (``shots``): every head retrained on k training images per class.

Protocol per (k, seed): a stratified subset drawn with that seed, the head initialised under
that seed and trained with `train.train_head` at the weight decay its sweep chose in the run
(no new sweep), early stopping on the unchanged val split, evaluated on the full test split.
'all' (or a k that takes every image) reuses the run's own head of that seed: same data, same
protocol. Per test image, the section keeps each head's correctness averaged over seeds, so
findings can test a difference between heads image by image (`shots_finding`: at the smallest
k); the report plots accuracy against k.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .. import progress as _progress
from .. import train as _train
from ..config import analysis_option, parse_shots
from ..evaluate import ci_summary
from ..figures import Plot, ci_lines, keyed_series, per_head
from ..heads import Head
from ..runtime import resolve_device
from ..results import HeadResult
from ..run import Run
from .context import UNIT, RunContext
from .findings import (Draft, mean_of, paired_difference, per_image_values, per_seed, percent,
                       points, verdict)
from .registry import register_analysis


def stratified_subset(labels: np.ndarray, per_class: int | str, seed: int
                      ) -> tuple[np.ndarray, list[int]]:
    """Sorted indices of `per_class` items of every class drawn with `seed`; 'all' takes all.

    Each class is permuted once per seed and its first k taken, so for one seed the subsets are
    nested (the 1-shot images are among the 5-shot ones) and differ between seeds.

    Returns:
        (indices, classes that have fewer than `per_class` items and are taken whole).

    Example:
        >>> idx, short = stratified_subset(np.array([0, 0, 0, 1]), 2, seed=0)
        >>> len(idx), short
        (3, [1])
    """
    labels = np.asarray(labels)
    if per_class == "all":
        return np.arange(len(labels)), []
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:per_class])
        if len(members) < per_class:
            short.append(int(cls))
    return np.sort(np.concatenate(chosen)), short


def shots_analysis(ctx: RunContext, shots: Sequence[int | str],
                   seeds: Sequence[int] | None = None) -> dict:
    """Every head retrained on k training images per class; accuracy and train − test gap.

    Returns the `analyses["shots"]` section: `shots` (as strings), `seeds`, `seed_ids`,
    `n_train` {k: images}, `short_classes` {k: classes taken whole} and per head
    {k: {test_accuracy, train_accuracy, overfit_gap: ci over seeds, per_image: {"test_accuracy":
    [N]}}}: per test image (test split order), correctness averaged over seeds (4 decimals).
    """
    shots = parse_shots(shots)
    seeds = list(ctx.seeds if seeds is None else seeds)
    X_train, y_train = ctx.view_features("train"), ctx.labels("train")
    device = resolve_device(ctx.run.train_config.device)
    X_val = _train.Features(ctx.view_features("val"), device)
    X_test = _train.Features(ctx.view_features("test"), device)
    y_val, y_test = ctx.labels("val"), ctx.labels("test")
    labels = [h.head for h in ctx.heads]
    rows: dict[str, dict[str, dict[str, list]]] = {}
    correct: dict[tuple[str, str], list[np.ndarray]] = {}  # (head, k) -> per seed, per image
    n_train, short_classes = {}, {}
    total = len(shots) * len(seeds) * len(labels)
    with _progress.progress("small data: training heads", total=total, unit="run") as bar:
        for k in shots:
            for seed in seeds:
                idx, short = stratified_subset(y_train, k, seed)
                n_train[str(k)] = int(len(idx))
                if short:
                    short_classes[str(k)] = [ctx.classes[c] for c in short]
                whole = len(idx) == len(y_train)
                Xs = X_train if whole else X_train[idx]
                for label in labels:
                    bar.set_postfix(f"{label} k={k} seed {seed}")
                    head = _shot_head(ctx, label, seed, Xs, y_train[idx], X_val, y_val, whole)
                    train_acc = float(np.mean(_correct(head, Xs, y_train[idx], device)))
                    test_correct = _correct(head, X_test, y_test, device)
                    test_acc = float(np.mean(test_correct))
                    correct.setdefault((label, str(k)), []).append(test_correct)
                    cell = rows.setdefault(label, {}).setdefault(str(k), {
                        "test_accuracy": [], "train_accuracy": [], "overfit_gap": []})
                    cell["test_accuracy"].append(test_acc)
                    cell["train_accuracy"].append(train_acc)
                    cell["overfit_gap"].append(train_acc - test_acc)
                    bar.advance()
    heads = {label: {k: _cell(cell, correct[(label, k)]) for k, cell in per_k.items()}
             for label, per_k in rows.items()}
    return {"shots": [str(k) for k in shots], "seeds": len(seeds), "seed_ids": seeds,
            "n_train": n_train, "short_classes": short_classes, "heads": heads}


def _cell(cell: dict[str, list], correct: list[np.ndarray]) -> dict:
    """One (head, k) cell: each metric's ci over seeds, and per test image the correctness
    averaged over seeds (4 decimals keep the section small)."""
    out = {m: ci_summary(v, bounds=(-1.0, 1.0) if m == "overfit_gap" else UNIT)
           for m, v in cell.items()}
    out["per_image"] = {"test_accuracy": np.round(np.mean(correct, axis=0), 4).tolist()}
    return out


def _shot_head(ctx: RunContext, label: str, seed: int, X: Any, y: np.ndarray, X_val: Any,
               y_val: np.ndarray, whole: bool) -> Head:
    if whole and seed in ctx.states[label]:
        return ctx.make_head(label, seed)
    with _train.seeded(seed):
        head = ctx.make_head(label)
    chosen = ctx.run.head(label)  # the head's setting from its sweep (lr None: schema 1)
    _train.train_head(head, X, y, X_val, y_val, ctx.run.train_config, chosen.weight_decay, seed,
                      chosen.lr)
    return head.eval()


def _correct(head: Head, X: Any, y: np.ndarray, device: torch.device) -> np.ndarray:
    """(N,) booleans: the head's top-1 class is the label."""
    return _train.predict_logits(head, X, device=device).argmax(1) == y


# ----------------------------------------------------------------------------------------------
# findings and report section

def shots_finding(section: dict, ref: HeadResult, other: HeadResult) -> list[Draft]:
    """The reference head against `other` on test accuracy at the smallest shot count; per test
    image: correctness averaged over seeds."""
    a, b = ref.head, other.head
    heads, seeds = section.get("heads", {}), section.get("seed_ids", [])
    if a not in heads or b not in heads or not section.get("shots"):
        return []
    k = section["shots"][0]
    va, vb = (per_seed(heads[h][k]["test_accuracy"], seeds) for h in (a, b))
    ia, ib = (per_image_values(heads[h][k].get("per_image", {}).get("test_accuracy"))
              for h in (a, b))
    ga, gb = (heads[h][k]["overfit_gap"]["mean"] for h in (a, b))
    per = ("the whole training split" if k == "all"
           else f"{k} image{'s' if k != '1' else ''} per class")
    d = paired_difference(va, vb, ia, ib)
    return [Draft(d, "small_data", a, b, lambda d: (
        f"small data ({per}): test accuracy {a} {percent(mean_of(va))} vs {b} "
        f"{percent(mean_of(vb))}, {d.phrase()}; train − test gap {points(ga)} vs {points(gb)} — "
        f"{verdict(d, a, b, 'more accurate with this little data')}"))]


def shots_accuracy_plot(run: Run, section: dict) -> Plot | None:
    """Test accuracy vs training images per class, one line per head."""
    if not isinstance(section.get("shots"), list):
        return None
    keys = [str(k) for k in section["shots"]]
    series = {n: keyed_series(d, keys, lambda v: v.get("test_accuracy"))
              for n, d in per_head(section).items()}
    series = {n: ([keys.index(k) for k in xs], cis) for n, (xs, cis) in series.items() if xs}
    if not series:
        return None
    fig = ci_lines(run, series, "training images per class", "test accuracy (%)",
                   xticks=list(range(len(keys))), xticklabels=keys)
    caption = (f"Each head retrained on the given number of training images per class "
               f"({section.get('seeds', '?')} seeds); same test split.")
    return Plot("shots-accuracy", "Test accuracy vs shots per class", caption, fig)


register_analysis("shots", shots_analysis, "shots per class", option=analysis_option("shots"),
                  pair_findings=shots_finding, report=(shots_accuracy_plot,))


__all__ = ["stratified_subset", "shots_accuracy_plot", "shots_analysis", "shots_finding"]
