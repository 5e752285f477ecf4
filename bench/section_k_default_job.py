"""(k) The default job's wall time now (cross-validated selection, the small-data curve and CAM
overlays by default) against the same job at the commit before issue 20.

    python bench/section_k_default_job.py [--quick] [--out DIR] [--data DIR] [--results FILE]

Both jobs run `compare` on the default job's data with the library's defaults of their commit,
each in a fresh process from a cold feature cache (so both extract), report included, in two
alternating rounds; the figure is the ratio of the median wall times. The commit before is
checked out with `git archive` under the work folder.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import io

import harness as H

KEY, TITLE = "k", "The default job's wall time: now vs the commit before issue 20"
ESTIMATE_S = {"quick": 60, "full": 120}  # rough seconds on a 2-core CPU
BEFORE = "81c7896"  # the last commit before issue 20's work (issue 19's engine and earlier)
TARGET = 1.5

JOB = H.COMPARE_JOB + """
print(json.dumps(dict(wall=wall, analyses=sorted(run.analyses), train_s=run.timing.train_s,
                      extract_s=run.timing.extract_s, best=run.best_head)))
"""


def source_of(ctx: H.Ctx, commit: str) -> str:
    """The src/ folder of `commit`, extracted once under the work folder."""
    root = ctx.out / "work" / f"src-{commit}"
    if not (root / "src" / "headbench").is_dir():
        tar = subprocess.run(["git", "-C", str(H.ROOT), "archive", commit, "src"],
                             capture_output=True, check=True).stdout
        root.mkdir(parents=True, exist_ok=True)
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(root, filter="data")
    return str(root / "src")


def job(ctx: H.Ctx, src: str, name: str) -> dict:
    folder, options = ctx.job()
    return H.compare_in_child(JOB, ctx.out / "work" / f"wall-{name}", folder, options,
                              env=dict(PYTHONPATH=src))


def run(ctx: H.Ctx) -> tuple[str, dict]:
    sources = {"before": source_of(ctx, BEFORE), "now": str(H.ROOT / "src")}
    rounds = {name: [] for name in sources}
    for i in range(2):
        for name, src in sources.items():
            H.log(f"  round {i + 1}: {name}")
            rounds[name].append(job(ctx, src, name))
    raw = dict(rounds=rounds, before=BEFORE, target=TARGET)
    return report(raw), raw


def report(raw: dict) -> str:
    walls = {name: H.median([r["wall"] for r in runs]) for name, runs in raw["rounds"].items()}
    ratio = walls["now"] / walls["before"]
    rows = [[name, f"{walls[name]:.1f}",
             H.fmt(H.median([r["extract_s"] for r in raw["rounds"][name]])),
             H.fmt(H.median([r["train_s"] for r in raw["rounds"][name]])),
             ", ".join(raw["rounds"][name][0]["analyses"]) or "none",
             raw["rounds"][name][0]["best"]] for name in ("before", "now")]
    table = H.table(["job", "wall s (median of 2)", "extraction s", "head training s",
                     "analyses", "recommended"], rows)
    met = "met" if ratio <= raw["target"] else "missed"
    return (f"The default job from a cold cache, report included, in fresh processes: the commit "
            f"before issue 20 ({raw['before']}) and now (cross-validated selection, `--shots "
            f"1,5,25,all --cam 2` by default).\n\n{table}\n\n**Now / before: {ratio:.2f}×** "
            f"(target ≤ {raw['target']}: {met}; so the small-data curve and CAM overlays run in "
            "the default job).")


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
