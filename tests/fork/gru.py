"""A GRU regressor on namedtuple batches Pair(x, y), with a loss(batch) method."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fork.sequences import Pair


class GRURegressor(pl.LightningModule):
    """A one-layer GRU over the sequence and a linear head on its last hidden state."""

    def __init__(self, hidden: int = 8, lr: float = 0.01) -> None:
        """
        Args:
            hidden: GRU hidden size.
            lr: Adam learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, last = self.gru(x.transpose(1, 2))  # (batch, channels, length) -> (batch, length, channels)
        return self.head(last[-1]).squeeze(-1)

    def loss(self, batch: Pair) -> Tensor:
        return F.mse_loss(self(batch.x), batch.y)

    def training_step(self, batch: Pair, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Pair, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
