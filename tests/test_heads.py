"""The head zoo: parameter counts, shapes, fixed-size errors, equivalences, spec JSON, validation."""
import json

import pytest
import torch
from torch import nn

from headbench.errors import HeadbenchError
from headbench.heads import (DEFAULT_HEADS, Head, HeadSpec, create_head, head_info, list_heads,
                             register_head, unregister_head)

GLOBAL_HEADS = ("gap", "gmp", "gem", "avgmax", "catavgmax", "attention", "dense_map", "fastai")
C, K = 16, 3


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _map(h: int, w: int, n: int = 2, c: int = C, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_flatten_head_parameter_count_matches_hand_count():
    # The brief quoted 102,772,746; its own formula gives 102,771,722.
    with torch.device("meta"):  # 103M parameters: count them without allocating 400 MB
        head = create_head("flatten", 2048, 10, (7, 7), hidden=[1024])
    assert _params(head) == 100352 * 1024 + 1024 + 1024 * 10 + 10 == 102_771_722


def test_gap_head_parameter_count_matches_hand_count():
    with torch.device("meta"):
        head = create_head("gap", 2048, 10, (7, 7), hidden=[1024])
    assert _params(head) == 2048 * 1024 + 1024 + 1024 * 10 + 10 == 2_108_426


def test_avgpool_head_flattens_3x3_after_2x2_pooling_of_7x7():
    head = create_head("avgpool", C, K, (7, 7))
    assert head.fc.in_features == C * 3 * 3
    assert head(_map(7, 7)).shape == (2, K)


# the heads built without a backbone (the timm head is made of the backbone's own layers)
WITHOUT_BACKBONE = [n for n in list_heads("map") if not head_info(n).own]


@pytest.mark.parametrize("name", WITHOUT_BACKBONE)
def test_every_head_maps_7x7_to_logits(name):
    head = create_head(name, C, K, (7, 7)).eval()
    assert isinstance(head, Head)
    assert head(_map(7, 7)).shape == (2, K)


@pytest.mark.parametrize("name", GLOBAL_HEADS)
@pytest.mark.parametrize("size", [5, 11])
def test_global_heads_accept_other_map_sizes(name, size):
    head = create_head(name, C, K, (7, 7), hidden=[8]).eval()
    assert not head.fixed_size
    assert head(_map(size, size)).shape == (2, K)


@pytest.mark.parametrize("name", ["flatten", "avgpool"])
def test_fixed_size_heads_reject_other_map_size(name):
    head = create_head(name, C, K, (7, 7))
    assert head.fixed_size and head.map_size == (7, 7)
    message = (f"head '{name}' was built for a 7×7 feature map but got 10×10 (input size "
               f"changed?); use a global-pooling head such as 'gap' for variable input sizes")
    with pytest.raises(HeadbenchError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        head(_map(10, 10))


def test_head_rejects_wrong_channel_count():
    with pytest.raises(HeadbenchError, match="built for 16-channel feature maps"):
        create_head("gap", C, K, (7, 7))(_map(7, 7, c=8))


def test_dense_map_without_hidden_equals_gap_with_same_weights():
    gap = create_head("gap", C, K, (7, 7))
    dense_map = create_head("dense_map", C, K, (7, 7))
    dense_map.per_position.module.fc.load_state_dict(gap.fc.state_dict())
    x = _map(7, 7)
    assert torch.allclose(dense_map(x), gap(x), atol=1e-5)
    assert torch.allclose(dense_map(_map(4, 9)), gap(_map(4, 9)), atol=1e-5)


def test_dense_map_scores_every_position_before_averaging():
    head = create_head("dense_map", C, K, (7, 7), hidden=[8])
    assert head.per_position(_map(7, 7)).shape == (2, K, 7, 7)


def test_gap_classifier_weights_reproduce_logits():
    head = create_head("gap", C, K, (7, 7)).eval()
    x = _map(7, 7)
    w, b = head.classifier_weights()
    assert w.shape == (K, C) and b.shape == (K,)
    assert torch.allclose(x.mean(dim=(2, 3)) @ w.T + b, head(x), atol=1e-5)


def test_dense_map_classifier_weights_reproduce_logits():
    head = create_head("dense_map", C, K, (7, 7)).eval()
    x = _map(7, 7)
    w, b = head.classifier_weights()
    assert torch.allclose(x.mean(dim=(2, 3)) @ w.T + b, head(x), atol=1e-5)


def test_only_gap_and_dense_map_without_hidden_allow_exact_cam():
    linear = {n for n in WITHOUT_BACKBONE if create_head(n, C, K, (7, 7)).exact_cam}
    assert linear == {"gap", "dense_map"}
    hidden = create_head("gap", C, K, (7, 7), hidden=[8])
    assert not hidden.exact_cam
    with pytest.raises(HeadbenchError, match="not linear in the pooled features"):
        hidden.classifier_weights()


def test_hidden_layers_stack_linear_relu_blocks_with_dropout_before_each_linear():
    head = create_head("gap", 64, 10, (7, 7), hidden=[32, 32, 16], dropout=0.2)
    widths = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert widths == [(64, 32), (32, 32), (32, 16), (16, 10)]
    kinds = [type(m).__name__ for m in head][1:]
    assert kinds == ["Dropout", "Linear", "ReLU"] * 3 + ["Dropout", "Linear"]


def test_printing_a_head_shows_its_layers():
    text = str(create_head("gap", C, K, (7, 7), hidden=[8]))
    assert "GlobalAvgPool2d" in text and "Linear(in_features=16, out_features=8" in text
    assert "AvgPool2d(pool_size=(2, 2), strides=(2, 2)" in str(create_head("avgpool", C, K, (7, 7)))


def test_fastai_head_matches_fastai_default_layout():
    head = create_head("fastai", C, K, (7, 7))
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["CatAvgMax", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d",
                     "Dropout", "Linear"]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert (head.fc1.in_features, head.fc1.out_features, head.fc.out_features) == (2 * C, 512, K)


def test_fastai_user_hidden_and_dropout_replace_its_defaults():
    head = create_head("fastai", C, K, (7, 7), hidden=[64], dropout=0.2)
    assert head.fc1.out_features == 64
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.1, 0.2]
    assert head.spec.label == "fastai[64]-d0.2"


def test_headspec_json_round_trip():
    spec = HeadSpec("avgpool", hidden=(1024, 512), dropout=0.25,
                    options={"pool_size": 3, "strides": 2})
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["hidden"] == [1024, 512] and data["options"] == {"pool_size": 3, "strides": 2}
    assert HeadSpec.from_dict(data) == spec


def test_headspec_from_dict_rejects_unknown_keys():
    with pytest.raises(HeadbenchError, match=r"unknown keys \['pool'\]"):
        HeadSpec.from_dict({"name": "gap", "pool": "avg"})


def test_headspec_labels():
    assert HeadSpec("gap").label == "gap"
    assert HeadSpec("gap", hidden=[1024, 512]).label == "gap[1024,512]"
    assert HeadSpec("avgpool").label == "avgpool"
    assert (HeadSpec("avgpool", options={"pool_size": 3, "strides": 1}).label
            == "avgpool-pool_size3-strides1")
    assert HeadSpec("gap", dropout=0.5).label == "gap-d0.5"
    assert HeadSpec("fastai").label == "fastai"


def test_unknown_head_suggests_closest_name():
    with pytest.raises(HeadbenchError, match="unknown head 'flaten': did you mean flatten"):
        create_head("flaten", C, K, (7, 7))


def test_fewer_than_two_classes_is_rejected():
    with pytest.raises(HeadbenchError, match="at least 2 classes, got 1"):
        create_head("gap", C, 1, (7, 7))


def test_dropout_outside_unit_interval_is_rejected():
    with pytest.raises(HeadbenchError, match=r"^dropout must be in \[0, 1\), got -0.1") as e:
        create_head("gap", C, K, (7, 7), dropout=-0.1)
    assert e.value.param == "dropout"
    with pytest.raises(HeadbenchError, match="^dropout"):
        create_head("gap", C, K, (7, 7), dropout=1.0)


def test_hidden_size_below_one_is_rejected():
    with pytest.raises(HeadbenchError,
                       match=r"^hidden sizes must be from 1 to 65536, got \[8, 0\]") as e:
        create_head("gap", C, K, (7, 7), hidden=[8, 0])
    assert e.value.param == "hidden"


def test_avgpool_window_larger_than_map_is_rejected():
    with pytest.raises(HeadbenchError, match="^pool_size 3 of AvgPool2d is larger than the 2×2 "
                                             "feature map; use a smaller pool_size") as e:
        create_head(HeadSpec("avgpool", options={"pool_size": 3}), C, K, (2, 2))
    assert e.value.param == "pool_size"


def test_a_head_option_it_does_not_have_is_rejected_by_name():
    with pytest.raises(HeadbenchError, match="head 'gap' has no option pool_size") as e:
        HeadSpec("gap", options={"pool_size": 3})
    assert e.value.param == "pool_size"


def test_default_and_listed_heads_are_registered_and_described():
    assert set(DEFAULT_HEADS) <= set(list_heads())
    assert list_heads("map") == sorted(DEFAULT_HEADS + ("avgmax", "timm"))
    assert [n for n in list_heads() if head_info(n).own] == ["timm"]
    assert set(list_heads()) - set(list_heads("map")) == {"token", "avg", "map"}
    assert all(head_info(name).description for name in list_heads())
    fixed = {n for n in list_heads() if not head_info(n).any_size}
    assert fixed == {"flatten", "avgpool"}


def test_a_registered_head_is_built_checked_and_labelled_from_its_entry():
    @register_head("double_gap", "GAP -> Dense(2C) -> ReLU -> Dense", options={"width": 2})
    def _double(spec, c, k, map_size):
        return [("pool", torch.nn.AdaptiveAvgPool2d(1)), ("flat", torch.nn.Flatten()),
                ("fc1", nn.Linear(c, spec.options["width"] * c)), ("relu", nn.ReLU()),
                ("fc", nn.Linear(spec.options["width"] * c, k))]
    try:
        head = create_head(HeadSpec("double_gap", options={"width": 3}), C, K, (5, 5))
        assert head(_map(3, 4)).shape == (2, K)  # any size: the registry default
        assert head.spec.label == "double_gap-width3" and not head.exact_cam
    finally:
        unregister_head("double_gap")
    assert "double_gap" not in list_heads()
