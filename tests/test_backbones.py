"""Backbones: names, feature maps, weights sources, checksums and preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from headbench import backbones
from headbench.backbones import create_backbone, list_backbones, resolve_name, resolve_weights
from headbench.errors import HeadbenchError


def meta_backbone(name: str, input_size=None) -> backbones.Backbone:
    """Shapes and parameter counts without allocating weights."""
    with torch.device("meta"):
        return create_backbone(name, weights="none", input_size=input_size)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A resnet18 backbone (seed 1) and its weights saved as a plain state_dict."""
    bb = create_backbone("resnet18", weights="none", input_size=64, seed=1)
    return bb, bb.model.state_dict(), tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def imagenet_lite0() -> torch.nn.Module:
    """The full timm efficientnet_lite0, 1000-class classifier included, with the embedded
    ImageNet weights: the tensors map in order, as `create_backbone` maps them (mean = std = 0.5)."""
    import timm
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(backbones._embedded_state_dict(model))
    return model.eval()


def test_documented_aliases_are_cnn_backbones():
    assert {"resnet50", "mobilenet", "mobilenetv2", "mobilenetv3", "vgg16", "efficientnet_lite0",
            "efficientnet_lite1", "efficientnet_lite2"} <= set(list_backbones())
    # Keras' names: MobileNet is v1, MobileNetV3 the large one
    assert resolve_name("mobilenet") == "mobilenetv1_100"
    assert resolve_name("mobilenetv2") == "mobilenetv2_100"
    assert resolve_name("mobilenetv3") == "mobilenetv3_large_100"
    for alias in list_backbones():
        c, h, w = meta_backbone(alias, input_size=224).feature_shape()
        assert c > 0 and h > 0 and w > 0, alias


@pytest.mark.parametrize("name, channels", [("resnet50", 2048), ("vgg16", 512),
                                            ("mobilenet", 1024), ("mobilenetv2", 1280),
                                            ("efficientnet_lite0", 1280)])
def test_feature_map_at_224_is_7x7(name, channels):
    bb = meta_backbone(name)
    assert bb.feature_shape() == (channels, 7, 7)
    assert bb.num_features == channels


def test_vgg16_backbone_is_the_conv_base_only():
    # Keras VGG16(include_top=False) has 14,714,688 parameters; timm's ConvMlp fc6/fc7 must go.
    bb = meta_backbone("vgg16")
    assert sum(p.numel() for p in bb.parameters()) == 14_714_688


def _statistics(bb) -> int:
    return sum(b.numel() for name, b in bb.named_buffers() if "running" in name)


def test_backbone_parameters_are_keras_include_top_false():
    # Keras MobileNet(include_top=False): 3,206,976 trainable + 21,888 BatchNorm statistics
    mobilenet = meta_backbone("mobilenet")
    assert sum(p.numel() for p in mobilenet.parameters()) == 3_206_976
    assert _statistics(mobilenet) == 21_888
    # Keras ResNet50(include_top=False) has 23,587,712: its convolutions carry biases (26,560
    # of them) that timm's, followed by BatchNorm, do not
    resnet = meta_backbone("resnet50")
    assert sum(p.numel() for p in resnet.parameters()) + _statistics(resnet) == (
        23_587_712 - 26_560)


def test_feature_shape_follows_input_size():
    bb = create_backbone("resnet18", weights="none", input_size=64)
    assert bb.feature_shape() == (512, 2, 2)
    assert bb.feature_shape(96) == (512, 3, 3)
    assert tuple(bb(torch.zeros(1, 3, 96, 96)).shape) == (1, 512, 3, 3)
    assert bb.data_config["input_size"] == [3, 64, 64]
    assert not bb.training


def _preprocess(image: np.ndarray, config: dict) -> torch.Tensor:
    """Resize the shorter side to int(224 / crop_pct), centre-crop 224, normalise."""
    size = config["input_size"][-1]
    img = Image.fromarray(image)
    scale = int(size / config["crop_pct"]) / min(img.size)
    resample = getattr(Image.Resampling, config["interpolation"].upper())
    img = img.resize((round(img.width * scale), round(img.height * scale)), resample)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
    return ((x - mean[:, None, None]) / std[:, None, None])[None]


def test_embedded_weights_classify_sample_photos_as_imagenet(imagenet_lite0):
    from sklearn.datasets import load_sample_image
    config = create_backbone("efficientnet_lite0", weights="embedded").data_config
    model = imagenet_lite0
    x = torch.cat([_preprocess(load_sample_image(f), config) for f in ("china.jpg", "flower.jpg")])
    with torch.no_grad():
        top1 = model(x).argmax(dim=1).tolist()
    assert top1 == [698, 985]  # palace, daisy


def test_embedded_backbone_equals_imagenet_model_features(imagenet_lite0):
    bb = create_backbone("efficientnet_lite0")  # default weights: embedded
    full = imagenet_lite0
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bb(x), full.forward_features(x))
    assert bb.weights == "embedded" and len(bb.weights_checksum) == 16


def test_embedded_data_config_uses_half_mean_std():
    config = create_backbone("efficientnet_lite0", weights="embedded").data_config
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    assert config["input_size"] == [3, 224, 224]


def test_none_weights_keep_timm_data_config():
    bb = meta_backbone("resnet50")
    timm_cfg = timm.data.resolve_model_data_config(bb.model)
    assert bb.data_config == {"input_size": [3, 224, 224], "mean": list(timm_cfg["mean"]),
                              "std": list(timm_cfg["std"]),
                              "interpolation": timm_cfg["interpolation"],
                              "crop_pct": timm_cfg["crop_pct"]}
    assert bb.data_config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta_backbone("resnet50", input_size=(320, 256)).data_config["input_size"] == [3, 320,
                                                                                         256]


def test_default_weights_are_embedded_only_for_efficientnet_lite0_1_2():
    for k in range(3):
        assert resolve_weights(f"efficientnet_lite{k}", "default") == "embedded"
    assert resolve_weights("resnet50", "default") == "hub"


def test_embedded_weights_rejected_for_other_backbones():
    with pytest.raises(HeadbenchError, match="only for efficientnet_lite0, efficientnet_lite1, "
                                             "efficientnet_lite2.*hub, none"):
        create_backbone("resnet50", weights="embedded")


@pytest.mark.parametrize("arch, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_and_lite2_embedded_weights_are_imagenet_weights(arch, size):
    """The packages' tensors map in order onto timm's model: the full model classifies sample
    photos as ImageNet does, and the backbone gives its features (mean = std = 0.5)."""
    from sklearn.datasets import load_sample_image
    model = timm.create_model(arch, pretrained=False, num_classes=1000).eval()
    model.load_state_dict(backbones._embedded_state_dict(model, arch))
    bb = create_backbone(arch)  # default weights: embedded
    config = bb.data_config
    assert bb.weights == "embedded" and config["input_size"] == [3, size, size]
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    x = torch.cat([_preprocess(load_sample_image(f), config) for f in ("china.jpg", "flower.jpg")])
    with torch.no_grad():
        p = model(x).softmax(dim=1)
        torch.testing.assert_close(bb(x), model.forward_features(x))
    # the palace with a third of the probability over 1000 classes; the flower photo is daisy
    # or the honeycomb of its centre (lite0: daisy 0.16, honeycomb 0.07)
    assert p[0].argmax() == 698 and p[0, 698] > 0.25
    assert p[1].argmax() in (985, 599)


def test_a_backbone_is_recreated_from_the_recorded_timm_name_not_the_alias():
    # runs made when `mobilenet` meant MobileNet v2 record timm_name mobilenetv2_100
    with torch.device("meta"):
        old = create_backbone("mobilenet", weights="none", timm_name="mobilenetv2_100")
    assert (old.name, old.timm_name, old.num_features) == ("mobilenet", "mobilenetv2_100", 1280)


def test_hub_weights_offline_fail_at_once_with_advice(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    with pytest.raises(HeadbenchError) as info:
        create_backbone("resnet50", weights="hub")
    message = str(info.value)
    assert "could not download hub weights for 'resnet50' (offline?)" in message
    assert "local weights file" in message and "\n" not in message
    assert info.value.param == "weights"  # the CLI names --weights


def test_hub_weights_offline_load_from_local_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    full = timm.create_model("resnet18")  # with its ImageNet classifier, as on the hub
    safetensors.torch.save_file(full.state_dict(),
                                str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    bb = create_backbone("resnet18", weights="hub")
    expected = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    assert bb.weights == "hub"
    assert bb.weights_checksum == backbones.state_dict_checksum(expected)
    assert bb.data_config["crop_pct"] == timm.models.get_pretrained_cfg("resnet18").crop_pct


def _no_network(monkeypatch) -> list:
    """Any request to the hub or a raw socket fails the test; returns the download calls."""
    import socket

    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"network touched: {args} {kwargs}")
    calls: list = []
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: calls.append((a, k)) or refuse(*a, **k))
    return calls


def test_hub_offline_set_after_import_fails_in_one_line_at_once(monkeypatch, tmp_path):
    import time

    import huggingface_hub.constants
    calls = _no_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ... and set since
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    start = time.monotonic()
    with pytest.raises(HeadbenchError) as info:
        create_backbone("resnet50", weights="hub")
    assert time.monotonic() - start < 5 and not calls
    assert "could not download hub weights for 'resnet50'" in str(info.value)
    assert "\n" not in str(info.value) and info.value.param == "weights"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub online with an empty cache, no socket and a fake `hf_hub_download`
    (as behind a mirror or a proxy that a raw connection to huggingface.co cannot reach)."""
    import huggingface_hub.constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    _no_network(monkeypatch)
    calls: list = []

    def fake(behaviour):
        def download(repo_id, filename, **kwargs):
            calls.append((repo_id, filename, kwargs))
            return behaviour(filename)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return fake, calls


def test_hub_weights_online_are_fetched_by_huggingface_hub_not_a_socket_probe(online, tmp_path):
    fake, calls = online
    full = timm.create_model("resnet18")
    safetensors.torch.save_file(full.state_dict(), str(tmp_path / "model.safetensors"))
    fake(lambda filename: str(tmp_path / filename))
    bb = create_backbone("resnet18", weights="hub")
    expected = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    assert bb.weights_checksum == backbones.state_dict_checksum(expected)
    assert [(repo, name) for repo, name, _ in calls] == [("timm/resnet18.a1_in1k",
                                                          "model.safetensors")]
    assert 0 < calls[0][2]["etag_timeout"] <= 30  # a short wait, not a minute of retries


def test_hub_weights_unreachable_fail_in_one_line_after_one_request(online):
    from huggingface_hub.utils import LocalEntryNotFoundError
    fake, calls = online

    def unreachable(filename):
        raise LocalEntryNotFoundError("connection error, and not in the local cache")
    fake(unreachable)
    with pytest.raises(HeadbenchError) as info:
        create_backbone("resnet50", weights="hub")
    assert "could not download hub weights for 'resnet50' (offline?)" in str(info.value)
    assert "\n" not in str(info.value) and info.value.param == "weights"
    assert len(calls) == 1  # a connection error is not retried under the next file name


def test_hub_weights_missing_under_one_name_try_the_next(online, tmp_path):
    from huggingface_hub.utils import EntryNotFoundError
    fake, calls = online
    full = timm.create_model("resnet18")
    torch.save(full.state_dict(), tmp_path / "pytorch_model.bin")

    def only_bin(filename):
        if filename != "pytorch_model.bin":
            raise EntryNotFoundError(f"{filename} is not in the repository")
        return str(tmp_path / filename)
    fake(only_bin)
    bb = create_backbone("resnet18", weights="hub")
    assert [name for _, name, _ in calls] == ["model.safetensors", "pytorch_model.bin"]
    assert bb.weights == "hub"


def test_local_weights_round_trip_gives_same_checksum(resnet18_file):
    bb, state, folder = resnet18_file
    safetensors.torch.save_file(state, str(folder / "w.safetensors"))
    # A training checkpoint: nested under 'state_dict', DataParallel 'module.' prefixes.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               folder / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = create_backbone("resnet18", weights=str(folder / name), input_size=64)
        assert loaded.weights == str((folder / name).resolve())
        assert loaded.weights_checksum == bb.weights_checksum
    assert create_backbone("resnet18", weights="none", input_size=64).weights_checksum \
        != bb.weights_checksum


def test_local_weights_drop_the_imagenet_classifier_silently(resnet18_file, capsys):
    bb, state, folder = resnet18_file
    full = dict(state, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(full, folder / "full.pt")
    loaded = create_backbone("resnet18", weights=str(folder / "full.pt"))
    assert loaded.weights_checksum == bb.weights_checksum
    assert "warning" not in capsys.readouterr().err


def test_local_weights_with_extra_keys_warn(resnet18_file, capsys):
    _, state, folder = resnet18_file
    torch.save(dict(state, **{"extra.weight": torch.zeros(3)}), folder / "extra.bin")
    create_backbone("resnet18", weights=str(folder / "extra.bin"))
    assert "extra.weight" in capsys.readouterr().err


def test_local_weights_with_missing_keys_raise(resnet18_file):
    _, state, folder = resnet18_file
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    safetensors.torch.save_file(partial, str(folder / "partial.safetensors"))
    with pytest.raises(HeadbenchError, match=r"partial\.safetensors' lacks \d+ tensors.*layer4\."):
        create_backbone("resnet18", weights=str(folder / "partial.safetensors"))


def test_local_weights_of_another_architecture_raise(resnet18_file):
    _, state, folder = resnet18_file
    torch.save({f"other.{k}": v for k, v in state.items()}, folder / "other.pth")
    with pytest.raises(HeadbenchError, match="other.pth' matches no tensor"):
        create_backbone("resnet18", weights=str(folder / "other.pth"))
    torch.save(state, folder / "r18.pth")
    with pytest.raises(HeadbenchError, match=r"r18.pth': 'layer1.0.conv1.weight'.*expects"):
        create_backbone("resnet50", weights=str(folder / "r18.pth"))


def test_bad_weights_argument_raises(tmp_path):
    with pytest.raises(HeadbenchError, match="'nope.pth' does not exist"):
        create_backbone("resnet18", weights="nope.pth")
    (tmp_path / "w.h5").write_bytes(b"keras")
    with pytest.raises(HeadbenchError, match="unknown extension"):
        create_backbone("resnet18", weights=str(tmp_path / "w.h5"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HeadbenchError, match="could not read weights file"):
        create_backbone("resnet18", weights=str(tmp_path / "broken.pth"))


def test_unknown_backbone_suggests_closest():
    with pytest.raises(HeadbenchError, match="unknown backbone 'resnet5O': did you mean resnet50"):
        resolve_name("resnet5O")
    with pytest.raises(HeadbenchError, match="unknown backbone 'resnet50.bogus'.*resnet50.a1_in1k"):
        resolve_name("resnet50.bogus")


def test_features_neither_a_map_nor_tokens_of_a_patch_grid_are_rejected():
    # Swin gives channels-last (N, H, W, C) maps; a ViT's tokens are taken (tests/test_tokens.py)
    with pytest.raises(HeadbenchError, match=r"neither an \(N, C, H, W\) map nor tokens"):
        meta_backbone("swin_tiny_patch4_window7_224")


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = create_backbone("resnet18", weights="none", input_size=32)
    b = create_backbone("resnet18", weights="none", input_size=32)
    c = create_backbone("resnet18", weights="none", input_size=32, seed=7)
    assert a.weights_checksum == b.weights_checksum != c.weights_checksum
    assert torch.equal(torch.random.get_rng_state(), state)
