"""Per-class test metrics of every head: `evaluate.per_class_metrics` against scikit-learn,
`heads[].per_class` in results.json, per_class.csv, older runs (computed when loaded) and the
report's Per class section."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from headbench.evaluate import macro_f1, per_class_metrics
from headbench.report import write_report
from headbench.results import ClassMetrics, Predictions, per_class_of
from headbench.run import Run, results_schema
from test_report import build_run, make_run

CLASSES = ("ants", "bees", "wasps")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _expected(run: Run, label: str) -> dict[str, np.ndarray]:
    """Per-class metrics of head `label`'s best seed, from its stored test predictions."""
    head, p = run.head(label), run.predictions[label]
    return per_class_metrics(p.pred[p.of_seed(head.best_seed)], run.labels("test"),
                             len(run.classes))


def test_per_class_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    k = 6                                    # class 5: neither an image nor a prediction
    y = rng.integers(0, 4, 200)              # class 4 has no image
    pred = rng.integers(0, 5, 200)
    pred[pred == 3] = 0                      # class 3 is never predicted
    got = per_class_metrics(pred, y, k)
    with np.errstate(all="ignore"):
        p, r, f, s = metrics.precision_recall_fscore_support(y, pred, labels=list(range(k)),
                                                             zero_division=0)
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    np.testing.assert_array_equal(got["support"], s)
    assert got["precision"][3] == 0 and got["recall"][4] == 0 and got["support"][4] == 0
    # macro-F1 is their mean over the classes seen in y or in the predictions
    assert np.mean(got["f1"][:5]) == pytest.approx(macro_f1(pred, y, k))


def test_per_class_of_takes_the_given_seeds_row():
    labels = np.array([0, 0, 1, 1])
    p = Predictions([3, 7], np.array([[0, 0, 1, 1], [1, 1, 1, 1]]), np.ones((2, 4)),
                    np.ones((2, 4)), np.zeros((2, 4)))
    assert per_class_of(p, 3, labels, ["a", "b"]) == [ClassMetrics("a", 1.0, 1.0, 1.0, 2),
                                                      ClassMetrics("b", 1.0, 1.0, 1.0, 2)]
    a, b = per_class_of(p, 7, labels, ["a", "b"])
    assert (a.precision, a.recall, a.f1, a.support) == (0.0, 0.0, 0.0, 2)
    assert (b.precision, b.recall, b.support) == (0.5, 1.0, 2)
    assert b.f1 == pytest.approx(2 / 3)
    assert per_class_of(p, 5, labels, ["a", "b"]) is None


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("per_class"), classes=CLASSES, analyses=())


def test_results_json_and_per_class_csv_hold_every_head_in_class_order(saved):
    run = Run.load(saved)
    results = json.loads((saved / "results.json").read_text())
    pytest.importorskip("jsonschema").validate(results, results_schema())
    assert results["schema_version"] == 5
    csv_rows = _rows(saved / "per_class.csv")
    assert list(csv_rows[0]) == ["head", "seed", "class_name", "precision", "recall", "f1",
                                 "support"]  # backbone: only in a run of several
    assert [(r["head"], r["class_name"]) for r in csv_rows] == [
        (h.head, c) for h in run.heads for c in CLASSES]
    for entry, head in zip(results["heads"], run.heads):
        want = _expected(run, head.head)
        assert [c["class_name"] for c in entry["per_class"]] == list(CLASSES)
        for key in ("precision", "recall", "f1", "support"):
            assert [c[key] for c in entry["per_class"]] == pytest.approx(list(want[key]))
            assert [float(r[key]) for r in csv_rows if r["head"] == head.head] \
                == pytest.approx(list(want[key]))
        assert {r["seed"] for r in csv_rows if r["head"] == head.head} == {str(head.best_seed)}
        assert sum(c["support"] for c in entry["per_class"]) == len(run.labels("test"))
        assert head.per_class == run.per_class(head)  # loaded, not recomputed


def test_an_older_run_without_per_class_gets_it_from_its_predictions(saved, tmp_path):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    results = json.loads((old / "results.json").read_text())
    results["schema_version"] = 4
    for entry in results["heads"]:
        del entry["per_class"]
    (old / "results.json").write_text(json.dumps(results))
    (old / "per_class.csv").unlink()
    run = Run.load(old)
    assert [h.per_class for h in run.heads] == [h.per_class for h in Run.load(saved).heads]
    run.save_results()  # what `headbench analyze` does: the new table appears
    assert _rows(old / "per_class.csv") == _rows(saved / "per_class.csv")
    assert json.loads((old / "results.json").read_text())["schema_version"] == 5


def test_several_backbones_name_the_backbone_in_per_class_csv(tmp_path):
    run = build_run(tmp_path, classes=CLASSES, analyses=())
    run.backbones = [run.backbone]
    for h in run.heads:
        h.backbone = run.backbone.name
    run.save()
    rows = _rows(run.run_dir / "per_class.csv")
    assert list(rows[0])[:3] == ["head", "backbone", "seed"]
    assert {r["backbone"] for r in rows} == {"resnet18"}


def _section(page: str, id_: str) -> str:
    return page.split(f'<section id="{id_}">', 1)[1].split("</section>", 1)[0]


def test_report_shows_the_recommended_heads_classes_and_every_heads_confusion(saved):
    page = write_report(saved).read_text()
    run = Run.load(saved)
    # the first screen is unchanged: verdict, then the page; the new section after the summary
    assert page.index('<section id="summary">') < page.index('<section id="per-class">') \
        < page.index('<section id="findings">')
    assert 'href="#per-class"' in page
    section = _section(page, "per-class")
    table = section.split('id="per-class-table"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td data-value=\"([^\"]*)\">.*?</td>"
                       r"<td class=\"num\" data-value=\"([^\"]*)\">", table)
    best = run.selected()
    assert [c for c, _ in cells] == list(CLASSES)
    assert [float(v) for _, v in cells] == pytest.approx(
        [c.precision for c in best.per_class], abs=1e-6)
    assert f"Head <strong>{best.head}</strong> (recommended), seed {best.best_seed}" in section
    assert '<figure id="confusion-per-head">' in section
    assert "per_class.csv" in section


def test_report_says_per_class_is_absent_without_predictions(tmp_path):
    run = build_run(tmp_path, classes=CLASSES, analyses=())
    run.predictions = {}
    page = write_report(run.save()).read_text()
    section = _section(page, "per-class")
    assert "Per-class metrics are absent" in section
    assert "confusion-per-head" not in page
    assert all(h.per_class is None for h in Run.load(run.run_dir).heads)


def test_report_of_a_run_object_computes_per_class_from_its_predictions(tmp_path):
    run = build_run(tmp_path, classes=CLASSES, analyses=())  # built by hand: no per_class
    assert all(h.per_class is None for h in run.heads)
    page = write_report(run).read_text()
    assert 'id="per-class-table"' in page and '<figure id="confusion-per-head">' in page


def test_compare_records_the_best_seeds_per_class_metrics(cache, tmp_path):
    """What compare itself records (evaluate_fit), checked against its predictions."""
    import headbench as hb
    from headbench.synthetic import make_shapes_dataset
    shapes = ("circle", "square", "triangle")
    data = make_shapes_dataset(tmp_path / "shapes", classes=shapes, per_class=8, image_size=64)
    run = hb.compare(data, backbone="efficientnet_lite0", weights="embedded", heads=["gap"],
                     seeds=2, epochs=2, input_size=64, precision="fp32", shots="none", cam=0,
                     cache_dir=cache, out=tmp_path, report=False)
    head = run.head("gap")
    want = _expected(run, "gap")
    assert [c.class_name for c in head.per_class] == list(shapes)
    assert [c.f1 for c in head.per_class] == pytest.approx(list(want["f1"]))
    assert [c.support for c in head.per_class] == list(want["support"])
    assert (run.run_dir / "per_class.csv").is_file()
    schema = json.loads((Path(hb.__file__).parent / "results.schema.json").read_text())
    pytest.importorskip("jsonschema").validate(
        json.loads((run.run_dir / "results.json").read_text()), schema)


def test_a_finetuned_head_gets_its_own_per_class_metrics(cache, tmp_path):
    """The fine-tuned twin is a copy of its frozen head: its per_class must be its own."""
    import headbench as hb
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square"), per_class=8,
                               image_size=64)
    run = hb.compare(data, backbone="efficientnet_lite0", weights="embedded", heads=["gap"],
                     seeds=1, epochs=2, input_size=64, precision="fp32", shots="none", cam=0,
                     finetune=True, finetune_epochs=1, finetune_batch_size=8,
                     cache_dir=cache, out=tmp_path, report=False)
    ft = run.head("gap+ft")
    assert [c.f1 for c in ft.per_class] == pytest.approx(list(_expected(run, "gap+ft")["f1"]))
    assert ft.per_class is not run.head("gap").per_class
    assert Run.load(run.run_dir).head("gap+ft").per_class == ft.per_class
