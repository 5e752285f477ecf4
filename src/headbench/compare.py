"""The main job: every head trained and compared on an image folder from one cached backbone pass.

One `compare(data, **options)` call:
1. `CompareConfig(data, **options)` checks every option, `check_paths()` the disk side; the
   backbone is built and every head built once on its feature map (a head option that cannot
   fit the map fails here): nothing has been hashed or extracted yet.
2. the run folder: the newest incomplete run of the same options (resumed), else a new one
   marked incomplete; its lock is held until the end.
3. scan the folder (hash every file), run the backbone once per image into the feature cache,
   make the train / val / test splits.
4. train every head on the cached features (several seeds, the learning rate chosen on val),
   evaluate each seed once on every split and commit the head (weights, model, run tables)
   before the next one starts; heads an interrupted run already finished are reused. With a
   small val split, cross-validate every head over train + val (`selection`).
5. recommend a head on the selection data (`verdict.recommend`), run the requested analyses
   (imported only then), the findings, the verdict's sentence, the report; mark the run
   complete.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import backbones as _backbones
from . import data as _data
from . import distributed as _distributed
from . import evaluate as _evaluate
from . import export as _export
from . import features as _features
from . import finetune as _finetune
from . import io as _io
from . import layers as _layers
from . import progress as _progress
from . import run as _run
from . import selection as _selection
from . import train as _train
from . import verdict as _verdict
from .analyses import RunContext, run_analyses
from .analyses.findings import findings
from .config import CompareConfig
from .errors import DiskError, HeadbenchError
from .heads import Head, HeadSpec, create_head
from .images import default_workers
from .model import HeadbenchModel, count_flops, count_params
from .runtime import Runtime
from .data import ROLES
from .results import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics, Predictions,
                      SeedResult, SplitItems, Timing, Variant, sweeps_of)
from .report import write_report
from .run import Run, default_run_name, mark_complete, run_folder


@dataclass
class _Work:
    """What compare holds in memory between its steps."""

    config: CompareConfig
    backbone: _backbones.Backbone
    runtime: Runtime   # the device and each stage's precision, decided once
    scan: _data.Scan
    splits: _data.Splits
    features: _features.FeatureSet
    F: dict            # role -> train.Features, read once and shared by every head
    y: dict            # role -> labels
    selection: str = "val"  # what the verdict scores heads on: "val" or "cv" (`selection.py`)
    # head -> per-image accuracy on the selection data (val, averaged over its seeds; or every
    # train + val image from the fold that held it out)
    selection_correct: dict = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the backbone's feature map (the cache may hold only its statistics)."""
        return tuple(self.features.meta.get("map_shape") or self.features.shape)

    def make_head(self, spec: HeadSpec) -> Head:
        c, h, w = self.map_shape
        return create_head(spec, c, len(self.scan.classes), (h, w))


def compare(data: str | Path | CompareConfig, **options) -> Run | None:
    """Train and compare classification heads on the image folder `data`.

    `options` are the fields of `CompareConfig` (or pass a CompareConfig as `data`). Selection
    (early stopping, weight decay, best seed, the recommended head) uses the val split only;
    the test split is evaluated once per trained head. Returns the `Run`, also written to
    `<out>/runs/<date>-<dataset>-<backbone>/`.

    Every head is committed to the run folder as soon as its seeds are trained. Run the same
    command again after a kill, Ctrl-C or a disk error and it resumes the newest incomplete run
    of the same options: finished heads are reused (when the features are the same), the rest
    are trained. A complete run is never modified; a rerun of it makes a new one.

    Under `torchrun` with several processes every rank calls this; they share the extraction
    and the fine-tuning (`distributed`), rank 0 does the rest and returns the Run, the other
    ranks return None.

    Example:
        >>> run = compare("images", heads=["gap", "flatten"], seeds=3)   # doctest: +SKIP
        >>> run.best_head, run.head("gap").summary.test_accuracy.mean    # doctest: +SKIP
    """
    started = time.perf_counter()
    config = _config(data, options)
    config.check_paths()
    _distributed.init()
    t0 = time.perf_counter()
    bb = _backbones.create_backbone(config.backbone, config.weights, config.input_size)
    rt = Runtime.resolve(config.precision, head_precision=config.head_precision)
    _check_heads(config, bb)  # every head fits this backbone's map, before any file is read
    timing = Timing(backbone_s=time.perf_counter() - t0)
    digest = config.digest(weights_checksum=bb.weights_checksum, precision=rt.extract)
    if not _distributed.is_main():
        return _follow(config, bb, rt, timing)
    committed: list[str] = []
    try:
        with run_folder(config.out, config.run_name or default_run_name(config.data, config.backbone),
                        digest, resume=not config.restart) as run_dir:
            run = _compare(config, bb, rt, timing, run_dir, digest, committed)
            _distributed.leave()  # the rest is rank 0's alone
            _finish(run, bb, rt.device, started)
            mark_complete(run_dir)
            return run
    except OSError as e:
        raise DiskError(_disk_error(e, committed)) from None


def _follow(config: CompareConfig, bb, rt: Runtime, timing: Timing) -> None:
    """A rank other than 0 under torchrun: its part of every extraction, in the order rank 0
    runs them, and of every fine-tuning; rank 0 trains the heads, writes the run, returns it."""
    work = _prepare(config, bb, rt, timing)
    if config.aug_views:
        _augmented_views(work)
    if config.finetune:
        _finetune_heads(work, None, [])
    _distributed.leave()


def _compare(config: CompareConfig, bb, rt: Runtime, timing: Timing, run_dir: Path,
             digest: str, committed: list[str]) -> Run:
    """Prepare the features, then train and commit every head (reusing finished ones)."""
    work = _prepare(config, bb, rt, timing)
    run = Run(options=config, dataset=_dataset_info(work), backbone=_backbone_info(work),
              precision=rt.extract, device=str(rt.device), train_config=config.train_config(),
              timing=timing, options_digest=digest, feature_digest=_feature_digest(work),
              run_dir=run_dir)
    pool_bytes = 4 * int(np.prod(work.features.shape)) * (len(work.y["train"]) + len(work.y["val"]))
    work.selection, why = _selection.mode(config.selection, work.y["val"], len(work.scan.classes),
                                          bool(config.aug_views or config.finetune), pool_bytes)
    _progress.log(f"selection: {_selection.DESCRIPTION[work.selection]} ({why})")
    prior = _run.finished_heads(run)
    backbone_file = _export.save_backbone_if_needed(bb, run_dir)
    for label, (head, predictions, states) in prior.items():
        _commit(run, head, predictions, states, committed, save=False)
        if not head.finetuned and work.selection == "val":  # fine-tuned: val from its mean
            work.selection_correct[label] = _selection.per_image_correct(
                lambda spec=head.spec: work.make_head(spec), states, work.F["val"], work.y["val"],
                work.device)
    # the frozen heads, then (with aug_views) the same heads on the augmented views
    passes = [(s.label, s, None) for s in config.heads if s.label not in prior]
    if config.aug_views:
        passes += [(aug_label(s.label, config.aug_views), s, Variant("aug", s.label,
                                                                     aug_views=config.aug_views))
                   for s in config.heads if aug_label(s.label, config.aug_views) not in prior]
    todo = {label: (spec, variant) for label, spec, variant in passes}
    members = _run.load_members(run_dir, run.feature_digest)
    done = {m: r for m, r in members.items() if m.head in todo and m.fold is None}
    if done:
        _progress.log(f"reusing {len(done)} finished training run(s) of the interrupted run")

    def on_fit(label: str, fit: _train.FitResult) -> None:
        started = time.perf_counter()
        spec, variant = todo[label]
        head, predictions = _evaluate_fit(work, spec, fit, run.backbone, label, variant)
        states = {tr.seed: tr.state_dict for tr in fit.runs}
        _save_head(work, run, head, states, backbone_file)
        _commit(run, head, predictions, states, committed)
        timing.evaluate_s += time.perf_counter() - started

    def on_member(member: _train.Member, result: _train.TrainResult) -> None:
        started = time.perf_counter()
        _run.save_member(run_dir, member, result, run.feature_digest)
        timing.evaluate_s += time.perf_counter() - started

    t0 = time.perf_counter()
    views = _augmented_views(work) if config.aug_views else None  # on every rank, always
    timing.extract_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    # the stacks' state, saved at epoch ends so that a kill loses little (`train.checkpoint`)
    checkpoints = _train.Checkpoints(run_dir / _run.MEMBERS, tag=run.feature_digest)
    train_config = dataclasses.replace(config.train_config(), precision=rt.heads)  # resolved
    folds = (_selection.FOLDS * _selection.REPEATS * len(config.heads)
             if work.selection == "cv" else 0)
    total = config.epochs * (len(todo) * _runs_per_head(config) - len(done) + folds)
    with _progress.progress("training heads", total=total, unit="epoch") as bar:
        for variant in (False, True):
            labels = {label: spec for label, (spec, v) in todo.items() if bool(v) == variant}
            if not labels:
                continue
            X_train = views if variant else work.F["train"]
            _train.fit_heads({label: (lambda spec=spec: work.make_head(spec))
                              for label, spec in labels.items()},
                             X_train, work.y["train"], work.F["val"], work.y["val"],
                             train_config, seeds=list(range(config.seeds)), done=done,
                             on_member=on_member, on_fit=on_fit, on_epochs=bar.advance,
                             checkpoints=checkpoints)
        if work.selection == "cv":
            work.selection_correct = _cross_validate(work, run, train_config, members,
                                                     on_member, bar.advance, checkpoints)
    # fit_heads calls on_fit / on_member as members finish: their time is evaluate_s
    timing.train_s = time.perf_counter() - t0 - timing.evaluate_s
    _sort_heads(run)
    run.save()
    _run.drop_members(run_dir)  # every head is committed: its training runs are not needed
    if config.finetune:
        _finetune_heads(work, run, committed)
        _sort_heads(run)
    # on the selection data, never on test
    run.verdict = _verdict.recommend(run.heads, work.selection_correct, work.selection)
    run.best_head = run.verdict.recommended
    return run


def _cross_validate(work: _Work, run: Run, train_config: _train.TrainConfig, members: dict,
                    on_member, on_epochs, checkpoints) -> dict[str, np.ndarray]:
    """Every frozen head's correctness on every train + val image from the fold that held it out
    (`selection.cross_validate`); folds an interrupted run finished (`members`) are reused."""
    index = np.concatenate([work.splits.train, work.splits.val])
    pool = _train.Features.joined(work.features.subset(index), [work.F["train"], work.F["val"]],
                                  work.device)
    y = np.concatenate([work.y["train"], work.y["val"]])
    heads = {h.head: h for h in run.heads}
    make = {label: (lambda spec=h.spec: work.make_head(spec)) for label, h in heads.items()}
    chosen = {label: (h.lr, h.weight_decay) for label, h in heads.items()}
    done = {m: r for m, r in members.items() if m.fold is not None}
    return _selection.cross_validate(make, chosen, pool, y, train_config, work.config.split_seed,
                                     done=done, on_member=on_member, on_epochs=on_epochs,
                                     checkpoints=checkpoints)


def aug_label(label: str, views: int) -> str:
    """The label of head `label` trained on `views` cached augmented views."""
    return f"{label}+aug{views}"


def _sort_heads(run: Run) -> None:
    """The options' order, each head's variants right after it (augmented, fine-tuned)."""
    order = [s.label for s in run.options.heads]
    kinds = [None, "aug", "finetune"]

    def key(h: HeadResult) -> tuple[int, int]:  # a variant keeps its frozen head's spec
        return order.index(h.spec.label), kinds.index(h.variant.kind if h.variant else None)
    run.heads.sort(key=key)


def _augmented_views(work: _Work) -> "_train.Views":
    """The training images' cached augmented views (extracted where missing), as one
    training set from which each epoch draws one view per image."""
    idx = work.splits.train
    paths = [work.scan.items[i].path for i in idx]
    digests = [work.scan.items[i].digest for i in idx]
    sets = _features.extract_views(work.backbone, paths, digests, work.config.aug_views,
                                   precision=work.runtime.extract, cache_dir=work.config.cache_dir,
                                   workers=work.config.workers, device=work.device,
                                   form=work.features.form)
    lost = sorted({i for fs in sets for i in fs.failures})
    if lost:  # the file decoded for the base view: it changed or broke since
        raise HeadbenchError(f"training image '{paths[lost[0]]}' could not be decoded for its "
                             "augmented views; fix or remove it and rerun")
    return _train.Views([fs.subset(np.arange(len(idx))) for fs in sets])


def _finetune_heads(work: _Work, run: Run | None, committed: list[str]) -> None:
    """Fine-tune the best `finetune_top` frozen heads by val accuracy (each from its best seed)
    and commit each as `<head>+ft`; a fine-tuning an interrupted run began resumes from its
    checkpoint. Under torchrun every rank trains (`run` is rank 0's; other ranks pass None and
    are sent the work); rank 0 evaluates and commits."""
    fcfg = work.config.finetune_config()
    images = {role: _images(work, role) for role in ROLES}
    for base, state, checkpoint, key in _distributed.from_main(lambda: _finetune_jobs(run)):
        label = f"{base.head}+ft"
        head = work.make_head(base.spec)
        head.load_state_dict(state)
        model = HeadbenchModel(copy.deepcopy(work.backbone), head,
                               class_names=work.scan.classes, freeze=False)
        if _distributed.is_main():
            _log_estimate(model, images["train"], fcfg, base, work)
        result = _finetune.finetune(model, images["train"], images["val"], fcfg,
                                    base.weight_decay, checkpoint, device=work.device,
                                    precision=work.runtime.finetune, workers=_workers(work),
                                    label=label, key=key)
        if _distributed.is_main():
            entry, predictions, states = _finetuned_result(work, run, base, label, result,
                                                           images)
            _commit(run, entry, predictions, states, committed)
            checkpoint.unlink(missing_ok=True)  # the committed head replaces it


def _finetune_jobs(run: Run) -> list[tuple[HeadResult, dict, Path, str]]:
    """(frozen head, its best seed's weights, checkpoint, checkpoint key) of each head to
    fine-tune: the best `finetune_top` by val accuracy not fine-tuned by an interrupted run."""
    frozen = [h for h in run.heads if not h.finetuned]
    ranked = []
    while frozen and len(ranked) < run.options.finetune_top:  # select_head's order: val only
        ranked.append(_evaluate.select_head(frozen))
        frozen.remove(ranked[-1])
    return [(base, run.states[base.head][base.best_seed],
             run.run_dir / "heads" / f"{base.head}+ft" / _finetune.CHECKPOINT,
             f"{run.feature_digest}|{base.best_seed}")
            for base in ranked if not any(h.head == f"{base.head}+ft" for h in run.heads)]


def _images(work: _Work, role: str) -> _finetune.Images:
    items = [work.scan.items[i] for i in getattr(work.splits, role)]
    return _finetune.Images([it.path for it in items], [it.digest for it in items], work.y[role])


def _workers(work: _Work) -> int:
    return default_workers() if work.config.workers is None else work.config.workers


def _log_estimate(model: HeadbenchModel, train: _finetune.Images, fcfg, base: HeadResult,
                  work: _Work) -> None:
    rate = _finetune.measure_throughput(model, train, fcfg, base.weight_decay, work.device,
                                        work.runtime.finetune)
    seconds = len(train) * fcfg.epochs / rate
    _progress.log(f"fine-tuning {base.head} (seed {base.best_seed}, unfreeze {fcfg.unfreeze}, "
                  f"BatchNorm {fcfg.bn}, {work.runtime.finetune}): {len(train)} images × up to {fcfg.epochs} epochs at "
                  f"{rate:.1f} img/s measured ≈ {seconds / 60:.1f} min at most, plus validation")


def _finetuned_result(work: _Work, run: Run, base: HeadResult, label: str,
                      result: "_finetune.FinetuneResult", images: dict
                      ) -> tuple[HeadResult, Predictions, dict]:
    """The fine-tuned model evaluated once per split, its model folder written."""
    model, k = result.model, len(run.classes)
    logits = {role: _finetune.logits_of(model, images[role], work.device, work.runtime.finetune,
                                        _workers(work)) for role in ROLES}
    metrics = {role: Metrics(**_evaluate.classification_metrics(logits[role], work.y[role], k))
               for role in ROLES}
    work.selection_correct[label] = (logits["val"].argmax(1) == work.y["val"]).astype(np.float64)
    seed = work.config.finetune_config().seed
    seeds = [SeedResult(seed, result.best_epoch, result.epochs_run, result.train_time_s,
                        history=result.history, **metrics)]
    entry = dataclasses.replace(
        base, head=label, model_dir=f"heads/{label}", best_seed=seed, wd_sweep={}, sweep={},
        seeds=seeds,
        summary=HeadSummary.of(seeds),
        variant=Variant("finetune", base.head, from_seed=base.best_seed,
                        settings=dict(work.config.finetune_config().to_dict(),
                                      precision=work.runtime.finetune),
                        resumed_from=result.resumed_from))
    states = {seed: {k: v.cpu() for k, v in model.head.state_dict().items()}}
    entry.model_size_bytes = _finetune.save_finetuned(run.run_dir / entry.model_dir, model,
                                                    run.classes, seed)
    predictions = Predictions.of_logits([seed], [logits["test"]], work.y["test"])
    return entry, predictions, states


def _commit(run: Run, head: HeadResult, predictions: Predictions, states: dict,
            committed: list[str], save: bool = True) -> None:
    """Add a finished head to the run and write the run: it is on disk from now on."""
    run.heads.append(head)
    run.predictions[head.head] = predictions
    run.states[head.head] = states
    if save:
        run.save()
    committed.append(head.head)


def _runs_per_head(config: CompareConfig) -> int:
    return len(config.lr) * len(config.weight_decays) + config.seeds - 1


def _disk_error(e: OSError, committed: list[str]) -> str:
    """One line: which file, why, what was kept, what to do."""
    kept = (f"finished heads {', '.join(committed)} are kept in the run folder"
            if committed else "extracted features are kept in the cache")
    return (f"{_io.os_error_text(e)}; {kept}: free space or fix the folder, then rerun the same "
            "command to resume")


def _config(data, options: dict) -> CompareConfig:
    if isinstance(data, CompareConfig):
        if options:
            raise HeadbenchError("pass either a CompareConfig or options, not both")
        return data
    return CompareConfig(str(data), **options)


def _check_heads(config: CompareConfig, bb: _backbones.Backbone) -> None:
    c, h, w = bb.feature_shape()
    for spec in config.heads:
        create_head(spec, c, 2, (h, w))


# ----------------------------------------------------------------------------------------------
# steps

def _prepare(config: CompareConfig, bb, rt: Runtime, timing: Timing) -> _Work:
    """Scan, extract (or reuse) features, split."""
    t0 = time.perf_counter()
    scan = _distributed.from_main(lambda: _data.scan_folder(config.data,
                                                            follow_links=config.follow_links))
    _progress.log(f"{len(scan.items)} images in {len(scan.classes)} classes under {scan.root}"
                  + (f"; {len(scan.skipped)} files skipped" if scan.skipped else ""))
    if scan.links_outside:
        _progress.log(f"{scan.links_outside} symlinks lead out of the data folder: "
                      + ("followed (--follow-links)" if scan.follow_links else
                         "skipped and listed in skipped.csv (--follow-links uses them)"))
    timing.scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths, digests = [it.path for it in scan.items], [it.digest for it in scan.items]
    form = _distributed.from_main(lambda: _cache_form(config, bb, digests, rt.extract))
    fs = _features.extract(bb, paths, digests, precision=rt.extract, cache_dir=config.cache_dir,
                           workers=config.workers, device=rt.device, form=form)
    timing.extract_s, timing.n_extracted = time.perf_counter() - t0, fs.n_extracted
    if fs.failures:
        _progress.warn(f"{len(fs.failures)} images could not be decoded and are skipped "
                       "(listed in skipped.csv)")
    splits = _data.make_splits(scan, fs.valid, val_fraction=config.val_fraction,
                               split=config.split, seed=config.split_seed)
    _data.log_splits(scan, splits)
    _data.warn_thin(scan, splits, bb.feature_shape(), bb.data_config["input_size"][-1])
    F, y = {}, {}
    for role in ROLES:
        idx = getattr(splits, role)
        F[role] = _train.Features(fs.subset(idx), rt.device)  # lazy rows of the memory maps
        y[role] = np.array([scan.items[i].label for i in idx], dtype=np.int64)
    return _Work(config, bb, rt, scan, splits, fs, F, y)


def _cache_form(config: CompareConfig, bb, digests: list[str],
                precision: str) -> tuple[str, ...] | None:
    """The global statistics to cache when every head needs only those and no analysis needs
    the maps; None (maps) otherwise, or when the maps of every image are cached already."""
    if config.requested():
        return None
    c, h, w = bb.feature_shape()
    needed = set()
    for spec in config.heads:
        stats = create_head(spec, c, 2, (h, w)).training_split().stats
        if not stats:
            return None
        needed.update(stats)
    if _features.is_cached(bb, digests, precision=precision, cache_dir=config.cache_dir):
        return None
    return tuple(name for name in _layers.STATS if name in needed)


def _evaluate_fit(work: _Work, spec: HeadSpec, fit: _train.FitResult, bb: BackboneInfo,
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
    head = _head_result(work, spec, seeds, bb, label, best, fit)
    head.variant = variant
    return head, predictions



def _backbone_info(work: _Work) -> BackboneInfo:
    bb, size = work.backbone, work.backbone.data_config["input_size"][-1]
    cost = _latency(bb, (3, size, size), work)
    return BackboneInfo(bb.name, bb.timm_name, bb.weights, bb.weights_checksum, bb.data_config,
                        list(work.map_shape), count_params(bb),
                        count_flops(bb, torch.zeros(1, 3, size, size)),
                        cost["latency_ms_b1"], cost["throughput_b32"])


def _feature_digest(work: _Work) -> str:
    """The cache entry and the images of every split, in order: equal digests, equal features."""
    text = work.features.key + "".join(
        f"|{role}:" + ",".join(work.scan.items[i].digest for i in getattr(work.splits, role))
        for role in ROLES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _head_result(work: _Work, spec: HeadSpec, seeds: list[SeedResult], bb: BackboneInfo,
                 label: str, best_seed: int, fit: _train.FitResult) -> HeadResult:
    head = work.make_head(spec)
    c, h, w = work.map_shape
    head_flops = count_flops(head.eval(), torch.zeros(1, c, h, w))
    cost = _latency(head, (c, h, w), work)
    params = count_params(head)
    sweep, wd_sweep = sweeps_of(fit)
    return HeadResult(
        head=label, spec=spec, any_size=head.any_size, exact_cam=head.exact_cam,
        head_params=params, total_params=params + bb.params, head_flops=head_flops,
        total_flops=bb.flops + head_flops, weight_decay=fit.weight_decay, wd_sweep=wd_sweep,
        lr=fit.lr, sweep=sweep,
        best_seed=best_seed, model_dir=f"heads/{label}", model_size_bytes=None,
        latency_ms_b1=bb.latency_ms_b1 + cost["latency_ms_b1"],
        throughput_b32=1.0 / (1.0 / bb.throughput_b32 + 1.0 / cost["throughput_b32"]),
        architecture=str(head), seeds=seeds, summary=HeadSummary.of(seeds))


def _save_head(work: _Work, run: Run, entry: HeadResult, states: dict[int, dict],
               backbone_file: Path | None) -> None:
    """heads/<head>/: every seed's weights and the model of the best seed."""
    head_dir = run.run_dir / entry.model_dir
    for seed, state in states.items():
        _export.save_head_weights(state, head_dir / f"seed{seed}.safetensors")
    head = work.make_head(entry.spec)
    head.load_state_dict(states[entry.best_seed])
    _export.save_model(head_dir, work.backbone, head, run.classes, backbone_file=backbone_file,
                       extra=dict(seed=entry.best_seed, run_dir="../.."))
    entry.model_size_bytes = _export.model_size_bytes(head_dir, backbone_file)


def _finish(run: Run, bb: _backbones.Backbone, device: torch.device, started: float) -> None:
    """Analyses (when asked for), findings, report; results rewritten after."""
    requested = run.options.requested()
    if requested:
        ctx = RunContext(run=run, backbone=bb, states=run.states, cache_dir=_cache_dir(run.options),
                         device=device)
        run.analyses.update(run_analyses(ctx, requested))
    run.findings = findings(run)
    if run.verdict is not None:
        run.verdict.text = _verdict.sentence(run.verdict, run.heads, run.findings)
    run.timing.total_s = time.perf_counter() - started
    run.save_results()
    if run.options.report:
        write_report(run)


# ----------------------------------------------------------------------------------------------
# small helpers

def _cache_dir(config: CompareConfig) -> Path | None:
    return Path(config.cache_dir).expanduser().resolve() if config.cache_dir else None


def _latency(module: torch.nn.Module, shape: tuple, work: _Work) -> dict:
    """Latency at batch 1 and throughput at batch 32, with the precision used for extraction."""
    m = _evaluate.measure_latency(module, shape, device=work.device, batch_sizes=(1, 32),
                                  autocast_dtype=work.runtime.autocast_dtype("extract"),
                                  channels_last=True)
    return dict(latency_ms_b1=m[1]["ms_per_image"], throughput_b32=m[32]["images_per_s"])


def _dataset_info(work: _Work) -> DatasetInfo:
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


__all__ = ["compare"]
