"""What a training step hands the callbacks, read one way everywhere: its loss, its examples, the scaling undone."""

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor

# The names a model's own train loss is logged under, in order of preference for a whole epoch's value: self.log's
# on_epoch copy, then the name as logged (the latest step's value when logged per step), then its on_step copy.
TRAIN_LOSS_NAMES = ("train_loss_epoch", "train_loss", "train_loss_step")


def accumulation_scale(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """What Lightning divided each micro-batch's loss, and so its gradients, by: accumulate_grad_batches under
    automatic optimization; 1 under manual optimization, where the model does its own scaling."""
    return trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1


def step_loss(outputs: Any, scale: int = 1) -> Tensor | None:
    """The loss a ``training_step`` returned (a tensor, or a mapping's ``loss``), detached and multiplied by
    ``scale`` (``accumulation_scale`` gives the loss as the model computed it), or None where it returned none,
    as under manual optimization, or no single number. No host sync: the tensor stays on its device."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        return None
    loss = loss.detach()
    return loss * scale if scale != 1 else loss


def logged_train_loss(trainer: pl.Trainer) -> tuple[str, Tensor] | None:
    """The train loss the model logs itself (one of TRAIN_LOSS_NAMES) and its name, or None: what stands for the
    loss of a ``training_step`` that returns none. Reads ``trainer.callback_metrics``, which gathers the logged
    values: call it at checks, not at every step."""
    metrics = trainer.callback_metrics
    for name in TRAIN_LOSS_NAMES:
        value = metrics.get(name)
        if isinstance(value, Tensor) and value.numel() == 1:
            return name, value
    return None


def batch_samples(batch: Any) -> int | None:
    """Examples in a batch of any type Lightning moves to the device (a tensor, or tuples, lists, namedtuples,
    dicts and dataclasses of them, nested): the length of its first tensor, or None where it holds no tensor."""
    first = batch[0] if isinstance(batch, list | tuple) and batch else None
    if isinstance(first, Tensor):  # the common (x, y) batch, without the generator Lightning's helper walks
        return first.shape[0] if first.ndim else 1
    try:
        return extract_batch_size(batch)
    except (MisconfigurationException, RecursionError):
        return None


def unscaled_loss(outputs: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
    """The loss a ``training_step`` returned as the model computed it: ``step_loss`` with Lightning's division by
    accumulate_grad_batches undone where it divided (``accumulation_scale``), or None where it returned none."""
    return step_loss(outputs, accumulation_scale(trainer, pl_module))
