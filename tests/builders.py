"""Small typed-run builders and file edits shared by tests (not a test module)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from headbench.heads import HeadSpec
from headbench.results import HeadResult, HeadSummary, Metrics, SeedResult


def placeholder_head(label: str, seeds: list[int], n_test: int = 1) -> HeadResult:
    """A registered head's result with flat placeholder metrics: for analyses whose own numbers
    come from the head's weights, not from its recorded metrics."""
    m = Metrics(accuracy=0.5, top5=None, macro_f1=0.5, nll=1.0, ece=0.0, n=n_test)
    runs = [SeedResult(seed=s, best_epoch=1, epochs_run=1, train_time_s=0.0, train=m, val=m,
                       test=m, history=[]) for s in seeds]
    spec = HeadSpec(label)
    return HeadResult(head=label, spec=spec, any_size=spec.info.any_size,
                      exact_cam=spec.info.exact_cam, head_params=0, total_params=0, head_flops=0,
                      total_flops=0, weight_decay=1e-3, wd_sweep={}, best_seed=0,
                      model_dir=f"heads/{label}", model_size_bytes=None, latency_ms_b1=0.0,
                      throughput_b32=0.0, architecture="", seeds=runs,
                      summary=HeadSummary.of(runs))


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    """Rewrite the JSON file at `path` after `change(its value)` (damaging run and model files)."""
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))
