"""`headbench demo`: the main job on generated data; without analyses, none at all (not even
the ones compare runs by default)."""
from __future__ import annotations

import headbench.demo as demo_module


def _options(monkeypatch, tmp_path, **kwargs) -> dict:
    seen = {}
    monkeypatch.setattr(demo_module, "make_shapes_dataset", lambda folder, **k: folder)
    monkeypatch.setattr(demo_module, "compare", lambda data, **options: seen.update(options))
    demo_module.demo(out=tmp_path, cache_dir=tmp_path / "cache", **kwargs)
    return seen


def test_demo_without_analyses_runs_none(monkeypatch, tmp_path):
    options = _options(monkeypatch, tmp_path, analyses=False)
    assert options["shots"] == "none" and options["cam"] == 0
    assert "shifts" not in options and "sizes" not in options


def test_demo_with_analyses_runs_every_one(monkeypatch, tmp_path):
    options = _options(monkeypatch, tmp_path)
    assert options["backbone"] == "efficientnet_lite0" and options["weights"] == "embedded"
    assert options["shifts"] and options["sizes"] and options["shots"] and options["cam"]
