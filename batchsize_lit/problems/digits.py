"""A second problem, written as a fork would write it: scikit-learn's 8×8 handwritten digits, an MLP or a CNN."""

import importlib.util

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Accuracy, MeanMetric, Metric

from batchsize_lit.data import check, check_workers, split_sizes

N_SAMPLES = 1797  # images in load_digits(), shipped with scikit-learn
N_FEATURES = 64  # 8×8 pixels, each 0 to 16
N_CLASSES = 10


class DigitsDataModule(pl.LightningDataModule):
    """The 1797 digits of load_digits, pixels scaled to [0, 1], split at random into train, val and test.

    The split comes from its own generator seeded by ``seed``, so it stays the same whatever ``seed_everything``
    is; the training order is shuffled from ``seed_everything``.
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 1234,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            batch_size: Samples per training step; also the val, test and predict batch size.
            val_fraction: Share of the images held out for validation, in [0, 1).
            test_fraction: Share of the images held out for testing, in [0, 1).
            seed: Seed of the train/val/test split only.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if importlib.util.find_spec("sklearn") is None:
            name = f"{type(self).__module__}.{type(self).__qualname__}"
            raise ValueError(f'data.class_path={name} needs scikit-learn, not installed: pip install -e ".[digits]"')
        check(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "must be a positive integer")
        self.n_train, self.n_val, self.n_test = split_sizes(N_SAMPLES, val_fraction, test_fraction)
        check_workers(num_workers)
        self.save_hyperparameters()
        check(
            batch_size <= self.n_train,
            "batch_size",
            batch_size,
            f"must be at most the training split size {self.n_train}",
        )
        self.train_set: TensorDataset | None = None

    def split_indices(self) -> tuple[Tensor, Tensor, Tensor]:
        """Disjoint train, val and test indices into load_digits(), from the split seed alone."""
        generator = torch.Generator().manual_seed(self.hparams.seed)
        order = torch.randperm(N_SAMPLES, generator=generator)
        return order.split([self.n_train, self.n_val, self.n_test])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits  # the digits extra; imported here, as no other command needs it

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32) / 16
        y = torch.as_tensor(digits.target, dtype=torch.long)
        train, val, test = self.split_indices()
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def _loader(self, dataset: TensorDataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


class DigitsClassifier(pl.LightningModule):
    """What the digits classifiers share: cross-entropy, SGD, and loss and accuracy logged once an epoch.

    A subclass builds ``self.net``, from 64 pixels to 10 class logits, and calls ``save_hyperparameters()``.
    """

    def __init__(self, lr: float, momentum: float, **sizes: int) -> None:
        """Checks the SGD settings, and each of the subclass's ``sizes`` (hidden=64), which must be positive
        integers; ``save_hyperparameters()`` is the subclass's, so that the hyperparameters are its arguments."""
        super().__init__()
        if not lr > 0:
            raise ValueError(f"model.lr={lr!r} must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"model.momentum={momentum!r} must be in [0, 1)")
        for key, size in sizes.items():
            if not (isinstance(size, int) and size > 0):
                raise ValueError(f"model.{key}={size!r} must be a positive integer")
        self.val_loss = MeanMetric()
        self.val_acc = Accuracy(task="multiclass", num_classes=N_CLASSES)
        self.test_loss = MeanMetric()
        self.test_acc = Accuracy(task="multiclass", num_classes=N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The mean cross-entropy of the batch: a pure function of the parameters and the batch."""
        x, y = batch
        return F.cross_entropy(self(x), y)

    def batch_metrics(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        """The loss and accuracy of the batch that validation (stage ``val``) or test logs, as means over its
        examples and pure functions of the parameters: a study's cohorts compute them for all members at once."""
        x, y = batch
        logits = self(x)
        return {f"{stage}_loss": F.cross_entropy(logits, y), f"{stage}_acc": (logits.argmax(1) == y).float().mean()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.loss(batch)

    def _evaluate(self, batch: tuple[Tensor, Tensor], loss: Metric, accuracy: Metric) -> None:
        x, y = batch
        logits = self(x)
        loss.update(F.cross_entropy(logits, y), weight=len(y))
        accuracy.update(logits, y)

    # The metrics accumulate in each step and are logged once an epoch: a self.log call costs about a millisecond.
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val_loss": self.val_loss, "val_acc": self.val_acc})

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test_loss": self.test_loss, "test_acc": self.test_acc})

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)


class MLPClassifier(DigitsClassifier):
    """64 pixels → hidden ReLU units → 10 class logits, trained with SGD on the cross-entropy."""

    def __init__(self, hidden: int = 64, lr: float = 0.1, momentum: float = 0.0) -> None:
        """
        Args:
            hidden: Width of the hidden layer.
            lr: SGD learning rate.
            momentum: SGD momentum; 0 is plain SGD.
        """
        super().__init__(lr, momentum, hidden=hidden)
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))


class CNNClassifier(DigitsClassifier):
    """The 8×8 image → two 3×3 convolutions (channels, 2·channels) → 2×2 max-pool → 10 class logits."""

    def __init__(self, channels: int = 16, lr: float = 0.02, momentum: float = 0.9) -> None:
        """
        Args:
            channels: Channels of the first convolution; the second has twice as many.
            lr: SGD learning rate.
            momentum: SGD momentum; 0 is plain SGD.
        """
        super().__init__(lr, momentum, channels=channels)
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * 16, N_CLASSES),
        )
