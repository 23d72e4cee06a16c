"""Forks of every kind Lightning allows, through the real command line: batches of any type, layers vmap cannot run,
manual optimization, an IterableDataset, several validation loaders, a weight-averaging callback, NaN runs."""

import copy
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchsize_lit.__main__ import main
from batchsize_lit.outputs import batch_samples
from batchsize_lit.science import _concatenate, per_example_noise_scale, per_example_noise_scales

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


@pytest.fixture
def fit(workdir, capfd, caplog):
    """The fit command run in this process (a fresh process costs seconds of imports), in a fresh folder: it returns
    the exit status and what the run wrote: stdout, stderr and Lightning's log lines (which under pytest go to its
    log capture, not to a stream)."""

    caplog.set_level(logging.INFO, logger="lightning.pytorch")  # a study in this process may have quietened it

    def run_fit(*args: str) -> tuple[int | str, str]:
        try:
            main(["fit", *args])
            code: int | str = 0
        except SystemExit as exit_info:
            code = exit_info.code
        out, err = capfd.readouterr()
        return code, "\n".join([out, err, *caplog.messages])

    return run_fit


def noise_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("GradientNoiseScale:")]


def finite(values: list[tuple[int, float]]) -> bool:
    return bool(values) and all(math.isfinite(value) for _, value in values)


def test_per_example_noise_scale_of_a_batchnorm_model_on_dict_batches(workdir, fit):
    """BatchNorm's running statistics follow the parameters into float64: the fit measures instead of crashing."""
    code, output = fit(*CONV, GNS)
    assert code == 0, output
    assert noise_lines(output) == ["GradientNoiseScale: per-example gradients over 96 of 96 examples"]
    tags = scalars(workdir / RUN)
    assert len(tags["gns/b_simple"]) == 2 and finite(tags["gns/b_simple"])  # one per epoch
    assert finite(tags["gns/b_noise"])  # 57 parameters: small enough for the Hessian
    assert "12 steps, 192 samples seen" in output  # 6 batches of 16 dicts an epoch


@pytest.mark.parametrize("accumulate", [2, 1])
def test_a_model_vmap_cannot_run_falls_back_or_says_why_and_trains_on(workdir, fit, accumulate):
    code, output = fit(*GRU, GNS, f"--trainer.accumulate_grad_batches={accumulate}")
    assert code == 0, output
    assert "Traceback" not in output
    (line,) = noise_lines(output)
    assert "vmap cannot run this model's loss(batch): RuntimeError" in line
    tags = scalars(workdir / RUN)
    assert "gns/b_simple" not in tags
    if accumulate == 2:
        assert line.startswith("GradientNoiseScale: the two-batch estimator; ")
        assert len(tags["gns/b_simple_two_batch"]) == 2 * 3  # 6 batches an epoch, windows of 2
    else:
        assert line.startswith("GradientNoiseScale: measures nothing: ")
        assert line.endswith("; the two-batch estimator needs trainer.accumulate_grad_batches >= 2")
        assert not any(tag.startswith("gns/") for tag in tags)
    assert len(tags["by_epoch/val_loss"]) == 2  # both epochs trained


def test_the_estimator_can_be_chosen(workdir, fit):
    choice = ["--trainer.callbacks.estimator=two_batch", "--trainer.accumulate_grad_batches=2"]
    code, output = fit(*CONV, GNS, *choice)
    assert code == 0, output
    assert noise_lines(output) == ["GradientNoiseScale: the two-batch estimator"]
    tags = scalars(workdir / RUN)
    assert finite(tags["gns/b_simple_two_batch"]) and "gns/b_simple" not in tags  # loss(batch) not used


def test_an_estimator_the_run_cannot_have_is_one_line(tmp_path):
    fork = ["--model=fork.regression.SineRegressor", "--data=fork.regression.SineData", *TWO_EPOCHS]
    result = run_cli("fit", *fork, GNS, "--trainer.callbacks.estimator=per_example", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: GradientNoiseScale.estimator='per_example' needs a model with a loss(batch) method"
    )
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("lightning_logs/*/version_*"))  # bad input leaves no run folder


def test_manual_optimization_with_two_optimizers(workdir, fit):
    """global_step counts optimizer steps (two a batch); training_step returns nothing, so the train loss is the one
    the model logs; the per-example noise scale works on loss(batch)."""
    shown = [arg for arg in MANUAL if arg != "--trainer.enable_progress_bar=false"]
    bar = ["--trainer.callbacks+=batchsize_lit.progress.ThrottledProgressBar", "--trainer.callbacks.live=false"]
    code, output = fit(*shown, *bar, GNS)
    assert code == 0, output
    assert "16 steps, 256 samples seen" in output  # 128 training points, batches of 32, 2 epochs
    epoch_lines = [line for line in output.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("train_loss" in line for line in epoch_lines)  # the logged one
    tags = scalars(workdir / RUN)
    assert len(tags["by_epoch/train_loss"]) == 2 and finite(tags["by_epoch/train_loss"])
    assert [step for step, _ in tags["gns/b_simple"]] == [8, 16]


def test_a_manual_run_whose_loss_becomes_nan_diverges(tmp_path):
    result = run_cli("fit", *MANUAL, "--model.nan_from_epoch=2", cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: train_loss became nan in epoch 2 at step ")
    assert "Traceback" not in result.stderr and "early stop" not in result.stdout


def test_an_iterable_dataset_of_dataclass_batches(workdir, fit):
    code, output = fit(*STREAM, GNS)
    assert code == 0, output
    assert "12 steps, 192 samples seen" in output  # 6 batches of 16 an epoch, counted as they come
    (line,) = noise_lines(output)
    assert line.startswith("GradientNoiseScale: per-example gradients over the first training batches, up to 4096")
    tags = scalars(workdir / RUN)
    assert finite(tags["gns/b_simple"]) and "gns/b_simple_finite" not in tags  # no data set size to correct for


def test_two_validation_loaders_and_an_ema_callback(workdir, fit):
    monitor = "val_loss/dataloader_idx_0"
    args = [f"--early_stopping.monitor={monitor}", GNS, "--trainer.callbacks+=fork.ema.EMA"]
    code, output = fit(*MULTI_VAL, *args)
    assert code == 0, output
    tags = scalars(workdir / RUN)
    values = [value for _, value in tags[f"by_epoch/{monitor}"]]
    assert f"best {monitor} {min(values):.5g} at epoch {values.index(min(values)) + 1}" in output
    assert "val_loss/dataloader_idx_1" in tags
    assert "12 steps, 192 samples seen" in output and finite(tags["gns/b_simple"])


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


def test_samples_are_counted_from_any_batch_kind():
    x, y = make_sequences(5, 12)
    kinds = [(x, y), [x, y], Pair(x, y), Batch(x, y), {"x": x, "y": y}, {"inputs": (x,), "target": y}]
    assert [batch_samples(batch) for batch in kinds] == [5] * len(kinds)
    assert batch_samples({"words": ["a", "b"]}) is None  # nothing to size it by: not counted, and said once


@pytest.mark.parametrize("kind", ["dict", "dataclass"])
@pytest.mark.parametrize("shared", [True, False])
def test_noise_scales_at_several_weights_equal_each_measured_alone(kind, shared):
    """One vmap over weight sets (a run's targets on its examples, or a cohort's members each on its own) gives what
    each state_dict loaded into the model gives alone: BatchNorm's running statistics differ between the states."""
    make = {"dict": lambda x, y: {"x": x, "y": y}, "dataclass": Batch}[kind]
    torch.manual_seed(0)
    model, states, batches = BatchNormNet(), [], []
    for _ in range(3):
        x, y = make_sequences(10, 12)
        model.train()
        model.net(x * (1 + len(states)))  # other running statistics in each state
        with torch.no_grad():
            model.net[1].weight.add_(0.1 * torch.randn_like(model.net[1].weight))
        states.append(copy.deepcopy(model.state_dict()))
        batches.append(make(x, y) if not shared or not batches else batches[0])
    model.eval()
    together = per_example_noise_scales(model, list(zip(states, batches, strict=True)))
    for state, batch, found in zip(states, batches, together, strict=True):
        alone = copy.deepcopy(model)
        alone.load_state_dict(state)
        expected = per_example_noise_scale(alone, batch)
        assert set(found) == set(expected)
        for key, value in expected.items():
            assert found[key] == pytest.approx(value, rel=1e-9), key
    assert len({round(found["b_simple"], 9) for found in together}) == 3  # three different weights measured


def test_a_parameter_the_loss_never_uses_adds_nothing_to_the_noise_scale():
    """vmap gives its per-example gradients as one expanded row of zeros: measured as such, not an error."""
    torch.manual_seed(0)
    model = BatchNormNet().eval()
    x, y = make_sequences(10, 12)
    plain = per_example_noise_scale(model, {"x": x, "y": y})
    model.unused = nn.Parameter(torch.ones(5))
    for max_hessian in (256, 0):  # the rows whole, or a block a parameter
        found = per_example_noise_scale(model, {"x": x, "y": y}, max_hessian=max_hessian)
        assert found["b_simple"] == pytest.approx(plain["b_simple"], rel=1e-12)
