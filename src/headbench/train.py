"""One training protocol for every head, run on cached backbone features.

Every head is trained the same way, so that differences between heads are differences between
heads and not between recipes:

- AdamW, cross-entropy, no label smoothing; weight decay on weights only (biases and other
  1-d parameters such as norm scales and GeM's `p` are not decayed).
- Learning rate: per-step linear warm-up over `warmup_epochs`, then cosine decay to 0 at the end
  of `epochs`. The schedule is fixed by `epochs`, whether or not early stopping ends training.
- Mini-batch order is drawn from a `torch.Generator` seeded by `seed`; dropout and every other
  draw during training use torch's RNG forked and seeded by `seed`. Same seed, same weights.
- Early stopping on validation loss with `patience`; the best epoch's weights are restored.
- Weight decay is chosen per head by a sweep on validation loss at the first seed (`fit_head`),
  never on the test split; the other seeds are then trained at the chosen decay.

Features are arrays of shape (N, C, H, W) -- numpy float16 arrays, `np.memmap`s or anything
supporting `X[index_array]`. Small feature sets are held in memory (on the training device) in
their stored dtype; larger ones are read batch by batch with sorted indices, so a memmap streams
from disk. Batches are cast to float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headbench.errors import HeadbenchError

# Feature sets up to this many bytes (in their stored dtype) are held in memory on the device.
CACHE_BYTES = 512 * 2**20


@dataclass
class TrainConfig:
    """The training protocol shared by all heads (serialised to the run folder as JSON).

    Args:
        epochs: maximum number of passes over the training features; also the length of the
            cosine schedule.
        batch_size: mini-batch size (at least 2, so BatchNorm heads always see 2 samples).
        lr: peak learning rate, reached at the end of warm-up.
        weight_decays: AdamW decoupled weight decays swept per head on validation loss.
        warmup_epochs: epochs of per-step linear warm-up.
        patience: epochs without a validation-loss improvement before stopping; None disables
            early stopping (the best epoch is still restored).
        device: 'cpu', 'cuda', 'cuda:1', ...; None picks cuda when available.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    warmup_epochs: int = 2
    patience: int | None = 8
    device: str | None = None

    def __post_init__(self) -> None:
        self.weight_decays = tuple(float(wd) for wd in self.weight_decays)
        if self.patience == 0:  # the CLI's way of saying None
            self.patience = None
        self.validate()
        self.epochs, self.batch_size = int(self.epochs), int(self.batch_size)

    def validate(self) -> None:
        """Raise HeadbenchError naming the first option out of range."""
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise HeadbenchError(f"--epochs must be a whole number of at least 1, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 2:
            raise HeadbenchError(f"--batch-size must be at least 2, got {self.batch_size}")
        if not self.lr > 0:
            raise HeadbenchError(f"--lr must be positive, got {self.lr}")
        if not self.weight_decays or any(not wd >= 0 for wd in self.weight_decays):
            raise HeadbenchError("--weight-decays must list one or more decays >= 0, "
                                 f"got {list(self.weight_decays)}")
        if self.warmup_epochs < 0:
            raise HeadbenchError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.patience is not None and self.patience < 1:
            raise HeadbenchError(f"--patience must be 0 (no early stopping) or more epochs, "
                                 f"got {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weight_decays"] = list(self.weight_decays)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EpochLog:
    """One epoch of training; `epoch` counts from 1, `lr` is the rate of its last step."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float


@dataclass
class TrainResult:
    """One trained head: best-epoch weights (on CPU) and the history that chose them."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    weight_decay: float
    seed: int
    epochs_run: int
    train_time_s: float
    history: list[EpochLog] = field(default_factory=list)


@dataclass
class FitResult:
    """A head fitted at the weight decay its sweep chose, one run per seed (first seed first)."""

    weight_decay: float
    sweep: dict[float, float]
    runs: list[TrainResult]


# ----------------------------------------------------------------------------- devices and RNG

def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means cuda when available, else cpu."""
    if device is None:
        from headbench.model import default_device
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise HeadbenchError(f"unknown device '{device}': use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HeadbenchError(f"device '{device}' asked for but CUDA is not available: use cpu")
    return device


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


# ----------------------------------------------------------------------------- feature reading

class Features:
    """Batched float32 reads from (N, C, H, W) features, in memory when small enough.

    Pass one to `train_head`/`predict_logits` instead of the raw array to share the in-memory
    copy between several runs (`fit_head` does this).
    """

    def __init__(self, X: Any, device: torch.device, cache_bytes: int | None = None):
        shape = tuple(getattr(X, "shape", ()))
        if len(shape) < 2:
            raise HeadbenchError(f"features must have shape (N, C, H, W), got {shape}: "
                                 "re-extract the feature cache")
        self.X, self.shape, self.device = X, shape, device
        self.applied: dict[str, Features] = {}  # pooled copies, see `_applied`
        limit = CACHE_BYTES if cache_bytes is None else cache_bytes
        self._memory = _in_memory(X).to(device) if _nbytes(X) <= limit else None

    def __len__(self) -> int:
        return self.shape[0]

    def get(self, index: np.ndarray) -> torch.Tensor:
        """The rows `index` (sorted, for sequential disk reads) as float32 on the device."""
        if self._memory is not None:
            return self._memory[torch.as_tensor(index, device=self.device)].float()
        return _to_tensor(self.X[index]).to(self.device, non_blocking=True).float()


def _nbytes(X: Any) -> int:
    if isinstance(X, torch.Tensor):
        return X.element_size() * X.nelement()
    return int(getattr(X, "nbytes", np.prod(X.shape) * 4))


def _in_memory(X: Any) -> torch.Tensor:
    """All of X as a tensor in its stored dtype (a memmap is read into memory)."""
    if isinstance(X, torch.Tensor):
        return X
    array = np.asarray(X[:])
    if isinstance(X, np.memmap) or not array.flags.writeable:
        array = np.array(array)  # torch wants writable memory, and off the file
    return _to_tensor(array)


def _to_tensor(block: Any) -> torch.Tensor:
    if isinstance(block, torch.Tensor):
        return block
    return torch.from_numpy(np.ascontiguousarray(block))


def _as_features(X: Any, device: torch.device) -> Features:
    if isinstance(X, Features) and X.device == device:
        return X
    return Features(X.X if isinstance(X, Features) else X, device)


def _labels(y: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise HeadbenchError(f"{name} must be {n} integer class indices (one per feature row), "
                             f"got shape {y.shape} of {y.dtype}")
    if n and y.min() < 0:
        raise HeadbenchError(f"{name} holds a negative class index ({y.min()})")
    return torch.as_tensor(y.astype(np.int64), device=device)


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split a permutation into sorted index batches; a final batch of 1 joins the one before."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on one sample
        batches[-2:] = [np.concatenate(batches[-2:])]
    return [np.sort(b) for b in batches]


# ----------------------------------------------------------------------------- training

def split_fixed_prefix(head: nn.Module) -> tuple[nn.Sequential, nn.Module]:
    """Split a Sequential head into its leading fixed part and the rest.

    The fixed part holds the first modules with no parameters, no buffers and no randomness
    (global pools, Flatten, AvgPool2d): their output never changes during training, so it is
    computed once per run instead of once per epoch. Both parts share the head's modules.
    """
    if not isinstance(head, nn.Sequential):
        return nn.Sequential(), head
    n = 0
    for module in head:
        if (any(True for _ in module.parameters()) or any(True for _ in module.buffers())
                or isinstance(module, nn.modules.dropout._DropoutNd)):
            break
        n += 1
    if n == len(head):
        return nn.Sequential(), head
    modules = list(head)
    return nn.Sequential(*modules[:n]), nn.Sequential(*modules[n:])


def _shrinks(prefix: nn.Module, feats: Features) -> bool:
    """Whether `prefix` makes the features smaller (a pool does; Flatten only reshapes)."""
    with torch.inference_mode():
        return prefix(feats.get(np.arange(1))).numel() < int(np.prod(feats.shape[1:]))


def _applied(prefix: nn.Module, feats: Features, batch_size: int = 256) -> Features:
    """`prefix` applied to every row of `feats`, in memory as float32; computed once per
    `feats` object and prefix (runs of one head at several decays and seeds share it)."""
    key = str(prefix)
    if key not in feats.applied:
        out = []
        with torch.inference_mode():
            for start in range(0, len(feats), batch_size):
                out.append(prefix(feats.get(np.arange(start, min(len(feats), start + batch_size)))))
        feats.applied[key] = Features(torch.cat(out), feats.device, cache_bytes=math.inf)
    return feats.applied[key]


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for 0-based `step`: linear warm-up to `lr`, then cosine decay to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(head: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and kernels only; biases, norm scales and scalars such as GeM's p not."""
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise HeadbenchError("the head has no trainable parameters")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _check_num_classes(head: nn.Module, val: Features, y_max: int) -> None:
    head.eval()
    with torch.no_grad():
        k = head(val.get(np.arange(min(2, len(val))))).shape[-1]
    if y_max >= k:
        raise HeadbenchError(f"labels go up to class {y_max} but the head outputs {k} classes: "
                             "build the head with num_classes equal to the number of classes")


def _train_epoch(head: nn.Module, optimizer: torch.optim.Optimizer, feats: Features,
                 y: torch.Tensor, batches: list[np.ndarray], lr_of: Callable[[int], float],
                 first_step: int) -> tuple[float, float, float]:
    """One pass in train mode; returns running loss, running accuracy and the last lr."""
    head.train()
    loss_sum = torch.zeros((), device=feats.device)
    correct = torch.zeros((), device=feats.device, dtype=torch.long)
    lr = 0.0
    for i, index in enumerate(batches):
        lr = lr_of(first_step + i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, target = feats.get(index), y[torch.as_tensor(index, device=feats.device)]
        logits = head(x)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulate on the device: no host sync per step
        loss_sum += loss.detach() * len(index)
        correct += (logits.detach().argmax(1) == target).sum()
    n = sum(len(b) for b in batches)
    return loss_sum.item() / n, correct.item() / n, lr


def _eval_loss_acc(head: nn.Module, feats: Features, y: torch.Tensor,
                   batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode."""
    head.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(feats), batch_size):
            index = np.arange(start, min(len(feats), start + batch_size))
            logits = head(feats.get(index)).float()
            target = y[start:start + len(index)]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    return loss_sum / len(feats), correct / len(feats)


def train_head(head: nn.Module, X_train: Any, y_train: Any, X_val: Any, y_val: Any,
               config: TrainConfig, weight_decay: float, seed: int) -> TrainResult:
    """Train `head` on features with the shared protocol; the head ends with its best weights.

    Args:
        head: module mapping (N, C, H, W) float32 features to (N, K) logits; moved to the
            training device in place. Initialise it under `seeded(seed)` for reproducible runs.
        X_train, X_val: features of shape (N, C, H, W) (array, memmap or `Features`).
        y_train, y_val: integer class indices, shape (N,).
        config: the protocol (epochs, batch size, lr, warm-up, patience, device).
        weight_decay: AdamW decay for this run.
        seed: seeds mini-batch order, dropout and any other draw during training.

    Returns:
        TrainResult with the best epoch's state_dict (on CPU) and the per-epoch history.
    """
    config.validate()
    device = resolve_device(config.device)
    train, val = _as_features(X_train, device), _as_features(X_val, device)
    y_tr = _labels(y_train, len(train), "y_train", device)
    y_va = _labels(y_val, len(val), "y_val", device)
    if len(train) < 2 or len(val) < 1:
        raise HeadbenchError(f"training needs at least 2 training and 1 validation images, got "
                             f"{len(train)} and {len(val)}: add images or change the split")
    head.to(device)
    _check_num_classes(head, val, int(max(y_tr.max().item(), y_va.max().item())))
    prefix, model = split_fixed_prefix(head)
    if len(prefix) and _shrinks(prefix, val):  # a global pool runs once, not once per epoch
        train, val = _applied(prefix, train), _applied(prefix, val)
    else:
        model = head
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=config.lr)
    steps = len(_batches(np.arange(len(train)), config.batch_size))
    total = config.epochs * steps
    warmup = min(config.warmup_epochs * steps, total)

    def lr_of(step: int) -> float:
        return lr_at(step, config.lr, warmup, total)

    history: list[EpochLog] = []
    best_state, best_loss, best_epoch = None, math.inf, 0
    started = time.perf_counter()
    with seeded(seed, device):
        order_rng = torch.Generator().manual_seed(seed)
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(len(train), generator=order_rng).numpy()
            batches = _batches(order, config.batch_size)
            tr_loss, tr_acc, lr = _train_epoch(model, optimizer, train, y_tr, batches, lr_of,
                                               (epoch - 1) * steps)
            va_loss, va_acc = _eval_loss_acc(model, val, y_va, max(256, config.batch_size))
            history.append(EpochLog(epoch, tr_loss, tr_acc, va_loss, va_acc, lr))
            if va_loss < best_loss:  # NaN never improves
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in head.state_dict().items()}
                best_loss, best_epoch = va_loss, epoch
            elif config.patience is not None and epoch - best_epoch >= config.patience:
                break
    if best_state is None:
        raise HeadbenchError(f"training diverged (validation loss is {history[0].val_loss}) at "
                             f"weight decay {weight_decay}: lower lr")
    head.load_state_dict(best_state)
    return TrainResult(best_state, best_epoch, best_loss, float(weight_decay), seed,
                       len(history), time.perf_counter() - started, history)


def fit_head(make_head: Callable[[], nn.Module], X_train: Any, y_train: Any, X_val: Any,
             y_val: Any, config: TrainConfig, seeds: Sequence[int] = (0, 1, 2),
             on_run: Callable[[int, int], None] | None = None) -> FitResult:
    """Choose the weight decay on validation loss at the first seed, then train the other seeds.

    Runs `len(config.weight_decays) + len(seeds) - 1` trainings: the sweep at `seeds[0]`, whose
    run at the chosen decay is reused, then one run per remaining seed. Each head is built by
    `make_head()` inside `seeded(seed)`, so its initialisation is reproducible.

    Args:
        make_head: builds a fresh, untrained head.
        X_train, y_train, X_val, y_val: as for `train_head`. The test split never enters here.
        config: the protocol; `config.weight_decays` is the sweep.
        seeds: one run per seed at the chosen decay.
        on_run: called as `on_run(done, total)` after each training run (for a progress bar).

    Returns:
        FitResult with the sweep (decay -> best val loss at seeds[0]) and one run per seed.
    """
    seeds = list(seeds)
    if not seeds:
        raise HeadbenchError("seeds must list at least one seed")
    config.validate()
    device = resolve_device(config.device)
    train, val = _as_features(X_train, device), _as_features(X_val, device)
    total = len(config.weight_decays) + len(seeds) - 1
    done = 0

    def run(wd: float, seed: int) -> TrainResult:
        nonlocal done
        with seeded(seed):
            head = make_head()
        result = train_head(head, train, y_train, val, y_val, config, wd, seed)
        done += 1
        if on_run is not None:
            on_run(done, total)
        return result

    sweep_runs = {wd: run(wd, seeds[0]) for wd in config.weight_decays}
    sweep = {wd: r.best_val_loss for wd, r in sweep_runs.items()}
    chosen = min(sweep, key=sweep.get)  # ties: the first decay listed
    runs = [sweep_runs[chosen]] + [run(chosen, s) for s in seeds[1:]]
    return FitResult(chosen, sweep, runs)


def predict_logits(head: nn.Module, X: Any, batch_size: int = 256,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Float32 logits (N, K) of `head` on features X, in eval mode, read batch by batch.

    The head runs where its parameters are unless `device` is given (it is then moved there).
    Its train/eval mode is restored afterwards.
    """
    if device is None:
        param = next(head.parameters(), None)
        device = param.device if param is not None else resolve_device(None)
    else:
        device = resolve_device(device)
        head.to(device)
    feats = _as_features(X, device)
    was_training = head.training
    head.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(feats), batch_size):
                index = np.arange(start, min(len(feats), start + batch_size))
                out.append(head(feats.get(index)).float().cpu())
    finally:
        head.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
