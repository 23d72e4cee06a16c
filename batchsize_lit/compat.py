"""Every reliance on a private name or undocumented behaviour of Lightning, jsonargparse or tensorboard, one small
function each; tests/test_compat.py checks each against the installed versions."""

import csv
import os
import threading
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
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


def checkpoint_skips_saving(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether Lightning's ModelCheckpoint would save nothing now: fast_dev_run, not fitting, the sanity check, or a
    checkpoint already saved at this global step. Reason: the one test Lightning's own saving hooks make."""
    return callback._should_skip_saving_checkpoint(trainer)


def save_last_checkpoint(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Save the last checkpoint as Lightning does after a top-k save. Reason: Lightning's code names it (with
    CHECKPOINT_NAME_LAST's template), versions it, links it and removes the previous one; a copy would drift. The
    step Lightning records as saved is left as it was, so that its own decisions (save_on_exception skips a step
    already saved) are those it makes without this extra save."""
    saved_step = callback._last_global_step_saved
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    callback._last_global_step_saved = saved_step


CALLBACKS_FACTORY = "lightning.pytorch.callbacks_factory"


def skip_absent_callback_factories() -> None:
    """Every Trainer() asks importlib.metadata for the entry points of CALLBACKS_FACTORY, which reads the metadata
    of every installed distribution: about 10 ms each time in an environment of a few hundred packages, and a study
    builds a trainer per cell. Where the environment registers no factory, looked up once, the lookup is skipped
    for the rest of the process. Reason: Lightning's callback connector calls the private _load_external_callbacks
    of lightning.fabric.utilities.registry, imported under that name."""
    from lightning.pytorch.trainer.connectors import callback_connector

    load = callback_connector._load_external_callbacks
    if getattr(load, "skips", None) == CALLBACKS_FACTORY or entry_points(group=CALLBACKS_FACTORY):
        return

    def load_others(group: str) -> list:
        return [] if group == CALLBACKS_FACTORY else load(group)

    load_others.skips = CALLBACKS_FACTORY  # type: ignore[attr-defined]
    callback_connector._load_external_callbacks = load_others


def keep_hpc_checkpoints_in(trainer_config: Namespace, folder: Path) -> None:
    """Point Lightning's SLURM requeue checkpoints at a run's own folder. Reason: its SIGUSR1 handler saves
    hpc_ckpt_N.ckpt in Trainer.default_root_dir (the working folder by default), and any later fit on SLURM with no
    ckpt_path restores the highest N found there (_CheckpointConnector.hpc_save_path, _hpc_resume_path): in the
    working folder, every run and study cell started there would restore another run's weights."""
    trainer_config.default_root_dir = str(folder)


def event_writer_file(thread: threading.Thread) -> str | None:
    """The event file a TensorBoard writer thread writes, or None for any other thread. Reason: tensorboard writes
    each event file on a thread of its own (_AsyncWriterThread), which holds the file (RecordWriter._writer, a
    GFile) in private attributes only."""
    writer = getattr(getattr(thread, "_record_writer", None), "_writer", None)
    path = getattr(writer, "filename", None)
    return os.fsdecode(path) if path is not None and hasattr(thread, "exception") else None


def set_event_writer_error(thread: threading.Thread, error: BaseException) -> None:
    """Replace the error a dead TensorBoard writer thread left behind. Reason: tensorboard keeps it in the thread's
    ``exception`` attribute and raises that object in the main thread at the next write, flush or close."""
    thread.exception = error  # type: ignore[attr-defined]


# --- cohorts ---


def indexes_tensors(loader: object) -> bool:
    """Whether iterating this DataLoader yields ``[t[indices] for t in dataset.tensors]`` for each list of indices
    its ``batch_sampler`` yields, and draws from the global generator only at ``iter(loader)`` (the base seed of
    its workers) and through its sampler. Reason: a cohort cuts its members' batches by indexing, drawing the same
    random numbers, instead of fetching and collating each example; that the single-process iterator draws nothing
    more per batch, and that default_collate returns a list for a TensorDataset's tuples, are torch's undocumented
    behaviour."""
    # imported here, so that sections appended by others leave the module's imports alone
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        RandomSampler,
        SequentialSampler,
        TensorDataset,
        default_collate,
    )

    return (
        type(loader) is DataLoader
        and loader.num_workers == 0
        and not loader.pin_memory
        and type(loader.dataset) is TensorDataset
        and loader.collate_fn is default_collate
        and type(loader.batch_sampler) is BatchSampler
        and type(loader.sampler) in (RandomSampler, SequentialSampler)
    )


def sampler_order(sampler: object) -> object:
    """One pass of a SequentialSampler, or of a RandomSampler without replacement over all its data and with no
    generator of its own, as a tensor, drawing from the global generator what iterating it draws; None for any
    other sampler. Reason: RandomSampler.__iter__ draws a seed from the global generator, then yields
    torch.randperm(n) under a generator seeded with it, index by index in Python (a second per example, for a
    cohort of plain DataLoaders that runs a thousand epochs)."""
    import torch
    from torch.utils.data import RandomSampler, SequentialSampler

    if type(sampler) is SequentialSampler:
        return torch.arange(len(sampler))
    if type(sampler) is not RandomSampler or sampler.replacement or sampler.generator is not None:
        return None
    n = len(sampler.data_source)
    if sampler.num_samples != n:
        return None
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
