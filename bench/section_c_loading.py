"""(c) Data loading (decode + resize through the DataLoader) vs extraction.

    python bench/section_c_loading.py [--quick] [--out DIR] [--data DIR] [--input-size 64]
                                      [--results FILE]

The loader alone and `features.extract` end to end each run in a fresh process: forking this
large one would make worker start-up look like decoding, and OMP_WAIT_POLICY is read at process
start. Run after (b) in the same run, the extraction rate at 224 px is (b)'s figure.
"""
from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import extract_paths as P
import harness as H
from headbench import backbones, data, features
from headbench.images import ImageDataset, collate, default_workers
from headbench.runtime import resolve_precision
from headbench.synthetic import make_shapes_dataset

KEY, TITLE = "c", "Data loading vs extraction"
ESTIMATE_S = {"quick": 60, "full": 320}  # rough seconds on a 2-core AVX2 CPU
E2E = [  # (torch threads, DataLoader workers, OMP_WAIT_POLICY) of `features.extract`
    (2, 2, None), (2, 2, "PASSIVE"), (1, 2, None), (2, 1, None), (2, 0, None)]


def loader_rate(paths: list[Path], size: int | None, workers: int) -> dict:
    """decode + resize + normalise through the DataLoader headbench builds, in a fresh process:
    img/s after the first batch, and the seconds until that batch."""
    return H.in_child(__file__, dict(kind="loader", paths=[str(p) for p in paths], size=size,
                                     workers=workers), key=None)


def loader_child(spec: dict) -> dict:
    paths = [Path(p) for p in spec["paths"]]
    for p in paths:  # warm the page cache: decoding is measured, not the disk
        p.read_bytes()
    config = backbones.create_backbone("efficientnet_lite0", "embedded", spec["size"]).data_config
    ds = ImageDataset(paths, config, draft=True)
    loader = DataLoader(ds, batch_size=32, num_workers=spec["workers"], collate_fn=collate)
    t0, n, first = time.perf_counter(), 0, None
    for images, good, bad, _ in loader:
        if first is None:
            first = time.perf_counter()
        else:
            n += len(good) + len(bad)
    return {"img_s": n / (time.perf_counter() - first), "startup_s": first - t0}


def compute_rate(bb: backbones.Backbone, batch: int = 32, rounds: int = 3) -> float:
    size = bb.data_config["input_size"][1:]
    x = torch.randn(batch, 3, *size)
    path = P.headbench(bb, resolve_precision("auto", H.CPU, "extract"))
    return batch / H.interleaved({"x": lambda: path.fn(x)}, rounds)["x"]


def e2e_rate(paths: list[Path], size: int | None, work: Path, threads: int, workers: int,
             omp_wait: str | None) -> float:
    """img/s of `features.extract` (decode, forward, chunk commits) from a cold cache."""
    spec = dict(kind="e2e", paths=[str(p) for p in paths], size=size,
                cache=str(work / "e2e-cache"), threads=threads, workers=workers)
    env = dict(os.environ)
    if omp_wait:
        env["OMP_WAIT_POLICY"] = omp_wait
    return H.in_child(__file__, spec, env)


def e2e_child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    bb = backbones.create_backbone("efficientnet_lite0", "embedded", spec["size"])
    paths = [Path(p) for p in spec["paths"]]
    digests = [data.file_digest(p) for p in paths]
    shutil.rmtree(spec["cache"], ignore_errors=True)
    s, fs = H.timed(lambda: features.extract(bb, paths, digests, cache_dir=spec["cache"],
                                             workers=spec["workers"]))
    shutil.rmtree(spec["cache"], ignore_errors=True)
    return {"img_s": fs.n_extracted / s}


CHILDREN = {"loader": loader_child, "e2e": e2e_child}


def profile_loader(paths: list[Path], data_config: dict, n: int = 60) -> str:
    """Where one decoding process spends its time (cProfile, top functions by own time)."""
    ds = ImageDataset(paths[:n], data_config, draft=True)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(len(ds)):
        ds[i]
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(),
                                                          key=lambda kv: -kv[1][2])[:8]:
        where = f"{Path(file).name}:{line} {func}" if line else func
        rows.append([f"`{where}`", H.fmt(1000 * tt / len(ds), 2), H.fmt(1000 * ct / len(ds), 2),
                     f"{100 * tt / total:.0f} %"])
    per_image = 1000 * total / len(ds)
    return (f"{per_image:.1f} ms per image in one process ({1000 / per_image:.0f} img/s per "
            "decoding process, before the DataLoader's inter-process transfer):\n\n"
            + H.table(["function", "own ms/img", "cumulative ms/img", "share"], rows))


def run(ctx: H.Ctx) -> tuple[str, dict]:
    workers = default_workers()
    work = ctx.fresh("c")
    n_png = 500 if ctx.quick else 1000
    pngs = make_shapes_dataset(ctx.out / "datasets" / f"shapes32-{n_png}", per_class=n_png // 6,
                               image_size=32)
    photos = ctx.subset() if ctx.quick else ctx.data
    sets = {f"{ctx.data.name} (large JPEGs), 224 px": (photos, None),
            "generated 32 px PNGs, 224 px": (pngs, None),
            f"generated 32 px PNGs, {ctx.input_size} px (section d's size)": (pngs, ctx.input_size)}
    combos = E2E[:3] if ctx.quick else E2E
    rates = dict(ctx.shared.get("extract_rates", {}))
    rows, e2e_rows, raw, profiles = [], [], {}, []
    for label, (folder, size) in sets.items():
        paths = H.image_paths(folder)
        bb = backbones.create_backbone("efficientnet_lite0", "embedded", size)
        H.log(f"  {label}: loader, compute, extract end to end")
        loaded = loader_rate(paths, size, workers)
        load = loaded["img_s"]
        comp = (rates.get("efficientnet_lite0") if size is None else None) or compute_rate(bb)
        e2e = {c: e2e_rate(paths, size, work, *c) for c in combos}
        raw[label] = dict(images=len(paths), loader=loaded, compute_img_s=comp,
                          ratio=load / comp, e2e_img_s={str(c): v for c, v in e2e.items()})
        rows.append([label, len(paths), H.fmt(load), H.fmt(loaded["startup_s"], 2), H.fmt(comp),
                     f"{load / comp:.1f}×"])
        e2e_rows.append([label] + [H.fmt(e2e[c]) for c in combos])
        if load / comp < 2:
            profiles.append(f"Profile of one decoding process, {label} (cProfile, "
                            f"{min(60, len(paths))} images):\n\n"
                            + profile_loader(paths, bb.data_config))
    if "resnet50" in rates:
        raw["resnet50_compute_img_s"] = rates["resnet50"]
    return report(workers, combos, rows, e2e_rows, profiles, rates.get("resnet50")), raw


def report(workers: int, combos: list, rows: list, e2e_rows: list, profiles: list[str],
           resnet50: float | None) -> str:
    threads = torch.get_num_threads()
    text = (f"Decode + resize + normalise of `images.ImageDataset` through the DataLoader with "
            f"`images.default_workers()` = {workers} workers alone (a fresh process, page cache "
            "warm, rate after the first batch), vs "
            f"headbench's extractor on efficientnet_lite0 alone (compute only, {threads} "
            "threads; at 224 px the figure of (b) where it ran). Target: loader ≥ 2× extraction.\n\n"
            + H.table(["images", "files", f"loader img/s ({workers} workers)",
                       "s to the first batch", "extraction img/s (compute)",
                       "loader / extraction"], rows)
            + ("\n\n" + "\n\n".join(profiles) if profiles else "")
            + "\n\nBoth share the same cores during `features.extract`. End to end from a cold "
              "cache (each in a fresh process; img/s), by torch threads × DataLoader workers "
              "(library default: "
              f"{threads} threads, {workers} workers; OMP_WAIT_POLICY=PASSIVE makes "
              "idle OpenMP threads sleep instead of spinning on cores the workers need):\n\n"
            + H.table(["images"] + [f"{t} thr, {w} workers" + (f", OMP {o.lower()}" if o else "")
                                    for t, w, o in combos], e2e_rows))
    if resnet50 is not None:
        text += (f"\n\nresnet50 extracts at {H.fmt(resnet50)} img/s (compute): the loader "
                 "is further ahead there.")
    return text


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
