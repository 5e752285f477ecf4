"""Token backbones (ViT, DeiT, DINOv2, EVA, ...): how their features are laid out, and the two
ways heads read them.

`forward_features` of a Vision Transformer gives tokens (N, T, C): `prefix` class and register
tokens, then the patch tokens of an h×w grid in row-major order. headbench keeps them as a
(N, C, 1, T) "row" map (`backbones.Backbone`), so the feature cache, the training engine and the
model folders treat both kinds of backbone alike; a `TokenLayout` says where the grid is.

- `PatchGrid` gives the map heads (gap, flatten, attention, ...) the patch tokens as a C×h×w
  map, without the prefix tokens (a view, no copy): "GAP vs Flatten" means the same on a ViT as
  on a CNN.
- `ClassToken` and `LatentAttentionPool` pool the tokens as timm does for its 'token' and 'map'
  global pools (`timm.layers.global_pool_nlc`, `AttentionPoolLatent`); timm's 'avg', the mean
  of the patch tokens, is gap on the grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import HeadbenchError


@dataclass(frozen=True)
class TokenLayout:
    """`prefix` class / register tokens (the class token first, when `class_token`), then the
    patch tokens of a `grid` (h, w)."""

    prefix: int
    grid: tuple[int, int]
    class_token: bool = True

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]



def grid_of(layout: TokenLayout, tokens: int) -> tuple[int, int]:
    """The patch grid of a row of `tokens` tokens: the layout's own, or (another input size)
    the grid of the same aspect ratio holding tokens − prefix patches."""
    n = tokens - layout.prefix
    h, w = layout.grid
    if n == h * w:
        return h, w
    side = math.isqrt(round(n * h / w))
    if side > 0 and n % side == 0 and side * (n // side) == n:
        return side, n // side
    raise HeadbenchError(f"{tokens} tokens with {layout.prefix} prefix tokens are no patch grid "
                         f"of the shape of {h}×{w}")


class PatchGrid(nn.Module):
    """(N, C, 1, T) tokens -> (N, C, h, w) patch tokens (prefix tokens dropped; a view)."""

    def __init__(self, layout: TokenLayout):
        super().__init__()
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = grid_of(self.layout, x.shape[-1])
        return x[:, :, 0, self.layout.prefix:].unflatten(-1, (h, w))

    def extra_repr(self) -> str:
        return f"prefix={self.layout.prefix}, grid={self.layout.grid}"


class ClassToken(nn.Module):
    """(N, C, 1, T) tokens -> (N, C): the class token (the first prefix token), as timm's
    'token' pool takes it; a feature cache of the 'token' statistic stands in for the rows
    (`layers.global_stats`)."""

    stats, keepdims = ("token",), False

    def __init__(self, layout: TokenLayout):
        super().__init__()
        if not layout.class_token or layout.prefix < 1:
            raise HeadbenchError("head 'token' needs a class token; this backbone has none "
                                 "(its prefix tokens, if any, are registers): use avg or map",
                                 param="heads")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return stats["token"]


class LatentAttentionPool(nn.Module):
    """(N, C, 1, T) tokens -> (N, C): timm's `AttentionPoolLatent` (the 'map' pool: a learned
    latent query attends over the patch tokens, then an MLP), on the patch tokens."""

    def __init__(self, channels: int, prefix: int):
        super().__init__()
        from timm.layers import AttentionPoolLatent
        heads = next(h for h in (8, 6, 4, 3, 2, 1) if channels % h == 0)
        self.prefix = prefix
        self.pool = AttentionPoolLatent(channels, num_heads=heads)
        # the attention as plain matmuls: training runs it under vmap, which has no batching
        # rule for the CPU flash kernel (the same numbers)
        self.pool.fused_attn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x[:, :, 0, self.prefix:].transpose(1, 2))


__all__ = ["ClassToken", "LatentAttentionPool", "PatchGrid", "TokenLayout", "grid_of"]
