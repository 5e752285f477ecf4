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
from .. import progress
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

    def save(self, epoch: int, stacks: Sequence, protocol: dict) -> None:
        """The state of `stacks` after `epoch` under the training `protocol` (the
        `TrainConfig` as a dict); none where a stack's state cannot be saved. A save that
        fails (a full disk) is one line: training goes on without it."""
        try:
            states = [stack.snapshot() for stack in stacks]
        except NotImplementedError:
            return
        tensors = {f"{i}/{k}": v.detach().cpu().contiguous()
                   for i, (state, _) in enumerate(states) for k, v in state.items()}
        meta = {"tag": self.tag, "epoch": epoch, "protocol": _plain(protocol),
                "stacks": [{"label": stack.label, **meta}
                           for stack, (_, meta) in zip(stacks, states)]}
        try:
            _io.atomic_write_safetensors(self.path, tensors, {"headbench": json.dumps(meta)})
        except OSError as e:
            progress.log(f"training state not saved ({_io.os_error_text(e)}); training "
                         "goes on, a kill now would repeat it from the previous save")
        self.saved = time.monotonic()

    def load(self, protocol: dict) -> tuple[int, list[tuple[dict, dict]]] | None:
        """(epoch, [(tensors, meta) per stack]) of the state saved under `protocol`, or None
        (none, damaged, or of other features or another protocol)."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads(f.metadata()["headbench"])
                flat = {k: f.get_tensor(k) for k in f.keys()}
            if meta["tag"] != self.tag or meta["protocol"] != _plain(protocol):
                return None
            stacks = [({k.split("/", 1)[1]: v for k, v in flat.items()
                        if k.split("/", 1)[0] == str(i)}, m) for i, m in enumerate(meta["stacks"])]
            return int(meta["epoch"]), stacks
        except Exception:  # a damaged or foreign file: train from the start
            return None

    def resume(self, stacks: Sequence, protocol: dict) -> int:
        """Restore `stacks` from the state saved under `protocol`: the epoch it ended, 0 when
        there is none for them (start afresh), -1 when restoring failed part way (build the
        stacks again)."""
        loaded = self.load(protocol)
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
        except Exception as e:  # tensors that do not fit: the stacks must be built again
            progress.log(f"training state in '{self.path}' does not fit ({type(e).__name__}): "
                         "training starts afresh")
            return -1
        return epoch

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)


def _plain(protocol: dict) -> dict:
    """The protocol as its JSON round trip gives it (tuples as lists), to compare with a file's."""
    return json.loads(json.dumps(protocol))


__all__ = ["EVERY_S", "Checkpoint", "Checkpoints"]
