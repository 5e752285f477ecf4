"""The run: everything one `compare` produced, as one typed object with one writer and one reader.

`compare` builds a `Run`, the analyses add sections to it, `report` and `export` read it.
`Run.save(run_dir)` is the only writer of the run folder's tables (config.json, dataset.json,
results.json, results.csv, per_class.csv, predictions.csv, skipped.csv) and `Run.load(run_dir)`
the only reader. Test predictions are held as arrays per head (seeds × test images), so a run of
100,000 images stays small in memory. results.json carries `schema` and `schema_version`; its
JSON Schema ships with the package (`results_schema()`, generated from these dataclasses, see
docs/DESIGN.md).

The parts (head results, metrics, predictions, dataset) are the dataclasses of `results.py`.
Model weights are not tables: `heads/<head>/` is written and read by `export`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import io as _io
from . import progress
from .config import CompareConfig
from .data import ROLES
from .run_checks import check_loaded
from .typed_json import from_json, json_schema, to_json
from .errors import HeadbenchError
from .results import (CI, BackboneInfo, ClassMetrics, DatasetInfo, Finding, HeadResult,
                      HeadSummary, Metrics, Predictions, SeedResult, SplitItems, Timing, Variant,
                      Verdict, per_class_of)
from .runtime import machine
from .train import EpochLog, Member, TrainConfig, TrainResult
from .version import __version__

SCHEMA = "headbench-run"
SCHEMA_VERSION = 5
# schema 2 added each head's `lr` and `sweep` (the learning-rate sweep), `verdict`; schema 3 a
# finding's Holm `family` and `n_tests`, and its `image_ci` (schema 2's `bootstrap_ci`); schema
# 4 runs of several backbones (`backbones`, `best`, each head's `backbone`) and the backbone's
# `latency_range_ms_b1`; schema 5 each head's `per_class` (and per_class.csv), its
# `latency_range_ms_b1` and `latency_other_cores`
READS = (1, 2, 3, 4, 5)
PREDICTION_COLUMNS = ["head", "seed", "index", "path", "label", "pred", "p_pred", "p_label", "loss"]
PER_CLASS_COLUMNS = ["head", "backbone", "seed", "class_name", "precision", "recall", "f1",
                     "support"]


# ----------------------------------------------------------------------------------------------
# the run

@dataclass
class Run:
    """One run folder in memory. Build it with compare; `Run.load(run_dir)` reads one back."""

    options: CompareConfig
    dataset: DatasetInfo
    backbone: BackboneInfo
    precision: str
    device: str
    train_config: TrainConfig
    machine: dict = field(default_factory=machine)
    timing: Timing = field(default_factory=Timing)
    heads: list[HeadResult] = field(default_factory=list)
    predictions: dict[str, Predictions] = field(default_factory=dict)
    best_head: str | None = None     # the recommended head (`verdict.recommended`)
    # a run of several backbones: each one's facts (`backbone` is then the first's); empty: one
    backbones: list[BackboneInfo] = field(default_factory=list)
    # pairs not trained because the backbone does not accept the head: {backbone, head, reason}
    skipped_pairs: list[dict] = field(default_factory=list)
    verdict: Verdict | None = None   # None in runs of schema 1
    findings: list[Finding] = field(default_factory=list)
    analyses: dict[str, dict] = field(default_factory=dict)
    headbench_version: str = ""
    options_digest: str = ""       # what the heads were trained with (see CompareConfig.digest)
    feature_digest: str = ""       # which features: cache entry and the images of every split
    created: str = ""
    run_dir: Path | None = None
    # every seed's head weights while compare runs ({head: {seed: state_dict}}), for the
    # analyses; never serialised here (heads/<head>/seed<k>.safetensors is export's)
    states: dict[str, dict] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.headbench_version = self.headbench_version or __version__
        self.created = self.created or _dt.datetime.now().isoformat(timespec="seconds")

    # --- reading --------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.heads[0].seeds] if self.heads else []

    def head(self, label: str) -> HeadResult:
        for h in self.heads:
            if h.head == label:
                return h
        raise HeadbenchError(f"run has no head '{label}'; its heads: "
                             f"{', '.join(h.head for h in self.heads)}")

    def model_dir(self, label: str | None = None) -> Path:
        """Folder of the saved model of head `label` (default: the selected head)."""
        return Path(self.run_dir) / self.head(label or self.best_head).model_dir

    @property
    def backbone_names(self) -> str:
        """The backbone's name, or the names of the run's backbones, comma-separated."""
        return ", ".join(b.name for b in self.backbones) or self.backbone.name

    def backbone_of(self, head: HeadResult) -> BackboneInfo:
        """The backbone head `head` runs on."""
        if head.backbone is None:
            return self.backbone
        return next(b for b in self.backbones if b.name == head.backbone)

    def analysed_backbone(self) -> BackboneInfo:
        """The backbone whose heads the analyses are about: the run's, or of several the
        recommended pair's."""
        best = self.selected()
        return self.backbone_of(best) if best is not None else self.backbone

    @property
    def best(self) -> dict[str, str | None] | None:
        """The recommended pair, {backbone, head} (head: its own label)."""
        if not self.best_head:
            return None
        head = self.head(self.best_head)
        return dict(backbone=head.backbone or self.backbone.name, head=head.name)

    def selected(self) -> HeadResult | None:
        """The head chosen on val (`best_head`)."""
        return self.head(self.best_head) if self.best_head else None

    def labels(self, role: str) -> np.ndarray:
        return self.dataset.splits[role].labels

    def correct(self, label: str) -> np.ndarray:
        """(S, N) per-seed, per-test-image correctness of head `label`."""
        return self.predictions[label].correct(self.labels("test"))

    def per_class(self, head: HeadResult) -> list[ClassMetrics] | None:
        """`head.per_class`, else computed from its best seed's test predictions (a run built
        by hand, or before schema 5); None when the run has none."""
        if head.per_class is not None or head.head not in self.predictions:
            return head.per_class
        return per_class_of(self.predictions[head.head], head.best_seed, self.labels("test"),
                            self.classes)

    # --- writing --------------------------------------------------------------------------
    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write every table of the run folder (atomically, file by file)."""
        run_dir = self._dir(run_dir)
        _io.atomic_write_json(run_dir / "config.json", self._config_json())
        _io.atomic_write_json(run_dir / "dataset.json", self._dataset_json())
        _io.atomic_write_csv(run_dir / "skipped.csv",
                             [dict(path=p, reason=r) for p, r in self.dataset.skipped],
                             ["path", "reason"])
        _io.atomic_write_csv(run_dir / "predictions.csv", self._prediction_rows(),
                             PREDICTION_COLUMNS)
        self.save_results(run_dir)
        return run_dir

    def save_results(self, run_dir: str | Path | None = None) -> Path:
        """Write results.json, results.csv and per_class.csv (after analyses or findings
        changed)."""
        run_dir = self._dir(run_dir)
        for head in self.heads:  # a head built without them: from its predictions
            head.per_class = self.per_class(head)
        _io.atomic_write_json(run_dir / "results.json", self.results_json())
        _io.atomic_write_csv(run_dir / "results.csv", self._csv_rows())
        columns = PER_CLASS_COLUMNS if self.backbones else [c for c in PER_CLASS_COLUMNS
                                                            if c != "backbone"]
        _io.atomic_write_csv(run_dir / "per_class.csv", self._per_class_rows(), columns)
        return run_dir

    def _dir(self, run_dir: str | Path | None) -> Path:
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        if self.run_dir is None:
            raise ValueError("Run.save needs a run folder")
        return self.run_dir

    def results_json(self) -> dict:
        several = (dict(backbones=to_json(self.backbones), best=self.best,
                        skipped_pairs=self.skipped_pairs) if self.backbones else {})
        return dict(schema=SCHEMA, schema_version=SCHEMA_VERSION,
                    headbench_version=self.headbench_version, created=self.created,
                    run_dir=str(self.run_dir), dataset=self.dataset.summary(),
                    backbone=to_json(self.backbone), precision=self.precision, device=self.device,
                    machine=self.machine, timing=to_json(self.timing),
                    train_config=self.train_config.to_dict(), heads=to_json(self.heads),
                    best_head=self.best_head, verdict=to_json(self.verdict),
                    findings=to_json(self.findings), options_digest=self.options_digest,
                    feature_digest=self.feature_digest,
                    analyses=to_json(self.analyses), **several)

    def _config_json(self) -> dict:
        bb = self.backbone
        return dict(schema=SCHEMA, schema_version=SCHEMA_VERSION, options=self.options.to_dict(),
                    resolved=dict(backbone=bb.name, timm_name=bb.timm_name, weights=bb.weights,
                                  weights_checksum=bb.weights_checksum, data_config=bb.data_config,
                                  precision=self.precision, device=self.device,
                                  input_size=bb.data_config["input_size"][-1]))

    def _dataset_json(self) -> dict:
        items = [dict(path=split.paths[i], label=int(split.labels[i]), digest=split.digests[i],
                      role=role)
                 for role, split in self.dataset.splits.items() for i in range(len(split))]
        return dict(schema=SCHEMA, schema_version=SCHEMA_VERSION, **self.dataset.summary(),
                    items=items)

    def _prediction_rows(self) -> list[dict]:
        test, classes = self.dataset.splits["test"], self.classes
        rows = []
        for label, p in self.predictions.items():
            for s, seed in enumerate(p.seeds):
                for i in range(len(test)):
                    rows.append(dict(head=label, seed=seed, index=i, path=test.paths[i],
                                     label=classes[test.labels[i]], pred=classes[p.pred[s, i]],
                                     p_pred=_num(p.p_pred[s, i]), p_label=_num(p.p_label[s, i]),
                                     loss=_num(p.loss[s, i])))
        return rows

    def _per_class_rows(self) -> list[dict]:
        """One row per head and class: the best seed's test metrics (`HeadResult.per_class`)."""
        return [dict(head=h.head, backbone=h.backbone, seed=h.best_seed, **to_json(c))
                for h in self.heads for c in h.per_class or []]

    def _csv_rows(self) -> list[dict]:
        rows = []
        for h in self.heads:
            base = dict(head=h.head, **({"backbone": h.backbone} if h.backbone else {}),
                        head_params=h.head_params, total_params=h.total_params,
                        head_flops=h.head_flops, weight_decay=h.weight_decay)
            for s in h.seeds:
                rows.append(dict(base, seed=s.seed, test_accuracy=s.test.accuracy,
                                 test_top5=s.test.top5, test_macro_f1=s.test.macro_f1,
                                 test_nll=s.test.nll, test_ece=s.test.ece,
                                 train_accuracy=s.train.accuracy, val_accuracy=s.val.accuracy,
                                 overfit_gap=s.train.accuracy - s.test.accuracy,
                                 best_epoch=s.best_epoch, train_time_s=s.train_time_s))
            m = h.summary
            rows.append(dict(base, seed="mean", test_accuracy=m.test_accuracy.mean,
                             test_accuracy_lo=m.test_accuracy.lo, test_accuracy_hi=m.test_accuracy.hi,
                             test_top5=m.top5.mean if m.top5 else None,
                             test_macro_f1=m.macro_f1.mean, test_nll=m.nll.mean, test_ece=m.ece.mean,
                             train_accuracy=m.train_accuracy.mean, val_accuracy=m.val_accuracy.mean,
                             overfit_gap=m.overfit_gap.mean, train_time_s=m.train_time_s,
                             latency_ms_b1=h.latency_ms_b1, throughput_b32=h.throughput_b32,
                             model_size_bytes=h.model_size_bytes))
        return rows

    # --- reading back ---------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path) -> "Run":
        """Read a run folder written by `save`; one-line errors for anything else."""
        run_dir = Path(run_dir)
        results = _read_json(run_dir, "results.json")
        config = _read_json(run_dir, "config.json")
        dataset = _read_json(run_dir, "dataset.json")
        try:
            run = cls(options=CompareConfig.from_dict(config["options"]),
                      dataset=_dataset_from_json(dataset, _read_skipped(run_dir)),
                      backbone=from_json(BackboneInfo, results["backbone"]),
                      precision=results["precision"], device=results["device"],
                      train_config=TrainConfig.from_dict(results["train_config"]),
                      machine=results["machine"], timing=from_json(Timing, results["timing"]),
                      heads=from_json(list[HeadResult], results["heads"]),
                      best_head=results["best_head"],
                      backbones=from_json(list[BackboneInfo], results.get("backbones", [])),
                      skipped_pairs=list(results.get("skipped_pairs", [])),
                      verdict=from_json(Verdict | None, results.get("verdict")),
                      options_digest=results["options_digest"],
                      feature_digest=results["feature_digest"],
                      findings=from_json(list[Finding], _findings_v3(results["findings"])),
                      analyses=results["analyses"], headbench_version=results["headbench_version"],
                      created=results["created"], run_dir=run_dir)
        except HeadbenchError as e:
            raise HeadbenchError(f"run folder '{run_dir}' cannot be read: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HeadbenchError(f"results of '{run_dir}' are damaged ({type(e).__name__}: {e}); "
                                 "re-run compare") from None
        check_loaded(run)
        run.predictions = _read_predictions(run_dir, run)
        for head in run.heads:  # before schema 5: from the stored predictions
            head.per_class = run.per_class(head)
        return run


# ----------------------------------------------------------------------------------------------
# the run folder's life: created incomplete, committed head by head, marked complete

def finished_heads(run: "Run") -> dict[str, tuple]:
    """{label: (HeadResult, Predictions, states)} committed by an interrupted run of the same
    options into `run.run_dir` (the run compare is making), reused only when its features were
    the same."""
    if not (run.run_dir / "results.json").exists():
        return {}
    from .export import load_head_weights  # export builds models: only when resuming
    try:
        prior = Run.load(run.run_dir)
        if prior.feature_digest != run.feature_digest:
            progress.warn(f"the images or features changed since the interrupted run in "
                           f"{run.run_dir}: retraining every head there")
            return {}
        out = {}
        for head in prior.heads:
            states = {s.seed: load_head_weights(
                run.run_dir / head.model_dir / f"seed{s.seed}.safetensors") for s in head.seeds}
            out[head.head] = (head, prior.predictions[head.head], states)
    except HeadbenchError as e:
        progress.warn(f"cannot reuse the interrupted run in {run.run_dir} ({e}); retraining")
        return {}
    if out:
        progress.log(f"reusing {len(out)} finished head(s): {', '.join(out)}")
    return out



INCOMPLETE = ".incomplete"  # present until the run is complete; holds the options digest
LOCK = ".lock"              # the run folder's writer lock (compare holds it while it runs)


def start_run_dir(out: str | Path, name: str, options_digest: str) -> Path:
    """A new, empty run folder `out/runs/name[-N]`, marked incomplete."""
    base = Path(out) / "runs" / name
    run_dir, n = base, 1
    while True:
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    _io.atomic_write_text(run_dir / INCOMPLETE, options_digest + "\n")
    return run_dir


def is_complete(run_dir: str | Path) -> bool:
    return not (Path(run_dir) / INCOMPLETE).exists()


def mark_complete(run_dir: str | Path) -> None:
    (Path(run_dir) / INCOMPLETE).unlink(missing_ok=True)
    _io.fsync_dir(run_dir)


MEMBERS = "members"  # finished training runs of an incomplete run, until their heads commit


def _member_file(run_dir: Path, member: Member) -> Path:
    lr = "" if member.lr is None else f"lr{member.lr:g}-"
    fold = "" if member.fold is None else f"-fold{member.fold}"
    name = f"{lr}wd{member.weight_decay:g}-seed{member.seed}{fold}.safetensors"
    return Path(run_dir) / MEMBERS / member.head / name


def save_member(run_dir: str | Path, member: Member, result: TrainResult,
                feature_digest: str) -> None:
    """Commit one finished training run (weights and history) so a rerun need not repeat it."""
    meta = {"member": dataclasses.asdict(member), "feature_digest": feature_digest,
            "result": {f.name: to_json(getattr(result, f.name))
                       for f in dataclasses.fields(result) if f.name != "state_dict"}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
    _io.atomic_write_safetensors(_member_file(Path(run_dir), member), tensors,
                                 {"headbench": json.dumps(meta)})


def load_members(run_dir: str | Path, feature_digest: str) -> dict[Member, TrainResult]:
    """The training runs an interrupted run committed on these features; unreadable ones and
    those of other features are left out (trained again)."""
    from safetensors import safe_open
    found = {}
    # members/<head>/ (members/<backbone>/<head>/ in a run of several backbones); the stacks'
    # checkpoints lie in members/ itself
    found_files = [*Path(run_dir).glob(f"{MEMBERS}/*/*.safetensors"),
                   *Path(run_dir).glob(f"{MEMBERS}/*/*/*.safetensors")]
    for path in sorted(found_files):
        if _io.is_temp_file(path):
            continue
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["headbench"])
                if meta["feature_digest"] != feature_digest:
                    continue  # other features: not even read
                state = {k: f.get_tensor(k) for k in f.keys()}
            member = Member(**meta["member"])
            fields = dict(meta["result"], state_dict=state)
            fields["history"] = [EpochLog(**log) for log in fields["history"]]
            found[member] = TrainResult(**fields)
        except Exception:  # a damaged or foreign file: train that member again
            continue
    return found


def drop_members(run_dir: str | Path) -> None:
    """Remove the member checkpoints once every head is committed."""
    shutil.rmtree(Path(run_dir) / MEMBERS, ignore_errors=True)


def incomplete_runs(out: str | Path, options_digest: str) -> list[Path]:
    """Incomplete run folders under `out/runs` started with these options, newest first."""
    found = []
    for marker in Path(out).glob(f"runs/*/{INCOMPLETE}"):
        try:
            if marker.read_text().strip() == options_digest:
                found.append(marker.parent)
        except OSError:
            continue
    return sorted(found, key=lambda d: (d / INCOMPLETE).stat().st_mtime, reverse=True)


@contextlib.contextmanager
def run_folder(out: str | Path, name: str, options_digest: str,
               resume: bool = True) -> Iterator[Path]:
    """The folder a compare writes, its lock held throughout: the newest incomplete run of the
    same options that no other process holds (`resume`), else a new one `out/runs/<name>`,
    removed again if the compare fails before it committed anything."""
    for candidate in incomplete_runs(out, options_digest) if resume else []:
        try:
            with _io.locked(candidate / LOCK, wait=False):
                progress.log(f"resuming the interrupted run {candidate}")
                yield candidate
                return
        except _io.Busy:
            continue
    run_dir = start_run_dir(out, name, options_digest)
    try:
        with _io.locked(run_dir / LOCK):
            yield run_dir
    except BaseException:
        if not any((run_dir / f).exists() for f in ("results.json", MEMBERS)):
            # nothing committed: leave no empty folder
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()  # runs/ too, when this run was its only one
        raise


def default_run_name(data: str | Path, backbone: str) -> str:
    """<date>-<time>-<data folder>-<backbone>, with only file-name-safe characters."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(data).resolve().name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stamp}-{name}-{backbone}")


# ----------------------------------------------------------------------------------------------
# reading older schemas and the parts of the run folder (`typed_json` converts the dataclasses)

def _findings_v3(findings: Any) -> Any:
    """Findings of schema 1 and 2 named their interval over test images `bootstrap_ci`."""
    if not isinstance(findings, list):
        return findings
    return [{("image_ci" if k == "bootstrap_ci" else k): v for k, v in f.items()}
            if isinstance(f, dict) else f for f in findings]


def _read_json(run_dir: Path, name: str) -> dict:
    path = run_dir / name
    data = _io.read_json(run_dir, name, "run", "pass a folder written by 'headbench compare' "
                                               "(runs/<date>-<data>-<backbone>)")
    if not isinstance(data, dict) or data.get("schema_version") is None:
        raise HeadbenchError(f"'{path}' was written by headbench 0.1 (no schema_version), whose "
                             "run folders this version does not read; re-run compare")
    if data.get("schema") != SCHEMA or data["schema_version"] not in READS:
        versions = " or ".join(map(str, READS))
        raise HeadbenchError(f"'{path}' has schema {data.get('schema')} version "
                             f"{data['schema_version']}; this headbench reads {SCHEMA} version "
                             f"{versions}: use the headbench that wrote it or re-run compare")
    return data


def _dataset_from_json(data: dict, skipped: list[tuple[str, str]]) -> DatasetInfo:
    splits = {}
    for role in ROLES:
        rows = [it for it in data["items"] if it["role"] == role]
        splits[role] = SplitItems([str(it["path"]) for it in rows],
                                  np.array([int(it["label"]) for it in rows], dtype=np.int64),
                                  [str(it["digest"]) for it in rows])
    return DatasetInfo(root=data["root"], name=data["name"], layout=data["layout"],
                       classes=list(data["classes"]), split_description=data["split_description"],
                       counts=data["counts"], leakage=data["leakage"], skipped=skipped,
                       splits=splits, links_outside=int(data["links_outside"]),
                       follow_links=bool(data["follow_links"]))


def _num(x: float) -> float:
    """A probability or loss for the CSV: 6 decimals, a number (never text), no negative zero."""
    return round(float(x), 6) + 0.0


def _read_skipped(run_dir: Path) -> list[tuple[str, str]]:
    return [(row["path"], row["reason"]) for row in _io.read_csv(run_dir / "skipped.csv")]


def _read_predictions(run_dir: Path, run: Run) -> dict[str, Predictions]:
    rows = _io.read_csv(run_dir / "predictions.csv")
    n, index = len(run.dataset.splits["test"]), {c: i for i, c in enumerate(run.classes)}
    labels = {h.head for h in run.heads}
    by_head: dict[str, dict[int, list[dict]]] = {}
    out = {}
    try:
        for row in rows:
            if row["head"] not in labels:
                raise ValueError(f"head {row['head'][:80]!r} is not a head of the run")
            by_head.setdefault(row["head"], {}).setdefault(int(row["seed"]), []).append(row)
        for head, per_seed in by_head.items():
            seeds = sorted(per_seed)
            arrays = {k: np.zeros((len(seeds), n), dtype=np.int64 if k == "pred" else np.float64)
                      for k in ("pred", "p_pred", "p_label", "loss")}
            for s, seed in enumerate(seeds):
                for row in per_seed[seed]:
                    i = int(row["index"])
                    arrays["pred"][s, i] = index[row["pred"]]
                    for k in ("p_pred", "p_label", "loss"):
                        arrays[k][s, i] = float(row[k])
            out[head] = Predictions(seeds, **arrays)
    except (KeyError, ValueError, IndexError) as e:
        raise HeadbenchError(f"'{run_dir / 'predictions.csv'}' is damaged ({type(e).__name__}: "
                             f"{e}); re-run compare") from None
    return out


# ----------------------------------------------------------------------------------------------
# the JSON Schema of results.json, generated from the dataclasses above

def results_schema() -> dict:
    """The JSON Schema (draft 2020-12) of results.json for this schema version."""
    run_fields = {
        "schema": {"const": SCHEMA}, "schema_version": {"const": SCHEMA_VERSION},
        "headbench_version": {"type": "string"}, "created": {"type": "string"},
        "run_dir": {"type": "string"},
        "dataset": {"type": "object", "required": ["root", "name", "layout", "classes",
                                                   "split_description", "counts", "n_skipped",
                                                   "leakage"]},
        "backbone": json_schema(BackboneInfo), "precision": {"enum": ["fp32", "bf16"]},
        "device": {"type": "string"}, "machine": {"type": "object"}, "timing": json_schema(Timing),
        "train_config": {"type": "object"}, "heads": json_schema(list[HeadResult]),
        "best_head": {"type": ["string", "null"]}, "verdict": json_schema(Verdict | None),
        "findings": json_schema(list[Finding]),
        "options_digest": {"type": "string"}, "feature_digest": {"type": "string"},
        "analyses": {"type": "object",
                     "description": "one section per analysis that ran: shifts, sizes, shots, cam"},
    }
    several = {  # runs of several backbones only
        "backbones": json_schema(list[BackboneInfo]),
        "best": {"type": ["object", "null"], "required": ["backbone", "head"],
                 "properties": {"backbone": {"type": "string"}, "head": {"type": "string"}}},
        "skipped_pairs": {"type": "array", "items": {"type": "object"}},
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA}/{SCHEMA_VERSION}/results.schema.json",
            "title": "headbench results.json", "type": "object",
            "required": list(run_fields), "properties": {**run_fields, **several}}


__all__ = ["start_run_dir", "is_complete", "mark_complete", "incomplete_runs", "Run", "HeadResult",
           "SeedResult", "HeadSummary", "Metrics", "CI", "Predictions", "ClassMetrics",
           "SplitItems", "DatasetInfo", "BackboneInfo", "Timing", "Finding", "Variant",
           "results_schema", "SCHEMA", "SCHEMA_VERSION"]


if __name__ == "__main__":  # python -m headbench.run > src/headbench/results.schema.json
    print(json.dumps(results_schema(), indent=2))
