"""Each reliance in batchsize_lit.compat holds for the installed Lightning; a release that changes one fails here."""

import csv
import warnings

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from batchsize_lit.compat import checkpoint_run_folder, open_csv_keeping_rows


@pytest.mark.parametrize("logger", ["tensorboard", "csv", "none", "versioned"])
def test_checkpoint_run_folder_is_where_model_checkpoint_writes(tmp_path, logger):
    loggers = {
        "tensorboard": TensorBoardLogger(tmp_path, name="b16"),
        "csv": CSVLogger(tmp_path, name="b16", version=3),
        "none": False,
        "versioned": TensorBoardLogger(tmp_path, name="", version="run_a"),
    }[logger]
    trainer = Trainer(
        default_root_dir=tmp_path, logger=loggers, max_steps=1, limit_val_batches=0, enable_progress_bar=False
    )
    expected = checkpoint_run_folder(trainer)  # asked before the fit, as the CLI does
    trainer.fit(BoringModel())
    assert trainer.checkpoint_callback.dirpath == str(expected / "checkpoints")


def test_a_csv_log_continued_keeps_its_rows_and_columns(tmp_path):
    first = CSVLogger(tmp_path, name="run", version=0)
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.save()
    (tmp_path / "run/version_0/config.yaml").write_text("x: 1\n")  # the folder is not empty
    again = CSVLogger(tmp_path, name="run", version=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "exists and is not empty" warning is not let through
        open_csv_keeping_rows(again)
    again.log_metrics({"test_loss": 2.0}, step=1)
    again.save()
    with open(tmp_path / "run/version_0/metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows == [
        {"step": "0", "test_loss": "", "train_loss": "1.0"},
        {"step": "1", "test_loss": "2.0", "train_loss": ""},
    ]


def test_lightning_s_csv_writer_still_deletes_an_existing_log(tmp_path):
    """The reason for open_csv_keeping_rows: without it, a CSVLogger started in a run's folder loses its rows."""
    first = CSVLogger(tmp_path, name="run", version=0)
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.save()
    with pytest.warns(UserWarning, match="exists and is not empty"):
        writer = CSVLogger(tmp_path, name="run", version=0).experiment
    assert not (tmp_path / "run/version_0/metrics.csv").exists()
    assert writer.metrics_keys == []  # the undocumented attribute open_csv_keeping_rows seeds
