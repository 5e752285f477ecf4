"""(b) Extraction img/s: headbench's extractor vs timm's fp32 NCHW eager default, other forward
paths (channels_last, BN folding, oneDNN, torch.jit, torch.compile, bf16, threads, batch sizes),
logit agreement, fraction of the machine's measured matmul peak.

    python bench/section_b_extraction.py [--quick] [--out DIR] [--data DIR] [--results FILE]

Compute only: decoded images already in memory. The forward paths themselves are in
extract_paths.py.
"""
from __future__ import annotations

import math
import sys

import torch

import extract_paths as P
import harness as H
from headbench import backbones
from headbench.model import count_flops
from headbench.runtime import resolve_precision

KEY, TITLE = "b", "Extraction: forward paths, vs timm's default and vs the machine's peak"
ESTIMATE_S = {"quick": 45, "full": 620}  # rough seconds on a 2-core AVX2 CPU
TIMM = "timm default: fp32 NCHW eager"


def classifier_for(bb: backbones.Backbone) -> torch.nn.Linear:
    """ImageNet classifier on the pooled map: the embedded one for efficientnet_lite0, a seeded
    random one otherwise (logit agreement then checks arithmetic, not meaning)."""
    clf = torch.nn.Linear(bb.num_features, 1000)
    if bb.weights == "embedded":
        with torch.device("meta"):
            full = backbones._timm_model(bb.timm_name, num_classes=1000)
        state = backbones._embedded_state_dict(full)
        clf.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            clf.reset_parameters()
    return clf.eval()


def agreement(fn, x: torch.Tensor, batch: int, clf, ref_logits: torch.Tensor) -> dict:
    with torch.inference_mode():
        feats = torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])
        logits = clf(feats.mean((2, 3)))
    n = len(logits)
    ref = ref_logits[:n]
    return {"max_abs_logit_diff": (logits - ref).abs().max().item(),
            "logit_scale": ref.abs().max().item(),
            "top1_agree": (logits.argmax(1) == ref.argmax(1)).float().mean().item(), "n": n}


def peak_fracs(flops: float, img_s: float, peak: dict) -> dict:
    return {"fp32_peak_frac": flops * img_s / peak["fp32"],
            "bf16_peak_frac": flops * img_s / peak["bf16"]}


def extraction_paths(name: str, weights: str, ctx: H.Ctx, peak: dict) -> dict:
    """Every forward path of one backbone: img/s at the main batch size, setup cost, logit
    agreement with timm's default; thread counts and batch sizes for the main paths."""
    quick = ctx.quick
    batch, rounds = (16, 2) if quick else (32, 3 if name == "efficientnet_lite0" else 2)
    bb = backbones.create_backbone(name, weights)
    images = H.load_images(ctx.data, batch, bb.data_config)
    x = images[:batch]
    flops = count_flops(bb, x[:1])
    clf = classifier_for(bb)
    precision = resolve_precision("auto", H.CPU, "extract")
    out = {"flops_per_image": flops, "batch": batch, "rounds": rounds, "paths": {}}
    paths = [P.timm_default(bb), P.headbench(bb, precision), P.channels_last(bb),
             P.onednn_off(bb), P.jit_frozen(bb, x)]
    if not quick:
        paths += [P.compiled(bb, x, freezing=False), P.compiled(bb, x, freezing=True)]
    with torch.inference_mode():
        ref_logits = clf(paths[0].fn(x).mean((2, 3)))
    H.log(f"  {name}: timing {len(paths)} paths, batch {batch}, {rounds} rounds")
    secs = H.interleaved({p.name: (lambda p=p: p.fn(x)) for p in paths}, rounds)
    for p in paths:
        rate = batch / secs[p.name]
        row = {"img_s": rate, "setup_s": p.setup_s, **agreement(p.fn, x, batch, clf, ref_logits),
               **peak_fracs(flops, rate, peak)}
        row.update({k: v for k, v in p.extra.items() if k == "folded"})
        out["paths"][p.name] = row
    plain = H.in_child(__file__, dict(kind="forward", name=name, weights=weights, batch=batch,
                                      rounds=rounds))
    out["paths"]["timm default, in a plain process (glibc allocator untouched)"] = {
        "img_s": plain, "setup_s": 0.0, **peak_fracs(flops, plain, peak),
        "max_abs_logit_diff": 0.0, "logit_scale": out["paths"][TIMM]["logit_scale"],
        "top1_agree": 1.0, "n": batch}
    for p in paths:
        if p.name.startswith("torch.compile") and "freezing" not in p.name:
            H.log(f"  {name}: recompile on a ragged batch, warm compile")
            out["paths"][p.name].update(P.compile_extras(p, x))
    if H.native_bf16() or not quick:
        out["paths"].update(bf16_path(name, bb, x, clf, ref_logits, flops, peak, rounds))
    out.update(scaling(paths, out["paths"], images, x, rounds, quick))
    return out


def bf16_path(name: str, bb, x: torch.Tensor, clf, ref_logits: torch.Tensor, flops: float,
              peak: dict, rounds: int) -> dict:
    """bf16 autocast: emulated kernels take seconds per image here, so one image, one call."""
    bf16 = P.bf16_autocast(bb)
    small = len(x) if H.native_bf16() else 1
    H.log(f"  {name}: bf16 autocast at batch {small}"
          + ("" if H.native_bf16() else " (emulated on this CPU: slow)"))
    if H.native_bf16():
        s = H.interleaved({"bf16": lambda: bf16.fn(x)}, rounds)["bf16"]
        feats = bf16.fn(x)
    else:
        s, feats = H.timed(lambda: bf16.fn(x[:1]))  # includes oneDNN's first-call setup
    return {bf16.name: {"img_s": small / s, "setup_s": 0.0, "batch": small,
                        **agreement(lambda _: feats, x[:small], small, clf, ref_logits),
                        **peak_fracs(flops, small / s, peak), "emulated": not H.native_bf16()}}


def scaling(paths: list, rows: dict, images: torch.Tensor, x: torch.Tensor, rounds: int,
            quick: bool) -> dict:
    """img/s by thread count (batch `x`) and by batch size of timm's default, headbench's
    extractor and the fastest eager path (compiled ones would recompile per batch size)."""
    batch = len(x)
    uncompiled = [p for p in paths if not p.name.startswith("torch.compile")]
    best = max(uncompiled[1:], key=lambda p: rows[p.name]["img_s"])
    main = list({p.name: p for p in (paths[0], paths[1], best)}.values())
    out = {"threads": {}, "batch_sizes": {}, "best_eager": best.name}
    threads = torch.get_num_threads()
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        s = H.interleaved({p.name: (lambda p=p: p.fn(x)) for p in main}, rounds)
        out["threads"][n_threads] = {k: batch / v for k, v in s.items()}
    torch.set_num_threads(threads)
    sizes = (8, 16) if quick else (8, 16, 32, 64)
    big = torch.cat([images] * (-(-max(sizes) // len(images))))
    for bs in sizes:
        s = H.interleaved({p.name: (lambda p=p: p.fn(big[:bs])) for p in main[1:]}, rounds)
        out["batch_sizes"][bs] = {k: bs / v for k, v in s.items()}
    return out


def compile_payoff(res: dict, batch: int) -> list[list]:
    """Seconds to extract N images (compute only) eager vs compiled, cold and warm compile."""
    paths = res["paths"]
    eager = next(v for k, v in paths.items() if k.startswith("headbench"))
    comp = paths.get("torch.compile (inductor)")
    if not comp:
        return []
    rows = []
    for n in (400, 20_000):
        ragged = comp.get("recompile_ragged_s", 0.0) if n % batch else 0.0
        e = n / eager["img_s"]
        cold = comp["setup_s"] + ragged + n / comp["img_s"]
        warm = comp.get("warm_compile_s", math.nan) + ragged + n / comp["img_s"]
        rows.append([f"{n:,}", H.fmt(e), H.fmt(cold), H.fmt(warm),
                     "yes" if cold < e else ("warm only" if warm < e else "no")])
    return rows


def run(ctx: H.Ctx) -> tuple[str, dict]:
    H.log("  matmul rates (2048² fp32, 512² bf16)")
    peak = {"fp32": P.matmul_rate(torch.float32, 2048), "bf16": P.matmul_rate(torch.bfloat16, 512)}
    which = [("efficientnet_lite0", "embedded")] + ([] if ctx.quick else [("resnet50", "none")])
    results = {name: extraction_paths(name, w, ctx, peak) for name, w in which}
    # (c) compares its loader with these rates when it runs after (b)
    ctx.shared["extract_rates"] = {n: next(v["img_s"] for k, v in r["paths"].items()
                                           if k.startswith("headbench")) for n, r in results.items()}
    threads = torch.get_num_threads()
    parts = [f"Compute only: decoded 224 px images already in memory ({ctx.data.name}, spread over "
             f"the folder), {threads} torch threads, the paths timed round by round "
             "(medians; the first round is a warm-up). Matmul peak measured in this run with "
             f"{threads} threads: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s (2048²), "
             f"bf16 {peak['bf16'] / 1e9:.2f} GFLOP/s (512²). "
             + ("This CPU has native bf16, so the bf16 rate is the relevant peak." if H.native_bf16()
                else "This CPU has no avx512_bf16/amx_bf16: bf16 is emulated (converted to fp32 "
                     "in software), so **the fp32 rate is the relevant peak** and the bf16 fraction "
                     "is shown only as the issue asks for it.")
             + " Logit agreement: the backbone's features → global average pool → an ImageNet "
             "classifier (the embedded one for efficientnet_lite0; a seeded random one for "
             "resnet50 with `--weights none`), compared with timm's default on the same images; "
             "headbench's extractor stores float16, so its difference includes that rounding."]
    for name, r in results.items():
        parts += backbone_parts(name, r, ctx.shared["extract_rates"][name])
    return "\n\n".join(parts), {"peak_flops": peak, **results}


def backbone_parts(name: str, r: dict, hb_rate: float) -> list[str]:
    """The tables of one backbone: paths, threads, batch sizes, torch.compile's payoff."""
    base = r["paths"][TIMM]["img_s"]
    rows = []
    for k, v in r["paths"].items():
        note = []
        if "folded" in v:
            note.append(f"{v['folded']} BN folded")
        if "recompile_ragged_s" in v:
            note.append(f"recompile for a ragged last batch {v['recompile_ragged_s']:.1f} s, "
                        f"warm compile {v['warm_compile_s']:.1f} s")
        if v.get("emulated"):
            note.append(f"emulated bf16, batch {v['batch']}")
        rows.append([k, H.fmt(v["setup_s"]), H.fmt(v["img_s"]), f"{v['img_s'] / base:.2f}×",
                     f"{v['img_s'] / hb_rate:.2f}×", f"{100 * v['fp32_peak_frac']:.1f} %",
                     f"{100 * v['bf16_peak_frac']:.0f} %",
                     f"{v['max_abs_logit_diff']:.2g} (of {v['logit_scale']:.3g})",
                     f"{100 * v['top1_agree']:.0f} % of {v['n']}", "; ".join(note)])
    parts = [f"### {name}\n\n{r['flops_per_image'] / 1e9:.2f} GFLOP per image (224 px, "
             f"`count_flops`), batch {r['batch']}, {r['rounds']} rounds.\n\n"
             + H.table(["path", "setup s", "img/s", "vs timm default", "vs headbench",
                        "of fp32 peak", "of bf16 peak", "max abs logit diff",
                        "top-1 agreement", "note"], rows)]
    t = r["threads"]
    names = list(t[max(t)])
    th = H.table(["path"] + [f"{n} thread{'s' * (n > 1)} img/s" for n in t] + ["scaling"],
                 [[k] + [H.fmt(t[n][k]) for n in t] + [f"{t[max(t)][k] / t[1][k]:.2f}×"]
                  for k in names])
    b = r["batch_sizes"]
    bs = H.table(["path"] + [f"batch {n} img/s" for n in b],
                 [[k] + [H.fmt(b[n][k]) for n in b] for k in b[min(b)]])
    parts.append(f"Threads (batch {r['batch']}):\n\n{th}\n\nBatch sizes:\n\n{bs}")
    payoff = compile_payoff(r, r["batch"])
    if payoff:
        parts.append("Does torch.compile pay off? Seconds of backbone compute for N images "
                     "(compile included; a last batch of another size costs a recompile):\n\n"
                     + H.table(["images", "headbench extractor", "compiled, cold cache",
                                "compiled, warm cache", "pays off"], payoff))
    return parts


def forward_child(spec: dict) -> dict:
    """timm's default forward in a plain process: glibc's allocator untouched, as in a user's
    timm script (this process tuned it)."""
    bb = backbones.create_backbone(spec["name"], spec["weights"])
    x = torch.randn(spec["batch"], 3, 224, 224)
    path = P.timm_default(bb)
    s = H.interleaved({"x": lambda: path.fn(x)}, spec["rounds"])["x"]
    return {"img_s": spec["batch"] / s}


CHILDREN = {"forward": forward_child}


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
