"""Text of numbers for the report and the terminal: counts, times, the findings' note, and the
summary table's rows (the page and `summary_table` show the same rows). Accuracies with
intervals (`pct`, `pp`) are in `figures.py`, which the analyses use too."""
from __future__ import annotations

from typing import Any

from ..figures import finite, pct, pp
from ..results import HeadResult
from ..run import Run

SUMMARY_COLUMNS = ["head", "test acc ± 95% CI", "train − test gap", "head params",
                   "train time / seed", "latency b1", "throughput b32"]


def count(n: Any) -> str:
    """1026 -> '1.03k', 11e6 -> '11M'."""
    if not finite(n):
        return "—"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def seconds(s: Any) -> str:
    if not finite(s):
        return "—"
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    return f"{int(s // 60)}m {s % 60:02.0f}s"


def ms(x: Any) -> str:
    return f"{x:.3g} ms" if finite(x) else "—"


def rate(x: Any) -> str:
    return f"{x:,.0f} img/s" if finite(x) else "—"


def findings_note(run: Run) -> str:
    """How the findings decide significance: per-image tests, Holm–Bonferroni over all."""
    n = sum(f.p_adjusted is not None for f in run.findings)
    if not n:
        return ("No finding of this run has per-image values, so none is tested and none claims "
                "a difference; intervals over seeds are shown for information only.")
    return (f"Significance: a tested finding compares two heads image by image on the test "
            f"split (McNemar's exact test when every per-image value is 0 or 1, e.g. correctness "
            f"with one seed; otherwise a paired sign-flip randomisation test on per-image values "
            f"averaged over seeds), and "
            f"the p-values of all {n} tested finding{'s' if n != 1 else ''} of the run are "
            f"adjusted together by Holm–Bonferroni: a difference is called significant (bold) "
            f"only when its adjusted p < 0.05, which keeps the chance of any false claim among "
            f"them at most 5%. Intervals over seeds are shown alongside but not tested; "
            f"findings marked \"not tested\" have no per-image values and claim nothing.")


def heads_by_accuracy(run: Run) -> list[HeadResult]:
    """The run's heads, best mean test accuracy first (ties keep the run's order)."""
    return sorted(run.heads, key=lambda h: -h.summary.test_accuracy.mean)


def summary_rows(run: Run) -> list[list[tuple[str, float | str | None]]]:
    """The summary table as rows of (text, sort value), columns as `SUMMARY_COLUMNS`, best mean
    test accuracy first."""
    rows = []
    for h in heads_by_accuracy(run):
        acc, gap = h.summary.test_accuracy, h.summary.overfit_gap
        rows.append([
            (h.head, h.head),
            (pct(acc), acc.mean),
            (pp(gap), gap.mean),
            (count(h.head_params), h.head_params),
            (seconds(h.summary.train_time_s), _key(h.summary.train_time_s)),
            (ms(h.latency_ms_b1), _key(h.latency_ms_b1)),
            (rate(h.throughput_b32), _key(h.throughput_b32)),
        ])
    return rows


def _key(x: Any) -> float | None:
    """A sort value; None (sorted last) for a measurement that is missing or not finite."""
    return x if finite(x) else None
