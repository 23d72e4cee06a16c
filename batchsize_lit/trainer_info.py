"""What a running trainer is made of: its callbacks, batch sizes and learning rate, for any model and data."""

import math
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch

C = TypeVar("C")


def find_callback(trainer: pl.Trainer, kind: type[C]) -> C | None:
    """The trainer's first callback of this class, or None."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, kind)), None)


def batch_size(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None = None) -> int | None:
    """Samples per training step on one device: the data module's ``batch_size`` (the trainer's, or the one given,
    for a trainer not yet fitted), else the train loader's."""
    hparams = getattr(trainer.datamodule or datamodule, "hparams", None) or {}
    if hparams.get("batch_size") is not None:
        return int(hparams["batch_size"])
    loader = trainer.train_dataloader
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if size is not None else None


def global_batch_size(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None = None) -> int | None:
    """Samples per optimizer step over all devices: batch_size × world_size × accumulate_grad_batches."""
    size = batch_size(trainer, datamodule)
    return None if size is None else size * trainer.world_size * trainer.accumulate_grad_batches


def steps_per_epoch(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
    """Training batches per epoch on each device, from the train loader's length and limit_train_batches; None
    where the loader has no length."""
    source = trainer.datamodule if trainer.datamodule is not None else pl_module
    try:
        batches = math.ceil(len(source.train_dataloader()) / trainer.world_size)
    except (TypeError, NotImplementedError, AttributeError):
        return None
    limit = trainer.limit_train_batches
    return min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))


def learning_rate(trainer: pl.Trainer, initial: bool = False) -> float | None:
    """The first optimizer's learning rate, whatever the model and optimizer: now, or as the run began (before any
    scheduler changed it) with ``initial``."""
    if not trainer.optimizers:
        return None
    group = trainer.optimizers[0].param_groups[0]
    return float(group.get("initial_lr", group["lr"]) if initial else group["lr"])


def plain_sgd(trainer: pl.Trainer) -> bool:
    """Whether every optimizer is torch.optim.SGD without momentum: the optimizer a stability limit such as
    ``lr_max_stable`` (2/λ_max of the loss's Hessian) is about."""
    return bool(trainer.optimizers) and all(
        type(optimizer) is torch.optim.SGD and all(not group.get("momentum") for group in optimizer.param_groups)
        for optimizer in trainer.optimizers
    )


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The single-number entries of a metrics dict (``trainer.callback_metrics``), as floats."""
    out = {}
    for key, value in metrics.items():
        if (hasattr(value, "numel") and value.numel() == 1) or isinstance(value, int | float):
            out[key] = float(value)
    return out
