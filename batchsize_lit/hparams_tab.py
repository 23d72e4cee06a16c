"""The HParams tab of a run: its batch sizes, lr, max_epochs and settings against its best monitored value."""

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from batchsize_lit.trainer_info import batch_size, global_batch_size, learning_rate


def global_seed() -> int | None:
    """The seed seed_everything set in this process, as a number (Lightning keeps it in PL_GLOBAL_SEED, a string)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None and seed.lstrip("-").isdigit() else None


def run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule, keys: list[str] | None) -> dict[str, Any]:
    """The model's and data's settings, the seed, batch sizes, initial effective lr and max_epochs; only those named
    by ``keys`` (config keys such as data.batch_size, or their last part) where given."""
    run = {
        "seed_everything": global_seed(),
        "batch_size": batch_size(trainer),
        "global_batch_size": global_batch_size(trainer),
        "lr_effective": learning_rate(trainer, initial=True),
        "max_epochs": trainer.max_epochs,
    }
    return tab_params(pl_module, trainer.datamodule, run, keys)


def tab_params(model: Any, datamodule: Any, run: dict[str, Any], keys: list[str] | None) -> dict[str, Any]:
    """The model's and data's hyperparameters and the run's own (seed, batch sizes, lr, max_epochs), without
    LightningCLI's private entries; only those ``keys`` name (config keys or their last part) where given."""
    params = {**model.hparams, **(getattr(datamodule, "hparams", None) or {}), **run}
    params = {key: value for key, value in params.items() if not key.startswith("_")}  # LightningCLI's own
    if keys is not None:  # what varies, so the tab shows it first and nothing constant
        names = {key.rsplit(".", 1)[-1] for key in keys}
        params = {key: value for key, value in params.items() if key in names}
    return params


def write_hparams_tab(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    keys: list[str] | None,
    monitor: str,
    best: float | None,
    train_loss: float | None,
) -> None:
    """Give every logger the run's hyperparameters (``run_hparams``, and the monitored metric's name) with the best
    monitored value and the last train loss: TensorBoard as its HParams tab, the others as params and metrics.

    Args:
        trainer: The trainer at the end of fit.
        pl_module: The trained module.
        keys: The hyperparameters to record, as in ``run_hparams``; None for all.
        monitor: The monitored metric's name.
        best: Its best value, or None if it was never logged.
        train_loss: The last epoch's mean train loss, or None.
    """
    log_tab(trainer.loggers, run_hparams(trainer, pl_module, keys), monitor, best, train_loss, trainer.global_step)


def log_tab(
    loggers: list[Logger], params: dict[str, Any], monitor: str, best: float | None, train_loss: float | None, step: int
) -> None:
    """Log the tab's hyperparameters with the monitored metric's name, and its best value and the last train loss,
    to each logger: TensorBoard's HParams tab, or the logger's params and metrics."""
    params = {**params, "monitor": monitor}
    metrics = {f"hp/{monitor}_best": best, "hp/train_loss": train_loss}
    metrics = {key: value for key, value in metrics.items() if value is not None}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(metrics, step=step)
