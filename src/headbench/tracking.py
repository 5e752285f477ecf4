"""A finished run in the experiment tracker a team already uses: MLflow or TensorBoard.

`compare(..., log="mlflow")` logs the run once it is complete; `log_run(Run.load(run_dir),
"mlflow=URI,tensorboard")` (the `headbench log` command) logs a run finished earlier. Targets
are `mlflow[=URI]` and `tensorboard[=DIR]`, a comma list or a sequence. Each tracker gets:

- the options of the run as params (TensorBoard: an `options` text and its HPARAMS tab);
- per head, metrics named `<head>/<metric>`: the means over seeds with their 95 % interval
  (`gap/test_accuracy`, `gap/test_accuracy_ci_low`, `gap/test_accuracy_ci_high`), the
  selection score, parameters, FLOPs, latency; the recommended head's again as
  `recommended/<metric>`, and the timings as `timing/<stage>`;
- the learning curves of each head's best seed as step metrics (step: the epoch),
  `<head>/epoch/train_loss`, `.../train_accuracy`, `.../val_loss`, `.../val_accuracy`;
- the verdict: its sentence (MLflow: tag `headbench.verdict` and the run's description) and the
  recommended head (tag `headbench.recommended`, param `recommended_head`);
- MLflow only: report.html, results.json, results.csv, config.json and the recommended model
  folder (artifact `model/`) as artifacts. TensorBoard has no artifact store: it gets the
  verdict and a table of the heads as text summaries, and the run folder stays the record.

Head labels are written with the characters MLflow refuses in names (`[`, `,`, `+`) as `_`.
MLflow's default store is `sqlite:///<out>/mlflow.db` (with artifacts in `<out>/mlartifacts`),
unless `MLFLOW_TRACKING_URI` is set; the experiment is `MLFLOW_EXPERIMENT_NAME`, else
"headbench". TensorBoard writes to `DIR/<run name>` (default DIR: `<out>/tensorboard`), where
`<out>` is the folder holding `runs/`. MLflow's telemetry is off unless the user set
`MLFLOW_DISABLE_TELEMETRY`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import progress
from .checks import items
from .errors import HeadbenchError, unknown

TARGETS = ("mlflow", "tensorboard")
_MODULES = {"mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard"}
EXPERIMENT = "headbench"  # MLflow experiment when MLFLOW_EXPERIMENT_NAME is not set
ARTIFACTS = ("report.html", "results.json", "results.csv", "config.json")
# summary field of a head -> metric name (means over seeds, with their intervals)
_SUMMARY = {"test_accuracy": "test_accuracy", "val_accuracy": "val_accuracy",
            "train_accuracy": "train_accuracy", "overfit_gap": "overfit_gap",
            "macro_f1": "test_macro_f1", "nll": "test_nll", "ece": "test_ece",
            "top5": "test_top5"}
_COSTS = ("head_params", "total_params", "head_flops", "total_flops", "latency_ms_b1",
          "throughput_b32", "model_size_bytes", "lr", "weight_decay", "best_seed")
_CURVES = {"train_loss": "train_loss", "train_acc": "train_accuracy", "val_loss": "val_loss",
           "val_acc": "val_accuracy"}


# ----------------------------------------------------------------------------------------------
# targets

def parse_targets(value: Any, param: str = "log") -> tuple[str, ...]:
    """`mlflow[=URI]` / `tensorboard[=DIR]` targets from a comma list or a sequence of them,
    each once (a TensorBoard DIR made absolute).

    >>> parse_targets(["mlflow", "tensorboard,MLflow"])
    ('mlflow', 'tensorboard')
    """
    parts = [p for v in (value if isinstance(value, (list, tuple)) else [value])
             for p in items(v)]
    found = []
    for part in parts:
        name, eq, where = (s.strip() for s in part.partition("="))
        name = name.lower()
        if name not in TARGETS:
            raise unknown("tracker", name, TARGETS, param=param)
        if eq and not where:
            raise HeadbenchError(f"{param} '{part}' has nothing after '='; give {name}="
                                 f"{'URI' if name == 'mlflow' else 'DIR'}, or {name} alone for "
                                 "its default", param=param)
        if name == "tensorboard" and where:
            where = str(Path(where).expanduser().resolve())
        found.append(f"{name}={where}" if where else name)
    return tuple(dict.fromkeys(found))


def check_available(targets: Iterable[str], param: str = "log") -> None:
    """One line naming the extra to install when a tracker's package cannot be imported."""
    for target in targets:
        name = target.partition("=")[0]
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _missing(name, param)


def _missing(name: str, param: str) -> HeadbenchError:
    return HeadbenchError(f"logging to {name} needs the {name} package: pip install "
                          f"'headbench[{name}]'", param=param)


def _import(name: str) -> Any:
    if name == "mlflow":
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        raise _missing(name, "log") from None


# ----------------------------------------------------------------------------------------------
# logging a run

def log_run(run: Any, targets: Any) -> list[str]:
    """Log the finished `run.Run` to each target (see the module's docstring); returns one line
    per target saying where it went. A tracker's failure is a one-line HeadbenchError."""
    targets = parse_targets(targets)
    check_available(targets)
    done = []
    for target in targets:
        name, _, where = target.partition("=")
        try:
            done.append(_LOGGERS[name](run, where or None))
        except HeadbenchError:
            raise
        except Exception as e:  # the tracker's own errors: a server down, a refused store
            raise HeadbenchError(f"{name} could not log the run '{run.run_dir}' "
                                 f"({_reason(e)})") from None
    return done


def log_finished(run: Any) -> None:
    """After compare: log the complete run to its `log` targets; a failure is a warning (the
    run folder is complete and can be logged again)."""
    if not run.options.log:
        return
    try:
        for line in log_run(run, run.options.log):
            progress.log(line)
    except HeadbenchError as e:
        progress.warn(f"{e}; the run is complete in {run.run_dir}: log it again with "
                      f"headbench log {run.run_dir}")


def _reason(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _out(run: Any) -> Path:
    """The folder holding the run's `runs/` (the compare's `out`, wherever the run now lies)."""
    return Path(run.run_dir).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# what is logged, for both trackers

def metric_key(*parts: str) -> str:
    """A metric name from a head label and a metric, in characters MLflow accepts.

    >>> metric_key("resnet50/gap[1024,512]+aug4", "test_accuracy")
    'resnet50/gap_1024_512__aug4/test_accuracy'
    """
    return "/".join(re.sub(r"[^\w.\- :/]", "_", p) for p in parts)


def head_metrics(run: Any, head: Any) -> dict[str, float]:
    """{metric: value} of one head: summary means with intervals, selection score, costs."""
    out: dict[str, float] = {}
    for field, name in _SUMMARY.items():
        ci = getattr(head.summary, field)
        if ci is not None:
            out[name] = ci.mean
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci.lo, ci.hi
    out["train_time_s"] = head.summary.train_time_s
    for name in _COSTS:
        out[name] = getattr(head, name)
    verdict = run.verdict
    if verdict is not None and head.head in verdict.scores:
        out["selection_score"] = verdict.scores[head.head]
        out["selection_se"] = verdict.se.get(head.head)
    return {k: float(v) for k, v in out.items() if _finite(v)}


def scalars(run: Any) -> Iterator[tuple[str, float, int]]:
    """(name, value, step) of every metric: step 0 for the summaries, the epoch for curves."""
    for head in run.heads:
        for name, value in head_metrics(run, head).items():
            yield metric_key(head.head, name), value, 0
        best = next((s for s in head.seeds if s.seed == head.best_seed), None)
        for epoch in best.history if best is not None else []:
            for field, name in _CURVES.items():
                value = getattr(epoch, field)
                if _finite(value):
                    yield metric_key(head.head, "epoch", name), float(value), epoch.epoch
    if run.best_head:
        for name, value in head_metrics(run, run.head(run.best_head)).items():
            yield f"recommended/{name}", value, 0
    for name, value in dataclasses.asdict(run.timing).items():
        if _finite(value):
            yield f"timing/{name}", float(value), 0


def params(run: Any) -> dict[str, str | int | float | bool]:
    """The run's options (heads by label; the trackers themselves left out) and the facts
    that were resolved from them."""
    options = run.options.to_dict()
    options["heads"] = [h.label for h in run.options.heads]
    options.pop("log", None)  # where the run is logged, perhaps with credentials
    out = {k: _flat(v) for k, v in options.items()}
    bb = run.backbone
    out.update({"resolved.backbone": run.backbone_names, "resolved.timm_name": bb.timm_name,
                "resolved.weights": bb.weights, "resolved.precision": run.precision,
                "resolved.device": run.device, "headbench_version": run.headbench_version,
                "dataset.name": run.dataset.name, "dataset.classes": len(run.classes),
                **{f"dataset.{role}": len(split) for role, split in run.dataset.splits.items()},
                "recommended_head": run.best_head or "none"})
    return out


def tags(run: Any) -> dict[str, str]:
    tags = {"headbench.run_dir": str(Path(run.run_dir).resolve()),
            "headbench.version": run.headbench_version, "headbench.created": run.created,
            "headbench.recommended": run.best_head or "none"}
    if run.verdict is not None:
        tags.update({"headbench.verdict": run.verdict.text, "mlflow.note.content":
                     run.verdict.text, "headbench.selection": run.verdict.selection,
                     "headbench.rule": run.verdict.rule})
    return tags


def table(run: Any) -> str:
    """The heads as a Markdown table: test accuracy with its interval, val, costs."""
    rows = ["| head | test accuracy (95 % CI over seeds) | val accuracy | head params | "
            "head FLOPs | latency ms (batch 1) |", "|---|---|---|---|---|---|"]
    for h in run.heads:
        acc = h.summary.test_accuracy
        ci = f" [{acc.lo:.4f}, {acc.hi:.4f}]" if acc.lo is not None else ""
        mark = " (recommended)" if h.head == run.best_head else ""
        rows.append(f"| {h.head}{mark} | {acc.mean:.4f}{ci} | {h.summary.val_accuracy.mean:.4f} "
                    f"| {h.head_params:,} | {h.head_flops:,} | {h.latency_ms_b1:.3f} |")
    return "\n".join(rows)


def _flat(value: Any) -> str | int | float | bool:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


# ----------------------------------------------------------------------------------------------
# MLflow

def _to_mlflow(run: Any, uri: str | None) -> str:
    mlflow = _import("mlflow")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or _default_uri(run)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    with _store_setup_quiet():
        client = mlflow.tracking.MlflowClient(uri)
        experiment = _experiment(client, name, uri)
    run_id = client.create_run(experiment, run_name=Path(run.run_dir).name).info.run_id
    try:
        _mlflow_values(client, run_id, run)
        _mlflow_artifacts(client, run_id, run)
    except BaseException:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception:
            pass
        raise
    client.set_terminated(run_id)
    return f"logged to mlflow: run {run_id} in experiment '{name}' at {uri}"


@contextlib.contextmanager
def _store_setup_quiet() -> Iterator[None]:
    """MLflow announces at INFO that it creates (and migrates) a new store's tables; the line
    headbench prints says where the run went. Warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _default_uri(run: Any) -> str:
    return f"sqlite:///{(_out(run) / 'mlflow.db').as_posix()}"


def _experiment(client: Any, name: str, uri: str) -> str:
    """The experiment's id, created when missing (beside a SQLite store, its artifacts in
    `mlartifacts/` next to the database, not in the working directory)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # made meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _mlflow_values(client: Any, run_id: str, run: Any) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils import validation as limits
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, step) for k, v, step in scalars(run)]
    values = [Param(k, str(v)[:limits.MAX_PARAM_VAL_LENGTH]) for k, v in params(run).items()]
    labels = [RunTag(k, v[:limits.MAX_TAG_VAL_LENGTH]) for k, v in tags(run).items()]
    n, m = limits.MAX_PARAMS_TAGS_PER_BATCH, limits.MAX_METRICS_PER_BATCH
    for i in range(0, len(values), n):
        client.log_batch(run_id, params=values[i:i + n])
    for i in range(0, len(labels), n):
        client.log_batch(run_id, tags=labels[i:i + n])
    for i in range(0, len(metrics), m):
        client.log_batch(run_id, metrics=metrics[i:i + m])


def _mlflow_artifacts(client: Any, run_id: str, run: Any) -> None:
    """The run folder's tables and report, and the recommended model folder as `model/`."""
    run_dir = Path(run.run_dir)
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if not run.best_head:
        return
    with tempfile.TemporaryDirectory(prefix="headbench-model-") as tmp:
        client.log_artifacts(run_id, str(_model_folder(run, Path(tmp))), artifact_path="model")


def _model_folder(run: Any, tmp: Path) -> Path:
    """The recommended model folder, self-contained: when its backbone weights lie outside it
    (a local weights file), a copy with them inside."""
    source = run.model_dir()
    meta = json.loads((source / "model.json").read_text())
    file = (meta.get("backbone") or {}).get("file")
    if not file:
        return source
    copy = tmp / source.name
    shutil.copytree(source, copy)
    shutil.copy2(source / file, copy / "backbone.safetensors")
    meta["backbone"]["file"] = "backbone.safetensors"
    (copy / "model.json").write_text(json.dumps(meta, indent=2))
    return copy


# ----------------------------------------------------------------------------------------------
# TensorBoard

def _to_tensorboard(run: Any, root: str | None) -> str:
    """Scalars (summaries at step 0, curves by epoch), the verdict, the heads' table and the
    options as text, the options in the HPARAMS tab. No artifacts: TensorBoard has no store."""
    board = _import("tensorboard")
    from torch.utils.tensorboard.summary import hparams
    logdir = _free_dir(Path(root) if root else _out(run) / "tensorboard",
                       Path(run.run_dir).name)
    writer = board.SummaryWriter(str(logdir))
    try:
        for name, value, step in scalars(run):
            writer.add_scalar(name, value, step)
        if run.verdict is not None:
            writer.add_text("verdict", run.verdict.text)
        writer.add_text("recommended", run.best_head or "none")
        writer.add_text("heads", table(run))
        values = params(run)
        writer.add_text("options", "\n".join(["| option | value |", "|---|---|"] + [
            f"| {k} | {v} |" for k, v in values.items()]))
        if run.best_head:
            best = run.head(run.best_head).summary.test_accuracy.mean
            for summary in hparams(values, {"recommended/test_accuracy": best}):
                writer.file_writer.add_summary(summary)
    finally:
        writer.close()
    return f"logged to tensorboard: {logdir} (tensorboard --logdir {logdir.parent})"


def _free_dir(root: Path, name: str) -> Path:
    """`root/name`, or `root/name-2`, ... when a run was logged there before."""
    path, n = root / name, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = root / f"{name}-{n}"
    return path


_LOGGERS = {"mlflow": _to_mlflow, "tensorboard": _to_tensorboard}

__all__ = ["TARGETS", "check_available", "head_metrics", "log_finished", "log_run", "metric_key",
           "params", "parse_targets", "scalars", "table", "tags"]
