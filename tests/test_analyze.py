"""Tests of the analyses (translation, resolution, small data, CAMs) and the findings."""
from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headbench.errors import HeadbenchError
from headbench.heads import HeadSpec, create_head
from headbench.train import TrainConfig, seeded

an = importlib.import_module("headbench.analyze")  # the module; `headbench.analyze` is the function


# --------------------------------------------------------------------------------------------
# translation: known answers

def _circular_backbone(stride: int) -> nn.Module:
    """All-conv net with circular padding: a circular shift by a multiple of its stride shifts
    the feature map circularly, so a GAP head sees exactly the same pooled vector."""
    with seeded(0):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=stride, padding=1, padding_mode="circular"), nn.ReLU()).eval()


def _shifted_predictions(backbone: nn.Module, head: nn.Module, images: torch.Tensor,
                         shift: int) -> tuple[np.ndarray, list[np.ndarray]]:
    with torch.no_grad():
        ref = head(backbone(images)).argmax(1).numpy()
        shifted = [head(backbone(torch.roll(images, (shift * dy, shift * dx), dims=(2, 3))))
                   .argmax(1).numpy() for dx, dy in an.DIRECTIONS]
    return ref, shifted


@pytest.mark.parametrize("stride,shift", [(1, 3), (2, 4)])
def test_gap_head_on_circular_conv_net_has_consistency_one(stride, shift):
    backbone = _circular_backbone(stride)
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with seeded(0):
        head = create_head("gap", 16, 5, (16 // stride, 16 // stride)).eval()
    ref, shifted = _shifted_predictions(backbone, head, images, shift)
    assert an.shift_consistency(ref, shifted) == 1.0


def test_flatten_head_on_circular_conv_net_is_not_shift_consistent():
    backbone = _circular_backbone(1)
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with seeded(0):
        head = create_head("flatten", 16, 5, (16, 16)).eval()
    ref, shifted = _shifted_predictions(backbone, head, images, 3)
    assert an.shift_consistency(ref, shifted) < 0.9


def test_shift_consistency_counts_agreeing_pairs():
    ref = np.array([0, 1, 2, 3])
    assert an.shift_consistency(ref, [np.array([0, 1, 2, 0]), np.array([0, 0, 0, 3])]) == 5 / 8


def test_shift_views_move_real_image_content_by_the_shift():
    from headbench.data import make_transform
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
           "interpolation": "bilinear", "crop_pct": 0.875}
    views = an.shift_views([0, 4, 8])
    assert len(views) == 1 + 2 * len(an.DIRECTIONS)
    assert {v.margin for v in views.values()} == {8}
    ref = make_transform(cfg, views[(0, None)])(img)
    for (s, d), view in views.items():
        if s == 0:
            continue
        x = make_transform(cfg, view)(img)
        dx, dy = s * d[0], s * d[1]
        # The window moved by (dx, dy): pixel (r, c) of the shifted crop is (r+dy, c+dx) of ref.
        rows, cols = slice(max(0, -dy), 32 - max(0, dy)), slice(max(0, -dx), 32 - max(0, dx))
        rows_ref = slice(rows.start + dy, rows.stop + dy)
        cols_ref = slice(cols.start + dx, cols.stop + dx)
        assert torch.equal(x[:, rows, cols], ref[:, rows_ref, cols_ref])
        assert not torch.equal(x, ref)


# --------------------------------------------------------------------------------------------
# class activation maps

def test_exact_cam_of_gap_head_averages_to_its_logits():
    with seeded(0):
        head = create_head("gap", 12, 4, (5, 5)).eval()
    f = torch.randn(12, 5, 5)
    cam = an.exact_cam(head, f)
    assert cam.shape == (4, 5, 5)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), head(f[None])[0].detach(), atol=1e-5,
                               rtol=0)


def test_exact_cam_of_dense_map_head_averages_to_its_logits():
    with seeded(0):
        head = create_head("dense_map", 12, 4, (5, 5)).eval()
    f = torch.randn(1, 12, 5, 5)
    torch.testing.assert_close(an.exact_cam(head, f).mean(dim=(1, 2)), head(f)[0].detach(),
                               atol=1e-5, rtol=0)


def test_exact_cam_refuses_head_with_hidden_layers():
    head = create_head("gap", 12, 4, (5, 5), hidden=[8])
    with pytest.raises(HeadbenchError, match="not linear"):
        an.exact_cam(head, torch.randn(12, 5, 5))


def _planted_map() -> torch.Tensor:
    f = 0.01 * torch.rand(6, 5, 5, generator=torch.Generator().manual_seed(0))
    f[0, 2, 3] = 5.0
    return f


@pytest.mark.parametrize("name", ["gap", "gmp", "flatten"])
def test_grad_cam_highlights_the_planted_feature(name):
    head = create_head(name, 6, 3, (5, 5)).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        fc = head.fc.weight.view(3, 6, -1)  # flatten orders features channel-major
        fc[1, 0] = 1.0  # class 1 responds to channel 0 (at every position)
    cam = an.grad_cam(head, _planted_map(), class_index=1)
    assert cam.shape == (5, 5)
    assert (cam >= 0).all()
    assert divmod(int(cam.argmax()), 5) == (2, 3)


def test_overlay_cam_is_an_image_of_the_crop_size():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    cam = torch.zeros(4, 4)
    cam[0, 0] = 1.0
    out = np.asarray(an.overlay_cam(image, cam))
    assert out.shape == (32, 32, 3)
    assert not np.array_equal(out[0, 0], out[31, 31])  # the hot corner is coloured differently


# --------------------------------------------------------------------------------------------
# small data and options

def test_stratified_subset_takes_k_per_class_and_differs_per_seed():
    labels = np.repeat([0, 1, 2], [10, 10, 3])
    idx0, short = an.stratified_subset(labels, 5, seed=0)
    assert np.bincount(labels[idx0]).tolist() == [5, 5, 3]
    assert short == [2]
    idx1, _ = an.stratified_subset(labels, 5, seed=1)
    assert not np.array_equal(idx0, idx1)
    one, _ = an.stratified_subset(labels, 1, seed=0)
    assert set(one) <= set(idx0)  # nested for one seed
    assert len(an.stratified_subset(labels, "all", seed=0)[0]) == len(labels)


def test_option_parsers_validate_and_sort():
    assert an.parse_shifts("16,8,8") == [0, 8, 16]
    assert an.parse_sizes([288, 160]) == [160, 288]
    assert an.parse_shots("all,25,1") == [1, 25, "all"]
    with pytest.raises(HeadbenchError, match="--shifts"):
        an.parse_shifts("-8")
    with pytest.raises(HeadbenchError, match="--sizes"):
        an.parse_sizes("8")
    with pytest.raises(HeadbenchError, match="--shots"):
        an.parse_shots("0,five")


# --------------------------------------------------------------------------------------------
# findings

def _head(name: str, test: list[float], train: list[float], params: int, fixed: bool) -> dict:
    seeds = [{"seed": s, "train": {"accuracy": tr}, "test": {"accuracy": te}}
             for s, (tr, te) in enumerate(zip(train, test))]
    return {"head": name, "spec": {"name": name}, "fixed_size": fixed, "head_params": params,
            "seeds": seeds}


def _results(gap: list[float], flatten: list[float]) -> dict:
    return {"heads": [_head("gap", gap, [0.95] * len(gap), 20490, False),
                      _head("flatten", flatten, [1.0] * len(flatten), 1003530, True)]}


def _write_predictions(run_dir: Path, correct: dict[str, list[bool]]) -> None:
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["head", "seed", "index", "path", "label", "pred"])
        for head, rows in correct.items():
            for i, ok in enumerate(rows):
                w.writerow([head, 0, i, f"x/{i}.png", "a", "a" if ok else "b"])


def _accuracy_finding(items: list[dict]) -> dict:
    return next(f for f in items if f["kind"] == "accuracy")


def test_findings_never_call_overlapping_seeds_a_win():
    out = an.findings(_results([0.80, 0.86, 0.83], [0.82, 0.81, 0.84]))
    f = _accuracy_finding(out)
    assert (f["a"], f["b"]) == ("gap", "flatten")
    assert f["lo"] < 0 < f["hi"]
    assert not f["significant"]
    assert "no significant difference" in f["text"]
    assert "over 3 seeds" in f["text"]


def test_findings_mark_a_clear_difference_significant(tmp_path):
    _write_predictions(tmp_path, {"gap": [True] * 90 + [False] * 10,
                                  "flatten": [True] * 70 + [False] * 30})
    out = an.findings(_results([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]), tmp_path)
    f = _accuracy_finding(out)
    assert f["significant"] and f["lo"] > 0
    assert f["bootstrap_ci"][0] > 0
    assert "gap is more accurate" in f["text"]
    assert "49× fewer head parameters" in f["text"]
    assert "flatten's train − test gap" in f["text"]


def test_findings_need_every_interval_to_exclude_zero(tmp_path):
    # Seeds differ clearly, but the test images show no difference: not significant.
    _write_predictions(tmp_path, {"gap": [True, False] * 20, "flatten": [True, False] * 20})
    f = _accuracy_finding(an.findings(_results([0.90, 0.91, 0.92], [0.70, 0.72, 0.71]),
                                      tmp_path))
    assert f["seed_ci"][0] > 0 and f["bootstrap_ci"][0] <= 0 <= f["bootstrap_ci"][1]
    assert not f["significant"]


def test_findings_with_one_seed_say_so_and_use_the_bootstrap_only(tmp_path):
    _write_predictions(tmp_path, {"gap": [True] * 90 + [False] * 10,
                                  "flatten": [True] * 60 + [False] * 40})
    f = _accuracy_finding(an.findings(_results([0.90], [0.60]), tmp_path))
    assert "no interval over seeds with 1 seed" in f["text"]
    assert "bootstrap only" in f["text"]
    assert f["significant"] and f["seed_ci"] is None


def test_findings_with_one_seed_and_no_predictions_claim_nothing():
    f = _accuracy_finding(an.findings(_results([0.90], [0.60])))
    assert not f["significant"]
    assert "no difference is claimed" in f["text"]


def test_findings_compare_gap_and_flatten_on_the_analyses():
    results = _results([0.90, 0.91, 0.92], [0.80, 0.82, 0.81])
    ci = lambda vals: {"mean": float(np.mean(vals)), "lo": None, "hi": None, "values": vals}
    results["analyses"] = {
        "shifts": {"shifts": [0, 16], "seed_ids": [0, 1, 2], "heads": {
            "gap": {"accuracy": {"16": ci([0.9, 0.9, 0.9])},
                    "consistency": {"16": ci([0.95, 0.96, 0.97])}},
            "flatten": {"accuracy": {"16": ci([0.7, 0.7, 0.7])},
                        "consistency": {"16": ci([0.70, 0.75, 0.72])}}}},
        "shots": {"shots": ["1", "all"], "seed_ids": [0, 1, 2], "heads": {
            h: {"1": {"test_accuracy": ci([0.5, 0.52, 0.5]), "overfit_gap": ci([0.5, 0.5, 0.5])}}
            for h in ("gap", "flatten")}},
        "sizes": {"sizes": [32, 64], "base": 64, "seed_ids": [0, 1, 2], "heads": {
            "gap": {"32": ci([0.6, 0.62, 0.61]), "64": ci([0.9, 0.91, 0.92])},
            "flatten": {"32": an.not_applicable((2, 2)), "64": ci([0.8, 0.82, 0.81])}}}}
    out = {f["kind"]: f for f in an.findings(results)}
    assert out["translation"]["significant"] and "more consistent" in out["translation"]["text"]
    assert not out["small_data"]["significant"]
    assert "no significant difference" in out["small_data"]["text"]
    assert out["overfitting"]["a"] == "flatten"
    texts = [f["text"] for f in an.findings(results) if f["kind"] == "resolution"]
    assert any("flatten cannot run at 32 px (built for a 2×2 map)" in t for t in texts)
    assert any(t.startswith("resolution: gap at 32 px") for t in texts)


# --------------------------------------------------------------------------------------------
# analyses on a real (tiny) backbone, without compare

@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A run context: resnet18 (random weights) at 64 px, 2 classes, gap + flatten, 2 seeds."""
    from headbench.backbones import create_backbone
    from headbench.data import file_digest
    from headbench.synthetic import make_shapes_dataset
    tmp = tmp_path_factory.mktemp("analyze")
    root = make_shapes_dataset(tmp / "shapes", classes=("circle", "square"), per_class=6,
                               image_size=80)
    backbone = create_backbone("resnet18", weights="none", input_size=64)
    items = {}
    for role, sl in (("train", slice(0, 3)), ("val", slice(3, 4)), ("test", slice(4, 6))):
        paths = [p for c in ("circle", "square") for p in sorted((root / c).glob("*.png"))[sl]]
        labels = np.array([0 if p.parent.name == "circle" else 1 for p in paths])
        items[role] = an.SplitItems(paths, labels, [file_digest(p) for p in paths])
    heads = {}
    for name in ("gap", "flatten"):
        states = {}
        for seed in (0, 1):
            with seeded(seed):
                states[seed] = create_head(name, 512, 2, (2, 2)).state_dict()
        heads[name] = an.HeadRun(HeadSpec(name), 1e-3, states, best_seed=0)
    return an.RunContext(backbone, ["circle", "square"], items, heads, [0, 1],
                         TrainConfig(epochs=2, batch_size=4, weight_decays=(1e-3,)),
                         precision="fp32", cache_dir=tmp / "cache", run_dir=tmp / "run",
                         device=torch.device("cpu"))


def test_resolution_marks_flatten_not_applicable_at_other_sizes(ctx):
    out = an.resolution_analysis(ctx, [32, 96])
    assert out["sizes"] == [32, 64, 96] and out["base"] == 64
    assert out["map_sizes"] == {"32": [1, 1], "64": [2, 2], "96": [3, 3]}
    assert out["heads"]["flatten"]["96"] == {"not_applicable": "built for a 2×2 map"}
    assert out["heads"]["flatten"]["32"] == {"not_applicable": "built for a 2×2 map"}
    assert 0 <= out["heads"]["flatten"]["64"]["mean"] <= 1
    for size in ("32", "64", "96"):
        assert len(out["heads"]["gap"][size]["values"]) == 2


def test_translation_analysis_reports_curves_for_every_head(ctx):
    out = an.translation_analysis(ctx, [4, 0])
    assert out["shifts"] == [0, 4] and out["margin"] == 4
    for name in ("gap", "flatten"):
        curves = out["heads"][name]
        assert curves["consistency"]["0"]["mean"] == 1.0
        assert 0 <= curves["consistency"]["4"]["mean"] <= 1
        assert set(curves["accuracy"]) == {"0", "4"}
    # Shifted views are cached under their own keys: a second run extracts nothing.
    from headbench.features import extract
    view = an.shift_views([0, 4])[(4, (1, 0))]
    test = ctx.items["test"]
    fs = extract(ctx.backbone, test.paths, test.digests, view=view, precision="fp32",
                 cache_dir=ctx.cache_dir, device="cpu")
    assert fs.n_extracted == 0


def test_shots_analysis_trains_on_k_per_class(ctx):
    out = an.shots_analysis(ctx, [1, "all"])
    assert out["shots"] == ["1", "all"] and out["n_train"] == {"1": 2, "all": 6}
    cell = out["heads"]["gap"]["1"]
    assert len(cell["test_accuracy"]["values"]) == 2
    np.testing.assert_allclose(cell["overfit_gap"]["mean"],
                               cell["train_accuracy"]["mean"] - cell["test_accuracy"]["mean"])


def test_cam_analysis_writes_named_overlays(ctx):
    out = an.cam_analysis(ctx, 1)
    assert out["heads"]["gap"]["method"] == "exact CAM"
    assert out["heads"]["flatten"]["method"] == "Grad-CAM"
    files = out["heads"]["gap"]["files"]
    assert 1 <= len(files) <= 2
    for rel in files:
        name = Path(rel).name
        assert name.startswith(("ok_", "wrong_")) and "_true-" in name and "_pred-" in name
        assert Image.open(ctx.run_dir / rel).size == (64, 64)


# --------------------------------------------------------------------------------------------
# end to end: compare with analyses, then analyze on the run folder

def test_compare_and_analyze_write_the_analyses_sections(tmp_path):
    from headbench.compare import compare
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square"), per_class=10,
                               image_size=72)
    result = compare(data, backbone="resnet18", weights="none", input_size=64,
                     heads=["gap", "flatten"], seeds=2, epochs=2, weight_decays=(1e-3,),
                     cache_dir=tmp_path / "cache", out=tmp_path, shifts=[0, 8], shots=[1],
                     cam=1, report=False)
    results = json.loads((result.run_dir / "results.json").read_text())
    analyses = results["analyses"]
    assert set(analyses) == {"shifts", "shots", "cam"}
    assert set(analyses["shifts"]["heads"]["flatten"]["consistency"]) == {"0", "8"}
    assert analyses["shots"]["heads"]["gap"]["1"]["test_accuracy"]["mean"] >= 0
    for rel in analyses["cam"]["heads"]["gap"]["files"]:
        assert (result.run_dir / rel).is_file()
    assert any(f["kind"] == "accuracy" for f in results["findings"])

    updated = an.analyze(result.run_dir, sizes=[96], cache_dir=tmp_path / "cache", quiet=True)
    on_disk = json.loads((result.run_dir / "results.json").read_text())
    assert on_disk["analyses"]["sizes"]["heads"]["flatten"]["96"] == {
        "not_applicable": "built for a 2×2 map"}
    assert "shifts" in on_disk["analyses"]  # earlier analyses are kept
    assert updated["findings"] == on_disk["findings"]


def test_analyze_without_options_says_what_to_pass(tmp_path):
    with pytest.raises(HeadbenchError, match="--shifts, --sizes, --shots or --cam"):
        an.analyze(tmp_path)


def test_zero_width_seed_interval_alone_is_not_significant():
    assert not an.PairedDiff(0.1, 2, t=(0.1, 0.1)).significant
    assert an.PairedDiff(0.1, 2, t=(0.1, 0.1), boot=(0.02, 0.2), n_images=50).significant
