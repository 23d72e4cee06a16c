"""The synthetic 1-D regression data module and its whole-batch loading."""

import hashlib
import math
import os
import warnings
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from batchsize_lit.problem import RunReport
from batchsize_lit.trainer_info import learning_rate, plain_sgd


class InMemoryDataset(Dataset):
    """Tensors held in memory; a batch is cut from them by one index tensor, with no per-sample Python work."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int | Tensor) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    # DataLoader calls this with the whole batch of indices instead of calling __getitem__ once per sample.
    __getitems__ = __getitem__


class EpochShuffleSampler(RandomSampler):
    """A permutation of the dataset that depends only on (seed, epoch), so a resumed run sees the same order; with
    ``replacement``, as many indices drawn with replacement, from the same seeded generator.

    It subclasses RandomSampler so that Lightning knows the loader shuffles and shuffles its DistributedSampler too
    (a DistributedSampler draws without replacement: under DDP the epochs are shuffled whatever this says).
    """

    def __init__(self, data_source: Dataset, seed: int = 0, replacement: bool = False) -> None:
        super().__init__(data_source, replacement=replacement)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> Tensor:
        # Seed and epoch hashed together: seed + epoch made seed 1 replay seed 0's orders one epoch on, so the runs of
        # a seed study were shifted copies of each other. (torch keeps only 32 bits of a CPU generator's seed.)
        key = hashlib.blake2b(f"{self.seed}:{self.epoch}".encode(), digest_size=4).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        if self.replacement:
            return torch.randint(len(self.data_source), (len(self.data_source),), generator=generator)
        return torch.randperm(len(self.data_source), generator=generator)

    def __iter__(self):
        yield from self.permutation().tolist()


class TensorBatchSampler(BatchSampler):
    """Yields each batch as one index tensor: a slice of the epoch's order, already on the data's device.

    Under DDP, Lightning rebuilds it around a DistributedSampler, whose order is then read once an epoch.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, drop_last: bool = False, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.device = torch.device(device)

    def __iter__(self):
        if isinstance(self.sampler, EpochShuffleSampler):
            order = self.sampler.permutation()
        elif isinstance(self.sampler, SequentialSampler):
            order = torch.arange(len(self.sampler))
        else:
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        order = order.to(self.device)
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        yield from order.split(self.batch_size)


class InMemoryLoader(DataLoader):
    """A DataLoader that, without worker processes, cuts each batch straight from the dataset.

    torch's single-process iterator (profiler ranges, fetcher, collate) costs more per batch than the indexing
    itself; this skips it and keeps everything else, so Lightning can still rebuild it with a DistributedSampler.
    """

    _epoch: int | None = None  # the sampler's epoch being iterated, and how many of its batches were handed out
    _handed_out = 0
    _resume_at: tuple[int | None, int] | None = None

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # Runs at the first next(), after Lightning set the sampler's epoch. A loader resumed mid-epoch (a
        # checkpoint saved on SIGTERM) skips the batches of that epoch it had handed out: the order depends only
        # on the seed and the epoch, so the rest of the epoch is what the uninterrupted run saw.
        self._epoch, self._handed_out = getattr(self.batch_sampler.sampler, "epoch", None), 0
        resume, self._resume_at = self._resume_at, None
        skip = resume[1] if resume is not None and resume[0] == self._epoch else 0
        if self.num_workers > 0:  # worker processes: the skipped batches are loaded, then dropped
            source = super().__iter__()
        else:
            source = (
                None if position < skip else self.dataset.__getitems__(index)
                for position, index in enumerate(self.batch_sampler)
            )
        for batch in source:
            self._handed_out += 1
            if self._handed_out > skip:
                yield batch

    def state_dict(self) -> dict[str, int | None]:
        """Where in the epoch the loader is; Lightning saves it with the fit loop's state (a resumable loader)."""
        return {"epoch": self._epoch, "batches": self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        self._resume_at = (state_dict.get("epoch"), int(state_dict.get("batches") or 0))


def _unbatched(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """collate_fn for a dataset that already returns whole batches."""
    return batch


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
        _check(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "must be a positive integer")
        _check(isinstance(n_samples, int) and n_samples > 0, "n_samples", n_samples, "must be a positive integer")
        for key, value in (("slope", slope), ("intercept", intercept), ("x_min", x_min), ("x_max", x_max)):
            _check(math.isfinite(value), key, value, "must be a finite number")
        _check(noise_std >= 0, "noise_std", noise_std, "must be >= 0")
        _check(math.isfinite(noise_std), "noise_std", noise_std, "must be a finite number")
        _check(x_max > x_min, "x_max", x_max, f"must be greater than x_min={x_min}")
        _check(0 <= val_fraction < 1, "val_fraction", val_fraction, "must be in [0, 1)")
        _check(0 <= test_fraction < 1, "test_fraction", test_fraction, "must be in [0, 1)")
        _check(
            val_fraction + test_fraction < 1,
            "val_fraction",
            val_fraction,
            f"plus test_fraction={test_fraction} must be < 1",
        )
        _check(num_workers >= 0, "num_workers", num_workers, "must be >= 0")
        _check(sampling in ("epochs", "replacement"), "sampling", sampling, "must be epochs or replacement")
        memory = physical_memory()  # x, y, the noise and the split's indices: about 24 bytes a point
        _check(memory is None or n_samples * 24 < memory, "n_samples", n_samples, f"needs more than {memory} bytes")
        self.save_hyperparameters()
        self.n_val = round(n_samples * val_fraction)
        self.n_test = round(n_samples * test_fraction)
        self.n_train = n_samples - self.n_val - self.n_test
        for name, fraction, count in (
            ("val_fraction", val_fraction, self.n_val),
            ("test_fraction", test_fraction, self.n_test),
        ):
            _check(
                fraction == 0 or count > 0, "n_samples", n_samples, f"is too small: {name}={fraction} gives no points"
            )
        _check(
            self.n_train >= 2,
            "n_samples",
            n_samples,
            f"leaves {self.n_train} training points after the val/test split; at least 2 are needed",
        )
        _check(
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
        # seed_everything sets PL_GLOBAL_SEED; Lightning seeds its DistributedSampler from it in the same way.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        replacement = self.hparams.sampling == "replacement"
        sampler = EpochShuffleSampler(dataset, seed, replacement) if shuffle else SequentialSampler(dataset)
        batch_sampler = TensorBatchSampler(sampler, self.hparams.batch_size, device=self.device)
        return InMemoryLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=_unbatched,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.n_test else self.val_set, shuffle=False)


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the system tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"data.{key}={value!r} {rule}")
