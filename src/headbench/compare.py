"""The main job: every head trained and compared on an image folder from one cached backbone pass.

One `compare(data, **options)` call:
1. `CompareConfig(data, **options)` checks every option, `check_paths()` the disk side; each
   backbone is built and every head built once on its feature map (a head that fits no
   backbone's map fails here; with several backbones, a pair that does not fit is skipped):
   nothing has been hashed or extracted yet.
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
from typing import Any

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
from . import pairs as _pairs
from . import progress as _progress
from . import records as _records
from . import run as _run
from . import selection as _selection
from . import tracking as _tracking
from . import train as _train
from . import verdict as _verdict
from .analyses import RunContext, run_on_backbones
from .analyses.findings import findings
from .config import CompareConfig
from .errors import DiskError, HeadbenchError
from .heads import Head, HeadSpec, create_head
from .model import HeadbenchModel
from .runtime import Runtime
from .data import ROLES
from .results import BackboneInfo, HeadResult, Predictions, Timing, Variant
from .report import write_report
from .run import Run, default_run_name, mark_complete, run_folder


@dataclass
class _Work:
    """What compare holds in memory between its steps, for one backbone."""

    config: CompareConfig
    backbone: _backbones.Backbone
    runtime: Runtime   # the device and each stage's precision, decided once
    scan: _data.Scan
    splits: _data.Splits
    features: _features.FeatureSet
    y: dict            # role -> labels
    selection: str = "val"  # what the verdict scores heads on: "val" or "cv" (`selection.py`)
    # head -> per-image accuracy on the selection data (val, averaged over its seeds; or every
    # train + val image from the fold that held it out)
    selection_correct: dict = dataclasses.field(default_factory=dict)
    info: BackboneInfo | None = None  # the backbone's facts as the run records them
    heads: dict = dataclasses.field(default_factory=dict)  # label -> HeadSpec on this backbone
    todo: dict = dataclasses.field(default_factory=dict)   # label -> (spec, variant) to train
    views: Any = None  # the training images' augmented views (`aug_views`), as train.Views
    _F: dict | None = None

    @property
    def F(self) -> dict:
        """role -> train.Features, read once and shared by every head of this backbone (held
        in device memory from `load` until `release`)."""
        if self._F is None:
            self.load()
        return self._F

    def load(self) -> None:
        """Read this backbone's features for training."""
        self._F = {role: _train.Features(self.features.subset(getattr(self.splits, role)),
                                         self.device) for role in ROLES}

    def release(self) -> None:
        """Drop the features held for training (the next backbone's take their place)."""
        self._F = self.views = None

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the backbone's feature map (the cache may hold only its statistics)."""
        return tuple(self.features.meta.get("map_shape") or self.features.shape)

    def make_head(self, spec: HeadSpec) -> Head:
        c, h, w = self.map_shape
        return create_head(spec, c, len(self.scan.classes), (h, w), backbone=self.backbone)


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

    With several backbones (`backbone="resnet50,mobilenet"` or a list) every head trains on
    each backbone that accepts it, from one scan and the same splits; each pair is an entry
    `<backbone>/<head>` and the verdict recommends a pair (`pairs`).

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
    _tracking.check_available(config.log)  # a tracker's package, before any work
    _distributed.init()
    if config.several and _distributed.world() > 1:
        raise HeadbenchError("several backbones are compared in one process; under torchrun give "
                             "one backbone per job", param="backbone")
    t0 = time.perf_counter()
    bbs = [_backbones.create_backbone(name, weights, size)
           for name, weights, size in config.backbones()]
    rt = Runtime.resolve(config.precision, head_precision=config.head_precision)
    # every head fits some backbone's map, before any file is read
    accepted, skipped = _pairs.accepted_heads(config.heads, bbs)
    timing = Timing(backbone_s=time.perf_counter() - t0)
    checksums = [bb.weights_checksum for bb in bbs]
    digest = config.digest(weights_checksum=checksums if config.several else checksums[0],
                           precision=rt.extract)
    if not _distributed.is_main():
        return _follow(config, bbs[0], rt, timing)
    committed: list[str] = []
    name = config.run_name or default_run_name(config.data, config.backbone.replace(",", "+"))
    try:
        with run_folder(config.out, name, digest, resume=not config.restart) as run_dir:
            run = _compare(config, bbs, accepted, rt, timing, run_dir, digest, committed)
            run.skipped_pairs = skipped
            _distributed.leave()  # the rest is rank 0's alone
            _finish(run, bbs, rt.device, started)
            mark_complete(run_dir)
    except OSError as e:
        raise DiskError(_disk_error(e, committed)) from None
    _tracking.log_finished(run)  # the complete run, to the trackers of `log`
    return run


def _follow(config: CompareConfig, bb, rt: Runtime, timing: Timing) -> None:
    """A rank other than 0 under torchrun: its part of every extraction, in the order rank 0
    runs them, and of every fine-tuning; rank 0 trains the heads, writes the run, returns it."""
    (work,) = _prepare(config, [bb], rt, timing)
    if config.aug_views:
        _augmented_views(work)
    if config.finetune:
        _finetune_heads([work], None, [])
    _distributed.leave()


def _compare(config: CompareConfig, bbs: list, accepted: dict, rt: Runtime, timing: Timing,
             run_dir: Path, digest: str, committed: list[str]) -> Run:
    """Prepare the features, then train and commit every pair (reusing finished ones)."""
    works = _prepare(config, bbs, rt, timing)
    infos = [_records.backbone_info(work) for work in works]
    if config.several:
        _records.backbone_latencies(works, infos)
    run = Run(options=config, dataset=_records.dataset_info(works[0]), backbone=infos[0],
              backbones=infos if config.several else [], precision=rt.extract,
              device=str(rt.device), train_config=config.train_config(), timing=timing,
              options_digest=digest, feature_digest=_feature_digest(works), run_dir=run_dir)
    pool_bytes = max(4 * int(np.prod(w.features.shape)) for w in works) * (
        len(works[0].y["train"]) + len(works[0].y["val"]))
    mode, why = _selection.mode(config.selection, works[0].y["val"], len(run.classes),
                                bool(config.aug_views or config.finetune), pool_bytes)
    _progress.log(f"selection: {_selection.DESCRIPTION[mode]} ({why})")
    prior = _run.finished_heads(run)
    members = _run.load_members(run_dir, run.feature_digest)
    # the stacks' state, saved at epoch ends so that a kill loses little (`train.checkpoint`)
    checkpoints = _train.Checkpoints(run_dir / _run.MEMBERS, tag=run.feature_digest)
    train_config = dataclasses.replace(config.train_config(), precision=rt.heads)  # resolved
    for work, info in zip(works, infos):
        work.selection, work.info = mode, info
        work.heads = {_pairs.label(work.backbone.name, s.label, config.several): s
                      for s in accepted[work.backbone.name]}
        work.todo = _passes(work, prior)
    for label, (head, predictions, states) in prior.items():
        _commit(run, head, predictions, states, committed, save=False)
    if config.aug_views:  # before the training bar: extraction shows a bar of its own
        t0 = time.perf_counter()
        for work in works:
            work.views = _augmented_views(work)  # on every rank, always
        timing.extract_s += time.perf_counter() - t0
    folds = _selection.FOLDS * _selection.REPEATS if mode == "cv" else 0
    done = sum(m.fold is None and any(m.head in w.todo for w in works) for m in members)
    total = config.epochs * (sum(len(w.todo) * _runs_per_head(config) + folds * len(w.heads)
                                 for w in works) - done)
    with _progress.progress("training heads", total=total, unit="epoch") as bar:
        for work in works:
            started = time.perf_counter()
            work.load()  # reading the features is not training
            timing.extract_s += time.perf_counter() - started
            _train_heads(work, run, prior, members, train_config, checkpoints, committed, bar)
            work.release()
    _sort_heads(run)
    run.save()
    _run.drop_members(run_dir)  # every head is committed: its training runs are not needed
    if config.finetune:
        _finetune_heads(works, run, committed)
        _sort_heads(run)
    # on the selection data, never on test
    correct = {k: v for w in works for k, v in w.selection_correct.items()}
    run.verdict = _verdict.recommend(run.heads, correct, mode, _pairs.cost_of(run),
                                     _pairs.RULE if run.backbones else _verdict.RULE)
    run.best_head = run.verdict.recommended
    return run


def _train_heads(work: _Work, run: Run, prior: dict, members: dict,
                 train_config: _train.TrainConfig, checkpoints, committed: list[str],
                 bar) -> None:
    """Train and commit every head of one backbone (`work.heads`), reusing what an interrupted
    run finished; cross-validate them when the selection needs it."""
    config, timing = work.config, run.timing
    backbone_file = _export.save_backbone_if_needed(work.backbone, run.run_dir, config.several)
    for label, (head, predictions, states) in prior.items():  # committed by _compare
        if (head.backbone or run.backbone.name) != work.backbone.name:
            continue
        if not head.finetuned and work.selection == "val":  # fine-tuned: val from its mean
            work.selection_correct[label] = _selection.per_image_correct(
                lambda spec=head.spec: work.make_head(spec), states, work.F["val"], work.y["val"],
                work.device)
    todo = work.todo
    done = {m: r for m, r in members.items() if m.head in todo and m.fold is None}
    if done:
        _progress.log(f"reusing {len(done)} finished training run(s) of the interrupted run")

    def on_fit(label: str, fit: _train.FitResult) -> None:
        started = time.perf_counter()
        spec, variant = todo[label]
        head, predictions = _records.evaluate_fit(work, spec, fit, work.info, label, variant)
        states = {tr.seed: tr.state_dict for tr in fit.runs}
        _records.save_head(work, run, head, states, backbone_file)
        _commit(run, head, predictions, states, committed)
        timing.evaluate_s += time.perf_counter() - started

    def on_member(member: _train.Member, result: _train.TrainResult) -> None:
        started = time.perf_counter()
        _run.save_member(run.run_dir, member, result, run.feature_digest)
        timing.evaluate_s += time.perf_counter() - started

    t0, evaluated = time.perf_counter(), timing.evaluate_s
    for variant in (False, True):
        labels = {label: spec for label, (spec, v) in todo.items() if bool(v) == variant}
        if not labels:
            continue
        X_train = work.views if variant else work.F["train"]
        _train.fit_heads({label: (lambda spec=spec: work.make_head(spec))
                          for label, spec in labels.items()},
                         X_train, work.y["train"], work.F["val"], work.y["val"],
                         train_config, seeds=list(range(config.seeds)), done=done,
                         on_member=on_member, on_fit=on_fit, on_epochs=bar.advance,
                         checkpoints=checkpoints)
    if work.selection == "cv":
        mine = [h for h in run.heads if h.head in work.heads]
        work.selection_correct = _cross_validate(work, mine, train_config, members,
                                                 on_member, bar.advance, checkpoints)
    # fit_heads calls on_fit / on_member as members finish: their time is evaluate_s
    timing.train_s += time.perf_counter() - t0 - (timing.evaluate_s - evaluated)


def _passes(work: _Work, prior: dict) -> dict[str, tuple[HeadSpec, Variant | None]]:
    """label -> (spec, variant) of what is left to train: the frozen heads, then (with
    aug_views) the same heads on the augmented views."""
    views = work.config.aug_views
    passes = [(label, s, None) for label, s in work.heads.items() if label not in prior]
    if views:
        passes += [(aug_label(label, views), s, Variant("aug", label, aug_views=views))
                   for label, s in work.heads.items() if aug_label(label, views) not in prior]
    return {label: (spec, variant) for label, spec, variant in passes}


def _cross_validate(work: _Work, frozen: list[HeadResult], train_config: _train.TrainConfig,
                    members: dict, on_member, on_epochs, checkpoints) -> dict[str, np.ndarray]:
    """Every frozen head's correctness on every train + val image from the fold that held it out
    (`selection.cross_validate`); folds an interrupted run finished (`members`) are reused."""
    index = np.concatenate([work.splits.train, work.splits.val])
    pool = _train.Features.joined(work.features.subset(index), [work.F["train"], work.F["val"]],
                                  work.device)
    y = np.concatenate([work.y["train"], work.y["val"]])
    heads = {h.head: h for h in frozen}
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
    """The options' order (by backbone first), each head's variants right after it (augmented,
    fine-tuned)."""
    order = [s.label for s in run.options.heads]
    backbones = [b.name for b in run.backbones]
    kinds = [None, "aug", "finetune"]

    def key(h: HeadResult) -> tuple[int, int, int]:  # a variant keeps its frozen head's spec
        return (backbones.index(h.backbone) if h.backbone else 0, order.index(h.spec.label),
                kinds.index(h.variant.kind if h.variant else None))
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


def _finetune_heads(works: list[_Work], run: Run | None, committed: list[str]) -> None:
    """Fine-tune the best `finetune_top` frozen heads by val accuracy (each from its best seed)
    and commit each as `<head>+ft`; a fine-tuning an interrupted run began resumes from its
    checkpoint. Under torchrun every rank trains (`run` is rank 0's; other ranks pass None and
    are sent the work); rank 0 evaluates and commits."""
    fcfg = works[0].config.finetune_config()
    images = {role: _images(works[0], role) for role in ROLES}
    by_name = {w.backbone.name: w for w in works}
    for base, state, checkpoint, key in _distributed.from_main(lambda: _finetune_jobs(run)):
        work = by_name.get(base.backbone, works[0])
        label = f"{base.head}+ft"
        head = work.make_head(base.spec)
        head.load_state_dict(state)
        model = HeadbenchModel(copy.deepcopy(work.backbone), head,
                               class_names=work.scan.classes, freeze=False)
        if _distributed.is_main():
            _log_estimate(model, images["train"], fcfg, base, work)
        result = _finetune.finetune(model, images["train"], images["val"], fcfg,
                                    base.weight_decay, checkpoint, device=work.device,
                                    precision=work.runtime.finetune, workers=_records.workers(work),
                                    label=label, key=key)
        if _distributed.is_main():
            entry, predictions, states = _records.finetuned_result(work, run, base, label, result,
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


def _log_estimate(model: HeadbenchModel, train: _finetune.Images, fcfg, base: HeadResult,
                  work: _Work) -> None:
    rate = _finetune.measure_throughput(model, train, fcfg, base.weight_decay, work.device,
                                        work.runtime.finetune)
    seconds = len(train) * fcfg.epochs / rate
    _progress.log(f"fine-tuning {base.head} (seed {base.best_seed}, unfreeze {fcfg.unfreeze}, "
                  f"BatchNorm {fcfg.bn}, {work.runtime.finetune}): {len(train)} images × up to {fcfg.epochs} epochs at "
                  f"{rate:.1f} img/s measured ≈ {seconds / 60:.1f} min at most, plus validation")


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


# ----------------------------------------------------------------------------------------------
# steps

def _prepare(config: CompareConfig, bbs: list, rt: Runtime, timing: Timing) -> list[_Work]:
    """Scan once, extract (or reuse) every backbone's features, split: the same splits for
    every backbone (an image any backbone could not read is left out of all)."""
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
    sets = []
    for bb in bbs:
        form = _distributed.from_main(lambda: _cache_form(config, bb, digests, rt.extract))
        sets.append(_features.extract(bb, paths, digests, precision=rt.extract,
                                      cache_dir=config.cache_dir, workers=config.workers,
                                      device=rt.device, form=form))
    timing.extract_s = time.perf_counter() - t0
    timing.n_extracted = sum(fs.n_extracted for fs in sets)
    valid = np.logical_and.reduce([np.asarray(fs.valid) for fs in sets])
    failures = {i: r for fs in reversed(sets) for i, r in fs.failures.items()}
    if failures:
        _progress.warn(f"{len(failures)} images could not be decoded and are skipped "
                       "(listed in skipped.csv)")
    splits = _data.make_splits(scan, valid, val_fraction=config.val_fraction,
                               split=config.split, seed=config.split_seed)
    _data.log_splits(scan, splits)
    works = []
    for bb, fs in zip(bbs, sets):
        _data.warn_thin(scan, splits, bb.feature_shape(), bb.data_config["input_size"][-1])
        fs.failures = {**fs.failures, **failures}
        y = {role: np.array([scan.items[i].label for i in getattr(splits, role)],
                            dtype=np.int64) for role in ROLES}
        works.append(_Work(config, bb, rt, scan, splits, fs, y))
    return works


def _cache_form(config: CompareConfig, bb, digests: list[str],
                precision: str) -> tuple[str, ...] | None:
    """The global statistics to cache when every head needs only those and no analysis needs
    the maps; None (maps) otherwise, or when the maps of every image are cached already."""
    if config.requested():
        return None
    c, h, w = bb.feature_shape()
    needed = set()
    for spec in config.heads:
        try:
            stats = create_head(spec, c, 2, (h, w), backbone=bb).training_split().stats
        except HeadbenchError:  # a pair this backbone does not accept: skipped
            continue
        if not stats:
            return None
        needed.update(stats)
    if _features.is_cached(bb, digests, precision=precision, cache_dir=config.cache_dir):
        return None
    return tuple(name for name in (*_layers.STATS, "token") if name in needed)


def _feature_digest(works: list[_Work]) -> str:
    """The cache entries and the images of every split, in order: equal digests, equal
    features."""
    work = works[0]
    text = "+".join(w.features.key for w in works) + "".join(
        f"|{role}:" + ",".join(work.scan.items[i].digest for i in getattr(work.splits, role))
        for role in ROLES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finish(run: Run, bbs: list, device: torch.device, started: float) -> None:
    """Analyses (when asked for; with several backbones, of the recommended one's heads),
    findings, report; results rewritten after."""
    requested = run.options.requested()
    if requested:  # several backbones: the recommended one's first
        chosen = run.selected().backbone if run.backbones else None
        order = sorted(bbs, key=lambda b: b.name != chosen) if chosen else bbs[:1]
        contexts = [RunContext(run=run, backbone=bb, states=run.states,
                               cache_dir=_cache_dir(run.options), device=device,
                               backbone_name=bb.name if chosen else None) for bb in order]
        run.analyses.update(run_on_backbones(contexts, requested))
    run.findings = findings(run)
    if run.verdict is not None:
        run.verdict.text = _verdict.sentence(run.verdict, run.heads, run.findings,
                                             _pairs.cost_of(run))
    run.timing.total_s = time.perf_counter() - started
    run.save_results()
    if run.options.report:
        write_report(run)


# ----------------------------------------------------------------------------------------------
# small helpers

def _cache_dir(config: CompareConfig) -> Path | None:
    return Path(config.cache_dir).expanduser().resolve() if config.cache_dir else None


__all__ = ["compare"]
