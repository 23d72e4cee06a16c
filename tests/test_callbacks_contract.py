"""Callbacks a Lightning user brings compose with the template's: the console, the checkpoint and early-stopping
contracts of Lightning's own classes, and weight averaging."""

import pytest
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar

from batchsize_lit.callbacks import BriefModelSummary
from batchsize_lit.progress import ThrottledProgressBar

from helpers import bundled_cli, run_cli, scalars

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
