"""Stacked attention heads: the fused pool-and-Linear step equals the head's own modules.

`stacked.forward` runs an attention pool and the narrow Linear after it as one matmul over the
tokens (`_attention_linear`); its logits and parameter gradients must be those of
`AttentionPool2d` and `nn.Linear` run per member by torch autograd, on sparse (ReLU-like) and
dense maps, with one or more heads, on one batch for all members or a batch of each member's.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from headbench.splits import training_split
from headbench.layers import AttentionPool2d
from headbench.train import stacked

C, MAP, M, B = 32, 5, 3, 6
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def maps(shape: tuple[int, ...], density: float, device: str) -> torch.Tensor:
    """ReLU6-like feature maps: a fraction `density` of the values nonzero, up to 6."""
    values = 6 * torch.rand(shape, device=device)
    return torch.where(torch.rand(shape, device=device) < density, values, 0.0)


def heads(num_heads: int, layers: list[int], device: str) -> list[nn.Sequential]:
    """M attention heads (pool, then Linear widths `layers` with ReLU between), queries random
    so that the attention is not the uniform average it starts as."""
    out = []
    for _ in range(M):
        pool = AttentionPool2d(C, num_heads)
        nn.init.normal_(pool.query)
        widths, body = [C, *layers], [pool]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            body += [nn.ReLU()] if i else []
            body.append(nn.Linear(n_in, n_out))
        out.append(nn.Sequential(*body).to(device))
    return out


def stacked_logits(members: list[nn.Sequential], x: torch.Tensor, shared: bool,
                   training: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (M, b, K) from `stacked.forward` on the members' prepared maps, and its params."""
    split = training_split(members[0])
    bodies = [training_split(h).body for h in members]
    params, buffers = stack_module_state(bodies)
    rows = x if shared else x.flatten(0, 1)  # per member: (M, b, ...) as the engine gathers it
    tokens = split.prepare(rows) if shared else split.prepare(rows).unflatten(0, x.shape[:2])
    return stacked.forward(split.body, params, buffers, tokens, training, {}), params


def own_logits(members: list[nn.Sequential], x: torch.Tensor, shared: bool) -> torch.Tensor:
    return torch.stack([h(x if shared else x[i]) for i, h in enumerate(members)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-member"])
@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize("density", [0.1, 1.0])
def test_fused_attention_and_linear_equal_the_modules(density, num_heads, shared, device):
    torch.manual_seed(0)
    members = heads(num_heads, [3], device)
    assert stacked._fuses(training_split(members[0]).body)
    x = maps((B, C, MAP, MAP) if shared else (M, B, C, MAP, MAP), density, device)
    logits, params = stacked_logits(members, x, shared, True)
    expected = own_logits(members, x, shared)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    # the gradient of any loss: a random weighting of the logits
    weight = torch.randn_like(expected)
    got = torch.autograd.grad((logits * weight).sum(), list(params.values()))
    (expected * weight).sum().backward()
    for name, grad in zip(params, got):
        i, rest = name.split(".", 1)
        for member, g in zip(members, grad):
            module = member[int(i)]
            own = module.query.grad if rest == "pool.query" else getattr(module, rest).grad
            torch.testing.assert_close(g, own, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-member"])
def test_eval_mode_gives_the_same_logits_without_a_graph(shared, device):
    torch.manual_seed(1)
    members = heads(2, [4], device)
    x = maps((B, C, MAP, MAP) if shared else (M, B, C, MAP, MAP), 0.1, device)
    with torch.no_grad():
        logits, _ = stacked_logits(members, x, shared, False)
        expected = own_logits(members, x, shared)
    assert not logits.requires_grad
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layers, fused", [([stacked.FUSED_OUTPUTS + 1], False), ([6, 3], True)],
                         ids=["wide-linear-pools-first", "hidden-layers-after"])
def test_other_bodies_equal_the_modules(layers, fused):
    """A Linear too wide to fuse pools first; layers after the fused Linear run as usual."""
    torch.manual_seed(2)
    members = heads(2, layers, "cpu")
    assert stacked._fuses(training_split(members[0]).body) == fused
    x = maps((M, B, C, MAP, MAP), 0.1, "cpu")
    logits, params = stacked_logits(members, x, False, True)
    expected = own_logits(members, x, False)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    got = torch.autograd.grad(logits.square().sum(), [params["0.pool.query"]])[0]
    expected.square().sum().backward()
    torch.testing.assert_close(got, torch.stack([h[0].query.grad for h in members]),
                               atol=1e-5, rtol=1e-4)
