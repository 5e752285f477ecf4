"""The options of headbench's jobs: one dataclass per job, checked completely before any work.

`CompareConfig` holds every option of `compare` (`hb.compare(data, **options)` builds one, the
CLI generates its flags, defaults and help from it) and `AnalyzeConfig` those of `analyze`.
Each field carries its help text and, for the CLI, its flag; `__post_init__` parses and checks
every value (names resolved, ranges checked) without touching the disk; `check_paths()` then
checks the data folder, the weights file and that `out` and `cache_dir` are writable. Errors
are `HeadbenchError`s whose `param` is the field name; the CLI shows the flag instead.

    >>> CompareConfig("images", heads="gap,flatten", shifts="16,8").shifts
    (0, 8, 16)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backbones import resolve_name, resolve_weights
from .data import check_fractions
from .checks import items, numbers, positive, real, whole
from .errors import HeadbenchError, unknown
from .finetune import BN_POLICIES, FinetuneConfig, parse_unfreeze
from .heads import DEFAULT_HEADS, MAX_WIDTH, HeadSpec, list_heads
from .images import MAX_SIZE, MIN_SIZE
from .io import check_name
from .runtime import PRECISIONS
from .selection import MODES as SELECTIONS
from .tracking import parse_targets
from .train import LRS, TrainConfig



def option(default: Any, help: str, flag: str | None = None, kw_only: bool | None = None,
           **metadata: Any) -> Any:
    """A dataclass field with the CLI's help text (and flag, default --field-name); `kw_only`
    for a field a subclass redefines (it keeps its place among the keyword-only ones)."""
    meta = dict(help=help, flag=flag, **metadata)
    extra = {} if kw_only is None else {"kw_only": kw_only}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **extra)
    return field(default=default, metadata=meta, **extra)


# ----------------------------------------------------------------------------------------------
# value parsers: each turns a comma list (or a sequence) into checked values, naming the option

def parse_shifts(value: Any) -> tuple[int, ...]:
    """Sorted distinct pixel offsets, 0 always included (the reference view); () for none.

    >>> parse_shifts("16,8")
    (0, 8, 16)
    """
    shifts = numbers(value, "shifts", int, 0, "0,8,16,32", high=MAX_SIZE)
    return tuple(sorted(set(shifts) | {0})) if shifts else ()


def parse_sizes(value: Any) -> tuple[int, ...]:
    """Sorted distinct input sizes in pixels, each at least 32.

    >>> parse_sizes("288,160")
    (160, 288)
    """
    return tuple(sorted(set(numbers(value, "sizes", int, MIN_SIZE, "160,224,288",
                                    high=MAX_SIZE))))


def parse_shots(value: Any) -> tuple[int | str, ...]:
    """Sorted distinct images-per-class counts, 'all' (the whole split) last.

    >>> parse_shots("all,5,1")
    (1, 5, 'all')
    """
    if isinstance(value, str) and value.strip().lower() == "none":
        return ()
    parts = items(value)
    counts = [p for p in parts if p.lower() != "all"]
    if any(not p.isdigit() or int(p) < 1 for p in counts):
        raise HeadbenchError(f"shots must be images per class ≥ 1 or 'all', separated by commas, "
                             f"e.g. 1,5,25,all (got {','.join(parts)})", param="shots")
    return tuple(sorted({int(p) for p in counts})) + (("all",) if len(counts) < len(parts) else ())


def parse_cam(value: Any) -> int:
    """Overlays per head, a whole number ≥ 0 (0: none).

    >>> parse_cam("4")
    4
    """
    return whole(value, "cam", 0)


def _per_backbone_sizes(value: Any, backbones: int) -> int | tuple[int, ...] | None:
    """`input_size`: None, one side for every backbone, or a comma list of one per backbone."""
    if not isinstance(value, (list, tuple)) and "," not in str(value):
        return whole(value, "input_size", MIN_SIZE, none_ok=True, high=MAX_SIZE)
    sizes = numbers(value, "input_size", int, MIN_SIZE, "224,240", high=MAX_SIZE)
    if len(sizes) not in (1, backbones):
        raise HeadbenchError(f"input_size has {len(sizes)} values for {backbones} backbones; "
                             "give one for all or one per backbone", param="input_size")
    return sizes[0] if len(sizes) == 1 else sizes


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _writable(path: str | Path, param: str) -> None:
    """`path` is, or can become, a folder we can write to: its nearest existing folder is probed
    with a temp file. Nothing is created, so an option that fails later leaves no folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise HeadbenchError(f"{param} '{path}' is a file, not a folder; pass a folder", param=param)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise HeadbenchError(f"{param} '{path}' is inside the file '{existing}'; pass a folder",
                             param=param)
    try:
        fd, probe = tempfile.mkstemp(prefix=".headbench-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HeadbenchError(f"{param} '{path}' is not writable ({e.strerror or e}); pass a "
                             "folder you can write to", param=param) from None


# ----------------------------------------------------------------------------------------------
# the jobs' options

@dataclass(kw_only=True)  # after the job's positional field (data, run_dir) in __init__
class AnalysisOptions:
    """The analyses a run can add (`compare` runs them at the end, `analyze` on a finished run)."""

    # Each field is the option of the built-in analysis of that name (its registry entry takes
    # it with `analysis_option`): declared here because compare records it in config.json.
    shifts: tuple[int, ...] = option((), "translations in pixels, e.g. 0,8,16,32", list=True,
                                     parse=parse_shifts)
    sizes: tuple[int, ...] = option((), "test input sizes, e.g. 160,224,288,384", list=True,
                                    parse=parse_sizes)
    shots: tuple[int | str, ...] = option((), "training images per class, e.g. 1,2,5,10,25,all",
                                          list=True, parse=parse_shots)
    cam: int = option(0, "class activation map overlays per head (correct and wrong)",
                      parse=parse_cam)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(AnalysisOptions):
            setattr(self, f.name, f.metadata["parse"](getattr(self, f.name)))

    @property
    def any(self) -> bool:
        return bool(self.requested())

    def requested(self) -> dict[str, Any]:
        """{analysis name: its option} for the analyses asked for."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(AnalysisOptions)
                if getattr(self, f.name)}


def analysis_option(name: str) -> dataclasses.Field:
    """The `AnalysisOptions` field of built-in analysis `name`: its default, help and parser."""
    return next(f for f in dataclasses.fields(AnalysisOptions) if f.name == name)


@dataclass
class CompareConfig(AnalysisOptions):
    """Every option of `compare`, with its default and help; the CLI is generated from it.

    Selection (early stopping, weight decay, best seed, the recommended head) uses the val split
    only; the test split is evaluated once per trained head.
    """

    data: str = option("", "folder of class folders, or with train/ val/ [test/]", positional=True)
    # compare also runs, by default, the analyses that need no extra backbone pass over the
    # training images: the small-data curve and a few CAM overlays (bench/RESULTS.md (j): the
    # default job's wall time 1.2x that of the job before); analyze runs only what it is asked
    shots: tuple[int | str, ...] = option((1, 5, 25, "all"), "training images per class, e.g. "
                                          "1,2,5,10,25,all; none to skip", list=True,
                                          parse=parse_shots, kw_only=True)
    cam: int = option(2, "class activation map overlays per head (correct and wrong; 0: none)",
                      parse=parse_cam, kw_only=True)
    backbone: str = option("efficientnet_lite0",
                           "alias (resnet50, mobilenet (v1), mobilenetv2, mobilenetv3, vgg16, "
                           "efficientnet_lite0/1/2) or any timm name; a comma list compares "
                           "every head on each backbone in one run")
    weights: str = option("default", "embedded | hub | none | PATH (.safetensors/.pth/.pt/.bin); "
                                     "default: embedded for efficientnet_lite0/1/2, else hub; "
                                     "one for all backbones or a comma list, one per backbone")
    heads: tuple = option(DEFAULT_HEADS, "comma list of heads, e.g. gap,flatten", list=True)
    hidden: tuple[int, ...] = option((), "hidden Linear+ReLU sizes, e.g. 1024,512", list=True)
    dropout: float | None = option(None, "dropout before each Linear (default: the head's own)")
    seeds: int = option(3, "seeds per head (intervals are over seeds)")
    epochs: int = option(40, "maximum epochs (early stopping on val)")
    batch_size: int = option(64, "mini-batch size")
    lr: tuple[float, ...] = option(LRS, "peak learning rates swept per head (AdamW after a "
                                        "warm-up), chosen on val", list=True)
    weight_decays: tuple[float, ...] = option((1e-2,), "weight decays swept with them",
                                              list=True)
    patience: int = option(2, "early stopping: epochs without a val-loss improvement (0: off)")
    min_delta: float = option(0.01, "early stopping: the relative val-loss decrease that counts "
                                    "as an improvement")
    min_delta_abs: float = option(1e-3, "early stopping: the least val-loss decrease (nats per "
                                        "image) that counts; the larger of the two decides")
    schedule: str = option("constant", "learning rate after warm-up: constant | cosine (to 0 "
                                       "at --epochs)")
    halving: int = option(10, "sweep: at this epoch, a head's settings outside the better half "
                              "by best val loss so far stop (successive halving; 0: off)")
    selection: str = option("auto", "what the recommendation is scored on: auto (5-fold cross-"
                            "validation over train+val when val has < 300 images or < 30 in a "
                            "class, else val) | cv | val")
    input_size: int | tuple[int, ...] | None = option(
        None, "input side in pixels (default: the backbone's); one for all backbones or a comma "
              "list, one per backbone")
    precision: str = option("auto", "extraction precision: auto | fp32 | bf16")
    head_precision: str = option("fp32", "head-training matmul precision: fp32 | bf16 | auto "
                                         "(bf16 only on CPUs/GPUs with native bf16)")
    cache_dir: str | None = option(None, "feature cache folder (default: $HEADBENCH_CACHE, else "
                                         "the user cache folder)")
    out: str = option(".", "the run is written to OUT/runs/<run name>/")
    val_fraction: float = option(0.15, "fraction of train held out for selection when the "
                                       "folder has no val split")
    split: tuple[float, ...] = option((0.7, 0.15, 0.15), "train,val,test fractions for a folder "
                                                         "of class folders", list=True)
    split_seed: int = option(0, "seed of the stratified split")
    workers: int | None = option(None, "image decoding processes (default: from the CPU count)")
    follow_links: bool = option(False, "use symlinks that lead out of the data folder (by default "
                                       "they are skipped and listed)")
    aug_views: int = option(0, "augmented views cached per training image (random resized "
                               "crop, flip, colour jitter); every head is then also trained "
                               "on them, paired by seed (0: none)")
    finetune: bool = option(False, "fine-tune the best heads end to end from images after the "
                                   "frozen comparison")
    finetune_top: int = option(1, "how many heads to fine-tune: the best N by val accuracy")
    unfreeze: str = option("all", "backbone part fine-tuned: all, or the last N stages")
    bn: str = option("frozen", "backbone normalisation layers when fine-tuning: frozen "
                               "(inference mode, statistics and affine fixed) | train")
    finetune_epochs: int = option(10, "maximum fine-tuning epochs (early stopping on val)")
    finetune_lr: float = option(1e-4, "fine-tuning peak learning rate of the head")
    backbone_lr: float = option(0.1, "backbone learning rate as a fraction of --finetune-lr")
    finetune_batch_size: int = option(32, "fine-tuning mini-batch size")
    finetune_patience: int = option(3, "fine-tuning early-stopping patience in epochs (0: off)")
    restart: bool = option(False, "start a new run instead of resuming an interrupted run of "
                                  "the same options")
    report: bool = option(True, "write report.html", flag="--no-report")
    run_name: str | None = option(None, "run folder name (default: <date>-<data>-<backbone>)",
                                  flag="--name")
    log: tuple[str, ...] = option((), "experiment trackers to log the finished run to: "
                                      "mlflow[=URI] | tensorboard[=DIR], a comma list or "
                                      "repeated (default: none; URI: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///<out>/mlflow.db; DIR: <out>/tensorboard, the "
                                      "run in DIR/<run name>)", list=True, repeat=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.data).strip():
            raise HeadbenchError("data must name an image folder", param="data")
        # absolute paths: config.json must reproduce the run from any working directory
        self.data, self.out = _absolute(self.data), _absolute(self.out)
        self.cache_dir = _absolute(self.cache_dir) if self.cache_dir is not None else None
        self._check_backbones()
        self.hidden = numbers(self.hidden, "hidden", int, 1, "1024,512", high=MAX_WIDTH)
        if self.dropout is not None:
            self.dropout = real(self.dropout, "dropout", 0.0, 1.0)
        self.heads = tuple(self.head_specs())
        for spec in self.heads:  # labels name files and folders of the run
            check_name(spec.label, "head label", param="heads")
        if self.run_name is not None:
            self.run_name = check_name(self.run_name, "run name", param="run_name")
        self.seeds = whole(self.seeds, "seeds", 1)
        # the training options are checked once, by TrainConfig (a comma list parsed first)
        self.lr = numbers(self.lr, "lr", float, example="1e-3,1e-2")
        self.weight_decays = numbers(self.weight_decays, "weight_decays", float,
                                     example="1e-4,1e-2")
        train = self.train_config()
        self.epochs, self.batch_size, self.lr = train.epochs, train.batch_size, train.lr
        self.weight_decays, self.patience = train.weight_decays, train.patience or 0
        self.min_delta, self.min_delta_abs = train.min_delta, train.min_delta_abs
        self.schedule, self.halving = train.schedule, train.halving
        if self.selection not in SELECTIONS:
            raise unknown("selection", str(self.selection), SELECTIONS, param="selection")
        self.input_size = _per_backbone_sizes(self.input_size, len(self.backbone_names()))
        if self.precision not in PRECISIONS:
            raise unknown("precision", str(self.precision), PRECISIONS, param="precision")
        self.split = numbers(self.split, "split", float, 0, "0.7,0.15,0.15")
        self.val_fraction = real(self.val_fraction, "val_fraction", 0.0, 1.0)
        check_fractions(self.split, self.val_fraction)
        self.split_seed = whole(self.split_seed, "split_seed", 0)
        self.workers = whole(self.workers, "workers", 0, none_ok=True)
        self.report, self.follow_links = bool(self.report), bool(self.follow_links)
        self.aug_views = whole(self.aug_views, "aug_views", 0)
        self.finetune, self.restart = bool(self.finetune), bool(self.restart)
        self.finetune_top = whole(self.finetune_top, "finetune_top", 1)
        self.unfreeze = parse_unfreeze(self.unfreeze)
        if self.bn not in BN_POLICIES:
            raise unknown("bn", str(self.bn), BN_POLICIES, param="bn")
        self.finetune_epochs = whole(self.finetune_epochs, "finetune_epochs", 1)
        self.finetune_lr = positive(self.finetune_lr, "finetune_lr")
        self.backbone_lr = real(self.backbone_lr, "backbone_lr", 0.0, 1.0, closed_high=True)
        self.finetune_batch_size = whole(self.finetune_batch_size, "finetune_batch_size", 2)
        self.finetune_patience = whole(self.finetune_patience, "finetune_patience", 0)
        self.log = parse_targets(self.log)

    def _check_backbones(self) -> None:
        """`backbone` as a comma list of distinct known names (each one name when there are
        several: they name the run's model folders), `weights` one value or one per backbone."""
        names = items(self.backbone) if isinstance(self.backbone, str) else items(
            list(self.backbone))
        if not names:
            raise HeadbenchError("backbone is empty; name one, e.g. efficientnet_lite0",
                                 param="backbone")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise HeadbenchError(f"backbone names {', '.join(twice)} more than once; list each "
                                 "backbone once", param="backbone")
        for name in names:
            resolve_name(name)  # unknown names fail here, with suggestions
            if len(names) > 1:
                check_name(name, "backbone (in a list of several)", param="backbone")
        self.backbone = ",".join(names)
        weights = ([str(w) for w in self.weights] if isinstance(self.weights, (list, tuple))
                   else [str(self.weights)])
        if len(names) > 1 and len(weights) == 1:
            weights = items(weights[0]) or weights
        if len(names) > 1 and any("," in w for w in weights):
            raise HeadbenchError("with several backbones a weights file path may not contain a "
                                 "comma (the list's separator); rename or link the file",
                                 param="weights")
        if len(weights) not in (1, len(names)):
            raise HeadbenchError(f"weights has {len(weights)} values for {len(names)} backbones; "
                                 "give one for all or one per backbone", param="weights")
        self.weights = ",".join(weights)

    def backbone_names(self) -> list[str]:
        return self.backbone.split(",")

    def backbones(self) -> list[tuple[str, str, int | None]]:
        """(name, weights, input size) of each backbone, in the order given."""
        names = self.backbone_names()
        weights = self.weights.split(",") if len(names) > 1 else [self.weights]
        sizes = self.input_size if isinstance(self.input_size, tuple) else (self.input_size,)
        return [(name, weights[i % len(weights)], sizes[i % len(sizes)])
                for i, name in enumerate(names)]

    @property
    def several(self) -> bool:
        """Whether the run compares several backbones (model folders heads/<backbone>/<head>)."""
        return len(self.backbone_names()) > 1

    def head_specs(self) -> list:
        """The heads as HeadSpecs (names get this config's hidden and dropout); checked for
        emptiness and duplicates."""
        heads = items(self.heads) if isinstance(self.heads, str) else list(self.heads)
        specs = []
        for h in heads:
            if isinstance(h, dict):
                h = HeadSpec.from_dict(h)
            if not isinstance(h, HeadSpec):
                if str(h) not in list_heads():  # the registry's error, naming this option
                    raise unknown("head", str(h), list_heads(), param="heads")
                h = HeadSpec(str(h), hidden=self.hidden or None, dropout=self.dropout)
            specs.append(h)
        if not specs:
            raise HeadbenchError("heads is empty; name at least one head, e.g. gap,flatten",
                                 param="heads")
        labels = [s.label for s in specs]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise HeadbenchError(f"heads names {', '.join(twice)} more than once; list each "
                                 "head once", param="heads")
        return specs

    def train_config(self) -> TrainConfig:
        """The training protocol these options give."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           patience=self.patience or None, weight_decays=self.weight_decays,
                           min_delta=self.min_delta, min_delta_abs=self.min_delta_abs,
                           schedule=self.schedule, halving=self.halving,
                           precision=self.head_precision)

    def finetune_config(self):
        """The fine-tuning protocol these options give (`finetune.FinetuneConfig`)."""
        return FinetuneConfig(epochs=self.finetune_epochs, batch_size=self.finetune_batch_size,
                              lr=self.finetune_lr, backbone_lr=self.backbone_lr,
                              patience=self.finetune_patience or None, unfreeze=self.unfreeze,
                              bn=self.bn)

    def digest(self, **resolved: Any) -> str:
        """A digest of what determines the trained heads: every option but where results go,
        how fast they come and which analyses follow, plus `resolved` facts (the weights'
        checksum, the precision used). A rerun with the same digest may resume a run."""
        kept = {k: v for k, v in self.to_dict().items()
                if k not in _NOT_IN_DIGEST and _NEW_DEFAULTS.get(k, _UNSET) != v
                and (self.finetune or k not in _FINETUNE_OPTIONS)}
        text = json.dumps(dict(kept, **resolved), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_paths(self) -> None:
        """The disk side of the options: data folder, weights file, writable out and cache."""
        data = Path(self.data).expanduser()
        if not data.is_dir():
            what = "is a file, not a folder" if data.exists() else "does not exist"
            raise HeadbenchError(f"data folder '{self.data}' {what}; pass a folder of class "
                                 "folders", param="data")
        for name, weights, _ in self.backbones():
            resolve_weights(resolve_name(name), weights)
            if weights not in ("default", "embedded", "hub", "none"):
                try:
                    with open(Path(weights).expanduser(), "rb") as f:
                        f.read(1)
                except OSError as e:
                    raise HeadbenchError(f"weights file '{weights}' cannot be read "
                                         f"({e.strerror or e})", param="weights") from None
        _writable(self.out, "out")
        if self.cache_dir is not None:
            _writable(self.cache_dir, "cache_dir")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able options (heads as HeadSpec dicts)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["heads"] = [h.to_dict() for h in self.heads]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompareConfig":
        """From `to_dict` (config.json); options a run was written without take the value that
        was then in force (`_NEW_DEFAULTS`, `_OLD_PROTOCOL`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**_OLD_PROTOCOL, "selection": "val",
                      **{k: v for k, v in d.items() if k in names}})


# the training protocol before `schedule`, the minimum improvements and halving existed
# (runs without them)
_OLD_PROTOCOL = {"schedule": "cosine", "min_delta": 0.0, "min_delta_abs": 0.0, "halving": 0}
# options that change neither the heads nor their numbers (the analyses are added to a run)
_NOT_IN_DIGEST = {"out", "run_name", "report", "workers", "cache_dir", "shifts", "sizes", "shots",
                  "cam", "restart", "log"}
# options added after runs were made: at their default they leave the digest as it was, so an
# interrupted run of an older version still resumes
_NEW_DEFAULTS = {"aug_views": 0, "finetune": False, "finetune_top": 1, "unfreeze": "all",
                 "bn": "frozen", "finetune_epochs": 10, "finetune_lr": 1e-4, "backbone_lr": 0.1,
                 "finetune_batch_size": 32, "finetune_patience": 3, "head_precision": "fp32",
                 "selection": "auto",
                 **_OLD_PROTOCOL}
_FINETUNE_OPTIONS = set(_NEW_DEFAULTS) - {"aug_views", "finetune"}  # moot without fine-tuning
_UNSET = object()


@dataclass
class AnalyzeConfig(AnalysisOptions):
    """Every option of `analyze` (add analyses to a finished run without retraining)."""

    run_dir: str = option("", "a run folder written by compare (runs/<run>)", positional=True)
    cache_dir: str | None = option(None, "feature cache folder (default: the run's)")
    precision: str | None = option(None, "extraction precision for new views (default: the run's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision is not None and self.precision not in PRECISIONS:
            raise unknown("precision", str(self.precision), PRECISIONS, param="precision")
        if self.cache_dir is not None:
            _writable(self.cache_dir, "cache_dir")


# The help's groups of options, in order ('analyses': the AnalysisOptions fields). Every option
# of compare is in one (tests/test_cli.py); analyze's few stand alone.
GROUPS = {
    "data": ("val_fraction", "split", "split_seed", "workers", "follow_links"),
    "backbone": ("backbone", "weights", "input_size", "precision"),
    "heads": ("heads", "hidden", "dropout"),
    "training protocol": ("seeds", "epochs", "batch_size", "lr", "weight_decays", "patience",
                          "min_delta", "min_delta_abs", "schedule", "halving", "selection",
                          "head_precision", "aug_views"),
    "analyses": ("shifts", "sizes", "shots", "cam"),
    "fine-tuning": ("finetune", "finetune_top", "unfreeze", "bn", "finetune_epochs",
                    "finetune_lr", "backbone_lr", "finetune_batch_size", "finetune_patience"),
    "output": ("out", "run_name", "cache_dir", "report", "restart", "log"),
}


def fields_of(cls: type) -> list[dataclasses.Field]:
    """The options of a config class in CLI order (positional ones first)."""
    fs = dataclasses.fields(cls)
    return sorted(fs, key=lambda f: not f.metadata.get("positional", False))


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


__all__ = ["AnalysisOptions", "AnalyzeConfig", "CompareConfig", "analysis_option", "parse_cam",
           "parse_shifts", "parse_sizes", "parse_shots", "option", "fields_of", "flag_of"]
