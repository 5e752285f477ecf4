"""GeM from per-image moments: training's form of `layers.GeM`, with nothing per position left.

Per image and channel, with D = log x − anchor at each position (the anchor: the max of log x
over positions for p > 0, the min for p < 0, so that exp(c·D) ≤ 1 never overflows nor, at the
anchor, underflows) and δ = p − c for an expansion point c:

    mean x^p = exp(p·anchor) · mean exp(c·D)·exp(δ·D) = exp(p·anchor) · Σ_k δ^k/k! · M_k,

M_k = mean exp(c·D)·D^k, k = 0..K, and GeM = exp(anchor + log(S)/p) with S the sum. What the sum
leaves out at one position is about exp(c·D)·(δ·D)^(K+1)/(K+1)!, largest at |D| = (K+1)/|c|: it
depends on δ/c only. The worst 7×7 map (one position at the anchor, the 48 others where that
error peaks), at K = 9 and |δ| ≤ 0.1·|c|, is off by 7e-10 relative in the value and 7e-8 in its
p-gradient (a series one term shorter), below fp32's rounding; zeros (clamped to eps) sit at
D ≈ log(eps) − anchor, where exp(c·D) leaves nothing. That worst case grows with the number of
positions (16× at 28×28); real maps are far from it (tests/test_gem_moments.py).

For M members, S and dS/dp are one matmul of the (2M, K+1) coefficients with the moments.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ORDER = 9  # K
WINDOW = 0.1  # the moments at c serve |p − c| ≤ WINDOW·|c|
# Outside the window of its first expansion point, a p takes the nearest point ±GRID^j: at
# most sqrt(1.2) − 1 = 9.5% away (in the window), and always the same point for the same p.
GRID = 1.2


def expansion_point(p: float, base: float) -> float:
    """The point GeM's moments for exponent p are taken at: `base` while p is in its window,
    else the point ±GRID^j nearest p (on p's side of 0)."""
    if abs(p - base) <= WINDOW * abs(base):
        return base
    j = round(math.log(max(abs(p), 1e-30)) / math.log(GRID))
    return math.copysign(GRID ** j, p)


def moments_of(x: torch.Tensor, eps: float, centre: float) -> torch.Tensor:
    """An NCHW map's moments at expansion point `centre`, (N, K+2, C): M_0..M_K, then the
    anchor. A few images at a time, so that the ~25 passes over their temporaries stay in the
    CPU's cache (4× faster than over a whole chunk of images)."""
    rows = max(1, 2**17 // max(1, x[:1].numel()))
    return torch.cat([_block_moments(part, eps, centre) for part in x.split(rows)])


def _block_moments(x: torch.Tensor, eps: float, centre: float) -> torch.Tensor:
    """`moments_of` a few images, over positions laid out last (contiguous sums), in place."""
    logs = x.clamp(min=eps).log().flatten(2)                           # N, C, HW
    anchor = logs.amax(-1) if centre > 0 else logs.amin(-1)
    dev = logs.sub_(anchor.unsqueeze(-1))                              # D
    term = torch.mul(dev, centre).exp_()
    rows = [term.mean(-1)]
    for _ in range(ORDER):
        rows.append(term.mul_(dev).mean(-1))
    return torch.stack([*rows, anchor], dim=1)


def series(moments: torch.Tensor, p: torch.Tensor, centre: torch.Tensor,
           in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """GeM and its derivative in p, each (M, b, C), from moments (b, K+2, C) shared by the M
    members or (M, b, K+2, C) their own, at exponents `p` and expansion points `centre` (M
    values each). S and dS/dp = Σ δ^(k−1)/(k−1)!·M_k come from one matmul with the moments.
    `in_place` reuses the temporaries (no autograd through them)."""
    delta = (p - centre).reshape(-1, 1)
    k = torch.arange(ORDER + 1, dtype=p.dtype, device=p.device)
    coeff = delta.pow(k) / torch.cumprod(k.clamp(min=1), 0)           # δ^k / k!
    coeffs = torch.cat([coeff, F.pad(coeff[:, :-1], (1, 0))])          # 2M, K+1: S, dS/dp
    terms, anchor = moments[..., :-1, :], moments[..., -1, :]
    if moments.dim() == 3:
        both = torch.matmul(coeffs, terms).unflatten(1, (2, -1)).permute(1, 2, 0, 3)
    else:
        both = torch.matmul(coeffs.unflatten(0, (2, -1)).transpose(0, 1).unsqueeze(1), terms)
        both = both.permute(2, 0, 1, 3)                                 # 2, M, b, C
    s, ds = both.unbind(0)
    inv_p = p.reshape(-1, 1, 1).reciprocal()  # multiplies: a third of a division's time here
    ratio = ds / s
    g = s.log_().mul_(inv_p) if in_place else s.log() * inv_p          # log mean exp(p·D) / p
    out = (g + anchor).exp_()
    slope = ratio.sub_(g).mul_(out) if in_place else (ratio - g) * out
    return out, slope.mul_(inv_p) if in_place else slope * inv_p


class _GeMOfMoments(torch.autograd.Function):
    """`series` with its gradient in p from the forward pass: backward keeps one (M, b, C)
    tensor (training on cached features, where the moments need no gradient)."""

    @staticmethod
    def forward(moments, p, centre):
        return series(moments, p, centre, in_place=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.p_shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad_out, _grad_slope):
        (slope,) = ctx.saved_tensors
        return None, (grad_out * slope).sum(dim=(-2, -1)).view(ctx.p_shape), None


def gem_from_moments(moments: torch.Tensor, p: torch.Tensor,
                     centre: torch.Tensor) -> torch.Tensor:
    """GeM (M, b, C) from moments (`series`); autograd through every op when the moments
    themselves need a gradient."""
    if moments.requires_grad:
        return series(moments, p, centre)[0]
    return _GeMOfMoments.apply(moments, p, centre)[0]
