"""What training produces: the identity of a run (`Member`) and its records.

`EpochLog` is one epoch of one run, `TrainResult` one trained member (best-epoch weights and
history), `FitResult` one head fitted at the weight decay its sweep chose. The engine fills
them in; the protocol returns them; `run` serialises them to the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import HeadbenchError


@dataclass(frozen=True)
class Member:
    """One training run: head `head` (a label) at one weight decay, one seed and one peak
    learning rate (None: the protocol's first, `TrainConfig.lr[0]`); `fold`: the
    cross-validation fold it trains on (`folds`), None for the train split."""

    head: str
    weight_decay: float
    seed: int
    lr: float | None = None
    fold: int | None = None


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
    lr: float | None = None  # the peak learning rate (None: recorded before the lr sweep)

    @property
    def diverged(self) -> bool:
        """Whether no epoch had a finite validation loss (the head keeps its initial weights)."""
        return self.best_epoch == 0


def diverged_error(head: str, result: TrainResult) -> HeadbenchError:
    """The one line for a run that never had a finite validation loss."""
    lr = f"learning rate {result.lr:g} and " if result.lr is not None else ""
    first = result.history[0].val_loss if result.history else float("nan")
    return HeadbenchError(f"training head '{head}' diverged (validation loss is {first}) at "
                          f"{lr}weight decay {result.weight_decay:g}: lower lr")


@dataclass
class FitResult:
    """A head fitted at the learning rate and weight decay its sweep chose, one run per seed
    (first seed first). `sweep`: (lr, weight decay) -> best val loss at the first seed (inf
    where that run diverged)."""

    lr: float
    weight_decay: float
    sweep: dict[tuple[float, float], float]
    runs: list[TrainResult]
