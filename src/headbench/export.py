"""Saving, loading and running a trained headbench model.

A model folder holds `model.safetensors` (the head's weights) and `model.json` (backbone name,
weights source and checksum, head spec, class names, data config). The backbone is re-created
from its source (`embedded`, `hub`, or the seeded `none` init) and verified against the
checksum; a backbone loaded from a local file is copied once per run to `backbone.safetensors`
and the model folder points at it, so the run stays usable if the original file moves.

`export_onnx` writes the model as ONNX (dynamic batch; dynamic height/width for any-size heads),
verifies onnxruntime against PyTorch on real images and records that in
`onnx_verification.json`; `predict_onnx` runs it with onnxruntime, preprocessing as `predict`.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import io as _io
from .backbones import Backbone, create_backbone
from .config import MIN_SIZE
from .data import IMAGE_EXTENSIONS, BadImage, View, draft_size, load_image, make_transform
from .errors import HeadbenchError
from .heads import Head, HeadSpec, create_head
from .model import HeadbenchModel, default_device

FORMAT = "headbench-model/1"
RECREATABLE = ("embedded", "hub", "none")  # "none" is a seeded init


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
    """model.json of a model folder, checked field by field (it may come from anyone)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    meta = _io.read_json(model_dir, "model.json", "model",
                         "pass a model folder such as runs/<run>/heads/gap")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HeadbenchError(f"'{meta_path}' is not a {FORMAT} file; re-save the model with "
                             "compare")
    for field, check in _MODEL_FIELDS.items():
        value = _field(meta, field)
        if not check(value):
            raise HeadbenchError(f"'{meta_path}' field '{field}' is invalid ({value!r:.60}); "
                                 "re-save the model with compare")
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


def _is_int(v, low: int = 0) -> bool:
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
    "backbone.weights": lambda v: isinstance(v, str) and bool(v),
    "backbone.weights_checksum": _str_or_none,
    "backbone.file": lambda v: v is _MISSING or _str_or_none(v),
    "head": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    "in_channels": lambda v: _is_int(v, 1),
    "map_size": lambda v: _numbers(v, 2, lambda x: _is_int(x, 1)),
    "num_classes": lambda v: _is_int(v, 2),
    "class_names": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
    "data_config": lambda v: isinstance(v, dict),
    "data_config.input_size": lambda v: _numbers(v, 3, lambda x: _is_int(x, 1)),
    "data_config.mean": lambda v: _numbers(v, 3, _is_num),
    "data_config.std": lambda v: _numbers(v, 3, lambda x: _is_num(x) and x > 0),
    "data_config.interpolation": lambda v: isinstance(v, str),
    "data_config.crop_pct": lambda v: _is_num(v) and 0 < v <= 1,
}


def _run_root(model_dir: Path) -> Path:
    """The folder a model may take files from: its run folder (runs/<run>/heads/<head>), or
    the model folder itself when it stands alone."""
    model_dir = model_dir.resolve()
    return model_dir.parent.parent if model_dir.parent.name == "heads" else model_dir


def _file_inside_run(model_dir: Path, name: str, what: str) -> Path:
    """The absolute path of file `name` (relative to the model folder), refused unless it
    lies inside the run folder (no absolute paths, no `..` or links leading out) and is a
    regular file (not a folder or a pipe that would block reading)."""
    root, path = _run_root(model_dir), model_dir / name
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
        weights = str(_file_inside_run(model_dir, bmeta["file"],
                                       f"'{meta_path}' field 'backbone.file'"))
    head_file = _file_inside_run(model_dir, "model.safetensors",
                                 f"'{model_dir / 'model.safetensors'}'")
    with _about(model_dir):  # an unknown name, or weights that cannot be had
        backbone = create_backbone(bmeta["name"], weights=weights,
                                   input_size=meta["data_config"]["input_size"][-1])
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
        head = create_head(HeadSpec.from_dict(meta["head"]), c, meta["num_classes"], (h, w))
    state = load_head_weights(head_file)
    try:
        head.load_state_dict(state)
    except (RuntimeError, KeyError) as e:  # other weights than the spec describes
        reason = str(e).strip().splitlines()[0]
        raise HeadbenchError(f"the head weights in '{model_dir}/model.safetensors' do not fit "
                             f"its model.json ({reason}); re-save the model with compare")
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


def _check_predict_args(topk, input_size) -> None:
    if not _is_int(topk, 1):
        raise HeadbenchError(f"topk must be a whole number ≥ 1, got {topk!r}", param="topk")
    if input_size is not None and not _is_int(input_size, MIN_SIZE):
        raise HeadbenchError(f"input_size must be a whole number ≥ {MIN_SIZE}, got "
                             f"{input_size!r}", param="input_size")


def _image_files(paths: Iterable[str | Path]) -> list[Path]:
    paths = list(paths)
    files = expand_paths(paths)
    if not files:
        raise HeadbenchError(f"no image files found in {', '.join(map(str, paths))}")
    return files


def image_tensors(files: Sequence[Path], data_config: dict, size: int | None = None
                  ) -> tuple[list[dict], list[torch.Tensor]]:
    """The one preprocessing of predict and export: decode, resize, crop, normalise as
    `data_config` says (at crop side `size`). Returns a row per file (`path`, plus `error` for
    an unreadable one) and a (3, S, S) tensor per readable file, in order."""
    view = View(size=size)
    transform, draft = make_transform(data_config, view), draft_size(data_config, view)
    rows, tensors = [], []
    for f in files:
        try:
            tensors.append(transform(load_image(f, draft=draft)))
            rows.append(dict(path=str(f)))
        except BadImage as e:
            rows.append(dict(path=str(f), error=str(e)))
    return rows, tensors


def _predict_rows(files: list[Path], data_config: dict, names: Sequence[str], topk: int,
                  input_size: int | None, batch_size: int, logits_of) -> list[dict]:
    """Top-k rows for `files`; `logits_of` maps a (N, 3, S, S) batch to (N, K) logits."""
    k = min(topk, len(names))
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        rows, tensors = image_tensors(files[start:start + batch_size], data_config, input_size)
        results += [r for r in rows if "error" in r]
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
    _check_predict_args(topk, input_size)
    files = _image_files(paths)
    device = next(model.head.parameters()).device
    names = model.class_names or [str(i) for i in range(model.head.num_classes)]

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).float().cpu()
    return _predict_rows(files, model.data_config, names, topk, input_size, batch_size,
                         logits_of)


# ----------------------------------------------------------------------------------------------
# ONNX: export (always verified against PyTorch) and inference with onnxruntime

ONNX_TOLERANCE = 1e-4  # max abs difference of logits, onnxruntime vs PyTorch fp32
ONNX_VERIFICATION = "onnx_verification.json"
ONNX_EXPORTER = "torch.onnx.export(dynamo=True)"
ONNX_INPUT, ONNX_OUTPUT = "image", "logits"
VERIFY_IMAGES = 8  # images per verification size
_INSTALL = "pip install 'headbench[onnx]'"


def _require(*names: str) -> list:
    """The named optional modules, or one line saying how to install them."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise HeadbenchError(f"ONNX needs the package '{name}', which is not installed: "
                                 f"{_INSTALL}") from None
    return modules


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _dynamic(model: HeadbenchModel, dynamic_size: bool | None) -> bool:
    """Whether height and width are exported dynamic: any-size heads only."""
    if dynamic_size is None:
        return model.head.any_size
    if dynamic_size and model.head.fixed_size:
        h, w = model.data_config["input_size"][1:]
        raise HeadbenchError(f"head '{model.head.spec.label}' is built for {h}×{w} px input and "
                             "cannot export with a dynamic size; export it at its fixed size or "
                             "use a global-pooling head such as 'gap'")
    return bool(dynamic_size)


def verification_sizes(size: int, dynamic: bool) -> list[int]:
    """The input sides an export is checked at: the training size, and for a dynamic export
    one smaller and one larger (odd sides included, so no stride divides them evenly)."""
    if not dynamic:
        return [size]
    return [size, max(MIN_SIZE, size * 3 // 4), size * 5 // 4 + 1]


def _verification_images(model_dir: Path, images: Iterable[str | Path] | None) -> list[Path]:
    """`images`, else test/val/train images of the run the model folder belongs to."""
    if images is not None:
        return _image_files(images)[:VERIFY_IMAGES]
    run_dir = _run_root(model_dir)
    if run_dir == model_dir.resolve() or not (run_dir / "dataset.json").is_file():
        raise HeadbenchError(f"'{model_dir}' is not in a run folder with a dataset.json; pass "
                             "images to verify the ONNX export on (--images)", param="images")
    from .run import Run  # run imports much of headbench; only needed here
    try:
        dataset = Run.load(run_dir).dataset
    except HeadbenchError as e:
        raise HeadbenchError(f"cannot read the images of run '{run_dir}' ({e}); pass images "
                             "to verify the ONNX export on (--images)", param="images") from None
    files = [dataset.path(role, i) for role in ("test", "val", "train")
             if role in dataset.splits for i in range(len(dataset.splits[role]))]
    return [f for f in files if f.is_file()][:VERIFY_IMAGES]


def _export_program(model: HeadbenchModel, dynamic: bool, opset: int | None):
    """The torch.onnx program of `model` on CPU: dynamic batch, and height/width if asked."""
    size = model.data_config["input_size"][-1]
    axes = {0: torch.export.Dim("batch")}
    if dynamic:
        axes |= {2: torch.export.Dim("height", min=MIN_SIZE),
                 3: torch.export.Dim("width", min=MIN_SIZE)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(model, (torch.zeros(2, 3, size, size),), dynamo=True,
                                     dynamic_shapes=({**axes},), input_names=[ONNX_INPUT],
                                     output_names=[ONNX_OUTPUT], opset_version=opset,
                                     verbose=False)
    except HeadbenchError:
        raise
    except Exception as e:  # the exporter's own errors: many types, long messages
        hint = "; try a fixed size (--fixed-size)" if dynamic else ""
        raise HeadbenchError(f"torch.onnx could not export head '{model.head.spec.label}' "
                             f"({_first_line(e)}){hint}") from e


def _onnx_metadata(model: HeadbenchModel, meta: dict, dynamic: bool) -> dict[str, str]:
    """What a deployment needs besides the graph: preprocessing and class names."""
    return {"headbench.format": FORMAT, "headbench.backbone": meta["backbone"]["name"],
            "headbench.head": model.head.spec.label,
            "headbench.data_config": json.dumps(model.data_config),
            "headbench.class_names": json.dumps(model.class_names),
            "headbench.dynamic_size": json.dumps(dynamic)}


def _session(path: Path, ort):
    """An onnxruntime CPU session for `path`, its warnings silenced."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise HeadbenchError(f"onnxruntime cannot load '{path}' ({_first_line(e)})") from None


def _run_session(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _compare(model: HeadbenchModel, session, x: torch.Tensor) -> tuple[float | None, str | None]:
    """Max abs logit difference, onnxruntime vs PyTorch, on batch `x`; None and the reason
    when onnxruntime fails or gives another shape."""
    with torch.inference_mode():
        ref = model(x).float().numpy()
    try:
        got = _run_session(session, x.numpy())
    except Exception as e:  # e.g. a size the graph was specialised away from
        return None, _first_line(e)
    if got.shape != ref.shape:
        return None, f"output shape {list(got.shape)}, expected {list(ref.shape)}"
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    return (diff, None) if math.isfinite(diff) else (None, "non-finite output")


def _verify(model: HeadbenchModel, session, files: list[Path], sizes: list[int]) -> dict:
    """Logits of onnxruntime vs PyTorch fp32 on real preprocessed images at every size."""
    diffs, errors, n = {}, {}, 0
    for size in sizes:
        _, tensors = image_tensors(files, model.data_config, size)
        if not tensors:
            raise HeadbenchError("none of the verification images could be read; pass other "
                                 "images (--images)", param="images")
        n = len(tensors)
        diffs[str(size)], error = _compare(model, session, torch.stack(tensors))
        if error:
            errors[str(size)] = error
    passed = all(d is not None and d <= ONNX_TOLERANCE for d in diffs.values())
    return dict(sizes=sizes, images=n, max_abs_diff=diffs, errors=errors,
                tolerance=ONNX_TOLERANCE, passed=passed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_file_field(out: Path, model_dir: Path) -> str:
    """The ONNX path as recorded: relative to the model folder when inside it."""
    out, base = out.resolve(), model_dir.resolve()
    return os.path.relpath(out, base) if out.is_relative_to(_run_root(base)) else str(out)


def _versions(*modules) -> dict[str, str]:
    return {"torch": torch.__version__,
            **{m.__name__: getattr(m, "__version__", "?") for m in modules}}


def export_onnx(model_dir: str | Path, out: str | Path | None = None, *,
                dynamic_size: bool | None = None, images: Iterable[str | Path] | None = None,
                opset: int | None = None) -> dict:
    """Export a model folder (backbone + head, frozen or fine-tuned) to ONNX and verify it.

    The batch axis is always dynamic; height and width are dynamic for heads that accept any
    size (`dynamic_size` None), and `dynamic_size=True` on a fixed-size head is refused. The
    file holds the data config and class names as metadata. onnxruntime's logits are compared
    with PyTorch fp32 on `images` (default: images of the model's run) at the training size
    and, when dynamic, two other sizes; the result goes to `<model_dir>/onnx_verification.json`
    and is returned. A difference over `ONNX_TOLERANCE` is an error (the file is kept).

    Example:
        >>> hb.export_onnx("runs/x/heads/gap", images=["img.jpg"])["passed"]  # doctest: +SKIP
        True
    """
    onnx, ort, onnxscript = _require("onnx", "onnxruntime", "onnxscript")
    if opset is not None and not _is_int(opset, 18):
        raise HeadbenchError(f"opset must be a whole number ≥ 18, got {opset!r}", param="opset")
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / "model.onnx"
    if out.is_dir():
        raise HeadbenchError(f"'{out}' is a folder; name the ONNX file to write, e.g. "
                             f"'{out / 'model.onnx'}'")
    meta = read_model_json(model_dir)
    model = load_model(model_dir, device="cpu").float()
    dynamic = _dynamic(model, dynamic_size)
    files = _verification_images(model_dir, images)  # before the slow export
    program = _export_program(model, dynamic, opset)
    program.model.metadata_props.update(_onnx_metadata(model, meta, dynamic))
    _io.atomic_write(out, program.save)
    check = _verify(model, _session(out, ort), files, verification_sizes(
        model.data_config["input_size"][-1], dynamic))
    report = dict(onnx_file=_onnx_file_field(out, model_dir), sha256=_sha256(out),
                  size_bytes=out.stat().st_size, dynamic_batch=True, dynamic_size=dynamic,
                  input=ONNX_INPUT, output=ONNX_OUTPUT, **check, exporter=ONNX_EXPORTER,
                  opset=program.model.opset_imports.get(""),
                  versions=_versions(onnx, ort, onnxscript))
    _io.atomic_write_json(model_dir / ONNX_VERIFICATION, report)
    if not report["passed"]:
        worst = ", ".join(f"{s} px: {report['errors'].get(s) or f'{d:.3g}'}"
                          for s, d in report["max_abs_diff"].items())
        raise HeadbenchError(f"the ONNX export '{out}' failed verification (max abs logit "
                             f"difference vs PyTorch {worst}; tolerance {ONNX_TOLERANCE:g}); "
                             f"the file is kept for inspection and "
                             f"'{model_dir / ONNX_VERIFICATION}' records it: do not deploy it")
    return report


def read_onnx_verification(model_dir: str | Path) -> dict | None:
    """The verification record of a model folder's ONNX export, or None when never exported."""
    path = Path(model_dir) / ONNX_VERIFICATION
    if not path.exists():
        return None
    record = _io.read_json(Path(model_dir), ONNX_VERIFICATION, "ONNX verification",
                           "export the model again with headbench export")
    if not isinstance(record, dict) or not isinstance(record.get("onnx_file"), str):
        raise HeadbenchError(f"'{path}' is not an ONNX verification record; export again")
    return record


def _folder_onnx(model_dir: Path) -> tuple[Path, dict, list[str]]:
    """The verified ONNX file of a model folder, its data config and class names."""
    meta = read_model_json(model_dir)
    record = read_onnx_verification(model_dir)
    if record is None:
        raise HeadbenchError(f"'{model_dir}' has no verified ONNX export; run 'headbench "
                             f"export {model_dir}' first")
    name = record["onnx_file"]
    if Path(name).is_absolute():
        raise HeadbenchError(f"the ONNX file of '{model_dir}' was exported outside its run "
                             f"folder ('{name}'); pass that file to predict")
    path = _file_inside_run(model_dir, name, f"'{model_dir / ONNX_VERIFICATION}'")
    if not record.get("passed"):
        raise HeadbenchError(f"the ONNX export '{path}' failed verification (see "
                             f"'{model_dir / ONNX_VERIFICATION}'); export it again")
    if record.get("sha256") != _sha256(path):
        raise HeadbenchError(f"'{path}' changed since it was verified; export it again")
    return path, meta["data_config"], meta["class_names"]


def _metadata_config(session, path: Path) -> tuple[dict, list[str]]:
    """Data config and class names from a headbench ONNX file's metadata, checked."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        config = json.loads(props["headbench.data_config"])
        names = json.loads(props["headbench.class_names"])
    except (KeyError, ValueError):
        raise HeadbenchError(f"'{path}' has no headbench metadata (data config, class names); "
                             "pass its model folder instead") from None
    holder = {"data_config": config, "class_names": names}
    for field in [f for f in _MODEL_FIELDS if f.startswith("data_config")] + ["class_names"]:
        if not _MODEL_FIELDS[field](_field(holder, field)):
            raise HeadbenchError(f"'{path}' metadata field '{field}' is invalid; export again")
    return config, names


def _check_onnx_size(session, size: int, path: Path) -> None:
    """A graph exported at a fixed size refuses other input sizes in one line."""
    h, w = session.get_inputs()[0].shape[2:]
    if isinstance(h, int) and isinstance(w, int) and (h, w) != (size, size):
        raise HeadbenchError(f"input_size: '{path}' was exported for {h}×{w} px input (a "
                             f"fixed-size head) but got {size}; use a global-pooling head such "
                             "as 'gap' for variable input sizes", param="input_size")


def predict_onnx(model: str | Path, paths: Iterable[str | Path], topk: int = 5,
                 input_size: int | None = None, batch_size: int = 16) -> list[dict]:
    """`predict` run by onnxruntime: `model` is a model folder with a verified ONNX export,
    or an exported .onnx file (its metadata holds the preprocessing and class names)."""
    _check_predict_args(topk, input_size)
    (ort,) = _require("onnxruntime")
    model = Path(model)
    if model.is_dir():
        path, config, names = _folder_onnx(model)
        session = _session(path, ort)
    elif model.is_file():
        path, session = model, _session(model, ort)
        config, names = _metadata_config(session, path)
    else:
        raise HeadbenchError(f"no such model folder or ONNX file: '{model}'")
    _check_onnx_size(session, input_size or config["input_size"][-1], path)
    files = _image_files(paths)
    return _predict_rows(files, config, names, topk, input_size, batch_size,
                         lambda x: torch.from_numpy(_run_session(session, x.numpy())))
