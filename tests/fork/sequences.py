"""Short noisy sequences whose target is the mean of their first four values, served in the batch types users pick."""

from collections import namedtuple
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

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


class _Stream(IterableDataset):
    """Ready-made Batch dataclasses, drawn afresh each epoch: an iterable with no length."""

    def __init__(self, batches: int, batch_size: int, length: int, seed: int) -> None:
        self.batches, self.batch_size, self.length, self.seed = batches, batch_size, length, seed
        self.epoch = 0

    def __iter__(self):
        x, y = make_sequences(self.batches * self.batch_size, self.length, self.seed + self.epoch)
        self.epoch += 1
        for i in range(0, len(x), self.batch_size):
            yield Batch(x[i : i + self.batch_size], y[i : i + self.batch_size])


class StreamData(pl.LightningDataModule):
    """An IterableDataset of Batch dataclasses for training (no len), and the same two Batches at every validation."""

    def __init__(self, batch_size: int = 16, batches: int = 6, length: int = 12) -> None:
        """
        Args:
            batch_size: Samples per step.
            batches: Training batches per epoch.
            length: Values per sequence.
        """
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(_Stream(hp.batches, hp.batch_size, hp.length, seed=1), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(list(_Stream(2, hp.batch_size, hp.length, seed=0)), batch_size=None)
