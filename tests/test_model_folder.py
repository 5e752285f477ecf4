"""Model folders from anyone: corrupt weights, bad model.json fields, files outside the run folder
and hostile names are one line each, never a traceback, never a raw terminal escape."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

import builders

import headbench as hb
from headbench.backbones import create_backbone
from headbench.cli import main
from headbench.errors import HeadbenchError
from headbench.export import _MODEL_FIELDS
from headbench.images import image_files
from headbench.synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose backbone came from a local weights file, so it holds backbone.safetensors."""
    tmp = tmp_path_factory.mktemp("model_folder")
    data = make_shapes_dataset(tmp / "shapes", classes=("circle", "square"), per_class=8,
                               image_size=48)
    weights = tmp / "resnet18.safetensors"
    state = create_backbone("resnet18", weights="none").model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    return hb.compare(data, backbone="resnet18", weights=str(weights), heads=["gap"], seeds=1,
                      epochs=2, input_size=64, precision="fp32", cache_dir=tmp / "cache",
                      out=tmp / "out", report=False)


def copy_model(run, tmp_path: Path) -> Path:
    """A copy of the run's gap model folder in `tmp_path/run/heads/gap`, with the backbone file
    (hard-linked where possible), for tests that damage it."""
    model_dir = tmp_path / "run" / "heads" / "gap"
    shutil.copytree(run.model_dir("gap"), model_dir)
    try:
        os.link(run.run_dir / "backbone.safetensors", tmp_path / "run" / "backbone.safetensors")
    except OSError:
        shutil.copy(run.run_dir / "backbone.safetensors", tmp_path / "run")
    return model_dir


def edit_json(model_dir: Path, change) -> None:
    builders.edit_json(model_dir / "model.json", change)


def load_error(model_dir: Path) -> HeadbenchError:
    with pytest.raises(HeadbenchError) as err:
        hb.load_model(model_dir)
    assert "\n" not in str(err.value) and err.value.param is None
    return err.value


def predict_fails_in_one_line(capsys, model_dir: Path, image: Path) -> str:
    code = main(["predict", str(model_dir), str(image), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def an_image(run) -> Path:
    return image_files([run.dataset.root])[0]


# ----------------------------------------------------------------------------------------------
# the run folder's own files

def test_backbone_file_of_the_run_folder_loads_and_predicts(run):
    meta = json.loads((run.model_dir("gap") / "model.json").read_text())
    assert meta["backbone"]["file"] == "../../backbone.safetensors"
    model = hb.load_model(run.model_dir("gap"))
    (row,) = hb.predict(model, [an_image(run)], topk=1)
    assert row["top"][0]["label"] in ("circle", "square")


def test_a_model_folder_loads_its_recorded_timm_model_whatever_the_alias_means_now(run,
                                                                                   tmp_path):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda meta: meta["backbone"].update(name="mobilenet"))  # now v1
    model = hb.load_model(model_dir)
    assert (model.backbone.name, model.backbone.timm_name) == ("mobilenet", "resnet18")


def test_a_link_that_stays_inside_the_run_folder_is_used(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    (tmp_path / "run" / "weights").mkdir()
    (tmp_path / "run" / "weights" / "bb.safetensors").symlink_to("../backbone.safetensors")
    edit_json(model_dir, lambda m: m["backbone"].update(file="../../weights/bb.safetensors"))
    assert hb.load_model(model_dir).class_names == ["circle", "square"]


# ----------------------------------------------------------------------------------------------
# corrupt weights

@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "huge header"])
def test_corrupt_head_weights_are_one_line(run, tmp_path, damage):
    model_dir = copy_model(run, tmp_path)
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x89not safetensors" * 9,
                      "empty": b"", "huge header": (2**62).to_bytes(8, "little") + b"{}"}[damage])
    assert "cannot read weights" in str(load_error(model_dir))


def test_predict_on_truncated_weights_exits_2_without_traceback(run, tmp_path, capsys):
    model_dir = copy_model(run, tmp_path)
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    err = predict_fails_in_one_line(capsys, model_dir, an_image(run))
    assert "model.safetensors" in err


def test_truncated_backbone_weights_are_one_line(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    backbone = tmp_path / "run" / "backbone.safetensors"
    data = backbone.read_bytes()
    backbone.unlink()  # the hard link: never write through it into the shared run
    backbone.write_bytes(data[: len(data) // 3])
    assert "backbone.safetensors" in str(load_error(model_dir))


def test_head_weights_of_another_head_are_one_line(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    save_file({"fc.weight": __import__("torch").zeros(2, 3)}, model_dir / "model.safetensors")
    assert "do not fit" in str(load_error(model_dir))


# ----------------------------------------------------------------------------------------------
# model.json field by field

BAD_VALUES = {
    "backbone": "resnet18",
    "backbone.name": 18,
    "backbone.timm_name": "",
    "backbone.weights": ["none"],
    "backbone.weights_checksum": 123,
    "backbone.file": True,
    "head": ["gap"],
    "in_channels": "512",
    "map_size": [2],
    "num_classes": 2.5,
    "class_names": "circle,square",
    "data_config": None,
    "data_config.input_size": [3, "64", 64],
    "data_config.mean": [0.5, 0.5],
    "data_config.std": [0.2, 0.2, 0.0],
    "data_config.interpolation": 3,
    "data_config.crop_pct": "0.9",
}


def set_field(meta: dict, dotted: str, value=None, delete: bool = False) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        meta = meta[part]
    if delete:
        del meta[last]
    else:
        meta[last] = value


def test_every_model_json_field_has_a_bad_value_tested():
    assert set(BAD_VALUES) == set(_MODEL_FIELDS)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_model_json_field_of_wrong_type_is_named(run, tmp_path, field):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: set_field(m, field, BAD_VALUES[field]))
    assert f"field '{field}' is invalid" in str(load_error(model_dir))


@pytest.mark.parametrize("field", sorted(set(BAD_VALUES) - {"backbone.file"}))
def test_missing_model_json_field_is_named(run, tmp_path, field):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: set_field(m, field, delete=True))
    assert f"field '{field}' is invalid" in str(load_error(model_dir))


def test_predict_names_the_bad_field(run, tmp_path, capsys):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: set_field(m, "map_size", "2x2"))
    assert "field 'map_size'" in predict_fails_in_one_line(capsys, model_dir, an_image(run))


@pytest.mark.parametrize("field, value, words", [
    ("head", {"name": "gapp"}, "unknown head 'gapp'"),
    ("head", {"name": "gap", "options": 5}, "field 'head'"),
    ("head", {"name": "gap", "dropout": "x"}, "field 'head'"),
    ("head", {"name": "gap", "extra": 1}, "unknown keys"),
    ("backbone.timm_name", "resnet18x", "unknown backbone"),
    ("data_config.interpolation", "sinc", "unknown interpolation 'sinc'"),
    ("in_channels", 7, "fields 'in_channels', 'map_size'"),
    ("map_size", [3, 3], "fields 'in_channels', 'map_size'"),
    ("num_classes", 3, "field 'class_names'"),
    ("format", "headbench-model/0", "is not a headbench-model/1 file"),
])
def test_model_json_with_wrong_values_is_one_line(run, tmp_path, field, value, words):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: set_field(m, field, value))
    assert words in str(load_error(model_dir))


def test_model_json_that_is_not_json_is_one_line(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    (model_dir / "model.json").write_bytes(b'{"format": "headbench-model/1", \xff')
    assert "cannot be read" in str(load_error(model_dir))


# ----------------------------------------------------------------------------------------------
# files outside the run folder

def test_absolute_backbone_file_is_refused(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    absolute = str(tmp_path / "run" / "backbone.safetensors")  # even one inside the run
    edit_json(model_dir, lambda m: m["backbone"].update(file=absolute))
    assert "field 'backbone.file' points outside its run folder" in str(load_error(model_dir))


def test_backbone_file_with_dots_leaving_the_run_is_refused(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    shutil.copy(tmp_path / "run" / "backbone.safetensors", tmp_path / "outside.safetensors")
    edit_json(model_dir, lambda m: m["backbone"].update(file="../../../outside.safetensors"))
    assert "points outside its run folder" in str(load_error(model_dir))


def test_backbone_link_leading_out_of_the_run_is_refused(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    backbone = tmp_path / "run" / "backbone.safetensors"
    backbone.rename(tmp_path / "outside.safetensors")
    backbone.symlink_to(tmp_path / "outside.safetensors")
    assert "points outside its run folder" in str(load_error(model_dir))


def test_head_weights_link_leading_out_of_the_run_is_refused(run, tmp_path):
    model_dir = copy_model(run, tmp_path)
    weights = model_dir / "model.safetensors"
    weights.rename(tmp_path / "outside.safetensors")
    weights.symlink_to(tmp_path / "outside.safetensors")
    assert "model.safetensors' points outside" in str(load_error(model_dir))


@pytest.mark.parametrize("name", ["../../loop.safetensors", "../../a\x00b.safetensors",
                                  "../../missing.safetensors", "../../heads"])
def test_backbone_file_that_cannot_be_a_weights_file_is_one_line(run, tmp_path, name):
    model_dir = copy_model(run, tmp_path)
    (tmp_path / "run" / "loop.safetensors").symlink_to("loop.safetensors")
    edit_json(model_dir, lambda m: m["backbone"].update(file=name))
    load_error(model_dir)


def test_predict_refuses_a_backbone_outside_the_run(run, tmp_path, capsys):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: m["backbone"].update(file="/etc/passwd"))
    assert "backbone.file" in predict_fails_in_one_line(capsys, model_dir, an_image(run))


@pytest.mark.parametrize("option, value", [("topk", 0), ("topk", 1.5), ("input_size", 16),
                                           ("input_size", True)])
def test_predict_bad_values_are_one_line_naming_the_option(run, option, value):
    with pytest.raises(HeadbenchError, match=f"^{option} must be a whole number") as err:
        hb.predict(hb.load_model(run.model_dir("gap")), [an_image(run)], **{option: value})
    assert err.value.param == option


def test_predict_lists_unreadable_images_and_predicts_the_rest(run, tmp_path, capsys):
    shutil.copy(an_image(run), tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    assert main(["predict", str(run.model_dir("gap")), str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / n) for n in
                                                       ("bad.png", "cut.png", "good.png")]
    assert "skipped (" in lines[0] and "skipped (" in lines[1] and "skipped" not in lines[2]


# ----------------------------------------------------------------------------------------------
# names printed on the terminal

def test_predict_prints_control_characters_in_file_names_escaped(run, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(an_image(run), folder / "a\x1b[2J\x07.png")
    shutil.copy(an_image(run), folder / "b\x9b31m.png")
    (folder / "c\rbroken.png").write_bytes(b"not a png")
    assert main(["predict", str(run.model_dir("gap")), str(folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x9b\r")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{folder}/a\\x1b[2J\\x07.png: ")
    assert lines[1].startswith(f"{folder}/b\\x9b31m.png: ")
    assert lines[2].startswith(f"{folder}/c\\x0dbroken.png: skipped (")


def test_predict_escapes_file_names_that_are_not_utf8(run, tmp_path, capsys):
    name = os.fsdecode(b"bad\xff\x9b.png")  # surrogates: printing them raw would fail
    shutil.copy(an_image(run), tmp_path / name)
    assert main(["predict", str(run.model_dir("gap")), str(tmp_path / name), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path}/bad\\xff\\x9b.png: ")


def test_predict_escapes_class_names_from_model_json(run, tmp_path, capsys):
    model_dir = copy_model(run, tmp_path)
    edit_json(model_dir, lambda m: m.update(class_names=["\x1b]0;owned\x07", "[bold]sq"]))
    assert main(["predict", str(model_dir), str(an_image(run)), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;owned\\x07 " in out and "[bold]sq " in out


def test_json_output_keeps_the_names_exact(run, tmp_path, capsys):
    image = tmp_path / "x\x1by.png"
    shutil.copy(an_image(run), image)
    assert main(["predict", str(run.model_dir("gap")), str(image), "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and json.loads(out)[0]["path"] == str(image)
