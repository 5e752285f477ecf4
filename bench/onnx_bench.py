"""ONNX vs PyTorch on this CPU: latency, throughput and agreement (prints a markdown table).

    python bench/onnx_bench.py [--images 100] [--out DIR]

1. efficientnet_lite0 (embedded weights) + a gap head trained by `compare` on generated shapes
   at 224 px, exported with `hb.export_onnx` (verified), then batch-1 latency (median ms) and
   batch-32 throughput (img/s) of: PyTorch fp32 eager; PyTorch bf16 autocast + channels_last
   (only where the CPU has avx512_bf16 / amx_bf16); onnxruntime fp32; onnxruntime int8 dynamic
   quantisation (`quantize_dynamic`), with top-1 agreement vs fp32 on the run's images.
2. Feature extractors (backbone only, 224 px): resnet50 (weights 'none': timing only) and
   efficientnet_lite0 (embedded), onnxruntime vs PyTorch fp32: img/s at batch 32 and the max
   feature difference.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from harness import cpu_flags, native_bf16  # noqa: E402

import headbench as hb  # noqa: E402
from headbench import export, progress  # noqa: E402
from headbench.backbones import create_backbone  # noqa: E402
from headbench.synthetic import make_shapes_dataset  # noqa: E402

SIZE = 224
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


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


def trained_model(tmp: Path, n_images: int) -> Path:
    classes = ("circle", "square", "star", "triangle")
    data = make_shapes_dataset(tmp / "shapes", classes=classes, per_class=n_images // 4,
                               image_size=256)
    run = hb.compare(data, backbone="efficientnet_lite0", weights="embedded", heads=["gap"],
                     seeds=1, epochs=10, input_size=SIZE, precision="fp32",
                     cache_dir=tmp / "cache", out=tmp / "out", report=False)
    return run.model_dir("gap")


def images_tensor(tmp: Path, model) -> torch.Tensor:
    """Every generated image, preprocessed as predict and export do."""
    _, tensors = export.image_tensors(export.expand_paths([tmp / "shapes"]), model.data_config)
    return torch.stack(tensors)


def classifier_rows(tmp: Path, n_images: int) -> list[list[str]]:
    model_dir = trained_model(tmp, n_images)
    report = hb.export_onnx(model_dir)
    model = hb.load_model(model_dir, device="cpu")
    fp32_path = model_dir / report["onnx_file"]
    int8_path = tmp / "model.int8.onnx"
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    x = images_tensor(tmp, model)
    b1, b32 = x[:1], x[:32]
    ref = torch_fn(model)(x)
    engines = [("PyTorch fp32 eager", torch_fn(model))]
    if native_bf16():
        engines.append(("PyTorch bf16 autocast + channels_last",
                        torch_fn(model.to(memory_format=torch.channels_last), bf16=True)))
    engines += [("onnxruntime fp32", ort_fn(session(fp32_path))),
                ("onnxruntime int8 (quantize_dynamic)", ort_fn(session(int8_path)))]
    rows = []
    for name, fn in engines:
        out = torch.cat([fn(x[i:i + 32]) for i in range(0, len(x), 32)])
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        ms, ips = timings(fn, b1, b32)
        rows.append([name, f"{ms:.2f}", f"{ips:.1f}", f"{(out - ref).abs().max().item():.2g}",
                     f"{agree:.1%} of {len(x)}"])
    if not native_bf16():
        rows.insert(1, ["PyTorch bf16 autocast + channels_last",
                        "skipped: no avx512_bf16 / amx_bf16", "", "", ""])
    return rows


def export_backbone(backbone, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(backbone, (torch.zeros(2, 3, SIZE, SIZE),), dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    input_names=["image"], output_names=["features"],
                                    verbose=False)
    program.save(str(path))


def extractor_rows(tmp: Path) -> list[list[str]]:
    x = torch.randn(32, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, weights in (("resnet50", "none"), ("efficientnet_lite0", "embedded")):
        backbone = create_backbone(name, weights=weights, input_size=SIZE).eval()
        path = tmp / f"{name}.onnx"
        export_backbone(backbone, path)
        torch_run, ort_run = torch_fn(backbone), ort_fn(session(path))
        ref, got = torch_run(x), ort_run(x)
        t_ips = 32e3 / median_ms(torch_run, x, 3)
        o_ips = 32e3 / median_ms(ort_run, x, 3)
        rows.append([f"{name} ({weights})", "×".join(map(str, ref.shape[1:])), f"{t_ips:.1f}",
                     f"{o_ips:.1f}", f"{o_ips / t_ips:.2f}×",
                     f"{(got - ref).abs().max().item():.2g} (max |feature| "
                     f"{ref.abs().max().item():.3g})"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="generated images (÷4 classes)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    progress.set_quiet(True)
    flags = [f for f in SHOWN_FLAGS if f in cpu_flags()]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.out or scratch)
        start = time.perf_counter()
        cls = classifier_rows(tmp, args.images)
        ext = extractor_rows(tmp)
        took = time.perf_counter() - start
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; flags: {', '.join(flags)}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}; {SIZE} px; "
          f"bench took {took:.0f} s\n")
    print("efficientnet_lite0 (embedded) + gap head, trained on generated shapes:\n")
    print(table(["engine", "batch-1 latency (ms, median)", "batch-32 throughput (img/s)",
                 "max abs logit diff vs PyTorch fp32", "top-1 agreement vs fp32"], cls))
    print("\nFeature extractor (backbone only), batch 32:\n")
    print(table(["backbone", "feature map", "PyTorch fp32 img/s", "onnxruntime fp32 img/s",
                 "onnxruntime / PyTorch", "max abs feature diff"], ext))


if __name__ == "__main__":
    main()
