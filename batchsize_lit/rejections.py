"""Bad input that Lightning, jsonargparse or a data module's hooks reject with a plain exception, told apart from
faults and turned into one line that names the key or the hook."""

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import jsonargparse
import lightning
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule

from batchsize_lit.errors import BadInput, one_line

# The config groups that hold the settings of one callback class each (BatchSizeCLI.add_arguments_to_parser).
CALLBACK_GROUPS = ("early_stopping", "checkpoint", "history", "divergence")
DATA_HOOKS = ("prepare_data", "setup")
_LIGHTNING = str(Path(lightning.__file__).parent)
_JSONARGPARSE = str(Path(jsonargparse.__file__).parent)


def rejected_setting(cli: Any, error: Exception) -> BadInput | None:
    """The one-line error for bad input that surfaced as a plain exception, or None for a fault.

    Bad input here: a callback group that is not keys and values (jsonargparse fails inside its instantiation),
    a value Lightning itself rejects before the first training step (the exception is raised in Lightning's own
    code, e.g. ``val_check_interval`` larger than an epoch, or ``devices`` of the wrong type), and an exception out
    of the data module's prepare_data or setup (a data folder that is a file, data too large for memory).
    """
    subcommand = getattr(cli, "subcommand", None)
    config = getattr(cli, "config", None)
    config = config.get(subcommand, config) if subcommand and config is not None else config
    if config is not None and isinstance(error, TypeError) and _raised_in(error, _JSONARGPARSE):
        for group in CALLBACK_GROUPS:
            if group in config and config[group] is not None and not isinstance(config[group], Namespace):
                return BadInput(f"{group}={config[group]!r}: expected its settings, keys with values (or null)")
    hook = data_hook(error, getattr(cli, "datamodule", None))
    if hook is not None:
        return BadInput(f"data: {type(cli.datamodule).__name__}.{hook} failed: {type(error).__name__}: {one_line(error)}")
    trainer = getattr(cli, "trainer", None)
    if isinstance(error, TypeError | ValueError) and (trainer is None or trainer.global_step == 0):
        if _raised_in(error, _LIGHTNING):  # Lightning checking a setting, not a model's code failing
            text = one_line(error)
            if config is not None and "devices" in text and "devices" in config.get("trainer", {}):
                text = f"trainer.devices={config.trainer.devices!r}: {text}"
            return BadInput(text)
    return None


def data_hook(error: BaseException, datamodule: LightningDataModule | None) -> str | None:
    """The data module hook, prepare_data or setup, the error was raised in, if any."""
    if datamodule is None:
        return None
    for frame, _ in _frames(error.__traceback__):
        if frame.f_code.co_name in DATA_HOOKS and frame.f_locals.get("self") is datamodule:
            return frame.f_code.co_name
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether the innermost frame of the error's traceback is in this package's folder."""
    frames = list(_frames(error.__traceback__))
    return bool(frames) and os.path.abspath(frames[-1][0].f_code.co_filename).startswith(package + os.sep)


def _frames(traceback: TracebackType | None):
    while traceback is not None:
        yield traceback.tb_frame, traceback.tb_lineno
        traceback = traceback.tb_next
