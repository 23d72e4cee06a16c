"""Stops a fit whose train loss or monitored metric is NaN or infinite, naming the likely cause."""

import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _EarlyStopping
from torch import Tensor

from batchsize_lit.errors import Diverged
from batchsize_lit.outputs import logged_train_loss, step_loss
from batchsize_lit.problem import reference_facts
from batchsize_lit.run_history import RunHistory
from batchsize_lit.trainer_info import learning_rate, plain_sgd


class DivergenceCheck(pl.Callback):
    """Stops training with an explanation once the train loss or a monitored metric is NaN or infinite.

    Before training it warns when the learning rate is at or above the problem's ``lr_max_stable`` reference fact
    (with plain SGD, which it is about).

    The train loss is what ``training_step`` returns or, where it returns none (manual optimization), what the model
    logs as ``train_loss`` (or ``train_loss_step``, ``train_loss_epoch``). The monitored metrics, those of early
    stopping and of the run history, are checked after each validation: Lightning's early stopping would end a run
    whose monitor became NaN as an ordinary early stop.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        """
        Args:
            every_n_steps: Steps between checks of the train loss (each check waits for the device); by default
                log_every_n_steps. The last step of every epoch is checked too.
        """
        self.every_n_steps = every_n_steps
        self._limit: float | None = None
        self._loss: Tensor | None = None
        self._last_step = 0
        self._monitors: set[str] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        limit = reference_facts(trainer.datamodule, pl_module).get("lr_max_stable")
        self._limit = limit if plain_sgd(trainer) else None
        self._last_step = trainer.global_step
        kinds = (_EarlyStopping, RunHistory)
        self._monitors = {c.monitor for c in trainer.callbacks if isinstance(c, kinds) and isinstance(c.monitor, str)}
        lr = learning_rate(trainer)
        if self._limit is not None and lr is not None and lr >= self._limit and trainer.is_global_zero:
            print(f"warning: lr {lr:.4g} is at or above this problem's stable limit lr_max_stable = "
                  f"{self._limit:.4g}: SGD will diverge", file=sys.stderr)  # fmt: skip

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._loss = step_loss(outputs)  # finite or not whatever the accumulation scaling
        stepped = trainer.global_step != self._last_step  # not while batches accumulate towards one optimizer step
        self._last_step = trainer.global_step
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        if stepped and trainer.global_step % every == 0:
            self._check_train_loss(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_train_loss(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        for name in sorted(self._monitors):
            value = metrics.get(name)
            if isinstance(value, Tensor) and value.numel() == 1:
                self._check(trainer, name, value)

    def _check_train_loss(self, trainer: pl.Trainer) -> None:
        if self._loss is not None:
            self._check(trainer, "train loss", self._loss)
        elif (logged := logged_train_loss(trainer)) is not None:
            self._check(trainer, *logged)

    def _check(self, trainer: pl.Trainer, name: str, value: Tensor) -> None:
        finite = bool(torch.isfinite(value))
        if trainer.strategy.reduce_boolean_decision(finite, all=True):  # every DDP rank stops, or none
            return
        lr = learning_rate(trainer)
        if lr is None or self._limit is None:
            cause = "a learning rate too high; lower it"
        elif lr >= self._limit:
            limit = f"this problem's stability limit lr_max_stable = {self._limit:.4g}, which the data's scale sets"
            cause = f"lr {lr:.4g} is above {limit}; lower it"
        else:
            cause = f"lr {lr:.4g} is below the stability limit {self._limit:.4g}, so look at the data and the model"
        raise Diverged(
            f"{name} became {float(value)} in epoch {trainer.current_epoch + 1} at step {trainer.global_step}."
            f" Likely cause: {cause}"
        )
