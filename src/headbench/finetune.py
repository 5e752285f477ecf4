"""Fine-tuning: a frozen-trained head and its backbone trained end to end, from images.

The second step of every transfer-learning guide (Keras: unfreeze at a very low learning rate
with BatchNorm kept in inference mode; fastai's `fine_tune`: unfreeze with discriminative
learning rates, BatchNorm trainable), with both choices explicit:

- the head starts from its frozen-trained weights, the backbone from the run's weights;
  `unfreeze` opens all of the backbone or its last N stages (the stages of timm's
  `feature_info`: stage k ends at its k-th entry's module);
- discriminative learning rates: the backbone learns at `backbone_lr` × the head's rate;
- AdamW (decay on matrices and kernels only, as in `train`), per-step linear warm-up then
  cosine to 0 at `epochs`, early stopping on val loss, the best epoch's weights restored;
- augmentation on the fly (`images.AugTransform`, seeded by image, epoch and seed); val and
  test are never augmented;
- the BatchNorm policy `bn`: 'frozen' keeps every normalisation layer of the backbone in
  inference mode with its statistics and affine parameters fixed; 'train' lets them update.
  A head's own BatchNorm (fastai's head) always trains. Layers of stages left frozen stay
  frozen whatever the policy;
- channels_last, cuda when present, bf16 autocast where it pays (`runtime.resolve_precision(..., "finetune")`).

Under torchrun (`distributed`) every rank runs this loop as DistributedDataParallel: each
takes its contiguous part of every global batch (the single-process batches, except that a
last batch smaller than the number of ranks joins the one before; so with frozen BatchNorm and
no dropout the weights equal one process's to rounding), val is split between
the ranks without padding (each image counted once), and rank 0 decides early stopping and
writes the checkpoints. With `bn='train'` each rank normalises its own part of the batch, as
DistributedDataParallel does without SyncBatchNorm.

Nothing finished is lost: every epoch ends with a checkpoint (model, optimizer, best weights,
history, epoch) written atomically. Each epoch's randomness (batch order, augmentation,
dropout) is seeded by (seed, epoch) alone, so a run resumed from its checkpoint ends with the
weights of a run never interrupted.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from . import io as _io
from . import progress as _progress
from .backbones import state_dict_checksum
from .errors import HeadbenchError
from .export import model_size_bytes, save_head_weights, save_model
from .images import ImageDataset, View, collate
from .model import HeadbenchModel
from .train import EpochLog, batches, lr_at, seeded

BN_POLICIES = ("frozen", "train")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
CHECKPOINT = "checkpoint.pt"


@dataclass
class FinetuneConfig:
    """The fine-tuning protocol (serialised with the run).

    Args:
        epochs: maximum epochs; also the length of the cosine schedule.
        batch_size: images per step (a last batch of one joins the one before: BatchNorm).
        lr: the head's peak learning rate.
        backbone_lr: the backbone's learning rate as a fraction of `lr`.
        warmup_epochs: epochs of per-step linear warm-up.
        patience: epochs without a val-loss improvement before stopping; None: no early stop.
        unfreeze: 'all', or the number of last backbone stages to train.
        bn: 'frozen' or 'train' (see the module docstring).
        seed: seeds batch order, augmentation and dropout.
        augment: augment training images on the fly (off only for exactness tests).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    backbone_lr: float = 0.1
    warmup_epochs: int = 1
    patience: int | None = 3
    unfreeze: str = "all"
    bn: str = "frozen"
    seed: int = 0
    augment: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Images:
    """One split as fine-tuning reads it: image paths, content digests, labels."""

    paths: list[Path]
    digests: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FinetuneResult:
    """The fine-tuned model (best epoch's weights, eval mode) and the history that chose it."""

    model: HeadbenchModel
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    train_time_s: float
    history: list[EpochLog] = field(default_factory=list)
    resumed_from: int = 0  # epochs a checkpoint already held when this call started


# ----------------------------------------------------------------------------- what trains

def stage_names(backbone: nn.Module) -> list[str]:
    """The module names that end each stage, from timm's `feature_info` (shallow to deep)."""
    info = getattr(backbone.model, "feature_info", None) or []
    return [entry["module"] for entry in info if entry.get("module")]


def parse_unfreeze(value: str | int) -> str:
    """'all' or a whole number ≥ 1 of last stages, as a string."""
    text = str(value).strip().lower()
    if text == "all" or (text.isdigit() and int(text) >= 1):
        return text
    raise HeadbenchError(f"unfreeze must be 'all' or a number of last backbone stages ≥ 1, got "
                         f"{value!r}", param="unfreeze")


def trainable_modules(backbone: nn.Module, unfreeze: str) -> set[str]:
    """Names of the backbone's modules (under `backbone.model`) that fine-tuning trains.

    'all' opens every module; N opens the modules after the end of stage -(N+1), in the
    order the backbone registers them (timm's CNNs register in forward order)."""
    names = [name for name, _ in backbone.model.named_modules()]
    stages = stage_names(backbone)
    if unfreeze == "all" or int(unfreeze) >= len(stages):
        return set(names)
    boundary = stages[-int(unfreeze) - 1]
    if boundary not in names:
        raise HeadbenchError(f"backbone '{backbone.name}' has no module '{boundary}' named by "
                             "its feature_info; use unfreeze all", param="unfreeze")
    end = max(i for i, n in enumerate(names) if n == boundary or n.startswith(boundary + "."))
    return set(names[end + 1:])


def prepare_backbone(backbone: nn.Module, unfreeze: str, bn: str) -> list[nn.Module]:
    """Set `requires_grad` for fine-tuning; returns the modules to keep in eval mode while
    training (frozen normalisation layers and every module of a frozen stage)."""
    if bn not in BN_POLICIES:
        raise HeadbenchError(f"bn must be one of {', '.join(BN_POLICIES)}, got {bn!r}", param="bn")
    open_ = trainable_modules(backbone, unfreeze)
    frozen: list[nn.Module] = []
    for name, module in backbone.model.named_modules():
        trains = name in open_ and not (bn == "frozen" and isinstance(module, NORM_TYPES))
        for p in module.parameters(recurse=False):
            p.requires_grad_(trains)
        if not trains:
            frozen.append(module)
    return frozen


def set_mode(model: nn.Module, training: bool, frozen: Sequence[nn.Module]) -> None:
    """Train (or eval) mode, with the frozen modules always in eval mode: a frozen BatchNorm
    normalises with its running statistics and never updates them."""
    nn.Module.train(model, training)
    for module in frozen:
        module.eval()


# ----------------------------------------------------------------------------- data

def _image_seed(digest: str, seed: int, epoch: int) -> int:
    """The augmentation seed of one image in one epoch of one fine-tuning seed."""
    text = f"finetune|{digest}|{seed}|{epoch}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _dataset(images: Images, data_config: dict, augment: bool = False, seed: int = 0,
             epoch: int = 0) -> ImageDataset:
    """A split as fine-tuning reads it: centre views, or training views augmented with each
    image's own seed for (`seed`, `epoch`)."""
    if not augment:
        return ImageDataset(images.paths, data_config)
    keys = [_image_seed(d, seed, epoch) for d in images.digests]
    return ImageDataset(images.paths, data_config, View(aug=0), keys=keys)


def _labelled(labels: np.ndarray, dataset: ImageDataset, items: list) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """A batch and its labels; the split was decoded once already, so a failure now means the
    file changed or vanished during the run."""
    x, index, failed, reasons = collate(items)
    if failed:
        raise HeadbenchError(f"image '{dataset.paths[failed[0]]}' can no longer be decoded "
                             f"({reasons[0]}); restore it or rerun compare")
    return x, torch.as_tensor(labels[index])


def _loader(dataset: ImageDataset, labels: np.ndarray, batches: list[np.ndarray] | int,
            workers: int) -> DataLoader:
    """(images, labels) batches in the given order (training) or in order of `batches` images
    (evaluation)."""
    collate_fn = functools.partial(_labelled, labels, dataset)
    if isinstance(batches, int):
        return DataLoader(dataset, batch_size=batches, num_workers=workers, shuffle=False,
                          collate_fn=collate_fn)
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                      collate_fn=collate_fn)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Epoch `epoch`'s batches of `n` images, seeded by (seed, epoch). A last batch too small
    to give every rank an image joins the one before."""
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    cut = batches(torch.randperm(n, generator=g).numpy(), batch_size)
    if len(cut) > 1 and len(cut[-1]) < distributed.world():
        cut[-2:] = [np.concatenate(cut[-2:])]
    return cut


def _rank_part(batch: np.ndarray) -> np.ndarray:
    """This rank's contiguous part of a global batch (all of it in one process)."""
    return batch[distributed.part(len(batch))]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0xF7]).generate_state(1)[0])


# ----------------------------------------------------------------------------- optimisation

def _param_groups(model: HeadbenchModel, config: FinetuneConfig,
                  weight_decay: float) -> list[dict]:
    """Head and backbone, each split into decayed (ndim > 1) and not decayed parameters."""
    groups = []
    for part, lr in ((model.head, config.lr), (model.backbone, config.lr * config.backbone_lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        for decayed in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decayed]
            if chosen:
                groups.append(dict(params=chosen, lr=lr, peak_lr=lr,
                                   weight_decay=weight_decay if decayed else 0.0))
    return groups


def _set_lr(optimizer: torch.optim.Optimizer, step: int, warmup: int, total: int) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, group["peak_lr"], warmup, total)
    return optimizer.param_groups[0]["lr"]


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor, device: torch.device, precision: str,
          batch: int | None = None) -> tuple[float, int]:
    """One optimizer step on this rank's `x` of a global batch of `batch` images (default
    len(x)); the summed loss and the number right."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    y = y.to(device)
    with _autocast(device, precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    # DistributedDataParallel averages the ranks' gradients: scaled so that the average is the
    # gradient of the mean loss over the global batch, whatever each rank's share of it
    (loss * (distributed.world() / (batch or len(y)))).backward()
    optimizer.step()
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())


def logits_of(model: HeadbenchModel, images: Images, device: torch.device, precision: str,
              workers: int = 0, batch_size: int = 64) -> np.ndarray:
    """Float32 logits (N, K) of `model` on the centre views of `images`, in eval mode."""
    dataset = _dataset(images, model.data_config)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), _autocast(device, precision):
            for x, _ in _loader(dataset, images.labels, batch_size,
                                workers if len(images) > batch_size else 0):
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.num_classes), np.float32)


# ----------------------------------------------------------------------------- checkpoints

def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()  # in memory first: torch.save raises RuntimeError on a full disk
    torch.save(state, buffer)
    _io.atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at `path` if it belongs to this fine-tuning (`key`), else None; under
    torchrun rank 0's, sent to every rank."""
    return distributed.from_main(lambda: _read_checkpoint(path, key))


def _read_checkpoint(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: start over rather than fail the run
        _progress.warn(f"fine-tuning checkpoint '{path}' cannot be read ({type(e).__name__}); "
                       "starting fine-tuning over")
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        _progress.warn(f"fine-tuning checkpoint '{path}' is of another starting point or "
                       "settings; starting fine-tuning over")
        return None
    return saved


def save_finetuned(model_dir: Path, model: HeadbenchModel, class_names: Sequence[str],
                   seed: int, run_dir: str = "../..") -> int:
    """A fine-tuned model folder: the head (`model.safetensors`, `seed<k>.safetensors`), the
    fine-tuned backbone (`backbone.safetensors`, which model.json points at, with its
    checksum) and model.json; `export.load_model` and `predict` read it like any other.
    Returns its bytes on disk."""
    model_dir = Path(model_dir)
    backbone = copy.copy(model.backbone)  # the same modules, its own description
    backbone.weights = "finetuned"
    backbone.weights_checksum = state_dict_checksum(backbone.model.state_dict())
    backbone_file = model_dir / "backbone.safetensors"
    save_head_weights(backbone.model.state_dict(), backbone_file)
    save_head_weights(model.head.state_dict(), model_dir / f"seed{seed}.safetensors")
    save_model(model_dir, backbone, model.head, class_names, backbone_file=backbone_file,
               extra=dict(seed=seed, run_dir=run_dir, finetuned=True))
    return model_size_bytes(model_dir, backbone_file)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the loop

def measure_throughput(model: HeadbenchModel, train: Images, config: FinetuneConfig,
                       weight_decay: float, device: torch.device, precision: str,
                       steps: int = 2) -> float:
    """Training images per second, timed on a copy of the model (its weights stay as they are)
    over `steps` steps after one warm-up step; decoding included."""
    probe = copy.deepcopy(model)
    frozen = prepare_backbone(probe.backbone, config.unfreeze, config.bn)
    set_mode(probe, True, frozen)
    optimizer = torch.optim.AdamW(_param_groups(probe, config, weight_decay))
    size = min(config.batch_size, len(train))
    dataset = _dataset(train, model.data_config, config.augment, config.seed)
    batch = [np.arange(size)]
    x, y = next(iter(_loader(dataset, train.labels, batch, 0)))
    with seeded(config.seed):
        _step(probe, optimizer, x, y, device, precision)
        started = time.perf_counter()
        for _ in range(steps):
            for x, y in _loader(dataset, train.labels, batch, 0):
                _step(probe, optimizer, x, y, device, precision)
    return steps * size / (time.perf_counter() - started)


def finetune(model: HeadbenchModel, train: Images, val: Images, config: FinetuneConfig,
             weight_decay: float, checkpoint: Path, *, device: torch.device,
             precision: str = "fp32", workers: int = 0, label: str = "model", key: str = "",
             on_epoch: Callable[[int, EpochLog], None] | None = None) -> FinetuneResult:
    """Fine-tune `model` (moved to `device`, trained in place) on `train`, selecting on `val`.

    Resumes from `checkpoint` when it holds finished epochs of this same fine-tuning: the same
    `key` (what the caller's starting point depends on) and settings; writes it after every
    epoch. Ctrl-C keeps the last checkpoint and says so. The test split never enters here.

    Returns the model with its best epoch's weights, in eval mode.
    """
    if len(train) < 2 or len(val) < 1:
        raise HeadbenchError(f"fine-tuning needs at least 2 training and 1 validation images, "
                             f"got {len(train)} and {len(val)}")
    model.to(device).to(memory_format=torch.channels_last)
    frozen = prepare_backbone(model.backbone, config.unfreeze, config.bn)
    for p in model.head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(_param_groups(model, config, weight_decay))
    net = _parallel(model, device)
    n_steps = len(epoch_batches(len(train), config.batch_size, config.seed, 1))
    warmup, total = config.warmup_epochs * n_steps, config.epochs * n_steps
    history: list[EpochLog] = []
    best = dict(state=_state(model), epoch=0, loss=math.inf)
    seconds, start_epoch = 0.0, 1
    key = f"{key}|{json.dumps(config.to_dict(), sort_keys=True)}|{weight_decay!r}|{precision}"
    saved = _load_checkpoint(checkpoint, key)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = [EpochLog(**h) for h in saved["history"]]
        best = dict(state=saved["best_state"], epoch=saved["best_epoch"],
                    loss=saved["best_loss"])
        seconds, start_epoch = saved["seconds"], saved["epoch"] + 1
        _progress.log(f"fine-tuning {label}: resuming after epoch {saved['epoch']} "
                      f"from {checkpoint}")
    resumed_from = start_epoch - 1
    done = _stopped(history, best["epoch"], config)
    bar_total = (config.epochs - resumed_from) * len(train) if not done else 0
    try:
        with _progress.progress(f"fine-tuning {label}", total=bar_total, unit="img") as bar:
            for epoch in range(start_epoch, config.epochs + 1):
                if done:
                    break
                started = time.perf_counter()
                log = _epoch(net, optimizer, train, val, config, epoch, (n_steps, warmup, total),
                             frozen, device, precision, workers, bar)
                seconds += time.perf_counter() - started
                history.append(log)
                if log.val_loss < best["loss"]:
                    best = dict(state=_state(model), epoch=epoch, loss=log.val_loss)
                done = distributed.broadcast(_stopped(history, best["epoch"], config))
                if distributed.is_main():
                    _save_checkpoint(checkpoint, dict(
                        model=_state(model), optimizer=optimizer.state_dict(),
                        history=[dataclasses.asdict(h) for h in history],
                        best_state=best["state"], best_epoch=best["epoch"],
                        best_loss=best["loss"], epoch=epoch, seconds=seconds, key=key))
                if on_epoch is not None:
                    on_epoch(epoch, log)
    except KeyboardInterrupt:
        _progress.warn(f"fine-tuning {label} interrupted: the checkpoint of epoch "
                       f"{len(history)} is kept in {checkpoint}; rerun the same command to "
                       "continue from it")
        raise
    if not best["epoch"]:
        raise HeadbenchError(f"fine-tuning {label} diverged (val loss "
                             f"{history[0].val_loss if history else 'nan'}): lower finetune_lr",
                             hints=["finetune_lr"])
    model.load_state_dict(best["state"])
    model.eval()
    return FinetuneResult(model, best["epoch"], float(best["loss"]), len(history), seconds,
                          history, resumed_from)


def _stopped(history: list[EpochLog], best_epoch: int, config: FinetuneConfig) -> bool:
    """Whether training is over: every epoch run, or `patience` epochs without improvement."""
    if len(history) >= config.epochs:
        return True
    return (config.patience is not None and bool(history)
            and len(history) - best_epoch >= config.patience)


def _parallel(model: HeadbenchModel, device: torch.device) -> nn.Module:
    """`model` itself, or under torchrun wrapped in DistributedDataParallel (made after
    `prepare_backbone`: it syncs the gradients of what trains)."""
    if not distributed.active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def _val_logits(model: HeadbenchModel, val: Images, device: torch.device, precision: str,
                workers: int) -> torch.Tensor:
    """Val logits, each rank computing its contiguous part (no image twice, none padded)."""
    idx = distributed.part(len(val))
    mine = Images([val.paths[i] for i in idx], [val.digests[i] for i in idx], val.labels[idx])
    return torch.from_numpy(distributed.gather_rows(logits_of(model, mine, device, precision,
                                                              workers)))


def _epoch(net: nn.Module, optimizer: torch.optim.Optimizer, train: Images, val: Images,
           config: FinetuneConfig, epoch: int, schedule: tuple[int, int, int],
           frozen: Sequence[nn.Module], device: torch.device, precision: str, workers: int,
           bar) -> EpochLog:
    """One epoch (its randomness seeded by seed and epoch alone), then the val pass. `net` is
    the model or its DistributedDataParallel wrapper."""
    n_steps, warmup, total = schedule
    model = getattr(net, "module", net)
    data = _dataset(train, model.data_config, config.augment, config.seed, epoch)
    batches = epoch_batches(len(train), config.batch_size, config.seed, epoch)
    loss_sum, correct, lr = 0.0, 0, 0.0
    set_mode(net, True, frozen)
    with seeded(_epoch_seed(config.seed, epoch), device):
        loader = _loader(data, train.labels, [_rank_part(b) for b in batches], workers)
        for i, ((x, y), batch) in enumerate(zip(loader, batches)):
            lr = _set_lr(optimizer, (epoch - 1) * n_steps + i, warmup, total)
            loss, ok = _step(net, optimizer, x, y, device, precision, len(batch))
            loss_sum, correct = loss_sum + loss, correct + ok
            bar.advance(len(batch))
    loss_sum, correct = distributed.total(loss_sum), distributed.total(correct)
    logits = _val_logits(model, val, device, precision, workers)
    labels = torch.as_tensor(val.labels, dtype=torch.int64)
    val_loss = float(F.cross_entropy(logits, labels))
    val_acc = float((logits.argmax(1) == labels).float().mean())
    n = len(data)
    return EpochLog(epoch, loss_sum / n, correct / n, val_loss, val_acc, lr)


__all__ = ["BN_POLICIES", "FinetuneConfig", "FinetuneResult", "Images", "finetune",
           "logits_of", "measure_throughput", "parse_unfreeze", "prepare_backbone",
           "save_finetuned", "set_mode", "stage_names", "trainable_modules"]
