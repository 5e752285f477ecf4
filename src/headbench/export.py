"""Saving, loading and running a trained headbench model.

A model folder holds `model.safetensors` (the head's weights) and `model.json` (backbone name,
weights source and checksum, head spec, class names, data config). The backbone is re-created
from its source (`embedded`, `hub`, or the seeded `none` init) and verified against the
checksum; a backbone loaded from a local file is copied once per run to `backbone.safetensors`
and the model folder points at it, so the run stays usable if the original file moves.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file

from . import io as _io
from .backbones import Backbone, create_backbone
from .data import IMAGE_EXTENSIONS, BadImage, View, draft_size, load_image, make_transform
from .errors import HeadbenchError
from .heads import Head, HeadSpec, create_head
from .model import HeadbenchModel, default_device

FORMAT = "headbench-model/1"
RECREATABLE = ("embedded", "hub", "none")  # "none" is a seeded init
REQUIRED = ("backbone", "head", "in_channels", "map_size", "num_classes", "class_names",
            "data_config")


def save_head_weights(state_dict: dict, path: Path) -> Path:
    """A head's weights as safetensors (contiguous CPU tensors), written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return _io.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))


def save_backbone_if_needed(backbone: Backbone, run_dir: Path) -> Path | None:
    """Save the backbone's weights unless they can be re-created from a named source."""
    if backbone.weights in RECREATABLE:
        return None
    path = run_dir / "backbone.safetensors"
    save_head_weights(backbone.model.state_dict(), path)
    return path


def save_model(model_dir: Path, backbone: Backbone, head: Head, class_names: Sequence[str],
               backbone_file: Path | None = None, extra: dict | None = None) -> Path:
    """Write `model.safetensors` + `model.json` into `model_dir`; returns the folder."""
    model_dir = Path(model_dir)
    save_head_weights(head.state_dict(), model_dir / "model.safetensors")
    meta = dict(
        format=FORMAT,
        backbone=dict(name=backbone.name, timm_name=backbone.timm_name, weights=backbone.weights,
                      weights_checksum=backbone.weights_checksum,
                      file=os.path.relpath(backbone_file, model_dir) if backbone_file else None),
        head=head.spec.to_dict(), in_channels=head.in_channels, map_size=list(head.map_size),
        num_classes=head.num_classes, class_names=list(class_names),
        data_config=backbone.data_config, **(extra or {}))
    _io.atomic_write_json(model_dir / "model.json", meta)
    return model_dir


def model_size_bytes(model_dir: Path, backbone_file: Path | None = None) -> int:
    """Bytes on disk of a saved model: head weights, plus the backbone file when it has one."""
    size = (Path(model_dir) / "model.safetensors").stat().st_size
    return size + (backbone_file.stat().st_size if backbone_file else 0)


def read_model_json(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    if not model_dir.is_dir():
        raise HeadbenchError(f"model folder '{model_dir}' does not exist; pass a folder such as "
                             "runs/<run>/heads/gap")
    if not meta_path.is_file():
        raise HeadbenchError(f"'{model_dir}' is not a headbench model folder (no model.json); "
                             "pass a folder such as runs/<run>/heads/gap")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise HeadbenchError(f"cannot read '{meta_path}' ({e}); re-save the model with compare")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadbenchError(f"'{meta_path}' is not a {FORMAT} file; re-save the model with compare")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise HeadbenchError(f"'{meta_path}' lacks {', '.join(missing)}; re-save the model with compare")
    return meta


def load_model(model_dir: str | Path, device: torch.device | str | None = None) -> HeadbenchModel:
    """Rebuild the full model (backbone + head) saved by `save_model`, ready for inference."""
    model_dir = Path(model_dir)
    meta = read_model_json(model_dir)
    bmeta = meta["backbone"]
    weights = str((model_dir / bmeta["file"]).resolve()) if bmeta.get("file") else bmeta["weights"]
    backbone = create_backbone(bmeta["name"], weights=weights,
                               input_size=meta["data_config"]["input_size"][-1])
    if backbone.weights_checksum != bmeta["weights_checksum"]:
        raise HeadbenchError(f"backbone weights for '{model_dir}' have checksum "
                             f"{backbone.weights_checksum}, expected {bmeta['weights_checksum']}; "
                             "the weights source changed since the model was trained")
    backbone.data_config = meta["data_config"]
    head = create_head(HeadSpec.from_dict(meta["head"]), meta["in_channels"], meta["num_classes"],
                       tuple(meta["map_size"]))
    try:
        head.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    except (OSError, RuntimeError, KeyError) as e:  # missing, unreadable or other weights
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HeadbenchError(f"cannot load the head weights in '{model_dir}/model.safetensors' "
                             f"({reason}); re-save the model with compare")
    model = HeadbenchModel(backbone, head, class_names=meta["class_names"])
    return model.to(device or default_device()).eval()


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*")
                          if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise HeadbenchError(f"no such file or folder: '{p}'")
    return out


def predict(model: HeadbenchModel, paths: Iterable[str | Path], topk: int = 5,
            input_size: int | None = None, batch_size: int = 16) -> list[dict]:
    """Top-k classes with probabilities for each image; unreadable images get an `error`."""
    if topk < 1:
        raise HeadbenchError(f"--topk must be at least 1 (got {topk})")
    paths = list(paths)
    files = expand_paths(paths)
    if not files:
        raise HeadbenchError(f"no image files found in {', '.join(map(str, paths))}")
    view = View(size=input_size)
    transform = make_transform(model.data_config, view)
    draft = draft_size(model.data_config, view)
    device = next(model.head.parameters()).device
    names = model.class_names or [str(i) for i in range(model.head.num_classes)]
    k = min(topk, len(names))
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        batch, tensors = [], []
        for f in files[start:start + batch_size]:
            try:
                tensors.append(transform(load_image(f, draft=draft)))
                batch.append(dict(path=str(f)))
            except BadImage as e:
                results.append(dict(path=str(f), error=str(e)))
        if not tensors:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(tensors).to(device)).float().softmax(dim=1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for row, ps, ids in zip(batch, top_p.tolist(), top_i.tolist()):
            row["top"] = [dict(label=names[i], probability=p) for p, i in zip(ps, ids)]
            results.append(row)
    order = {str(f): n for n, f in enumerate(files)}
    return sorted(results, key=lambda r: order[r["path"]])
