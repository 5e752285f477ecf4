"""How much faster is feature extraction with channels_last + bf16 autocast than timm's default?

Times ResNet50 (random weights, no head) on random 224x224 batches, in one process:
  fp32 NCHW eager (timm default)  |  fp32 channels_last  |  bf16 autocast + channels_last
Configurations are interleaved round by round so load from other processes hits all alike.

    .venv/bin/python bench/bench_extract.py --batch 16 --rounds 3
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import timm
import torch

from headbench.features import resolve_precision

CONFIGS = {  # name -> (memory format, autocast to bf16)
    "fp32 NCHW (timm default)": (torch.contiguous_format, False),
    "fp32 channels_last": (torch.channels_last, False),
    "bf16 autocast + channels_last": (torch.channels_last, True),
}


def run_once(model: torch.nn.Module, x: torch.Tensor, memory_format: torch.memory_format,
             bf16: bool) -> float:
    model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        model.forward_features(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    configs = dict(CONFIGS)
    if resolve_precision("auto", "cpu") != "bf16":
        print("this CPU has no native bf16 (avx512_bf16/amx_bf16): bf16 row skipped")
        configs.pop("bf16 autocast + channels_last")
    model = timm.create_model("resnet50", pretrained=False, num_classes=0).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for memory_format, bf16 in configs.values():  # warm-up: oneDNN primitive creation
        run_once(model, x, memory_format, bf16)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (memory_format, bf16) in configs.items():
            times[name].append(run_once(model, x, memory_format, bf16))

    print(f"resnet50, batch {args.batch} x {args.size}px, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    base = statistics.median(times["fp32 NCHW (timm default)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:32s} {median * 1000:8.1f} ms/batch  {args.batch / median:6.1f} img/s  "
              f"speed-up x{base / median:.2f}")


if __name__ == "__main__":
    main()
