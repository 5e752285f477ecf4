"""Checkpoints of stacked training: the state of a `train_members` call, saved at epoch ends.

Finished members are committed as they finish (`run.save_member`); a member still training is
not, and a kill loses its epochs. So that a long fit loses little, `train_members` saves the state
of every stack it drives (weights, best weights, AdamW moments, each member's batch-order and
dropout generators, early stopping and history: `engine.Stack.snapshot`) at the first epoch end
at least `EVERY_S` seconds after the previous save, in one file written atomically. A rerun of
the same call continues from it at the next epoch and ends with the numbers of an uninterrupted
run (the stacks may hold fewer members by then: those finished since are committed). A file that
cannot be read, was written for other features, or does not hold every member still to train is
ignored: those members train from the start.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from .. import io as _io
from .results import Member

EVERY_S = 30.0  # seconds between saves, at least (tests set it to 0: every epoch end)


@dataclass
class Checkpoints:
    """Where the checkpoints of a run's training calls go (`folder`), valid for the features
    whose digest is `tag`."""

    folder: Path
    tag: str = ""

    def at(self, phase: str, labels: Sequence[str]) -> "Checkpoint":
        """The checkpoint of one call: its phase ('sweep', 'seeds', 'folds') and its heads."""
        key = hashlib.sha256(json.dumps(sorted(labels)).encode()).hexdigest()[:12]
        return Checkpoint(Path(self.folder) / f"stacks-{phase}-{key}.safetensors", self.tag)


class Checkpoint:
    """One call's state file: `save` when `due`, `load` on a rerun, `drop` once it is done."""

    def __init__(self, path: Path, tag: str = ""):
        self.path, self.tag = path, tag
        self.saved = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.saved >= EVERY_S

    def save(self, epoch: int, stacks: Sequence) -> None:
        """The state of `stacks` after `epoch` (stacks whose state cannot be saved: none)."""
        try:
            states = [stack.snapshot() for stack in stacks]
        except NotImplementedError:
            return
        tensors = {f"{i}/{k}": v.detach().cpu().contiguous()
                   for i, (state, _) in enumerate(states) for k, v in state.items()}
        meta = {"tag": self.tag, "epoch": epoch,
                "stacks": [{"label": stack.label, **meta}
                           for stack, (_, meta) in zip(stacks, states)]}
        _io.atomic_write_safetensors(self.path, tensors, {"headbench": json.dumps(meta)})
        self.saved = time.monotonic()

    def load(self) -> tuple[int, list[tuple[dict, dict]]] | None:
        """(epoch, [(tensors, meta) per stack]) of the saved state, or None (none, damaged, or
        of other features)."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads(f.metadata()["headbench"])
                flat = {k: f.get_tensor(k) for k in f.keys()}
            if meta["tag"] != self.tag:
                return None
            stacks = [({k.split("/", 1)[1]: v for k, v in flat.items()
                        if k.split("/", 1)[0] == str(i)}, m) for i, m in enumerate(meta["stacks"])]
            return int(meta["epoch"]), stacks
        except Exception:  # a damaged or foreign file: train from the start
            return None

    def resume(self, stacks: Sequence) -> int:
        """Restore `stacks` from the saved state: the epoch it ended, 0 when there is none for
        them (start afresh), -1 when restoring failed part way (build the stacks again)."""
        loaded = self.load()
        if loaded is None:
            return 0
        epoch, saved = loaded
        by_label = {meta["label"]: (tensors, meta) for tensors, meta in saved}
        try:
            if not all(set(stack.members) <= {Member(**m) for m in by_label[stack.label][1]
                                              ["members"]} for stack in stacks):
                return 0  # a member to train was not training then
        except (KeyError, TypeError):
            return 0
        try:
            for stack in stacks:
                stack.restore(*by_label[stack.label])
        except Exception:  # tensors that do not fit: the stacks must be built again
            return -1
        return epoch

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)


__all__ = ["EVERY_S", "Checkpoint", "Checkpoints"]
