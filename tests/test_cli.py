"""The command line as a user runs it: configs, run folders, TensorBoard files, checkpoints, errors."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.__main__ import main

from helpers import CONFIGS, QUIET, hparams, run_cli, scalars


@pytest.mark.parametrize("config", ["b16", "b128", "early_stopping"])
def test_fit_each_config(tmp_path, config):
    result = run_cli("fit", "--config", str(CONFIGS / f"{config}.yaml"), *QUIET, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "lightning_logs" / config / "version_0"
    assert "Fit finished" in result.stdout
    assert f"tensorboard --logdir lightning_logs/{config}" in result.stdout
    assert (run / "config.yaml").is_file()
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr

    tags = scalars(run)
    for tag in ["train_loss_step", "train_loss_epoch", "val_loss", "weight", "bias"]:
        assert tag in tags, tag
    for tag in ["by_epoch/train_loss", "by_epoch/val_loss", "by_samples/train_loss", "by_samples/val_loss"]:
        assert tag in tags, tag
    epochs = [step for step, _ in tags["by_epoch/train_loss"]]
    assert epochs == list(range(1, len(epochs) + 1))
    hp = hparams(run)
    batch_size = {"b16": 16, "b128": 128, "early_stopping": 64}[config]
    assert hp["batch_size"] == hp["global_batch_size"] == batch_size
    assert hp["lr"] == pytest.approx(0.1)
    assert hp["seed_everything"] == 0 and not isinstance(hp["seed_everything"], str)  # a number, as it was given
    best_val = min(value for _, value in tags["by_epoch/val_loss"])
    assert tags["hp/val_loss_best"][0][1] == pytest.approx(best_val)

    best = next((run / "checkpoints").glob("best-*.ckpt"))
    model = LinearRegressor.load_from_checkpoint(best, weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == len(epochs) - 1
    val = [value for _, value in tags["by_epoch/val_loss"]]
    assert val[-1] < val[0] / 2
    if config == "b16":  # 50 updates an epoch: close to the training split's least-squares optimum
        lsq = RegressionDataModule(batch_size=batch_size).reference_facts()["lsq_weight"]
        assert model.linear.weight.item() == pytest.approx(lsq, abs=0.1)


def test_rerun_gets_a_new_folder_and_eval_commands_use_the_checkpoint(tmp_path, monkeypatch, capsys):
    args = ["--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=3"]
    assert run_cli("fit", *args, cwd=tmp_path).returncode == 0
    monkeypatch.chdir(tmp_path)
    main(["fit", *args])
    runs = sorted(p.name for p in (tmp_path / "lightning_logs" / "b128").iterdir())
    assert runs == ["version_0", "version_1"]

    ckpt = tmp_path / "lightning_logs/b128/version_0/checkpoints/last.ckpt"
    model = LinearRegressor.load_from_checkpoint(ckpt, weights_only=True)
    data = RegressionDataModule(batch_size=128)
    data.setup()
    x, y = data.test_set.tensors
    expected_test = torch.nn.functional.mse_loss(model(x), y).item()

    main(["test", *args, "--ckpt_path", str(ckpt)])
    assert scalars(ckpt.parents[1])["test_loss"][0][1] == pytest.approx(expected_test, rel=1e-5)
    capsys.readouterr()
    main(["validate", *args, "--ckpt_path", str(ckpt)])
    assert "val_loss" in capsys.readouterr().out
    main(["predict", *args, "--ckpt_path", str(ckpt)])
    assert "100 predictions written to lightning_logs/b128/version_0/predictions.csv" in capsys.readouterr().out
    # Evaluation adds to the run it evaluates; it makes no new run folder.
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "b128").iterdir()) == runs


def test_custom_module_by_class_path(tmp_path):
    result = run_cli(
        "fit",
        "--config",
        str(CONFIGS / "b128.yaml"),
        *QUIET,
        "--model=fork.regression.SineRegressor",
        "--model.hidden=4",
        "--early_stopping.monitor=val/loss",
        "--trainer.max_epochs=3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "lightning_logs/b128/version_0"
    assert "val/loss" in scalars(run) and "by_epoch/train_loss" in scalars(run)
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["state_dict"]["net.0.weight"].shape == (4, 1)


def help_text(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_documents_every_data_and_model_key(capsys):
    data_help = help_text(capsys, "--data.help", "RegressionDataModule")
    for key in ["n_samples", "slope", "intercept", "noise_std", "x_min", "x_max", "val_fraction", "seed", "batch_size"]:
        assert f"--data.{key}" in data_help
    assert "noise_std² is the loss floor" in data_help
    assert "--model.lr" in help_text(capsys, "--model.help", "LinearRegressor")
    fit_help = help_text(capsys, "--help")
    for key in ["--early_stopping.patience", "--early_stopping.restore_best_weights", "--seed_everything"]:
        assert key in fit_help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
        (["--data.batch_size=-4"], "data.batch_size=-4 must be a positive integer"),
        (["--data.batch_size=abc"], "Parser key \"data.batch_size\": Expected a <class 'int'>. Got value: abc"),
        (["--data.batch_size=2.5"], "Parser key \"data.batch_size\": Expected a <class 'int'>. Got value: 2.5"),
        (["--data.batch_size=900"], "data.batch_size=900 is larger than the training split"),
        (["--data.val_fraction=1.5"], "data.val_fraction=1.5 must be in [0, 1)"),
        (["--data.val_fraction=0.5", "--data.test_fraction=0.5"], "data.val_fraction=0.5 plus test_fraction=0.5"),
        (["--data.n_samples=5"], "data.n_samples=5 is too small"),
        (["--data.noise_std=-1"], "data.noise_std=-1.0 must be >= 0"),
        (["--model.lr=0"], "model.lr=0.0 must be > 0"),
        (["--model.lr=-0.5"], "model.lr=-0.5 must be > 0"),
        (["--trainer.max_epochs=-2"], "`max_epochs` must be a non-negative integer or -1. You passed in -2"),
        (["--data.batch_sise=3"], "unknown key data.batch_sise; did you mean batch_size?"),
        (["--early_stopping.patiense=3"], "did you mean --early_stopping.patience?"),
        (["--ckpt_path=missing.ckpt"], "ckpt_path='missing.ckpt' does not exist"),
        (["--ckpt_path=last"], "ckpt_path='last': no last.ckpt under lightning_logs/b16"),
        (["--config=missing.yaml"], "missing.yaml"),
        (["--data.val_fraction=0"], "early_stopping.monitor='val_loss' is never logged (logged: train_loss_epoch)"),
        (["--early_stopping.monitor=val_los"], "monitor='val_los' is not logged (validation logs: val_loss); did you"),
    ],
)
def test_bad_input_gives_one_clean_line(workdir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, *args])
    assert exit_info.value.code != 0
    line = str(exit_info.value.code)
    assert line.startswith("error: ") and "\n" not in line
    assert message in line
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--config given.yaml is empty"),
        ("# only a comment\n", "--config given.yaml is empty"),
        ("- 1\n- 2\n", "--config given.yaml holds a list, not keys with values"),
        ("data: 5\n", "data='5': expected the import path of a LightningDataModule, package.module.Name"),
        ("model: nosuch\n", "model='nosuch': expected the import path of a LightningModule, package.module.Name"),
        ("trainr:\n  max_epochs: 3\n", "'trainr.max_epochs'; did you mean trainer.max_epochs?"),
        ("grid:\n  data.batch_size: [16]\n", "--config given.yaml is a study config: run it with batchsize-lit study"),
    ],
)
def test_a_config_file_that_is_not_a_fit_config_is_named(workdir, text, message):
    (workdir / "given.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "given.yaml", *QUIET])
    line = str(exit_info.value.code)
    assert line.startswith("error: ") and message in line and "\n" not in line
    assert not (workdir / "lightning_logs").exists()


def test_a_config_given_inline_names_its_run_default(workdir):
    main(["fit", "--config", "trainer:\n  max_epochs: 1\ndata:\n  batch_size: 64\n", *QUIET])
    assert [p.name for p in (workdir / "lightning_logs").iterdir()] == ["default"]  # not "None"


def test_an_abbreviated_key_is_not_taken_for_the_full_one(workdir):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epoch=1"])
    assert str(exit_info.value.code).endswith("--trainer.max_epoch=1; did you mean --trainer.max_epochs?")


def test_a_misspelt_monitor_fails_before_the_first_epoch_and_a_train_metric_runs(workdir, capsys):
    args = ["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=2"]
    with pytest.raises(SystemExit):
        main([*args, "--early_stopping.monitor=val_los", "--trainer.enable_progress_bar=true"])
    assert "epoch 1/" not in capsys.readouterr().out  # stopped after the sanity check, before training
    main([*args, "--early_stopping.monitor=train_loss_epoch"])  # logged in training only: no sanity-check error
    assert "best train_loss_epoch" in capsys.readouterr().out


def test_malformed_yaml_fails_cleanly_in_a_subprocess(tmp_path):
    (tmp_path / "bad.yaml").write_text("data:\n  batch_size: [1\n")
    result = run_cli("fit", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --config bad.yaml is not valid YAML at line 3, column 1: expected ',' or ']'")
    )
    assert not (tmp_path / "lightning_logs").exists()


def test_a_run_s_config_yaml_reruns_it_in_a_new_folder(workdir):
    """config.yaml holds the experiment, not the run's folder or the checkpoint it resumed from."""
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=2"]
    main(["fit", *args])
    main(["fit", *args, "--trainer.max_epochs=3", "--ckpt_path=last"])  # resumes version_0 in place
    first = workdir / "lightning_logs/b16/version_0"
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["version"] is None and saved["ckpt_path"] is None
    before = {path: path.read_bytes() for path in first.rglob("*") if path.is_file()}
    main(["fit", "--config", str(first / "config.yaml")])
    assert {path: path.read_bytes() for path in first.rglob("*") if path.is_file()} == before  # untouched
    again = workdir / "lightning_logs/b16/version_1"
    best = [torch.load(next((run / "checkpoints").glob("best-*.ckpt")))["state_dict"] for run in (first, again)]
    assert all(torch.equal(best[0][key], best[1][key]) for key in best[0])  # the same experiment, rerun


def test_gradient_accumulation_still_logs_every_epoch(workdir):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=3"]
    main(["fit", *args, "--trainer.accumulate_grad_batches=4", "--early_stopping.patience=null"])
    steps = [step for step, _ in scalars(workdir / "lightning_logs/b16/version_0")["train_loss_step"]]
    assert steps == [13, 26, 39]  # 50 batches, 13 optimizer steps an epoch: log_every_n_steps lowered to 13


def test_without_a_logger_each_run_gets_its_own_folder(workdir, capsys):
    args = ["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=1", "--trainer.logger=false"]
    main(args)
    main(args)
    line = "  run folder: lightning_logs/b16/version_1 (no logger: config.yaml and checkpoints only)"
    assert line in capsys.readouterr().out.splitlines()
    for run in ("version_0", "version_1"):
        folder = workdir / "lightning_logs/b16" / run
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml"]
    saved = yaml.safe_load((workdir / "lightning_logs/b16/version_1/config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] is None and saved["trainer"]["logger"] is False
    assert not (workdir / "checkpoints").exists()


def test_evaluating_a_checkpoint_copied_elsewhere_warns_nothing(workdir, capsys, recwarn):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=2"]
    main(["fit", *args])
    shutil.copy(workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt", workdir / "copy.ckpt")
    recwarn.clear()
    for subcommand in ["validate", "test", "predict"]:
        main([subcommand, *args, "--ckpt_path=copy.ckpt"])
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []  # "The dirpath has changed"


def test_evaluating_without_a_checkpoint_says_which_weights_it_uses(tmp_path):
    result = run_cli("test", "--config", str(CONFIGS / "b16.yaml"), *QUIET, cwd=tmp_path)
    assert result.returncode == 0
    assert "note: no --ckpt_path, so test uses the model's initial weights" in result.stderr


def printed_val_loss(capsys) -> float:
    return float(re.search(r"val_loss[\s│|]+([\d.]+)", capsys.readouterr().out).group(1))  # plain or Rich table


def test_evaluating_best_and_last_uses_the_newest_run_s_checkpoints(workdir, capsys):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET]
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *args, "--ckpt_path=best"])
    assert exit_info.value.code == "error: ckpt_path='best': no last.ckpt under lightning_logs/b16"
    main(["fit", *args, "--trainer.max_epochs=6", "--early_stopping.patience=null"])
    run = workdir / "lightning_logs/b16/version_0"
    capsys.readouterr()
    main(["validate", *args, "--ckpt_path=best"])
    best = min(value for _, value in scalars(run)["by_epoch/val_loss"])
    assert printed_val_loss(capsys) == pytest.approx(best, rel=1e-6)  # the best epoch's weights, not untrained ones
    main(["validate", *args, "--ckpt_path=last"])
    assert printed_val_loss(capsys) == pytest.approx(scalars(run)["by_epoch/val_loss"][-1][1], rel=1e-6)
    # Both evaluations logged at the step of their checkpoint, beside the training curve, none at step 0.
    steps = [step for step, _ in scalars(run)["val_loss"]]
    last_step = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert steps[-1] == last_step and min(steps) > 0
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]  # evaluated into the run, no new folder
    before = sorted(p.name for p in run.rglob("*"))
    main(["predict", *args, "--ckpt_path=last"])
    assert "100 predictions written to lightning_logs/b16/version_0/predictions.csv" in capsys.readouterr().out
    assert sorted(p.name for p in run.rglob("*")) == sorted([*before, "predictions.csv"])  # no new event file
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]
    main(["validate", *args, "--trainer.logger=false", "--ckpt_path=best"])  # no logger: the same runs' folder
    assert printed_val_loss(capsys) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize(
    ("flag", "line"),
    [
        ("--data.batch_size=0", "error: data.batch_size=0 must be a positive integer"),
        ("--trainer.max_epochs=abc", "error: trainer.max_epochs='abc': expected int or null"),
        ("--early_stopping.mode=maxx", 'error: Parser key "early_stopping.mode": Expected a typing.Literal'),
        ("--trainer.accelerator=gpu", "error: trainer.accelerator='gpu', trainer.devices='auto': No supported gpu"),
    ],
)
def test_bad_input_prints_its_one_line_alone(tmp_path, flag, line):
    """No seed or device line before the error: stderr is the error, and stdout is empty."""
    if flag.endswith("gpu") and torch.cuda.is_available():
        pytest.skip("a GPU is there")
    result = run_cli("fit", "--config", str(CONFIGS / "b16.yaml"), flag, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_a_resumed_fit_stops_by_its_own_patience(workdir, capsys):
    """Early stopping's counts carry over from the checkpoint; its patience is the resuming command's."""
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET]
    main(["fit", *args, "--trainer.max_epochs=3", "--early_stopping.patience=null"])
    capsys.readouterr()
    main(["fit", *args, "--trainer.max_epochs=40", "--ckpt_path=last"])  # b16.yaml: patience 3
    summary = capsys.readouterr().out
    assert re.search(r"Fit finished: (\d+) of 40 epochs, early stop at epoch \1 \(patience 3\)", summary), summary


def test_a_run_stopped_early_resumes_training_given_a_larger_patience(workdir, capsys):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=60"]
    main(["fit", *args])  # early stop with patience 3
    first = re.search(r"early stop at epoch (\d+)", capsys.readouterr().out)
    main(["fit", *args, "--early_stopping.patience=8", "--ckpt_path=last"])
    summary = capsys.readouterr().out
    again = re.search(r"Fit finished: (\d+) of 60 epochs", summary)
    assert first and again and int(again.group(1)) > int(first.group(1)), summary


@pytest.mark.parametrize("value", ["true", "1"])
def test_debug_shows_the_traceback(tmp_path, value):
    result = run_cli("fit", "--data.batch_size=0", cwd=tmp_path, env={"JSONARGPARSE_DEBUG": value})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "data.batch_size=0 must be a positive integer" in result.stderr


def test_debug_false_keeps_the_one_line(tmp_path):
    result = run_cli("fit", "--data.batch_size=0", cwd=tmp_path, env={"JSONARGPARSE_DEBUG": "false"})
    assert result.returncode == 1 and result.stderr == "error: data.batch_size=0 must be a positive integer\n"


def test_divergence_stops_in_the_epoch_and_explains(workdir):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "b16.yaml"), *QUIET, "--model.lr=2.0"])
    line = str(exit_info.value.code)
    assert line.startswith("error: training diverged") and "in epoch 1" in line
    assert "above this problem's stability limit lr_max_stable = 0.785" in line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_gpu(tmp_path):
    args = ["--config", str(CONFIGS / "b16.yaml"), "--trainer.accelerator=gpu", "--trainer.devices=1"]
    result = run_cli("fit", *args, "--trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GPU available: True, used: True" in result.stderr + result.stdout
    model = LinearRegressor.load_from_checkpoint(
        next((tmp_path / "lightning_logs/b16/version_0/checkpoints").glob("best-*.ckpt")), weights_only=True
    )
    assert model.linear.weight.item() == pytest.approx(3.0, abs=0.15)


def test_stacked_configs_and_print_config(capsys):
    configs = ["--config", str(CONFIGS / "b16.yaml"), "--config", str(CONFIGS / "early_stopping.yaml")]
    printed = help_text(capsys, *configs, "--print_config")
    assert "batch_size: 64" in printed and "max_epochs: 50" in printed  # the later config wins


def printed_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_print_config_flags_and_the_printed_config_runs_the_same(capsys, tmp_path):
    b16 = ["--config", str(CONFIGS / "b16.yaml")]
    full = yaml.safe_load(printed_config(capsys, *b16, "--print_config"))
    printed = printed_config(capsys, *b16, "--print_config=skip_null")
    assert "null" not in printed
    assert yaml.safe_load(printed) == drop_nulls(full)
    # What it prints is a config that gives the same config again.
    (tmp_path / "printed.yaml").write_text(printed)
    assert printed_config(capsys, "--config", str(tmp_path / "printed.yaml"), "--print_config=skip_null") == printed
    only_set = yaml.safe_load(printed_config(capsys, *b16, "--print_config=skip_default"))
    assert only_set == {"data": {"class_path": "batchsize_lit.RegressionDataModule", "init_args": {"batch_size": 16}}}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *b16, "--print_config=skip_nul"])
    known = "skip_default, skip_unset, skip_null"
    assert exit_info.value.code == f"error: --print_config=skip_nul: unknown flag; known: {known}"


def test_print_config_shows_the_checkpoint_following_early_stopping(capsys):
    b16 = ["--config", str(CONFIGS / "b16.yaml"), "--early_stopping.monitor=train_loss_epoch"]
    printed = yaml.safe_load(printed_config(capsys, *b16, "--early_stopping.mode=max", "--print_config"))
    assert (printed["checkpoint"]["monitor"], printed["checkpoint"]["mode"]) == ("train_loss_epoch", "max")
    printed = yaml.safe_load(printed_config(capsys, *b16, "--checkpoint.monitor=val_loss", "--print_config"))
    assert printed["checkpoint"]["monitor"] == "val_loss"  # given: kept


def drop_nulls(tree: object) -> object:
    if isinstance(tree, dict):
        return {key: drop_nulls(value) for key, value in tree.items() if value is not None}
    return [drop_nulls(value) for value in tree] if isinstance(tree, list) else tree


def test_print_config_lists_every_callback_a_fit_runs(capsys):
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    from helpers import bundled_cli

    printed = help_text(capsys, "--config", str(CONFIGS / "b16.yaml"), "--print_config")
    for group in ["early_stopping", "checkpoint", "history", "divergence"]:
        assert f" {group}: " in f" {printed}", group
    cli = bundled_cli(["--config", str(CONFIGS / "b16.yaml")])
    # Lightning's own progress bar and model summary are replaced, and switched by its own flags.
    kinds = {type(c).__name__ for c in cli.trainer.callbacks if not isinstance(c, ProgressBar | ModelSummary)}
    assert kinds == {"EarlyStopping", "ModelCheckpoint", "RunHistory", "DivergenceCheck"}


def test_no_validation_split_trains_on_a_train_monitor_without_warnings(tmp_path):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=2", "--data.val_fraction=0"]
    result = run_cli("fit", *args, "--early_stopping.monitor=train_loss_epoch", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "best train_loss_epoch" in result.stdout
    assert "warn" not in result.stderr.lower() and ".py:" not in result.stderr, result.stderr


def test_evaluating_an_empty_split_is_one_clean_line(workdir):
    args = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--trainer.max_epochs=1"]
    main(["fit", *args])
    ckpt = workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args, "--data.test_fraction=0", f"--ckpt_path={ckpt}"])
    expected = "error: test: RegressionDataModule gives no test data: no test_dataloader, or an empty split"
    assert str(exit_info.value.code) == expected


def test_a_fit_piped_to_a_file_writes_a_short_plain_log(tmp_path):
    """The README's main command with default flags, its console sent to a file as in CI logs or nohup."""
    with open(tmp_path / "out.txt", "w") as out:
        env = {**os.environ, "PYTHONPATH": str(CONFIGS.parent / "tests")}
        command = [sys.executable, "-m", "batchsize_lit", "fit", "--config", str(CONFIGS / "b16.yaml")]
        assert subprocess.run(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env).returncode == 0
    text = (tmp_path / "out.txt").read_text()
    lines = text.splitlines()
    assert len(lines) <= 60, text
    assert "\r" not in text and "Tip" not in text and "warn" not in text.lower(), text
    assert sum(line.startswith("epoch ") for line in lines) == 9  # one line per epoch, early stop at 9
    assert lines[-11].startswith("Fit finished: 9 of 20 epochs")


def test_top_level_help_says_what_the_tool_is_and_a_finished_fit_says_it_once(tmp_path):
    """The --help heading names the template and its study; a fit that ran all its epochs or steps says so in its
    summary alone, without Lightning's "`Trainer.fit` stopped: `max_epochs=2` reached." line."""
    help_out = run_cli("--help", cwd=tmp_path).stdout
    assert "Lightning Trainer command line tool" not in help_out
    assert "batchsize-lit study" in " ".join(help_out.split()[:60])
    fit = run_cli("fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_epochs=2", cwd=tmp_path)
    assert fit.returncode == 0 and "Fit finished: 2 of 2 epochs" in fit.stdout
    assert "Trainer.fit` stopped" not in fit.stdout + fit.stderr
    steps = run_cli("fit", "--config", str(CONFIGS / "b128.yaml"), *QUIET, "--trainer.max_steps=3", cwd=tmp_path)
    assert steps.returncode == 0 and "stopped by max_steps" in steps.stdout
    assert "Trainer.fit` stopped" not in steps.stdout + steps.stderr
