"""A model whose training_step raises for one setting, as a bug in user code would."""

from torch import Tensor

from fork.regression import SineRegressor


class FlakyRegressor(SineRegressor):
    """SineRegressor that raises in training when hidden is 13."""

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.hparams.hidden == 13:
            raise RuntimeError("hidden=13 is unlucky")
        return super().training_step(batch, batch_idx)
