"""Callbacks a Lightning user brings compose with the template's: the console, the checkpoint and early-stopping
contracts of Lightning's own classes, and weight averaging."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import Tensor

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.callbacks import BriefModelSummary, EarlyStopping, ModelCheckpoint
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


def _fit_boring(callback: ModelCheckpoint, epochs: int) -> None:
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())


def test_last_checkpoint_is_saved_by_lightning_s_code_every_epoch(tmp_path):
    """With save_top_k 0 Lightning would write last.ckpt only when training ends; here every epoch ends with one,
    written by Lightning's own save: a second fit into the folder versions it, and CHECKPOINT_NAME_LAST's template
    is formatted in the file name and in last_model_path."""
    for _ in range(2):
        _fit_boring(ModelCheckpoint(dirpath=tmp_path, monitor=None, save_top_k=0), epochs=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last-v1.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "last-v1.ckpt", weights_only=True)["epoch"] == 1

    callback = ModelCheckpoint(dirpath=tmp_path / "named", monitor=None, save_top_k=0)
    callback.CHECKPOINT_NAME_LAST = "last-{epoch}"
    saved = []
    callback.on_save_checkpoint = lambda trainer, module, checkpoint: saved.append(trainer.current_epoch)
    _fit_boring(callback, epochs=3)
    assert saved == [0, 1, 2]  # one save at the end of each epoch, each replacing the one before
    assert [path.name for path in (tmp_path / "named").iterdir()] == ["last-epoch=2.ckpt"]
    assert callback.last_model_path == str(tmp_path / "named/last-epoch=2.ckpt")


def test_a_run_stopped_early_resumes_to_a_larger_patience_and_ends_at_once_with_the_same(workdir, capsys):
    """stopped_epoch is restored as saved (Lightning's contract); at the start of training a resumed run goes on if
    its patience is larger than the count that stopped it, and ends at once if not."""
    args = ["--data.n_samples=200", "--model.lr=0.7", "--data.batch_size=8", "--trainer.max_epochs=30", *QUIET]
    for extra in ([], ["--ckpt_path=last"], ["--ckpt_path=last", "--early_stopping.patience=3"]):
        patience = ["--early_stopping.patience=1"] if "--early_stopping.patience=3" not in extra else []
        cli = BatchSizeCLI(LinearRegressor, RegressionDataModule, args=["fit", *args, *patience, *extra])
        stopper = find_callback(cli.trainer, EarlyStopping)
        assert stopper.stopped_epoch > 0
        if extra == []:
            first = stopper.stopped_epoch
        elif len(extra) == 1:
            assert stopper.stopped_epoch == first  # nothing more to train
        else:
            assert stopper.stopped_epoch > first  # trained on, and stopped again with patience 3
    assert [f.split(",")[0] for f in capsys.readouterr().out.splitlines() if f.startswith("Fit finished")] == [
        f"Fit finished: {first + 1} of 30 epochs",
        f"Fit finished: {first + 1} of 30 epochs",
        f"Fit finished: {stopper.stopped_epoch + 1} of 30 epochs",
    ]


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


def test_with_several_validations_an_epoch_the_history_keeps_the_epoch_s_best_as_early_stopping_saw_it(workdir):
    """val_check_interval 0.25: four validations an epoch, at an lr where the val loss wanders. The epoch's row holds
    its best check, so that the best the summary and the hparams tab report is early stopping's, with the epoch
    whose weights it restores."""
    args = ["--config", str(ROOT / "configs/b16.yaml"), *QUIET, "--trainer.max_epochs=6", "--model.lr=0.5"]
    cli = bundled_cli([*args, "--trainer.val_check_interval=0.25", "--early_stopping.patience=null"])
    cli.trainer.fit(cli.model, cli.datamodule)
    stopper = find_callback(cli.trainer, EarlyStopping)
    history = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RunHistory")
    checks = [value for _, value in scalars(Path(cli.trainer.log_dir))["by_epoch/val_loss"]]
    assert len(checks) == 24  # every validation on the curve
    epochs = [checks[4 * e : 4 * e + 4] for e in range(6)]
    assert any(epoch[-1] > min(epoch) for epoch in epochs)  # in some epoch the last validation is not the best
    best_value, best_epoch = history.best()
    assert best_value == pytest.approx(float(stopper.best_score)) and best_epoch == stopper.best_epoch + 1
    assert [row["val_loss"] for row in history.history] == [pytest.approx(min(epoch)) for epoch in epochs]
