"""Forks of every kind Lightning allows, through the real command line: batches of any type, layers vmap cannot run,
manual optimization, an IterableDataset, several validation loaders, a weight-averaging callback, NaN runs."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchsize_lit.science import _concatenate, per_example_noise_scale

from fork.sequences import Batch, Pair, make_sequences, unpack
from helpers import QUIET, read_csv, run, run_cli, scalars

GNS = "--trainer.callbacks+=batchsize_lit.science.GradientNoiseScale"
TWO_EPOCHS = [*QUIET, "--trainer.max_epochs=2"]
CONV = ["--model=fork.conv_bn.ConvRegressor", "--data=fork.sequences.SequenceData", *TWO_EPOCHS]
GRU = ["--model=fork.gru.GRURegressor", "--data=fork.sequences.SequenceData", "--data.kind=namedtuple", *TWO_EPOCHS]
MANUAL = ["--model=fork.manual.TwoOptimizerRegressor", "--data=fork.regression.SineData", "--data.n_samples=160"]
MANUAL += TWO_EPOCHS
STREAM = ["--model=fork.sequences.SequenceMLP", "--data=fork.iterable.StreamData", *TWO_EPOCHS]
MULTI_VAL = ["--model=fork.sequences.SequenceMLP", "--data=fork.multi_val.TwoValData", *TWO_EPOCHS]
RUN = "lightning_logs/default/version_0"


def noise_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("GradientNoiseScale:")]


def finite(values: list[tuple[int, float]]) -> bool:
    return bool(values) and all(math.isfinite(value) for _, value in values)


def test_per_example_noise_scale_of_a_batchnorm_model_on_dict_batches(tmp_path):
    """BatchNorm's running statistics follow the parameters into float64: the fit measures instead of crashing."""
    result = run_cli("fit", *CONV, GNS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert noise_lines(result.stdout + result.stderr) == [
        "GradientNoiseScale: per-example gradients over 96 of 96 examples"
    ]
    tags = scalars(tmp_path / RUN)
    assert len(tags["gns/b_simple"]) == 2 and finite(tags["gns/b_simple"])  # one per epoch
    assert finite(tags["gns/b_noise"])  # 57 parameters: small enough for the Hessian
    assert "12 steps, 192 samples seen" in result.stdout  # 6 batches of 16 dicts an epoch


@pytest.mark.parametrize("accumulate", [2, 1])
def test_a_model_vmap_cannot_run_falls_back_or_says_why_and_trains_on(tmp_path, accumulate):
    result = run_cli("fit", *GRU, GNS, f"--trainer.accumulate_grad_batches={accumulate}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = noise_lines(result.stdout + result.stderr)
    assert "vmap cannot run this model's loss(batch): RuntimeError" in line
    tags = scalars(tmp_path / RUN)
    assert "gns/b_simple" not in tags
    if accumulate == 2:
        assert line.startswith("GradientNoiseScale: the two-batch estimator; ")
        assert len(tags["gns/b_simple_two_batch"]) == 2 * 3  # 6 batches an epoch, windows of 2
    else:
        assert line.startswith("GradientNoiseScale: measures nothing: ")
        assert line.endswith("; the two-batch estimator needs trainer.accumulate_grad_batches >= 2")
        assert not any(tag.startswith("gns/") for tag in tags)
    assert len(tags["by_epoch/val_loss"]) == 2  # both epochs trained


def test_the_estimator_can_be_chosen(tmp_path):
    choice = ["--trainer.callbacks.estimator=two_batch", "--trainer.accumulate_grad_batches=2"]
    result = run_cli("fit", *CONV, GNS, *choice, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert noise_lines(result.stdout + result.stderr) == ["GradientNoiseScale: the two-batch estimator"]
    tags = scalars(tmp_path / RUN)
    assert finite(tags["gns/b_simple_two_batch"]) and "gns/b_simple" not in tags  # loss(batch) not used


def test_an_estimator_the_run_cannot_have_is_one_line(tmp_path):
    fork = ["--model=fork.regression.SineRegressor", "--data=fork.regression.SineData", *TWO_EPOCHS]
    result = run_cli("fit", *fork, GNS, "--trainer.callbacks.estimator=per_example", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: GradientNoiseScale.estimator='per_example' needs a model with a loss(batch) method"
    )
    assert "Traceback" not in result.stderr


def test_manual_optimization_with_two_optimizers(tmp_path):
    """global_step counts optimizer steps (two a batch); training_step returns nothing, so the train loss is the one
    the model logs; the per-example noise scale works on loss(batch)."""
    result = run_cli("fit", *MANUAL, GNS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "16 steps, 256 samples seen" in result.stdout  # 128 training points, batches of 32, 2 epochs
    tags = scalars(tmp_path / RUN)
    assert len(tags["by_epoch/train_loss"]) == 2 and finite(tags["by_epoch/train_loss"])
    assert [step for step, _ in tags["gns/b_simple"]] == [8, 16]


def test_a_manual_run_whose_loss_becomes_nan_diverges(tmp_path):
    result = run_cli("fit", *MANUAL, "--model.nan_from_epoch=2", cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: train_loss became nan in epoch 2 at step ")
    assert "Traceback" not in result.stderr and "early stop" not in result.stdout


def test_an_iterable_dataset_of_dataclass_batches(tmp_path):
    result = run_cli("fit", *STREAM, GNS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "12 steps, 192 samples seen" in result.stdout  # 6 batches of 16 an epoch, counted as they come
    (line,) = noise_lines(result.stdout + result.stderr)
    assert line.startswith("GradientNoiseScale: per-example gradients over the first training batches, up to 4096")
    tags = scalars(tmp_path / RUN)
    assert finite(tags["gns/b_simple"]) and "gns/b_simple_finite" not in tags  # no data set size to correct for


def test_two_validation_loaders_and_an_ema_callback(tmp_path):
    monitor = "val_loss/dataloader_idx_0"
    args = [f"--early_stopping.monitor={monitor}", GNS, "--trainer.callbacks+=fork.ema.EMA"]
    result = run_cli("fit", *MULTI_VAL, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tags = scalars(tmp_path / RUN)
    values = [value for _, value in tags[f"by_epoch/{monitor}"]]
    assert f"best {monitor} {min(values):.5g} at epoch {values.index(min(values)) + 1}" in result.stdout
    assert "val_loss/dataloader_idx_1" in tags
    assert "12 steps, 192 samples seen" in result.stdout and finite(tags["gns/b_simple"])


def test_a_study_records_a_nan_monitor_as_diverged(workdir):
    """Lightning's early stopping would end a run whose monitor became NaN as an early stop; it is a divergence."""
    base = {
        "model": {"class_path": "fork.sequences.SequenceMLP"},
        "data": {"class_path": "fork.multi_val.TwoValData"},
        "early_stopping": {"monitor": "val_loss/dataloader_idx_1"},
        "trainer": {"accelerator": "cpu", "max_epochs": 2},
    }
    config = workdir / "kinds.yaml"
    config.write_text(json.dumps({"base": base, "grid": {"model.nan_val_from_epoch": [2, 9]}}))
    assert run("--config", str(config)) == 0
    rows = {row["cell"]: row for row in read_csv(workdir / "lightning_logs/kinds/results.csv")}
    statuses = sorted(row["status"] for row in rows.values())
    assert statuses == ["diverged", "ok"]
    ok = next(row for row in rows.values() if row["status"] == "ok")
    assert ok["monitor"] == "val_loss/dataloader_idx_1" and float(ok["monitor_best"]) > 0
    assert float(ok["val_loss/dataloader_idx_0"]) > 0  # what the model logged, as columns


class BatchNormNet(nn.Module):
    """A small MLP with BatchNorm1d whose loss(batch) reads any of the fork's batch kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))

    def loss(self, batch) -> torch.Tensor:
        x, y = unpack(batch)
        return F.mse_loss(self.net(x).squeeze(-1), y)


@pytest.mark.parametrize("kind", ["dict", "namedtuple", "dataclass", "nested"])
def test_per_example_gradients_of_any_batch_kind_match_a_plain_loop(kind):
    torch.manual_seed(0)
    model = BatchNormNet()
    x, y = make_sequences(10, 12)
    model.net(x)  # in train mode: BatchNorm's running statistics move off their defaults
    model.eval()
    make = {
        "dict": lambda x, y: {"x": x, "y": y},
        "namedtuple": Pair,
        "dataclass": Batch,
        "nested": lambda x, y: {"inputs": (x,), "target": y},
    }[kind]
    halves = [make(x[:4], y[:4]), make(x[4:], y[4:])]
    batch = _concatenate(halves)  # as the noise scale gathers a loader's batches
    assert type(batch) is type(halves[0]) and torch.equal(unpack(batch)[0], x)
    reference = copy.deepcopy(model).double()  # one example at a time, with autograd
    rows = []
    for i in range(10):
        reference.zero_grad()
        reference.loss(make(x[i : i + 1].double(), y[i : i + 1].double())).backward()
        rows.append(torch.cat([p.grad.flatten() for p in reference.parameters()]))
    grads = torch.stack(rows)
    mean = grads.mean(0)
    expected = float((grads - mean).pow(2).sum(1).mean() / mean.dot(mean))
    result = per_example_noise_scale(model, batch)
    assert result["b_simple"] == pytest.approx(expected, rel=1e-9)
    assert model.net[1].weight.dtype == torch.float32  # the model itself is left as it was
