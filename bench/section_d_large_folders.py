"""(d) Memory and time linearity on 5k / 20k / 100k generated images (`compare` in a subprocess,
process tree sampled every 0.1 s), cache bytes per image, full maps vs pooled cache.

    python bench/section_d_large_folders.py [--quick] [--out DIR] [--input-size 64]
                                            [--results FILE]

Generated image folders are kept under <out>/datasets and reused.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness as H
from headbench import backbones
from headbench.synthetic import make_shapes_dataset

KEY, TITLE = "d", "Memory and time on large generated folders"
D_IMG_S = 250.0  # compare wall per image at 64 px (extract + train), idle 2-core EPYC


def d_plan(quick: bool) -> list[tuple[int, int]]:
    """(images, repeats) of section (d); `--heads gap` runs once more below 100k."""
    return [(500, 1), (2000, 1)] if quick else [(5000, 3), (20_000, 3), (100_000, 1)]


def d_seconds(quick: bool, img_s: float) -> float:
    runs = [(n, r + (n < 100_000)) for n, r in d_plan(quick)]
    return sum(n * k / img_s + 12 * k for n, k in runs)


ESTIMATE_S = {"quick": d_seconds(True, D_IMG_S), "full": d_seconds(False, D_IMG_S)}


def compare_subprocess(folder: Path, heads: str, work: Path, input_size: int) -> dict:
    """`python -m headbench compare` from a cold cache, its process tree sampled every 0.1 s."""
    cache, out = work / "cache", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [sys.executable, "-m", "headbench", "compare", str(folder), "--heads", heads,
           "--seeds", "1", "--quiet", "--no-report", "--cache-dir", str(cache), "--out", str(out),
           "--input-size", str(input_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mem = H.TreeMemory(proc.pid)
    log = proc.communicate()[0]
    wall = time.perf_counter() - t0
    mem.stop()
    if proc.returncode:
        raise RuntimeError(f"compare exited {proc.returncode}: {log[-2000:]}")
    results = json.loads(next(out.glob("runs/*/results.json")).read_text())
    cache_bytes = H.dir_bytes(cache)
    shutil.rmtree(work, ignore_errors=True)
    return dict(wall_s=wall, peak_anon=mem.peak_anon, peak_rss=mem.peak_rss, vm_hwm=mem.hwm,
                procs=mem.peak_procs, cache_bytes=cache_bytes, timing=results["timing"])


def repeats(folder: Path, images: int, heads: str, reps: int, ctx: H.Ctx) -> dict:
    """`reps` cold runs of one folder and head list, and their medians."""
    runs = []
    for r in range(reps):
        H.log(f"  {images:,} images, --heads {heads}, repeat {r + 1}/{reps}")
        runs.append(compare_subprocess(folder, heads, ctx.out / "work" / "d", ctx.input_size))
        t = runs[-1]["timing"]
        H.log(f"    extract {t['extract_s']:.1f} s, train {t['train_s']:.1f} s, total "
              f"{t['total_s']:.1f} s, peak anon {runs[-1]['peak_anon'] / 2**30:.2f} GiB")
    med = {k: H.median([x[k] for x in runs]) for k in
           ("wall_s", "peak_anon", "peak_rss", "vm_hwm", "cache_bytes")}
    for k in ("extract_s", "train_s", "total_s"):
        med[k] = H.median([x["timing"][k] for x in runs])
    return dict(images=images, heads=heads, runs=runs, median=med)


def row(v: dict) -> list:
    med, runs, images = v["median"], v["runs"], v["images"]
    k = 1000 / images
    gib = 2**30
    return [f"{images:,}", v["heads"], f"{len(runs)}", H.fmt(med["wall_s"]),
            H.fmt(med["wall_s"] * k, 2), H.fmt(med["extract_s"] * k, 2),
            H.fmt(med["train_s"] * k, 2), f"{med['peak_anon'] / gib:.2f}",
            f"{med['peak_rss'] / gib:.2f}", f"{med['vm_hwm'] / gib:.2f}",
            f"{med['cache_bytes'] / images:,.0f}",
            f"{min(x['peak_anon'] for x in runs) / gib:.2f}–"
            f"{max(x['peak_anon'] for x in runs) / gib:.2f}"]


def run(ctx: H.Ctx) -> tuple[str, dict]:
    plan = d_plan(ctx.quick)
    H.log(f"  estimated {d_seconds(ctx.quick, D_IMG_S) / 60:.0f} min")
    c, h, w = backbones.create_backbone("efficientnet_lite0", "embedded",
                                        ctx.input_size).feature_shape()
    raw = {}
    for n, reps in plan:
        per_class = math.ceil(n / 6)
        folder = ctx.out / "datasets" / f"shapes32-{per_class * 6}"
        H.log(f"  {per_class * 6:,} images: generating (once, kept in {folder.parent})")
        make_shapes_dataset(folder, per_class=per_class, image_size=32)
        images = per_class * 6
        for heads, k in [("gap,flatten", reps)] + ([("gap", 1)] if n < 100_000 else []):
            raw[f"{images}:{heads}"] = repeats(folder, images, heads, k, ctx)
    text = report(raw, max(plan)[0], ctx.input_size, (c, h, w))
    return text, {"input_size": ctx.input_size, "map": [c, h, w], **raw}


def report(raw: dict, largest: int, size: int, shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    both = [v for v in raw.values() if v["heads"] != "gap"]
    full = [v["median"]["wall_s"] / v["images"] * 1000 for v in both]
    work_only = [(v["median"]["extract_s"] + v["median"]["train_s"]) / v["images"] * 1000
                 for v in both]
    big = [v for v in both if v["images"] >= largest][0]
    ratio = {n: raw[f"{n}:gap,flatten"]["median"]["cache_bytes"]
             / max(1, raw[f"{n}:gap"]["median"]["cache_bytes"])
             for n in {v["images"] for v in raw.values() if v["heads"] == "gap"}}
    return (f"`python -m headbench compare DIR --heads gap,flatten --seeds 1 --quiet --no-report "
            f"--cache-dir <fresh> --out <dir> --input-size {size}` in a subprocess, cold cache, on "
            f"folders of generated 32 px shapes (`make_shapes_dataset`, 6 classes) read at "
            f"**{size} px** (efficientnet_lite0 map {c}×{h}×{w}; 224 px would make 100k images "
            "take ~40 min of extraction alone here). The process and its DataLoader workers are "
            "sampled every 0.1 s from /proc/<pid>/status: peak of the summed RssAnon (forked "
            "workers' shared copy-on-write pages count once per process, so this over-counts), "
            "peak of the summed VmRSS (includes the page cache of memory-mapped features), the "
            "compare process's VmHWM. Times from the run's results.json (`extract_s`, `train_s`); "
            "wall includes interpreter start, backbone load and latency measurement. Medians of "
            "the repeats; `--heads gap` (pooled cache where the library stores one) once per "
            "size below 100,000.\n\n"
            + H.table(["images", "heads", "runs", "wall s", "wall s / 1k img", "extract s / 1k",
                       "train s / 1k", "peak anon GiB", "peak tree RSS GiB", "VmHWM GiB",
                       "cache bytes / img", "peak anon range GiB"], [row(v) for v in raw.values()])
            + f"\n\nLinearity (gap,flatten): wall time per 1,000 images varies "
              f"{100 * (max(full) / min(full) - 1):.0f} % across sizes (extract + train only: "
              f"{100 * (max(work_only) / min(work_only) - 1):.0f} %); target within 15 %. Peak "
              f"anonymous memory at {big['images']:,} images: "
              f"{big['median']['peak_anon'] / 2**30:.2f} GiB (target < 3 GiB at 100,000). "
              "Cache bytes per image, gap,flatten ÷ gap only: "
            + ", ".join(f"{ratio[n]:.1f}× at {n:,}" for n in sorted(ratio))
            + f" (the full map here is {h}×{w} = {h * w} positions, so a pooled cache would give "
              f"{h * w}×; at 224 px the map is 7×7 and the factor 49×: {c * 49 * 2:,} vs "
              f"{c * 2:,} bytes per image in float16).")


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
