"""The input pipeline of training: features read as float32, views, prepared inputs, batches.

Features are arrays of shape (N, C, H, W) -- numpy float16 arrays, `np.memmap`s or anything
supporting `X[index_array]` -- or (N, S·C) global statistics (`Features.form`). Feature sets up
to `CACHE_BYTES` are held in memory on the device (`Features`).

A head's parameter-free `prepare` (global pool, GeM's moments, attention's tokens;
`splits.TrainingSplit`) runs once per image per fit, not once per epoch: prepared inputs that fit
in `MEMORY_BYTES` are held in memory (`Inputs`); larger ones are computed per batch from
training rows read in blocks (`blocks`) once per epoch for every member.

Training features may be `Views`: K cached augmented views of each image, of which every epoch
shows one per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import HeadbenchError
from ..splits import TrainingSplit

# Feature sets up to this many bytes (in their stored dtype) are held in memory on the device.
CACHE_BYTES = 512 * 2**20
# A fit's prepared inputs (float32, train + val) are held in memory up to this size; larger
# ones are computed per batch from training rows read in blocks of BLOCK_BYTES (as float32).
MEMORY_BYTES = 2**30
BLOCK_BYTES = 256 * 2**20
CHUNK_ROWS = 256  # rows per read when preparing inputs and evaluating


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
        # prepared inputs held in memory (`Inputs`) by TrainingSplit.key, and those taken at
        # another expansion point by (key, point): kept here, so that every pass of a fit on
        # these features (the sweep, then the seeds) prepares them once
        self.prepared: dict[str, torch.Tensor] = {}
        self.moved: dict[tuple[str, float], torch.Tensor] = {}

    @classmethod
    def joined(cls, X: Any, parts: Sequence["Features"], device: torch.device) -> "Features":
        """Features of X, whose rows are the rows of `parts` one after the other (train + val for
        cross-validation): what the parts hold in memory, rows and prepared inputs, is joined
        rather than read and prepared again."""
        joined = cls(X, device, cache_bytes=-1)
        if all(p._memory is not None for p in parts):
            joined._memory = torch.cat([p._memory for p in parts])
        keys = set.intersection(*(set(p.prepared) for p in parts))
        joined.prepared = {k: torch.cat([p.prepared[k] for p in parts]) for k in keys}
        return joined

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


def as_features(X: Any, device: torch.device) -> Features:
    """X as `Features` on `device` (a `Features` already there is passed through)."""
    if isinstance(X, Features) and X.device == device:
        return X
    if isinstance(X, Features):
        return Features(X.X, device, form=X.form)
    return Features(X, device)


def labels(y: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """`y` checked to be `n` class indices, as int64 on `device`; `name` names it in errors."""
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise HeadbenchError(f"{name} must be {n} integer class indices (one per feature row), "
                             f"got shape {y.shape} of {y.dtype}")
    if n and y.min() < 0:
        raise HeadbenchError(f"{name} holds a negative class index ({y.min()})")
    return torch.as_tensor(y.astype(np.int64), device=device)


# ----------------------------------------------------------------------------- views

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


# ----------------------------------------------------------------------------- prepared inputs

class Inputs:
    """One split's prepared inputs, one per distinct `TrainingSplit.key`.

    The keys in `memory` are computed in one pass over the features and kept (float32, on the
    device); the others (`lazy`) are computed per batch from rows the caller reads (`Block`).

    The inputs of a split with `prepare_at` (GeM's moments, exact near one expansion point)
    come with `x.recentred(c)`: the same rows prepared at point c, for a member whose p left
    the window of the others (`train.stacked`). For memory keys every row is prepared at c
    once, when first asked for, and kept in `moved` while those fit in MEMORY_BYTES (a point
    past that: from the rows' features per batch, as lazy keys are). Both are kept on the
    `Features` (`Features.prepared`, `Features.moved`) for the next pass of the same fit."""

    def __init__(self, feats: Features, splits: dict[str, TrainingSplit], memory: set[str]):
        self.feats, self.splits = feats, splits
        self.moved = feats.moved  # (key, point) -> inputs at another point, as they are needed
        self.lazy = set(splits) - memory
        todo = [k for k in memory if k not in feats.prepared]
        if todo:
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in todo}
            for _, rows in self._rows(4 * CHUNK_ROWS):
                for key in todo:
                    parts[key].append(splits[key].apply(rows, feats.form))
            feats.prepared.update((k, torch.cat(v)) for k, v in parts.items())
        self.memory: dict[str, torch.Tensor] = {k: feats.prepared[k] for k in memory}

    def _rows(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        with torch.no_grad():
            for start in range(0, len(self.feats), size):
                yield start, self.feats.get(np.arange(start, min(len(self.feats), start + size)))

    def batch(self, key: str, index: torch.Tensor, block: "Block") -> torch.Tensor:
        """Inputs (*index.shape, ...) for positions `index` in `block`."""
        if key in self.memory:
            return self._held(key, block.rows[index] if block.rows is not None else index)
        rows = block.data[index.flatten()]
        return self._computed(key, rows, tuple(index.shape))

    def held(self, key: str) -> bool:
        """Whether the inputs of `key` are held in memory, every row (not computed per batch),
        with no other expansion point to move to (GeM's moments)."""
        return key in self.memory and self.splits[key].prepare_at is None

    def whole(self, key: str) -> torch.Tensor:
        """Every row of a held key's inputs, as held (no copy)."""
        return self.memory[key]

    def chunks(self) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """Every row once, in order: (rows, key -> inputs), the features read once per chunk."""
        if not self.lazy:
            for start in range(0, len(self.feats), CHUNK_ROWS):
                where = slice(start, min(len(self.feats), start + CHUNK_ROWS))
                yield where, {k: self._held(k, where) for k in self.memory}
            return
        for start, rows in self._rows(CHUNK_ROWS):
            where = slice(start, start + len(rows))
            out = {k: self._held(k, where) for k in self.memory}
            out.update((k, self._computed(k, rows, (len(rows),))) for k in self.lazy)
            yield where, out

    def _held(self, key: str, where: Any) -> torch.Tensor:
        """Rows `where` (index or slice) of a memory key's inputs."""
        x = _rows(self.memory[key], where)
        if self.splits[key].prepare_at is not None:
            x.recentred = lambda centre: self._moved(key, centre, where)
        return x

    def _computed(self, key: str, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A lazy key's inputs of feature rows `rows`, shaped (*shape, ...)."""
        split = self.splits[key]
        x = split.apply(rows, self.feats.form).unflatten(0, shape)
        if split.prepare_at is not None:
            x.recentred = lambda centre: split.prepare_at(rows, centre).unflatten(0, shape)
        return x

    def _moved(self, key: str, centre: float, where: Any) -> torch.Tensor:
        """Rows `where` of a memory key prepared at expansion point `centre`."""
        held = sum(t.nbytes for t in self.moved.values())
        if (key, centre) not in self.moved and held + self.memory[key].nbytes <= MEMORY_BYTES:
            prepare = self.splits[key].prepare_at
            self.moved[key, centre] = torch.cat([prepare(rows, centre)
                                                 for _, rows in self._rows(4 * CHUNK_ROWS)])
        if (key, centre) in self.moved:
            return _rows(self.moved[key, centre], where)
        index = (np.arange(len(self.feats))[where] if isinstance(where, slice)
                 else where.cpu().numpy())
        rows = self.feats.get(index.reshape(-1))
        return self.splits[key].prepare_at(rows, centre).unflatten(0, index.shape)


def plan_memory(splits: dict[str, TrainingSplit], feats: list[Features]) -> set[str]:
    """The prepared inputs held in memory: the smallest first, while they fit in
    `MEMORY_BYTES`."""
    probe = feats[0].get(np.arange(1))
    with torch.no_grad():
        row_bytes = {k: 4 * s.apply(probe, feats[0].form).numel() for k, s in splits.items()}
    rows = sum(len(f) for f in feats)
    chosen, used = set(), 0
    for key in sorted(splits, key=row_bytes.get):
        if used + rows * row_bytes[key] <= MEMORY_BYTES:
            chosen.add(key)
            used += rows * row_bytes[key]
    return chosen


# ----------------------------------------------------------------------------- blocks and batches

@dataclass
class Block:
    """Training rows processed together: `rows` (None: all rows, in order) and, when some input
    is computed per batch, their features (`data`), read once for every member."""

    size: int
    rows: torch.Tensor | None = None
    data: torch.Tensor | None = None


def block_bounds(feats: Features, lazy: bool, n: int) -> list[tuple[int, int]]:
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


def blocks(feats: Features, bounds: list[tuple[int, int]], lazy: bool, epoch: int,
           device: torch.device, views: int = 1) -> Iterator[Block]:
    """The epoch's blocks. One block: every image, in order. Else the images in a random order
    shared by all members (seeded by the epoch), cut at `bounds`; each member then draws its
    own order inside a block. With several views, each image's row is its view of the epoch."""
    n = len(feats) // views
    pick = _view_rows(n, views, epoch)
    if len(bounds) == 1:
        if views == 1:
            yield Block(n, None, feats.get(np.arange(n)) if lazy else None)
        else:
            yield Block(n, torch.as_tensor(pick, device=device), feats.get(pick) if lazy else None)
        return
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy()
    for start, stop in bounds:
        rows = pick[np.sort(order[start:stop])]
        yield Block(len(rows), torch.as_tensor(rows, device=device), feats.get(rows))


def _rows(held: torch.Tensor, where: Any) -> torch.Tensor:
    """`held[where]`; an index tensor (b,) or (M, b) gathers with index_select, about twice as
    fast as advanced indexing for these row sizes (the same values)."""
    if not isinstance(where, torch.Tensor):
        return held[where]
    return held.index_select(0, where.flatten()).unflatten(0, tuple(where.shape))


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split a permutation into sorted index batches; a final batch of 1 joins the one before."""
    cut = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(cut) > 1 and len(cut[-1]) == 1:  # BatchNorm cannot train on one sample
        cut[-2:] = [np.concatenate(cut[-2:])]
    return [np.sort(b) for b in cut]
