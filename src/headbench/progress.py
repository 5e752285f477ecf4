"""The only place headbench prints: log lines and rich progress bars, with a quiet mode for logs."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from rich.console import Console
from rich.text import Text
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False)
_quiet = False


def set_quiet(flag: bool) -> None:
    """Silence progress bars and informational lines (results and errors still print)."""
    global _quiet
    _quiet = bool(flag)


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """An informational line; dropped in quiet mode."""
    if not _quiet:
        console.print(message, markup=False, highlight=False)


def warn(message: str) -> None:
    """A warning line to stderr; printed even in quiet mode."""
    print(f"warning: {message}", file=sys.stderr)


class _RateColumn(ProgressColumn):
    """Items per second, e.g. '41.3 img/s'."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} {self.unit}/s" if speed else f"   -- {self.unit}/s")


class _Bar:
    def __init__(self, bar: Progress | None, task: int | None):
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def set_postfix(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, postfix=text)


@contextlib.contextmanager
def progress(description: str, total: int | None, unit: str = "it") -> Iterator[_Bar]:
    """A rich progress bar with rate and ETA; a no-op in quiet mode or when nothing is to do."""
    if _quiet or not total:
        yield _Bar(None, None)
        return
    if not console.is_terminal:  # a log file gets one summary line, not redrawn bars
        started, bar = time.perf_counter(), _Bar(None, None)
        yield bar
        seconds = time.perf_counter() - started
        rate = total / max(seconds, 1e-9)
        log(f"{description}: {total} {unit} in {seconds:.1f} s ({rate:.1f} {unit}/s)")
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               _RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[postfix]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, postfix="")
        yield _Bar(bar, task)
