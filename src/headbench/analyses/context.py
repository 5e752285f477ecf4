"""The run as the analyses see it: the typed run, its backbone, every seed's head weights and
the base-view features.

`compare` builds a `RunContext` from what it holds in memory (no disk reads, no re-extraction);
`RunContext.from_run_dir` re-opens a finished run folder (the backbone re-created and checked
against its checksum, every seed's head weights loaded). Other views of the images (shifted or
resized crops) go through the feature cache under their own keys, so a second run of an
analysis extracts nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .. import features, progress
from .. import train as _train
from ..backbones import create_backbone
from ..data import file_digest
from ..export import load_head_weights
from ..images import View
from ..errors import HeadbenchError
from ..heads import Head, create_head
from ..results import HeadResult, SplitItems
from ..run import Run
from ..runtime import resolve_device, resolve_precision

UNIT = (0.0, 1.0)  # accuracies and consistencies: their intervals are clipped to it


@dataclass
class RunContext:
    """Everything the analyses read.

    Attributes:
        run: the typed run; the analyses add their sections to `run.analyses`.
        backbone: the run's `backbones.Backbone` (its `data_config` is the run's).
        states: head label -> {seed: state_dict} of every trained seed.
        features: role -> base-view features (N, C, H, W) aligned with
            `run.dataset.splits[role]`; filled from the cache when absent.
        cache_dir: feature cache folder (None: the default).
        device: where features are extracted and heads run (None: cuda when available).
        verify_digests: re-hash image files before extracting new views (runs re-opened from
            disk: a changed file must not be cached under its old digest).
        precision: feature precision of new views, part of the cache key (None: the run's).
        backbone_name: in a run of several backbones, the one whose heads are analysed.
    """

    run: Run
    backbone: Any
    states: dict[str, dict[int, dict[str, torch.Tensor]]]
    features: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    device: torch.device | None = None
    verify_digests: bool = False
    precision: str | None = None
    backbone_name: str | None = None
    _verified: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.precision = self.precision or self.run.precision
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else None

    # --- the run's facts ------------------------------------------------------------------
    @property
    def heads(self) -> list[HeadResult]:
        """The heads that run on the analysed backbone (fine-tuned ones have their own)."""
        return [h for h in self.run.heads if not h.finetuned and h.backbone == self.backbone_name]

    @property
    def classes(self) -> list[str]:
        return self.run.classes

    @property
    def seeds(self) -> list[int]:
        return self.run.seeds

    @property
    def input_size(self) -> int:
        """Side in pixels of the base view (the size the heads were trained at)."""
        return int(self.backbone.data_config["input_size"][-1])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the base-view feature map."""
        info = next((b for b in self.run.backbones if b.name == self.backbone_name),
                    self.run.backbone)
        return tuple(int(d) for d in info.feature_shape)

    def items(self, role: str) -> SplitItems:
        """Paths (relative to the dataset root), labels and digests of split `role`."""
        return self.run.dataset.splits[role]

    def labels(self, role: str) -> np.ndarray:
        return self.run.labels(role)

    def paths(self, role: str) -> list[Path]:
        """Absolute image paths of split `role`, in split order."""
        return [self.run.dataset.path(role, i) for i in range(len(self.items(role)))]

    # --- heads ------------------------------------------------------------------------------
    def make_head(self, label: str, seed: int | None = None) -> Head:
        """A fresh head `label`, with the weights of `seed` loaded when given, in eval mode."""
        c, h, w = self.feature_shape
        tokens = self.backbone.token_layout() if self.backbone is not None else None
        head = create_head(self.run.head(label).spec, c, len(self.classes), (h, w),
                           tokens=tokens, backbone=self.backbone)
        if seed is not None:
            head.load_state_dict(self.states[label][seed])
        return head.eval()

    def models(self, labels: Iterable[str] | None = None) -> dict[tuple[str, int], Head]:
        """(label, seed) -> trained head, for every seed of the given heads (default: all)."""
        labels = [h.head for h in self.heads] if labels is None else list(labels)
        return {(label, seed): self.make_head(label, seed) for label in labels
                for seed in self.seeds if seed in self.states[label]}

    def top1(self, X: Any, models: dict[tuple[str, int], Head]
             ) -> dict[tuple[str, int], np.ndarray]:
        """(label, seed) -> top-1 class (N,) of each model on features X (N, C, H, W)."""
        return {key: _train.predict_logits(head, X, device=self.device).argmax(1)
                for key, head in models.items()}

    # --- features -----------------------------------------------------------------------------
    def view_features(self, role: str, view: Any = None) -> Any:
        """Features (N, C, H, W) of split `role` at `view` (default: the base view), cached."""
        view = view or View()
        if view == View() and role in self.features:
            return self.features[role]
        X = self._features(role, view).take(np.arange(len(self.items(role))))
        if view == View():
            self.features[role] = X
        return X

    def _features(self, role: str, view: Any) -> Any:
        split, paths = self.items(role), self.paths(role)
        if self.verify_digests and role not in self._verified:
            _verify_digests(paths, split.digests)
            self._verified.add(role)
        fs = features.extract(self.backbone, paths, split.digests, view=view,
                              precision=self.precision, cache_dir=self.cache_dir,
                              device=self.device, description=f"features {role} {view.key}")
        if fs.failures:
            i, reason = sorted(fs.failures.items())[0]
            raise HeadbenchError(f"{role} image '{paths[i]}' can no longer be read ({reason}); "
                                 "the dataset changed since the run: re-run compare")
        return fs

    # --- from a run folder ----------------------------------------------------------------------
    @classmethod
    def from_run_dir(cls, run_dir: str | Path, cache_dir: str | Path | None = None,
                     precision: str | None = None,
                     backbone_name: str | None = None) -> "RunContext":
        """The context of a finished run: backbone re-created, every seed's head weights loaded.

        `cache_dir` defaults to the run's, `precision` (of new views) to the run's; in a run of
        several backbones, `backbone_name` picks whose heads (default: the recommended pair's).
        """
        run = Run.load(run_dir)
        if not Path(run.dataset.root).is_dir():
            raise HeadbenchError(f"dataset folder '{run.dataset.root}' of this run is missing; "
                                 "the analyses need its images: restore it or re-run compare")
        device = resolve_device(None)
        if precision is not None:
            precision = resolve_precision(precision, device, "extract")
        cache_dir = cache_dir or _recorded_cache(run)
        name = backbone_name or (run.selected().backbone if run.backbones and run.best_head
                                 else None)
        states = {h.head: _load_states(run, h) for h in run.heads
                  if not h.finetuned and h.backbone == name}
        return cls(run, _load_backbone(run, name), states, cache_dir=cache_dir, device=device,
                   verify_digests=True, precision=precision, backbone_name=name)


def _recorded_cache(run: Run) -> str | None:
    """The cache folder the run recorded, if it is a headbench cache (an existing folder with a
    feature entry); else None, the default cache, and a log line. A run folder is untrusted:
    its config.json must not choose where new cache folders are made."""
    recorded = run.options.cache_dir
    if recorded is None or features.is_cache(Path(recorded)):
        return recorded
    progress.log(f"the run's cache folder '{recorded}' is missing or holds no headbench "
                 f"features: using the default cache, '{features.default_cache_dir()}'")
    return None


def _load_backbone(run: Run, name: str | None = None) -> Any:
    """The run's backbone (of several: the one named), from its saved copy when there is one,
    checked against its checksum."""
    info = next((b for b in run.backbones if b.name == name), run.backbone)
    saved = Path(run.run_dir) / ("heads/" + name if name else "") / "backbone.safetensors"
    weights = str(saved.resolve()) if saved.is_file() else info.weights
    backbone = create_backbone(info.name, weights, int(info.data_config["input_size"][-1]),
                               timm_name=info.timm_name)
    if backbone.weights_checksum != info.weights_checksum:
        raise HeadbenchError(f"backbone weights of '{run.run_dir}' have checksum "
                             f"{backbone.weights_checksum}, the run used {info.weights_checksum}: "
                             "the weights source changed; re-run compare")
    # The preprocessing belongs to the weights the run used, whatever source re-created them.
    backbone.data_config = info.data_config
    return backbone


def _load_states(run: Run, head: HeadResult) -> dict[int, dict[str, torch.Tensor]]:
    """{seed: state_dict} from heads/<label>/seed<k>.safetensors."""
    states = {}
    for s in head.seeds:
        path = run.model_dir(head.head) / f"seed{s.seed}.safetensors"
        if not path.is_file():
            raise HeadbenchError(f"'{path}' is missing; the analyses reuse every seed's head "
                                 "weights: re-run compare")
        states[s.seed] = load_head_weights(path)
    return states


def _verify_digests(paths: list[Path], digests: list[str]) -> None:
    for path, digest in zip(paths, digests):
        if not path.is_file() or file_digest(path) != digest:
            raise HeadbenchError(f"image '{path}' is missing or changed since the run; the "
                                 "analyses need the run's images: restore it or re-run compare")


__all__ = ["RunContext", "UNIT"]
