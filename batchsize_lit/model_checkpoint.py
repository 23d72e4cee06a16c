"""Lightning's ModelCheckpoint with a last.ckpt kept current at every epoch's end and a resumable SIGTERM stop."""

import os
import sys
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint

from batchsize_lit import compat
from batchsize_lit.hook_overhead import FixedStateKey
from batchsize_lit.resume_state import load_gradients, load_resume_state, save_gradients, save_resume_state
from batchsize_lit.signals import is_sigterm, save_at_sigterm, stopped_line


class ModelCheckpoint(FixedStateKey, _ModelCheckpoint):
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
        self._fitting = True  # this class's own flag: whether the stage set up is fit; a load before setup is a fit's
        self._saving_at_sigterm = False  # while the checkpoint of a SIGTERM is saved
        self._gradients: dict | None = None  # those a resumed checkpoint holds, put back as training starts
        self._last_holds: str | None = None  # where the last checkpoint saved in this process stands
        super().__init__(monitor=monitor, filename=filename, save_last=save_last, **kwargs)
        if not kwargs.get("every_n_train_steps") and kwargs.get("train_time_interval") is None:
            compat.skip_hook(self, "on_train_batch_end")  # no saves between epochs

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
        self._note_saved(trainer, f"the end of epoch {trainer.current_epoch + 1}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._note_saved(trainer, f"step {trainer.global_step}, in epoch {trainer.current_epoch + 1}")

    def _note_saved(self, trainer: pl.Trainer, where: str) -> None:
        """What last.ckpt holds, for the line a Ctrl-C prints, where a checkpoint was saved at this step."""
        if self.last_model_path and not trainer.sanity_checking and compat.checkpoint_skips_saving(self, trainer):
            self._last_holds = where

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Which checkpoints were best and last matters to a resumed fit only; evaluating a checkpoint read from
        # another folder would otherwise warn that the folder changed.
        if self._fitting:
            super().load_state_dict(state_dict)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        save_resume_state(checkpoint)
        if not self._saving_at_sigterm:
            return
        save_gradients(checkpoint, pl_module)  # the one checkpoint that may fall inside an accumulation window
        if trainer.validating and not trainer.sanity_checking:  # the cut validation runs again, whole, on resume
            compat.rerun_validation_on_resume(checkpoint)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        load_resume_state(trainer, checkpoint)
        self._gradients = checkpoint.get("gradients") if trainer.state.fn == "fit" else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._gradients:  # a stop inside an accumulation window: it goes on from what it had
            load_gradients(self._gradients, pl_module)
        self._gradients = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if is_sigterm(exception):  # stopped at a step boundary: last.ckpt at that step, even mid-epoch
            path = self.sigterm_checkpoint = self._save_at_sigterm(trainer)
            if trainer.is_global_zero and self.report_interrupt:
                print(stopped_line(trainer, path), file=sys.stderr)
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero and self.report_interrupt:
            if self.last_model_path and self._last_holds:  # at every epoch's end, and where Lightning saves
                where = f"{self.last_model_path} holds {self._last_holds}; resume with --ckpt_path last"
            elif self.last_model_path:  # resumed, and stopped before it saved again
                where = f"{self.last_model_path} is as this run resumed from it; resume with --ckpt_path last"
            else:
                where = "no epoch had finished, so there is no last.ckpt to resume from"
            print(f"Interrupted in epoch {trainer.current_epoch + 1}: {where}", file=sys.stderr)

    def _save_at_sigterm(self, trainer: pl.Trainer) -> str | None:
        """Write last.ckpt at the step where SIGTERM stopped the fit; its path, or None where nothing was written."""
        dirpath = self.dirpath if self.save_last else None
        previous = self.last_model_path
        if dirpath:  # in the checkpoint's own state, as Lightning's saves of last do: a resume then overwrites it
            self.last_model_path = os.path.join(dirpath, "last.ckpt")
        self._saving_at_sigterm = True
        try:
            path = save_at_sigterm(trainer, dirpath, "last.ckpt", self.save_weights_only)
        finally:
            self._saving_at_sigterm = False
        if path is None:
            self.last_model_path = previous
        return path
