"""The deterministic synthetic shapes dataset (headbench.synthetic)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from headbench.data import file_digest, scan_folder
from headbench.errors import HeadbenchError
from headbench.synthetic import SHAPES, make_shapes_dataset

SMALL = dict(classes=("circle", "ring", "star"), per_class=4, image_size=32, seed=0)


def digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_digest(p) for p in sorted(root.rglob("*.png"))}


def test_same_arguments_give_the_same_bytes_in_two_folders(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", **SMALL)
    b = make_shapes_dataset(tmp_path / "b", **SMALL)
    assert digests(a) == digests(b) and len(digests(a)) == 12


def test_other_seed_gives_other_images(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", **SMALL)
    b = make_shapes_dataset(tmp_path / "b", **{**SMALL, "seed": 1})
    assert not set(digests(a).values()) & set(digests(b).values())


def test_writes_class_folders_with_per_class_images_and_manifest(tmp_path):
    root = make_shapes_dataset(tmp_path / "shapes", **SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["circle", "manifest.json", "ring", "star"]
    assert sorted(p.name for p in (root / "star").iterdir()) == [f"star_{i}.png" for i in range(4)]
    with Image.open(root / "ring" / "ring_0.png") as img:
        assert img.mode == "RGB" and img.size == (32, 32)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["per_class"] == 4 and manifest["classes"] == ["circle", "ring", "star"]
    scan = scan_folder(root)
    assert scan.layout == "classes" and len(scan.items) == 12 and not scan.skipped


def test_images_all_differ(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", **{**SMALL, "per_class": 6})
    arrays = [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(root.rglob("*.png"))]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 5


def test_matching_manifest_reuses_files_without_rewriting(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_shapes_dataset(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_changed_arguments_regenerate_the_folder(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", **SMALL)
    make_shapes_dataset(root, **{**SMALL, "per_class": 2, "classes": ("cross", "square")})
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "cross/cross_0.png", "cross/cross_1.png", "square/square_0.png", "square/square_1.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folders left behind


def test_missing_file_triggers_regeneration(tmp_path):
    root = make_shapes_dataset(tmp_path / "s", **SMALL)
    original = file_digest(root / "star" / "star_2.png")
    (root / "star" / "star_2.png").unlink()
    make_shapes_dataset(root, **SMALL)
    assert file_digest(root / "star" / "star_2.png") == original


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(HeadbenchError, match="not a headbench synthetic dataset"):
        make_shapes_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"precious"


def test_unknown_shape_suggests_valid_names(tmp_path):
    with pytest.raises(HeadbenchError, match="unknown shape 'circel': did you mean circle"):
        make_shapes_dataset(tmp_path / "s", classes=("circel", "ring"))


def test_every_documented_shape_draws(tmp_path):
    root = make_shapes_dataset(tmp_path / "all", classes=tuple(SHAPES), per_class=1,
                               image_size=24)
    assert len(list(root.rglob("*.png"))) == len(SHAPES) == 8
