"""A textbook classifier: two Gaussian blobs, logistic regression logging val/acc (higher is better)."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class Blobs(pl.LightningDataModule):
    """Two overlapping Gaussian blobs in 2-D, labelled 0 and 1, with a fixed validation half."""

    def __init__(self, batch_size: int = 32, n_samples: int = 400) -> None:
        """
        Args:
            batch_size: Samples per step.
            n_samples: Number of points, half of them for validation.
        """
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        n = self.hparams.n_samples
        labels = torch.arange(n) % 2
        points = torch.randn(n, 2, generator=generator) + 1.5 * labels.unsqueeze(1).float()
        self.train_set = TensorDataset(points[: n // 2], labels[: n // 2])
        self.val_set = TensorDataset(points[n // 2 :], labels[n // 2 :])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class BlobClassifier(pl.LightningModule):
    """Logistic regression with SGD; logs val/acc."""

    def __init__(self, lr: float = 0.1) -> None:
        """
        Args:
            lr: SGD learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(2, 2)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.linear(x), y)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self.linear(x).argmax(1) == y).float().mean())

    def predict_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.linear(batch[0]).argmax(1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class BlobsToPredict(Blobs):
    """Blobs that also serves its validation half to predict."""

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)
