"""EarlyStopping that restores the best weights, a last.ckpt kept current, the run history and the divergence stop."""

import math
import os
import random
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _EarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from batchsize_lit import compat
from batchsize_lit.disk import saving, torch_save
from batchsize_lit.errors import BadInput, Diverged, did_you_mean
from batchsize_lit.outputs import accumulation_scale, batch_samples, logged_train_loss, step_loss
from batchsize_lit.problem import reference_facts, run_report
from batchsize_lit.signals import is_sigterm, save_at_sigterm, stopped_line
from batchsize_lit.trainer_info import batch_size, global_batch_size, learning_rate, plain_sgd, steps_per_epoch
from batchsize_lit.weight_averaging import final_average

# The hooks Lightning calls on every callback at every training step or evaluation batch.
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_idle_hooks(callbacks: list[pl.Callback]) -> None:
    """Lightning calls each per-batch hook of every callback, a no-op or not, inside a profiler context: a few µs a
    call, six hooks a step. A hook that a callback's class does not override is set to None on the instance, which
    Lightning skips as not callable; a step then costs only the hooks that do something."""
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(pl.Callback, hook):
                setattr(callback, hook, None)


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
        self.check_at_epoch_end = check_on_train_epoch_end
        self.best_weights: dict[str, Tensor] | None = None
        self.best_epoch: int | None = None
        self.restored = False
        self.averaged_by: str | None = None  # the weight-averaging callback whose average the fit ended with
        self._ended = False
        self._validated_epoch = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.check_at_epoch_end is None:  # Lightning's own rule for when it checks
            self.check_at_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

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
        if self.best_score is not best_before:  # Lightning replaces best_score only on an improvement
            self.best_epoch = trainer.current_epoch
            if self.restore_best_weights:
                self.best_weights = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}

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


class ModelCheckpoint(_FixedStateKey, _ModelCheckpoint):
    """Lightning's ModelCheckpoint; with ``save_last: true``, last.ckpt is also written at every epoch's end.

    Lightning writes last.ckpt only when a top-k checkpoint is saved; here, in addition, at the end of every training
    epoch that saved nothing, so that resuming from it continues exactly where training stopped. Each last.ckpt is
    written by Lightning's own code: its name template, versioning and removal of the previous one are Lightning's.
    ``save_last: link`` and ``false`` behave as in Lightning.
    """

    def __init__(
        self,
        monitor: str | None = "val_loss",
        filename: str | None = "best-{epoch}",
        save_last: bool | Literal["link"] | None = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            monitor: Logged metric that picks the best checkpoint.
            filename: Name pattern of the best checkpoint.
            save_last: true writes last.ckpt at the end of every epoch; link and false as in Lightning.
            **kwargs: The other arguments of lightning.pytorch.callbacks.ModelCheckpoint.
        """
        self.report_interrupt = True  # a study reports an interrupted cell its own way
        self.sigterm_checkpoint: str | None = None  # where a fit stopped by SIGTERM saved its last step
        super().__init__(monitor=monitor, filename=filename, save_last=save_last, **kwargs)
        if not kwargs.get("every_n_train_steps") and kwargs.get("train_time_interval") is None:
            self.on_train_batch_end = None  # no saves between epochs: a hook that is None is skipped (skip_idle_hooks)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        with warnings.catch_warnings():
            if self.dirpath is None:  # the run's own folder: not empty only when --ckpt_path last resumes it there
                warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # saves top-k, and last with it, when it is time to
        if self.save_last is True and not compat.checkpoint_skips_saving(self, trainer):  # nothing saved at this step
            compat.save_last_checkpoint(self, trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Which checkpoints were best and last matters to a resumed fit only; evaluating a checkpoint read from
        # another folder would otherwise warn that the folder changed.
        if getattr(self, "_fitting", True):
            super().load_state_dict(state_dict)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # A DataLoader(shuffle=True) draws each epoch's order from the global generator: resumed from the end of an
        # epoch with the states of then, it shuffles as the uninterrupted run did. One process only: a checkpoint
        # holds rank 0's states.
        if "rng_states" in checkpoint and trainer.state.fn == TrainerFn.FITTING and trainer.world_size == 1:
            set_rng_states(checkpoint["rng_states"])
        if trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and "fit_loop" in checkpoint.get("loops", {}):
            # Evaluation logs at the step the checkpoint was saved at, beside the training curves, not at step 0.
            trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if is_sigterm(exception):  # stopped at a step boundary: last.ckpt at that step, even mid-epoch
            dirpath = self.dirpath if self.save_last else None
            path = save_at_sigterm(trainer, dirpath, "last.ckpt", self.save_weights_only)
            self.sigterm_checkpoint = path
            if path:
                self.last_model_path = path
            if trainer.is_global_zero and self.report_interrupt:
                print(stopped_line(trainer, path), file=sys.stderr)
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero and self.report_interrupt:
            finished = trainer.current_epoch  # last.ckpt is written at the end of every epoch
            if self.last_model_path and finished:
                where = f"{self.last_model_path} holds the end of epoch {finished}; resume with --ckpt_path last"
            else:
                where = "no epoch had finished, so there is no last.ckpt to resume from"
            print(f"Interrupted in epoch {trainer.current_epoch + 1}: {where}", file=sys.stderr)


def rng_states() -> dict[str, Any]:
    """The global random generators' states (torch, CUDA once used, Python, NumPy), each kept in a tensor, so that a
    checkpoint holding them still loads with weights_only and pickles them as a few objects, not thousands of ints."""
    version, words, gauss = random.getstate()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": (version, torch.tensor(words), gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        name, keys, position, has_gauss, cached = sys.modules["numpy"].random.get_state()
        states["numpy"] = (name, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what rng_states() recorded; CUDA states only onto as many devices as they came from."""
    torch.set_rng_state(states["torch"])
    version, words, gauss = states["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states and "numpy" in sys.modules:
        name, keys, position, has_gauss, cached = states["numpy"]
        sys.modules["numpy"].random.set_state((name, keys.numpy().astype("uint32"), position, has_gauss, cached))


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
            if steps is not None and 0 < steps < trainer.log_every_n_steps:
                trainer.log_every_n_steps = steps

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
        loss = step_loss(outputs, accumulation_scale(trainer, pl_module))
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
            self._value = float(value)
            self._write(trainer, self.monitor, self._value, trainer.current_epoch + 1)

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
        params = {
            **pl_module.hparams,
            **(getattr(trainer.datamodule, "hparams", None) or {}),
            "seed_everything": os.environ.get("PL_GLOBAL_SEED"),
            "batch_size": batch_size(trainer),
            "global_batch_size": global_batch_size(trainer),
            "lr_effective": learning_rate(trainer, initial=True),
            "max_epochs": trainer.max_epochs,
        }
        params = {key: value for key, value in params.items() if not key.startswith("_")}  # LightningCLI's own
        if self.hparam_keys is not None:  # what varies, so the tab shows it first and nothing constant
            names = {key.rsplit(".", 1)[-1] for key in self.hparam_keys}
            params = {key: value for key, value in params.items() if key in names}
        params["monitor"] = self.monitor
        best = self.best()
        metrics = {f"hp/{self.monitor}_best": best[0] if best else None, "hp/train_loss": self.last("train_loss")}
        metrics = {key: value for key, value in metrics.items() if value is not None}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics)
            else:
                logger.log_hyperparams(params)
                logger.log_metrics(metrics, step=trainer.global_step)

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
            cause = f"lr {lr:.4g} is above this problem's stability limit lr_max_stable = {self._limit:.4g}; lower it"
        else:
            cause = f"lr {lr:.4g} is below the stability limit {self._limit:.4g}, so look at the data and the model"
        raise Diverged(
            f"{name} became {float(value)} in epoch {trainer.current_epoch + 1} at step {trainer.global_step}."
            f" Likely cause: {cause}"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a write cut off by a kill
    or a full disk leaves the previous checkpoint whole, never a truncated one.

    Until the run's teardown, the renames (and removals of old best checkpoints, in order after them) run on a
    background thread: replacing a file on ext4 waits for its data to be flushed, from a fraction of a millisecond
    to tens of milliseconds, every epoch. The checkpoint itself is written before ``save_checkpoint`` returns.
    A load, the teardown at the end of each fit, validate or test, and interpreter exit wait for what is pending,
    and an error there is raised at the next save or at teardown. After teardown, renames are immediate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.background = True
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._saves = 0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self._raise_failed()
        if "://" in str(path) or storage_options is not None:  # remote file systems: Lightning's own write
            self.wait()
            return super().save_checkpoint(checkpoint, path, storage_options)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._saves += 1
        temporary = f"{path}.tmp{os.getpid()}-{self._saves}"  # one per save: the previous may still be pending
        try:
            saving(path, lambda: torch_save(checkpoint, temporary))  # a full disk: DiskFull, naming the checkpoint
        except BaseException:
            _remove(temporary)
            raise
        self._run(_replace, temporary, str(path))

    def remove_checkpoint(self, path: Any) -> None:
        self._run(super().remove_checkpoint, path)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.wait()
        return super().load_checkpoint(*args, **kwargs)

    def teardown(self) -> None:
        self.background = False
        try:
            self.wait()
        finally:
            if self._executor is not None:  # its thread ends with it: a study of many cells keeps none
                self._executor.shutdown()
                self._executor = None

    def wait(self) -> None:
        """Block until every pending rename and removal is done; raise the first error among them."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _run(self, function: Callable[..., None], *args: Any) -> None:
        if not self.background:
            return function(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-rename")
        self._pending = [future for future in self._pending if not future.done() or future.exception()]
        self._pending.append(self._executor.submit(function, *args))

    def _raise_failed(self) -> None:
        if any(future.done() and future.exception() for future in self._pending):
            self.wait()

    def __getstate__(self) -> dict[str, Any]:  # a spawned process gets its own thread and nothing pending
        self.wait()
        return {**self.__dict__, "_executor": None, "_pending": []}


def _replace(temporary: str, path: str) -> None:
    try:
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


class BriefModelSummary(ModelSummary):
    """Lightning's model summary in one line: the parameter counts and size, and each top-level layer that has
    parameters. For the full table, give Lightning's own ModelSummary callback in trainer.callbacks."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = dict(summary_data)
        rows = zip(columns.get("Name", []), columns.get("Type", []), columns.get("Params", []), strict=True)
        layers = [
            f"{name} ({kind}, {params.strip()})" for name, kind, params in rows if params.strip() not in ("0", "")
        ]
        rank_zero_info(
            f"Model: {total_parameters:,} parameters, {trainable_parameters:,} trainable, {model_size:.2f} MB"
            + (f"; {', '.join(layers[:8])}{', ...' if len(layers) > 8 else ''}" if layers else "")
        )
