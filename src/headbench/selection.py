"""The selection data: what the recommended head is scored on (never the test split).

Two sources, decided once per run from the split sizes, before any score is seen:

- **val**: each head's per-image val accuracy, averaged over its seeds;
- **cv**: stratified 5-fold cross-validation over train + val, repeated over 2 partitions
  (`train.folds`), used when the val split has fewer than 300 images or fewer than 30 in some
  class: each head's correctness on every train + val image, from the fold that held it out,
  averaged over the partitions. The folds train at one seed per partition, at the learning rate
  and decay the head's sweep chose on val (a sweep nested in each fold cost 5×
  as much on the default job: docs/DESIGN.md), with early stopping on each fold's inner split.

`--selection val|cv` forces one. Heads trained on augmented views or fine-tuned cannot be
cross-validated from the cached features, so a run with them scores every head on val.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import nn

from .errors import HeadbenchError
from .train import TrainConfig, predict_logits
from .train.inputs import MEMORY_BYTES
from .train.folds import (FOLDS, MIN_VAL_IMAGES, MIN_VAL_PER_CLASS, REPEATS, fit_folds,
                          make_folds, needed, usable)

MODES = ("auto", "cv", "val")
POOL_BYTES = MEMORY_BYTES  # the largest train + val feature set cross-validated (in memory)
# what each kind of selection data is, in the run's log, the CLI and the verdict
DESCRIPTION = {"cv": f"{FOLDS}-fold cross-validation over train + val ({REPEATS} partitions)",
               "val": "the val split"}


def mode(option: str, y_val: np.ndarray, num_classes: int, variants: bool,
         pool_bytes: int = 0) -> tuple[str, str]:
    """("cv" or "val", why) for the `--selection` option on a val split labelled `y_val`;
    `variants`: the run has heads trained on augmented views or fine-tuned; `pool_bytes`: the
    train + val features as float32 (the folds hold them in memory, up to `POOL_BYTES`)."""
    if option == "val":
        return "val", "selection 'val' asked for"
    if variants:
        if option == "cv":
            raise HeadbenchError("selection 'cv' cannot score heads trained on augmented views or "
                                 "fine-tuned (they are not cross-validated); select on 'val' "
                                 "or drop those heads", param="selection")
        return "val", "heads trained on augmented views or fine-tuned are scored on val"
    if pool_bytes > POOL_BYTES:
        too_big = (f"the train + val features ({pool_bytes / 2**30:.1f} GiB as float32) are "
                   f"more than the {POOL_BYTES / 2**30:.0f} GiB cross-validation holds in memory")
        if option == "cv":
            raise HeadbenchError(f"selection 'cv': {too_big}; select on 'val'", param="selection")
        return "val", too_big
    if option == "cv":
        return "cv", "selection 'cv' asked for"
    smallest = int(np.bincount(y_val, minlength=num_classes).min())
    size = f"the val split has {len(y_val)} images, {smallest} in its smallest class"
    if needed(y_val, num_classes):
        return "cv", (f"{size}: fewer than {MIN_VAL_IMAGES}, or than {MIN_VAL_PER_CLASS} in a "
                      "class")
    return "val", size


def cross_validate(make_heads: dict[str, Callable[[], nn.Module]],
                   chosen: dict[str, tuple[float, float]], X_pool: Any, y_pool: np.ndarray,
                   config: TrainConfig, split_seed: int, seed: int = 0,
                   **callbacks: Any) -> dict[str, np.ndarray]:
    """label -> per-image correctness over the pool (train + val), each head at its `chosen`
    (lr, weight decay), the folds drawn with `split_seed`, members at `seed`; `callbacks`:
    `done`, `on_member`, `on_epochs`, `checkpoints` as for `train.fit_heads`."""
    folds = make_folds(y_pool, seed=split_seed, repeats=REPEATS)
    if not usable(folds):
        raise HeadbenchError(f"{len(y_pool)} train + val images are too few for {FOLDS}-fold "
                             "cross-validation; add images or select on 'val'",
                             param="selection")
    return fit_folds(make_heads, X_pool, y_pool, config, folds, seed,
                     settings={label: [chosen[label]] for label in make_heads}, **callbacks)


def per_image_correct(make_head: Callable[[], nn.Module], states: dict, X_val: Any,
                      y_val: np.ndarray, device: Any) -> np.ndarray:
    """A head's per-image val accuracy averaged over its seeds' weights `states` ({seed:
    state_dict}); `make_head()` builds the untrained head."""
    hits = []
    for state in states.values():
        head = make_head()
        head.load_state_dict(state)
        logits = predict_logits(head, X_val, device=device)
        hits.append(logits.argmax(1) == np.asarray(y_val))
    return np.mean(hits, axis=0)
