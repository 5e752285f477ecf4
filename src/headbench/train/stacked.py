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

from ..errors import HeadbenchError
from ..gem_moments import expansion_point, gem_from_moments
from ..splits import FromMoments
from ..layers import AttentionPool2d, GeM, _GeMOfLogs, _gem_from_logs

_SIMPLE = (nn.Linear, nn.ReLU, nn.Dropout, nn.BatchNorm1d)
# An attention pool and the Linear after it run as one step (`_attention_linear`) when the
# Linear has at most this many outputs: its matmuls grow with heads × (1 + outputs) columns,
# and on one CPU thread (64 rows of 49×1280 tokens; 4 members on them, or 2 with their own)
# it is as fast as pooling first at 8 outputs with one head (2 heads: 1.5-2.7× faster at 8).
FUSED_OUTPUTS = 8


def _pool_of(module: nn.Module) -> nn.Module | None:
    """The pool behind a `splits._FromPrepared` (GeM or key-less attention), else None."""
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


def _fuses(body: nn.Sequential) -> bool:
    """Whether `body` starts with an attention pool and a narrow Linear, run as one step."""
    return (len(body) > 1 and isinstance(_pool_of(body[0]), AttentionPool2d)
            and isinstance(body[1], nn.Linear) and body[1].out_features <= FUSED_OUTPUTS)


def _scope(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of layer `name`, by their names inside it."""
    return {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}


def picks_rows(body: nn.Module) -> bool:
    """Whether `forward` can take `rows`: the body starts with a layer that works row by row
    (a Linear, or an attention pool fused with its Linear)."""
    return supported(body) and (_fuses(body) or isinstance(body[0], nn.Linear))


def forward(body: nn.Sequential, params: dict[str, torch.Tensor],
            buffers: dict[str, torch.Tensor], x: torch.Tensor, training: bool,
            masks: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (M, b, K) of the M stacked members on `x`: (M, b, ...) or (b, ...) shared.

    `params` and `buffers` are the body's named tensors stacked on a first axis; in training
    the BatchNorm running statistics in `buffers` are updated in place, and `masks` holds each
    Dropout's scaled mask (M, b, F) by layer name. With `rows` (M, b) (bodies that
    `picks_rows`), x (N, ...) holds every row, the first layer runs on all of them for every
    member and each member goes on with its own rows of the result: cheaper than gathering
    M·b wide input rows when M·b exceeds N (cross-validation folds on flattened maps or tokens).
    """
    m = next(iter(params.values())).shape[0]
    h, layers = x, list(body.named_children())
    if _fuses(body):
        (pool, _), (linear, _) = layers[:2]
        h = _attention_linear(_pool_of(body[0]), _scope(params, pool)["pool.query"],
                              _scope(params, linear), x)
        layers = layers[2:]
        h = h if rows is None else _pick(h, rows)
    elif rows is not None:
        (name, _), layers = layers[0], layers[1:]
        h = _pick(_linear(_scope(params, name), x), rows)
    for name, layer in layers:
        p = _scope(params, name)
        if isinstance(layer, nn.Linear):
            h = _linear(p, h)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.Dropout):
            h = h * masks[name] if training else h
        elif isinstance(layer, nn.BatchNorm1d):
            h = _batch_norm(layer, p, _scope(buffers, name), h, training)
        elif isinstance(_pool_of(layer), GeM):
            h = _gem(layer, p["pool.p"], x, m)
        else:
            h = _attention(_pool_of(layer), p["pool.query"], x)
    return h


# A stacked Linear with at least this many outputs, on inputs of each member's own, takes its
# gradients as `_WideLinear` computes them (fastai's 2560→512 layer at 10 members of 64 rows:
# 32 → 24 ms a step for the forward and both gradients on two cores).
WIDE_OUTPUTS = 64


class _WideLinear(torch.autograd.Function):
    """h (M, b, in) times each member's weight (M, out, in) transposed: (M, b, out), with the
    input's gradient as g·W and the weight's as gᵀ·h. Autograd's own choice for the same product
    takes the input's gradient as (Wᵀ·gᵀ)ᵀ, which MKL runs 2× slower for wide outputs."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.bmm(weight, h.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h, weight = ctx.saved_tensors
        grad_h = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        return grad_h, grad_weight


def _linear(p: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """A stacked Linear, (M, b, out), of h (M, b, in) or (b, in)."""
    weight = p["weight"]
    if (h.dim() == 3 and weight.shape[1] >= WIDE_OUTPUTS and h.dtype == weight.dtype
            and not torch.is_autocast_enabled(h.device.type)):
        out = _WideLinear.apply(h, weight)
        return out + p["bias"].unsqueeze(1) if "bias" in p else out
    out = torch.matmul(weight, h.transpose(-1, -2))  # (M, out, b): fast gradient
    if "bias" in p:
        out = out + p["bias"].unsqueeze(-1)
    return out.transpose(-1, -2)


def _pick(h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each member's rows of h (M, N, F): (M, b, F) for rows (M, b)."""
    return torch.take_along_dim(h, rows.unsqueeze(-1), dim=1)


def _batch_norm(layer: nn.BatchNorm1d, p: dict, stats: dict, h: torch.Tensor,
                training: bool) -> torch.Tensor:
    """nn.BatchNorm1d per member over its b rows: torch's own batch_norm over every member's
    features side by side (M·F channels), with the stacked running statistics and affine
    parameters viewed flat, so that it updates them in place as the module would."""
    b, f = h.shape[-2:]
    m = max([t.shape[0] for t in (*p.values(), *stats.values())] + [len(h) if h.dim() == 3 else 1])
    if h.dim() == 3 and len(h) == m and h.transpose(-1, -2).is_contiguous():
        # a stacked Linear's output, (M, F, b) in memory: channels of a (1, M·F, b) input, no copy
        x = h.transpose(-1, -2).reshape(1, m * f, b)
        out = _native_batch_norm(layer, p, stats, x, training)
        return out.view(m, f, b).transpose(-1, -2)
    x = h.expand(m, b, f).transpose(0, 1).reshape(b, m * f)  # rows: torch's fastest layout
    return _native_batch_norm(layer, p, stats, x, training).view(b, m, f).transpose(0, 1)


def _native_batch_norm(layer: nn.BatchNorm1d, p: dict, stats: dict, x: torch.Tensor,
                       training: bool) -> torch.Tensor:
    """F.batch_norm as nn.BatchNorm1d calls it (batch statistics in training or when it keeps
    no running ones; momentum None: a cumulative average) on the flattened stacked tensors."""
    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.view(-1)  # a view: in-place updates reach the stack

    momentum, count = layer.momentum, stats.get("num_batches_tracked")
    if training and count is not None:
        count.add_(1)
        if momentum is None:
            momentum = 1.0 / float(count[0])
    return F.batch_norm(x, flat(stats.get("running_mean")), flat(stats.get("running_var")),
                        flat(p.get("weight")), flat(p.get("bias")),
                        training or "running_mean" not in stats, momentum or 0.0, layer.eps)


def _gem(layer: nn.Module, p: torch.Tensor, prepared: torch.Tensor, m: int) -> torch.Tensor:
    """GeM, (M, b, C), with each member's own p (M, 1), from its moments where the split
    trains it from them (`FromMoments`), else from prepared logs.

    The moments are exact while p is in the window of their expansion point: a member whose p
    left it takes the moments at the point `expansion_point` gives (the inputs' `recentred`),
    as exact as the others, so the window never changes what a member learns."""
    if isinstance(layer, FromMoments):
        centres = [expansion_point(v, layer.centre) for v in p.detach().flatten().tolist()]
        if any(c != layer.centre for c in centres):
            prepared = _moved(prepared, centres, layer.centre)
        centre = torch.tensor(centres, dtype=p.dtype, device=p.device).view_as(p)
        return gem_from_moments(prepared, p, centre)
    logs, high, low = prepared[..., :-2, :], prepared[..., -2, :], prepared[..., -1, :]
    p = p.view(m, 1, 1)
    if prepared.requires_grad:
        return _gem_from_logs(logs, high, low, p)[0]
    return _GeMOfLogs.apply(logs, high, low, p)[0]


def _moved(moments: torch.Tensor, centres: list[float], base: float) -> torch.Tensor:
    """Each member's moments (M, b, K+2, C) at its expansion point in `centres`, from moments
    (b, ...) or (M, b, ...) taken at `base`."""
    moved = getattr(moments, "recentred", None)
    if moved is None:
        raise HeadbenchError("GeM's p left the window of its training moments, and these inputs "
                             "cannot be taken at another point (not from train.inputs.Inputs)")
    at = {c: moments if c == base else moved(c) for c in set(centres)}
    return torch.stack([at[c] if moments.dim() == 3 else at[c][i] for i, c in enumerate(centres)])


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


def _attention_linear(pool: AttentionPool2d, query: torch.Tensor, linear: dict[str, torch.Tensor],
                      tokens: torch.Tensor) -> torch.Tensor:
    """Attention pooling then a Linear (`linear`: its stacked weight, bias), (M, b, K), on
    tokens (b, P, C) or (M, b, P, C), from one matmul over the tokens (and one in the gradient).

    Per head, W·(Σ_P a_P x_P) = Σ_P a_P (W x_P): one matmul of the tokens with every member's
    query and Linear rows gives each token's score and logits, and the scores' softmax sums the
    logits. The parameters' gradient is then one matmul with the same tokens: a step reads them
    twice rather than four times (scores, pooling and their gradients), in wider matmuls.
    The tokens stay dense even when mostly zeros (ReLU maps): every step gathers a new batch,
    and making it sparse costs more than both matmuls at any density (one CPU thread, 64 rows of
    49×1280: to_sparse_csr 17-57 ms, even `!= 0` 6 ms, against 3 ms for both matmuls)."""
    rows = _head_rows(query, linear["weight"])                       # M, h, 1+K, C
    m, h, width = rows.shape[:3]
    if tokens.dim() == 3:
        z = _products(rows.flatten(0, 2), tokens.flatten(0, 1))      # M·h·(1+K), b·P
    else:  # a matmul per member: CPU bmm runs these shapes 2-3× slower
        z = torch.stack([_products(r.flatten(0, 1), t.flatten(0, 1))
                         for r, t in zip(rows, tokens)])             # M, h·(1+K), b·P
    z = z.reshape(m, h, width, *tokens.shape[-3:-1])                 # M, h, 1+K, b, P
    weights = (z[:, :, 0] * (1.0 / math.sqrt(pool.head_dim))).softmax(dim=-1)  # M, h, b, P
    out = (weights.unsqueeze(2) * z[:, :, 1:]).sum(dim=(1, 4)).transpose(1, 2)  # M, b, K
    return out + linear["bias"].unsqueeze(1) if "bias" in linear else out


def _products(rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Rows (r, C) times tokens (n, C): (r, n), with the gradient of rows as (grad)·tokens.
    MKL runs rows·tokensᵀ faster up to 6 rows and tokens·rowsᵀ beyond (one thread, 3136 tokens
    of 1280, forward and gradient: 1.5 against 2.3 ms at 3 rows, 3.7 against 2.8 at 12)."""
    if len(rows) <= 6:
        return rows @ tokens.t()
    return (tokens @ rows.t()).t()  # rowsᵀ a view: autograd still takes (grad)·tokens


def _head_rows(query: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each member's query (M, h, d) and Linear rows (M, K, C) per head, zero outside the head's
    channels: (M, h, 1+K, C), so that a token times a row sums over that head's channels."""
    m, h, d = query.shape
    rows = torch.cat([query.unsqueeze(2), weight.unflatten(-1, (h, d)).transpose(1, 2)], dim=2)
    if h == 1:
        return rows
    own = torch.eye(h, dtype=rows.dtype, device=rows.device)[:, None, :, None]  # j, 1, l, 1
    return (rows.unsqueeze(-2) * own).flatten(-2)
