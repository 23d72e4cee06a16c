"""A fork's own textbook LightningModule and DataModule get everything generic: summary, resume, study, noise scale."""

import csv

import pytest
import torch

from helpers import QUIET, exit_code, hparams, read_csv, run_cli, scalars

FORK = ["--model=fork.regression.SineRegressor", "--data=fork.regression.SineData", *QUIET]
FORK += ["--early_stopping.monitor=val/loss", "--checkpoint.monitor=val/loss", "--trainer.max_epochs=4"]
CLASSIFIER = ["--model=fork.classification.BlobClassifier", "--data=fork.classification.Blobs", *QUIET]
CLASSIFIER += ["--early_stopping.monitor=val/acc", "--early_stopping.mode=max", "--trainer.max_epochs=6"]


def test_fit_reports_the_best_monitored_value_and_logs_it(tmp_path):
    result = run_cli("fit", *FORK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    run = tmp_path / "lightning_logs/default/version_0"
    tags = scalars(run)
    val = [value for _, value in tags["by_epoch/val/loss"]]
    assert len(val) == 4
    best = min(val)
    assert f"best val/loss {best:.5g} at epoch {val.index(best) + 1}" in result.stdout
    assert tags["hp/val/loss_best"][0][1] == pytest.approx(best)
    assert "train_loss_step" in tags and "train_loss_epoch" in tags  # the fork's own logging, kept
    assert "by_samples/train_loss" in tags
    assert hparams(run)["batch_size"] == 32
    assert (run / "checkpoints/last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))


def test_resume_with_ckpt_path_last_continues_in_place(workdir, capsys):
    assert exit_code(["fit", *FORK, "--trainer.max_epochs=2"]) == 0
    assert exit_code(["fit", *FORK, "--ckpt_path=last"]) == 0
    assert sorted(p.name for p in (workdir / "lightning_logs/default").iterdir()) == ["version_0"]
    last = torch.load(workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 3
    assert "Fit finished: 4 of 4 epochs" in capsys.readouterr().out


def test_a_resumed_fork_ends_with_an_uninterrupted_run_s_weights(workdir):
    """A fork's DataLoader(shuffle=True) draws each epoch's order from the global generator: last.ckpt holds the
    generators' states, so a resumed run shuffles as the uninterrupted one did."""
    assert exit_code(["fit", *FORK, "--trainer.logger.init_args.name=whole"]) == 0
    assert exit_code(["fit", *FORK, "--trainer.logger.init_args.name=parts", "--trainer.max_epochs=2"]) == 0
    assert exit_code(["fit", *FORK, "--trainer.logger.init_args.name=parts", "--ckpt_path=last"]) == 0
    whole, parts = (
        torch.load(workdir / f"lightning_logs/{name}/version_0/checkpoints/last.ckpt", weights_only=True)
        for name in ("whole", "parts")
    )
    assert parts["epoch"] == whole["epoch"] == 3
    assert all(torch.equal(whole["state_dict"][key], parts["state_dict"][key]) for key in whole["state_dict"])


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        ("--model=fork.regression.NoSuch", "model='fork.regression.NoSuch': module 'fork.regression' has no attribute"),
        ("--data.class_path=fork.nosuch.Data", "data='fork.nosuch.Data': module 'fork' has no attribute 'nosuch'"),
        ("--model=nosuchpackage.Model", "model='nosuchpackage.Model': No module named 'nosuchpackage'"),
        ("--model=fork.regression.SineData", "model='fork.regression.SineData' is not a LightningModule"),
    ],
)
def test_a_class_path_that_names_no_usable_class_is_one_line_naming_key_and_value(workdir, flag, line):
    assert str(exit_code(["fit", flag])).startswith(f"error: {line}")
    assert not (workdir / "lightning_logs").exists()


def test_validate_a_fork_checkpoint(workdir, capsys):
    assert exit_code(["fit", *FORK, "--trainer.max_epochs=1"]) == 0
    ckpt = next((workdir / "lightning_logs/default/version_0/checkpoints").glob("best-*.ckpt"))
    capsys.readouterr()
    assert exit_code(["validate", *FORK, f"--ckpt_path={ckpt}"]) == 0
    assert "val/loss" in capsys.readouterr().out


def test_a_fork_logging_its_own_step_train_loss_can_monitor_train_loss_epoch(workdir, capsys):
    args = [*FORK, "--model=fork.regression.StepLossRegressor", "--early_stopping.monitor=train_loss_epoch"]
    assert exit_code(["fit", *args, "--checkpoint.monitor=train_loss_epoch"]) == 0
    assert "best train_loss_epoch " in capsys.readouterr().out
    epochs = scalars(workdir / "lightning_logs/default/version_0")["train_loss_epoch"]
    assert len(epochs) == 4  # one value an epoch, from the run history, beside the model's own train_loss


def test_predict_a_fork_writes_class_ids_and_without_a_loader_is_one_line(workdir, capsys):
    assert exit_code(["fit", *CLASSIFIER, "--trainer.max_epochs=1"]) == 0
    ckpt = str(workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt")
    line = exit_code(["predict", *CLASSIFIER, f"--ckpt_path={ckpt}"])
    assert line == "error: predict: Blobs gives no predict data: no predict_dataloader, or an empty split"
    capsys.readouterr()
    assert exit_code(["predict", *CLASSIFIER, "--data=fork.classification.BlobsToPredict", f"--ckpt_path={ckpt}"]) == 0
    written = "lightning_logs/default/version_0/predictions.csv"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"200 predictions written to {written}"
    rows = read_csv(workdir / written)  # 2-column inputs: index and class only
    assert [row["index"] for row in rows] == [str(i) for i in range(200)] and list(rows[0]) == ["index", "prediction"]
    assert {row["prediction"] for row in rows} <= {"0", "1"}


def test_mode_max_monitor_is_followed_everywhere(workdir, capsys):
    assert exit_code(["fit", *CLASSIFIER]) == 0
    out = capsys.readouterr().out
    tags = scalars(workdir / "lightning_logs/default/version_0")
    acc = [value for _, value in tags["by_epoch/val/acc"]]
    best = max(acc)
    assert f"best val/acc {best:.5g} at epoch {acc.index(best) + 1}" in out
    assert tags["hp/val/acc_best"][0][1] == pytest.approx(best)
    # checkpoint.monitor was not given: it follows early stopping's, mode included
    name = next((workdir / "lightning_logs/default/version_0/checkpoints").glob("best-*.ckpt")).name
    assert name == f"best-epoch={acc.index(best)}.ckpt"


def write_study(folder, base: dict, grid: dict):
    import json

    path = folder / "forkstudy.yaml"
    path.write_text(json.dumps({"base": base, "grid": grid}))
    return str(path)


FORK_BASE = {
    "model": {"class_path": "fork.regression.SineRegressor"},
    "data": {"class_path": "fork.regression.SineData"},
    "early_stopping": {"monitor": "val/loss"},
    "checkpoint": {"monitor": "val/loss"},
    "trainer": {"accelerator": "cpu", "max_epochs": 3},
}


def read_rows(path) -> list[dict[str, str]]:
    with open(path) as file:
        return list(csv.DictReader(file))


def test_study_of_a_fork_fills_the_monitor_columns(workdir, capsys):
    config = write_study(workdir, FORK_BASE, {"data.batch_size": [16, 64]})
    assert exit_code(["study", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "val/loss" in out.splitlines()[0]  # the progress line names the monitor
    folder = workdir / "lightning_logs/forkstudy"
    rows = read_rows(folder / "results.csv")
    assert [row["cell"] for row in rows] == ["bs16", "bs64"]
    for row in rows:
        assert row["status"] == "ok" and row["monitor"] == "val/loss"
        assert float(row["monitor_best"]) > 0 and 1 <= int(row["best_epoch"]) <= 3
        assert row["test_loss"] == ""  # no test_step: no test pass
        assert float(row["val/loss"]) > 0  # what the model logged lands as a column
    assert (folder / "train_loss_by_epoch.png").is_file()


@pytest.mark.filterwarnings("ignore:`SineRegressor.configure_optimizers` will be overridden")  # by --optimizer
def test_the_lr_column_is_the_rate_the_optimizer_was_given(workdir):
    base = {**FORK_BASE, "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}}
    assert exit_code(["study", "--config", write_study(workdir, base, {"data.batch_size": [16]})]) == 0
    row = read_rows(workdir / "lightning_logs/forkstudy/results.csv")[0]
    assert float(row["lr"]) == float(row["lr_effective"]) == 0.05  # not the model's unused lr=0.01


def test_a_cell_that_raises_is_recorded_and_the_study_goes_on(workdir, capsys):
    base = {**FORK_BASE, "model": {"class_path": "fork.broken.FlakyRegressor"}}
    config = write_study(workdir, base, {"model.hidden": [13, 8]})
    code = exit_code(["study", "--config", config])
    assert code == 1
    out, err = capsys.readouterr()
    assert "cell hidden-13 failed: hidden=13 is unlucky" in err
    folder = workdir / "lightning_logs/forkstudy"
    assert "RuntimeError: hidden=13 is unlucky" in (folder / "hidden-13/traceback.txt").read_text()
    rows = read_rows(folder / "results.csv")
    assert [(row["cell"], row["status"]) for row in rows] == [("hidden-13", "failed"), ("hidden-8", "ok")]
    # model.hidden is a grid key with no documented column: it gets its own, after the cell, in the csv and table
    assert list(rows[0])[:2] == ["cell", "model.hidden"] and [row["model.hidden"] for row in rows] == ["13", "8"]
    assert "cell       model.hidden  batch_size" in out
    # Run again, as after fixing the bug: the failed cell reruns, the finished one is kept.
    assert exit_code(["study", "--config", config]) == 1
    out = capsys.readouterr().out
    assert (
        "1 cell(s) already done" in out
        and "1 cell(s) rerun, failed or run with another config before: hidden-13" in out
    )


def test_a_study_rerun_with_a_changed_config_reruns_its_cells(workdir, capsys):
    grid = {"model.hidden": [4, 8]}
    assert exit_code(["study", "--config", write_study(workdir, FORK_BASE, grid)]) == 0
    base = {**FORK_BASE, "trainer": {"accelerator": "cpu", "max_epochs": 2}}
    capsys.readouterr()
    assert exit_code(["study", "--config", write_study(workdir, base, grid)]) == 0
    assert "2 cell(s) rerun, failed or run with another config before: hidden-4, hidden-8" in capsys.readouterr().out
    rows = read_rows(workdir / "lightning_logs/forkstudy/results.csv")
    assert [row["max_epochs"] for row in rows] == ["2", "2"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_study_whose_config_every_cell_would_fail_on_stops_at_the_first(workdir, capsys, jobs):
    base = {**FORK_BASE, "early_stopping": {"monitor": "val_loss"}, "checkpoint": {"monitor": "val_loss"}}
    code = exit_code(
        ["study", "--config", write_study(workdir, base, {"model.hidden": [4, 8, 12, 16]}), "--jobs", jobs]
    )
    assert str(code).startswith("error: cell hidden-") and "early_stopping.monitor='val_loss' is not logged" in code
    assert not list((workdir / "lightning_logs/forkstudy").glob("*/result.json"))  # no cell recorded, none went on


@pytest.mark.slow
def test_a_killed_worker_process_ends_the_study_in_one_line(tmp_path):
    """A worker killed as by the out-of-memory killer: one line, exit 1, no report; the rest keep their results."""
    base = {**FORK_BASE, "model": {"class_path": "fork.broken.DyingRegressor"}}
    config = write_study(tmp_path, base, {"model.hidden": [13, 8]})
    result = run_cli("study", "--config", config, "--jobs", "2", cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    folder = tmp_path / "lightning_logs/forkstudy"
    assert result.stderr.splitlines()[-1] == (
        "error: a worker process died (killed, out of memory, or failed to start: see above); the finished cells are "
        f"kept in {folder.relative_to(tmp_path)}: run the same command again to run the others"
    )
    assert not (folder / "hidden-13/result.json").exists() and not (folder / "results.csv").exists()


def test_two_batch_noise_scale_for_a_fork(workdir):
    args = ["--trainer.callbacks+=batchsize_lit.science.GradientNoiseScale", "--trainer.accumulate_grad_batches=2"]
    assert exit_code(["fit", *FORK, *args]) == 0
    values = [value for _, value in scalars(workdir / "lightning_logs/default/version_0")["gns/b_simple_two_batch"]]
    assert len(values) == 4 * 6  # one per full window of 2 of the epoch's 13 batches (410 training points)
    assert all(torch.isfinite(torch.tensor(values)))


def test_a_class_given_by_class_path_keeps_its_own_defaults(capsys):
    from batchsize_lit.__main__ import DEFAULT_DATA, DEFAULT_MODEL
    from batchsize_lit.cli import BatchSizeCLI

    cli = BatchSizeCLI(DEFAULT_MODEL, DEFAULT_DATA, args=CLASSIFIER, run=False)
    assert cli.datamodule.hparams.n_samples == 400  # not the bundled data module's 1000
    assert exit_code(["fit", *CLASSIFIER, "--print_config"]) == 0
    assert "n_samples: 400" in capsys.readouterr().out
    cli = BatchSizeCLI(DEFAULT_MODEL, DEFAULT_DATA, args=[*CLASSIFIER, "--data.n_samples=1000"], run=False)
    assert cli.datamodule.hparams.n_samples == 1000  # a value given explicitly stays
