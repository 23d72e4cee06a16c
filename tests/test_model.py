"""LinearRegressor and EarlyStopping: learning, parity with a plain PyTorch loop, restoring the best weights."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.callbacks import EarlyStopping
from batchsize_lit.data import EpochShuffleSampler

from helpers import CONFIGS, QUIET, bundled_cli


def trainer(**kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return Trainer(**{**defaults, **kwargs})


def test_learns_the_slope_and_intercept():
    seed_everything(0)
    model, data = LinearRegressor(lr=0.1), RegressionDataModule(batch_size=16)
    trainer(max_epochs=15, enable_checkpointing=False, log_every_n_steps=10).fit(model, data)
    assert model.linear.weight.item() == pytest.approx(3.0, abs=0.1)
    assert model.linear.bias.item() == pytest.approx(0.0, abs=0.1)


def plain_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch_size: int, epochs: int, seed):
    """The textbook loop over the template's order: each epoch's permutation from (seed, epoch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sampler = EpochShuffleSampler(range(len(x)), seed=seed)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for index in sampler.permutation().split(batch_size):
            loss = F.mse_loss(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("batch_size", [16, 128])
def test_fit_matches_a_plain_pytorch_loop(workdir, batch_size):
    """Same initial weights, data order and lr: the full CLI fit gives the plain loop's weights."""
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, f"--data.batch_size={batch_size}"]
    args += ["--trainer.max_epochs=4", "--seed_everything=11", "--early_stopping.restore_best_weights=false"]
    cli = bundled_cli(args)
    initial = copy.deepcopy(cli.model.linear)
    cli.trainer.fit(cli.model, cli.datamodule)
    x, y = cli.datamodule.train_set.tensors
    reference = plain_sgd(initial, x, y, lr=0.1, batch_size=batch_size, epochs=4, seed=11)
    assert cli.trainer.current_epoch == 4
    torch.testing.assert_close(cli.model.linear.weight, reference.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(cli.model.linear.bias, reference.bias, atol=1e-6, rtol=0)


class RecordWeights(Callback):
    """Keeps each epoch's val_loss and weights, as seen at validation end."""

    def __init__(self):
        self.epochs = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            state = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.epochs.append((float(trainer.callback_metrics["val_loss"]), state))


def fit_noisy(restore: bool, patience: int | None = None):
    """Batch 1 at a large lr makes val_loss jump around, so the last epoch is not the best."""
    seed_everything(3)
    model, data = LinearRegressor(lr=0.5), RegressionDataModule(batch_size=1, n_samples=200)
    record, stopper = RecordWeights(), EarlyStopping(patience=patience, restore_best_weights=restore)
    trainer(max_epochs=8, callbacks=[stopper, record], enable_checkpointing=False, log_every_n_steps=50).fit(
        model, data
    )
    return model, record, stopper


def test_restore_best_weights_loads_the_best_epoch():
    model, record, stopper = fit_noisy(restore=True)
    losses = [loss for loss, _ in record.epochs]
    best = losses.index(min(losses))
    assert best != len(losses) - 1, "the case must make the best and last epochs differ"
    assert stopper.best_epoch == best and stopper.restored
    for name, value in model.state_dict().items():
        assert torch.equal(value, record.epochs[best][1][name])
        assert not torch.equal(value, record.epochs[-1][1][name])


def test_without_restore_the_last_weights_stay():
    model, record, stopper = fit_noisy(restore=False)
    assert not stopper.restored
    for name, value in model.state_dict().items():
        assert torch.equal(value, record.epochs[-1][1][name])


def test_patience_stops_early():
    _, record, stopper = fit_noisy(restore=True, patience=1)
    assert stopper.stopped_epoch > 0 and len(record.epochs) == stopper.stopped_epoch + 1 < 8


@pytest.mark.parametrize(("scaling", "expected"), [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_lr_scaling(scaling, expected):
    model = LinearRegressor(lr=0.1, lr_scaling=scaling, base_batch_size=16)
    t = trainer(max_epochs=1, enable_checkpointing=False, limit_train_batches=1, limit_val_batches=0)
    t.fit(model, RegressionDataModule(batch_size=64))
    assert model.effective_lr() == pytest.approx(expected)
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)


def test_bad_lr_names_the_key():
    with pytest.raises(ValueError, match=r"model.lr=0"):
        LinearRegressor(lr=0)


def test_idle_per_batch_hooks_are_skipped_and_the_fit_still_runs(workdir):
    """Lightning skips a hook that is not callable; if it stopped doing so, this fit would raise a TypeError."""
    from batchsize_lit.callbacks import RunHistory
    from batchsize_lit.trainer_info import find_callback

    cli = bundled_cli(["--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=1"])
    history = find_callback(cli.trainer, RunHistory)
    assert history.on_before_backward is None and history.on_train_batch_end is not None
    assert cli.trainer.checkpoint_callback.on_train_batch_end is None  # it saves at epoch ends only
    cli.trainer.fit(cli.model, cli.datamodule)
    assert len(history.history) == 1


def test_a_checkpoint_every_n_train_steps_keeps_its_per_step_hook(workdir):
    args = ["--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=1", "--checkpoint.save_top_k=-1"]
    cli = bundled_cli(
        [*args, "--checkpoint.monitor=null", "--checkpoint.every_n_train_steps=3", "--checkpoint.filename={step}"]
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    names = sorted(p.name for p in Path(cli.trainer.checkpoint_callback.dirpath).iterdir())
    assert names == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]  # saved mid-epoch, at steps 3 and 6 of 7
