"""The parts of a run: typed results, each a dataclass that `run.Run` writes to JSON and reads
back (its type hints drive both, and the JSON Schema of results.json).

Metrics per split and seed (`Metrics`, `SeedResult`), intervals over seeds (`CI`,
`HeadSummary`), one head's whole result (`HeadResult`, with its `Variant` when it is an
augmented or fine-tuned twin, and its per-class test metrics, `ClassMetrics`), test
predictions as arrays (`Predictions`), the dataset (`DatasetInfo`, `SplitItems`), the backbone
(`BackboneInfo`), timings and findings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluate import ci_summary, per_class_metrics
from .heads import HeadSpec
from .train import EpochLog, FitResult


@dataclass
class CI:
    """A mean over seeds with its 95% Student-t interval (`lo`/`hi` None with one seed) and the
    per-seed `values`, in seed order."""

    mean: float
    lo: float | None
    hi: float | None
    values: list[float]

    @classmethod
    def of(cls, values: list[float | None], bounds: tuple[float, float] | None = None) -> CI | None:
        """The interval of `values` (None values dropped; None when none is left), clipped to
        `bounds`."""
        summary = ci_summary(values, bounds=bounds)
        return cls(**summary) if summary else None


@dataclass
class Metrics:
    """Classification metrics on one split (see `evaluate.classification_metrics`)."""

    accuracy: float
    top5: float | None
    macro_f1: float
    nll: float
    ece: float
    n: int


@dataclass
class SeedResult:
    """One trained seed of a head: how it trained and its metrics on every split."""

    seed: int
    best_epoch: int
    epochs_run: int
    train_time_s: float
    train: Metrics
    val: Metrics
    test: Metrics
    history: list[EpochLog]


_UNIT = (0.0, 1.0)


@dataclass
class HeadSummary:
    """A head's metrics over its seeds."""

    test_accuracy: CI
    train_accuracy: CI
    val_accuracy: CI
    overfit_gap: CI
    macro_f1: CI
    nll: CI
    ece: CI
    top5: CI | None
    train_time_s: float

    @classmethod
    def of(cls, seeds: list[SeedResult]) -> "HeadSummary":
        def over(role: str, key: str, bounds=_UNIT) -> CI | None:
            return CI.of([getattr(getattr(s, role), key) for s in seeds], bounds)
        return cls(test_accuracy=over("test", "accuracy"), train_accuracy=over("train", "accuracy"),
                   val_accuracy=over("val", "accuracy"),
                   overfit_gap=CI.of([s.train.accuracy - s.test.accuracy for s in seeds], (-1.0, 1.0)),
                   macro_f1=over("test", "macro_f1"), nll=over("test", "nll", None),
                   ece=over("test", "ece"), top5=over("test", "top5"),
                   train_time_s=float(np.mean([s.train_time_s for s in seeds])))


@dataclass
class Variant:
    """How a head entry varies a frozen head of the run (`of`): trained on cached augmented
    views (`kind` 'aug', label `<of>+aug<K>`) or fine-tuned end to end (`kind` 'finetune',
    label `<of>+ft`, starting from `of`'s seed `from_seed`; `settings` is its
    `finetune.FinetuneConfig`, `resumed_from` the epochs a checkpoint held when it resumed)."""

    kind: str
    of: str
    aug_views: int = 0
    from_seed: int | None = None
    settings: dict | None = None
    resumed_from: int = 0


def sweeps_of(fit: FitResult) -> tuple[dict[str, float | None], dict[str, float]]:
    """A head's sweep as results.json keeps it (`HeadResult.sweep`, `wd_sweep`): every setting
    by "lr=…,wd=…" (None: diverged), and the decays at the chosen learning rate."""
    every = {f"lr={lr:g},wd={wd:g}": v if math.isfinite(v) else None
             for (lr, wd), v in fit.sweep.items()}
    decays = {f"{wd:g}": v for (lr, wd), v in fit.sweep.items() if lr == fit.lr}
    return every, decays


@dataclass
class ClassMetrics:
    """One class's test metrics of a head (`evaluate.per_class_metrics`: a ratio with nothing
    to divide by is 0). `support`: the class's test images."""

    class_name: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class_of(p: Predictions, seed: int, labels: np.ndarray,
                 classes: list[str]) -> list[ClassMetrics] | None:
    """Per-class metrics of seed `seed`'s test predictions, in class order; None when `p` has
    no row for that seed."""
    if seed not in p.seeds:
        return None
    m = per_class_metrics(p.pred[p.of_seed(seed)], labels, len(classes))
    return [ClassMetrics(c, float(m["precision"][i]), float(m["recall"][i]), float(m["f1"][i]),
                         int(m["support"][i])) for i, c in enumerate(classes)]


@dataclass
class HeadResult:
    """One head of the run: what it is, what it costs, and how every seed did."""

    head: str                      # the spec's label: the key in tables, file names, findings
    spec: HeadSpec
    any_size: bool
    exact_cam: bool
    head_params: int
    total_params: int
    head_flops: int
    total_flops: int
    weight_decay: float
    wd_sweep: dict[str, float]     # decay -> best val loss at the first seed (at the chosen lr)
    best_seed: int                 # lowest val loss, never test
    model_dir: str                 # relative to the run folder
    model_size_bytes: int | None
    latency_ms_b1: float
    throughput_b32: float
    architecture: str
    seeds: list[SeedResult]
    summary: HeadSummary
    variant: Variant | None = None  # None for a frozen head trained on the base view
    lr: float | None = None        # the peak learning rate chosen on val (None: before schema 2)
    # "lr=0.01,wd=0.01" -> best val loss at the first seed (None: that run diverged)
    sweep: dict[str, float | None] = field(default_factory=dict)
    # the backbone's name in a run of several (`head` is then '<backbone>/<head>'); None: the
    # run's one backbone (schema 4)
    backbone: str | None = None
    # per class on test, from `best_seed`'s predictions: the seed whose model is saved, so they
    # describe the model a user exports (schema 5; older runs: computed when loaded)
    per_class: list[ClassMetrics] | None = None
    # the interquartile range of the batch-1 latency (backbone's + head's quartiles), and the
    # CPU cores other processes used while the head was timed (schema 5; None: not measured)
    latency_range_ms_b1: list[float] | None = None
    latency_other_cores: float | None = None

    @property
    def name(self) -> str:
        """The head's own label, without its backbone."""
        return self.head.rpartition("/")[2]

    @property
    def fixed_size(self) -> bool:
        return not self.any_size

    @property
    def finetuned(self) -> bool:
        """Whether its backbone was fine-tuned (then it runs on its own backbone, not the run's)."""
        return self.variant is not None and self.variant.kind == "finetune"

    def seed_metric(self, role: str, key: str = "accuracy") -> dict[int, float]:
        """{seed: metric} on split `role` (metrics that are None are left out)."""
        out = {s.seed: getattr(getattr(s, role), key) for s in self.seeds}
        return {k: float(v) for k, v in out.items() if v is not None}

    def overfit(self) -> dict[int, float]:
        """{seed: train accuracy − test accuracy}."""
        return {s.seed: s.train.accuracy - s.test.accuracy for s in self.seeds}


@dataclass
class Predictions:
    """Test-split predictions of one head: one row per seed, one column per test image."""

    seeds: list[int]
    pred: np.ndarray     # (S, N) predicted class
    p_pred: np.ndarray   # (S, N) its probability
    p_label: np.ndarray  # (S, N) probability of the true class
    loss: np.ndarray     # (S, N) cross-entropy

    @classmethod
    def of_logits(cls, seeds: list[int], logits: list[np.ndarray], labels: np.ndarray) -> "Predictions":
        logp = np.stack([_log_softmax(np.asarray(x, dtype=np.float64)) for x in logits])
        pred = logp.argmax(2)
        cols = np.arange(len(labels))
        p_pred = np.exp(np.take_along_axis(logp, pred[..., None], 2)[..., 0])
        lp_label = logp[:, cols, labels]
        return cls(list(seeds), pred, p_pred, np.exp(lp_label), -lp_label)

    def correct(self, labels: np.ndarray) -> np.ndarray:
        """(S, N) booleans: seed s got test image n right."""
        return self.pred == np.asarray(labels)[None]

    def of_seed(self, seed: int) -> int:
        """The row of `seed`."""
        return self.seeds.index(seed)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass
class SplitItems:
    """The images of one split in split order: paths relative to the dataset root, labels,
    content digests."""

    paths: list[str]
    labels: np.ndarray
    digests: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DatasetInfo:
    """The image folder as the run saw it: classes, splits, what was skipped, what leaked."""

    root: str
    name: str
    layout: str
    classes: list[str]
    split_description: str
    counts: dict[str, dict[str, int]]
    leakage: list[dict]
    skipped: list[tuple[str, str]]  # (path relative to root, reason)
    splits: dict[str, SplitItems]
    links_outside: int = 0          # symlinks leading out of root: used only with follow_links
    follow_links: bool = False

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def path(self, role: str, i: int) -> Path:
        """Absolute path of image `i` of split `role`."""
        return Path(self.root) / self.splits[role].paths[i]

    def summary(self) -> dict:
        """The dataset section of results.json (no per-image lists)."""
        return dict(root=self.root, name=self.name, layout=self.layout, classes=self.classes,
                    split_description=self.split_description, counts=self.counts,
                    n_skipped=self.n_skipped, leakage=self.leakage,
                    links_outside=self.links_outside, follow_links=self.follow_links)


@dataclass
class BackboneInfo:
    """The backbone of the run: how to re-create it and what it costs."""

    name: str
    timm_name: str
    weights: str
    weights_checksum: str | None
    data_config: dict
    feature_shape: list[int]
    params: int
    flops: int
    latency_ms_b1: float
    throughput_b32: float
    # the interquartile range of the timed batch-1 calls (None: runs before schema 4)
    latency_range_ms_b1: list[float] | None = None


@dataclass
class Timing:
    """Seconds spent per step (`n_extracted`: images that went through the backbone).

    `train_s` is head training alone (`train.fit_heads`: every member of the decay sweep and
    the seeds, selection on val included), so its ratio to `extract_s` is the cost of the heads
    against the backbone pass; evaluating each trained head on every split, its latency and
    FLOPs, and writing heads and members to the run folder are `evaluate_s`."""

    scan_s: float = 0.0
    backbone_s: float = 0.0
    extract_s: float = 0.0
    n_extracted: int = 0
    train_s: float = 0.0
    evaluate_s: float = 0.0
    total_s: float | None = None


@dataclass
class Verdict:
    """Which head to use and why (`verdict.py`): chosen on the selection data by `rule`, said
    in one sentence (`text`). `scores` and `se`: each head's selection score (per-image accuracy
    on the selection data, averaged over seeds: `selection.py`) and its standard error; `best`:
    the highest score."""

    text: str
    rule: str
    selection: str            # where the scores come from: "val", or "cv" (train + val folds)
    n_images: int
    scores: dict[str, float]
    se: dict[str, float]
    best: str
    recommended: str


@dataclass
class Finding:
    """A plain-words statement the numbers support, with the interval(s) behind it."""

    text: str
    kind: str
    a: str | None
    b: str | None
    diff: float | None
    lo: float | None
    hi: float | None
    significant: bool
    n_seeds: int | None = None
    seed_ci: list[float] | None = None
    image_ci: list[float] | None = None  # 95 % interval over test images, from the test below
    test: str | None = None          # the paired test over test images behind `p_value`
    p_value: float | None = None     # raw two-sided p-value of that test
    p_adjusted: float | None = None  # Holm–Bonferroni within `family`
    family: str | None = None        # the family of comparisons adjusted together
    n_tests: int | None = None       # the family's tested comparisons
