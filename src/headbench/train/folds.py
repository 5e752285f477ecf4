"""Cross-validation on cached features: the selection data when the val split is too small.

A val split of a few dozen images cannot tell heads apart: most reach 100 % on it, and the
choice falls to noise. When the val split has fewer than `MIN_VAL_IMAGES` images, or fewer than
`MIN_VAL_PER_CLASS` in some class (constants fixed in advance), the heads are scored by
stratified `FOLDS`-fold cross-validation over train + val (the *pool*; the test split never
enters): each fold trains on the other folds, with early stopping and the learning-rate choice on
an inner stratified `INNER` part of them, and the held-out fold is only scored. Every pool image
is held out once per partition, so a head's selection data is its correctness on every
train + val image, averaged over `REPEATS` partitions (each trained at a seed of its own): one
partition's scores move with which images share a fold (bench/RESULTS.md (j): the recommendation
changed in 2 of 5 split seeds with one partition, in none with two).

The folds of all heads train in one pass over the pool (`protocol.train_members` with `folds`):
the members of a head at every fold (and every setting, when the sweep is nested) are one
stack. So that they can step together, every fold trains on equally many images and validates
on equally many: the folds' parts differ by at most one image (`make_folds`), and a fold with one
more than the smallest drops one at random (seeded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..runtime import resolve_device
from .checkpoint import Checkpoints
from .inputs import Features, as_features
from .engine import split_of
from .protocol import TrainConfig, _settings, predict_logits, train_members, twin_heads
from .results import Member, TrainResult

FOLDS = 5                # outer folds
REPEATS = 2              # partitions into folds, each at its own seed (bench/RESULTS.md (j))
INNER = 0.15             # the part of a fold's training images that stops and sweeps it
MIN_VAL_IMAGES = 300     # a val split smaller than this selects by cross-validation ...
MIN_VAL_PER_CLASS = 30   # ... and so does one with fewer images than this in some class


def needed(y_val: Sequence[int], num_classes: int) -> bool:
    """Whether the val split is too small to select on (`MIN_VAL_IMAGES`, `MIN_VAL_PER_CLASS`)."""
    counts = np.bincount(np.asarray(y_val, dtype=np.int64), minlength=num_classes)
    return len(y_val) < MIN_VAL_IMAGES or int(counts.min()) < MIN_VAL_PER_CLASS


@dataclass
class Folds:
    """Stratified folds of a pool of images, in one or more partitions: `outer[r, i]` the fold
    of partition r that holds out image i; `train[f]` and `val[f]` the pool positions fold f
    trains on and stops on (every fold the same number of each). Folds are numbered across
    partitions: fold f is fold f % k of partition f // k."""

    outer: np.ndarray  # (repeats, N)
    train: np.ndarray  # (repeats · k, n)
    val: np.ndarray    # (repeats · k, v)

    @property
    def repeats(self) -> int:
        return self.outer.shape[0]

    def sizes(self) -> tuple[int, int]:
        return self.train.shape[1], self.val.shape[1]

    def partition(self, fold: int) -> int:
        return fold // (len(self.train) // self.repeats)

    def rows(self, folds: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(training positions, validation positions) of members at `folds`, (M, n) and (M, v)."""
        index = np.asarray(folds)
        return (torch.as_tensor(self.train[index], device=device),
                torch.as_tensor(self.val[index], device=device))

    def held_out(self, fold: int) -> np.ndarray:
        k = len(self.train) // self.repeats
        return np.flatnonzero(self.outer[fold // k] == fold % k)


def make_folds(y: Sequence[int], seed: int = 0, k: int = FOLDS, inner: float = INNER,
               repeats: int = 1) -> Folds:
    """Stratified k folds of images labelled `y` (seeded), each with its inner stratified split,
    in `repeats` partitions (the first is the same whatever `repeats` is).

    The images are dealt class by class, each class in its own seeded random order, round-robin
    over the folds: every fold holds each class in proportion (±1 image) and the folds' sizes
    differ by at most one, however many classes there are. A fold's inner split takes, in the
    same order, each image at which the running count of `inner` × images passes a whole number:
    `inner` of each class (±1) and of the whole part."""
    y = np.asarray(y, dtype=np.int64)
    outers, trains, vals = [], [], []  # each partition's own: (k, n) and (k, v)
    for repeat in range(repeats):
        key = [seed] if repeat == 0 else [seed, repeat]
        order = np.concatenate([rows[np.random.default_rng([*key, int(c)]).permutation(len(rows))]
                                for c in np.unique(y) for rows in [np.flatnonzero(y == c)]])
        outer = np.empty(len(y), dtype=np.int64)
        outer[order] = np.arange(len(y)) % k
        outers.append(outer)
        train, val = [], []
        for fold in range(k):
            rest = order[outer[order] != fold]  # the fold's training part, still class by class
            step = np.arange(len(rest))
            to_val = np.floor((step + 1) * inner) > np.floor(step * inner)
            train.append(np.sort(rest[~to_val]))
            val.append(np.sort(rest[to_val]))
        # every partition's parts have the same sizes: its folds hold as many of each class
        rng = np.random.default_rng([seed, k] if repeat == 0 else [seed, k, repeat])
        trains.append(_equal(train, rng))
        vals.append(_equal(val, rng))
    return Folds(np.stack(outers), np.concatenate(trains), np.concatenate(vals))


def _equal(parts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Each part cut to the smallest one's size (at most one fewer) by dropping a random
    position; (k, size)."""
    size = min(len(p) for p in parts)
    return np.stack([np.sort(rng.choice(p, size, replace=False)) if len(p) > size
                     else np.asarray(p) for p in parts]).astype(np.int64)


def usable(folds: Folds) -> bool:
    """Whether every fold has at least 2 images to train on and 1 to stop on."""
    n, v = folds.sizes()
    return n >= 2 and v >= 1


def fit_folds(make_heads: dict[str, Callable[[], nn.Module]], X_pool: Any, y_pool: Any,
              config: TrainConfig, folds: Folds, seed: int = 0, *,
              settings: dict[str, list[tuple[float, float]]] | None = None,
              done: dict[Member, TrainResult] | None = None,
              on_member: Callable[[Member, TrainResult], None] | None = None,
              on_epochs: Callable[[int], None] | None = None,
              checkpoints: Checkpoints | None = None) -> dict[str, np.ndarray]:
    """Every head cross-validated: at each fold, each of the head's settings trained on the
    fold's training rows of the pool (at `seed` in the first partition, `seed` + r in partition
    r), the one with the least inner val loss scored on the held-out fold. Returns head label ->
    per-image correctness over the pool, averaged over the partitions (0/1 with one).

    Args:
        make_heads: head label -> builds a fresh, untrained head.
        X_pool, y_pool: the train + val features and labels (never the test split).
        folds: from `make_folds(y_pool)`.
        settings: head label -> its (lr, weight decay) settings; None: `config`'s sweep for
            every head (a sweep nested in each fold).
        done: members already trained (a resumed run); on_member, on_epochs, checkpoints: as
            for `fit_heads`.
    """
    pool = as_features(X_pool, resolve_device(config.device))
    results = dict(done or {})
    twins = twin_heads(make_heads, [seed + r for r in range(folds.repeats)])
    grid = {label: settings[label] if settings else _settings(config) for label in make_heads}
    members = [Member(label, wd, seed + folds.partition(fold), lr, fold=fold)
               for label in make_heads if label not in twins
               for fold in range(len(folds.train)) for lr, wd in grid[label]]

    def finished(member: Member, result: TrainResult) -> None:
        results[member] = result
        if on_member is not None:
            on_member(member, result)

    if on_epochs is not None:  # a twin's epochs are its original's: done with them
        on_epochs(config.epochs * sum(len(folds.train) * len(grid[t])
                                      - sum(m.head == t for m in results) for t in twins))
    todo = [m for m in members if m not in results]
    if todo:
        train_members(make_heads, todo, pool, y_pool, None, None, config, on_done=finished,
                      on_epochs=on_epochs, folds=folds, known=dict(results),
                      checkpoint=checkpoints.at("folds", list(make_heads)) if checkpoints else None)
    correct = {label: _scored(make_heads[label], label, results, pool, np.asarray(y_pool),
                              folds, grid[label], seed)
               for label in make_heads if label not in twins}
    return {label: correct[twins.get(label, label)] for label in make_heads}


def _scored(make_head: Callable[[], nn.Module], label: str, results: dict[Member, TrainResult],
            pool: Any, y: np.ndarray, folds: Folds, grid: list[tuple[float, float]],
            seed: int) -> np.ndarray:
    """The head's correctness on every pool image, from the fold that held it out in each
    partition, averaged over the partitions (each fold's setting chosen on its inner val loss;
    ties: the first listed, as `fit_heads`)."""
    correct = np.zeros(len(y), dtype=np.float64)
    head = make_head().to(pool.device).eval()
    split = split_of(head)
    # the inputs the fit prepared from the pool (none for inputs computed per batch, or
    # exact only near one point: GeM's moments): the body alone on the held-out rows
    prepared = pool.prepared.get(split.key) if split.prepare_at is None else None
    for fold in range(len(folds.train)):
        at = seed + folds.partition(fold)
        runs = [results[Member(label, wd, at, lr, fold=fold)] for lr, wd in grid]
        head.load_state_dict(min(runs, key=lambda r: r.best_val_loss).state_dict)
        out = folds.held_out(fold)
        if prepared is not None:
            with torch.inference_mode():
                logits = split.body(prepared[torch.as_tensor(out, device=pool.device)])
            logits = logits.float().cpu().numpy()
        else:
            held = Features(pool.get(out), pool.device, form=pool.form)
            logits = predict_logits(head, held, device=pool.device)
        correct[out] += (logits.argmax(1) == y[out]) / folds.repeats
    return correct


__all__ = ["FOLDS", "INNER", "MIN_VAL_IMAGES", "MIN_VAL_PER_CLASS", "REPEATS", "Folds", "fit_folds",
           "make_folds", "needed", "usable"]
