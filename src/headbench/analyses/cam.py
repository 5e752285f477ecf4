"""Class activation maps (``cam``): where in the image a head's decision comes from.

Exact CAMs (Zhou et al. 2016) for heads whose logits are linear in the average-pooled features
(`Head.exact_cam`: gap, dense_map without hidden layers), Grad-CAM (Selvaraju et al. 2017) on
the feature map for the others; PNG overlays of the most confidently right and wrong test
images of each head's best seed, shown in each head's section of the report (`cam_gallery`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import io as _io
from .. import progress as _progress
from .. import train as _train
from ..config import analysis_option
from ..errors import HeadbenchError
from ..figures import Gallery
from ..heads import Head
from ..tokens import PatchGrid
from ..images import View, load_image, make_transform
from ..run import Run
from .context import RunContext
from .registry import register_analysis

CAM_ALPHA = 0.45
CAM_COLORMAP = "jet"


def exact_cam(head: Head, feature_map: torch.Tensor) -> torch.Tensor:
    """Class activation maps of a head whose logits are linear in the pooled features.

    CAM_k(h, w) = W_k · f(:, h, w) + b_k (Zhou et al. 2016, with the bias spread over positions),
    so the mean of CAM_k over positions is exactly the logit of class k.

    Args:
        head: a Head with `exact_cam` (gap, dense_map without hidden layers).
        feature_map: (C, H, W) or (1, C, H, W) backbone features.

    Returns:
        (K, H, W) float tensor.

    Example:
        >>> from headbench.heads import create_head
        >>> head = create_head("gap", 8, 3, (4, 4)).eval()
        >>> f = torch.randn(8, 4, 4)
        >>> torch.allclose(exact_cam(head, f).mean((1, 2)), head(f[None])[0], atol=1e-5)
        True
    """
    f = _chw(feature_map)
    W, b = head.classifier_weights()
    return torch.einsum("kc,chw->khw", W.float().cpu(), f) + b.float().cpu()[:, None, None]


def grad_cam(head: Head, feature_map: torch.Tensor, class_index: int) -> torch.Tensor:
    """Grad-CAM on the feature map: ReLU(Σ_c α_c f_c), α_c = spatial mean of ∂logit/∂f_c.

    Works for any head (fixed-size heads need the map size they were built for).

    Args:
        head: any head mapping (N, C, H, W) to (N, K).
        feature_map: (C, H, W) or (1, C, H, W) backbone features.
        class_index: the class whose logit is explained (usually the predicted one).

    Returns:
        (H, W) non-negative float tensor.
    """
    f = _chw(feature_map).clone().requires_grad_(True)
    param = next(head.parameters(), None)
    was_training = head.training
    head.eval()
    try:
        with torch.enable_grad():
            x = f[None].to(param.device if param is not None else "cpu")
            logit = head(x)[0, class_index]
            (grad,) = torch.autograd.grad(logit, f)
    finally:
        head.train(was_training)
    alpha = grad.mean(dim=(1, 2))
    return F.relu(torch.einsum("c,chw->hw", alpha, f.detach()))


def _chw(feature_map: torch.Tensor | np.ndarray) -> torch.Tensor:
    f = torch.as_tensor(feature_map).float().cpu()  # numpy float16 rows from the cache too
    if f.dim() == 4 and f.shape[0] == 1:
        f = f[0]
    if f.dim() != 3:
        raise ValueError(f"a feature map must be (C, H, W), got shape {tuple(f.shape)}")
    return f


def overlay_cam(image: np.ndarray, cam: torch.Tensor, alpha: float = CAM_ALPHA,
                colormap: str = CAM_COLORMAP) -> Any:
    """`cam` upsampled to the image, min-max scaled, coloured and blended over it.

    Args:
        image: (S, S, 3) uint8 RGB, the crop the backbone saw.
        cam: (H, W) class activation map.
        alpha: weight of the colour map in the blend.

    Returns:
        PIL RGB image of the image's size.
    """
    import matplotlib
    from PIL import Image
    h, w = image.shape[:2]
    up = F.interpolate(cam.float()[None, None], size=(h, w), mode="bilinear",
                       align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    scaled = ((up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)).numpy()
    heat = matplotlib.colormaps[colormap](scaled)[..., :3]
    blend = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * heat
    return Image.fromarray(np.clip(np.round(blend * 255), 0, 255).astype(np.uint8))


def seen_image(path: Path, data_config: dict) -> np.ndarray:
    """The image as the backbone saw it at the base view: resized, center-cropped, as
    (S, S, 3) uint8 RGB."""
    x = make_transform(data_config, View())(load_image(path))
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(data_config["std"], dtype=torch.float32)[:, None, None]
    rgb = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(rgb * 255).astype(np.uint8)


def safe_name(name: str) -> str:
    """A class name usable in a file name: runs of other characters become '_'.

    Example:
        >>> safe_name("golden retriever/dog")
        'golden_retriever_dog'
    """
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("._") or "class"


def cam_analysis(ctx: RunContext, per_head: int) -> dict:
    """CAM overlays of `per_head` correct and `per_head` wrong test images per head.

    Uses each head's best seed (chosen on val). The images are the most confident correct and
    the most confident wrong predictions (fewer when there are not enough); files are written
    to `analyses/cam/<head>/{ok|wrong}_<test index>_true-<cls>_pred-<cls>.png` in the run
    folder. Returns the `analyses["cam"]` section: `per_head`, `colormap`, `alpha` and per head
    {method, seed, files (relative to the run folder)}.
    """
    if ctx.run.run_dir is None:
        raise ValueError("cam_analysis writes overlays into the run folder: set run.run_dir")
    if per_head < 1:
        raise HeadbenchError(f"cam must be at least 1 image per head (got {per_head})", param="cam")
    X = ctx.view_features("test")
    heads, skipped = {}, {}
    with _progress.progress("class activation maps", total=len(ctx.heads), unit="head") as bar:
        for h in ctx.heads:
            if _has_map(ctx.make_head(h.head)):
                heads[h.head] = _cams_of_head(ctx, h.head, h.best_seed, X, per_head)
            else:
                skipped[h.head] = "pools tokens, no patch grid to map"
            bar.advance()
    return {"per_head": int(per_head), "colormap": CAM_COLORMAP, "alpha": CAM_ALPHA,
            "heads": heads, **({"skipped": skipped} if skipped else {})}


def _has_map(head: Head) -> bool:
    """Whether the head sees a map: a CNN's, or a token backbone's patch grid (token, avg and
    map pool the tokens themselves)."""
    return head.tokens is None or isinstance(head[0], PatchGrid)


def _cams_of_head(ctx: RunContext, label: str, seed: int, X: Any, per_head: int) -> dict:
    head = ctx.make_head(label, seed).cpu()
    y = ctx.labels("test")
    logits = _train.predict_logits(head, X, device="cpu")
    pred, conf = logits.argmax(1), torch.softmax(torch.from_numpy(logits), 1).amax(1).numpy()
    ok = pred == y
    chosen = [("ok", i) for i in _most_confident(np.flatnonzero(ok), conf, per_head)]
    chosen += [("wrong", i) for i in _most_confident(np.flatnonzero(~ok), conf, per_head)]
    folder = Path(ctx.run.run_dir) / "analyses" / "cam" / label
    for old in folder.glob("*.png") if folder.is_dir() else ():
        if old.name.startswith(("ok_", "wrong_")):
            old.unlink()  # overlays of an earlier run of this analysis
    files = []
    # a token backbone's head: the maps are of its patch grid, explained by the rest of it
    grid, rest = (head[0], nn.Sequential(*list(head)[1:])) if head.tokens else (None, head)
    for kind, i in chosen:
        f = torch.from_numpy(np.asarray(X[i:i + 1], dtype=np.float32))[0]
        if grid is not None:
            f = grid(f[None])[0]
        cam = exact_cam(head, f)[pred[i]] if head.exact_cam else grad_cam(rest, f, int(pred[i]))
        png = overlay_cam(seen_image(ctx.run.dataset.path("test", i),
                                     ctx.backbone.data_config), cam)
        name = (f"{kind}_{i}_true-{safe_name(ctx.classes[y[i]])}"
                f"_pred-{safe_name(ctx.classes[pred[i]])}.png")
        _io.atomic_write_bytes(folder / name, _png_bytes(png))
        files.append(f"analyses/cam/{label}/{name}")
    return {"method": "exact CAM" if head.exact_cam else "Grad-CAM", "seed": int(seed),
            "files": files}


def _most_confident(indices: np.ndarray, conf: np.ndarray, n: int) -> list[int]:
    return sorted(indices.tolist(), key=lambda i: (-conf[i], i))[:n]


def _png_bytes(image: Any) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def cam_gallery(run: Run, label: str, section: dict) -> Gallery | None:
    """The overlays of head `label`, shown in its section of the report."""
    heads = section.get("heads")
    entry = heads.get(label) if isinstance(heads, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
        return None
    # File names read ok_3_true-ants_pred-ants.png: right or wrong, index, classes.
    images = [(str(rel), Path(str(rel)).stem.replace("_true-", " · true ")
               .replace("_pred-", " · pred ")) for rel in entry["files"]]
    return Gallery(f"Class activation maps ({entry.get('method', '?')})", images, alt="CAM")


register_analysis("cam", cam_analysis, "class activation maps", option=analysis_option("cam"),
                  head_report=cam_gallery)


__all__ = ["CAM_ALPHA", "CAM_COLORMAP", "cam_analysis", "cam_gallery", "exact_cam", "grad_cam",
           "overlay_cam", "seen_image", "safe_name"]
