"""Cross-validated selection: the folds, fold members equal to the plain protocol on their rows,
and a compare that never reads the test split while it cross-validates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headbench as hb
from headbench import selection
from headbench.data import scan_folder
from headbench.features import FeatureSet
from headbench.heads import HeadSpec, create_head
from headbench.synthetic import make_shapes_dataset
from headbench.train import Member, TrainConfig, seeded, train_head, train_members
from headbench.train.folds import FOLDS, fit_folds, make_folds, needed

CONFIG = TrainConfig(epochs=6, batch_size=16, lr=(1e-2,), patience=2, device="cpu")


def test_every_image_is_held_out_once_and_no_fold_trains_or_stops_on_its_held_out_images():
    y = np.repeat(np.arange(3), [40, 25, 18])
    folds = make_folds(y, seed=3)
    assert np.bincount(folds.outer[0]).tolist() == [17, 17, 17, 16, 16]
    for fold in range(FOLDS):
        held = set(folds.held_out(fold))
        train, val = set(folds.train[fold]), set(folds.val[fold])
        assert not (held & train) and not (held & val) and not (train & val)
        assert len(train) + len(val) >= len(y) - len(held) - 2  # at most a few left unused
        for c in range(3):  # stratified: each class in the held-out fold in proportion
            share = np.mean(y[list(held)] == c)
            assert abs(share - np.mean(y == c)) < 0.1
    assert folds.train.shape[0] == FOLDS and len({len(r) for r in folds.train}) == 1
    again = make_folds(y, seed=3)
    assert np.array_equal(again.outer, folds.outer) and np.array_equal(again.train, folds.train)
    assert not np.array_equal(make_folds(y, seed=4).outer, folds.outer)


def test_repeated_partitions_hold_out_every_image_once_each_and_the_first_is_unchanged():
    """Two partitions: the first is the single partition's folds, the second another one; each
    holds out every image once; fold members of partition r train at seed + r and the scores
    are the mean correctness over partitions."""
    y = np.repeat(np.arange(3), [40, 25, 18])
    one, two = make_folds(y, seed=3), make_folds(y, seed=3, repeats=2)
    assert two.repeats == 2 and two.train.shape[0] == 2 * FOLDS
    assert np.array_equal(two.outer[0], one.outer[0])
    assert np.array_equal(two.train[:FOLDS], one.train) and np.array_equal(two.val[:FOLDS], one.val)
    assert not np.array_equal(two.outer[1], two.outer[0])
    for fold in range(2 * FOLDS):
        assert two.partition(fold) == fold // FOLDS
        assert not set(two.held_out(fold)) & (set(two.train[fold]) | set(two.val[fold]))
    for r in range(2):
        held = np.concatenate([two.held_out(r * FOLDS + f) for f in range(FOLDS)])
        assert sorted(held.tolist()) == list(range(len(y)))
    X, y = _pool()
    folds = make_folds(y, seed=0, repeats=2)
    make = {"gap": lambda: create_head(HeadSpec("gap"), 8, 3, (2, 2))}
    trained = {}
    correct = fit_folds(make, X, y, CONFIG, folds, seed=4, on_member=trained.__setitem__)
    assert sorted((m.fold, m.seed) for m in trained) == [(f, 4 + f // FOLDS)
                                                         for f in range(2 * FOLDS)]
    hits = np.zeros((2, len(y)))
    for member, result in trained.items():
        head = make["gap"]()
        head.load_state_dict(result.state_dict)
        out = folds.held_out(member.fold)
        with torch.no_grad():
            hits[folds.partition(member.fold), out] = (
                head(torch.as_tensor(X[out]).float()).argmax(1).numpy() == y[out])
    assert np.allclose(correct["gap"], hits.mean(0))


def test_with_many_small_classes_the_folds_stay_balanced_and_lose_at_most_one_image_each():
    """60 classes of 7: per-class rounding must not add up (every fold within one image of the
    others; a fold drops at most one image to train on and one to stop on)."""
    y = np.repeat(np.arange(60), 7)
    folds = make_folds(y, seed=1)
    sizes = np.bincount(folds.outer[0])
    assert sizes.max() - sizes.min() <= 1
    n, v = folds.sizes()
    for fold in range(FOLDS):
        assert n + v >= len(y) - len(folds.held_out(fold)) - 2
        assert set(np.unique(y[folds.held_out(fold)])) == set(range(60))  # every class held out
    assert v == pytest.approx(0.15 * (len(y) - sizes.max()), abs=1)


def test_a_small_val_split_needs_cross_validation():
    assert needed(np.repeat([0, 1], [200, 200]), 2) is False
    assert needed(np.repeat([0, 1], [100, 100]), 2)      # 200 < 300 images
    assert needed(np.repeat([0, 1, 2], [200, 200, 20]), 3)  # 20 < 30 in one class
    assert selection.mode("val", np.zeros(10, int), 2, False)[0] == "val"
    assert selection.mode("auto", np.zeros(10, int), 2, True)[0] == "val"  # fine-tuned heads
    with pytest.raises(hb.HeadbenchError, match="selection .cv. cannot"):
        selection.mode("cv", np.zeros(10, int), 2, True)
    # a train + val set too large for the folds to hold in memory: val, and the reason said
    huge = selection.POOL_BYTES + 1
    chosen, why = selection.mode("auto", np.zeros(10, int), 2, False, pool_bytes=huge)
    assert chosen == "val" and "cross-validation holds in memory" in why
    with pytest.raises(hb.HeadbenchError, match="selection 'cv': the train \\+ val features"):
        selection.mode("cv", np.zeros(10, int), 2, False, pool_bytes=huge)


def _pool(n: int = 60, k: int = 3):
    g = torch.Generator().manual_seed(0)
    y = np.arange(n) % k
    X = torch.randn(n, 8, 2, 2, generator=g) + torch.as_tensor(y, dtype=torch.float32)[:, None, None, None]
    return X.numpy().astype(np.float16), y


@pytest.mark.parametrize("name", ["gap", "fastai", "attention", "flatten"])
def test_a_fold_member_equals_the_plain_protocol_on_its_rows(name):
    """Stacked with the other folds, each fold member trains exactly as `train_head` on the
    fold's training rows with early stopping on its inner rows (fastai: dropout and BatchNorm)."""
    X, y = _pool()
    folds = make_folds(y, seed=0)
    make = lambda: create_head(HeadSpec(name), 8, 3, (2, 2))  # noqa: E731
    members = [Member(name, 1e-2, 1, 1e-2, fold=f) for f in range(FOLDS)]
    got = train_members({name: make}, members, X, y, None, None, CONFIG, folds=folds)
    for member in members:
        rows, val = folds.train[member.fold], folds.val[member.fold]
        with seeded(1):
            head = make()
        alone = train_head(head, X[rows], y[rows], X[val], y[val], CONFIG, 1e-2, 1, lr=1e-2)
        mine = got[member]
        assert (mine.best_epoch, mine.epochs_run) == (alone.best_epoch, alone.epochs_run)
        assert mine.best_val_loss == pytest.approx(alone.best_val_loss, rel=1e-5)
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(mine.state_dict[key], value, rtol=1e-4, atol=1e-5)


def test_fit_folds_scores_each_image_by_the_fold_that_held_it_out():
    X, y = _pool()
    folds = make_folds(y, seed=0)
    make = {"gap": lambda: create_head(HeadSpec("gap"), 8, 3, (2, 2)),
            "dense_map": lambda: create_head(HeadSpec("dense_map"), 8, 3, (2, 2))}
    trained = {}
    correct = fit_folds(make, X, y, CONFIG, folds, on_member=trained.__setitem__)
    assert {m.head for m in trained} == {"gap"}  # dense_map is gap's twin: trained once
    assert np.array_equal(correct["gap"], correct["dense_map"]) and correct["gap"].shape == (60,)
    for fold in range(FOLDS):
        (member,) = [m for m in trained if m.fold == fold]
        head = make["gap"]()
        head.load_state_dict(trained[member].state_dict)
        out = folds.held_out(fold)
        with torch.no_grad():
            hit = head(torch.as_tensor(X[out]).float()).argmax(1).numpy() == y[out]
        assert np.array_equal(correct["gap"][out], hit)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "triangle"), per_class=14,
                               image_size=64)


def test_compare_cross_validates_a_small_val_split_without_reading_the_test_split(
        shapes, cache, tmp_path, monkeypatch):
    """Spies: every feature row read while cross-validating, and the pool the folds get."""
    read, during, pools = [], [], []
    take, fit = FeatureSet.take, selection.fit_folds

    def spy_take(self, indices):
        if during:
            read.extend(int(i) for i in np.atleast_1d(indices))
        return take(self, indices)

    def spy_fit(make_heads, X_pool, y_pool, *args, **kwargs):
        during.append(True)
        pools.append((X_pool, np.asarray(y_pool)))
        try:
            return fit(make_heads, X_pool, y_pool, *args, **kwargs)
        finally:
            during.clear()

    monkeypatch.setattr(FeatureSet, "take", spy_take)
    monkeypatch.setattr(selection, "fit_folds", spy_fit)
    run = hb.compare(shapes, backbone="efficientnet_lite0", weights="embedded",
                     heads=["gap", "flatten"], seeds=2, epochs=3, input_size=64, precision="fp32",
                     report=False, cache_dir=cache, out=tmp_path)
    scan = scan_folder(shapes)
    paths = {i: it.path.relative_to(scan.root).as_posix() for i, it in enumerate(scan.items)}
    splits = run.dataset.splits
    pooled = set(splits["train"].paths) | set(splits["val"].paths)
    (pool, y), = pools
    assert [paths[i] for i in pool.X.indices] == splits["train"].paths + splits["val"].paths
    assert y.tolist() == list(splits["train"].labels) + list(splits["val"].labels)
    assert {paths[i] for i in read} <= pooled  # nothing of the test split, even from disk
    with torch.no_grad():  # the rows the folds train on are those images' cached features
        assert torch.equal(pool.get(np.arange(len(pool))),
                           torch.as_tensor(pool.X[np.arange(len(pool))]).float())
    assert run.verdict.selection == "cv"
    assert run.verdict.n_images == len(splits["train"].paths) + len(splits["val"].paths)
    assert "cross-validation" in run.verdict.text
    assert run.best_head == run.verdict.recommended
    forced = hb.compare(shapes, backbone="efficientnet_lite0", weights="embedded", heads=["gap"],
                        seeds=1, epochs=2, input_size=64, precision="fp32", report=False,
                        cache_dir=cache, out=tmp_path, selection="val")
    assert forced.verdict.selection == "val" and forced.verdict.n_images == len(splits["val"].paths)
    for h in forced.heads:  # per-image val accuracy averaged over seeds, then over images
        assert forced.verdict.scores[h.head] == pytest.approx(
            np.mean([s.val.accuracy for s in h.seeds]))
