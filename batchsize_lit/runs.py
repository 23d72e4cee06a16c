"""Run folders for any logger: claiming a version, best/last checkpoint resolution, checkpoint checks, config drift."""

import os
import pickle
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

from batchsize_lit.compat import checkpoint_run_folder, open_csv_keeping_rows
from batchsize_lit.errors import BadInput, import_class

LOG_ROOT = "lightning_logs"
# The init arguments that place a logger's runs in <save_dir>/<name>/<version>, as TensorBoard's and CSV's do.
FOLDER_ARGS = ("save_dir", "name", "version")


def logger_specs(logger: Any) -> list[Namespace]:
    """The config's loggers as a list of class_path specs: none for ``false``, one, or several."""
    specs = logger if isinstance(logger, list) else [logger]
    return [spec for spec in specs if isinstance(spec, Namespace) and spec.get("class_path")]


def is_folder_logger(spec: Namespace) -> bool:
    """Whether the logger writes each run to <save_dir>/<name>/<version> (TensorBoard, CSV and their kind): then this
    template names, numbers and finds its runs. Others (MLflow, W&B) give each run an id of their own."""
    init = spec.get("init_args")
    if init is None or not all(key in init for key in FOLDER_ARGS):
        return False
    try:
        cls = import_class(spec.class_path)
    except (ImportError, AttributeError):
        return False
    # Its own log_dir: Lightning's base Logger has one too (None), which W&B, with the same arguments, keeps.
    return isinstance(cls, type) and getattr(cls, "log_dir", None) is not getattr(Logger, "log_dir", None)


def folder_loggers(config: Namespace) -> list[Namespace]:
    return [spec for spec in logger_specs(config.trainer.logger) if is_folder_logger(spec)]


def name_runs(config: Namespace, stem: str) -> None:
    """Folder loggers with no name are named after the config, so that each config's runs are numbered apart."""
    for spec in folder_loggers(config):
        if spec.init_args.get("name") is None:
            spec.init_args.name = stem


def runs_parent(config: Namespace, stem: str) -> Path | None:
    """The folder that holds this config's numbered runs: the first logger's <save_dir>/<name>, or, with no logger,
    <default_root_dir or lightning_logs>/<config name>. None when the first logger numbers no folders (MLflow)."""
    specs = logger_specs(config.trainer.logger)
    if not specs:
        return Path(config.trainer.get("default_root_dir") or LOG_ROOT, stem)
    if not is_folder_logger(specs[0]):
        return None
    init = specs[0].init_args
    return Path(init.save_dir, init.name or "")


def place_run(config: Namespace, run: Path, parent: Path | None) -> None:
    """Point the loggers that share the first one's folder (or, with no logger, the trainer's root) at ``run``."""
    specs = logger_specs(config.trainer.logger)
    if not specs:
        config.trainer.default_root_dir = str(run)
        return
    for spec in folder_loggers(config):
        if Path(spec.init_args.save_dir, spec.init_args.name or "") == parent or spec is specs[0]:
            spec.init_args.save_dir, spec.init_args.name = str(run.parent.parent), run.parent.name
            spec.init_args.version = run.name


def version_given(config: Namespace) -> bool:
    """Whether the run's folder is fixed by the config: a version given to the first logger (a study cell's is '')."""
    specs = logger_specs(config.trainer.logger)
    if not specs:
        return False
    return not is_folder_logger(specs[0]) or specs[0].init_args.get("version") is not None


def claim_run(parent: Path) -> Path:
    """A new version_N folder, made with exclusive creation so that runs started at once never share one."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        versions = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
        version = max(versions, default=-1) + 1
        while True:
            try:
                (parent / f"version_{version}").mkdir()
                return parent / f"version_{version}"
            except FileExistsError:
                version += 1
    except OSError as error:
        raise BadInput(f"cannot write the log folder {parent}: {error.strerror or error}") from None


def newest_run_checkpoint(parent: Path | None, which: str, weights_only: bool, logger: str = "") -> str:
    """The last.ckpt, or the best checkpoint it records, of the newest version_N under ``parent`` that has one.

    Args:
        parent: The folder of this config's runs (runs_parent); None when the logger numbers no folders.
        which: ``last`` or ``best``.
        weights_only: Whether the checkpoints are to be read as tensors and plain data only.
        logger: The first logger's class name, for the error when ``parent`` is None.
    """
    if parent is None:
        raise BadInput(f"ckpt_path={which!r}: {logger} gives its runs ids, not numbered folders; give the path")
    runs = sorted(
        (p for p in parent.glob("version_*/checkpoints/last.ckpt") if p.parts[-3][8:].isdigit()),
        key=lambda path: int(path.parts[-3][8:]),
    )
    if not runs:
        # the best checkpoint is the one the newest last.ckpt records: with save_last false there is none
        raise BadInput(f"ckpt_path={which!r}: no last.ckpt under {parent}")
    last = str(runs[-1])
    check_checkpoint(last, f"ckpt_path={which!r}", weights_only)
    if which == "last":
        return last
    states = torch.load(last, map_location="cpu", weights_only=weights_only, mmap=True).get("callbacks", {})
    best = next((s["best_model_path"] for k, s in states.items() if k.startswith("ModelCheckpoint")), "")
    best_here = runs[-1].parent / Path(best).name  # the same run folder, wherever it was written from
    if not best or not best_here.is_file():
        raise BadInput(f"ckpt_path='best': {last} records no best checkpoint that is still there")
    check_checkpoint(str(best_here), "ckpt_path='best'", weights_only)
    return str(best_here)


def run_of_checkpoint(ckpt_path: str) -> Path | None:
    """The run folder a checkpoint sits in, <run>/checkpoints/<file>, relative where it can be; else None."""
    path = Path(_shown(Path(ckpt_path)))
    return path.parent.parent if path.parent.name == "checkpoints" and len(path.parents) >= 3 else None


def run_folder(trainer: Trainer) -> Path:
    """Where this run's checkpoints and config.yaml go: the first logger's run folder, or the trainer's root."""
    folder = checkpoint_run_folder(trainer)
    relative = os.path.relpath(folder)
    return Path(relative) if not relative.startswith("..") else folder


def open_loggers(trainer: Trainer) -> None:
    """Start the loggers' writers before anything else is written to the run folder; a CSV log continued in its run
    (a resume, an evaluation) keeps the rows it has, where Lightning's CSVLogger would delete them."""
    for logger in trainer.loggers if trainer.is_global_zero else []:
        if isinstance(logger, CSVLogger):
            open_csv_keeping_rows(logger)


def where_to_look(trainer: Trainer, folder: Path | None) -> list[str]:
    """The summary's last lines: the run folder, and how to look at what each logger wrote."""
    if not trainer.loggers:
        return [f"run folder: {folder} (no logger: config.yaml and checkpoints only)"]
    lines = [f"run folder: {folder}"]
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            line = f"tensorboard --logdir {_shown(Path(logger.log_dir).parent)}"
        elif isinstance(logger, CSVLogger):
            line = f"metrics: {_shown(Path(logger.log_dir, 'metrics.csv'))}"
        elif isinstance(logger, MLFlowLogger):
            line = f"mlflow ui --backend-store-uri {_shown(Path(logger.save_dir))}" if logger.save_dir else "mlflow ui"
        else:
            where = getattr(logger, "log_dir", None) or logger.save_dir
            line = f"{type(logger).__name__}: {_shown(Path(where)) if where else 'see its own interface'}"
        if line not in lines:
            lines.append(line)
    return lines


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path if relative.startswith("..") else relative)


def config_drift(run_config: Path, current: dict[str, Any]) -> str | None:
    """The data and model keys on which a run's config.yaml and this command's config differ, as one line; None
    when they agree or the run has no readable config.yaml."""
    try:
        saved = yaml.safe_load(run_config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict):
        return None
    changes = []
    for section in ("data", "model"):
        before, now = dict(_flat(saved.get(section), section)), dict(_flat(current.get(section), section))
        if before.get(f"{section}.class_path") != now.get(f"{section}.class_path"):
            before = {f"{section}.class_path": before.get(f"{section}.class_path")}  # other classes: other keys
        changes += [f"{key}={before[key]!r} (here {now.get(key)!r})" for key in before if before[key] != now.get(key)]
    if not changes:
        return None
    return f"the checkpoint's run was trained with {', '.join(changes)}: see {run_config}"


def _flat(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a nested config section, with ``init_args`` left out of the keys: data.n_samples."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from _flat(inner, prefix if name == "init_args" else f"{prefix}.{name}")
    else:
        yield prefix, value


def warn_config_drift(run: Path, dump: Callable[[], str]) -> None:
    """One line on stderr when a checkpoint's run was trained on other data or another model than this command's.

    Args:
        run: The run folder the checkpoint came from; its config.yaml is the config it was trained with.
        dump: This command's config as YAML, written as config.yaml would be.
    """
    if not (run / "config.yaml").is_file():
        return
    try:
        current = yaml.safe_load(dump())
    except Exception:  # a value that cannot be written as YAML: nothing to compare
        return
    line = config_drift(run / "config.yaml", current) if isinstance(current, dict) else None
    if line:
        print(f"warning: {line}", file=sys.stderr)


def check_checkpoint(path: str, key: str | None = None, weights_only: bool = True) -> None:
    """A clear error for a checkpoint that is missing or cannot be read, naming an older one that can."""
    key = key or f"ckpt_path={path!r}"
    if not Path(path).is_file():
        raise BadInput(f"{key} does not exist")
    with open(path, "rb") as file:
        head = file.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise BadInput(f"{key}: {path} is {'empty' if not head else 'not a checkpoint: torch.save did not write it'}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError:
        raise BadInput(f"{key}: {path} holds more than tensors; if you trust it, add --weights_only false") from None
    except Exception as error:  # a truncated or foreign file; torch raises several kinds
        reason = textwrap.shorten(" ".join(str(error).split()).split(". ")[0], 160, placeholder=" ...")
        others = sorted(Path(path).parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        usable = next((str(p) for p in others if str(p) != str(path) and _readable(p)), None)
        hint = f"; {usable} can be used instead" if usable else ""
        raise BadInput(f"{key}: {path} cannot be read, it may be truncated ({reason}){hint}") from None
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        raise BadInput(f"{key}: {path} is a torch file but not a Lightning checkpoint (Trainer.save_checkpoint)")


def _readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:
        return False


def fixed_run_folder(config: Namespace) -> Path | None:
    """The run folder a config fixes: the first logger's <save_dir>/<name>/<version> once its version is set (a fit's
    after place_run, a study cell's); None for a logger that numbers no folders, or none."""
    specs = logger_specs(config.trainer.logger)
    if not specs or not is_folder_logger(specs[0]) or specs[0].init_args.get("version") is None:
        return None
    init = specs[0].init_args
    return Path(init.save_dir, init.name or "", str(init.version))
