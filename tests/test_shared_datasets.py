"""Acceptance on the real image folders in ../shared/datasets (skipped when they are absent)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

import headbench as hb
from headbench.heads import DEFAULT_HEADS
from test_report_browser import browser  # noqa: F401  (the Chromium fixture)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HYMENOPTERA = SHARED / "hymenoptera"
MNIST = SHARED / "mnist_small"

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: these tests need ../shared/datasets beside the checkout")


@pytest.fixture(scope="module")
def hymenoptera_run(cache, tmp_path_factory) -> hb.Run:
    _need(HYMENOPTERA)
    return hb.compare(HYMENOPTERA, seeds=3, cache_dir=cache, out=tmp_path_factory.mktemp("out"),
                      report=False)


def test_hymenoptera_gap_reaches_the_probe_reference(hymenoptera_run):
    """Embedded EfficientNet-Lite0: gap's mean test accuracy over 3 seeds is at least 0.90."""
    assert hymenoptera_run.head("gap").summary.test_accuracy.mean >= 0.90
    assert {h.head for h in hymenoptera_run.heads} == set(DEFAULT_HEADS)
    for head in hymenoptera_run.heads:
        assert head.summary.test_accuracy.mean > 0.75, head.head


def test_hymenoptera_uses_val_as_test_and_handles_odd_files(hymenoptera_run):
    dataset = hymenoptera_run.dataset
    assert dataset.layout == "train_val"
    assert sum(dataset.counts["test"].values()) == 153
    assert sum(dataset.counts["train"].values()) + sum(dataset.counts["val"].values()) \
        + dataset.n_skipped == 245
    # the placeholder GIF is either decoded or listed with a reason, never a crash
    with open(hymenoptera_run.run_dir / "skipped.csv", newline="") as f:
        assert all(row["reason"] for row in csv.DictReader(f))


def test_hymenoptera_second_run_extracts_nothing_and_reproduces_every_number(
        hymenoptera_run, cache, tmp_path):
    again = hb.compare(HYMENOPTERA, seeds=3, cache_dir=cache, out=tmp_path, report=False)
    assert again.timing.n_extracted == 0
    for head in hymenoptera_run.heads:
        first = [(s.train, s.val, s.test) for s in head.seeds]
        second = [(s.train, s.val, s.test) for s in again.head(head.head).seeds]
        assert first == second, head.head


def test_mnist_small_grayscale_pngs_run_end_to_end(cache, tmp_path):
    _need(MNIST)
    result = hb.compare(MNIST, heads=["gap", "flatten", "fastai"], seeds=1, epochs=15,
                        cache_dir=cache, out=tmp_path, report=False)
    assert result.classes == [str(d) for d in range(10)]
    gap = result.head("gap").summary
    assert gap.test_accuracy.mean > 0.5  # chance is 0.1
    assert gap.top5.mean >= gap.test_accuracy.mean


def test_hymenoptera_analyses_and_report_pass_the_browser_check(hymenoptera_run, cache, browser):
    """Every analysis on real photos, then the report as a single offline file in Chromium."""
    from test_report import ALL_PLOTS
    from test_report_browser import check_report_in_browser
    run = hb.analyze(hymenoptera_run.run_dir, shifts=[0, 16], sizes=[160, 288],
                         shots=[2, "all"], cam=2, cache_dir=cache)
    shifts, sizes = run.analyses["shifts"], run.analyses["sizes"]
    for head in DEFAULT_HEADS:
        assert set(shifts["heads"][head]["consistency"]) == {"0", "16"}
        assert set(run.analyses["shots"]["heads"][head]) == {"2", "all"}
    for head in ("flatten", "avgpool"):
        assert "not_applicable" in sizes["heads"][head]["160"]
    assert "mean" in sizes["heads"]["gap"]["160"]
    assert run.analyses["cam"]["heads"]["gap"]["files"]
    alts = check_report_in_browser(browser, hymenoptera_run.run_dir, "report-hymenoptera")
    assert sorted(a.split(":")[0] for a in alts) == sorted([*ALL_PLOTS, "verdict-forest"])
    assert (hymenoptera_run.run_dir / "report.html").stat().st_size < 10e6
