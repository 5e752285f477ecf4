"""A deterministic synthetic image dataset: shapes on textured backgrounds.

`make_shapes_dataset` writes `root/<shape>/<shape>_<i>.png` (the `classes` layout of
`headbench.data`). Each image holds one shape at a random position anywhere in the image
(translation matters), with a random scale, rotation and colour, over a random texture:

- `noise`: smooth colour blobs (a coarse random grid, upsampled),
- `stripes`: two-colour sinusoidal stripes at a random angle and period,
- `gradient`: a two-colour linear gradient at a random angle,

plus pixel noise. Shapes: circle, square, triangle, star, cross, ring, hexagon, crescent.
The same arguments give the same bytes on every run (numpy Generator + PIL ImageDraw).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from headbench import io, progress
from headbench.errors import HeadbenchError, unknown

DEFAULT_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
MANIFEST = "manifest.json"
_GENERATOR = "headbench.synthetic.make_shapes_dataset"
_VERSION = 2  # bump when the drawing changes, so old folders are regenerated
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges

Point = tuple[float, float]


# --------------------------------------------------------------------------- shapes

def _polygon(cx: float, cy: float, radii: Sequence[float], angle: float) -> list[Point]:
    """Vertices at equal angular steps with the given radii, rotated by `angle`."""
    m = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * k / m),
             cy + r * math.sin(angle + 2 * math.pi * k / m)) for k, r in enumerate(radii)]


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: int) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=255)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=255)


def _hexagon(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_polygon(cx, cy, [r] * 6, angle), fill=255)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_polygon(cx, cy, [r, 0.42 * r] * 5, angle), fill=255)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    w = 0.32 * r  # half-width of each arm
    local = [(w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r),
             (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r), (w, r)]
    c, s = math.cos(angle), math.sin(angle)
    draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in local], fill=255)


def _ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)
    _disc(draw, cx, cy, 0.58 * r, 0)


def _crescent(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    _disc(draw, cx, cy, r, 255)
    _disc(draw, cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle), 0.85 * r, 0)


SHAPES: dict[str, Callable[..., None]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
    "cross": _cross, "ring": _ring, "hexagon": _hexagon, "crescent": _crescent,
}


# --------------------------------------------------------------------------- drawing

def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """An (n, n, 3) float texture in [0, 255]."""
    kind = rng.integers(3)
    if kind == 0:  # smooth colour blobs
        cells = int(rng.integers(3, 10))
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((n, n), Image.Resampling.BICUBIC),
                          dtype=np.float32)
    c1, c2 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 1:  # stripes
        period = rng.uniform(5, 24)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi))
    else:  # gradient
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32)


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _shape_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background's mean brightness."""
    bg = _luma(background.reshape(-1, 3).mean(axis=0))
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if abs(_luma(colour) - bg) >= 60:
            break
    return colour


def _shape_mask(rng: np.random.Generator, shape: str, n: int) -> np.ndarray:
    """An anti-aliased (n, n) coverage mask in [0, 1] of one shape at a random place."""
    r = rng.uniform(0.08, 0.30) * n
    cx, cy = rng.uniform(r, n - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    big = Image.new("L", (n * _SUPERSAMPLE, n * _SUPERSAMPLE), 0)
    k = _SUPERSAMPLE
    SHAPES[shape](ImageDraw.Draw(big), cx * k, cy * k, r * k, angle)
    small = big.resize((n, n), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def draw_shape_image(shape: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape`; all randomness comes from `rng`."""
    background = _background(rng, image_size)
    colour = _shape_colour(rng, background)
    mask = _shape_mask(rng, shape, image_size)[..., None]
    image = background * (1 - mask) + colour * mask
    image += rng.normal(0, rng.uniform(2, 14), size=image.shape)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- dataset

def _check_args(classes: Sequence[str], per_class: int, image_size: int) -> None:
    for name in classes:
        if name not in SHAPES:
            raise unknown("shape", name, SHAPES)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise HeadbenchError(f"classes {tuple(classes)} must be at least two different shapes")
    if per_class < 1:
        raise HeadbenchError(f"per_class must be at least 1, got {per_class}")
    if image_size < 16:
        raise HeadbenchError(f"image_size must be at least 16 pixels, got {image_size}")


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _complete(root: Path, params: dict) -> bool:
    """The folder holds exactly this dataset: same parameters and every file present."""
    if _read_manifest(root) != params:
        return False
    return all((root / c / f"{c}_{i}.png").is_file()
               for c in params["classes"] for i in range(params["per_class"]))


def _write_images(folder: Path, params: dict) -> None:
    classes, per_class = params["classes"], params["per_class"]
    with progress.progress("drawing shapes", len(classes) * per_class, unit="img") as bar:
        for name in classes:
            (folder / name).mkdir()
            shape_id = list(SHAPES).index(name)  # seeds by shape, not position in `classes`
            for i in range(per_class):
                rng = np.random.default_rng([params["seed"], shape_id, i])
                image = draw_shape_image(name, params["image_size"], rng)
                image.save(folder / name / f"{name}_{i}.png", format="PNG", compress_level=1)
                bar.advance()
    io.atomic_write_json(folder / MANIFEST, params)


def _move_into_place(tmp: Path, root: Path) -> None:
    """Swap the finished folder in; any old synthetic folder is removed afterwards."""
    old = None
    if root.exists():
        old = root.with_name(f"{tmp.name}.old")
        os.rename(root, old)
    os.rename(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_shapes_dataset(root: str | Path, classes: Sequence[str] = DEFAULT_CLASSES,
                        per_class: int = 80, image_size: int = 128, seed: int = 0) -> Path:
    """Write (or reuse) the synthetic shapes dataset at `root`; returns `root`.

    Images go to `root/<class>/<class>_<i>.png` with a `manifest.json` of the arguments. When
    the manifest matches and every file is present, nothing is written. Otherwise the dataset
    is drawn into a temporary sibling folder and renamed onto `root`, so an interrupted run
    never leaves a half-written dataset. An existing non-empty `root` that is not a synthetic
    dataset is refused, never deleted.

    Example:
        >>> root = make_shapes_dataset(tmp / "shapes", per_class=4, image_size=64)  # doctest: +SKIP
        >>> sorted(p.name for p in root.iterdir())[:2]  # doctest: +SKIP
        ['circle', 'cross']
    """
    root = Path(root)
    classes = list(classes)
    _check_args(classes, per_class, image_size)
    params = {"generator": _GENERATOR, "version": _VERSION, "classes": classes,
              "per_class": int(per_class), "image_size": int(image_size), "seed": int(seed)}
    if _complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and (
            _read_manifest(root) or {}).get("generator") != _GENERATOR)):
        raise HeadbenchError(f"'{root}' exists and is not a headbench synthetic dataset; "
                             "pass a new or empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_images(tmp, params)
        if _complete(root, params):  # another process finished first; keep its copy
            shutil.rmtree(tmp)
        else:
            _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
