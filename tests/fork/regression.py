"""A textbook regression: an MLP trained with Adam, logging train_loss and val/loss, with no test_step."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class SineData(pl.LightningDataModule):
    """y = sin(2πx) + noise on random x in [0, 1], split into train and val, served by plain DataLoaders."""

    def __init__(self, batch_size: int = 32, n_samples: int = 512, noise: float = 0.1) -> None:
        """
        Args:
            batch_size: Samples per step.
            n_samples: Number of points.
            noise: Standard deviation of the noise.
        """
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(self.hparams.n_samples, 1, generator=generator)
        y = torch.sin(2 * torch.pi * x) + self.hparams.noise * torch.randn(x.shape, generator=generator)
        self.train_set, self.val_set = random_split(TensorDataset(x, y), [0.8, 0.2], generator=generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class SineRegressor(pl.LightningModule):
    """A one-hidden-layer MLP on MSE, trained with Adam."""

    def __init__(self, hidden: int = 16, lr: float = 0.01) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: Adam learning rate.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class StepLossRegressor(SineRegressor):
    """SineRegressor that logs its train_loss per step only, the textbook self.log default."""

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss


class SineSGDRegressor(SineRegressor):
    """SineRegressor trained by plain SGD, with its loss as loss(batch): a fork whose study cells form cohorts."""

    def loss(self, batch: list[Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RandomScaleRegressor(SineSGDRegressor):
    """SineSGDRegressor whose input is scaled by a factor drawn at construction (so from each cell's seed) and kept
    in a non-persistent buffer, with a parameter its loss never uses: each cohort member must be measured with its
    own buffer, and the unused parameter's gradient is zero for every example."""

    def __init__(self, hidden: int = 16, lr: float = 0.01) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: SGD learning rate.
        """
        super().__init__(hidden, lr)
        self.register_buffer("scale", 1 + torch.rand(1), persistent=False)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.scale)
