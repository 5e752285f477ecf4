"""Translation analysis: known answers for shift consistency, and the crops it takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headbench.analyses.translation import DIRECTIONS, shift_consistency, shift_views
from headbench.heads import create_head
from headbench.train import seeded


def _circular_backbone(stride: int) -> nn.Module:
    """All-conv net with circular padding: a circular shift by a multiple of its stride shifts
    the feature map circularly, so a GAP head sees exactly the same pooled vector."""
    with seeded(0):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=stride, padding=1, padding_mode="circular"),
            nn.ReLU()).eval()


def _shifted_predictions(backbone: nn.Module, head: nn.Module, images: torch.Tensor,
                         shift: int) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.no_grad():
        ref = head(backbone(images)).argmax(1).numpy()
        shifted = [head(backbone(torch.roll(images, (shift * dy, shift * dx), dims=(2, 3))))
                   .argmax(1).numpy() for dx, dy in DIRECTIONS]
    return ref, shifted


@pytest.mark.parametrize("stride,shift", [(1, 3), (2, 4)])
def test_gap_head_on_circular_conv_net_has_consistency_one(stride, shift):
    backbone = _circular_backbone(stride)
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with seeded(0):
        head = create_head("gap", 16, 5, (16 // stride, 16 // stride)).eval()
    ref, shifted = _shifted_predictions(backbone, head, images, shift)
    assert shift_consistency(ref, shifted) == 1.0


def test_flatten_head_on_circular_conv_net_is_not_shift_consistent():
    backbone = _circular_backbone(1)
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with seeded(0):
        head = create_head("flatten", 16, 5, (16, 16)).eval()
    ref, shifted = _shifted_predictions(backbone, head, images, 3)
    assert shift_consistency(ref, shifted) < 0.9


def test_shift_consistency_counts_agreeing_pairs():
    ref = np.array([0, 1, 2, 3])
    assert shift_consistency(ref, [np.array([0, 1, 2, 0]), np.array([0, 0, 0, 3])]) == 5 / 8


def test_shift_views_move_real_image_content_by_the_shift():
    from headbench.data import make_transform
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
           "interpolation": "bilinear", "crop_pct": 0.875}
    views = shift_views([0, 4, 8])
    assert len(views) == 1 + 2 * len(DIRECTIONS)
    assert {v.margin for v in views.values()} == {8}
    ref = make_transform(cfg, views[(0, None)])(img)
    for (s, d), view in views.items():
        if s == 0:
            continue
        x = make_transform(cfg, view)(img)
        dx, dy = s * d[0], s * d[1]
        # The window moved by (dx, dy): pixel (r, c) of the shifted crop is (r+dy, c+dx) of ref.
        rows, cols = slice(max(0, -dy), 32 - max(0, dy)), slice(max(0, -dx), 32 - max(0, dx))
        rows_ref = slice(rows.start + dy, rows.stop + dy)
        cols_ref = slice(cols.start + dx, cols.stop + dx)
        assert torch.equal(x[:, rows, cols], ref[:, rows_ref, cols_ref])
        assert not torch.equal(x, ref)
