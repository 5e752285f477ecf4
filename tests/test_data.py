"""Image folders, splits, leakage, robust decoding and the eval transform (headbench.data)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headbench.data import file_digest, find_leakage, make_splits, scan_folder
from headbench.images import (IMAGE_EXTENSIONS, BadImage, View, draft_size, is_image_file,
                              load_image, make_transform)
from headbench.errors import HeadbenchError

CFG = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
       "std": [0.229, 0.224, 0.225], "interpolation": "bicubic", "crop_pct": 0.875}


def write_png(path: Path, value: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """A small PNG whose bytes depend on `value`, so files differ unless values match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, (value // 256) % 256, 7)).save(path)
    return path


def make_classes(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", value=start + 1000 * k + i)
    return root


# --------------------------------------------------------------------------- scanning

def test_image_extensions_cover_common_formats_in_any_case():
    assert {"jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"} == IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPEG") and is_image_file("x.Tif") and not is_image_file("x.txt")


def test_scan_classes_layout_sorts_items_by_class_then_path(tmp_path):
    make_classes(tmp_path, {"dogs": 3, "cats": 2})
    write_png(tmp_path / "cats" / "sub" / "a.PNG", value=99)
    scan = scan_folder(tmp_path)
    assert scan.layout == "classes" and scan.classes == ["cats", "dogs"]
    rel = [p.relative_to(tmp_path).as_posix() for p in (it.path for it in scan.items)]
    assert rel == ["cats/000.png", "cats/001.png", "cats/sub/a.PNG",
                   "dogs/000.png", "dogs/001.png", "dogs/002.png"]
    assert scan.labels == [0, 0, 0, 1, 1, 1]
    assert all(item.folder_role is None for item in scan.items)
    assert scan.items[0].digest == file_digest(tmp_path / "cats" / "000.png")


def test_file_digest_is_sha256_of_bytes(tmp_path):
    import hashlib
    path = tmp_path / "x.bin"
    path.write_bytes(b"headbench" * 1000)
    assert file_digest(path, chunk=7) == hashlib.sha256(b"headbench" * 1000).hexdigest()


def test_scan_train_valid_layout_marks_folder_roles(tmp_path):
    make_classes(tmp_path / "train", {"a": 4, "b": 4})
    make_classes(tmp_path / "valid", {"a": 2}, start=500)
    scan = scan_folder(tmp_path)
    assert scan.layout == "train_val" and scan.classes == ["a", "b"]
    roles = [(scan.classes[i.label], i.folder_role) for i in scan.items]
    assert roles.count(("a", "val")) == 2 and roles.count(("b", "train")) == 4


def test_scan_train_val_test_layout(tmp_path):
    for role, start in (("train", 0), ("val", 100), ("test", 200)):
        make_classes(tmp_path / role, {"a": 2, "b": 2}, start=start)
    scan = scan_folder(tmp_path)
    assert scan.layout == "train_val_test"
    assert sorted({i.folder_role for i in scan.items}) == ["test", "train", "val"]


def test_scan_lists_text_and_empty_files_as_skipped_and_ignores_hidden(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / "blank.jpg").write_bytes(b"")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "b" / ".hidden").mkdir()
    write_png(tmp_path / "b" / ".hidden" / "x.png")
    write_png(tmp_path / "stray.png")
    (tmp_path / "README.md").write_text("dataset card")
    scan = scan_folder(tmp_path)
    assert dict((p.name, why) for p, why in scan.skipped) == {
        "notes.txt": "not an image file (.txt)", "blank.jpg": "empty file (0 bytes)",
        "stray.png": "image not inside a class folder"}
    assert len(scan.items) == 4


def test_scan_rejects_missing_root(tmp_path):
    with pytest.raises(HeadbenchError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_scan_rejects_file_as_root(tmp_path):
    with pytest.raises(HeadbenchError, match="not a folder"):
        scan_folder(write_png(tmp_path / "x.png"))


def test_scan_rejects_folder_without_class_folders(tmp_path):
    write_png(tmp_path / "loose.png")
    with pytest.raises(HeadbenchError, match="no class folders"):
        scan_folder(tmp_path)


def test_scan_rejects_single_class(tmp_path):
    make_classes(tmp_path, {"only": 3})
    with pytest.raises(HeadbenchError, match="at least two"):
        scan_folder(tmp_path)


def test_scan_names_the_empty_class_folder(tmp_path):
    make_classes(tmp_path / "train", {"dogs": 2})
    (tmp_path / "train" / "cats").mkdir()
    (tmp_path / "train" / "cats" / "readme.txt").write_text("no images here")
    make_classes(tmp_path / "val", {"dogs": 1})
    with pytest.raises(HeadbenchError) as err:
        scan_folder(tmp_path)
    assert str(err.value) == (f"class folder '{tmp_path}/train/cats' has no images; "
                              "add images or remove it")


def test_scan_rejects_val_class_missing_from_train(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "val", {"a": 1, "c": 1}, start=50)
    with pytest.raises(HeadbenchError, match=r"val/c' has no matching"):
        scan_folder(tmp_path)


def test_scan_rejects_train_without_held_out_folder(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    with pytest.raises(HeadbenchError, match="no val/"):
        scan_folder(tmp_path)


# --------------------------------------------------------------------------- symlinks

def linked_folder(tmp_path: Path) -> Path:
    """Classes a and b; a/out.png links to an image outside the folder, b/in.png to a/000.png."""
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    outside = write_png(tmp_path / "elsewhere" / "o.png", value=77)
    (data / "a" / "out.png").symlink_to(outside)
    (data / "b" / "in.png").symlink_to(data / "a" / "000.png")
    return data


def test_link_out_of_the_data_folder_is_skipped_listed_and_counted(tmp_path):
    data = linked_folder(tmp_path)
    scan = scan_folder(data)
    assert [why for p, why in scan.skipped if p.name == "out.png"] == [
        "symlink to outside the data folder (pass --follow-links to use it)"]
    assert data / "a" / "out.png" not in [it.path for it in scan.items]
    assert scan.links_outside == 1 and not scan.follow_links


def test_link_out_of_the_data_folder_is_used_with_follow_links(tmp_path):
    data = linked_folder(tmp_path)
    scan = scan_folder(data, follow_links=True)
    assert data / "a" / "out.png" in [it.path for it in scan.items]
    assert scan.links_outside == 1 and scan.follow_links and not scan.skipped


def test_link_inside_the_data_folder_is_used_and_not_counted(tmp_path):
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    (data / "b" / "in.png").symlink_to("../a/000.png")
    scan = scan_folder(data)
    item = next(it for it in scan.items if it.path.name == "in.png")
    assert item.digest == file_digest(data / "a" / "000.png") and scan.links_outside == 0


def test_linked_subfolder_out_of_the_data_folder_is_listed_and_counted(tmp_path):
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    write_png(tmp_path / "elsewhere" / "o.png", value=77)
    (data / "a" / "more").symlink_to(tmp_path / "elsewhere")
    scan = scan_folder(data)
    assert scan.links_outside == 1 and any(p.name in ("more", "o.png") for p, _ in scan.skipped)


def test_symlink_loop_is_skipped_not_a_crash(tmp_path):
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    (data / "a" / "loop.png").symlink_to("loop.png")
    scan = scan_folder(data)
    assert [p.name for p, _ in scan.skipped] == ["loop.png"] and len(scan.items) == 4


def test_class_folder_linking_out_names_follow_links(tmp_path):
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    write_png(tmp_path / "elsewhere" / "o.png", value=77)
    (data / "c").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HeadbenchError, match="follow_links") as e:
        scan_folder(data)
    assert e.value.hints == ("follow_links",)  # the CLI shows --follow-links


# --------------------------------------------------------------------------- splits

def test_classes_layout_split_is_stratified_disjoint_and_complete(tmp_path):
    scan = scan_folder(make_classes(tmp_path, {"a": 20, "b": 40, "c": 3}))
    splits = make_splits(scan, split=(0.7, 0.15, 0.15), seed=0)
    counts = splits.counts()
    assert counts["train"] == {"a": 14, "b": 28, "c": 1}
    assert counts["val"] == {"a": 3, "b": 6, "c": 1}
    assert counts["test"] == {"a": 3, "b": 6, "c": 1}
    everything = splits.train + splits.val + splits.test
    assert sorted(everything) == list(range(len(scan.items)))
    assert "seed 0" in splits.description


def test_split_is_deterministic_given_seed_and_changes_with_seed(tmp_path):
    scan = scan_folder(make_classes(tmp_path, {"a": 30, "b": 30}))
    first, again = make_splits(scan, seed=3), make_splits(scan, seed=3)
    other = make_splits(scan, seed=4)
    assert (first.train, first.val, first.test) == (again.train, again.val, again.test)
    assert first.val != other.val


def test_train_val_layout_uses_given_val_folder_as_test_split(tmp_path):
    make_classes(tmp_path / "train", {"a": 20, "b": 20})
    make_classes(tmp_path / "val", {"a": 5, "b": 4}, start=500)
    scan = scan_folder(tmp_path)
    splits = make_splits(scan, val_fraction=0.25, seed=0)
    assert {scan.items[i].folder_role for i in splits.test} == {"val"}
    assert {scan.items[i].folder_role for i in splits.train + splits.val} == {"train"}
    assert splits.counts()["test"] == {"a": 5, "b": 4}
    assert splits.counts()["val"] == {"a": 5, "b": 5}
    assert "test = the given held-out folder" in splits.description


def test_train_val_test_layout_keeps_folders(tmp_path):
    for role, n, start in (("train", 4, 0), ("val", 2, 100), ("test", 3, 200)):
        make_classes(tmp_path / role, {"a": n, "b": n}, start=start)
    scan = scan_folder(tmp_path)
    splits = make_splits(scan)
    for role in ("train", "val", "test"):
        assert {scan.items[i].folder_role for i in getattr(splits, role)} == {role}
    assert splits.counts()["test"] == {"a": 3, "b": 3}


def test_invalid_items_are_left_out_of_every_split(tmp_path):
    scan = scan_folder(make_classes(tmp_path, {"a": 10, "b": 10}))
    valid = [i % 4 != 0 for i in range(len(scan.items))]
    splits = make_splits(scan, valid=valid)
    used = splits.train + splits.val + splits.test
    assert sorted(used) == [i for i, ok in enumerate(valid) if ok]
    assert "5 unreadable" in splits.description


def test_class_without_readable_training_image_is_an_error(tmp_path):
    make_classes(tmp_path / "train", {"a": 3, "b": 2})
    make_classes(tmp_path / "val", {"a": 2, "b": 2}, start=100)
    make_classes(tmp_path / "test", {"a": 2, "b": 2}, start=200)
    scan = scan_folder(tmp_path)
    valid = [not (it.folder_role == "train" and it.label == 1) for it in scan.items]
    with pytest.raises(HeadbenchError, match="class 'b' has no readable training images"):
        make_splits(scan, valid=valid)


@pytest.mark.parametrize("split", [(0.7, 0.3), (0.8, 0.15, 0.15), (1.0, 0.0, 0.0),
                                   (0.9, 0.2, -0.1)])
def test_bad_split_fractions_are_rejected(tmp_path, split):
    scan = scan_folder(make_classes(tmp_path, {"a": 5, "b": 5}))
    with pytest.raises(HeadbenchError, match="three positive fractions"):
        make_splits(scan, split=split)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_bad_val_fraction_is_rejected(tmp_path, fraction):
    scan = scan_folder(make_classes(tmp_path, {"a": 5, "b": 5}))
    with pytest.raises(HeadbenchError, match="^val_fraction"):
        make_splits(scan, val_fraction=fraction)


def test_copied_file_across_splits_is_reported_as_leakage(tmp_path):
    make_classes(tmp_path / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "val", {"a": 2, "b": 2}, start=100)
    make_classes(tmp_path / "test", {"a": 2, "b": 2}, start=200)
    shutil.copy(tmp_path / "train" / "a" / "000.png", tmp_path / "val" / "a" / "copy.png")
    shutil.copy(tmp_path / "train" / "b" / "000.png", tmp_path / "train" / "b" / "dup.png")
    scan = scan_folder(tmp_path)
    leaks = find_leakage(scan, make_splits(scan))
    assert len(leaks) == 1  # the within-train duplicate is not leakage
    assert leaks[0]["digest"] == file_digest(tmp_path / "val" / "a" / "copy.png")
    assert leaks[0]["roles"] == {"train": [tmp_path / "train" / "a" / "000.png"],
                                 "val": [tmp_path / "val" / "a" / "copy.png"]}


# --------------------------------------------------------------------------- decoding

def test_grayscale_loads_as_rgb(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((0, 0)) == (77, 77, 77)


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((2, 2)) == (255, 255, 255)


def test_rgba_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 127, 127)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_16bit_png_scales_to_8bit(tmp_path):
    values = np.array([[65535, 256, 0, 32768]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    out = np.asarray(load_image(tmp_path / "16.png"))
    assert out[0, :, 0].tolist() == [255, 1, 0, 128]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (40, 20), "red").save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert load_image(tmp_path / "anim.gif").getpixel((4, 4)) == (255, 0, 0)


def test_truncated_jpeg_is_a_bad_image(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated"):
        load_image(tmp_path / "cut.jpg")


def test_text_file_named_jpg_is_a_bad_image(tmp_path):
    (tmp_path / "fake.jpg").write_text("this is not a picture")
    with pytest.raises(BadImage, match="not an image"):
        load_image(tmp_path / "fake.jpg")


def test_zero_byte_file_is_a_bad_image(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImage) as err:
        load_image(tmp_path / "empty.png")
    assert err.value.reason == "empty file (0 bytes)"


@pytest.mark.parametrize("size", [(15, 10), (30, 30)])  # Pillow's warning range, error range
def test_decompression_bomb_is_a_bad_image(tmp_path, monkeypatch, size):
    write_png(tmp_path / "big.png", size=size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImage, match="decompression bomb"):
        load_image(tmp_path / "big.png")


def test_draft_decodes_large_jpeg_smaller_but_not_below_request(tmp_path):
    Image.new("RGB", (1200, 900), "green").save(tmp_path / "big.jpg")
    img = load_image(tmp_path / "big.jpg", draft=(256, 256))
    assert img.size == (600, 450)  # JPEG scale 1/2: 1/4 would go below 256


# --------------------------------------------------------------------------- transforms

def test_view_keys_name_the_crop():
    assert View().key == "center"
    assert View(size=288).key == "size288"
    assert View(shift=(8, -8), margin=32).key == "shift8_-8m32"
    assert View(size=160, shift=(4, 0)).key == "size160_shift4_0"


@pytest.mark.parametrize("size", [160, 224, 288])
def test_transform_output_shape_follows_view_size(size):
    view = View() if size == 224 else View(size=size)
    x = make_transform(CFG, view)(Image.new("RGB", (300, 200), "white"))
    assert x.shape == (3, size, size) and x.dtype == torch.float32


def test_shifted_view_moves_content_left_by_shift():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    cfg = {**CFG, "input_size": [3, 64, 64]}
    center = make_transform(cfg, View(margin=16))(img)
    moved = make_transform(cfg, View(shift=(8, -4), margin=16))(img)
    # window moved right by 8 and up by 4: content appears 8 left and 4 lower
    assert torch.equal(moved[:, 4:, :-8], center[:, :-4, 8:])


def test_shift_beyond_margin_is_rejected():
    transform = make_transform(CFG, View(shift=(40, 0)))  # only 16 px either side of 224 in 256
    with pytest.raises(ValueError, match="outside"):
        transform(Image.new("RGB", (256, 256)))


def test_margin_widens_resize_and_draft_size():
    assert draft_size(CFG) == (256, 256)
    assert draft_size(CFG, View(margin=32)) == (288, 288)
    assert draft_size(CFG, View(size=288)) == (329, 329)


def test_default_transform_matches_timm_eval_transform():
    import timm.data
    yy, xx = np.mgrid[0:375, 0:500]
    smooth = np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1) % 256
    noise = np.random.default_rng(1).integers(0, 40, (375, 500, 3))
    img = Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))
    for cfg in (CFG, {**CFG, "interpolation": "bilinear", "crop_pct": 0.95,
                      "input_size": [3, 160, 160]}):
        ours = make_transform(cfg)(img)
        theirs = timm.data.create_transform(**cfg)(img)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < 1e-5  # same PIL resize and crop arithmetic


@pytest.mark.parametrize("link, target", [
    ("a/up", ".."),           # the data folder itself, above the link: issue 21's reproduction
    ("a/self", "."),          # its own class folder
    ("a/other", "../b"),      # another class: b's images would be read as a
])
def test_a_folder_link_into_the_layout_or_another_class_is_skipped_and_listed(tmp_path, link,
                                                                              target):
    """Issue 21, fault 8: `ln -s .. circle/up` relabelled square images as circles."""
    data = make_classes(tmp_path / "data", {"a": 2, "b": 2})
    (data / link).symlink_to(target)
    scan = scan_folder(data)
    assert sorted(str(it.path.relative_to(data)) for it in scan.items) == [
        "a/000.png", "a/001.png", "b/000.png", "b/001.png"]
    (why,) = [why for p, why in scan.skipped if p == data / link]
    assert "a loop" in why or "another class folder ('b')" in why
