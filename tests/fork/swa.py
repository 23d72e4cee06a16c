"""A regression MLP with batch norm, trained with plain SGD: what Stochastic Weight Averaging is written for."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fork.regression import SineRegressor


class BatchNormRegressor(SineRegressor):
    """SineRegressor with a BatchNorm1d after its hidden layer, trained by SGD (SWA's learning-rate schedule replaces
    the optimizer's rate)."""

    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: SGD learning rate.
        """
        super().__init__(hidden, lr)
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
