"""What the CLI does around building the Trainer: the user's callbacks kept, the template's console, atomic saves."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from batchsize_lit import compat
from batchsize_lit.checkpoint_io import AtomicCheckpointIO
from batchsize_lit.hook_overhead import skip_idle_hooks
from batchsize_lit.model_summary import BriefModelSummary
from batchsize_lit.progress import ThrottledProgressBar

# What the Trainer adds by itself when no callback of the kind is given (Rich where the rich package is installed).
LIGHTNING_DEFAULT_BARS = (TQDMProgressBar, RichProgressBar)
LIGHTNING_DEFAULT_SUMMARIES = (ModelSummary, RichModelSummary)


def configured_callbacks(trainer_config: Any) -> list[pl.Callback]:
    """The callbacks that ``trainer.callbacks`` configures, in a new list.

    LightningCLI extends the list it is given with the CLI's own callbacks and the Trainer appends its defaults to it,
    so the user's choice is read, and copied, before the Trainer is built.

    Args:
        trainer_config: The instantiated ``trainer`` part of the config, or None.
    """
    given = (trainer_config or {}).get("callbacks") or []
    return list(given) if isinstance(given, list) else [given]


def use_template_console(trainer: pl.Trainer, given: list[pl.Callback]) -> None:
    """Replace, in place, the progress bar and model summary that the Trainer added by itself with the template's
    ThrottledProgressBar and BriefModelSummary. A progress bar or summary among ``given`` is the user's: kept.

    Args:
        trainer: The Trainer, just built.
        given: The callbacks the user configured (configured_callbacks).
    """
    chosen = {id(callback) for callback in given}
    for index, callback in enumerate(trainer.callbacks):
        if id(callback) in chosen:
            continue
        if type(callback) in LIGHTNING_DEFAULT_BARS:
            trainer.callbacks[index] = ThrottledProgressBar()
        elif type(callback) in LIGHTNING_DEFAULT_SUMMARIES:
            trainer.callbacks[index] = BriefModelSummary()


def finish_trainer(trainer: pl.Trainer, given: list[pl.Callback]) -> None:
    """What the template changes in a Trainer just built: checkpoints written atomically where Lightning's default
    writer is in place, the template's console (use_template_console), and no calls to hooks a callback leaves idle.

    Args:
        trainer: The Trainer, just built.
        given: The callbacks the user configured (configured_callbacks).
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    use_template_console(trainer, given)
    skip_idle_hooks(trainer.callbacks)


@contextmanager
def device_flags_named(trainer_config: Any) -> Iterator[None]:
    """Build the Trainer inside: Lightning's error on the accelerator or devices comes with the two flags and their
    values, which its text does not name; any other error is raised as it is.

    Args:
        trainer_config: The config's trainer section.
    """
    try:
        yield
    except MisconfigurationException as error:
        if not compat.DEVICE_ERROR.search(str(error)):
            raise
        flags = f"trainer.accelerator={trainer_config.accelerator!r}, trainer.devices={trainer_config.devices!r}"
        raise MisconfigurationException(f"{flags}: {error}") from None
