"""(l) Halving the sweep: every setting trained to its own stop against successive halving.

    python bench/section_l_halving.py [--quick] [--out DIR] [--data DIR] [--results FILE]

On hymenoptera at split seeds 0-4 (each a different val split of train/) and on mnist_small, every
default head fitted twice on the same cached features (`fit_heads`, 3 seeds, stacked as compare
does): with `halving=0` (each setting of the sweep trains until its early stopping fires) and with
the default `halving=10` (at epoch 10 the settings outside the better half of their head's sweep
stop). Per run: the seconds of `fit_heads`, member-epochs of the sweep, how many heads chose
another setting, and for those the test accuracy (mean over 3 seeds) under each protocol.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

import harness as H
import headbench as hb
from headbench import train
from section_i_protocol import MNIST, fit, split_features, test_accuracy

KEY, TITLE = "l", "Halving the sweep: every setting to its own stop vs successive halving"
ESTIMATE_S = {"quick": 40, "full": 200}  # rough seconds on a 2-core CPU


def sweep_epochs(done: dict) -> int:
    """Member-epochs of the sweep (the first seed's members) of every head."""
    return sum(r.epochs_run for d in done["heads"].values() for m, r in d["members"].items()
               if m.seed == 0)


def one(ctx: H.Ctx, folder, split_seed: int, heads: list[str]) -> dict:
    F, shape, k = split_features(ctx, folder, split_seed)
    default = train.TrainConfig(epochs=10 if ctx.quick else 40)
    out = {}
    for name, config in (("full", dataclasses.replace(default, halving=0)),
                         ("halving", default)):
        done = fit(F, shape, k, config, heads)
        out[name] = dict(seconds=done["seconds"], sweep_epochs=sweep_epochs(done), heads={
            label: dict(lr=d["fit"].lr, test=float(np.mean(
                [test_accuracy(F, d["make"], r.state_dict) for r in d["fit"].runs])))
            for label, d in done["heads"].items()})
    return out


def row(name: str, res: dict) -> list:
    full, half = res["full"], res["halving"]
    changed = [label for label in full["heads"]
               if full["heads"][label]["lr"] != half["heads"][label]["lr"]]
    detail = "; ".join(f"{label}: lr {full['heads'][label]['lr']:g} → "
                       f"{half['heads'][label]['lr']:g}, test "
                       f"{100 * full['heads'][label]['test']:.1f} → "
                       f"{100 * half['heads'][label]['test']:.1f} %" for label in changed)
    return [name, f"{full['seconds']:.2f}", f"{half['seconds']:.2f}",
            f"{full['sweep_epochs']} → {half['sweep_epochs']}",
            f"{len(changed)} of {len(full['heads'])}", detail or "—"]


def run(ctx: H.Ctx) -> tuple[str, dict]:
    heads = ["gap", "flatten"] if ctx.quick else list(hb.heads.DEFAULT_HEADS)
    data = ctx.subset() if ctx.quick else ctx.data
    jobs = [(f"{data.name} split seed {s}", data, s) for s in (range(2) if ctx.quick else range(5))]
    if MNIST.is_dir() and not ctx.quick:
        jobs.append(("mnist_small", MNIST, 0))
    raw, rows = {}, []
    for name, folder, seed in jobs:
        H.log(f"  {name}")
        raw[name] = one(ctx, folder, seed, heads)
        rows.append(row(name, raw[name]))
    changed = sum(int(r[4].split()[0]) for r in rows)
    total = sum(int(r[4].split()[2]) for r in rows)
    full_s = sum(float(r[1]) for r in rows)
    half_s = sum(float(r[2]) for r in rows)
    text = "\n".join([
        H.table(["data", "fit_heads s, full", "fit_heads s, halving", "sweep member-epochs",
                 "heads whose setting changed", "which, and their test accuracy (3 seeds)"],
                rows), "",
        f"**Halving at epoch 10: `fit_heads` {full_s:.1f} → {half_s:.1f} s in all "
        f"({half_s / full_s:.2f}×); the chosen setting changed for {changed} of {total} "
        "head fits.**"])
    return text, raw


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
