"""The stacked engine: the members of one head trained as one model, and the epochs that drive it.

A `Stack` holds its members' parameters stacked on a first axis and runs one forward
(`stacked.forward`, or `torch.func.vmap` over the module for layers it does not know), one summed
loss and one AdamW update (`adamw`) with a weight decay per member. Each member keeps its own
batch order and dropout masks (generators of its own, seeded by its seed), its own early
stopping and best weights, so its result does not depend on which members train beside it.

`train_epoch` and `validate` run every stack over one pass of the features.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..splits import TrainingSplit, training_split
from . import stacked
from .inputs import CHUNK_ROWS, Block, Inputs, batches
from .results import EpochLog, Member, TrainResult


def split_of(head: nn.Module) -> TrainingSplit:
    """The head as its parameter-free `prepare` and its trained body."""
    return head.training_split() if hasattr(head, "training_split") else training_split(head)


def _stream(seed: int, purpose: int) -> torch.Generator:
    """A generator of its own for one purpose of one seed (0: batch order, 1: dropout)."""
    if purpose == 0:  # the batch order keeps 0.1's stream: torch.Generator seeded by the seed
        return torch.Generator().manual_seed(seed)
    state = np.random.SeedSequence([seed, purpose]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----------------------------------------------------------------------------- dropout and AdamW

class _MaskedDropout(nn.Module):
    """Dropout whose mask is given (buffer `mask`, already scaled by 1/(1-p)): under vmap each
    member's mask comes from its own generator, so a member never depends on the others."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


def _masked_copy(body: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    """A copy of `body` on the meta device with every Dropout a `_MaskedDropout`."""
    base = copy.deepcopy(body).to("meta")
    drops = {}
    for name, module in list(base.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.dropout._DropoutNd):
                setattr(module, child_name, _MaskedDropout(child.p))
                drops[f"{name}.{child_name}" if name else child_name] = child.p
    return base, drops


def _input_shape(body: nn.Module, name: str, probe: torch.Tensor) -> tuple[int, ...]:
    """Shape (without the batch axis) of what the dropout `name` of `body` sees."""
    seen = []
    handle = body.get_submodule(name).register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape[1:])))
    try:
        body.eval()
        with torch.no_grad():
            body(probe)
    finally:
        handle.remove()
    return seen[0]


class MemberAdamW:
    """torch's AdamW over stacked parameters, each member at its own peak learning rate and
    weight decay, in as few fused steps as that allows (the fused kernel where torch has one:
    one pass instead of seven).

    Members with one peak lr side by side in the stack share a param group of views of their
    rows of every tensor (`_stacks` orders members so). Decay is on matrices and kernels only
    (member ndim > 1): inside the kernel where the group's members share one decay, else as
    torch.optim.AdamW's decoupled `p.mul_(1 - lr·decay)` per member first and the step with no
    decay; both are torch's AdamW of each member alone, bit for bit
    (tests/test_engine_optimizer.py)."""

    def __init__(self, params: dict[str, torch.Tensor], peaks: Sequence[float],
                 decays: Sequence[float]):
        self.peaks, self.decays = list(peaks), list(decays)
        stacked = list(params.values())
        groups = []
        for a, b in _runs(self.peaks):
            mixed = len(set(self.decays[a:b])) > 1
            for decayed in (True, False):
                sources = [j for j, p in enumerate(stacked) if (p.ndim > 2) == decayed]
                if not sources:
                    continue
                decays = torch.tensor(self.decays[a:b], dtype=torch.float64,
                                      device=stacked[0].device)
                groups.append({"params": [stacked[j].detach()[a:b] for j in sources],
                               "sources": sources, "rows": (a, b), "peak": self.peaks[a],
                               "weight_decay": self.decays[a] if decayed and not mixed else 0.0,
                               "decays": decays if decayed and mixed else None})
        self.fused = stacked[0].device.type in ("cpu", "cuda")  # torch's default
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, fused=True if self.fused else None)
        if self.fused:
            for group in self.optimizer.param_groups:
                for view in group["params"]:  # the state torch's fused AdamW starts with
                    self.optimizer.state[view] = {
                        "step": torch.zeros((), dtype=torch.float32, device=view.device),
                        "exp_avg": torch.zeros_like(view), "exp_avg_sq": torch.zeros_like(view)}

    def step(self, grads: Sequence[torch.Tensor], rate: Callable[[float], float]) -> None:
        """One step with the stacked `grads`, each group at `rate(its peak lr)`."""
        grads = [g.contiguous() for g in grads]  # the fused kernel reads them laid out as p
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                lr, (a, b) = rate(group["peak"]), group["rows"]
                group["lr"] = lr
                for view, j in zip(group["params"], group["sources"]):
                    view.grad = grads[j][a:b]
                    if group["decays"] is not None:  # rounded to p's dtype, as torch's scalar
                        factor = (1 - lr * group["decays"]).to(view.dtype)
                        view.mul_(factor.view(-1, *[1] * (view.ndim - 1)))
                if self.fused:
                    self._fused_step(group)
        if not self.fused:
            self.optimizer.step()

    def _fused_step(self, group: dict) -> None:
        """What `torch.optim.AdamW(fused=True).step()` does for one group, without its
        per-call bookkeeping (regrouping by device and dtype, state lookups, hooks: about
        0.3 ms a step, a tenth of a light head's step): the same kernel on the same state."""
        states = [self.optimizer.state[view] for view in group["params"]]
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(group["params"], [view.grad for view in group["params"]],
                            [state["exp_avg"] for state in states],
                            [state["exp_avg_sq"] for state in states], [], steps,
                            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                            weight_decay=group["weight_decay"], eps=group["eps"],
                            maximize=False, grad_scale=None, found_inf=None)

    def moments(self) -> dict[str, torch.Tensor]:
        """Every member's AdamW state as stacked tensors: `exp_avg.j`, `exp_avg_sq.j` (each
        stacked parameter j) and `step` (M,) (a checkpoint of the fused kernel's state)."""
        out, steps = {}, {}
        for group in self.optimizer.param_groups:
            a, b = group["rows"]
            for view, j in zip(group["params"], group["sources"]):
                state = self.optimizer.state[view]
                for key in ("exp_avg", "exp_avg_sq"):
                    out.setdefault(f"{key}.{j}", [None] * len(self.peaks))[a:b] = list(state[key])
                steps.update({m: state["step"] for m in range(a, b)})
        stacked = {k: torch.stack(rows) for k, rows in out.items()}
        return {**stacked, "step": torch.stack([steps[m].reshape(()) for m in range(len(steps))])}

    def load_moments(self, moments: dict[str, torch.Tensor], index: list[int]) -> None:
        """Take members `index` of `moments` (from `moments()`) as this optimizer's members."""
        rows = torch.as_tensor(index)
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                a, b = group["rows"]
                for view, j in zip(group["params"], group["sources"]):
                    state = self.optimizer.state[view]
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key].copy_(moments[f"{key}.{j}"][rows[a:b]])
                    state["step"].copy_(moments["step"][index[a]])

    def kept(self, params: dict[str, torch.Tensor], index: list[int]) -> "MemberAdamW":
        """An optimizer over `params` (members `index` of this one's, restacked) carrying those
        members' moments and step counts."""
        rows = {}  # (stacked tensor, member) -> (its group's state, the member's row in it)
        for group in self.optimizer.param_groups:
            a, b = group["rows"]
            for view, j in zip(group["params"], group["sources"]):
                for member in range(a, b):
                    rows[j, member] = (self.optimizer.state[view], member - a)
        new = MemberAdamW(params, [self.peaks[i] for i in index], [self.decays[i] for i in index])
        for group in new.optimizer.param_groups:
            a, b = group["rows"]
            for view, j in zip(group["params"], group["sources"]):
                old = [rows[j, index[i]] for i in range(a, b)]
                first = old[0][0]
                new.optimizer.state[view] = {
                    key: first[key].clone() if key == "step" else
                    torch.stack([state[key][row] for state, row in old]) for key in first}
        return new


def _runs(values: Sequence[float]) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive values."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((start, i))
            start = i
    return runs


# A Dropout keeps an element when 16 random bits, read as a signed integer, fall below the
# keep threshold (1 - p)·2^16, rounded: p is exact to 2^-16 (fastai's 0.25 and 0.5 exactly).
# Four elements per 64-bit draw, where torch's bernoulli_ draws a float64 for each: fastai's
# masks are 3× faster to draw (0.33 against 0.97 ms for 64 × 2,560 elements).
MASK_BITS = 16


def _word_count(elements: int) -> int:
    return -(-elements // 4)  # 64-bit words of four 16-bit draws


def _fill_words(words: torch.Tensor, generator: torch.Generator) -> None:
    words.random_(-2 ** 63, None, generator=generator)  # every 64 bits random


def _bits(words: torch.Tensor, elements: int) -> torch.Tensor:
    """The first `elements` 16-bit draws of each row of `words` (..., n) int64."""
    return words.view(torch.int16)[..., :elements]


def _mask_of(bits: torch.Tensor, p: float) -> torch.Tensor:
    """The scaled float mask of Dropout(p) from 16-bit draws."""
    keep = round((1 - p) * (1 << MASK_BITS))
    if keep <= 0:
        return torch.zeros(bits.shape)
    if keep >= 1 << MASK_BITS:
        return torch.ones(bits.shape)
    return (bits < keep - (1 << MASK_BITS - 1)).float().mul_((1 << MASK_BITS) / keep)


def dropout_mask(shape: Sequence[int], p: float, generator: torch.Generator) -> torch.Tensor:
    """The scaled mask (shape) of one Dropout(p) for one member, from its `generator`: what a
    `Stack` draws for each member (a plain training loop draws the same masks with this)."""
    elements = math.prod(shape)
    words = torch.empty(_word_count(elements), dtype=torch.int64)
    _fill_words(words, generator)
    return _mask_of(_bits(words, elements).view(*shape), p)


# Dropout masks of at least this many elements per step are drawn for members in parallel
# (a generator draws on one core; fastai's head, 4 members of 64 rows, is above it).
PARALLEL_DRAWS = 1 << 16
_POOL: ThreadPoolExecutor | None = None


def _drawing_pool() -> ThreadPoolExecutor:
    """Threads for the members' mask draws (torch releases the GIL while drawing)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, torch.get_num_threads()),
                                   thread_name_prefix="headbench-masks")
    return _POOL


# ----------------------------------------------------------------------------- one head's members

class Stack:
    """The members of one head, trained as one model with parameters stacked on a first axis:
    one forward (`stacked.forward`, or `torch.func.vmap` over the module for layers it does
    not know), one summed loss, one AdamW update with each member's own decay.

    `heads` are the members' heads (built under their seeds), `split` the first head's
    `TrainingSplit` and `probe` its prepared inputs for two rows (to size the dropout masks).
    """

    def __init__(self, label: str, members: list[Member], heads: list[nn.Module],
                 split: TrainingSplit, probe: torch.Tensor, device: torch.device,
                 precision: str = "fp32", default_lr: float = 1e-3):
        self.label, self.members, self.heads = label, members, heads
        self.lrs = [default_lr if m.lr is None else m.lr for m in members]  # peak lr each
        # bf16 autocast of the matmuls (`runtime.resolve_precision(..., "heads")`), else none
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                       enabled=precision == "bf16")
        self.split, self.key = split, split.key
        self.bodies = [split.body] + [split_of(h).body for h in heads[1:]]
        self.explicit = stacked.supported(split.body)  # else vmap over the module
        self.picks_rows = stacked.picks_rows(split.body)
        self.base, drops = _masked_copy(self.bodies[0])
        drops = {name: (p, _input_shape(self.bodies[0], name, probe)) for name, p in drops.items()}
        for body in self.bodies:
            body.train()
        self.params, self.buffers = stack_module_state(self.bodies)
        self.optimizer = MemberAdamW(self.params, self.lrs, [m.weight_decay for m in members])
        self.drops = drops
        self.order_rng = [_stream(m.seed, 0) for m in members]
        self.drop_rng = [_stream(m.seed, 1) for m in members]
        self.best = {k: v.detach().clone() for k, v in {**self.params, **self.buffers}.items()}
        n = len(members)
        self.best_loss = torch.full((n,), math.inf, dtype=torch.float64)
        self.best_epoch = [0] * n
        self.history: list[list[EpochLog]] = [[] for _ in members]
        self.seconds = [0.0] * n
        self.device = device
        # each member's own rows (fold members, `folds`): positions it trains on (M, n) and is
        # validated on (M, v), or None: every member trains on every row
        self.rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def _masks(self, batch: int) -> dict[str, torch.Tensor]:
        """Each Dropout's mask (M, b, ...), scaled, from each member's own generator: its
        16-bit draws for each layer in the layers' order, as `dropout_mask` draws them for one
        head. A generator draws on one core: large draws take members in parallel."""
        words = {name: torch.empty(len(self), _word_count(batch * math.prod(shape)),
                                   dtype=torch.int64) for name, (p, shape) in self.drops.items()}

        def fill(i: int) -> None:
            for rows in words.values():
                _fill_words(rows[i], self.drop_rng[i])
        if len(self) > 1 and 4 * sum(w.numel() for w in words.values()) >= PARALLEL_DRAWS:
            list(_drawing_pool().map(fill, range(len(self))))
        else:
            for i in range(len(self)):
                fill(i)
        return {name: _mask_of(_bits(words[name], batch * math.prod(shape))
                               .view(len(self), batch, *shape), p).to(self.device)
                for name, (p, shape) in self.drops.items()}

    def _logits(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _forward(self, x: torch.Tensor, shared: bool, training: bool,
                 masks: dict[str, torch.Tensor], rows: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Logits (M, b, K) of every member: x (b, ...) shared by all, or (M, b, ...); or x
        every row and `rows` (M, b) each member's (`stacked.forward`)."""
        if self.explicit:
            return stacked.forward(self.split.body, self.params, self.buffers, x, training, masks,
                                   rows)
        self.base.train(training)
        buffers = {**self.buffers, **{f"{name}.mask": m for name, m in masks.items()}}
        in_dims = (0, 0, None) if shared else (0, 0, 0)
        return vmap(self._logits, in_dims, randomness="error")(self.params, buffers, x)

    def orders(self, size: int, batch_size: int) -> list[torch.Tensor]:
        """Each member's own order of `size` positions, cut into batches: (M, b) indices per
        step, or (b,) when every member drew the same order (the sweep, all at one seed).
        Members with rows of their own (`rows`) order those instead."""
        if self.rows is not None:
            own = self.rows[0].cpu().numpy()
            per_member = [batches(own[i][torch.randperm(own.shape[1], generator=g).numpy()],
                                  batch_size) for i, g in enumerate(self.order_rng)]
        else:
            per_member = [batches(torch.randperm(size, generator=g).numpy(), batch_size)
                          for g in self.order_rng]
        if all(all(np.array_equal(a, b) for a, b in zip(order, per_member[0]))
               for order in per_member[1:]):
            return [torch.as_tensor(index, device=self.device) for index in per_member[0]]
        return [torch.as_tensor(np.stack(step), device=self.device)
                for step in zip(*per_member)]

    def step(self, x: torch.Tensor, y: torch.Tensor, shared: bool,
             rate: Callable[[float], float], rows: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of every member on its own batch (`shared`: one batch for all; `rows`:
        each member's rows of x, every row), each at `rate(its peak lr)`; (loss, correct) per
        member."""
        with self.autocast:
            logits = self._forward(x, shared, True, self._masks(y.shape[-1]), rows).float()
        target = y.expand(len(self), -1)
        losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        losses = losses.view(len(self), -1).mean(dim=1)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        self.optimizer.step(grads, rate)
        return losses.detach(), (logits.detach().argmax(-1) == target).sum(dim=1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, shared: bool = True,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, correct) per member on shared inputs (or each member's own,
        (M, b, ...) with labels (M, b); or every row and `rows`), in eval mode."""
        with torch.no_grad(), self.autocast:
            logits = self._forward(x, shared, False, {}, rows).float()
            target = y.expand(len(self), -1)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            return loss.view(len(self), -1).sum(1), (logits.argmax(-1) == target).sum(1)

    def end_epoch(self, epoch: int, logs: list[EpochLog], patience: int | None,
                  min_delta: float = 0.0, min_delta_abs: float = 0.0) -> list[int]:
        """Record the epoch; keep the weights of members whose val loss fell below their best by
        more than `min_delta` of it or `min_delta_abs`, whichever is more; the members that
        stop now."""
        val = torch.tensor([log.val_loss for log in logs], dtype=torch.float64)
        below = torch.minimum(self.best_loss * (1 - min_delta), self.best_loss - min_delta_abs)
        improved = val < below  # NaN never improves
        if improved.any():
            rows = improved.nonzero().flatten().to(self.device)
            with torch.no_grad():  # only the improved members' rows are copied
                for k, v in {**self.params, **self.buffers}.items():
                    self.best[k].index_copy_(0, rows, v.detach().index_select(0, rows))
            self.best_loss = torch.where(improved, val, self.best_loss)
        stop = []
        for i, log in enumerate(logs):
            self.history[i].append(log)
            if improved[i]:
                self.best_epoch[i] = epoch
            elif patience is not None and epoch - self.best_epoch[i] >= patience:
                stop.append(i)
        return stop

    def result(self, i: int) -> TrainResult:
        """Member i with its best weights loaded into its head; a member whose val loss never
        was a number keeps its initial weights, best epoch 0 and best val loss inf (`diverged`)."""
        member = self.members[i]
        body = self.bodies[i]
        with torch.no_grad():
            for name, t in {**dict(body.named_parameters()), **dict(body.named_buffers())}.items():
                t.copy_(self.best[name][i])
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.heads[i].state_dict().items()}
        return TrainResult(state, self.best_epoch[i], float(self.best_loss[i]),
                           member.weight_decay, member.seed, len(self.history[i]),
                           self.seconds[i], self.history[i], self.lrs[i])

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The stack's training state as tensors and JSON (`train.checkpoint`): weights, best
        weights, AdamW moments, each member's generators, early stopping and history."""
        if not self.optimizer.fused:
            raise NotImplementedError("AdamW state outside torch's fused kernel")
        tensors = {**{f"param.{k}": v.detach() for k, v in self.params.items()},
                   **{f"buffer.{k}": v for k, v in self.buffers.items()},
                   **{f"best.{k}": v for k, v in self.best.items()},
                   **{f"adamw.{k}": v for k, v in self.optimizer.moments().items()},
                   "best_loss": self.best_loss,
                   "order_rng": torch.stack([g.get_state() for g in self.order_rng]),
                   "drop_rng": torch.stack([g.get_state() for g in self.drop_rng])}
        meta = {"members": [dataclasses.asdict(m) for m in self.members],
                "best_epoch": self.best_epoch, "seconds": self.seconds,
                "history": [[dataclasses.asdict(log) for log in h] for h in self.history]}
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Continue from `snapshot()` of a stack that held (at least) these members."""
        members = [Member(**m) for m in meta["members"]]
        index = [members.index(m) for m in self.members]
        rows = torch.as_tensor(index)
        with torch.no_grad():
            for prefix, tensors_of in (("param", self.params), ("buffer", self.buffers),
                                       ("best", self.best)):
                for k, v in tensors_of.items():  # the file's tensors are on the CPU
                    v.copy_(tensors[f"{prefix}.{k}"][rows])
        self.optimizer.load_moments({k[len("adamw."):]: v for k, v in tensors.items()
                                     if k.startswith("adamw.")}, index)
        self.best_loss = tensors["best_loss"][rows].clone()
        for name in ("order_rng", "drop_rng"):
            for g, state in zip(getattr(self, name), tensors[name][rows]):
                g.set_state(state.clone())
        self.best_epoch = [meta["best_epoch"][i] for i in index]
        self.seconds = [meta["seconds"][i] for i in index]
        self.history = [[EpochLog(**log) for log in meta["history"][i]] for i in index]

    def keep(self, keep: list[int]) -> None:
        """Go on with members `keep` only (the others stopped and were taken out)."""
        index = torch.as_tensor(keep, device=self.device)

        def take(d: dict, grad: bool = False) -> dict:  # index_select copies: no clone
            return {k: v.detach().index_select(0, index).requires_grad_(grad)
                    for k, v in d.items()}

        self.params = take(self.params, grad=True)
        self.optimizer = self.optimizer.kept(self.params, keep)
        self.buffers, self.best = take(self.buffers), take(self.best)
        for name in ("members", "heads", "bodies", "order_rng", "drop_rng", "best_epoch",
                     "history", "seconds", "lrs"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])
        self.best_loss = self.best_loss[index.cpu()]
        if self.rows is not None:
            self.rows = (self.rows[0][index], self.rows[1][index])


# ----------------------------------------------------------------------------- one epoch

def train_epoch(stacks: list[Stack], blocks: Iterator[Block], inputs: Inputs, y: torch.Tensor,
                batch_size: int, step: int, rate: Callable[[int, float], float]
                ) -> dict[int, list[torch.Tensor]]:
    """One epoch of every stack, block by block, from global step `step`, each member at
    learning rate `rate(step, its peak lr)`; id(stack) -> [summed loss, correct]."""
    stats = {id(s): [torch.zeros(len(s)), torch.zeros(len(s))] for s in stacks}
    for block in blocks:
        for stack in stacks:
            started = time.perf_counter()
            for i, index in enumerate(stack.orders(block.size, batch_size)):
                x, rows = _inputs(stack, inputs, index, block)
                target = y[block.rows[index] if block.rows is not None else index]
                at = step + i
                loss, correct = stack.step(x, target, index.dim() == 1,
                                           lambda peak, at=at: rate(at, peak), rows)
                stats[id(stack)][0] += loss.cpu() * index.shape[-1]
                stats[id(stack)][1] += correct.cpu()
            _share(stack, time.perf_counter() - started)
        step += len(batches(np.arange(block.size), batch_size))
    return stats


def validate(stacks: list[Stack], inputs: Inputs,
             y: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """Every stack on every validation row once; id(stack) -> [summed loss, correct]."""
    stats = {id(s): [torch.zeros(len(s)), torch.zeros(len(s))] for s in stacks}
    for where, x in inputs.chunks():
        for stack in stacks:
            started = time.perf_counter()
            loss, correct = stack.evaluate(x[stack.key], y[where])
            stats[id(stack)][0] += loss.cpu()
            stats[id(stack)][1] += correct.cpu()
            _share(stack, time.perf_counter() - started)
    return stats


def validate_rows(stacks: list[Stack], inputs: Inputs, y: torch.Tensor,
                  block: Block) -> dict[int, list[torch.Tensor]]:
    """Every member of stacks with rows of their own (`Stack.rows`) on its own validation rows
    of `block`; id(stack) -> [summed loss, correct]."""
    stats = {}
    for stack in stacks:
        started = time.perf_counter()
        own = stack.rows[1]
        loss, correct = torch.zeros(len(stack)), torch.zeros(len(stack))
        for start in range(0, own.shape[1], CHUNK_ROWS):
            index = own[:, start:start + CHUNK_ROWS]
            x, rows = _inputs(stack, inputs, index, block)
            part = stack.evaluate(x, y[index], shared=False, rows=rows)
            loss, correct = loss + part[0].cpu(), correct + part[1].cpu()
        stats[id(stack)] = [loss, correct]
        _share(stack, time.perf_counter() - started)
    return stats


def _inputs(stack: Stack, inputs: Inputs, index: torch.Tensor,
            block: Block) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, rows) for positions `index` of `block`: the rows gathered (rows None), or, when the
    members' own rows (M, b) outnumber the rows held and the stack's first layer works row by
    row, every row as it is held (no copy) with `index` as each member's rows."""
    if (index.dim() == 2 and index.numel() > len(inputs.feats) and stack.picks_rows
            and block.rows is None and inputs.held(stack.key)):
        return inputs.whole(stack.key), index
    return inputs.batch(stack.key, index, block), None


def _share(stack: Stack, seconds: float) -> None:
    """A stack's time, shared evenly by the members in it."""
    for i in range(len(stack)):
        stack.seconds[i] += seconds / len(stack)
