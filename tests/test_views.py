"""Cached augmented views: the seeded transform, the cache keys that name recipe and view index,
incremental extraction, and head training that draws one view per image per epoch."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headbench import features, train
from headbench import images as hb_images
from headbench.backbones import create_backbone
from headbench.data import file_digest
from headbench.images import (AugTransform, EvalTransform, View, aug_seed, draft_size, load_image,
                              make_transform, recipe_hash)
from headbench.errors import HeadbenchError
from headbench.heads import create_head
from headbench.train import inputs, protocol
from headbench.train import Member, TrainConfig, Views, fit_heads, train_head, train_members

CFG = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "interpolation": "bilinear", "crop_pct": 0.875}
N_IMAGES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 60, 3), np.uint8))


# --------------------------------------------------------------------------- the transform

def test_aug_transform_is_a_pure_function_of_image_and_seed(picture):
    t = AugTransform(CFG)
    a, b, c = t(picture, 7), t(picture, 7), t(picture, 8)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(pickle.loads(pickle.dumps(t))(picture, 7), a)  # DataLoader workers
    np.random.seed(0)
    torch.manual_seed(0)
    assert torch.equal(t(picture, 7), a)  # no global RNG
    drawn = {tuple(t(picture, s).flatten()[:64].tolist()) for s in range(8)}
    assert len(drawn) == 8


def test_aug_transform_normalises_with_the_config_mean_and_std(picture):
    plain = {**CFG, "mean": [0.0] * 3, "std": [1.0] * 3}
    unit = AugTransform(plain)(picture, 3)  # pixels in [0, 1], as drawn
    assert 0.0 <= float(unit.min()) and float(unit.max()) <= 1.0
    mean, std = (torch.tensor(CFG[k]).view(3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(AugTransform(CFG)(picture, 3), (unit - mean) / std)


def test_a_digest_seeds_the_view_of_that_image(picture):
    t = AugTransform(CFG, View(aug=2))
    assert torch.equal(t(picture, "ab" * 32), t(picture, aug_seed("ab" * 32, 2)))
    seeds = {aug_seed("ab" * 32, 2), aug_seed("ab" * 32, 3), aug_seed("cd" * 32, 2)}
    assert len(seeds) == 3 and all(0 <= s < 2**64 for s in seeds)
    assert AugTransform(CFG, 48)(picture, 0).shape == (3, 48, 48)
    assert AugTransform(CFG, View(size=40, aug=1))(picture, "x").shape == (3, 40, 40)
    with pytest.raises(ValueError, match="shift or margin"):
        AugTransform(CFG, View(shift=(2, 0), margin=2))


def test_make_transform_gives_every_view_one_calling_convention(picture):
    centre = make_transform(CFG)
    assert isinstance(centre, EvalTransform)
    assert torch.equal(centre(picture, "ab" * 32), centre(picture))  # the digest is ignored
    aug = make_transform(CFG, View(aug=1))
    assert isinstance(aug, AugTransform)
    assert torch.equal(aug(picture, "ab" * 32), AugTransform(CFG)(picture, aug_seed("ab" * 32, 1)))
    assert not torch.equal(aug(picture, "ab" * 32), centre(picture))
    # JPEG draft decoding of an augmented view keeps enough pixels for its smallest crop
    assert draft_size(CFG, View(aug=0))[0] > draft_size(CFG)[0]


def test_the_crop_falls_back_to_the_centre_at_the_nearest_allowed_ratio():
    low, high = hb_images.AUG_RECIPE["ratio"]
    rng = np.random.default_rng(0)
    left, top, right, bottom = hb_images._crop_box((400, 4), rng)  # far too wide for any draw
    assert (right - left) / (bottom - top) == pytest.approx(high) and bottom - top == 4
    assert left == pytest.approx(400 / 2 - (right - left) / 2)
    left, top, right, bottom = hb_images._crop_box((4, 400), rng)
    assert (right - left) / (bottom - top) == pytest.approx(low) and right - left == 4


# --------------------------------------------------------------------------- keys

def test_view_keys_keep_old_entries_and_name_recipe_and_index(monkeypatch):
    assert View().key == "center" and View(size=288).key == "size288"
    assert View(shift=(8, -8), margin=32).key == "shift8_-8m32"
    assert View(size=160, shift=(4, 0)).key == "size160_shift4_0"
    h = recipe_hash()
    assert len(h) == 8 and View(aug=3).key == f"aug{h}-v3"
    assert View(size=96, aug=0).key == f"size96_aug{h}-v0"
    assert View(aug=2.0) == View(aug=2) and View(aug=np.int64(2)).aug == 2
    monkeypatch.setitem(hb_images.AUG_RECIPE, "jitter", 0.2)  # another recipe: other entries
    assert recipe_hash() != h and View(aug=3).key != f"aug{h}-v3"


@pytest.mark.parametrize("kwargs", [dict(aug=-1), dict(aug=1.5), dict(aug=True), dict(aug="1"),
                                    dict(aug=0, shift=(4, 0)), dict(aug=0, margin=8)])
def test_bad_augmented_views_are_refused(kwargs):
    with pytest.raises(ValueError, match="aug"):
        View(**kwargs)


# --------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def backbone():
    return create_backbone("resnet18", weights="none", input_size=32)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(N_IMAGES):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 52, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def _views(backbone, images, k, cache_dir, **kwargs):
    digests = [file_digest(p) for p in images]
    return features.extract_views(backbone, images, digests, k, precision="fp32", workers=0,
                                  device="cpu", cache_dir=cache_dir, **kwargs)


def _rows(fs) -> np.ndarray:
    return fs.take(np.arange(len(fs))).astype(np.float32)


def test_views_extract_incrementally_and_the_same_in_any_cache(backbone, images, tmp_path):
    two = _views(backbone, images, 2, tmp_path / "a")
    assert [fs.n_extracted for fs in two] == [N_IMAGES] * 2
    assert [fs.meta["view"] for fs in two] == [View(aug=0).key, View(aug=1).key]
    assert two[0].meta["aug_recipe"] == hb_images.AUG_RECIPE and len({fs.key for fs in two}) == 2
    four = _views(backbone, images, 4, tmp_path / "a")
    assert [fs.n_extracted for fs in four] == [0, 0, N_IMAGES, N_IMAGES]  # only the new views
    assert all(np.array_equal(_rows(a), _rows(b)) for a, b in zip(two, four))
    fresh = _views(backbone, images, 2, tmp_path / "b")  # a view is a function of content
    assert all(np.array_equal(_rows(a), _rows(b)) for a, b in zip(two, fresh))
    centre = features.extract(backbone, images, [file_digest(p) for p in images],
                              precision="fp32", workers=0, device="cpu", cache_dir=tmp_path / "a")
    assert centre.n_extracted == N_IMAGES  # the centre view is an entry of its own
    assert not np.allclose(_rows(two[0]), _rows(centre), atol=1e-3)
    assert not np.allclose(_rows(two[0]), _rows(two[1]), atol=1e-3)
    assert _views(backbone, images, 0, tmp_path / "a") == []


def test_an_extracted_view_is_the_backbone_on_that_images_seeded_crop(backbone, images, tmp_path):
    (fs,) = _views(backbone, images[:3], 1, tmp_path)
    t = AugTransform(backbone.data_config, View(aug=0))
    x = torch.stack([t(load_image(p), file_digest(p)) for p in images[:3]])
    with torch.inference_mode():
        expected = backbone(x).float().numpy()
    np.testing.assert_allclose(_rows(fs), expected, rtol=1e-2, atol=1e-2)


def test_views_can_be_stored_as_pooled_statistics(backbone, images, tmp_path):
    maps = _views(backbone, images, 2, tmp_path)
    pooled = _views(backbone, images, 2, tmp_path, form=("avg",))
    assert [fs.form for fs in pooled] == [("avg",)] * 2 and [fs.n_extracted for fs in pooled] == [
        N_IMAGES] * 2
    for m, p in zip(maps, pooled):
        np.testing.assert_allclose(_rows(p), _rows(m).mean(axis=(2, 3)), rtol=1e-2, atol=1e-3)
    rows = Views([fs.subset(np.arange(N_IMAGES)) for fs in pooled])
    assert rows.form == ("avg",) and rows.shape == (2 * N_IMAGES, *pooled[0].shape)


# --------------------------------------------------------------------------- training

C, K, MAP = 6, 3, 3
CONFIG = TrainConfig(epochs=6, batch_size=8, lr=5e-2, warmup_epochs=1, patience=2, device="cpu")


def _separable(n: int, seed: int, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    X = np.abs(1.5 * np.eye(K, C)[y][:, :, None, None] + noise * rng.standard_normal((n, C, MAP,
                                                                                     MAP)))
    return X.astype(np.float16), y


@pytest.fixture(scope="module")
def split():
    (X0, y), (X_va, y_va) = _separable(40, 1), _separable(15, 2)
    X1 = _separable(40, 1, noise=2.0)[0]  # the same labels, another "view" of each image
    return [X0, X1], y, X_va, y_va


def _makers(names, hidden=None, dropout=None) -> dict:
    return {name: (lambda name=name: create_head(name, C, K, (MAP, MAP), hidden=hidden,
                                                 dropout=dropout)) for name in names}


def _same(a: train.TrainResult, b: train.TrainResult, atol: float = 1e-6) -> None:
    assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], atol=atol, rtol=1e-5)
    assert [h.train_loss for h in a.history] == pytest.approx([h.train_loss for h in b.history],
                                                              rel=1e-5)


def test_views_index_rows_view_by_view(split):
    (X0, X1), *_ = split
    v = Views([X0, X1])
    assert v.shape == (80, C, MAP, MAP) and len(v) == 80 and v.nbytes == X0.nbytes * 2
    np.testing.assert_array_equal(v[np.array([41, 0, 79])], np.stack([X1[1], X0[0], X1[39]]))
    np.testing.assert_array_equal(v[:], np.concatenate([X0, X1]))
    np.testing.assert_array_equal(v[-1], X1[-1])
    with pytest.raises(IndexError):
        v[np.array([80])]
    with pytest.raises(HeadbenchError, match="one shape"):
        Views([X0, X1[:-1]])
    with pytest.raises(HeadbenchError, match="at least one"):
        Views([])


@pytest.mark.parametrize("lazy", [False, True])
def test_one_view_trains_exactly_as_its_features_alone(split, lazy, monkeypatch):
    (X0, _), y, X_va, y_va = split
    if lazy:  # inputs computed per batch from rows read in blocks smaller than the set
        monkeypatch.setattr(inputs, "MEMORY_BYTES", 0)
        monkeypatch.setattr(inputs, "BLOCK_BYTES", 4 * C * MAP * MAP * 16)
    make = _makers(["gap", "flatten"])
    members = [Member(name, 1e-3, s) for name in make for s in (0, 1)]
    on_views = train_members(make, members, Views([X0]), y, X_va, y_va, CONFIG)
    plain = train_members(make, members, X0, y, X_va, y_va, CONFIG)
    for member in members:
        _same(on_views[member], plain[member], atol=0)
    fits = fit_heads(_makers(["gap"]), Views([X0]), y, X_va, y_va, CONFIG, seeds=(0,))
    reference = fit_heads(_makers(["gap"]), X0, y, X_va, y_va, CONFIG, seeds=(0,))
    assert fits["gap"].sweep == reference["gap"].sweep


def test_copies_of_one_view_train_exactly_as_that_view(split):
    """Every gathered row is the right image: K identical views are one view."""
    (X0, _), y, X_va, y_va = split
    make = _makers(["gap"])
    member = Member("gap", 1e-3, 0)
    copies = train_members(make, [member], Views([X0, X0, X0]), y, X_va, y_va, CONFIG)[member]
    _same(copies, train_members(make, [member], X0, y, X_va, y_va, CONFIG)[member], atol=0)


@pytest.mark.parametrize("hidden, dropout, lazy", [(None, None, False), ([5], 0.3, False),
                                                   (None, None, True)])
def test_a_stacked_member_on_views_equals_it_trained_alone(split, hidden, dropout, lazy,
                                                           monkeypatch):
    views, y, X_va, y_va = split
    if lazy:
        monkeypatch.setattr(inputs, "MEMORY_BYTES", 0)
        monkeypatch.setattr(inputs, "BLOCK_BYTES", 4 * C * MAP * MAP * 16)
    make = _makers(["gap", "gem"], hidden, dropout)
    members = [Member(name, wd, s) for name in make for wd, s in ((1e-4, 0), (0.3, 0), (1e-2, 1))]
    together = train_members(make, members, Views(views), y, X_va, y_va, CONFIG)
    for member in members:
        with train.seeded(member.seed):
            head = make[member.head]()
        alone = train_head(head, Views(views), y, X_va, y_va, CONFIG, member.weight_decay,
                           member.seed)
        _same(together[member], alone, atol=1e-5)


def test_each_epoch_shows_every_image_once_in_a_view_drawn_per_epoch(split, monkeypatch):
    views, y, X_va, y_va = split
    n = len(y)
    drawn: list[np.ndarray] = []
    original = protocol.blocks

    def spy(*args, **kwargs):
        blocks = list(original(*args, **kwargs))
        if blocks[0].rows is not None:  # None: plain features, every row in order
            drawn.append(np.sort(np.concatenate([b.rows.cpu().numpy() for b in blocks])))
        yield from blocks
    monkeypatch.setattr(protocol, "blocks", spy)
    config = TrainConfig(epochs=4, batch_size=8, lr=5e-2, patience=None, device="cpu")
    member = Member("gap", 1e-3, 0)
    first = train_members(_makers(["gap"]), [member], Views(views), y, X_va, y_va, config)[member]
    assert len(drawn) == 4
    for rows in drawn:  # one row per image, from view 0 or 1
        assert np.array_equal(np.sort(rows % n), np.arange(n)) and rows.max() < 2 * n
    shown = np.stack([r[np.argsort(r % n)] // n for r in drawn])  # (epoch, image) -> view
    assert set(np.unique(shown)) == {0, 1}  # both views used
    assert len({tuple(s) for s in shown}) == 4  # a different draw each epoch
    epochs_of_first_run = list(drawn)
    second = train_members(_makers(["gap"]), [member], Views(views), y, X_va, y_va,
                           config)[member]
    assert all(np.array_equal(a, b) for a, b in zip(epochs_of_first_run, drawn[4:]))
    _same(first, second, atol=0)  # deterministic
    # the draw changes training: not the same as either view alone
    for X in views:
        alone = train_members(_makers(["gap"]), [member], X, y, X_va, y_va, config)[member]
        assert not torch.equal(alone.state_dict["fc.weight"], first.state_dict["fc.weight"])


def test_views_are_for_training_only_and_take_one_label_per_image(split):
    views, y, X_va, y_va = split
    make, member = _makers(["gap"]), [Member("gap", 1e-3, 0)]
    with pytest.raises(HeadbenchError, match="validation"):
        train_members(make, member, views[0], y, Views([X_va, X_va]), y_va, CONFIG)
    with pytest.raises(HeadbenchError, match="y_train"):
        train_members(make, member, Views(views), np.concatenate([y, y]), X_va, y_va, CONFIG)
