"""report: the self-contained report.html of a run and the terminal summary table.

`build_run` makes a typed `Run` by hand (no training) and `make_run` saves it with `Run.save`,
so the report reads it back through `Run.load` exactly as it reads a real run;
tests/test_report_browser.py reuses both. The last test renders the report of a real `compare`.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from headbench.config import CompareConfig
from headbench.errors import HeadbenchError
from headbench.heads import HeadSpec, list_heads
from headbench.report import SUMMARY_COLUMNS, summary_rows, summary_table, write_report
from headbench.results import (CI, BackboneInfo, DatasetInfo, Finding, HeadResult, HeadSummary,
                               Metrics, Predictions, SeedResult, SplitItems, Timing)
from headbench.run import Run
from headbench.train import EpochLog, TrainConfig

ALL_PLOTS = ["accuracy-vs-params", "learning-curves", "shift-accuracy", "shift-consistency",
             "size-accuracy", "shots-accuracy", "confusion-matrix", "time-latency",
             "confusion-per-head"]
CORE_PLOTS = {"accuracy-vs-params", "learning-curves", "confusion-matrix", "time-latency",
              "confusion-per-head"}
ALL_ANALYSES = ("shifts", "sizes", "shots", "cam")
# head -> (head params, mean test accuracy); the order of accuracy is what tests check.
HEADS = {"gap": (1_026, 0.90), "flatten": (50_178, 0.80), "gmp": (1_026, 0.85),
         "attention": (263_000, 0.88)}


def _ci(mean: float, seeds: int, half: float = 0.02) -> CI:
    if seeds == 1:
        return CI(mean, None, None, [mean])
    return CI(mean, mean - half, mean + half, [mean] * seeds)


def _ci_dict(mean: float, seeds: int, half: float = 0.02) -> dict:
    """A CI as analysis sections hold it (plain JSON)."""
    return dataclasses.asdict(_ci(mean, seeds, half))


def _metrics(acc: float, n: int) -> Metrics:
    return Metrics(accuracy=acc, top5=None, macro_f1=acc - 0.01, nll=0.3, ece=0.05, n=n)


def _image(path: Path, px: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (px, px, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _split(role: str, classes, per_class: int) -> SplitItems:
    items = [(f"{role}/c{c}/img_{i}.png", c) for c in range(len(classes)) for i in range(per_class)]
    return SplitItems([p for p, _ in items], np.array([c for _, c in items], dtype=np.int64),
                      [f"{role}{k:04d}" for k in range(len(items))])


def _head(name: str, params: int, acc: float, seeds: int, n_test: int) -> HeadResult:
    # Labels that are not registered heads (escaping tests) get a gap spec; capabilities come
    # from the spec's registry entry, as compare records them.
    spec = HeadSpec(name if name in list_heads() else "gap")
    seed_rows = [SeedResult(
        seed=s, best_epoch=4, epochs_run=5, train_time_s=1.5 + s,
        train=_metrics(acc + 0.05, 40), val=_metrics(acc, 10), test=_metrics(acc, n_test),
        history=[EpochLog(epoch=e, train_loss=1 / (e + 1), train_acc=acc + 0.01 * e,
                          val_loss=1.2 / (e + 1), val_acc=acc - 0.01 + 0.005 * e, lr=1e-3)
                 for e in range(1, 6)]) for s in range(seeds)]
    return HeadResult(
        head=name, spec=spec, any_size=spec.info.any_size, exact_cam=spec.info.exact_cam,
        head_params=params, total_params=params + 11_000_000, head_flops=2 * params,
        total_flops=1_800_000_000 + 2 * params, weight_decay=1e-4,
        wd_sweep={"0.0001": 0.31, "0.001": 0.35}, best_seed=seeds - 1, model_dir=f"heads/{name}",
        model_size_bytes=44_000_000, latency_ms_b1=4.0 + params / 1e5, throughput_b32=900.0,
        architecture=f"Sequential(\n  (pool): {name}<pool>\n  (fc): Linear(in=512, out=2)\n)",
        seeds=seed_rows,
        summary=HeadSummary(test_accuracy=_ci(acc, seeds), train_accuracy=_ci(acc + 0.05, seeds),
                            val_accuracy=_ci(acc, seeds), overfit_gap=_ci(0.05, seeds, 0.01),
                            macro_f1=_ci(acc - 0.01, seeds), nll=_ci(0.3, seeds),
                            ece=_ci(0.05, seeds), top5=None, train_time_s=2.5))


def build_run(root: Path, classes=("ants", "bees"), heads: dict = HEADS, seeds: int = 3,
              analyses=ALL_ANALYSES, per_class: int = 5, image_px: int = 40, cam_px: int = 64,
              cam_per_head: int = 2) -> Run:
    """A Run with run_dir `root/run` and its test images under `root/data`, like compare's."""
    data, run_dir = root / "data", root / "run"
    splits = {role: _split(role, classes, per_class) for role in ("train", "val", "test")}
    test = splits["test"]
    for k, rel in enumerate(test.paths):
        _image(data / rel, image_px, k)
    rng = np.random.default_rng(0)
    predictions = {}
    for name in heads:
        loss = rng.uniform(0.01, 3.0, (seeds, len(test)))
        pred = np.where(loss < 0.69, test.labels, (test.labels + 1) % len(classes))
        predictions[name] = Predictions(list(range(seeds)), pred, np.maximum(np.exp(-loss), 0.5),
                                        np.exp(-loss), loss)
    counts = {role: {c: per_class for c in classes} for role in ("train", "val", "test")}
    return Run(
        options=CompareConfig(data=str(data), backbone="resnet18", weights="none", seeds=seeds,
                              epochs=5),
        dataset=DatasetInfo(
            root=str(data), name="toy", layout="train/val", classes=list(classes),
            split_description="test = val/ folder; val = 15% of train/, stratified",
            counts=counts, leakage=[dict(digest="ab12", roles={"train": ["train/a.png"],
                                                               "test": ["test/a.png"]})],
            skipped=[("train/broken.jpg", "cannot decode image")], splits=splits),
        backbone=BackboneInfo(
            name="resnet18", timm_name="resnet18.a1_in1k", weights="none", weights_checksum=None,
            data_config=dict(input_size=[3, 224, 224], mean=[0.5] * 3, std=[0.5] * 3,
                             interpolation="bicubic", crop_pct=0.875),
            feature_shape=[512, 7, 7], params=11_000_000, flops=1_800_000_000,
            latency_ms_b1=4.0, throughput_b32=950.0),
        precision="fp32", device="cpu", train_config=TrainConfig(epochs=5, batch_size=64, lr=1e-3),
        machine=dict(platform="Linux", cpu="Test CPU", torch="2.14.1", timm="1.0.31"),
        timing=Timing(scan_s=0.1, backbone_s=0.5, extract_s=12.0, n_extracted=30, train_s=20.0,
                      total_s=35.0),
        heads=[_head(name, params, acc, seeds, len(test)) for name, (params, acc) in heads.items()],
        predictions=predictions, best_head=max(heads, key=lambda h: heads[h][1]),
        findings=[Finding(text="gap beats flatten by 10.0 points (95% CI 8.0 to 12.0).",
                          kind="diff", a="gap", b="flatten", diff=0.1, lo=0.08, hi=0.12,
                          significant=True)],
        analyses=_analyses(run_dir, heads, seeds, analyses, cam_px, cam_per_head, classes),
        headbench_version="0.1.0", created="2025-01-01T12:00:00", run_dir=run_dir)


def make_run(root: Path, **kwargs) -> Path:
    """`build_run(root, **kwargs)` saved with `Run.save`; returns the run folder."""
    return build_run(root, **kwargs).save()


def _analyses(run: Path, heads: dict, seeds: int, which, cam_px: int, cam_per_head: int,
              classes) -> dict:
    """Analysis sections in the layouts of docs/DESIGN.md (plain dicts, as analyses write)."""
    out = {}
    if "shifts" in which:
        out["shifts"] = dict(shifts=[0, 8, 16, 32], margin=32, directions=[[1, 0], [0, 1]], heads={
            h: dict(accuracy={str(s): _ci_dict(acc - s / 400, seeds) for s in (0, 8, 16, 32)},
                    consistency={str(s): _ci_dict(1 - s / 100, seeds) for s in (0, 8, 16, 32)})
            for h, (_, acc) in heads.items()})
    if "sizes" in which:
        out["sizes"] = dict(sizes=[160, 224, 288], base=224, heads={
            h: ({"160": {"not_applicable": "built for a 7×7 map"}, "224": _ci_dict(acc, seeds)}
                if h == "flatten" else {str(s): _ci_dict(acc - abs(s - 224) / 2000, seeds)
                                        for s in (160, 224, 288)})
            for h, (_, acc) in heads.items()})
    if "shots" in which:
        out["shots"] = dict(shots=["1", "5", "all"], seeds=seeds, heads={
            h: {k: dict(test_accuracy=_ci_dict(acc * f, seeds), train_accuracy=_ci_dict(1.0, seeds),
                        overfit_gap=_ci_dict(1 - acc * f, seeds))
                for k, f in (("1", 0.6), ("5", 0.8), ("all", 1.0))}
            for h, (_, acc) in heads.items()})
    if "cam" in which:
        cams = {}
        for h in heads:
            files = [f"analyses/cam/{h}/ok_{i}_true-{classes[0]}_pred-{classes[0]}.png"
                     for i in range(cam_per_head)]
            for i, rel in enumerate(files):
                _image(run / rel, cam_px, 100 + i)
            cams[h] = dict(method="exact CAM", files=files)
        out["cam"] = dict(per_head=cam_per_head, heads=cams)
    return out


def _figure_ids(page: str) -> set[str]:
    return set(re.findall(r'<figure id="([^"]+)"><figcaption>', page))


def _data_image(src: str) -> bytes:
    return base64.b64decode(src.split(",", 1)[1])


def _summary_rows(page: str) -> list[tuple[str, str]]:
    """(row class, head name) of the summary table, in document order."""
    table = page.split('id="summary-table"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr( class="best")?><td data-value="([^"]*)"', table)


def _head_section(page: str, label: str) -> str:
    return page.split(f'id="head-{label}"', 1)[1].split("</details>", 1)[0]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A run with every analysis and CAMs larger than the report embeds, rendered once."""
    run = make_run(tmp_path_factory.mktemp("full"), cam_px=300)
    assert write_report(run) == run / "report.html"
    return run


@pytest.fixture(scope="module")
def full_page(full_run) -> str:
    return (full_run / "report.html").read_text()


def test_report_has_every_plot_when_every_analysis_ran(full_page):
    page = full_page
    assert _figure_ids(page) == set(ALL_PLOTS)
    plots = re.findall(r'<img class="plot" alt="([^"]+)" src="([^"]+)"', page)
    assert sorted(alt.split(":")[0] for alt, _ in plots) == sorted(ALL_PLOTS)
    for _, src in plots:
        assert src.startswith("data:image/svg+xml;base64,")
        assert b"<svg" in _data_image(src)


def test_report_leaves_out_plots_of_analyses_that_did_not_run(tmp_path):
    page = write_report(make_run(tmp_path, analyses=())).read_text()
    assert _figure_ids(page) == CORE_PLOTS
    assert "Class activation maps" not in page
    assert "Analyses not in this run" in page
    assert 'id="analyses"' not in page  # no section for analyses from plugins either


def test_report_draws_only_the_analyses_present(tmp_path):
    page = write_report(make_run(tmp_path, analyses=("sizes",))).read_text()
    assert "size-accuracy" in _figure_ids(page)
    assert not {"shift-accuracy", "shift-consistency", "shots-accuracy"} & _figure_ids(page)
    assert "flatten (built for a 7×7 map)" in page  # why a head has no point at 160 px


def test_report_without_predictions_has_no_confusion_matrix(tmp_path):
    run = build_run(tmp_path)
    run.predictions = {}
    page = write_report(run.save()).read_text()
    assert "confusion-matrix" not in _figure_ids(page)
    assert "Highest-loss test images" not in page


def test_report_stands_alone_without_external_urls(full_page):
    page = full_page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link rel=\"stylesheet\"" not in page and "<script src" not in page


def test_report_escapes_class_names_and_a_run_with_markup_in_a_head_label_is_refused(tmp_path):
    classes = ("<b>ant</b>", "bee & $wasp$")
    page = write_report(make_run(tmp_path / "a", classes=classes)).read_text()
    assert "<b>ant</b>" not in page
    assert "&lt;b&gt;ant&lt;/b&gt;" in page and "bee &amp; $wasp$" in page
    assert "confusion-matrix" in _figure_ids(page)  # '$' in a class name is no mathtext
    heads = {"gap": (1_026, 0.9), "<i>x</i>": (2_000, 0.8)}  # labels are names (io.check_name)
    with pytest.raises(HeadbenchError, match=r"heads\[1\]\.head '<i>x</i>' is not a name"):
        write_report(make_run(tmp_path / "b", heads=heads))


def test_summary_table_sorted_by_test_accuracy_with_best_highlighted(full_page):
    page = full_page
    rows = _summary_rows(page)
    assert [name for _, name in rows] == ["gap", "attention", "gmp", "flatten"]
    assert [bool(cls) for cls, _ in rows] == [True, False, False, False]
    assert 'data-value="0.9"' in page  # numeric sort key of the accuracy column


def test_highlighted_head_is_the_runs_selection_not_recomputed(tmp_path):
    run = build_run(tmp_path, analyses=())
    run.best_head = "flatten"  # compare chose it (select_head on val); the report only shows it
    page = write_report(run.save()).read_text()
    assert [name for cls, name in _summary_rows(page) if cls] == ["flatten"]
    assert "Recommended head: <strong>flatten</strong>" in page
    assert "Confusion matrix of the best head (flatten)" in page
    assert 'class="badge"' in _head_section(page, "flatten")


def test_summary_is_readable_without_javascript(full_page):
    page = full_page
    static = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    assert "90.0 ± 2.0%" in static
    assert static.count('<details class="head"') == len(HEADS)
    assert "Linear(in=512, out=2)" in static and "gap&lt;pool&gt;" in static


def test_one_seed_shows_mean_without_interval(tmp_path):
    page = write_report(make_run(tmp_path, seeds=1)).read_text()
    assert "<td class=num data-value=\"0.9\">90.0%</td>" in page
    assert "one seed: no interval" in page
    assert "accuracy-vs-params" in _figure_ids(page)


def test_terminal_table_has_same_columns_and_order_as_report(full_run):
    run = Run.load(full_run)
    table = summary_table(run)
    assert [c.header.replace("\n", " ") for c in table.columns] == SUMMARY_COLUMNS
    assert [row[0][0] for row in summary_rows(run)] == ["gap", "attention", "gmp", "flatten"]
    console = Console(record=True, width=250, color_system=None)
    console.print(table)
    text = console.export_text()
    order = [text.index(f" {h} ") for h in ("gap", "attention", "gmp", "flatten")]
    assert order == sorted(order)
    assert "90.0 ± 2.0%" in text and "+5.0 ± 1.0 pp" in text and "1.03k" in text


def test_top_loss_images_come_from_best_seed_highest_loss_first(full_run, full_page):
    page = full_page
    run = Run.load(full_run)
    p = run.predictions["gap"]
    loss = p.loss[p.of_seed(2)]
    expected = [run.dataset.splits["test"].paths[i]
                for i in sorted(range(len(loss)), key=lambda i: -loss[i])[:6]]
    section = _head_section(page, "gap")
    assert "Highest-loss test images (seed 2)" in section
    thumbs = re.findall(r'<figure class="thumb"><img src="([^"]+)" alt="([^"]+)"', section)
    assert [alt for _, alt in thumbs] == expected
    with Image.open(io.BytesIO(_data_image(thumbs[0][0]))) as im:
        assert im.format == "JPEG" and max(im.size) <= 128


def test_missing_dataset_images_are_skipped_with_a_note(tmp_path):
    run = make_run(tmp_path)
    for p in (tmp_path / "data" / "test" / "c0").iterdir():
        p.unlink()
    page = write_report(run).read_text()
    assert "image(s) not found under" in page
    assert _figure_ids(page) == set(ALL_PLOTS)


def test_cam_overlays_are_embedded_downscaled(full_page):
    page = full_page
    cams = re.findall(r'<figure class="cam"><img src="([^"]+)"', page)
    assert len(cams) == 2 * len(HEADS)
    with Image.open(io.BytesIO(_data_image(cams[0]))) as im:
        assert max(im.size) <= 224
    assert "ok_0 · true ants · pred ants" in page


def test_cam_paths_outside_the_run_folder_are_ignored(tmp_path):
    run = Run.load(make_run(tmp_path, analyses=("cam",)))
    _image(tmp_path / "elsewhere.png", 32, 0)
    run.analyses["cam"]["heads"]["gap"]["files"] = ["../elsewhere.png"]
    run.save_results()
    page = write_report(run.run_dir).read_text()
    assert '<figure class="cam">' not in _head_section(page, "gap")
    assert '<figure class="cam">' in _head_section(page, "flatten")


def test_fixed_input_size_comes_from_the_heads_capability_not_its_name(tmp_path):
    heads = {"gap": (1_026, 0.9), "mystery": (2_000, 0.8)}
    run = build_run(tmp_path, heads=heads, analyses=())
    run.heads[1].any_size = False  # a registered head declared fixed-size, whatever its name
    page = write_report(run.save()).read_text()
    fixed = re.compile(r"<th>fixed input size</th><td>(yes|no)</td>")
    assert fixed.findall(_head_section(page, "gap")) == ["no"]
    assert fixed.findall(_head_section(page, "mystery")) == ["yes"]


def test_full_report_marks_flatten_fixed_size(full_page):
    fixed = re.compile(r"<th>fixed input size</th><td>(yes|no)</td>")
    assert {h: fixed.findall(_head_section(full_page, h)) for h in HEADS} == {
        "gap": ["no"], "flatten": ["yes"], "gmp": ["no"], "attention": ["no"]}


def test_report_header_names_dataset_backbone_and_leakage(full_page):
    page = full_page
    for text in ("resnet18.a1_in1k", "fp32 on cpu", "train 10, val 10, test 10 images",
                 "cannot decode image", "1 byte-identical file(s)", "Test CPU", "total 35.0 s",
                 "gap beats flatten by 10.0 points"):
        assert text in page


def test_report_of_a_large_run_stays_small(tmp_path):
    heads = {f"head{i}": (1_000 * (i + 1), 0.5 + i / 40) for i in range(10)}
    run = make_run(tmp_path, heads=heads, per_class=6, image_px=400, cam_px=448, cam_per_head=4,
                   seeds=2)
    size = write_report(run).stat().st_size
    assert size < 3_000_000, size  # noise images are the worst case for JPEG


def test_malformed_analysis_entries_do_not_break_the_report(tmp_path):
    run = Run.load(make_run(tmp_path))
    run.analyses["sizes"]["heads"]["gap"] = "oops"
    run.analyses["shots"] = {"shots": None, "heads": None}
    run.analyses["shifts"]["heads"]["flatten"]["accuracy"] = {"0": "x", "8": {"mean": None}}
    run.analyses["cam"]["heads"]["gmp"] = ["not", "a", "dict"]
    run.heads[0].seeds[-1].history = []  # the best seed of gap trained no recorded epoch
    run.save_results()
    page = write_report(run.run_dir).read_text()
    assert "size-accuracy" in _figure_ids(page)
    assert "shift-accuracy" in _figure_ids(page)
    assert "shots-accuracy" not in _figure_ids(page)
    assert "learning-curves" in _figure_ids(page)  # the other heads still have curves


def test_analysis_from_a_plugin_gets_a_generic_section(tmp_path):
    run = build_run(tmp_path, analyses=("sizes",))
    run.analyses["blur"] = dict(title="Blur <robustness>", description="test images blurred",
                                sigma=2.0, heads={"gap": {"2": _ci_dict(0.7, 3)}})
    run.analyses["odd"] = ["a list", 1]
    page = write_report(run.save()).read_text()
    assert '<section id="analyses">' in page and 'href="#analyses"' in page
    blur = page.split('id="analysis-blur"', 1)[1].split("</div>", 1)[0]
    assert "<h3>Blur &lt;robustness&gt;</h3>" in blur and "test images blurred" in blur
    assert "<th>sigma</th><td>2.0</td>" in blur
    assert "&quot;heads&quot;" in blur and "0.7" in blur
    assert 'id="analysis-odd"' in page and "a list" in page
    assert "size-accuracy" in _figure_ids(page)
    assert "Analyses not in this run: translation (shifts)" in page  # only the known ones


def test_write_report_takes_a_run_object(tmp_path):
    run = build_run(tmp_path, analyses=())
    path = write_report(run)
    assert path == run.run_dir / "report.html"
    assert _figure_ids(path.read_text()) == CORE_PLOTS
    assert not (run.run_dir / "results.json").exists()  # the report writes only report.html


def test_write_report_rejects_folder_without_results(tmp_path):
    with pytest.raises(HeadbenchError, match="no results.json"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(HeadbenchError, match="cannot be read"):
        write_report(tmp_path)


def test_rerendering_replaces_the_report_and_leaves_no_temporary_files(tmp_path):
    run = make_run(tmp_path)
    (run / "report.html").write_text("old")
    write_report(run)
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(run.glob(".report.html.*"))


def test_terminal_table_prints_names_literally_not_as_markup(tmp_path):
    run = build_run(tmp_path, heads={"[bold]gap": (1_026, 0.9), "flatten": (2_000, 0.8)})
    console = Console(record=True, width=250, color_system=None)
    console.print(summary_table(run))
    assert "[bold]gap" in console.export_text()


def test_report_of_a_real_compare_run(tmp_path):
    """The report of what compare really writes (generated data, the embedded backbone)."""
    import headbench as hb
    from headbench.synthetic import make_shapes_dataset
    data = make_shapes_dataset(tmp_path / "shapes", classes=("circle", "square", "triangle"),
                               per_class=10, image_size=64)
    run = hb.compare(data, backbone="efficientnet_lite0", weights="embedded",
                     heads=["gap", "flatten"], seeds=2, epochs=3, input_size=64, precision="fp32",
                     cache_dir=tmp_path / "cache", out=tmp_path, report=True)
    page = (run.run_dir / "report.html").read_text()
    assert _figure_ids(page) == CORE_PLOTS | {"verdict-forest", "shots-accuracy"}  # by default
    # the verdict and its forest plot come first, before the page's sections
    assert page.index('class="verdict"') < page.index('<figure id="verdict-forest">') \
        < page.index("<nav>")
    rows = _summary_rows(page)
    assert sorted(name for _, name in rows) == ["flatten", "gap"]
    assert run.best_head == run.verdict.recommended
    assert [name for cls, name in rows if cls] == [run.best_head]
    assert f'<p class="verdict"><strong>Verdict:</strong> {html.escape(run.verdict.text)}</p>' in page
    for head in run.heads:
        section = _head_section(page, head.head)
        assert f"Highest-loss test images (seed {head.best_seed})" in section
        thumbs = re.findall(r'<figure class="thumb"><img src="data:image/jpeg', section)
        assert len(thumbs) == min(6, len(run.dataset.splits["test"]))
    fixed = re.compile(r"<th>fixed input size</th><td>(yes|no)</td>")
    assert fixed.findall(_head_section(page, "flatten")) == ["yes"]
    assert fixed.findall(_head_section(page, "gap")) == ["no"]
    # Re-rendered from the folder alone (what `headbench report RUN_DIR` does): same sections.
    again = write_report(run.run_dir).read_text()
    assert _figure_ids(again) == _figure_ids(page) and _summary_rows(again) == rows
