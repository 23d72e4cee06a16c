"""A study's grid: every combination of its values, their folder names and the fit command line of each."""

import itertools
import json
from pathlib import Path
from typing import Any

import yaml

SHORT_NAMES = {"data.batch_size": "bs", "trainer.max_epochs": "ep", "model.lr": "lr", "seed_everything": "seed"}
SEED_KEY = "seed_everything"
# Every cell runs quietly; the study prints one line per cell instead.
CELL_DEFAULTS = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid.{key}={values!r} must be a non-empty list of values")
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def cell_name(cell: dict[str, Any], grid: dict[str, list[Any]], leave_out: tuple[str, ...] = ()) -> str:
    """The cell's folder name, from the keys that vary: bs16_ep5, or lr_scaling-none_bs16 for an unnamed key."""
    parts = []
    for key, value in cell.items():
        if len(grid[key]) > 1 and key not in leave_out:
            parts.append(f"{SHORT_NAMES[key]}{value}" if key in SHORT_NAMES else f"{key.rsplit('.', 1)[-1]}-{value}")
    return "_".join(parts) or "run"


def group_name(cell: dict[str, Any], grid: dict[str, list[Any]]) -> str:
    """The cell's name with its seed left out: the cells that differ only by seed share it."""
    return cell_name(cell, grid, leave_out=(SEED_KEY,))


def fit_args(
    base: dict[str, Any] | None, cell: dict[str, Any], folder: Path, name: str, varying: list[str] = ()
) -> list[str]:
    """The fit command line of one cell: study defaults, the base config, the cell's values, its log folder, and
    the grid keys that vary, which the HParams tab records."""
    args = list(CELL_DEFAULTS) + ([f"--history.hparams={json.dumps(list(varying))}"] if varying else [])
    logger = {"save_dir": str(folder), "name": name, "version": ""}  # lightning_logs/<study>/<cell>/, no version_N
    loggers = (base or {}).get("trainer", {}).get("logger")
    if isinstance(loggers, list):  # each of several loggers writes into the cell's folder; no flag reaches a list
        base = {**base, "trainer": {**base["trainer"], "logger": [_in_folder(entry, logger) for entry in loggers]}}
    if base:
        args += ["--config", yaml.safe_dump(base)]
    args += [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in cell.items()]
    if isinstance(loggers, list):
        return args
    return args + [f"--trainer.logger.init_args.{key}={value}" for key, value in logger.items()]


def _in_folder(entry: Any, folder: dict[str, str]) -> Any:
    """One logger of a list, given by class_path (or by its class name alone), writing into the cell's folder."""
    if isinstance(entry, str):
        entry = {"class_path": entry}
    if not isinstance(entry, dict) or "class_path" not in entry:
        return entry  # not a logger: the parse names it
    return {**entry, "init_args": {**(entry.get("init_args") or {}), **folder}}
