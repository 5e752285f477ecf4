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
from headbench.errors import HeadbenchError
from headbench.layers import (AttentionPool2d, AvgMax, AvgPool2d, CatAvgMax, Flatten, GeM,
                              GlobalAvgPool2d, GlobalMaxPool2d, PerPosition)

DEFAULT_HEADS = ("gap", "flatten", "avgpool", "dense_map", "gmp", "gem", "catavgmax",
                 "attention", "fastai")

Layers = list[tuple[str, nn.Module]]
Factory = Callable[["HeadSpec", int, int, tuple[int, int]], Layers]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    description: str
    fixed_size: bool = False
    hidden: tuple[int, ...] = ()   # the head's own defaults, used when the spec leaves them None
    dropout: float = 0.0


_REGISTRY: dict[str, _Entry] = {}


def register_head(name: str, description: str, fixed_size: bool = False,
                  hidden: tuple[int, ...] = (), dropout: float = 0.0) -> Callable[[Factory], Factory]:
    """Decorator adding `factory(spec, in_channels, num_classes, map_size) -> [(name, layer)]`."""
    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = _Entry(factory, description, fixed_size, tuple(hidden), dropout)
        return factory
    return add


def list_heads() -> list[str]:
    """Names of all registered heads, sorted."""
    return sorted(_REGISTRY)


def describe_head(name: str) -> str:
    """One-line description of a registered head."""
    return _entry(name).description


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise errors.unknown("head", name, _REGISTRY)
    return _REGISTRY[name]


@dataclass
class HeadSpec:
    """What a user chose for a head; serialises to the run folder's JSON.

    `hidden` and `dropout` left as None take the head's defaults (none and 0, except fastai's
    [512] and 0.5), so after construction they are always a tuple and a float.

    Example:
        >>> HeadSpec("gap", hidden=[1024, 512]).label
        'gap[1024,512]'
        >>> HeadSpec("avgpool").label, HeadSpec("avgpool", pool_size=3, strides=1).label
        ('avgpool', 'avgpool3s1')
    """
    name: str
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    pool_size: int = 2
    strides: int | None = None

    def __post_init__(self) -> None:
        entry = _REGISTRY.get(self.name)
        if self.hidden is None:
            self.hidden = entry.hidden if entry else ()
        if self.dropout is None:
            self.dropout = entry.dropout if entry else 0.0
        self.hidden = tuple(int(h) for h in self.hidden)
        self.dropout = float(self.dropout)

    @property
    def label(self) -> str:
        """Short unique name for tables and file names: 'gap[1024,512]', 'avgpool', 'gap-d0.5'."""
        entry = _REGISTRY.get(self.name)
        text = self.name
        if self.name == "avgpool" and (self.pool_size, self.strides or self.pool_size) != (2, 2):
            text += f"{self.pool_size}s{self.strides or self.pool_size}"
        if self.hidden != (entry.hidden if entry else ()):
            text += "[" + ",".join(map(str, self.hidden)) + "]"
        if self.dropout != (entry.dropout if entry else 0.0):
            text += f"-d{self.dropout:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra or "name" not in data:
            problem = f"unknown keys {extra}" if extra else "no 'name'"
            raise HeadbenchError(f"head spec has {problem}; expected keys {sorted(known)}")
        return cls(**data)


class Head(nn.Sequential):
    """A classification head: an ``nn.Sequential`` from feature map (N, C, H, W) to logits (N, K).

    Attributes:
        spec: the HeadSpec it was built from.
        in_channels, num_classes: C and K.
        map_size: the (H, W) it was built for.
        fixed_size: True when only that map size works (flatten, avgpool).
        is_linear_on_pooled: True when the logits are W @ GAP(x) + b (gap and dense_map without
            hidden layers; dropout is off in eval), so class activation maps are exact.

    Example:
        >>> head = create_head("flatten", 512, 10, (7, 7))
        >>> head(torch.zeros(1, 512, 7, 7)).shape
        torch.Size([1, 10])
    """

    def __init__(self, spec: HeadSpec, layers: Layers, in_channels: int, num_classes: int,
                 map_size: tuple[int, int], fixed_size: bool):
        super().__init__(OrderedDict(layers))
        self.spec = spec
        self.in_channels, self.num_classes = in_channels, num_classes
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.fixed_size = fixed_size
        self.is_linear_on_pooled = spec.name in ("gap", "dense_map") and not spec.hidden

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

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled vector the classifier layers see, (N, C) (or (N, 2C) for catavgmax/fastai).

        For dense_map it is GAP(x), the vector its logits are linear in when it has no hidden
        layer. Fixed-size heads pool nothing globally and raise.
        """
        self._check_input(x)
        if self.spec.name == "dense_map":
            return x.mean(dim=(2, 3))
        if self.fixed_size:
            raise HeadbenchError(f"head '{self.spec.name}' has no global pool; pooled() needs "
                                 f"a global-pooling head such as 'gap'")
        return self.pool(x)

    def classifier_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (K, C), b (K,)) with logits = W @ pooled(x) + b, for `is_linear_on_pooled` heads."""
        if not self.is_linear_on_pooled:
            raise HeadbenchError(
                f"head '{self.spec.label}' is not linear in the pooled features; exact class "
                f"maps need 'gap' or 'dense_map' without --hidden")
        fc = self.fc if self.spec.name == "gap" else self.per_position.module.fc
        return fc.weight.detach(), fc.bias.detach()


def create_head(spec: HeadSpec | str, in_channels: int, num_classes: int,
                map_size: tuple[int, int], hidden: Sequence[int] | None = None,
                dropout: float | None = None) -> Head:
    """Build a head by name (or HeadSpec) for a backbone's C×H×W feature map and K classes.

    Args:
        spec: a head name from `list_heads()` or a HeadSpec; with a name, `hidden` and `dropout`
            fill the spec (None: the head's defaults). Ignored when `spec` is a HeadSpec.
        in_channels: C, channels of the feature map.
        num_classes: K ≥ 2.
        map_size: (H, W) of the feature map the head is built for.

    Raises:
        HeadbenchError: unknown name, K < 2, dropout outside [0, 1), a hidden size < 1, or an
            avgpool window larger than the map.

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
    entry = _entry(spec.name)
    map_size = (int(map_size[0]), int(map_size[1]))
    _validate(spec, in_channels, num_classes, map_size)
    layers = entry.factory(spec, in_channels, num_classes, map_size)
    return Head(spec, layers, in_channels, num_classes, map_size, entry.fixed_size)


def _validate(spec: HeadSpec, in_channels: int, num_classes: int,
              map_size: tuple[int, int]) -> None:
    if num_classes < 2:
        raise HeadbenchError(f"a classifier needs at least 2 classes, got {num_classes}; "
                             f"check the class folders of your data")
    if in_channels < 1 or min(map_size) < 1:
        raise HeadbenchError(f"head '{spec.name}' needs a non-empty feature map, got "
                             f"{in_channels} channels of {map_size[0]}×{map_size[1]}")
    if not 0.0 <= spec.dropout < 1.0:
        raise HeadbenchError(f"--dropout must be in [0, 1), got {spec.dropout:g}")
    if any(h < 1 for h in spec.hidden):
        raise HeadbenchError(f"--hidden sizes must be ≥ 1, got {list(spec.hidden)}")
    if spec.pool_size < 1 or (spec.strides is not None and spec.strides < 1):
        raise HeadbenchError(f"--pool-size and --strides must be ≥ 1, got {spec.pool_size} "
                             f"and {spec.strides}")


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
    register_head(_name, _text)(_global_head(_pool, _widen))


@register_head("flatten", "Flatten (C·H·W) -> Dense; fixed input size", fixed_size=True)
def _flatten(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    in_features = c * map_size[0] * map_size[1]
    return [("flatten", Flatten())] + _mlp(in_features, spec.hidden, k, spec.dropout)


@register_head("avgpool", "AveragePooling2D (2, strides 2) -> Flatten -> Dense; fixed input size",
               fixed_size=True)
def _avgpool(spec: HeadSpec, c: int, k: int, map_size: tuple[int, int]) -> Layers:
    pool = AvgPool2d(spec.pool_size, spec.strides)
    try:
        h, w = pool.output_size(map_size)
    except HeadbenchError:
        raise HeadbenchError(
            f"head 'avgpool' pool_size {spec.pool_size} is larger than the "
            f"{map_size[0]}×{map_size[1]} feature map; use a smaller --pool-size or a "
            f"global-pooling head") from None
    layers = [("pool", pool), ("flatten", Flatten())]
    return layers + _mlp(c * h * w, spec.hidden, k, spec.dropout)


@register_head("dense_map", "Dense at every position of the map, class scores averaged over "
                            "positions; equals gap without hidden layers")
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


__all__ = ["DEFAULT_HEADS", "Head", "HeadSpec", "create_head", "describe_head", "list_heads",
           "register_head"]
