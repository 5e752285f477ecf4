"""`headbench explain`: the worked pooling examples users meet, computed live by headbench's layers,
and the parameter arithmetic of GAP and Flatten heads on a backbone."""
from __future__ import annotations

import torch

from .layers import AvgPool2d, GlobalAvgPool2d
from .model import param_table


def _fmt(t: torch.Tensor) -> str:
    return str(t.tolist()).replace(".0,", ".,").replace(".0]", ".]")


def pooling_examples() -> list[tuple[str, str]]:
    """(expression, result) pairs for the classic 3×3 example, computed by the layers."""
    x = torch.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # channels_last, one channel: 1..9
    two = torch.stack([torch.arange(1.0, 10.0), torch.arange(10.0, 19.0)], dim=-1).reshape(1, 3, 3, 2)
    cl = dict(data_format="channels_last")
    return [
        ("x = [[1,2,3],[4,5,6],[7,8,9]] as (1,3,3,1) channels_last", ""),
        ("AvgPool2d(2, strides=1)(x).shape", str(tuple(AvgPool2d(2, strides=1, **cl)(x).shape))),
        ("AvgPool2d(2, strides=1)(x)", _fmt(AvgPool2d(2, strides=1, **cl)(x)[..., 0])),
        ("AvgPool2d(2, strides=3)(x)", _fmt(AvgPool2d(2, strides=3, **cl)(x))),
        ("AvgPool2d(3, strides=2)(x)", _fmt(AvgPool2d(3, strides=2, **cl)(x))),
        ("GlobalAvgPool2d()(x)", _fmt(GlobalAvgPool2d(**cl)(x))),
        ("GlobalAvgPool2d(keepdims=True)(x).shape",
         str(tuple(GlobalAvgPool2d(keepdims=True, **cl)(x).shape))),
        ("GlobalAvgPool2d()(3×3 map, channel 1 = 1..9, channel 2 = 10..18)",
         _fmt(GlobalAvgPool2d(**cl)(two)[0])),
    ]


def head_arithmetic(backbone: str, num_classes: int, hidden: tuple[int, ...],
                    input_size: int) -> list[str]:
    """The parameter count of flatten and gap heads on `backbone`, written out term by term."""
    rows = param_table(backbone, num_classes, heads=("flatten", "gap"), hidden=hidden or None,
                       input_size=input_size)  # built on the meta device: no weights allocated
    c, h, w = (int(v) for v in rows[0]["feature_map"].split("×"))
    lines = [f"{backbone} at {input_size}×{input_size} px outputs a {c}×{h}×{w} feature map."]
    inputs = {"flatten": (c * h * w, f"{c}·{h}·{w} = {c * h * w:,} inputs"),  # every position
              "gap": (c, f"{c} inputs (one per channel)")}                     # one per channel
    for row, (name, (width, what)) in zip(rows, inputs.items()):
        sizes = [width, *hidden, num_classes]
        terms = [f"{a}·{b} + {b}" for a, b in zip(sizes, sizes[1:])]
        lines.append(f"  {name:<8} {what}: {' + '.join(terms)} = {row['head_params']:,} parameters")
    return lines


ACCOUNT = """\
What each head keeps
  GlobalAveragePooling2D (gap) keeps one number per channel: the mean of that channel over all
  positions. It discards where a feature fired, so the head is invariant to where an object sits
  (up to the backbone's own stride effects) and accepts any input size: a 7×7 or a 10×10 map
  both become C numbers. Its Dense layer has C·K weights.
  Flatten keeps every position of every channel (C·H·W numbers), so the head can use where a
  feature fired, but it is built for one map size (one input size) and its first Dense layer has
  H·W times as many weights as gap's: more capacity, more to overfit on small data.
  Whether that trade pays off on your images is an empirical question: `headbench compare`
  measures it (accuracy ± CI over seeds, train − test gap, translation and size robustness)."""


def explain_text(backbone: str = "resnet50", num_classes: int = 10, hidden: tuple[int, ...] = (1024,),
                 input_size: int = 224) -> str:
    examples = pooling_examples()
    width = max(len(e) for e, _ in examples)
    parts = ["Worked pooling examples (computed now by headbench.layers)"]
    parts += [f"  {e:<{width}}  {r}".rstrip() for e, r in examples]
    parts += ["", f"Parameter arithmetic ({num_classes} classes"
              + (f", hidden {', '.join(map(str, hidden))}" if hidden else "") + ")"]
    parts += head_arithmetic(backbone, num_classes, hidden, input_size)
    return "\n".join(parts + ["", ACCOUNT])
