"""The stacked engine's AdamW, BatchNorm and dropout masks against torch's own modules."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from headbench.train import Member, engine, stacked

F_IN, HIDDEN, K, B = 12, 7, 3, 10
DECAYS = (1e-3, 0.3, 0.05)  # one member each, seeds 0, 1, 2


def body(f_in: int = F_IN, hidden: int = HIDDEN, k: int = K) -> nn.Sequential:
    """fastai's body without dropout: BatchNorm, a matrix and vectors to decay or not."""
    return nn.Sequential(nn.BatchNorm1d(f_in), nn.Linear(f_in, hidden), nn.ReLU(),
                         nn.BatchNorm1d(hidden), nn.Linear(hidden, k))


def stack_of(heads: list[nn.Module], decays=DECAYS, peaks=(None,) * 3) -> engine.Stack:
    members = [Member("body", wd, seed, peak) for seed, (wd, peak) in enumerate(zip(decays, peaks))]
    split = engine.split_of(heads[0])
    probe = torch.randn(2, next(heads[0].parameters()).shape[-1])
    return engine.Stack("body", members, heads, split, probe, torch.device("cpu"))


def reference(head: nn.Module, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """0.1's optimizer: torch.optim.AdamW decaying matrices only."""
    params = list(head.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1],
                               "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim <= 1],
                               "weight_decay": 0.0}], lr=1.0, fused=fused)


def reference_step(head: nn.Module, optimizer: torch.optim.AdamW, x: torch.Tensor,
                   y: torch.Tensor, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    nn.functional.cross_entropy(head(x), y).backward()
    optimizer.step()


def largest_difference(stack: engine.Stack, heads: dict[int, nn.Module]) -> float:
    """The largest difference of a stacked member's parameters and buffers from its head's,
    relative to the tensor's scale."""
    worst = 0.0
    for i, head in heads.items():
        for name, t in {**dict(head.named_parameters()), **dict(head.named_buffers())}.items():
            mine = {**stack.params, **stack.buffers}[name][i].detach()
            assert mine.dtype == t.dtype and mine.shape == t.shape
            scale = max(t.abs().max().item(), 1e-12)
            worst = max(worst, (mine - t.detach()).abs().max().item() / scale)
    return worst


def lrs(steps: int) -> list[float]:
    """A warm-up and a cosine, as the engine's schedule."""
    return [0.05 * min(1.0, (i + 1) / 3) * (1 + math.cos(math.pi * i / steps)) / 2
            for i in range(steps)]


def members(*widths: int, decays=DECAYS, peaks=(None,) * 3
            ) -> tuple[dict[int, nn.Module], engine.Stack]:
    """Three heads (seeds 0, 1, 2): a copy of each to train alone, and their stack."""
    heads = []
    for seed in range(len(DECAYS)):
        torch.manual_seed(seed)
        heads.append(body(*widths))
    return {i: copy.deepcopy(h) for i, h in enumerate(heads)}, stack_of(heads, decays, peaks)


def gradients(stack: engine.Stack, draws: torch.Generator) -> list[torch.Tensor]:
    """Random gradients for the stacked parameters, each member's at a scale from 1e-6 to 1
    (the small ones make updates where AdamW's eps counts)."""
    out = []
    for p in stack.params.values():
        scale = 10.0 ** torch.randint(-6, 1, (len(p),), generator=draws)
        out.append(torch.randn(p.shape, generator=draws) * scale.view(-1, *[1] * (p.ndim - 1)))
    return out


# each member's own decay at one peak lr; or a peak lr each (the sweep), two sharing one,
# at one decay (decayed inside the fused kernel)
SETTINGS = {"decays": (DECAYS, (1.0, 1.0, 1.0)), "lrs": ((0.01,) * 3, (1.0, 1.0, 3.0)),
            "both": ((1e-3, 0.3, 0.3), (1.0, 3.0, 3.0))}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("widths", [(16, 32, 16), (F_IN, HIDDEN, K)])
@pytest.mark.parametrize("setting", SETTINGS)
def test_the_stacked_adamw_is_torchs_adamw_on_each_member_alone(widths, fused, setting):
    """Given the same gradients, step by step through a warm-up and a cosine lr, with member 1
    taken out half way (its moments dropped, the others' kept): each member's parameters are
    those torch.optim.AdamW(weight_decay=its decay) gives its head alone.

    Bit-identical to torch's fused AdamW (the same kernel; the decays, one per member here,
    applied first and rounded as torch rounds its scalar one) where each member's tensors are
    whole 16-float vectors, as in the default heads (2560, 512). Otherwise the kernel computes a
    member's elements in other vector lanes or its scalar tail, and torch's for-loop AdamW
    rounds its bias corrections its own way: measured within 1.1e-7 of the tensors' scale
    (about 1 float32 ulp), 5e-7 asserted."""
    decays, peaks = SETTINGS[setting]
    alone, stack = members(*widths, decays=decays, peaks=peaks)
    optimizers = {i: reference(h, wd, fused) for (i, h), wd in zip(alone.items(), decays)}
    draws = torch.Generator().manual_seed(3)
    for step, lr in enumerate(lrs(12)):
        if step == 6:
            stack.keep([0, 2])
            alone = {0: alone[0], 2: alone[2]}
        grads = gradients(stack, draws)
        stack.optimizer.step(grads, lambda peak: lr * peak)
        for j, (i, head) in enumerate(alone.items()):
            for p, g in zip(head.parameters(), grads):
                p.grad = g[j].clone()
            for group in optimizers[i].param_groups:
                group["lr"] = lr * peaks[i]
            optimizers[i].step()
        worst = largest_difference(stack, dict(enumerate(alone.values())))
        exact = fused and all(p[0].numel() % 16 == 0 for p in stack.params.values())
        assert worst <= (0.0 if exact else 5e-7), f"step {step}: {worst:.3g}"


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("explicit", [True, False])
def test_each_stacked_member_trains_as_its_head_alone_under_torchs_adamw(shared, explicit):
    """The whole step (forward, summed loss, gradients, BatchNorm statistics, AdamW, a member
    taken out half way), with the stacked layers or vmap over the module, on one batch for all
    or one each: every member as its head trained alone by torch.optim.AdamW. The batched
    matmuls and the summed loss round differently from one head's: measured within 1.1e-6 of
    the parameters' scale after 12 steps, 1e-5 asserted."""
    alone, stack = members()
    optimizers = {i: reference(h, wd, True) for (i, h), wd in zip(alone.items(), DECAYS)}
    stack.explicit = explicit  # False: vmap over the module, as for layers stacked.py lacks
    rows = torch.Generator().manual_seed(7)
    for step, lr in enumerate(lrs(12)):
        if step == 6:
            stack.keep([0, 2])
            alone = {0: alone[0], 2: alone[2]}
        n = 1 if shared else len(stack)
        x = torch.randn(n, B, F_IN, generator=rows) * 3 + 1
        y = torch.randint(0, K, (n, B), generator=rows)
        stack.step(x[0] if shared else x, y[0] if shared else y, shared, lambda peak: lr)
        for j, (i, head) in enumerate(alone.items()):
            reference_step(head, optimizers[i], x[0 if shared else j], y[0 if shared else j], lr)
        worst = largest_difference(stack, dict(enumerate(alone.values())))
        assert worst <= 1e-5, f"step {step}: {worst:.3g}"


def stacked_norm(layers: list[nn.BatchNorm1d]) -> tuple[dict, dict]:
    """The members' affine parameters and statistics stacked as `Stack` holds them."""
    params = {k: torch.stack([dict(layer.named_parameters())[k].detach() for layer in layers])
              .requires_grad_() for k, _ in layers[0].named_parameters()}
    stats = {k: torch.stack([dict(layer.named_buffers())[k] for layer in layers])
             for k, _ in layers[0].named_buffers()}
    return params, stats


@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False},
                                     {"track_running_stats": False}])
@pytest.mark.parametrize("layout", ["shared", "per_member", "linear_output"])
def test_the_stacked_batchnorm_is_nn_batchnorm1d_per_member(options, layout):
    """Outputs, gradients, running mean, unbiased running variance and batch count, in training
    (three batches) and then in eval, for each input layout the stacked forward gives."""
    m, f = 3, 6
    torch.manual_seed(0)
    layers = [nn.BatchNorm1d(f, **options) for _ in range(m)]
    for layer in layers:
        if layer.affine:
            nn.init.normal_(layer.weight)
            nn.init.normal_(layer.bias)
    params, stats = stacked_norm(layers)
    for training in (True, True, True, False):
        if layout == "shared":
            h = torch.randn(B, f) * 2 + 1
        elif layout == "per_member":
            h = torch.randn(m, B, f) * 2 + 1
        else:  # a stacked Linear's output: (M, F, b) in memory
            h = (torch.randn(m, f, B) * 2 + 1).transpose(-1, -2)
        h.requires_grad_()
        out = stacked._batch_norm(layers[0], params, stats, h, training)
        weights = torch.randn(m, B, f)
        grads = torch.autograd.grad((out * weights).sum(), [h, *params.values()])
        input_grads = []
        for i, layer in enumerate(layers):
            layer.train(training)
            x = (h if layout == "shared" else h[i]).detach().requires_grad_()
            expected = layer(x)
            torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-6)
            want = torch.autograd.grad((expected * weights[i]).sum(), [x, *layer.parameters()])
            input_grads.append(want[0])
            for got, wanted in zip(grads[1:], want[1:]):
                torch.testing.assert_close(got[i], wanted, rtol=1e-5, atol=1e-6)
            for name, buffer in layer.named_buffers():
                torch.testing.assert_close(stats[name][i], buffer, rtol=1e-6, atol=1e-7)
        # a shared input's gradient sums every member's
        expected_grad = sum(input_grads) if layout == "shared" else torch.stack(input_grads)
        torch.testing.assert_close(grads[0], expected_grad, rtol=1e-5, atol=1e-5)


def test_dropout_masks_are_each_members_own_draws():
    """A stack's masks are, member by member and layer by layer, `dropout_mask` from the
    member's generator (what the plain reference loop draws), which end in the same state."""
    heads = []
    for seed in range(len(DECAYS)):
        torch.manual_seed(seed)
        heads.append(nn.Sequential(nn.Dropout(0.25), nn.Linear(F_IN, 301), nn.ReLU(),
                                   nn.Dropout(0.5), nn.Linear(301, K)))
    stack, twin = stack_of(heads), stack_of(copy.deepcopy(heads))
    for batch in (B, 211):  # 211 × (12 + 301): members drawn in parallel, a last word in part
        masks = stack._masks(batch)
        for i, generator in enumerate(twin.drop_rng):
            for name, (p, shape) in twin.drops.items():
                assert torch.equal(masks[name][i],
                                   engine.dropout_mask((batch, *shape), p, generator))
        for a, b in zip(stack.drop_rng, twin.drop_rng):
            assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_dropout_mask_keeps_one_minus_p_scaled(p):
    """Kept elements are scaled by 1 / (1 - p) and kept at rate 1 - p (to 2^-16), so the
    mask's mean is 1 as torch's Dropout's is; p = 0 keeps all, p = 1 none."""
    mask = engine.dropout_mask((1000, 1000), p, torch.Generator().manual_seed(3))
    kept = mask > 0
    if p == 1.0:
        assert not kept.any()
        return
    torch.testing.assert_close(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)),
                               rtol=1e-4, atol=0)
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / 1e6) + 1e-9
    assert abs(mask.double().mean().item() - 1) < 0.01


def test_dropout_masks_are_uncorrelated_within_a_draw():
    """Neighbouring elements, which share a 64-bit draw, are independent."""
    mask = engine.dropout_mask((4, 250_000), 0.5, torch.Generator().manual_seed(5)) > 0
    a, b = mask[:, 0::2].double(), mask[:, 1::2].double()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 0.01
