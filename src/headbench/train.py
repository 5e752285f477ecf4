"""One training protocol for every head, run on cached backbone features, all heads at once.

Every head is trained the same way, so that differences between heads are differences between
heads and not between recipes:

- AdamW, cross-entropy, no label smoothing; weight decay on weights only (biases and other
  1-d parameters such as norm scales and GeM's `p` are not decayed).
- Learning rate: per-step linear warm-up over `warmup_epochs`, then cosine decay to 0 at the end
  of `epochs`. The schedule is fixed by `epochs`, whether or not early stopping ends training.
- Early stopping on validation loss with `patience`; the best epoch's weights are restored.
- Weight decay is chosen per head by a sweep on validation loss at the first seed
  (`fit_heads`), never on the test split; the other seeds are then trained at the chosen decay.

A *member* is one training run: a head at one decay and one seed. `train_members` trains many
together: the members of a head are one stacked model (parameters stacked on a first axis,
`headbench.stacked` or `torch.func.vmap`), one forward, one summed loss, one AdamW update with a
decay per member; every head is fed from the same pass over the features. Each member keeps its
own head initialisation (built under `seeded(seed)`), batch order (a generator seeded by the
seed) and dropout masks (a generator of its own), its own early stopping and best epoch, so its
result does not depend on which members trained beside it: `train_head`, one member alone, is the
reference it equals. A head's parameter-free `prepare` (global pool, GeM's logarithms,
attention's tokens; `heads.TrainingSplit`) runs once per image per fit, not once per epoch.

Features are arrays of shape (N, C, H, W) -- numpy float16 arrays, `np.memmap`s or anything
supporting `X[index_array]` -- or (N, S·C) global statistics (`Features.form`). Prepared inputs
that fit in `MEMORY_BYTES` are held in memory; larger ones are computed per batch from training
rows read in blocks once per epoch for every member. Training features may be `Views`: K cached
augmented views of each image, of which every epoch shows one per image.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from headbench import stacked
from headbench.errors import HeadbenchError
from headbench.features import tune_allocator
from headbench.heads import TrainingSplit, training_split

# Feature sets up to this many bytes (in their stored dtype) are held in memory on the device.
CACHE_BYTES = 512 * 2**20
# A fit's prepared inputs (float32, train + val) are held in memory up to this size; larger
# ones are computed per batch from training rows read in blocks of BLOCK_BYTES (as float32).
MEMORY_BYTES = 2**30
BLOCK_BYTES = 256 * 2**20
CHUNK_ROWS = 256  # rows per read when preparing inputs and evaluating


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

    def __init__(self, X: Any, device: torch.device, cache_bytes: int | None = None,
                 form: tuple[str, ...] | None = None):
        shape = tuple(getattr(X, "shape", ()))
        if len(shape) < 2:
            raise HeadbenchError(f"features must have shape (N, C, H, W), got {shape}: "
                                 "re-extract the feature cache")
        self.X, self.shape, self.device = X, shape, device
        # None: rows are feature maps; else the global statistics each row holds (see heads)
        self.form = form if form is not None else getattr(X, "form", None)
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


class Views:
    """K views of the same N training images as one (N·K, ...) array-like: row v·N + i is view v
    of image i. Passed as X_train, each epoch draws one view per image (seeded by the epoch, the
    same for every member, so a member's result does not depend on the others beside it);
    labels stay one per image (y_train has N entries). Prepared inputs held in memory are
    computed once per fit for all N·K rows. Validation and test features are never Views.

    Args:
        views: K array-likes (N, C, H, W) or (N, S·C) of the same images in the same row order
            (e.g. `FeatureSet.subset(...)` of each of `features.extract_views`), one shape and
            one `form`.

    Attributes: `parts` (the K array-likes), `views` (K), `images` (N), `shape` (N·K, ...).

    Example:
        >>> a, b = np.zeros((3, 2), np.float16), np.ones((3, 2), np.float16)
        >>> v = Views([a, b])
        >>> v.shape, v[np.array([0, 4])].tolist()
        ((6, 2), [[0.0, 0.0], [1.0, 1.0]])
    """

    def __init__(self, views: Sequence[Any]):
        views = list(views)
        if not views:
            raise HeadbenchError("Views needs at least one view of the training images")
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise HeadbenchError(f"views must all have one shape, got {sorted(shapes)}")
        forms = {getattr(v, "form", None) for v in views}
        if len(forms) != 1:
            raise HeadbenchError(f"views must all hold one form (maps or the same statistics), "
                                 f"got {sorted(map(str, forms))}")
        self.parts, self.views = list(views), len(views)
        (shape,) = shapes
        self.images = shape[0]
        self.shape = (shape[0] * self.views, *shape[1:])
        self.dtype = np.dtype(getattr(self.parts[0], "dtype", np.float32))
        self.form = getattr(self.parts[0], "form", None)
        self.nbytes = sum(_nbytes(v) for v in self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """Rows `index` (int, slice, index array or mask over the N·K rows), each read from
        its view."""
        idx = np.arange(len(self))[index]  # bounds, negative indices and masks as numpy does
        view, row = np.divmod(idx.reshape(-1), self.images)
        out = np.empty((view.size, *self.shape[1:]), dtype=self.dtype)
        for v in np.unique(view):
            where = np.flatnonzero(view == v)
            out[where] = np.asarray(self.parts[int(v)][row[where]])
        return out.reshape(*idx.shape, *self.shape[1:])


def _view_rows(images: int, views: int, epoch: int) -> np.ndarray:
    """The row each image shows in `epoch`: v·N + i with v drawn per image, seeded by the epoch
    (all rows in order with one view)."""
    rows = np.arange(images)
    if views == 1:
        return rows
    # a stream of its own (not the block order's torch generator), the same for every member
    pick = np.random.default_rng([epoch, 0x71E5]).integers(0, views, images)
    return pick * images + rows


def _as_features(X: Any, device: torch.device) -> Features:
    if isinstance(X, Features) and X.device == device:
        return X
    if isinstance(X, Features):
        return Features(X.X, device, form=X.form)
    return Features(X, device)


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


# ----------------------------------------------------------------------------- members

@dataclass(frozen=True)
class Member:
    """One training run: head `head` (a label) at one weight decay and one seed."""

    head: str
    weight_decay: float
    seed: int


def _stream(seed: int, purpose: int) -> torch.Generator:
    """A generator of its own for one purpose of one seed (0: batch order, 1: dropout)."""
    if purpose == 0:  # the batch order keeps 0.1's stream: torch.Generator seeded by the seed
        return torch.Generator().manual_seed(seed)
    state = np.random.SeedSequence([seed, purpose]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----------------------------------------------------------------------------- prepared inputs

class _Inputs:
    """One split's prepared inputs, one per distinct `TrainingSplit.key`.

    The keys in `memory` are computed in one pass over the features and kept (float32, on the
    device); the others are computed per batch from rows the caller reads (`block`)."""

    def __init__(self, feats: Features, splits: dict[str, TrainingSplit], memory: set[str]):
        self.feats, self.splits = feats, splits
        self.memory: dict[str, torch.Tensor] = {}
        self.lazy = set(splits) - memory
        if memory:
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in memory}
            for _, rows in self._rows(4 * CHUNK_ROWS):
                for key in memory:
                    parts[key].append(splits[key].apply(rows, feats.form))
            self.memory = {k: torch.cat(v) for k, v in parts.items()}

    def _rows(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        with torch.no_grad():
            for start in range(0, len(self.feats), size):
                yield start, self.feats.get(np.arange(start, min(len(self.feats), start + size)))

    def batch(self, key: str, index: torch.Tensor, block: "_Block") -> torch.Tensor:
        """Inputs (*index.shape, ...) for positions `index` in `block`."""
        if key in self.memory:
            return self.memory[key][block.rows[index] if block.rows is not None else index]
        x = self.splits[key].apply(block.data[index.flatten()], self.feats.form)
        return x.unflatten(0, tuple(index.shape))

    def chunks(self) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """Every row once, in order: (rows, key -> inputs), the features read once per chunk."""
        if not self.lazy:
            for start in range(0, len(self.feats), CHUNK_ROWS):
                where = slice(start, min(len(self.feats), start + CHUNK_ROWS))
                yield where, {k: v[where] for k, v in self.memory.items()}
            return
        for start, rows in self._rows(CHUNK_ROWS):
            where = slice(start, start + len(rows))
            out = {k: v[where] for k, v in self.memory.items()}
            out.update((k, self.splits[k].apply(rows, self.feats.form)) for k in self.lazy)
            yield where, out


def _plan_memory(splits: dict[str, TrainingSplit], feats: list[Features],
                 budget: int) -> set[str]:
    """The prepared inputs held in memory: the smallest first, while they fit in `budget`."""
    probe = feats[0].get(np.arange(1))
    with torch.no_grad():
        row_bytes = {k: 4 * s.apply(probe, feats[0].form).numel() for k, s in splits.items()}
    rows = sum(len(f) for f in feats)
    chosen, used = set(), 0
    for key in sorted(splits, key=row_bytes.get):
        if used + rows * row_bytes[key] <= budget:
            chosen.add(key)
            used += rows * row_bytes[key]
    return chosen


@dataclass
class _Block:
    """Training rows processed together: `rows` (None: all rows, in order) and, when some input
    is computed per batch, their features (`data`), read once for every member."""

    size: int
    rows: torch.Tensor | None = None
    data: torch.Tensor | None = None


def _block_bounds(feats: Features, lazy: bool, n: int) -> list[tuple[int, int]]:
    """(start, stop) of each block of an epoch's `n` images: one block when nothing is read per
    batch or all rows fit in `BLOCK_BYTES` (as float32), else blocks of that size (a last
    block of one row joins the one before: BatchNorm cannot train on one sample)."""
    per_block = max(2, BLOCK_BYTES // max(1, 4 * int(np.prod(feats.shape[1:]))))
    bounds = [(start, min(n, start + per_block)) for start in range(0, n, per_block)]
    if not lazy or len(bounds) == 1:
        return [(0, n)]
    if bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _blocks(feats: Features, bounds: list[tuple[int, int]], lazy: bool, epoch: int,
            device: torch.device, views: int = 1) -> Iterator[_Block]:
    """The epoch's blocks. One block: every image, in order. Else the images in a random order
    shared by all members (seeded by the epoch), cut at `bounds`; each member then draws its
    own order inside a block. With several views, each image's row is its view of the epoch."""
    n = len(feats) // views
    pick = _view_rows(n, views, epoch)
    if len(bounds) == 1:
        if views == 1:
            yield _Block(n, None, feats.get(np.arange(n)) if lazy else None)
        else:
            yield _Block(n, torch.as_tensor(pick, device=device), feats.get(pick) if lazy else None)
        return
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy()
    for start, stop in bounds:
        rows = pick[np.sort(order[start:stop])]
        yield _Block(len(rows), torch.as_tensor(rows, device=device), feats.get(rows))


# ----------------------------------------------------------------------------- stacked members

class _MaskedDropout(nn.Module):
    """Dropout whose mask is given (buffer `mask`, already scaled by 1/(1-p)): under vmap each
    member's mask comes from its own generator, so a member never depends on the others."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


def _masked_copy(body: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    """A copy of `body` on the meta device with every Dropout a `_MaskedDropout`."""
    base = copy.deepcopy(body).to("meta")
    drops = {}
    for name, module in list(base.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.dropout._DropoutNd):
                setattr(module, child_name, _MaskedDropout(child.p))
                drops[f"{name}.{child_name}" if name else child_name] = child.p
    return base, drops


def _adamw(params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], state: dict,
           lr: float, decay: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8) -> None:
    """torch.optim.AdamW's update on stacked parameters, with one weight decay per member
    (`decay`, shape (M,)), applied to matrices and kernels only (member ndim > 1)."""
    state["step"] += 1
    step, (b1, b2) = state["step"], betas
    bias1, bias2_sqrt = 1 - b1 ** step, math.sqrt(1 - b2 ** step)
    with torch.no_grad():
        for (name, p), g in zip(params.items(), grads):
            m, v = state["m"][name], state["v"][name]
            if p.ndim > 2:
                p.mul_(1 - lr * decay.view(-1, *[1] * (p.ndim - 1)))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bias2_sqrt).add_(eps), value=-lr / bias1)


class _Stack:
    """The members of one head, trained as one model with parameters stacked on a first axis:
    one forward (`headbench.stacked`, or `torch.func.vmap` over the module for layers it does
    not know), one summed loss, one AdamW update with each member's own decay."""

    def __init__(self, label: str, members: list[Member], heads: list[nn.Module],
                 split: TrainingSplit, probe: torch.Tensor, device: torch.device):
        self.label, self.members, self.heads = label, members, heads
        self.split, self.key = split, split.key
        self.bodies = [split.body] + [_split(h).body for h in heads[1:]]
        self.explicit = stacked.supported(split.body)  # else vmap over the module
        self.base, drops = _masked_copy(self.bodies[0])
        drops = {name: (p, _input_shape(self.bodies[0], name, probe)) for name, p in drops.items()}
        for body in self.bodies:
            body.train()
        self.params, self.buffers = stack_module_state(self.bodies)
        self.decay = torch.tensor([m.weight_decay for m in members], device=device)
        self.adam = {"step": 0, "m": {k: torch.zeros_like(v) for k, v in self.params.items()},
                     "v": {k: torch.zeros_like(v) for k, v in self.params.items()}}
        self.drops = drops
        self.order_rng = [_stream(m.seed, 0) for m in members]
        self.drop_rng = [_stream(m.seed, 1) for m in members]
        self.best = {k: v.detach().clone() for k, v in {**self.params, **self.buffers}.items()}
        n = len(members)
        self.best_loss = torch.full((n,), math.inf, dtype=torch.float64)
        self.best_epoch = [0] * n
        self.history: list[list[EpochLog]] = [[] for _ in members]
        self.seconds = [0.0] * n
        self.device = device

    def __len__(self) -> int:
        return len(self.members)

    def _masks(self, batch: int) -> dict[str, torch.Tensor]:
        """Each Dropout's mask (M, b, ...), scaled, from each member's own generator."""
        masks = {}
        for name, (p, shape) in self.drops.items():
            keep = [torch.empty(batch, *shape).bernoulli_(1 - p, generator=g) for g in self.drop_rng]
            masks[name] = (torch.stack(keep) / (1 - p)).to(self.device)
        return masks

    def _logits(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _forward(self, x: torch.Tensor, shared: bool, training: bool,
                 masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (M, b, K) of every member: x (b, ...) shared by all, or (M, b, ...)."""
        if self.explicit:
            return stacked.forward(self.split.body, self.params, self.buffers, x, training, masks)
        self.base.train(training)
        buffers = {**self.buffers, **{f"{name}.mask": m for name, m in masks.items()}}
        in_dims = (0, 0, None) if shared else (0, 0, 0)
        return vmap(self._logits, in_dims, randomness="error")(self.params, buffers, x)

    def orders(self, size: int, batch_size: int) -> list[torch.Tensor]:
        """Each member's own order of `size` positions, cut into batches: (M, b) indices per
        step, or (b,) when every member drew the same order (the sweep, all at one seed)."""
        per_member = [_batches(torch.randperm(size, generator=g).numpy(), batch_size)
                      for g in self.order_rng]
        if all(all(np.array_equal(a, b) for a, b in zip(order, per_member[0]))
               for order in per_member[1:]):
            return [torch.as_tensor(index, device=self.device) for index in per_member[0]]
        return [torch.as_tensor(np.stack(step), device=self.device)
                for step in zip(*per_member)]

    def step(self, x: torch.Tensor, y: torch.Tensor, shared: bool,
             lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of every member on its own batch (`shared`: one batch for all);
        (loss, correct) per member."""
        logits = self._forward(x, shared, True, self._masks(y.shape[-1])).float()
        target = y.expand(len(self), -1)
        losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        losses = losses.view(len(self), -1).mean(dim=1)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        _adamw(self.params, grads, self.adam, lr, self.decay)
        return losses.detach(), (logits.detach().argmax(-1) == target).sum(dim=1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, correct) per member on shared inputs, in eval mode."""
        with torch.no_grad():
            logits = self._forward(x, True, False, {}).float()
            target = y.expand(len(self), -1)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            return loss.view(len(self), -1).sum(1), (logits.argmax(-1) == target).sum(1)

    def end_epoch(self, epoch: int, logs: list[EpochLog], patience: int | None) -> list[int]:
        """Record the epoch; keep improved members' weights; the members that stop now."""
        val = torch.tensor([log.val_loss for log in logs], dtype=torch.float64)
        improved = val < self.best_loss  # NaN never improves
        if improved.any():
            where = improved.to(self.device)
            with torch.no_grad():
                for k, v in {**self.params, **self.buffers}.items():
                    self.best[k][where] = v.detach()[where]
            self.best_loss = torch.where(improved, val, self.best_loss)
        stop = []
        for i, log in enumerate(logs):
            self.history[i].append(log)
            if improved[i]:
                self.best_epoch[i] = epoch
            elif patience is not None and epoch - self.best_epoch[i] >= patience:
                stop.append(i)
        return stop

    def result(self, i: int) -> TrainResult:
        """Member i with its best weights loaded into its head."""
        member = self.members[i]
        if not self.best_epoch[i]:
            raise HeadbenchError(
                f"training head '{member.head}' diverged (validation loss is "
                f"{self.history[i][0].val_loss}) at weight decay {member.weight_decay:g}: lower lr")
        body = self.bodies[i]
        with torch.no_grad():
            for name, t in {**dict(body.named_parameters()), **dict(body.named_buffers())}.items():
                t.copy_(self.best[name][i])
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.heads[i].state_dict().items()}
        return TrainResult(state, self.best_epoch[i], float(self.best_loss[i]),
                           member.weight_decay, member.seed, len(self.history[i]),
                           self.seconds[i], self.history[i])

    def keep(self, keep: list[int]) -> None:
        """Go on with members `keep` only (the others stopped and were taken out)."""
        index = torch.as_tensor(keep, device=self.device)

        def take(d: dict, grad: bool = False) -> dict:
            return {k: v.detach()[index].clone().requires_grad_(grad) for k, v in d.items()}

        self.params = take(self.params, grad=True)
        self.buffers, self.best = take(self.buffers), take(self.best)
        self.adam["m"], self.adam["v"] = take(self.adam["m"]), take(self.adam["v"])
        self.decay = self.decay[index]
        for name in ("members", "heads", "bodies", "order_rng", "drop_rng", "best_epoch",
                     "history", "seconds"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])
        self.best_loss = self.best_loss[index.cpu()]


def _input_shape(body: nn.Module, name: str, probe: torch.Tensor) -> tuple[int, ...]:
    """Shape (without the batch axis) of what the dropout `name` of `body` sees."""
    seen = []
    handle = body.get_submodule(name).register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape[1:])))
    try:
        body.eval()
        with torch.no_grad():
            body(probe)
    finally:
        handle.remove()
    return seen[0]


# ----------------------------------------------------------------------------- training

def train_members(make_heads: dict[str, Callable[[], nn.Module]], members: Sequence[Member],
                  X_train: Any, y_train: Any, X_val: Any, y_val: Any, config: TrainConfig,
                  on_done: Callable[[Member, TrainResult], None] | None = None,
                  on_epochs: Callable[[int], None] | None = None) -> dict[Member, TrainResult]:
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
    """
    config.validate()
    tune_allocator()
    device = resolve_device(config.device)
    train, val = _as_features(X_train, device), _as_features(X_val, device)
    if isinstance(val.X, Views):
        raise HeadbenchError("validation features must be one view of each image, not Views")
    views = train.X.views if isinstance(train.X, Views) else 1  # K rows per image
    n_train = len(train) // views
    y_tr = _labels(y_train, n_train, "y_train", device).repeat(views)
    y_va = _labels(y_val, len(val), "y_val", device)
    if n_train < 2 or len(val) < 1:
        raise HeadbenchError(f"training needs at least 2 training and 1 validation images, got "
                             f"{n_train} and {len(val)}: add images or change the split")
    stacks = _stacks(make_heads, members, train, device,
                     int(max(y_tr.max().item(), y_va.max().item())))
    splits = {s.key: s.split for s in stacks}
    memory = _plan_memory(splits, [train, val], MEMORY_BYTES)
    inputs_tr, inputs_va = _Inputs(train, splits, memory), _Inputs(val, splits, memory)
    bounds = _block_bounds(train, bool(inputs_tr.lazy), n_train)
    steps = sum(len(_batches(np.arange(stop - start), config.batch_size))
                for start, stop in bounds)
    schedule = (config.lr, min(config.warmup_epochs * steps, config.epochs * steps),
                config.epochs * steps)
    results: dict[Member, TrainResult] = {}
    for epoch in range(1, config.epochs + 1):
        blocks = _blocks(train, bounds, bool(inputs_tr.lazy), epoch, device, views)
        trained = _train_epoch(stacks, blocks, inputs_tr, y_tr, config.batch_size,
                               (epoch - 1) * steps, schedule)
        validated = _validate(stacks, inputs_va, y_va)
        lr = lr_at(epoch * steps - 1, *schedule)
        for stack in list(stacks):
            (tr_loss, tr_ok), (va_loss, va_ok) = trained[id(stack)], validated[id(stack)]
            logs = [EpochLog(epoch, float(tr_loss[i]) / n_train, float(tr_ok[i]) / n_train,
                             float(va_loss[i]) / len(val), float(va_ok[i]) / len(val), lr)
                    for i in range(len(stack))]
            stop = stack.end_epoch(epoch, logs, config.patience)
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
    return results


def _train_epoch(stacks: list["_Stack"], blocks: Iterator[_Block], inputs: _Inputs,
                 y: torch.Tensor, batch_size: int, step: int,
                 schedule: tuple[float, int, int]) -> dict[int, list[torch.Tensor]]:
    """One epoch of every stack, block by block; id(stack) -> [summed loss, correct]."""
    stats = {id(s): [torch.zeros(len(s)), torch.zeros(len(s))] for s in stacks}
    for block in blocks:
        for stack in stacks:
            started = time.perf_counter()
            for i, index in enumerate(stack.orders(block.size, batch_size)):
                x = inputs.batch(stack.key, index, block)
                target = y[block.rows[index] if block.rows is not None else index]
                loss, correct = stack.step(x, target, index.dim() == 1,
                                           lr_at(step + i, *schedule))
                stats[id(stack)][0] += loss.cpu() * index.shape[-1]
                stats[id(stack)][1] += correct.cpu()
            _share(stack, time.perf_counter() - started)
        step += len(_batches(np.arange(block.size), batch_size))
    return stats


def _validate(stacks: list["_Stack"], inputs: _Inputs,
              y: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """Every stack on every validation row once; id(stack) -> [summed loss, correct]."""
    stats = {id(s): [torch.zeros(len(s)), torch.zeros(len(s))] for s in stacks}
    for where, x in inputs.chunks():
        for stack in stacks:
            started = time.perf_counter()
            loss, correct = stack.evaluate(x[stack.key], y[where])
            stats[id(stack)][0] += loss.cpu()
            stats[id(stack)][1] += correct.cpu()
            _share(stack, time.perf_counter() - started)
    return stats


def _share(stack: _Stack, seconds: float) -> None:
    """A stack's time, shared evenly by the members in it."""
    for i in range(len(stack)):
        stack.seconds[i] += seconds / len(stack)


def _stacks(make_heads: dict[str, Callable[[], nn.Module]], members: Sequence[Member],
            train: Features, device: torch.device, y_max: int) -> list[_Stack]:
    """One stack per head label, its members' heads built under their seeds."""
    by_label: dict[str, list[Member]] = {}
    for member in members:
        by_label.setdefault(member.head, []).append(member)
    probe_rows = train.get(np.arange(2))
    stacks = []
    for label, group in by_label.items():
        heads = []
        for member in group:
            with seeded(member.seed):
                heads.append(make_heads[label]().to(device))
        split = _split(heads[0])
        with torch.no_grad():
            probe = split.apply(probe_rows, train.form)
            k = split.body.eval()(probe).shape[-1]
        if y_max >= k:
            raise HeadbenchError(f"labels go up to class {y_max} but head '{label}' outputs {k} "
                                 "classes: build the head with num_classes equal to the number "
                                 "of classes")
        stacks.append(_Stack(label, group, heads, split, probe, device))
    return stacks


def _split(head: nn.Module) -> TrainingSplit:
    return head.training_split() if hasattr(head, "training_split") else training_split(head)


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for 0-based `step`: linear warm-up to `lr`, then cosine decay to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_head(head: nn.Module, X_train: Any, y_train: Any, X_val: Any, y_val: Any,
               config: TrainConfig, weight_decay: float, seed: int) -> TrainResult:
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

    Returns:
        TrainResult with the best epoch's state_dict (on CPU) and the per-epoch history.
    """
    member = Member("head", float(weight_decay), int(seed))
    results = train_members({"head": lambda: head}, [member], X_train, y_train, X_val, y_val,
                            config)
    return results[member]


def fit_heads(make_heads: dict[str, Callable[[], nn.Module]], X_train: Any, y_train: Any,
              X_val: Any, y_val: Any, config: TrainConfig, seeds: Sequence[int] = (0, 1, 2), *,
              stacked: bool = True, done: dict[Member, TrainResult] | None = None,
              on_member: Callable[[Member, TrainResult], None] | None = None,
              on_fit: Callable[[str, FitResult], None] | None = None,
              on_epochs: Callable[[int], None] | None = None) -> dict[str, FitResult]:
    """Every head fitted: the decay chosen on validation loss at the first seed, then the other
    seeds at the chosen decay, in two stacked passes.

    Pass 1 trains every head × every decay at `seeds[0]`; pass 2 every head × the other seeds
    at its chosen decay (ties: the first decay listed). Each member's head is built by
    `make_heads[label]()` inside `seeded(seed)`.

    Args:
        make_heads: head label -> builds a fresh, untrained head.
        X_train, y_train, X_val, y_val: as for `train_head`. The test split never enters here.
        config: the protocol; `config.weight_decays` is the sweep.
        seeds: one run per seed at the chosen decay.
        stacked: False trains every member alone, one after the other (the reference).
        done: members already trained (a resumed run): not trained again.
        on_member: called with each member as soon as it finishes (to commit it).
        on_fit: called with each head's FitResult as soon as all its seeds are trained.
        on_epochs: called with the member-epochs just done (for a progress bar).

    Returns:
        label -> FitResult with the sweep (decay -> best val loss at seeds[0]) and one run per
        seed, first seed first.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HeadbenchError("seeds must list at least one seed")
    config.validate()
    device = resolve_device(config.device)
    train, val = _as_features(X_train, device), _as_features(X_val, device)
    results = dict(done or {})
    fits: dict[str, FitResult] = {}

    def finished(member: Member, result: TrainResult) -> None:
        results[member] = result
        if on_member is not None:
            on_member(member, result)
        fit = _fit_of(member.head, results, config, seeds)
        if fit is not None and member.head not in fits:
            fits[member.head] = fit
            if on_fit is not None:
                on_fit(member.head, fit)

    def run(members: list[Member]) -> None:
        todo = [m for m in members if m not in results]
        groups = [todo] if stacked else [[m] for m in todo]
        for group in groups:
            if group:
                train_members(make_heads, group, train, y_train, val, y_val, config,
                              on_done=finished, on_epochs=on_epochs)

    run([Member(label, wd, seeds[0]) for label in make_heads for wd in config.weight_decays])
    chosen = {label: _chosen_decay(label, results, config, seeds[0]) for label in make_heads}
    for label in make_heads:  # heads whose every member was done before this call
        fit = _fit_of(label, results, config, seeds)
        if fit is not None and label not in fits:
            fits[label] = fit
            if on_fit is not None:
                on_fit(label, fit)
    run([Member(label, chosen[label], s) for label in make_heads for s in seeds[1:]])
    return {label: fits[label] for label in make_heads}


def _chosen_decay(label: str, results: dict[Member, TrainResult], config: TrainConfig,
                  seed: int) -> float:
    sweep = {wd: results[Member(label, wd, seed)].best_val_loss for wd in config.weight_decays}
    return min(sweep, key=sweep.get)  # ties: the first decay listed


def _fit_of(label: str, results: dict[Member, TrainResult], config: TrainConfig,
            seeds: list[int]) -> FitResult | None:
    """The head's FitResult once its sweep and every seed at the chosen decay are done."""
    if any(Member(label, wd, seeds[0]) not in results for wd in config.weight_decays):
        return None
    chosen = _chosen_decay(label, results, config, seeds[0])
    runs = [results.get(Member(label, chosen, s)) for s in seeds]
    if any(r is None for r in runs):
        return None
    sweep = {wd: results[Member(label, wd, seeds[0])].best_val_loss for wd in config.weight_decays}
    return FitResult(chosen, sweep, runs)


def fit_head(make_head: Callable[[], nn.Module], X_train: Any, y_train: Any, X_val: Any,
             y_val: Any, config: TrainConfig, seeds: Sequence[int] = (0, 1, 2),
             on_run: Callable[[int, int], None] | None = None) -> FitResult:
    """`fit_heads` for one head: the decay chosen on validation loss at the first seed, then
    the other seeds. `on_run(done, total)` is called after each training run."""
    total, count = len(config.weight_decays) + len(seeds) - 1, 0

    def on_member(member: Member, result: TrainResult) -> None:
        nonlocal count
        count += 1
        if on_run is not None:
            on_run(count, total)

    return fit_heads({"head": make_head}, X_train, y_train, X_val, y_val, config, seeds,
                     on_member=on_member)["head"]


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
    feats = _as_features(X, device)
    split = _split(head) if feats.form is not None else None
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
