"""EarlyStopping that restores the best weights, a last.ckpt kept current, and the curves a study compares."""

import os
import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _EarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor

from batchsize_lit.model import global_batch_size


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def find_callback(trainer: pl.Trainer, kind: type) -> Any:
    """The trainer's first callback of this class, or None."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, kind)), None)


class _FixedStateKey:
    """Lightning formats a callback's state_key for every hook call, several times a step; for these callbacks it
    depends only on arguments that never change after __init__, so it is formatted once."""

    _state_key: str | None = None

    @property
    def state_key(self) -> str:
        if self._state_key is None:
            self._state_key = super().state_key
        return self._state_key


class EarlyStopping(_FixedStateKey, _EarlyStopping):
    """Lightning's EarlyStopping plus Keras' ``restore_best_weights``.

    The weights of the best monitored check are copied in memory, on the module's device, whenever the monitored
    metric improves. When training ends, by early stop or at max_epochs, they are loaded back into the module.
    The copy and its epoch are part of the callback's checkpoint state, so they survive a resume.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int | None = 3,
        restore_best_weights: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            monitor: Logged metric to watch.
            patience: Validation checks with no improvement before training stops; null never stops early.
            restore_best_weights: Load the weights of the best check back into the module when training ends.
            **kwargs: The other arguments of lightning.pytorch.callbacks.EarlyStopping.
        """
        super().__init__(monitor=monitor, patience=sys.maxsize if patience is None else patience, **kwargs)
        self.restore_best_weights = restore_best_weights
        self.best_weights: dict[str, Tensor] | None = None
        self.best_epoch: int | None = None
        self.restored = False
        self._validated_epoch = self._epoch = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch
        super().on_validation_end(trainer, pl_module)

    def _validate_condition_metric(self, logs: dict[str, Tensor]) -> bool:
        if self.monitor not in logs and self._validated_epoch != self._epoch:
            return False  # no validation yet this epoch (max_steps ended it early): nothing to check
        if self.monitor not in logs and self.strict:
            raise ValueError(
                f"early_stopping.monitor={self.monitor!r} is never logged; logged metrics: {', '.join(logs) or 'none'}"
            )
        return super()._validate_condition_metric(logs)

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        self._epoch = trainer.current_epoch
        best_before = self.best_score
        super()._run_early_stopping_check(trainer)
        if self.best_score is not best_before:  # the parent replaces best_score only on an improvement
            self.best_epoch = trainer.current_epoch
            if self.restore_best_weights:
                state = trainer.lightning_module.state_dict()
                self.best_weights = {name: value.detach().clone() for name, value in state.items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)
            self.restored = True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_weights": self.best_weights, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_weights = state_dict.get("best_weights")
        self.best_epoch = state_dict.get("best_epoch")


class ModelCheckpoint(_FixedStateKey, _ModelCheckpoint):
    """Lightning's ModelCheckpoint keeping the best checkpoint, and a last.ckpt written at the end of every epoch.

    Lightning writes last.ckpt only when a top-k checkpoint is saved; here it follows every epoch, so that resuming
    from it continues exactly where training stopped.
    """

    def __init__(
        self, monitor: str | None = "val_loss", filename: str | None = "best-{epoch}", save_last: bool = True, **kwargs
    ) -> None:
        """
        Args:
            monitor: Logged metric that picks the best checkpoint.
            filename: Name pattern of the best checkpoint.
            save_last: Also write last.ckpt at the end of every epoch.
            **kwargs: The other arguments of lightning.pytorch.callbacks.ModelCheckpoint.
        """
        super().__init__(monitor=monitor, filename=filename, save_last=save_last, **kwargs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            if self.last_model_path:
                epoch = torch.load(self.last_model_path, map_location="cpu", weights_only=True)["epoch"] + 1
                where = f"{self.last_model_path} holds the end of epoch {epoch}; resume with --ckpt_path last"
            else:
                where = "no epoch had finished, so there is no last.ckpt to resume from"
            print(f"Interrupted in epoch {trainer.current_epoch + 1}: {where}", file=sys.stderr)


class CurveLogger(pl.Callback):
    """Logs the mean train loss per epoch and val_loss on epoch and samples-seen axes, and stops on divergence.

    Runs of different batch sizes take different numbers of steps per epoch, so their global_step curves do not
    line up; ``by_epoch/*`` and ``by_samples/*`` do. The train loss of an epoch is the mean over its batches of the
    batch loss, summed on the device, so no step waits for the host. At the end of fit the hparams tab gets the
    run's batch sizes, lr and max_epochs against its best val_loss.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.history: list[dict[str, float]] = []
        self.samples = 0
        self._loss_sum: Tensor | None = None
        self._batches = 0
        self._val_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "samples": self.samples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]
        self.samples = state_dict["samples"]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._batches, self._val_loss = None, 0, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        if self._loss_sum is None:
            self._loss_sum = loss.clone()
        else:
            self._loss_sum += loss
        self._batches += 1
        first = batch[0] if isinstance(batch, list | tuple) else None
        size = first.shape[0] if isinstance(first, Tensor) else extract_batch_size(batch)
        self.samples += size * trainer.world_size
        if trainer.log_every_n_steps and trainer.global_step % trainer.log_every_n_steps == 0:
            self._check_finite(trainer, self._loss_sum)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self._val_loss = float(value)
            self._write(trainer, f"{self.monitor}", self._val_loss, trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loss_sum is None:
            return
        mean = trainer.strategy.reduce(self._loss_sum / self._batches, reduce_op="mean")  # over DDP ranks
        self._check_finite(trainer, mean)
        pl_module.log("train_loss_epoch", mean, sync_dist=True)  # already reduced; without it Lightning warns
        epoch = trainer.current_epoch + 1
        row = {"epoch": epoch, "step": trainer.global_step, "samples": self.samples, "train_loss": float(mean)}
        if self._val_loss is not None:
            row[self.monitor] = self._val_loss
        self.history.append(row)
        self._write(trainer, "train_loss", row["train_loss"], epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = {
            **pl_module.hparams,
            **(getattr(trainer.datamodule, "hparams", None) or {}),
            "seed_everything": os.environ.get("PL_GLOBAL_SEED"),
            "global_batch_size": global_batch_size(trainer),
            "max_epochs": trainer.max_epochs,
        }
        if hasattr(pl_module, "effective_lr"):
            params["lr_effective"] = pl_module.effective_lr()
        metrics = {f"hp/{self.monitor}_best": self.best(), "hp/train_loss": self.last("train_loss")}
        metrics = {key: value for key, value in metrics.items() if value is not None}
        params = {key: value for key, value in params.items() if not key.startswith("_")}  # LightningCLI's own
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics)
            else:
                logger.log_hyperparams(params)
                logger.log_metrics(metrics, step=trainer.global_step)

    def best(self) -> float | None:
        """The lowest monitored value seen, or None without validation."""
        values = [row[self.monitor] for row in self.history if self.monitor in row]
        return min(values) if values else None

    def last(self, key: str) -> float | None:
        return self.history[-1].get(key) if self.history else None

    def _write(self, trainer: pl.Trainer, name: str, value: float, epoch: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"by_epoch/{name}": value}, step=epoch)
            logger.log_metrics({f"by_samples/{name}": value}, step=self.samples)

    @staticmethod
    def _check_finite(trainer: pl.Trainer, value: Tensor) -> None:
        if not torch.isfinite(value):
            raise Diverged(
                f"train loss became {float(value)} in epoch {trainer.current_epoch + 1} at step {trainer.global_step}"
            )
