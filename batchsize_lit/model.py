"""LinearRegressor: nn.Linear(1, 1) trained by SGD on the mean squared error."""

import math
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanSquaredError


def global_batch_size(trainer: pl.Trainer) -> int | None:
    """Samples per optimizer step over all devices: batch_size × world_size × accumulate_grad_batches."""
    batch_size = getattr(trainer.datamodule, "hparams", {}).get("batch_size")
    if batch_size is None:
        return None
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


class LinearRegressor(pl.LightningModule):
    """y ≈ w·x + b, one weight and one bias, trained with SGD on MSE."""

    def __init__(
        self,
        lr: float = 0.1,
        lr_scaling: Literal["none", "linear", "sqrt"] = "none",
        base_batch_size: int = 32,
    ) -> None:
        """
        Args:
            lr: SGD learning rate at base_batch_size (the rate itself when lr_scaling is none).
            lr_scaling: How the rate follows the global batch B: none; linear, lr·B/base_batch_size;
                sqrt, lr·√(B/base_batch_size).
            base_batch_size: Global batch size at which lr applies unscaled.
        """
        super().__init__()
        if not lr > 0:
            raise ValueError(f"model.lr={lr!r} must be > 0")
        if not base_batch_size > 0:
            raise ValueError(f"model.base_batch_size={base_batch_size!r} must be a positive integer")
        self.save_hyperparameters()
        self.linear = nn.Linear(1, 1)
        self.val_mse = MeanSquaredError()
        self.test_mse = MeanSquaredError()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def effective_lr(self) -> float:
        """The learning rate after lr_scaling, for this trainer's global batch size."""
        lr, scaling = self.hparams.lr, self.hparams.lr_scaling
        batch = global_batch_size(self.trainer) if self._trainer is not None else None
        if scaling == "none" or batch is None:
            return lr
        ratio = batch / self.hparams.base_batch_size
        return lr * ratio if scaling == "linear" else lr * math.sqrt(ratio)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.effective_lr())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        # The logger writes step values every log_every_n_steps only, and self.log costs more than this whole step.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train_loss_step", loss)
        return loss

    def on_train_epoch_end(self) -> None:
        # The same on every DDP rank; sync_dist only states that they are one value.
        self.log("weight", self.linear.weight.detach().squeeze(), sync_dist=True)
        self.log("bias", self.linear.bias.detach().squeeze(), sync_dist=True)

    # The metrics accumulate in each step and are logged once an epoch: a self.log call costs about a
    # millisecond on CPU, several times a validation batch of this model.
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_mse.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        self.log("val_loss", self.val_mse)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_mse.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        self.log("test_loss", self.test_mse)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])
