"""Successive halving of a sweep: which settings stop at the rung, and that a resumed sweep halves
as the uninterrupted one did."""
from __future__ import annotations

import math

import pytest

from headbench.errors import HeadbenchError
from headbench.train import EpochLog, Member, TrainConfig, fit_heads
from headbench.train.halving import behind, best_until

from test_stacked import assert_same_result, makers, separable


def logs(*losses: float) -> list[EpochLog]:
    return [EpochLog(e + 1, 0.0, 0.0, v, 0.0, 1e-3) for e, v in enumerate(losses)]


def member(lr: float, seed: int = 0, fold: int | None = None) -> Member:
    return Member("gap", 1e-2, seed, lr, fold=fold)


def test_best_until_counts_only_improvements_early_stopping_counts():
    history = logs(1.0, 0.995, 0.5, 0.1)
    assert best_until(history, 2, 0.01, 0.0) == 1.0  # 0.5 % is not an improvement
    assert best_until(history, 3, 0.01, 0.0) == 0.5
    assert best_until(history, 9, 0.01, 0.0) == 0.1  # a history shorter than the epoch
    assert best_until(logs(0.10, 0.0995), 2, 0.0, 1e-3) == 0.10
    assert best_until(logs(math.nan), 1, 0.01, 1e-3) == math.inf


def test_the_worse_half_of_a_sweep_stops_and_a_group_of_one_never_does():
    a, b, c, d = member(1e-3), member(3e-3), member(1e-2), member(3e-2)
    histories = {a: logs(0.9, 0.8), b: logs(0.7, 0.6), c: logs(0.5, 0.4), d: logs(0.3, 0.2)}
    assert behind([a, b, c, d], histories, 2, 0.0, 0.0) == [0, 1]
    # a member that finished earlier counts at its best: one running member is kept beside it
    finished = {d: logs(0.05)}
    running = [a, b, c]
    assert behind(running, {**finished, **{m: histories[m] for m in running}}, 2,
                  0.0, 0.0) == [0, 1]
    # the other seeds and the folds at one setting are groups of one
    alone = [member(1e-3, seed=1), member(1e-3, fold=0), member(1e-3, fold=1)]
    assert behind(alone, {m: logs(5.0) for m in alone}, 2, 0.0, 0.0) == []


def test_a_run_whose_loss_was_never_a_number_ranks_last_and_ties_keep_the_lower_lr():
    a, b, c = member(1e-3), member(1e-2), member(3e-2)
    assert behind([a, b, c], {a: logs(math.nan), b: logs(0.4), c: logs(0.4)}, 1,
                  0.0, 0.0) == [0]
    assert behind([b, c], {b: logs(0.4), c: logs(0.4)}, 1, 0.0, 0.0) == [1]
    # the sweep's own order (its first listed setting wins ties, as its choice does)
    assert behind([b, c], {b: logs(0.4), c: logs(0.4)}, 1, 0.0, 0.0,
                  order=lambda m: -m.lr) == [0]


CONFIG = TrainConfig(epochs=8, batch_size=16, lr=(1e-4, 1e-3, 1e-2, 5e-2), warmup_epochs=1,
                     patience=None, halving=3, device="cpu")


@pytest.fixture(scope="module")
def data():
    return (*separable(90, 1), *separable(40, 2))


def test_fit_heads_stops_the_worse_half_of_each_sweep_at_the_rung_and_resumes_alike(data):
    make = makers(["gap", "fastai"])
    fits = fit_heads(make, *data, CONFIG, seeds=[0, 1])
    for label, fit in fits.items():
        ranked = sorted(fit.sweep, key=fit.sweep.get)
        assert (fit.lr, fit.weight_decay) == ranked[0]
        assert [r.epochs_run for r in fit.runs] == [8, 8]  # the chosen setting and other seeds
    members = {}
    fits = fit_heads(make, *data, CONFIG, seeds=[0, 1],
                     on_member=lambda m, r: members.__setitem__(m, r))
    for label in make:
        sweep = [members[Member(label, 1e-2, 0, lr)] for lr in CONFIG.lr]
        assert sorted(r.epochs_run for r in sweep) == [3, 3, 8, 8]
    # a run interrupted after some members finished (a stopped one among them) ends the same
    gap = [Member("gap", 1e-2, 0, lr) for lr in CONFIG.lr]
    stopped = next(m for m in gap if members[m].epochs_run == 3)
    kept = next(m for m in gap if members[m].epochs_run == 8)
    done = {stopped: members[stopped], kept: members[kept]}
    again = {}
    fit_heads(make, *data, CONFIG, seeds=[0, 1], done=done,
              on_member=lambda m, r: again.__setitem__(m, r))
    for m, result in again.items():
        assert_same_result(result, members[m])
    assert set(again) | set(done) == set(members)


def test_halving_off_or_past_the_last_epoch_trains_every_setting_to_the_end(data):
    make = makers(["gap"])
    for halving in (0, 8):
        runs = {}
        fit_heads(make, *data, TrainConfig(**{**CONFIG.to_dict(), "halving": halving}),
                  seeds=[0], on_member=lambda m, r: runs.__setitem__(m, r))
        assert [r.epochs_run for r in runs.values()] == [8] * 4


def test_members_alone_cannot_halve_a_sweep(data):
    with pytest.raises(HeadbenchError, match="halving=0 with stacked=False"):
        fit_heads(makers(["gap"]), *data, CONFIG, seeds=[0], stacked=False)
