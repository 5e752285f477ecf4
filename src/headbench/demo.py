"""`headbench demo`: the whole job, offline, on a generated dataset with the embedded backbone."""
from __future__ import annotations

from pathlib import Path

from .compare import compare
from .features import default_cache_dir
from .run import Run
from .synthetic import SHAPES, make_shapes_dataset

# Sized so the demo tells heads apart (test accuracies spread over several points) and finishes
# in about three minutes on a 2-core CPU; a quarter of the images are held out for test.
DEMO_DATA = dict(classes=tuple(SHAPES), per_class=50, image_size=128, seed=0)
DEMO_SPLIT = (0.6, 0.15, 0.25)
DEMO_ANALYSES = dict(shifts=[0, 16, 32], sizes=[160, 224, 288], shots=[2, 10, "all"], cam=2)


def demo(out: str | Path = ".", cache_dir: str | Path | None = None, seeds: int = 3,
         analyses: bool = True, **overrides) -> Run:
    """Generate the shapes dataset (once) and run `compare` on it with every default head."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    data = make_shapes_dataset(cache / "datasets" / "shapes", **DEMO_DATA)
    kwargs = dict(backbone="efficientnet_lite0", weights="embedded", seeds=seeds, out=out,
                  cache_dir=cache_dir, split=DEMO_SPLIT)
    # without analyses: not even the ones compare runs by default (small data, CAM)
    kwargs.update(DEMO_ANALYSES if analyses else dict(shots="none", cam=0))
    kwargs.update(overrides)
    return compare(data, **kwargs)
