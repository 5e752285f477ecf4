"""(i) The training protocol: the previous one against the default, per head, and the sweep's spread.

    python bench/section_i_protocol.py [--quick] [--out DIR] [--data DIR] [--results FILE]

On the default job's data (hymenoptera) and, where ../shared has it, mnist_small: every default
head fitted on the run's cached features (the same splits, stacked as compare does) under

- the previous protocol: peak lr 1e-3, decays 1e-4, 1e-3, 1e-2, 1e-1 swept, cosine schedule,
  early stopping on any decrease of the val loss with patience 8;
- the default: peak lrs 1e-3, 3e-3, 1e-2, 3e-2 swept, decay 1e-2, constant rate after warm-up,
  an improvement only when the val loss falls below its best by more than 1 % of it and more
  than 1e-3 nats, patience 3.

Per head: test accuracy (mean over 3 seeds), the chosen setting, member-epochs (every member of
the sweep and the seeds) and seconds of `fit_heads`. Then the default sweep's spread at the
first seed: each head's best val loss, weight norm and test accuracy per setting, and how often
the setting chosen on val changes the test accuracy.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

import harness as H
import headbench as hb
from headbench import backbones, features, train
from headbench.heads import create_head

KEY, TITLE = "i", "The training protocol: previous vs default, the sweep's spread"
ESTIMATE_S = {"quick": 60, "full": 420}  # rough seconds on a 2-core CPU

PREVIOUS = dict(lr=(1e-3,), weight_decays=(1e-4, 1e-3, 1e-2, 1e-1), patience=8, min_delta=0.0,
                min_delta_abs=0.0, schedule="cosine", halving=0)  # halving came later (l)
MNIST = H.ROOT.parent / "shared" / "datasets" / "mnist_small"


def split_features(ctx: H.Ctx, folder: Path, split_seed: int = 0) -> tuple[dict, tuple, int]:
    """role -> (Features, labels) of compare's splits of `folder` at `split_seed`, the map shape
    and the number of classes (a one-epoch compare makes the splits and the cache)."""
    cache = ctx.out / "work" / "protocol-cache"
    run = hb.compare(folder, heads=["gap"], seeds=1, epochs=1, lr=1e-3, cache_dir=cache,
                     split_seed=split_seed, out=ctx.fresh(f"protocol-{folder.name}-{split_seed}"),
                     report=False)
    bb = backbones.create_backbone(run.backbone.name, run.backbone.weights, run.options.input_size,
                                   timm_name=run.backbone.timm_name)
    root, out = Path(run.dataset.root), {}
    for role in ("train", "val", "test"):
        split = run.dataset.splits[role]
        fs = features.extract(bb, [root / p for p in split.paths], split.digests,
                              precision=run.precision, cache_dir=cache)
        out[role] = (train.Features(fs.subset(np.arange(len(fs))), torch.device("cpu")),
                     np.asarray(split.labels))
    return out, tuple(run.backbone.feature_shape[-3:]), len(run.classes)


def fit(F: dict, shape: tuple, k: int, config: train.TrainConfig, heads: list[str]) -> dict:
    """label -> fit, member-epochs, every member's result; and the seconds of fit_heads."""
    c, h, w = shape
    make = {n: (lambda n=n: create_head(hb.HeadSpec(n), c, k, (h, w))) for n in heads}
    members: dict = {}
    t0 = time.perf_counter()
    fits = train.fit_heads(make, *F["train"], *F["val"], config, seeds=[0, 1, 2],
                           on_member=lambda m, r: members.__setitem__(m, r))
    seconds = time.perf_counter() - t0
    out = {}
    for label, result in fits.items():
        mine = {m: r for m, r in members.items() if m.head == label}
        out[label] = dict(fit=result, epochs=sum(r.epochs_run for r in mine.values()),
                          members=mine, make=make[label])
    return dict(heads=out, seconds=seconds)


def test_accuracy(F: dict, make, state: dict) -> float:
    head = make()
    head.load_state_dict(state)
    logits = train.predict_logits(head, F["test"][0], device="cpu")
    return float((logits.argmax(1) == F["test"][1]).mean())


def weight_norm(state: dict) -> float:
    return float(sum(v.float().square().sum() for k, v in state.items()
                     if v.is_floating_point() and "running" not in k) ** 0.5)


def compare_protocols(F: dict, shape: tuple, k: int, heads: list[str], quick: bool) -> dict:
    default = train.TrainConfig(epochs=10 if quick else 40)
    previous = dataclasses.replace(default, **PREVIOUS)
    out = {}
    for name, config in (("previous", previous), ("default", default)):
        done = fit(F, shape, k, config, heads)
        rows = {}
        for label, d in done["heads"].items():
            result = d["fit"]
            accs = [test_accuracy(F, d["make"], r.state_dict) for r in result.runs]
            sweep = []
            for (lr, wd), loss in result.sweep.items():
                member = next(r for m, r in d["members"].items()
                              if (m.lr or config.lr[0], m.weight_decay, m.seed) == (lr, wd, 0))
                sweep.append(dict(lr=lr, wd=wd, val_loss=loss, norm=weight_norm(member.state_dict),
                                  test=test_accuracy(F, d["make"], member.state_dict)))
            rows[label] = dict(test=float(np.mean(accs)), tests=accs, lr=result.lr,
                               wd=result.weight_decay, member_epochs=d["epochs"], sweep=sweep)
        out[name] = dict(heads=rows, seconds=done["seconds"])
    return out


def protocol_md(name: str, res: dict) -> str:
    lines = [f"**{name}**: `fit_heads` {res['previous']['seconds']:.1f} s with the previous "
             f"protocol, {res['default']['seconds']:.1f} s with the default; member-epochs "
             f"{sum(r['member_epochs'] for r in res['previous']['heads'].values())} → "
             f"{sum(r['member_epochs'] for r in res['default']['heads'].values())}.", "",
             "| head | test acc previous | test acc default | Δ pp | chosen previous (lr, wd) | "
             "chosen default | member-epochs previous → default |", "|---|---|---|---|---|---|---|"]
    for label, new in res["default"]["heads"].items():
        old = res["previous"]["heads"][label]
        lines.append(f"| {label} | {100 * old['test']:.1f} % | {100 * new['test']:.1f} % | "
                     f"{100 * (new['test'] - old['test']):+.1f} | {old['lr']:g}, {old['wd']:g} | "
                     f"{new['lr']:g}, {new['wd']:g} | {old['member_epochs']} → "
                     f"{new['member_epochs']} |")
    return "\n".join(lines)


def spread_md(name: str, res: dict) -> str:
    """Each protocol's sweep at the first seed: how far apart its settings' models are."""
    lines = [f"Sweep spread on {name} (first seed; val loss and weight norm min–max over the "
             "settings; 'test changes': settings whose test accuracy differs from the chosen "
             "one's, and the largest difference):", "",
             "| head | protocol | val loss min–max | weight norm min–max | test acc min–max | "
             "test changes |", "|---|---|---|---|---|---|"]
    for label in res["default"]["heads"]:
        for proto in ("previous", "default"):
            row = res[proto]["heads"][label]
            sweep = row["sweep"]
            chosen = next(s for s in sweep if (s["lr"], s["wd"]) == (row["lr"], row["wd"]))
            loss = [s["val_loss"] for s in sweep]
            norm = [s["norm"] for s in sweep]
            test = [s["test"] for s in sweep]
            differ = [abs(t - chosen["test"]) for t in test if t != chosen["test"]]
            lines.append(f"| {label} | {proto} | {min(loss):.4f}–{max(loss):.4f} | "
                         f"{min(norm):.2f}–{max(norm):.2f} | {100 * min(test):.1f}–"
                         f"{100 * max(test):.1f} % | {len(differ)} of {len(sweep) - 1}"
                         + (f", up to {100 * max(differ):.1f} pp" if differ else "") + " |")
    return "\n".join(lines)


def run(ctx: H.Ctx) -> tuple[str, dict]:
    heads = ["gap", "flatten"] if ctx.quick else list(hb.heads.DEFAULT_HEADS)
    folders = [ctx.subset() if ctx.quick else ctx.data]
    if MNIST.is_dir() and not ctx.quick:
        folders.append(MNIST)
    raw, parts = {}, []
    for folder in folders:
        F, shape, k = split_features(ctx, folder)
        res = compare_protocols(F, shape, k, heads, ctx.quick)
        raw[folder.name] = res
        sizes = ", ".join(f"{len(F[r][1])} {r}" for r in ("train", "val", "test"))
        parts += [f"### {folder.name} ({sizes} images)", protocol_md(folder.name, res), "",
                  spread_md(folder.name, res), ""]
    return "\n".join(parts), raw


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
