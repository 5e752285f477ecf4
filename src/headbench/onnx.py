"""A model folder as ONNX: export verified against PyTorch, and inference with onnxruntime.

`export_onnx` writes the model as ONNX (dynamic batch; dynamic height/width for any-size heads),
verifies onnxruntime against PyTorch on real images (given, or the test/val/train images of the
run the folder belongs to) and records that in `onnx_verification.json`; `predict_onnx` runs
it with onnxruntime, preprocessing as `export.predict`. onnx and onnxruntime are optional
(`pip install 'headbench[onnx]'`) and imported only when used.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from . import io as _io
from . import progress as _progress
from .errors import HeadbenchError
from .export import (FORMAT, check_predict_args, file_inside_run, image_tensors, invalid_fields,
                     is_int, load_model, predict_rows, read_model_json, run_root)
from .images import MIN_SIZE, image_files
from .model import HeadbenchModel
from .run import Run
from .tokens import PatchGrid
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
    """Whether height and width are exported dynamic: any-size heads only (on a token backbone,
    those that pool the tokens: the patch grid's shape is worked out in Python, which the
    exported graph would keep as a constant)."""
    on_grid = model.head.tokens is not None and isinstance(model.head[0], PatchGrid)
    if dynamic_size is None:
        return model.head.any_size and not on_grid
    if dynamic_size and (model.head.fixed_size or on_grid):
        h, w = model.data_config["input_size"][1:]
        why = ("reads the patch tokens as a grid of one shape" if on_grid
               else f"is built for {h}×{w} px input")
        raise HeadbenchError(f"head '{model.head.spec.label}' {why} and cannot export with a "
                             "dynamic size; export it at its fixed size or use a global-pooling "
                             "head such as 'gap'" + (" on a CNN, or token or map" if on_grid
                                                     else ""))
    return bool(dynamic_size)


def verification_sizes(size: int, dynamic: bool, step: int = 1) -> list[int]:
    """The input sides an export is checked at: the training size, and for a dynamic export
    one smaller and one larger (odd sides included, so no stride divides them evenly; for a
    token backbone, whole patches of `step` px)."""
    if not dynamic:
        return [size]
    others = [max(MIN_SIZE, size * 3 // 4), size * 5 // 4 + 1]
    return [size, *(max(step, s - s % step) for s in others)]


def _verification_images(model_dir: Path, images: Iterable[str | Path] | None) -> list[Path]:
    """`images`, else test/val/train images of the run the model folder belongs to."""
    if images is not None:
        return image_files(images)[:VERIFY_IMAGES]
    run_dir = run_root(model_dir)
    if run_dir == model_dir.resolve() or not (run_dir / "dataset.json").is_file():
        raise HeadbenchError(f"'{model_dir}' is not in a run folder with a dataset.json; pass "
                             "images to verify the ONNX export on", param="images")
    try:
        dataset = Run.load(run_dir).dataset
    except HeadbenchError as e:
        raise HeadbenchError(f"cannot read the images of run '{run_dir}' ({e}); pass images "
                             "to verify the ONNX export on", param="images") from None
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
        hint = "; try exporting at the fixed training size" if dynamic else ""
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


def _verify(model: HeadbenchModel, session, files: list[Path], sizes: list[int], bar) -> dict:
    """Logits of onnxruntime vs PyTorch fp32 on real preprocessed images at every size."""
    diffs, errors, n = {}, {}, 0
    for size in sizes:
        bar.set_postfix(f"verifying at {size} px")
        _, tensors = image_tensors(files, model.data_config, size)
        if not tensors:
            raise HeadbenchError("none of the verification images could be read; pass other "
                                 "images", param="images")
        n = len(tensors)
        diffs[str(size)], error = _compare(model, session, torch.stack(tensors))
        if error:
            errors[str(size)] = error
        bar.advance()
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
    return os.path.relpath(out, base) if out.is_relative_to(run_root(base)) else str(out)


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
    if opset is not None and not is_int(opset, 18):
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
    sizes = verification_sizes(model.data_config["input_size"][-1], dynamic,
                               model.backbone.size_step)
    with _progress.progress(f"ONNX export of {model_dir}", total=1 + len(sizes),
                            unit="step") as bar:
        bar.set_postfix("exporting the graph")
        program = _export_program(model, dynamic, opset)
        program.model.metadata_props.update(_onnx_metadata(model, meta, dynamic))
        _io.atomic_write(out, program.save)
        bar.advance()
        check = _verify(model, _session(out, ort), files, sizes, bar)
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
    path = file_inside_run(model_dir, name, f"'{model_dir / ONNX_VERIFICATION}'")
    if record.get("passed") is not True:  # exactly true: a damaged record is not a pass
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
    for field in invalid_fields({"data_config": config, "class_names": names},
                                ("data_config", "class_names")):
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
    check_predict_args(topk, input_size)
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
    files = image_files(paths)
    return predict_rows(files, config, names, topk, input_size, batch_size,
                         lambda x: torch.from_numpy(_run_session(session, x.numpy())))
