"""Running a study's cells: each a fit parsed by the same LightningCLI, serially or in worker processes."""

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden

from batchsize_lit.callbacks import RunHistory
from batchsize_lit.cli import BatchSizeCLI
from batchsize_lit.disk import whole_file
from batchsize_lit.errors import USER_ERRORS, BadInput, DiskFull, Diverged, one_line
from batchsize_lit.problem import reference_facts, run_report
from batchsize_lit.science import GradientNoiseScale, StepsToTarget
from batchsize_lit.signals import Terminated, is_sigterm
from batchsize_lit.study.cell_cli import FOLDER_FLAG, CellCLI, Defaults
from batchsize_lit.trainer_info import batch_size, find_callback, global_batch_size, learning_rate, scalar_metrics
from batchsize_lit.weight_averaging import added_epochs

UnitRunner = Callable[[dict[str, list[str]], Path, Defaults], list[dict[str, Any]]]


def quiet_lightning() -> None:
    """One progress line per cell instead of Lightning's own notices; in worker processes too."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_cells(cell_args: dict[str, list[str]], defaults: Defaults) -> None:
    """Parse and instantiate cells' configs before anything runs, so a bad key or value fails at once: the first
    cell, and each cell with a grid value no cell checked before holds, so that every value is checked once (a
    10 × 5 × 10 grid checks 23 cells, not 500)."""
    seen: set[str] = set()
    for cell, args in cell_args.items():
        given = [arg for arg in args if not arg.startswith(f"--{FOLDER_FLAG}=")]
        if seen and seen.issuperset(given):
            continue
        seen.update(given)
        try:
            cli = CellCLI(args, defaults)
        except USER_ERRORS as error:
            raise ValueError(f"cell {cell}: {one_line(error)}") from None
        del cli


def run_one(unit: dict[str, list[str]], folder: Path, defaults: Defaults) -> list[dict[str, Any]]:
    """Run a unit of one cell; returns its row, in a list as a cohort's runner returns its cells' rows."""
    return [run_cell(*next(iter(unit.items())), folder, defaults)["row"]]


def run_cell(cell: str, args: list[str], folder: Path, defaults: Defaults) -> dict[str, Any]:
    """Fit one cell, test it if the model and data can, write its result.json and return it, {row, history}; a cell
    that diverges or raises is recorded, not raised, with the traceback of a failure in the cell's traceback.txt."""
    quiet_lightning()
    started = time.perf_counter()
    cli = CellCLI(args, defaults)  # parsed; model, data and trainer built
    status, metrics, stop = "ok", {}, None
    try:
        cli.before_fit()
        cli.trainer.fit(cli.model, cli.datamodule)
        metrics = scalar_metrics(cli.trainer.callback_metrics)
        if is_overridden("test_step", cli.model) and _has_test_data(cli):  # textbook data builds it in setup
            loggers, cli.trainer.loggers = cli.trainer.loggers, []  # one event file per cell: test_loss goes to the csv
            for results in cli.trainer.test(cli.model, cli.datamodule, verbose=False):
                metrics.update(scalar_metrics(results))
            cli.trainer.loggers = loggers
    except Diverged:
        status = "diverged"
    except SystemExit as exit_info:
        if is_sigterm(exit_info):  # stopped at a step by SIGTERM: recorded below, then the study stops
            status = "interrupted"
        elif cli.trainer.interrupted:  # Ctrl-C: Lightning stopped the fit gracefully and exits; so does the study
            raise KeyboardInterrupt from None
        else:
            raise
    except DiskFull as error:  # every later cell would fail too: this one is recorded as failed, then the study stops
        status, stop = "failed", error
    except (BadInput, MisconfigurationException) as error:  # the config, not the cell: every cell would fail so
        raise ValueError(f"cell {cell}: {one_line(error)}") from None
    except Exception as error:  # one broken cell must not end a long study; it is reported as failed
        status = "failed"
        record_failure(folder / cell, traceback.format_exc(), one_line(error))
    row = result_row(cli, cell, status, time.perf_counter() - started, metrics)
    history = find_callback(cli.trainer, RunHistory)
    result = {"row": row, "history": history.history if history else [], "args": args}
    write_result(folder / cell, result)
    if stop is not None:
        raise stop
    if status == "interrupted":
        raise Terminated(f"cell {cell}")
    return result


def _has_test_data(cli: BatchSizeCLI) -> bool:
    return any(is_overridden("test_dataloader", part) for part in (cli.datamodule, cli.model) if part is not None)


def record_failure(cell_folder: Path, text: str, reason: str | None, name: str | None = None) -> None:
    """A failed cell's traceback.txt, and, with a reason, one line on stderr naming the cell (or its cohort), the
    reason and the file; the study goes on with the next cell."""
    cell_folder.mkdir(parents=True, exist_ok=True)
    (cell_folder / "traceback.txt").write_text(text)
    if reason is not None:
        where = f"traceback: {cell_folder / 'traceback.txt'}"
        print(f"{name or f'cell {cell_folder.name}'} failed: {reason} ({where})", file=sys.stderr)


def write_result(cell_folder: Path, result: dict[str, Any]) -> None:
    """result.json, written whole or not at all (a temporary file renamed into place)."""
    cell_folder.mkdir(parents=True, exist_ok=True)
    with whole_file(cell_folder / "result.json") as file:
        file.write(json.dumps(result, indent=1))


def finished(cell_folder: Path, args: list[str]) -> bool:
    """Whether a cell has a result to keep: one that did not fail, run with these arguments."""
    path = cell_folder / "result.json"
    if not path.is_file():
        return False
    result = json.loads(path.read_text())
    return result["row"]["status"] not in ("failed", "interrupted") and result.get("args", args) == args


def read_result(cell_folder: Path) -> dict[str, Any] | None:
    """A finished cell's row, with its history; None if the cell has not finished."""
    path = cell_folder / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return {**result["row"], "history": result["history"]}


def result_row(cli: BatchSizeCLI, cell: str, status: str, seconds: float, metrics: dict[str, float]) -> dict[str, Any]:
    """One results.csv row from a cell's CLI object: the generic columns, then what the model logged last, the
    problem's reference facts and report columns, and the science callbacks' findings."""
    trainer, model = cli.trainer, cli.model
    history = find_callback(trainer, RunHistory)
    target, noise = find_callback(trainer, StepsToTarget), find_callback(trainer, GradientNoiseScale)
    best = history.best() if history else None
    row: dict[str, Any] = {
        "cell": cell,
        "batch_size": batch_size(trainer, cli.datamodule),
        "global_batch_size": global_batch_size(trainer, cli.datamodule),
        "max_epochs": trainer.max_epochs,
        # The model's own lr setting where it has one and configures the optimizer; else the optimizer's rate.
        "lr": model.hparams.get("lr") if not cli.config.get("optimizer") else None,
        "lr_effective": learning_rate(trainer, initial=True),
        "seed": cli.config.get("seed_everything"),
        "epochs_run": len(history.history) - added_epochs(trainer, model) if history else None,
        "steps": trainer.global_step,
        "samples": history.samples if history else None,
        "train_loss": history.last("train_loss") if history else None,
        "monitor": history.monitor if history else None,
        "monitor_best": best[0] if best else None,
        "best_epoch": best[1] if best else None,
    }
    if row["lr"] is None:  # a model with another name for it (learning_rate), or an --optimizer of the config's
        row["lr"] = row["lr_effective"]
    row["val_loss"] = row["monitor_best"] if row["monitor"] == "val_loss" else metrics.get("val_loss")
    row["test_loss"] = metrics.get("test_loss")
    facts = reference_facts(cli.datamodule, model)
    row.update({key: value for key, value in metrics.items() if key not in row})
    row.update(facts)
    if status == "ok":
        row.update(run_report(facts, model, cli.datamodule).columns)
    if target is not None:
        row.update(target.columns())
    if noise is not None:
        row.update(gns_method=noise.method, b_simple=noise.last.get("b_simple"), b_noise=noise.last.get("b_noise"))
    row.update(seconds=round(seconds, 3), status=status)
    return {key: float(value) if hasattr(value, "item") else value for key, value in row.items()}
