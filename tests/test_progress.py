"""Progress where long work happens: rich bars in a terminal; in a log, a line at the start, at
least every LOG_EVERY_S seconds with done/total and ETA, and one at the end; silent when quiet."""
from __future__ import annotations

import time

import pytest

from headbench import progress


@pytest.fixture
def said(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(progress, "_quiet", False)
    monkeypatch.setattr(progress, "line", lines.append)
    monkeypatch.setattr(type(progress.bars), "is_terminal", property(lambda self: False))
    return lines


def test_a_log_gets_a_line_at_start_periodic_lines_and_one_at_the_end(said, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.progress("hashing files", total=398, unit="file") as bar:
        bar.advance(100)
        time.sleep(0.2)  # a slow step: the timer still reports
        bar.set_postfix("2 unreadable")
        bar.advance(298)
    assert said[0] == "hashing files: 398 files to do"
    middle = said[1:-1]
    assert middle and "100/398 files (25 %)" in middle[0] and "eta" in middle[0]
    assert said[-1].startswith("hashing files: 398 files in 0 s") and "(2 unreadable)" in said[-1]


def test_the_timer_stops_with_the_task(said, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.02)
    with progress.progress("training heads", total=3, unit="epoch") as bar:
        bar.advance(3)
    n = len(said)
    time.sleep(0.1)
    assert len(said) == n  # no line after the end
    assert said[-1].startswith("training heads: 3 epochs in")


def test_quiet_mode_prints_nothing(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(progress.bars, "print", lambda *a, **k: lines.append(a))
    progress.set_quiet(True)
    try:
        with progress.progress("extracting", total=10, unit="img") as bar:
            bar.advance(10)
    finally:
        progress.set_quiet(False)
    assert lines == []


def test_counts_read_as_english():
    assert progress.count(398, "file") == "398 files"
    assert progress.count(1, "file") == "1 file"
    assert progress.count(2500, "img") == "2,500 img"
    assert progress.duration(185) == "3 min 05 s" and progress.duration(3720) == "1 h 02 min"


def test_progress_goes_to_stderr_so_results_on_stdout_stay_clean(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", False)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 60.0)
    with progress.progress("predicting", total=40, unit="img") as bar:
        bar.advance(40)
    out, err = capsys.readouterr()
    assert out == "" and "predicting: 40 img to do" in err


def test_training_advances_its_bar_by_every_planned_member_epoch_twins_included():
    """dense_map is gap's twin (trained once): its epochs count as done, so a log's last line
    says as many epochs as its first ('5,760 epochs to do' ... '5,760 epochs in 16 s')."""
    import numpy as np
    from headbench import train
    from headbench.heads import create_head
    from headbench.train import folds as _folds
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8, 2, 2)).astype(np.float16)
    y = np.arange(40) % 2
    make = {n: (lambda n=n: create_head(n, 8, 2, (2, 2))) for n in ("gap", "dense_map")}
    config = train.TrainConfig(epochs=4, lr=(1e-3, 1e-2), halving=0)
    done: list[int] = []
    train.fit_heads(make, X[:30], y[:30], X[30:], y[30:], config, seeds=[0, 1],
                    on_epochs=done.append)
    assert sum(done) == 4 * (2 + 1) * 2  # epochs × (2 settings + 1 more seed) × 2 heads
    done.clear()
    folds = _folds.make_folds(y, 0, repeats=2)
    _folds.fit_folds(make, X, y, config, folds, 0, settings={n: [(1e-2, 1e-2)] for n in make},
                     on_epochs=done.append)
    assert sum(done) == 4 * len(folds.train) * 2
