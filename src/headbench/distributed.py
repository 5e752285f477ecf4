"""Runs under `torchrun`: several processes (ranks) share one `compare`.

`torchrun --nproc_per_node N -m headbench compare DATA ...` starts N copies of the command;
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) tells each which it is,
and `init()` joins them into one process group (nccl on GPUs, gloo on CPUs). What each rank does:

- the scan is rank 0's, sent to every rank, so all shard the same list of images;
- feature extraction: rank 0 finds what the cache lacks and gives each rank a disjoint part;
  every rank writes its own chunks into the shared cache (`features.extract`);
- head training, the run folder and the report: rank 0 alone (the heads are cheap);
- fine-tuning: every rank, as DistributedDataParallel over its part of each global batch
  (`finetune.finetune`); rank 0 decides early stopping and writes the checkpoints.

Without torchrun (or with one process) every function here is the single-process identity.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from . import progress
from .errors import HeadbenchError

T = TypeVar("T")
# Ranks wait for rank 0 while it trains the heads; torchrun ends every rank when one fails, so a
# long timeout does not leave a dead run hanging.
TIMEOUT = datetime.timedelta(hours=float(os.environ.get("HEADBENCH_DIST_TIMEOUT_H", "6")))


def launched() -> int:
    """The number of processes torchrun started (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init() -> bool:
    """Join torchrun's process group when it started several processes (once; later calls
    return at once). Ranks other than 0 turn quiet: one set of progress bars and logs."""
    if active() or launched() <= 1:
        return active()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    if rank() != 0:
        progress.set_quiet(True)
    return True


def active() -> bool:
    """Whether this process is one of several ranks of an initialised group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled); other ranks' argument is ignored."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 and its result sent to every rank. An error on rank 0 is
    raised on every rank (as a HeadbenchError with its message), so none waits forever."""
    result: tuple[str, Any] = ("", None)
    if is_main():
        try:
            result = ("ok", fn())
        except BaseException as e:
            if active():
                broadcast(("error", str(e) or type(e).__name__))
            raise
    kind, value = broadcast(result)
    if kind == "error":
        raise HeadbenchError(f"rank 0 failed: {value}")
    return value


def check(error: BaseException | None) -> None:
    """Every rank reports whether its part failed; when any did, all raise (the failing rank
    its own error): a rank never waits on a collective another rank has left."""
    if not active():
        if error is not None:
            raise error
        return
    texts: list[Any] = [None] * world()
    dist.all_gather_object(texts, None if error is None else (str(error) or type(error).__name__))
    if error is not None:
        raise error
    failed = [(r, t) for r, t in enumerate(texts) if t is not None]
    if failed:
        r, text = failed[0]
        raise HeadbenchError(f"rank {r} failed: {text}")


def total(value: float) -> float:
    """The sum of `value` over the ranks."""
    if not active():
        return value
    values: list[Any] = [None] * world()
    dist.all_gather_object(values, value)
    return sum(values)


def part(n: int) -> np.ndarray:
    """This rank's contiguous share of `n` items (sizes differ by at most one; every item in
    exactly one share, none padded)."""
    return np.array_split(np.arange(n), world())[rank()]


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's `rows` (the rank's `part`), concatenated in rank order on every rank."""
    if not active():
        return rows
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, rows)
    return np.concatenate(parts)


def leave() -> None:
    """Leave the process group: what follows runs on this rank alone."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse(command: str) -> None:
    """One line for a command that does not run under torchrun with several processes."""
    if launched() > 1:
        raise HeadbenchError(f"'{command}' runs in one process; only 'compare' runs under "
                             "torchrun with several (--nproc_per_node)")
