"""Text of numbers for the report and the terminal: accuracies with intervals, counts, times,
and the summary table's rows (the page and `summary_table` show the same rows)."""
from __future__ import annotations

import math
from typing import Any

from ..run import CI, HeadResult, Run

SUMMARY_COLUMNS = ["head", "test acc ± 95% CI", "train − test gap", "head params",
                   "train time / seed", "latency b1", "throughput b32"]


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def as_ci(value: Any) -> CI | None:
    """A CI from a run field or an analysis entry (`{"mean", "lo", "hi", ...}`); None when
    `value` is not one (analysis sections are plain dicts written by each analysis)."""
    if isinstance(value, CI):
        return value if finite(value.mean) else None
    if not isinstance(value, dict) or not finite(value.get("mean")):
        return None
    lo, hi = value.get("lo"), value.get("hi")
    return CI(float(value["mean"]), float(lo) if finite(lo) else None,
              float(hi) if finite(hi) else None, list(value.get("values") or []))


def pct(ci: CI | None) -> str:
    """An accuracy as '91.2 ± 2.2%' (95% CI), '91.2%' with one seed."""
    return _ci_text(ci, "{:.1f}", "%")


def pp(ci: CI | None) -> str:
    """A difference of accuracies in percentage points: '+3.1 ± 1.0 pp'."""
    return _ci_text(ci, "{:+.1f}", " pp")


def _ci_text(ci: CI | None, fmt: str, unit: str) -> str:
    """Mean ± half-width in percent; [lo, hi] when the interval is not symmetric (clipped)."""
    if ci is None:
        return "—"
    mean = 100 * ci.mean
    if ci.lo is None or ci.hi is None:
        return fmt.format(mean) + unit
    lo, hi = 100 * ci.lo, 100 * ci.hi
    if math.isclose(hi - mean, mean - lo, rel_tol=1e-6, abs_tol=1e-9):
        return f"{fmt.format(mean)} ± {hi - mean:.1f}{unit}"
    return f"{fmt.format(mean)}{unit} [{fmt.format(lo)}, {fmt.format(hi)}]"


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


def ci_note(seeds: int) -> str:
    if seeds > 1:
        return f"±: 95% Student-t interval of the mean over {seeds} seeds"
    return "one seed: no interval (run more seeds for one)"


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


def zhang_text(shifts: Any) -> str | None:
    """The shifts section's Zhang 2019 consistency per head, after its definition; None when
    the section has none."""
    if not isinstance(shifts, dict) or not isinstance(shifts.get("heads"), dict):
        return None
    values = [f"{name} {pct(as_ci(d.get('zhang_consistency')))}"
              for name, d in shifts["heads"].items()
              if isinstance(d, dict) and as_ci(d.get("zhang_consistency"))]
    definition = shifts.get("zhang_consistency_definition")
    if not values or not isinstance(definition, str):
        return None
    return f"{definition}. By head: {', '.join(values)}."


def mpl(x: Any) -> str:
    """Text for matplotlib: '$' would start mathtext."""
    return str(x).replace("$", r"\$")


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
