"""headbench's benchmark suite: every figure a ratio measured in one run on this machine.

    python bench/run.py [--quick] [--out DIR] [--sections abcdef] [--input-size 64]

Sections (issue 10, §4):
  (a) the whole `compare` job vs the naive per-head recipe (backbone recomputed every epoch)
  (b) extraction img/s: headbench's extractor vs timm's fp32 NCHW eager default, other forward
      paths (channels_last, BN folding, oneDNN, torch.jit, torch.compile, bf16, threads, batch
      sizes), logit agreement, fraction of the machine's measured matmul peak
  (c) data loading (decode + resize through the DataLoader) vs extraction
  (d) memory and time linearity on 5k / 20k / 100k generated images (`compare` in a subprocess,
      process tree sampled every 0.1 s), cache bytes per image, full maps vs pooled cache
  (e) bf16 vs fp32 features: test accuracy per head against the seed spread
  (f) stacked vs one-at-a-time head training on the default job's cached features
  (g) the default job with 4 cached augmented views per training image and the best head
      fine-tuned end to end: the change per head, fine-tuned vs frozen, fine-tuning img/s

The full run writes bench/RESULTS.md (and <out>/results.json with the raw numbers); --quick and
runs of some sections only write <out>/RESULTS.md unless --results is given. RESULTS.md is
rewritten after every section, so a killed run keeps what it measured. Generated image folders
are kept under <out>/datasets and reused. Nothing here asserts a time: targets are reported.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import harness as H
import extract_paths as P
import headbench as hb
from headbench import backbones, data, features, progress, train
from headbench.heads import create_head
from headbench.model import count_flops
from headbench.synthetic import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
CPU = torch.device("cpu")
TITLES = {
    "a": "The whole job vs the naive per-head recipe",
    "b": "Extraction: forward paths, vs timm's default and vs the machine's peak",
    "c": "Data loading vs extraction",
    "d": "Memory and time on large generated folders",
    "e": "bf16 vs fp32 features: accuracy effect",
    "f": "Stacked vs one-at-a-time head training",
    "g": "Cached augmented views and fine-tuning (issue 11)",
    "h": "ONNX: the best head on four CPU engines, extraction through onnxruntime (issue 12)",
}
# rough seconds per section on a 2-core AVX2 CPU, for the estimate printed at the start
ESTIMATE_S = {"quick": dict(a=60, b=45, c=60, e=60, f=20, g=120, h=90),  # (d): d_seconds()
              "full": dict(a=200, b=620, c=320, e=110, f=90, g=180, h=240)}


@dataclass
class Ctx:
    quick: bool
    out: Path
    data: Path
    input_size: int
    results: H.Results
    shared: dict = field(default_factory=dict)  # what one section hands to a later one

    def fresh(self, name: str) -> Path:
        path = self.out / "work" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def load_images(folder: Path, n: int, data_config: dict) -> torch.Tensor:
    """n decoded, transformed images spread over the folder (same files for every path)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(paths) // n)
    ds = features.ImageFiles(paths[::step][:n], data.make_transform(data_config))
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


# ------------------------------------------------------------------------------------------ (a)

def naive_epoch_s(run: hb.Run, backbone: torch.nn.Module, head_name: str,
                  max_batches: int | None) -> tuple[float, float]:
    """(seconds per epoch, seconds measured) of the naive recipe for one head: the frozen
    backbone (fp32 NCHW eager) recomputed on every train and val image. With `max_batches`,
    each split's per-image time over its first batches is scaled to the whole split."""
    root = Path(run.dataset.root)
    c, h, w = backbone.feature_shape()
    head = create_head(head_name, c, len(run.classes), (h, w))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    transform = data.make_transform(backbone.data_config)
    epoch_s = measured = 0.0
    for role in ("train", "val"):
        split = run.dataset.splits[role]
        labels = torch.from_numpy(np.asarray(split.labels))
        loader = DataLoader(features.ImageFiles([root / p for p in split.paths], transform),
                            batch_size=32, shuffle=role == "train", num_workers=2)
        head.train(role == "train")
        n, t0 = 0, time.perf_counter()
        for i, (x, idx, _reason) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            with torch.set_grad_enabled(role == "train"):
                loss = torch.nn.functional.cross_entropy(head(backbone(x)), labels[idx])
            if role == "train":
                opt.zero_grad()
                loss.backward()
                opt.step()
            n += len(idx)
        spent = time.perf_counter() - t0
        measured += spent
        epoch_s += spent / n * len(split)
    return epoch_s, measured


def section_a(ctx: Ctx) -> tuple[str, dict]:
    """The whole compare job vs the naive per-head recipe."""
    quick = ctx.quick
    name, weights = ("efficientnet_lite0", "embedded") if quick else ("resnet50", "none")
    heads = ["gap", "flatten"] if quick else ["gap", "flatten", "avgpool", "gmp", "gem"]
    epochs, max_batches = 20, (2 if quick else None)
    work = ctx.fresh("a")
    ours, run = H.timed(lambda: hb.compare(
        ctx.data, backbone=name, weights=weights, heads=heads, seeds=1, epochs=epochs,
        weight_decays=[1e-4], patience=0, cache_dir=work / "cache", out=work))
    naive_bb = backbones.create_backbone(name, weights)  # fp32, NCHW, eager: timm's default
    for p in naive_bb.parameters():
        p.requires_grad_(False)
    per_epoch, measured = {}, 0.0
    for h in heads:
        per_epoch[h], spent = naive_epoch_s(run, naive_bb, h, max_batches)
        measured += spent
    naive = sum(per_epoch.values()) * epochs
    n = {r: len(run.dataset.splits[r]) for r in ("train", "val", "test")}
    t = run.timing
    how = ("one full epoch per head, scaled to the epochs" if max_batches is None else
           f"the first {max_batches} batches of each split per head, scaled per image to the "
           "whole split and the epochs")
    rows = [["headbench compare, cold cache (scan, extract, train, evaluate, latency, files, "
             f"report); of which extraction {fmt(t.extract_s)} s, head training {fmt(t.train_s)} s",
             fmt(ours)]]
    rows += [[f"naive, {h}: {s:.1f} s/epoch × {epochs}", fmt(s * epochs)] for h, s in per_epoch.items()]
    rows.append([f"naive total ({measured:.1f} s measured: {how})", fmt(naive)])
    text = (f"{len(heads)} heads ({', '.join(heads)}) × {epochs} epochs, {name} (`--weights "
            f"{weights}`{': weights do not change the timing' if weights == 'none' else ''}), "
            f"`{ctx.data.name}` ({n['train']} train, {n['val']} val, {n['test']} test images), "
            "cold feature cache. headbench runs one seed and one weight decay without early "
            "stopping, so both sides train the same heads for the same epochs. The naive recipe is "
            "one model per head with the frozen backbone (timm's fp32 NCHW eager default) "
            "recomputed on every train and val image every epoch; every naive epoch does the same "
            "work, so it is timed on part of the work and scaled.\n\n"
            + H.table(["recipe", "seconds"], rows)
            + f"\n\n**headbench is {naive / ours:.1f}× faster** than the naive recipe.")
    raw = dict(backbone=name, heads=heads, epochs=epochs, headbench_s=ours, naive_s=naive,
               naive_measured_s=measured, naive_epoch_s=per_epoch, speedup=naive / ours,
               timing=vars(t), images=n)
    return text, raw


# ------------------------------------------------------------------------------------------ (b)

def classifier_for(bb: backbones.Backbone) -> torch.nn.Linear:
    """ImageNet classifier on the pooled map: the embedded one for efficientnet_lite0, a seeded
    random one otherwise (logit agreement then checks arithmetic, not meaning)."""
    clf = torch.nn.Linear(bb.num_features, 1000)
    if bb.weights == "embedded":
        with torch.device("meta"):
            full = backbones._timm_model(bb.timm_name, num_classes=1000)
        state = backbones._embedded_state_dict(full)
        clf.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clf.reset_parameters()
    return clf.eval()


def agreement(fn, x: torch.Tensor, batch: int, clf, ref_logits: torch.Tensor) -> dict:
    with torch.inference_mode():
        feats = torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])
        logits = clf(feats.mean((2, 3)))
    n = len(logits)
    ref = ref_logits[:n]
    return {"max_abs_logit_diff": (logits - ref).abs().max().item(),
            "logit_scale": ref.abs().max().item(),
            "top1_agree": (logits.argmax(1) == ref.argmax(1)).float().mean().item(), "n": n}


def extraction_paths(name: str, weights: str, ctx: Ctx, peak: dict) -> dict:
    """Every forward path of one backbone: img/s at the main batch size, setup cost, logit
    agreement with timm's default; thread counts and batch sizes for the main paths."""
    quick = ctx.quick
    batch, rounds = (16, 2) if quick else (32, 3 if name == "efficientnet_lite0" else 2)
    bb = backbones.create_backbone(name, weights)
    images = load_images(ctx.data, batch, bb.data_config)
    x = images[:batch]
    flops = count_flops(bb, x[:1])
    clf = classifier_for(bb)
    precision = features.resolve_precision("auto", CPU)
    out = {"flops_per_image": flops, "batch": batch, "rounds": rounds, "paths": {}}
    paths = [P.timm_default(bb), P.headbench(bb, precision), P.channels_last(bb),
             P.onednn_off(bb), P.jit_frozen(bb, x)]
    if not quick:
        paths += [P.compiled(bb, x, freezing=False), P.compiled(bb, x, freezing=True)]
    ref = paths[0]
    with torch.inference_mode():
        ref_logits = clf(ref.fn(x).mean((2, 3)))
    H.log(f"  {name}: timing {len(paths)} paths, batch {batch}, {rounds} rounds")
    secs = H.interleaved({p.name: (lambda p=p: p.fn(x)) for p in paths}, rounds)
    for p in paths:
        rate = batch / secs[p.name]
        row = {"img_s": rate, "setup_s": p.setup_s, **agreement(p.fn, x, batch, clf, ref_logits),
               "fp32_peak_frac": flops * rate / peak["fp32"],
               "bf16_peak_frac": flops * rate / peak["bf16"]}
        row.update({k: v for k, v in p.extra.items() if k == "folded"})
        out["paths"][p.name] = row
    plain = in_child(dict(kind="forward", name=name, weights=weights, batch=batch,
                          rounds=rounds))
    out["paths"]["timm default, in a plain process (glibc allocator untouched)"] = {
        "img_s": plain, "setup_s": 0.0, "fp32_peak_frac": flops * plain / peak["fp32"],
        "bf16_peak_frac": flops * plain / peak["bf16"], "max_abs_logit_diff": 0.0,
        "logit_scale": out["paths"][ref.name]["logit_scale"], "top1_agree": 1.0, "n": batch}
    for p in paths:
        if p.name.startswith("torch.compile") and "freezing" not in p.name:
            H.log(f"  {name}: recompile on a ragged batch, warm compile")
            out["paths"][p.name].update(P.compile_extras(p, x))
    # bf16 autocast: emulated kernels take seconds per image here, so one image, one call
    bf16 = P.bf16_autocast(bb)
    if H.native_bf16() or not quick:
        small = batch if H.native_bf16() else 1
        H.log(f"  {name}: bf16 autocast at batch {small}"
              + ("" if H.native_bf16() else " (emulated on this CPU: slow)"))
        if H.native_bf16():
            s = H.interleaved({"bf16": lambda: bf16.fn(x)}, rounds)["bf16"]
            feats = bf16.fn(x)
        else:
            s, feats = H.timed(lambda: bf16.fn(x[:1]))  # includes oneDNN's first-call setup
        out["paths"][bf16.name] = {
            "img_s": small / s, "setup_s": 0.0, "batch": small,
            **agreement(lambda _: feats, x[:small], small, clf, ref_logits),
            "fp32_peak_frac": flops * small / s / peak["fp32"],
            "bf16_peak_frac": flops * small / s / peak["bf16"],
            "emulated": not H.native_bf16()}
    # threads and batch sizes for timm's default, headbench's extractor and the fastest
    # eager path (compiled ones would recompile per batch size)
    uncompiled = [p for p in paths if not p.name.startswith("torch.compile")]
    best = max(uncompiled[1:], key=lambda p: out["paths"][p.name]["img_s"])
    main = list({p.name: p for p in (paths[0], paths[1], best)}.values())
    threads = torch.get_num_threads()
    out["threads"] = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        s = H.interleaved({p.name: (lambda p=p: p.fn(x)) for p in main}, rounds)
        out["threads"][n_threads] = {k: batch / v for k, v in s.items()}
    torch.set_num_threads(threads)
    out["batch_sizes"] = {}
    sizes = (8, 16) if quick else (8, 16, 32, 64)
    big = torch.cat([images] * (-(-max(sizes) // len(images))))
    for bs in sizes:
        s = H.interleaved({p.name: (lambda p=p: p.fn(big[:bs])) for p in main[1:]}, rounds)
        out["batch_sizes"][bs] = {k: bs / v for k, v in s.items()}
    out["best_eager"] = best.name
    return out


def compile_payoff(res: dict, batch: int) -> list[list]:
    """Seconds to extract N images (compute only) eager vs compiled, cold and warm compile."""
    paths = res["paths"]
    eager = next(v for k, v in paths.items() if k.startswith("headbench"))
    comp = paths.get("torch.compile (inductor)")
    if not comp:
        return []
    rows = []
    for n in (400, 20_000):
        ragged = comp.get("recompile_ragged_s", 0.0) if n % batch else 0.0
        e = n / eager["img_s"]
        cold = comp["setup_s"] + ragged + n / comp["img_s"]
        warm = comp.get("warm_compile_s", math.nan) + ragged + n / comp["img_s"]
        rows.append([f"{n:,}", fmt(e), fmt(cold), fmt(warm),
                     "yes" if cold < e else ("warm only" if warm < e else "no")])
    return rows


def section_b(ctx: Ctx) -> tuple[str, dict]:
    H.log("  matmul rates (2048² fp32, 512² bf16)")
    peak = {"fp32": P.matmul_rate(torch.float32, 2048), "bf16": P.matmul_rate(torch.bfloat16, 512)}
    which = [("efficientnet_lite0", "embedded")] + ([] if ctx.quick else [("resnet50", "none")])
    results = {name: extraction_paths(name, w, ctx, peak) for name, w in which}
    ctx.shared["extract_rates"] = {n: next(v["img_s"] for k, v in r["paths"].items()
                                           if k.startswith("headbench")) for n, r in results.items()}
    relevant = "bf16" if H.native_bf16() else "fp32"
    parts = [f"Compute only: decoded 224 px images already in memory ({ctx.data.name}, spread over "
             f"the folder), {torch.get_num_threads()} torch threads, the paths timed round by round "
             "(medians; the first round is a warm-up). Matmul peak measured in this run with "
             f"{torch.get_num_threads()} threads: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s (2048²), "
             f"bf16 {peak['bf16'] / 1e9:.2f} GFLOP/s (512²). "
             + ("This CPU has native bf16, so the bf16 rate is the relevant peak." if relevant == "bf16"
                else "This CPU has no avx512_bf16/amx_bf16: bf16 is emulated (converted to fp32 "
                     "in software), so **the fp32 rate is the relevant peak** and the bf16 fraction "
                     "is shown only as the issue asks for it.")
             + " Logit agreement: the backbone's features → global average pool → an ImageNet "
             "classifier (the embedded one for efficientnet_lite0; a seeded random one for "
             "resnet50 with `--weights none`), compared with timm's default on the same images; "
             "headbench's extractor stores float16, so its difference includes that rounding."]
    for name, r in results.items():
        base = r["paths"]["timm default: fp32 NCHW eager"]["img_s"]
        hb_rate = ctx.shared["extract_rates"][name]
        rows = []
        for k, v in r["paths"].items():
            note = []
            if "folded" in v:
                note.append(f"{v['folded']} BN folded")
            if "recompile_ragged_s" in v:
                note.append(f"recompile for a ragged last batch {v['recompile_ragged_s']:.1f} s, "
                            f"warm compile {v['warm_compile_s']:.1f} s")
            if v.get("emulated"):
                note.append(f"emulated bf16, batch {v['batch']}")
            rows.append([k, fmt(v["setup_s"]), fmt(v["img_s"]), f"{v['img_s'] / base:.2f}×",
                         f"{v['img_s'] / hb_rate:.2f}×", f"{100 * v['fp32_peak_frac']:.1f} %",
                         f"{100 * v['bf16_peak_frac']:.0f} %",
                         f"{v['max_abs_logit_diff']:.2g} (of {v['logit_scale']:.3g})",
                         f"{100 * v['top1_agree']:.0f} % of {v['n']}", "; ".join(note)])
        parts.append(f"### {name}\n\n{r['flops_per_image'] / 1e9:.2f} GFLOP per image (224 px, "
                     f"`count_flops`), batch {r['batch']}, {r['rounds']} rounds.\n\n"
                     + H.table(["path", "setup s", "img/s", "vs timm default", "vs headbench",
                                "of fp32 peak", "of bf16 peak", "max abs logit diff",
                                "top-1 agreement", "note"], rows))
        names = list(r["threads"][max(r["threads"])])
        th = H.table(["path"] + [f"{t} thread{'s' * (t > 1)} img/s" for t in r["threads"]]
                     + ["scaling"],
                     [[k] + [fmt(r["threads"][t][k]) for t in r["threads"]]
                      + [f"{r['threads'][max(r['threads'])][k] / r['threads'][1][k]:.2f}×"]
                      for k in names])
        bs = H.table(["path"] + [f"batch {b} img/s" for b in r["batch_sizes"]],
                     [[k] + [fmt(r["batch_sizes"][b][k]) for b in r["batch_sizes"]]
                      for k in r["batch_sizes"][min(r["batch_sizes"])]])
        parts.append(f"Threads (batch {r['batch']}):\n\n{th}\n\nBatch sizes:\n\n{bs}")
        payoff = compile_payoff(r, r["batch"])
        if payoff:
            parts.append("Does torch.compile pay off? Seconds of backbone compute for N images "
                         "(compile included; a last batch of another size costs a recompile):\n\n"
                         + H.table(["images", "headbench extractor", "compiled, cold cache",
                                    "compiled, warm cache", "pays off"], payoff))
    return "\n\n".join(parts), {"peak_flops": peak, **results}


# ------------------------------------------------------------------------------------------ (c)

def loader_rate(paths: list[Path], size: int | None, workers: int) -> dict:
    """decode + resize + normalise through the DataLoader headbench builds, in a fresh process
    (forking this large one would make worker start-up look like decoding): img/s after the first
    batch, and the seconds until that batch."""
    return in_child(dict(kind="loader", paths=[str(p) for p in paths], size=size,
                         workers=workers), key=None)


def _loader_child(spec: dict) -> dict:
    paths = [Path(p) for p in spec["paths"]]
    for p in paths:  # warm the page cache: decoding is measured, not the disk
        p.read_bytes()
    config = backbones.create_backbone("efficientnet_lite0", "embedded", spec["size"]).data_config
    ds = features.ImageFiles(paths, data.make_transform(config), data.draft_size(config))
    loader = DataLoader(ds, batch_size=32, num_workers=spec["workers"], collate_fn=features._collate)
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
    path = P.headbench(bb, features.resolve_precision("auto", CPU))
    return batch / H.interleaved({"x": lambda: path.fn(x)}, rounds)["x"]


E2E = [  # (torch threads, DataLoader workers, OMP_WAIT_POLICY) of `features.extract`
    (2, 2, None), (2, 2, "PASSIVE"), (1, 2, None), (2, 1, None), (2, 0, None)]


def child(spec: dict) -> None:
    """Measurements that need a fresh process; prints img/s as JSON. 'forward': timm's default
    forward in a plain process (glibc's allocator untouched, as in a user's timm script).
    'e2e': `features.extract` from a cold cache with the given torch threads and workers
    (OMP_WAIT_POLICY is read at process start)."""
    if spec["kind"] == "loader":
        print(json.dumps(_loader_child(spec)))
        return
    if spec["kind"] == "forward":
        bb = backbones.create_backbone(spec["name"], spec["weights"])
        x = torch.randn(spec["batch"], 3, 224, 224)
        path = P.timm_default(bb)
        s = H.interleaved({"x": lambda: path.fn(x)}, spec["rounds"])["x"]
        print(json.dumps({"img_s": spec["batch"] / s}))
        return
    torch.set_num_threads(spec["threads"])
    bb = backbones.create_backbone("efficientnet_lite0", "embedded", spec["size"])
    paths = [Path(p) for p in spec["paths"]]
    digests = [data.file_digest(p) for p in paths]
    shutil.rmtree(spec["cache"], ignore_errors=True)
    s, fs = H.timed(lambda: features.extract(bb, paths, digests, cache_dir=spec["cache"],
                                             workers=spec["workers"]))
    shutil.rmtree(spec["cache"], ignore_errors=True)
    print(json.dumps({"img_s": fs.n_extracted / s}))


def e2e_rate(paths: list[Path], size: int | None, work: Path, threads: int, workers: int,
             omp_wait: str | None) -> float:
    """img/s of `features.extract` (decode, forward, chunk commits) from a cold cache."""
    spec = dict(kind="e2e", paths=[str(p) for p in paths], size=size,
                cache=str(work / "e2e-cache"), threads=threads, workers=workers)
    env = dict(os.environ)
    if omp_wait:
        env["OMP_WAIT_POLICY"] = omp_wait
    return in_child(spec, env)


def in_child(spec: dict, env: dict | None = None, key: str | None = "img_s"):
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out if key is None else out[key]


def profile_loader(paths: list[Path], data_config: dict, n: int = 60) -> str:
    """Where one decoding process spends its time (cProfile, top functions by own time)."""
    ds = features.ImageFiles(paths[:n], data.make_transform(data_config), data.draft_size(data_config))
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
        rows.append([f"`{where}`", fmt(1000 * tt / len(ds), 2), fmt(1000 * ct / len(ds), 2),
                     f"{100 * tt / total:.0f} %"])
    per_image = 1000 * total / len(ds)
    return (f"{per_image:.1f} ms per image in one process ({1000 / per_image:.0f} img/s per "
            "decoding process, before the DataLoader's inter-process transfer):\n\n"
            + H.table(["function", "own ms/img", "cumulative ms/img", "share"], rows))


def section_c(ctx: Ctx) -> tuple[str, dict]:
    workers = features._default_workers()
    work = ctx.fresh("c")
    n_png = 500 if ctx.quick else 1000
    pngs = make_shapes_dataset(ctx.out / "datasets" / f"shapes32-{n_png}", per_class=n_png // 6,
                               image_size=32)
    photos = (subset_folder(ctx.data, ctx.out / "datasets" / f"{ctx.data.name}-subset", 30)
              if ctx.quick else ctx.data)
    sets = {f"{ctx.data.name} (large JPEGs), 224 px": (photos, None),
            "generated 32 px PNGs, 224 px": (pngs, None),
            f"generated 32 px PNGs, {ctx.input_size} px (section d's size)": (pngs, ctx.input_size)}
    combos = E2E[:3] if ctx.quick else E2E
    rates = dict(ctx.shared.get("extract_rates", {}))
    rows, e2e_rows, raw, profiles = [], [], {}, []
    for label, (folder, size) in sets.items():
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        bb = backbones.create_backbone("efficientnet_lite0", "embedded", size)
        H.log(f"  {label}: loader, compute, extract end to end")
        loaded = loader_rate(paths, size, workers)
        load = loaded["img_s"]
        comp = (rates.get("efficientnet_lite0") if size is None else None) or compute_rate(bb)
        e2e = {c: e2e_rate(paths, size, work, *c) for c in combos}
        raw[label] = dict(images=len(paths), loader=loaded, compute_img_s=comp,
                          ratio=load / comp, e2e_img_s={str(c): v for c, v in e2e.items()})
        rows.append([label, len(paths), fmt(load), fmt(loaded["startup_s"], 2), fmt(comp),
                     f"{load / comp:.1f}×"])
        e2e_rows.append([label] + [fmt(e2e[c]) for c in combos])
        if load / comp < 2:
            profiles.append(f"Profile of one decoding process, {label} (cProfile, "
                            f"{min(60, len(paths))} images):\n\n"
                            + profile_loader(paths, bb.data_config))
    if "resnet50" in rates:
        raw["resnet50_compute_img_s"] = rates["resnet50"]
    text = (f"Decode + resize + normalise of `features.ImageFiles` through the DataLoader with "
            f"`features._default_workers()` = {workers} workers alone (a fresh process, page cache "
            "warm, rate after the first batch), vs "
            f"headbench's extractor on efficientnet_lite0 alone (compute only, {torch.get_num_threads()} "
            "threads; at 224 px the figure of (b) where it ran). Target: loader ≥ 2× extraction.\n\n"
            + H.table(["images", "files", f"loader img/s ({workers} workers)",
                       "s to the first batch", "extraction img/s (compute)",
                       "loader / extraction"], rows)
            + ("\n\n" + "\n\n".join(profiles) if profiles else "")
            + "\n\nBoth share the same cores during `features.extract`. End to end from a cold "
              "cache (each in a fresh process; img/s), by torch threads × DataLoader workers "
              "(library default: "
              f"{torch.get_num_threads()} threads, {workers} workers; OMP_WAIT_POLICY=PASSIVE makes "
              "idle OpenMP threads sleep instead of spinning on cores the workers need):\n\n"
            + H.table(["images"] + [f"{t} thr, {w} workers" + (f", OMP {o.lower()}" if o else "")
                                    for t, w, o in combos], e2e_rows))
    if "resnet50" in rates:
        text += (f"\n\nresnet50 extracts at {fmt(rates['resnet50'])} img/s (compute): the loader "
                 "is further ahead there.")
    return text, raw


# ------------------------------------------------------------------------------------------ (d)

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


D_IMG_S = 250.0  # compare wall per image at 64 px (extract + train), idle 2-core EPYC


def d_plan(quick: bool) -> list[tuple[int, int]]:
    """(images, repeats) of section (d); `--heads gap` runs once more below 100k."""
    return [(500, 1), (2000, 1)] if quick else [(5000, 3), (20_000, 3), (100_000, 1)]


def d_seconds(quick: bool, img_s: float) -> float:
    runs = [(n, r + (n < 100_000)) for n, r in d_plan(quick)]
    return sum(n * k / img_s + 12 * k for n, k in runs)


def section_d(ctx: Ctx) -> tuple[str, dict]:
    plan = d_plan(ctx.quick)
    size = ctx.input_size
    H.log(f"  estimated {d_seconds(ctx.quick, D_IMG_S) / 60:.0f} min")
    c, h, w = backbones.create_backbone("efficientnet_lite0", "embedded", size).feature_shape()
    raw, rows = {}, []
    for n, repeats in plan:
        per_class = math.ceil(n / 6)
        folder = ctx.out / "datasets" / f"shapes32-{per_class * 6}"
        H.log(f"  {per_class * 6:,} images: generating (once, kept in {folder.parent})")
        make_shapes_dataset(folder, per_class=per_class, image_size=32)
        images = per_class * 6
        variants = [("gap,flatten", repeats)] + ([("gap", 1)] if n < 100_000 else [])
        for heads, reps in variants:
            runs = []
            for r in range(reps):
                H.log(f"  {images:,} images, --heads {heads}, repeat {r + 1}/{reps}")
                runs.append(compare_subprocess(folder, heads, ctx.out / "work" / "d", size))
                t = runs[-1]["timing"]
                H.log(f"    extract {t['extract_s']:.1f} s, train {t['train_s']:.1f} s, total "
                      f"{t['total_s']:.1f} s, peak anon {runs[-1]['peak_anon'] / 2**30:.2f} GiB")
            med = {k: H.median([x[k] for x in runs]) for k in
                   ("wall_s", "peak_anon", "peak_rss", "vm_hwm", "cache_bytes")}
            for k in ("extract_s", "train_s", "total_s"):
                med[k] = H.median([x["timing"][k] for x in runs])
            raw[f"{images}:{heads}"] = dict(images=images, heads=heads, runs=runs, median=med)
            k = 1000 / images
            rows.append([f"{images:,}", heads, f"{reps}", fmt(med["wall_s"]), fmt(med["wall_s"] * k, 2),
                         fmt(med["extract_s"] * k, 2), fmt(med["train_s"] * k, 2),
                         f"{med['peak_anon'] / 2**30:.2f}", f"{med['peak_rss'] / 2**30:.2f}",
                         f"{med['vm_hwm'] / 2**30:.2f}", f"{med['cache_bytes'] / images:,.0f}",
                         f"{min(x['peak_anon'] for x in runs) / 2**30:.2f}–"
                         f"{max(x['peak_anon'] for x in runs) / 2**30:.2f}"])
    full = [v["median"]["wall_s"] / v["images"] * 1000 for v in raw.values() if v["heads"] != "gap"]
    work_only = [(v["median"]["extract_s"] + v["median"]["train_s"]) / v["images"] * 1000
                 for v in raw.values() if v["heads"] != "gap"]
    largest = max(plan)[0]
    big = [v for v in raw.values() if v["images"] >= largest and v["heads"] != "gap"][0]
    ratio = {n: raw[f"{n}:gap,flatten"]["median"]["cache_bytes"]
             / max(1, raw[f"{n}:gap"]["median"]["cache_bytes"])
             for n in {v["images"] for v in raw.values() if v["heads"] == "gap"}}
    text = (f"`python -m headbench compare DIR --heads gap,flatten --seeds 1 --quiet --no-report "
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
                       "cache bytes / img", "peak anon range GiB"], rows)
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
    return text, {"input_size": size, "map": [c, h, w], **raw}


# ------------------------------------------------------------------------------------------ (e)

@contextlib.contextmanager
def bf16_enabled():
    """Let `precision='bf16'` through on a CPU without native bf16 (patching
    `features._bf16_supported`); there the backbone's Conv2d/Linear get `emulate_bf16`, since
    this torch's emulated bf16 depthwise convolutions take seconds per image."""
    supported, create = features._bf16_supported, backbones.create_backbone
    features._bf16_supported = lambda device: True
    if not H.native_bf16():
        backbones.create_backbone = lambda *a, **k: P.emulate_bf16(create(*a, **k))
    try:
        yield
    finally:
        features._bf16_supported, backbones.create_backbone = supported, create


def default_job(ctx: Ctx, precision: str) -> tuple[float, hb.Run]:
    """The default compare on the dataset (a subset in --quick), cache kept for (e) and (f)."""
    folder = ctx.data
    options = {}
    if ctx.quick:
        folder = subset_folder(ctx.data, ctx.out / "datasets" / f"{ctx.data.name}-subset", 30)
        options = dict(heads=["gap", "flatten"], seeds=2, epochs=10)
    work = ctx.out / "work" / f"default-{precision}"
    shutil.rmtree(work, ignore_errors=True)
    return H.timed(lambda: hb.compare(folder, precision=precision, cache_dir=ctx.out / "work" /
                                      "default-cache", out=work, **options))


def ci(c) -> tuple[float, float | None, float | None, list[float]]:
    return c.mean, getattr(c, "lo", getattr(c, "low", None)), getattr(c, "hi", getattr(c, "high", None)), c.values


def bf16_emulation_check(ctx: Ctx) -> str:
    """Per convolution, the emulation equals this CPU's bf16 kernel to rounding; over the whole
    network (2 images) the difference is compared with bf16's own difference from fp32."""
    bb = backbones.create_backbone("efficientnet_lite0", "embedded")
    emu = P.emulate_bf16(backbones.create_backbone("efficientnet_lite0", "embedded"))
    convs = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d)]
    worst = 0.0
    for conv in (next(m for m in convs if m.groups > 1), next(m for m in convs if m.groups == 1)):
        x = torch.randn(2, conv.in_channels, 28, 28)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            real, e = conv(x).float(), P._bf16_forward(conv, x).float()
        worst = max(worst, ((real - e).abs().max() / real.abs().max()).item())
    text = (f"Per convolution (one depthwise, one pointwise) the emulation matches this CPU's "
            f"bf16 kernel to {worst:.1e} of the output scale.")
    if not ctx.quick:
        x = load_images(ctx.data, 2, bb.data_config)
        with torch.inference_mode():
            ref = bb(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                real, e = bb(x).float(), emu(x).float()

        def rel(a, b):
            return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()
        text += (f" Whole network, 2 images: relative RMS difference of the feature maps "
                 f"emulated vs this CPU's bf16 kernels {rel(e, real):.3f}, fp32 vs those kernels "
                 f"{rel(ref, real):.3f}, emulated vs fp32 {rel(e, ref):.3f} (bf16 rounding "
                 "differences grow over 49 layers; two bf16 runs with different summation "
                 "orders differ by about half as much as bf16 differs from fp32).")
    return text


def section_e(ctx: Ctx) -> tuple[str, dict]:
    H.log("  fp32 default job")
    shutil.rmtree(ctx.out / "work" / "default-cache", ignore_errors=True)  # cold: (f) compares
    s32, r32 = default_job(ctx, "fp32")
    ctx.shared["default_run"] = r32
    H.log("  bf16 default job" + ("" if H.native_bf16() else " (emulated)"))
    with bf16_enabled():
        s16, r16 = default_job(ctx, "bf16")
    label = "bf16" if H.native_bf16() else "emulated bf16 (accuracy effect only)"
    rows, raw = [], {}
    for h32 in r32.heads:
        h16 = r16.head(h32.head)
        m32, lo32, hi32, v32 = ci(h32.summary.test_accuracy)
        m16, lo16, hi16, v16 = ci(h16.summary.test_accuracy)
        spread = max(v32) - min(v32)
        paired = [b - a for a, b in zip(v32, v16)]
        inside = abs(m16 - m32) <= spread if len(v32) > 1 else None
        raw[h32.head] = dict(fp32=v32, bf16=v16, diff=m16 - m32, spread=spread, paired=paired)
        rows.append([h32.head, f"{m32:.4f} [{fmt(lo32, 4)}, {fmt(hi32, 4)}]",
                     f"{m16:.4f} [{fmt(lo16, 4)}, {fmt(hi16, 4)}]", f"{m16 - m32:+.4f}",
                     ", ".join(f"{d:+.4f}" for d in paired), f"{spread:.4f}",
                     {True: "yes", False: "**no**", None: "–"}[inside]])
    n_test = len(r32.dataset.splits["test"])
    within = sum(1 for v in raw.values() if abs(v["diff"]) <= v["spread"])
    text = (f"The default compare (`{r32.options.data}`: {len(r32.heads)} heads × "
            f"{r32.options.seeds} seeds, weight decay chosen on val) with `precision='fp32'` and "
            f"with `precision='bf16'`, same splits and seeds; {n_test} test images (one image = "
            f"{1 / n_test:.4f}). Figures labelled **{label}**"
            + ("" if H.native_bf16() else
               ": this CPU lacks avx512_bf16/amx_bf16, so `features._bf16_supported` is patched "
               "to accept bf16, and since this torch's emulated bf16 kernels take 3–10 s per image "
               "for efficientnet_lite0's depthwise convolutions, every Conv2d/Linear computes in "
               "fp32 on bf16-rounded operands with its output rounded to bf16 (native bf16 "
               "kernels accumulate in fp32 too); all other ops run under torch's CPU bf16 "
               "autocast. " + bf16_emulation_check(ctx))
            + f" fp32 job {s32:.0f} s, bf16 job {s16:.0f} s.\n\n"
            + H.table(["head", "fp32 test acc (mean, 95 % CI over seeds)", f"{label} test acc",
                       "Δ mean", "Δ per seed (paired)", "fp32 seed spread (max−min)",
                       "Δ within spread"], rows)
            + f"\n\n{within} of {len(raw)} heads move by no more than the fp32 seed spread.")
    return text, dict(fp32_s=s32, bf16_s=s16, emulated=not H.native_bf16(), heads=raw)


# ------------------------------------------------------------------------------------------ (f)

def cached_features(run: hb.Run, cache: Path):
    """(X, y) per split from the run's feature cache (nothing is extracted again)."""
    bb = backbones.create_backbone(run.backbone.name, run.backbone.weights,
                                   run.options.input_size)
    root = Path(run.dataset.root)
    out = {}
    for role in ("train", "val", "test"):
        split = run.dataset.splits[role]
        fs = features.extract(bb, [root / p for p in split.paths], split.digests,
                              precision=run.precision, cache_dir=cache)
        assert fs.n_extracted == 0, "the default job's cache should hold every image"
        out[role] = (fs.subset(np.arange(len(fs))), np.asarray(split.labels))
    return out, fs.shape


def section_f(ctx: Ctx) -> tuple[str, dict]:
    if "default_run" not in ctx.shared:
        H.log("  default job (fp32) for its cached features")
        shutil.rmtree(ctx.out / "work" / "default-cache", ignore_errors=True)
        ctx.shared["default_run"] = default_job(ctx, "fp32")[1]
    run = ctx.shared["default_run"]
    F, (c, h, w) = cached_features(run, ctx.out / "work" / "default-cache")
    k = len(run.classes)
    specs = list(run.options.heads)
    heads = {s.label: (lambda s=s: create_head(s, c, k, (h, w))) for s in specs}
    cfg, seeds = run.train_config, list(range(run.options.seeds))
    args = (F["train"][0], F["train"][1], F["val"][0], F["val"][1], cfg)
    members = len(specs) * (len(cfg.weight_decays) + len(seeds) - 1)
    fit_heads = getattr(train, "fit_heads", None)
    raw = dict(heads=[s.label for s in specs], members=members, extract_s=run.timing.extract_s,
               compare_train_s=run.timing.train_s, n_extracted=run.timing.n_extracted)
    if fit_heads is None:
        H.log("  fit_heads missing: one-at-a-time with fit_head only")
        alone = sum(H.timed(lambda s=s: train.fit_head(heads[s.label], *args, seeds=seeds))[0]
                    for s in specs)
        raw.update(alone_s=alone)
        return (f"`headbench.train.fit_heads` does not exist yet: stacked training not measured. "
                f"One-at-a-time reference with `fit_head` ({len(specs)} heads, {members} "
                f"trainings): {alone:.1f} s; the default job's extraction took "
                f"{run.timing.extract_s:.1f} s and its head training {run.timing.train_s:.1f} s."
                ), raw
    H.log(f"  stacked ({members} members)")
    stacked_s, stacked = H.timed(lambda: fit_heads(heads, *args, seeds=seeds, stacked=True))
    H.log("  one at a time")
    alone_s, alone = H.timed(lambda: fit_heads(heads, *args, seeds=seeds, stacked=False))
    diff = max(abs(a.best_val_loss - b.best_val_loss) for label in stacked
               for a, b in zip(stacked[label].runs, alone[label].runs))
    same_decay = sum(stacked[l].weight_decay == alone[l].weight_decay for l in stacked)
    ex = run.timing.extract_s
    raw.update(stacked_s=stacked_s, alone_s=alone_s, speedup=alone_s / stacked_s,
               max_val_loss_diff=diff, same_decay=same_decay)
    rows = [["one at a time (`stacked=False`: every member alone, the reference)", fmt(alone_s)],
            ["stacked (`stacked=True`)", fmt(stacked_s)],
            [f"default job's extraction (cold cache, {run.timing.n_extracted} images, includes "
             "decoding)", fmt(ex)],
            ["default job's head training inside `compare` (timing.train_s)", fmt(run.timing.train_s)]]
    text = (f"`train.fit_heads` on the default job's cached features ({len(specs)} heads × "
            f"{len(cfg.weight_decays)} decays at the first seed, then {len(seeds) - 1} more seeds "
            f"at each head's chosen decay = {members} members, {len(F['train'][1])} train / "
            f"{len(F['val'][1])} val images), both ways in this process.\n\n"
            + H.table(["training", "seconds"], rows)
            + f"\n\n**Stacked is {alone_s / stacked_s:.1f}× faster** than one at a time (target "
              f"≥ 6×). Stacked head training is {stacked_s / ex:.2f}× the extraction time "
              f"(target ≤ 1). Same chosen decay for {same_decay} of {len(stacked)} heads; largest "
              f"difference of a member's best val loss, stacked vs alone: {diff:.2g}.")
    return text, raw


def section_g(ctx: Ctx) -> tuple[str, dict]:
    """Issue 11: the default job with 4 cached augmented views and the best head fine-tuned."""
    folder, options = ctx.data, dict(aug_views=4, finetune=True)
    if ctx.quick:
        folder = subset_folder(ctx.data, ctx.out / "datasets" / f"{ctx.data.name}-subset", 30)
        options.update(heads=["gap", "flatten"], seeds=2, epochs=10, finetune_epochs=2)
    work = ctx.fresh("finetune")
    wall, run = H.timed(lambda: hb.compare(folder, cache_dir=work / "cache", out=work, **options))
    ft_head = next(h for h in run.heads if h.finetuned)
    rates = finetune_rates(run, ft_head)
    rows = []
    for f in run.findings:
        if f.kind in ("augmentation", "finetune"):
            a, b = run.head(f.a), run.head(f.b)
            frozen = (b.summary.test_accuracy.mean if f.kind == "augmentation" else
                      next(s.test.accuracy for s in b.seeds if s.seed == a.variant.from_seed))
            rows.append([f.a, pct(frozen), pct(a.summary.test_accuracy.mean),
                         f"{100 * f.diff:+.1f} pp", interval(f), fmt(f.p_adjusted, 3),
                         hb.evaluate.select_head([b, a]).head])
    s0 = ft_head.seeds[0]
    raw = dict(wall_s=wall, train_s=run.timing.train_s, ft_s=s0.train_time_s,
               ft_epochs=s0.epochs_run, ft_best_epoch=s0.best_epoch, rates=rates,
               best_head=run.best_head, findings=[f.text for f in run.findings
                                                  if f.kind in ("augmentation", "finetune")])
    text = (f"`compare` on `{folder}` ({len(run.heads)} entries: "
            f"{', '.join(s.label for s in run.options.heads)} frozen, each also on 4 cached "
            f"augmented views paired by seed, and the best frozen head on val fine-tuned), "
            f"precision {run.precision}, cold cache. Whole job {wall:.0f} s, of which head "
            f"training {run.timing.train_s:.0f} s and fine-tuning {ft_head.variant.of} "
            f"{s0.train_time_s:.0f} s ({s0.epochs_run} epochs, best {s0.best_epoch}; unfreeze "
            f"{ft_head.variant.settings['unfreeze']}, BatchNorm {ft_head.variant.settings['bn']}, "
            f"{ft_head.variant.settings['precision']})."
            f" Selected head on val: **{run.best_head}**.\n\n"
            + H.table(["variant", "frozen test acc (+ft: its starting seed)", "variant test acc", "change", "95% CI",
                       "Holm p", "val selects"], rows)
            + "\n\nAugmented views: interval over seeds (paired t); fine-tuning: one seed against "
              "the frozen seed it started from, paired bootstrap over test images; p-values "
              "Holm-adjusted over every finding of the run.\n\n"
            + H.table(["fine-tuning step (batch 32, forward + backward + AdamW, decoding "
                       "included)", "img/s"], [[k, fmt(v)] for k, v in rates.items()]))
    return text, raw


def section_h(ctx: Ctx) -> tuple[str, dict]:
    """Issue 12: the best head's model on four CPU engines; extraction through onnxruntime."""
    from onnx_bench import classifier_rows, extractor_rows
    folder, options = ctx.data, {}
    if ctx.quick:
        folder = subset_folder(ctx.data, ctx.out / "datasets" / f"{ctx.data.name}-subset", 30)
        options.update(heads=["gap", "flatten"], seeds=2, epochs=10)
    work = ctx.fresh("onnx")
    run = hb.compare(folder, cache_dir=work / "cache", out=work, report=False, **options)
    best = run.head(run.best_head)
    split = run.dataset.splits["test"]
    paths = [run.dataset.path("test", i) for i in range(len(split))]
    engines = classifier_rows(run.model_dir(best.head), paths, np.asarray(split.labels), work)
    accs = [s.test.accuracy for s in best.seeds]
    spread = max(accs) - min(accs)
    base = engines[0]
    rows = [[e["engine"], fmt(e["latency_ms"], 2), fmt(e["throughput"]),
             f"{e['max_diff']:.2g}", pct(e["accuracy"]),
             f"{100 * (e['accuracy'] - base['accuracy']):+.1f} pp"] for e in engines]
    extract = extractor_rows(work, batches=2 if ctx.quick else 4)
    ext_rows = [[e["backbone"], fmt(e["fp32"]), fmt(e["headbench"]), fmt(e["ort"]),
                 f"{e['ort'] / e['headbench']:.2f}×", f"{e['max_diff']:.2g} "
                 f"(largest feature {e['max_feature']:.3g})"] for e in extract]
    faster = [e["backbone"] for e in extract if e["ort"] > e["headbench"]]
    text = (f"The best head on val of `compare` on `{folder}` (**{best.head}**, seed "
            f"{best.best_seed}; its test accuracy over {len(accs)} seeds spans "
            f"{100 * spread:.1f} pp), exported with `hb.export_onnx` (verified: max abs logit "
            f"difference ≤ 1e-4), on {len(paths)} test images at "
            f"{run.backbone.data_config['input_size'][-1]} px; batch-1 latency is the median of "
            "30 calls, batch-32 throughput from the median of 5.\n\n"
            + H.table(["engine", "batch-1 latency (ms)", "batch-32 img/s",
                       "max abs logit diff vs fp32", "test accuracy", "vs fp32"], rows)
            + "\n\nFeature extraction (backbone only, batch 32, 224 px): PyTorch fp32 eager "
              "NCHW, headbench's extraction path (BatchNorm folded, channels_last, "
              f"{extract[0]['precision']}), onnxruntime fp32.\n\n"
            + H.table(["backbone", "PyTorch fp32 img/s", "headbench img/s",
                       "onnxruntime fp32 img/s", "onnxruntime / headbench",
                       "onnxruntime max abs diff vs fp32"], ext_rows)
            + "\n\n" + ("onnxruntime extracts faster than headbench's path for "
                          + ", ".join(faster) if faster else
                          "onnxruntime is not faster than headbench's own extraction path on this "
                          "CPU, so it is not offered as an extraction engine.")
            + " onnxruntime's int8 dynamic quantisation quantises the convolutions per call "
              "(ConvInteger): compare its latency and its accuracy change with the seed spread "
              "above before deploying it.")
    return text, dict(best_head=best.head, seed_spread=spread, engines=engines,
                      extraction=extract)


def finetune_rates(run: hb.Run, ft_head) -> dict[str, float]:
    """Fine-tuning images/s of the run's model on this CPU, fp32 and (where native) bf16."""
    from headbench import finetune as ft
    model = hb.load_model(run.model_dir(ft_head.variant.of), device="cpu")
    split = run.dataset.splits["train"]
    images = ft.Images([run.dataset.path("train", i) for i in range(len(split))], split.digests,
                       np.asarray(split.labels))
    cfg = run.options.finetune_config()
    out = {}
    for precision in ("fp32", "bf16") if H.native_bf16() else ("fp32",):
        model.freeze(False)
        out[f"{precision}, channels_last"] = ft.measure_throughput(
            model, images, cfg, ft_head.weight_decay, CPU, precision, steps=3)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def interval(f) -> str:
    return "—" if f.lo is None else f"[{100 * f.lo:+.1f}, {100 * f.hi:+.1f}] pp"


# ------------------------------------------------------------------------------------------ main

SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e,
            "f": section_f, "g": section_g, "h": section_h}


def main() -> None:
    if sys.argv[1:2] in (["--child"], ["--e2e-child"]):
        progress.set_quiet(True)
        return child({"kind": "e2e", **json.loads(sys.argv[2])})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, ~5 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="work folder: generated datasets (kept), caches, raw results")
    parser.add_argument("--sections", default="abcdefgh", help="which sections, e.g. bc")
    parser.add_argument("--input-size", type=int, default=64,
                        help="input size of section (d) (default 64)")
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--results", type=Path, default=None,
                        help="RESULTS.md to write (default: bench/RESULTS.md for a full run of "
                             "every section, else <out>/RESULTS.md)")
    args = parser.parse_args()
    chosen = [s for s in args.sections if s in SECTIONS]
    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; pass --data FOLDER")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    complete = not args.quick and chosen == list(SECTIONS)
    path = args.results or (ROOT / "bench" / "RESULTS.md" if complete else out / "RESULTS.md")
    progress.set_quiet(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # every headbench extraction and training tunes glibc's allocator for this process; doing it
    # first puts every in-process path (timm's default included) on the same footing
    tuned = bool(getattr(features, "tune_allocator", lambda: False)())
    m = H.machine()
    mode = "quick" if args.quick else "full"
    command = ("python bench/run.py" + (" --quick" if args.quick else "")
               + ("" if complete or args.quick else f" --sections {''.join(chosen)}")
               + (f" --input-size {args.input_size}" if args.input_size != 64 else ""))
    header = (f"# Benchmarks\n\nEvery figure is a ratio of two measurements taken in one run of "
              f"`{command}` ({mode} mode) on one machine; tests never assert a time. Reproduce: "
              f"`.venv/bin/python bench/run.py` (full, ~45 min here, writes this file) or "
              f"`--quick` (~5 min, small sizes, writes `bench/out/RESULTS.md`). Raw numbers: "
              f"`{out.name}/results.json` beside the work folder.\n\n{H.machine_md(m)}"
              + ("\nThe suite runs with `features.tune_allocator()` on, as every headbench "
                 "extraction and training does; in-process baselines share it." if tuned else ""))
    results = H.Results(path, out / "results.json", header, {k: TITLES[k] for k in chosen})
    results.raw["machine"] = m
    ctx = Ctx(args.quick, out, args.data.resolve(), args.input_size, results)
    estimate = sum(ESTIMATE_S[mode][s] if s != "d" else d_seconds(args.quick, D_IMG_S)
                   for s in chosen)
    H.log(f"{mode} run of sections {''.join(chosen)}: estimated {estimate / 60:.0f} min on a "
          f"2-core CPU; writing {path}")
    started = time.perf_counter()
    for key in chosen:
        H.log(f"({key}) {TITLES[key]}")
        load = H.OtherLoad()
        t0 = time.perf_counter()
        try:
            text, raw = SECTIONS[key](ctx)
        except Exception as e:  # one broken section must not lose the others
            traceback.print_exc()
            text, raw = f"**failed**: `{type(e).__name__}: {e}`", {"error": traceback.format_exc()}
        spent, other = time.perf_counter() - t0, load.cores()
        text += (f"\n\n_Section took {spent:.0f} s; other processes used {other:.2f} cores on "
                 "average meanwhile" + (" — timings are disturbed_" if other > 0.2 else "_") + ".")
        results.put(key, text, {"seconds": spent, "other_cores": other, **(raw or {})})
        H.log(f"({key}) done in {spent:.0f} s (other processes: {other:.2f} cores)")
    H.log(f"all done in {(time.perf_counter() - started) / 60:.1f} min; wrote {path}")


if __name__ == "__main__":
    main()
