"""A backbone with a head on top, and the accounting users compare heads by.

``build_model`` puts a head from ``heads.py`` on a backbone from ``backbones.py``; with
``freeze=True`` (the default) only the head trains and the backbone's BatchNorm statistics stay
fixed. ``param_table`` lists parameters and FLOPs per head without building real weights.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` at batch 1: a multiply-add is
2 FLOPs, and only matrix products and convolutions are counted (pooling, normalisation and
activations are not), so report ``flops / 2`` when comparing with MAC counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .backbones import Backbone, InputSize, as_hw, create_backbone
from .errors import HeadbenchError
from .heads import DEFAULT_HEADS, Head, HeadSpec, create_head
from .own_head import frozen_params

# Backbone FLOPs depend only on the architecture and the input size: count once per pair.
_BACKBONE_FLOPS: dict[tuple[str, int, int], int] = {}


@dataclass
class ModelSummary:
    """Sizes and cost of a model at its input size (FLOPs at batch 1, a multiply-add = 2)."""
    feature_shape: tuple[int, int, int]
    total_params: int
    trainable_params: int
    backbone_params: int
    head_params: int
    flops: int
    head_flops: int


class HeadbenchModel(nn.Module):
    """A classifier: images (N, 3, H, W) -> backbone feature map (N, C, h, w) -> head -> (N, K).

    Args:
        backbone: the Backbone.
        head: a Head built for the backbone's feature map at `input_size`.
        input_size: S, (H, W) or (3, H, W); default the backbone's data config.
        class_names: K class names, or None.
        freeze: backbone parameters frozen and its BatchNorm kept in eval mode.

    Input shape:
        (N, 3, H, W) images normalised with ``data_config``.

    Output shape:
        (N, K) logits.

    Example:
        >>> model = build_model("resnet18", "gap", num_classes=3, weights="none", input_size=64)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, backbone: Backbone, head: Head, input_size: InputSize | None = None,
                 class_names: Sequence[str] | None = None, freeze: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = head
        hw = as_hw(input_size if input_size is not None else backbone.data_config["input_size"])
        self.data_config = dict(backbone.data_config, input_size=[3, *hw])
        if class_names is not None and len(class_names) != head.num_classes:
            raise HeadbenchError(f"got {len(class_names)} class names for a "
                                 f"{head.num_classes}-class head; pass one name per class")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.frozen = False
        self.freeze(freeze)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def freeze(self, flag: bool = True) -> "HeadbenchModel":
        """Freeze (or unfreeze) the backbone: no gradients, BatchNorm statistics fixed."""
        self.frozen = bool(flag)
        for p in self.backbone.parameters():
            p.requires_grad_(not self.frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "HeadbenchModel":
        super().train(mode)
        if self.frozen:  # a frozen backbone must not update its BatchNorm running statistics
            self.backbone.eval()
        return self

    def summary(self) -> ModelSummary:
        """Parameter counts and FLOPs (batch 1, at the model's input size)."""
        hw = as_hw(self.data_config["input_size"])
        c, h, w = self.backbone.feature_shape(hw)
        param = next(self.head.parameters())
        head_flops = count_flops(self.head, torch.zeros(1, c, h, w, device=param.device,
                                                        dtype=param.dtype))
        backbone_params, head_params = self.backbone.num_params, count_params(self.head)
        total = backbone_params + head_params + frozen_params(self.head)
        return ModelSummary(feature_shape=(c, h, w), total_params=total,
                            trainable_params=count_params(self, trainable_only=True),
                            backbone_params=backbone_params, head_params=head_params,
                            flops=backbone_flops(self.backbone, hw) + head_flops,
                            head_flops=head_flops)


def build_model(backbone: str | Backbone, head: str | HeadSpec, num_classes: int,
                weights: str = "default", input_size: InputSize | None = None,
                hidden: Sequence[int] | None = None, dropout: float | None = None,
                freeze: bool = True, class_names: Sequence[str] | None = None) -> HeadbenchModel:
    """A backbone with a new head for `num_classes` classes.

    Args:
        backbone: a backbone name (see ``backbones.create_backbone``) or a Backbone (then
            `weights` is not used).
        head: a head name from ``heads.list_heads()`` or a HeadSpec.
        num_classes: K.
        weights: 'default', 'embedded', 'hub', 'none' or a local weights file.
        input_size: S, (H, W) or (3, H, W); default the backbone's data config (224 mostly).
            Fixed-size heads (flatten, avgpool) are built for the feature map at this size.
        hidden, dropout: hidden Dense widths and dropout of a head given by name (None: the
            head's defaults); a HeadSpec carries its own.
        freeze: train only the head; the backbone keeps its weights and BatchNorm statistics.
        class_names: K names, kept with the model for predictions.

    Example:
        >>> model = build_model("resnet50", "flatten", 10, weights="none", hidden=[1024])
        >>> model.summary().head_params
        102771722
    """
    if not isinstance(backbone, Backbone):
        backbone = create_backbone(backbone, weights=weights, input_size=input_size)
    c, h, w = backbone.feature_shape(input_size)
    head_module = create_head(head, c, num_classes, (h, w), hidden=hidden, dropout=dropout,
                              tokens=backbone.token_layout(input_size), backbone=backbone)
    param = next(backbone.parameters())
    head_module.to(device=param.device)
    return HeadbenchModel(backbone, head_module, input_size=input_size, class_names=class_names,
                          freeze=freeze)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once), optionally only those requiring grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add = 2; matmuls and convolutions only).

    Runs in eval mode without gradients and restores the module's mode afterwards.
    """
    was_training = module.training
    # parameters counted as constants: torch's module tracker fails on a parameter passed to a
    # submodule as it is (timm's AttentionPoolLatent hands its latent query to a Linear)
    grads = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        with torch.no_grad(), counter:
            module(*inputs)
    finally:
        module.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def backbone_flops(backbone: Backbone, input_size: InputSize | None = None) -> int:
    """FLOPs of the backbone at batch 1 (cached per architecture and input size)."""
    hw = as_hw(input_size if input_size is not None else backbone.data_config["input_size"])
    key = (backbone.timm_name, *hw)
    if key not in _BACKBONE_FLOPS:
        param = next(backbone.parameters())
        x = torch.zeros(1, 3, *hw, device=param.device, dtype=param.dtype)
        _BACKBONE_FLOPS[key] = count_flops(backbone, x)
    return _BACKBONE_FLOPS[key]


def param_table(backbone: str, num_classes: int,
                heads: Sequence[str | HeadSpec] = DEFAULT_HEADS,
                hidden: Sequence[int] | None = None, input_size: InputSize = 224,
                weights: str = "none", dropout: float | None = None) -> list[dict[str, Any]]:
    """Parameters and FLOPs of each head on `backbone` at `input_size`, one row per head.

    Counts are exact and cheap: the models are built on the meta device (shapes, no weights),
    so `weights` does not change them and is accepted for symmetry with ``build_model``.
    Fixed-size heads are built for the feature map at `input_size`. Rows hold 'head' (label),
    'feature_map' ('2048×7×7'), 'head_params', 'total_params' and 'head_flops' (batch 1).

    Example:
        >>> rows = param_table("resnet50", 10, heads=["gap"], hidden=[1024])
        >>> rows[0]["feature_map"], rows[0]["head_params"]
        ('2048×7×7', 2108426)
    """
    del weights  # parameter counts and FLOPs do not depend on the weights' values
    with torch.device("meta"):
        bb = create_backbone(backbone, weights="none", input_size=input_size)
    c, h, w = bb.feature_shape()
    base = bb.num_params
    rows = []
    for spec in heads:
        with torch.device("meta"):
            head = create_head(spec, c, num_classes, (h, w), hidden=hidden, dropout=dropout,
                               backbone=bb)
        n = count_params(head)
        rows.append({"head": head.spec.label, "feature_map": f"{c}×{h}×{w}", "head_params": n,
                     "total_params": base + n + frozen_params(head),
                     "head_flops": count_flops(head, torch.zeros(1, c, h, w, device="meta"))})
    return rows
