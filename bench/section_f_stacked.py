"""(f) Head training against the backbone pass, per head type, beside its arithmetic floor.

    python bench/section_f_stacked.py [--quick] [--out DIR] [--data DIR] [--results FILE]

Runs the default job (`compare` with the library's defaults, cold feature cache) and holds its
head training (`timing.train_s`: `fit_heads` alone) against the same run's extraction; then
trains each head type alone on that cache (every member of the sweep and the seeds, stacked, as
compare does)
and sets its time beside its floor: the matmul FLOPs of its training (forward and backward of
every member-epoch that ran, plus validation) over this machine's measured fp32 matmul peak.
"""
from __future__ import annotations

import sys
import time

import torch

import extract_paths as P
import harness as H
import headbench as hb
from headbench import train
from headbench.heads import create_head
from headbench.model import count_flops

KEY, TITLE = "f", "Head training against the backbone pass, per head type"
ESTIMATE_S = {"quick": 30, "full": 90}  # rough seconds on a 2-core CPU

# Seconds per head type (1 thread, every member of the default job) measured before issue 19's
# changes, on the AMX machine of that session (bench/profile_heads.py at commit 7e7859d).
BEFORE_1T = {"gap": 0.33, "flatten": 2.15, "avgpool": 0.84, "dense_map": 0.30, "gmp": 0.30,
             "gem": 12.21, "catavgmax": 0.34, "attention": 5.24, "fastai": 9.37}


def per_head(run: hb.Run, peak: float, threads: int) -> list[dict]:
    """Each head type trained alone on the run's cache with `threads` torch threads: seconds,
    member-epochs, floor."""
    torch.set_num_threads(threads)
    F, (c, h, w) = H.cached_features(run)
    k, cfg, seeds = len(run.classes), run.train_config, list(range(run.options.seeds))
    rows_per_epoch = 3 * len(F["train"][1]) + len(F["val"][1])  # forward + backward, val
    rows = []
    for spec in run.options.heads:
        make = {spec.label: lambda s=spec: create_head(s, c, k, (h, w))}
        epochs: list[int] = []
        started = time.perf_counter()
        fit = train.fit_heads(make, F["train"][0], F["train"][1], F["val"][0], F["val"][1], cfg,
                              seeds=seeds, on_member=lambda m, r: epochs.append(r.epochs_run)
                              )[spec.label]
        seconds = time.perf_counter() - started
        flops = count_flops(make[spec.label](), torch.zeros(1, c, h, w)) * rows_per_epoch
        flops *= sum(epochs)
        rows.append(dict(head=spec.label, seconds=seconds, member_epochs=sum(epochs),
                         gflop=flops / 1e9, floor_s=flops / peak, decay=fit.weight_decay))
    return rows


def run(ctx: H.Ctx) -> tuple[str, dict]:
    folder, options = ctx.job()
    H.log("  default job (cold cache)")
    work = ctx.fresh("default-f")
    job = hb.compare(folder, cache_dir=work / "cache", out=work, **options)
    t = job.timing
    peak = P.matmul_rate(torch.float32, 2048)
    threads = torch.get_num_threads()
    H.log("  each head type alone on the job's cache, 1 thread")
    one = {r["head"]: r["seconds"] for r in per_head(job, peak, 1)}
    H.log(f"  each head type alone on the job's cache, {threads} threads")
    rows = per_head(job, peak, threads)
    for row in rows:
        row["seconds_1thread"] = one[row["head"]]
    raw = dict(extract_s=t.extract_s, train_s=t.train_s, evaluate_s=t.evaluate_s,
               n_extracted=t.n_extracted, threads=threads,
               peak_gflop_s=peak / 1e9, heads=rows, before_1thread=BEFORE_1T)
    return report(raw), raw


def report(raw: dict) -> str:
    ratio = raw["train_s"] / raw["extract_s"]
    summary = H.table(["default job (same run)", "seconds"], [
        [f"extraction ({raw['n_extracted']} images, decoding included)", H.fmt(raw["extract_s"])],
        ["head training (`timing.train_s`: `fit_heads` alone)", H.fmt(raw["train_s"])],
        ["evaluation, latency, FLOPs, run writes (`timing.evaluate_s`)",
         H.fmt(raw["evaluate_s"])]])
    rows = [[r["head"], H.fmt(raw["before_1thread"].get(r["head"]), 2),
             H.fmt(r["seconds_1thread"], 2), H.fmt(r["seconds"], 2), str(r["member_epochs"]),
             f"{r['gflop']:.1f}",
             H.fmt(r["floor_s"], 2), f"{r['seconds'] / r['floor_s']:.1f}×"]
            for r in raw["heads"]]
    total = sum(r["seconds"] for r in raw["heads"])
    return ("The default job (hymenoptera, 9 heads × the default sweep's 4 peak learning rates "
            "at the first seed, then 2 more seeds at each head's chosen setting; early stopping "
            "as in (i)) from a cold cache, then each head type trained "
            f"alone on its cache with 1 and with {raw['threads']} threads. Floor: matmul FLOPs of the "
            "member-epochs that ran (forward + backward ≈ 3 forwards per train row, one per val "
            f"row) over the measured fp32 matmul peak, {raw['peak_gflop_s']:.0f} GFLOP/s "
            "(2048², this run).\n\n" + summary
            + f"\n\n**Head training is {ratio:.2f}× the same run's extraction** (target ≤ 1).\n\n"
            + H.table(["head", "before, 1 thread", "now, 1 thread", f"now, {raw['threads']} threads",
                       "member-epochs", "GFLOP (head's own forward)", "floor s", "now / floor"],
                      rows)
            + f"\n\nEach head alone: {total:.1f} s in all. 'Before' is the default job of then "
              "(the previous protocol: 4 decays at lr 1e-3, 1,836 member-epochs) before issue "
              "19's engine changes, on the AMX machine of that session (1 thread, "
              "`bench/profile_heads.py` at 7e7859d).")


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
