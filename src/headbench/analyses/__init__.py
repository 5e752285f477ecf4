"""Analyses that test the forum claims about heads, measured on the user's own images.

Every analysis reuses the trained heads of a run (no retraining, except ``shots``) and the
feature cache: shifted or resized test images are cached under their own view key, so a second
run of the same analysis is cheap. Running them on a finished run is the `analyze` job
(`headbench/analyze.py`); compare runs them at its end. One module per concept:

- ``registry``: `register_analysis` and the runner; an entry is the whole analysis.
- ``context``: `RunContext`, the run as the analyses read it (from compare's memory or a run
  folder).
- ``findings``: plain-words statements of what the numbers support, each with its interval,
  and the tools an analysis writes its own findings with.
- one module per built-in analysis, each with its option, computation, findings and report
  section, registered at its end like a plugin's: ``translation`` (``shifts``),
  ``resolution`` (``sizes``), ``shots`` (``shots``), ``cam`` (``cam``).

Every `ci` in a section is `{"mean", "lo", "hi", "values"}` over seeds (`lo`/`hi` null with one
seed; `values` per seed, in the order of the section's `seed_ids`). Adding an analysis is one
registration (see `registry`):

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

from .context import RunContext
from .registry import (Analysis, analysis_info, list_analyses, parse_options, register_analysis,
                       run_analyses, run_on_backbones, unregister_analysis)

# The built-ins register themselves when imported, in this order: the order in which they run
# and in which their findings and report sections appear.
from . import translation, resolution, shots, cam  # noqa: E402,F401  (not sorted: the order)

__all__ = ["Analysis", "RunContext", "analysis_info", "list_analyses", "parse_options",
           "register_analysis", "run_analyses", "run_on_backbones", "unregister_analysis"]
