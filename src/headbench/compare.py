"""The main job: every head trained and compared on an image folder from one cached backbone pass.

One `compare(data, **options)` call:
1. `CompareConfig(data, **options)` checks every option, `check_paths()` the disk side; the
   backbone is built and every head built once on its feature map (a head option that cannot
   fit the map fails here): nothing has been hashed or extracted yet.
2. scan the folder (hash every file), run the backbone once per image into the feature cache,
   make the train / val / test splits.
3. train every head on the cached features (several seeds, weight decay chosen on val), evaluate
   each seed once on every split; select the recommended head on val (`evaluate.select_head`).
4. build the typed `Run`, save the heads' weights and the run folder (`Run.save`), run the
   requested analyses (imported only then), the findings, the report.
"""
from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import backbones as _backbones
from . import data as _data
from . import evaluate as _evaluate
from . import export as _export
from . import features as _features
from . import progress as _progress
from . import train as _train
from .config import CompareConfig
from .errors import HeadbenchError
from .heads import Head, HeadSpec, create_head
from .model import count_flops, count_params, default_device
from .run import (BackboneInfo, DatasetInfo, HeadResult, HeadSummary, Metrics, Predictions, Run,
                  SeedResult, SplitItems, Timing)

ROLES = ("train", "val", "test")


@dataclass
class _Work:
    """What compare holds in memory between its steps."""

    config: CompareConfig
    backbone: _backbones.Backbone
    device: torch.device
    precision: str
    scan: _data.Scan
    splits: _data.Splits
    features: _features.FeatureSet
    X: dict            # role -> lazy feature rows of the split
    F: dict            # role -> train.Features, read once and shared by every head
    y: dict            # role -> labels

    def make_head(self, spec: HeadSpec) -> Head:
        c, h, w = self.features.shape
        return create_head(spec, c, len(self.scan.classes), (h, w))


def compare(data: str | Path | CompareConfig, **options) -> Run:
    """Train and compare classification heads on the image folder `data`.

    `options` are the fields of `CompareConfig` (or pass a CompareConfig as `data`). Selection
    (early stopping, weight decay, best seed, the recommended head) uses the val split only;
    the test split is evaluated once per trained head. Returns the `Run`, also written to
    `<out>/runs/<date>-<dataset>-<backbone>/`.

    Example:
        >>> run = compare("images", heads=["gap", "flatten"], seeds=3)   # doctest: +SKIP
        >>> run.best_head, run.head("gap").summary.test_accuracy.mean    # doctest: +SKIP
    """
    started = time.perf_counter()
    config = _config(data, options)
    config.check_paths()
    t0 = time.perf_counter()
    bb = _backbones.create_backbone(config.backbone, config.weights, config.input_size)
    device = default_device()
    precision = _features.resolve_precision(config.precision, device)
    _check_heads(config, bb)  # every head fits this backbone's map, before any file is read
    timing = Timing(backbone_s=time.perf_counter() - t0)

    work = _prepare(config, bb, device, precision, timing)
    t0 = time.perf_counter()
    trained = _train_all(work)
    timing.train_s = time.perf_counter() - t0

    run = _build_run(work, trained, timing)
    run.run_dir = _make_run_dir(Path(config.out), config.run_name or _run_name(config))
    _save_heads(work, run, trained)
    run.save()
    _finish(work, run, trained, started)
    return run


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

def _prepare(config: CompareConfig, bb, device, precision: str, timing: Timing) -> _Work:
    """Scan, extract (or reuse) features, split."""
    t0 = time.perf_counter()
    scan = _data.scan_folder(config.data, follow_links=config.follow_links)
    _progress.log(f"{len(scan.items)} images in {len(scan.classes)} classes under {scan.root}"
                  + (f"; {len(scan.skipped)} files skipped" if scan.skipped else ""))
    if scan.links_outside:
        _progress.log(f"{scan.links_outside} symlinks lead out of the data folder: "
                      + ("followed (--follow-links)" if scan.follow_links else
                         "skipped and listed in skipped.csv (--follow-links uses them)"))
    timing.scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fs = _features.extract(bb, [it.path for it in scan.items], [it.digest for it in scan.items],
                           precision=precision, cache_dir=config.cache_dir,
                           workers=config.workers, device=device)
    timing.extract_s, timing.n_extracted = time.perf_counter() - t0, fs.n_extracted
    if fs.failures:
        _progress.warn(f"{len(fs.failures)} images could not be decoded and are skipped "
                       "(listed in skipped.csv)")
    splits = _data.make_splits(scan, fs.valid, val_fraction=config.val_fraction,
                               split=config.split, seed=config.split_seed)
    _log_splits(scan, splits)
    _warn_thin(scan, splits, bb)
    X, F, y = {}, {}, {}
    for role in ROLES:
        idx = getattr(splits, role)
        X[role] = fs.subset(idx)  # lazy rows of the memory maps
        F[role] = _train.Features(X[role], device)
        y[role] = np.array([scan.items[i].label for i in idx], dtype=np.int64)
    return _Work(config, bb, device, precision, scan, splits, fs, X, F, y)


def _train_all(work: _Work) -> dict[str, dict]:
    """Fit every head (weight-decay sweep + seeds); metrics of every seed on every split and
    its test logits. Returns {label: {"fit": FitResult, "seeds": [SeedResult], "logits": [...]}}."""
    cfg, seeds = work.config.train_config(), list(range(work.config.seeds))
    runs_per_head = len(cfg.weight_decays) + len(seeds) - 1
    out: dict[str, dict] = {}
    with _progress.progress("training heads", total=runs_per_head * len(work.config.heads),
                            unit="run") as bar:
        for spec in work.config.heads:
            bar.set_postfix(spec.label)
            fit = _train.fit_head(lambda: work.make_head(spec), work.F["train"], work.y["train"],
                                  work.F["val"], work.y["val"], cfg, seeds=seeds,
                                  on_run=lambda done, total: bar.advance())
            out[spec.label] = _evaluate_fit(work, spec, fit)
    return out


def _evaluate_fit(work: _Work, spec: HeadSpec, fit: _train.FitResult) -> dict:
    k = len(work.scan.classes)
    seeds, logits = [], []
    for tr in fit.runs:
        head = work.make_head(spec)
        head.load_state_dict(tr.state_dict)
        metrics = {}
        for role in ROLES:
            out = _train.predict_logits(head, work.F[role], device=work.device)
            metrics[role] = Metrics(**_evaluate.classification_metrics(out, work.y[role], k))
            if role == "test":
                logits.append(out)
        seeds.append(SeedResult(tr.seed, tr.best_epoch, tr.epochs_run, tr.train_time_s,
                                history=tr.history, **metrics))
    return dict(spec=spec, fit=fit, seeds=seeds, logits=logits)


def _build_run(work: _Work, trained: dict[str, dict], timing: Timing) -> Run:
    bb, size = work.backbone, work.backbone.data_config["input_size"][-1]
    bb_flops = count_flops(bb, torch.zeros(1, 3, size, size))
    bb_cost = _latency(bb, (3, size, size), work)
    backbone = BackboneInfo(bb.name, bb.timm_name, bb.weights, bb.weights_checksum, bb.data_config,
                            list(work.features.shape), count_params(bb), bb_flops,
                            bb_cost["latency_ms_b1"], bb_cost["throughput_b32"])
    heads = [_head_result(work, label, t, backbone) for label, t in trained.items()]
    predictions = {label: Predictions.of_logits([s.seed for s in t["seeds"]], t["logits"],
                                                work.y["test"])
                   for label, t in trained.items()}
    run = Run(options=work.config, dataset=_dataset_info(work), backbone=backbone,
              precision=work.precision, device=str(work.device),
              train_config=work.config.train_config(), timing=timing, heads=heads,
              predictions=predictions)
    run.best_head = _evaluate.select_head(heads).head  # on val, never on test
    return run


def _head_result(work: _Work, label: str, trained: dict, bb: BackboneInfo) -> HeadResult:
    fit: _train.FitResult = trained["fit"]
    head = work.make_head(trained["spec"])
    c, h, w = work.features.shape
    head_flops = count_flops(head.eval(), torch.zeros(1, c, h, w))
    cost = _latency(head, (c, h, w), work)
    params = count_params(head)
    best = min(fit.runs, key=lambda r: r.best_val_loss)  # val, never test
    return HeadResult(
        head=label, spec=trained["spec"], any_size=head.any_size, exact_cam=head.exact_cam,
        head_params=params, total_params=params + bb.params, head_flops=head_flops,
        total_flops=bb.flops + head_flops, weight_decay=fit.weight_decay,
        wd_sweep={f"{k:g}": v for k, v in fit.sweep.items()}, best_seed=best.seed,
        model_dir=f"heads/{label}", model_size_bytes=None,
        latency_ms_b1=bb.latency_ms_b1 + cost["latency_ms_b1"],
        throughput_b32=1.0 / (1.0 / bb.throughput_b32 + 1.0 / cost["throughput_b32"]),
        architecture=str(head), seeds=trained["seeds"], summary=HeadSummary.of(trained["seeds"]))


def _save_heads(work: _Work, run: Run, trained: dict[str, dict]) -> None:
    """heads/<head>/: every seed's weights and the model of the best seed."""
    backbone_file = _export.save_backbone_if_needed(work.backbone, run.run_dir)
    for entry in run.heads:
        fit: _train.FitResult = trained[entry.head]["fit"]
        head_dir = run.run_dir / entry.model_dir
        for tr in fit.runs:
            _export.save_head_weights(tr.state_dict, head_dir / f"seed{tr.seed}.safetensors")
        best = next(r for r in fit.runs if r.seed == entry.best_seed)
        head = work.make_head(entry.spec)
        head.load_state_dict(best.state_dict)
        _export.save_model(head_dir, work.backbone, head, run.classes, backbone_file=backbone_file,
                           extra=dict(seed=best.seed, run_dir="../.."))
        entry.model_size_bytes = _export.model_size_bytes(head_dir, backbone_file)


def _finish(work: _Work, run: Run, trained: dict[str, dict], started: float) -> None:
    """Analyses (imported only when asked for), findings, report; results rewritten after."""
    requested = work.config.requested()
    if requested:
        from .analyses import RunContext, run_analyses
        states = {label: {tr.seed: tr.state_dict for tr in t["fit"].runs}
                  for label, t in trained.items()}
        ctx = RunContext(run=run, backbone=work.backbone, states=states, features=dict(work.X),
                         cache_dir=_cache_dir(work.config), device=work.device)
        run.analyses.update(run_analyses(ctx, requested))
    from .analyses.findings import findings
    run.findings = findings(run)
    run.timing.total_s = time.perf_counter() - started
    run.save_results()
    if work.config.report:
        from .report import write_report
        write_report(run)


# ----------------------------------------------------------------------------------------------
# small helpers

def _cache_dir(config: CompareConfig) -> Path | None:
    return Path(config.cache_dir).expanduser().resolve() if config.cache_dir else None


def _latency(module: torch.nn.Module, shape: tuple, work: _Work) -> dict:
    """Latency at batch 1 and throughput at batch 32, with the precision used for extraction."""
    m = _evaluate.measure_latency(module, shape, device=work.device, batch_sizes=(1, 32),
                                  autocast_dtype=torch.bfloat16 if work.precision == "bf16" else None,
                                  channels_last=True)
    return dict(latency_ms_b1=m[1]["ms_per_image"], throughput_b32=m[32]["images_per_s"])


def _run_name(config: CompareConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(config.data).resolve().name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stamp}-{name}-{config.backbone}")


def _make_run_dir(out: Path, name: str) -> Path:
    base = out.expanduser().resolve() / "runs" / name
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def _log_splits(scan: _data.Scan, splits: _data.Splits) -> None:
    counts = splits.counts()
    _progress.log(splits.description)
    width = max(len(c) for c in scan.classes)
    _progress.log(f"  {'class':<{width}}  train    val   test")
    for cls in scan.classes:
        _progress.log(f"  {cls:<{width}}  {counts['train'].get(cls, 0):5d}  "
                      f"{counts['val'].get(cls, 0):5d}  {counts['test'].get(cls, 0):5d}")


def _warn_thin(scan: _data.Scan, splits: _data.Splits, bb: _backbones.Backbone) -> None:
    """Warn where the numbers would quietly mean less than they seem to."""
    counts = splits.counts()
    for role in ("val", "test"):
        missing = [c for c in scan.classes if not counts[role].get(c)]
        if missing:
            _progress.warn(f"no {role} images for class(es) {', '.join(missing)}: {role} metrics "
                           "ignore them; add images to those class folders")
    c, h, w = bb.feature_shape()
    if h * w == 1:
        _progress.warn(f"the feature map is 1×1 at {bb.data_config['input_size'][-1]} px: every "
                       "pooling head sees the same vector; use a larger --input-size")


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
