"""What training produces: the identity of a run (`Member`) and its records.

`EpochLog` is one epoch of one run, `TrainResult` one trained member (best-epoch weights and
history), `FitResult` one head fitted at the weight decay its sweep chose. The engine fills
them in; the protocol returns them; `run` serialises them to the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Member:
    """One training run: head `head` (a label) at one weight decay and one seed."""

    head: str
    weight_decay: float
    seed: int


@dataclass
class EpochLog:
    """One epoch of training; `epoch` counts from 1, `lr` is the rate of its last step."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float


@dataclass
class TrainResult:
    """One trained head: best-epoch weights (on CPU) and the history that chose them."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    weight_decay: float
    seed: int
    epochs_run: int
    train_time_s: float
    history: list[EpochLog] = field(default_factory=list)


@dataclass
class FitResult:
    """A head fitted at the weight decay its sweep chose, one run per seed (first seed first)."""

    weight_decay: float
    sweep: dict[float, float]
    runs: list[TrainResult]
