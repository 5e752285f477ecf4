"""Latency as people read it: the median with its interquartile range, the load of other
processes while timing, and the report saying which heads' latencies are within the spread."""
from __future__ import annotations

import time

from headbench import runtime
from headbench.report.format import latency_note, ms
from test_report import build_run


def test_milliseconds_read_as_numbers():
    assert ms(1030.4) == "1,030 ms" and ms(12.34) == "12.3 ms" and ms(0.512) == "0.512 ms"
    assert ms(float("nan")) == "—"


def test_the_load_of_other_processes_is_measured_around_a_block():
    with runtime.load_elsewhere() as load:
        until = time.monotonic() + 0.3
        while time.monotonic() < until:  # this process's own work is not counted
            pass
    import os
    if os.path.exists("/proc/stat"):  # Linux: measured
        assert 0.0 <= load["other_cores"] < 2.0
    else:  # elsewhere: said to be unknown, never made up
        assert load == {}


def test_the_report_says_which_latencies_are_within_the_spread(tmp_path):
    run = build_run(tmp_path)
    best = next(h for h in run.heads if h.head == run.best_head)
    others = [h for h in run.heads if h is not best]
    best.latency_range_ms_b1 = [10.0, 12.0]
    others[0].latency_range_ms_b1 = [11.5, 13.0]  # overlaps: not measurably different
    others[1].latency_range_ms_b1 = [20.0, 22.0]  # clearly slower
    for h in run.heads:
        h.latency_other_cores = 0.0
    note = latency_note(run)
    assert f"Within the spread of {best.head}'s (10 ms–12 ms)" in note
    assert others[0].head in note.split("Within the spread")[1]
    assert others[1].head not in note.split("Within the spread")[1]
    assert "inflated" not in note
    others[1].latency_other_cores = 1.2
    assert "up to 1.2 CPU cores busy" in latency_note(run)


def test_the_terminal_table_fits_its_width_and_never_cuts_a_head_or_its_accuracy(tmp_path):
    from rich.console import Console
    from headbench.report import summary_table
    run = build_run(tmp_path)
    for h in run.heads:
        h.head = f"efficientnet_lite2/{h.head}[1024,512]"
    run.best_head = run.heads[0].head
    for width in (80, 60):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(summary_table(run, width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "…" not in text
        flat = " ".join(text.split())
        assert width == 80 or "left out here" in flat and "(in report.html)" in flat
        for h in run.heads:
            assert f"{100 * h.summary.test_accuracy.mean:.1f}" in text
            assert h.head in text.replace("\n ", "").replace(" ", "") or width < 80
