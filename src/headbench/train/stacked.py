"""Head bodies evaluated for M stacked members at once, with plain batched matmuls.

Training many small heads is dominated by per-step overhead, and `torch.func.vmap` over a
module runs its matmuls in a layout whose gradient is slow (3× for a wide Linear here). These
functions run the layers heads are made of — Linear, ReLU, Dropout, BatchNorm1d and the GeM and
attention pools after their `prepare` step — on parameters stacked along a first axis of size M,
each member with its own weights, dropout mask, normalisation statistics and (optionally) own
input rows. `supported(body)` says whether a body is made only of these; `engine.Stack` falls
back to vmap for any other module (a plugin head, dense_map with hidden layers).

Activations are (M, b, F): member, row, feature. An input shared by every member is (b, F).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionPool2d, GeM, _GeMOfLogs, _gem_from_logs

_SIMPLE = (nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d)


def _pool_of(module: nn.Module) -> nn.Module | None:
    """The pool behind a `heads._FromPrepared` (GeM or key-less attention), else None."""
    pool = getattr(module, "pool", None)
    if isinstance(pool, GeM) and isinstance(pool.p, nn.Parameter):
        return pool
    if isinstance(pool, AttentionPool2d) and isinstance(pool.key, nn.Identity):
        return pool
    return None


def supported(body: nn.Module) -> bool:
    """Whether every layer of `body` (a Sequential) has a stacked form here."""
    if not isinstance(body, nn.Sequential) or not len(body):
        return False
    return all(isinstance(m, _SIMPLE) or (i == 0 and _pool_of(m) is not None)
               for i, m in enumerate(body))


def forward(body: nn.Sequential, params: dict[str, torch.Tensor],
            buffers: dict[str, torch.Tensor], x: torch.Tensor, training: bool,
            masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (M, b, K) of the M stacked members on `x`: (M, b, ...) or (b, ...) shared.

    `params` and `buffers` are the body's named tensors stacked on a first axis; in training
    the BatchNorm running statistics in `buffers` are updated in place, and `masks` holds each
    Dropout's scaled mask (M, b, F) by layer name.
    """
    m = next(iter(params.values())).shape[0]
    h = x
    for name, layer in body.named_children():
        p = {k[len(name) + 1:]: v for k, v in params.items() if k.startswith(name + ".")}
        if isinstance(layer, nn.Linear):
            out = torch.matmul(p["weight"], h.transpose(-1, -2))  # (M, out, b): fast gradient
            if "bias" in p:
                out = out + p["bias"].unsqueeze(-1)
            h = out.transpose(-1, -2)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Dropout):
            h = h * masks[name] if training else h
        elif isinstance(layer, nn.BatchNorm1d):
            h = _batch_norm(layer, p, {k[len(name) + 1:]: v for k, v in buffers.items()
                                       if k.startswith(name + ".")}, h, training)
        elif isinstance(_pool_of(layer), GeM):
            h = _gem(p["pool.p"], x, m)
        else:
            h = _attention(_pool_of(layer), p["pool.query"], x)
    return h


def _batch_norm(layer: nn.BatchNorm1d, p: dict, stats: dict, h: torch.Tensor,
                training: bool) -> torch.Tensor:
    """nn.BatchNorm1d per member over its b rows; running statistics as torch keeps them."""
    if training:
        mean, var = h.mean(dim=-2), h.var(dim=-2, unbiased=False)
        with torch.no_grad():
            n = h.shape[-2]
            momentum = layer.momentum
            stats["running_mean"].lerp_(mean.detach(), momentum)
            stats["running_var"].lerp_(var.detach() * n / max(1, n - 1), momentum)
            stats["num_batches_tracked"].add_(1)
    else:
        mean, var = stats["running_mean"], stats["running_var"]
    scale = torch.rsqrt(var + layer.eps)
    if layer.affine:
        scale = scale * p["weight"]
    out = (h - mean.unsqueeze(-2)) * scale.unsqueeze(-2)
    return out + p["bias"].unsqueeze(-2) if layer.affine else out


def _gem(p: torch.Tensor, prepared: torch.Tensor, m: int) -> torch.Tensor:
    """GeM from prepared logs, (M, b, C), with each member's own p (M, 1)."""
    logs, high, low = prepared[..., :-2, :], prepared[..., -2, :], prepared[..., -1, :]
    p = p.view(m, 1, 1)
    if prepared.requires_grad:
        return _gem_from_logs(logs, high, low, p)[0]
    return _GeMOfLogs.apply(logs, high, low, p)[0]


def _attention(pool: AttentionPool2d, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Attention pooling of tokens (b, P, C) or (M, b, P, C) with queries (M, h, d): (M, b, C).
    Batched matmuls over (b, h) (einsum picks far slower plans for these shapes)."""
    heads = tokens.unflatten(-1, (pool.num_heads, pool.head_dim)).transpose(-2, -3)  # b,h,P,d
    scale = 1.0 / math.sqrt(pool.head_dim)
    if tokens.dim() == 3:  # shared: one matmul gives every member's scores
        scores = (heads @ query.permute(1, 2, 0)) * scale          # b, h, P, M
        weights = scores.softmax(dim=-2).permute(0, 1, 3, 2)       # b, h, M, P
        out = (weights @ heads).permute(2, 0, 1, 3)                # M, b, h, d
    else:
        q = query[:, None, :, :, None]                             # M, 1, h, d, 1
        weights = ((heads @ q).squeeze(-1) * scale).softmax(dim=-1)  # M, b, h, P
        out = (weights.unsqueeze(-2) @ heads).squeeze(-2)          # M, b, h, d
    return out.flatten(-2)
