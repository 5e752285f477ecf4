"""(o) Early stopping's patience: 3 epochs against 2, in whole default jobs.

    python bench/section_o_patience.py [--quick] [--out DIR] [--data DIR] [--results FILE]

On hymenoptera at split seeds 0-4 and on mnist_small (split seed 0), the default `compare` (9
heads, the learning-rate sweep, 3 seeds, cross-validation over train + val for the selection)
twice on the same cached features: with `patience=3` and with `patience=2` (training stops
after that many epochs without an improvement of the val loss by 1 % and 1e-3 nats). Per job:
head training seconds (`timing.train_s`, every member: sweep, seeds, folds), member-epochs (every
member committed, counted as it is saved), the recommended head, how many heads chose another
learning rate, and each head's test accuracy (mean over its 3 seeds) under both.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np

import harness as H
import headbench as hb
import headbench.run  # noqa: F401  (the module, whose save_member is counted)
from section_i_protocol import MNIST

KEY, TITLE = "o", "Early stopping's patience: 3 epochs against 2, in whole default jobs"
ESTIMATE_S = {"quick": 60, "full": 480}  # rough seconds on a 2-core CPU
PATIENCES = (3, 2)


def job(ctx: H.Ctx, folder, options: dict, split_seed: int, patience: int, cache) -> dict:
    """One compare: its timing, member-epochs, recommendation and heads."""
    epochs = []
    runs = sys.modules["headbench.run"]
    save = runs.save_member

    def counted(run_dir, member, result, *args, **kwargs):
        epochs.append(len(result.history))
        return save(run_dir, member, result, *args, **kwargs)
    runs.save_member = counted
    try:
        run = hb.compare(folder, split_seed=split_seed, patience=patience, cache_dir=cache,
                         out=ctx.fresh(f"patience-{folder.name}-{split_seed}-{patience}"),
                         report=False, **options)
    finally:
        runs.save_member = save
    return dict(train_s=run.timing.train_s, extract_s=run.timing.extract_s,
                n_extracted=run.timing.n_extracted, member_epochs=sum(epochs),
                recommended=run.verdict.recommended,
                heads={h.head: dict(lr=h.lr, test=h.summary.test_accuracy.mean)
                       for h in run.heads})


def run(ctx: H.Ctx) -> tuple[str, dict]:
    folder, options = ctx.job()
    jobs = [(folder, s) for s in (range(2) if ctx.quick else range(5))]
    if MNIST.is_dir() and not ctx.quick:
        jobs.append((MNIST, 0))
    raw = []
    for data, seed in jobs:
        cache = ctx.out / "work" / f"patience-cache-{data.name}"
        if seed == 0:
            shutil.rmtree(cache, ignore_errors=True)
        for patience in PATIENCES:
            H.log(f"  {data.name} split seed {seed}, patience {patience}")
            raw.append(dict(data=data.name, seed=seed, patience=patience,
                            **job(ctx, data, options, seed, patience, cache)))
    return report(raw), dict(jobs=raw)


def report(raw: list[dict]) -> str:
    rows, deltas, same, n = [], [], 0, 0
    pairs = {}
    for r in raw:
        pairs.setdefault((r["data"], r["seed"]), {})[r["patience"]] = r
    for (data, seed), by in pairs.items():
        old, new = by[PATIENCES[0]], by[PATIENCES[1]]
        changed = [h for h in old["heads"] if old["heads"][h]["lr"] != new["heads"][h]["lr"]]
        diff = [100 * (new["heads"][h]["test"] - old["heads"][h]["test"]) for h in old["heads"]]
        deltas += diff
        same += old["recommended"] == new["recommended"]
        n += 1
        rows.append([f"{data} {seed}", f"{old['train_s']:.1f} → {new['train_s']:.1f}",
                     f"{old['member_epochs']} → {new['member_epochs']}",
                     f"{old['recommended']} → {new['recommended']}",
                     f"{len(changed)} of {len(old['heads'])}" + (f" ({', '.join(changed)})"
                                                                  if changed else ""),
                     f"{min(diff):+.1f} … {max(diff):+.1f} (mean {np.mean(diff):+.2f})"])
    table = H.table(["data, split seed", "head training s (3 → 2)", "member-epochs",
                     "recommended", "heads with another lr", "test accuracy change, pp"], rows)
    old_s = sum(r["train_s"] for r in raw if r["patience"] == PATIENCES[0])
    new_s = sum(r["train_s"] for r in raw if r["patience"] == PATIENCES[1])
    return (f"{table}\n\n**Patience 2: head training {old_s:.1f} → {new_s:.1f} s in all "
            f"({new_s / old_s:.2f}×); the same recommendation in {same} of {n} jobs; test "
            f"accuracy per head {min(deltas):+.1f} … {max(deltas):+.1f} pp (mean "
            f"{np.mean(deltas):+.2f} pp over {len(deltas)} head fits).** The first job of each "
            "folder extracts (cold cache), the others read the cache.")


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
