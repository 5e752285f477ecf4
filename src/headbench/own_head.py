"""The backbone's own head: the pretrained layers some timm models carry between their features
and their classifier (mobilenetv3's conv_head 960→1280, ConvNeXt's head norm, a ViT's fc_norm
or its attention pool), frozen.

- The `timm` head is this part (timm's `forward_head(pre_logits=True)`) and a Dense that alone
  trains: the backbone's own head as a baseline for the others.
- The token heads (token, avg, map) end with the backbone's `fc_norm` where it has one, as timm
  pools tokens (`pool` then `fc_norm`).

A frozen part keeps its pretrained values as buffers, not parameters: training sees a layer
without parameters, computes it once per image like a global pool (`splits.training_split`),
never changes it, and the model folder saves it with the head. Its parameters count in
`total_params` (`frozen_params`), never in `head_params`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import GlobalAvgPool2d
from .tokens import ClassToken, PatchGrid


class Frozen(nn.Module):
    """A copy of `module` with its parameters as buffers, always in eval mode (its norms keep
    their statistics, its dropout is off). `params` is how many parameters it had."""

    frozen = True  # a fixed layer for training (`splits.training_split`)

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).eval()
        self.params = 0
        for sub in self.module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    del sub._parameters[name]
                    sub.register_buffer(name, p.detach().clone())
                    self.params += p.numel()

    def train(self, mode: bool = True) -> "Frozen":
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class OwnHead(Frozen):
    """timm's `forward_head(pre_logits=True)` of a model, frozen: (N, C, H, W) maps, or tokens as
    a (N, C, 1, T) row, to pre-logit features (N, F)."""

    def __init__(self, model: nn.Module, tokens: bool):
        super().__init__(model)
        self.tokens = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            x = x[:, :, 0].transpose(1, 2)  # (N, T, C), as forward_features gives them
        return self.module.forward_head(x, pre_logits=True)


def head_only_params(backbone) -> int:
    """Parameters of the backbone's model that only its own head reads (not its features)."""
    return _own_head(backbone).params


def _own_head(backbone) -> OwnHead:
    """The backbone's own head, pruned once per backbone (kept on it, not as a submodule);
    `is_mean` says whether it is only the mean over a CNN's map (EfficientNet's: pool, flatten)."""
    own = backbone.__dict__.get("_own_head")
    if own is None:
        tokens = backbone.token_layout() is not None
        own = OwnHead(_pruned(backbone.model, _probe(backbone), tokens), tokens)
        own.is_mean = (not tokens and own.params == 0 and not any(True for _ in own.buffers())
                       and _probe(backbone).device.type != "meta" and _is_mean(own, backbone))
        object.__setattr__(backbone, "_own_head", own)
    return own


def frozen_params(module: nn.Module) -> int:
    """Parameters of the frozen parts inside `module` (counted once each)."""
    return sum(m.params for m in module.modules() if isinstance(m, Frozen))


def fc_norm(backbone) -> Frozen | None:
    """A token backbone's `fc_norm` (the norm timm applies after pooling tokens), frozen; None
    where it has none (most ViTs normalise every token in `forward_features` instead)."""
    norm = getattr(backbone.model, "fc_norm", None)
    if norm is None or isinstance(norm, nn.Identity):
        return None
    return Frozen(norm)


def own_layers(backbone) -> list[tuple[str, nn.Module]]:
    """The backbone's own head up to its pre-logits as head layers: where it is one of
    headbench's pools (a plain global average; a ViT's class token or patch mean, with its
    fc_norm) those layers, so that the timm head is that head and trains once with it; else
    the frozen pretrained part (`OwnHead`)."""
    model, layout = backbone.model, backbone.token_layout()
    if layout is not None and getattr(model, "attn_pool", 1) is None:
        pool = getattr(model, "global_pool", None)
        norm = fc_norm(backbone)
        tail = [("norm", norm)] if norm is not None else []
        if pool == "token" and layout.class_token:
            return [("pool", ClassToken(layout)), *tail]
        if pool == "avg" and not getattr(model, "pool_include_prefix", False):
            return [("grid", PatchGrid(layout)), ("pool", GlobalAvgPool2d()), *tail]
    own = _own_head(backbone)
    return [("pool", GlobalAvgPool2d() if own.is_mean else copy.deepcopy(own))]


def _probe(backbone) -> torch.Tensor:
    c, h, w = backbone.feature_shape()
    device = next(backbone.model.parameters()).device  # meta where only counted
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)).to(device)


def _is_mean(own: OwnHead, backbone) -> bool:
    """Whether the own head is the mean over the map (EfficientNet's: pool, flatten)."""
    x = _probe(backbone)
    with torch.no_grad():
        out = own(x)
    return out.shape == (x.shape[0], x.shape[1]) and torch.allclose(out, x.mean((2, 3)),
                                                                     atol=1e-6)


def _pruned(model: nn.Module, probe: torch.Tensor, tokens: bool) -> nn.Module:
    """A copy of what `forward_head` uses of `model`: the modules it calls and the parameters it
    reads. The rest (the features' layers, position embeddings) becomes Identity or None
    without being copied."""
    called: set[nn.Module] = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: called.add(m)) for m in model.modules()]
    params, training = list(model.parameters()), model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = model.forward_head(probe[:, :, 0].transpose(1, 2) if tokens else probe,
                                     pre_logits=True)
            grads = (torch.autograd.grad(out.float().sum(), params, allow_unused=True)
                     if out.requires_grad else [None] * len(params))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    read = {id(p) for p, g in zip(params, grads) if g is not None}
    memo: dict[int, object] = {}  # deepcopy takes these as the copies of what they stand for
    _left_out(model, called, read, memo)
    return copy.deepcopy(model, memo).eval()


def _left_out(module: nn.Module, called: set[nn.Module], read: set[int], memo: dict) -> None:
    """Below `module` (not called itself): uncalled subtrees as Identity, unread parameters and
    its buffers as None, in `memo`; called modules are kept whole."""
    for p in module._parameters.values():
        if p is not None and id(p) not in read:
            memo[id(p)] = None
    for b in module._buffers.values():
        if b is not None:
            memo[id(b)] = None
    for child in module.children():
        if child in called:
            continue
        if any(m in called for m in child.modules()):
            _left_out(child, called, read, memo)
        else:
            memo[id(child)] = nn.Identity()
