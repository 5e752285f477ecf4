"""The main job: every head trained and compared on an image folder from one cached backbone pass.

`compare(data, ...)` scans the folder, runs the backbone once per image into the feature cache,
makes the train / val / test splits, trains every head on the cached features with one protocol
(several seeds, weight decay chosen on val), evaluates once on test and writes the run folder
described in docs/DESIGN.md.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import __version__
from . import backbones as _backbones
from . import data as _data
from . import evaluate as _evaluate
from . import export as _export
from . import features as _features
from . import heads as _heads
from . import io as _io
from . import progress as _progress
from . import train as _train
from .analyze import (RunContext, findings, parse_shifts, parse_shots, parse_sizes,
                      run_analyses, select_head)
from .errors import HeadbenchError, unknown
from .model import count_flops, count_params, default_device
from .report import write_report

DEFAULT_SEEDS = 3


@dataclass
class CompareResult:
    """What `compare` returns: the run folder and the results it wrote."""

    run_dir: Path
    results: dict

    @property
    def heads(self) -> list[dict]:
        """Per-head results, best mean test accuracy first."""
        return sorted(self.results["heads"], key=lambda h: -h["summary"]["test_accuracy"]["mean"])

    @property
    def best_head(self) -> str:
        """The head selected on the val split (highest mean val accuracy, then lowest NLL)."""
        return self.results["best_head"]

    @property
    def findings(self) -> list[dict]:
        return self.results.get("findings", [])

    def __getitem__(self, head: str) -> dict:
        for h in self.results["heads"]:
            if h["head"] == head:
                return h
        raise KeyError(head)

    def model_dir(self, head: str | None = None) -> Path:
        """Folder of the saved model of `head` (default: the best head)."""
        return self.run_dir / self[head or self.best_head]["model_dir"]


@dataclass
class RunData:
    """Everything `compare` holds in memory between its steps (also handed to the analyses)."""

    scan: _data.Scan
    splits: _data.Splits
    backbone: _backbones.Backbone
    features: _features.FeatureSet
    precision: str
    device: torch.device
    cache_dir: Path | None
    config: _train.TrainConfig
    specs: list[_heads.HeadSpec]
    seeds: list[int]
    X: dict[str, _features.FeatureRows] = field(default_factory=dict)
    F: dict[str, _train.Features] = field(default_factory=dict)
    y: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, _train.FitResult] = field(default_factory=dict)
    predictions: dict[str, list] = field(default_factory=dict)  # head -> [(seed, test logits)]
    timing: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.scan.classes

    @property
    def map_size(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    def make_head(self, spec: _heads.HeadSpec) -> _heads.Head:
        return _heads.create_head(spec, self.features.shape[0], len(self.classes), self.map_size)

    def items(self, role: str) -> list[_data.Item]:
        return [self.scan.items[i] for i in getattr(self.splits, role)]


def compare(data: str | Path, backbone: str = "efficientnet_lite0", weights: str = "default",
            heads: Sequence[str | _heads.HeadSpec] = _heads.DEFAULT_HEADS, seeds: int = DEFAULT_SEEDS,
            hidden: Sequence[int] = (), dropout: float | None = None, epochs: int = 40,
            batch_size: int = 64, lr: float = 1e-3, patience: int | None = 8,
            weight_decays: Sequence[float] = _train.TrainConfig.weight_decays,
            input_size: int | None = None, precision: str = "auto", cache_dir: str | Path | None = None,
            out: str | Path = ".", val_fraction: float = 0.15,
            split: Sequence[float] = (0.7, 0.15, 0.15), split_seed: int = 0, workers: int | None = None,
            shifts: Sequence[int] | None = None, sizes: Sequence[int] | None = None,
            shots: Sequence[int | str] | None = None, cam: int = 0, report: bool = True,
            run_name: str | None = None) -> CompareResult:
    """Train and compare classification heads on the image folder `data`.

    Selection (early stopping, weight decay, best seed) uses the val split only; the test split is
    evaluated once per trained head. Returns a `CompareResult`; everything is also written to
    `<out>/runs/<date>-<dataset>-<backbone>/`.
    """
    started = time.perf_counter()
    # every option is checked before any work, the analyses' too
    _check_options(seeds=seeds, cam=cam)
    _check_folder(out, "--out")
    _check_folder(cache_dir, "--cache-dir")
    config = _train.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                                weight_decays=tuple(weight_decays))
    _data.check_fractions(split, val_fraction)
    shifts, sizes, shots = parse_shifts(shifts), parse_sizes(sizes), parse_shots(shots)
    specs = _head_specs(heads, hidden, dropout)
    cache_dir = Path(cache_dir).resolve() if cache_dir else None
    name = run_name or _run_name(Path(data), backbone)
    run = _prepare(data, backbone, weights, input_size, precision, cache_dir, workers, val_fraction,
                   split, split_seed, config, specs, list(range(seeds)))
    timing = dict(run.timing)

    t0 = time.perf_counter()
    head_results = _train_all(run)
    timing["train_s"] = time.perf_counter() - t0

    run_dir = _make_run_dir(Path(out), name)  # only now: an interrupted run leaves no empty folder
    results = _results(run, head_results, run_dir, timing)
    _write_run(run, results, run_dir, dict(
        data=str(Path(data).resolve()), backbone=backbone, weights=weights, input_size=input_size,
        precision=precision, heads=[s.to_dict() for s in specs], seeds=seeds, hidden=list(hidden),
        dropout=dropout, train=config.to_dict(), val_fraction=val_fraction, split=list(split),
        split_seed=split_seed, cache_dir=str(cache_dir) if cache_dir else None))
    results = _finish(run, run_dir, results, shifts, sizes, shots, cam, report, started)
    return CompareResult(run_dir, results)


# ----------------------------------------------------------------------------------------------
# steps

def _prepare(data, backbone, weights, input_size, precision, cache_dir, workers, val_fraction, split,
             split_seed, config, specs, seeds) -> RunData:
    """Scan, build the backbone, extract (or reuse) features, and split."""
    t0 = time.perf_counter()
    scan = _data.scan_folder(data)
    _progress.log(f"{len(scan.items)} images in {len(scan.classes)} classes under {scan.root}"
                  + (f"; {len(scan.skipped)} files skipped" if scan.skipped else ""))
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bb = _backbones.create_backbone(backbone, weights, input_size)
    device = default_device()
    prec = _features.resolve_precision(precision, device)
    backbone_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    fs = _features.extract(bb, [it.path for it in scan.items], [it.digest for it in scan.items],
                           precision=prec, cache_dir=cache_dir, workers=workers, device=device)
    extract_s = time.perf_counter() - t0
    if fs.failures:
        _progress.warn(f"{len(fs.failures)} images could not be decoded and are skipped "
                       "(listed in skipped.csv)")
    splits = _data.make_splits(scan, fs.valid, val_fraction=val_fraction, split=split,
                               seed=split_seed)
    _log_splits(scan, splits)
    _warn_thin(scan, splits, bb)
    run = RunData(scan, splits, bb, fs, prec, device, cache_dir, config, specs, seeds)
    for role in ("train", "val", "test"):
        idx = getattr(splits, role)
        run.X[role] = fs.subset(idx)  # lazy rows of the memory maps
        run.F[role] = _train.Features(run.X[role], device)  # read once, shared by every head
        run.y[role] = np.array([scan.items[i].label for i in idx], dtype=np.int64)
    run.timing = dict(scan_s=scan_s, backbone_s=backbone_s, extract_s=extract_s,
                      n_extracted=fs.n_extracted)
    return run


def _train_all(run: RunData) -> dict[str, dict]:
    """Fit every head (weight-decay sweep + seeds) and evaluate each seed on every split."""
    cfg, seeds = run.config, run.seeds
    runs_per_head = len(cfg.weight_decays) + len(seeds) - 1
    out: dict[str, dict] = {}
    with _progress.progress("training heads", total=runs_per_head * len(run.specs), unit="run") as bar:
        for spec in run.specs:
            bar.set_postfix(spec.label)
            fit = _train.fit_head(lambda: run.make_head(spec), run.F["train"], run.y["train"],
                                  run.F["val"], run.y["val"], cfg, seeds=seeds, head_name=spec.label,
                                  on_run=lambda done, total: bar.advance())
            run.fits[spec.label] = fit
            out[spec.label] = _evaluate_fit(run, spec, fit)
            run.predictions[spec.label] = out[spec.label].pop("predictions")
    return out


def _evaluate_fit(run: RunData, spec: _heads.HeadSpec, fit: _train.FitResult) -> dict:
    """Metrics on train / val / test for every seed of one head, and its test predictions."""
    k = len(run.classes)
    seeds, predictions = [], []
    for tr in fit.runs:
        head = run.make_head(spec)
        head.load_state_dict(tr.state_dict)
        row = dict(seed=tr.seed, best_epoch=tr.best_epoch, epochs_run=tr.epochs_run,
                   train_time_s=tr.train_time_s, history=[dataclasses.asdict(e) for e in tr.history])
        for role in ("train", "val", "test"):
            logits = _train.predict_logits(head, run.F[role], device=run.device)
            row[role] = _evaluate.classification_metrics(logits, run.y[role], k)
            if role == "test":
                predictions.append((tr.seed, logits))
        seeds.append(row)
    return dict(spec=spec, fit=fit, seeds=seeds, predictions=predictions)


def _results(run: RunData, head_results: dict[str, dict], run_dir: Path, timing: dict) -> dict:
    """The results.json document (without analyses and findings)."""
    bb = run.backbone
    size = bb.data_config["input_size"][-1]
    x = torch.zeros(1, 3, size, size)
    bb_flops = count_flops(bb, x)
    bb_latency = _latency(bb, (3, size, size), run)
    heads = []
    for label, hr in head_results.items():
        head = run.make_head(hr["spec"])
        heads.append(_head_entry(run, label, hr, head, bb_flops, bb_latency))
    best = select_head(heads)["head"]  # on val (mean accuracy, then NLL), never on test
    return dict(
        headbench_version=__version__, created=_dt.datetime.now().isoformat(timespec="seconds"),
        run_dir=str(run_dir), dataset=_dataset_summary(run),
        backbone=dict(name=bb.name, timm_name=bb.timm_name, weights=bb.weights,
                      weights_checksum=bb.weights_checksum, data_config=bb.data_config,
                      feature_shape=list(run.features.shape), params=count_params(bb),
                      flops=bb_flops, latency_ms_b1=bb_latency["latency_ms_b1"],
                      throughput_b32=bb_latency["throughput_b32"]),
        precision=run.precision, device=str(run.device), machine=_machine(), timing=timing,
        train_config=run.config.to_dict(), heads=heads, best_head=best, findings=[], analyses={})


def _head_entry(run: RunData, label: str, hr: dict, head: _heads.Head, bb_flops: int,
                bb_latency: dict) -> dict:
    fit: _train.FitResult = hr["fit"]
    seeds = hr["seeds"]
    best = min(fit.runs, key=lambda r: r.best_val_loss)
    c, h, w = run.features.shape
    head_flops = count_flops(head.eval(), torch.zeros(1, c, h, w))
    head_latency = _latency(head, (c, h, w), run)
    head_params = count_params(head)
    summary = {name: _evaluate.ci_summary([_metric(s, role, key) for s in seeds],
                                          bounds=None if key == "nll" else (0.0, 1.0))
               for name, role, key in (("test_accuracy", "test", "accuracy"),
                                       ("train_accuracy", "train", "accuracy"),
                                       ("val_accuracy", "val", "accuracy"),
                                       ("macro_f1", "test", "macro_f1"), ("nll", "test", "nll"),
                                       ("ece", "test", "ece"), ("top5", "test", "top5"))}
    summary["overfit_gap"] = _evaluate.ci_summary(
        [s["train"]["accuracy"] - s["test"]["accuracy"] for s in seeds], bounds=(-1.0, 1.0))
    summary["train_time_s"] = float(np.mean([s["train_time_s"] for s in seeds]))
    return dict(
        head=label, spec=hr["spec"].to_dict(), fixed_size=bool(head.fixed_size),
        head_params=head_params, total_params=head_params + count_params(run.backbone),
        head_flops=head_flops, total_flops=bb_flops + head_flops,
        weight_decay=fit.weight_decay, wd_sweep={f"{k:g}": v for k, v in fit.sweep.items()},
        best_seed=best.seed, model_dir=f"heads/{label}", model_size_bytes=None,
        latency_ms_b1=bb_latency["latency_ms_b1"] + head_latency["latency_ms_b1"],
        throughput_b32=1.0 / (1.0 / bb_latency["throughput_b32"] + 1.0 / head_latency["throughput_b32"]),
        architecture=str(head), seeds=seeds, summary=summary)


def _write_run(run: RunData, results: dict, run_dir: Path, options: dict) -> None:
    """config.json, dataset.json, skipped.csv, heads/, predictions.csv, results.json/csv."""
    bb = run.backbone
    options.update(resolved=dict(backbone=bb.name, timm_name=bb.timm_name, weights=bb.weights,
                                 weights_checksum=bb.weights_checksum, data_config=bb.data_config,
                                 precision=run.precision, device=str(run.device),
                                 input_size=bb.data_config["input_size"][-1]))
    _io.atomic_write_json(run_dir / "config.json", options)
    _io.atomic_write_json(run_dir / "dataset.json", dict(results["dataset"], items=_items(run)))
    _io.atomic_write_csv(run_dir / "skipped.csv", _skipped_rows(run), ["path", "reason"])
    backbone_file = _export.save_backbone_if_needed(bb, run_dir)
    pred_rows = []
    for entry in results["heads"]:
        label = entry["head"]
        spec = _heads.HeadSpec.from_dict(entry["spec"])
        fit = run.fits[label]
        head_dir = run_dir / entry["model_dir"]
        for tr in fit.runs:
            _export.save_head_weights(tr.state_dict, head_dir / f"seed{tr.seed}.safetensors")
        best = next(r for r in fit.runs if r.seed == entry["best_seed"])
        head = run.make_head(spec)
        head.load_state_dict(best.state_dict)
        _export.save_model(head_dir, bb, head, run.classes, backbone_file=backbone_file,
                           extra=dict(seed=best.seed, run_dir="../.."))
        entry["model_size_bytes"] = _export.model_size_bytes(head_dir, backbone_file)
        pred_rows += _prediction_rows(run, label, entry)
    _io.atomic_write_csv(run_dir / "predictions.csv", pred_rows,
                         ["head", "seed", "index", "path", "label", "pred", "p_pred", "p_label", "loss"])
    write_results(run_dir, results)


def _finish(run: RunData, run_dir: Path, results: dict, shifts, sizes, shots, cam, report: bool,
            started: float) -> dict:
    """Analyses, findings, report; results.json rewritten after each step."""
    if shifts or sizes or shots or cam:
        ctx = RunContext.from_compare(run, run_dir, results)
        results["analyses"].update(run_analyses(ctx, shifts=shifts, sizes=sizes, shots=shots,
                                                cam=cam))
    results["findings"] = findings(results, run_dir)
    results["timing"]["total_s"] = time.perf_counter() - started
    write_results(run_dir, results)
    if report:
        write_report(run_dir)
    return results


def write_results(run_dir: Path, results: dict) -> None:
    """results.json and results.csv (one row per head × seed plus a mean row per head)."""
    _io.atomic_write_json(run_dir / "results.json", results)
    _io.atomic_write_csv(run_dir / "results.csv", _csv_rows(results))


# ----------------------------------------------------------------------------------------------
# small helpers

def _check_folder(path: str | Path | None, option: str) -> None:
    """`path` is a folder or can become one."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise HeadbenchError(f"{option} '{path}' is a file, not a folder; pass a folder")


def _check_options(seeds: int, cam: int) -> None:
    """The options TrainConfig does not check itself."""
    if seeds < 1:
        raise HeadbenchError(f"--seeds must be at least 1 (got {seeds})")
    if cam < 0:
        raise HeadbenchError(f"--cam must be 0 or more images per head (got {cam})")


def _head_specs(heads: Sequence[str | _heads.HeadSpec], hidden: Sequence[int],
                dropout: float | None) -> list[_heads.HeadSpec]:
    specs = [_head_spec(h, hidden, dropout) for h in heads]
    if not specs:
        raise HeadbenchError("--heads is empty; name at least one head, e.g. --heads gap,flatten")
    labels = [s.label for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise HeadbenchError(f"--heads names {', '.join(twice)} more than once; list each head once")
    return specs


def _head_spec(head: str | _heads.HeadSpec, hidden: Sequence[int], dropout: float | None):
    if isinstance(head, _heads.HeadSpec):
        return head
    if head not in _heads.list_heads():
        raise unknown("head", head, _heads.list_heads())
    return _heads.HeadSpec(head, hidden=tuple(hidden) or None, dropout=dropout)


def _metric(seed_row: dict, role: str, key: str):
    return seed_row[role].get(key)


def _latency(module: torch.nn.Module, shape: tuple, run: RunData) -> dict:
    """Latency at batch 1 and throughput at batch 32, with the precision used for extraction."""
    m = _evaluate.measure_latency(module, shape, device=run.device, batch_sizes=(1, 32),
                                  autocast_dtype=torch.bfloat16 if run.precision == "bf16" else None,
                                  channels_last=True)
    return dict(latency_ms_b1=m[1]["ms_per_image"], throughput_b32=m[32]["images_per_s"])


def _run_name(data: Path, backbone: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = data.resolve().name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stamp}-{name}-{backbone}")


def _make_run_dir(out: Path, name: str) -> Path:
    base = out / "runs" / name
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


def _dataset_summary(run: RunData) -> dict:
    scan, splits = run.scan, run.splits
    leakage = _data.find_leakage(scan, splits)
    if leakage:
        _progress.warn(f"{len(leakage)} byte-identical files appear in more than one split "
                       "(leakage; listed in results.json)")
    return dict(root=str(scan.root), name=scan.root.name, layout=scan.layout, classes=scan.classes,
                split_description=splits.description, counts=splits.counts(),
                n_skipped=len(scan.skipped) + len(run.features.failures),
                leakage=[_jsonable_leak(leak, scan.root) for leak in leakage])


def _jsonable_leak(leak: dict, root: Path) -> dict:
    return dict(digest=leak["digest"],
                roles={r: [_rel(p, root) for p in paths] for r, paths in leak["roles"].items()})


def _rel(path: Path, root: Path) -> str:
    try:  # no resolve(): a symlink is listed where it lies, not where it points
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _items(run: RunData) -> list[dict]:
    """Every image of every split, so analyses and reports can find them again."""
    scan = run.scan
    return [dict(path=_rel(scan.items[i].path, scan.root), label=scan.items[i].label,
                 digest=scan.items[i].digest, role=role)
            for role in ("train", "val", "test") for i in getattr(run.splits, role)]


def _skipped_rows(run: RunData) -> list[dict]:
    rows = [dict(path=_rel(p, run.scan.root), reason=r) for p, r in run.scan.skipped]
    rows += [dict(path=_rel(run.scan.items[i].path, run.scan.root), reason=r)
             for i, r in sorted(run.features.failures.items())]
    return rows


def _prediction_rows(run: RunData, label: str, entry: dict) -> list[dict]:
    rows = []
    test_items = run.items("test")
    y = run.y["test"]
    for seed, logits in run.predictions[label]:
        logp = torch.log_softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        pred = logp.argmax(1)
        for i, item in enumerate(test_items):
            rows.append(dict(head=label, seed=seed, index=i, path=_rel(item.path, run.scan.root),
                             label=run.classes[y[i]], pred=run.classes[pred[i]],
                             p_pred=f"{np.exp(logp[i, pred[i]]):.6f}",
                             p_label=f"{np.exp(logp[i, y[i]]):.6f}", loss=f"{-logp[i, y[i]]:.6f}"))
    return rows


def _csv_rows(results: dict) -> list[dict]:
    rows = []
    for h in results["heads"]:
        base = dict(head=h["head"], head_params=h["head_params"], total_params=h["total_params"],
                    head_flops=h["head_flops"], weight_decay=h["weight_decay"])
        for s in h["seeds"]:
            rows.append(dict(base, seed=s["seed"], test_accuracy=s["test"]["accuracy"],
                             test_top5=s["test"].get("top5"), test_macro_f1=s["test"]["macro_f1"],
                             test_nll=s["test"]["nll"], test_ece=s["test"]["ece"],
                             train_accuracy=s["train"]["accuracy"], val_accuracy=s["val"]["accuracy"],
                             overfit_gap=s["train"]["accuracy"] - s["test"]["accuracy"],
                             best_epoch=s["best_epoch"], train_time_s=s["train_time_s"]))
        summ = h["summary"]
        rows.append(dict(base, seed="mean", **{
            "test_accuracy": summ["test_accuracy"]["mean"],
            "test_accuracy_lo": summ["test_accuracy"]["lo"],
            "test_accuracy_hi": summ["test_accuracy"]["hi"],
            "test_top5": summ["top5"]["mean"] if summ.get("top5") else None,
            "test_macro_f1": summ["macro_f1"]["mean"], "test_nll": summ["nll"]["mean"],
            "test_ece": summ["ece"]["mean"], "train_accuracy": summ["train_accuracy"]["mean"],
            "val_accuracy": summ["val_accuracy"]["mean"], "overfit_gap": summ["overfit_gap"]["mean"],
            "train_time_s": summ["train_time_s"], "latency_ms_b1": h["latency_ms_b1"],
            "throughput_b32": h["throughput_b32"], "model_size_bytes": h["model_size_bytes"]}))
    return rows


def _machine() -> dict:
    import timm
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(platform=platform.platform(), cpu=cpu, cores=torch.get_num_threads(), gpu=gpu,
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__)
