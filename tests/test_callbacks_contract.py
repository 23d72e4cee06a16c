"""Callbacks a Lightning user brings compose with the template's: the console, the checkpoint and early-stopping
contracts of Lightning's own classes, and weight averaging."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from torch import Tensor

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.callbacks import BriefModelSummary, EarlyStopping
from batchsize_lit.cli import BatchSizeCLI
from batchsize_lit.progress import ThrottledProgressBar
from batchsize_lit.trainer_info import find_callback

from helpers import QUIET, ROOT, bundled_cli, run_cli, scalars

LR_MONITOR = "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"
OWN_SUMMARY = "--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary"


def test_a_callback_of_the_user_s_keeps_the_template_s_console_and_runs(tmp_path):
    """Adding a callback leaves the console as it was: the one-line model summary and one line an epoch (piped), no
    Rich or TQDM bar and no model table; the callback itself runs (LearningRateMonitor logs lr-SGD)."""
    args = ["--trainer.accelerator=cpu", "--data.n_samples=200", "--trainer.max_epochs=2", LR_MONITOR]
    result = run_cli("fit", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert "Model: 2 parameters, 2 trainable" in console
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    for sign_of_lightning_s_own in ("┏", "Total params", "v_num", "it/s]", "Epoch 1/1"):
        assert sign_of_lightning_s_own not in console
    lr = scalars(tmp_path / "lightning_logs/default/version_0")["lr-SGD"]
    assert lr and all(value == pytest.approx(0.1) for _, value in lr)


@pytest.mark.parametrize(
    ("extra", "bar", "summary"),
    [
        ([], ThrottledProgressBar, BriefModelSummary),
        ([LR_MONITOR], ThrottledProgressBar, BriefModelSummary),
        (["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"], TQDMProgressBar, BriefModelSummary),
        ([LR_MONITOR, OWN_SUMMARY], ThrottledProgressBar, ModelSummary),
    ],
)
def test_a_progress_bar_or_summary_is_replaced_only_when_lightning_chose_it(workdir, extra, bar, summary):
    trainer = bundled_cli(["--trainer.accelerator=cpu", *extra]).trainer
    assert type(trainer.progress_bar_callback) is bar
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)] == [summary]


SWA = [
    "--model=fork.swa.BatchNormRegressor",
    "--data=fork.regression.SineData",
    "--data.n_samples=128",
    "--early_stopping.monitor=val/loss",
    "--trainer.callbacks+=lightning.pytorch.callbacks.StochasticWeightAveraging",
    "--trainer.callbacks.swa_lrs=0.05",
    "--trainer.callbacks.swa_epoch_start=2",
    "--trainer.max_epochs=4",
    *QUIET,
]


def _parameters(state: dict[str, Tensor], module: torch.nn.Module) -> list[Tensor]:
    return [state[name] for name, _ in module.named_parameters()]


def test_stochastic_weight_averaging_ends_with_its_average_and_its_config_reruns(workdir, capsys):
    """SWA on a model with batch norm: the saved config.yaml runs again (torch.device is written as 'cpu'), the
    summary counts the trained epochs apart from SWA's batch-norm epoch, and the fit ends with SWA's average, which
    early stopping's restore of the best weights does not replace."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*Unable to serialize")  # jsonargparse's, for torch.device('cpu')
        cli = BatchSizeCLI(args=["fit", *SWA])
    out = capsys.readouterr().out
    assert "Fit finished: 4 of 4 epochs and 1 batch-norm epoch for the average, max_epochs reached." in out
    assert "weights are StochasticWeightAveraging's average, not restored to the best epoch" in out
    stopper = find_callback(cli.trainer, EarlyStopping)
    assert stopper.best_weights is not None and not stopper.restored
    run = workdir / "lightning_logs/default/version_0"
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    average = last["callbacks"]["StochasticWeightAveraging"]["average_model_state"]
    for final, averaged in zip(cli.model.parameters(), _parameters(average, cli.model), strict=True):
        torch.testing.assert_close(final.detach(), averaged, rtol=0, atol=0)
    best = _parameters(stopper.best_weights, cli.model)
    if stopper.best_epoch != 4:  # the batch-norm epoch validates the average itself
        assert any(not torch.equal(p.detach(), b) for p, b in zip(cli.model.parameters(), best, strict=True))

    assert "device: cpu" in (run / "config.yaml").read_text()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*Unable to serialize")
        BatchSizeCLI(args=["fit", "--config", str(run / "config.yaml")])
    assert "Fit finished: 4 of 4 epochs and 1 batch-norm epoch" in capsys.readouterr().out


def test_without_batch_norm_the_average_wins_over_the_restore_too(workdir, capsys):
    """SWA on the bundled linear model (no batch norm, no extra epoch): the average is put in at the end of training,
    after the last epoch's checkpoint; early stopping steps aside."""
    args = ["--data.n_samples=200", "--trainer.max_epochs=4", *QUIET, SWA[4], SWA[5]]
    cli = BatchSizeCLI(LinearRegressor, RegressionDataModule, args=["fit", *args])
    assert "Fit finished: 4 of 4 epochs, max_epochs reached." in capsys.readouterr().out
    last = torch.load(workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt", weights_only=True)
    average = last["callbacks"]["StochasticWeightAveraging"]["average_model_state"]
    for final, averaged in zip(cli.model.parameters(), _parameters(average, cli.model), strict=True):
        torch.testing.assert_close(final.detach(), averaged, rtol=0, atol=0)
    assert find_callback(cli.trainer, EarlyStopping).averaged_by == "StochasticWeightAveraging"


def _peer_harness() -> tuple[Path | None, str | None]:
    """The harness that runs Lightning's own callback tests against the subclasses (PEER_HARNESS, else
    ``../shared/peer`` beside the clone), and a git directory of Lightning's repository (PEER_MIRROR, else
    ``<MIRROR_ROOT>/*pytorch-lightning*/repo``, MIRROR_ROOT by default the clone's parent's ``.mirror``)."""
    folders = [Path(os.environ["PEER_HARNESS"])] if os.environ.get("PEER_HARNESS") else []
    folders += [ROOT.parent / "shared/peer", ROOT / "shared/peer"]
    harness = next((folder for folder in folders if (folder / "run_peer.sh").is_file()), None)
    mirror = os.environ.get("PEER_MIRROR")
    if not mirror:
        root = Path(os.environ.get("MIRROR_ROOT", ROOT.parent / ".mirror"))
        mirror = next((str(p) for p in sorted(root.glob("*pytorch-lightning*/repo")) if p.is_dir()), None)
    return harness, mirror


@pytest.mark.slow
def test_lightning_s_own_callback_tests_pass_against_the_subclasses(tmp_path):
    """Lightning's EarlyStopping and ModelCheckpoint test files, run against batchsize_lit's subclasses under
    Lightning's defaults, pass wherever they pass against Lightning's classes, except the documented difference
    (last.ckpt at the end of every epoch). About 10 minutes on two cores."""
    harness, mirror = _peer_harness()
    if harness is None or mirror is None:
        pytest.skip(f"needs ../shared/peer beside the clone (found: {harness}) and a Lightning git mirror ({mirror})")
    env = {**os.environ, "PEER_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(harness / "run_peer.sh"), mirror], env=env, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 contract break(s)" in result.stdout
