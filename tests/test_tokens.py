"""Token backbones (ViT): tokens kept as a row, the heads of timm's vocabulary (token, avg, map)
equal to timm's own pooling, the map heads on the patch grid, a whole compare."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.layers import global_pool_nlc

import headbench as hb
from headbench.backbones import create_backbone
from headbench.errors import HeadbenchError
from headbench.heads import create_head
from headbench.synthetic import make_shapes_dataset
from headbench.tokens import PatchGrid, TokenLayout

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit():
    return create_backbone(VIT, weights="none", input_size=64)


@pytest.fixture(scope="module")
def tokens(vit) -> tuple[torch.Tensor, torch.Tensor]:
    """(headbench's (N, C, 1, T) row, timm's (N, T, C) tokens) of the same images."""
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vit(x), vit.model.forward_features(x)


def test_a_vit_gives_a_row_of_tokens_with_its_layout(vit, tokens):
    row, nlc = tokens
    assert vit.kind == "tokens" and vit.feature_shape() == (192, 1, 17)
    assert vit.token_layout() == TokenLayout(1, (4, 4))
    assert torch.equal(row[:, :, 0, :], nlc.transpose(1, 2))
    assert create_backbone("resnet18", weights="none", input_size=64).token_layout() is None


def test_any_input_size_leaves_the_native_size_unchanged():
    import timm
    plain = timm.create_model(VIT, pretrained=False, num_classes=0).eval()
    ours = create_backbone(VIT, weights="none")
    ours.model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours.model.forward_features(x), plain.forward_features(x),
                              atol=1e-6)
    assert ours.token_layout(96) == TokenLayout(1, (6, 6))


@pytest.mark.parametrize("name", ["token", "avg"])
def test_token_heads_pool_as_timm_does(vit, tokens, name):
    row, nlc = tokens
    head = create_head(name, 192, 3, (1, 17), tokens=vit.token_layout())
    with torch.no_grad():
        pooled = _pooled(head, row)
    want = global_pool_nlc(nlc, pool_type=name, num_prefix_tokens=1)
    assert torch.allclose(pooled, want, atol=1e-6)


def test_the_map_head_is_timms_attention_pool_latent(vit, tokens):
    from timm.layers import AttentionPoolLatent
    row, nlc = tokens
    head = create_head("map", 192, 3, (1, 17), tokens=vit.token_layout()).eval()
    timm_pool = AttentionPoolLatent(192, num_heads=head.pool.pool.num_heads).eval()
    timm_pool.load_state_dict(head.pool.pool.state_dict())
    with torch.no_grad():
        assert torch.allclose(head.pool(row), timm_pool(nlc[:, 1:]), atol=1e-5)


def test_map_heads_read_the_patch_tokens_as_a_grid(vit, tokens):
    row, nlc = tokens
    gap = create_head("gap", 192, 3, (1, 17), tokens=vit.token_layout())
    flatten = create_head("flatten", 192, 3, (1, 17), tokens=vit.token_layout())
    assert isinstance(gap[0], PatchGrid) and flatten.fc.in_features == 192 * 16
    grid = gap[0](row)
    assert grid.shape == (3, 192, 4, 4) and grid.data_ptr() == row[:, :, 0, 1].data_ptr()
    assert torch.equal(grid.flatten(2).transpose(1, 2), nlc[:, 1:])
    # without fc_norm, the mean of the patch tokens is gap on the grid: one training for both
    avg = create_head("avg", 192, 3, (1, 17), tokens=vit.token_layout())
    assert torch.allclose(_pooled(avg, row), gap.pool(grid), atol=1e-6)
    from headbench.train.protocol import twin_heads
    make = {name: (lambda name=name: create_head(name, 192, 3, (1, 17),
                                                 tokens=vit.token_layout()))
            for name in ("gap", "avg")}
    assert twin_heads(make, [0, 1]) == {"avg": "gap"}


def _pooled(head, row: torch.Tensor) -> torch.Tensor:
    """A head without its classifier (no hidden layers): the pooled features."""
    return torch.nn.Sequential(*list(head)[:-1])(row)


def test_token_heads_on_a_cnn_are_one_line_before_any_work(tmp_path):
    with pytest.raises(HeadbenchError, match="head 'token' needs a token backbone") as e:
        hb.compare(tmp_path, backbone="resnet18", weights="none", heads="gap,token",
                   out=tmp_path / "out")
    assert e.value.param == "heads" and "resnet18" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_the_training_split_of_a_map_head_on_tokens_is_exact(vit, tokens):
    row, _ = tokens
    for name in ("gap", "gem", "attention", "flatten"):
        head = create_head(name, 192, 3, (1, 17), tokens=vit.token_layout()).eval()
        split = head.training_split()
        with torch.no_grad():
            assert torch.allclose(split.body(split.prepare(row)), head(row), atol=1e-5), name


@pytest.mark.slow
def test_compare_on_a_vit_end_to_end(tmp_path, one_thread):
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square", "star"),
                               per_class=10, image_size=64)
    run = hb.compare(data, backbone=VIT, weights="none", input_size=64,
                     heads="token,avg,map,gap,flatten,timm", seeds=1, epochs=3, out=tmp_path,
                     cache_dir=tmp_path / "cache", shots="1,all", cam=1, sizes="48,96",
                     workers=0)
    assert [h.head for h in run.heads] == ["token", "avg", "map", "gap", "flatten", "timm"]
    # vit_tiny pools its class token: its own head is the token head, trained once for both
    assert run.head("timm").seeds[0].test == run.head("token").seeds[0].test
    assert run.head("map").head_params > run.head("token").head_params == 192 * 3 + 3
    cams = run.analyses["cam"]["heads"]
    assert set(cams) == {"avg", "gap", "flatten"}  # token and map pool without a grid
    model = hb.load_model(run.run_dir / run.head("token").model_dir)
    (row,) = hb.predict(model, [next(Path(data).glob("star/*.png"))], topk=1)
    assert row["top"][0]["label"] in run.classes
    assert (run.run_dir / "report.html").is_file()
    sizes = run.analyses["sizes"]["heads"]
    assert {"48", "64", "96"} <= set(sizes["gap"]) and {"48", "96"} <= set(sizes["token"])
    assert "not_applicable" in sizes["flatten"]["96"]
    assert run.analyses["cam"]["skipped"].keys() == {"token", "map", "timm"}


def test_a_local_weights_file_gives_timms_tokens_and_pooling(tmp_path):
    import timm
    from safetensors.torch import save_file
    model = timm.create_model(VIT, pretrained=False, num_classes=0).eval()
    with torch.no_grad():  # LayerNorms that are not the identity, as trained ones are
        g = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if "weight" in name else 0))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ours = create_backbone(VIT, weights=str(path))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, row = model.forward_features(x), ours(x)
        for name in ("token", "avg"):
            head = create_head(name, 192, 3, (1, 197), tokens=ours.token_layout())
            assert torch.allclose(_pooled(head, row), global_pool_nlc(want, name, 1), atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_and_onnx_on_a_vit(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from headbench.onnx import export_onnx
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square", "star"),
                               per_class=10, image_size=64)
    run = hb.compare(data, backbone=VIT, weights="none", input_size=64, heads="token,gap",
                     seeds=1, epochs=2, out=tmp_path, cache_dir=tmp_path / "cache",
                     shots="none", cam=0, finetune=True, finetune_epochs=1, selection="val",
                     report=False, workers=0)
    assert any(h.finetuned for h in run.heads)
    token = export_onnx(run.run_dir / run.head("token").model_dir, tmp_path / "token.onnx")
    assert token["passed"] and token["dynamic_size"] and token["sizes"] == [64, 48, 80]
    gap = export_onnx(run.run_dir / run.head("gap").model_dir, tmp_path / "gap.onnx")
    assert gap["passed"] and not gap["dynamic_size"]  # the grid's shape is fixed in the graph
    with pytest.raises(HeadbenchError, match="reads the patch tokens as a grid"):
        export_onnx(run.run_dir / run.head("gap").model_dir, tmp_path / "gap2.onnx",
                    dynamic_size=True)


def test_a_vit_without_a_class_token_refuses_the_token_head():
    layout = TokenLayout(4, (4, 4), class_token=False)  # four registers, no class token
    with pytest.raises(HeadbenchError, match="needs a class token") as e:
        create_head("token", 192, 3, (1, 20), tokens=layout)
    assert e.value.param == "heads"
    assert create_head("avg", 192, 3, (1, 20), tokens=layout)[0].layout.prefix == 4


@pytest.mark.parametrize("name", ["mixer_s16_224", "swinv2_cr_tiny_224"])
def test_tokens_without_a_patch_grid_and_size_bound_models_are_refused_or_left_alone(name):
    # an MLP-Mixer's tokens have no patch embedding to place them; Swin-V2-CR (a map) keeps its
    # fixed size: its attention masks are built for it
    if name.startswith("mixer"):
        with pytest.raises(HeadbenchError, match="not 0 prefix tokens and a patch grid"):
            create_backbone(name, weights="none")
    else:
        bb = create_backbone(name, weights="none")
        assert bb.kind == "map" and bb.model.patch_embed.strict_img_size


def test_token_statistics_stand_in_for_the_rows(vit, tokens):
    """The cache of a token backbone may keep the class token and the statistics of the patch
    tokens instead of every token: each pooling head's prepared input is the same from them."""
    from headbench.layers import global_stats
    row, _ = tokens
    form = ("avg", "max", "token")
    stats = global_stats(row, form, vit.token_prefix)
    for name in ("token", "avg", "gap", "gmp", "catavgmax"):
        split = create_head(name, 192, 3, (1, 17), backbone=vit).training_split()
        assert split.stats, name
        assert torch.allclose(split.apply(stats, form), split.prepare(row), atol=1e-6), name
    for name in ("map", "flatten", "attention"):  # these need every token
        assert not create_head(name, 192, 3, (1, 17), backbone=vit).training_split().stats


@pytest.mark.slow
def test_a_vit_compare_of_pooling_heads_caches_only_their_statistics(tmp_path, one_thread):
    from headbench.cache import list_entries
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square"),
                               per_class=8, image_size=64)
    run = hb.compare(data, backbone=VIT, weights="none", input_size=64, heads="token,avg,gmp",
                     seeds=1, epochs=2, out=tmp_path, cache_dir=tmp_path / "cache",
                     shots="none", cam=0, selection="val", report=False, workers=0)
    (entry,) = list_entries(tmp_path / "cache")
    assert entry["form"] == "avg+max+token"
    assert {h.head for h in run.heads} == {"token", "avg", "gmp"}
    model = hb.load_model(run.run_dir / run.head("token").model_dir)
    (row,) = hb.predict(model, [next(Path(data).glob("circle/*.png"))], topk=1)
    assert row["top"][0]["label"] in run.classes
