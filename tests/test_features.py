"""The feature cache: extract once per image, resume after interruption, read back exactly."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headbench import backbones, features, runtime
from headbench.cache import list_entries, remove_entries
from headbench.backbones import create_backbone
from headbench.data import file_digest
from headbench.images import View, load_image, make_transform
from headbench.errors import HeadbenchError

N_IMAGES = 10


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("resnet18", weights="none", input_size=64)


def _write_image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return [_write_image(folder / f"{i}.png", seed=i) for i in range(N_IMAGES)]


def _extract(backbone, paths, cache_dir, **kwargs):
    kwargs = {"precision": "fp32", "workers": 0, "device": "cpu", **kwargs}
    return features.extract(backbone, paths, [file_digest(p) for p in paths],
                            cache_dir=cache_dir, **kwargs)


def _assert_same_as_fresh(backbone, images, tmp_path, fs):
    # Not bit-identical: oneDNN picks kernels by batch size, and the batches differ after a resume.
    fresh = _extract(backbone, images, tmp_path / "fresh")
    np.testing.assert_allclose(fs.take(np.arange(N_IMAGES)).astype(np.float32),
                               fresh.take(np.arange(N_IMAGES)).astype(np.float32),
                               rtol=1e-2, atol=1e-3)


def _chunk_files(fs, suffix):
    return sorted((fs.path / "chunks").glob(f"[0-9]*.{suffix}"))


def test_second_extract_computes_nothing_and_returns_identical_arrays(backbone, images, tmp_path,
                                                                      monkeypatch):
    first = _extract(backbone, images, tmp_path / "cache", chunk_size=4)
    assert first.n_extracted == N_IMAGES and first.valid.all() and not first.failures

    def no_forward(x):
        raise AssertionError("the backbone ran although everything was cached")
    monkeypatch.setattr(backbone, "forward", no_forward)
    second = _extract(backbone, images, tmp_path / "cache", chunk_size=4)
    assert second.n_extracted == 0 and second.key == first.key
    everything = np.arange(N_IMAGES)
    np.testing.assert_array_equal(second.take(everything), first.take(everything))


def test_new_image_is_extracted_alone(backbone, images, tmp_path):
    _extract(backbone, images[:-1], tmp_path)
    fs = _extract(backbone, images, tmp_path)
    assert fs.n_extracted == 1 and fs.valid.all()


def test_changed_file_is_reextracted(backbone, images, tmp_path):
    before = _extract(backbone, images, tmp_path).take([2])
    _write_image(images[2], seed=999)
    fs = _extract(backbone, images, tmp_path)
    assert fs.n_extracted == 1
    assert not np.array_equal(fs.take([2]), before)


def test_duplicate_files_are_extracted_once(backbone, images, tmp_path):
    fs = _extract(backbone, images + images[:3], tmp_path)
    assert fs.n_extracted == N_IMAGES and len(fs) == N_IMAGES + 3
    np.testing.assert_array_equal(fs.take([0, 1, 2]), fs.take([10, 11, 12]))


def test_corrupt_file_is_a_cached_failure_and_does_not_stop_the_others(backbone, images,
                                                                       tmp_path):
    images[3].write_bytes(b"this is not a png")
    # Two decoding workers: the failure must come back from a worker process too.
    fs = _extract(backbone, images, tmp_path, workers=2, batch_size=3)
    assert set(fs.failures) == {3} and "not an image" in fs.failures[3]
    assert fs.valid.sum() == N_IMAGES - 1 and not fs.valid[3]
    assert fs.n_extracted == N_IMAGES - 1
    with pytest.raises(IndexError, match="file 3 has no features"):
        fs.take([0, 3])
    again = _extract(backbone, images, tmp_path)
    assert again.n_extracted == 0 and again.failures == fs.failures


def test_interrupted_extraction_resumes_after_last_committed_chunk(backbone, images, tmp_path,
                                                                   monkeypatch):
    commit = features._commit_chunk

    def commit_then_interrupt(*args, **kwargs):
        commit(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(features, "_commit_chunk", commit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _extract(backbone, images, tmp_path, chunk_size=3, batch_size=2)
    monkeypatch.setattr(features, "_commit_chunk", commit)

    fs = _extract(backbone, images, tmp_path, chunk_size=3, batch_size=2)
    # the first chunk (3 images) and, committed on the way out, the 4th image of the 2nd batch
    assert fs.n_extracted == N_IMAGES - 4 and fs.valid.all()
    _assert_same_as_fresh(backbone, images, tmp_path, fs)


def test_ctrl_c_mid_extraction_keeps_every_finished_batch(backbone, images, tmp_path,
                                                           monkeypatch):
    forward, calls = features._forward, []

    def interrupt_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)
    monkeypatch.setattr(features, "_forward", interrupt_third_batch)
    with pytest.raises(KeyboardInterrupt):  # chunks of 256: nothing would be whole yet
        _extract(backbone, images, tmp_path, batch_size=2)
    monkeypatch.setattr(features, "_forward", forward)
    fs = _extract(backbone, images, tmp_path, batch_size=2)
    assert fs.n_extracted == N_IMAGES - 4 and fs.valid.all()
    _assert_same_as_fresh(backbone, images, tmp_path, fs)


def test_rows_are_committed_at_least_every_few_seconds(backbone, images, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "COMMIT_EVERY_S", 0.0)  # every batch is "late"
    fs = _extract(backbone, images, tmp_path, batch_size=3)
    assert len(_chunk_files(fs, "json")) == -(-N_IMAGES // 3)


def test_temp_files_are_swept_under_the_lock_and_never_counted(backbone, images, tmp_path):
    fs = _extract(backbone, images[:4], tmp_path)
    size = list_entries(tmp_path)[0]["size_bytes"]
    stale = fs.path / "chunks" / ".000009.npy.abc123.tmp"
    stale.write_bytes(b"x" * 10_000)  # a crashed writer's leftover
    assert list_entries(tmp_path)[0]["size_bytes"] == size
    _extract(backbone, images, tmp_path)  # takes the entry's lock to extract the rest
    assert not stale.exists()


def test_half_written_chunk_without_json_is_ignored(backbone, images, tmp_path):
    fs = _extract(backbone, images, tmp_path, chunk_size=5)
    last_npy, last_json = _chunk_files(fs, "npy")[-1], _chunk_files(fs, "json")[-1]
    last_json.unlink()
    last_npy.write_bytes(last_npy.read_bytes()[:200])  # truncated, as if killed mid-write

    fs = _extract(backbone, images, tmp_path, chunk_size=5)
    assert fs.n_extracted == 5 and fs.valid.all()
    _assert_same_as_fresh(backbone, images, tmp_path, fs)


def test_a_chunk_with_flipped_bytes_is_named_dropped_and_extracted_again(backbone, images,
                                                                         tmp_path, monkeypatch):
    """Issue 21, fault 7: flipped bytes in a chunk's data gave "training head 'gap' diverged ...
    lower lr", and every rerun read the same corrupt chunk."""
    fs = _extract(backbone, images, tmp_path, chunk_size=5)
    first = _chunk_files(fs, "npy")[0]
    data = bytearray(first.read_bytes())
    data[-9] ^= 0xFF  # a feature value, not the header: the file still parses
    first.write_bytes(bytes(data))
    said = []
    monkeypatch.setattr(features.progress, "log", lambda text, *a, **k: said.append(text))
    again = _extract(backbone, images, tmp_path, chunk_size=5)
    assert any(f"cache chunk '{first}' is damaged" in line for line in said)
    assert again.n_extracted == 5 and again.valid.all()
    _assert_same_as_fresh(backbone, images, tmp_path, again)
    assert _extract(backbone, images, tmp_path, chunk_size=5).n_extracted == 0  # healed


def test_a_damaged_meta_json_is_one_line_naming_it(backbone, images, tmp_path):
    """Fault 7: meta.json's feature_shape [7] gave a traceback."""
    fs = _extract(backbone, images[:2], tmp_path)
    meta = json.loads((fs.path / "meta.json").read_text())
    meta["feature_shape"] = [7]
    (fs.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(HeadbenchError, match=r"meta\.json' is damaged \(feature_shape \[7\], "
                                             r"this backbone gives \[512, 2, 2\]\): remove"):
        _extract(backbone, images, tmp_path)


def test_chunks_store_float16_nchw_and_digests(backbone, images, tmp_path):
    fs = _extract(backbone, images, tmp_path, chunk_size=4)
    assert fs.shape == backbone.feature_shape() == (512, 2, 2)
    arrays = [np.load(p) for p in _chunk_files(fs, "npy")]
    assert [a.shape for a in arrays] == [(4, 512, 2, 2), (4, 512, 2, 2), (2, 512, 2, 2)]
    assert all(a.dtype == np.float16 for a in arrays)
    records = [json.loads(p.read_text()) for p in _chunk_files(fs, "json")]
    assert [d for r in records for d in r["digests"]] == [file_digest(p) for p in images]
    meta = json.loads((fs.path / "meta.json").read_text())
    assert meta["feature_shape"] == [512, 2, 2] and meta["precision"] == "fp32"


def test_take_returns_rows_in_requested_order_across_chunks(backbone, images, tmp_path):
    fs = _extract(backbone, images, tmp_path, chunk_size=3)
    order = [9, 0, 4, 4, 1]
    picked = fs.take(order)
    assert picked.shape == (5, 512, 2, 2) and picked.dtype == np.float16
    for row, i in zip(picked, order):
        np.testing.assert_array_equal(row, fs[i])
    np.testing.assert_array_equal(fs[np.array(order)], picked)
    np.testing.assert_array_equal(fs.take(fs.valid), fs.take(np.arange(N_IMAGES)))
    with pytest.raises(IndexError):
        fs.take([N_IMAGES])


def _direct_forward(backbone, paths, view=View()):
    transform = make_transform(backbone.data_config, view)
    x = torch.stack([transform(load_image(p)) for p in paths])
    with torch.inference_mode():
        return backbone(x).float().numpy()


def test_fp32_features_equal_a_direct_backbone_forward(backbone, images, tmp_path):
    fs = _extract(backbone, images, tmp_path, batch_size=4)
    expected = _direct_forward(backbone, images)
    got = fs.take(np.arange(N_IMAGES)).astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)


def test_extraction_leaves_backbone_as_it_was(backbone, images, tmp_path):
    _extract(backbone, images[:2], tmp_path)
    conv = backbone.model.conv1.weight
    assert conv.is_contiguous() and conv.device.type == "cpu" and not backbone.training


@pytest.mark.skipif(runtime.resolve_precision("auto", "cpu") != "bf16",
                    reason="this CPU has no native bf16 (avx512_bf16/amx_bf16)")
def test_bf16_features_are_close_to_fp32(backbone, images, tmp_path):
    fp32 = _extract(backbone, images, tmp_path).take(np.arange(N_IMAGES)).astype(np.float32)
    bf16 = _extract(backbone, images, tmp_path, precision="bf16")
    assert bf16.meta["precision"] == "bf16" and bf16.n_extracted == N_IMAGES
    got = bf16.take(np.arange(N_IMAGES)).astype(np.float32)
    relative = np.linalg.norm(got - fp32) / np.linalg.norm(fp32)
    assert 0 < relative < 0.05


def test_cache_key_changes_with_view_precision_and_weights(backbone):
    base = features.cache_key(features.key_fields(backbone, View(), "fp32"))
    assert base == features.cache_key(features.key_fields(backbone, View(), "fp32"))
    other_weights = types.SimpleNamespace(timm_name=backbone.timm_name,
                                          weights_checksum="0123456789abcdef",
                                          data_config=backbone.data_config)
    variants = [features.key_fields(backbone, View(shift=(4, 0), margin=4), "fp32"),
                features.key_fields(backbone, View(size=96), "fp32"),
                features.key_fields(backbone, View(), "bf16"),
                features.key_fields(other_weights, View(), "fp32")]
    keys = {features.cache_key(f) for f in variants}
    assert len(keys) == len(variants) and base not in keys


def test_another_view_gets_its_own_entry(backbone, images, tmp_path):
    center = _extract(backbone, images[:3], tmp_path)
    larger = _extract(backbone, images[:3], tmp_path, view=View(size=96))
    assert larger.key != center.key and larger.n_extracted == 3
    assert larger.shape == (512, 3, 3)


def test_list_and_remove_entries(backbone, images, tmp_path):
    cache = tmp_path / "cache"
    a = _extract(backbone, images[:2], cache)
    b = _extract(backbone, images[:3], cache, view=View(size=96))
    (cache / "0123456789abcdef").mkdir()  # an entry whose extraction never got going
    (cache / "notes").mkdir()             # not an entry: never listed, never removed

    entries = {e["key"]: e for e in list_entries(cache)}
    assert set(entries) == {a.key, b.key, "0123456789abcdef"}
    assert entries[a.key]["images"] == 2 and entries[b.key]["images"] == 3
    assert entries[b.key]["view"] == "size96" and entries[a.key]["backbone"] == "resnet18"
    assert entries[a.key]["weights"] == "none" and entries[a.key]["precision"] == "fp32"
    assert entries[a.key]["size_bytes"] > 2 * 512 * 4 * 2
    assert entries["0123456789abcdef"]["backbone"] is None

    with pytest.raises(HeadbenchError, match="no cache entry 'ffff'"):
        remove_entries(cache, ["ffff"])
    assert remove_entries(cache, [a.key[:6]]) == 1
    assert not (cache / a.key).exists() and (cache / b.key).exists()
    assert remove_entries(cache) == 2
    assert list_entries(cache) == [] and (cache / "notes").is_dir()


def test_remove_entries_rejects_ambiguous_prefix(tmp_path):
    (tmp_path / "abc0000000000000").mkdir()
    (tmp_path / "abc1111111111111").mkdir()
    with pytest.raises(HeadbenchError, match="matches 2 entries"):
        remove_entries(tmp_path, ["abc"])
    assert len(list_entries(tmp_path)) == 2


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HEADBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert features.default_cache_dir() == tmp_path / "xdg" / "headbench"
    monkeypatch.setenv("HEADBENCH_CACHE", str(tmp_path / "mine"))
    assert features.default_cache_dir() == tmp_path / "mine"


def test_subset_reads_rows_lazily_and_trains_like_the_array(backbone, images, tmp_path):
    from headbench.train import predict_logits
    fs = _extract(backbone, images, tmp_path, chunk_size=3)
    rows = fs.subset([5, 1, 7, 2])
    assert rows.shape == (4, *fs.shape) and rows.nbytes == 4 * np.prod(fs.shape) * 2
    np.testing.assert_array_equal(rows[np.array([1, 3])], fs.take([1, 2]))
    np.testing.assert_array_equal(rows[0], fs.take([5])[0])
    np.testing.assert_array_equal(np.asarray(rows), fs.take([5, 1, 7, 2]))
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    np.testing.assert_array_equal(predict_logits(head, rows), predict_logits(head, np.asarray(rows)))


def test_half_removed_entries_are_swept_only_once_stale(tmp_path, monkeypatch):
    from headbench import io as hb_io
    trash = tmp_path / ".removing-0123456789abcdef-1a2b3c4d"
    (trash / "chunks").mkdir(parents=True)
    list_entries(tmp_path)
    assert trash.exists()  # young: a live `cache rm` may still be deleting it
    monkeypatch.setattr(hb_io, "STALE_SECONDS", 0)
    list_entries(tmp_path)
    assert not trash.exists()


def test_statistics_form_stores_the_pooled_rows_under_its_own_key(backbone, images, tmp_path):
    maps = _extract(backbone, images, tmp_path)
    form = ("avg", "max")
    pooled = _extract(backbone, images, tmp_path, form=form)
    assert pooled.key != maps.key and pooled.form == form and maps.form is None
    c, h, w = maps.shape
    assert pooled.shape == (2 * c,) and pooled.meta["map_shape"] == [c, h, w]
    assert pooled.subset(np.arange(3)).form == form
    x = torch.from_numpy(maps.take(np.arange(N_IMAGES)).astype(np.float32))
    expected = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1).numpy()
    np.testing.assert_allclose(pooled.take(np.arange(N_IMAGES)).astype(np.float32), expected,
                               rtol=1e-2, atol=1e-2)
    assert {e["form"] for e in list_entries(tmp_path)} == {"maps", "avg+max"}
    data_bytes = [sum(p.stat().st_size - 128 for p in _chunk_files(fs, "npy"))
                  for fs in (maps, pooled)]  # .npy files less their 128-byte headers
    assert data_bytes[1] * h * w == data_bytes[0] * 2  # 2 numbers per channel instead of h·w
    assert features.is_cached(backbone, [file_digest(p) for p in images], cache_dir=tmp_path,
                              form=form)
    assert _extract(backbone, images, tmp_path, form=form).n_extracted == 0


def test_extraction_folds_batchnorm_into_the_convolutions_only_when_exact(backbone):
    model = backbones.inference_copy(backbone, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())  # untouched
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), backbone.eval()(x), rtol=1e-4, atol=1e-4)

    class Reordered(torch.nn.Module):  # registered conv then bn, but bn runs first
        def __init__(self):
            super().__init__()
            self.data_config = {"input_size": (3, 8, 8)}
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.5)

        def forward(self, x):
            return self.conv(self.bn(x))
    assert isinstance(backbones.inference_copy(Reordered(), torch.device("cpu")).bn,
                      torch.nn.BatchNorm2d)  # the probe disagreed: nothing folded
