"""Short noisy sequences whose target is the mean of their first four values, served in the batch types users pick."""

from collections import namedtuple
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

Pair = namedtuple("Pair", ["x", "y"])


@dataclass
class Batch:
    """A batch as a dataclass, which Lightning moves to the device field by field."""

    x: Tensor
    y: Tensor


def make_sequences(n: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n sequences of shape (1, length) and their targets."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, length, generator=generator)
    return x, x[:, 0, :4].mean(1) + 0.1 * torch.randn(n, generator=generator)


class _Items(Dataset):
    """Examples as dicts {"x", "y"}, as namedtuples Pair(x, y), or nested {"inputs": (x,), "target": y}."""

    def __init__(self, x: Tensor, y: Tensor, kind: str) -> None:
        self.x, self.y, self.kind = x, y, kind

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.kind == "dict":
            return {"x": self.x[i], "y": self.y[i]}
        if self.kind == "nested":
            return {"inputs": (self.x[i],), "target": self.y[i]}
        return Pair(self.x[i], self.y[i])


class SequenceData(pl.LightningDataModule):
    """Sequences split 3:1 into train and val, as dict, namedtuple or nested examples, collated by DataLoader."""

    def __init__(self, batch_size: int = 16, n_samples: int = 128, length: int = 12, kind: str = "dict") -> None:
        """
        Args:
            batch_size: Samples per step.
            n_samples: Number of sequences.
            length: Values per sequence.
            kind: dict, namedtuple or nested.
        """
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        x, y = make_sequences(self.hparams.n_samples, self.hparams.length)
        cut = self.hparams.n_samples * 3 // 4
        self.train_set = _Items(x[:cut], y[:cut], self.hparams.kind)
        self.val_set = _Items(x[cut:], y[cut:], self.hparams.kind)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


def unpack(batch) -> tuple[Tensor, Tensor]:
    """(x, y) of a batch of any of the kinds above."""
    if isinstance(batch, Batch | Pair):
        return batch.x, batch.y
    if "inputs" in batch:
        return batch["inputs"][0], batch["target"]
    return batch["x"], batch["y"]


class SequenceMLP(pl.LightningModule):
    """An MLP on the flattened sequence, for every batch kind and any number of validation loaders; logs train_loss
    and val_loss (Lightning names them val_loss/dataloader_idx_N when there are several loaders)."""

    def __init__(self, length: int = 12, hidden: int = 16, lr: float = 0.01, nan_val_from_epoch: int | None = None):
        """
        Args:
            length: Values per sequence.
            hidden: Width of the hidden layer.
            lr: Adam learning rate.
            nan_val_from_epoch: From this epoch (1-based) on, validation logs NaN, as a broken metric would.
        """
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(length, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def loss(self, batch) -> Tensor:
        x, y = unpack(batch)
        return F.mse_loss(self.net(x).squeeze(-1), y)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss = self.loss(batch)
        broken = self.hparams.nan_val_from_epoch
        if broken is not None and self.current_epoch + 1 >= broken:
            loss = loss * float("nan")
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
