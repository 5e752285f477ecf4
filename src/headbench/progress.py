"""The only place headbench prints: log lines and rich progress bars, with a quiet mode for logs.

Names in messages (files, folders, classes) come from users' folders and model files, so every
line goes through `printable`: terminal control characters are shown escaped, never sent, and
rich markup in them is never interpreted.
"""
from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
import warnings
from typing import Any, Iterator

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False)
# progress goes to stderr, so that results on stdout (predict --json) stay clean when piped
bars = Console(stderr=True, highlight=False)
_quiet = False
LOG_EVERY_S = 30.0  # without a terminal, a progress line at least this often


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


def line(message: str) -> None:
    """A progress line (to stderr); dropped in quiet mode."""
    if not _quiet:
        bars.print(printable(message), markup=False, highlight=False)


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


class _LogBar(_Bar):
    """Progress in a log, where redrawn bars would be noise: a line when the task starts, one at
    least every `LOG_EVERY_S` with done/total, rate and ETA (from a timer, so a slow step still
    shows), and one when it ends."""

    def __init__(self, description: str, total: int, unit: str, every: float):
        super().__init__(None, None)
        self.description, self.total, self.unit = printable(description), total, unit
        self.done, self.postfix, self.started = 0, "", time.perf_counter()
        self._stop = threading.Event()
        line(f"{self.description}: {count(total, unit)} to do")
        self._timer = threading.Thread(target=self._tick, args=(every,), daemon=True,
                                       name="headbench-progress")
        self._timer.start()

    def advance(self, n: int = 1) -> None:
        self.done += n

    def set_postfix(self, text: str) -> None:
        self.postfix = printable(text)

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            line(self._line())

    def _line(self) -> str:
        seconds = time.perf_counter() - self.started
        rate = self.done / max(seconds, 1e-9)
        eta = f", eta {duration((self.total - self.done) / rate)}" if self.done else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        return (f"{self.description}: {self.done:,}/{count(self.total, self.unit)} "
                f"({100 * self.done / self.total:.0f} %), {rate:.1f} {self.unit}/s{eta}{extra}")

    def close(self) -> None:
        self._stop.set()
        self._timer.join()
        seconds = time.perf_counter() - self.started
        extra = f" ({self.postfix})" if self.postfix else ""
        line(f"{self.description}: {count(self.done, self.unit)} in {duration(seconds)} "
            f"({self.done / max(seconds, 1e-9):.1f} {self.unit}/s){extra}")


def count(n: int, unit: str) -> str:
    """'398 files', '1 file', '2,500 img': a number and its unit, plural when it is not 1
    (abbreviations such as img and it stay as they are)."""
    plural = unit if n == 1 or unit in ("img", "it") or unit.endswith("s") else unit + "s"
    return f"{n:,} {plural}"


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@contextlib.contextmanager
def progress(description: str, total: int | None, unit: str = "it") -> Iterator[_Bar]:
    """A rich progress bar with rate and ETA in a terminal; in a log, lines at the start, at
    least every `LOG_EVERY_S` and at the end (`_LogBar`); a no-op in quiet mode or when nothing
    is to do."""
    if _quiet or not total:
        yield _Bar(None, None)
        return
    if not bars.is_terminal:
        bar = _LogBar(description, total, unit, LOG_EVERY_S)
        try:
            yield bar
        finally:
            bar.close()
        return
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               _RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[postfix]}", markup=False)]
    with Progress(*columns, console=bars, transient=False) as bar:
        task = bar.add_task(printable(description), total=total, postfix="")
        yield _Bar(bar, task)
