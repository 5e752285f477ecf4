"""Analyses that test the forum claims about heads, measured on the user's own images.

Every analysis reuses the trained heads of a run (no retraining, except ``shots``) and the
feature cache: shifted or resized test images are cached under their own view key, so a second
run of the same analysis is cheap. One module per concept:

- ``context``: `RunContext`, the run as the analyses read it (from compare's memory or a run
  folder).
- ``translation`` (``shifts``): accuracy and consistency on translated test crops.
- ``resolution`` (``sizes``): accuracy at other input sizes; fixed-size heads not applicable.
- ``shots`` (``shots``): every head retrained on k training images per class.
- ``cam`` (``cam``): exact CAMs or Grad-CAM, PNG overlays of right and wrong test images.
- ``findings``: plain-words statements of what the numbers support, each with its interval.

An analysis is one registry entry: its name (the option a user passes and the key of its
section in results.json["analyses"]), `run(ctx, option) -> section`, a title for the report,
and, for an option `config.AnalysisOptions` does not hold, a `parse` callable that checks the
option before any work. Every `ci` in a section is `{"mean", "lo", "hi", "values"}` over seeds
(`lo`/`hi` null with one seed; `values` per seed, in the order of the section's `seed_ids`).

Adding an analysis touches one place, its registration:

    >>> def noise(ctx, std):
    ...     return {"std": std, "heads": {}}
    >>> register_analysis("noise", noise, title="accuracy under feature noise", parse=float).name
    'noise'
    >>> [a.name for a in list_analyses()]
    ['shifts', 'sizes', 'shots', 'cam', 'noise']
    >>> hb.analyze("runs/20250101-120000-shapes-resnet18", noise=0.5)  # doctest: +SKIP
    >>> unregister_analysis("noise")
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import io as _io
from .. import progress as _progress
from ..config import AnalyzeConfig
from ..errors import HeadbenchError, unknown
from ..run import LOCK, Run, is_complete
from . import findings as _findings
from .cam import cam_analysis
from .context import RunContext
from .resolution import resolution_analysis
from .shots import shots_analysis
from .translation import translation_analysis

RunFunction = Callable[[RunContext, Any], dict]


@dataclass(frozen=True)
class Analysis:
    """A registered analysis.

    Attributes:
        name: the option a user passes (`analyze(run_dir, name=option)`) and the key of its
            section in results.json["analyses"].
        run: `run(ctx, option) -> section`, a JSON-able dict (the runner adds `title` and
            `time_s`).
        title: what the report calls it (stored in the section, so a report of the run folder
            needs no registry).
        parse: checks and normalises the option before any work (raise `HeadbenchError` with
            `param=name`); None for the built-ins, whose options `AnalysisOptions` checks.
    """

    name: str
    run: RunFunction
    title: str
    parse: Callable[[Any], Any] | None = None


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(name: str, run: RunFunction, title: str | None = None,
                      parse: Callable[[Any], Any] | None = None) -> Analysis:
    """Add `run(ctx, option) -> section` as analysis `name` (see `Analysis`; title: the name)."""
    _REGISTRY[name] = Analysis(name, run, title or name, parse)
    return _REGISTRY[name]


def unregister_analysis(name: str) -> None:
    """Remove an analysis added with `register_analysis` (tests and plugins clean up with it)."""
    _REGISTRY.pop(name, None)


def list_analyses() -> list[Analysis]:
    """The registered analyses, in the order they run."""
    return list(_REGISTRY.values())


def analysis_info(name: str) -> Analysis:
    """The registry entry of analysis `name`; an unknown name suggests the closest ones."""
    if name not in _REGISTRY:
        raise unknown("analysis", name, _REGISTRY, param=name)
    return _REGISTRY[name]


register_analysis("shifts", translation_analysis, "translation")
register_analysis("sizes", resolution_analysis, "input size")
register_analysis("shots", shots_analysis, "shots per class")
register_analysis("cam", cam_analysis, "class activation maps")


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """{name: option} for registered analyses, each option checked by its entry's `parse`;
    returns those asked for (a false option is not). An unknown name suggests the closest."""
    out = {}
    for name, value in options.items():
        entry = analysis_info(name)
        value = entry.parse(value) if entry.parse else value
        if value:
            out[name] = value
    return out


def run_analyses(ctx: RunContext, requested: dict[str, Any]) -> dict[str, dict]:
    """Run the requested analyses in registry order: {name: option} -> {name: section}.

    Options are taken as checked (`AnalysisOptions.requested()`, `parse_options`); a false
    option is not run. Each section gets its `title` and `time_s`, the seconds it took.
    """
    unknown_names = sorted(set(requested) - set(_REGISTRY))
    if unknown_names:
        raise unknown("analysis", unknown_names[0], _REGISTRY, param=unknown_names[0])
    out: dict[str, dict] = {}
    for entry in list_analyses():
        option = requested.get(entry.name)
        if not option:
            continue
        started = time.perf_counter()
        section = dict(entry.run(ctx, option))
        section.setdefault("title", entry.title)
        section["time_s"] = round(time.perf_counter() - started, 3)
        out[entry.name] = section
    return out


def analyze(run_dir: str | Path, shifts: Any = None, sizes: Any = None, shots: Any = None,
            cam: int = 0, cache_dir: str | Path | None = None, precision: str | None = None,
            quiet: bool = False, **more: Any) -> Run:
    """Add analyses to a finished run without retraining its heads.

    Every option is checked first (`config.AnalyzeConfig`; `more`: options of analyses added
    with `register_analysis`). Then re-opens `run_dir` (`RunContext.from_run_dir`), runs the
    requested analyses, merges their sections into the run's analyses (earlier ones are kept
    unless re-run), recomputes the findings, rewrites results.json and the report. Returns the
    updated run.

    Example:
        >>> hb.analyze("runs/20250101-120000-shapes-resnet18", shifts="0,8,16")  # doctest: +SKIP
    """
    extra = parse_options(more)
    config = AnalyzeConfig(run_dir=str(run_dir), cache_dir=cache_dir, precision=precision,
                           shifts=shifts, sizes=sizes, shots=shots, cam=cam)
    requested = {**config.requested(), **extra}
    if not requested:
        raise HeadbenchError("nothing to analyse: pass shifts, sizes, shots or cam", param="shifts")
    was_quiet = _progress.is_quiet()
    _progress.set_quiet(quiet or was_quiet)
    try:
        if not is_complete(config.run_dir):
            raise HeadbenchError(f"run '{config.run_dir}' is incomplete (still running, or "
                                 "interrupted: rerun its compare command to finish it)")
        ctx = RunContext.from_run_dir(config.run_dir, cache_dir=config.cache_dir,
                                      precision=config.precision)
        sections = run_analyses(ctx, requested)  # the long part, outside the lock
        return _merge(Path(config.run_dir), sections)
    finally:
        _progress.set_quiet(was_quiet)


def _merge(run_dir: Path, sections: dict[str, dict]) -> Run:
    """Add `sections` to the run as it is on disk now, under the run folder's lock, so that two
    analyze processes on one run keep both their sections."""
    from ..report import write_report
    with _io.locked(run_dir / LOCK, f"waiting for another headbench process writing {run_dir}"):
        run = Run.load(run_dir)
        run.analyses.update(sections)
        run.findings = _findings.findings(run)
        run.save_results()
        write_report(run)
    return run


__all__ = ["Analysis", "RunContext", "analysis_info", "analyze", "list_analyses",
           "parse_options", "register_analysis", "run_analyses", "unregister_analysis"]
