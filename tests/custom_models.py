"""A user's own LightningModule, given to the CLI by class_path."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyMLP(pl.LightningModule):
    """A one-hidden-layer network in place of nn.Linear."""

    def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: SGD learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
