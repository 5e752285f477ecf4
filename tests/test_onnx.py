"""ONNX export: every default head exports with the right dynamic axes and is verified against
PyTorch on real images; onnxruntime predictions match PyTorch's; every refusal is one line."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install 'headbench[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'headbench[onnx]'")

import headbench as hb  # noqa: E402
from headbench import export, onnx as hb_onnx  # noqa: E402
from headbench.backbones import create_backbone  # noqa: E402
from headbench.cli import main  # noqa: E402
from headbench.errors import HeadbenchError  # noqa: E402
from headbench.export import save_model  # noqa: E402
from headbench.images import image_files  # noqa: E402
from headbench.heads import DEFAULT_HEADS, create_head, head_info  # noqa: E402
from headbench.synthetic import make_shapes_dataset  # noqa: E402

CLASSES = ["circle", "square", "star"]
TINY = "test_efficientnet"  # timm's tiny test model: 0.1 M parameters, 256×2×2 at 64 px
SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("onnx_data") / "shapes",
                               classes=tuple(CLASSES), per_class=3, image_size=72)


@pytest.fixture(scope="module")
def tiny():
    return create_backbone(TINY, weights="none", input_size=SIZE)


def scrambled(head, backbone, images, seed: int = 0):
    """The head with random non-trivial weights (an untrained head's logits are all ~0, which
    would make any tolerance pass): random Linear, query and BatchNorm values, then the last
    Linear scaled so logits reach about ±5 on real images."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(head.named_parameters()) + list(head.named_buffers()):
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point() and not name.endswith(".p"):  # GeM keeps p = 3
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
        head.eval()
        _, tensors = export.image_tensors(image_files([images])[:4], backbone.data_config)
        logits = head(backbone.eval()(torch.stack(tensors)))
        [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(
            5 / logits.abs().max())
    return head


def model_folder(root, backbone, name, images, backbone_file=None):
    """A model folder runs/<run>/heads/<name> as compare saves it, with a scrambled head."""
    c, h, w = backbone.feature_shape()
    head = scrambled(create_head(name, c, len(CLASSES), (h, w)), backbone, images)
    return save_model(root / "run" / "heads" / name, backbone, head, CLASSES,
                      backbone_file=backbone_file)


def check_export(model_dir, report, size, any_size):
    """The report on disk, the file it names, its axes, metadata and verification."""
    assert json.loads((model_dir / hb_onnx.ONNX_VERIFICATION).read_text()) == report
    path = model_dir / report["onnx_file"]
    assert report["sha256"] == hb_onnx._sha256(path)
    sizes = hb_onnx.verification_sizes(size, any_size)
    assert report["passed"] and report["sizes"] == sizes and len(set(sizes)) == (3 if any_size else 1)
    assert set(report["max_abs_diff"]) == {str(s) for s in sizes}
    assert all(0 <= d <= 1e-4 for d in report["max_abs_diff"].values())
    assert report["exporter"] == hb_onnx.ONNX_EXPORTER and report["images"] == 8
    assert set(report["versions"]) >= {"torch", "onnx", "onnxruntime"}
    graph = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == (["batch", 3, "height", "width"] if any_size else ["batch", 3, size, size])
    props = {p.key: p.value for p in graph.metadata_props}
    meta = json.loads((model_dir / "model.json").read_text())
    assert json.loads(props["headbench.data_config"]) == meta["data_config"]
    assert json.loads(props["headbench.class_names"]) == CLASSES
    return {n.op_type for n in graph.graph.node}


@pytest.mark.parametrize("name", DEFAULT_HEADS)
def test_every_default_head_exports_and_is_verified(name, tiny, images, tmp_path):
    model_dir = model_folder(tmp_path, tiny, name, images)
    report = hb.export_onnx(model_dir, images=[images])
    any_size = head_info(name).any_size
    ops = check_export(model_dir, report, SIZE, any_size)
    assert report["dynamic_size"] is any_size and report["onnx_file"] == "model.onnx"
    if any_size:  # global pools are reductions, never a pool with a kernel of one map size
        assert ops & {"ReduceMean", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool"}
        assert not ops & {"AveragePool", "MaxPool"}


@pytest.mark.parametrize("name", ["gap", "flatten"])
def test_embedded_backbone_exports_and_is_verified(name, images, tmp_path):
    backbone = create_backbone("efficientnet_lite0", weights="embedded", input_size=96)
    model_dir = model_folder(tmp_path, backbone, name, images)
    report = hb.export_onnx(model_dir, images=[images])
    check_export(model_dir, report, 96, head_info(name).any_size)


@pytest.fixture(scope="module")
def gap_dir(tiny, images, tmp_path_factory):
    model_dir = model_folder(tmp_path_factory.mktemp("gap"), tiny, "gap", images)
    hb.export_onnx(model_dir, images=[images])
    return model_dir


def assert_same_predictions(a, b):
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert [t["label"] for t in x["top"]] == [t["label"] for t in y["top"]]
        for s, t in zip(x["top"], y["top"]):
            assert s["probability"] == pytest.approx(t["probability"], abs=1e-4)


@pytest.mark.parametrize("input_size", [None, 80])
def test_onnx_engine_gives_the_torch_top_k(gap_dir, images, input_size):
    torch_rows = hb.predict(hb.load_model(gap_dir), [images], topk=3, input_size=input_size)
    onnx_rows = hb.predict_onnx(gap_dir, [images], topk=3, input_size=input_size)
    assert len(onnx_rows) == 9 and all(len(r["top"]) == 3 for r in onnx_rows)
    assert len({r["top"][0]["label"] for r in torch_rows}) > 1  # the head is not constant
    assert_same_predictions(torch_rows, onnx_rows)
    (one,) = hb.predict_onnx(gap_dir, [image_files([images])[0]], topk=1)  # batch of 1
    assert one["top"][0]["label"] == onnx_rows[0]["top"][0]["label"]


@pytest.mark.parametrize("name", ["flatten", "avgpool"])
def test_dynamic_size_for_a_fixed_size_head_is_refused(name, tiny, images, tmp_path):
    model_dir = model_folder(tmp_path, tiny, name, images)
    with pytest.raises(HeadbenchError, match=rf"'{name}' is built for 64×64 px.*dynamic size") as e:
        hb.export_onnx(model_dir, dynamic_size=True, images=[images])
    assert "\n" not in str(e.value) and not (model_dir / "model.onnx").exists()


def test_fixed_size_export_refuses_another_input_size(tiny, images, tmp_path):
    model_dir = model_folder(tmp_path, tiny, "flatten", images)
    hb.export_onnx(model_dir, images=[images])
    with pytest.raises(HeadbenchError, match=r"exported for 64×64 px.*got 96.*gap"):
        hb.predict_onnx(model_dir, [images], input_size=96)


def test_fixed_size_export_of_an_any_size_head(tiny, images, tmp_path):
    model_dir = model_folder(tmp_path, tiny, "gem", images)
    report = hb.export_onnx(model_dir, dynamic_size=False, images=[images])
    check_export(model_dir, report, SIZE, any_size=False)


def test_onnx_file_alone_predicts_from_its_metadata(gap_dir, images, tmp_path):
    out = tmp_path / "elsewhere" / "gap.onnx"
    report = hb.export_onnx(gap_dir, out, images=[images])
    assert report["onnx_file"] == str(out.resolve())
    torch_rows = hb.predict(hb.load_model(gap_dir), [images], topk=2)
    assert_same_predictions(torch_rows, hb.predict_onnx(out, [images], topk=2))
    with pytest.raises(HeadbenchError, match="exported outside its run folder.*pass that file"):
        hb.predict_onnx(gap_dir, [images])
    hb.export_onnx(gap_dir, images=[images])  # back to the folder's own file for other tests


def test_changed_onnx_file_is_refused(tiny, images, tmp_path):
    model_dir = model_folder(tmp_path, tiny, "gap", images)
    hb.export_onnx(model_dir, images=[images])
    with open(model_dir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(HeadbenchError, match="changed since it was verified"):
        hb.predict_onnx(model_dir, [images])


def test_a_verification_record_whose_passed_is_not_exactly_true_is_refused(tiny, images,
                                                                            tmp_path):
    """Issue 21, fault 11: `"passed": "no"` (truthy) was accepted by predict --engine onnx."""
    model_dir = model_folder(tmp_path, tiny, "gap", images)
    hb.export_onnx(model_dir, images=[images])
    path = model_dir / hb_onnx.ONNX_VERIFICATION
    for value in ("no", 1, "true", None):
        record = json.loads(path.read_text())
        record["passed"] = value
        path.write_text(json.dumps(record))
        with pytest.raises(HeadbenchError, match="failed verification"):
            hb.predict_onnx(model_dir, [images])


def test_failed_verification_is_an_error_and_recorded(tiny, images, tmp_path, monkeypatch):
    monkeypatch.setattr(hb_onnx, "ONNX_TOLERANCE", -1.0)  # no difference can pass
    model_dir = model_folder(tmp_path, tiny, "gap", images)
    with pytest.raises(HeadbenchError, match="failed verification.*do not deploy") as e:
        hb.export_onnx(model_dir, images=[images])
    assert "\n" not in str(e.value)
    record = json.loads((model_dir / hb_onnx.ONNX_VERIFICATION).read_text())
    assert record["passed"] is False and (model_dir / "model.onnx").exists()
    with pytest.raises(HeadbenchError, match="failed verification"):
        hb.predict_onnx(model_dir, [images])


def test_fine_tuned_backbone_file_is_exported(tiny, images, tmp_path):
    """A `+ft` model folder: model.json's backbone.file names fine-tuned backbone weights."""
    gen = torch.Generator().manual_seed(1)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
             for k, v in tiny.model.state_dict().items()}
    weights = tmp_path / "run" / "gap+ft-backbone.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    tuned = create_backbone(TINY, weights=str(weights), input_size=SIZE)
    model_dir = model_folder(tmp_path, tuned, "gap", images, backbone_file=weights)
    base_dir = model_folder(tmp_path / "base", tiny, "gap", images)  # the same head, frozen
    hb.export_onnx(model_dir, images=[images])
    tuned_rows = hb.predict_onnx(model_dir, [images], topk=3)
    assert_same_predictions(hb.predict(hb.load_model(model_dir), [images], topk=3), tuned_rows)
    base_rows = hb.predict(hb.load_model(base_dir), [images], topk=3)
    assert any(abs(a["top"][0]["probability"] - b["top"][0]["probability"]) > 1e-3
               for a, b in zip(tuned_rows, base_rows))  # the tuned weights were exported


def test_model_folder_outside_a_run_needs_images(gap_dir, capsys):
    with pytest.raises(HeadbenchError, match="not in a run folder.*pass images") as e:
        hb.export_onnx(gap_dir)
    assert e.value.param == "images"
    assert main(["export", str(gap_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: --images: ")  # the flag of export's option


def test_missing_onnxruntime_is_one_line(gap_dir, images, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    for call in (lambda: hb.export_onnx(gap_dir, images=[images]),
                 lambda: hb.predict_onnx(gap_dir, [images])):
        with pytest.raises(HeadbenchError, match=r"'onnxruntime'.*pip install 'headbench\[onnx\]'"):
            call()
    assert main(["predict", str(gap_dir), str(images), "--engine", "onnx"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "headbench[onnx]" in err


# ----------------------------------------------------------------------------------------------
# a real run: verification images from its dataset, and the command line

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx_run")
    data = make_shapes_dataset(tmp / "shapes", classes=tuple(CLASSES), per_class=8,
                               image_size=64)
    return hb.compare(data, backbone=TINY, weights="none", heads=["gap", "flatten"], seeds=1,
                      epochs=2, input_size=SIZE, precision="fp32", cache_dir=tmp / "cache",
                      out=tmp / "out", report=False)


def test_export_command_verifies_on_the_runs_images(run, capsys):
    model_dir = run.model_dir("gap")
    assert main(["export", str(model_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dynamic batch, height and width" in out and ": passed" in out
    record = json.loads((model_dir / hb_onnx.ONNX_VERIFICATION).read_text())
    assert record["passed"] and record["images"] == 8 and len(record["sizes"]) == 3
    test_images = [str(run.dataset.path("test", i)) for i in range(len(run.dataset.splits["test"]))]
    assert main(["predict", str(model_dir), *test_images, "--json", "--engine", "onnx"]) == 0
    onnx_rows = json.loads(capsys.readouterr().out)
    assert main(["predict", str(model_dir), *test_images, "--json"]) == 0
    assert_same_predictions(json.loads(capsys.readouterr().out), onnx_rows)


def test_export_command_refuses_dynamic_size_in_one_line(run, capsys):
    model_dir = run.model_dir("flatten")
    assert main(["export", str(model_dir), "--dynamic-size", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert "'flatten' is built for 64×64 px" in err
    assert main(["export", str(model_dir), "--fixed-size", "--onnx",
                 str(model_dir / "flat.onnx")]) == 0
    assert "(dynamic batch;" in capsys.readouterr().out
