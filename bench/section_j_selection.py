"""(j) The recommendation across split seeds: the previous rule, the one-standard-error rule on
val, and the same rule on 5-fold cross-validation over train + val in 2 partitions (the default
for small val splits).

    python bench/section_j_selection.py [--quick] [--out DIR] [--data DIR] [--results FILE]

For split seeds 0-4 of the default job's data (hymenoptera: the val split is a different 15 %
of train/ each time; the test split is the given held-out folder), one default `compare` (its
selection: cross-validation, as the val split has 37 images). From the same run's heads, the
pick of the previous rule (`evaluate.select_head`: best mean val accuracy, then val loss) and of
the one-standard-error rule on the val split (per-image val accuracy averaged over seeds). Per
rule: the head picked at each seed, its test accuracy (mean over seeds) and how often the most
frequent pick recurs; per run: head training (cross-validation included) against extraction.
"""
from __future__ import annotations

import shutil
import sys
from collections import Counter

import numpy as np

import harness as H
import headbench as hb
from headbench import evaluate, selection, verdict
from headbench.heads import create_head

KEY, TITLE = "j", "The recommendation across split seeds: previous rule, 1-SE on val, 1-SE on CV"
ESTIMATE_S = {"quick": 60, "full": 150}  # rough seconds on a 2-core CPU
SEEDS = range(5)


def picks(run: hb.Run) -> dict:
    """The head each rule picks from this run, and each head's mean test accuracy."""
    F, (c, h, w) = H.cached_features(run)
    k = len(run.classes)
    val = {}
    for head in run.heads:
        make = lambda spec=head.spec: create_head(spec, c, k, (h, w))  # noqa: E731
        val[head.head] = selection.per_image_correct(make, run.states[head.head], F["val"][0],
                                                     F["val"][1], "cpu")
    on_val = verdict.recommend(run.heads, val, "val")
    return dict(previous=evaluate.select_head(run.heads).head, val_1se=on_val.recommended,
                cv_1se=run.verdict.recommended, cv_scores=run.verdict.scores,
                cv_se=run.verdict.se, val_scores=on_val.scores,
                test={x.head: x.summary.test_accuracy.mean for x in run.heads},
                train_s=run.timing.train_s, extract_s=run.timing.extract_s,
                n_extracted=run.timing.n_extracted)


def run(ctx: H.Ctx) -> tuple[str, dict]:
    folder, options = ctx.job()
    cache = ctx.out / "work" / "selection-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first run extracts: its ratio is (f)'s
    seeds = []
    for seed in SEEDS:
        H.log(f"  split seed {seed}")
        job = hb.compare(folder, split_seed=seed, cache_dir=cache,
                         out=ctx.fresh(f"selection-{seed}"), report=False, **options)
        seeds.append(dict(seed=seed, **picks(job)))
    raw = dict(seeds=seeds, data=folder.name)
    return report(raw), raw


def report(raw: dict) -> str:
    rows, text = [], []
    for s in raw["seeds"]:
        rows.append([s["seed"]] + [f"{s[r]} ({H.pct(s['test'][s[r]])})"
                                   for r in ("previous", "val_1se", "cv_1se")]
                    + [f"{s['train_s']:.1f}"])
    table = H.table(["split seed", "previous rule (val acc, then loss)", "1-SE on val",
                     "1-SE on 5-fold CV × 2 (default)", "head training s"], rows)
    for rule, name in (("previous", "previous rule"), ("val_1se", "1-SE on val"),
                       ("cv_1se", "1-SE on CV")):
        chosen = [s[rule] for s in raw["seeds"]]
        head, count = Counter(chosen).most_common(1)[0]
        test = np.mean([s["test"][s[rule]] for s in raw["seeds"]])
        text.append(f"- {name}: {head} in {count} of {len(chosen)} split seeds; mean test "
                    f"accuracy of the picks {H.pct(test)}")
    cold = [s for s in raw["seeds"] if s["n_extracted"]]
    ratio = (f"Head training (cross-validation included) against the same run's extraction, "
             f"first split seed (cold cache): {cold[0]['train_s']:.1f} s vs "
             f"{cold[0]['extract_s']:.1f} s = {cold[0]['train_s'] / cold[0]['extract_s']:.2f}×."
             if cold else "")
    return (f"On {raw['data']}, one default `compare` per split seed; the three rules read the "
            "same trained heads (test accuracy in brackets: the pick's mean over 3 seeds).\n\n"
            f"{table}\n\n" + "\n".join(text) + (f"\n\n{ratio}" if ratio else ""))


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
