"""Fine-tuning: the BatchNorm policy, what unfreezes, exact resume after a kill, the `+ft` head."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import headbench as hb
from headbench import finetune as ft
from headbench.backbones import create_backbone
from headbench.data import scan_folder
from headbench.errors import HeadbenchError
from headbench.heads import create_head
from headbench.model import HeadbenchModel
from headbench.run import Run, is_complete
from headbench.synthetic import make_shapes_dataset

CLASSES = ("circle", "square", "star")
OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap", "flatten"], seeds=2,
               epochs=3, weight_decays=[1e-3], input_size=64, precision="fp32", report=False,
               finetune=True, finetune_epochs=3, finetune_batch_size=8, finetune_patience=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=CLASSES,
                               per_class=12, image_size=64)


@pytest.fixture(scope="module")
def run(shapes, cache, tmp_path_factory) -> Run:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"), **OPTIONS)


@pytest.fixture(scope="module")
def images(shapes) -> tuple[ft.Images, ft.Images]:
    items = scan_folder(shapes).items
    every = ft.Images([it.path for it in items], [it.digest for it in items],
                      np.array([it.label for it in items]))
    train = [i for i in range(len(items)) if i % 4]
    val = [i for i in range(len(items)) if not i % 4]
    return _subset(every, train), _subset(every, val)


def _subset(images: ft.Images, idx: list[int]) -> ft.Images:
    return ft.Images([images.paths[i] for i in idx], [images.digests[i] for i in idx],
                     images.labels[idx])


def _model() -> HeadbenchModel:
    bb = create_backbone("efficientnet_lite0", "embedded", 64)
    c, h, w = bb.feature_shape()
    torch.manual_seed(0)
    return HeadbenchModel(bb, create_head("gap", c, len(CLASSES), (h, w)), freeze=False)


def _norm_tensors(model: HeadbenchModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the backbone's normalisation layers."""
    out = {}
    for name, module in model.backbone.named_modules():
        if isinstance(module, ft.NORM_TYPES):
            for key, t in [*module.named_parameters(recurse=False),
                           *module.named_buffers(recurse=False)]:
                out[f"{name}.{key}"] = t.detach().clone()
    return out


def _fit(model, images, tmp_path, **settings) -> ft.FinetuneResult:
    config = ft.FinetuneConfig(**dict(dict(epochs=2, batch_size=6, patience=None), **settings))
    return ft.finetune(model, *images, config, 1e-3, tmp_path / "checkpoint.pt",
                       device=torch.device("cpu"))


def test_bn_frozen_keeps_statistics_and_affine_bit_identical(images, tmp_path):
    model = _model()
    before, weights = _norm_tensors(model), model.backbone.model.conv_stem.weight.detach().clone()
    _fit(model, images, tmp_path, bn="frozen")
    after = _norm_tensors(model)
    assert len(before) > 100 and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(weights, model.backbone.model.conv_stem.weight)  # the rest trained


def test_bn_train_updates_statistics_and_affine(images, tmp_path):
    model = _model()
    before = _norm_tensors(model)
    _fit(model, images, tmp_path, bn="train")
    after = _norm_tensors(model)
    changed = {k.rsplit(".", 1)[1] for k in before if not torch.equal(before[k], after[k])}
    assert {"running_mean", "running_var", "weight", "bias"} <= changed


def test_unfreeze_last_stage_trains_only_that_stage(images, tmp_path):
    model = _model()
    stages = ft.stage_names(model.backbone)
    assert stages[-1] == "blocks.6"  # efficientnet_lite0: stages end at blocks.0 … blocks.6
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    _fit(model, images, tmp_path, unfreeze="1", epochs=1)
    after = model.backbone.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("blocks.5", "blocks.6", "conv_head")) for k in changed)
    assert any(k.startswith("blocks.6") for k in changed)


def test_interrupted_finetuning_resumes_to_the_same_weights(images, tmp_path):
    whole = _fit(_model(), images, tmp_path / "a", epochs=3)
    calls = []

    def stop_after_two(epoch, log):
        calls.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_model(), *images, ft.FinetuneConfig(epochs=3, batch_size=6, patience=None),
                    1e-3, tmp_path / "b" / "checkpoint.pt", device=torch.device("cpu"),
                    on_epoch=stop_after_two)
    resumed = _fit(_model(), images, tmp_path / "b", epochs=3)
    assert calls == [1, 2] and resumed.resumed_from == 2 and resumed.epochs_run == 3
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6) for k in a)
    assert [h.val_loss for h in whole.history] == pytest.approx([h.val_loss for h in resumed.history])


def test_a_checkpoint_of_other_settings_is_not_resumed(images, tmp_path):
    _fit(_model(), images, tmp_path, epochs=1)
    again = _fit(_model(), images, tmp_path, epochs=1, bn="train")
    assert again.resumed_from == 0


@pytest.mark.parametrize("options, match", [
    (dict(unfreeze="some"), "unfreeze must be 'all' or a number"),
    (dict(bn="sometimes"), "unknown bn 'sometimes'"),
    (dict(finetune_top=0), "finetune_top must be a whole number ≥ 1"),
    (dict(backbone_lr=2), r"backbone_lr must be in \[0, 1\]"),
    (dict(aug_views=-1), "aug_views must be a whole number ≥ 0")])
def test_bad_finetune_options_fail_before_any_work(shapes, tmp_path, options, match):
    with pytest.raises(HeadbenchError, match=match):
        hb.compare(shapes, out=tmp_path, **options)


def test_compare_finetunes_the_best_head_on_val_as_plus_ft(run):
    frozen = [h for h in run.heads if h.variant is None]
    best_frozen = hb.evaluate.select_head(frozen)
    ft_head = run.head(f"{best_frozen.head}+ft")
    assert [h.head for h in run.heads if h.finetuned] == [ft_head.head]  # top 1 by default
    assert ft_head.variant.of == best_frozen.head
    assert ft_head.variant.from_seed == best_frozen.best_seed
    assert ft_head.variant.settings["bn"] == "frozen" and ft_head.variant.settings["unfreeze"] == "all"
    (seed,) = ft_head.seeds
    assert seed.test.n == best_frozen.seeds[0].test.n and 1 <= seed.best_epoch <= 3
    assert len(seed.history) == seed.epochs_run == 3
    assert run.predictions[ft_head.head].pred.shape == (1, seed.test.n)
    # the recommended head is chosen on val among every head, the fine-tuned one included
    assert set(run.verdict.scores) == {h.head for h in run.heads}
    assert run.best_head == run.verdict.recommended


def test_the_finding_compares_finetuned_with_its_frozen_seed(run):
    (finding,) = [f for f in run.findings if f.kind == "finetune"]
    ft_head = next(h for h in run.heads if h.finetuned)
    base = run.head(ft_head.variant.of)
    diff = ft_head.seeds[0].test.accuracy - base.seed_metric("test")[ft_head.variant.from_seed]
    assert finding.a == ft_head.head and finding.b == base.head
    assert finding.diff == pytest.approx(diff)
    assert finding.test == "paired sign-flip test" and finding.image_ci is not None
    assert "val selects" in finding.text


def test_the_finetuned_model_folder_loads_and_predicts(run, shapes):
    ft_head = next(h for h in run.heads if h.finetuned)
    folder = run.model_dir(ft_head.head)
    assert {"model.safetensors", "model.json", "backbone.safetensors", "seed0.safetensors"} <= {
        p.name for p in folder.iterdir()}
    assert not (folder / ft.CHECKPOINT).exists()  # committed: the checkpoint is gone
    model = hb.load_model(folder, device="cpu")
    frozen = hb.load_model(run.model_dir(ft_head.variant.of), device="cpu")
    tuned = load_file(str(folder / "backbone.safetensors"))
    assert any(not torch.equal(tuned[k], v) for k, v in frozen.backbone.model.state_dict().items()
               if k in tuned and v.is_floating_point())
    test = run.dataset.splits["test"]
    paths = [run.dataset.path("test", i) for i in range(len(test))]
    top = [r["top"][0]["label"] for r in hb.predict(model, paths, topk=1)]
    want = [run.classes[p] for p in run.predictions[ft_head.head].pred[0]]
    assert np.mean([a == b for a, b in zip(top, want)]) >= 0.9  # fp32 both, other batching


def test_the_finetuned_model_exports_to_onnx_and_predicts_the_same(run, shapes):
    ft_head = next(h for h in run.heads if h.finetuned)
    folder = run.model_dir(ft_head.head)
    report = hb.export_onnx(folder)  # verified on the run's images (3 sizes if any-size)
    assert report["passed"] and report["dynamic_size"] == ft_head.any_size
    assert len(report["sizes"]) == (3 if ft_head.any_size else 1)
    test = run.dataset.splits["test"]
    paths = [run.dataset.path("test", i) for i in range(len(test))]
    torch_top = [r["top"][0]["label"] for r in hb.predict(hb.load_model(folder), paths, topk=1)]
    onnx_top = [r["top"][0]["label"] for r in hb.predict_onnx(folder, paths, topk=1)]
    assert onnx_top == torch_top


def test_the_run_with_finetuned_heads_loads_back(run):
    again = Run.load(run.run_dir)
    assert [h.head for h in again.heads] == [h.head for h in run.heads]
    ft_head = next(h for h in again.heads if h.finetuned)
    assert ft_head.variant.kind == "finetune" and ft_head.variant.settings["epochs"] == 3


def test_analyses_skip_finetuned_heads(run, cache):
    analysed = hb.analyze(run.run_dir, shifts="0,8", cache_dir=cache)
    assert set(analysed.analyses["shifts"]["heads"]) == {"gap", "flatten"}


def test_sigkill_during_finetuning_then_rerun_continues_to_the_same_weights(shapes, cache, run,
                                                                          tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        import headbench as hb
        from headbench import finetune
        original = finetune._save_checkpoint
        def save_then_die(path, state):
            original(path, state)
            if state["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        finetune._save_checkpoint = save_then_die
        hb.compare({str(shapes)!r}, cache_dir={str(cache)!r}, out={str(out)!r}, **{OPTIONS!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr
    (run_dir,) = (out / "runs").iterdir()
    assert not is_complete(run_dir) and list(run_dir.glob("heads/*+ft/checkpoint.pt"))
    resumed = hb.compare(shapes, cache_dir=cache, out=out, **OPTIONS)
    assert resumed.run_dir == run_dir and is_complete(run_dir)
    label = next(h.head for h in run.heads if h.finetuned)
    assert resumed.head(label).variant.resumed_from == 2
    for name in ("model.safetensors", "backbone.safetensors"):
        a = load_file(str(run.model_dir(label) / name))
        b = load_file(str(resumed.model_dir(label) / name))
        assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)
    assert (resumed.head(label).seeds[0].test.accuracy
            == pytest.approx(run.head(label).seeds[0].test.accuracy))


def test_cli_finetune_flags_are_generated_from_the_options(capsys):
    from headbench.cli import main
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for flag in ("--finetune", "--finetune-top", "--unfreeze", "--bn", "--aug-views", "--restart"):
        assert flag in text


def test_ctrl_c_keeps_the_checkpoint_and_restart_starts_a_new_run(shapes, cache, tmp_path,
                                                                  monkeypatch, capsys):
    original = ft._save_checkpoint

    def save_then_interrupt(path, state):
        original(path, state)
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hb.compare(shapes, cache_dir=cache, out=tmp_path, **OPTIONS)
    assert "checkpoint of epoch 1 is kept" in capsys.readouterr().err
    (interrupted,) = (tmp_path / "runs").iterdir()
    assert list(interrupted.glob("heads/*+ft/checkpoint.pt"))
    monkeypatch.setattr(ft, "_save_checkpoint", original)
    fresh = hb.compare(shapes, cache_dir=cache, out=tmp_path, restart=True, **OPTIONS)
    assert fresh.run_dir != interrupted and not is_complete(interrupted)
    assert next(h for h in fresh.heads if h.finetuned).variant.resumed_from == 0
