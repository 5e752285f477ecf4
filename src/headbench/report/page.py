"""report.html assembled from a `Run` and its plots: sections, tables, images, inline CSS and JS.

The page is one file: plots as base64 SVG `<img class="plot">`, dataset images as downscaled
JPEG data URLs, no external URL. It reads completely without JavaScript; a few lines of inline
JS only sort the summary table and expand/collapse the head sections. Everything that comes from
the run (class, head and file names) is HTML-escaped. Images the run points at that cannot be
read are skipped; gallery files outside the run folder are ignored (results.json is data, not
a path to anywhere). Each registered analysis that ran draws its own section (`plots.py` builds
its blocks, this module only renders them); an analysis without one gets a generic section.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from ..analyses import list_analyses
from ..analyses.findings import p_text
from ..evaluate import select_head
from ..figures import Gallery, Paragraph, Plot, ci_note, finite, pct
from ..results import HeadResult, Timing
from ..run import Run
from .format import (SUMMARY_COLUMNS, count, findings_note, heads_by_accuracy, latency_note, ms,
                     rate, seconds, summary_rows)
from .per_class import confusion_per_head, per_class_table
from .plots import head_galleries

TOP_LOSS_IMAGES = 6
THUMB_PX = 128
GALLERY_PX = 224
JSON_CHARS = 20_000  # an unknown analysis's JSON shown on the page, at most


def render(run: Run, plots: list[Plot | Paragraph], lead: Plot | None = None) -> str:
    """The whole page of `run` with `plots` (from `plots.all_plots`); `lead`, the verdict's
    plot, stands under the verdict on the first screen."""
    title = f"headbench · {run.dataset.name} · {run.backbone_names}"
    sections = [("run", "Run", _run_facts(run)),
                ("summary", "Summary", _summary_html(run)),
                ("per-class", "Per class", _per_class_html(run)),
                ("findings", "Findings", _findings_html(run)),
                ("plots", "Plots", _plots_html(run, plots))]
    if any(h.variant for h in run.heads):
        sections.insert(3, ("variants", "Augmented views and fine-tuning", _variants_html(run)))
    drawn = {a.name for a in list_analyses() if a.has_report}
    others = [name for name in run.analyses if name not in drawn]
    if others:
        sections.append(("analyses", "More analyses",
                         "".join(_other_analysis_html(n, run.analyses[n]) for n in others)))
    sections.append(("heads", "Heads",
                     "".join(_head_html(run, h) for h in heads_by_accuracy(run))))
    nav = " · ".join(f'<a href="#{id_}">{name}</a>' for id_, name, _ in sections)
    verdict = (f'<p class="verdict"><strong>Verdict:</strong> {_e(run.verdict.text)}</p>'
               if run.verdict is not None and run.verdict.text else "")
    verdict += _figure_html(lead) if lead is not None else ""
    body = [f"<h1>{_e(title)}</h1>", verdict, f"<nav>{nav}</nav>",
            *(f'<section id="{id_}"><h2>{name}</h2>\n{content}\n</section>'
              for id_, name, content in sections),
            f"<footer>headbench {_e(run.headbench_version)} · run folder "
            f"<code>{_e(run.run_dir)}</code> · created {_e(run.created)}</footer>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{_JS}</script>\n</body></html>\n")


# ----------------------------------------------------------------------------------------------
# text and images

def _e(x: Any) -> str:
    """HTML-escaped text of anything that comes from the run (class names, paths, head names)."""
    return html.escape(str(x), quote=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "head"


def svg_data(fig: Figure) -> str:
    """The figure as a data:image/svg+xml URL (no date in it, so re-renders are identical)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_data(path: Path, max_px: int) -> str | None:
    """A downscaled JPEG data URL of the image at `path`; None when it cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_px * 2, max_px * 2))  # fast JPEG decode at reduced size
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _inside(base: Path, rel: str) -> Path | None:
    """`base/rel` when it stays inside `base` (results.json is data, not a path to anywhere)."""
    path = (base / rel).resolve()
    return path if path.is_relative_to(base.resolve()) else None


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    """Rows of (label, already-escaped HTML)."""
    return ('<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
            + "</table>")


# ----------------------------------------------------------------------------------------------
# the run: dataset, backbone, machine

def _backbone_html(bb: Any, several: bool = False) -> str:
    """One backbone's facts; with several, each also with its weights and input."""
    latency = (f", {bb.latency_ms_b1:.1f} ms per image at batch 1"
               if several and finite(bb.latency_ms_b1) else "")
    own = (f"; weights {_e(bb.weights)}, input {_e(_data_config_text(bb.data_config))}"
           if several else "")
    return (f"{_e(bb.name)} (timm <code>{_e(bb.timm_name)}</code>), {count(bb.params)} params, "
            f"{count(bb.flops)} FLOPs{latency}"
            + (f", feature map {'×'.join(_e(x) for x in bb.feature_shape)}"
               if bb.feature_shape else "") + own)


def _run_facts(run: Run) -> str:
    ds, bb = run.dataset, run.backbone
    classes = run.classes
    machine = ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in run.machine.items() if v is not None)
    times = [(f.name.removesuffix("_s"), getattr(run.timing, f.name))
             for f in dataclasses.fields(Timing) if f.name.endswith("_s")]
    pairs = [
        ("dataset", f"{_e(ds.name)} <code>{_e(ds.root)}</code> ({_e(ds.layout)} layout)"),
        ("classes", f"{len(classes)}: " + ", ".join(_e(c) for c in classes[:50])
                    + (", …" if len(classes) > 50 else "")),
        ("splits", _e(ds.split_description) + _split_totals(ds.counts)),
        ("skipped files", _skipped_html(run)),
        ("leakage", _leakage_html(ds.leakage)),
        ("backbone" if not run.backbones else "backbones",
         "<br>".join(_backbone_html(b, len(run.backbones) > 1) for b in run.backbones or [bb])),
        *([] if run.backbones else [
            ("weights", _e(bb.weights) + (f" <code>{_e(bb.weights_checksum)}</code>"
                                          if bb.weights_checksum else "")),
            ("input", _e(_data_config_text(bb.data_config)))]),
        *([("pairs skipped", "<br>".join(f"{_e(p['backbone'])}/{_e(p['head'])}: "
                                          f"{_e(p['reason'])}" for p in run.skipped_pairs))]
          if run.skipped_pairs else []),
        ("precision / device", f"{_e(run.precision)} on {_e(run.device)}"),
        ("machine", _e(machine)),
        ("run time", _e(", ".join(f"{k} {seconds(v)}" for k, v in times if finite(v)))),
    ]
    return _kv_table(pairs) + _counts_html(ds.counts, classes)


def _data_config_text(dc: dict) -> str:
    """timm's data config in one line: '224×224 px, bicubic, crop_pct 0.875, mean ..., std ...'."""
    size = "×".join(str(x) for x in dc.get("input_size", [])[1:]) or "?"
    return (f"{size} px, {dc.get('interpolation', '?')}, crop_pct {dc.get('crop_pct', '?')}, "
            f"mean {dc.get('mean', '?')}, std {dc.get('std', '?')}")


def _split_totals(counts: dict[str, dict[str, int]]) -> str:
    parts = [f"{role} {sum(counts[role].values())}" for role in ("train", "val", "test")
             if role in counts]
    return " — " + ", ".join(parts) + " images" if parts else ""


def _counts_html(counts: dict[str, dict[str, int]], classes: list[str]) -> str:
    """Per-class counts per split; folded when there are many classes."""
    roles = [r for r in ("train", "val", "test") if r in counts]
    if not classes or not roles:
        return ""
    head = "<tr><th>class</th>" + "".join(f"<th>{r}</th>" for r in roles) + "</tr>"
    rows = "".join(f"<tr><td>{_e(c)}</td>"
                   + "".join(f'<td class="num">{_e(counts[r].get(c, 0))}</td>' for r in roles)
                   + "</tr>" for c in classes)
    open_ = " open" if len(classes) <= 12 else ""
    return (f"<details{open_}><summary>images per class and split</summary>"
            f'<table class="grid"><thead>{head}</thead><tbody>{rows}</tbody></table></details>')


def _skipped_html(run: Run) -> str:
    skipped = run.dataset.skipped
    if not skipped:
        return "none"
    listed = "".join(f"<li><code>{_e(path)}</code>: {_e(reason)}</li>"
                     for path, reason in skipped[:100])
    more = f"<li>… {len(skipped) - 100} more in skipped.csv</li>" if len(skipped) > 100 else ""
    return (f"<details><summary>{len(skipped)} (listed in skipped.csv)</summary>"
            f"<ul>{listed}{more}</ul></details>")


def _leakage_html(leakage: list[dict]) -> str:
    """Files found byte-identical in two splits: `{"digest", "roles": {role: [paths]}}` each."""
    if not leakage:
        return "none found (no byte-identical file in two splits)"
    items = "".join("<li>" + "; ".join(
        f"{_e(role)}: " + ", ".join(f"<code>{_e(p)}</code>" for p in paths)
        for role, paths in leak["roles"].items()) + "</li>" for leak in leakage[:50])
    return (f'<details open><summary class="warn">warning: {len(leakage)} byte-identical '
            f"file(s) appear in more than one split; accuracies may be optimistic</summary>"
            f"<ul>{items}</ul></details>")


# ----------------------------------------------------------------------------------------------
# summary, findings, plots

def _summary_html(run: Run) -> str:
    header = "".join(f'<th scope="col" title="click to sort">{_e(c)}</th>' for c in SUMMARY_COLUMNS)
    body = []
    for row in summary_rows(run):
        cls = ' class="best"' if row[0][0] == run.best_head else ""
        cells = "".join(
            f'<td{"" if i == 0 else " class=num"} data-value="{_e("" if v is None else v)}">'
            f"{_e(text)}</td>" for i, (text, v) in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    how = ("the cheapest head within one standard error of the best validation accuracy" if
           run.verdict else "highest mean validation accuracy, then lowest validation NLL")
    selected = (f"Recommended head: <strong>{_e(run.best_head)}</strong> ({how}: chosen on the "
                "val split, never on test; highlighted). " if run.best_head else "")
    note = (f"<p>{selected}{_e(ci_note(len(run.seeds)))}. Gap: train minus test accuracy in "
            f"percentage points. Throughput includes the backbone. {_e(latency_note(run))} "
            '<span class="js-only">Click a column header to sort.</span></p>')
    return (f'<table id="summary-table" class="sortable grid"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def _per_class_html(run: Run) -> str:
    """The recommended head's per-class table, then every head's confusion matrix."""
    plot = confusion_per_head(run)
    return per_class_table(run) + (_figure_html(plot) if plot is not None else "")


def _variants_html(run: Run) -> str:
    """Each augmented or fine-tuned head beside the frozen head it varies: test accuracy of
    both, the change with its interval (from the run's finding), which one val selects."""
    found = {(f.a, f.b): f for f in run.findings if f.kind in ("augmentation", "finetune")}
    rows = []
    for v in (h for h in run.heads if h.variant):
        base = run.head(v.variant.of)
        f = found.get((v.head, base.head))
        how = (f"fine-tuned from seed {v.variant.from_seed}, unfreeze "
               f"{v.variant.settings.get('unfreeze')}, BatchNorm {v.variant.settings.get('bn')}"
               + (f", resumed after epoch {v.variant.resumed_from}" if v.variant.resumed_from
                  else "")
               if v.finetuned else f"{v.variant.aug_views} cached augmented views per image")
        change = "—" if f is None or f.diff is None else (
            f"{100 * f.diff:+.1f} pp" + (f" [{100 * f.lo:+.1f}, {100 * f.hi:+.1f}]"
                                         if f.lo is not None else "")
            + (f", {p_text(f.p_adjusted)} (Holm)" if f.p_adjusted is not None else ""))
        chosen = select_head([base, v]).head
        rows.append("".join(f"<td>{_e(x)}</td>" for x in (
            v.head, how, pct(base.summary.test_accuracy), pct(v.summary.test_accuracy), change,
            chosen)))
    header = "".join(f"<th>{c}</th>" for c in ("variant", "how", "frozen test accuracy",
                                                "variant test accuracy", "change (95% CI)",
                                                "val selects"))
    return (f'<table class="grid"><thead><tr>{header}</tr></thead><tbody>'
            + "".join(f"<tr>{r}</tr>" for r in rows) + "</tbody></table>"
            "<p>Augmented heads are paired with the frozen head by seed (same initialisation "
            "and batch order); a fine-tuned head has one seed and is paired per test image with "
            "the frozen seed it started from (interval: the paired sign-flip test inverted). Which of the two is "
            "kept is decided on val accuracy, never on test; both model folders are saved.</p>")


def _findings_html(run: Run) -> str:
    if not run.findings:
        return "<p>No findings were recorded for this run.</p>"
    items = "".join(f'<li{" class=significant" if f.significant else ""}>{_e(f.text)}</li>'
                    for f in run.findings)
    return f'<ul>{items}</ul><p class="note">{_e(findings_note(run))}</p>'


def _figure_html(block: Plot) -> str:
    id_ = _e(block.id)
    return (f'<figure id="{id_}"><figcaption><strong>{_e(block.title)}</strong>'
            f'</figcaption><img class="plot" alt="{id_}: {_e(block.title)}" '
            f'src="{svg_data(block.figure)}"><p>{_e(block.caption)}</p></figure>')


def _plots_html(run: Run, blocks: list[Plot | Paragraph]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Paragraph):
            parts.append(f'<p id="{_e(block.id)}">{_e(block.text)}</p>')
            continue
        parts.append(_figure_html(block))
    missing = [f"{a.title} ({a.name})" for a in list_analyses() if a.name not in run.analyses]
    note = ""
    if missing:
        note = (f"<p>Analyses not in this run: {', '.join(missing)}; add them with "
                "<code>headbench analyze RUN_DIR</code> (see <code>--help</code>).</p>")
    return "\n".join(parts) + note


def _other_analysis_html(name: str, section: Any) -> str:
    """An analysis the report has no plot for (a plugin's): its title and description, its
    plain values as a table, the rest as JSON."""
    section = section if isinstance(section, dict) else {"value": section}
    title = section.get("title") if isinstance(section.get("title"), str) else name
    about = section.get("description")
    values = {k: v for k, v in section.items() if k not in ("title", "description")}
    plain = {k: v for k, v in values.items()
             if v is None or isinstance(v, (str, int, float, bool))}
    rest = {k: v for k, v in values.items() if k not in plain}
    parts = [f"<h3>{_e(title)}</h3>"]
    if isinstance(about, str):
        parts.append(f"<p>{_e(about)}</p>")
    if plain:
        parts.append(_kv_table([(_e(k), _e(v)) for k, v in plain.items()]))
    if rest:
        text = json.dumps(rest, indent=1, ensure_ascii=False, default=str)
        if len(text) > JSON_CHARS:
            text = (text[:JSON_CHARS]
                    + f"\n… ({len(text) - JSON_CHARS} more characters in results.json)")
        parts.append(f"<details><summary>values (JSON, from results.json)</summary>"
                     f"<pre>{_e(text)}</pre></details>")
    return f'<div class="analysis" id="analysis-{_slug(name)}">{"".join(parts)}</div>'


# ----------------------------------------------------------------------------------------------
# one section per head

def _head_html(run: Run, head: HeadResult) -> str:
    badge = ' <span class="badge">best</span>' if head.head == run.best_head else ""
    parts = [f"<h4>Architecture</h4><pre>{_e(head.architecture)}</pre>",
             f"<h4>Parameters and cost</h4>{_cost_html(run, head)}",
             f"<h4>Seeds</h4>{_seeds_html(head)}",
             _top_loss_html(run, head),
             *(_gallery_html(run, g) for g in head_galleries(run, head.head))]
    return (f'<details class="head" id="head-{_slug(head.head)}"><summary>'
            f"<strong>{_e(head.head)}</strong> — test accuracy "
            f"{_e(pct(head.summary.test_accuracy))}{badge}</summary>{''.join(parts)}</details>")


def _halving_note(run: Run, head: HeadResult) -> str:
    """Why some settings' val losses are not their converged ones (`train.halving`)."""
    halving = run.train_config.halving
    if not halving or len(head.sweep or {}) < 2:
        return ""
    return (f" (settings outside the better half at epoch {halving} stopped there: "
            "successive halving)")


def _cost_html(run: Run, head: HeadResult) -> str:
    sweep = ", ".join(f"{k}: {v:.4f}" if finite(v) else f"{k}: —"
                      for k, v in (head.sweep or head.wd_sweep).items())
    chosen = (f"lr {head.lr:g}, " if head.lr is not None else "") + f"wd {head.weight_decay:g}"
    size = head.model_size_bytes
    pairs = [("head params", count(head.head_params)),
             ("backbone params", count(run.backbone_of(head).params)),
             ("total params", count(head.total_params)),
             ("head FLOPs", count(head.head_flops)),
             ("total FLOPs", count(head.total_flops)),
             ("model size on disk", count(size) + "B" if finite(size) else "—"),
             ("latency b1 / throughput b32",
              f"{ms(head.latency_ms_b1)}{_spread(head)} / {rate(head.throughput_b32)}"),
             ("setting (chosen on val)", _e(chosen)
              + (f" — best val loss of each: {_e(sweep)}" if sweep else "")
              + _halving_note(run, head)),
             ("fixed input size", "yes" if head.fixed_size else "no"),
             ("saved model", f"<code>{_e(head.model_dir)}</code>")]
    return _kv_table(pairs)


def _spread(head: HeadResult) -> str:
    """' (interquartile range a–b; other processes used c cores)' when measured."""
    parts = []
    if head.latency_range_ms_b1:
        low, high = head.latency_range_ms_b1
        parts.append(f"interquartile range {ms(low)}–{ms(high)}")
    if head.latency_other_cores is not None:
        parts.append(f"other processes used {head.latency_other_cores:.1f} cores meanwhile")
    return f" ({'; '.join(parts)})" if parts else ""


def _seeds_html(head: HeadResult) -> str:
    if not head.seeds:
        return "<p>No per-seed results recorded.</p>"
    cols = ["seed", "best epoch", "epochs run", "train acc", "val acc", "test acc", "test NLL",
            "test ECE", "train time"]
    rows = []
    for s in head.seeds:
        acc = [f"{100 * m.accuracy:.1f}%" for m in (s.train, s.val, s.test)]
        cells = [s.seed, s.best_epoch, s.epochs_run, *acc, f"{s.test.nll:.3f}",
                 f"{s.test.ece:.3f}", seconds(s.train_time_s)]
        mark = ' class="best"' if s.seed == head.best_seed else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head_row = "".join(f"<th>{c}</th>" for c in cols)
    return (f'<table class="grid"><thead><tr>{head_row}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table><p>Highlighted: the seed whose weights were saved "
            "(lowest val loss).</p>")


def _top_loss_html(run: Run, head: HeadResult) -> str:
    """The test images of the best seed with the highest loss, as thumbnails."""
    p = run.predictions.get(head.head)
    if p is None:
        return ""
    row = p.of_seed(head.best_seed)
    test, classes = run.dataset.splits["test"], run.classes
    figures, missing = [], 0
    for i in np.argsort(-p.loss[row], kind="stable")[:TOP_LOSS_IMAGES]:
        src = jpeg_data(run.dataset.path("test", i), THUMB_PX)
        if src is None:
            missing += 1
            continue
        rel = test.paths[i]
        figures.append(
            f'<figure class="thumb"><img src="{src}" alt="{_e(rel)}" title="{_e(rel)}">'
            f"<figcaption>true <b>{_e(classes[test.labels[i]])}</b><br>"
            f"pred <b>{_e(classes[p.pred[row, i]])}</b> (p={p.p_pred[row, i]:.2f})<br>"
            f"loss {p.loss[row, i]:.2f}</figcaption></figure>")
    note = (f"<p>{missing} image(s) not found under <code>{_e(run.dataset.root)}</code>.</p>"
            if missing else "")
    return (f"<h4>Highest-loss test images (seed {_e(head.best_seed)})</h4>"
            f'<div class="thumbs">{"".join(figures)}</div>{note}')


def _gallery_html(run: Run, gallery: Gallery) -> str:
    """The gallery's images as thumbnails, files inside the run folder only."""
    figures = []
    for rel, caption in gallery.images:
        path = _inside(Path(run.run_dir), str(rel))
        src = jpeg_data(path, GALLERY_PX) if path else None
        if src is None:
            continue
        alt = f"{gallery.alt} {caption}" if gallery.alt else caption
        figures.append(f'<figure class="{_e(gallery.css)}"><img src="{src}" alt="{_e(alt)}">'
                       f"<figcaption>{_e(caption)}</figcaption></figure>")
    if not figures:
        return ""
    return f'<h4>{_e(gallery.title)}</h4><div class="thumbs">{"".join(figures)}</div>'


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1em 1.5em;color:#222;background:#fff}
h1{font-size:1.6em;margin:.2em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h4{margin:1em 0 .4em}nav{margin-bottom:1em}
code,pre{font:13px/1.35 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:30em}
table{border-collapse:collapse;margin:.4em 0}
th,td{padding:.25em .7em;text-align:left;vertical-align:top}
table.grid th,table.grid td{border-bottom:1px solid #e4e4e4}td.num{text-align:right;
font-variant-numeric:tabular-nums}table.kv th{font-weight:600;white-space:nowrap;color:#444}
tr.best td{background:#e6f4ea;font-weight:600}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap;background:#f3f3f3}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
li.significant{font-weight:600}.warn{color:#a40000;font-weight:600}
figure{margin:1.2em 0}img.plot{max-width:100%;height:auto;display:block}
figure p{color:#555;margin:.3em 0;max-width:60em}
.thumbs{display:flex;flex-wrap:wrap;gap:.8em}.thumbs figure{margin:0;width:140px;font-size:12px}
.thumbs figure.cam{width:236px}.thumbs img{width:100%;display:block}
details.head{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.5em 0}
details.head>summary{cursor:pointer}.badge{background:#2e7d32;color:#fff;border-radius:3px;
padding:0 .4em;font-size:12px}.js-only{display:none}.js .js-only{display:inline}
button{margin-right:.5em}footer{margin-top:2em;color:#777;font-size:12px}
"""

# Sorting and expand/collapse only; the page is complete without it.
_JS = r"""
(function () {
  document.documentElement.className += ' js';
  function key(cell) {
    var v = cell.getAttribute('data-value');
    if (v === null || v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === 'number' && typeof b === 'number') return a - b;
    return String(a).localeCompare(String(b));
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = key(r1.cells[col]), b = key(r2.cells[col]);
          if (a === null || b === null) return compare(a, b);  // blanks last either way
          return asc ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); }
      });
    });
  });
  var heads = document.getElementById('heads');
  if (heads) {
    var bar = document.createElement('p');
    [['expand all', true], ['collapse all', false]].forEach(function (b) {
      var button = document.createElement('button');
      button.type = 'button';
      button.textContent = b[0];
      button.addEventListener('click', function () {
        heads.querySelectorAll('details.head').forEach(function (d) { d.open = b[1]; });
      });
      bar.appendChild(button);
    });
    heads.insertBefore(bar, heads.children[1]);
  }
})();
"""
