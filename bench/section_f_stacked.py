"""(f) Stacked vs one-at-a-time head training on the default job's cached features.

    python bench/section_f_stacked.py [--quick] [--out DIR] [--data DIR] [--results FILE]

After (e) in the same run it reuses (e)'s fp32 job and its feature cache; alone it runs that job
first (cold cache: its extraction time is the reference stacked training is held against).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import harness as H
import headbench as hb
from headbench import backbones, features, train
from headbench.heads import create_head

KEY, TITLE = "f", "Stacked vs one-at-a-time head training"
ESTIMATE_S = {"quick": 20, "full": 90}  # rough seconds on a 2-core AVX2 CPU


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


def run(ctx: H.Ctx) -> tuple[str, dict]:
    if "default_run" not in ctx.shared:
        H.log("  default job (fp32) for its cached features")
        H.cold_default_run(ctx)
    job = ctx.shared["default_run"]
    F, (c, h, w) = cached_features(job, ctx.out / "work" / "default-cache")
    k = len(job.classes)
    specs = list(job.options.heads)
    heads = {s.label: (lambda s=s: create_head(s, c, k, (h, w))) for s in specs}
    cfg, seeds = job.train_config, list(range(job.options.seeds))
    args = (F["train"][0], F["train"][1], F["val"][0], F["val"][1], cfg)
    members = len(specs) * (len(cfg.weight_decays) + len(seeds) - 1)
    H.log(f"  stacked ({members} members)")
    stacked_s, stacked = H.timed(lambda: train.fit_heads(heads, *args, seeds=seeds, stacked=True))
    H.log("  one at a time")
    alone_s, alone = H.timed(lambda: train.fit_heads(heads, *args, seeds=seeds, stacked=False))
    diff = max(abs(a.best_val_loss - b.best_val_loss) for label in stacked
               for a, b in zip(stacked[label].runs, alone[label].runs))
    same_decay = sum(stacked[l].weight_decay == alone[l].weight_decay for l in stacked)
    t = job.timing
    raw = dict(heads=[s.label for s in specs], members=members, extract_s=t.extract_s,
               compare_train_s=t.train_s, n_extracted=t.n_extracted, stacked_s=stacked_s,
               alone_s=alone_s, speedup=alone_s / stacked_s, max_val_loss_diff=diff,
               same_decay=same_decay)
    sizes = (len(specs), len(cfg.weight_decays), len(seeds), len(F["train"][1]), len(F["val"][1]))
    return report(raw, t, sizes), raw


def report(raw: dict, t, sizes: tuple[int, ...]) -> str:
    n_heads, n_decays, n_seeds, n_train, n_val = sizes
    alone_s, stacked_s = raw["alone_s"], raw["stacked_s"]
    rows = [["one at a time (`stacked=False`: every member alone, the reference)", H.fmt(alone_s)],
            ["stacked (`stacked=True`)", H.fmt(stacked_s)],
            [f"default job's extraction (cold cache, {t.n_extracted} images, includes "
             "decoding)", H.fmt(t.extract_s)],
            ["default job's head training inside `compare` (timing.train_s)", H.fmt(t.train_s)]]
    return (f"`train.fit_heads` on the default job's cached features ({n_heads} heads × "
            f"{n_decays} decays at the first seed, then {n_seeds - 1} more seeds "
            f"at each head's chosen decay = {raw['members']} members, {n_train} train / "
            f"{n_val} val images), both ways in this process.\n\n"
            + H.table(["training", "seconds"], rows)
            + f"\n\n**Stacked is {alone_s / stacked_s:.1f}× faster** than one at a time (target "
              f"≥ 6×). Stacked head training is {stacked_s / t.extract_s:.2f}× the extraction "
              f"time (target ≤ 1). Same chosen decay for {raw['same_decay']} of {n_heads} heads; "
              f"largest difference of a member's best val loss, stacked vs alone: "
              f"{raw['max_val_loss_diff']:.2g}.")


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
