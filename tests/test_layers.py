"""Keras-semantics pooling layers: the worked numbers users meet, layouts, and invariants."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from headbench.errors import HeadbenchError
from headbench.layers import (AttentionPool2d, AvgMax, AvgPool2d, CatAvgMax, Flatten, GeM,
                              GlobalAvgPool2d, GlobalMaxPool2d, PerPosition, to_channels_first)

# The 3×3 map 1..9 as a (1, 3, 3, 1) channels_last tensor, as in the Keras documentation.
NINE = torch.arange(1.0, 10.0).reshape(1, 3, 3, 1)
LAST = "channels_last"


def test_avgpool_stride_1_keeps_2x2_windows():
    assert AvgPool2d(2, strides=1, data_format=LAST)(NINE).shape == (1, 2, 2, 1)


def test_avgpool_stride_3_averages_top_left_window():
    assert AvgPool2d(2, strides=3, data_format=LAST)(NINE).tolist() == [[[[3.0]]]]


def test_avgpool_3x3_window_averages_whole_map():
    assert AvgPool2d(3, strides=2, data_format=LAST)(NINE).tolist() == [[[[5.0]]]]


def test_avgpool_strides_default_to_pool_size():
    pool = AvgPool2d(2)
    assert pool.strides == (2, 2)
    assert pool(torch.zeros(1, 4, 7, 7)).shape == (1, 4, 3, 3)  # the 7×7 -> 3×3 of the avgpool head


def test_avgpool_same_padding_averages_only_real_positions():
    # Keras AveragePooling2D(2, strides=1, padding='same') on 1..9.
    out = AvgPool2d(2, strides=1, padding="same", data_format=LAST)(NINE)
    assert out[0, :, :, 0].tolist() == [[3.0, 4.0, 4.5], [6.0, 7.0, 7.5], [7.5, 8.5, 9.0]]


def test_avgpool_same_padding_output_is_ceil_of_input_over_stride():
    out = AvgPool2d(3, strides=2, padding="same")(torch.ones(2, 3, 7, 8))
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out, torch.ones_like(out))  # no zero padding leaks into the mean


def test_avgpool_rejects_window_larger_than_map():
    with pytest.raises(HeadbenchError, match=r"^pool_size 3 of AvgPool2d is larger than the 2×2 "
                                             r"feature map; use a smaller pool_size or a "
                                             r"global-pooling head"):
        AvgPool2d(3)(torch.zeros(1, 4, 2, 2))


def test_avgpool_keeps_channels_first_layout():
    x = NINE.permute(0, 3, 1, 2)
    assert AvgPool2d(2, strides=1)(x).shape == (1, 1, 2, 2)


def test_gap_of_nine_is_five():
    assert GlobalAvgPool2d(data_format=LAST)(NINE).tolist() == [[5.0]]


def test_gap_keepdims_shapes_follow_data_format():
    assert GlobalAvgPool2d(keepdims=True, data_format=LAST)(NINE).shape == (1, 1, 1, 1)
    x = torch.zeros(2, 3, 4, 5)
    assert GlobalAvgPool2d(keepdims=True)(x).shape == (2, 3, 1, 1)
    assert GlobalAvgPool2d(keepdims=True, data_format=LAST)(x).shape == (2, 1, 1, 5)


def test_gap_pools_each_channel_separately():
    # channel 1 = 1..9, channel 2 = 10..18 on a 3×3 map.
    x = torch.arange(1.0, 19.0).reshape(1, 2, 3, 3)
    assert GlobalAvgPool2d()(x).tolist() == [[5.0, 14.0]]
    assert GlobalAvgPool2d(data_format=LAST)(x.permute(0, 2, 3, 1)).tolist() == [[5.0, 14.0]]


def test_gmp_takes_channel_maxima():
    x = torch.arange(1.0, 19.0).reshape(1, 2, 3, 3)
    assert GlobalMaxPool2d()(x).tolist() == [[9.0, 18.0]]


def test_avgmax_and_catavgmax_combine_avg_and_max():
    x = torch.arange(1.0, 19.0).reshape(1, 2, 3, 3)
    assert AvgMax()(x).tolist() == [[7.0, 16.0]]
    assert CatAvgMax()(x).tolist() == [[5.0, 14.0, 9.0, 18.0]]


def test_unknown_data_format_is_rejected():
    with pytest.raises(HeadbenchError, match="unknown data_format 'nhwc'"):
        GlobalAvgPool2d(data_format="nhwc")
    with pytest.raises(HeadbenchError, match="4-D"):
        to_channels_first(torch.zeros(2, 3), "channels_first")


def test_flatten_orders_channels_last_as_h_w_c():
    x = torch.arange(8.0).reshape(1, 2, 2, 2)  # N, H, W, C
    assert Flatten(data_format=LAST)(x).tolist() == [list(range(8))]
    assert Flatten()(torch.zeros(2, 2048, 7, 7)).shape == (2, 100352)


def test_gem_p_is_parameter_only_when_learnable():
    assert isinstance(GeM().p, nn.Parameter)
    fixed = GeM(learnable=False)
    assert not isinstance(fixed.p, nn.Parameter) and "p" in dict(fixed.named_buffers())


def test_gem_p2_is_root_mean_square():
    out = GeM(p=2.0, learnable=False)(torch.tensor([[[[1.0, 7.0]]]]))
    assert out.tolist() == [[pytest.approx(5.0, rel=1e-6)]]


def test_attention_pool_starts_as_gap_and_weights_sum_to_one():
    x = torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(0))
    pool = AttentionPool2d(8, num_heads=2)
    assert torch.allclose(pool(x), x.mean(dim=(2, 3)), atol=1e-6)
    with torch.no_grad():
        pool.query.normal_()
    weights = pool.attention_weights(x)
    assert weights.shape == (2, 2, 30)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2))


def test_attention_pool_attends_to_the_position_its_query_matches():
    x = torch.zeros(1, 4, 3, 3)
    x[0, 0, 1, 2] = 1.0  # one position carries channel 0
    pool = AttentionPool2d(4, key_proj=False)
    with torch.no_grad():
        pool.query[0, 0] = 200.0  # the query looks for channel 0
    assert torch.allclose(pool(x), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), atol=1e-4)


def test_attention_pool_rejects_heads_not_dividing_channels():
    with pytest.raises(HeadbenchError, match=r"^num_heads of AttentionPool2d \(3\) must divide the 8 channels"):
        AttentionPool2d(8, num_heads=3)


def test_per_position_applies_module_at_every_position():
    x = torch.randn(2, 6, 3, 4, generator=torch.Generator().manual_seed(1))
    linear = nn.Linear(6, 5)
    out = PerPosition(linear)(x)
    assert out.shape == (2, 5, 3, 4)
    assert torch.allclose(out[1, :, 2, 3], linear(x[1, :, 2, 3]), atol=1e-6)
    assert PerPosition(linear, data_format=LAST)(x.permute(0, 2, 3, 1)).shape == (2, 3, 4, 5)


# --- properties ---------------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9))


def _random(shape: tuple[int, ...], seed: int, positive: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.abs() + 0.1 if positive else x


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_gap_equals_avgpool_with_whole_map_window(shape, seed):
    x = _random(shape, seed)
    n, c, h, w = shape
    local = AvgPool2d((h, w))(x).reshape(n, c)
    assert torch.allclose(GlobalAvgPool2d()(x), local, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_gem_with_p1_equals_gap_on_positive_maps(shape, seed):
    x = _random(shape, seed, positive=True)
    assert torch.allclose(GeM(p=1.0)(x), GlobalAvgPool2d()(x), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_gem_approaches_max_as_p_grows(shape, seed):
    x = _random(shape, seed, positive=True)
    n, c, h, w = shape
    gem, gmp = GeM(p=50.0)(x), GlobalMaxPool2d()(x)
    # mean(x^p)^(1/p) lies in [max · (HW)^(-1/p), max]: within 10% of max for HW ≤ 81 at p = 50.
    assert torch.all(gem <= gmp * (1 + 1e-5))
    assert torch.all(gem >= gmp * (h * w) ** (-1 / 50) * (1 - 1e-5))


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_every_global_pool_maps_any_size_to_n_by_c(shape, seed):
    x = _random(shape, seed)
    n, c, _, _ = shape
    for pool in (GlobalAvgPool2d(), GlobalMaxPool2d(), GeM(), AvgMax(), AttentionPool2d(c)):
        assert pool(x).shape == (n, c), type(pool).__name__
    assert CatAvgMax()(x).shape == (n, 2 * c)
