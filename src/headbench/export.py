"""Saving, loading and running a trained headbench model.

A model folder holds `model.safetensors` (the head's weights) and `model.json` (backbone name,
weights source and checksum, head spec, class names, data config). The backbone is re-created
from its source (`embedded`, `hub`, or the seeded `none` init) and verified against the
checksum; a backbone loaded from a local file is copied once per run to `backbone.safetensors`
and the model folder points at it, so the run stays usable if the original file moves.

ONNX export and onnxruntime inference of a model folder: `onnx.py`.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file

from . import io as _io
from . import progress as _progress
from .backbones import Backbone, create_backbone
from .errors import HeadbenchError
from .heads import MAX_CLASSES, MAX_WIDTH, Head, HeadSpec, create_head
from .images import MAX_SIZE, MIN_SIZE, ImageDataset, View, image_files, make_transform
from .model import HeadbenchModel
from .runtime import resolve_device

FORMAT = "headbench-model/1"
RECREATABLE = ("embedded", "hub", "none")  # "none" is a seeded init


def save_head_weights(state_dict: dict, path: Path) -> Path:
    """A head's weights as safetensors (contiguous CPU tensors), written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return _io.atomic_write_safetensors(path, tensors, {"format": FORMAT})


def save_backbone_if_needed(backbone: Backbone, run_dir: Path,
                            several: bool = False) -> Path | None:
    """Save the backbone's weights unless they can be re-created from a named source: in the run
    folder, or beside its heads (`heads/<backbone>/`) in a run of several backbones."""
    if backbone.weights in RECREATABLE:
        return None
    folder = run_dir / "heads" / backbone.name if several else run_dir
    path = folder / "backbone.safetensors"
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
    """model.json of a model folder, checked field by field (it may come from anyone)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    meta = _io.read_json(model_dir, "model.json", "model",
                         "pass a model folder such as runs/<run>/heads/gap")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadbenchError(f"'{meta_path}' is not a {FORMAT} file; re-save the model with "
                             "compare")
    for field in invalid_fields(meta):
        raise HeadbenchError(f"'{meta_path}' field '{field}' is invalid "
                             f"({_field(meta, field)!r:.60}); re-save the model with compare")
    if len(meta["class_names"]) != meta["num_classes"]:
        raise HeadbenchError(f"'{meta_path}' field 'class_names' has {len(meta['class_names'])} "
                             f"names for num_classes {meta['num_classes']}; re-save the model")
    return meta


_MISSING = object()


def _field(meta: dict, dotted: str):
    value = meta
    for part in dotted.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v, n: int, check) -> bool:
    return isinstance(v, list) and len(v) == n and all(check(x) for x in v)


def _str_or_none(v) -> bool:
    return v is None or isinstance(v, str)


_MODEL_FIELDS = {
    "backbone": lambda v: isinstance(v, dict),
    "backbone.name": lambda v: isinstance(v, str) and bool(v),
    "backbone.timm_name": lambda v: isinstance(v, str) and bool(v),  # what is re-created
    "backbone.weights": lambda v: isinstance(v, str) and bool(v),
    "backbone.weights_checksum": _str_or_none,
    "backbone.file": lambda v: v is _MISSING or _str_or_none(v),
    "head": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    "in_channels": lambda v: is_int(v, 1) and v <= MAX_WIDTH,
    "map_size": lambda v: _numbers(v, 2, lambda x: is_int(x, 1)),
    "num_classes": lambda v: is_int(v, 2) and v <= MAX_CLASSES,
    "class_names": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    "data_config": lambda v: isinstance(v, dict),
    "data_config.input_size": lambda v: _numbers(v, 3, lambda x: is_int(x, 1) and x <= MAX_SIZE),
    "data_config.mean": lambda v: _numbers(v, 3, _is_num),
    "data_config.std": lambda v: _numbers(v, 3, lambda x: _is_num(x) and x > 0),
    "data_config.interpolation": lambda v: isinstance(v, str),
    "data_config.crop_pct": lambda v: _is_num(v) and 0 < v <= 1,
}


def invalid_fields(meta: dict, prefixes: Sequence[str] = ("",)) -> list[str]:
    """The fields of a model description (model.json, or the part starting with one of
    `prefixes`) whose value fails its check."""
    return [f for f, check in _MODEL_FIELDS.items()
            if f.startswith(tuple(prefixes)) and not check(_field(meta, f))]


def run_root(model_dir: Path) -> Path:
    """The folder a model may take files from: its run folder (runs/<run>/heads/<head>, or
    runs/<run>/heads/<backbone>/<head> in a run of several backbones), or the model folder
    itself when it stands alone."""
    model_dir = model_dir.resolve()
    if model_dir.parent.name == "heads":
        return model_dir.parent.parent
    run = model_dir.parent.parent.parent  # heads/<backbone>/<head>: only inside a run folder
    if model_dir.parent.parent.name == "heads" and (run / "results.json").is_file():
        return run
    return model_dir


def file_inside_run(model_dir: Path, name: str, what: str) -> Path:
    """The absolute path of file `name` (relative to the model folder), refused unless it
    lies inside the run folder (no absolute paths, no `..` or links leading out) and is a
    regular file (not a folder or a pipe that would block reading)."""
    root, path = run_root(model_dir), model_dir / name
    try:
        real = path.resolve()
        inside = not Path(name).is_absolute() and real.is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        real, inside = None, False
    if not inside:
        raise HeadbenchError(f"{what} points outside its run folder ({name!r}); a model folder "
                             f"may only use files inside '{root}'")
    if not real.is_file():
        raise HeadbenchError(f"'{path}' is missing or not a file; copy the whole run folder")
    return real


def load_head_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of head weights; a missing, truncated or corrupt file is one line."""
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HeadbenchError(f"cannot read weights '{path}' ({reason}); re-save the model with "
                             "compare") from None


@contextlib.contextmanager
def _about(model_dir: Path, field: str | None = None) -> Iterator[None]:
    """Errors while rebuilding from model.json: one line about that file, naming `field`, and
    without a `param` (the CLI would show an option's flag that `predict` does not have)."""
    where = f"'{model_dir / 'model.json'}'" + (f" field '{field}'" if field else "")
    try:
        yield
    except (HeadbenchError, TypeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HeadbenchError(f"{where}: {reason}") from None


def load_model(model_dir: str | Path, device: torch.device | str | None = None) -> HeadbenchModel:
    """Rebuild the full model (backbone + head) saved by `save_model`, ready for inference.

    model.json may come from anyone: every field is checked, the weights files must lie inside
    the run folder, and the head must fit the backbone's feature map before it is built.
    """
    model_dir = Path(model_dir)
    meta_path, meta = model_dir / "model.json", read_model_json(model_dir)
    bmeta = meta["backbone"]
    if bmeta["weights"] not in RECREATABLE and not bmeta.get("file"):
        raise HeadbenchError(f"'{meta_path}' field 'backbone.weights' names a file but "
                             "'backbone.file' is missing; re-save the model with compare")
    weights = bmeta["weights"]
    if bmeta.get("file"):
        weights = str(file_inside_run(model_dir, bmeta["file"],
                                       f"'{meta_path}' field 'backbone.file'"))
    head_file = file_inside_run(model_dir, "model.safetensors",
                                 f"'{model_dir / 'model.safetensors'}'")
    with _about(model_dir):  # an unknown name, or weights that cannot be had
        backbone = create_backbone(bmeta["name"], weights=weights,
                                   input_size=meta["data_config"]["input_size"][-1],
                                   timm_name=bmeta["timm_name"])
    if backbone.weights_checksum != bmeta["weights_checksum"]:
        raise HeadbenchError(f"backbone weights for '{model_dir}' have checksum "
                             f"{backbone.weights_checksum}, expected {bmeta['weights_checksum']}; "
                             "the weights source changed since the model was trained")
    backbone.data_config = meta["data_config"]
    with _about(model_dir, "data_config"):
        make_transform(backbone.data_config)  # an unknown interpolation fails here, not later
        c, h, w = backbone.feature_shape()
    if (meta["in_channels"], tuple(meta["map_size"])) != (c, (h, w)):
        raise HeadbenchError(f"'{meta_path}' fields 'in_channels', 'map_size' say "
                             f"{meta['in_channels']}×{meta['map_size'][0]}×{meta['map_size'][1]} "
                             f"but backbone '{bmeta['name']}' gives {c}×{h}×{w}; re-save the "
                             "model with compare")
    with _about(model_dir, "head"):
        head = create_head(HeadSpec.from_dict(meta["head"]), c, meta["num_classes"], (h, w),
                           backbone=backbone)
    state = load_head_weights(head_file)
    try:
        head.load_state_dict(state)
    except (RuntimeError, KeyError) as e:  # other weights than the spec describes
        reason = str(e).strip().splitlines()[0]
        raise HeadbenchError(f"the head weights in '{model_dir}/model.safetensors' do not fit "
                             f"its model.json ({reason}); re-save the model with compare")
    model = HeadbenchModel(backbone, head, class_names=meta["class_names"])
    return model.to(resolve_device(device)).eval()


def check_predict_args(topk, input_size) -> None:
    if not is_int(topk, 1):
        raise HeadbenchError(f"topk must be a whole number ≥ 1, got {topk!r}", param="topk")
    if input_size is not None and not (is_int(input_size, MIN_SIZE) and input_size <= MAX_SIZE):
        raise HeadbenchError(f"input_size must be a whole number from {MIN_SIZE} to {MAX_SIZE}, "
                             f"got {input_size!r}", param="input_size")


def image_tensors(files: Sequence[Path], data_config: dict, size: int | None = None
                  ) -> tuple[list[dict], list[torch.Tensor]]:
    """The one preprocessing of predict and export (`images.ImageDataset` at crop side `size`).
    Returns a row per file (`path`, plus `error` for an unreadable one) and a (3, S, S) tensor
    per readable file, in order."""
    dataset = ImageDataset(files, data_config, View(size=size))
    rows, tensors = [], []
    for x, i, reason in map(dataset.__getitem__, range(len(dataset))):
        rows.append(dict(path=str(files[i]), error=reason) if reason else dict(path=str(files[i])))
        if not reason:
            tensors.append(x)
    return rows, tensors


def predict_rows(files: list[Path], data_config: dict, names: Sequence[str], topk: int,
                  input_size: int | None, batch_size: int, logits_of) -> list[dict]:
    """Top-k rows for `files`; `logits_of` maps a (N, 3, S, S) batch to (N, K) logits."""
    k = min(topk, len(names))
    results: list[dict] = []
    shown = len(files) if len(files) > batch_size else None  # one batch: no bar
    with _progress.progress("predicting", total=shown, unit="img") as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            rows, tensors = image_tensors(batch, data_config, input_size)
            results += [r for r in rows if "error" in r]
            bar.advance(len(batch))
            if not tensors:
                continue
            probs = torch.as_tensor(logits_of(torch.stack(tensors))).float().softmax(dim=1)
            top_p, top_i = probs.topk(k, dim=1)
            for row, ps, ids in zip([r for r in rows if "error" not in r], top_p.tolist(),
                                    top_i.tolist()):
                row["top"] = [dict(label=names[i], probability=p) for p, i in zip(ps, ids)]
                results.append(row)
    order = {str(f): n for n, f in enumerate(files)}
    return sorted(results, key=lambda r: order[r["path"]])


def predict(model: HeadbenchModel, paths: Iterable[str | Path], topk: int = 5,
            input_size: int | None = None, batch_size: int = 16) -> list[dict]:
    """Top-k classes with probabilities for each image; unreadable images get an `error`."""
    check_predict_args(topk, input_size)
    files = image_files(paths)
    device = next(model.head.parameters()).device
    names = model.class_names or [str(i) for i in range(model.head.num_classes)]

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).float().cpu()
    return predict_rows(files, model.data_config, names, topk, input_size, batch_size,
                         logits_of)
