"""The one exception type for mistakes a user can fix.

Its message is a single line naming the file or option and what to do; the CLI prints it and
exits non-zero without a traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class HeadbenchError(Exception):
    """A user-fixable error whose message is one line.

    `param` names the parameter at fault as the Python API spells it (`dropout`, `pool_size`);
    messages about a parameter start with its name, and the CLI swaps that name for its flag.
    `hints` names the other parameters the message advises on ("is input_size too small?"):
    the CLI shows their flags instead. Messages never spell a command-line flag themselves,
    so a library user reads the names they pass.
    """

    def __init__(self, message: str, param: str | None = None, hints: Iterable[str] = ()):
        super().__init__(message)
        self.param = param
        self.hints = tuple(hints)


class DiskError(HeadbenchError):
    """A write that failed for the disk's sake (full, read-only, gone): one line with the path,
    the cause and what was kept; the CLI exits with code 1 (a bad option or input: 2)."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names most similar to `name` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)
    return [lowered[h] for h in hits]


def unknown(kind: str, name: str, choices: Iterable[str], listed: int = 12,
            param: str | None = None) -> HeadbenchError:
    """An error for an unknown `kind` name that suggests the closest valid ones."""
    choices = sorted(choices)
    near = closest(name, choices)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    shown = ", ".join(choices[:listed]) + (", ..." if len(choices) > listed else "")
    return HeadbenchError(f"unknown {kind} '{name}': {hint}valid: {shown}", param=param)
