"""The backbone's own head: the timm head (timm's forward_head up to its pre-logits, pretrained and
frozen, then a Dense that alone trains) and a token backbone's fc_norm after the token heads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import headbench as hb
from headbench.backbones import create_backbone
from headbench.errors import HeadbenchError
from headbench.heads import create_head
from headbench.layers import GlobalAvgPool2d
from headbench.model import count_params
from headbench.own_head import OwnHead, frozen_params
from headbench.synthetic import make_shapes_dataset
from headbench.train.protocol import twin_heads

MOBILENET = "mobilenetv3_large_100"
CONV_HEAD = 960 * 1280 + 1280  # mobilenetv3's pretrained 1×1 conv between pool and classifier


@pytest.fixture(scope="module")
def mobilenet():
    return create_backbone(MOBILENET, weights="none", input_size=64)


def test_the_timm_head_is_timms_forward_head_frozen_then_a_dense(mobilenet):
    c, h, w = mobilenet.feature_shape()
    head = create_head("timm", c, 3, (h, w), backbone=mobilenet).eval()
    assert isinstance(head.pool, OwnHead) and head.fc.in_features == 1280
    assert count_params(head) == 1280 * 3 + 3 and frozen_params(head) == CONV_HEAD
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(head.pool(x), mobilenet.model.forward_head(x, pre_logits=True))
    # the frozen part is no parameter: training computes it once per image and never moves it
    split = head.training_split()
    assert [type(m) for m in split.body] == [nn.Linear]
    head.train()
    assert not head.pool.module.training  # its norms and dropout stay in eval mode


def test_the_backbone_counts_only_the_layers_of_its_features(mobilenet):
    everything = sum(p.numel() for p in mobilenet.model.parameters())
    assert mobilenet.num_params == everything - CONV_HEAD
    lite = create_backbone("efficientnet_lite0", weights="none", input_size=64)
    assert lite.num_params == sum(p.numel() for p in lite.model.parameters())


def test_the_timm_head_needs_its_backbone():
    with pytest.raises(HeadbenchError, match="backbone's own layers") as e:
        create_head("timm", 960, 3, (2, 2))
    assert e.value.param == "heads"


def test_where_the_own_head_is_a_pool_the_timm_head_is_that_head_and_trains_once():
    lite = create_backbone("efficientnet_lite0", weights="none", input_size=64)
    c, h, w = lite.feature_shape()
    make = {name: (lambda name=name: create_head(name, c, 3, (h, w), backbone=lite))
            for name in ("gap", "timm")}
    assert isinstance(make["timm"]().pool, GlobalAvgPool2d)
    assert twin_heads(make, [0, 1]) == {"timm": "gap"}
    vit = create_backbone("vit_tiny_patch16_224", weights="none", input_size=64)
    make = {name: (lambda name=name: create_head(name, 192, 3, (1, 17), backbone=vit))
            for name in ("token", "timm")}
    assert twin_heads(make, [0, 1]) == {"timm": "token"}


def _avg_pooled_vit():
    """vit_tiny as timm builds it with global_pool='avg' (norm after pooling: fc_norm), with
    LayerNorms that are not the identity, as trained ones are."""
    vit = create_backbone("vit_tiny_patch16_224", weights="none", input_size=64)
    model = vit.model
    model.global_pool, model.norm, model.fc_norm = "avg", nn.Identity(), nn.LayerNorm(192)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        model.fc_norm.weight.copy_(torch.randn(192, generator=g) * 0.5 + 1)
        model.fc_norm.bias.copy_(torch.randn(192, generator=g) * 0.5)
    return vit


def test_token_heads_end_with_the_backbones_fc_norm_as_timm_pools():
    vit = _avg_pooled_vit()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        row, nlc = vit(x), vit.model.forward_features(x)
        for name in ("token", "avg"):
            head = create_head(name, 192, 3, (1, 17), backbone=vit).eval()
            assert head.norm.params == 2 * 192 and count_params(head) == 192 * 3 + 3
            pooled = nn.Sequential(*list(head)[:-1])(row)
            assert torch.allclose(pooled, vit.model.forward_head(nlc, pre_logits=True)
                                  if name == "avg" else
                                  vit.model.fc_norm(nlc[:, 0]), atol=1e-5), name
    make = {name: (lambda name=name: create_head(name, 192, 3, (1, 17), backbone=vit))
            for name in ("gap", "avg", "timm")}
    assert twin_heads(make, [0]) == {"timm": "avg"}  # avg is no longer gap: it has the norm


@pytest.mark.slow
def test_compare_with_the_timm_head_on_mobilenetv3(tmp_path, one_thread, mobilenet):
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square", "star"),
                               per_class=10, image_size=64)
    run = hb.compare(data, backbone=MOBILENET, weights="none", input_size=64, heads="timm,gap",
                     seeds=1, epochs=2, out=tmp_path, cache_dir=tmp_path / "cache",
                     shots="none", cam=1, selection="val", report=False, workers=0)
    timm_head, gap = run.head("timm"), run.head("gap")
    assert timm_head.head_params == 1280 * 3 + 3 and gap.head_params == 960 * 3 + 3
    assert timm_head.total_params == mobilenet.num_params + CONV_HEAD + timm_head.head_params
    assert gap.total_params == mobilenet.num_params + gap.head_params
    model = hb.load_model(run.run_dir / timm_head.model_dir)
    trained = model.head.pool.module.conv_head.weight
    assert torch.equal(trained, mobilenet.model.conv_head.weight)  # frozen: never trained
    (row,) = hb.predict(model, [next(Path(data).glob("star/*.png"))], topk=1)
    assert row["top"][0]["label"] in run.classes
    assert set(run.analyses["cam"]["heads"]) == {"timm", "gap"}


def test_a_token_head_with_fc_norm_trains_from_the_cached_class_token():
    from headbench.layers import global_stats
    vit = _avg_pooled_vit()
    row = vit(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    stats = global_stats(row, ("avg", "token"), vit.token_prefix)
    for name in ("token", "avg", "timm"):
        split = create_head(name, 192, 3, (1, 17), backbone=vit).training_split()
        with torch.no_grad():
            assert torch.allclose(split.apply(stats, ("avg", "token")), split.prepare(row),
                                  atol=1e-5), name
