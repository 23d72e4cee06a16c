"""Manual optimization: two optimizers stepped by hand each batch, and a training_step that returns nothing."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TwoOptimizerRegressor(pl.LightningModule):
    """An MLP whose hidden layer and head have an Adam optimizer each: two optimizer steps per batch, so Lightning's
    global_step counts twice the batches. It logs train_loss and val_loss."""

    def __init__(self, hidden: int = 16, lr: float = 0.01, nan_from_epoch: int | None = None) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: Learning rate of both optimizers.
            nan_from_epoch: From this epoch (1-based) on, the loss is NaN, as in a run that diverged.
        """
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.body = nn.Sequential(nn.Linear(1, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def loss(self, batch: list[Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        body_optimizer, head_optimizer = self.optimizers()
        loss = self.loss(batch)
        if self.hparams.nan_from_epoch is not None and self.current_epoch + 1 >= self.hparams.nan_from_epoch:
            loss = loss * float("nan")
        body_optimizer.zero_grad()
        head_optimizer.zero_grad()
        self.manual_backward(loss)
        body_optimizer.step()
        head_optimizer.step()
        self.log("train_loss", loss)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = self.hparams.lr
        return [torch.optim.Adam(self.body.parameters(), lr=lr), torch.optim.Adam(self.head.parameters(), lr=lr)]
