"""A head cut in two for training on cached features: a parameter-free `prepare`, computed once
per image, and the trainable `body` that shares the head's parameters (`training_split`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from headbench.errors import HeadbenchError
from headbench.layers import GeM, GlobalAvgPool2d, PerPosition
from headbench.tokens import PatchGrid


@dataclass
class TrainingSplit:
    """A head cut in two for training on cached features: ``body(prepare(x)) == head(x)``.

    `prepare` has no parameters and no randomness, so training computes it once per image
    rather than once per epoch (a global pool, GeM's moments, attention's tokens); heads with
    the same `key` share it. `body` shares the head's parameters: training it trains the head.
    `stats` names the global statistics `prepare` is a function of (('avg',) for gap), or is
    empty when it needs the whole map; `from_stats` then computes it from a cache of them.
    `prepare_at(x, c)`, where set, is `prepare` taken at another expansion point c (GeM's
    moments, exact only near their point: the stacked engine asks for the point each member's
    p needs, see `train.stacked`).
    """

    prepare: Callable[[torch.Tensor], torch.Tensor]
    key: str
    body: nn.Module
    stats: tuple[str, ...] = ()
    pool: nn.Module | None = None
    prepare_at: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    after: nn.Module | None = None  # what `prepare` does after the pool (a frozen fc_norm)

    def apply(self, x: torch.Tensor, form: tuple[str, ...] | None = None) -> torch.Tensor:
        """`prepare` of feature rows stored as maps (form None) or as the statistics `form`."""
        if form is None:
            return self.prepare(x)
        if not self.stats or not set(self.stats) <= set(form):
            raise HeadbenchError(f"features hold {', '.join(form)} statistics but this head "
                                 f"needs {', '.join(self.stats) or 'the feature maps'}")
        parts = dict(zip(form, x.chunk(len(form), dim=1)))
        pooled = self.pool.from_stats(parts)
        return pooled if self.after is None else self.after(pooled)


class _FromPrepared(nn.Module):
    """The trainable rest of a pool with a `prepare` step (GeM, attention); shares its params."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.pool.from_prepared(prepared)


class FromMoments(nn.Module):
    """The trainable rest of a GeM trained from its moments at expansion point `centre`
    (`GeM.moments`); shares its p."""

    def __init__(self, pool: GeM, centre: float):
        super().__init__()
        self.pool, self.centre = pool, centre

    def forward(self, moments: torch.Tensor) -> torch.Tensor:
        return self.pool.from_moments(moments, self.centre)


# The layers the stacked engine runs itself (`train.stacked`), which GeM trains from moments
# before: a member whose p leaves the moments' window is moved to other moments per step,
# which needs every member's p at hand (not so under vmap, the engine's way for other layers).
_STACKED_LAYERS = (nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d)


def _moments_split(layers: list[nn.Module]) -> TrainingSplit | None:
    """A learnable GeM before stacked layers only, trained from its moments around its p
    (`GeM.moments`); else None."""
    pool = layers[0]
    if not (isinstance(pool, GeM) and isinstance(pool.p, nn.Parameter) and not pool.keepdims
            and all(isinstance(m, _STACKED_LAYERS) for m in layers[1:])):
        return None
    centre = float(pool.p.detach())
    body = nn.Sequential(FromMoments(pool, centre), *layers[1:])
    return TrainingSplit(functools.partial(pool.moments, centre=centre),
                         pool.moments_key(centre), body, prepare_at=pool.moments)


def _fixed(module: nn.Module) -> bool:
    """No parameters, no buffers, no randomness (or a frozen pretrained part, `own_head`): the
    output never changes during training."""
    if getattr(module, "frozen", False):
        return True
    return not (any(True for _ in module.parameters()) or any(True for _ in module.buffers())
                or isinstance(module, nn.modules.dropout._DropoutNd))


def _affine(module: nn.Module) -> bool:
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    return len(layers) == 1 and isinstance(layers[0], nn.Linear)


def training_split(head: nn.Module) -> TrainingSplit:
    """Cut a head (any Sequential) into `prepare` and `body`, the longest exact way.

    - leading layers without parameters (global pools, AvgPool2d, Flatten) go to `prepare`;
    - else a learnable GeM gives its moments to `prepare` (`_moments_split`), and another
      pool with a `prepare` step (GeM, attention) that step;
    - a Dense applied at every position and then averaged is the Dense of the average
      (mean(W·x + b) = W·mean(x) + b: dense_map without hidden layers and dropout).
    """
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if layers and isinstance(layers[0], PatchGrid):  # a map head on a token backbone
        return _on_grid(layers[0], training_split(nn.Sequential(*layers[1:])))
    if (len(layers) == 2 and isinstance(layers[0], PerPosition) and _affine(layers[0].module)
            and isinstance(layers[1], GlobalAvgPool2d) and not layers[1].keepdims):
        prepare = nn.Sequential(layers[1])  # gap's prepare: one shared pooled input
        return TrainingSplit(prepare, repr(prepare), layers[0].module, ("avg",), layers[1])
    n = 0
    while n < len(layers) - 1 and _fixed(layers[n]):
        n += 1
    if n:
        prepare = nn.Sequential(*layers[:n])
        frozen_tail = all(getattr(m, "frozen", False) for m in layers[1:n])
        pool = layers[0] if frozen_tail and getattr(layers[0], "stats", ()) else None
        stats = pool.stats if pool is not None and not pool.keepdims else ()
        after = nn.Sequential(*layers[1:n]) if n > 1 and stats else None
        return TrainingSplit(prepare, repr(prepare), nn.Sequential(*layers[n:]), stats, pool,
                             after=after)
    moments = _moments_split(layers)
    if moments is not None:
        return moments
    if hasattr(layers[0], "from_prepared") and not layers[0].keepdims:
        body = nn.Sequential(_FromPrepared(layers[0]), *layers[1:])
        return TrainingSplit(layers[0].prepare, layers[0].prepare_key, body)
    return TrainingSplit(nn.Identity(), "identity", head)


def _on_grid(grid: PatchGrid, rest: TrainingSplit) -> TrainingSplit:
    """The split of a map head read from tokens: its grid view, then the map head's own split
    (a token row's cached statistics are of its patch tokens, `layers.global_stats`)."""
    at = rest.prepare_at
    return TrainingSplit(lambda x: rest.prepare(grid(x)), f"{grid!r}|{rest.key}", rest.body,
                         rest.stats, rest.pool, None if at is None else
                         (lambda x, c: at(grid(x), c)), rest.after)


__all__ = ["FromMoments", "TrainingSplit", "training_split"]
