"""(e) bf16 vs fp32 features: test accuracy per head against the seed spread.

    python bench/section_e_bf16.py [--quick] [--out DIR] [--data DIR] [--results FILE]

The default job twice, fp32 and bf16, same splits and seeds. On a CPU without native bf16 the
bf16 job is emulated (accuracy effect only); the emulation is checked against this CPU's own bf16
kernels. The fp32 job's cached features are what (f) trains on when it runs next.
"""
from __future__ import annotations

import contextlib
import sys

import torch

import extract_paths as P
import harness as H
from headbench import backbones, runtime

KEY, TITLE = "e", "bf16 vs fp32 features: accuracy effect"
ESTIMATE_S = {"quick": 60, "full": 110}  # rough seconds on a 2-core AVX2 CPU


@contextlib.contextmanager
def bf16_enabled():
    """Let `precision='bf16'` through on a CPU without native bf16 (patching
    `runtime.bf16_native`, which `resolve_precision` asks); there the backbone's Conv2d/Linear
    get `emulate_bf16`, since this torch's emulated bf16 depthwise convolutions take seconds per
    image."""
    native, create = runtime.bf16_native, backbones.create_backbone
    runtime.bf16_native = lambda device: True
    if not H.native_bf16():
        backbones.create_backbone = lambda *a, **k: P.emulate_bf16(create(*a, **k))
    try:
        yield
    finally:
        runtime.bf16_native, backbones.create_backbone = native, create


def ci(c) -> tuple[float, float | None, float | None, list[float]]:
    return (c.mean, getattr(c, "lo", getattr(c, "low", None)),
            getattr(c, "hi", getattr(c, "high", None)), c.values)


def bf16_emulation_check(ctx: H.Ctx) -> str:
    """Per convolution, the emulation equals this CPU's bf16 kernel to rounding; over the whole
    network (2 images) the difference is compared with bf16's own difference from fp32."""
    bb = backbones.create_backbone("efficientnet_lite0", "embedded")
    emu = P.emulate_bf16(backbones.create_backbone("efficientnet_lite0", "embedded"))
    convs = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d)]
    worst = 0.0
    for conv in (next(m for m in convs if m.groups > 1), next(m for m in convs if m.groups == 1)):
        x = torch.randn(2, conv.in_channels, 28, 28)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            real, e = conv(x).float(), P._bf16_forward(conv, x).float()
        worst = max(worst, ((real - e).abs().max() / real.abs().max()).item())
    text = (f"Per convolution (one depthwise, one pointwise) the emulation matches this CPU's "
            f"bf16 kernel to {worst:.1e} of the output scale.")
    if not ctx.quick:
        x = H.load_images(ctx.data, 2, bb.data_config)
        with torch.inference_mode():
            ref = bb(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                real, e = bb(x).float(), emu(x).float()

        def rel(a, b):
            return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()
        text += (f" Whole network, 2 images: relative RMS difference of the feature maps "
                 f"emulated vs this CPU's bf16 kernels {rel(e, real):.3f}, fp32 vs those kernels "
                 f"{rel(ref, real):.3f}, emulated vs fp32 {rel(e, ref):.3f} (bf16 rounding "
                 "differences grow over 49 layers; two bf16 runs with different summation "
                 "orders differ by about half as much as bf16 differs from fp32).")
    return text


def run(ctx: H.Ctx) -> tuple[str, dict]:
    H.log("  fp32 default job")
    s32, r32 = H.cold_default_run(ctx)  # cold: (f) compares with its extraction time
    H.log("  bf16 default job" + ("" if H.native_bf16() else " (emulated)"))
    with bf16_enabled():
        s16, r16 = H.default_job(ctx, "bf16")
    label = "bf16" if H.native_bf16() else "emulated bf16 (accuracy effect only)"
    rows, raw = [], {}
    for h32 in r32.heads:
        h16 = r16.head(h32.head)
        m32, lo32, hi32, v32 = ci(h32.summary.test_accuracy)
        m16, lo16, hi16, v16 = ci(h16.summary.test_accuracy)
        spread = max(v32) - min(v32)
        paired = [b - a for a, b in zip(v32, v16)]
        inside = abs(m16 - m32) <= spread if len(v32) > 1 else None
        raw[h32.head] = dict(fp32=v32, bf16=v16, diff=m16 - m32, spread=spread, paired=paired)
        rows.append([h32.head, f"{m32:.4f} [{H.fmt(lo32, 4)}, {H.fmt(hi32, 4)}]",
                     f"{m16:.4f} [{H.fmt(lo16, 4)}, {H.fmt(hi16, 4)}]", f"{m16 - m32:+.4f}",
                     ", ".join(f"{d:+.4f}" for d in paired), f"{spread:.4f}",
                     {True: "yes", False: "**no**", None: "–"}[inside]])
    n_test = len(r32.dataset.splits["test"])
    within = sum(1 for v in raw.values() if abs(v["diff"]) <= v["spread"])
    text = (f"The default compare (`{r32.options.data}`: {len(r32.heads)} heads × "
            f"{r32.options.seeds} seeds, weight decay chosen on val) with `precision='fp32'` and "
            f"with `precision='bf16'`, same splits and seeds; {n_test} test images (one image = "
            f"{1 / n_test:.4f}). Figures labelled **{label}**"
            + ("" if H.native_bf16() else
               ": this CPU lacks avx512_bf16/amx_bf16, so `runtime.bf16_native` is patched "
               "to accept bf16, and since this torch's emulated bf16 kernels take 3–10 s per image "
               "for efficientnet_lite0's depthwise convolutions, every Conv2d/Linear computes in "
               "fp32 on bf16-rounded operands with its output rounded to bf16 (native bf16 "
               "kernels accumulate in fp32 too); all other ops run under torch's CPU bf16 "
               "autocast. " + bf16_emulation_check(ctx))
            + f" fp32 job {s32:.0f} s, bf16 job {s16:.0f} s.\n\n"
            + H.table(["head", "fp32 test acc (mean, 95 % CI over seeds)", f"{label} test acc",
                       "Δ mean", "Δ per seed (paired)", "fp32 seed spread (max−min)",
                       "Δ within spread"], rows)
            + f"\n\n{within} of {len(raw)} heads move by no more than the fp32 seed spread.")
    return text, dict(fp32_s=s32, bf16_s=s16, emulated=not H.native_bf16(), heads=raw)


def main() -> None:
    H.main({KEY: sys.modules[__name__]}, __doc__)


if __name__ == "__main__":
    main()
