"""The template's own checks of a command's config, data and hyperparameters, each bad input one line."""

import math
import re
import threading
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden

from batchsize_lit import compat
from batchsize_lit.errors import BadInput
from batchsize_lit.runs import check_checkpoint

# The ckpt_path values Lightning resolves itself (best, hpc, registry) or the CLI resolves (last): no file to check.
NAMED_CHECKPOINTS = ("best", "last", "hpc", "registry")


def check_given_checkpoint(config: Namespace) -> None:
    """A clear error for a ckpt_path file that is missing or unreadable, before Lightning reads hyperparameters from
    it.

    Args:
        config: The subcommand's config.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path not in NAMED_CHECKPOINTS:
        check_checkpoint(ckpt_path, weights_only=config.get("weights_only") is not False)


def require_checkpointing(trainer_config: Namespace) -> None:
    """Reject trainer.enable_checkpointing=false: the template always has its checkpoint callback.

    Args:
        trainer_config: The config's trainer section.
    """
    if trainer_config.get("enable_checkpointing") is False:
        raise BadInput(
            "trainer.enable_checkpointing=false: this template always has its checkpoint callback; write no "
            "checkpoint with --checkpoint.save_top_k 0 --checkpoint.save_last false"
        )


def check_writer_settings(trainer_config: Namespace) -> None:
    """A logger's ``flush_secs`` that its writer thread cannot wait on (None, a string, ≤ 0, NaN, or past the
    longest wait the platform takes): TensorBoard's thread would end with a traceback once the run has started, and
    the event file be written no more; here it is one line before anything runs.

    Args:
        trainer_config: The config's trainer section.
    """
    loggers = trainer_config.get("logger")
    listed = isinstance(loggers, list)
    for index, logger in enumerate(loggers if listed else [loggers]):
        settings = logger.get("init_args") if isinstance(logger, Namespace) else None
        if not isinstance(settings, Namespace) or "flush_secs" not in settings:
            continue
        value = settings.flush_secs
        number = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
        if not (number and 0 < value < threading.TIMEOUT_MAX):
            key = f"trainer.logger{f'[{index}]' if listed else ''}.init_args.flush_secs"
            raise BadInput(
                f"{key}={value!r}: must be a number of seconds above 0 and below {threading.TIMEOUT_MAX:.0f}"
            )


def check_max_time(trainer_config: Namespace) -> None:
    """A trainer.max_time string that is not DD:HH:MM:SS, which Lightning's Timer rejects without naming the key.

    Args:
        trainer_config: The config's trainer section.
    """
    value = trainer_config.get("max_time")
    if isinstance(value, str) and not re.fullmatch(r"\d+:\d+:\d+:\d+", value):
        raise BadInput(f"trainer.max_time={value!r}: must be DD:HH:MM:SS, or a mapping such as {{hours: 1}}")


def check_num_nodes(trainer_config: Namespace) -> None:
    """A trainer.num_nodes beyond a process group's 32-bit world size, on which torch.distributed fails with a
    traceback that names no key.

    Args:
        trainer_config: The config's trainer section.
    """
    nodes = trainer_config.get("num_nodes")
    if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes >= 2**31:
        raise BadInput(f"trainer.num_nodes={nodes}: more machines than a process group counts (2**31 - 1 at most)")


def check_seed(config: Namespace) -> None:
    """A seed_everything outside numpy's seed range, which Lightning rejects without naming the key.

    Args:
        config: The subcommand's config.
    """
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not min_seed_value <= seed <= max_seed_value:
        raise BadInput(f"seed_everything={seed}: must be from {min_seed_value} to {max_seed_value}, numpy's seeds")


def check_no_nan_settings(config: Namespace) -> None:
    """A NaN among the model's or the data's settings, which no setting means: a fork's data module may take it
    without a check of its own, and the fit then diverges with a message that blames the learning rate.

    Args:
        config: The subcommand's config.
    """
    for section in ("model", "data"):
        node = config.get(section)
        if isinstance(node, Namespace) and isinstance(node.get("init_args"), Namespace):
            section, node = f"{section}.init_args", node.init_args
        for key, value in _numbers(node, section):
            if math.isnan(value):
                raise BadInput(f"{key}={value!r}: not a number; give a number")


def _numbers(node: Any, key: str) -> list[tuple[str, float]]:
    """The floats in a config node, each with its key (dots for namespaces and dicts, [i] for lists)."""
    if isinstance(node, float):
        return [(key, node)]
    if isinstance(node, Namespace | dict):
        items = node.items() if isinstance(node, dict) else vars(node).items()
        return [found for name, value in items for found in _numbers(value, f"{key}.{name}")]
    if isinstance(node, list | tuple):
        return [found for index, value in enumerate(node) for found in _numbers(value, f"{key}[{index}]")]
    return []


def checkpoint_follows_early_stopping(config: Namespace, given: set[str]) -> None:
    """The best checkpoint is picked by early stopping's monitor and mode, unless checkpoint.monitor is given.

    Args:
        config: The subcommand's config, changed in place.
        given: The keys the command line sets (config_args.given_keys).
    """
    stopping, checkpoint = config.get("early_stopping"), config.get("checkpoint")
    if stopping and checkpoint and "checkpoint.monitor" not in given and stopping.monitor != checkpoint.monitor:
        checkpoint.monitor, checkpoint.mode = stopping.monitor, stopping.get("mode", "min")


def require_data(
    subcommand: str | None, stage: str, datamodule: LightningDataModule | None, model: LightningModule | None
) -> None:
    """A clear error where neither the data module nor the model gives this stage any data.

    Args:
        subcommand: The subcommand, named in the error.
        stage: ``val``, ``test`` or ``predict``.
        datamodule: The data module, if any.
        model: The model.
    """
    parts = [part for part in (datamodule, model) if part is not None]
    if not any(is_overridden(f"{stage}_dataloader", part) for part in parts):
        name = type(datamodule or model).__name__
        raise BadInput(f"{subcommand}: {name} gives no {stage} data: no {stage}_dataloader, or an empty split")


def check_shared_hparams(trainer: Trainer, model: LightningModule | None, datamodule: Any) -> None:
    """Lightning logs the model's and the data's hyperparameters together, and fails on a name they share with two
    values, after the run folder is made; here that is one line before anything runs.

    Args:
        trainer: The trainer: with no logger nothing is logged.
        model: The model.
        datamodule: The data module, if any.
    """
    if not trainer.loggers or datamodule is None or model is None:
        return
    if not (compat.logs_hyperparameters(model) and compat.logs_hyperparameters(datamodule)):
        return  # save_hyperparameters(logger=False): Lightning does not merge them
    ours, data = model.hparams_initial, getattr(datamodule, "hparams_initial", {})
    shared = [key for key in ours if key in data and key != "_class_path"]  # LightningCLI's own: skipped
    clash = [key for key in shared if differ(ours[key], data[key])]
    if clash:
        pairs = ", ".join(f"model.{key}={ours[key]!r} and data.{key}={data[key]!r}" for key in clash)
        raise BadInput(f"{pairs}: the model's and the data's hyperparameters are logged together, so a name they "
                       "share needs one value")  # fmt: skip


def differ(a: Any, b: Any) -> bool:
    """Whether Lightning counts two values of one hyperparameter name as different: another type, another tensor
    object, or unequal.

    Args:
        a: The model's value.
        b: The data module's value.
    """
    if type(a) is not type(b):
        return True
    return a is not b if isinstance(a, torch.Tensor) else bool(a != b)
