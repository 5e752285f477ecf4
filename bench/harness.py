"""Shared pieces of the benchmark suite: the machine, timing, other processes' load, memory of a
process tree, and the RESULTS.md writer (rewritten atomically after every section)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import timm
import torch

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
         "amx_int8", "avx_vnni")
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------- machine

def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine() -> dict:
    """What the figures were measured on."""
    info = Path("/proc/cpuinfo").read_text(errors="replace")
    model = next((l.partition(":")[2].strip() for l in info.splitlines()
                  if l.startswith("model name")), platform.processor() or "unknown")
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        gcc = "none"
    flags = cpu_flags()
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            "flags": {f: f in flags for f in FLAGS}, "memory_gib": round(mem / 2**20, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "gcc": gcc,
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def machine_md(m: dict) -> str:
    have = ", ".join(f for f, on in m["flags"].items() if on) or "none"
    lack = ", ".join(f for f, on in m["flags"].items() if not on) or "none"
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}. "
            f"CPU flags present: {have}; absent: {lack} (torch CPU capability "
            f"{m['torch_cpu_capability']}; native bf16: {'yes' if native_bf16() else 'no'}).\n"
            f"Software: torch {m['torch']}, timm {m['timm']}, numpy {m['numpy']}, Pillow "
            f"{m['pillow']}, Python {m['python']}, {m['gcc']}; torch threads {m['torch_threads']}. "
            f"Date: {m['date']}.")


# ---------------------------------------------------------------------------------------- timing

def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call, timed round by round so another process's load hits all
    alike (the first, untimed round is the warm-up)."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(timed(fn)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def median(values) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------ others' CPU load

def _tree(root: int) -> set[int]:
    """`root` and all its descendants, from /proc/*/stat."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree and p not in tree}
        tree |= new
        grew = bool(new)
    return tree


def _cpu_ticks() -> dict[tuple[int, str], int]:
    """(pid, start time) -> user+system ticks, for every process outside this bench's tree."""
    mine = _tree(os.getpid())
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in mine:
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
                out[(int(entry.name), fields[19])] = int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                pass
    return out


class OtherLoad:
    """CPU used by processes outside this bench while a section ran, in cores (0 = alone).
    Sampled every second, so a process that ends meanwhile still counts (up to its last second)."""

    def __init__(self, every_s: float = 1.0):
        self.t0, self.last, self.ticks = time.monotonic(), _cpu_ticks(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now = _cpu_ticks()
        self.ticks += sum(t - self.last.get(k, 0) for k, t in now.items())
        self.last = now

    def _loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self._sample()

    def cores(self) -> float:
        """Stop sampling; the average load of other processes since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.ticks / TICK / max(time.monotonic() - self.t0, 1e-9)


# ------------------------------------------------------------------------- memory of a process tree

def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


class TreeMemory:
    """Samples a process and its children (DataLoader workers) every `every_s` seconds: peak of
    the summed RssAnon, peak of the summed VmRSS, and the root's VmHWM."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s = pid, every_s
        self.peak_anon = self.peak_rss = self.hwm = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            tree = _tree(self.pid)
            stats = [_status(p) for p in tree]
            self.peak_anon = max(self.peak_anon, sum(s.get("RssAnon", 0) for s in stats))
            self.peak_rss = max(self.peak_rss, sum(s.get("VmRSS", 0) for s in stats))
            self.hwm = max(self.hwm, _status(self.pid).get("VmHWM", 0))
            self.peak_procs = max(self.peak_procs, len(tree))
            self._stop.wait(self.every_s)

    def stop(self) -> "TreeMemory":
        self._stop.set()
        self._thread.join()
        return self


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------- RESULTS.md

class Results:
    """RESULTS.md (and the raw numbers as results.json beside the bench output), rewritten
    atomically after every section so a killed run keeps what it measured."""

    def __init__(self, path: Path, raw_path: Path, header: str, titles: dict[str, str]):
        self.path, self.raw_path, self.header, self.titles = path, raw_path, header, titles
        self.text: dict[str, str] = {}
        self.raw: dict[str, object] = {}

    def put(self, key: str, text: str, raw: object = None) -> None:
        self.text[key], self.raw[key] = text.strip(), raw
        self.write()

    def write(self) -> None:
        parts = [self.header.strip()]
        for key, title in self.titles.items():
            body = self.text.get(key, "_not measured in this run_")
            parts.append(f"## ({key}) {title}\n\n{body}")
        _atomic(self.path, "\n\n".join(parts) + "\n")
        _atomic(self.raw_path, json.dumps(self.raw, indent=1, default=str) + "\n")


def _atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats keep what the caller formatted."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
