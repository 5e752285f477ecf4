"""(h) ONNX: the best head's model on four CPU engines, extraction through onnxruntime (issue 12).

    python bench/section_h_onnx.py [--quick] [--out DIR] [--data DIR] [--results FILE]

The engines themselves are timed in onnx_bench.py (needs `headbench[onnx]`).
"""
from __future__ import annotations

import sys

import numpy as np

import harness as H
import headbench as hb

KEY, TITLE = "h", "ONNX: the best head on four CPU engines, extraction through onnxruntime (issue 12)"
ESTIMATE_S = {"quick": 90, "full": 240}  # rough seconds on a 2-core AVX2 CPU


def run(ctx: H.Ctx) -> tuple[str, dict]:
    """Issue 12: the best head's model on four CPU engines; extraction through onnxruntime."""
    # imported here so that the other sections run where onnxruntime is not installed
    from onnx_bench import classifier_rows, extractor_rows
    folder, options = ctx.job()
    work = ctx.fresh("onnx")
    job = hb.compare(folder, cache_dir=work / "cache", out=work, report=False, **options)
    best = job.head(job.best_head)
    split = job.dataset.splits["test"]
    paths = [job.dataset.path("test", i) for i in range(len(split))]
    engines = classifier_rows(job.model_dir(best.head), paths, np.asarray(split.labels), work)
    accs = [s.test.accuracy for s in best.seeds]
    spread = max(accs) - min(accs)
    extract = extractor_rows(work, batches=2 if ctx.quick else 4)
    text = (f"The best head on val of `compare` on `{folder}` (**{best.head}**, seed "
            f"{best.best_seed}; its test accuracy over {len(accs)} seeds spans "
            f"{100 * spread:.1f} pp), exported with `hb.export_onnx` (verified: max abs logit "
            f"difference ≤ 1e-4), on {len(paths)} test images at "
            f"{job.backbone.data_config['input_size'][-1]} px; batch-1 latency is the median of "
            "30 calls, batch-32 throughput from the median of 5.\n\n"
            + report(engines, extract))
    return text, dict(best_head=best.head, seed_spread=spread, engines=engines,
                      extraction=extract)


def report(engines: list[dict], extract: list[dict]) -> str:
    base = engines[0]
    rows = [[e["engine"], H.fmt(e["latency_ms"], 2), H.fmt(e["throughput"]),
             f"{e['max_diff']:.2g}", H.pct(e["accuracy"]),
             f"{100 * (e['accuracy'] - base['accuracy']):+.1f} pp"] for e in engines]
    ext_rows = [[e["backbone"], H.fmt(e["fp32"]), H.fmt(e["headbench"]), H.fmt(e["ort"]),
                 f"{e['ort'] / e['headbench']:.2f}×", f"{e['max_diff']:.2g} "
                 f"(largest feature {e['max_feature']:.3g})"] for e in extract]
    faster = [e["backbone"] for e in extract if e["ort"] > e["headbench"]]
    return (H.table(["engine", "batch-1 latency (ms)", "batch-32 img/s",
                     "max abs logit diff vs fp32", "test accuracy", "vs fp32"], rows)
            + "\n\nFeature extraction (backbone only, batch 32, 224 px): PyTorch fp32 eager "
              "NCHW, headbench's extraction path (BatchNorm folded, channels_last, "
              f"{extract[0]['precision']}), onnxruntime fp32.\n\n"
            + H.table(["backbone", "PyTorch fp32 img/s", "headbench img/s",
                       "onnxruntime fp32 img/s", "onnxruntime / headbench",
                       "onnxruntime max abs diff vs fp32"], ext_rows)
            + "\n\n" + ("onnxruntime extracts faster than headbench's path for "
                          + ", ".join(faster) if faster else
                          "onnxruntime is not faster than headbench's own extraction path on this "
                          "CPU, so it is not offered as an extraction engine.")
            + " onnxruntime's int8 dynamic quantisation quantises the convolutions per call "
              "(ConvInteger): compare its latency and its accuracy change with the seed spread "
              "above before deploying it.")


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
