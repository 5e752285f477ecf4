"""One training protocol for every head, run on cached backbone features, all heads at once.

Every head is trained the same way, so that differences between heads are differences between
heads and not between recipes:

- AdamW, cross-entropy, no label smoothing; weight decay on weights only (biases and other
  1-d parameters such as norm scales and GeM's `p` are not decayed).
- Learning rate: per-step linear warm-up over `warmup_epochs`, then constant (`schedule`
  'constant', the default: training ends when the head has converged, not when a schedule says
  so) or cosine decay to 0 at the end of `epochs` ('cosine').
- Early stopping on validation loss: an epoch improves only when its val loss is below the best
  so far by more than `min_delta` of it or by `min_delta_abs` nats, whichever is more (on a
  small val split the loss of a head that classifies it all keeps creeping towards 0);
  training stops after `patience` epochs without an improvement, and the best epoch's weights
  are restored.
- The peak learning rate and the weight decay are chosen per head by a sweep over `lr` ×
  `weight_decays` on validation loss at the first seed (`fit_heads`), never on the test split;
  the other seeds are then trained at the chosen setting. At epoch `halving` the settings
  outside the better half of the sweep so far stop (`halving`: successive halving).

A *member* is one training run: a head at one learning rate, one decay and one seed. `train_members` trains many
together: the members of a head are one stacked model (`engine.Stack`), every head fed from the
same pass over the features (`inputs`). Each member keeps its own head initialisation (built
under `seeded(seed)`), batch order, dropout masks, early stopping and best epoch, so its result
does not depend on which members trained beside it: `train_head`, one member alone, is the
reference it equals.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .. import progress as _progress
from ..checks import real, whole
from ..errors import HeadbenchError, unknown
from ..runtime import PRECISIONS, resolve_device, resolve_precision, tune_allocator
from . import halving
from .checkpoint import Checkpoint, Checkpoints
from .engine import Stack, split_of, train_epoch, validate, validate_rows
from .inputs import (Block, Features, Inputs, Views, as_features, batches, block_bounds, blocks,
                     labels, plan_memory)
from .results import EpochLog, FitResult, Member, TrainResult, diverged_error

# The default sweep of peak learning rates (bench/RESULTS.md (i): the learning rate changes
# what a head learns in a 40-epoch budget; weight decays up to 1 barely do).
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """The training protocol shared by all heads (serialised to the run folder as JSON).

    Every field is checked here, once; an error names the field (`HeadbenchError.param`).
    Numbers may come as strings (the CLI's values).

    Args:
        epochs: maximum number of passes over the training features (and the length of the
            cosine schedule).
        batch_size: mini-batch size (at least 2, so BatchNorm heads always see 2 samples).
        lr: peak learning rates swept per head on validation loss (one number: no sweep),
            each reached at the end of warm-up.
        weight_decays: AdamW decoupled weight decays swept with them.
        warmup_epochs: epochs of per-step linear warm-up.
        patience: epochs without a validation-loss improvement before stopping; None (or 0)
            disables early stopping (the best epoch is still restored).
        min_delta: the relative decrease of the best validation loss that counts as an
            improvement (0.01: 1 %).
        min_delta_abs: the least decrease in nats per image that counts (the larger of the two
            decides).
        schedule: the learning rate after warm-up, 'constant' or 'cosine' (to 0 at `epochs`).
        device: 'cpu', 'cuda', 'cuda:1', ...; None picks cuda when available.
        precision: the heads' matmuls: 'fp32', 'bf16' or 'auto' (`runtime.resolve_precision`,
            stage 'heads': bf16 only where the hardware has it natively).
        halving: the epoch at which each sweep halves (`halving`): a head's settings at one
            seed that are not in the better half by best val loss so far stop there; 0: off.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: tuple[float, ...] = LRS
    weight_decays: tuple[float, ...] = (1e-2,)
    warmup_epochs: int = 2
    patience: int | None = 2
    min_delta: float = 0.01
    min_delta_abs: float = 1e-3
    schedule: str = "constant"
    device: str | None = None
    precision: str = "fp32"
    halving: int = 10

    def __post_init__(self) -> None:
        self.epochs = whole(self.epochs, "epochs", 1)
        self.batch_size = whole(self.batch_size, "batch_size", 2)
        self.lr = _grid(self.lr, "lr", "> 0")
        self.weight_decays = _grid(self.weight_decays, "weight_decays", "≥ 0")
        self.warmup_epochs = whole(self.warmup_epochs, "warmup_epochs", 0)
        self.min_delta = real(self.min_delta, "min_delta", 0.0, 1.0)
        self.min_delta_abs = real(self.min_delta_abs, "min_delta_abs", 0.0, math.inf)
        if self.schedule not in SCHEDULES:
            raise unknown("schedule", str(self.schedule), SCHEDULES, param="schedule")
        if self.precision not in PRECISIONS:
            raise unknown("precision", str(self.precision), PRECISIONS, param="head_precision")
        self.halving = whole(self.halving, "halving", 0)
        if self.patience is not None:  # 0 is the CLI's way of saying None
            self.patience = whole(self.patience, "patience", 0) or None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr"], d["weight_decays"] = list(self.lr), list(self.weight_decays)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From `to_dict`; a dict written before `schedule`, the minimum improvements and
        halving existed means the protocol of then: cosine, every decrease an improvement, no
        halving."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"schedule": "cosine", "min_delta": 0.0, "min_delta_abs": 0.0, "halving": 0,
                      **{k: v for k, v in d.items() if k in names}})


def _grid(values: Any, name: str, bound: str) -> tuple[float, ...]:
    """One or more numbers (a number alone is one) each `bound` ('> 0' or '≥ 0')."""
    if isinstance(values, (int, float, str)) and not isinstance(values, bool):
        values = str(values).split(",") if isinstance(values, str) else [values]
    try:
        grid = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        grid = (math.nan,)
    ok = (lambda v: v > 0) if bound == "> 0" else (lambda v: v >= 0)  # NaN fails both
    if not grid or not all(ok(v) and math.isfinite(v) for v in grid):
        shown = ",".join(map(str, values)) if isinstance(values, (list, tuple)) else values
        raise HeadbenchError(f"{name} must list one or more numbers {bound}, got "
                             f"{shown or 'none'}", param=name)
    return grid


def _cuda_devices(device: torch.device | None = None) -> list[int]:
    """The CUDA devices whose RNG state a fork must save and restore."""
    if device is not None and device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's RNG forked and seeded by `seed`; global state is restored.

    Example:
        >>> with seeded(0):
        ...     a = torch.nn.Linear(4, 2).weight.clone()
        >>> with seeded(0):
        ...     b = torch.nn.Linear(4, 2).weight.clone()
        >>> bool((a == b).all())
        True
    """
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(seed)
        yield


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int,
          schedule: str = "cosine") -> float:
    """Learning rate for 0-based `step`: linear warm-up to `lr`, then constant or cosine decay
    to 0 at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- training

def train_members(make_heads: dict[str, Callable[[], nn.Module]], members: Sequence[Member],
                  X_train: Any, y_train: Any, X_val: Any, y_val: Any, config: TrainConfig,
                  on_done: Callable[[Member, TrainResult], None] | None = None,
                  on_epochs: Callable[[int], None] | None = None,
                  folds: Any = None,
                  known: dict[Member, TrainResult] | None = None,
                  checkpoint: Checkpoint | None = None) -> dict[Member, TrainResult]:
    """Train every member together, in one pass over the features per epoch.

    The members of a head form one stacked model; every head is fed from the same pass. Each
    member has its own head (built by `make_heads[label]()` inside `seeded(seed)`), its own
    batch order and dropout streams (seeded by its seed), its own early stopping and best
    epoch: its result does not depend on which members trained beside it.

    Args:
        make_heads: head label -> builds a fresh head.
        members: the runs; each member's head must be in `make_heads`.
        X_train, y_train, X_val, y_val: as for `train_head`. The test split never enters here.
        on_done: called with each member's result as soon as it finishes (to commit it).
        on_epochs: called with the member-epochs just done (for a progress bar).
        folds: cross-validation (a `folds.Folds`, which imports this module): every member has
            a `fold` and trains on that fold's training rows of X_train and stops on its
            validation rows (X_val is None).
        known: members trained before this call (a resumed run): their histories take part in
            the halving of their sweeps (`halving.behind`).
        checkpoint: where the stacks' state is saved at epoch ends and resumed from
            (`checkpoint.Checkpoint`); None: not saved.
    """
    tune_allocator()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device, "heads")
    train = as_features(X_train, device)
    val = train if folds is not None else as_features(X_val, device)
    if isinstance(val.X, Views):
        raise HeadbenchError("validation features must be one view of each image, not Views")
    views = train.X.views if isinstance(train.X, Views) else 1  # K rows per image
    y_tr = labels(y_train, len(train) // views, "y_train", device).repeat(views)
    y_va = y_tr if folds is not None else labels(y_val, len(val), "y_val", device)
    n_train, n_val = (folds.sizes() if folds is not None else (len(train) // views, len(val)))
    if n_train < 2 or n_val < 1:
        raise HeadbenchError(f"training needs at least 2 training and 1 validation images, got "
                             f"{n_train} and {n_val}: add images or change the split")
    def build() -> list[Stack]:
        return _stacks(make_heads, members, train, device,
                       int(max(y_tr.max().item(), y_va.max().item())), precision, config.lr[0])
    stacks = build()
    start = checkpoint.resume(stacks, config.to_dict()) if checkpoint is not None else 0
    if start < 0:  # a checkpoint that did not fit: from the start
        stacks, start = build(), 0
    if start and on_epochs is not None:  # the epochs the checkpoint holds count as done
        on_epochs(start * sum(len(stack) for stack in stacks))
    splits = {s.key: s.split for s in stacks}
    memory = plan_memory(splits, [train] if folds is not None else [train, val])
    inputs_tr = Inputs(train, splits, memory)
    if folds is not None:
        for stack in stacks:
            stack.rows = folds.rows([m.fold for m in stack.members], device)
        whole_pool = Block(n_train, None, train.get(np.arange(len(train)))
                           if inputs_tr.lazy else None)
        steps = len(batches(np.arange(n_train), config.batch_size))
    else:
        inputs_va = Inputs(val, splits, memory)
        bounds = block_bounds(train, bool(inputs_tr.lazy), n_train)
        steps = sum(len(batches(np.arange(stop - start), config.batch_size))
                    for start, stop in bounds)
    warmup, total = min(config.warmup_epochs * steps, config.epochs * steps), config.epochs * steps

    def rate(step: int, peak: float) -> float:
        return lr_at(step, peak, warmup, total, config.schedule)

    results: dict[Member, TrainResult] = {}
    for epoch in range(start + 1, config.epochs + 1):
        epoch_blocks = ([whole_pool] if folds is not None else
                        blocks(train, bounds, bool(inputs_tr.lazy), epoch, device, views))
        trained = train_epoch(stacks, epoch_blocks, inputs_tr, y_tr, config.batch_size,
                              (epoch - 1) * steps, rate)
        validated = (validate_rows(stacks, inputs_tr, y_tr, whole_pool) if folds is not None
                     else validate(stacks, inputs_va, y_va))
        for stack in list(stacks):
            (tr_loss, tr_ok), (va_loss, va_ok) = trained[id(stack)], validated[id(stack)]
            logs = [EpochLog(epoch, float(tr_loss[i]) / n_train, float(tr_ok[i]) / n_train,
                             float(va_loss[i]) / n_val, float(va_ok[i]) / n_val,
                             rate(epoch * steps - 1, stack.lrs[i]))
                    for i in range(len(stack))]
            stop = stack.end_epoch(epoch, logs, config.patience, config.min_delta,
                                   config.min_delta_abs)
            if epoch == config.halving:
                stop = sorted(set(stop) | set(_halved(stack, epoch, config, {**(known or {}),
                                                                             **results})))
            if epoch == config.epochs:
                stop = list(range(len(stack)))
            if on_epochs is not None:
                on_epochs(len(stack) + len(stop) * (config.epochs - epoch))
            for i in stop:
                results[stack.members[i]] = result = stack.result(i)
                if on_done is not None:
                    on_done(stack.members[i], result)
            if len(stop) == len(stack):
                stacks.remove(stack)
            elif stop:
                stack.keep([i for i in range(len(stack)) if i not in stop])
        if not stacks:
            break
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(epoch, stacks, config.to_dict())
    if checkpoint is not None:
        checkpoint.drop()
    return results


def _halved(stack: Stack, epoch: int, config: TrainConfig,
            finished: dict[Member, TrainResult]) -> list[int]:
    """The members of `stack` that the halving at `epoch` stops (their sweep's finished
    members, `finished`, take part)."""
    labels = {m.head for m in stack.members}
    histories = {m: r.history for m, r in finished.items() if m.head in labels}
    histories.update(zip(stack.members, stack.history))
    grid = _settings(config)
    return halving.behind(stack.members, histories, epoch, config.min_delta,
                          config.min_delta_abs,
                          order=lambda m: _position(grid, (config.lr[0] if m.lr is None else m.lr,
                                                           m.weight_decay)))


def _position(grid: list[tuple[float, float]], setting: tuple[float, float]) -> int:
    return grid.index(setting) if setting in grid else len(grid)


def _stacks(make_heads: dict[str, Callable[[], nn.Module]], members: Sequence[Member],
            train: Features, device: torch.device, y_max: int, precision: str,
            default_lr: float) -> list[Stack]:
    """One stack per head label (members without a peak lr take `default_lr`), its members'
    heads built under their seeds, members of one peak lr side by side (one AdamW group)."""
    by_label: dict[str, list[Member]] = {}
    for member in sorted(members, key=lambda m: default_lr if m.lr is None else m.lr):
        by_label.setdefault(member.head, []).append(member)
    probe_rows = train.get(np.arange(2))
    stacks = []
    for label, group in by_label.items():
        built: dict[int, nn.Module] = {}  # a seed builds the same head: copied, not built again
        heads = []
        for member in group:
            if member.seed not in built:
                with seeded(member.seed):
                    built[member.seed] = make_heads[label]().to(device)
                heads.append(built[member.seed])
            else:
                heads.append(copy.deepcopy(built[member.seed]))
        split = split_of(heads[0])
        with torch.no_grad():
            probe = split.apply(probe_rows, train.form)
            k = split.body.eval()(probe).shape[-1]
        if y_max >= k:
            raise HeadbenchError(f"labels go up to class {y_max} but head '{label}' outputs {k} "
                                 "classes: build the head with num_classes equal to the number "
                                 "of classes")
        stacks.append(Stack(label, group, heads, split, probe, device, precision, default_lr))
    return stacks


def train_head(head: nn.Module, X_train: Any, y_train: Any, X_val: Any, y_val: Any,
               config: TrainConfig, weight_decay: float, seed: int,
               lr: float | None = None) -> TrainResult:
    """Train one `head` with the shared protocol; the head ends with its best weights.

    The single-member case of `train_members` (the reference a stacked member must equal).

    Args:
        head: module mapping (N, C, H, W) float32 features to (N, K) logits; moved to the
            training device in place. Initialise it under `seeded(seed)` for reproducible runs.
        X_train, X_val: features of shape (N, C, H, W) (array, memmap or `Features`);
            X_train may be `Views` (K views per image: each epoch shows one per image).
        y_train, y_val: integer class indices, shape (N,) (one per image, also with Views).
        config: the protocol (epochs, batch size, lr, warm-up, patience, device).
        weight_decay: AdamW decay for this run.
        seed: seeds mini-batch order, dropout and any other draw during training.
        lr: the peak learning rate (None: `config.lr[0]`).

    Returns:
        TrainResult with the best epoch's state_dict (on CPU) and the per-epoch history.
    """
    member = Member("head", float(weight_decay), int(seed), None if lr is None else float(lr))
    result = train_members({"head": lambda: head}, [member], X_train, y_train, X_val, y_val,
                           config)[member]
    if result.diverged:
        raise diverged_error("head", result)
    return result


# ----------------------------------------------------------------------------- the sweep

def fit_heads(make_heads: dict[str, Callable[[], nn.Module]], X_train: Any, y_train: Any,
              X_val: Any, y_val: Any, config: TrainConfig, seeds: Sequence[int] = (0, 1, 2), *,
              stacked: bool = True, done: dict[Member, TrainResult] | None = None,
              on_member: Callable[[Member, TrainResult], None] | None = None,
              on_fit: Callable[[str, FitResult], None] | None = None,
              on_epochs: Callable[[int], None] | None = None,
              checkpoints: Checkpoints | None = None) -> dict[str, FitResult]:
    """Every head fitted: the learning rate and decay chosen on validation loss at the first
    seed, then the other seeds at the chosen setting, in two stacked passes.

    Pass 1 trains every head × every (lr, decay) of `config` at `seeds[0]`; pass 2 every head ×
    the other seeds at its chosen setting (ties: the first listed, lr first; a run that
    diverged never wins). Each member's head is built by `make_heads[label]()` inside
    `seeded(seed)`.

    Args:
        make_heads: head label -> builds a fresh, untrained head.
        X_train, y_train, X_val, y_val: as for `train_head`. The test split never enters here.
        config: the protocol; `config.lr` × `config.weight_decays` is the sweep.
        seeds: one run per seed at the chosen decay.
        stacked: False trains every member alone, one after the other (the reference; it
            needs `config.halving` 0, as members alone cannot be compared mid-training).
        done: members already trained (a resumed run): not trained again.
        on_member: called with each member as soon as it finishes (to commit it).
        on_fit: called with each head's FitResult as soon as all its seeds are trained.
        on_epochs: called with the member-epochs just done (for a progress bar).
        checkpoints: where each pass saves its stacks' state at epoch ends and resumes from
            (`checkpoint.Checkpoints`; stacked passes only).

    Returns:
        label -> FitResult with the sweep ((lr, decay) -> best val loss at seeds[0]) and one
        run per seed, first seed first.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HeadbenchError("seeds must list at least one seed", param="seeds")
    if not stacked and 0 < config.halving < config.epochs and len(_settings(config)) > 1:
        raise HeadbenchError("members trained one at a time cannot halve a sweep: use "
                             "halving=0 with stacked=False", param="halving")
    device = resolve_device(config.device)
    train, val = as_features(X_train, device), as_features(X_val, device)
    results = dict(done or {})
    fits: dict[str, FitResult] = {}
    twins = twin_heads(make_heads, seeds)  # trained once, reported under both labels
    for twin, original in twins.items():
        _progress.log(f"{twin} is {original} here (the same input, layers and initial weights): "
                      "trained once, reported under both")
    if on_epochs is not None:  # a twin's epochs are its original's: done with them
        runs = len(_settings(config)) + len(seeds) - 1
        on_epochs(config.epochs * sum(runs - sum(m.head == t for m in results) for t in twins))

    def fitted(label: str) -> None:
        fit = _fit_of(label, results, config, seeds)
        if fit is not None and label not in fits:
            fits[label] = fit
            if on_fit is not None:
                on_fit(label, fit)

    def finished(member: Member, result: TrainResult) -> None:
        results[member] = result
        if on_member is not None:
            on_member(member, result)
        fitted(member.head)
        copy_to_twins(member, result)

    def copy_to_twins(member: Member, result: TrainResult) -> None:
        for twin in [t for t, original in twins.items() if original == member.head]:
            copy = dataclasses.replace(member, head=twin)
            if copy not in results:
                finished(copy, _twin_result(make_heads, twin, member, result))

    def run(members: list[Member], phase: str) -> None:
        for member in [m for m in members if m in results]:  # done before this call
            copy_to_twins(member, results[member])
        todo = [m for m in members if m not in results and m.head not in twins]
        groups = [todo] if stacked else [[m] for m in todo]
        saves = checkpoints.at(phase, list(make_heads)) if checkpoints and stacked else None
        for group in groups:
            if group:
                train_members(make_heads, group, train, y_train, val, y_val, config,
                              on_done=finished, on_epochs=on_epochs, known=dict(results),
                              checkpoint=saves)

    run([Member(label, wd, seeds[0], lr) for label in make_heads for lr, wd in _settings(config)],
        "sweep")
    chosen = {label: _chosen(label, results, config, seeds[0]) for label in make_heads}
    for label in make_heads:  # heads whose every member was done before this call
        fitted(label)
    run([Member(label, chosen[label][1], s, chosen[label][0])
         for label in make_heads for s in seeds[1:]], "seeds")
    return {label: fits[label] for label in make_heads}


def twin_heads(make_heads: dict[str, Callable[[], nn.Module]],
               seeds: Sequence[int]) -> dict[str, str]:
    """label -> an earlier label whose head trains identically: the same prepared input, the
    same body and the same initial weights at every seed (dense_map without hidden layers is
    gap's Dense on the average). Such a head is trained once and reported under both labels."""
    signatures: dict[tuple, str] = {}
    twins: dict[str, str] = {}
    if len(make_heads) < 2:
        return twins
    first = {label: _signature(make, seeds[0]) for label, make in make_heads.items()}
    for label in make_heads:
        # the other seeds' weights are compared only where the first seed's are the same
        alike = [first[label] == first[other] for other in make_heads].count(True) > 1
        signature = (first[label], *(_signature(make_heads[label], seed)
                                     for seed in seeds[1:] if alike))
        if signature in signatures:
            twins[label] = signatures[signature]
        else:
            signatures[signature] = label
    return twins


def _signature(make_head: Callable[[], nn.Module], seed: int) -> tuple:
    with seeded(seed):
        split = split_of(make_head())
    # layers and tensors in order, not their names: gap's Dense is '0', dense_map's 'fc'
    layers = tuple(f"{type(m).__name__}({m.extra_repr()})" for m in split.body.modules()
                   if not list(m.children()))
    state = tuple((v.dtype, tuple(v.shape), v.detach().cpu().numpy().tobytes())
                  for v in split.body.state_dict().values())
    return split.key, layers, state


def _twin_result(make_heads: dict[str, Callable[[], nn.Module]], twin: str, member: Member,
                 result: TrainResult) -> TrainResult:
    """`result` of `member` as the result of head `twin`: its trained body in the twin's head."""
    with seeded(member.seed):
        trained, copy = make_heads[member.head](), make_heads[twin]()
    trained.load_state_dict(result.state_dict)
    target = split_of(copy).body.state_dict()  # the same tensors in order, named the twin's way
    target.update(zip(target, split_of(trained).body.state_dict().values()))
    split_of(copy).body.load_state_dict(target)
    state = {k: v.detach().to("cpu", copy=True) for k, v in copy.state_dict().items()}
    return dataclasses.replace(result, state_dict=state)


def _settings(config: TrainConfig) -> list[tuple[float, float]]:
    """The sweep's (lr, weight decay) pairs, in the order ties are broken."""
    return [(lr, wd) for lr in config.lr for wd in config.weight_decays]


def _sweep(label: str, results: dict[Member, TrainResult], config: TrainConfig,
           seed: int) -> dict[tuple[float, float], float]:
    """(lr, decay) -> best validation loss of the head's members at `seed` (inf: diverged)."""
    return {(lr, wd): results[Member(label, wd, seed, lr)].best_val_loss
            for lr, wd in _settings(config)}


def _chosen(label: str, results: dict[Member, TrainResult], config: TrainConfig,
            seed: int) -> tuple[float, float]:
    sweep = _sweep(label, results, config, seed)
    return min(sweep, key=sweep.get)  # ties: the first listed


def _fit_of(label: str, results: dict[Member, TrainResult], config: TrainConfig,
            seeds: list[int]) -> FitResult | None:
    """The head's FitResult once its sweep and every seed at the chosen setting are done."""
    if any(Member(label, wd, seeds[0], lr) not in results for lr, wd in _settings(config)):
        return None
    lr, wd = _chosen(label, results, config, seeds[0])
    runs = [results.get(Member(label, wd, s, lr)) for s in seeds]
    if any(r is None for r in runs):
        return None
    for run in runs:
        if run.diverged:
            raise diverged_error(label, run)
    return FitResult(lr, wd, _sweep(label, results, config, seeds[0]), runs)


def fit_head(make_head: Callable[[], nn.Module], X_train: Any, y_train: Any, X_val: Any,
             y_val: Any, config: TrainConfig, seeds: Sequence[int] = (0, 1, 2),
             on_run: Callable[[int, int], None] | None = None) -> FitResult:
    """`fit_heads` for one head: the decay chosen on validation loss at the first seed, then
    the other seeds. `on_run(done, total)` is called after each training run."""
    total, count = len(_settings(config)) + len(seeds) - 1, 0

    def on_member(member: Member, result: TrainResult) -> None:
        nonlocal count
        count += 1
        if on_run is not None:
            on_run(count, total)

    return fit_heads({"head": make_head}, X_train, y_train, X_val, y_val, config, seeds,
                     on_member=on_member)["head"]


# ----------------------------------------------------------------------------- inference

def predict_logits(head: nn.Module, X: Any, batch_size: int = 256,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Float32 logits (N, K) of `head` on features X, in eval mode, read batch by batch.

    X holds feature maps, or the global statistics of a pooled cache (`Features.form`; the
    head then runs as its `TrainingSplit`). The head runs where its parameters are unless
    `device` is given (it is then moved there). Its train/eval mode is restored afterwards.
    """
    if device is None:
        param = next(head.parameters(), None)
        device = param.device if param is not None else resolve_device(None)
    else:
        device = resolve_device(device)
        head.to(device)
    feats = as_features(X, device)
    split = split_of(head) if feats.form is not None else None
    was_training = head.training
    head.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(feats), batch_size):
                rows = feats.get(np.arange(start, min(len(feats), start + batch_size)))
                logits = head(rows) if split is None else split.body(split.apply(rows, feats.form))
                out.append(logits.float().cpu())
    finally:
        head.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
