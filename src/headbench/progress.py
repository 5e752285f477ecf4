"""The only place headbench prints: log lines and rich progress bars, with a quiet mode for logs.

Names in messages (files, folders, classes) come from users' folders and model files, so every
line goes through `printable`: terminal control characters are shown escaped, never sent, and
rich markup in them is never interpreted.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
import warnings
from typing import Any, Iterator

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
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


# C0 controls (ESC, BEL, CR, newline, ...), DEL, C1 controls (8-bit CSI ...), the bidirectional
# overrides that reorder what a line shows, and lone surrogates: the bytes of a file name that is
# not UTF-8 (printing those raw fails or sends C1 bytes).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                          r"\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    r"""`text` safe to print on a terminal: control characters shown as escapes.

    >>> printable("evil\x1b[2J\x07.png")
    'evil\\x1b[2J\\x07.png'
    >>> printable("two\nlines\u202e"), printable("caf\xe9 [bold]")
    ('two\\x0alines\\u202e', 'café [bold]')
    """
    return _UNPRINTABLE.sub(_escape, str(text))


def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """`warnings.showwarning` for the CLI: a library's warning (matplotlib naming a glyph of a
    class name) with its control characters escaped, like every other line headbench prints."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    out = file if file is not None else sys.stderr
    with contextlib.suppress(OSError, ValueError):  # stderr gone: nothing to tell
        out.write("".join(printable(part) + "\n" for part in text.splitlines()))


class _Printable:
    """A rich renderable (a table) whose text is passed through `printable` after layout."""

    def __init__(self, renderable: Any):
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control:
                yield segment
            else:  # the line breaks of the layout stay
                text = "\n".join(map(printable, segment.text.split("\n")))
                yield Segment(text, segment.style)


def show(renderable: Any) -> None:
    """Print a rich renderable (a table of results) with its text made `printable`."""
    console.print(_Printable(renderable))


def log(message: str) -> None:
    """An informational line; dropped in quiet mode."""
    if not _quiet:
        console.print(printable(message), markup=False, highlight=False)


def warn(message: str) -> None:
    """A warning line to stderr; printed even in quiet mode."""
    print(f"warning: {printable(message)}", file=sys.stderr)


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
            self._bar.update(self._task, postfix=printable(text))


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
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               _RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[postfix]}", markup=False)]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(printable(description), total=total, postfix="")
        yield _Bar(bar, task)
