"""The stacked engine trains every default head as a plain PyTorch loop would (tests/
reference_training.py: the head's own forward, torch.optim.AdamW, torch's BatchNorm, the same
batch order and dropout masks): same epochs run, best epoch and chosen setting (learning rate
and decay), best validation losses equal to float tolerance; under the default protocol
(constant rate, early stopping with a minimum improvement) and the cosine one."""
from __future__ import annotations

import numpy as np
import pytest

from headbench.heads import DEFAULT_HEADS, HeadSpec, create_head
from headbench.train import TrainConfig, fit_heads, seeded

from reference_training import train_plain

C, K, MAP = 32, 3, 4
CONFIG = TrainConfig(epochs=8, batch_size=16, lr=(3e-3, 1e-2), weight_decays=(1e-4, 1e-1),
                     warmup_epochs=1, patience=3, device="cpu")
COSINE = TrainConfig(epochs=8, batch_size=16, lr=3e-3, weight_decays=(1e-4, 1e-1),
                     warmup_epochs=1, patience=3, min_delta=0.0, min_delta_abs=0.0,
                     schedule="cosine", device="cpu")
SEEDS = [0, 1]
REL = 1e-5  # best validation losses: float32 sums in another order
# and absolute: a loss near 0 is logsumexp(z) - z_y of float32 logits of magnitude ~10, which
# carry ~1e-6 of rounding whatever the loss (fastai's seed runs reach 0.004 on this data)
ABS = 1e-6


def sparse_maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 (n, C, MAP, MAP) post-ReLU6-like maps, ~80 % zeros, whose class shows in a few
    channels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    x = rng.standard_normal((n, C, MAP, MAP)) - 0.9
    x[:, :K] += 1.5 * np.eye(K)[y][:, :, None, None]
    return np.clip(x, 0, 6).astype(np.float16), y


@pytest.fixture(scope="module")
def data(one_thread):
    X_tr, y_tr = sparse_maps(80, 1)
    X_va, y_va = sparse_maps(40, 2)
    return X_tr, y_tr, X_va, y_va


def head_of(name: str, dropout: float | None = None):
    return create_head(HeadSpec(name, dropout=dropout), C, K, (MAP, MAP))


@pytest.fixture(scope="module", params=["default", "cosine"])
def protocol(request):
    return CONFIG if request.param == "default" else COSINE


@pytest.fixture(scope="module")
def stacked(data, protocol):
    heads = {name: (lambda name=name: head_of(name)) for name in DEFAULT_HEADS}
    return fit_heads(heads, *data, protocol, seeds=SEEDS)


def plain(name: str, data, config: TrainConfig, lr: float, weight_decay: float, seed: int):
    with seeded(seed):
        head = head_of(name)
    return train_plain(head, *data, epochs=config.epochs, batch_size=config.batch_size, lr=lr,
                       warmup_epochs=config.warmup_epochs, patience=config.patience,
                       weight_decay=weight_decay, seed=seed, schedule=config.schedule,
                       min_delta=config.min_delta, min_delta_abs=config.min_delta_abs)


def settings(config: TrainConfig) -> list[tuple[float, float]]:
    return [(lr, wd) for lr in config.lr for wd in config.weight_decays]


@pytest.mark.parametrize("name", DEFAULT_HEADS)
def test_every_member_trains_as_the_plain_loop(name, data, stacked, protocol):
    fit = stacked[name]
    for lr, wd in settings(protocol):
        ref = plain(name, data, protocol, lr, wd, SEEDS[0])
        assert fit.sweep[lr, wd] == pytest.approx(ref.best_val_loss, rel=REL, abs=ABS), (lr, wd)
    for run in fit.runs:
        ref = plain(name, data, protocol, fit.lr, fit.weight_decay, run.seed)
        assert (run.epochs_run, run.best_epoch) == (ref.epochs_run, ref.best_epoch), run.seed
        assert run.best_val_loss == pytest.approx(ref.best_val_loss, rel=REL, abs=ABS)
        history = [log.val_loss for log in run.history]
        assert history == pytest.approx(ref.val_losses, rel=REL, abs=ABS)


@pytest.mark.parametrize("name", DEFAULT_HEADS)
def test_the_setting_chosen_is_the_plain_loops_unless_the_losses_tie(name, data, stacked,
                                                                     protocol):
    losses = {s: plain(name, data, protocol, *s, SEEDS[0]).best_val_loss
              for s in settings(protocol)}
    best = min(losses, key=losses.get)
    chosen = (stacked[name].lr, stacked[name].weight_decay)
    tie = abs(losses[best] - losses[chosen]) <= 1e-6 * abs(losses[best])
    assert chosen == best or tie
