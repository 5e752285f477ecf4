"""Image folders, train/val/test splits, robust decoding and the eval transform.

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
(`load_image` raises `BadImage`); `make_splits` takes the resulting validity mask.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from headbench import progress
from headbench.errors import HeadbenchError, unknown

# Lower-case, without the dot: `path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS`.
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"})
ROLES = ("train", "val", "test")
_VAL_NAMES = ("val", "valid", "validation")
_SPLIT_NAMES = ("train", "test") + _VAL_NAMES
_IGNORED_DIRS = {"__macosx"}  # macOS zip residue: resource forks, never images


def is_image_file(path: str | Path) -> bool:
    """Whether the file name has one of `IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


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
    folder is decided (and counted) once, where the link is; loops are skipped."""

    def __init__(self, root: Path, follow: bool):
        self.root, self.follow, self.outside = root.resolve(), follow, 0

    def allowed(self, path: Path, skipped: list[tuple[Path, str]]) -> bool:
        """Whether to use `path` (a file or folder); refused links are listed in `skipped`."""
        if not path.is_symlink():
            return True
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a loop, or a link to nothing
            skipped.append((path, "broken symlink or symlink loop"))
            return False
        if target.is_relative_to(self.root):
            return True
        self.outside += 1
        if not self.follow:
            skipped.append((path, "symlink to outside the data folder (pass --follow-links "
                                  "to use it)"))
        return self.follow


def _class_files(folder: Path, skipped: list[tuple[Path, str]], links: _Links) -> list[Path]:
    """Image files under one class folder (recursively), sorted; others go to `skipped`."""
    found, seen = [], {folder.resolve()}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not _hidden(d)):
            sub = Path(dirpath) / d
            if links.allowed(sub, skipped) and sub.resolve() not in seen:  # no folder twice
                seen.add(sub.resolve())
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _hidden(name):
                continue
            path = Path(dirpath) / name
            if not links.allowed(path, skipped):
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
    links = _Links(root, follow_links)
    _loose_files(root, skipped)
    found: dict[str, dict[str, list[Path]]] = {}  # role -> class -> files
    for role, folder in role_dirs.items():
        if folder != root:
            _loose_files(folder, skipped)
        found[role] = {}
        for class_dir in _subdirs(folder):
            if not links.allowed(class_dir, skipped):
                raise HeadbenchError(f"class folder '{class_dir}' is a symlink that leads out of "
                                     "the data folder (or nowhere); pass --follow-links to use "
                                     "it, or remove it")
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


# --------------------------------------------------------------------------- decoding

class BadImage(Exception):
    """An image file that cannot be decoded; `reason` is a short human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
                  Image.DecompressionBombError)


def load_image(path: str | Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file fully into 8-bit RGB, or raise `BadImage`.

    - EXIF orientation is applied (a portrait photo comes out portrait).
    - Grayscale, palette, CMYK, YCbCr: converted to RGB.
    - Transparency (RGBA, LA, palette with transparency): composited over white, which is what
      image viewers show; dropping alpha instead would expose whatever colour the transparent
      pixels happen to store.
    - 16-bit (I;16*) and 32-bit integer (I, assumed 16-bit range as from 16-bit PNG/TIFF):
      scaled by 1/256, so 65535 becomes 255.
    - Animations: the first frame.
    - `draft=(w, h)`: JPEGs are decoded at a reduced power-of-two scale that stays at least
      w x h; pass `draft_size(...)` so the transform never upsamples.

    Raises `BadImage` for empty, truncated or corrupt files, non-images, images over
    `Image.MAX_IMAGE_PIXELS` (decompression bombs) and unsupported modes.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS Pillow only warns (errors at twice that); refuse it here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _decode(img, draft)
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"too many pixels (over {Image.MAX_IMAGE_PIXELS}; "
                       "possible decompression bomb)") from None
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except _DECODE_ERRORS as e:
        raise BadImage(f"truncated or corrupt ({type(e).__name__}: {e})"[:200]) from None


def _decode(img: Image.Image, draft: tuple[int, int] | None) -> Image.Image:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise BadImage(f"too many pixels ({img.width}x{img.height} over {limit}; "
                       "possible decompression bomb)")
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if draft is not None and img.format == "JPEG":
        img.draft("RGB", draft)
    # Force the full decode so truncation surfaces here. This relies on Pillow's default
    # ImageFile.LOAD_TRUNCATED_IMAGES = False, which headbench never changes.
    img.load()
    img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img, dtype=np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB")
    raise BadImage(f"unsupported image mode {mode}")


# --------------------------------------------------------------------------- transforms

# The augmentation of cached training views: mild, since these are frozen features for a small
# head, not a full training recipe. Changing any value changes `recipe_hash()`, hence every
# augmented view's cache key; bump `version` when the code drawing from it changes.
AUG_RECIPE = {"name": "rrc-flip-jitter", "version": 1,
              "scale": [0.35, 1.0],     # crop area as a fraction of the image (timm-style RRC)
              "ratio": [0.75, 4 / 3],   # crop aspect ratio w/h, drawn log-uniform
              "hflip": 0.5,             # probability of a horizontal flip
              "jitter": 0.1}            # brightness/contrast/saturation factors in [1-j, 1+j]


def recipe_hash(recipe: dict | None = None) -> str:
    """8 hex digits of the sha256 of the canonical JSON of `recipe` (default `AUG_RECIPE`)."""
    text = json.dumps(AUG_RECIPE if recipe is None else recipe, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def aug_seed(digest: str, k: int) -> int:
    """The seed of augmented view `k` of the image with content `digest` under `AUG_RECIPE`:
    a view is a pure function of (image content, recipe, k), whatever the file is called."""
    text = f"aug|{recipe_hash()}|{digest}|{int(k)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class View:
    """Which crop of an image the backbone sees.

    Args:
        size: crop side in pixels; None uses the backbone's input size.
        shift: (dx, dy) offset of the crop window from the centre in pixels of the resized
            image; positive dx moves the window right, so the content moves left.
        margin: resize so that at least `margin` pixels remain on each side of the centred crop,
            keeping the scale fixed across a sweep of shifts up to `margin`.
        aug: index k >= 0 of an augmented training view (`AugTransform` under `AUG_RECIPE`,
            seeded by `aug_seed(digest, k)`); None is the eval view. Excludes shift and margin.

    Example:
        >>> View().key, View(size=288).key, View(shift=(8, -8), margin=32).key
        ('center', 'size288', 'shift8_-8m32')
        >>> View(aug=3).key == f"aug{recipe_hash()}-v3"
        True
    """
    size: int | None = None
    shift: tuple[int, int] = (0, 0)
    margin: int = 0
    aug: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (int(self.size) != self.size or self.size < 1):
            raise ValueError(f"view size must be a positive integer, got {self.size}")
        if self.margin < 0 or int(self.margin) != self.margin:
            raise ValueError(f"view margin must be a non-negative integer, got {self.margin}")
        shift = tuple(int(s) for s in self.shift)
        if len(shift) != 2:
            raise ValueError(f"view shift must be (dx, dy), got {self.shift}")
        object.__setattr__(self, "shift", shift)
        if self.aug is not None:
            if (isinstance(self.aug, bool) or not isinstance(self.aug, (int, np.integer, float))
                    or int(self.aug) != self.aug or self.aug < 0):
                raise ValueError(f"view aug must be a non-negative whole number, got {self.aug!r}")
            if shift != (0, 0) or self.margin:
                raise ValueError("an augmented view (aug) cannot also have a shift or margin")
            object.__setattr__(self, "aug", int(self.aug))

    @property
    def key(self) -> str:
        """A short name for cache keys and file names; an augmented view's names the recipe
        (`recipe_hash()`) and its index, e.g. 'aug1a2b3c4d-v3'."""
        parts = [f"size{self.size}" if self.size else "",
                 f"shift{self.shift[0]}_{self.shift[1]}" if self.shift != (0, 0) else "",
                 f"aug{recipe_hash()}-v{self.aug}" if self.aug is not None else ""]
        base = "_".join(p for p in parts if p) or "center"
        return base + (f"m{self.margin}" if self.margin else "")


_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}


def _crop_size(data_config: dict, view: View) -> int:
    return int(view.size or data_config["input_size"][-1])


def _resize_size(data_config: dict, view: View) -> int:
    """Shorter side after resizing: floor(S / crop_pct), widened to fit the margin."""
    size = _crop_size(data_config, view)
    crop_pct = float(data_config.get("crop_pct") or 0.875)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return max(math.floor(size / crop_pct), size + 2 * view.margin)


def draft_size(data_config: dict, view: View = View()) -> tuple[int, int]:
    """The (w, h) to pass to `load_image(draft=...)`: JPEG reduced decoding never goes below
    the resize target, so the transform only ever downsamples."""
    if view.aug is not None:
        # the smallest crop (area scale[0], the most extreme ratio) must still cover S pixels
        (low, _), (r0, r1) = AUG_RECIPE["scale"], AUG_RECIPE["ratio"]
        side = math.ceil(_crop_size(data_config, view) / math.sqrt(low * min(r0, 1 / r1)))
    else:
        side = _resize_size(data_config, view)
    return side, side  # square: holds whatever the orientation


class EvalTransform:
    """timm's eval protocol (resize shorter side, centre crop, normalise) with a `View` on top.

    Picklable, so it can travel to DataLoader workers.
    """

    def __init__(self, data_config: dict, view: View = View()):
        name = str(data_config.get("interpolation", "bicubic"))
        if name not in _INTERPOLATION:
            raise unknown("interpolation", name, _INTERPOLATION)
        self.view = view
        self.size = _crop_size(data_config, view)
        self.resize = _resize_size(data_config, view)
        self.interpolation = _INTERPOLATION[name]
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image, key: str | int | None = None) -> torch.Tensor:
        """The normalised crop; `key` (a digest or seed, for augmented views) is ignored."""
        img = self._crop(self._resized(img.convert("RGB") if img.mode != "RGB" else img))
        return _normalised(img, self.mean, self.std)

    def _resized(self, img: Image.Image) -> Image.Image:
        # Same arithmetic as torchvision's Resize(int): shorter side to R, longer side truncated.
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_short, new_long = self.resize, int(self.resize * long / short)
        target = (new_short, new_long) if w <= h else (new_long, new_short)
        return img if target == (w, h) else img.resize(target, self.interpolation)

    def _crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        s, (dx, dy) = self.size, self.view.shift
        left, top = int(round((w - s) / 2.0)) + dx, int(round((h - s) / 2.0)) + dy
        if left < 0 or top < 0 or left + s > w or top + s > h:
            raise ValueError(f"shift {self.view.shift} moves the {s}x{s} window outside the "
                             f"resized {w}x{h} image; use a larger View.margin")
        return img.crop((left, top, left + s, top + s))

    def __repr__(self) -> str:
        return (f"EvalTransform(resize={self.resize}, crop={self.size}, "
                f"shift={self.view.shift}, interpolation={self.interpolation.name.lower()})")


def _normalised(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (x.float().div(255) - mean) / std


class AugTransform:
    """A training-time view under `AUG_RECIPE`: random resized crop to S (timm's area and
    log-ratio sampling, 10 tries, then a centre crop), horizontal flip, brightness / contrast /
    saturation jitter, normalised like `EvalTransform`.

    `transform(img, seed)` draws everything from `np.random.default_rng(seed)` alone (crop, then
    flip, then the three jitter factors), so a view is a pure function of the image and the
    seed: on-the-fly augmentation passes seeds of its own. A digest string as `seed` means
    cached augmented view `view.aug` of that image (`aug_seed(digest, view.aug)`), which is what
    feature extraction passes. Picklable for DataLoader workers.

    Args:
        data_config: the backbone's data config (input_size, mean, std, interpolation).
        view_or_size: a `View(size=..., aug=k)`, a crop side S, or None for the config's input
            size; digest seeds use view index k (0 for a size, None, or a View without aug).

    Example:
        >>> cfg = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3,
        ...        "interpolation": "bilinear", "crop_pct": 0.875}
        >>> t = AugTransform(cfg)
        >>> img = Image.new("RGB", (90, 70), "red")
        >>> t(img, 1).shape, bool((t(img, 1) == t(img, 1)).all())
        (torch.Size([3, 64, 64]), True)
    """

    def __init__(self, data_config: dict, view_or_size: View | int | None = None):
        view = (view_or_size if isinstance(view_or_size, View)
                else View(size=view_or_size, aug=0))
        if view.shift != (0, 0) or view.margin:
            raise ValueError(f"an augmented crop has no shift or margin, got view {view.key}")
        name = str(data_config.get("interpolation", "bicubic"))
        if name not in _INTERPOLATION:
            raise unknown("interpolation", name, _INTERPOLATION)
        self.view, self.size = view, _crop_size(data_config, view)
        self.interpolation = _INTERPOLATION[name]
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image, seed: int | str) -> torch.Tensor:
        """(3, S, S) normalised crop drawn with `seed` (an int, or the image's digest)."""
        if isinstance(seed, str):
            seed = aug_seed(seed, self.view.aug or 0)
        rng = np.random.default_rng(seed)
        img = img.convert("RGB") if img.mode != "RGB" else img
        box = _crop_box(img.size, rng)
        img = img.resize((self.size, self.size), self.interpolation, box=box)
        if rng.random() < AUG_RECIPE["hflip"]:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        j = AUG_RECIPE["jitter"]
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(float(rng.uniform(1 - j, 1 + j)))
        return _normalised(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"AugTransform(size={self.size}, recipe={recipe_hash()}, view={self.view.aug})"


def _crop_box(size: tuple[int, int], rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a random crop, as timm's RandomResizedCrop draws it: area
    fraction in AUG_RECIPE['scale'], aspect ratio log-uniform in AUG_RECIPE['ratio'], 10 tries;
    then the centred crop of the whole image narrowed to the nearest allowed ratio. The box
    stays fractional: PIL resamples it exactly."""
    w, h = size
    (s0, s1), (r0, r1) = AUG_RECIPE["scale"], AUG_RECIPE["ratio"]
    for _ in range(10):
        area = w * h * rng.uniform(s0, s1)
        ratio = math.exp(rng.uniform(math.log(r0), math.log(r1)))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= w and ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return left, top, left + cw, top + ch
    cw, ch = min(w, h * r1), min(h, w / r0)
    return (w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2


def make_transform(data_config: dict, view: View = View()) -> Callable[..., torch.Tensor]:
    """`transform(img, digest)`: PIL image -> normalised (3, S, S) float tensor.

    Every transform is called with the image's content digest as second argument; only an
    augmented view (`view.aug` not None: an `AugTransform`, view k drawn with
    `aug_seed(digest, k)`) uses it, and an `EvalTransform` may be called as `transform(img)`.

    Eval views follow timm's eval transform: S = `view.size` or `data_config["input_size"][-1]`;
    the shorter side is resized to floor(S / crop_pct) (at least S + 2 * view.margin) with the
    config's interpolation, then an S x S window is cut at the centre offset by `view.shift`.
    For `View()` this matches `timm.data.create_transform(**data_config)`.

    Example:
        >>> cfg = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
        ...        "std": [0.229, 0.224, 0.225], "interpolation": "bicubic", "crop_pct": 0.875}
        >>> make_transform(cfg)(Image.new("RGB", (320, 240))).shape
        torch.Size([3, 224, 224])
    """
    if view.aug is not None:
        return AugTransform(data_config, view)
    return EvalTransform(data_config, view)
