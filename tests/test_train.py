"""The shared head-training protocol on cached features (tiny synthetic feature maps, CPU)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headbench.errors import HeadbenchError
from headbench.splits import training_split
from headbench.train import inputs
from headbench.train import (Features, TrainConfig, fit_head, lr_at, predict_logits, seeded,
                             train_head)

C, K, MAP = 8, 3, 4


def separable(n: int, seed: int, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """float16 (n, C, MAP, MAP) maps whose channel means identify the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    centres = 2.0 * np.eye(K, C)
    X = centres[y][:, :, None, None] + noise * rng.standard_normal((n, C, MAP, MAP))
    return X.astype(np.float16), y


def gap_head(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(C, K))


def flatten_head() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(C * MAP * MAP, K))


def bn_head() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(C),
                         nn.Linear(C, K))


FAST = TrainConfig(epochs=12, batch_size=16, lr=1e-2, warmup_epochs=1, patience=None,
                   device="cpu")


@pytest.fixture(scope="module")
def data():
    X_tr, y_tr = separable(96, seed=1)
    X_va, y_va = separable(60, seed=2)
    return X_tr, y_tr, X_va, y_va


def train_gap(data, seed: int = 0, dropout: float = 0.0, config: TrainConfig = FAST):
    with seeded(seed):
        head = gap_head(dropout)
    return head, train_head(head, *data, config, weight_decay=1e-3, seed=seed)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_head_learns_separable_features(data):
    head, result = train_gap(data)
    logits = predict_logits(head, data[2])
    assert (logits.argmax(1) == data[3]).mean() > 0.95
    assert result.history[result.best_epoch - 1].val_acc > 0.95
    assert len(result.history) == result.epochs_run == FAST.epochs
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_same_seed_gives_identical_weights_and_history_even_with_dropout(data):
    _, a = train_gap(data, seed=3, dropout=0.5)
    _, b = train_gap(data, seed=3, dropout=0.5)
    _, c = train_gap(data, seed=4, dropout=0.5)
    assert_same_state(a.state_dict, b.state_dict)
    assert a.history == b.history
    assert not torch.equal(a.state_dict["3.weight"], c.state_dict["3.weight"])
    assert a.history != c.history


def test_training_leaves_global_torch_rng_untouched(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_gap(data, dropout=0.5)
    assert torch.equal(torch.rand(3), expected)


def test_seeded_makes_head_init_deterministic():
    with seeded(7):
        a = gap_head()
    with seeded(7):
        b = gap_head()
    with seeded(8):
        c = gap_head()
    assert_same_state(a.state_dict(), b.state_dict())
    assert not torch.equal(a[3].weight, c[3].weight)


def test_early_stopping_restores_best_epoch():
    # random labels: the flatten head memorises train and val loss climbs after a few epochs
    rng = np.random.default_rng(0)
    X_tr = rng.standard_normal((48, C, MAP, MAP)).astype(np.float16)
    X_va = rng.standard_normal((48, C, MAP, MAP)).astype(np.float16)
    y_tr, y_va = rng.integers(0, K, 48), rng.integers(0, K, 48)
    config = TrainConfig(epochs=40, batch_size=16, lr=3e-2, warmup_epochs=0, patience=3,
                         device="cpu")
    with seeded(0):
        head = flatten_head()
    result = train_head(head, X_tr, y_tr, X_va, y_va, config, weight_decay=0.0, seed=0)

    val_losses = [e.val_loss for e in result.history]
    assert result.epochs_run < config.epochs
    assert result.epochs_run == result.best_epoch + config.patience
    assert result.best_val_loss == min(val_losses) == val_losses[result.best_epoch - 1]
    # the weights handed back (and left in the head) are the best epoch's, not the last's
    assert_same_state(head.state_dict(), result.state_dict)
    logits = torch.from_numpy(predict_logits(head, X_va))
    loss = F.cross_entropy(logits, torch.from_numpy(y_va)).item()
    assert loss == pytest.approx(result.best_val_loss, rel=1e-5)
    assert all(v.device.type == "cpu" for v in result.state_dict.values())


def test_fit_head_picks_decay_with_lowest_val_loss_and_trains_every_seed(data):
    config = TrainConfig(epochs=6, batch_size=16, lr=1e-2, weight_decays=(0.0, 30.0),
                         warmup_epochs=1, patience=None, device="cpu")
    calls = []
    fit = fit_head(gap_head, *data, config, seeds=(0, 5),
                   on_run=lambda done, total: calls.append((done, total)))

    assert set(fit.sweep) == {(1e-2, 0.0), (1e-2, 30.0)}
    assert (fit.lr, fit.weight_decay) == min(fit.sweep, key=fit.sweep.get)
    assert fit.sweep[1e-2, 0.0] != fit.sweep[1e-2, 30.0]
    assert [r.seed for r in fit.runs] == [0, 5]
    assert all((r.lr, r.weight_decay) == (fit.lr, fit.weight_decay) for r in fit.runs)
    assert fit.runs[0].best_val_loss == fit.sweep[fit.lr, fit.weight_decay]
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_fit_head_initialises_each_seed_like_seeded(data):
    config = TrainConfig(epochs=3, batch_size=16, weight_decays=(1e-3,), device="cpu")
    fit = fit_head(gap_head, *data, config, seeds=(2,))
    with seeded(2):
        head = gap_head()
    alone = train_head(head, *data, config, weight_decay=1e-3, seed=2, lr=fit.lr)
    assert_same_state(fit.runs[0].state_dict, alone.state_dict)


def test_memmap_features_streamed_from_disk_train_like_in_memory(data, tmp_path, monkeypatch):
    X_tr, y_tr, X_va, y_va = data
    path = tmp_path / "train.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=X_tr.shape)
    mm[:] = X_tr
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=X_tr.shape)

    _, in_memory = train_gap(data)
    monkeypatch.setattr(inputs, "CACHE_BYTES", 0)  # force batch-by-batch reads
    assert Features(mm, torch.device("cpu"))._memory is None
    with seeded(0):
        head = gap_head()
    streamed = train_head(head, mm, y_tr, X_va, y_va, FAST, weight_decay=1e-3, seed=0)
    assert_same_state(streamed.state_dict, in_memory.state_dict)
    np.testing.assert_array_equal(predict_logits(head, mm), predict_logits(head, X_tr))


def test_batchnorm_head_trains_when_one_sample_is_left_over(data):
    X_tr, y_tr, X_va, y_va = data
    n = FAST.batch_size + 1
    with seeded(0):
        head = bn_head()
    result = train_head(head, X_tr[:n], y_tr[:n], X_va, y_va, FAST, weight_decay=1e-3, seed=0)
    assert result.epochs_run == FAST.epochs
    assert math.isfinite(result.best_val_loss)


def test_lr_warms_up_per_step_then_decays_to_zero():
    lrs = [lr_at(s, 1.0, warmup_steps=4, total_steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] < 0.01
    assert lr_at(20, 1.0, 4, 20) == pytest.approx(0.0)


def test_history_records_the_schedule(data):
    steps = math.ceil(96 / FAST.batch_size)
    total = FAST.epochs * steps
    for config in (FAST, dataclasses.replace(FAST, schedule="cosine")):
        _, result = train_gap(data, config=config)
        lr = FAST.lr[0]
        assert result.history[0].lr == pytest.approx(lr_at(steps - 1, lr, steps, total))
        assert result.history[-1].lr == pytest.approx(
            lr_at(total - 1, lr, steps, total, config.schedule))
        final = result.history[-1].lr
        assert final == lr if config.schedule == "constant" else final < 0.01 * lr


def test_predict_logits_returns_float32_and_restores_train_mode(data):
    head = gap_head()
    head.train()
    logits = predict_logits(head, data[2], batch_size=7)
    assert logits.shape == (60, K) and logits.dtype == np.float32
    assert head.training
    with torch.no_grad():
        expected = head.eval()(torch.from_numpy(data[2]).float()).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_train_head_rejects_labels_beyond_head_classes(data):
    X_tr, y_tr, X_va, y_va = data
    with pytest.raises(HeadbenchError, match="num_classes"):
        train_head(gap_head(), X_tr, y_tr + 1, X_va, y_va, FAST, 0.0, 0)


def test_train_head_rejects_label_count_mismatch(data):
    X_tr, y_tr, X_va, y_va = data
    with pytest.raises(HeadbenchError, match="y_train"):
        train_head(gap_head(), X_tr, y_tr[:-1], X_va, y_va, FAST, 0.0, 0)


@pytest.mark.parametrize("option, value", [("epochs", 0), ("batch_size", 1), ("lr", 0.0),
                                           ("weight_decays", ()), ("patience", -1),
                                           ("warmup_epochs", -1), ("epochs", "x")])
def test_train_config_rejects_out_of_range_option(option, value):
    with pytest.raises(HeadbenchError) as e:
        TrainConfig(**{option: value})
    # the message starts with the parameter's name; the CLI swaps it for the flag
    assert e.value.param == option and str(e.value).startswith(option + " ")
    assert "--" not in str(e.value)


def test_patience_zero_turns_early_stopping_off():
    assert TrainConfig(patience=0).patience is None


def test_train_config_round_trips_through_json():
    config = TrainConfig(epochs=5, weight_decays=[0.1, 0.2], device="cpu")
    restored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.weight_decays == (0.1, 0.2)


def test_pooling_once_per_fit_trains_exactly_like_pooling_every_step(data):
    """The parameter-free prefix (the global pool) is computed once; the weights are the same."""
    class Unsplit(nn.Module):  # not a Sequential, so train_head cannot split off the pool
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head(x)

    X_tr, y_tr, X_va, y_va = data
    split = training_split(gap_head())
    assert len(split.prepare) == 2  # pool + flatten; the Dropout and Linear train
    with seeded(0):
        split = gap_head()
    with seeded(0):
        whole = Unsplit(gap_head())
    a = train_head(split, X_tr, y_tr, X_va, y_va, FAST, 1e-3, 0)
    b = train_head(whole, X_tr, y_tr, X_va, y_va, FAST, 1e-3, 0)
    assert a.best_epoch == b.best_epoch
    for k, v in a.state_dict.items():
        torch.testing.assert_close(v, b.state_dict[f"head.{k}"], atol=1e-5, rtol=1e-5)


def test_a_head_that_trains_identically_to_another_is_trained_once_and_reported_twice(data,
                                                                                      monkeypatch):
    from headbench.heads import HeadSpec, create_head
    from headbench.train import fit_heads, protocol
    heads = {name: (lambda name=name: create_head(HeadSpec(name), C, K, (MAP, MAP)))
             for name in ("gap", "dense_map", "gmp")}
    assert protocol.twin_heads(heads, [0, 1]) == {"dense_map": "gap"}  # Dense of the average
    trained, real = [], protocol.train_members
    monkeypatch.setattr(protocol, "train_members",
                        lambda make, members, *a, **k: trained.extend(members) or real(make, members, *a, **k))
    fits = fit_heads(heads, *data, FAST, seeds=[0, 1])
    assert {m.head for m in trained} == {"gap", "gmp"}
    monkeypatch.setattr(protocol, "twin_heads", lambda make, seeds: {})  # train dense_map too
    alone = fit_heads({"dense_map": heads["dense_map"]}, *data, FAST, seeds=[0, 1])["dense_map"]
    copied = fits["dense_map"]
    assert (copied.weight_decay, copied.sweep) == (alone.weight_decay, alone.sweep)
    for a, b in zip(copied.runs, alone.runs):
        assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
        assert_same_state(a.state_dict, b.state_dict)


@pytest.mark.skipif(not __import__("headbench.runtime").runtime.bf16_native(torch.device("cpu")),
                    reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_head_training_is_asked_for_and_stays_close_to_fp32(data):
    bf16 = TrainConfig(**{**FAST.to_dict(), "precision": "bf16"})
    with seeded(0):
        a, b = gap_head(), gap_head()
    fp32_run = train_head(a, *data, FAST, 1e-3, 0)
    bf16_run = train_head(b, *data, bf16, 1e-3, 0)
    assert bf16_run.best_val_loss == pytest.approx(fp32_run.best_val_loss, rel=0.15)
    assert bf16_run.best_val_loss != fp32_run.best_val_loss  # the matmuls did run in bf16


def test_head_precision_is_checked_naming_its_option():
    with pytest.raises(HeadbenchError, match="precision 'fp16'") as e:
        TrainConfig(precision="fp16")
    assert e.value.param == "head_precision"


@pytest.mark.parametrize("relative, absolute", [(0.1, 0.0), (0.0, 0.05), (0.01, 0.05)])
def test_an_improvement_must_beat_the_best_by_min_delta(data, relative, absolute):
    """Val loss still creeping down by less than min_delta of the best (or min_delta_abs nats,
    whichever is more) is not an improvement: training stops `patience` epochs after the last
    real one (Keras' EarlyStopping rule)."""
    creeping = dataclasses.replace(FAST, epochs=30, lr=3e-3, patience=2, min_delta_abs=0.0)
    _, every = train_gap(data, config=dataclasses.replace(creeping, min_delta=0.0))
    _, meaningful = train_gap(data, config=dataclasses.replace(
        creeping, min_delta=relative, min_delta_abs=absolute))
    losses = [e.val_loss for e in every.history]
    assert every.epochs_run == 30 and all(b < a for a, b in zip(losses, losses[1:]))
    assert meaningful.epochs_run < 30
    best, at = math.inf, 0
    for epoch, loss in enumerate(losses, 1):  # the rule, by hand, on the same trajectory
        if loss < min(best * (1 - relative), best - absolute):
            best, at = loss, epoch
        elif epoch - at >= 2:
            break
    assert (meaningful.best_epoch, meaningful.epochs_run) == (at, epoch)
    assert meaningful.best_val_loss == pytest.approx(best)


def test_a_diverging_learning_rate_loses_the_sweep_without_stopping_the_run(data):
    config = dataclasses.replace(FAST, epochs=3, lr=(1e-2, 1e12))
    fit = fit_head(gap_head, *data, config, seeds=(0, 1))
    assert fit.lr == 1e-2 and fit.sweep[1e12, fit.weight_decay] == math.inf
    assert all(r.lr == 1e-2 and not r.diverged for r in fit.runs)
    with pytest.raises(HeadbenchError, match="diverged .* learning rate 1e\\+12 .*lower lr"):
        fit_head(gap_head, *data, dataclasses.replace(config, lr=1e12), seeds=(0,))


def test_a_run_written_before_the_lr_sweep_keeps_its_protocol():
    old = {"epochs": 40, "batch_size": 64, "lr": 1e-3, "weight_decays": [1e-4, 1e-1],
           "warmup_epochs": 2, "patience": 8, "device": None, "precision": "fp32"}
    config = TrainConfig.from_dict(old)
    assert (config.lr, config.schedule, config.min_delta, config.min_delta_abs,
            config.halving) == ((1e-3,), "cosine", 0.0, 0.0, 0)
    new = TrainConfig()
    assert (new.schedule, new.min_delta, new.min_delta_abs, new.patience, new.halving) == (
        "constant", 0.01, 1e-3, 2, 10)
    # a run of 1.0 (patience 3) resumes with its own patience, not the new default
    assert TrainConfig.from_dict({**new.to_dict(), "patience": 3}).patience == 3
    # a run of the protocol before halving keeps it off
    assert TrainConfig.from_dict({k: v for k, v in new.to_dict().items()
                                  if k != "halving"}).halving == 0
