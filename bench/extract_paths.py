"""The ways a frozen backbone's forward can run on the CPU, for section (b) of the suite.

Each path wraps its own copy of the backbone and maps an NCHW float batch to float32 feature
maps; `setup_s` is what it costs before the first useful batch (tracing, compiling). The
compiled paths start from an empty inductor cache and cleared in-memory caches, so their
`setup_s` is a cold compile (inductor's imports excepted, which the first compile pays).
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from headbench import backbones, features

CPU = torch.device("cpu")
CL = torch.channels_last


@dataclass
class ForwardPath:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    setup_s: float = 0.0
    extra: dict = field(default_factory=dict)


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=CL)


def timm_default(bb: nn.Module) -> ForwardPath:
    """timm's default: fp32, NCHW, eager."""
    m = copy.deepcopy(bb).eval()

    def fn(x):
        with torch.inference_mode():
            return m(x)
    return ForwardPath("timm default: fp32 NCHW eager", fn)


def channels_last(bb: nn.Module) -> ForwardPath:
    """headbench 0.1's extractor: channels_last, fp32, eager, nothing folded."""
    m = copy.deepcopy(bb).eval().to(memory_format=CL)

    def fn(x):
        with torch.inference_mode():
            return m(_cl(x))
    return ForwardPath("channels_last, eager (headbench 0.1)", fn)


def headbench(bb: nn.Module, precision: str) -> ForwardPath:
    """What `features.extract` runs per batch: `backbones.inference_copy` of the backbone (eval,
    channels_last, BatchNorm folded when a probe agrees) through `_forward` (autocast when bf16,
    float16 storage)."""
    t0 = time.perf_counter()
    m = backbones.inference_copy(bb, CPU)
    setup = time.perf_counter() - t0
    folded = _batchnorms(bb) - _batchnorms(m)

    def fn(x):
        return torch.from_numpy(features._forward(m, x, CPU, precision)).float()
    return ForwardPath(f"headbench extractor (precision {precision}, fp16 storage)", fn, setup,
                       {"folded": folded})


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def onednn_off(bb: nn.Module) -> ForwardPath:
    m = copy.deepcopy(bb).eval().to(memory_format=CL)

    def fn(x):
        with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
            return m(_cl(x))
    return ForwardPath("channels_last, oneDNN off (torch.backends.mkldnn)", fn)


def jit_frozen(bb: nn.Module, x: torch.Tensor) -> ForwardPath:
    """torch.jit.trace + optimize_for_inference (freeze, conv-BN folding, oneDNN rewrites);
    deprecated in this torch."""
    m = copy.deepcopy(bb).eval().to(memory_format=CL)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        traced = torch.jit.optimize_for_inference(torch.jit.trace(m, _cl(x)))
        for _ in range(2):  # the profiling executor specialises on the first calls
            traced(_cl(x))
    setup = time.perf_counter() - t0

    def fn(x):
        with torch.inference_mode():
            return traced(_cl(x))
    return ForwardPath("torch.jit.trace + optimize_for_inference (deprecated API)", fn, setup)


def _fresh_inductor() -> str:
    import torch._dynamo
    import torch._inductor.utils
    torch._dynamo.reset()
    torch._inductor.utils.clear_inductor_caches()
    path = tempfile.mkdtemp(prefix="headbench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def compiled(bb: nn.Module, x: torch.Tensor, freezing: bool) -> ForwardPath:
    """torch.compile (inductor) of the channels_last model; cold compile in `setup_s`."""
    import torch._inductor.config as inductor_config
    m = copy.deepcopy(bb).eval().to(memory_format=CL)
    cache = _fresh_inductor()
    t0 = time.perf_counter()
    with inductor_config.patch(freezing=freezing), torch.inference_mode():
        cm = torch.compile(m)
        cm(_cl(x))
    setup = time.perf_counter() - t0

    def fn(x):
        with torch.inference_mode():
            return cm(_cl(x))
    name = "torch.compile (inductor" + (", freezing)" if freezing else ")")
    return ForwardPath(name, fn, setup, {"cache_dir": cache, "module": m, "freezing": freezing})


def compile_extras(path: ForwardPath, x: torch.Tensor) -> dict:
    """For a compiled path: the recompile a different (last, ragged) batch size costs, and a
    warm compile (same process, inductor's on-disk cache filled, dynamo reset)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    out = {}
    t0 = time.perf_counter()
    path.fn(x[: max(1, len(x) - 5)])
    out["recompile_ragged_s"] = time.perf_counter() - t0
    torch._dynamo.reset()
    t0 = time.perf_counter()
    with inductor_config.patch(freezing=path.extra["freezing"]), torch.inference_mode():
        torch.compile(path.extra["module"])(_cl(x))
    out["warm_compile_s"] = time.perf_counter() - t0
    return out


def bf16_autocast(bb: nn.Module) -> ForwardPath:
    """channels_last + bf16 autocast: what `precision='bf16'` runs (emulated where the CPU has
    no avx512_bf16/amx_bf16)."""
    m = copy.deepcopy(bb).eval().to(memory_format=CL)

    def fn(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return m(_cl(x)).float()
    return ForwardPath("bf16 autocast + channels_last", fn)


def matmul_rate(dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """FLOP/s of an n×n matmul in `dtype` with torch's current threads."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0)


# ------------------------------------------------------------------ bf16 numerics, fast (section e)

def emulate_bf16(model: nn.Module) -> nn.Module:
    """Give bf16 autocast native-like numerics at fp32 speed, for CPUs whose bf16 kernels are
    emulated (depthwise convolutions then take seconds per image): under autocast every Conv2d
    and Linear computes in fp32 on bf16-rounded input, weight and bias (products of bf16 values
    are exact in fp32 and the sum accumulates in fp32, as native bf16 kernels do) and returns its
    output rounded to bf16; every other op runs under torch's CPU autocast as it would natively.
    The state_dict (and so the weights checksum) is unchanged."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.forward = _bf16_forward.__get__(module)
    return model


def _round(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.bfloat16).float()


def _bf16_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_autocast_enabled("cpu"):
        return type(self).forward(self, x)
    with torch.autocast("cpu", enabled=False):
        w, b, x = _round(self.weight), _round(self.bias), _round(x)
        if isinstance(self, nn.Conv2d):
            out = self._conv_forward(x, w, b)
        else:
            out = torch.nn.functional.linear(x, w, b)
    return out.to(torch.bfloat16)
