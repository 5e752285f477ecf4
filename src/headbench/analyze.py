"""The analyze job: add analyses to a finished run without retraining its heads.

`analyze(run_dir, **options)` checks every option, re-opens the run (`RunContext.from_run_dir`),
runs the requested analyses (`analyses.run_analyses`), and under the run folder's lock merges
their sections into the run as it is on disk, recomputes the findings, rewrites results.json
and the report. The analyses themselves, built-in or registered by a plugin, are in
`analyses/`; this module only strings them together with the run folder and the report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from . import io as _io
from . import progress as _progress
from . import report as _report
from .analyses import RunContext, list_analyses, parse_options, run_on_backbones
from .analyses.findings import findings
from .pairs import cost_of
from .verdict import sentence
from .config import AnalysisOptions, AnalyzeConfig
from .errors import HeadbenchError
from .run import LOCK, Run, is_complete


def analyze(run_dir: str | Path, *, cache_dir: str | Path | None = None,
            precision: str | None = None, quiet: bool = False, **options: Any) -> Run:
    """Add analyses to a finished run without retraining its heads.

    Args:
        run_dir: a run folder written by compare.
        cache_dir, precision: see `config.AnalyzeConfig` (default: the run's).
        options: {analysis name: its option} for registered analyses (`list_analyses()`), e.g.
            shifts="0,8,16", sizes, shots, cam, or a plugin's. A false option is not run.

    Every option is checked first. Then the run is re-opened, the requested analyses run, and
    their sections are merged into the run's analyses (earlier ones are kept unless re-run);
    the findings are recomputed, results.json and the report rewritten. Returns the updated run.

    Example:
        >>> hb.analyze("runs/20250101-120000-shapes-resnet18", shifts="0,8,16")  # doctest: +SKIP
    """
    config, requested = _check(run_dir, cache_dir, precision, options)
    was_quiet = _progress.is_quiet()
    _progress.set_quiet(quiet or was_quiet)
    try:
        if not is_complete(config.run_dir):
            raise HeadbenchError(f"run '{config.run_dir}' is incomplete (still running, or "
                                 "interrupted: rerun its compare command to finish it)")
        contexts = [RunContext.from_run_dir(config.run_dir, cache_dir=config.cache_dir,
                                            precision=config.precision, backbone_name=name)
                    for name in _backbones_of(Run.load(config.run_dir))]
        sections = run_on_backbones(contexts, requested)  # the long part, outside the lock
        return _merge(Path(config.run_dir), sections)
    finally:
        _progress.set_quiet(was_quiet)


def _backbones_of(run: Run) -> list[str | None]:
    """The backbones whose heads are analysed: the run's one (None), or the recommended one
    first, then the others."""
    if not run.backbones:
        return [None]
    chosen = run.selected().backbone if run.best_head else run.backbones[0].name
    return sorted((b.name for b in run.backbones), key=lambda name: name != chosen)


def _check(run_dir: str | Path, cache_dir: str | Path | None, precision: str | None,
           options: dict[str, Any]) -> tuple[AnalyzeConfig, dict[str, Any]]:
    """The job's options and {analysis: checked option} of those asked for, before any work.

    The built-ins' options are fields of `AnalyzeConfig` (which checks them); the registry
    checks the others.
    """
    fields = {f.name for f in dataclasses.fields(AnalysisOptions)}
    more = parse_options({k: v for k, v in options.items() if k not in fields})
    config = AnalyzeConfig(run_dir=str(run_dir), cache_dir=cache_dir, precision=precision,
                           **{k: v for k, v in options.items() if k in fields})
    requested = {**config.requested(), **more}
    if not requested:
        names = [a.name for a in list_analyses()]
        raise HeadbenchError(f"nothing to analyse: pass {', '.join(names[:-1])} or {names[-1]}",
                             param=names[0])
    return config, requested


def _merge(run_dir: Path, sections: dict[str, dict]) -> Run:
    """Add `sections` to the run as it is on disk now, under the run folder's lock, so that two
    analyze processes on one run keep both their sections."""
    with _io.locked(run_dir / LOCK, f"waiting for another headbench process writing {run_dir}"):
        run = Run.load(run_dir)
        run.analyses.update(sections)
        run.findings = findings(run)
        if run.verdict is not None:  # the recommendation stands; its sentence quotes findings
            run.verdict.text = sentence(run.verdict, run.heads, run.findings, cost_of(run))
        run.save_results()
        _report.write_report(run)
    return run


__all__ = ["analyze"]
