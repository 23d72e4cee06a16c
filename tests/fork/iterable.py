"""Training data from an IterableDataset (no len) of ready-made Batch dataclasses."""

import lightning.pytorch as pl
from torch.utils.data import DataLoader, IterableDataset

from fork.sequences import Batch, make_sequences


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
