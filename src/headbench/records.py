"""What a run records of each step: the dataset, each backbone, each trained head.

`compare` hands every finished head here: it is evaluated once on each split (test included,
once), its costs measured (parameters, FLOPs, latency and throughput, with the backbone's), its
model folder written (`heads/<label>/`: every seed's weights and the best seed's model).
`work` is compare's per-backbone state (the backbone, its features, labels and runtime).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as _data
from . import evaluate as _evaluate
from . import export as _export
from . import finetune as _finetune
from . import progress as _progress
from . import runtime as _runtime
from . import train as _train
from .data import ROLES
from .heads import HeadSpec
from .images import default_workers
from .model import count_flops, count_params
from .own_head import frozen_params
from .results import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics, Predictions,
                      SeedResult, SplitItems, Variant, per_class_of, sweeps_of)
from .run import Run


def evaluate_fit(work: Any, spec: HeadSpec, fit: _train.FitResult, bb: BackboneInfo,
                  label: str, variant: Variant | None) -> tuple[HeadResult, Predictions]:
    """Every seed of one fitted head evaluated once on each split (base views: val and test
    are never augmented, and train metrics stay comparable)."""
    k = len(work.scan.classes)
    seeds, logits, val_hits = [], [], []
    for tr in fit.runs:
        head = work.make_head(spec)
        head.load_state_dict(tr.state_dict)
        metrics = {}
        for role in ROLES:
            out = _train.predict_logits(head, work.F[role], device=work.device)
            metrics[role] = Metrics(**_evaluate.classification_metrics(out, work.y[role], k))
            if role == "test":
                logits.append(out)
            if role == "val":
                val_hits.append(out.argmax(1) == work.y["val"])
        seeds.append(SeedResult(tr.seed, tr.best_epoch, tr.epochs_run, tr.train_time_s,
                                history=tr.history, **metrics))
    predictions = Predictions.of_logits([s.seed for s in seeds], logits, work.y["test"])
    work.selection_correct[label] = np.mean(val_hits, axis=0)
    best = min(fit.runs, key=lambda r: r.best_val_loss).seed  # val, never test
    head = head_result(work, spec, seeds, bb, label, best, fit)
    head.variant = variant
    head.per_class = per_class_of(predictions, best, work.y["test"], work.scan.classes)
    return head, predictions


def backbone_info(work: Any) -> BackboneInfo:
    bb, size = work.backbone, work.backbone.data_config["input_size"][-1]
    cost = latency(bb, (3, size, size), work)
    return BackboneInfo(bb.name, bb.timm_name, bb.weights, bb.weights_checksum, bb.data_config,
                        list(work.map_shape), bb.num_params,
                        count_flops(bb, torch.zeros(1, 3, size, size)),
                        cost["latency_ms_b1"], cost["throughput_b32"],
                        cost["latency_range_ms_b1"])


def head_result(work: Any, spec: HeadSpec, seeds: list[SeedResult], bb: BackboneInfo,
                 label: str, best_seed: int, fit: _train.FitResult) -> HeadResult:
    head = work.make_head(spec)
    c, h, w = work.map_shape
    head_flops = count_flops(head.eval(), torch.zeros(1, c, h, w))
    cost = latency(head, (c, h, w), work)
    params = count_params(head)
    sweep, wd_sweep = sweeps_of(fit)
    return HeadResult(
        head=label, spec=spec, any_size=head.any_size, exact_cam=head.exact_cam,
        head_params=params, total_params=params + frozen_params(head) + bb.params,
        head_flops=head_flops,
        total_flops=bb.flops + head_flops, weight_decay=fit.weight_decay, wd_sweep=wd_sweep,
        lr=fit.lr, sweep=sweep,
        best_seed=best_seed, model_dir=f"heads/{label}", model_size_bytes=None,
        latency_ms_b1=bb.latency_ms_b1 + cost["latency_ms_b1"],
        latency_range_ms_b1=_range_sum(bb.latency_range_ms_b1, cost["latency_range_ms_b1"]),
        latency_other_cores=cost["other_cores"],
        throughput_b32=1.0 / (1.0 / bb.throughput_b32 + 1.0 / cost["throughput_b32"]),
        architecture=str(head), seeds=seeds, summary=HeadSummary.of(seeds),
        backbone=bb.name if work.config.several else None)


def _range_sum(backbone: list[float] | None, head: list[float]) -> list[float] | None:
    """The spread of backbone + head latency: the sums of their quartiles (their calls are
    timed apart, so this is the spread of the sum when their slow calls coincide)."""
    return None if not backbone else [backbone[0] + head[0], backbone[1] + head[1]]


def save_head(work: Any, run: Run, entry: HeadResult, states: dict[int, dict],
               backbone_file: Path | None) -> None:
    """heads/<head>/: every seed's weights and the model of the best seed."""
    head_dir = run.run_dir / entry.model_dir
    for seed, state in states.items():
        _export.save_head_weights(state, head_dir / f"seed{seed}.safetensors")
    head = work.make_head(entry.spec)
    head.load_state_dict(states[entry.best_seed])
    _export.save_model(head_dir, work.backbone, head, run.classes, backbone_file=backbone_file,
                       extra=dict(seed=entry.best_seed, run_dir=up_to_run(entry.model_dir)))
    entry.model_size_bytes = _export.model_size_bytes(head_dir, backbone_file)


def backbone_latencies(works: list, infos: list[BackboneInfo]) -> None:
    """Several backbones: their batch-1 latencies timed again in turns
    (`evaluate.measure_latency_interleaved`), so that the order the verdict puts them in
    (`pairs.latency_classes`) is not decided by a moment the machine was busy with another
    process."""
    shapes = [(3, *w.backbone.data_config["input_size"][1:]) for w in works]
    timed = _evaluate.measure_latency_interleaved(
        [w.backbone for w in works], shapes, device=works[0].device,
        autocast_dtype=works[0].runtime.autocast_dtype("extract"))
    for info, t in zip(infos, timed):
        info.latency_ms_b1, info.latency_range_ms_b1 = (t["ms_per_image"],
                                                        list(t["ms_per_image_range"]))


def latency(module: torch.nn.Module, shape: tuple, work: Any) -> dict:
    """Latency at batch 1 (median and interquartile range of the timed calls) and throughput
    at batch 32, with the precision used for extraction, and the cores other processes used
    meanwhile (`runtime.load_elsewhere`)."""
    with _runtime.load_elsewhere() as load:
        m = _evaluate.measure_latency(module, shape, device=work.device, batch_sizes=(1, 32),
                                      autocast_dtype=work.runtime.autocast_dtype("extract"),
                                      channels_last=True)
    return dict(latency_ms_b1=m[1]["ms_per_image"], throughput_b32=m[32]["images_per_s"],
                latency_range_ms_b1=list(m[1]["ms_per_image_range"]),
                other_cores=load.get("other_cores"))


def dataset_info(work: Any) -> DatasetInfo:
    scan, splits = work.scan, work.splits
    leakage = _data.find_leakage(scan, splits)
    if leakage:
        _progress.warn(f"{len(leakage)} byte-identical files appear in more than one split "
                       "(leakage; listed in results.json)")
    skipped = [(_rel(p, scan.root), r) for p, r in scan.skipped]
    skipped += [(_rel(scan.items[i].path, scan.root), r)
                for i, r in sorted(work.features.failures.items())]
    split_items = {}
    for role in ROLES:
        items = [scan.items[i] for i in getattr(splits, role)]
        split_items[role] = SplitItems([_rel(it.path, scan.root) for it in items], work.y[role],
                                       [it.digest for it in items])
    return DatasetInfo(
        root=str(scan.root), name=scan.root.name, layout=scan.layout, classes=scan.classes,
        split_description=splits.description, counts=splits.counts(),
        leakage=[dict(digest=leak["digest"],
                      roles={r: [_rel(p, scan.root) for p in paths]
                             for r, paths in leak["roles"].items()}) for leak in leakage],
        skipped=skipped, splits=split_items, links_outside=scan.links_outside,
        follow_links=scan.follow_links)


def _rel(path: Path, root: Path) -> str:
    try:  # no resolve(): a symlink is listed where it lies, not where it points
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def finetuned_result(work: Any, run: Run, base: HeadResult, label: str,
                      result: "_finetune.FinetuneResult", images: dict
                      ) -> tuple[HeadResult, Predictions, dict]:
    """The fine-tuned model evaluated once per split, its model folder written."""
    model, k = result.model, len(run.classes)
    logits = {role: _finetune.logits_of(model, images[role], work.device, work.runtime.finetune,
                                        workers(work)) for role in ROLES}
    metrics = {role: Metrics(**_evaluate.classification_metrics(logits[role], work.y[role], k))
               for role in ROLES}
    work.selection_correct[label] = (logits["val"].argmax(1) == work.y["val"]).astype(np.float64)
    seed = work.config.finetune_config().seed
    seeds = [SeedResult(seed, result.best_epoch, result.epochs_run, result.train_time_s,
                        history=result.history, **metrics)]
    predictions = Predictions.of_logits([seed], [logits["test"]], work.y["test"])
    entry = dataclasses.replace(
        base, head=label, model_dir=f"heads/{label}", best_seed=seed, wd_sweep={}, sweep={},
        seeds=seeds, per_class=per_class_of(predictions, seed, work.y["test"], run.classes),
        summary=HeadSummary.of(seeds),
        variant=Variant("finetune", base.head, from_seed=base.best_seed,
                        settings=dict(work.config.finetune_config().to_dict(),
                                      precision=work.runtime.finetune),
                        resumed_from=result.resumed_from))
    states = {seed: {k: v.cpu() for k, v in model.head.state_dict().items()}}
    entry.model_size_bytes = _finetune.save_finetuned(run.run_dir / entry.model_dir, model,
                                                    run.classes, seed,
                                                    up_to_run(entry.model_dir))
    return entry, predictions, states


def up_to_run(model_dir: str) -> str:
    """The run folder relative to a model folder: '../..' from heads/<head>, '../../..' from
    heads/<backbone>/<head>."""
    return "/".join([".."] * (model_dir.count("/") + 1))


def workers(work: Any) -> int:
    """Image decoding processes: the option, else from the CPU count."""
    return default_workers() if work.config.workers is None else work.config.workers


__all__ = ["backbone_info", "backbone_latencies", "dataset_info", "evaluate_fit", "finetuned_result", "head_result",
           "latency", "save_head", "up_to_run", "workers"]
