"""A callback that sends its own process a signal in one hook, once: a signal at an awkward moment, on purpose."""

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process in ``hook``, from epoch ``epoch`` on, once: a file named ``marker`` remembers
    that it did, so that the resumed run goes on undisturbed.

    Args:
        hook: A Callback hook's name, such as on_train_end or on_validation_batch_end.
        signum: The signal: 15 for SIGTERM, 2 for SIGINT.
        epoch: The first epoch (counted from 1) in which to send it.
        marker: The file that remembers that it was sent.
    """

    def __init__(self, hook: str = "on_train_end", signum: int = 15, epoch: int = 1, marker: str = "signalled") -> None:
        self.hook, self.signum, self.epoch, self.marker = hook, signum, epoch, marker
        setattr(self, hook, self.send)

    def send(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if Path(self.marker).exists() or trainer.current_epoch + 1 < self.epoch:
            return
        Path(self.marker).touch()
        os.kill(os.getpid(), self.signum)  # Python runs its handler before the next line
