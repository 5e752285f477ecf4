"""Image folders and train/val/test splits (decoding and transforms: `images.py`).

Folder layouts `scan_folder` understands:

- `classes`: `root/<class>/**/*.jpg` — one folder per class; `make_splits` draws a stratified,
  seeded train/val/test split.
- `train_val`: `root/train/<class>/...` plus one held-out folder, `val/` (or `valid/`,
  `validation/`, or `test/`). The held-out folder becomes the TEST split (reported once); the
  selection val split is a stratified fraction of `train/`.
- `train_val_test`: `root/train/`, `root/val/` (or `valid/`, `validation/`) and `root/test/`,
  used as given.

Three roles, never mixed: train (fit the head), val (choose heads and hyper-parameters),
test (reported once). Files that cannot be decoded are found during feature extraction
(`images.load_image` raises `BadImage`); `make_splits` takes the resulting validity mask.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from headbench import progress
from headbench.errors import HeadbenchError, unknown
from headbench.images import is_image_file

ROLES = ("train", "val", "test")
_VAL_NAMES = ("val", "valid", "validation")
_SPLIT_NAMES = ("train", "test") + _VAL_NAMES
_IGNORED_DIRS = {"__macosx"}  # macOS zip residue: resource forks, never images


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of the file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- scanning

@dataclass
class Item:
    """One image file: its class index, the split folder it came from, and its content hash."""
    path: Path
    label: int
    folder_role: str | None  # 'train' | 'val' | 'test' from the layout; None for `classes`
    digest: str


@dataclass
class Scan:
    """The result of `scan_folder`: classes, usable files, and files dropped with a reason."""
    root: Path
    layout: str  # 'classes' | 'train_val' | 'train_val_test'
    classes: list[str]
    items: list[Item]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    links_outside: int = 0   # symlinks leading out of `root` (used only with follow_links)
    follow_links: bool = False

    @property
    def labels(self) -> list[int]:
        return [item.label for item in self.items]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _hidden(p.name) and p.is_dir())


def _loose_files(folder: Path, skipped: list[tuple[Path, str]]) -> None:
    """Images next to the class folders belong to no class: list them as skipped. Other loose
    files there (README, manifest.json, labels.csv) are dataset metadata and are ignored."""
    for p in sorted(folder.iterdir()):
        if not _hidden(p.name) and is_image_file(p) and p.is_file():
            skipped.append((p, "image not inside a class folder"))


class _Links:
    """The symlink policy of one scan: links that stay inside the data folder are always used;
    links that lead out of it are used only with `follow`, and counted either way. A linked
    folder is decided (and counted) once, where the link is; loops are skipped. Real paths are
    tracked across the whole scan (`seen`): no folder is walked twice, and a folder link to the
    layout itself (the data folder, a split folder, a folder above the link) or into another
    class's folder is skipped, as it would read images twice or under another label."""

    def __init__(self, root: Path, follow: bool, layout: set[Path] = frozenset(),
                 classes: set[Path] = frozenset()):
        self.root, self.follow, self.outside = root.resolve(), follow, 0
        self.layout, self.classes, self.seen = set(layout), set(classes), set()

    def allowed(self, path: Path, skipped: list[tuple[Path, str]],
                home: Path | None = None) -> bool:
        """Whether to use `path` (a file or folder) found under class folder `home` (resolved);
        refused links are listed in `skipped`."""
        if not path.is_symlink():
            return True
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a loop, or a link to nothing
            skipped.append((path, "broken symlink or symlink loop"))
            return False
        if home is not None and target.is_dir() and (why := self._relabels(path, target, home)):
            skipped.append((path, why))
            return False
        if target.is_relative_to(self.root):
            return True
        self.outside += 1
        if not self.follow:
            skipped.append((path, "symlink to outside the data folder (pass --follow-links "
                                  "to use it)"))
        return self.follow

    def _relabels(self, path: Path, target: Path, home: Path) -> str | None:
        """Why a link under class folder `home` must not be used, or None."""
        if target in self.layout or path.parent.resolve().is_relative_to(target):
            return "symlink to the data folder, a split folder or a folder above it (a loop)"
        owner = next((c for c in self.classes if target.is_relative_to(c)), None)
        if owner is not None and owner != home:
            return (f"symlink into another class folder ('{owner.name}'): its images would be "
                    "read under this class's label")
        return None


def _class_files(folder: Path, skipped: list[tuple[Path, str]], links: _Links) -> list[Path]:
    """Image files under one class folder (recursively), sorted; others go to `skipped`."""
    found, home = [], folder.resolve()
    links.seen.add(home)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not _hidden(d)):
            sub = Path(dirpath) / d
            if links.allowed(sub, skipped, home) and sub.resolve() not in links.seen:
                links.seen.add(sub.resolve())  # no folder twice, across the whole scan
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _hidden(name):
                continue
            path = Path(dirpath) / name
            if not links.allowed(path, skipped, home):
                continue
            suffix = path.suffix.lower()
            if not is_image_file(path):
                skipped.append((path, f"not an image file ({suffix or 'no extension'})"))
                continue
            try:
                size = path.stat().st_size
            except OSError as e:
                skipped.append((path, f"cannot read ({type(e).__name__})"))
                continue
            if size == 0:
                skipped.append((path, "empty file (0 bytes)"))
                continue
            found.append(path)
    return found


def _detect_layout(root: Path) -> tuple[str, dict[str, Path]]:
    """The layout name and the folder holding each role's class folders."""
    subdirs = _subdirs(root)
    if not subdirs:
        raise HeadbenchError(f"no class folders in '{root}'; put images in '{root}/<class>/' "
                             f"or in '{root}/train/<class>/' and '{root}/val/<class>/'")
    by_name = {d.name.lower(): d for d in subdirs}
    split_dirs = [d for d in subdirs if d.name.lower() in _SPLIT_NAMES]
    if not split_dirs:
        return "classes", {"": root}
    if "train" not in by_name:
        raise HeadbenchError(f"'{split_dirs[0]}' looks like a split folder but '{root}' has no "
                             "train/ folder; add train/<class>/ or rename the folder")
    others = [d.name for d in subdirs if d not in split_dirs]
    if others:
        raise HeadbenchError(f"'{root}' mixes split folders with other folders "
                             f"({', '.join(others)}); move them into train/ or out of '{root}'")
    vals = [by_name[n] for n in _VAL_NAMES if n in by_name]
    if len(vals) > 1:
        raise HeadbenchError(f"'{root}' has several validation folders "
                             f"({', '.join(v.name for v in vals)}); keep one")
    test = by_name.get("test")
    if vals and test:
        return "train_val_test", {"train": by_name["train"], "val": vals[0], "test": test}
    if vals or test:
        held_out = vals[0] if vals else test
        return "train_val", {"train": by_name["train"], "val" if vals else "test": held_out}
    raise HeadbenchError(f"'{root}' has a train/ folder but no val/ (or valid/, validation/, "
                         "test/) folder next to it; add one")


def scan_folder(root: str | Path, follow_links: bool = False) -> Scan:
    """Find the classes and image files under `root` and hash every file.

    Structural problems (missing root, fewer than two classes, an empty class folder, a val or
    test class missing from train) raise `HeadbenchError` before any file is read. Items are
    sorted by class, then by path relative to `root`. Symlinks that stay inside `root` are
    used; those that lead out of it are skipped (listed) unless `follow_links`, and counted in
    `Scan.links_outside` either way.
    """
    root = Path(root)
    if not root.exists():
        raise HeadbenchError(f"data folder '{root}' does not exist; check the path")
    if not root.is_dir():
        raise HeadbenchError(f"data path '{root}' is not a folder; pass a folder of class folders")
    root = root.resolve()  # runs record absolute paths, so they work from any directory
    layout, role_dirs = _detect_layout(root)
    skipped: list[tuple[Path, str]] = []
    structure = {root} | {folder.resolve() for folder in role_dirs.values()}
    class_dirs = {c.resolve() for folder in role_dirs.values() for c in _subdirs(folder)}
    links = _Links(root, follow_links, structure, class_dirs - structure)
    _loose_files(root, skipped)
    found: dict[str, dict[str, list[Path]]] = {}  # role -> class -> files
    for role, folder in role_dirs.items():
        if folder != root:
            _loose_files(folder, skipped)
        found[role] = {}
        for class_dir in _subdirs(folder):
            if not links.allowed(class_dir, skipped):
                raise HeadbenchError(f"class folder '{class_dir}' is a symlink that leads out of "
                                     "the data folder (or nowhere); turn follow_links on to use "
                                     "it, or remove it", hints=["follow_links"])
            files = _class_files(class_dir, skipped, links)
            if not files:
                raise HeadbenchError(f"class folder '{class_dir}' has no images; "
                                     "add images or remove it")
            found[role][class_dir.name] = files
    train_role = "" if layout == "classes" else "train"
    classes = sorted(found[train_role])
    if len(classes) < 2:
        raise HeadbenchError(f"'{role_dirs[train_role]}' has {len(classes)} class folder(s); "
                             "a classifier needs at least two")
    for role, per_class in found.items():
        for name in per_class:
            if name not in classes:
                raise HeadbenchError(f"class folder '{role_dirs[role] / name}' has no matching "
                                     f"'{role_dirs['train'] / name}'; add training images or "
                                     "remove it")
    return Scan(root, layout, classes, _hash_items(root, found, classes, skipped), skipped,
                links.outside, follow_links)


def _hash_items(root: Path, found: dict[str, dict[str, list[Path]]], classes: list[str],
                skipped: list[tuple[Path, str]]) -> list[Item]:
    entries = [(classes.index(name), path.relative_to(root).as_posix(), path, role or None)
               for role, per_class in found.items()
               for name, files in per_class.items() for path in files]
    entries.sort(key=lambda e: (e[0], e[1]))
    items = []
    with progress.progress("hashing files", len(entries), unit="file") as bar:
        for label, _, path, role in entries:
            try:
                items.append(Item(path, label, role, file_digest(path)))
            except OSError as e:
                skipped.append((path, f"cannot read ({type(e).__name__})"))
            bar.advance()
    return items


# --------------------------------------------------------------------------- splits

@dataclass
class Splits:
    """Indices into `Scan.items` for the three roles, and how they were made.

    `labels` holds the label of every scan item (indexed like `Scan.items`) so that `counts()`
    needs no scan.
    """
    classes: list[str]
    train: list[int]
    val: list[int]
    test: list[int]
    description: str
    labels: list[int] = field(default_factory=list, repr=False)

    def indices(self, role: str) -> list[int]:
        if role not in ROLES:
            raise unknown("split", role, ROLES)
        return getattr(self, role)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each role: `counts()['val']['cats']`."""
        out = {}
        for role in ROLES:
            per_class = dict.fromkeys(self.classes, 0)
            for i in self.indices(role):
                per_class[self.classes[self.labels[i]]] += 1
            out[role] = per_class
        return out


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items by fractions (largest remainder); when n allows, every part gets one item.

    With fewer items than parts, the first part (train) is served first.
    """
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = range(len(counts)) if n >= len(counts) else range(min(n, 1))
    for i in wanted:
        if counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _stratify(indices_by_class: dict[int, list[int]], fractions: Sequence[float],
              seed: int) -> list[list[int]]:
    """Per class: shuffle with a generator seeded by (seed, class) and cut by `fractions`."""
    parts: list[list[int]] = [[] for _ in fractions]
    for label, indices in sorted(indices_by_class.items()):
        # Seeding per class keeps each class's split stable when other classes change.
        order = np.random.default_rng([seed, label]).permutation(len(indices))
        shuffled = [indices[i] for i in order]
        start = 0
        for part, count in zip(parts, _allocate(len(indices), fractions)):
            part.extend(shuffled[start:start + count])
            start += count
    return [sorted(p) for p in parts]


def check_fractions(split: Sequence[float], val_fraction: float) -> None:
    if len(split) != 3 or any(not f > 0 for f in split) or not math.isclose(sum(split), 1.0,
                                                                             abs_tol=1e-6):
        raise HeadbenchError(f"split {tuple(split)} must be three positive fractions "
                             "(train, val, test) summing to 1, e.g. 0.7,0.15,0.15", param="split")
    if not 0 < val_fraction < 1:
        raise HeadbenchError(f"val_fraction {val_fraction} must be between 0 and 1 "
                             "(exclusive), e.g. 0.15", param="val_fraction")


def make_splits(scan: Scan, valid: Sequence[bool] | None = None, val_fraction: float = 0.15,
                split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> Splits:
    """Assign every valid item to train, val or test.

    - `train_val_test` layout: the folders as given.
    - `train_val` layout: the given held-out folder is the test split; a stratified
      `val_fraction` of train/ is the val split used for selection.
    - `classes` layout: a stratified (train, val, test) = `split` draw per class.

    Stratified draws are per class and deterministic given `seed`; a class with at least as many
    valid items as parts gets at least one item in each. Items with `valid[i]` False are left
    out. A class left with no training item raises `HeadbenchError`.
    """
    check_fractions(split, val_fraction)
    if valid is None:
        valid = [True] * len(scan.items)
    if len(valid) != len(scan.items):
        raise ValueError(f"valid has {len(valid)} entries for {len(scan.items)} scan items")
    usable = [i for i, ok in enumerate(valid) if ok]
    by_role: dict[str | None, dict[int, list[int]]] = {}
    for i in usable:
        item = scan.items[i]
        by_role.setdefault(item.folder_role, {}).setdefault(item.label, []).append(i)
    dropped = len(scan.items) - len(usable)
    note = f"; {dropped} unreadable image(s) left out" if dropped else ""
    if scan.layout == "classes":
        train, val, test = _stratify(by_role.get(None, {}), split, seed)
        pct = "/".join(f"{100 * f:g}" for f in split)
        text = (f"train/val/test = {pct}% of each class of '{scan.root}', stratified, "
                f"seed {seed}")
    elif scan.layout == "train_val":
        train, val = _stratify(by_role.get("train", {}), (1 - val_fraction, val_fraction), seed)
        test = sorted(i for role in ("val", "test") for per_class in by_role.get(role, {}).values()
                      for i in per_class)
        text = (f"test = the given held-out folder ({len(test)} images, reported once); "
                f"val = {100 * val_fraction:g}% of each class of train/ for selection "
                f"(stratified, seed {seed}); train = the rest of train/")
    else:
        train, val, test = (sorted(i for c in by_role.get(r, {}).values() for i in c)
                            for r in ROLES)
        text = "train, val and test = the given train/, val/ and test/ folders"
    splits = Splits(list(scan.classes), train, val, test, text + note, scan.labels)
    _check_splits(splits)
    return splits


def _check_splits(splits: Splits) -> None:
    counts = splits.counts()
    for name, n in counts["train"].items():
        if n == 0:
            raise HeadbenchError(f"class '{name}' has no readable training images; "
                                 "add images or remove the class folder")
    for role in ("val", "test"):
        if not splits.indices(role):
            raise HeadbenchError(f"the {role} split is empty; add images (a class needs at "
                                 "least 3 readable images to appear in every split)")


def log_splits(scan: Scan, splits: Splits) -> None:
    """Log the splits' description and each class's images per split."""
    counts = splits.counts()
    progress.log(splits.description)
    width = max(len(c) for c in scan.classes)
    progress.log(f"  {'class':<{width}}  train    val   test")
    for cls in scan.classes:
        progress.log(f"  {cls:<{width}}  {counts['train'].get(cls, 0):5d}  "
                      f"{counts['val'].get(cls, 0):5d}  {counts['test'].get(cls, 0):5d}")


def warn_thin(scan: Scan, splits: Splits, feature_shape: tuple[int, int, int],
              input_size: int) -> None:
    """Warn where the numbers would quietly mean less than they seem to."""
    counts = splits.counts()
    for role in ("val", "test"):
        missing = [c for c in scan.classes if not counts[role].get(c)]
        if missing:
            progress.warn(f"no {role} images for class(es) {', '.join(missing)}: {role} metrics "
                           "ignore them; add images to those class folders")
    c, h, w = feature_shape
    if h * w == 1:
        progress.warn(f"the feature map is 1×1 at {input_size} px: every "
                       "pooling head sees the same vector; use a larger --input-size")


def find_leakage(scan: Scan, splits: Splits) -> list[dict]:
    """Byte-identical files (same digest) that sit in more than one split.

    Returns one dict per such digest: `{"digest": ..., "roles": {role: [paths]}}`, sorted by
    digest. Duplicates within one split are not leakage and are not listed.
    """
    seen: dict[str, dict[str, list[Path]]] = {}
    for role in ROLES:
        for i in splits.indices(role):
            item = scan.items[i]
            seen.setdefault(item.digest, {}).setdefault(role, []).append(item.path)
    return [{"digest": d, "roles": roles} for d, roles in sorted(seen.items()) if len(roles) > 1]
