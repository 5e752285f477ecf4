"""Head training written plainly, as an independent reference for the stacked engine.

One member at a time: the head's own forward on the float32 feature maps (no prepared inputs,
no stacking), `torch.optim.AdamW` with decay on matrices only, torch's own BatchNorm, and the
protocol written out from its specification: the batch order from `torch.Generator` seeded by
the seed, sorted batches with a last batch of one joined to the one before, one dropout mask per
Dropout layer and step from the member's dropout stream (`engine.dropout_mask`: the masks are
the engine's by definition, the training around them is not), per-step linear warm-up then a
constant rate or cosine decay, early stopping on validation loss (an improvement: below the best by more
than `min_delta` of it or `min_delta_abs`, whichever is more) with the best epoch restored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headbench.train.engine import dropout_mask


@dataclass
class PlainResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    val_losses: list[float]


def dropout_stream(seed: int) -> torch.Generator:
    """The member's dropout generator: its seed from numpy's SeedSequence([seed, 1])."""
    state = np.random.SeedSequence([seed, 1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def cut(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    parts = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [np.concatenate(parts[-2:])]
    return [np.sort(p) for p in parts]


def learning_rate(step: int, lr: float, warmup: int, total: int, schedule: str) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    done = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


class _GivenMasks:
    """Forward hooks that make every Dropout of a head multiply by the mask drawn for it."""

    def __init__(self, head: nn.Module, probe: torch.Tensor, generator: torch.Generator):
        self.layers = [m for m in head.modules() if isinstance(m, nn.Dropout)]
        self.generator, self.masks = generator, {}
        self.shapes = self._input_shapes(head, probe)
        for layer in self.layers:
            layer.register_forward_hook(self._apply)

    def _input_shapes(self, head: nn.Module, probe: torch.Tensor) -> dict:
        """Each Dropout's input shape without the batch axis (an eval pass: no statistics move)."""
        shapes = {}

        def record(layer, args):
            shapes[layer] = args[0].shape[1:]  # returns None: the input stays as it is
        hooks = [layer.register_forward_pre_hook(record) for layer in self.layers]
        head.eval()
        with torch.no_grad():
            head(probe)
        for hook in hooks:
            hook.remove()
        return shapes

    def _apply(self, layer, args, out):
        return args[0] * self.masks[layer] if layer.training else out

    def draw(self, batch: int) -> None:
        """One mask per Dropout for a batch of `batch` rows, in layer order."""
        for layer in self.layers:
            self.masks[layer] = dropout_mask((batch, *self.shapes[layer]), layer.p,
                                             self.generator)


def train_plain(head: nn.Module, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                y_val: np.ndarray, *, epochs: int, batch_size: int, lr: float,
                warmup_epochs: int, patience: int | None, weight_decay: float,
                seed: int, schedule: str, min_delta: float,
                min_delta_abs: float) -> PlainResult:
    x_tr, x_va = torch.from_numpy(X_train).float(), torch.from_numpy(X_val).float()
    y_tr, y_va = torch.as_tensor(y_train), torch.as_tensor(y_val)
    decayed = [p for p in head.parameters() if p.ndim > 1]
    rest = [p for p in head.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    order_rng = torch.Generator().manual_seed(seed)
    masks = _GivenMasks(head, x_tr[:2], dropout_stream(seed))
    steps = len(cut(np.arange(len(x_tr)), batch_size))
    warmup, total = min(warmup_epochs * steps, epochs * steps), epochs * steps
    best, best_epoch, losses = math.inf, 0, []
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(x_tr), generator=order_rng).numpy()
        for i, batch in enumerate(cut(order, batch_size)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate((epoch - 1) * steps + i, lr, warmup, total, schedule)
            masks.draw(len(batch))
            loss = F.cross_entropy(head(x_tr[batch]), y_tr[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val = float(F.cross_entropy(head(x_va), y_va, reduction="sum")) / len(x_va)
        losses.append(val)
        if val < min(best * (1 - min_delta), best - min_delta_abs):
            best, best_epoch = val, epoch
        elif patience is not None and epoch - best_epoch >= patience:
            break
    return PlainResult(best_epoch, best, len(losses), losses)
