"""Successive halving of a sweep: the settings of a head that are behind at one epoch stop there.

A sweep trains one member per setting of a head at one seed (and, in cross-validation with a
nested sweep, at one fold): its *group*. At epoch `TrainConfig.halving` every member of a group
still training whose best validation loss so far is not in the better half of its group stops
there, as if its early stopping had fired (Jamieson & Talwalkar 2016, successive halving with one
rung). Only sweeps are halved: a group of one member (the other seeds, the folds at their chosen
setting) always keeps it.

The decision reads histories only (`best_until`), so a resumed run, whose finished members come
from their files, decides as the uninterrupted one did. A low learning rate that is slow but would
overtake the others after the rung is the cost (bench/RESULTS.md (l) counts how often it happens).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from .results import EpochLog, Member


def best_until(history: Sequence[EpochLog], epoch: int, min_delta: float,
               min_delta_abs: float) -> float:
    """The best validation loss up to `epoch` as early stopping counts it (a loss improves on
    the best only by more than `min_delta` of it or `min_delta_abs`); inf when none was a
    number."""
    best = math.inf
    for log in history[:epoch]:
        if log.val_loss < min(best * (1 - min_delta), best - min_delta_abs):
            best = log.val_loss
    return best


def _group(member: Member) -> tuple:
    return member.head, member.seed, member.fold


def behind(running: Sequence[Member], histories: dict[Member, Sequence[EpochLog]], epoch: int,
           min_delta: float, min_delta_abs: float,
           order: Callable[[Member], Any] | None = None) -> list[int]:
    """The positions in `running` of the members that stop at `epoch`: those outside the better
    half (rounded up) of their group, among every member of the group in `histories` (running or
    finished). Ties go to the member first in `order` (the sweep's: the setting listed first, as
    the choice breaks them), by default the lower learning rate, then the lower weight decay."""
    groups: dict[tuple, list[Member]] = {}
    for member in histories:
        groups.setdefault(_group(member), []).append(member)

    def rank_key(member: Member) -> tuple:
        loss = best_until(histories[member], epoch, min_delta, min_delta_abs)
        lr = -1.0 if member.lr is None else member.lr  # None: the protocol's first lr
        tie = order(member) if order is not None else (lr, member.weight_decay)
        return (loss if loss == loss else math.inf), tie

    ahead = set()
    for group in groups.values():
        ranked = sorted(group, key=rank_key)
        ahead.update(ranked[:math.ceil(len(ranked) / 2)])
    return [i for i, member in enumerate(running) if member not in ahead]


__all__ = ["behind", "best_until"]
