"""Adding a head or an analysis touches one place: a registration, no library edit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import headbench as hb
from headbench.analyses import register_analysis, unregister_analysis
from headbench.analyses.findings import Draft, paired_difference, per_image_values, verdict
from headbench.config import option
from headbench.errors import HeadbenchError
from headbench.figures import Paragraph, Plot, new_figure
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


@pytest.fixture(scope="module")
def gap_flatten_run(shapes, tmp_path_factory):
    """A finished run folder of gap and flatten, one seed (the analyses below add to it)."""
    tmp = tmp_path_factory.mktemp("run")
    run = hb.compare(shapes, backbone="efficientnet_lite0", weights="embedded",
                     heads=["gap", "flatten"], seeds=1, epochs=2, input_size=64,
                     precision="fp32", cache_dir=tmp / "cache", out=tmp, report=False)
    return run.run_dir


def _scaled_correct(ctx, factor: float) -> dict[str, np.ndarray]:
    """Per head, whether its best seed is right on each test image, features scaled by
    `factor`."""
    X = torch.from_numpy(np.asarray(ctx.view_features("test"), dtype=np.float32)) * factor
    y = ctx.run.labels("test")
    out = {}
    for h in ctx.heads:
        head = ctx.make_head(h.head, h.best_seed)
        with torch.no_grad():
            out[h.head] = head(X).argmax(1).numpy() == y
    return out


def test_an_analysis_without_a_report_section_gets_a_generic_one(gap_flatten_run):
    def brightness(ctx, factor):
        """Accuracy of every head's best seed on test features scaled by `factor`."""
        right = _scaled_correct(ctx, factor)
        return {"factor": factor, "heads": {h: float(r.mean()) for h, r in right.items()}}

    register_analysis("brightness", brightness, parse=float, title="feature scaling")
    try:
        hb.analyze(gap_flatten_run, brightness="0.5")
        section = Run.load(gap_flatten_run).analyses["brightness"]
        assert section["factor"] == 0.5 and 0.0 <= section["heads"]["gap"] <= 1.0
        page = (gap_flatten_run / "report.html").read_text()
        assert 'id="analysis-brightness"' in page and "feature scaling" in page
    finally:
        unregister_analysis("brightness")


# --------------------------------------------------------------------------------------------
# one analysis, end to end, in one registration: option, computation, finding, report section

def _dim_factor(value) -> float:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = float("nan")
    if not factor > 0:
        raise HeadbenchError(f"dim must be a factor > 0, got {value}", param="dim")
    return factor


def _dim(ctx, factor: float) -> dict:
    """Per head: test accuracy of its best seed on features scaled by `factor`, and per test
    image whether it is right (for the finding's paired test)."""
    right = _scaled_correct(ctx, factor)
    return {"factor": factor,
            "heads": {h: {"accuracy": float(r.mean()), "per_image": r.astype(float).tolist()}
                      for h, r in right.items()}}


def _dim_finding(section: dict, ref, other) -> list:
    """The reference head against each head a named claim pits against it, image by image."""
    a, b = section["heads"][ref.head], section["heads"][other.head]
    # one value per head (its best seed's), and the paired test over test images
    d = paired_difference({0: a["accuracy"]}, {0: b["accuracy"]},
                          per_image_values(a["per_image"]), per_image_values(b["per_image"]))
    return [Draft(d, "dim", ref.head, other.head, lambda d: (
        f"dimmed features (×{section['factor']}): {ref.head} {a['accuracy']:.3f} vs "
        f"{other.head} {b['accuracy']:.3f} {d.phrase()} — "
        f"{verdict(d, ref.head, other.head, 'more robust to dimming')}"))]


def _dim_plot(run, section: dict) -> Plot:
    names = list(section["heads"])
    fig = new_figure(5, 3)
    ax = fig.subplots()
    ax.bar(names, [100 * section["heads"][n]["accuracy"] for n in names])
    ax.set_ylabel("test accuracy (%)")
    return Plot("dim-accuracy", "Test accuracy on dimmed features",
                f"Test features multiplied by {section['factor']}.", fig)


def _dim_text(run, section: dict) -> Paragraph:
    by_head = ", ".join(f"{n} {100 * v['accuracy']:.1f}%" for n, v in section["heads"].items())
    return Paragraph("dim-summary", f"Dimmed by {section['factor']}: {by_head}.")


@pytest.fixture
def dim():
    entry = register_analysis(
        "dim", _dim, "accuracy on dimmed features",
        option=option(0.0, "scale the test features by this factor", parse=_dim_factor),
        pair_findings=_dim_finding, report=(_dim_plot, _dim_text))
    yield entry
    unregister_analysis("dim")


def test_an_analysis_registered_in_one_place_runs_through_analyze_findings_and_the_report(
        gap_flatten_run, dim):
    assert dim.parse("0.5") == 0.5 and dim.option.metadata["help"].startswith("scale the")
    with pytest.raises(HeadbenchError, match="dim must be a factor > 0") as e:
        hb.analyze(gap_flatten_run, dim="-1")  # checked before the run is opened
    assert e.value.param == "dim"

    before = json.loads((gap_flatten_run / "results.json").read_text())
    hb.analyze(gap_flatten_run, dim="0.5")
    results = json.loads((gap_flatten_run / "results.json").read_text())
    # the heads family and the verdict that quotes it are as they were: analyze adds a family
    def heads_family(r: dict) -> list:
        return [(f["a"], f["b"], f["p_value"], f["p_adjusted"]) for f in r["findings"]
                if f["family"] == "heads"]
    assert heads_family(before) and heads_family(results) == heads_family(before)
    assert results["verdict"] == before["verdict"]
    section = results["analyses"]["dim"]
    assert section["factor"] == 0.5 and section["title"] == "accuracy on dimmed features"
    assert set(section["heads"]) == {"gap", "flatten"}
    # its finding, tested image by image and Holm-corrected within its own family
    found = [f for f in results["findings"] if f["kind"] == "dim"]
    assert found[0]["family"] == "dim"
    assert [(f["a"], f["b"]) for f in found] == [("gap", "flatten")]
    assert found[0]["text"].startswith("dimmed features (×0.5): gap ")
    assert found[0]["test"] == "paired sign-flip test" and found[0]["p_adjusted"] is not None
    # its section: the plot and the text, in the Plots section, and no generic section
    page = (gap_flatten_run / "report.html").read_text()
    plots = page.split('<section id="plots">', 1)[1].split("</section>", 1)[0]
    assert '<figure id="dim-accuracy">' in plots and "Test accuracy on dimmed features" in plots
    assert '<p id="dim-summary">Dimmed by 0.5: gap ' in plots
    assert plots.index('id="learning-curves"') < plots.index('id="dim-accuracy"')
    assert 'id="analysis-dim"' not in page
    assert "dimmed features (×0.5): gap" in page  # the finding, in the Findings section
