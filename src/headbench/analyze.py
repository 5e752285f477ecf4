"""Analyses that test the forum claims about heads, measured on the user's own images.

Every analysis reuses the trained heads of a run (no retraining, except `shots`) and the feature
cache: shifted or resized test images are cached under their own view key, so a second run of
the same analysis is cheap.

- ``shifts`` (translation): accuracy and consistency on test crops translated by s pixels. Every
  view is a crop of the same resize to max(S/crop_pct, S + 2·margin) with margin = max(shifts),
  its window offset by s·(dx, dy) for each direction; so no padding enters any view.
  *Consistency at s* is the fraction of (image, direction) pairs whose top-1 class agrees between
  the unshifted view and the view shifted by s in that direction: pairs exactly s pixels apart.
  (Zhang 2019 compares two random shifts per image, so its pairs are at varying distances; an
  ImageNet ResNet50 scores about 89% there.) Consistency at 0 is 1 by definition. *Accuracy at
  s* is averaged over the directions. Because every view comes from the larger resize, accuracy
  at shift 0 can differ slightly from the run's test accuracy (standard resize).
- ``sizes`` (resolution): every head trained at the base size, evaluated on test images at other
  input sizes. Fixed-size heads (flatten, avgpool) are reported as not applicable where the
  feature map differs from the one they were built for, never silently resized.
- ``shots`` (small data): every head retrained on stratified subsets of k training images per
  class (several seeds; the subset differs per seed), at the weight decay its sweep chose, with
  the unchanged val split for early stopping, evaluated on the full test split.
- ``cam`` (class activation maps): exact CAMs (Zhou et al. 2016) for heads whose logits are
  linear in the pooled features (gap, dense_map without hidden layers), Grad-CAM (Selvaraju et
  al. 2017) on the feature map for the others; PNG overlays of confidently right and wrong test
  images.
- ``findings``: plain-words statements of what the numbers support, each with its interval;
  a difference is called significant only when every interval computed for it excludes zero.

Every `ci` in the output is `{"mean", "lo", "hi", "values"}` over seeds (`lo`/`hi` null with one
seed; `values` per seed, in the order of the analysis' `seed_ids` list).
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import io as _io
from . import progress as _progress
from . import train as _train
from .errors import HeadbenchError
from .evaluate import bootstrap_diff_ci, ci_summary, mean_ci, paired_diff_ci
from .heads import Head, HeadSpec, create_head

DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
UNIT = (0.0, 1.0)  # accuracies and consistencies: intervals are clipped to it
MIN_SIZE = 32
CAM_ALPHA = 0.45
CAM_COLORMAP = "jet"
CONSISTENCY_DEFINITION = (
    "fraction of (test image, direction) pairs whose top-1 class agrees between the unshifted "
    "view and the view shifted by s pixels in that direction")


# ---------------------------------------------------------------------------------------------
# the run context: what the analyses need, from compare's memory or from a run folder

@dataclass
class SplitItems:
    """The images of one split: paths, integer labels and content digests, in split order."""

    paths: list[Path]
    labels: np.ndarray
    digests: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class HeadRun:
    """One trained head of a run: its spec, chosen weight decay and weights per seed."""

    spec: HeadSpec
    weight_decay: float
    states: dict[int, dict[str, torch.Tensor]]
    best_seed: int


@dataclass
class RunContext:
    """Everything the analyses read; built by compare (`from_compare`) or from disk.

    Attributes:
        backbone: the run's Backbone (its `data_config` is the run's).
        classes: class names; labels index into them.
        items: 'train', 'val', 'test' -> SplitItems.
        heads: head label (as in results.json) -> HeadRun.
        seeds: the run's seeds.
        train_config: the run's TrainConfig (shots retrain with it).
        precision: resolved feature precision ('fp32' or 'bf16'), part of the cache key.
        cache_dir: feature cache folder (None: the default).
        run_dir: the run folder (CAM overlays are written under it).
        features: role -> base-view features (N, C, H, W) aligned with `items[role]`; filled
            from the cache when absent.
        device: where heads run (None: cuda when available).
        verify_digests: re-hash image files before extracting new views (runs re-opened from
            disk: a changed file must not be cached under its old digest).
    """

    backbone: Any
    classes: list[str]
    items: dict[str, SplitItems]
    heads: dict[str, HeadRun]
    seeds: list[int]
    train_config: _train.TrainConfig
    precision: str = "fp32"
    cache_dir: Path | None = None
    run_dir: Path | None = None
    features: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    verify_digests: bool = False
    _verified: set = field(default_factory=set, repr=False)

    @property
    def input_size(self) -> int:
        return int(self.backbone.data_config["input_size"][-1])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the base-size feature map."""
        if "test" in self.features:
            return tuple(int(d) for d in self.features["test"].shape[1:])
        return tuple(int(d) for d in self.backbone.feature_shape())

    def make_head(self, label: str, seed: int | None = None) -> Head:
        """A fresh head `label`, with the weights of `seed` loaded when given, in eval mode."""
        c, h, w = self.feature_shape
        head = create_head(self.heads[label].spec, c, len(self.classes), (h, w))
        if seed is not None:
            head.load_state_dict(self.heads[label].states[seed])
        return head.eval()

    def view_features(self, role: str, view: Any = None) -> Any:
        """Features (N, C, H, W) of split `role` at `view` (default: the base view), cached."""
        from .data import View
        view = view or View()
        if view == View() and role in self.features:
            return self.features[role]
        fs = self._extract(role, view)
        X = fs.take(np.arange(len(self.items[role])))
        if view == View():
            self.features[role] = X
        return X

    def _extract(self, role: str, view: Any) -> Any:
        from .features import extract
        split = self.items[role]
        if self.verify_digests and role not in self._verified:
            _verify_digests(split)
            self._verified.add(role)
        fs = extract(self.backbone, split.paths, split.digests, view=view,
                     precision=self.precision, cache_dir=self.cache_dir, device=self.device,
                     description=f"features {role} {view.key}")
        if fs.failures:
            i, reason = sorted(fs.failures.items())[0]
            raise HeadbenchError(f"{role} image '{split.paths[i]}' can no longer be read "
                                 f"({reason}); the dataset changed since the run: re-run compare")
        return fs

    @classmethod
    def from_compare(cls, run: Any, run_dir: Path, results: dict) -> "RunContext":
        """The context from compare's in-memory `RunData` (no disk reads, no re-extraction)."""
        items = {role: SplitItems([it.path for it in run.items(role)], np.asarray(run.y[role]),
                                  [it.digest for it in run.items(role)])
                 for role in ("train", "val", "test")}
        heads = {}
        for entry in results["heads"]:
            fit = run.fits[entry["head"]]
            heads[entry["head"]] = HeadRun(HeadSpec.from_dict(entry["spec"]), fit.weight_decay,
                                           {r.seed: r.state_dict for r in fit.runs},
                                           int(entry["best_seed"]))
        return cls(run.backbone, list(run.classes), items, heads, list(run.seeds), run.config,
                   precision=run.precision, cache_dir=run.cache_dir, run_dir=Path(run_dir),
                   features=dict(run.X), device=run.device)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, cache_dir: str | Path | None = None,
                     precision: str | None = None) -> "RunContext":
        """The context of a finished run: backbone re-created, head weights loaded per seed."""
        run_dir = Path(run_dir)
        results = _read_json(run_dir / "results.json")
        config = _read_json(run_dir / "config.json")
        dataset = _read_json(run_dir / "dataset.json")
        backbone = _load_backbone(run_dir, config, results)
        device = _train.resolve_device(None)
        if precision is None:
            precision = results.get("precision") or config.get("resolved", {}).get("precision")
        else:
            from .features import resolve_precision
            precision = resolve_precision(precision, device)
        if cache_dir is None and config.get("cache_dir"):
            cache_dir = config["cache_dir"]
        items = _split_items(dataset, results)
        heads = {entry["head"]: _load_head_run(run_dir, entry) for entry in results["heads"]}
        seeds = [int(s["seed"]) for s in results["heads"][0]["seeds"]]
        return cls(backbone, list(dataset.get("classes") or results["dataset"]["classes"]), items,
                   heads, seeds, _train.TrainConfig.from_dict(results["train_config"]),
                   precision=precision, cache_dir=Path(cache_dir) if cache_dir else None,
                   run_dir=run_dir, device=device, verify_digests=True)


def _read_json(path: Path) -> dict:
    if not path.parent.is_dir():
        raise HeadbenchError(f"run folder '{path.parent}' does not exist; pass a folder under runs/")
    if not path.is_file():
        raise HeadbenchError(f"'{path}' is missing: pass a run folder written by "
                             "'headbench compare' (runs/<date>-<data>-<backbone>)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HeadbenchError(f"'{path}' is not valid JSON ({e}); re-run compare") from None


def _load_backbone(run_dir: Path, config: dict, results: dict) -> Any:
    """The run's backbone, from its saved copy when there is one, checked against its checksum."""
    from .backbones import create_backbone
    resolved = config.get("resolved", config)
    saved = run_dir / "backbone.safetensors"
    weights = str(saved.resolve()) if saved.is_file() else resolved["weights"]
    expected = results["backbone"]
    backbone = create_backbone(resolved["backbone"], weights, int(resolved["input_size"]))
    if backbone.weights_checksum != expected["weights_checksum"]:
        raise HeadbenchError(f"backbone weights of '{run_dir}' have checksum "
                             f"{backbone.weights_checksum}, the run used "
                             f"{expected['weights_checksum']}: the weights source changed; "
                             "re-run compare")
    # The preprocessing belongs to the weights the run used, whatever source re-created them.
    backbone.data_config = expected["data_config"]
    return backbone


def _split_items(dataset: dict, results: dict) -> dict[str, SplitItems]:
    root = Path(dataset.get("root") or results["dataset"]["root"])
    if not root.is_dir():
        raise HeadbenchError(f"dataset folder '{root}' of this run is missing; the analyses "
                             "need its images: restore it or re-run compare")
    out = {}
    for role in ("train", "val", "test"):
        rows = [it for it in dataset["items"] if it["role"] == role]
        out[role] = SplitItems([root / it["path"] for it in rows],
                               np.array([int(it["label"]) for it in rows], dtype=np.int64),
                               [it["digest"] for it in rows])
    return out


def _load_head_run(run_dir: Path, entry: dict) -> HeadRun:
    from safetensors.torch import load_file
    states = {}
    for s in entry["seeds"]:
        path = run_dir / entry["model_dir"] / f"seed{s['seed']}.safetensors"
        if not path.is_file():
            raise HeadbenchError(f"'{path}' is missing; the analyses reuse every seed's head "
                                 "weights: re-run compare")
        states[int(s["seed"])] = load_file(str(path))
    return HeadRun(HeadSpec.from_dict(entry["spec"]), float(entry["weight_decay"]), states,
                   int(entry["best_seed"]))


def _verify_digests(split: SplitItems) -> None:
    from .data import file_digest
    for path, digest in zip(split.paths, split.digests):
        if not Path(path).is_file() or file_digest(path) != digest:
            raise HeadbenchError(f"image '{path}' is missing or changed since the run; the "
                                 "analyses need the run's images: restore it or re-run compare")


# ---------------------------------------------------------------------------------------------
# options

def _as_list(value: str | int | Iterable | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        value = str(value).split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def parse_shifts(value: str | Iterable[int] | None) -> list[int]:
    """`--shifts` as sorted distinct pixel offsets, 0 always included (the reference view).

    Example:
        >>> parse_shifts("16,8")
        [0, 8, 16]
    """
    parts = _as_list(value)
    if not parts:
        return []
    try:
        shifts = sorted({int(p) for p in parts} | {0})
    except ValueError:
        shifts = [-1]
    if shifts[0] < 0:
        raise HeadbenchError(f"--shifts must be whole pixel offsets ≥ 0 separated by commas, "
                             f"e.g. 0,8,16,32 (got {','.join(parts)})")
    return shifts


def parse_sizes(value: str | Iterable[int] | None) -> list[int]:
    """`--sizes` as sorted distinct input sizes in pixels (each at least 32).

    Example:
        >>> parse_sizes("288,160")
        [160, 288]
    """
    parts = _as_list(value)
    try:
        sizes = sorted({int(p) for p in parts})
    except ValueError:
        sizes = [0]
    if sizes and sizes[0] < MIN_SIZE:
        raise HeadbenchError(f"--sizes must be input sizes of at least {MIN_SIZE} pixels "
                             f"separated by commas, e.g. 160,224,288 (got {','.join(parts)})")
    return sizes


def parse_shots(value: str | Iterable[int | str] | None) -> list[int | str]:
    """`--shots` as sorted distinct images-per-class counts, 'all' (the whole split) last.

    Example:
        >>> parse_shots("all,5,1")
        [1, 5, 'all']
    """
    parts = _as_list(value)
    counts = set()
    for p in parts:
        if p.lower() == "all":
            continue
        if not p.isdigit() or int(p) < 1:
            raise HeadbenchError(f"--shots must be images per class ≥ 1 or 'all', separated by "
                                 f"commas, e.g. 1,5,25,all (got {','.join(parts)})")
        counts.add(int(p))
    return sorted(counts) + (["all"] if any(p.lower() == "all" for p in parts) else [])


# ---------------------------------------------------------------------------------------------
# shared helpers

def _predictions(ctx: RunContext, X: Any, models: dict) -> dict:
    """Top-1 class of every (head, seed) model on features X."""
    return {key: _train.predict_logits(head, X, device=ctx.device).argmax(1)
            for key, head in models.items()}


def _models(ctx: RunContext, labels: Iterable[str] | None = None) -> dict:
    """(label, seed) -> trained head, for every seed of the given heads (default: all)."""
    labels = list(ctx.heads) if labels is None else list(labels)
    return {(label, seed): ctx.make_head(label, seed) for label in labels for seed in ctx.seeds
            if seed in ctx.heads[label].states}


# ---------------------------------------------------------------------------------------------
# translation

def shift_views(shifts: Sequence[int], directions: Sequence[tuple[int, int]] = DIRECTIONS) -> dict:
    """The crops of the translation analysis: (s, direction) -> View; shift 0 is (0, None).

    All views share margin = max(shifts), so they are crops of one and the same resize.
    """
    from .data import View
    margin = max(shifts)
    views = {(0, None): View(margin=margin)}
    for s in shifts:
        for d in (directions if s > 0 else ()):
            views[(s, tuple(d))] = View(shift=(s * d[0], s * d[1]), margin=margin)
    return views


def shift_consistency(reference: np.ndarray, shifted: Sequence[np.ndarray]) -> float:
    """Fraction of (image, view) pairs whose top-1 class equals the reference view's.

    Args:
        reference: top-1 classes on the unshifted views, shape (N,).
        shifted: one (N,) array of top-1 classes per shifted view (e.g. per direction).

    Example:
        >>> shift_consistency(np.array([0, 1]), [np.array([0, 1]), np.array([0, 0])])
        0.75
    """
    shifted = np.stack([np.asarray(p) for p in shifted])
    return float((shifted == np.asarray(reference)[None]).mean())


def translation_analysis(ctx: RunContext, shifts: Sequence[int],
                         directions: Sequence[tuple[int, int]] = DIRECTIONS) -> dict:
    """Accuracy and consistency of every head on test crops translated by each shift.

    Returns the `analyses["shifts"]` section of results.json (see docs/DESIGN.md).
    """
    shifts = parse_shifts(shifts)
    directions = [tuple(int(v) for v in d) for d in directions]
    if not shifts or not directions or any(d == (0, 0) for d in directions):
        raise ValueError("translation needs shifts and non-zero directions")
    views = shift_views(shifts, directions)
    _progress.log(f"translation: {len(views)} crops of {len(ctx.items['test'])} test images, "
                  f"shifts {shifts} px")
    y = ctx.items["test"].labels
    models = _models(ctx)
    preds = {key: _predictions(ctx, ctx.view_features("test", view), models)
             for key, view in views.items()}
    heads = {}
    for label in ctx.heads:
        acc: dict[int, list] = {s: [] for s in shifts}
        cons: dict[int, list] = {s: [] for s in shifts}
        for seed in ctx.seeds:
            ref = preds[(0, None)][(label, seed)]
            for s in shifts:
                views_s = [ref] if s == 0 else [preds[(s, d)][(label, seed)] for d in directions]
                acc[s].append(float(np.mean([np.mean(p == y) for p in views_s])))
                cons[s].append(shift_consistency(ref, views_s))
        heads[label] = {"accuracy": {str(s): ci_summary(acc[s], bounds=UNIT) for s in shifts},
                        "consistency": {str(s): ci_summary(cons[s], bounds=UNIT)
                                        for s in shifts}}
    return {"shifts": shifts, "margin": max(shifts), "directions": [list(d) for d in directions],
            "seed_ids": list(ctx.seeds), "consistency_definition": CONSISTENCY_DEFINITION,
            "heads": heads}


# ---------------------------------------------------------------------------------------------
# resolution

def not_applicable(map_size: Sequence[int]) -> dict:
    """The entry of a fixed-size head at a size whose feature map it was not built for."""
    return {"not_applicable": f"built for a {map_size[0]}×{map_size[1]} map"}


def resolution_analysis(ctx: RunContext, sizes: Sequence[int]) -> dict:
    """Accuracy of every head (trained at the base size) on test images at other input sizes.

    The base size is always evaluated too. Returns the `analyses["sizes"]` section.
    """
    from .data import View
    base = ctx.input_size
    sizes = sorted(set(parse_sizes(sizes)) | {base})
    _progress.log(f"resolution: test images at {sizes} px (heads trained at {base} px)")
    y = ctx.items["test"].labels
    heads: dict[str, dict] = {label: {} for label in ctx.heads}
    map_sizes = {}
    for size in sizes:
        map_size = tuple(int(d) for d in ctx.backbone.feature_shape(input_size=size)[1:])
        map_sizes[str(size)] = list(map_size)
        runs = [label for label in ctx.heads if _applies(ctx, label, map_size)]
        for label in set(ctx.heads) - set(runs):
            heads[label][str(size)] = not_applicable(ctx.feature_shape[1:])
        if not runs:
            continue
        view = View() if size == base else View(size=size)
        preds = _predictions(ctx, ctx.view_features("test", view), _models(ctx, runs))
        for label in runs:
            heads[label][str(size)] = ci_summary([float(np.mean(preds[(label, s)] == y))
                                                  for s in ctx.seeds], bounds=UNIT)
    heads = {label: {str(s): heads[label][str(s)] for s in sizes} for label in ctx.heads}
    return {"sizes": sizes, "base": base, "map_sizes": map_sizes, "seed_ids": list(ctx.seeds),
            "heads": heads}


def _applies(ctx: RunContext, label: str, map_size: tuple[int, int]) -> bool:
    """Whether head `label` runs on a feature map of `map_size` (global-pooling heads always)."""
    head = ctx.make_head(label)
    return not head.fixed_size or tuple(map_size) == head.map_size


# ---------------------------------------------------------------------------------------------
# small data

def stratified_subset(labels: np.ndarray, per_class: int | str, seed: int
                      ) -> tuple[np.ndarray, list[int]]:
    """Sorted indices of `per_class` items of every class drawn with `seed`; 'all' takes all.

    Each class is permuted once per seed and its first k taken, so for one seed the subsets are
    nested (the 1-shot images are among the 5-shot ones) and differ between seeds.

    Returns:
        (indices, classes that have fewer than `per_class` items and are taken whole).

    Example:
        >>> idx, short = stratified_subset(np.array([0, 0, 0, 1]), 2, seed=0)
        >>> len(idx), short
        (3, [1])
    """
    labels = np.asarray(labels)
    if per_class == "all":
        return np.arange(len(labels)), []
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:per_class])
        if len(members) < per_class:
            short.append(int(cls))
    return np.sort(np.concatenate(chosen)), short


def shots_analysis(ctx: RunContext, shots: Sequence[int | str],
                   seeds: Sequence[int] | None = None) -> dict:
    """Every head retrained on k training images per class; accuracy and train − test gap.

    Protocol per (k, seed): a stratified subset drawn with that seed, the head initialised under
    that seed and trained with `train.train_head` at the weight decay its sweep chose in the run
    (no new sweep), early stopping on the unchanged val split, evaluated on the full test split.
    'all' (or a k that takes every image) reuses the run's own heads of that seed: same data,
    same protocol. Returns the `analyses["shots"]` section.
    """
    shots = parse_shots(shots)
    seeds = list(ctx.seeds if seeds is None else seeds)
    X_train, y_train = ctx.view_features("train"), ctx.items["train"].labels
    device = _train.resolve_device(ctx.train_config.device)
    X_val = _train.Features(ctx.view_features("val"), device)
    X_test = _train.Features(ctx.view_features("test"), device)
    y_val, y_test = ctx.items["val"].labels, ctx.items["test"].labels
    rows: dict[str, dict[str, dict[str, list]]] = {}
    n_train, short_classes = {}, {}
    total = len(shots) * len(seeds) * len(ctx.heads)
    with _progress.progress("small data: training heads", total=total, unit="run") as bar:
        for k in shots:
            for seed in seeds:
                idx, short = stratified_subset(y_train, k, seed)
                n_train[str(k)] = int(len(idx))
                if short:
                    short_classes[str(k)] = [ctx.classes[c] for c in short]
                Xs = X_train if len(idx) == len(y_train) else X_train[idx]
                for label in ctx.heads:
                    bar.set_postfix(f"{label} k={k} seed {seed}")
                    head = _shot_head(ctx, label, seed, Xs, y_train[idx], X_val, y_val,
                                      whole=len(idx) == len(y_train))
                    train_acc = _accuracy(head, Xs, y_train[idx], device)
                    test_acc = _accuracy(head, X_test, y_test, device)
                    cell = rows.setdefault(label, {}).setdefault(str(k), {
                        "test_accuracy": [], "train_accuracy": [], "overfit_gap": []})
                    cell["test_accuracy"].append(test_acc)
                    cell["train_accuracy"].append(train_acc)
                    cell["overfit_gap"].append(train_acc - test_acc)
                    bar.advance()
    heads = {label: {k: {m: ci_summary(v, bounds=(-1.0, 1.0) if m == "overfit_gap" else UNIT)
                         for m, v in cell.items()} for k, cell in per_k.items()}
             for label, per_k in rows.items()}
    return {"shots": [str(k) for k in shots], "seeds": len(seeds), "seed_ids": seeds,
            "n_train": n_train, "short_classes": short_classes, "heads": heads}


def _shot_head(ctx: RunContext, label: str, seed: int, X: Any, y: np.ndarray, X_val: Any,
               y_val: np.ndarray, whole: bool) -> Head:
    run = ctx.heads[label]
    if whole and seed in run.states:
        return ctx.make_head(label, seed)
    with _train.seeded(seed):
        head = ctx.make_head(label)
    _train.train_head(head, X, y, X_val, y_val, ctx.train_config, run.weight_decay, seed)
    return head.eval()


def _accuracy(head: Head, X: Any, y: np.ndarray, device: torch.device) -> float:
    return float(np.mean(_train.predict_logits(head, X, device=device).argmax(1) == y))


# ---------------------------------------------------------------------------------------------
# class activation maps

def exact_cam(head: Head, feature_map: torch.Tensor) -> torch.Tensor:
    """Class activation maps of a head whose logits are linear in the pooled features.

    CAM_k(h, w) = W_k · f(:, h, w) + b_k (Zhou et al. 2016, with the bias spread over positions),
    so the mean of CAM_k over positions is exactly the logit of class k for gap and dense_map.

    Args:
        head: a Head with `is_linear_on_pooled` (gap, dense_map without hidden layers).
        feature_map: (C, H, W) or (1, C, H, W) backbone features.

    Returns:
        (K, H, W) float tensor.

    Example:
        >>> head = create_head("gap", 8, 3, (4, 4)).eval()
        >>> f = torch.randn(8, 4, 4)
        >>> torch.allclose(exact_cam(head, f).mean((1, 2)), head(f[None])[0], atol=1e-5)
        True
    """
    f = _chw(feature_map)
    W, b = head.classifier_weights()
    return torch.einsum("kc,chw->khw", W.float().cpu(), f) + b.float().cpu()[:, None, None]


def grad_cam(head: Head, feature_map: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM on the feature map: ReLU(Σ_c α_c f_c), α_c = spatial mean of ∂logit/∂f_c.

    Works for any head (fixed-size heads need the map size they were built for).

    Args:
        head: any head mapping (N, C, H, W) to (N, K).
        feature_map: (C, H, W) or (1, C, H, W) backbone features.
        class_index: the class whose logit is explained (usually the predicted one).

    Returns:
        (H, W) non-negative float tensor.
    """
    f = _chw(feature_map).clone().requires_grad_(True)
    param = next(head.parameters(), None)
    was_training = head.training
    head.eval()
    try:
        with torch.enable_grad():
            x = f[None].to(param.device if param is not None else "cpu")
            logit = head(x)[0, class_index]
            (grad,) = torch.autograd.grad(logit, f)
    finally:
        head.train(was_training)
    alpha = grad.mean(dim=(1, 2))
    return F.relu(torch.einsum("c,chw->hw", alpha, f.detach()))


def _chw(feature_map: torch.Tensor | np.ndarray) -> torch.Tensor:
    f = torch.as_tensor(feature_map).float().cpu()  # numpy float16 rows from the cache too
    if f.dim() == 4 and f.shape[0] == 1:
        f = f[0]
    if f.dim() != 3:
        raise ValueError(f"a feature map must be (C, H, W), got shape {tuple(f.shape)}")
    return f


def overlay_cam(image: np.ndarray, cam: torch.Tensor, alpha: float = CAM_ALPHA,
                colormap: str = CAM_COLORMAP) -> "Image.Image":
    """`cam` upsampled to the image, min-max scaled, coloured and blended over it.

    Args:
        image: (S, S, 3) uint8 RGB, the crop the backbone saw.
        cam: (H, W) class activation map.
        alpha: weight of the colour map in the blend.

    Returns:
        PIL RGB image of the image's size.
    """
    import matplotlib
    from PIL import Image
    h, w = image.shape[:2]
    up = F.interpolate(cam.float()[None, None], size=(h, w), mode="bilinear",
                       align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    scaled = ((up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)).numpy()
    heat = matplotlib.colormaps[colormap](scaled)[..., :3]
    blend = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * heat
    return Image.fromarray(np.clip(np.round(blend * 255), 0, 255).astype(np.uint8))


def seen_image(path: Path, data_config: dict) -> np.ndarray:
    """The test image as the backbone saw it at the base view: resized, center-cropped, RGB."""
    from .data import View, load_image, make_transform
    x = make_transform(data_config, View())(load_image(path))
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(data_config["std"], dtype=torch.float32)[:, None, None]
    rgb = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(rgb * 255).astype(np.uint8)


def safe_name(name: str) -> str:
    """A class name usable in a file name: runs of other characters become '_'.

    Example:
        >>> safe_name("golden retriever/dog")
        'golden_retriever_dog'
    """
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("._") or "class"


def cam_analysis(ctx: RunContext, per_head: int) -> dict:
    """CAM overlays of `per_head` correct and `per_head` wrong test images per head.

    Uses each head's best seed (chosen on val). The images are the most confident correct and
    the most confident wrong predictions (fewer when there are not enough); files are written
    to `analyses/cam/<head>/{ok|wrong}_<test index>_true-<cls>_pred-<cls>.png`. Returns the
    `analyses["cam"]` section.
    """
    if ctx.run_dir is None:
        raise ValueError("cam_analysis writes overlays into the run folder: set ctx.run_dir")
    if per_head < 1:
        raise HeadbenchError(f"--cam must be at least 1 image per head (got {per_head})")
    X = ctx.view_features("test")
    test = ctx.items["test"]
    heads = {}
    with _progress.progress("class activation maps", total=len(ctx.heads), unit="head") as bar:
        for label, run in ctx.heads.items():
            heads[label] = _cams_of_head(ctx, label, run.best_seed, X, test, per_head)
            bar.advance()
    return {"per_head": int(per_head), "colormap": CAM_COLORMAP, "alpha": CAM_ALPHA,
            "heads": heads}


def _cams_of_head(ctx: RunContext, label: str, seed: int, X: Any, test: SplitItems,
                  per_head: int) -> dict:
    head = ctx.make_head(label, seed).cpu()
    logits = _train.predict_logits(head, X, device="cpu")
    pred, conf = logits.argmax(1), torch.softmax(torch.from_numpy(logits), 1).amax(1).numpy()
    ok = pred == test.labels
    chosen = [("ok", i) for i in _most_confident(np.flatnonzero(ok), conf, per_head)]
    chosen += [("wrong", i) for i in _most_confident(np.flatnonzero(~ok), conf, per_head)]
    folder = ctx.run_dir / "analyses" / "cam" / label
    for old in folder.glob("*.png") if folder.is_dir() else ():
        if old.name.startswith(("ok_", "wrong_")):
            old.unlink()  # overlays of an earlier run of this analysis
    exact = head.is_linear_on_pooled
    files = []
    for kind, i in chosen:
        f = torch.from_numpy(np.asarray(X[i:i + 1], dtype=np.float32))[0]
        cam = exact_cam(head, f)[pred[i]] if exact else grad_cam(head, f, int(pred[i]))
        png = overlay_cam(seen_image(test.paths[i], ctx.backbone.data_config), cam)
        name = (f"{kind}_{i}_true-{safe_name(ctx.classes[test.labels[i]])}"
                f"_pred-{safe_name(ctx.classes[pred[i]])}.png")
        _io.atomic_write_bytes(folder / name, _png_bytes(png))
        files.append(f"analyses/cam/{label}/{name}")
    return {"method": "exact CAM" if exact else "Grad-CAM", "seed": int(seed), "files": files}


def _most_confident(indices: np.ndarray, conf: np.ndarray, n: int) -> list[int]:
    order = sorted(indices.tolist(), key=lambda i: (-conf[i], i))
    return order[:n]


def _png_bytes(image: Any) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# running analyses

def run_analyses(ctx: RunContext, shifts: Any = None, sizes: Any = None, shots: Any = None,
                 cam: int = 0) -> dict:
    """Run the requested analyses; returns the `analyses` entries of those that ran."""
    shifts, sizes, shots = parse_shifts(shifts), parse_sizes(sizes), parse_shots(shots)
    if cam < 0:
        raise HeadbenchError(f"--cam must be 0 or more images per head (got {cam})")
    out: dict[str, dict] = {}
    steps = [("shifts", shifts, translation_analysis), ("sizes", sizes, resolution_analysis),
             ("shots", shots, shots_analysis), ("cam", cam, cam_analysis)]
    for key, option, analysis in steps:
        if option:
            started = time.perf_counter()
            out[key] = analysis(ctx, option)
            out[key]["time_s"] = round(time.perf_counter() - started, 3)
    return out


def analyze(run_dir: str | Path, shifts: Any = None, sizes: Any = None, shots: Any = None,
            cam: int = 0, cache_dir: str | Path | None = None, precision: str | None = None,
            quiet: bool = False) -> dict:
    """Add analyses to a finished run without retraining its heads.

    Re-opens `run_dir` (config.json, dataset.json, the heads' per-seed weights), runs the
    requested analyses, merges them into results.json["analyses"] (earlier ones are kept unless
    re-run), rewrites the findings and the report. Returns the updated results.

    Example:
        >>> hb.analyze("runs/20250101-120000-shapes-resnet18", shifts="0,8,16")  # doctest: +SKIP
    """
    was_quiet = _progress.is_quiet()
    _progress.set_quiet(quiet or was_quiet)
    try:
        run_dir = Path(run_dir)
        if not (parse_shifts(shifts) or parse_sizes(sizes) or parse_shots(shots) or cam):
            raise HeadbenchError("nothing to analyse: pass --shifts, --sizes, --shots or --cam")
        results = _read_json(run_dir / "results.json")
        ctx = RunContext.from_run_dir(run_dir, cache_dir=cache_dir, precision=precision)
        results.setdefault("analyses", {}).update(
            run_analyses(ctx, shifts=shifts, sizes=sizes, shots=shots, cam=cam))
        results["findings"] = findings(results, run_dir)
        _io.atomic_write_json(run_dir / "results.json", results)
        _write_report(run_dir)
        return results
    finally:
        _progress.set_quiet(was_quiet)


def _write_report(run_dir: Path) -> None:
    try:
        from .report import write_report
    except ModuleNotFoundError as e:
        if e.name != "headbench.report":
            raise
        return
    write_report(run_dir)


# ---------------------------------------------------------------------------------------------
# findings

def findings(results: dict, run_dir: str | Path | None = None) -> list[dict]:
    """Plain-words statements of what the run's numbers support, each with its interval.

    - ``accuracy``: every head against the selected head (`results["best_head"]`, chosen on
      validation accuracy, so the test split never picks the reference): a paired t
      interval over seeds (seeds matched by id) and, when `run_dir` has predictions.csv, a
      paired bootstrap over test images of the per-image correctness averaged over seeds.
    - ``overfitting``, ``translation``, ``small_data``: gap (or the best global-pooling head)
      against each fixed-size head (flatten, avgpool): train − test gap, consistency at the
      largest shift, test accuracy at the smallest shot count; paired t over seeds.
    - ``resolution``: which heads apply at other input sizes and how accuracy changes there.

    A difference is `significant` only when every interval computed for it excludes zero;
    otherwise the text says "no significant difference". With one seed there is no interval
    over seeds, which the text says; the bootstrap is then the only evidence.
    """
    heads = [h for h in results.get("heads", []) if h.get("seeds")]
    if len(heads) < 1:
        return []
    correct = _correct_per_image(Path(run_dir)) if run_dir else {}
    best = _selected_head(results, heads)
    out = [_accuracy_finding(best, h, correct) for h in heads if h is not best]
    analyses = results.get("analyses") or {}
    ref = _reference_head(heads)
    for other in [h for h in heads if h.get("fixed_size")] if ref else []:
        if ref is not best and other is not best:  # the forum question, whatever won
            out.append(_accuracy_finding(ref, other, correct))
        out.append(_overfit_finding(ref, other))
        if "shifts" in analyses:
            out.append(_translation_finding(ref, other, analyses["shifts"]))
        if "shots" in analyses:
            out.append(_shots_finding(ref, other, analyses["shots"]))
    if "sizes" in analyses:
        out += _resolution_findings(analyses["sizes"], [h for h in (ref, best) if h])
    return [f for f in out if f]


def _seed_metric(entry: dict, role: str, key: str = "accuracy") -> dict[int, float]:
    return {int(s["seed"]): float(s[role][key]) for s in entry["seeds"]
            if s.get(role) and s[role].get(key) is not None}


def _overfit(entry: dict) -> dict[int, float]:
    train, test = _seed_metric(entry, "train"), _seed_metric(entry, "test")
    return {s: train[s] - test[s] for s in train if s in test}


def _mean(values: dict[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


def _val_score(entry: dict) -> tuple[float, float]:
    """Selection score on the val split: mean accuracy, then lower mean NLL."""
    return (_mean(_seed_metric(entry, "val")), -_mean(_seed_metric(entry, "val", "nll")))


def select_head(heads: list[dict]) -> dict:
    """The head to recommend, chosen on the val split only: mean accuracy, then lower NLL."""
    return max(heads, key=_val_score)


def _selected_head(results: dict, heads: list[dict]) -> dict:
    """The run's selected head (chosen on val by compare), else the best on val here."""
    named = [h for h in heads if h["head"] == results.get("best_head")]
    return named[0] if named else select_head(heads)


def _reference_head(heads: list[dict]) -> dict | None:
    """gap (best of its variants on val) if present, else the best global-pooling head on val."""
    pool = [h for h in heads if not h.get("fixed_size")]
    gap = [h for h in pool if h.get("spec", {}).get("name") == "gap"]
    pool = gap or pool
    return max(pool, key=_val_score) if pool else None


@dataclass
class PairedDiff:
    """A paired difference a − b with its intervals (t over seeds, bootstrap over images)."""

    diff: float
    n_seeds: int
    t: tuple[float, float] | None = None
    boot: tuple[float, float] | None = None
    n_images: int = 0

    @property
    def significant(self) -> bool:
        """Every computed interval excludes zero, all on the same side.

        A zero-width interval over seeds (every seed moved by exactly the same amount) says
        nothing about test-set sampling, so alone it never makes a difference significant.
        """
        intervals = [ci for ci in (self.t, self.boot) if ci is not None]
        if self.boot is None and self.t is not None and self.t[0] == self.t[1]:
            return False
        return bool(intervals) and (all(lo > 0 for lo, _ in intervals)
                                    or all(hi < 0 for _, hi in intervals))

    @property
    def lo_hi(self) -> tuple[float | None, float | None]:
        return self.t or self.boot or (None, None)

    def phrase(self, what: str = "difference") -> str:
        """'(difference +0.030, 95% CI [+0.010, +0.050] over 5 seeds; ...)'."""
        parts = [f"{what} {self.diff:+.3f}"]
        if self.t:
            parts.append(f"95% CI [{self.t[0]:+.3f}, {self.t[1]:+.3f}] over {self.n_seeds} seeds")
        else:
            parts.append(f"no interval over seeds with {self.n_seeds} seed"
                         f"{'s' if self.n_seeds != 1 else ''}")
        text = "(" + ", ".join(parts)
        if self.boot:
            only = " only" if not self.t else ""
            text += (f"; paired bootstrap{only} over {self.n_images} test images "
                     f"[{self.boot[0]:+.3f}, {self.boot[1]:+.3f}]")
        return text + ")"

    def fields(self, kind: str, a: str, b: str, text: str) -> dict:
        lo, hi = self.lo_hi
        return {"text": text, "kind": kind, "a": a, "b": b, "diff": self.diff, "lo": lo,
                "hi": hi, "significant": self.significant, "n_seeds": self.n_seeds,
                "seed_ci": list(self.t) if self.t else None,
                "bootstrap_ci": list(self.boot) if self.boot else None}


def paired_difference(a: dict[int, float], b: dict[int, float],
                      correct_a: np.ndarray | None = None,
                      correct_b: np.ndarray | None = None) -> PairedDiff:
    """a − b over the seeds both have (t interval from 2 seeds on), plus a bootstrap over
    test images when per-image correctness of both is given."""
    seeds = sorted(set(a) & set(b))
    diff = float(np.mean([a[s] - b[s] for s in seeds])) if seeds else float("nan")
    t = None
    if len(seeds) >= 2:
        _, lo, hi = paired_diff_ci([a[s] for s in seeds], [b[s] for s in seeds])
        t = (float(lo), float(hi))
    boot, n_images = None, 0
    if correct_a is not None and correct_b is not None and len(correct_a) == len(correct_b) > 0:
        boot_diff, lo, hi = bootstrap_diff_ci(correct_a, correct_b)
        boot, n_images = (float(lo), float(hi)), len(correct_a)
        if not seeds:
            diff = boot_diff
    return PairedDiff(diff, len(seeds), t, boot, n_images)


def _verdict(d: PairedDiff, better: str, worse: str, claim: str = "more accurate") -> str:
    if d.significant:
        return f"{better if d.diff > 0 else worse} is {claim}"
    if d.t is None and d.boot is None:
        return "no interval can be computed, so no difference is claimed"
    return "no significant difference (the interval covers zero)"


def _accuracy_finding(best: dict, other: dict, correct: dict) -> dict:
    a, b = best["head"], other["head"]
    va, vb = _seed_metric(best, "test"), _seed_metric(other, "test")
    d = paired_difference(va, vb, correct.get(a), correct.get(b))
    text = (f"{a} vs {b}: test accuracy {_mean(va):.3f} vs {_mean(vb):.3f} {d.phrase()}"
            f"{_params_phrase(best, other)}; {b}'s train − test gap {_mean(_overfit(other)):.3f}"
            f" vs {_mean(_overfit(best)):.3f} — {_verdict(d, a, b)}")
    return d.fields("accuracy", a, b, text)


def _params_phrase(a: dict, b: dict) -> str:
    pa, pb = a.get("head_params"), b.get("head_params")
    if not pa or not pb:
        return ""
    if pa == pb:
        return " with as many head parameters"
    ratio, word = (pb / pa, "fewer") if pa < pb else (pa / pb, "more")
    return f" with {ratio:.{0 if ratio >= 10 else 1}f}× {word} head parameters"


def _overfit_finding(ref: dict, other: dict) -> dict:
    a, b = other["head"], ref["head"]
    va, vb = _overfit(other), _overfit(ref)
    d = paired_difference(va, vb)
    text = (f"overfitting: {a}'s train − test gap {_mean(va):.3f} vs {b}'s {_mean(vb):.3f} "
            f"{d.phrase()} — {_verdict(d, a, b, 'more overfit')}")
    return d.fields("overfitting", a, b, text)


def _per_seed(ci: dict | None, seeds: Sequence[int]) -> dict[int, float]:
    if not ci or "values" not in ci:
        return {}
    return {int(s): float(v) for s, v in zip(seeds, ci["values"])}


def _translation_finding(ref: dict, other: dict, shifts: dict) -> dict | None:
    a, b = ref["head"], other["head"]
    heads, seeds, s = shifts.get("heads", {}), shifts.get("seed_ids", []), str(max(shifts["shifts"]))
    if a not in heads or b not in heads or s == "0":
        return None
    ca, cb = (_per_seed(heads[h]["consistency"].get(s), seeds) for h in (a, b))
    acc_a, acc_b = (heads[h]["accuracy"][s]["mean"] for h in (a, b))
    d = paired_difference(ca, cb)
    text = (f"translation by {s} px: consistency {a} {_mean(ca):.3f} vs {b} {_mean(cb):.3f} "
            f"{d.phrase()}, accuracy {acc_a:.3f} vs {acc_b:.3f} — "
            f"{_verdict(d, a, b, 'more consistent under shifts')}")
    return d.fields("translation", a, b, text)


def _shots_finding(ref: dict, other: dict, shots: dict) -> dict | None:
    a, b = ref["head"], other["head"]
    heads, seeds = shots.get("heads", {}), shots.get("seed_ids", [])
    if a not in heads or b not in heads or not shots.get("shots"):
        return None
    k = shots["shots"][0]
    va, vb = (_per_seed(heads[h][k]["test_accuracy"], seeds) for h in (a, b))
    ga, gb = (heads[h][k]["overfit_gap"]["mean"] for h in (a, b))
    per = "the whole training split" if k == "all" else f"{k} image{'s' if k != '1' else ''} per class"
    d = paired_difference(va, vb)
    text = (f"small data ({per}): test accuracy {a} {_mean(va):.3f} vs {b} {_mean(vb):.3f} "
            f"{d.phrase()}; train − test gap {ga:.3f} vs {gb:.3f} — "
            f"{_verdict(d, a, b, 'more accurate with this little data')}")
    return d.fields("small_data", a, b, text)


def _resolution_findings(sizes: dict, refs: list[dict]) -> list[dict]:
    heads, base, seeds = sizes.get("heads", {}), str(sizes.get("base")), sizes.get("seed_ids", [])
    others = [str(s) for s in sizes.get("sizes", []) if str(s) != base]
    out = []
    fixed = sorted(h for h, per in heads.items()
                   if any("not_applicable" in per.get(s, {}) for s in others))
    if fixed and others:
        reason = next(heads[fixed[0]][s]["not_applicable"] for s in others
                      if "not_applicable" in heads[fixed[0]].get(s, {}))
        text = (f"resolution: {', '.join(fixed)} cannot run at {', '.join(others)} px ({reason});"
                f" the other heads run at every size")
        out.append({"text": text, "kind": "resolution", "a": None, "b": None, "diff": None,
                    "lo": None, "hi": None, "significant": False})
    for ref in {r["head"]: r for r in refs}.values():
        label = ref["head"]
        if label not in heads or "values" not in heads[label].get(base, {}):
            continue
        at_base = _per_seed(heads[label][base], seeds)
        for s in others:
            at_s = _per_seed(heads[label].get(s), seeds)
            if not at_s:
                continue
            d = paired_difference(at_s, at_base)
            text = (f"resolution: {label} at {s} px {_mean(at_s):.3f} vs {_mean(at_base):.3f} at "
                    f"{base} px {d.phrase('change')} — "
                    + ("accuracy changes significantly" if d.significant else
                       "no significant change" if d.t or d.boot else
                       "no interval can be computed, so no change is claimed"))
            out.append(d.fields("resolution", f"{label}@{s}", f"{label}@{base}", text))
    return out


def _correct_per_image(run_dir: Path) -> dict[str, np.ndarray]:
    """head -> per-test-image correctness averaged over seeds, from predictions.csv.

    Averaging over seeds pools every seed's predictions while keeping the bootstrap's unit the
    test image (the same image under several seeds is not independent evidence).
    """
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return {}
    per: dict[str, dict[int, list]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            per.setdefault(row["head"], {}).setdefault(int(row["index"]), []).append(
                row["label"] == row["pred"])
    return {head: np.array([np.mean(rows[i]) for i in sorted(rows)])
            for head, rows in per.items()}


__all__ = ["RunContext", "SplitItems", "HeadRun", "analyze", "run_analyses",
           "translation_analysis", "resolution_analysis", "shots_analysis", "cam_analysis",
           "exact_cam", "grad_cam", "overlay_cam", "findings", "shift_consistency", "shift_views",
           "stratified_subset", "parse_shifts", "parse_sizes", "parse_shots", "paired_difference",
           "PairedDiff"]
