"""(p) Head training against the backbone pass: the default job from a cold cache, in fresh
processes.

    python bench/section_p_cold_ratio.py [--quick] [--out DIR] [--data DIR] [--results FILE]

The default `compare` on the default job's data (9 heads, the learning-rate sweep, 3 seeds and,
as hymenoptera's val split is small, 5-fold cross-validation over train + val in 2 partitions),
each run in a fresh process from an empty feature cache, so that each extracts: its head training
(`timing.train_s`: every member of the sweep, the seeds and the folds) against its own extraction
(`timing.extract_s`, decoding included). Five rounds, each running the default (early stopping's
patience 2) and then `patience=3` (1.0's default); the figure is the median of the ratios.
"""
from __future__ import annotations

import sys

import harness as H

KEY, TITLE = "p", "Head training against the backbone pass: cold default jobs, fresh processes"
ESTIMATE_S = {"quick": 60, "full": 260}  # rough seconds on a 2-core CPU
JOBS = {"default (patience 2)": {}, "patience 3": {"patience": 3}}
TARGET = 1.0

JOB = H.COMPARE_JOB + """
print(json.dumps(dict(wall=wall, train_s=run.timing.train_s, extract_s=run.timing.extract_s,
                      best=run.best_head)))
"""


def job(ctx: H.Ctx, name: str, extra: dict) -> dict:
    folder, options = ctx.job()
    work = ctx.out / "work" / f"cold-{name.split()[0]}"
    return H.compare_in_child(JOB, work, folder, dict(options, report=False, **extra))


def run(ctx: H.Ctx) -> tuple[str, dict]:
    rounds = {name: [] for name in JOBS}
    for i in range(2 if ctx.quick else 5):
        for name, extra in JOBS.items():
            H.log(f"  round {i + 1}: {name}")
            rounds[name].append(job(ctx, name, extra))
    raw = dict(rounds=rounds, target=TARGET)
    return report(raw), raw


def report(raw: dict) -> str:
    rows, medians = [], {}
    for name, runs in raw["rounds"].items():
        ratios = [r["train_s"] / r["extract_s"] for r in runs]
        medians[name] = H.median(ratios)
        rows.append([name, ", ".join(f"{r['extract_s']:.2f}" for r in runs),
                     ", ".join(f"{r['train_s']:.2f}" for r in runs),
                     ", ".join(f"{x:.2f}" for x in ratios), f"{medians[name]:.2f}",
                     ", ".join(sorted({r["best"] for r in runs}))])
    table = H.table(["job", "extraction s", "head training s", "ratio", "median ratio",
                     "recommended"], rows)
    now = medians[next(iter(JOBS))]
    met = "met" if now <= raw["target"] else "missed"
    return (f"{table}\n\n**Head training with cross-validation against the same run's "
            f"extraction: median {now:.2f}× (target ≤ {raw['target']:g}: {met}).** Rounds "
            "alternate the two jobs, each in a fresh process from an empty cache.")


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
