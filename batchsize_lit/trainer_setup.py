"""What the CLI does around building the Trainer: the user's own callbacks, and the template's console in place of
Lightning's default progress bar and model summary."""

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar

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
