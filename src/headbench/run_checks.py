"""What a run folder says, checked when it is read: a run folder is untrusted input (someone may
send you one), so names that become paths are names, the heads it picks are its own, and the
fields the report and analyses compute with hold what they should; each fault is one line naming
results.json and the field (`Run.load` calls `check_loaded`)."""
from __future__ import annotations

import math
from typing import Any

from . import io as _io
from .data import ROLES
from .errors import HeadbenchError
from .results import Metrics


def check_loaded(run: Any) -> None:
    """Every check of a `run.Run` just read (not imported: run imports this); the first fault
    raises."""
    _check_names(run)
    _check_values(run)


def _check_values(run: Any) -> None:
    """The fields the report and analyses compute with, checked: every seed's metrics on each
    split, the best seed one of the head's, a finite test accuracy, a valid data config."""
    from .export import invalid_fields  # export builds models: only when a run is read
    where = run.run_dir / "results.json"
    for i, head in enumerate(run.heads):
        for j, seed in enumerate(head.seeds):
            for role in ROLES:
                if not isinstance(getattr(seed, role), Metrics):
                    raise HeadbenchError(f"'{where}': heads[{i}].seeds[{j}].{role} is missing; "
                                         "re-run compare")
        seeds = [s.seed for s in head.seeds]
        if head.best_seed not in seeds:
            raise HeadbenchError(f"'{where}': heads[{i}].best_seed {head.best_seed} is not one "
                                 f"of its seeds {seeds}; re-run compare")
        if not math.isfinite(head.summary.test_accuracy.mean):
            raise HeadbenchError(f"'{where}': heads[{i}].summary.test_accuracy.mean is not a "
                                 "number; re-run compare")
    for name in invalid_fields({"data_config": run.backbone.data_config}, ("data_config",)):
        raise HeadbenchError(f"'{where}': backbone.{name} is invalid; re-run compare")
    for i, info in enumerate(run.backbones):
        for name in invalid_fields({"data_config": info.data_config}, ("data_config",)):
            raise HeadbenchError(f"'{where}': backbones[{i}].{name} is invalid; re-run compare")


def _check_names(run: Any) -> None:
    """The names a run folder gives that become paths or pick heads, checked: each head label
    one name (`io.check_name`), its model folder `heads/<label>`, the recommended head one of
    the heads. A run folder is untrusted input: it may come from anyone."""
    where = run.run_dir / "results.json"
    names = [_io.check_name(b.name, f"'{where}': backbones[{i}].name")
             for i, b in enumerate(run.backbones)]
    labels = []
    for i, head in enumerate(run.heads):
        if (head.backbone is not None or names) and head.backbone not in names:
            raise HeadbenchError(f"'{where}': heads[{i}].backbone "
                                 f"{str(head.backbone)[:40]!r} is not one of the run's "
                                 "backbones; re-run compare")
        labels.append(_check_label(head, f"'{where}': heads[{i}]"))
        if head.model_dir != f"heads/{head.head}":
            raise HeadbenchError(f"'{where}': heads[{i}].model_dir {head.model_dir[:80]!r} is not "
                                 f"'heads/{head.head}'; re-run compare")
    chosen = {"best_head": run.best_head,
              "verdict.recommended": run.verdict.recommended if run.verdict else None}
    for key, label in chosen.items():
        if label and label not in labels:
            raise HeadbenchError(f"'{where}': {key} {str(label)[:80]!r} is not a head of the "
                                 "run; re-run compare")


def _check_label(head: Any, where: str) -> str:
    """A head's label: one name, or '<backbone>/<head>' (two names) in a run of several
    backbones, whose first part is the head's `backbone`."""
    parts = head.head.split("/") if head.backbone is not None else [head.head]
    for part in parts:
        _io.check_name(part, f"{where}.head")
    if head.backbone is not None and (len(parts) != 2 or parts[0] != head.backbone):
        raise HeadbenchError(f"{where}.head {head.head[:80]!r} is not '<backbone>/<head>' with "
                             f"its backbone {str(head.backbone)[:40]!r}; re-run compare")
    return head.head
