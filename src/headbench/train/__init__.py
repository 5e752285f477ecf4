"""Training heads on cached backbone features: one protocol for every head, all heads at once.

The package's files, each readable on its own:

- `protocol`: the protocol (`TrainConfig`, the learning-rate schedule, `seeded`) and its entry
  points: `train_members`, `train_head`, `fit_heads`, `fit_head`, `predict_logits`;
- `results`: what training produces (`Member`, `EpochLog`, `TrainResult`, `FitResult`);
- `inputs`: the input pipeline (`Features`, `Views`, prepared inputs, blocks and `batches`);
- `engine`: the stacked engine (`Stack`: the members of one head as one model, its AdamW) and
  the epochs that drive it;
- `stacked`: a head body evaluated for M stacked members with batched matmuls;
- `halving`: successive halving of a sweep (the settings behind at one epoch stop);
- `checkpoint`: the stacks' state saved at epoch ends, so that a rerun continues a killed fit;
- `folds`: cross-validation on cached features (stratified folds with their inner splits, every
  fold of a head in one stack: `fit_folds`), the selection data of small val splits.

Members import each other directly; this file only re-exports the public names.
"""
from __future__ import annotations

from .checkpoint import Checkpoints
from .inputs import Features, Views, batches
from .protocol import (LRS, TrainConfig, fit_head, fit_heads, lr_at, predict_logits, seeded,
                       train_head, train_members)
from .results import EpochLog, FitResult, Member, TrainResult

__all__ = ["LRS", "Checkpoints", "EpochLog", "Features", "FitResult", "Member", "TrainConfig",
           "TrainResult", "Views", "batches", "fit_head", "fit_heads", "lr_at", "predict_logits", "seeded", "train_head",
           "train_members"]
