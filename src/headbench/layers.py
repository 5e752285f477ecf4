"""Keras-semantics pooling layers as PyTorch modules: the building blocks of headbench's heads.

Every layer takes ``data_format='channels_first'`` (PyTorch's NCHW, the default) or
``'channels_last'`` (Keras' NHWC); :func:`to_channels_first` is the one place layouts are handled.

Global pools, (N, C, H, W) -> (N, C) for any H×W (``keepdims=True`` keeps the 1×1 spatial axes):

- ``GlobalAvgPool2d``: mean over positions (Keras ``GlobalAveragePooling2D``).
- ``GlobalMaxPool2d``: max over positions (Keras ``GlobalMaxPooling2D``).
- ``GeM``: generalised mean ``mean(x^p)^(1/p)``; p=1 is average pooling, p→∞ tends to max.
- ``AvgMax``: ``(avg + max) / 2``.
- ``CatAvgMax``: ``[avg, max]`` concatenated, (N, 2C).
- ``AttentionPool2d``: a learned query attends over the H·W positions (softmax-weighted mean).

Fixed-size layers, whose output size depends on the map size:

- ``AvgPool2d``: local average pooling with Keras ``pool_size`` / ``strides`` / ``padding``.
- ``Flatten``: (N, C, H, W) -> (N, C·H·W).

And ``PerPosition``, which applies a module (e.g. a Linear stack) to every spatial position —
Keras' ``Dense`` on a 4-D tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from headbench import errors, gem_moments
from headbench.errors import HeadbenchError

DATA_FORMATS = ("channels_first", "channels_last")


def check_data_format(data_format: str) -> str:
    """Return `data_format` if it is 'channels_first' or 'channels_last', else raise."""
    if data_format not in DATA_FORMATS:
        raise errors.unknown("data_format", data_format, DATA_FORMATS)
    return data_format


def to_channels_first(x: torch.Tensor, data_format: str) -> torch.Tensor:
    """View a 4-D tensor in `data_format` as NCHW (channels_last input is permuted)."""
    if x.dim() != 4:
        raise HeadbenchError(f"expected a 4-D feature map (N, C, H, W), got shape {tuple(x.shape)}")
    if check_data_format(data_format) == "channels_last":
        return x.permute(0, 3, 1, 2)
    return x


def from_channels_first(x: torch.Tensor, data_format: str) -> torch.Tensor:
    """Inverse of :func:`to_channels_first`: give an NCHW tensor back in `data_format`."""
    return x.permute(0, 2, 3, 1) if data_format == "channels_last" else x


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) < 1 for v in pair):
        raise HeadbenchError(f"{name} must be a positive int or a pair of them, got {value!r}",
                             param=name)
    return int(pair[0]), int(pair[1])


def _size_text(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"


# --- global pooling -----------------------------------------------------------------------------

STATS = {"avg": lambda x: x.mean(dim=(2, 3)), "max": lambda x: x.amax(dim=(2, 3))}


def global_stats(x: torch.Tensor, names: tuple[str, ...], prefix: int | None = None
                 ) -> torch.Tensor:
    """The named global statistics of an NCHW map, concatenated: (N, len(names)·C). With
    `prefix`, x is a token backbone's (N, C, 1, T) row: 'token' is its class token
    (`tokens.ClassToken`) and the others are taken over its patch tokens only, as the heads
    on its patch grid see them."""
    if prefix is not None:
        token, x = x[:, :, 0, 0], x[:, :, :, prefix:]
    return torch.cat([token if name == "token" else STATS[name](x) for name in names], dim=1)


class _GlobalPool(nn.Module):
    """Holds `data_format` and `keepdims`; subclasses implement `pool(x)` on NCHW -> (N, C').

    A parameter-free pool names the global statistics its output is a function of in `stats`
    (see `STATS`) and computes it from them in `from_stats`, so a cache of those statistics can
    stand in for the map. A pool with parameters may split off a parameter-free `prepare(x)`,
    computed once per image, and finish in `from_prepared` (GeM, attention)."""

    stats: tuple[str, ...] = ()

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, keepdims: bool = False, data_format: str = "channels_first"):
        super().__init__()
        self.keepdims = keepdims
        self.data_format = check_data_format(data_format)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(to_channels_first(x, self.data_format))
        if not self.keepdims:
            return y
        return y[:, None, None, :] if self.data_format == "channels_last" else y[:, :, None, None]

    def extra_repr(self) -> str:
        parts = ["keepdims=True"] if self.keepdims else []
        if self.data_format != "channels_first":
            parts.append(f"data_format='{self.data_format}'")
        return ", ".join(parts)


class GlobalAvgPool2d(_GlobalPool):
    """Global average pooling (Keras ``GlobalAveragePooling2D``).

    Args:
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C); with keepdims (N, C, 1, 1), or (N, 1, 1, C) for channels_last.

    Example:
        >>> x = torch.arange(1., 10.).reshape(1, 3, 3, 1)
        >>> GlobalAvgPool2d(data_format='channels_last')(x)
        tensor([[5.]])
    """

    stats = ("avg",)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return stats["avg"]


class GlobalMaxPool2d(_GlobalPool):
    """Global max pooling (Keras ``GlobalMaxPooling2D``).

    Args:
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C); with keepdims (N, C, 1, 1), or (N, 1, 1, C) for channels_last.

    Example:
        >>> x = torch.arange(1., 10.).reshape(1, 3, 3, 1)
        >>> GlobalMaxPool2d(data_format='channels_last')(x)
        tensor([[9.]])
    """

    stats = ("max",)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return stats["max"]


class GeM(_GlobalPool):
    """Generalised-mean pooling: ``mean(clamp(x, eps)^p) ^ (1/p)`` over positions.

    p=1 is average pooling; as p grows the result tends to max pooling. Inputs are clamped to
    `eps` because a fractional power of a negative number is undefined (post-ReLU maps are ≥ 0).

    Args:
        p: initial exponent.
        learnable: make p a trained parameter (otherwise a fixed buffer).
        eps: lower clamp of the input.
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C).

    Training on cached features can take the map's moments around an expansion point instead
    of the map (`moments`, `from_moments`): exact to fp32 while p stays near that point, and
    nothing per position left to compute per step. The layer itself always pools exactly.

    Example:
        >>> GeM(p=2.0, learnable=False)(torch.tensor([[[[1., 7.]]]])).round(decimals=4)
        tensor([[5.]])
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6,
                 keepdims: bool = False, data_format: str = "channels_first"):
        super().__init__(keepdims, data_format)
        self.eps = eps
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    @property
    def prepare_key(self) -> str:
        return f"GeM.prepare(eps={self.eps:g}, {self.data_format})"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What does not depend on p, per image: log x at every position and its max and min
        over positions, (N, H·W + 2, C) with the channels contiguous (fast sums over positions)."""
        return self._prepare(to_channels_first(x, self.data_format))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        logs = x.clamp(min=self.eps).log().flatten(2).transpose(1, 2)  # N, HW, C
        return torch.cat([logs, logs.amax(1, keepdim=True), logs.amin(1, keepdim=True)], dim=1)

    def from_prepared(self, prepared: torch.Tensor) -> torch.Tensor:
        logs, high, low = prepared[:, :-2], prepared[:, -2], prepared[:, -1]
        if prepared.requires_grad or not isinstance(self.p, nn.Parameter):
            return _gem_from_logs(logs, high, low, self.p)[0]  # autograd through every op
        return _GeMOfLogs.apply(logs, high, low, self.p)[0]

    def moments_key(self, centre: float) -> str:
        """Names `moments(x, centre)`, as `prepare_key` names `prepare`."""
        return (f"GeM.moments(p0={centre:.9g}, K={gem_moments.ORDER}, eps={self.eps:g}, "
                f"{self.data_format})")

    def moments(self, x: torch.Tensor, centre: float) -> torch.Tensor:
        """What GeM needs of x for any p in the window of the expansion point `centre`, per
        image: the moments M_0..M_K and the anchor (see `gem_moments`), (N, K+2, C). Computed
        in place: no gradient to x (training's cached features)."""
        return gem_moments.moments_of(to_channels_first(x, self.data_format), self.eps, centre)

    def from_moments(self, moments: torch.Tensor, centre: float) -> torch.Tensor:
        """GeM (N, C) from `moments(x, centre)` at this layer's p, which must lie in the window
        of `centre` (the stacked engine moves a member whose p leaves it: `expansion_point`)."""
        p = float(self.p.detach())
        if gem_moments.expansion_point(p, centre) != centre:
            raise HeadbenchError(f"GeM's p = {p:.4g} is outside the range the moments taken at "
                                 f"p = {centre:.4g} are exact in; take them nearer p")
        return gem_moments.gem_from_moments(moments, self.p, torch.full_like(self.p, centre))[0]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_prepared(self._prepare(x))

    def extra_repr(self) -> str:
        learn = isinstance(self.p, nn.Parameter)
        base = f"p={self.p.item():.4g}, learnable={learn}, eps={self.eps:g}"
        rest = super().extra_repr()
        return f"{base}, {rest}" if rest else base


def _gem_from_logs(logs: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
                   p: torch.Tensor, in_place: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GeM from log x (N, HW, C) and its max/min over positions (N, C): (out, E_w[log x], g)
    with g = log mean exp(p·log x) and w ∝ x^p. In the log domain, shifted by max(p·log x):
    x^p itself underflows fp32 for large p (0.12^50 < 1e-45). `in_place` reuses the
    (N, HW, C) temporary (no autograd through it), which saves most of the time."""
    shift = torch.where(p > 0, p * high, p * low)  # p: (1,), or (M, 1, 1) for stacked members
    weights = torch.addcmul(-shift.unsqueeze(-2), logs, p.unsqueeze(-1))
    weights = weights.exp_() if in_place else weights.exp()
    mean = weights.mean(dim=-2)
    g = mean.log() + shift
    weighted = weights.mul_(logs) if in_place else weights * logs
    return (g / p).exp(), weighted.mean(dim=-2) / mean, g


class _GeMOfLogs(torch.autograd.Function):
    """GeM's gradient in p from one pass: d/dp exp(g/p) = out·(E_w[log x]/p − g/p²), so the
    backward keeps two (N, C) tensors instead of every (N, HW, C) intermediate (training on
    cached features, where the input needs no gradient)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logs, high, low, p):
        return _gem_from_logs(logs, high, low, p, in_place=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        out, weighted_logs, g = output
        ctx.mark_non_differentiable(weighted_logs, g)
        ctx.save_for_backward(inputs[3], out, weighted_logs, g)

    @staticmethod
    def backward(ctx, grad_out, _grad_weighted, _grad_g):
        p, out, weighted_logs, g = ctx.saved_tensors
        grad_p = grad_out * out * (weighted_logs / p - g / (p * p))
        return None, None, None, grad_p.sum_to_size(p.shape)


class AvgMax(_GlobalPool):
    """Mean of global average and global max pooling: ``(avg + max) / 2``.

    Args:
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C).

    Example:
        >>> AvgMax()(torch.tensor([[[[1., 3.]]]]))
        tensor([[2.5000]])
    """

    stats = ("avg", "max")

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (stats["avg"] + stats["max"])


class CatAvgMax(_GlobalPool):
    """Global average and global max pooling concatenated: ``[avg, max]`` (fastai, timm).

    Args:
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, 2C): the C averages first, then the C maxima.

    Example:
        >>> CatAvgMax()(torch.tensor([[[[1., 3.]]]]))
        tensor([[2., 3.]])
    """

    stats = ("avg", "max")

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    def from_stats(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([stats["avg"], stats["max"]], dim=1)


class AttentionPool2d(_GlobalPool):
    """Attention pooling: a learned query attends over the H·W positions.

    Each position is a token of C features. Its key is the token itself (or, with `key_proj`, a
    learned C×C linear map of it: with one learned query that map adds C² weights but no
    expressiveness, since q·(Wk + b) = (Wᵀq)·k + const and the constant cancels in the softmax);
    its value is the token itself, so the output stays in feature space.
    With `num_heads` > 1 the channels are split into groups, each with its own query and
    softmax. Per head h with query q_h and head width d = C / num_heads::

        a_h = softmax_over_positions(k_h · q_h / sqrt(d)),   out_h = sum_positions a_h · v_h

    The query starts at zero, so an untrained layer weights all positions equally and equals
    global average pooling; training moves it away only as far as the data asks.

    Args:
        channels: C, the number of input channels.
        num_heads: number of channel groups with separate attention; must divide C.
        key_proj: learn a C×C linear key projection (otherwise keys are the raw features).
        keepdims: keep the spatial axes with length 1.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W) for any H×W, or (N, H, W, C) for channels_last.
    Output shape: (N, C).

    Example:
        >>> pool = AttentionPool2d(8, num_heads=2)
        >>> pool(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 8])
    """

    def __init__(self, channels: int, num_heads: int = 1, key_proj: bool = False,
                 keepdims: bool = False, data_format: str = "channels_first"):
        super().__init__(keepdims, data_format)
        if num_heads < 1 or channels % num_heads:
            raise HeadbenchError(f"num_heads of AttentionPool2d ({num_heads}) must divide the "
                                 f"{channels} channels", param="num_heads")
        self.channels, self.num_heads = channels, num_heads
        self.head_dim = channels // num_heads
        self.key = nn.Linear(channels, channels) if key_proj else nn.Identity()
        self.query = nn.Parameter(torch.zeros(num_heads, self.head_dim))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights over positions, (N, num_heads, H·W), rows summing to 1."""
        tokens = to_channels_first(x, self.data_format).flatten(2).transpose(1, 2)  # N, HW, C
        return self._weights(tokens)

    def _weights(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self._heads(self.key(tokens))  # N, h, HW, d
        scores = (keys @ self.query.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.head_dim)
        return scores.softmax(dim=-1)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, HW, C) -> (N, h, HW, d); matmuls rather than einsum, which vmap (stacked
        training) runs many times slower."""
        return tokens.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    @property
    def prepare_key(self) -> str:
        return f"tokens({self.data_format})"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The positions as tokens, (N, H·W, C), contiguous: attention needs nothing else."""
        return to_channels_first(x, self.data_format).flatten(2).transpose(1, 2).contiguous()

    def from_prepared(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self._weights(tokens).unsqueeze(-2) @ self._heads(tokens)  # N, h, 1, d
        return out.flatten(1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_prepared(x.flatten(2).transpose(1, 2))

    def extra_repr(self) -> str:
        base = f"channels={self.channels}, num_heads={self.num_heads}"
        rest = super().extra_repr()
        return f"{base}, {rest}" if rest else base


# --- fixed-size layers --------------------------------------------------------------------------

class AvgPool2d(nn.Module):
    """Local average pooling with Keras ``AveragePooling2D`` semantics.

    'valid' uses only whole windows: out = floor((in - pool) / stride) + 1. 'same' pads so that
    out = ceil(in / stride), the extra row/column going to the bottom/right as in Keras, and
    averages each window over its real (non-padded) positions only.

    Args:
        pool_size: window size, an int or (height, width).
        strides: step between windows, an int or a pair; None means `pool_size` (Keras).
        padding: 'valid' or 'same'.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C); the output
            keeps the input's layout.

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C, H', W'), or (N, H', W', C) for channels_last.

    Raises:
        HeadbenchError: with padding='valid', when the window is larger than the feature map.

    Example (the 3×3 map 1..9, as in the Keras documentation):
        >>> x = torch.arange(1., 10.).reshape(1, 3, 3, 1)
        >>> AvgPool2d(2, strides=1, data_format='channels_last')(x).shape
        torch.Size([1, 2, 2, 1])
        >>> AvgPool2d(2, strides=3, data_format='channels_last')(x)
        tensor([[[[3.]]]])
        >>> AvgPool2d(3, strides=2, data_format='channels_last')(x)
        tensor([[[[5.]]]])
    """

    def __init__(self, pool_size: int | tuple[int, int], strides: int | tuple[int, int] | None = None,
                 padding: str = "valid", data_format: str = "channels_first"):
        super().__init__()
        if padding not in ("valid", "same"):
            raise errors.unknown("padding", padding, ("valid", "same"))
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        self.padding = padding
        self.data_format = check_data_format(data_format)

    def output_size(self, map_size: tuple[int, int]) -> tuple[int, int]:
        """The (H', W') this layer produces from an H×W map; raises if the window does not fit."""
        h, w = map_size
        if self.padding == "same":
            return math.ceil(h / self.strides[0]), math.ceil(w / self.strides[1])
        if self.pool_size[0] > h or self.pool_size[1] > w:
            raise HeadbenchError(
                f"pool_size {_size_text(self.pool_size)} of AvgPool2d is larger than the {h}×{w} "
                f"feature map; use a smaller pool_size or a global-pooling head", param="pool_size")
        return ((h - self.pool_size[0]) // self.strides[0] + 1,
                (w - self.pool_size[1]) // self.strides[1] + 1)

    def _same_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """F.pad amounts (left, right, top, bottom): TF/Keras put the odd one at the end."""
        pads = []
        for size, pool, stride in ((w, self.pool_size[1], self.strides[1]),
                                   (h, self.pool_size[0], self.strides[0])):
            total = max((math.ceil(size / stride) - 1) * stride + pool - size, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_first(x, self.data_format)
        self.output_size((x.shape[2], x.shape[3]))  # raises a readable error if it cannot fit
        if self.padding == "valid":
            y = F.avg_pool2d(x, self.pool_size, self.strides)
        else:
            pad = self._same_padding(x.shape[2], x.shape[3])
            sums = F.avg_pool2d(F.pad(x, pad), self.pool_size, self.strides)
            ones = F.pad(x.new_ones(1, 1, x.shape[2], x.shape[3]), pad)
            # Share of real positions per window: divide it out to average over those only.
            y = sums / F.avg_pool2d(ones, self.pool_size, self.strides)
        return from_channels_first(y, self.data_format)

    def extra_repr(self) -> str:
        text = (f"pool_size={self.pool_size}, strides={self.strides}, "
                f"padding='{self.padding}'")
        if self.data_format != "channels_first":
            text += f", data_format='{self.data_format}'"
        return text


class Flatten(nn.Module):
    """Flatten a feature map to one vector per image (Keras ``Flatten``).

    The vector follows the input's memory order: C, H, W for channels_first (PyTorch's
    ``torch.flatten``), H, W, C for channels_last (Keras' default layout). Unlike Keras, a
    channels_first input is not reordered to H, W, C first.

    Args:
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C).

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C·H·W).

    Example:
        >>> Flatten()(torch.zeros(2, 2048, 7, 7)).shape
        torch.Size([2, 100352])
    """

    def __init__(self, data_format: str = "channels_first"):
        super().__init__()
        self.data_format = check_data_format(data_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise HeadbenchError(f"Flatten expected a 4-D feature map, got shape {tuple(x.shape)}")
        return x.flatten(1)  # memory order is already the documented order for both layouts

    def extra_repr(self) -> str:
        return "" if self.data_format == "channels_first" else f"data_format='{self.data_format}'"


class PerPosition(nn.Module):
    """Apply `module` to the C-vector at every spatial position (Keras ``Dense`` on a 4-D map).

    Args:
        module: maps (..., C) -> (..., C'), e.g. ``nn.Linear(C, C')`` or a Linear/ReLU stack.
        data_format: 'channels_first' (N, C, H, W) or 'channels_last' (N, H, W, C); the output
            keeps the input's layout.

    Input shape: (N, C, H, W), or (N, H, W, C) for channels_last.
    Output shape: (N, C', H, W), or (N, H, W, C') for channels_last.

    Example:
        >>> PerPosition(nn.Linear(512, 10))(torch.zeros(2, 512, 7, 7)).shape
        torch.Size([2, 10, 7, 7])
    """

    def __init__(self, module: nn.Module, data_format: str = "channels_first"):
        super().__init__()
        self.module = module
        self.data_format = check_data_format(data_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_first(x, self.data_format).permute(0, 2, 3, 1)  # N, H, W, C
        y = self.module(x).permute(0, 3, 1, 2)
        return from_channels_first(y, self.data_format)
