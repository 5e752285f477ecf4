"""The self-contained HTML report of a run, and the summary table the terminal shows.

`write_report(run)` writes `report.html` into the run folder: one file with inline CSS, plots as
base64 SVG, JPEG thumbnails and CAM overlays, readable without JavaScript. It reads the run
through `Run.load` only. `plots.py` draws the run's own figures (one function per plot) and
collects each registered analysis's section (its report parts, `analyses/registry.py`),
`page.py` assembles the HTML, `format.py` writes numbers as text; `summary_table(run)` is the
report's summary as a rich Table. The blocks a section is made of (`Plot`, `Paragraph`,
`Gallery`) are in `figures.py`, below the analyses and this package.
"""
from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import io as _io
from ..figures import ci_note
from ..progress import printable
from ..run import Run
from .format import SUMMARY_COLUMNS, summary_rows

# The summary's headers on two lines, so the terminal table fits in 80 columns.
_TERMINAL_HEADERS = ["head", "test acc\n± 95% CI", "train − test\ngap", "head\nparams",
                     "train time\n/ seed", "latency\nb1", "throughput\nb32"]
# In a narrow terminal these columns go first, in this order (the head and its accuracy stay).
_DROPPED_FIRST = (6, 4, 5, 2)


def write_report(run: str | Path | Run) -> Path:
    """Write `report.html` into the run folder and return its path.

    Args:
        run: a run folder written by `compare`, or a `Run` whose `run_dir` is set.

    Analyses that did not run are left out; images that cannot be read are skipped.

    Example:
        >>> write_report("runs/20250101-120000-hymenoptera-resnet50")  # doctest: +SKIP
        PosixPath('runs/20250101-120000-hymenoptera-resnet50/report.html')
    """
    from .page import render  # matplotlib loads here, not for the terminal table
    from .plots import all_plots, verdict_forest
    if not isinstance(run, Run):
        run = Run.load(run)
    if run.run_dir is None:
        raise ValueError("write_report needs a run with run_dir set (save it first)")
    page = render(run, all_plots(run), verdict_forest(run))
    return _io.atomic_write_text(Path(run.run_dir) / "report.html", page)


def summary_table(run: Run, width: int | None = None) -> Table:
    """The report's summary (same columns and order) as a rich Table, the selected head in bold
    green, fitted to `width` (default: the terminal's): the least used columns are left out
    first (`_DROPPED_FIRST`), and a head name still too long wraps; neither it nor the accuracy
    is ever cut."""
    from ..progress import console
    rows, keep = summary_rows(run), list(range(len(_TERMINAL_HEADERS)))
    for drop in (None, *_DROPPED_FIRST):
        if drop is not None:
            keep.remove(drop)
        table = _summary_table(run, rows, keep)
        if Console(width=10_000).measure(table).maximum <= (width or console.width):
            break
    return table


def _summary_table(run: Run, rows: list, keep: list[int]) -> Table:
    seeds = len(run.seeds)
    # Text(), not str: folder and head names are data, never rich markup.
    title = (f"{run.dataset.name} · {run.backbone_names} · {seeds} seed"
             + ("s" if seeds != 1 else ""))
    left_out = [_TERMINAL_HEADERS[i].replace("\n", " ") for i in range(len(_TERMINAL_HEADERS))
                if i not in keep]
    caption = ci_note(seeds) + (f"; left out here: {', '.join(left_out)} (in report.html)"
                                if left_out else "")
    table = Table(title=Text(printable(title)), caption=Text(caption), box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for i in keep:
        table.add_column(_TERMINAL_HEADERS[i], justify="left" if i == 0 else "right",
                         no_wrap=i != 0, overflow="fold",
                         min_width=max(len(text) for text, _ in (r[i] for r in rows)) if i == 1
                         else None)
    for row in rows:
        table.add_row(*(Text(printable(row[i][0])) for i in keep),
                      style="bold green" if row[0][0] == run.best_head else None)
    return table


__all__ = ["write_report", "summary_table", "summary_rows", "SUMMARY_COLUMNS"]
