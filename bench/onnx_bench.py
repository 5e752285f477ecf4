"""ONNX vs PyTorch on this CPU, for section (h) of `bench/run.py` (issue 12).

1. A saved model folder, exported with `hb.export_onnx` (verified): batch-1 latency (median ms)
   and batch-32 throughput (img/s) of PyTorch fp32 eager; PyTorch bf16 autocast + channels_last
   (where the CPU has avx512_bf16 / amx_bf16); onnxruntime fp32; onnxruntime int8 dynamic
   quantisation (`quantize_dynamic`); with each engine's test accuracy.
2. Feature extractors (backbone only): resnet50 (weights 'none': timing only) and
   efficientnet_lite0 (embedded): onnxruntime fp32 against PyTorch fp32 eager NCHW and against
   headbench's own extraction path (BatchNorm folded, channels_last, bf16 where native).
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from harness import native_bf16  # noqa: E402

import headbench as hb  # noqa: E402
from headbench import export  # noqa: E402
from headbench.backbones import create_backbone  # noqa: E402

SIZE = 224


def median_ms(fn, x, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timings(fn, b1, b32) -> tuple[float, float]:
    """(batch-1 median ms, batch-32 img/s from the median batch time)."""
    return median_ms(fn, b1, 30), 32e3 / median_ms(fn, b32, 5)


def torch_fn(module, bf16: bool = False):
    def run(x):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            return module(x).float()
    return run


def session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_fn(sess):
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def classifier_rows(model_dir: Path, paths: list[Path], labels: np.ndarray,
                    tmp: Path) -> list[dict]:
    """Per engine: latency, throughput, max logit difference vs PyTorch fp32, test accuracy."""
    report = hb.export_onnx(model_dir, images=paths[:8])
    model = hb.load_model(model_dir, device="cpu")
    fp32_path = model_dir / report["onnx_file"]
    int8_path = tmp / "model.int8.onnx"
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    _, tensors = export.image_tensors(paths, model.data_config)
    x = torch.stack(tensors)
    ref = torch_fn(model)(x)
    engines = [("PyTorch fp32 eager", torch_fn(model))]
    if native_bf16():
        engines.append(("PyTorch bf16 autocast + channels_last",
                        torch_fn(copy.deepcopy(model).to(memory_format=torch.channels_last),
                                 bf16=True)))
    engines += [("onnxruntime fp32", ort_fn(session(fp32_path))),
                ("onnxruntime int8 (quantize_dynamic)", ort_fn(session(int8_path)))]
    rows = []
    for name, fn in engines:
        out = torch.cat([fn(x[i:i + 32]) for i in range(0, len(x), 32)])
        ms, ips = timings(fn, x[:1], x[:32])
        rows.append(dict(engine=name, latency_ms=ms, throughput=ips,
                         max_diff=float((out - ref).abs().max()),
                         accuracy=float((out.argmax(1).numpy() == labels).mean())))
    return rows


def export_backbone(backbone, path: Path, size: int = SIZE) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(backbone, (torch.zeros(2, 3, size, size),), dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    input_names=["image"], output_names=["features"],
                                    verbose=False)
    program.save(str(path))


def extractor_rows(tmp: Path, size: int = SIZE, batches: int = 3) -> list[dict]:
    """Per backbone: img/s of PyTorch fp32 eager NCHW, headbench's extraction path and
    onnxruntime fp32 at batch 32, and onnxruntime's max feature difference vs fp32."""
    from headbench.backbones import inference_copy
    from headbench.features import _forward
    from headbench.runtime import resolve_precision
    x = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    precision = resolve_precision("auto", "cpu", "extract")
    rows = []
    for name, weights in (("resnet50", "none"), ("efficientnet_lite0", "embedded")):
        backbone = create_backbone(name, weights=weights, input_size=size).eval()
        path = tmp / f"{name}.onnx"
        export_backbone(backbone, path, size)
        fast = inference_copy(backbone, torch.device("cpu"))
        runs = {"fp32": torch_fn(backbone), "ort": ort_fn(session(path)),
                "headbench": lambda b: _forward(fast, b, torch.device("cpu"), precision)}
        ref, got = runs["fp32"](x), runs["ort"](x)
        rows.append(dict(backbone=f"{name} ({weights})", precision=precision,
                         **{k: 32e3 / median_ms(fn, x, batches) for k, fn in runs.items()},
                         max_diff=float((got - ref).abs().max()),
                         max_feature=float(ref.abs().max())))
    return rows
