"""RegressionDataModule: splits, determinism, whole-batch loading and DDP sharding."""

import math

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler

from batchsize_lit import RegressionDataModule
from batchsize_lit.data import EpochShuffleSampler, TensorBatchSampler


def make(**kwargs) -> RegressionDataModule:
    dm = RegressionDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_split_sizes_and_no_overlap():
    dm = RegressionDataModule(n_samples=1000, val_fraction=0.1, test_fraction=0.2)
    train, val, test = dm.split_indices()
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    everything = torch.cat([train, val, test])
    assert torch.equal(everything.sort().values, torch.arange(1000))


def test_data_depends_on_data_seed_only():
    seed_everything(1)
    a = make(seed=5)
    seed_everything(2)
    b = make(seed=5)
    c = make(seed=6)
    assert torch.equal(a.train_set.tensors[1], b.train_set.tensors[1])
    assert not torch.equal(a.train_set.tensors[1], c.train_set.tensors[1])


def test_data_follows_the_formula():
    dm = make(n_samples=500, slope=-2.0, intercept=1.5, noise_std=0.0, x_min=-1.0, x_max=3.0)
    x, y = dm.generate()
    assert torch.allclose(x.squeeze(1), torch.linspace(-1, 3, 500))
    assert torch.allclose(y, -2.0 * x + 1.5)


@pytest.mark.parametrize("batch_size", [1, 16, 128, 799, 800])
def test_batches_per_epoch_and_each_sample_once(batch_size):
    dm = make(batch_size=batch_size)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == dm.batches_per_epoch() == math.ceil(800 / batch_size)
    x = torch.cat([b[0] for b in batches]).squeeze(1)
    assert torch.equal(x.sort().values, dm.train_set.tensors[0].squeeze(1).sort().values)
    assert all(len(b[0]) == batch_size for b in batches[:-1])


def test_order_changes_per_epoch_and_repeats_per_seed():
    dm = make(batch_size=800)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler.sampler, EpochShuffleSampler)
    first = next(iter(loader))[0]
    loader.batch_sampler.sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))[0])
    assert torch.equal(first, next(iter(dm.train_dataloader()))[0])


def test_the_orders_of_two_seeds_are_not_shifted_copies():
    """Seed s + 1 must not replay seed s's orders an epoch later: the runs of a seed study would be one run."""
    orders = {}
    for seed in range(4):
        sampler = EpochShuffleSampler(range(100), seed=seed)
        for epoch in range(4):
            sampler.set_epoch(epoch)
            orders[seed, epoch] = sampler.permutation()
    pairs = [(a, b) for a in orders for b in orders if a < b]
    assert not any(torch.equal(orders[a], orders[b]) for a, b in pairs)


def test_val_and_test_are_in_order():
    dm = make(batch_size=30)
    x = torch.cat([b[0] for b in dm.val_dataloader()])
    assert torch.equal(x, dm.val_set.tensors[0])


def test_ddp_sampler_injection_shards_the_split():
    dm = make(batch_size=16)
    loader = dm.train_dataloader()
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sharded = _update_dataloader(loader, sampler)
        assert isinstance(sharded.batch_sampler, TensorBatchSampler)
        assert sharded.batch_sampler.sampler is sampler
        shards.append(torch.cat([b[0] for b in sharded]).squeeze(1))
        assert len(sharded) == math.ceil(400 / 16)
    assert len(shards[0]) == len(shards[1]) == 400
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())


def test_facts_match_numpy_least_squares():
    import numpy as np

    dm = RegressionDataModule()
    facts = dm.reference_facts()
    x, y = dm.generate()
    train = dm.split_indices()[0]
    xs, ys = x[train].double().numpy().ravel(), y[train].double().numpy().ravel()
    w, b = np.polyfit(xs, ys, 1)
    assert facts["lsq_weight"] == pytest.approx(w, abs=1e-9)
    assert facts["lsq_bias"] == pytest.approx(b, abs=1e-9)
    hessian = 2 * np.array([[np.mean(xs**2), np.mean(xs)], [np.mean(xs), 1.0]])
    assert facts["lr_max_stable"] == pytest.approx(2 / np.linalg.eigvalsh(hessian).max())


def test_sampling_with_replacement_draws_each_batch_from_the_whole_split():
    """An epoch of 800 draws with replacement repeats examples (about 1 − 1/e of them are seen), the same for the
    same seed and epoch, another order the next epoch; shuffled epochs see each example once."""
    dm = make(batch_size=800, sampling="replacement")
    loader = dm.train_dataloader()
    first = next(iter(loader))[0].squeeze(1)
    assert len(first) == 800 and 0.55 < len(first.unique()) / 800 < 0.72
    assert torch.equal(first, next(iter(dm.train_dataloader()))[0].squeeze(1))
    loader.batch_sampler.sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))[0].squeeze(1))
    assert len(next(iter(make(batch_size=800).train_dataloader()))[0].unique()) == 800


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"batch_size": -3}, "data.batch_size=-3"),
        ({"batch_size": 801}, "data.batch_size=801 is larger than the training split"),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0"),
        ({"test_fraction": -0.1}, "data.test_fraction=-0.1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction=0.5 plus test_fraction=0.5"),
        ({"n_samples": 2, "batch_size": 1}, "data.n_samples=2"),
        ({"noise_std": -0.1}, "data.noise_std=-0.1"),
        ({"sampling": "bootstrap"}, "data.sampling='bootstrap' must be epochs or replacement"),
    ],
)
def test_bad_values_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RegressionDataModule(**kwargs)


def test_worker_processes_serve_the_same_batches():
    in_process, workers = make(batch_size=64), make(batch_size=64, num_workers=1)
    for one, two in zip(in_process.train_dataloader(), workers.train_dataloader(), strict=True):
        assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
