"""The bundled problem, written as a fork would write it: y = slope·x + intercept + noise, fitted by nn.Linear(1, 1)."""

import math
import warnings
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MeanSquaredError

from batchsize_lit.data import InMemoryDataset, check, check_workers, in_memory_loader, physical_memory, split_sizes
from batchsize_lit.problem import RunReport
from batchsize_lit.trainer_info import global_batch_size, learning_rate, plain_sgd


def ordered_sum(values: Tensor) -> float:
    """The sum of a float64 tensor's values added one after another, first to last (a running sum,
    ``torch.cumsum``): the same in every process whatever the thread count, unlike ``torch.sum``."""
    return float(values.cumsum(0)[-1]) if len(values) else 0.0


class RegressionDataModule(pl.LightningDataModule):
    """y = slope·x + intercept + noise_std·ε on an even grid of x, split into train, val and test.

    The data and the split come from their own generator seeded by ``seed``, so they stay the same whatever
    ``seed_everything`` is; the training order is shuffled per epoch from ``seed_everything``.
    """

    def __init__(
        self,
        batch_size: int = 32,
        n_samples: int = 1000,
        slope: float = 3.0,
        intercept: float = 0.0,
        noise_std: float = 0.3,
        x_min: float = 0.0,
        x_max: float = 1.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 1234,
        num_workers: int = 0,
        sampling: Literal["epochs", "replacement"] = "epochs",
    ) -> None:
        """
        Args:
            batch_size: Samples per training step on each device; also the val, test and predict batch size.
            n_samples: Number of points, before the split.
            slope: True slope of y = slope·x + intercept + noise.
            intercept: True intercept.
            noise_std: Standard deviation of the Gaussian noise; noise_std² is the loss floor.
            x_min: Left end of the evenly spaced x grid.
            x_max: Right end of the x grid.
            val_fraction: Share of the points held out for validation, in [0, 1).
            test_fraction: Share of the points held out for testing, in [0, 1).
            seed: Seed of the data and of the split (not of the training order).
            num_workers: DataLoader worker processes; 0 keeps the tensors in this process, which is fastest.
            sampling: epochs, each training example once an epoch in a shuffled order; replacement, each batch
                drawn with replacement (as many draws an epoch as examples), as the gradient noise scale's theory
                assumes (McCandlish et al. 2018).
        """
        super().__init__()
        check(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "must be a positive integer")
        check(isinstance(n_samples, int) and n_samples > 0, "n_samples", n_samples, "must be a positive integer")
        for key, value in (("slope", slope), ("intercept", intercept), ("x_min", x_min), ("x_max", x_max)):
            check(math.isfinite(value), key, value, "must be a finite number")
        check(noise_std >= 0, "noise_std", noise_std, "must be >= 0")
        check(math.isfinite(noise_std), "noise_std", noise_std, "must be a finite number")
        check(x_max > x_min, "x_max", x_max, f"must be greater than x_min={x_min}")
        self.n_train, self.n_val, self.n_test = split_sizes(n_samples, val_fraction, test_fraction)
        check_workers(num_workers)
        check(sampling in ("epochs", "replacement"), "sampling", sampling, "must be epochs or replacement")
        memory = physical_memory()  # x, y, the noise and the split's indices: about 24 bytes a point
        check(memory is None or n_samples * 24 < memory, "n_samples", n_samples, f"needs more than {memory} bytes")
        self.save_hyperparameters()
        for name, fraction, count in (
            ("val_fraction", val_fraction, self.n_val),
            ("test_fraction", test_fraction, self.n_test),
        ):
            check(
                fraction == 0 or count > 0, "n_samples", n_samples, f"is too small: {name}={fraction} gives no points"
            )
        check(
            self.n_train >= 2,
            "n_samples",
            n_samples,
            f"leaves {self.n_train} training points after the val/test split; at least 2 are needed",
        )
        check(
            batch_size <= self.n_train,
            "batch_size",
            batch_size,
            f"is larger than the training split ({self.n_train} of n_samples={n_samples})",
        )
        self.train_set = self.val_set = self.test_set = None
        # An empty split has no loader at all, so Lightning runs no loop for it rather than warn about an empty one.
        if not self.n_val:
            self.val_dataloader = None
            # val_fraction 0 asks for no validation: Lightning's notice that it skips the loop says nothing new.
            warnings.filterwarnings("ignore", "You defined a `validation_step` but have no `val_dataloader`")
        if not self.n_test:
            self.test_dataloader = None
        self._facts: dict[str, float] | None = None

    def batches_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps per epoch: ceil(n_train / batch_size) on one device; each DDP rank gets 1/world_size."""
        return math.ceil(math.ceil(self.n_train / world_size) / self.hparams.batch_size)

    def generate(self) -> tuple[Tensor, Tensor]:
        """The whole data set, x and y, each of shape (n_samples, 1), from the data seed alone."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        x = torch.linspace(hp.x_min, hp.x_max, hp.n_samples).unsqueeze(1)
        y = hp.slope * x + hp.intercept + hp.noise_std * torch.randn(x.shape, generator=generator)
        return x, y

    def split_indices(self) -> tuple[Tensor, Tensor, Tensor]:
        """Disjoint train, val and test indices into the data set, from the data seed alone."""
        generator = torch.Generator().manual_seed(self.hparams.seed + 1)
        order = torch.randperm(self.hparams.n_samples, generator=generator)
        return order.split([self.n_train, self.n_val, self.n_test])

    def reference_facts(self) -> dict[str, float]:
        """What the training split implies, computed from it: least squares, noise floor, Hessian, stable lr.

        For the mean squared error of w·x + b the Hessian is H = 2·[[E x², E x], [E x, 1]], the same at every
        (w, b); plain SGD on this quadratic converges only for lr < 2/λ_max(H).
        """
        if self._facts is None:
            hp = self.hparams
            x, y = self.generate()
            train, val, _ = self.split_indices()
            xt, yt = x[train].double().flatten(), y[train].double().flatten()
            # Float64 sums in a fixed order: the same facts in every process, whatever threads a library sums with.
            n, sx, sy = len(xt), ordered_sum(xt), ordered_sum(yt)
            sxx, sxy = ordered_sum(xt * xt), ordered_sum(xt * yt)
            w = (n * sxy - sx * sy) / (n * sxx - sx * sx)
            b = (sy - w * sx) / n
            # H = 2·[[E x², E x], [E x, 1]]; the eigenvalues of a symmetric 2×2 matrix in closed form.
            h11, h12, h22 = 2 * sxx / n, 2 * sx / n, 2.0
            half_gap = math.hypot((h11 - h22) / 2, h12)
            eig_min, eig_max = (h11 + h22) / 2 - half_gap, (h11 + h22) / 2 + half_gap
            self._facts = {
                "true_weight": hp.slope,
                "true_bias": hp.intercept,
                "lsq_weight": w,
                "lsq_bias": b,
                "lsq_train_mse": ordered_sum((yt - (w * xt + b)) ** 2) / n,
                "noise_floor": hp.noise_std**2,
                "hessian_eig_min": eig_min,
                "hessian_eig_max": eig_max,
                "lr_max_stable": 2 / eig_max,
            }
            if len(val):
                xv, yv = x[val].double().flatten(), y[val].double().flatten()
                self._facts["val_loss_at_optimum"] = ordered_sum((yv - (w * xv + b)) ** 2) / len(xv)
        return dict(self._facts)

    def run_report(self, facts: dict[str, float]) -> RunReport:
        """The noise floor, and the stable learning-rate limit against the rate in use."""
        lr = learning_rate(self.trainer) if self.trainer is not None else None
        used = f" (lr used {lr:.4g})" if lr is not None else ""
        if self.trainer is not None and self.trainer.optimizers and not plain_sgd(self.trainer):
            used = " (the optimizer is not plain SGD)"
        return RunReport(
            {},
            [
                f"noise floor noise_std² = {facts['noise_floor']:.5f}",
                f"max stable SGD lr 2/λ_max = {facts['lr_max_stable']:.3f}{used}",
            ],
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        # In-memory tensors need no worker processes: workers would only add inter-process copies.
        warnings.filterwarnings("ignore", ".*does not have many workers.*", PossibleUserWarning)
        x, y = self.generate()
        self.device = torch.device("cpu")
        if self.trainer is not None and self.hparams.num_workers == 0:
            self.device = self.trainer.strategy.root_device  # moved once, so no step copies data to the device
        x, y = x.to(self.device), y.to(self.device)
        train, val, test = self.split_indices()
        self.train_set = InMemoryDataset(x[train], y[train])
        self.val_set = InMemoryDataset(x[val], y[val])
        self.test_set = InMemoryDataset(x[test], y[test])

    def _loader(self, dataset: InMemoryDataset, shuffle: bool) -> DataLoader:
        replacement = self.hparams.sampling == "replacement"
        return in_memory_loader(
            dataset, self.hparams.batch_size, shuffle, replacement, self.hparams.num_workers, self.device
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.n_test else self.val_set, shuffle=False)


class LinearRegressor(pl.LightningModule):
    """y ≈ w·x + b, one weight and one bias, trained with SGD on MSE.

    It logs as any model may: the template logs the train loss, per step and as the epoch mean, from what
    ``training_step`` returns, and the learned weight and bias every epoch from ``run_report``, so the model logs
    only its validation and test metrics, once an epoch.
    """

    report_columns = ("weight", "bias")  # run_report's columns, which a study's results.csv shows after the losses

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
        batch = _global_batch_size(self)
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
        return RunReport(dict(zip(self.report_columns, (w, b), strict=True)), lines)


def _global_batch_size(module: pl.LightningModule) -> int | None:
    """The global batch size of the module's trainer, or None before it is attached to one (``trainer`` raises)."""
    try:
        trainer = module.trainer
    except RuntimeError:
        return None
    return global_batch_size(trainer)
