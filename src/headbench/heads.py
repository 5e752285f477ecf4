"""The head zoo: a registry from the name a user types to a factory building that head.

A head maps a backbone feature map (N, C, H, W) to logits (N, K). Heads, in Keras vocabulary:

- ``gap``: GlobalAveragePooling2D -> [hidden] -> Dense(K).
- ``gmp``: GlobalMaxPooling2D -> [hidden] -> Dense(K).
- ``gem``: generalised-mean pooling (learnable p, starts at 3) -> [hidden] -> Dense(K).
- ``avgmax``: (average + max pooling) / 2 -> [hidden] -> Dense(K).
- ``catavgmax``: [average, max] pooling concatenated (2C) -> [hidden] -> Dense(K).
- ``attention``: a learned query attends over positions -> [hidden] -> Dense(K).
- ``flatten``: Flatten (C·H·W) -> [hidden] -> Dense(K). Fixed map size.
- ``avgpool``: AveragePooling2D(pool_size, strides) -> Flatten -> [hidden] -> Dense(K). Fixed size.
- ``dense_map``: Dense applied at every position of the 4-D map, giving an H×W grid of class
  scores, averaged over positions (Network in Network). Without hidden layers it equals ``gap``.
- ``fastai``: fastai's default head: [avg, max] -> BatchNorm -> Dropout(0.25) -> Dense(512) ->
  ReLU -> BatchNorm -> Dropout(0.5) -> Dense(K), its Dense layers without bias as in fastai.

On a token backbone (ViT) the heads above read the patch tokens as a C×h×w grid
(`tokens.PatchGrid`), and three more, in timm's vocabulary, read the tokens themselves:

- ``token``: the class token -> [hidden] -> Dense(K) (timm's global_pool='token').
- ``avg``: the mean of the patch tokens -> [hidden] -> Dense(K) (global_pool='avg'): gap on
  the grid, trained once with it.
- ``map``: attention pooling by a learned latent query, timm's AttentionPoolLatent ->
  [hidden] -> Dense(K) (global_pool='map').

``hidden=[1024, 512]`` inserts Dense+ReLU blocks before the classifier; ``dropout=p`` puts a
Dropout(p) before every Dense.

>>> head = create_head("gap", in_channels=2048, num_classes=10, map_size=(7, 7), hidden=[1024])
>>> head(torch.zeros(2, 2048, 7, 7)).shape
torch.Size([2, 10])
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from headbench import errors
from headbench import own_head as _own
from headbench.errors import HeadbenchError
from headbench.runtime import memory_bytes
from headbench.layers import (AttentionPool2d, AvgMax, AvgPool2d, CatAvgMax, Flatten, GeM,
                              GlobalAvgPool2d, GlobalMaxPool2d, PerPosition)
from headbench.splits import TrainingSplit, training_split
from headbench.tokens import ClassToken, LatentAttentionPool, PatchGrid, TokenLayout

DEFAULT_HEADS = ("gap", "flatten", "avgpool", "dense_map", "gmp", "gem", "catavgmax",
                 "attention", "fastai")
MAX_WIDTH = 65536       # the widest hidden layer (16× the widest in the literature's heads)
MAX_CLASSES = 100_000   # the most classes (ImageNet-21k has 21,841)
# a head larger than this share of the machine's memory is refused before it is built: training
# holds several members of it with their gradients and AdamW's two moments
MEMORY_SHARE = 0.25

Layers = list[tuple[str, nn.Module]]
Factory = Callable[["HeadSpec", int, int, tuple[int, int]], Layers]


@dataclass(frozen=True)
class NamedClaim:
    """A forum claim about two heads, by name, that headbench tests: `head` beats `versus`.

    The findings take `head` as their reference head (the best of its specs on val) and compare
    it with `versus` (and with every fixed-size head) on accuracy, overfitting and each analysis;
    the CLI always prints the findings of a `headline` claim, significant or not.
    """

    head: str
    versus: str
    says: str
    headline: bool = False


# The claims headbench was written to test; the only place that pairs heads by name.
NAMED_CLAIMS = (
    NamedClaim("gap", "flatten", "use GlobalAveragePooling2D instead of Flatten: far fewer "
               "parameters, less overfitting, robust to translation, any input size",
               headline=True),
    NamedClaim("gap", "avgpool", "global average pooling beats AveragePooling2D + Flatten, which "
               "still has many parameters and one input size"),
)


@dataclass(frozen=True)
class HeadInfo:
    """What a registered head is and can do; everything outside this file asks here, never the name.

    Attributes:
        name: the key a user types.
        description: one line for `headbench params` and the report.
        any_size: True when the head accepts any feature-map size (global pooling); False when
            it is built for one map size (flatten, avgpool) and refuses others.
        exact_cam: True when, without hidden layers, its logits are ``W @ mean_hw(x) + b`` with
            ``W, b`` its last Linear (gap, dense_map): class activation maps are then exact.
        options: the head's own options and their defaults (avgpool: pool_size, strides).
        hidden, dropout: the defaults used when a spec leaves them None.
        kinds: the backbones it takes: 'map' heads also take a token backbone's patch tokens
            as a grid (`tokens.PatchGrid`); 'tokens' only heads (token, avg, map) are built
            by `factory(spec, C, K, layout)` with the backbone's `tokens.TokenLayout`.
        own: built from the backbone's own pretrained layers (`own_head`), by
            `factory(spec, C, K, backbone)`: the timm head.
    """

    name: str
    factory: Factory
    description: str
    any_size: bool = True
    exact_cam: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    kinds: tuple[str, ...] = ("map", "tokens")
    own: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.options)


_REGISTRY: dict[str, HeadInfo] = {}


def register_head(name: str, description: str, *, any_size: bool = True, exact_cam: bool = False,
                  options: dict[str, Any] | None = None, hidden: Sequence[int] = (),
                  dropout: float = 0.0, kinds: Sequence[str] = ("map", "tokens"),
                  own: bool = False) -> Callable[[Factory], Factory]:
    """Decorator adding `factory(spec, in_channels, num_classes, map_size) -> [(name, layer)]`.

    This is the only place a head is described: compare, the analyses, the report and export
    read the capabilities given here (see `HeadInfo`).

    Example:
        >>> @register_head("gap_twice", "GAP -> Dense -> Dense")
        ... def _gap_twice(spec, c, k, map_size):
        ...     return [("pool", GlobalAvgPool2d())] + _mlp(c, (c,) + spec.hidden, k, spec.dropout)
        >>> head_info("gap_twice").any_size
        True
        >>> unregister_head("gap_twice")
    """
    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = HeadInfo(name, factory, description, any_size, exact_cam,
                                   tuple((options or {}).items()), tuple(hidden), float(dropout),
                                   tuple(kinds), own)
        return factory
    return add


def unregister_head(name: str) -> None:
    """Remove a head added with `register_head` (tests and plugins clean up with it)."""
    _REGISTRY.pop(name, None)


def list_heads(kind: str | None = None) -> list[str]:
    """Names of the registered heads, sorted: all, or those a backbone of `kind` takes ('map':
    a CNN's feature map; 'tokens': a ViT's tokens)."""
    return sorted(name for name, info in _REGISTRY.items() if kind is None or kind in info.kinds)


def head_info(name: str) -> HeadInfo:
    """The registry entry of head `name`; an unknown name suggests the closest ones."""
    if name not in _REGISTRY:
        raise errors.unknown("head", name, _REGISTRY)
    return _REGISTRY[name]


@dataclass
class HeadSpec:
    """What a user chose for a head; serialises to the run folder's JSON.

    `hidden` and `dropout` left as None take the head's defaults (none and 0, except fastai's
    [512] and 0.5), so after construction they are always a tuple and a float. `options` are
    the head's own options (`HeadInfo.options`); unset ones take their defaults. The spec is
    checked when made: unknown head or option, a hidden size < 1 or dropout outside [0, 1)
    raise `HeadbenchError` naming the parameter.

    Example:
        >>> HeadSpec("gap", hidden=[1024, 512]).label
        'gap[1024,512]'
        >>> HeadSpec("avgpool").label, HeadSpec("avgpool", options={"pool_size": 3}).label
        ('avgpool', 'avgpool-pool_size3')
    """
    name: str
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        info = head_info(self.name)
        if self.hidden is None:
            self.hidden = info.hidden
        if self.dropout is None:
            self.dropout = info.dropout
        try:
            self.hidden = tuple(int(h) for h in self.hidden)
            self.dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise HeadbenchError(f"hidden must be whole sizes and dropout a number, got "
                                 f"{self.hidden!r} and {self.dropout!r}", param="hidden") from None
        if any(h < 1 or h > MAX_WIDTH for h in self.hidden):
            raise HeadbenchError(f"hidden sizes must be from 1 to {MAX_WIDTH}, got "
                                 f"{list(self.hidden)[:8]}", param="hidden")
        if not 0.0 <= self.dropout < 1.0:
            raise HeadbenchError(f"dropout must be in [0, 1), got {self.dropout:g}", param="dropout")
        unknown_options = sorted(set(self.options) - set(info.defaults))
        if unknown_options:
            raise HeadbenchError(f"head '{self.name}' has no option {', '.join(unknown_options)}; "
                                 f"its options: {', '.join(info.defaults) or 'none'}",
                                 param=unknown_options[0])
        self.options = {**info.defaults, **self.options}

    @property
    def info(self) -> HeadInfo:
        return head_info(self.name)

    @property
    def label(self) -> str:
        """Short unique name for tables and file names: 'gap[1024,512]', 'avgpool', 'gap-d0.5'."""
        info = self.info
        text = self.name + "".join(f"-{k}{v}" for k, v in self.options.items()
                                   if v != info.defaults[k])
        if self.hidden != info.hidden:
            text += "[" + ",".join(map(str, self.hidden)) + "]"
        if self.dropout != info.dropout:
            text += f"-d{self.dropout:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hidden": list(self.hidden), "dropout": self.dropout,
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Any) -> "HeadSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or "name" not in data or set(data) - known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else []
            problem = f"unknown keys {extra}" if extra else "no 'name'"
            raise HeadbenchError(f"head spec has {problem}; expected keys {sorted(known)}")
        return cls(**data)


class Head(nn.Sequential):
    """A classification head: an ``nn.Sequential`` from feature map (N, C, H, W) to logits (N, K).

    Attributes:
        spec: the HeadSpec it was built from; `info` its registry entry.
        in_channels, num_classes: C and K.
        map_size: the (H, W) it was built for.
        any_size / fixed_size: whether other map sizes work (global pooling) or not.
        exact_cam: True when the logits are W @ GAP(x) + b (gap and dense_map without hidden
            layers; dropout is off in eval), so class activation maps are exact.

    Example:
        >>> head = create_head("flatten", 512, 10, (7, 7))
        >>> head(torch.zeros(1, 512, 7, 7)).shape
        torch.Size([1, 10])
    """

    def __init__(self, spec: HeadSpec, layers: Layers, in_channels: int, num_classes: int,
                 map_size: tuple[int, int]):
        super().__init__(OrderedDict(layers))
        self.spec = spec
        self.in_channels, self.num_classes = in_channels, num_classes
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.tokens: TokenLayout | None = None  # a token backbone's layout (`create_head`)

    @property
    def info(self) -> HeadInfo:
        return self.spec.info

    @property
    def any_size(self) -> bool:
        return self.info.any_size

    @property
    def fixed_size(self) -> bool:
        return not self.info.any_size

    @property
    def exact_cam(self) -> bool:
        return self.info.exact_cam and not self.spec.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return super().forward(x)

    def _check_input(self, x: torch.Tensor) -> None:
        name = self.spec.name
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise HeadbenchError(
                f"head '{name}' was built for {self.in_channels}-channel feature maps "
                f"(N, C, H, W) but got shape {tuple(x.shape)}; rebuild it for this backbone")
        got = (x.shape[2], x.shape[3])
        if self.fixed_size and got != self.map_size:
            raise HeadbenchError(
                f"head '{name}' was built for a {self.map_size[0]}×{self.map_size[1]} feature map "
                f"but got {got[0]}×{got[1]} (input size changed?); use a global-pooling head "
                f"such as 'gap' for variable input sizes")

    def accepts(self, map_size: Sequence[int]) -> bool:
        """Whether the head runs on a feature map of `map_size` (H, W)."""
        return self.any_size or tuple(map_size) == self.map_size

    def training_split(self) -> TrainingSplit:
        """This head as a parameter-free `prepare` and a trainable `body` (see `training_split`)."""
        return training_split(self)

    def classifier_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (K, C), b (K,)) with logits = W @ GAP(x) + b, for `exact_cam` heads."""
        if not self.exact_cam:
            raise HeadbenchError(
                f"head '{self.spec.label}' is not linear in the pooled features; exact class "
                f"maps need a head registered with exact_cam (gap, dense_map) without hidden")
        fc = [m for m in self.modules() if isinstance(m, nn.Linear)][-1]
        return fc.weight.detach(), fc.bias.detach()


def create_head(spec: HeadSpec | str, in_channels: int, num_classes: int,
                map_size: tuple[int, int], hidden: Sequence[int] | None = None,
                dropout: float | None = None, tokens: TokenLayout | None = None,
                backbone: Any = None) -> Head:
    """Build a head by name (or HeadSpec) for a backbone's C×H×W feature map and K classes.

    Args:
        spec: a head name from `list_heads()` or a HeadSpec; with a name, `hidden` and `dropout`
            fill the spec (None: the head's defaults). Ignored when `spec` is a HeadSpec.
        in_channels: C, channels of the feature map.
        num_classes: K ≥ 2.
        map_size: (H, W) of the feature map the head is built for ((1, T) for the T tokens
            of a token backbone).
        tokens: a token backbone's layout (`backbone.token_layout()`); a map head then reads
            the patch tokens as a grid (`tokens.PatchGrid`). None: a feature-map backbone.
        backbone: the `backbones.Backbone` the head sits on, for the layers taken from it: the
            timm head's own head and a token head's fc_norm (`own_head`); `tokens` defaults
            to its layout. Needed by the timm head.

    Raises:
        HeadbenchError: unknown name, K < 2, dropout outside [0, 1), a hidden size < 1, or an
            avgpool window larger than the map; the error's `param` names the parameter.

    Example:
        >>> create_head("gap", 2048, 10, (7, 7), hidden=[1024])
        Head(
          (pool): GlobalAvgPool2d()
          (fc1): Linear(in_features=2048, out_features=1024, bias=True)
          (relu1): ReLU()
          (fc): Linear(in_features=1024, out_features=10, bias=True)
        )
    """
    if isinstance(spec, str):
        spec = HeadSpec(spec, hidden=None if hidden is None else tuple(hidden), dropout=dropout)
    map_size = (int(map_size[0]), int(map_size[1]))
    if num_classes < 2:
        raise HeadbenchError(f"a classifier needs at least 2 classes, got {num_classes}; "
                             f"check the class folders of your data", param="num_classes")
    if num_classes > MAX_CLASSES:
        raise HeadbenchError(f"{num_classes} classes are over the limit of {MAX_CLASSES:,}",
                             param="num_classes")
    if in_channels < 1 or min(map_size) < 1:
        raise HeadbenchError(f"head '{spec.name}' needs a non-empty feature map, got "
                             f"{in_channels} channels of {map_size[0]}×{map_size[1]}")
    if tokens is None and backbone is not None:
        tokens = backbone.token_layout()
    kind = "map" if tokens is None else "tokens"
    if kind not in spec.info.kinds:
        raise HeadbenchError(f"head '{spec.label}' needs a token backbone (a ViT); this "
                             "backbone gives a feature map", param="heads")
    if spec.info.own:
        if backbone is None:
            raise HeadbenchError(f"head '{spec.label}' is built from the backbone's own layers: "
                                 "give the backbone", param="heads")
        layers = spec.info.factory(spec, in_channels, num_classes, backbone)
    elif "map" not in spec.info.kinds:  # a token head, with the backbone's fc_norm if any
        layers = spec.info.factory(spec, in_channels, num_classes, tokens)
        norm = _own.fc_norm(backbone) if backbone is not None else None
        if norm is not None:
            at = [name for name, _ in layers].index("pool") + 1
            layers.insert(at, ("norm", norm))
    else:
        grid = tokens.grid if tokens is not None else map_size
        _check_memory(spec, in_channels, num_classes, grid)
        layers = spec.info.factory(spec, in_channels, num_classes, grid)
        if tokens is not None:
            layers = [("grid", PatchGrid(tokens)), *layers]
    head = Head(spec, layers, in_channels, num_classes, map_size)
    head.tokens = tokens
    return head


def _check_memory(spec: HeadSpec, in_channels: int, num_classes: int,
                  map_size: tuple[int, int]) -> None:
    """Refuse a head whose float32 parameters exceed `MEMORY_SHARE` of this machine's memory,
    counted on the meta device (nothing allocated; once per head shape: training builds a head
    per member)."""
    size, memory = _parameter_bytes(spec, in_channels, num_classes, map_size), memory_bytes()
    if memory and size > MEMORY_SHARE * memory:
        raise HeadbenchError(f"head '{spec.label}' would hold {size / 2**30:.1f} GiB of "
                             f"parameters, over {MEMORY_SHARE:.0%} of this machine's "
                             f"{memory / 2**30:.0f} GiB (training holds several copies): use "
                             "smaller hidden sizes", param="hidden")


_SIZES: dict[tuple, int] = {}


def _parameter_bytes(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> int:
    """Bytes of the head's float32 parameters; 0 for a (plugin) head that cannot be built on
    the meta device, which is then built as it is."""
    key = (spec.label, c, k, map_size)  # the label names the whole spec
    if key not in _SIZES:
        try:
            with torch.device("meta"):
                layers = spec.info.factory(spec, c, k, map_size)
            _SIZES[key] = 4 * sum(p.numel() for _, layer in layers for p in layer.parameters())
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            _SIZES[key] = 0
    return _SIZES[key]


# --- building blocks ----------------------------------------------------------------------------

def _mlp(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> Layers:
    """[Dropout] -> Linear -> ReLU per hidden size, then [Dropout] -> Linear(K) named 'fc'."""
    layers: Layers = []
    for i, width in enumerate(hidden, start=1):
        if dropout > 0:
            layers.append((f"drop{i}", nn.Dropout(dropout)))
        layers += [(f"fc{i}", nn.Linear(in_features, width)), (f"relu{i}", nn.ReLU())]
        in_features = width
    if dropout > 0:
        layers.append(("drop", nn.Dropout(dropout)))
    layers.append(("fc", nn.Linear(in_features, num_classes)))
    return layers


def _global_head(pool: Callable[[int], nn.Module], widen: int = 1) -> Factory:
    """Factory for pool -> [hidden] -> Linear; `widen` is pooled width / C (2 for catavgmax)."""
    def factory(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
        return [("pool", pool(c))] + _mlp(widen * c, spec.hidden, k, spec.dropout)
    return factory


_GLOBAL = {
    "gap": (lambda c: GlobalAvgPool2d(), 1, "global average pooling -> Dense"),
    "gmp": (lambda c: GlobalMaxPool2d(), 1, "global max pooling -> Dense"),
    "gem": (lambda c: GeM(), 1, "generalised-mean pooling (learnable p, starts at 3) -> Dense"),
    "avgmax": (lambda c: AvgMax(), 1, "(global average + global max) / 2 -> Dense"),
    "catavgmax": (lambda c: CatAvgMax(), 2, "[global average, global max] (2C) -> Dense"),
    "attention": (lambda c: AttentionPool2d(c), 1,
                  "a learned query attends over positions (starts as GAP) -> Dense"),
}
for _name, (_pool, _widen, _text) in _GLOBAL.items():
    register_head(_name, _text, exact_cam=_name == "gap")(_global_head(_pool, _widen))


@register_head("flatten", "Flatten (C·H·W) -> Dense; fixed input size", any_size=False)
def _flatten(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    in_features = c * map_size[0] * map_size[1]
    return [("flatten", Flatten())] + _mlp(in_features, spec.hidden, k, spec.dropout)


@register_head("avgpool", "AveragePooling2D (2, strides 2) -> Flatten -> Dense; fixed input size",
               any_size=False, options={"pool_size": 2, "strides": None})
def _avgpool(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    pool = AvgPool2d(spec.options["pool_size"], spec.options["strides"])
    h, w = pool.output_size(map_size)
    layers = [("pool", pool), ("flatten", Flatten())]
    return layers + _mlp(c * h * w, spec.hidden, k, spec.dropout)


@register_head("dense_map", "Dense at every position of the map, class scores averaged over "
                            "positions; equals gap without hidden layers", exact_cam=True)
def _dense_map(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    per_position = nn.Sequential(OrderedDict(_mlp(c, spec.hidden, k, spec.dropout)))
    return [("per_position", PerPosition(per_position)), ("mean", GlobalAvgPool2d())]


@register_head("fastai", "fastai's head: [avg, max] -> BatchNorm -> Dropout -> Dense(512) -> "
                         "ReLU -> BatchNorm -> Dropout -> Dense", hidden=(512,), dropout=0.5)
def _fastai(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    # As fastai's create_head: ps=p gives Dropout(p/2) before each hidden Linear and p before the
    # last; its LinBnDrop drops the Linear bias after a BatchNorm, whose shift makes it redundant.
    p = spec.dropout
    layers: Layers = [("pool", CatAvgMax())]
    widths = [2 * c, *spec.hidden]
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers += [(f"bn{i}", nn.BatchNorm1d(n_in)), (f"drop{i}", nn.Dropout(p / 2)),
                   (f"fc{i}", nn.Linear(n_in, n_out, bias=False)), (f"relu{i}", nn.ReLU())]
    layers += [("bn", nn.BatchNorm1d(widths[-1])), ("drop", nn.Dropout(p)),
               ("fc", nn.Linear(widths[-1], k, bias=False))]
    return layers


# --- token heads (timm's vocabulary: a token backbone only) --------------------------------------

@register_head("token", "the class token (timm global_pool='token') -> Dense", kinds=("tokens",))
def _token(spec: HeadSpec, c: int, k: int, layout: TokenLayout) -> Layers:
    return [("pool", ClassToken(layout))] + _mlp(c, spec.hidden, k, spec.dropout)


@register_head("avg", "the mean of the patch tokens (timm global_pool='avg') -> Dense; without "
                      "an fc_norm, gap on the patch grid, so it trains once with gap",
               kinds=("tokens",))
def _avg(spec: HeadSpec, c: int, k: int, layout: TokenLayout) -> Layers:
    # built as gap on the grid, so that it trains as gap's twin where the backbone has no
    # fc_norm (`create_head` adds the backbone's fc_norm after the pool where it has one)
    return [("grid", PatchGrid(layout)), ("pool", GlobalAvgPool2d())] + _mlp(c, spec.hidden, k,
                                                                            spec.dropout)


@register_head("map", "attention pooling of the patch tokens by a learned latent query, as "
                      "timm's AttentionPoolLatent (global_pool='map') -> Dense",
               kinds=("tokens",))
def _map(spec: HeadSpec, c: int, k: int, layout: TokenLayout) -> Layers:
    return [("pool", LatentAttentionPool(c, layout.prefix))] + _mlp(c, spec.hidden, k,
                                                                  spec.dropout)


@register_head("timm", "the backbone's own head (timm forward_head, pre_logits), pretrained and "
                       "frozen -> Dense; where it is only a pool, the head of that pool",
               own=True)
def _timm(spec: HeadSpec, c: int, k: int, backbone: Any) -> Layers:
    own = _own.own_layers(backbone)
    c, h, w = backbone.feature_shape()
    with torch.no_grad():
        width = nn.Sequential(OrderedDict(own)).eval()(torch.zeros(1, c, h, w)).shape[-1]
    return own + _mlp(width, spec.hidden, k, spec.dropout)


__all__ = ["DEFAULT_HEADS", "NAMED_CLAIMS", "Head", "HeadInfo", "HeadSpec", "NamedClaim",
           "create_head", "head_info", "list_heads", "register_head", "unregister_head"]
