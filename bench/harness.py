"""Shared pieces of the benchmark suite: the machine, timing, other processes' load, memory of a
process tree, the RESULTS.md writer (rewritten atomically after every section), what a section is
handed (`Ctx`: mode, folders, datasets, the default job) and the command line that runs sections
(`main`), used by bench/run.py and by every section module run alone."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import PIL
import torch

import headbench as hb
from headbench import backbones, features, progress, runtime, train
from headbench.images import ImageDataset
from headbench.runtime import cpu_flags, tune_allocator

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
         "amx_int8", "avx_vnni")
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------- machine

def native_bf16() -> bool:
    """This CPU's own answer, not `runtime.bf16_native`: section (e) patches that one."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine() -> dict:
    """What the figures were measured on: `runtime.machine()` (the CPU model, GPU, versions every
    headbench run records) with what a benchmark adds (memory, library versions, compiler, date)."""
    base = runtime.machine()
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        gcc = "none"
    flags = cpu_flags()
    return {"cpu": base["cpu"], "cores": len(os.sched_getaffinity(0)),
            "flags": {f: f in flags for f in FLAGS}, "memory_gib": round(mem / 2**20, 1),
            "gpu": base["gpu"] or "none", "torch": base["torch"], "timm": base["timm"],
            "numpy": np.__version__, "pillow": PIL.__version__, "python": base["python"],
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


# The start of a script that runs one `compare` in a fresh process from a cold cache:
# `python -c COMPARE_JOB + "print(...)" OUT CACHE FOLDER OPTIONS_JSON`; it leaves `run`, `wall`.
COMPARE_JOB = """
import json, shutil, sys, time
import headbench as hb
from headbench import progress
progress.set_quiet(True)
out, cache, folder, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
shutil.rmtree(out, ignore_errors=True); shutil.rmtree(cache, ignore_errors=True)
t0 = time.perf_counter()
run = hb.compare(folder, out=out, cache_dir=cache, **options)
wall = time.perf_counter() - t0
"""


def compare_in_child(script: str, work: Path, folder: Path, options: dict,
                     env: dict | None = None) -> dict:
    """Run `script` (COMPARE_JOB and a line printing JSON) in a fresh process, its run folder
    and an empty feature cache under `work`; the JSON it printed last."""
    done = subprocess.run([sys.executable, "-c", script, str(work / "out"), str(work / "cache"),
                           str(folder), json.dumps(options)],
                          env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# ------------------------------------------------------------------------------------- datasets

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
CPU = torch.device("cpu")
QUICK_JOB = dict(heads=["gap", "flatten"], seeds=2, epochs=10)  # --quick's smaller compare job


def image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def load_images(folder: Path, n: int, data_config: dict) -> torch.Tensor:
    """n decoded, transformed images spread over the folder (same files for every path), JPEGs
    decoded at full size."""
    paths = image_paths(folder)
    step = max(1, len(paths) // n)
    ds = ImageDataset(paths[::step][:n], data_config, draft=False)
    return torch.stack([x for x, _, reason in (ds[i] for i in range(len(ds))) if not reason])


def subset_folder(src: Path, dst: Path, per_class: int) -> Path:
    """A hard-linked copy of `src` with at most `per_class` images per class folder."""
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in sorted({p.parent for p in src.rglob("*") if p.is_file()}):
        files = sorted(p for p in folder.iterdir() if p.is_file())[:per_class]
        target = tmp / folder.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(f, target / f.name)
    os.replace(tmp, dst)
    return dst


# --------------------------------------------------------------------- what a section is handed

@dataclass
class Ctx:
    quick: bool
    out: Path
    data: Path
    input_size: int
    results: Results
    # what one section hands to a later one in the same run; a section run alone measures it
    shared: dict = field(default_factory=dict)

    def fresh(self, name: str) -> Path:
        path = self.out / "work" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def subset(self) -> Path:
        """The dataset cut to 30 images per class (hard links), kept under <out>/datasets."""
        return subset_folder(self.data, self.out / "datasets" / f"{self.data.name}-subset", 30)

    def job(self) -> tuple[Path, dict]:
        """Folder and `compare` options of the default job: the dataset with the library's
        defaults, or in --quick its subset with fewer heads, seeds and epochs."""
        return (self.subset(), dict(QUICK_JOB)) if self.quick else (self.data, {})


def default_job(ctx: Ctx, precision: str) -> tuple[float, hb.Run]:
    """(seconds, run) of the default compare, its feature cache kept in work/default-cache: (e)
    runs it in fp32 and bf16, and (f) trains on the cache the fp32 job left."""
    folder, options = ctx.job()
    work = ctx.out / "work" / f"default-{precision}"
    shutil.rmtree(work, ignore_errors=True)
    return timed(lambda: hb.compare(folder, precision=precision, cache_dir=ctx.out / "work" /
                                    "default-cache", out=work, **options))


def cached_features(run: hb.Run) -> tuple[dict, tuple]:
    """(train.Features, labels) of the train and val splits from a finished run's feature cache
    (nothing is extracted again), and the feature map's (C, H, W)."""
    bb = backbones.create_backbone(run.backbone.name, run.backbone.weights,
                                   run.options.input_size, timm_name=run.backbone.timm_name)
    root, out = Path(run.dataset.root), {}
    for role in ("train", "val"):
        split = run.dataset.splits[role]
        fs = features.extract(bb, [root / p for p in split.paths], split.digests,
                              precision=run.precision, cache_dir=run.options.cache_dir)
        assert fs.n_extracted == 0, f"the cache of {run.run_dir} should hold every image"
        out[role] = (train.Features(fs.subset(np.arange(len(fs))), torch.device("cpu")),
                     np.asarray(split.labels))
    return out, tuple(fs.meta.get("map_shape") or fs.shape)


def cold_default_run(ctx: Ctx) -> tuple[float, hb.Run]:
    """The fp32 default job from an empty cache (its timing is (f)'s extraction reference),
    handed on to later sections as `ctx.shared["default_run"]`."""
    shutil.rmtree(ctx.out / "work" / "default-cache", ignore_errors=True)
    seconds, run = default_job(ctx, "fp32")
    ctx.shared["default_run"] = run
    return seconds, run


# ------------------------------------------------------------------------- fresh processes

def in_child(script: str | Path, spec: dict, env: dict | None = None, key: str | None = "img_s"):
    """A measurement that needs a fresh process: `python <script> --child SPEC`, where the
    section module's CHILDREN[spec["kind"]] returns a dict, printed as JSON (or its `key`)."""
    done = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out if key is None else out[key]


def _child(sections: dict[str, ModuleType], spec: dict) -> None:
    progress.set_quiet(True)
    kinds = {k: fn for m in sections.values() for k, fn in getattr(m, "CHILDREN", {}).items()}
    print(json.dumps(kinds[spec["kind"]](spec)))


# --------------------------------------------------------------------------- the command line

def main(sections: dict[str, ModuleType], doc: str, suite: bool = False) -> None:
    """Run `sections` (key -> module with KEY, TITLE, ESTIMATE_S and `run(ctx) -> (text, raw)`)
    from the command line. `suite` is bench/run.py: --sections picks, and a full run of every
    section writes bench/RESULTS.md; else (a section alone, --quick, some sections)
    <out>/RESULTS.md unless --results is given."""
    if sys.argv[1:2] == ["--child"]:
        return _child(sections, json.loads(sys.argv[2]))
    args = _parse(sections, doc, suite)
    chosen = [s for s in args.sections if s in sections]
    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; pass --data FOLDER")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    complete = suite and not args.quick and chosen == list(sections)
    path = args.results or (ROOT / "bench" / "RESULTS.md" if complete else out / "RESULTS.md")
    progress.set_quiet(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # every headbench extraction and training tunes glibc's allocator for this process; doing it
    # first puts every in-process path (timm's default included) on the same footing
    tuned = tune_allocator()
    m = machine()
    header = _header(args, chosen, complete, suite, out.name, machine_md(m), tuned)
    results = Results(path, out / "results.json", header, {k: sections[k].TITLE for k in chosen})
    results.raw["machine"] = m
    ctx = Ctx(args.quick, out, args.data.resolve(), args.input_size, results)
    _run_sections({k: sections[k] for k in chosen}, ctx, path)


def _parse(sections: dict[str, ModuleType], doc: str, suite: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, ~5 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="work folder: generated datasets (kept), caches, raw results")
    if suite:
        parser.add_argument("--sections", default="".join(sections),
                            help="which sections, e.g. bc")
    parser.add_argument("--input-size", type=int, default=64,
                        help="input size of section (d) (default 64)")
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--results", type=Path, default=None,
                        help="RESULTS.md to write (default: bench/RESULTS.md for a full run of "
                             "every section, else <out>/RESULTS.md)")
    parser.set_defaults(sections="".join(sections))
    return parser.parse_args()


def _header(args, chosen: list[str], complete: bool, suite: bool, out_name: str,
            machine_text: str, tuned: bool) -> str:
    mode = "quick" if args.quick else "full"
    command = (f"python bench/{Path(sys.argv[0]).name}" + (" --quick" if args.quick else "")
               + ("" if not suite or complete or args.quick else f" --sections {''.join(chosen)}")
               + (f" --input-size {args.input_size}" if args.input_size != 64 else ""))
    return (f"# Benchmarks\n\nEvery figure is a ratio of two measurements taken in one run of "
            f"`{command}` ({mode} mode) on one machine; tests never assert a time. Reproduce: "
            f"`.venv/bin/python bench/run.py` (full, ~45 min here, writes this file) or "
            f"`--quick` (~5 min, small sizes, writes `bench/out/RESULTS.md`). Raw numbers: "
            f"`{out_name}/results.json` beside the work folder.\n\n{machine_text}"
            + ("\nThe suite runs with `runtime.tune_allocator()` on, as every headbench "
               "extraction and training does; in-process baselines share it." if tuned else ""))


def _run_sections(sections: dict[str, ModuleType], ctx: Ctx, path: Path) -> None:
    mode = "quick" if ctx.quick else "full"
    estimate = sum(m.ESTIMATE_S[mode] for m in sections.values())
    log(f"{mode} run of sections {''.join(sections)}: estimated {estimate / 60:.0f} min on a "
        f"2-core CPU; writing {path}")
    started = time.perf_counter()
    for key, module in sections.items():
        log(f"({key}) {module.TITLE}")
        load = OtherLoad()
        t0 = time.perf_counter()
        try:
            text, raw = module.run(ctx)
        except Exception as e:  # one broken section must not lose the others
            traceback.print_exc()
            text, raw = f"**failed**: `{type(e).__name__}: {e}`", {"error": traceback.format_exc()}
        spent, other = time.perf_counter() - t0, load.cores()
        text += (f"\n\n_Section took {spent:.0f} s; other processes used {other:.2f} cores on "
                 "average meanwhile" + (" — timings are disturbed_" if other > 0.2 else "_") + ".")
        ctx.results.put(key, text, {"seconds": spent, "other_cores": other, **(raw or {})})
        log(f"({key}) done in {spent:.0f} s (other processes: {other:.2f} cores)")
    log(f"all done in {(time.perf_counter() - started) / 60:.1f} min; wrote {path}")
