"""`compare --aug-views K`: every head also trained on cached augmented views, paired by seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import headbench as hb
from headbench import features, train
from headbench.evaluate import select_head
from headbench.report import write_report
from headbench.run import Run
from headbench.synthetic import make_shapes_dataset

OPTIONS = dict(backbone="efficientnet_lite0", weights="embedded", heads=["gap", "flatten"], seeds=2,
               epochs=3, weight_decays=[1e-3], input_size=64, precision="fp32", report=False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes",
                               classes=("circle", "square", "star"), per_class=12, image_size=64)


@pytest.fixture(scope="module")
def run(shapes, cache, tmp_path_factory) -> Run:
    return hb.compare(shapes, cache_dir=cache, out=tmp_path_factory.mktemp("out"), aug_views=2,
                      **OPTIONS)


def test_every_head_gets_an_augmented_twin_after_it(run):
    assert [h.head for h in run.heads] == ["gap", "gap+aug2", "flatten", "flatten+aug2"]
    for label in ("gap", "flatten"):
        twin = run.head(f"{label}+aug2")
        assert twin.variant.kind == "aug" and twin.variant.of == label
        assert twin.variant.aug_views == 2 and twin.spec == run.head(label).spec
        assert [s.seed for s in twin.seeds] == [0, 1]  # paired by seed with the frozen head
        assert (run.run_dir / twin.model_dir / "model.safetensors").is_file()


def test_val_and_test_are_the_base_view_for_both(run):
    n_test = sum(run.dataset.counts["test"].values())
    for h in run.heads:
        assert all(s.test.n == n_test for s in h.seeds)
    assert run.predictions["gap+aug2"].pred.shape == (2, n_test)


def test_augmented_views_change_what_the_head_learns(run):
    a, b = run.head("gap").seeds[0].history, run.head("gap+aug2").seeds[0].history
    assert [e.train_loss for e in a] != pytest.approx([e.train_loss for e in b])


def test_findings_give_the_change_per_head_paired_by_seed(run):
    aug = {f.a: f for f in run.findings if f.kind == "augmentation"}
    assert set(aug) == {"gap+aug2", "flatten+aug2"}
    f = aug["gap+aug2"]
    diff = np.mean([run.head("gap+aug2").seed_metric("test")[s] - run.head("gap").seed_metric("test")[s]
                    for s in (0, 1)])
    assert f.b == "gap" and f.diff == pytest.approx(diff) and f.n_seeds == 2
    assert f.seed_ci is not None and f.p_adjusted is not None
    chosen = select_head([run.head("gap"), run.head("gap+aug2")]).head
    assert f"val selects {chosen}" in f.text


def test_the_run_reads_back_and_the_report_shows_the_variants(run):
    again = Run.load(run.run_dir)
    assert again.head("gap+aug2").variant.aug_views == 2
    html = write_report(again).read_text()
    assert 'id="variants"' in html and "gap+aug2" in html and "val selects" in html


def test_more_views_later_extract_only_the_new_ones(run, shapes, cache, tmp_path, monkeypatch):
    extracted = []
    original = features.extract

    def spy(*args, **kwargs):
        fs = original(*args, **kwargs)
        extracted.append(fs.n_extracted)
        return fs
    monkeypatch.setattr(features, "extract", spy)
    more = hb.compare(shapes, cache_dir=cache, out=tmp_path, aug_views=3, **OPTIONS)
    n_train = sum(more.dataset.counts["train"].values())
    # view 2 is new; the base view and views 0 and 1 (and the analyses' reads) come from the cache
    assert sum(extracted) == n_train and max(extracted) == n_train
    # the frozen heads are the same numbers: the augmented pass does not touch them
    assert more.head("gap").summary.test_accuracy.values == run.head("gap").summary.test_accuracy.values
