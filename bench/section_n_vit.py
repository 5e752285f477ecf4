"""(n) A Vision Transformer on the default job's data (issue 23): token extraction against the
same ViT's timm default forward, and a compare of its heads, random weights (for timing only).

    python bench/section_n_vit.py [--quick] [--out DIR] [--data DIR] [--results FILE]

Extraction: headbench's extraction copy of the backbone (`backbones.inference_copy`, tokens
kept as a (N, C, 1, T) row) against `timm.create_model(...)(x)` (its default forward, the
classifier included), on the same batches of 32 random images at the model's 224 px, fp32,
median of 5 timed calls after 2 untimed; then the whole job's extraction rate (decoding
included) from the compare, which trains token, avg, map, gap and flatten at the defaults.
"""
from __future__ import annotations

import statistics
import sys
import time

import timm
import torch

import harness as H
import headbench as hb
from headbench.backbones import create_backbone, inference_copy

KEY, TITLE = "n", "A Vision Transformer: token extraction and its heads"
ESTIMATE_S = {"quick": 60, "full": 150}  # rough seconds on a 2-core CPU
VIT = "vit_tiny_patch16_224"
HEADS = "token,avg,map,gap,flatten"


def _rate(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Images per second of `module` on batch `x` (median of 5 calls after 2)."""
    times = []
    with torch.inference_mode():
        for i in range(7):
            start = time.perf_counter()
            module(x)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def run(ctx: H.Ctx) -> tuple[str, dict]:
    device = torch.device("cpu")
    x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours = inference_copy(create_backbone(VIT, weights="none"), device)
    plain = timm.create_model(VIT, pretrained=False).eval()
    rates = {"headbench extraction (tokens)": _rate(ours, x.contiguous(
        memory_format=torch.channels_last)), "timm default forward": _rate(plain, x)}
    folder, options = ctx.job()
    H.log(f"  compare {VIT} on {folder.name}")
    run = hb.compare(folder, backbone=VIT, weights="none", out=ctx.out / "work" / "vit",
                     cache_dir=ctx.out / "work" / "vit-cache", **{**options, "heads": HEADS})
    t = run.timing
    raw = dict(rates=rates, extract_s=t.extract_s, n=t.n_extracted, train_s=t.train_s,
               total_s=t.total_s, best=run.best_head, verdict=run.verdict.text,
               heads=[(h.head, h.head_params, h.summary.test_accuracy.mean) for h in run.heads])
    return report(raw), raw


def report(raw: dict) -> str:
    rates = raw["rates"]
    ratio = rates["headbench extraction (tokens)"] / rates["timm default forward"]
    table = H.table(["forward, batch 32, 224 px, fp32", "img/s"],
                    [[k, f"{v:.1f}"] for k, v in rates.items()])
    heads = H.table(["head", "head parameters", "test accuracy"],
                    [[h, f"{p:,}", f"{100 * a:.1f} %"] for h, p, a in raw["heads"]])
    return (f"{VIT}, random weights (timing only: the accuracies below are of random "
            f"features).\n\n{table}\n\n**Token extraction / timm's default forward: "
            f"{ratio:.2f}×.** The compare extracted {raw['n']} images in {raw['extract_s']:.1f} s "
            f"({raw['n'] / raw['extract_s']:.1f} img/s, decoding included); head training "
            f"{raw['train_s']:.1f} s, the job {raw['total_s']:.1f} s.\n\n{heads}\n\nVerdict: "
            f"{raw['verdict']}")


if __name__ == "__main__":
    H.main({KEY: sys.modules[__name__]}, __doc__)
