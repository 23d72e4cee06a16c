"""Models whose own code fails, as a bug in user code would: raising in every step or from one step on, or killed."""

import os
import signal

from torch import Tensor

from fork.regression import SineData, SineRegressor


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


class CachedSineData(SineData):
    """SineData that keeps its points in a data folder, made by prepare_data and read by setup, as a fork that
    downloads its data would."""

    def __init__(self, data_dir: str = "data", batch_size: int = 32, n_samples: int = 512, noise: float = 0.1) -> None:
        """
        Args:
            data_dir: The folder the data is kept in.
            batch_size: Samples per step.
            n_samples: Number of points.
            noise: Standard deviation of the noise.
        """
        super().__init__(batch_size, n_samples, noise)
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        os.makedirs(self.hparams.data_dir)  # fails where data_dir is a file, or already there
        with open(os.path.join(self.hparams.data_dir, "points.txt"), "w") as file:
            file.write(str(self.hparams.n_samples))

    def setup(self, stage: str) -> None:
        with open(os.path.join(self.hparams.data_dir, "points.txt")) as file:
            int(file.read())
        super().setup(stage)
