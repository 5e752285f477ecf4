"""Stacked training: every member trained together equals the same member trained alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headbench import train
from headbench.train import inputs, protocol
from headbench.heads import DEFAULT_HEADS, create_head
from headbench.layers import global_stats
from headbench.train import Features, Member, TrainConfig, fit_heads, predict_logits, train_members

C, K, MAP = 8, 3, 4
CONFIG = TrainConfig(epochs=10, batch_size=16, lr=5e-2, warmup_epochs=1, patience=2, device="cpu")


def separable(n: int, seed: int, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Positive float16 (n, C, MAP, MAP) maps (post-ReLU like) whose channel means give the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = np.abs(1.5 * np.eye(K, C)[y][:, :, None, None]
               + noise * rng.standard_normal((n, C, MAP, MAP)))
    return X.astype(np.float16), y


@pytest.fixture(scope="module")
def data():
    return (*separable(90, 1), *separable(40, 2))


def makers(names, hidden=None, dropout=None) -> dict:
    return {name: (lambda name=name: create_head(name, C, K, (MAP, MAP), hidden=hidden,
                                                 dropout=dropout)) for name in names}


def assert_same_result(a: train.TrainResult, b: train.TrainResult, atol: float = 1e-5) -> None:
    assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], atol=atol, rtol=1e-4)
    assert a.best_val_loss == pytest.approx(b.best_val_loss, rel=1e-4, abs=1e-6)


# the members of one head differ in decay and seed; two share seed 0 (one batch order for both)
MEMBER_SETTINGS = [(1e-4, 0), (0.3, 0), (1e-2, 1), (1e-3, 2)]


@pytest.mark.parametrize("hidden, dropout", [(None, None), ([6], 0.3)])
def test_every_default_head_trained_stacked_equals_the_member_trained_alone(data, hidden, dropout):
    make = makers(DEFAULT_HEADS, hidden, dropout)
    members = [Member(name, wd, seed) for name in DEFAULT_HEADS for wd, seed in MEMBER_SETTINGS]
    together = train_members(make, members, *data, CONFIG)
    assert set(together) == set(members)
    for member in members:
        alone = train_members(make, [member], *data, CONFIG)[member]
        assert_same_result(together[member], alone)
    # members really differ: seeds give different weights, early stopping acts per member
    gap = [together[Member("gap", wd, s)] for wd, s in MEMBER_SETTINGS]
    assert not torch.equal(gap[2].state_dict["fc.weight"], gap[3].state_dict["fc.weight"])
    assert len({r.epochs_run for r in together.values()}) > 1


def test_the_stacked_batchnorm_statistics_are_each_members_own(data):
    make = makers(["fastai"])
    members = [Member("fastai", 1e-3, 0), Member("fastai", 1e-3, 1)]
    results = train_members(make, members, *data, CONFIG)
    a, b = (results[m].state_dict["bn1.running_mean"] for m in members)
    assert not torch.equal(a, b) and not torch.equal(a, torch.zeros_like(a))


def test_reading_rows_per_block_trains_like_holding_them_in_memory(data, monkeypatch):
    """Inputs too large for memory are computed per batch from rows read once per epoch."""
    make = makers(["gap", "flatten", "gem", "attention"])
    members = [Member(name, 1e-3, s) for name in make for s in (0, 1)]
    in_memory = train_members(make, members, *data, CONFIG)
    monkeypatch.setattr(inputs, "MEMORY_BYTES", 0)
    lazy = train_members(make, members, *data, CONFIG)
    for member in members:
        assert_same_result(lazy[member], in_memory[member])
    # blocks smaller than the training set: a different (shared) order, still one member
    # alone equals the same member stacked, and every epoch sees every row once
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 4 * C * MAP * MAP * 40)
    blocks = train_members(make, members, *data, CONFIG)
    for member in members[:2]:
        assert_same_result(blocks[member], train_members(make, [member], *data, CONFIG)[member])
    seen = []
    original = inputs.Inputs.batch

    def spy(self, key, index, block):
        seen.append(block.rows[index].flatten().tolist() if block.rows is not None else [])
        return original(self, key, index, block)
    monkeypatch.setattr(inputs.Inputs, "batch", spy)
    one_epoch = TrainConfig(epochs=1, batch_size=16, lr=1e-2, device="cpu")
    train_members(makers(["gap"]), [Member("gap", 0.0, 0)], *data, one_epoch)
    assert sorted(sum(seen, [])) == list(range(len(data[1])))


def test_heads_train_on_cached_statistics_exactly_as_on_maps(data):
    X_tr, y_tr, X_va, y_va = data
    form = ("avg", "max")

    def stats(X):  # float32 statistics of the same maps: the same numbers up to rounding
        return global_stats(torch.from_numpy(X).float(), form).numpy()

    names = ["gap", "gmp", "catavgmax", "dense_map", "fastai", "avgmax"]
    make = makers(names)
    members = [Member(name, 1e-3, 0) for name in names]
    cpu = torch.device("cpu")
    on_maps = train_members(make, members, *data, CONFIG)
    on_stats = train_members(make, members, Features(stats(X_tr), cpu, form=form), y_tr,
                             Features(stats(X_va), cpu, form=form), y_va, CONFIG)
    for member in members:
        assert_same_result(on_stats[member], on_maps[member], atol=2e-5)
        head = make[member.head]()
        head.load_state_dict(on_maps[member].state_dict)
        np.testing.assert_allclose(predict_logits(head, Features(stats(X_va), cpu, form=form)),
                                   predict_logits(head, X_va), atol=1e-5)


def test_a_head_that_needs_the_maps_refuses_statistics(data):
    X_tr, y_tr, X_va, y_va = data
    form = ("avg",)
    feats = Features(global_stats(torch.from_numpy(X_tr).float(), form).numpy(),
                     torch.device("cpu"), form=form)
    with pytest.raises(Exception, match="needs the feature maps|needs max"):
        train_members(makers(["flatten"]), [Member("flatten", 0.0, 0)], feats, y_tr,
                      feats, y_tr, CONFIG)


def test_fit_heads_chooses_each_decay_on_val_then_trains_the_other_seeds(data, monkeypatch):
    config = TrainConfig(epochs=5, batch_size=16, lr=1e-2, weight_decays=(0.0, 50.0),
                         device="cpu")
    calls, fits = [], {}
    original = protocol.train_members

    def spy(make, members, *args, **kwargs):
        calls.append(list(members))
        return original(make, members, *args, **kwargs)
    monkeypatch.setattr(protocol, "train_members", spy)
    data = (*separable(90, 1, noise=0.5), *separable(40, 2, noise=0.5))
    result = fit_heads(makers(["gap", "flatten"]), *data, config, seeds=[0, 1, 2],
                       on_fit=lambda label, fit: fits.setdefault(label, fit))
    # two stacked passes: heads × decays at seed 0, then heads × the other seeds
    assert [len(c) for c in calls] == [4, 4]
    assert {m.seed for m in calls[0]} == {0} and {m.seed for m in calls[1]} == {1, 2}
    for label, fit in result.items():
        assert fits[label] is fit and fit.weight_decay == 0.0  # a huge decay loses on val
        assert fit.sweep[1e-2, 0.0] < fit.sweep[1e-2, 50.0]
        assert [r.seed for r in fit.runs] == [0, 1, 2]
        assert {r.weight_decay for r in fit.runs} == {0.0}

    # members already done are not trained again, and the fits are the same
    done = {Member("gap", 0.0, 0, 1e-2): result["gap"].runs[0]}
    calls.clear()
    again = fit_heads(makers(["gap", "flatten"]), *data, config, seeds=[0, 1, 2], done=done)
    assert Member("gap", 0.0, 0, 1e-2) not in calls[0] and len(calls[0]) == 3
    for label in result:
        assert_same_result(again[label].runs[2], result[label].runs[2])


def test_one_at_a_time_gives_the_same_fits(data):
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, weight_decays=(1e-4, 1e-2),
                         device="cpu")
    make = makers(["gap", "gem"])
    stacked = fit_heads(make, *data, config, seeds=[0, 1])
    alone = fit_heads(make, *data, config, seeds=[0, 1], stacked=False)
    for label in make:
        assert stacked[label].weight_decay == alone[label].weight_decay
        for a, b in zip(stacked[label].runs, alone[label].runs):
            assert_same_result(a, b)


def reference_fit(head, data, config: TrainConfig, weight_decay: float, seed: int) -> dict:
    """0.1's loop: the head's own modules, torch.optim.AdamW, one member at a time."""
    X, y, Xv, yv = (torch.as_tensor(np.asarray(a)) for a in data)
    X, Xv = X.float(), Xv.float()
    params = [p for p in head.parameters()]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1],
                                    "weight_decay": weight_decay},
                                   {"params": [p for p in params if p.ndim <= 1],
                                    "weight_decay": 0.0}], lr=config.lr[0])
    order_rng = torch.Generator().manual_seed(seed)
    steps = len(train.batches(np.arange(len(y)), config.batch_size))
    total = config.epochs * steps
    warmup = min(config.warmup_epochs * steps, total)
    best, best_loss, best_epoch = None, float("inf"), 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(len(y), generator=order_rng).numpy()
        for i, index in enumerate(train.batches(order, config.batch_size)):
            for group in optimizer.param_groups:
                group["lr"] = train.lr_at((epoch - 1) * steps + i, config.lr[0], warmup, total,
                                          config.schedule)
            loss = torch.nn.functional.cross_entropy(head(X[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val = torch.nn.functional.cross_entropy(head(Xv), yv).item()
        if val < min(best_loss * (1 - config.min_delta), best_loss - config.min_delta_abs):
            best = {k: v.clone() for k, v in head.state_dict().items()}
            best_loss, best_epoch = val, epoch
        elif epoch - best_epoch >= config.patience:
            break
    return best


@pytest.mark.parametrize("name", ["gap", "flatten", "avgpool", "dense_map", "gmp", "gem",
                                  "catavgmax", "attention", "fastai"])
def test_a_stacked_member_equals_torchs_own_modules_and_adamw(data, name):
    """The stacked arithmetic (matmuls, BatchNorm, GeM's one-pass gradient, the AdamW update)
    is the modules' own: each member matches 0.1's loop over the real head (no dropout)."""
    make = makers([name], dropout=0.0)
    members = [Member(name, wd, seed) for wd, seed in ((1e-3, 0), (0.1, 0), (1e-2, 3))]
    together = train_members(make, members, *data, CONFIG)
    for member in members:
        with train.seeded(member.seed):
            head = make[name]()
        expected = reference_fit(head, data, CONFIG, member.weight_decay, member.seed)
        for k, v in expected.items():
            torch.testing.assert_close(together[member].state_dict[k], v, atol=1e-4, rtol=1e-3)
