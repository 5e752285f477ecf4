"""(g) The default job with 4 cached augmented views per training image and the best head
fine-tuned end to end: the change per head, fine-tuned vs frozen, fine-tuning img/s (issue 11).

    python bench/section_g_finetune.py [--quick] [--out DIR] [--data DIR] [--results FILE]
"""
from __future__ import annotations

import sys

import numpy as np

import harness as H
import headbench as hb
from headbench import finetune as ft

KEY, TITLE = "g", "Cached augmented views and fine-tuning (issue 11)"
ESTIMATE_S = {"quick": 120, "full": 180}  # rough seconds on a 2-core AVX2 CPU


def finetune_rates(run: hb.Run, ft_head) -> dict[str, float]:
    """Fine-tuning images/s of the run's model on this CPU, fp32 and (where native) bf16."""
    model = hb.load_model(run.model_dir(ft_head.variant.of), device="cpu")
    split = run.dataset.splits["train"]
    images = ft.Images([run.dataset.path("train", i) for i in range(len(split))], split.digests,
                       np.asarray(split.labels))
    cfg = run.options.finetune_config()
    out = {}
    for precision in ("fp32", "bf16") if H.native_bf16() else ("fp32",):
        model.freeze(False)
        out[f"{precision}, channels_last"] = ft.measure_throughput(
            model, images, cfg, ft_head.weight_decay, H.CPU, precision, steps=3)
    return out


def interval(f) -> str:
    return "—" if f.lo is None else f"[{100 * f.lo:+.1f}, {100 * f.hi:+.1f}] pp"


def finding_rows(run: hb.Run) -> list[list]:
    """One row per augmentation or fine-tuning finding: the variant against what it started from."""
    rows = []
    for f in run.findings:
        if f.kind in ("augmentation", "finetune"):
            a, b = run.head(f.a), run.head(f.b)
            frozen = (b.summary.test_accuracy.mean if f.kind == "augmentation" else
                      next(s.test.accuracy for s in b.seeds if s.seed == a.variant.from_seed))
            rows.append([f.a, H.pct(frozen), H.pct(a.summary.test_accuracy.mean),
                         f"{100 * f.diff:+.1f} pp", interval(f), H.fmt(f.p_adjusted, 3),
                         hb.evaluate.select_head([b, a]).head])
    return rows


def run(ctx: H.Ctx) -> tuple[str, dict]:
    """Issue 11: the default job with 4 cached augmented views and the best head fine-tuned."""
    folder, options = ctx.job()
    options.update(aug_views=4, finetune=True)
    if ctx.quick:
        options.update(finetune_epochs=2)
    work = ctx.fresh("finetune")
    wall, job = H.timed(lambda: hb.compare(folder, cache_dir=work / "cache", out=work, **options))
    ft_head = next(h for h in job.heads if h.finetuned)
    rates = finetune_rates(job, ft_head)
    s0 = ft_head.seeds[0]
    raw = dict(wall_s=wall, train_s=job.timing.train_s, ft_s=s0.train_time_s,
               ft_epochs=s0.epochs_run, ft_best_epoch=s0.best_epoch, rates=rates,
               best_head=job.best_head, findings=[f.text for f in job.findings
                                                  if f.kind in ("augmentation", "finetune")])
    settings = ft_head.variant.settings
    text = (f"`compare` on `{folder}` ({len(job.heads)} entries: "
            f"{', '.join(s.label for s in job.options.heads)} frozen, each also on 4 cached "
            f"augmented views paired by seed, and the best frozen head on val fine-tuned), "
            f"precision {job.precision}, cold cache. Whole job {wall:.0f} s, of which head "
            f"training {job.timing.train_s:.0f} s and fine-tuning {ft_head.variant.of} "
            f"{s0.train_time_s:.0f} s ({s0.epochs_run} epochs, best {s0.best_epoch}; unfreeze "
            f"{settings['unfreeze']}, BatchNorm {settings['bn']}, {settings['precision']})."
            f" Selected head on val: **{job.best_head}**.\n\n"
            + H.table(["variant", "frozen test acc (+ft: its starting seed)", "variant test acc",
                       "change", "95% CI", "Holm p", "val selects"], finding_rows(job))
            + "\n\nAugmented views: interval over seeds (paired t); fine-tuning: one seed against "
              "the frozen seed it started from, paired bootstrap over test images; p-values "
              "Holm-adjusted over every finding of the run.\n\n"
            + H.table(["fine-tuning step (batch 32, forward + backward + AdamW, decoding "
                       "included)", "img/s"], [[k, H.fmt(v)] for k, v in rates.items()]))
    return text, raw


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
