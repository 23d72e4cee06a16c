"""LinearRegressor: nn.Linear(1, 1) trained by SGD on the mean squared error."""

import math
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanSquaredError

from batchsize_lit.problem import RunReport
from batchsize_lit.trainer_info import global_batch_size


class LinearRegressor(pl.LightningModule):
    """y ≈ w·x + b, one weight and one bias, trained with SGD on MSE.

    It logs as any model may: the template logs the train loss, per step and as the epoch mean, from what
    ``training_step`` returns, and the learned weight and bias every epoch from ``run_report``, so the model logs
    only its validation and test metrics, once an epoch.
    """

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

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

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
        return self.loss(batch)

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

    def run_report(self, facts: dict[str, float]) -> RunReport:
        """The learned weight and bias, against the true ones and the least-squares fit where the data gives them."""
        w, b = self.linear.weight.item(), self.linear.bias.item()
        lines = [f"learned        w = {w:.4f}  b = {b:+.4f}"]
        if "true_weight" in facts:
            lines.append(f"true           w = {facts['true_weight']:.4f}  b = {facts['true_bias']:+.4f}")
        if "lsq_weight" in facts:
            lines.append(
                f"least squares  w = {facts['lsq_weight']:.4f}  b = {facts['lsq_bias']:+.4f}"
                f"  (train MSE {facts['lsq_train_mse']:.5f})"
            )
        return RunReport({"weight": w, "bias": b}, lines)
