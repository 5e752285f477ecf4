"""Seconds of `train.fit_heads` per head type on a finished run's cached features.

    python bench/profile_heads.py RUN_DIR [--heads gap,gem] [--threads 1] [--check FILE]
                                  [--head-precision bf16]

Each head is trained alone (all its decays × seeds, stacked), on the run's own splits, options
and feature cache; with `--check FILE` the members' epochs run, best epochs, best val losses
and chosen decays are compared with (or, the first time, written to) FILE, so a change of the
training engine can show it trains the same members.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

import harness as H
import headbench as hb
from headbench import runtime, train
from headbench.heads import create_head


def summary(fit) -> dict:
    return dict(decay=fit.weight_decay, runs=[dict(seed=r.seed, wd=r.weight_decay,
                epochs=r.epochs_run, best=r.best_epoch, loss=r.best_val_loss) for r in fit.runs])


def same(a: dict, b: dict, rel: float = 1e-6) -> list[str]:
    """What differs between two summaries of one head beyond `rel` in the losses."""
    out = [] if a["decay"] == b["decay"] else [f"decay {a['decay']} vs {b['decay']}"]
    for x, y in zip(a["runs"], b["runs"]):
        if (x["epochs"], x["best"]) != (y["epochs"], y["best"]):
            out.append(f"seed {x['seed']} wd {x['wd']}: epochs/best {x['epochs']}/{x['best']} "
                       f"vs {y['epochs']}/{y['best']}")
        if abs(x["loss"] - y["loss"]) > rel * abs(y["loss"]):
            out.append(f"seed {x['seed']} wd {x['wd']}: loss {x['loss']:.9g} vs {y['loss']:.9g}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--heads", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", default=None)
    ap.add_argument("--head-precision", default="fp32", help="fp32 | bf16 | auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runtime.tune_allocator()
    run = hb.Run.load(args.run_dir)
    F, (c, h, w) = H.cached_features(run)
    k = len(run.classes)
    cfg = dataclasses.replace(run.train_config, precision=args.head_precision)
    seeds = list(range(run.options.seeds))
    specs = [s for s in run.options.heads if not args.heads or s.label in args.heads.split(",")]
    print(f"cpu flags: {' '.join(sorted(f for f in runtime.cpu_flags() if f.startswith(('avx512_bf16', 'amx', 'avx2'))))}; threads {args.threads}")
    results, total = {}, 0.0
    for spec in specs:
        make = {spec.label: lambda s=spec: create_head(s, c, k, (h, w))}
        t0 = time.perf_counter()
        fit = train.fit_heads(make, F["train"][0], F["train"][1], F["val"][0], F["val"][1], cfg,
                              seeds=seeds)[spec.label]
        seconds = time.perf_counter() - t0
        total += seconds
        results[spec.label] = summary(fit)
        print(f"{spec.label:<10} {seconds:7.2f} s  decay {fit.weight_decay:g}  "
              f"epochs {[r.epochs_run for r in fit.runs]}", flush=True)
    print(f"{'total':<10} {total:7.2f} s")
    if args.check:
        path = Path(args.check)
        if not path.exists():
            path.write_text(json.dumps(results, indent=1))
            print(f"reference written to {path}")
            return 0
        ref = json.loads(path.read_text())
        bad = {h: d for h in results if h in ref and (d := same(results[h], ref[h]))}
        for h, d in bad.items():
            print(f"DIFFERS {h}: " + "; ".join(d[:4]))
        print("same members as the reference" if not bad else "differs from the reference")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
