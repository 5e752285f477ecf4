"""The analysis registry: one entry holds everything headbench does with an analysis.

- its option, made with `config.option(default, help, parse=...)`: the value a user passes
  (`analyze(run_dir, name=value)`) is checked by `parse` before any work. The built-ins'
  options are the fields of `config.AnalysisOptions` (compare records them in config.json and
  the CLI makes them flags), taken with `config.analysis_option(name)`;
- `run(ctx, option) -> section`: the computation on a `RunContext`, a JSON-able dict stored in
  results.json["analyses"][name];
- its findings (see `findings.py`, which calls them): `pair_findings(section, reference,
  other)` for each head the named claims (`heads.NAMED_CLAIMS`) pit against the reference head,
  and `findings(section, heads)` once, with the reference and the selected head;
- its report section: `report`, parts drawn in order in the report's Plots section (each
  `part(run, section)` returns a `figures.Plot`, a `figures.Paragraph` or None), and
  `head_report(run, label, section)`, a `figures.Gallery` in head `label`'s section (or None);
- what it costs, for the suggestion a run ends with (`suggestions`): `suggest`, the option value
  to suggest when the run did not ask for it, and `cost(option, run)`, the backbone passes it
  takes, in test-split images at the run's input size.

Built-ins and plugins register the same way (`register_analysis`). The registry's order is the
order in which the analyses run, and in which their findings and report sections appear.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..config import option as _option
from ..errors import unknown
from ..figures import Gallery, Paragraph, Plot
from ..results import HeadResult
from ..run import Run
from .context import RunContext

RunFunction = Callable[[RunContext, Any], dict]
# Findings are `findings.Draft`s (tested, Holm-corrected with the run's other findings) or
# plain `run.Finding`s (described, never tested).
PairFindings = Callable[[dict, HeadResult, HeadResult], Sequence[Any]]
SectionFindings = Callable[[dict, list[HeadResult]], Sequence[Any]]
ReportPart = Callable[[Run, dict], Plot | Paragraph | None]
HeadReport = Callable[[Run, str, dict], Gallery | None]
Cost = Callable[[Any, Run], float]


@dataclass(frozen=True)
class Analysis:
    """A registered analysis (see the module's docstring for what each part does).

    Attributes:
        name: the option's keyword and the key of its section in results.json["analyses"].
        run: `run(ctx, option) -> section` (the runner adds `title` and `time_s`).
        title: what the report calls it (stored in the section, so a report of the run folder
            needs no registry).
        option: a `config.option(...)` field: its `parse` metadata checks and normalises the
            value (raise `HeadbenchError` with `param=name`); None: the value as given.
    """

    name: str
    run: RunFunction
    title: str
    option: dataclasses.Field | None = None
    pair_findings: PairFindings | None = None
    findings: SectionFindings | None = None
    report: tuple[ReportPart, ...] = ()
    head_report: HeadReport | None = None
    suggest: Any = None
    cost: Cost | None = None

    def parse(self, value: Any) -> Any:
        """`value` checked and normalised by the option's parser."""
        parse = self.option.metadata.get("parse") if self.option is not None else None
        return parse(value) if parse else value

    @property
    def has_report(self) -> bool:
        """The report draws this analysis's section itself (others get a generic one)."""
        return bool(self.report) or self.head_report is not None


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(name: str, run: RunFunction, title: str | None = None,
                      parse: Callable[[Any], Any] | None = None, *,
                      option: dataclasses.Field | None = None,
                      pair_findings: PairFindings | None = None,
                      findings: SectionFindings | None = None,
                      report: Sequence[ReportPart] = (),
                      head_report: HeadReport | None = None, suggest: Any = None,
                      cost: Cost | None = None) -> Analysis:
    """Add analysis `name`, or replace the one of that name (see `Analysis`; title: the name).

    `parse` alone stands for `option=config.option(None, "", parse=parse)`.
    """
    if option is None and parse is not None:
        option = _option(None, "", parse=parse)
    _REGISTRY[name] = Analysis(name, run, title or name, option, pair_findings, findings,
                               tuple(report), head_report, suggest, cost)
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


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """{name: option} for registered analyses, each option checked by its entry's parser;
    returns those asked for (a false option is not). An unknown name suggests the closest."""
    out = {}
    for name, value in options.items():
        value = analysis_info(name).parse(value)
        if value:
            out[name] = value
    return out


def suggestions(run: Run) -> list[tuple[str, Any, float, bool]]:
    """(name, option, estimated seconds, measured) of each analysis with a `suggest`ed option
    that the run has not run: its `cost` in image passes over this run's extraction rate,
    decoding included (`measured`), or where nothing was extracted over the backbone's own
    batch-32 throughput, a lower bound (decoding and the heads come on top)."""
    t = run.timing
    # several backbones: the extraction rate was pooled over them, the analyses use one
    measured = bool(t.n_extracted and t.extract_s and not run.backbones)
    rate = t.n_extracted / t.extract_s if measured else run.analysed_backbone().throughput_b32
    return [(a.name, a.suggest, a.cost(a.parse(a.suggest), run) / rate, measured)
            for a in list_analyses()
            if a.suggest is not None and a.cost is not None and a.name not in run.analyses
            and rate]


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


def run_on_backbones(contexts: list[RunContext], requested: dict[str, Any]) -> dict[str, dict]:
    """The requested analyses on the heads of each context's backbone (a run of several
    backbones: the first is the recommended one). Where the sections of every backbone agree
    on everything but their heads (the small-data curve, CAM, translation), one section holds
    every pair's heads; where they do not (resolution: each backbone has its own base size),
    the first backbone's section stands and the others' are under its `backbones`."""
    first, *others = [run_analyses(ctx, requested) for ctx in contexts]
    for name, section in first.items():
        rest = {ctx.backbone_name: more[name] for ctx, more in zip(contexts[1:], others)}
        if all(_frame(s) == _frame(section) for s in rest.values()):
            for s in rest.values():
                section.setdefault("heads", {}).update(s.get("heads", {}))
                section["time_s"] = round(section["time_s"] + s["time_s"], 3)
        elif rest:
            section["backbones"] = rest
    return first


def _frame(section: dict) -> dict:
    """A section without its heads and timing: what must agree for sections to merge."""
    return {k: v for k, v in section.items() if k not in ("heads", "time_s")}


__all__ = ["Analysis", "analysis_info", "list_analyses", "parse_options", "register_analysis",
           "run_analyses", "run_on_backbones", "unregister_analysis"]
