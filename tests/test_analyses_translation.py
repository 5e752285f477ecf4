"""Translation analysis: known answers for shift consistency (the curve and Zhang's), and the
crops it takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headbench.analyses.context import RunContext
from headbench.analyses.translation import (DIRECTIONS, ZHANG_OFFSETS, ZHANG_PAIRS,
                                            pair_agreement, shift_consistency, shift_views,
                                            translation_analysis, zhang_offsets, zhang_pairs)
from headbench.config import CompareConfig
from headbench.heads import create_head
from headbench.results import BackboneInfo, DatasetInfo, HeadResult, SplitItems
from headbench.run import Run
from headbench.train import TrainConfig, seeded

from builders import placeholder_head


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
    from headbench.images import make_transform
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


# --------------------------------------------------------------------------------------------
# Zhang 2019: two random shifts of one image, agreement of the top-1 classes

def test_zhang_offsets_are_distinct_and_within_the_margin():
    offsets = zhang_offsets(8)
    assert len(offsets) == ZHANG_OFFSETS == len(set(offsets))
    assert all(abs(dx) <= 8 and abs(dy) <= 8 for dx, dy in offsets)
    assert zhang_offsets(8) == offsets  # seeded
    assert len(zhang_offsets(1)) == 9  # every position when there are fewer
    with pytest.raises(ValueError, match="margin"):
        zhang_offsets(0)


def test_zhang_pairs_take_two_distinct_offsets_per_pair():
    first, second = zhang_pairs(500, 16)
    assert first.shape == second.shape == (500, ZHANG_PAIRS)
    assert (first != second).all()
    assert {int(i) for i in np.concatenate([first.ravel(), second.ravel()])} == set(range(16))


def test_pair_agreement_counts_each_images_agreeing_pairs():
    top1 = np.array([[0, 1, 2], [0, 1, 0], [0, 2, 0]])  # offsets × images
    first = np.array([[0, 1], [0, 1], [0, 0]])  # images × pairs
    second = np.array([[1, 2], [1, 2], [1, 2]])
    # image 0 agrees everywhere; image 1: 1 vs 1 agrees, 1 vs 2 not; image 2: 2 vs 0 twice
    assert pair_agreement(top1, first, second).tolist() == [1.0, 0.5, 0.0]


C, MAP, CLASSES, N_TEST, SEEDS = 8, 6, 3, 40, [0, 1]


class _RolledContext(RunContext):
    """Every view is the base feature map rolled circularly by the view's shift: a GAP head's
    predictions are shift-invariant by construction, a flatten head's are not."""

    def view_features(self, role, view=None):
        self.views_seen.append(view)
        dx, dy = view.shift if view is not None else (0, 0)
        return np.roll(self.features[role], (dy, dx), axis=(2, 3))


def _head_result(label: str) -> HeadResult:
    return placeholder_head(label, SEEDS, N_TEST)


@pytest.fixture(scope="module")
def rolled() -> _RolledContext:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, N_TEST)
    test = SplitItems([f"{i}.png" for i in range(N_TEST)], labels, ["0"] * N_TEST)
    empty = SplitItems([], np.zeros(0, dtype=np.int64), [])
    dataset = DatasetInfo(root="/nonexistent", name="x", layout="class folders",
                          classes=[f"c{i}" for i in range(CLASSES)], split_description="",
                          counts={}, leakage=[], skipped=[],
                          splits={"train": empty, "val": empty, "test": test})
    backbone = BackboneInfo("resnet18", "resnet18", "none", None, {}, [C, MAP, MAP], 0, 0, 0.0,
                            0.0)
    run = Run(options=CompareConfig("x"), dataset=dataset, backbone=backbone, precision="fp32",
              device="cpu", train_config=TrainConfig(), machine={},
              heads=[_head_result("gap"), _head_result("flatten")], best_head="gap")
    states = {}
    for label in ("gap", "flatten"):
        states[label] = {}
        for seed in SEEDS:
            with seeded(seed):
                states[label][seed] = create_head(label, C, CLASSES, (MAP, MAP)).state_dict()
    X = rng.standard_normal((N_TEST, C, MAP, MAP)).astype(np.float32)
    ctx = _RolledContext(run=run, backbone=None, states=states, features={"test": X},
                         device=torch.device("cpu"))
    ctx.views_seen = []
    return ctx


def test_zhang_consistency_of_a_shift_invariant_head_is_one(rolled):
    out = translation_analysis(rolled, [0, 2, 3])
    gap, flatten = out["heads"]["gap"], out["heads"]["flatten"]
    assert gap["zhang_consistency"]["mean"] == 1.0 and gap["zhang_consistency"]["values"] == [1, 1]
    assert gap["per_image"]["zhang_consistency"] == [1.0] * N_TEST
    assert all(gap["consistency"][s]["mean"] == 1.0 for s in ("0", "2", "3"))
    assert flatten["zhang_consistency"]["mean"] < 0.9
    # per image: averaged over seeds and pairs, so their mean is the seeds' mean
    assert np.mean(flatten["per_image"]["zhang_consistency"]) == pytest.approx(
        flatten["zhang_consistency"]["mean"], abs=1e-4)
    assert set(flatten["per_image"]["consistency"]) == {"2", "3"}
    assert len(flatten["per_image"]["consistency"]["3"]) == N_TEST
    assert np.mean(flatten["per_image"]["consistency"]["3"]) == pytest.approx(
        flatten["consistency"]["3"]["mean"], abs=1e-4)


def test_zhang_fields_of_the_shifts_section(rolled):
    rolled.views_seen.clear()
    out = translation_analysis(rolled, [0, 3])
    assert out["margin"] == 3 and out["zhang_pairs_per_image"] == ZHANG_PAIRS
    offsets = [tuple(o) for o in out["zhang_offsets"]]
    assert offsets == zhang_offsets(3)
    definition = out["zhang_consistency_definition"]
    assert "Zhang 2019" in definition and f"{ZHANG_PAIRS} pairs per image" in definition
    assert f"out of {ZHANG_OFFSETS}" in definition and "[-3, 3]" in definition
    # every crop comes from the same resize (margin 3), each computed once
    assert {v.margin for v in rolled.views_seen} == {3}
    assert len(rolled.views_seen) == len(set(rolled.views_seen)) <= 1 + 4 + ZHANG_OFFSETS
    assert set(out["heads"]["gap"]) == {"accuracy", "consistency", "zhang_consistency",
                                        "per_image"}


def test_without_a_margin_there_is_no_zhang_consistency(rolled):
    out = translation_analysis(rolled, [0])
    assert "zhang_consistency_definition" not in out
    assert "zhang_consistency" not in out["heads"]["gap"]
    assert out["heads"]["gap"]["per_image"] == {"consistency": {}}


def test_report_shows_the_zhang_consistency_with_its_definition(rolled):
    from headbench.report.page import render
    from headbench.report.plots import all_plots
    out = translation_analysis(rolled, [0, 2])
    rolled.run.analyses = {"shifts": out}
    try:
        page = render(rolled.run, all_plots(rolled.run))
    finally:
        rolled.run.analyses = {}
    line = page.split('<p id="zhang-consistency">')[1].split("</p>")[0]
    # the reported figure stands next to the consistency curve
    assert page.index('id="shift-consistency"') < page.index('id="zhang-consistency"')
    assert line.startswith("Zhang 2019 consistency: fraction of pairs")
    assert "By head: gap 100.0" in line and "flatten " in line
