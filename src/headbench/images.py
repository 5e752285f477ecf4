"""Images as a backbone sees them: one decoder and one dataset for every stage.

`load_image` decodes any file into 8-bit RGB (EXIF orientation, mode conversion, transparency,
16-bit, decompression bombs refused) or raises `BadImage`; `make_transform` gives the eval
transform of a `View` (timm's resize + centre crop + normalise, with a shift, margin or size)
or an augmented view (`AugTransform` under `AUG_RECIPE`); `ImageDataset` combines them and is
what feature extraction, fine-tuning, ONNX verification and predict all read images through.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import Dataset

from headbench.errors import HeadbenchError, unknown

MIN_SIZE = 32  # smallest input size in pixels: smaller maps vanish in a 32-stride backbone
# largest input size (and translation) in pixels: 4× the largest size timm's ImageNet backbones
# are trained at (256-600 px); one 2048² image is 48 MB as float32 before the backbone's maps
MAX_SIZE = 2048
# Lower-case, without the dot: `path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS`.
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"})


def is_image_file(path: str | Path) -> bool:
    """Whether the file name has one of `IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


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


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; one line for a
    path that does not exist or names no image."""
    paths, out = list(paths), []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            out.append(p)
        else:
            raise HeadbenchError(f"no such file or folder: '{p}'", param="images")
    if not out:
        raise HeadbenchError(f"no image files found in {', '.join(map(str, paths))}",
                             param="images")
    return out


# --------------------------------------------------------------------------- the dataset

class ImageDataset(Dataset):
    """Image files decoded and transformed as the backbone sees them under `view`.

    Item `i` is `(tensor (3, S, S), i, "")`, or `(empty tensor, i, reason)` for a file that
    cannot be decoded, so one corrupt file never stops a DataLoader worker (`collate` sorts
    them out). An augmented view draws from `keys[i]`: a content digest (cached view `view.aug`
    of that image) or an int seed (on-the-fly augmentation: a new dataset every epoch).
    Picklable, for DataLoader workers.

    Example:
        >>> cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
        >>> ImageDataset(["missing.png"], cfg)[0][2]
        'file not found'
    """

    def __init__(self, paths: Sequence[str | Path], data_config: dict, view: View = View(),
                 keys: Sequence[str | int] | None = None, draft: bool = True):
        if view.aug is not None and keys is None:
            raise ValueError("an augmented view needs keys (content digests or seeds)")
        self.paths, self.keys = list(paths), keys
        self.transform = make_transform(data_config, view)
        # JPEGs decode at a reduced scale that still covers the crop (`draft_size`); draft=False
        # decodes every pixel, as a plain PIL pipeline would (the benchmarks' baseline)
        self.draft = draft_size(data_config, view) if draft else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            image = load_image(self.paths[i], draft=self.draft)
            key = self.keys[i] if self.keys is not None else None
            return self.transform(image, key), i, ""
        except BadImage as e:
            return torch.empty(0), i, str(e) or type(e).__name__
        except OSError as e:  # unreadable file, PIL decoder error
            return torch.empty(0), i, f"{type(e).__name__}: {e}"


def collate(items: list[tuple[torch.Tensor, int, str]]
            ) -> tuple[torch.Tensor | None, list[int], list[int], list[str]]:
    """A batch of `ImageDataset` items as (stacked good images, their indices, failed indices,
    failure reasons)."""
    good = [(x, i) for x, i, reason in items if not reason]
    bad = [(i, reason) for _, i, reason in items if reason]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], [i for i, _ in bad], [r for _, r in bad]


def default_workers() -> int:
    """Decoding processes for a DataLoader: min(4, cores), none on a single core."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 1 else min(4, cores)
