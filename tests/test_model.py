"""Backbone + head models: building, freezing, parameter and FLOP accounting."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from headbench.backbones import create_backbone
from headbench.errors import HeadbenchError
from headbench.heads import HeadSpec
from headbench.model import (backbone_flops, build_model, count_flops,
                             count_params, param_table)

RESNET50_PARAMS = 23_508_032  # timm resnet50 without its classifier


@pytest.fixture(scope="module")
def resnet18_64():
    """A small frozen gap model, 3 classes, 64×64 inputs (2×2 feature map)."""
    return build_model("resnet18", "gap", num_classes=3, weights="none", input_size=64,
                       class_names=["a", "b", "c"])


def test_param_table_resnet50_counts_are_exact():
    rows = {r["head"]: r for r in param_table("resnet50", 10, heads=["gap", "flatten"],
                                              hidden=[1024])}
    gap, flatten = rows["gap[1024]"], rows["flatten[1024]"]
    assert gap["feature_map"] == flatten["feature_map"] == "2048×7×7"
    assert gap["head_params"] == 2048 * 1024 + 1024 + 1024 * 10 + 10 == 2_108_426
    assert flatten["head_params"] == 2048 * 49 * 1024 + 1024 + 1024 * 10 + 10 == 102_771_722
    assert flatten["total_params"] == RESNET50_PARAMS + 102_771_722
    assert gap["head_flops"] == 2 * (2048 * 1024 + 1024 * 10)  # a multiply-add counts 2


def test_param_table_flatten_grows_with_input_size_gap_does_not():
    rows = {r["head"]: r for r in param_table("resnet50", 10, heads=["gap", "flatten"],
                                              hidden=[1024], input_size=320)}
    assert rows["flatten[1024]"]["feature_map"] == "2048×10×10"
    assert rows["flatten[1024]"]["head_params"] == 2048 * 100 * 1024 + 1024 + 10_250
    assert rows["gap[1024]"]["head_params"] == 2_108_426


def test_param_table_covers_default_heads():
    rows = param_table("resnet18", 5, input_size=64)
    assert [r["head"] for r in rows][:2] == ["gap", "flatten"]
    assert all(r["feature_map"] == "512×2×2" and r["head_params"] > 0 for r in rows)


def test_freeze_leaves_only_head_trainable(resnet18_64):
    model = resnet18_64
    assert count_params(model, trainable_only=True) == count_params(model.head) == 512 * 3 + 3
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_frozen_backbone_keeps_batchnorm_statistics_in_train_mode(resnet18_64):
    model = resnet18_64.train()
    assert model.training and model.head.training and not model.backbone.training
    bn = model.backbone.model.bn1
    before = bn.running_mean.clone()
    model(torch.randn(4, 3, 64, 64))
    assert torch.equal(bn.running_mean, before)


def test_unfrozen_backbone_trains():
    model = build_model("resnet18", "gap", 3, weights="none", input_size=32, freeze=False)
    model.train()
    assert model.backbone.training
    assert count_params(model, trainable_only=True) == count_params(model)


def test_model_gives_logits_for_its_classes(resnet18_64):
    model = resnet18_64.eval()
    assert tuple(model(torch.zeros(2, 3, 64, 64)).shape) == (2, 3)
    assert model.head.spec.name == "gap" and model.head.num_classes == 3
    assert model.data_config["input_size"] == [3, 64, 64]
    assert model.class_names == ["a", "b", "c"]


def test_summary_numbers_add_up(resnet18_64):
    s = resnet18_64.summary()
    assert s.feature_shape == (512, 2, 2)
    assert s.total_params == s.backbone_params + s.head_params
    assert s.trainable_params == s.head_params == 512 * 3 + 3
    assert s.head_flops == 2 * 512 * 3
    assert s.flops == backbone_flops(resnet18_64.backbone, 64) + s.head_flops


def test_flatten_model_is_built_for_its_input_size():
    model = build_model("resnet18", HeadSpec("flatten", hidden=(8,)), 4, weights="none",
                        input_size=64).eval()
    assert model.head.map_size == (2, 2)
    assert model.summary().head_params == 512 * 4 * 8 + 8 + 8 * 4 + 4
    with pytest.raises(HeadbenchError, match="2×2 feature map but got 3×3"):
        model(torch.zeros(1, 3, 96, 96))


def test_build_model_on_existing_backbone_uses_its_weights():
    bb = create_backbone("resnet18", weights="none", input_size=32, seed=3)
    model = build_model(bb, "gmp", 2, input_size=64, dropout=0.2)
    assert model.backbone is bb and model.backbone.weights_checksum == bb.weights_checksum
    assert model.data_config["input_size"] == [3, 64, 64] and model.head.spec.dropout == 0.2


def test_class_names_must_match_num_classes():
    bb = create_backbone("resnet18", weights="none", input_size=32)
    with pytest.raises(HeadbenchError, match="2 class names for a 3-class head"):
        build_model(bb, "gap", 3, class_names=["a", "b"])


def test_count_flops_counts_a_multiply_add_as_two_and_keeps_mode():
    layer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    assert count_flops(layer, torch.zeros(1, 4)) == 2 * 4 * 3  # batch 1 works: run in eval
    assert layer.training


def test_count_params_skips_frozen_when_asked():
    layer = nn.Linear(4, 3)
    layer.bias.requires_grad_(False)
    assert count_params(layer) == 15 and count_params(layer, trainable_only=True) == 12
