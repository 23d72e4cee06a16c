"""Every reliance on Lightning's or jsonargparse's internals, one function each; tests/test_compat.py checks them."""

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger


def checkpoint_run_folder(trainer: Trainer) -> Path:
    """The folder whose checkpoints/ a ModelCheckpoint with no dirpath writes to. Lightning decides it in a private
    method (ModelCheckpoint.__resolve_ckpt_dir) at setup; the run's config.yaml must go there before setup."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    first = trainer.loggers[0]
    version = first.version if isinstance(first.version, str) else f"version_{first.version}"
    return Path(os.path.join(first.save_dir or trainer.default_root_dir, str(first.name), version))


def open_csv_keeping_rows(logger: CSVLogger) -> None:
    """Start a CSVLogger's writer in a folder that may hold a metrics.csv already, keeping its rows.

    Lightning's writer warns about a folder that is not empty and deletes its metrics.csv (_check_log_dir_exists);
    a resumed or evaluated run continues its own log instead. The rows are put back, and the writer's list of
    columns (metrics_keys, undocumented) starts from their header, so that its next save rewrites the file with
    every old column kept.
    """
    path = Path(logger.log_dir, "metrics.csv")
    kept = path.read_bytes() if path.is_file() else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Experiment logs directory .* exists and is not empty")
        writer = logger.experiment
    if kept is not None and hasattr(writer, "metrics_keys"):  # rank 0's writer; other ranks get a dummy
        if not path.is_file():
            path.write_bytes(kept)
        with open(path, newline="") as file:
            header = next(csv.reader(file), [])
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))
