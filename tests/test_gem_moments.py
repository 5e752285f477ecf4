"""GeM trained from per-image moments (`gem_moments`): exact to fp32 near the expansion
point, in value and in its gradient in p, and members whose p leaves that window train on
moments taken nearer their p, so training equals a plain loop over the plain formula."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from headbench.errors import HeadbenchError
from headbench.heads import HeadSpec, create_head
from headbench.splits import training_split
from headbench.gem_moments import WINDOW, expansion_point, gem_from_moments, moments_of, series
from headbench.layers import GeM
from headbench.train import Member, TrainConfig, inputs, seeded, stacked, train_members

from reference_training import train_plain

EPS = 1e-6


def plain(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """GeM as its formula."""
    return x.clamp(min=EPS).pow(p).mean((2, 3)).pow(1 / p)


def maps(kind: str, seed: int = 0, shape=(6, 16, 7, 7)) -> torch.Tensor:
    """Post-ReLU-like maps: mostly zeros, dense, or ReLU6 with values up to 6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if kind == "sparse":  # ~85 % zeros, whole channels of zeros among them
        return torch.relu(x - 1.0) * (torch.rand(shape, generator=g) < 0.5)
    if kind == "dense":
        return 6 * torch.rand(shape, generator=g)
    return (3 * x).clamp(0, 6)


def window(p0: float, n: int = 7) -> list[float]:
    """Exponents across the window of `p0` (p0 ± 0.3 at p0 = 3), both ends included."""
    return np.linspace(p0 - WINDOW * abs(p0), p0 + WINDOW * abs(p0), n).tolist()


@pytest.mark.parametrize("kind", ["sparse", "dense", "relu6"])
@pytest.mark.parametrize("p0", [3.0, 1.0, 6.0, -2.0])
def test_moments_give_gem_and_its_p_gradient_to_fp32(kind, p0):
    x = maps(kind)
    moments = moments_of(x, EPS, p0)
    x64 = x.double()
    for value in window(p0):
        p = torch.tensor([value], requires_grad=True)
        out = gem_from_moments(moments, p, torch.tensor([p0]))[0]
        (grad,) = torch.autograd.grad(out.sum(), p)
        p64 = torch.tensor([value], dtype=torch.float64, requires_grad=True)
        ref = plain(x64, p64)
        (ref_grad,) = torch.autograd.grad(ref.sum(), p64)
        # fp32's tolerance: the plain formula in float32 is as far from float64
        torch.testing.assert_close(plain(x, p.detach()).double(), ref, rtol=2e-6, atol=0)
        torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=0)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-6, atol=0)
        # and each element's derivative, from the same pass
        slope = series(moments, p.detach(), torch.tensor([p0]))[1][0]
        ref_slope = torch.func.jacfwd(lambda q: plain(x64, q))(p64.detach())[..., 0]
        torch.testing.assert_close(slope.double(), ref_slope, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("p0", [0.5, 3.0, 10.0])
def test_the_truncated_series_is_below_fp32_rounding_even_on_the_worst_map(p0):
    """One position at the max, the 48 others where the truncation error peaks (in float64,
    to see the truncation alone): 7e-10 relative in the value, 7e-8 in the gradient."""
    for u in np.linspace(0.5, 12, 24):
        x = torch.full((1, 1, 7, 7), math.exp(-u / p0), dtype=torch.float64)
        x[0, 0, 0, 0] = 1.0
        moments = moments_of(x, EPS, p0)
        for value in window(p0, 5):
            p = torch.tensor([value], dtype=torch.float64, requires_grad=True)
            out, slope = series(moments, p.detach(), torch.tensor([p0], dtype=p.dtype))
            ref = plain(x, p)
            (ref_slope,) = torch.autograd.grad(ref.sum(), p)
            assert abs(out.item() / ref.item() - 1) < 2e-9
            assert abs(slope.item() - ref_slope.item()) < 2e-7 * ref.item() / p0


def test_the_expansion_point_is_kept_in_its_window_and_else_the_nearest_grid_point():
    assert expansion_point(3.3, 3.0) == 3.0 and expansion_point(2.7, 3.0) == 3.0
    for p in (3.31, 2.69, 0.4, 7.5, -2.0, 1e-3):
        c = expansion_point(p, 3.0)
        assert c != 3.0 and abs(p - c) <= WINDOW * abs(c) and c * p > 0
        assert expansion_point(p, 3.0) == c  # the same point for the same p, every time
    assert expansion_point(-2.1, -2.0) == -2.0


def test_gem_still_pools_exactly_and_its_moments_match_in_the_window():
    gem = GeM(data_format="channels_last")
    x = maps("relu6").permute(0, 2, 3, 1)  # N, H, W, C
    moments = gem.moments(x, 3.0)
    assert moments.shape == (6, 11, 16)
    torch.testing.assert_close(gem.from_moments(moments, 3.0), gem(x), rtol=2e-6, atol=0)
    with torch.no_grad():
        gem.p.fill_(3.5)
    with pytest.raises(HeadbenchError, match="outside the range"):
        gem.from_moments(moments, 3.0)
    torch.testing.assert_close(gem(x), plain(x.permute(0, 3, 1, 2), gem.p), rtol=2e-6, atol=0)


def test_a_learnable_gem_trains_from_moments_keyed_by_their_point():
    split = training_split(create_head("gem", 16, 3, (7, 7)))
    assert split.key == GeM().moments_key(3.0) != GeM().prepare_key
    assert GeM().moments_key(3.0) != GeM().moments_key(3.6)
    x = maps("sparse")
    torch.testing.assert_close(split.prepare_at(x, 3.6), moments_of(x, EPS, 3.6))
    # a fixed p, or layers the stacked engine does not run, keep the logs (exact for any p)
    fixed = training_split(nn.Sequential(GeM(learnable=False), nn.Linear(16, 3)))
    other = training_split(nn.Sequential(GeM(), nn.LayerNorm(16), nn.Linear(16, 3)))
    assert fixed.key == other.key == GeM().prepare_key and fixed.prepare_at is None


@pytest.mark.parametrize("own_rows", [False, True])
def test_members_outside_the_window_take_moments_at_their_own_point(own_rows):
    gem = GeM()
    split = training_split(nn.Sequential(gem, nn.Linear(16, 3)))
    x = maps("dense", shape=(2, 5, 16, 7, 7)) if own_rows else maps("dense", shape=(5, 16, 7, 7))
    prepared = split.prepare(x.flatten(0, -4)).unflatten(0, x.shape[:-3])
    prepared.recentred = lambda c: split.prepare_at(x.flatten(0, -4), c).unflatten(
        0, x.shape[:-3])
    values = [3.0, 2.2] if own_rows else [3.0, 3.45, 2.2]
    p = torch.tensor(values).view(-1, 1)
    out = stacked._gem(split.body[0], p, prepared, len(values))
    for i, value in enumerate(values):
        rows = x[i] if own_rows else x
        torch.testing.assert_close(out[i], plain(rows, torch.tensor(value)), rtol=2e-6, atol=0)
    del prepared.recentred
    with pytest.raises(HeadbenchError, match="left the window"):
        stacked._gem(split.body[0], p, prepared, len(values))


def test_inputs_held_in_memory_move_to_another_point_while_it_fits(monkeypatch):
    x = maps("relu6", shape=(40, 16, 7, 7))
    split = training_split(nn.Sequential(GeM(), nn.Linear(16, 3)))
    held = inputs.Inputs(inputs.Features(x, torch.device("cpu")), {split.key: split}, {split.key})
    monkeypatch.setattr(inputs, "MEMORY_BYTES", held.memory[split.key].nbytes)  # one point more
    index = torch.tensor([[3, 7, 9], [0, 1, 39]])  # each member's own rows
    batch = held.batch(split.key, index, inputs.Block(40))
    where, chunk = next(held.chunks())
    for centre in (3.6, 2.0, 3.6):
        torch.testing.assert_close(batch.recentred(centre), split.prepare_at(
            x[index.flatten()], centre).unflatten(0, index.shape))
        torch.testing.assert_close(chunk[split.key].recentred(centre),
                                   split.prepare_at(x[where], centre))
    assert list(held.moved) == [(split.key, 3.6)]  # 2.0 did not fit: from the rows per batch


# ----------------------------------------------------------------------------- training

C, K, MAP = 32, 3, 4
# a large lr: p leaves the window of its first moments (3 ± 0.3) far behind (down to 0.5)
CONFIG = TrainConfig(epochs=20, batch_size=16, lr=0.1, warmup_epochs=1, patience=None,
                     device="cpu")


class PlainGeM(nn.Module):
    """GeM as its formula, with the p of the GeM it stands in for."""

    def __init__(self, gem: GeM):
        super().__init__()
        self.p = gem.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return plain(x, self.p)


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 sparse maps (`maps`) whose class lights up one of the first K channels."""
    y = np.random.default_rng(seed).integers(0, K, n)
    x = maps("sparse", seed, (n, C, MAP, MAP))
    x[:, :K] += 1.5 * torch.eye(K)[y][:, :, None, None]
    return x.clamp(0, 6).numpy().astype(np.float16), y


@pytest.fixture(scope="module")
def data(one_thread):
    return (*labelled(80, 1), *labelled(40, 2))


def gem_head():
    return create_head(HeadSpec("gem"), C, K, (MAP, MAP))


@pytest.mark.parametrize("memory", [True, False])
def test_training_from_moments_equals_a_plain_loop_over_the_formula(data, memory, monkeypatch):
    """Held in memory, the moments at a new point are computed once for every row; else per
    batch from the rows read (`inputs.Inputs`)."""
    moved = []
    original = inputs.Inputs._moved

    def spy(self, key, centre, where):
        moved.append(centre)
        return original(self, key, centre, where)
    monkeypatch.setattr(inputs.Inputs, "_moved", spy)
    if not memory:
        monkeypatch.setattr(inputs, "MEMORY_BYTES", 0)
    members = [Member("gem", wd, seed) for wd, seed in ((1e-4, 0), (1e-1, 1))]
    results = train_members({"gem": gem_head}, members, *data, CONFIG)
    best_p = [float(results[m].state_dict["pool.p"]) for m in members]
    assert any(abs(p - 3.0) > 0.3 for p in best_p), best_p  # out of the first window
    assert bool(moved) == memory
    for member in members:
        with seeded(member.seed):
            head = gem_head()
        head.pool = PlainGeM(head.pool)
        ref = train_plain(head, *data, epochs=CONFIG.epochs, batch_size=CONFIG.batch_size,
                          lr=CONFIG.lr[0], warmup_epochs=CONFIG.warmup_epochs,
                          patience=CONFIG.patience, weight_decay=member.weight_decay,
                          seed=member.seed, schedule=CONFIG.schedule,
                          min_delta=CONFIG.min_delta, min_delta_abs=CONFIG.min_delta_abs)
        run = results[member]
        assert (run.epochs_run, run.best_epoch) == (ref.epochs_run, ref.best_epoch)
        assert [log.val_loss for log in run.history] == pytest.approx(ref.val_losses, rel=1e-5)
