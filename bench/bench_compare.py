"""headbench compare vs the naive per-head recipe, measured in one run on this machine.

The naive recipe is what users run today: one model per head, the frozen backbone recomputed on
every image every epoch (train and validation), timm's fp32 NCHW eager default. headbench runs
the backbone once per image (bf16 + channels_last where the CPU supports it) into a cold feature
cache and trains every head on the cached maps.

Every naive epoch does identical work, so the naive side is timed over `--naive-epochs` epochs per
head and scaled to `--epochs` (the measured and the extrapolated figures are both printed).

    python bench/bench_compare.py [--data ../shared/datasets/hymenoptera] [--naive-epochs 1]
"""
from __future__ import annotations

import argparse

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import headbench as hb
from headbench import progress
from headbench.backbones import create_backbone
from headbench.data import make_transform
from headbench.features import ImageFiles
from headbench.heads import create_head
from headbench.run import Run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def run_headbench(args, out: Path) -> tuple[float, Run]:
    """The whole compare from a cold cache: extraction, training, evaluation, files, report."""
    t0 = time.perf_counter()
    run = hb.compare(args.data, backbone=args.backbone, weights=args.weights, heads=args.heads,
                     seeds=1, epochs=args.epochs, weight_decays=[1e-4], patience=None,
                     cache_dir=out / "cache", out=out)
    return time.perf_counter() - t0, run


def naive_epoch_seconds(args, run: Run, head_name: str) -> float:
    """Seconds per epoch of the naive recipe for one head (mean over the measured epochs)."""
    splits = {role: run.dataset.splits[role] for role in ("train", "val")}
    backbone = create_backbone(args.backbone, args.weights)  # fp32, NCHW, eager: timm's default
    for p in backbone.parameters():
        p.requires_grad_(False)
    c, h, w = backbone.feature_shape()
    head = create_head(head_name, c, len(run.classes), (h, w))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    transform = make_transform(backbone.data_config)
    root = Path(run.dataset.root)
    loaders = {role: DataLoader(ImageFiles([root / p for p in split.paths], transform),
                                batch_size=32, shuffle=role == "train", num_workers=args.workers)
               for role, split in splits.items()}
    labels = {role: torch.from_numpy(split.labels) for role, split in splits.items()}
    t0 = time.perf_counter()
    for _ in range(args.naive_epochs):
        head.train()
        for x, idx, _reason in loaders["train"]:
            loss = torch.nn.functional.cross_entropy(head(backbone(x)), labels["train"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            for x, idx, _reason in loaders["val"]:
                torch.nn.functional.cross_entropy(head(backbone(x)), labels["val"][idx])
    return (time.perf_counter() - t0) / args.naive_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="none", help="weights do not change the timing")
    parser.add_argument("--heads", default="gap,flatten,avgpool,gmp,gem")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--naive-epochs", type=int, default=1, help="naive epochs timed per head")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.heads = args.heads.split(",")
    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; pass --data FOLDER")
    progress.set_quiet(True)

    with tempfile.TemporaryDirectory() as tmp:
        ours, run = run_headbench(args, Path(tmp))
        per_epoch = {h: naive_epoch_seconds(args, run, h) for h in args.heads}
    measured = sum(per_epoch.values()) * args.naive_epochs
    naive = sum(per_epoch.values()) * args.epochs
    print(f"## compare vs naive: {len(args.heads)} heads × {args.epochs} epochs, {args.backbone}, "
          f"{args.data.name}, {torch.get_num_threads()} threads")
    print("| recipe | seconds |")
    print("|---|---|")
    print(f"| headbench compare, cold cache (extract + train + evaluate + files + report) | {ours:.1f} |")
    for h, s in per_epoch.items():
        print(f"| naive, {h}: {s:.1f} s/epoch × {args.epochs} | {s * args.epochs:.1f} |")
    print(f"| naive total ({measured:.1f} s measured over {args.naive_epochs} epoch(s) per head, "
          f"scaled to {args.epochs}) | {naive:.1f} |")
    print(f"\n**speed-up: {naive / ours:.1f}×**")


if __name__ == "__main__":
    main()
