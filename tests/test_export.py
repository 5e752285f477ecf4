"""Saved models: load, predict with the numbers training saw, any input size for global heads."""
from __future__ import annotations

import json

import numpy as np
import pytest

import headbench as hb
from headbench.errors import HeadbenchError
from headbench.images import image_files
from headbench.synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=12, image_size=64)
    out = tmp_path_factory.mktemp("out")
    return hb.compare(data, backbone="efficientnet_lite0", weights="embedded",
                      heads=["gap", "flatten"], seeds=1, epochs=3, input_size=64, precision="fp32",
                      cache_dir=out / "cache", out=out, report=False)


def test_loaded_model_reproduces_the_test_predictions(run):
    model = hb.load_model(run.model_dir("gap"))
    assert model.class_names == ["circle", "square", "star"]
    expected = run.predictions["gap"]
    test = run.dataset.splits["test"]
    rows = hb.predict(model, [run.dataset.path("test", i) for i in range(len(test))], topk=3)
    for i, got in enumerate(rows):
        assert got["top"][0]["label"] == run.classes[expected.pred[0, i]]
        # features were cached as float16: probabilities agree to that precision
        assert got["top"][0]["probability"] == pytest.approx(expected.p_pred[0, i], abs=5e-3)
        assert sum(t["probability"] for t in got["top"]) == pytest.approx(1.0, abs=1e-5)


def test_model_json_names_everything_needed_to_rebuild(run):
    meta = json.loads((run.model_dir("flatten") / "model.json").read_text())
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["backbone"]["weights"] == "embedded"
    assert meta["head"]["name"] == "flatten"
    assert meta["class_names"] == ["circle", "square", "star"]
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["map_size"] == [2, 2]


def test_global_pooling_head_predicts_at_another_input_size(run):
    model = hb.load_model(run.model_dir("gap"))
    image = image_files([run.dataset.root])[0]
    rows = hb.predict(model, [image], topk=1, input_size=128)
    assert rows[0]["top"][0]["label"] in model.class_names


def test_fixed_size_head_at_another_input_size_names_both_map_sizes(run):
    model = hb.load_model(run.model_dir("flatten"))
    image = image_files([run.dataset.root])[0]
    with pytest.raises(HeadbenchError, match=r"2×2.*4×4.*gap"):
        hb.predict(model, [image], input_size=128)


def test_unreadable_image_is_reported_not_raised(run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    model = hb.load_model(run.model_dir("gap"))
    (row,) = hb.predict(model, [bad])
    assert "error" in row and "top" not in row


def test_loading_a_folder_without_model_json_is_a_clear_error(tmp_path):
    with pytest.raises(HeadbenchError, match="no model.json"):
        hb.load_model(tmp_path)


def test_changed_backbone_weights_are_detected(run, tmp_path):
    import shutil
    model_dir = tmp_path / "gap"
    shutil.copytree(run.model_dir("gap"), model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    meta["backbone"]["weights_checksum"] = "0" * 16
    (model_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(HeadbenchError, match="checksum"):
        hb.load_model(model_dir)


def test_model_size_and_architecture_are_reported(run):
    entry = run.head("gap")
    assert entry.model_size_bytes == (run.model_dir("gap") / "model.safetensors").stat().st_size
    assert "GlobalAvgPool2d" in entry.architecture and "Linear" in entry.architecture
    assert np.isfinite(entry.total_flops) and entry.total_flops > entry.head_flops


def test_predict_command_prints_topk_and_json(run, capsys):
    from headbench.cli import main
    root = run.dataset.root
    image = image_files([root])[0]
    assert main(["predict", str(run.model_dir("gap")), str(image), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and line.count(",") == 1  # two classes shown
    assert main(["predict", str(run.model_dir("gap")), f"{root}/circle", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and all(len(r["top"]) == 3 for r in rows)


def test_cache_commands_list_and_remove_entries(run, capsys):
    from headbench.cli import main
    cache = str(run.run_dir.parent.parent / "cache")
    assert main(["cache", "ls", "--cache-dir", cache]) == 0
    listing = capsys.readouterr().out
    assert "efficientnet_lite0" in listing and " 36 img" in listing
    lines = listing.splitlines()
    assert lines[0] == f"{cache}:" and lines[1].split()[:3] == ["key", "backbone", "weights"]
    key = lines[2].split()[0]
    assert main(["cache", "rm", key[:6], "--cache-dir", cache]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert main(["cache", "ls", "--cache-dir", cache]) == 0
    assert "no cached features" in capsys.readouterr().out


def test_predict_on_a_folder_without_images_is_an_error(run, tmp_path):
    with pytest.raises(HeadbenchError, match="no image files"):
        hb.predict(hb.load_model(run.model_dir("gap")), [tmp_path])


def test_predict_command_fails_when_every_image_is_unreadable(run, tmp_path, capsys):
    from headbench.cli import main
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["predict", str(run.model_dir("gap")), str(bad), "--quiet"]) == 1
    assert "skipped" in capsys.readouterr().out
