"""Models whose own code fails, as a bug in user code would: raising in every step or from one step on, or killed."""

import os
import signal

from torch import Tensor

from fork.regression import SineRegressor


class FlakyRegressor(SineRegressor):
    """SineRegressor that raises in training when hidden is 13: a RuntimeError at once, or with fail_at_step a
    ValueError from that step on."""

    def __init__(self, hidden: int = 16, lr: float = 0.01, fail_at_step: int | None = None) -> None:
        """
        Args:
            hidden: Width of the hidden layer; 13 fails.
            lr: Adam learning rate.
            fail_at_step: The step from which a ValueError is raised, instead of a RuntimeError at once.
        """
        super().__init__(hidden, lr)
        self.save_hyperparameters()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.hparams.hidden == 13 and self.hparams.fail_at_step is None:
            raise RuntimeError("hidden=13 is unlucky")
        if self.hparams.hidden == 13 and self.global_step >= self.hparams.fail_at_step:
            raise ValueError(f"a bug at step {self.global_step}")
        return super().training_step(batch, batch_idx)


class NoisyRegressor(SineRegressor):
    """SineRegressor with a hyperparameter named as one of SineData's."""

    def __init__(self, hidden: int = 16, lr: float = 0.01, noise: float = 0.1) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: Adam learning rate.
            noise: The noise level it is told the data has.
        """
        super().__init__(hidden, lr)
        self.save_hyperparameters()


class DyingRegressor(SineRegressor):
    """SineRegressor whose process is killed (SIGKILL, as by the out-of-memory killer) in training when hidden is
    13."""

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.hparams.hidden == 13:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_step(batch, batch_idx)
