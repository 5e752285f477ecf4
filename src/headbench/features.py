"""The on-disk feature cache: the backbone runs once per image.

Heads are trained on the backbone's *unpooled* feature map (C, H, W), so flatten, average-pool
and attention heads train from the same cache as `gap`. When every head needs only global
statistics of the map (gap: the average; gmp: the max; catavgmax: both), `form` stores just those
(C floats per statistic instead of C·H·W: 49× smaller for a 7×7 map) and the key says so.
Rows are stored as float16 in memory-mappable `.npy` chunks:

    <cache_dir>/<key>/meta.json              what produced the features (the key's fields + more)
    <cache_dir>/<key>/chunks/000000.npy      float16 (n, C, H, W)
    <cache_dir>/<key>/chunks/000000.json     {"digests": [n content digests, row order],
                                              "failures": {digest: reason},
                                              "crc32": the .npy's CRC-32}

The key hashes everything that changes the numbers: backbone, weights checksum, data config,
input size, view (resize / shift / margin, or an augmented view: the recipe hash and the view
index, `images.View.aug`), precision and the format version. Rows are found by
the image's content digest, so a new or changed file is extracted alone and an unchanged one
never again; decode failures are cached with their reason the same way.

A chunk counts only once its `.json` exists: the `.npy` is committed first (temp file +
`os.replace`), then the `.json`. An interrupted extraction therefore resumes after the last
finished chunk, and a half-written `.npy` without its `.json` is ignored and later overwritten.
A chunk whose `.npy` no longer matches its CRC-32 (a flipped bit on disk) is named in the log,
removed, and its images are extracted again; a meta.json whose feature shape is not the
backbone's is one line naming it (chunks written before the checksum are read as before).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io as io_bytes
import json
import os
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import distributed, io, progress
from .images import AUG_RECIPE, ImageDataset, View, collate, default_workers
from .errors import HeadbenchError
from .backbones import check_extraction_memory, inference_copy
from .layers import global_stats
from .runtime import resolve_device, resolve_precision, tune_allocator

FORMAT_VERSION = 1
FP16_MAX = 65504.0  # largest finite float16; larger activations would be stored as inf
_CHUNK_RE = re.compile(r"^(\d+)\.(npy|json)$")
KEY_RE = re.compile(r"^[0-9a-f]{16}$")
COMMIT_EVERY_S = 30.0  # extracted rows are committed at least this often
_OPEN_CHUNKS = 128  # memory maps kept open per FeatureSet (each holds a file descriptor)


# --------------------------------------------------------------------------- cache location


def default_cache_dir() -> Path:
    """`$HEADBENCH_CACHE`, else `$XDG_CACHE_HOME/headbench`, else `~/.cache/headbench`."""
    if os.environ.get("HEADBENCH_CACHE"):
        return Path(os.environ["HEADBENCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "headbench"
    return Path.home() / ".cache" / "headbench"


# --------------------------------------------------------------------------- cache key


def _input_size(backbone: Any, view: View) -> int | list[int]:
    """The image size the backbone sees under `view`."""
    return view.size if view.size is not None else list(backbone.data_config["input_size"][1:])


def key_fields(backbone: Any, view: View, precision: str,
               form: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Everything that changes the stored numbers; their hash is the cache key."""
    fields = {"format": FORMAT_VERSION, "backbone": backbone.timm_name,
              "weights_checksum": backbone.weights_checksum,
              "data_config": backbone.data_config, "input_size": _input_size(backbone, view),
              "view": view.key, "precision": precision}
    if form:  # pooled statistics instead of maps (absent for maps: their keys stay as they were)
        fields["form"] = list(form)
    return fields


def cache_key(fields: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of `fields`."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- chunks on disk


def _npy_rows(path: Path) -> int | None:
    """Rows of a complete .npy file, or None when it is missing or truncated."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
        return shape[0] if os.path.getsize(path) == expected and shape else None
    except (OSError, ValueError):
        return None


@dataclass
class ChunkIndex:
    """What the committed chunks of one cache entry hold."""
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # digest -> (chunk, row)
    failures: dict[str, str] = field(default_factory=dict)  # digest -> reason
    next_chunk: int = 0

    @classmethod
    def load(cls, chunks: Path) -> "ChunkIndex":
        index = cls()
        numbers = sorted(int(m[1]) for p in listdir(chunks)
                         if (m := _CHUNK_RE.match(p.name)) and m[2] == "json")
        for number in numbers:
            index.next_chunk = number + 1
            try:
                record = json.loads((chunks / f"{number:06d}.json").read_text())
                digests, failures = list(record["digests"]), dict(record["failures"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable record: treat the chunk as never written
            if digests and _npy_rows(chunks / f"{number:06d}.npy") != len(digests):
                continue
            if digests and "crc32" in record and not _matches(chunks / f"{number:06d}.npy",
                                                              record["crc32"]):
                _drop_damaged(chunks, number, len(digests))
                continue
            index.failures.update(failures)
            index.rows.update((d, (number, row)) for row, d in enumerate(digests))
        return index

    def knows(self, digest: str) -> bool:
        return digest in self.rows or digest in self.failures


def listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def is_cache(path: Path) -> bool:
    """Whether `path` is a feature cache: a folder holding at least one entry (a folder named
    like a key, with its meta.json)."""
    return any(p.is_dir() and KEY_RE.match(p.name) and (p / "meta.json").is_file()
               for p in listdir(path))


def _commit_chunk(chunks: Path, number: int, features: np.ndarray, digests: list[str],
                  failures: dict[str, str]) -> None:
    """Write one chunk: the .npy first, then the .json that makes it count, with the .npy's
    CRC-32 (checked by `ChunkIndex.load`)."""
    record: dict[str, Any] = {"digests": digests, "failures": failures}
    if digests:
        buffer = io_bytes.BytesIO()
        np.save(buffer, features)
        data = buffer.getvalue()
        io.atomic_write_bytes(chunks / f"{number:06d}.npy", data)
        record["crc32"] = zlib.crc32(data)
    io.atomic_write_json(chunks / f"{number:06d}.json", record)


# chunk files already checked by this process, (path, size, mtime) -> CRC-32: an extraction
# loads its entry's index up to three times, and a chunk is read in full to check it (damage
# on disk between two processes is always seen: each process checks every chunk once)
_CHECKED: dict[tuple[str, int, int], int] = {}


def _matches(path: Path, crc: int) -> bool:
    """Whether the file at `path` has CRC-32 `crc` (computed once per file version)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    version = (str(path), stat.st_size, stat.st_mtime_ns)
    if version not in _CHECKED:
        _CHECKED[version] = _crc32(path)
    return _CHECKED[version] == crc


def _crc32(path: Path) -> int | None:
    """CRC-32 of a file read in 16 MiB blocks; None when it cannot be read."""
    crc = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                crc = zlib.crc32(block, crc)
    except OSError:
        return None
    return crc


def _drop_damaged(chunks: Path, number: int, n_rows: int) -> None:
    """A chunk whose bytes do not match its checksum: said in one line and removed (record
    first: without it the chunk never counts), so its images are extracted again."""
    npy = chunks / f"{number:06d}.npy"
    progress.log(f"cache chunk '{npy}' is damaged (its checksum does not match): its {n_rows} "
                 "images are extracted again")
    for path in (chunks / f"{number:06d}.json", npy):
        with contextlib.suppress(OSError):
            path.unlink()


def _entry_lock(entry: Path):
    """Serialise extraction into one entry across processes (chunk numbers would collide)."""
    return io.locked(entry / "lock", f"waiting for another headbench process extracting into {entry}")


# --------------------------------------------------------------------------- extraction


def _forward(backbone: torch.nn.Module, images: torch.Tensor, device: torch.device,
             precision: str, form: tuple[str, ...] | None = None) -> np.ndarray:
    """float16 maps (n, C, H, W) of a batch, or their statistics `form`: (n, len(form)·C)."""
    x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode():
        with autocast:
            out = backbone(x)
        out = out.float()
        if form:  # a token row's statistics: its class token, the others of its patch tokens
            out = global_stats(out, form, getattr(backbone, "token_prefix", None))
        out = out.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        return out.contiguous().cpu().numpy()


class _ChunkWriter:
    """Buffers extracted rows and commits them `chunk_size` at a time, or whatever is buffered
    once `every_s` seconds have passed since the last commit (a kill loses at most that)."""

    def __init__(self, chunks: Path, first_number: int, chunk_size: int, shape: tuple,
                 every_s: float | None = None, stride: int = 1):
        self.chunks, self.number, self.stride = chunks, first_number, stride
        self.chunk_size, self.shape = chunk_size, shape
        self.every_s = COMMIT_EVERY_S if every_s is None else every_s
        self.arrays: list[np.ndarray] = []
        self.digests: list[str] = []
        self.failures: dict[str, str] = {}
        self.last_commit = time.monotonic()

    def add(self, features: np.ndarray, digests: list[str], failures: dict[str, str]) -> None:
        self.arrays.append(features)
        self.digests += digests
        self.failures.update(failures)
        while len(self.digests) + len(self.failures) >= self.chunk_size:
            self.flush(self.chunk_size)
        if time.monotonic() - self.last_commit >= self.every_s:
            self.flush()

    def flush(self, limit: int | None = None) -> None:
        """Commit up to `limit` buffered items (default all), rows before failures."""
        if not self.digests and not self.failures:
            return
        limit = limit or len(self.digests) + len(self.failures)
        rows = np.concatenate([np.empty((0, *self.shape), np.float16), *self.arrays])
        n_rows = min(len(self.digests), limit)
        failed = dict(list(self.failures.items())[:limit - n_rows])
        _commit_chunk(self.chunks, self.number, rows[:n_rows], self.digests[:n_rows], failed)
        self.number += self.stride  # another rank writes the numbers in between
        self.arrays, self.digests = [rows[n_rows:]], self.digests[n_rows:]
        self.failures = {d: r for d, r in self.failures.items() if d not in failed}
        self.last_commit = time.monotonic()


def _ensure_meta(entry: Path, fields: dict[str, Any], backbone: Any, view: View) -> dict:
    """meta.json of the entry, written on first use. `feature_shape` is one stored row's
    shape: the map (C, H, W), or (len(form)·C,) for pooled statistics."""
    c, h, w = backbone.feature_shape(view.size)
    form = fields.get("form")
    shape = [len(form) * c] if form else [c, h, w]
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if meta is not None:
        stored = meta.get("feature_shape") if isinstance(meta, dict) else None
        if stored != shape:
            raise HeadbenchError(f"'{entry / 'meta.json'}' is damaged (feature_shape "
                                 f"{str(stored)[:40]}, this backbone gives {shape}): remove "
                                 f"the entry with 'headbench cache rm {entry.name}' and rerun")
        return meta
    if view.aug is not None:  # the key holds only its hash: keep the recipe itself readable
        fields = dict(fields, aug_recipe=AUG_RECIPE)
    meta = dict(fields, backbone_name=backbone.name, weights=str(backbone.weights),
                feature_shape=shape, map_shape=[c, h, w],
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    io.atomic_write_json(entry / "meta.json", meta)
    return meta


def _run(backbone: Any, todo: list[tuple[str, Path]], first_chunk: int, stride: int,
         shape: tuple, *, view: View, precision: str, device: torch.device, chunks: Path,
         batch_size: int, workers: int, chunk_size: int, description: str,
         form: tuple[str, ...] | None = None) -> int:
    """Extract `todo` into chunks `first_chunk`, `first_chunk + stride`, ...; rows written."""
    dataset = ImageDataset([p for _, p in todo], backbone.data_config, view,
                           keys=[d for d, _ in todo])
    n_batches = -(-len(todo) // batch_size)
    # With a single batch a worker only adds start-up time: decoding is serial either way.
    workers = 0 if n_batches == 1 else min(workers, n_batches)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    writer = _ChunkWriter(chunks, first_chunk, chunk_size, shape, stride=stride)
    n_rows = n_bad = 0
    model = inference_copy(backbone, device)
    with progress.progress(description, total=len(todo), unit="img") as bar, _flushed(writer):
        for images, good, bad, reasons in loader:
            features = (_forward(model, images, device, precision, form) if images is not None
                        else np.empty((0, *shape), np.float16))
            if features.shape[1:] != shape:
                raise RuntimeError(f"backbone produced {features.shape[1:]}, meta says {shape}")
            writer.add(features, [todo[i][0] for i in good],
                       {todo[i][0]: r for i, r in zip(bad, reasons)})
            n_rows, n_bad = n_rows + len(good), n_bad + len(bad)
            bar.advance(len(good) + len(bad))
            if bad:
                bar.set_postfix(f"{n_bad} unreadable")
    return n_rows


@contextlib.contextmanager
def _flushed(writer: _ChunkWriter) -> Iterator[None]:
    """Commit what is buffered when the block ends, also on Ctrl-C or an error: every image
    extracted so far is kept (a disk error while committing leaves the chunk out, never half)."""
    try:
        yield
    finally:
        writer.flush()


def extract(backbone: Any, paths: Sequence[str | Path], digests: Sequence[str],
            view: View = View(), precision: str = "auto", cache_dir: str | Path | None = None,
            batch_size: int = 32, workers: int | None = None,
            device: str | torch.device | None = None, chunk_size: int = 256,
            description: str = "extracting features",
            form: tuple[str, ...] | None = None) -> "FeatureSet":
    """Feature maps of `paths` under `view`, computing only those not cached yet.

    Args:
        backbone: a `headbench.backbones.Backbone`.
        paths: image files.
        digests: content digest of each file (`data.file_digest`); the cache is keyed by it.
        view: resize / shift / margin applied before the backbone, or an augmented view
            (`View(aug=k)`; see `extract_views`).
        precision: 'auto' (bf16 where the hardware has it, else fp32), 'fp32' or 'bf16'.
        cache_dir: cache root; default `default_cache_dir()`.
        batch_size: images per forward pass.
        workers: decoding processes; default min(4, cores), 0 on a single core.
        device: default `runtime.resolve_device()` (cuda when available, else cpu).
        chunk_size: images per committed chunk (the unit an interrupted run resumes from).
        description: progress bar label.
        form: store only these global statistics of each map ('avg', 'max'; see
            `layers.STATS`), C floats per statistic instead of C·H·W: enough for heads whose
            `TrainingSplit.stats` they cover. None stores the maps.

    Returns:
        A `FeatureSet` over all files, in the order given.
    """
    if len(paths) != len(digests):
        raise ValueError(f"{len(paths)} paths but {len(digests)} digests")
    tune_allocator()
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value < 1:
            raise HeadbenchError(f"{name} must be at least 1, got {value}")
    if workers is not None and workers < 0:
        raise HeadbenchError(f"workers must be 0 or more, got {workers}")
    device = resolve_device(device)
    # an explicit precision names the cache entry even on a device that cannot compute it, so a
    # bf16 run's cached features can be read anywhere; support is checked only before computing
    precision = precision if precision in ("fp32", "bf16") else resolve_precision(precision, device)
    fields = key_fields(backbone, view, precision, form)
    key = cache_key(fields)
    entry = Path(cache_dir or default_cache_dir()) / key
    index = ChunkIndex.load(entry / "chunks")
    if not all(index.knows(d) for d in digests):  # images to extract: will a batch fit?
        check_extraction_memory(backbone, view.size, batch_size, precision, device)
    work = functools.partial(_run, backbone, view=view, precision=precision, device=device,
                             chunks=entry / "chunks", batch_size=batch_size,
                             workers=default_workers() if workers is None else workers,
                             chunk_size=chunk_size, description=description, form=form)
    n_extracted = 0
    if distributed.active():  # under torchrun: every rank calls extract, each does its part
        n_extracted = _extract_shared(entry, fields, backbone, view, paths, digests, device,
                                      work)
    elif not all(index.knows(d) for d in digests):
        with _entry_lock(entry):
            todo, first = _plan(entry, fields, backbone, view, paths, digests, device)
            if todo:
                n_extracted = work(todo, first, 1, _stored_shape(entry))
    index = ChunkIndex.load(entry / "chunks")
    meta = _ensure_meta(entry, fields, backbone, view)
    return FeatureSet(key, meta, entry, list(digests), index, n_extracted)


def _plan(entry: Path, fields: dict, backbone: Any, view: View, paths: Sequence,
          digests: Sequence[str], device: torch.device) -> tuple[list[tuple[str, Path]], int]:
    """Under the entry's lock: the (digest, path) of each content not cached yet (once per
    digest) and the first free chunk number; meta.json is written before any chunk."""
    # under the lock no other process writes here: any temp file is a crash's leftover
    io.sweep_temp_files(entry, older_than=0)
    index = ChunkIndex.load(entry / "chunks")  # another process may have filled it meanwhile
    todo = list({d: Path(p) for p, d in zip(paths, digests) if not index.knows(d)}.items())
    if todo:
        resolve_precision(fields["precision"], device)
        _ensure_meta(entry, fields, backbone, view)
    return todo, index.next_chunk


def _stored_shape(entry: Path) -> tuple[int, ...]:
    return tuple(json.loads((entry / "meta.json").read_text())["feature_shape"])


def _extract_shared(entry: Path, fields: dict, backbone: Any, view: View, paths: Sequence,
                    digests: Sequence[str], device: torch.device, work: Any) -> int:
    """`extract` under torchrun. Rank 0 holds the entry's lock for the group and finds what is
    missing; rank r extracts every world-th image of it from the r-th into chunks numbered
    first + r, first + r + world, ...: no image twice, no chunk number twice, and the chunks
    a failed rank finished stay committed for the rerun. Returns the rows all ranks wrote."""
    lock = _entry_lock(entry) if distributed.is_main() else contextlib.nullcontext()
    with lock:
        todo, first = distributed.from_main(
            lambda: _plan(entry, fields, backbone, view, paths, digests, device))
        mine, n, error = todo[distributed.rank()::distributed.world()], 0, None
        try:
            if mine:
                n = work(mine, first + distributed.rank(), distributed.world(),
                         _stored_shape(entry))
        except Exception as e:  # every rank learns of it, so none waits for the others
            error = e
        distributed.check(error)
        return int(distributed.total(n))


def extract_views(backbone: Any, paths: Sequence[str | Path], digests: Sequence[str], k: int,
                  size: int | None = None, **options: Any) -> list["FeatureSet"]:
    """Augmented views 0..k-1 of `paths`: `extract` with `View(size, aug=i)` for each i.

    Each view index is its own cache entry (the key holds the recipe hash and the index), so
    asking for views 0..7 after 0..3 extracts only 4..7. View i of an image is drawn with
    `images.aug_seed(digest, i)`: the same features for the same content, in any cache.

    Args:
        k: how many views (0 gives []).
        size: crop side; None uses the backbone's input size.
        options: as for `extract` (precision, cache_dir, form, workers, device, ...), except
            `view` and `description`.

    Returns:
        One `FeatureSet` per view, view 0 first, each over all files in the order given.
    """
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise HeadbenchError(f"the number of augmented views must be a whole number >= 0, "
                             f"got {k}", param="aug_views")
    return [extract(backbone, paths, digests, view=View(size=size, aug=i),
                    description=f"augmented view {i + 1}/{int(k)}", **options)
            for i in range(int(k))]


def is_cached(backbone: Any, digests: Sequence[str], view: View = View(), precision: str = "fp32",
              cache_dir: str | Path | None = None, form: tuple[str, ...] | None = None) -> bool:
    """Whether every digest already has a row (or a failure) in that cache entry."""
    key = cache_key(key_fields(backbone, view, precision, form))
    index = ChunkIndex.load(Path(cache_dir or default_cache_dir()) / key / "chunks")
    return all(index.knows(d) for d in digests)


# --------------------------------------------------------------------------- reading


class FeatureSet:
    """Cached feature maps of a list of files, read straight from the chunk memory maps.

    Attributes:
        key: the cache key (entry directory name).
        meta: contents of the entry's meta.json.
        shape: one stored row: the feature map (C, H, W), or (len(form)·C,) for statistics.
        form: None for maps, else the global statistics stored (the cache key says which).
        n_extracted: rows computed by the `extract` call that returned this set.
        failures: file index -> reason, for files that could not be decoded.
        valid: bool array, True where a file has features.

    Example:
        >>> fs = extract(backbone, paths, digests, cache_dir=tmp)  # doctest: +SKIP
        >>> fs.take(np.flatnonzero(fs.valid)[:8]).shape  # doctest: +SKIP
        (8, 512, 2, 2)
    """

    def __init__(self, key: str, meta: dict, entry: Path, digests: list[str], index: ChunkIndex,
                 n_extracted: int):
        self.key, self.meta, self.path, self.digests = key, meta, entry, digests
        self.shape = tuple(meta["feature_shape"])
        self.form = tuple(meta["form"]) if meta.get("form") else None
        self.n_extracted = n_extracted
        located = [index.rows.get(d, (-1, -1)) for d in digests]
        self._chunk = np.array([c for c, _ in located], dtype=np.int64)
        self._row = np.array([r for _, r in located], dtype=np.int64)
        self.valid = self._chunk >= 0
        self.failures = {i: index.failures[d] for i, d in enumerate(digests)
                         if not self.valid[i] and d in index.failures}
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.digests)

    def __repr__(self) -> str:
        return (f"FeatureSet(key={self.key!r}, files={len(self)}, valid={int(self.valid.sum())}, "
                f"shape={self.shape})")

    def _map(self, chunk: int) -> np.ndarray:
        if chunk in self._maps:
            self._maps.move_to_end(chunk)
        else:
            self._maps[chunk] = np.load(self.path / "chunks" / f"{chunk:06d}.npy", mmap_mode="r")
            if len(self._maps) > _OPEN_CHUNKS:
                self._maps.popitem(last=False)
        return self._maps[chunk]

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} files")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.empty(0, dtype=np.int64)
        idx = idx.astype(np.int64, casting="same_kind").reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"file index out of range for {len(self)} files")
        idx = np.where(idx < 0, idx + len(self), idx)
        bad = idx[~self.valid[idx]]
        if bad.size:
            i = int(bad[0])
            why = self.failures.get(i, "not extracted")
            raise IndexError(f"file {i} has no features ({why}); select with FeatureSet.valid")
        return idx

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """float16 (n, C, H, W) feature maps of the given file indices, in that order."""
        idx = self._indices(indices)
        out = np.empty((len(idx), *self.shape), dtype=np.float16)
        chunks = self._chunk[idx]
        for chunk in np.unique(chunks):
            where = np.flatnonzero(chunks == chunk)
            rows = self._row[idx[where]]
            order = np.argsort(rows, kind="stable")  # read each chunk front to back
            out[where[order]] = self._map(int(chunk))[rows[order]]
        return out

    def __getitem__(self, indices: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """`fs[i]` is one (C, H, W) map; `fs[indices]` is `fs.take(indices)`."""
        if isinstance(indices, (int, np.integer)):
            return self.take([int(indices)])[0]
        return self.take(indices)


    def subset(self, indices: Sequence[int] | np.ndarray) -> "FeatureRows":
        """A lazy (n, C, H, W) view of some files' features that reads from the memory maps."""
        return FeatureRows(self, indices)


class FeatureRows:
    """Rows of a FeatureSet as an array-like: `rows[i]` and `rows[index_array]` read only those
    rows from the memory-mapped chunks, so training on a large set never loads all of it."""

    dtype = np.dtype(np.float16)

    def __init__(self, features: FeatureSet, indices: Sequence[int] | np.ndarray):
        self.features, self.form = features, features.form
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shape = (len(self.indices), *features.shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.features.take([self.indices[index]])[0]
        return self.features.take(self.indices[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self.features.take(self.indices)
        return rows if dtype is None else rows.astype(dtype)
