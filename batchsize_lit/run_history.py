"""The run's history, one row per epoch, and the train loss, epoch curves and run report it logs for any model."""

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from batchsize_lit.hparams_tab import write_hparams_tab
from batchsize_lit.outputs import batch_samples, logged_train_loss, unscaled_loss
from batchsize_lit.problem import reference_facts, run_report
from batchsize_lit.trainer_info import steps_per_epoch


class RunHistory(pl.Callback):
    """One row per epoch: the mean train loss, the monitored metric, steps and samples seen; for any model.

    The train loss is what ``training_step`` returns, summed on the device, so no step waits for the host. The
    callback logs it as ``train_loss_step`` (every ``log_every_n_steps``) and ``train_loss_epoch`` unless the model
    logs a ``train_loss`` itself, and logs the columns of the problem's run report (batchsize_lit.problem) at the
    end of every epoch. Runs of different batch sizes take different numbers of steps per epoch, so their
    global_step curves do not line up; the ``by_epoch/*`` and ``by_samples/*`` scalars do. At the end of fit the
    hparams tab gets the run's batch sizes, lr and max_epochs against the best monitored value.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        log_every_epoch: bool = True,
        hparams: list[str] | None = None,
    ) -> None:
        """
        Args:
            monitor: Metric recorded per epoch and reported as the run's best; follows early_stopping.monitor.
            mode: Whether lower (min) or higher (max) is better; follows early_stopping.mode.
            log_every_epoch: Lower trainer.log_every_n_steps to the number of steps in an epoch where an epoch is
                shorter, so that every epoch logs its step values.
            hparams: The hyperparameters the HParams tab records, as config keys (data.batch_size, model.lr) or
                their last part, beside the monitored metric's name; by default every model and data setting. A
                study records the keys its grid varies.
        """
        self.monitor, self.mode, self.log_every_epoch, self.hparam_keys = monitor, mode, log_every_epoch, hparams
        self.history: list[dict[str, float]] = []
        self.samples = 0
        self._loss_sum: Tensor | None = None
        self._batches = 0
        self._value: float | None = None
        self._before: Any = None
        self._logs_train_loss: bool | None = None
        self._count_samples = True
        self._facts: dict[str, float] = {}
        self._epoch_loss_monitored = False
        self._model_logs_epoch_loss: bool | None = None
        self._last_step = 0

    def state_dict(self) -> dict[str, Any]:
        # The epoch's running loss sum too: a checkpoint saved mid-epoch (SIGTERM) resumes the epoch's mean exactly.
        return {"history": self.history, "samples": self.samples, "epoch_loss": (self._loss_sum, self._batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history, self.samples = state_dict["history"], state_dict["samples"]
        self._loss_sum, self._batches = state_dict.get("epoch_loss", (None, 0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.log_every_epoch:
            batches = steps_per_epoch(trainer, pl_module)
            steps = None if batches is None else math.ceil(batches / trainer.accumulate_grad_batches)  # optimizer steps
            trainer.log_every_n_steps = epoch_log_interval(trainer.log_every_n_steps, steps)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._facts = reference_facts(trainer.datamodule, pl_module)
        self._epoch_loss_monitored = any(getattr(c, "monitor", None) == "train_loss_epoch" for c in trainer.callbacks)
        self._model_logs_epoch_loss = None
        self._last_step = trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._batches, self._value = None, 0, None
        self._before = trainer.callback_metrics.get(self.monitor)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self._count_samples:
            size = batch_samples(batch)
            if size is None:
                self._count_samples = False
                rank_zero_info(f"RunHistory: samples are not counted: a {type(batch).__name__} batch holds no tensor")
                return
            self.samples += size * trainer.world_size

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = unscaled_loss(outputs, trainer, pl_module)
        if loss is None:  # training_step returned none: the model's own logged train loss is read at the epoch end
            return
        self._loss_sum = loss.clone() if self._loss_sum is None else self._loss_sum.add_(loss)
        self._batches += 1
        if self._logs_train_loss is None:  # a model that logs its own train_loss keeps it
            self._logs_train_loss = not any(key.startswith("train_loss") for key in trainer.callback_metrics)
        stepped = trainer.global_step != self._last_step  # not while batches accumulate towards one optimizer step
        self._last_step = step = trainer.global_step
        every = trainer.log_every_n_steps
        if self._logs_train_loss and stepped and every and step % every == 0:
            for logger in trainer.loggers:
                logger.log_metrics({"train_loss_step": float(loss)}, step=step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and value is not self._before:  # logged by this validation, not left from an earlier one
            value = float(value)
            # Of several validations in an epoch (val_check_interval below 1), the epoch's row keeps the best, as
            # early stopping and the best checkpoint saw them: the summary then names the epoch whose weights return.
            if self._value is None or (value < self._value if self.mode == "min" else value > self._value):
                self._value = value
            self._before = trainer.callback_metrics.get(self.monitor)
            self._write(trainer, self.monitor, value, trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        row: dict[str, float] = {"epoch": epoch, "step": trainer.global_step, "samples": self.samples}
        if self._loss_sum is not None:  # None when training_step returns no loss (manual optimization)
            mean = trainer.strategy.reduce(self._loss_sum / self._batches, reduce_op="mean")  # over DDP ranks
            row["train_loss"] = float(mean)
            if self._model_logs_epoch_loss is None:  # decided at the first epoch's end, before this logs it
                self._model_logs_epoch_loss = "train_loss_epoch" in trainer.callback_metrics
            if self._epoch_loss_monitored and not self._model_logs_epoch_loss:
                # A callback monitors it and the model does not log it under that name (even if it logs a train_loss
                # of its own): logged for the callbacks. Already reduced; without sync_dist Lightning warns.
                pl_module.log("train_loss_epoch", mean, sync_dist=True)
            elif self._logs_train_loss:  # nothing monitors it: straight to the loggers, a fraction of a self.log call
                self._log(trainer, {"train_loss_epoch": row["train_loss"]})
            self._write(trainer, "train_loss", row["train_loss"], epoch)
            if self._value is None and self.monitor == "train_loss_epoch":
                self._value = row["train_loss"]
                self._write(trainer, self.monitor, self._value, epoch)
        elif (logged := logged_train_loss(trainer)) is not None:  # no loss returned, as under manual optimization
            row["train_loss"] = float(logged[1])
            self._write(trainer, "train_loss", row["train_loss"], epoch)
        self._log(trainer, run_report(self._facts, pl_module, trainer.datamodule).columns)  # e.g. weight and bias
        if self._value is not None:
            row[self.monitor] = self._value
        self.history.append(row)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = self.best()
        best_value = best[0] if best else None
        write_hparams_tab(trainer, pl_module, self.hparam_keys, self.monitor, best_value, self.last("train_loss"))

    def best(self) -> tuple[float, int] | None:
        """The best monitored value and its epoch (1-based), or None if it was never logged."""
        rows = [row for row in self.history if self.monitor in row]
        if not rows:
            return None
        pick = min if self.mode == "min" else max
        row = pick(rows, key=lambda r: r[self.monitor])
        return row[self.monitor], int(row["epoch"])

    def last(self, key: str) -> float | None:
        return self.history[-1].get(key) if self.history else None

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _write(self, trainer: pl.Trainer, name: str, value: float, epoch: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"by_epoch/{name}": value}, step=epoch)
            logger.log_metrics({f"by_samples/{name}": value}, step=self.samples)


def epoch_log_interval(every: int, steps: int | None) -> int:
    """Lightning logs every ``every`` optimizer steps: lowered to the steps of an epoch where an epoch has fewer, so
    that every epoch logs its train loss at least once (the history's log_every_epoch)."""
    return steps if steps is not None and 0 < steps < every else every
