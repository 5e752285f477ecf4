"""Adding a head or an analysis touches one place: a registration, no library edit."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

import headbench as hb
from headbench.analyses import register_analysis, unregister_analysis
from headbench.heads import register_head, unregister_head
from headbench.layers import GlobalMaxPool2d
from headbench.run import Run
from headbench.synthetic import make_shapes_dataset


class _MaxThenSquash(nn.Module):
    """A toy pooling: global max of tanh(x), any map size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GlobalMaxPool2d()(torch.tanh(x))


@pytest.fixture
def tanh_max_head():
    @register_head("tanh_max", "global max of tanh(x) -> Dense")
    def _factory(spec, c, k, map_size):
        return [("pool", _MaxThenSquash()), ("fc", nn.Linear(c, k))]
    yield "tanh_max"
    unregister_head("tanh_max")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=12, image_size=64)


def test_a_head_registered_in_a_test_runs_through_compare_analyses_report_and_predict(
        tanh_max_head, shapes, tmp_path):
    run = hb.compare(shapes, backbone="efficientnet_lite0", weights="embedded",
                     heads=[tanh_max_head, "flatten"], seeds=2, epochs=3, input_size=64,
                     precision="fp32", cache_dir=tmp_path / "cache", out=tmp_path,
                     shifts="0,8", sizes="64,96", shots="2", cam=1)
    head = run.head("tanh_max")
    assert head.any_size and not head.exact_cam and len(head.seeds) == 2
    assert head.head_params == 1280 * 3 + 3
    for section in ("shifts", "sizes", "shots", "cam"):
        assert "tanh_max" in run.analyses[section]["heads"], section
    # any size by its registration: it runs at 96 px, flatten does not
    assert "not_applicable" not in run.analyses["sizes"]["heads"]["tanh_max"]["96"]
    assert "not_applicable" in run.analyses["sizes"]["heads"]["flatten"]["96"]
    assert run.analyses["cam"]["heads"]["tanh_max"]["method"] == "Grad-CAM"
    assert "tanh_max" in (run.run_dir / "report.html").read_text()
    model = hb.load_model(run.model_dir("tanh_max"))
    rows = hb.predict(model, [run.dataset.path("test", 0)], topk=1)
    assert rows[0]["top"][0]["label"] in run.classes


def test_an_analysis_registered_in_a_test_runs_through_analyze_and_the_report(shapes, tmp_path):
    def brightness(ctx, factor):
        """Accuracy of every head's best seed on test features scaled by `factor`."""
        X = torch.from_numpy(np.asarray(ctx.view_features("test"), dtype=np.float32)) * factor
        y = ctx.run.labels("test")
        out = {}
        for h in ctx.run.heads:
            head = ctx.make_head(h.head, h.best_seed)
            with torch.no_grad():
                out[h.head] = float((head(X).argmax(1).numpy() == y).mean())
        return {"factor": factor, "heads": out}

    register_analysis("brightness", brightness, parse=float, title="feature scaling")
    try:
        run = hb.compare(shapes, backbone="efficientnet_lite0", weights="embedded",
                         heads=["gap"], seeds=1, epochs=2, input_size=64, precision="fp32",
                         cache_dir=tmp_path / "cache", out=tmp_path, report=False)
        hb.analyze(run.run_dir, brightness="0.5")
        section = Run.load(run.run_dir).analyses["brightness"]
        assert section["factor"] == 0.5 and 0.0 <= section["heads"]["gap"] <= 1.0
        assert "feature scaling" in (run.run_dir / "report.html").read_text()
    finally:
        unregister_analysis("brightness")
