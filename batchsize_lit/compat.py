"""Every reliance on a private name or undocumented behaviour of Lightning or jsonargparse, one small function each."""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


def checkpoint_skips_saving(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether Lightning's ModelCheckpoint would save nothing now: fast_dev_run, not fitting, the sanity check, or a
    checkpoint already saved at this global step. Reason: the one test Lightning's own saving hooks make."""
    return callback._should_skip_saving_checkpoint(trainer)


def save_last_checkpoint(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Save the last checkpoint as Lightning does after a top-k save. Reason: Lightning's code names it (with
    CHECKPOINT_NAME_LAST's template), versions it, links it and removes the previous one; a copy would drift. The
    step Lightning records as saved is left as it was, so that its own decisions (save_on_exception skips a step
    already saved) are those it makes without this extra save."""
    saved_step = callback._last_global_step_saved
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    callback._last_global_step_saved = saved_step
