"""The digits example: its split, its argument checks, a short fit, and per-example gradients of its loss."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap

from batchsize_lit.problems.digits import DigitsDataModule, MLPClassifier

from helpers import CONFIGS, QUIET


def ready(**kwargs) -> DigitsDataModule:
    data = DigitsDataModule(**kwargs)
    data.setup("fit")
    return data


def test_split_sizes_add_up_and_splits_are_disjoint() -> None:
    data = ready()
    train, val, test = data.split_indices()
    sizes = [len(train), len(val), len(test)]
    assert sizes == [len(data.train_set), len(data.val_set), len(data.test_set)] == [1257, 270, 270]
    assert sum(sizes) == 1797
    assert torch.equal(torch.cat([train, val, test]).sort().values, torch.arange(1797))  # each image exactly once
    # Each split holds the images its indices name, scaled from 0..16 to 0..1.
    digits = load_digits()
    for indices, dataset in zip((train, val, test), (data.train_set, data.val_set, data.test_set), strict=True):
        x, y = dataset.tensors
        assert torch.allclose(x, torch.as_tensor(digits.data[indices.numpy()], dtype=torch.float32) / 16)
        assert torch.equal(y, torch.as_tensor(digits.target[indices.numpy()]))


def test_split_depends_on_its_seed_only() -> None:
    first, again, other = ready(seed=7), ready(seed=7), ready(seed=8)
    for a, b in zip(first.train_set.tensors, again.train_set.tensors, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.train_set.tensors[0], other.train_set.tensors[0])
    assert not torch.equal(first.test_set.tensors[0], other.test_set.tensors[0])


def test_loaders_shuffle_training_data_only() -> None:
    data = ready(batch_size=50)
    torch.manual_seed(0)
    assert not torch.equal(next(iter(data.train_dataloader()))[0], data.train_set.tensors[0][:50])
    assert torch.equal(next(iter(data.val_dataloader()))[0], data.val_set.tensors[0][:50])
    assert torch.equal(next(iter(data.test_dataloader()))[0], data.test_set.tensors[0][:50])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size=0 must be a positive integer"),
        ({"batch_size": 1258}, "data.batch_size=1258 must be at most the training split size 1257"),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0 must be in [0, 1)"),
        ({"test_fraction": -0.1}, "data.test_fraction=-0.1 must be in [0, 1)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction=0.5 plus test_fraction=0.5 must be < 1"),
        ({"num_workers": -1}, f"data.num_workers=-1 must be from 0 to {16 * (os.cpu_count() or 1)} (16 per CPU here)"),
    ],
)
def test_bad_data_arguments_raise_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "model.lr=0.0 must be > 0"),
        ({"hidden": 0}, "model.hidden=0 must be a positive integer"),
        ({"momentum": 1.0}, "model.momentum=1.0 must be in [0, 1)"),
    ],
)
def test_bad_model_arguments_raise_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MLPClassifier(**kwargs)


def test_short_fit_learns_the_digits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data, model = DigitsDataModule(), MLPClassifier()  # batch 32, 64 hidden units, lr 0.1
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    assert trainer.callback_metrics["val_acc"] > 0.8  # chance is 0.1
    assert trainer.callback_metrics["val_loss"] < 0.8  # from about ln 10 ≈ 2.3 at the start
    result = trainer.test(model, data, verbose=False)[0]
    assert result["test_acc"] > 0.8
    predictions = torch.cat(trainer.predict(model, data))
    labels = data.test_set.tensors[1]
    assert predictions.shape == labels.shape and predictions.dtype == torch.long
    assert (predictions == labels).float().mean() == pytest.approx(result["test_acc"], abs=1e-6)


class LossOf(nn.Module):
    """Calls the model's loss as forward, so functional_call can run it with other parameters."""

    def __init__(self, model: MLPClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)


def test_per_example_gradients_of_loss_average_to_the_batch_gradient() -> None:
    torch.manual_seed(0)
    model = MLPClassifier(hidden=16)
    x, y = ready().train_set.tensors
    x, y = x[:24], y[:24]
    model.loss((x, y)).backward()
    batch_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    wrapped = LossOf(model)
    params = {name: p.detach() for name, p in wrapped.named_parameters()}

    def example_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapped, params, ((x.unsqueeze(0), y.unsqueeze(0)),))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    for name, p in model.named_parameters():
        g = per_example[f"model.{name}"]
        assert g.shape == (24, *p.shape)
        assert torch.allclose(g.mean(0), batch_grads[name], atol=1e-5, rtol=0)
    # Different examples give different gradients: the vmap did not broadcast one example.
    assert not torch.allclose(per_example["model.net.0.weight"][0], per_example["model.net.0.weight"][1])


def test_without_scikit_learn_the_digits_fail_in_one_line_naming_the_extra(tmp_path: Path) -> None:
    """scikit-learn is the digits extra: without it a digits config says what to install, and writes nothing."""
    hidden = "import sys; sys.modules['sklearn'] = None; from batchsize_lit.__main__ import main; main()"
    command = [sys.executable, "-c", hidden, "fit", "--config", str(CONFIGS / "digits.yaml"), *QUIET]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: data.class_path=batchsize_lit.problems.digits.DigitsDataModule needs scikit-learn, not installed: "
        'pip install -e ".[digits]"'
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_the_noise_scale_callback_does_not_change_training(tmp_path: Path) -> None:
    """Reading its examples iterates a DataLoader, which draws from the global generator that a shuffling
    DataLoader's order comes from: the callback keeps that draw to itself."""
    from batchsize_lit.science import GradientNoiseScale

    weights = []
    for callbacks in ([], [GradientNoiseScale(max_examples=256)]):
        torch.manual_seed(0)
        data, model = DigitsDataModule(), MLPClassifier(hidden=16)
        trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                          default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(model, data)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
