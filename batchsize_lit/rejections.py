"""Bad input that Lightning, jsonargparse or a data module's hooks reject with a plain exception, told apart from
faults and turned into one line that names the key or the hook."""

import inspect
import linecache
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning
import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from batchsize_lit.errors import BadInput, import_class, one_line

# The config groups that hold the settings of one callback class each (BatchSizeCLI.add_arguments_to_parser).
CALLBACK_GROUPS = ("early_stopping", "checkpoint", "history", "divergence")
DATA_HOOKS = ("prepare_data", "setup", "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")
_LIGHTNING = str(Path(lightning.__file__).parent)
_TORCH = str(Path(torch.__file__).parent)
_PACKAGE = str(Path(__file__).parent)


def rejected_setting(cli: Any, error: Exception) -> BadInput | None:
    """The one-line error for bad input that surfaced as a plain exception, or None for a fault.

    Bad input here: a callback group that is not keys and values (jsonargparse fails inside its instantiation),
    a value Lightning itself rejects before the first training step (the exception is raised in Lightning's own
    code, e.g. ``val_check_interval`` larger than an epoch, or ``devices`` of the wrong type), and an exception out
    of the data module's prepare_data, setup or dataloader hooks (a data folder that is a file, a batch_size that
    DataLoader rejects).
    """
    subcommand = getattr(cli, "subcommand", None)
    config = getattr(cli, "config", None)
    config = config.get(subcommand, config) if subcommand and config is not None else config
    if config is not None:  # jsonargparse lets a list or a number through in place of a callback's settings
        for group in CALLBACK_GROUPS:
            if group in config and not isinstance(config[group], Namespace):
                return BadInput(f"{group}={config[group]!r}: expected its settings, keys with values")
    nulls = null_settings(config) if config is not None else []
    if nulls and isinstance(error, TypeError):  # jsonargparse lets null through where a class needs a value
        return BadInput(f"{nulls[0]}=null: a value is needed here ({one_line(error)})")
    built = init_failure(error)
    if built is not None and not isinstance(built[2], ValueError):  # a ValueError names its key itself: kept as is
        group, cls, cause = built
        return BadInput(f"{group}: {cls.__name__}.__init__ failed: {type(cause).__name__}: {one_line(cause)}")
    hook = data_hook(error, getattr(cli, "datamodule", None))
    if hook is not None:
        return BadInput(
            f"data: {type(cli.datamodule).__name__}.{hook} failed: {type(error).__name__}: {one_line(error)}"
        )
    trainer = getattr(cli, "trainer", None)
    logger = _logger_in(error, trainer)
    if logger is not None and isinstance(error, TypeError | ValueError | OverflowError) and trainer.global_step == 0:
        return BadInput(f"trainer.logger ({type(logger).__name__}): {one_line(error)}")  # e.g. an untyped kwarg
    before_training = trainer is None or trainer.global_step == 0
    if before_training and (problem := _optimizer_rejection(error, getattr(cli, "model", None))) is not None:
        return problem
    ours = _raised_in(error, _LIGHTNING) or _raised_in(error, _PACKAGE)  # not a model's own division
    if isinstance(error, ZeroDivisionError) and ours and config is not None:  # val_check_interval: at the first step
        zero = zero_setting(config, error)
        if zero is not None:
            return BadInput(f"{zero}=0: a count or interval that must be positive ({one_line(error)})")
    rejection = TypeError | ValueError | MisconfigurationException | MemoryError  # devices: 10**12 makes a list
    lightning_check = isinstance(error, rejection) and before_training
    if lightning_check and _raised_in(error, _LIGHTNING):  # Lightning checking a setting, not a model's code failing
        text = one_line(error) or f"{type(error).__name__} while the trainer was built: a setting too large?"
        return BadInput(name_trainer_key(config.get("trainer") if config is not None else None, text))
    return None


def _optimizer_rejection(error: BaseException, model: Any) -> BadInput | None:
    """The one line for an optimizer or scheduler that torch rejects as the model's configure_optimizers builds it
    (``Invalid learning rate: -0.5``), naming the model's setting whose value the message quotes; None otherwise.
    An error of the model's own code there is a fault and keeps its traceback."""
    if not isinstance(model, LightningModule) or not isinstance(error, ValueError | TypeError):
        return None
    frames = [frame for frame, _ in _frames(error.__traceback__)]
    inside = any(f.f_code.co_name == "configure_optimizers" and f.f_locals.get("self") is model for f in frames)
    if not inside or not _raised_in(error, _TORCH):
        return None
    text = f"{type(model).__name__}.configure_optimizers failed: {type(error).__name__}: {one_line(error)}"
    hparams = getattr(model, "hparams", {})
    quoted = [key for key, value in hparams.items() if isinstance(value, int | float) and repr(value) in str(error)]
    return BadInput(f"model.{quoted[0]}={hparams[quoted[0]]!r}: {text}" if quoted else f"model: {text}")


def zero_setting(config: Namespace, error: BaseException) -> str | None:
    """The trainer or callback key set to 0 that a division by zero before training comes from: the one the failing
    line names, else the only one; None where no key is 0."""
    classes = _group_classes()
    zeros = []
    for group, cls in classes.items():
        defaults = {name: parameter.default for name, parameter in _parameters(cls).items()}
        values = config.get(group)
        for key, value in values.items() if isinstance(values, Namespace) else []:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if "." not in key and number and value == 0 and defaults.get(key) != 0:  # a default 0 is no cause
                zeros.append(f"{group}.{key}")
    frames = list(_frames(error.__traceback__))
    line = linecache.getline(frames[-1][0].f_code.co_filename, frames[-1][1]) if frames else ""
    named = [key for key in zeros if key.split(".")[-1] in line]
    return (named or zeros or [None])[0]


def null_settings(config: Namespace) -> list[str]:
    """The keys of the trainer, model and data set to null whose argument has another default and takes no None."""
    classes = _group_classes()
    found = []
    for group in ("trainer", "model", "data", *CALLBACK_GROUPS):
        spec = config.get(group)
        if not isinstance(spec, Namespace):
            continue
        values = spec.get("init_args") if "class_path" in spec else spec
        try:
            cls = classes.get(group) or import_class(spec.class_path)
            parameters = _parameters(cls)
        except Exception:  # a class that cannot be imported is reported by the parser
            continue
        for key, value in values.items() if isinstance(values, Namespace) else []:
            parameter = parameters.get(key)
            if value is not None or parameter is None or parameter.default in (None, inspect.Parameter.empty):
                continue
            if not re.search(r"None|Optional", str(parameter.annotation)):
                found.append(f"{group}.{key}")
    return found


def _group_classes() -> dict[str, type]:
    """The class of the trainer group and of each callback group."""
    # Imported here, not at the top: they import this module's callers (no cycle); the CLI has imported them anyway.
    from batchsize_lit.divergence import DivergenceCheck
    from batchsize_lit.early_stopping import EarlyStopping
    from batchsize_lit.model_checkpoint import ModelCheckpoint
    from batchsize_lit.run_history import RunHistory

    return {"trainer": Trainer, "early_stopping": EarlyStopping, "checkpoint": ModelCheckpoint,
            "history": RunHistory, "divergence": DivergenceCheck}  # fmt: skip


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The __init__ parameters of a class and of the classes its **kwargs pass on to, as jsonargparse resolves them."""
    parameters: dict[str, inspect.Parameter] = {}
    for base in reversed(cls.__mro__):
        if "__init__" in vars(base) and base is not object:
            parameters.update(inspect.signature(base.__init__).parameters)
    return parameters


def name_trainer_key(trainer_config: Any, text: str) -> str:
    """Lightning's message after the trainer key and value it is about: the key it names, else the key whose string
    value it quotes (``Timer(duration='grow')`` is trainer.max_time)."""
    if not isinstance(trainer_config, Namespace) or text.startswith("trainer."):
        return text
    plain = [(key, value) for key, value in trainer_config.items() if "." not in key and value is not None]
    named = [(key, value) for key, value in plain if re.search(rf"\b{key}\b", text)]
    quoted = [(key, value) for key, value in plain if isinstance(value, str) and len(value) > 2 and value in text]
    if not named + quoted:
        return text
    key, value = (named + quoted)[0]
    return f"trainer.{key}={value!r}: {text}"


def init_failure(error: BaseException) -> tuple[str, type, BaseException] | None:
    """("model" or "data", the class) when the error was raised inside a LightningModule's or LightningDataModule's
    ``__init__``: a config value the class's own code could not use. jsonargparse wraps it in a ValueError of its
    own, so the causes are searched too; the error returned is the class's own."""
    cause: BaseException | None = error
    while cause is not None:
        for frame, _ in _frames(cause.__traceback__):
            instance = frame.f_locals.get("self")
            if frame.f_code.co_name == "__init__" and isinstance(instance, LightningModule | LightningDataModule):
                return ("data" if isinstance(instance, LightningDataModule) else "model"), type(instance), cause
        cause = cause.__cause__
    return None


def data_hook(error: BaseException, datamodule: LightningDataModule | None) -> str | None:
    """The data module hook, prepare_data, setup or a dataloader hook, the error was raised in, if any."""
    if datamodule is None:
        return None
    for frame, _ in _frames(error.__traceback__):
        if frame.f_code.co_name in DATA_HOOKS and frame.f_locals.get("self") is datamodule:
            return frame.f_code.co_name
    return None


def _logger_in(error: BaseException, trainer: Any) -> Any:
    """The trainer's logger, if the error was raised inside one of its methods (its settings reach it unchecked)."""
    loggers = getattr(trainer, "loggers", None) or []
    for frame, _ in _frames(error.__traceback__):
        if any(frame.f_locals.get("self") is logger for logger in loggers):
            return frame.f_locals["self"]
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether the innermost frame of the error's traceback is in this package's folder."""
    frames = list(_frames(error.__traceback__))
    return bool(frames) and os.path.abspath(frames[-1][0].f_code.co_filename).startswith(package + os.sep)


def _frames(traceback: TracebackType | None):
    while traceback is not None:
        yield traceback.tb_frame, traceback.tb_lineno
        traceback = traceback.tb_next
