"""Generic in-memory data loading (whole batches by index, seeded epoch orders) and checks of data arguments."""

import hashlib
import os

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler


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


def unbatched(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """collate_fn for a dataset that already returns whole batches."""
    return batch


def in_memory_loader(
    dataset: InMemoryDataset,
    batch_size: int,
    shuffle: bool,
    replacement: bool = False,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> InMemoryLoader:
    """A loader of whole batches cut from ``dataset``: in order, or shuffled per epoch from ``seed_everything``'s
    seed (with ``replacement``, each batch drawn with replacement); each batch's indices made on ``device``."""
    # seed_everything sets PL_GLOBAL_SEED; Lightning seeds its DistributedSampler from it in the same way.
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    sampler = EpochShuffleSampler(dataset, seed, replacement) if shuffle else SequentialSampler(dataset)
    return InMemoryLoader(
        dataset,
        batch_sampler=TensorBatchSampler(sampler, batch_size, device=device),
        collate_fn=unbatched,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the system tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check(ok: bool, key: str, value: object, rule: str) -> None:
    """Unless ``ok``, a ValueError that names the data key and its value (``data.batch_size=0 must be a positive
    integer``): raised in a data module's ``__init__``, the command shows it as one line of bad input."""
    if not ok:
        raise ValueError(f"data.{key}={value!r} {rule}")


def check_workers(num_workers: int) -> None:
    """A DataLoader's worker count: from 0 to 16 worker processes per CPU. Each is a process started at every
    epoch's first batch, so a count far beyond the machine's CPUs only starts processes until it hangs."""
    most = 16 * (os.cpu_count() or 1)
    check(0 <= num_workers <= most, "num_workers", num_workers, f"must be from 0 to {most} (16 per CPU here)")


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """The train, val and test sizes of ``n`` examples split by the two fractions (each share rounded), once the
    fractions are checked: each in [0, 1), together under 1."""
    for key, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        number = isinstance(fraction, int | float) and not isinstance(fraction, bool)  # null and the like fail here
        check(number and 0 <= fraction < 1, key, fraction, "must be in [0, 1)")
    check(
        val_fraction + test_fraction < 1,
        "val_fraction",
        val_fraction,
        f"plus test_fraction={test_fraction} must be < 1",
    )
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return n - n_val - n_test, n_val, n_test


def __getattr__(name: str) -> type:
    # The old import path of the bundled data module, batchsize_lit.data.RegressionDataModule, for the forks and
    # configs that name it; imported on first use, as the core imports no problem.
    if name == "RegressionDataModule":
        from batchsize_lit.problems.regression import RegressionDataModule

        return RegressionDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
