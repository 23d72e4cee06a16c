"""Weight-averaging callbacks (SWA, EMA) and the template: whose weights a fit ends with, and which epochs trained."""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import StochasticWeightAveraging

try:  # Lightning >= 2.5: the base of EMAWeightAveraging and of a user's own averaging
    from lightning.pytorch.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning
    WeightAveraging = None


def final_average(trainer: pl.Trainer) -> str | None:
    """The class name of a weight-averaging callback that puts its average into the module when training ends, or
    None. Called at the end of training, before or after that callback's own on_train_end.

    Lightning's StochasticWeightAveraging does so once training has passed its last epoch (not after an early stop
    before it); a WeightAveraging (EMAWeightAveraging, or a subclass of the user's) always does.

    Args:
        trainer: The trainer whose training is ending.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, StochasticWeightAveraging) and trainer.current_epoch > callback.swa_end:
            return type(callback).__name__
        if WeightAveraging is not None and isinstance(callback, WeightAveraging):
            return type(callback).__name__
    return None


def added_epochs(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Epochs that a finished fit ran beyond max_epochs for weight averaging: StochasticWeightAveraging adds, to a
    model with batch norm, one epoch after the last that only recomputes the averaged weights' batch-norm statistics
    (forward passes, no gradient). The run history has a row for it; the epochs trained do not count it.

    Args:
        trainer: The trainer, after fit.
        pl_module: The module it fitted.
    """
    added = 0
    for callback in trainer.callbacks:
        if isinstance(callback, StochasticWeightAveraging) and trainer.max_epochs != -1:
            batch_norm = callback.pl_module_contains_batch_norm(pl_module)
            added += int(batch_norm and trainer.current_epoch > callback.swa_end + 1)
    return added
