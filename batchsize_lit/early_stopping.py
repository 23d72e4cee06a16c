"""Lightning's EarlyStopping that restores the best weights, and the error for a monitored metric never logged."""

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping as _EarlyStopping
from torch import Tensor, nn

from batchsize_lit import compat
from batchsize_lit.errors import BadInput, did_you_mean
from batchsize_lit.hook_overhead import FixedStateKey
from batchsize_lit.run_history import RunHistory
from batchsize_lit.weight_averaging import final_average


class EarlyStopping(FixedStateKey, _EarlyStopping):
    """Lightning's EarlyStopping plus Keras' ``restore_best_weights``.

    The weights of the best monitored check are copied in memory, on the module's device, whenever the monitored
    metric improves. When training ends, by early stop or at max_epochs, they are loaded back into the module.
    The copy and its epoch are part of the callback's checkpoint state, so they survive a resume, and resuming a
    run that already stopped early ends at once with the same weights.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int | None = 3,
        restore_best_weights: bool = True,
        check_on_train_epoch_end: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            monitor: Logged metric to watch.
            patience: Validation checks with no improvement before training stops; null never stops early.
            restore_best_weights: Load the weights of the best check back into the module when training ends.
            check_on_train_epoch_end: Check at the end of the training epoch rather than after validation; by
                default, when validation runs once at the end of every epoch.
            **kwargs: The other arguments of lightning.pytorch.callbacks.EarlyStopping.
        """
        patience = sys.maxsize if patience is None else patience
        super().__init__(monitor, patience=patience, check_on_train_epoch_end=check_on_train_epoch_end, **kwargs)
        self.restore_best_weights = restore_best_weights
        self.best_weights: dict[str, Tensor] | None = None
        self.best_epoch: int | None = None
        self.restored = False
        self.averaged_by: str | None = None  # the weight-averaging callback whose average the fit ended with
        self._ended = False
        self._validated_epoch = -1

    @property
    def check_at_epoch_end(self) -> bool | None:
        """Whether the check runs at the end of the training epoch, as Lightning decided at setup (the argument, or
        its own rule from the trainer); its hooks check only there, so this callback's must agree."""
        return compat.early_stopping_checks_at_epoch_end(self)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped_epoch and self.wait_count < self.patience:  # stopped early by a smaller patience: go on
            self.stopped_epoch = 0
        elif self.stopped_epoch:  # resumed from a run that had already stopped early: nothing left to train
            trainer.should_stop = True

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A misspelt monitor fails here, before the first epoch: the sanity check's validation logged a name that
        is nearly the same. A name unlike them all may still be logged in training, so it is checked later."""
        logged = trainer.callback_metrics
        if self.strict and self.monitor not in logged:
            close = did_you_mean(self.monitor, logged, cutoff=0.8)
            if close:
                names = ", ".join(sorted(logged))
                key = f"early_stopping.monitor={self.monitor!r}"
                raise BadInput(f"{key} is not logged (validation logs: {names}){close}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch
        if not self.check_at_epoch_end:
            self._check(trainer, pl_module, super().on_validation_end)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_at_epoch_end:
            self._check(trainer, pl_module, super().on_train_epoch_end)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, parent_hook: Any) -> None:
        """Lightning's check, with a clear error for a monitor that is never logged, then the best-weights copy."""
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            cut_short = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
            if cut_short and self._validated_epoch != trainer.current_epoch:
                return  # the epoch ended before its validation: nothing to check
            if self.strict:
                raise BadInput(never_logged("early_stopping.monitor", self.monitor, trainer))
        best_before = self.best_score
        parent_hook(trainer, pl_module)
        if compat.improved_best_score(self, best_before):
            self.best_epoch = trainer.current_epoch
            if self.restore_best_weights:
                self.best_weights = copy_weights(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restored, self.averaged_by, self._ended = False, None, False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the best weights, unless a weight-averaging callback ends training with its average: that wins,
        and ``averaged_by`` names it (the summary says so). An average is never silently thrown away."""
        self._ended = True
        self.averaged_by = final_average(trainer)
        if self.restore_best_weights and self.best_weights is not None and self.averaged_by is None:
            pl_module.load_state_dict(self.best_weights)
            self.restored = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._ended:  # resumed from a run that had already finished: Lightning skips on_train_end
            self.on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_weights": self.best_weights, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience  # the resuming command's setting, as its config.yaml says; the counts carry on
        super().load_state_dict(state_dict)
        self.patience = patience
        self.best_weights = state_dict.get("best_weights")
        self.best_epoch = state_dict.get("best_epoch")


def copy_weights(module: nn.Module) -> dict[str, Tensor]:
    """A copy of the module's state_dict, detached and on its device, that later steps do not change."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def never_logged(key: str, metric: str, trainer: pl.Trainer) -> str:
    """The one-line error for a monitored metric that the model does not log, naming what can be monitored: what
    was logged, and the run history's train_loss_epoch (logged for a callback only when one monitors it)."""
    names = set(trainer.callback_metrics)
    if any(isinstance(callback, RunHistory) for callback in trainer.callbacks):
        names.add("train_loss_epoch")
    logged = ", ".join(sorted(names)) or "none"
    no_val = sum(trainer.num_val_batches or [0]) == 0 if isinstance(trainer.num_val_batches, list) else False
    hint = "; the data has no validation batches" if no_val else ""
    return f"{key}={metric!r} is never logged (logged: {logged}){hint}"
