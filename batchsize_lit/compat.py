"""Every reliance on a private name or undocumented behaviour of Lightning, jsonargparse or tensorboard, one small
function each; tests/test_compat.py checks each against the installed versions."""

import csv
import os
import re
import threading
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor


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


# --- cli ---

# jsonargparse's error for a bad value of a linked key names the target of the link: history.monitor, history.mode.
LINKED_HISTORY_KEY = re.compile(r'Parser key "history\.(monitor|mode)"')
# The words of Lightning's MisconfigurationException texts on the accelerator and devices flags, which name neither
# flag: a heuristic over Lightning's wording.
DEVICE_ERROR = re.compile(r"accelerator|devices|gpu|cuda|mps|tpu|backend", re.IGNORECASE)


def logs_hyperparameters(module: Any) -> bool:
    """Whether Lightning logs a LightningModule's or LightningDataModule's hyperparameters with the trainer's loggers.
    Reason: save_hyperparameters(logger=False) records its choice in the private attribute _log_hyperparams only."""
    return bool(getattr(module, "_log_hyperparams", True))


def subcommand_parsers(parsers: Sequence[Any], subcommands: Sequence[str]) -> dict[str, Any]:
    """Each subcommand's parser, from every parser a LightningCLI made through init_parser, in the order made.
    Reason: LightningCLI makes the main parser first, then one per subcommand in subcommands() order, and keeps them
    by name only in a private attribute (_subcommand_parsers)."""
    return dict(zip(subcommands, parsers[1:], strict=True))


# --- jsonargparse messages ---
# jsonargparse (and argparse, which it extends) report bad input in words only: errors.py and the study read the
# key, the value and the reason from those words, as the installed release writes them (whitespace collapsed to
# single spaces). No release documents them; tests/test_compat.py provokes each one.

# A value that is not a readable path, where a path is one of the types accepted: the prefix to drop.
PATH_UNREADABLE = re.compile(r'^(Parser key "\w+": )- Expected a path but .+? either not accessible or invalid - ')
# A failed Union of a class and None: the key, and what the class itself said.
CLASS_UNION_FAILED = re.compile(
    r'(?:Parser key "(\w+)": )?Does not validate against any of the Union subtypes.*?Errors: - (.*?)'
    r" - Expected a <class 'NoneType'>"
)
# The types a failed Union listed, each as Python writes a class: <class 'int'>.
UNION_SUBTYPES = re.compile(r"Subtypes: \[([^\]]*)\]")
# A list of UNION_SUBTYPES that holds plain types only.
PLAIN_SUBTYPES = re.compile(r"(<class '(builtins\.)?(str|int|float|bool|NoneType|pathlib\.Path)'>(, )?)+")
# A failed Union of plain types: the key, the types and the value given.
PLAIN_UNION_FAILED = re.compile(
    r'Parser key "([\w.]+)": Does not validate against any of the Union subtypes Subtypes: \[(.*?)\] Errors: .*'
    r"Given value: (.*)$"
)
# One type of UNION_SUBTYPES: its name.
SUBTYPE_NAME = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
# A class_path that is not a string (null, a number): jsonargparse's `in` test on it fails.
CLASS_PATH_NOT_A_STRING = re.compile(r"argument of type '(\w+)' is not iterable")
# A class named by class_path that cannot be imported or rejects its init_args: the class_path and the reason.
CLASS_PATH_PROBLEM = re.compile(r"Problem with given class_path '([\w.]+)': (.*)")
# The key a message starts by naming.
PARSER_KEY = re.compile(r'^Parser key "([^"]+)"')
# A class_path (given as a string) that imports a class of another kind: the base class expected.
NOT_A_SUBCLASS = re.compile(r"Import path does not correspond to a subclass of (\w+)")
# The value given, at the end of a failed Union's message.
GIVEN_VALUE = re.compile(r"Given value: (.+)$")
# A value that names no class at all: a word, a number; the base class when jsonargparse names it.
NOT_A_CLASS_PATH = re.compile(r"Expected a dot import path string|Not a valid subclass of (\w+)")
# A --config that is not keys and values: YAML that does not load, or a list or a number.
CONFIG_NOT_READ = re.compile("Problems parsing config|Unexpected config")
# A key no parser accepts: in a config or a class's init_args (1), under a subcommand or a group (2), or on the
# command line (3).
UNKNOWN_KEY = re.compile(
    r"Option '([\w.]+)' is not accepted|does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)"
)
_GIVEN_CLASS = re.compile(r"Given value: Namespace\(class_path='([\w.]+)', init_args=Namespace\((.*)\)\)")


def unknown_key(message: str) -> str | None:
    """The key an unknown-key error names: ``--name`` for one given on the command line, ``name`` (dotted where
    nested) for one in a config; None for any other error."""
    found = UNKNOWN_KEY.search(message)
    if found is None:
        return None
    return f"--{found.group(3)}" if found.group(3) else found.group(1) or found.group(2)


def null_init_args(message: str) -> tuple[str, list[str]] | None:
    """For a class that failed in its own ``__init__``, the class_path and the init_args given as None, as the
    message's ``Given value: Namespace(...)`` shows them; None where the message shows no such value."""
    given = _GIVEN_CLASS.search(message)
    if given is None:
        return None
    return given.group(1), re.findall(r"(\w+)=None\b", given.group(2))


# --- signals ---


def exit_after_ctrl_c(done: SystemExit) -> bool:
    """Whether this SystemExit is Lightning's own after it stopped a run on Ctrl-C. Reason: undocumented; Lightning's
    _call_and_handle_interrupt calls sys.exit(1) in its `except KeyboardInterrupt` block, so the KeyboardInterrupt
    is the exit's __context__ (a sys.exit(1) in a model's own code has none)."""
    return done.code == 1 and isinstance(done.__context__, KeyboardInterrupt)


def rerun_validation_on_resume(checkpoint: dict) -> None:
    """Have a fit resumed from this checkpoint, saved during a validation, run that validation again from its first
    batch. Reason: undocumented; Lightning's training epoch loop, restarting, goes back into a validation only where
    the validation loop's progress shows a batch started and not processed (its RESTARTED_MID_EVALUATION), and
    otherwise skips the rest of it, so that early stopping and the best checkpoint never see that epoch's val loss.
    Counting one batch started and none processed makes it run the validation whole."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
    if progress is not None:
        for counts in (progress["total"], progress["current"]):
            counts.update(ready=1, started=1, processed=0, completed=0)


# --- callbacks ---


def skip_hook(callback: pl.Callback, hook: str) -> None:
    """Have the Trainer skip one hook of a callback, without a call or a profiler context. Reason: undocumented;
    Lightning's _call_callback_hooks calls a callback's hook only where the attribute is callable, so a hook set to
    None on the instance is passed over."""
    setattr(callback, hook, None)


def early_stopping_checks_at_epoch_end(callback: EarlyStopping) -> bool | None:
    """Whether Lightning's EarlyStopping checks at the end of the training epoch (else after validation): its hooks
    check only at the one it decided. Reason: the argument check_on_train_epoch_end, or where it is None, Lightning's
    rule applied at setup (val_check_interval 1.0 and check_val_every_n_epoch 1), kept in the private
    _check_on_train_epoch_end; None before setup."""
    return callback._check_on_train_epoch_end


def improved_best_score(callback: EarlyStopping, before: Tensor) -> bool:
    """Whether Lightning's EarlyStopping found an improvement in the check just made, given its best_score from
    before the check. Reason: undocumented; Lightning assigns best_score the new value only on an improvement, and
    never changes the tensor in place."""
    return callback.best_score is not before


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
