"""Several backbones in one run: which heads each accepts, the pairs' labels, what 'cheapest'
means across backbones, and the Pareto front of accuracy against cost.

A run of several backbones (`--backbone resnet50,mobilenet,vgg16`) trains every head on every
backbone that accepts it, from one scan and the same splits. Each (backbone, head) *pair* is one
entry of the run, labelled '<backbone>/<head>' (its model folder `heads/<backbone>/<head>/`);
a run of one backbone keeps plain head labels.

Across backbones the backbone's cost dominates: the recommendation (`verdict`) orders pairs by
the backbone's median batch-1 latency measured on this machine, backbones whose timed calls
overlap counting as tied (`latency_classes`) and ordered by total parameters, then by the head's
parameters and FLOPs.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from . import progress
from .errors import HeadbenchError
from .heads import HeadSpec, create_head
from .verdict import cost as verdict_cost


def label(backbone: str, head: str, several: bool) -> str:
    """The run's label of a pair: '<backbone>/<head>' in a run of several backbones."""
    return f"{backbone}/{head}" if several else head


def accepted_heads(specs: Sequence[HeadSpec], backbones: Sequence[Any]
                   ) -> tuple[dict[str, list[HeadSpec]], list[dict[str, str]]]:
    """({backbone name: the heads it accepts}, [skipped pairs with the reason]). With one
    backbone a head that does not fit its map is an error (the head's own line); with several,
    only a head that fits no backbone is."""
    accepted: dict[str, list[HeadSpec]] = {bb.name: [] for bb in backbones}
    skipped, errors = [], {}
    for spec in specs:
        for bb in backbones:
            c, h, w = bb.feature_shape()
            try:
                if bb.kind not in spec.info.kinds:
                    raise HeadbenchError(f"head '{spec.label}' needs a token backbone (a ViT); "
                                         f"{bb.name} gives a feature map", param="heads")
                create_head(spec, c, 2, (h, w), backbone=bb)
            except HeadbenchError as e:
                if len(backbones) == 1:
                    raise
                skipped.append(dict(backbone=bb.name, head=spec.label, reason=str(e)))
                errors[spec.label] = e
                continue
            accepted[bb.name].append(spec)
        if not any(spec in heads for heads in accepted.values()):
            raise HeadbenchError(f"head '{spec.label}' fits none of the backbones "
                                 f"({errors[spec.label]}); drop it from the heads",
                                 param="heads") from None
    for s in skipped:
        progress.warn(f"skipped {s['backbone']}/{s['head']}: {s['reason']}")
    return accepted, skipped


def latency_classes(backbones: Sequence[Any]) -> dict[str, int]:
    """Backbone name -> its latency class: backbones in order of median batch-1 latency, a
    backbone tied with the fastest of the class before it when their timed calls overlap
    (its first quartile no slower than that one's third: `BackboneInfo.latency_range_ms_b1`);
    runs without the spread tie none."""
    order = sorted(backbones, key=lambda b: b.latency_ms_b1)
    classes, leader, rank = {}, None, -1
    for bb in order:
        spread = bb.latency_range_ms_b1
        if leader is None or not spread or not leader.latency_range_ms_b1 or \
                spread[0] > leader.latency_range_ms_b1[1]:
            leader, rank = bb, rank + 1
        classes[bb.name] = rank
    return classes


RULE = ("one standard error (Breiman): the cheapest pair whose selection score is within one "
        "standard error of the best; cheapest: the backbone's median batch-1 latency on this "
        "machine (backbones whose timed calls overlap tie, then fewer total parameters), then "
        "head parameters, then head FLOPs")


def cost_of(run: Any) -> Callable[[Any], tuple]:
    """What 'cheapest' orders a run's heads by: with several backbones (latency class, total
    parameters, head parameters, head FLOPs), else `verdict.cost`."""
    if not run.backbones:
        return verdict_cost
    classes = latency_classes(run.backbones)
    return lambda h: (classes[h.backbone], h.total_params, h.head_params, h.head_flops)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """The labels of the points (label, cost, accuracy) no other point beats: none both as
    cheap or cheaper and as accurate or more, and strictly one of them (equal points are both
    on it). Cheapest first."""
    front = []
    for name, cost, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if not front or acc > front[-1][2] or (acc, cost) == front[-1][2:0:-1]:
            front.append((name, cost, acc))
    return [name for name, _, _ in front]


__all__ = ["RULE", "accepted_heads", "cost_of", "label", "latency_classes", "pareto_front"]
