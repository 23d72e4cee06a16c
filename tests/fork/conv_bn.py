"""A Conv1d + BatchNorm1d + Dropout regressor on dict batches, with a loss(batch) method and AdamW."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvRegressor(pl.LightningModule):
    """Conv1d, BatchNorm1d, ReLU, Dropout, global average pooling and a linear head, on {"x", "y"} batches."""

    def __init__(self, channels: int = 8, lr: float = 0.01) -> None:
        """
        Args:
            channels: Convolution channels.
            lr: AdamW learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 3, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(self(batch["x"]), batch["y"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
