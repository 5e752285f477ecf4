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
    """12.3 -> '12.3 ms', 1030.4 -> '1,030 ms'."""
    if not finite(x):
        return "—"
    return f"{x:,.0f} ms" if abs(x) >= 100 else f"{x:.3g} ms"


def latency_note(run: Run) -> str:
    """How latency was measured, and which heads' latencies are within the recommended head's
    spread (their interquartile ranges overlap: the difference is not measured)."""
    text = ("Latency: the median of timed batch-1 calls after warm-up (interquartile range in "
            "each head's details), backbone included.")
    best = next((h for h in run.heads if h.head == run.best_head), None)
    if best is None or not best.latency_range_ms_b1:
        return text
    low, high = best.latency_range_ms_b1
    tied = [h.head for h in run.heads if h is not best and h.latency_range_ms_b1
            and h.latency_range_ms_b1[0] <= high and h.latency_range_ms_b1[1] >= low]
    if tied:
        text += (f" Within the spread of {best.head}'s ({ms(low)}–{ms(high)}), so not measurably "
                 f"faster or slower: {', '.join(tied)}.")
    busy = [h.latency_other_cores for h in run.heads if h.latency_other_cores is not None]
    if busy and max(busy) >= 0.5:
        text += (f" Other processes kept up to {max(busy):.1f} CPU cores busy while heads were "
                 "timed: latencies may be inflated.")
    return text


def rate(x: Any) -> str:
    return f"{x:,.0f} img/s" if finite(x) else "—"


def findings_note(run: Run) -> str:
    """How the findings decide significance: one paired test per finding, Holm within each
    declared family."""
    tested = [f for f in run.findings if f.p_adjusted is not None]
    if not tested:
        return ("No finding of this run has per-image values, so none is tested and none claims "
                "a difference; intervals over seeds are shown for information only.")
    families = {}
    for f in tested:
        families[f.family or "run"] = families.get(f.family or "run", 0) + 1
    listed = ", ".join(f"{name} ({n})" for name, n in families.items())
    return (f"Significance: a tested finding compares two heads image by image on the test "
            f"split with a paired sign-flip randomisation test of the mean difference (per-image "
            f"values averaged over seeds); its 95 % interval is the same test inverted, so it "
            f"excludes 0 exactly when the unadjusted p < 0.05. The p-values are adjusted by "
            f"Holm–Bonferroni within each family declared before any number was seen: {listed}. "
            f"A difference is called significant (bold) only when its adjusted p < 0.05, which "
            f"keeps the chance of any false claim at most 5 % per family; an unadjusted interval "
            f"that excludes 0 beside an adjusted p above 0.05 is not a contradiction. Adding an "
            f"analysis adds its own family and never changes another family's p-values. "
            f"Intervals over seeds are described, never tested; findings marked \"not tested\" "
            f"have no per-image values and claim nothing.")


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
