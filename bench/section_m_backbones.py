"""(m) Several backbones in one run against one run per backbone (issue 22).

    python bench/section_m_backbones.py [--quick] [--out DIR] [--data DIR] [--results FILE]

On the default job's data, each in a fresh process from a cold feature cache, report included:
one `compare --backbone efficientnet_lite0,efficientnet_lite1,efficientnet_lite2` (real ImageNet
weights, embedded) against three compares of one backbone each, run one after the other; once
with the library's default analyses and once without analyses (`--shots none --cam 0`), so the
difference the shared scan and the single analysis pass make is visible. The figure is the wall
time of the one run over the sum of the three; where the time goes comes from each run's
`timing`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import harness as H

KEY, TITLE = "m", "Several backbones in one run vs one run per backbone"
ESTIMATE_S = {"quick": 150, "full": 420}  # rough seconds on a 2-core CPU
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
PARTS = ("scan_s", "extract_s", "train_s", "evaluate_s")

JOB = H.COMPARE_JOB + """
t = run.timing
print(json.dumps(dict(wall=wall, scan_s=t.scan_s, extract_s=t.extract_s, train_s=t.train_s,
                      evaluate_s=t.evaluate_s, analyses_s=sum(s.get("time_s", 0) for s in
                                                              run.analyses.values()),
                      best=run.best_head, verdict=run.verdict.text,
                      heads=[(h.head, h.summary.test_accuracy.mean, h.latency_ms_b1,
                              h.total_params) for h in run.heads],
                      run_dir=str(run.run_dir))))
"""


def job(ctx: H.Ctx, name: str, options: dict) -> dict:
    folder, base = ctx.job()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(H.ROOT / "src"))
    work = ctx.out / "work" / f"backbones-{name}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", JOB, str(work / "out"), str(work / "cache"),
                           str(folder), json.dumps({**base, **options})], env=env,
                          capture_output=True, text=True, check=True)
    process = time.perf_counter() - started  # what the user waits: imports and start-up too
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), process=process)


def run(ctx: H.Ctx) -> tuple[str, dict]:
    raw = {"backbones": BACKBONES}
    for variant, extra in (("default analyses", {}), ("no analyses", dict(shots="none", cam=0))):
        H.log(f"  {variant}: one run of {len(BACKBONES)} backbones")
        one = job(ctx, f"one-{len(raw)}", dict(extra, backbone=",".join(BACKBONES)))
        each = []
        for name in BACKBONES:
            H.log(f"  {variant}: {name} alone")
            each.append(job(ctx, f"{name}-{len(raw)}", dict(extra, backbone=name)))
        raw[variant] = dict(one=one, each=each)
    return report(raw), raw


def _cells(r: dict) -> list[str]:
    return [f"{r['process']:.1f}", f"{r['wall']:.1f}", *(H.fmt(r[k]) for k in PARTS),
            H.fmt(r["analyses_s"])]


def report(raw: dict) -> str:
    out = [f"On the default job's data, from a cold cache, report included, each job in a "
           f"fresh process: one `compare --backbone {','.join(raw['backbones'])}` against "
           "the three one-backbone compares run one after the other."]
    for variant in ("default analyses", "no analyses"):
        one, each = raw[variant]["one"], raw[variant]["each"]
        rows = [["one run of three", *_cells(one), one["best"]]]
        rows += [[f"{name} alone", *_cells(r), r["best"]]
                 for name, r in zip(raw["backbones"], each)]
        summed = {k: sum(r[k] for r in each) for k in ("process", "wall", *PARTS, "analyses_s")}
        rows.append(["three runs, summed", *_cells(summed), ""])
        table = H.table(["job", "process wall s", "in compare s", "scan s", "extraction s",
                         "head training s", "evaluation s", "analyses s", "recommended"], rows)
        ratio, inside = one["process"] / summed["process"], one["wall"] / summed["wall"]
        out.append(f"**{variant}**: one run / three runs = **{ratio:.2f}×** in process wall "
                   f"time (target ≤ 1: {'met' if ratio <= 1 else 'missed'}); {inside:.2f}× "
                   f"inside `compare` (imports and start-up left out).\n\n{table}")
    one = raw["default analyses"]["one"]
    pairs = H.table(["pair", "test accuracy", "latency ms (batch 1)", "parameters"],
                    [[h, f"{100 * acc:.1f} %", f"{ms:.1f}", f"{params:,}"]
                     for h, acc, ms, params in one["heads"]])
    out.append(f"The one run's pairs (default analyses):\n\n{pairs}\n\nIts verdict: "
               f"{one['verdict']}")
    return "\n\n".join(out)


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
