"""The bundled problems under batchsize_lit/problems/: their old import paths, and the columns a problem reports."""

import importlib

import lightning
import pytest
import torch
import yaml

from batchsize_lit.problems.digits import CNNClassifier, DigitsDataModule, MLPClassifier
from batchsize_lit.problems.regression import LinearRegressor, RegressionDataModule
from batchsize_lit.study.report import columns_of, problem_columns

from helpers import QUIET, ROOT, bundled_cli, exit_code, read_csv, run, write_study

# Every class path that configs, checkpoints and forks written before the move name, and the class it means now.
OLD_PATHS = {
    "batchsize_lit.LinearRegressor": LinearRegressor,
    "batchsize_lit.RegressionDataModule": RegressionDataModule,
    "batchsize_lit.model.LinearRegressor": LinearRegressor,
    "batchsize_lit.data.RegressionDataModule": RegressionDataModule,
    "batchsize_lit.digits.MLPClassifier": MLPClassifier,
    "batchsize_lit.digits.CNNClassifier": CNNClassifier,
    "batchsize_lit.digits.DigitsDataModule": DigitsDataModule,
}
TINY = ["--trainer.max_epochs=1", "--checkpoint.save_top_k=1", *QUIET]


@pytest.mark.parametrize("path", sorted(OLD_PATHS))
def test_an_old_import_path_names_the_moved_class(path):
    module, name = path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is OLD_PATHS[path]


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("batchsize_lit.LinearRegressor", "batchsize_lit.RegressionDataModule"),
        ("batchsize_lit.model.LinearRegressor", "batchsize_lit.data.RegressionDataModule"),
        ("batchsize_lit.digits.MLPClassifier", "batchsize_lit.digits.DigitsDataModule"),
        ("batchsize_lit.digits.CNNClassifier", "batchsize_lit.digits.DigitsDataModule"),
    ],
)
def test_a_config_naming_an_old_class_path_instantiates_the_moved_class(workdir, model, data):
    cli = bundled_cli([f"--model.class_path={model}", f"--data.class_path={data}", *TINY])
    assert type(cli.model) is OLD_PATHS[model] and type(cli.datamodule) is OLD_PATHS[data]


@pytest.mark.parametrize(
    ("path", "init_args"),
    [
        ("batchsize_lit.LinearRegressor", {"lr": 0.2}),
        ("batchsize_lit.model.LinearRegressor", {"lr": 0.2}),
        ("batchsize_lit.digits.MLPClassifier", {"hidden": 8}),
        ("batchsize_lit.digits.CNNClassifier", {"channels": 4}),
    ],
)
def test_a_checkpoint_recording_an_old_class_path_loads(tmp_path, path, init_args):
    """LightningCLI records the class path in the checkpoint's hyperparameters, and load_from_checkpoint instantiates
    it where its module is imported: as a script written before the move imports it, from the old path."""
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    model = cls(**init_args)
    hparams = {"_class_path": path, **model.hparams, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": hparams,
                  "pytorch-lightning_version": lightning.__version__}  # fmt: skip
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = cls.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert type(loaded) is OLD_PATHS[path] and dict(loaded.hparams) == dict(model.hparams)
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())


def test_fit_then_test_and_predict_run_with_a_config_naming_the_old_digits_paths(workdir):
    config = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    config["model"]["class_path"] = "batchsize_lit.digits.MLPClassifier"
    config["model"]["init_args"] = {"hidden": 8}
    config["data"]["class_path"] = "batchsize_lit.digits.DigitsDataModule"
    (workdir / "old.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(workdir / "old.yaml"), *TINY]
    assert exit_code(["fit", *args]) == 0
    saved = yaml.safe_load((workdir / "lightning_logs/old/version_0/config.yaml").read_text())
    assert saved["model"]["class_path"] == "batchsize_lit.digits.MLPClassifier"
    assert exit_code(["test", *args, "--ckpt_path=best"]) == 0
    assert exit_code(["predict", *args, "--ckpt_path=best"]) == 0
    assert len(read_csv(workdir / "lightning_logs/old/version_0/predictions.csv")) == DigitsDataModule().n_test


def test_the_problem_s_named_report_columns_follow_the_losses():
    row = {"cell": "a", "test_loss": 1.0, "true_w": 2.0, "noise_floor": 0.1, "w": 3.0, "status": "ok"}
    assert columns_of([row]) == ["cell", "test_loss", "noise_floor", "status", "true_w", "w"]
    assert columns_of([row], problem=["w"]) == ["cell", "test_loss", "w", "noise_floor", "status", "true_w"]


def test_a_study_finds_the_report_columns_of_the_classes_it_names():
    assert problem_columns(None, {}, (LinearRegressor, RegressionDataModule)) == ["weight", "bias"]
    assert problem_columns(None, {}, (MLPClassifier, DigitsDataModule)) == []
    named = {"model": {"class_path": "batchsize_lit.model.LinearRegressor"}}
    assert problem_columns(named, {}, (MLPClassifier, None)) == ["weight", "bias"]
    assert problem_columns(None, {"model.class_path": ["batchsize_lit.LinearRegressor", "nowhere.X", "Short"]},
                           (None, None)) == ["weight", "bias"]  # fmt: skip


def test_a_bundled_study_s_columns_are_those_of_the_committed_results(workdir, capsys):
    """weight and bias come from the model's run report, yet stand where they always stood: in results.csv and in
    the printed table."""
    assert run("--config", str(write_study(workdir, {"data.batch_size": [8, 64]}))) == 0
    header = (workdir / "lightning_logs/tiny/results.csv").read_text().splitlines()[0]
    assert header == (ROOT / "docs/results/study_seed/results.csv").read_text().splitlines()[0]
    table = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cell "))
    assert table.split()[-4:] == ["test_loss", "weight", "bias", "status"]
