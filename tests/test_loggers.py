"""Run folders, best and last, resume and the summary with TensorBoard, CSV, MLflow, several loggers or none."""

import csv
import importlib.util
import warnings

import pytest
import torch
import yaml
from jsonargparse import Namespace

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.__main__ import main
from batchsize_lit.runs import is_folder_logger

from helpers import CONFIGS, QUIET, exit_code, run_cli, scalars

ARGS = ["--config", str(CONFIGS / "b16.yaml"), *QUIET, "--early_stopping.patience=null"]
TB = "lightning.pytorch.loggers.TensorBoardLogger"
CSV = "lightning.pytorch.loggers.CSVLogger"
LOGGERS = {
    "tensorboard": [],
    "csv": [f"--trainer.logger={CSV}", "--trainer.logger.save_dir=csvlogs"],
    "both": [f"--trainer.logger=[{{class_path: {TB}}}, {{class_path: {CSV}}}]"],
    "none": ["--trainer.logger=false"],
}
# Where each numbers its runs: with no logger, the same lightning_logs/<config name> as TensorBoard.
PARENT = {kind: "lightning_logs/b16" for kind in LOGGERS} | {"csv": "csvlogs/b16"}
LOOK = {  # the summary's lines after the run folder
    "tensorboard": ["tensorboard --logdir lightning_logs/b16"],
    "csv": ["metrics: csvlogs/b16/version_1/metrics.csv"],
    "both": ["tensorboard --logdir lightning_logs/b16", "metrics: lightning_logs/b16/version_1/metrics.csv"],
    "none": [],
}


def summary_tail(out: str) -> list[str]:
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("  run folder: "))  # the last fit's
    return [line.strip() for line in lines[start:]]


def csv_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def logged_test_loss(run, kind: str) -> float:
    """The last test_loss the run's logger wrote."""
    if kind in ("csv", "both"):
        return float([row for row in csv_rows(run / "metrics.csv") if row["test_loss"]][-1]["test_loss"])
    return scalars(run)["test_loss"][-1][1]


@pytest.mark.parametrize("kind", list(LOGGERS))
def test_each_logger_numbers_runs_resumes_in_place_and_evaluates_best_into_the_run(workdir, capsys, kind):
    args = [*ARGS, *LOGGERS[kind]]
    parent = workdir / PARENT[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *args, "--trainer.max_epochs=1"])
        main(["fit", *args, "--trainer.max_epochs=2"])  # a second run: its own folder, never the first's
    assert [str(w.message) for w in caught if "exists and is not empty" in str(w.message)] == []
    assert sorted(p.name for p in parent.iterdir()) == ["version_0", "version_1"]
    run = parent / "version_1"
    end = " (no logger: config.yaml and checkpoints only)" if kind == "none" else ""
    assert summary_tail(capsys.readouterr().out) == [f"run folder: {PARENT[kind]}/version_1{end}", *LOOK[kind]]
    assert (run / "config.yaml").is_file() and (run / "checkpoints/last.ckpt").is_file()
    if kind in ("csv", "both"):
        trained = csv_rows(run / "metrics.csv")
        assert len([row for row in trained if row["val_loss"]]) == 2

    main(["fit", *args, "--trainer.max_epochs=3", "--ckpt_path=last"])  # resumes the newest run in its folder
    assert sorted(p.name for p in parent.iterdir()) == ["version_0", "version_1"]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ckpt_path"] is None and saved["trainer"]["max_epochs"] == 3
    if kind in ("csv", "both"):  # the resumed run's log continues, the first two epochs kept
        resumed = csv_rows(run / "metrics.csv")
        assert [row for row in resumed if row["val_loss"]][:2] == [row for row in trained if row["val_loss"]]
        assert len([row for row in resumed if row["val_loss"]]) == 3

    capsys.readouterr()
    main(["test", *args, "--ckpt_path=best"])
    assert "warning" not in capsys.readouterr().err  # the same data and model as the run's
    best = min(run.glob("checkpoints/best-*.ckpt"))
    model = LinearRegressor.load_from_checkpoint(best, weights_only=True)
    data = RegressionDataModule(batch_size=16)
    data.setup()
    x, y = data.test_set.tensors
    if kind != "none":  # logged into the run it evaluates
        assert logged_test_loss(run, kind) == pytest.approx(torch.nn.functional.mse_loss(model(x), y).item(), rel=1e-5)
    assert sorted(p.name for p in parent.iterdir()) == ["version_0", "version_1"]


def test_a_csv_run_through_a_subprocess_prints_no_warning(tmp_path):
    result = run_cli("fit", *ARGS, *LOGGERS["csv"], "--trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "warn" not in result.stderr.lower(), result.stderr
    assert result.stdout.splitlines()[-1] == "  metrics: csvlogs/b16/version_0/metrics.csv"
    assert "tensorboard" not in result.stdout


@pytest.mark.parametrize("kind", ["csv", "none"])
def test_bad_input_leaves_no_run_folder_with_any_logger(workdir, kind):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *ARGS, *LOGGERS[kind], "--data.batch_size=0"])
    assert exit_info.value.code == "error: data.batch_size=0 must be a positive integer"
    assert list(workdir.iterdir()) == []


def test_a_checkpoint_from_a_run_trained_otherwise_is_named_in_one_warning_line(tmp_path):
    trained = run_cli("fit", *ARGS, "--data.n_samples=2000", "--trainer.max_epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    result = run_cli("test", *ARGS, "--ckpt_path=best", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: the checkpoint's run was trained with data.n_samples=2000 (here 1000): "
        "see lightning_logs/b16/version_0/config.yaml"
    ]
    same = run_cli("test", *ARGS, "--data.n_samples=2000", "--ckpt_path=best", cwd=tmp_path)
    assert same.returncode == 0 and "warning:" not in same.stderr


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (extra: mlflow)")
def test_mlflow_s_file_store_gets_the_run_s_config_and_checkpoints(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow>=3 asks for a database unless told
    args = [*ARGS, "--trainer.logger=lightning.pytorch.loggers.MLFlowLogger", "--trainer.max_epochs=2"]
    main(["fit", *args])
    # The file store is the save_dir, lightning_logs by default: <experiment id>/<run id>/ is the run folder.
    runs = [path.parents[1] for path in (workdir / "lightning_logs").glob("*/*/checkpoints/last.ckpt")]
    assert len(runs) == 1 and (runs[0] / "config.yaml").is_file() and (runs[0] / "meta.yaml").is_file()
    run = runs[0].relative_to(workdir)
    assert summary_tail(capsys.readouterr().out) == [
        f"run folder: {run}",
        "mlflow ui --backend-store-uri lightning_logs",
    ]
    main(["test", *args, f"--ckpt_path={run}/checkpoints/last.ckpt"])
    assert "test_loss" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args, "--ckpt_path=best"])
    assert exit_info.value.code == (
        "error: ckpt_path='best': lightning.pytorch.loggers.MLFlowLogger gives its runs ids, not numbered folders; "
        "give the path"
    )


@pytest.mark.parametrize(
    ("logger", "numbered"),
    [("TensorBoardLogger", True), ("CSVLogger", True), ("WandbLogger", False), ("MLFlowLogger", False)],
)
def test_only_loggers_that_write_save_dir_name_version_get_numbered_folders(logger, numbered):
    """W&B takes save_dir, name and version too, but its runs are <save_dir>/<project>/<id>: its ids are kept."""
    spec = Namespace(class_path=f"lightning.pytorch.loggers.{logger}", init_args=Namespace(save_dir="x", name=None))
    spec.init_args.version = None
    assert is_folder_logger(spec) is numbered


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_an_evaluation_of_the_initial_weights_with_two_loggers_writes_one_run_folder(workdir, capsys, subcommand):
    """No --ckpt_path, so no run to evaluate into: the command claims one folder, which both loggers share, as a
    fit's do (each counting its own next version put them in version_0 and version_1)."""
    loggers = [{"class_path": f"lightning.pytorch.loggers.{kind}Logger"} for kind in ("TensorBoard", "CSV")]
    (workdir / "two.yaml").write_text(yaml.safe_dump({"trainer": {"logger": loggers}}))
    args = [subcommand, "--config", str(CONFIGS / "b16.yaml"), "--config", "two.yaml", *QUIET]
    assert exit_code(args) == 0
    runs = sorted(path.name for path in (workdir / "lightning_logs/two").iterdir())  # named after the last config
    assert runs == ["version_0"], runs
    run = workdir / "lightning_logs/two/version_0"
    assert (run / "metrics.csv").exists() and list(run.glob("events.out.tfevents.*"))
