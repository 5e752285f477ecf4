"""(a) The whole `compare` job vs the naive per-head recipe (backbone recomputed every epoch).

    python bench/section_a_whole_job.py [--quick] [--out DIR] [--data DIR] [--results FILE]

headbench runs one seed and one weight decay without early stopping, so both sides train the
same heads for the same epochs; every naive epoch does the same work, so it is timed on part of
the work and scaled.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import harness as H
import headbench as hb
from headbench import backbones
from headbench.images import ImageDataset
from headbench.heads import create_head

KEY, TITLE = "a", "The whole job vs the naive per-head recipe"
ESTIMATE_S = {"quick": 60, "full": 200}  # rough seconds on a 2-core AVX2 CPU


def naive_epoch_s(run: hb.Run, backbone: torch.nn.Module, head_name: str,
                  max_batches: int | None) -> tuple[float, float]:
    """(seconds per epoch, seconds measured) of the naive recipe for one head: the frozen
    backbone (fp32 NCHW eager) recomputed on every train and val image. With `max_batches`,
    each split's per-image time over its first batches is scaled to the whole split."""
    root = Path(run.dataset.root)
    c, h, w = backbone.feature_shape()
    head = create_head(head_name, c, len(run.classes), (h, w))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    epoch_s = measured = 0.0
    for role in ("train", "val"):
        split = run.dataset.splits[role]
        labels = torch.from_numpy(np.asarray(split.labels))
        # draft=False: every JPEG decoded at full size, as a plain PIL pipeline does
        images = ImageDataset([root / p for p in split.paths], backbone.data_config, draft=False)
        loader = DataLoader(images, batch_size=32, shuffle=role == "train", num_workers=2)
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


def run(ctx: H.Ctx) -> tuple[str, dict]:
    """The whole compare job vs the naive per-head recipe."""
    quick = ctx.quick
    name, weights = ("efficientnet_lite0", "embedded") if quick else ("resnet50", "none")
    heads = ["gap", "flatten"] if quick else ["gap", "flatten", "avgpool", "gmp", "gem"]
    epochs, max_batches = 20, (2 if quick else None)
    work = ctx.fresh("a")
    ours, job = H.timed(lambda: hb.compare(
        ctx.data, backbone=name, weights=weights, heads=heads, seeds=1, epochs=epochs,
        weight_decays=[1e-4], patience=0, cache_dir=work / "cache", out=work))
    naive_bb = backbones.create_backbone(name, weights)  # fp32, NCHW, eager: timm's default
    for p in naive_bb.parameters():
        p.requires_grad_(False)
    per_epoch, measured = {}, 0.0
    for h in heads:
        per_epoch[h], spent = naive_epoch_s(job, naive_bb, h, max_batches)
        measured += spent
    naive = sum(per_epoch.values()) * epochs
    n = {r: len(job.dataset.splits[r]) for r in ("train", "val", "test")}
    raw = dict(backbone=name, heads=heads, epochs=epochs, headbench_s=ours, naive_s=naive,
               naive_measured_s=measured, naive_epoch_s=per_epoch, speedup=naive / ours,
               timing=vars(job.timing), images=n)
    return report(ctx, raw, weights, max_batches), raw


def report(ctx: H.Ctx, raw: dict, weights: str, max_batches: int | None) -> str:
    t, epochs, n, ours, naive = (raw[k] for k in ("timing", "epochs", "images", "headbench_s",
                                                  "naive_s"))
    how = ("one full epoch per head, scaled to the epochs" if max_batches is None else
           f"the first {max_batches} batches of each split per head, scaled per image to the "
           "whole split and the epochs")
    rows = [["headbench compare, cold cache (scan, extract, train, evaluate, latency, files, "
             f"report); of which extraction {H.fmt(t['extract_s'])} s, head training "
             f"{H.fmt(t['train_s'])} s", H.fmt(ours)]]
    rows += [[f"naive, {h}: {s:.1f} s/epoch × {epochs}", H.fmt(s * epochs)]
             for h, s in raw["naive_epoch_s"].items()]
    rows.append([f"naive total ({raw['naive_measured_s']:.1f} s measured: {how})", H.fmt(naive)])
    return (f"{len(raw['heads'])} heads ({', '.join(raw['heads'])}) × {epochs} epochs, "
            f"{raw['backbone']} (`--weights {weights}`"
            f"{': weights do not change the timing' if weights == 'none' else ''}), "
            f"`{ctx.data.name}` ({n['train']} train, {n['val']} val, {n['test']} test images), "
            "cold feature cache. headbench runs one seed and one weight decay without early "
            "stopping, so both sides train the same heads for the same epochs. The naive recipe is "
            "one model per head with the frozen backbone (timm's fp32 NCHW eager default) "
            "recomputed on every train and val image every epoch; every naive epoch does the same "
            "work, so it is timed on part of the work and scaled.\n\n"
            + H.table(["recipe", "seconds"], rows)
            + f"\n\n**headbench is {naive / ours:.1f}× faster** than the naive recipe.")


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
