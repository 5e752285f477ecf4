"""The machine a job runs on: its device, the precision of each stage, CPU flags, the allocator.

Every decision about hardware is made here, once per job, and carried (`Runtime`) rather than
re-read from the options by each stage:

- the device: cuda when available (under torchrun, this rank's GPU), else cpu;
- the precision of each stage, from the one `precision` option ('auto' | 'fp32' | 'bf16'):

  ========== ==================================================================================
  stage      rule
  ========== ==================================================================================
  extract    'auto': bf16 where the device runs it natively (CUDA with bf16, a CPU with
             avx512_bf16 or amx_bf16), else fp32. Part of the feature cache key.
  heads      as extract, from its own option (`head_precision`, default 'fp32'): bf16 matmuls
             in head training change the members' losses in the third digit, and with them
             which decay and epoch are chosen (bench/RESULTS.md (f)); opt in where it pays.
  finetune   'auto': as extract, except on a CPU without AMX, where the backward pass ran
             slower in bf16 than in fp32 (23.9 vs 28.7 img/s, bench/RESULTS.md (g)).
  ========== ==================================================================================

  An explicit 'bf16' on hardware without native bf16 is an error, not a slow emulation;
- the CPU's flags (recorded with every run and benchmark) and the C allocator's settings.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .errors import HeadbenchError, unknown

PRECISIONS = ("auto", "fp32", "bf16")
STAGES = ("extract", "heads", "finetune")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (empty where there is none: no native bf16 is assumed)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return frozenset(flags)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on: platform, CPU model and flags, threads, GPU, versions."""
    import timm  # only for its version; timm imports much of torch's ecosystem
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(platform=platform.platform(), cpu=cpu_name(), cpu_flags=flags,
                cores=torch.get_num_threads(), gpu=gpu, python=platform.python_version(),
                torch=torch.__version__, timm=timm.__version__)


@contextlib.contextmanager
def load_elsewhere():
    """{'other_cores': x} once the block ends: the CPU cores other processes kept busy while it
    ran (the machine's busy time less this process's, per second; 0: alone), so that a timing
    says whether it was taken under load; {} where the OS does not say (no /proc/stat)."""
    out: dict[str, float] = {}
    busy, own, started = _busy_seconds(), _own_seconds(), time.monotonic()
    yield out
    if busy is not None:
        elsewhere = (_busy_seconds() - busy) - (_own_seconds() - own)
        out["other_cores"] = max(0.0, elsewhere / max(time.monotonic() - started, 1e-9))


def _busy_seconds() -> float | None:
    """CPU seconds every core has been busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def memory_bytes() -> int:
    """This machine's physical memory; 0 where the OS does not say (no memory checks then)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Let glibc keep freed memory for reuse (large-block threshold 256 MiB, trim at 1 GiB).

    torch's CPU temporaries of a few MB are otherwise mapped and page-faulted anew by every op:
    training GeM on cached maps ran 3× faster with this on a 2-core EPYC (bench/RESULTS.md).
    Called by training and extraction; a no-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 256 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means cuda when available (under torchrun, this rank's
    GPU), else cpu. An unknown name or cuda without CUDA is one line."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        several = distributed.launched() > 1
        return torch.device("cuda", distributed.local_rank()) if several else torch.device("cuda")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise HeadbenchError(f"unknown device '{device}': use cpu, cuda or cuda:N",
                             param="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HeadbenchError(f"device '{device}' asked for but CUDA is not available: use cpu",
                             param="device")
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (emulated bf16 is slower than fp32: not counted)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(requested: str, device: str | torch.device, stage: str = "extract") -> str:
    """The precision `stage` computes in on `device`: 'fp32' or 'bf16' (the table above)."""
    device = torch.device(device)
    option = "head_precision" if stage == "heads" else "precision"  # the option that asked
    if requested not in PRECISIONS:
        raise unknown("precision", str(requested), PRECISIONS, param=option)
    if stage not in STAGES:
        raise unknown("stage", str(stage), STAGES)
    if requested == "fp32":
        return "fp32"
    native = bf16_native(device)
    if requested == "bf16" and not native:
        raise HeadbenchError(f"precision 'bf16' is not supported natively on {device.type} "
                             "(needs a CUDA GPU with bf16 or a CPU with avx512_bf16/amx_bf16): "
                             "use 'fp32' or 'auto'", param=option)
    if requested == "auto" and stage == "finetune" and device.type == "cpu":
        native = "amx_bf16" in cpu_flags()
    return "bf16" if native else "fp32"


@dataclass(frozen=True)
class Runtime:
    """A job's device and the precision of each of its stages, decided once (`Runtime.resolve`)
    and passed to every stage.

    Example:
        >>> rt = Runtime.resolve("fp32", "cpu")
        >>> rt.device.type, rt.extract, rt.heads, rt.finetune
        ('cpu', 'fp32', 'fp32', 'fp32')
    """
    device: torch.device
    extract: str
    heads: str
    finetune: str

    @classmethod
    def resolve(cls, precision: str = "auto", device: str | torch.device | None = None,
                head_precision: str = "fp32") -> "Runtime":
        """`precision` rules extraction and fine-tuning; head training has its own option."""
        device = resolve_device(device)
        return cls(device, resolve_precision(precision, device, "extract"),
                   resolve_precision(head_precision, device, "heads"),
                   resolve_precision(precision, device, "finetune"))

    def autocast_dtype(self, stage: str) -> torch.dtype | None:
        """bf16 when `stage` computes in bf16, else None (no autocast)."""
        return torch.bfloat16 if getattr(self, stage) == "bf16" else None
