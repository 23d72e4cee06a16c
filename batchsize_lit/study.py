"""`study`: a grid of fit runs, each parsed by the same LightningCLI, then a results table and plots."""

import csv
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from batchsize_lit.callbacks import Diverged, find_callback
from batchsize_lit.cli import BatchSizeCLI, format_error
from batchsize_lit.model import global_batch_size
from batchsize_lit.science import GradientNoiseScale, StepsToTarget, fit_critical_batch

SHORT_NAMES = {"data.batch_size": "bs", "trainer.max_epochs": "ep", "model.lr": "lr", "seed_everything": "seed"}
COLUMNS = [
    "cell",
    "batch_size",
    "global_batch_size",
    "max_epochs",
    "lr",
    "lr_effective",
    "seed",
    "epochs_run",
    "steps",
    "samples",
    "train_loss",
    "val_loss",
    "best_epoch",
    "test_loss",
    "weight",
    "bias",
    "noise_floor",
    "steps_to_target",
    "samples_to_target",
    "b_simple",
    "b_noise",
    "seconds",
    "status",
]
# Every cell runs quietly; the study prints one line per cell instead.
CELL_DEFAULTS = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_study(
    grid: dict[str, list[Any]],
    base: dict[str, Any] | None = None,
    name: str | None = None,
    root: str = "lightning_logs",
    trial_index: int | None = None,
    report_only: bool = False,
    redo: bool = False,
    jobs: int | None = None,
) -> int:
    """Run every combination of the grid as a fit, then write results.csv and plots.

    Args:
        grid: Config keys, as on the fit command line (data.batch_size, trainer.max_epochs, model.lr,
            seed_everything, ...), each with the list of values to try.
        base: The fit config every cell starts from: the same keys as a fit config file.
        name: Study folder under root; defaults to the study config's file name.
        root: Where the study folder goes.
        trial_index: Run only this cell (0-based, in grid order) and skip the report: one task of a job array.
        report_only: Run nothing; rebuild results.csv and the plots from the cell folders already there.
        redo: Rerun cells that already finished, instead of skipping them.
        jobs: Worker processes running cells side by side; default one per GPU on a multi-GPU machine,
            else one per two CPU cores. Each cell gives the same result whatever the number of jobs.

    Returns:
        The exit status: 0, or 1 if a cell failed other than by diverging.
    """
    folder = Path(root, name or "study")
    for logger_name in ("lightning.pytorch", "lightning.fabric"):  # one progress line per cell instead
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    cells = expand(grid)
    if trial_index is not None and not 0 <= trial_index < len(cells):
        raise ValueError(f"trial_index={trial_index} is outside the grid's {len(cells)} cells (0 to {len(cells) - 1})")
    cell_args = {cell_name(cell, grid): fit_args(base, cell, folder, cell_name(cell, grid)) for cell in cells}
    if not report_only:
        validate(cell_args)
        names = list(cell_args)
        selected = [names[trial_index]] if trial_index is not None else names
        todo = selected if redo else [cell for cell in selected if not (folder / cell / "result.json").is_file()]
        skipped = len(selected) - len(todo)
        if skipped:
            print(f"{skipped} cell(s) already done in {folder} (redo=true reruns them)")
        run_cells({cell: cell_args[cell] for cell in todo}, folder, jobs)
        if trial_index is not None:
            return 0
    rows = [read_result(folder / cell) for cell in cell_args]
    missing = [cell for cell, row in zip(cell_args, rows, strict=True) if row is None]
    rows = [row for row in rows if row is not None]
    if missing:
        print(f"{len(missing)} cell(s) have no result yet: {', '.join(missing)}")
    if not rows:
        return 1
    report(rows, folder)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid.{key}={values!r} must be a non-empty list of values")
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def cell_name(cell: dict[str, Any], grid: dict[str, list[Any]]) -> str:
    """The cell's folder name, from the keys that vary: bs16_ep5."""
    parts = [
        f"{SHORT_NAMES.get(key, key.rsplit('.', 1)[-1])}{value}" for key, value in cell.items() if len(grid[key]) > 1
    ]
    return "_".join(parts) or "run"


def fit_args(base: dict[str, Any] | None, cell: dict[str, Any], folder: Path, name: str) -> list[str]:
    """The fit command line of one cell: study defaults, the base config, the cell's values, its log folder."""
    args = list(CELL_DEFAULTS)
    if base:
        args += ["--config", yaml.safe_dump(base)]
    args += [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in cell.items()]
    logger = {"save_dir": folder, "name": name, "version": ""}  # lightning_logs/<study>/<cell>/, no version_N
    return args + [f"--trainer.logger.init_args.{key}={value}" for key, value in logger.items()]


def validate(cell_args: dict[str, list[str]]) -> None:
    """Parse and instantiate every cell's config before anything runs, so a bad key or value fails at once."""
    parser = None
    for cell, args in cell_args.items():
        try:
            if parser is None:  # the first cell builds the parser, and so is checked in full
                parser = CellCLI(args).parser
            parser.instantiate_classes(parser.parse_args(args))
        except (ArgumentError, ValueError) as error:
            raise ValueError(f"cell {cell}: {format_error(error)}") from None


def run_cells(cell_args: dict[str, list[str]], folder: Path, jobs: int | None) -> None:
    """Run the cells, serially or in worker processes, printing a progress line per cell."""
    if not cell_args:
        return
    jobs = min(jobs or default_jobs(), len(cell_args))
    started, done = time.perf_counter(), 0

    def progress(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(cell_args) - done)
        print(f"[{done}/{len(cell_args)}] {progress_line(row)}  ETA {eta:.0f} s", flush=True)

    for cell in cell_args:  # an unfinished folder from an interrupted run, or one to redo
        shutil.rmtree(folder / cell, ignore_errors=True)
    if jobs == 1:
        for cell, args in cell_args.items():
            progress(run_cell(cell, args, folder))
        return
    gpus = _gpu_count()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads or CUDA state
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_init_worker, initargs=(gpus,)) as pool:
        for row in pool.map(run_cell, cell_args, cell_args.values(), itertools.repeat(folder)):
            progress(row)


def default_jobs() -> int:
    """One worker per GPU where there are several, else one per two CPU cores (a tiny model runs best on one)."""
    gpus = _gpu_count()
    return gpus if gpus > 1 else max(1, (os.cpu_count() or 1) // 2)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _init_worker(gpus: int) -> None:
    import torch

    torch.set_num_threads(1)
    if gpus > 1:  # pin each worker to its own GPU
        worker = multiprocessing.current_process()._identity[0] - 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)


class CellCLI(BatchSizeCLI):
    """BatchSizeCLI for study cells: every cell of a process is parsed by one parser, built once.

    Building a parser creates new classes inside jsonargparse that are never freed, so a parser per cell would
    grow the process by every cell. Without load_from_checkpoint_support no per-CLI hook is registered on the
    shared parser; the cells' checkpoints hold their hyperparameters as save_hyperparameters() recorded them.
    """

    shared_parser: LightningArgumentParser | None = None

    def __init__(self, args: list[str]) -> None:
        with warnings.catch_warnings():
            # LightningCLI warns when args are given while sys.argv holds others: here those are the study's own.
            warnings.filterwarnings("ignore", "LightningCLI's args parameter", UserWarning)
            super().__init__(args=args, run=False, load_from_checkpoint_support=False)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        if CellCLI.shared_parser is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            CellCLI.shared_parser = self.parser
        self.parser = CellCLI.shared_parser


def run_cell(cell: str, args: list[str], folder: Path) -> dict[str, Any]:
    """Fit one cell, test it, and write its result.json; a diverged cell is recorded, not raised."""
    for logger_name in ("lightning.pytorch", "lightning.fabric"):  # also in worker processes
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    started = time.perf_counter()
    cli = CellCLI(args)  # parsed; model, data and trainer built
    status = "ok"
    try:
        cli.before_fit()
        cli.trainer.fit(cli.model, cli.datamodule)
    except Diverged:
        status = "diverged"
    except Exception as error:  # one broken cell must not end a long study; it is reported as failed
        status = "failed"
        print(f"cell {cell} failed: {format_error(error)}", file=sys.stderr)
    test_loss = None
    if status == "ok" and getattr(cli.datamodule, "n_test", 1):
        metrics = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
        test_loss = metrics[0].get("test_loss") if metrics else None
    row = result_row(cli, cell, status, time.perf_counter() - started, test_loss)
    (folder / cell).mkdir(parents=True, exist_ok=True)
    result = {"row": row, "history": cli.curves.history}
    (folder / cell / "result.json").write_text(json.dumps(result, indent=1))
    return row


def result_row(cli: Any, cell: str, status: str, seconds: float, test_loss: float | None) -> dict[str, Any]:
    """One results.csv row from a finished cell's CLI object."""
    trainer, model, curves = cli.trainer, cli.model, cli.curves
    target, noise = find_callback(trainer, StepsToTarget), find_callback(trainer, GradientNoiseScale)
    data_hp = getattr(cli.datamodule, "hparams", {})
    best = curves.best()
    best_epoch = next((r["epoch"] for r in curves.history if best is not None and r.get(curves.monitor) == best), None)
    linear = getattr(model, "linear", None)
    row = {
        "cell": cell,
        "batch_size": data_hp.get("batch_size"),
        "global_batch_size": global_batch_size(trainer),
        "max_epochs": trainer.max_epochs,
        "lr": model.hparams.get("lr"),
        "lr_effective": model.effective_lr() if hasattr(model, "effective_lr") else model.hparams.get("lr"),
        "seed": cli.config.get("seed_everything"),
        "epochs_run": len(curves.history),
        "steps": trainer.global_step,
        "samples": curves.samples,
        "train_loss": curves.last("train_loss"),
        "val_loss": best,
        "best_epoch": best_epoch,
        "test_loss": test_loss,
        "weight": linear.weight.item() if linear is not None and status == "ok" else None,
        "bias": linear.bias.item() if linear is not None and status == "ok" else None,
        "noise_floor": data_hp["noise_std"] ** 2 if "noise_std" in data_hp else None,
        "steps_to_target": getattr(target, "reached_step", None),
        "samples_to_target": getattr(target, "reached_samples", None),
        "b_simple": noise.last.get("b_simple") if noise else None,
        "b_noise": noise.last.get("b_noise") if noise else None,
        "seconds": round(seconds, 3),
        "status": status,
    }
    return {key: float(value) if hasattr(value, "item") else value for key, value in row.items()}


def read_result(cell_folder: Path) -> dict[str, Any] | None:
    path = cell_folder / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return {**result["row"], "history": result["history"]}


def progress_line(row: dict[str, Any]) -> str:
    val = f"val_loss {row['val_loss']:.5f}" if row["val_loss"] is not None else "no val_loss"
    epochs = f"{row['epochs_run']}/{row['max_epochs']}" if row["max_epochs"] != -1 else str(row["epochs_run"])
    return f"{row['cell']:<24} {row['status']:<8} {epochs} epochs  {val}  {row['seconds']:.1f} s"


def report(rows: list[dict[str, Any]], folder: Path) -> None:
    """results.csv, the table, mean ± sd over seeds, and the plots."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = "cell batch_size max_epochs lr seed epochs_run steps train_loss val_loss test_loss weight bias status"
    print(format_table(rows, shown.split()))
    groups = seed_groups(rows)
    if any(len(members) > 1 for members in groups.values()):
        print("\nMean ± sd over seeds:")
        print(format_table(summarize(groups), ["cell", "runs", "epochs_run", "train_loss", "val_loss", "test_loss"]))
    from batchsize_lit.plots import plot_critical_batch, plot_curves

    paths = plot_curves(rows, folder)
    critical = critical_batch(rows)
    if critical:
        print(format_table(critical["points"], ["batch_size", "lr", "runs", "steps_to_target", "samples_to_target"]))
        fit = critical["fit"]
        print(
            f"critical batch size B_crit = {fit['b_crit']:.3g}; S_min = {fit['s_min']:.4g} steps;"
            f" E_min = {fit['e_min']:.4g} samples (S = S_min·(1 + B_crit/B), best lr per batch size)"
        )
        paths.append(plot_critical_batch(critical, folder))
    for path in paths:
        print(f"plot: {path}")
    print(f"results: {folder / 'results.csv'}\ntensorboard --logdir {folder}")


def critical_batch(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Steps to target against batch size, at each batch size's best lr, and the fit of S = S_min·(1 + B_crit/B).

    For each (batch size, lr) the steps are averaged over seeds, counting only settings where every seed reached
    the target; the best lr is the one with the fewest mean steps.
    """
    runs: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("global_batch_size"):
            runs.setdefault((row["global_batch_size"], row["lr_effective"]), []).append(row)
    best: dict[float, dict[str, Any]] = {}
    for (batch, lr), members in runs.items():
        if any(row.get("steps_to_target") is None for row in members):
            continue
        steps = statistics.fmean(row["steps_to_target"] for row in members)
        if batch not in best or steps < best[batch]["steps_to_target"]:
            samples = statistics.fmean(row["samples_to_target"] for row in members)
            best[batch] = {"batch_size": batch, "lr": lr, "runs": len(members), "steps_to_target": steps,
                           "samples_to_target": samples}  # fmt: skip
    points = [best[batch] for batch in sorted(best)]
    if len(points) < 3:
        return None
    fit = fit_critical_batch([p["batch_size"] for p in points], [p["steps_to_target"] for p in points])
    return {"points": points, "fit": fit}


def seed_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by cell with the seed left out of its name."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = "_".join(part for part in row["cell"].split("_") if not part.startswith("seed")) or "run"
        groups.setdefault(key, []).append(row)
    return groups


def summarize(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    summary = []
    for cell, members in groups.items():
        entry: dict[str, Any] = {"cell": cell, "runs": len(members)}
        for key in ["epochs_run", "train_loss", "val_loss", "test_loss"]:
            values = [row[key] for row in members if isinstance(row[key], int | float) and math.isfinite(row[key])]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[key] = f"{statistics.fmean(values):.4g} ± {sd:.2g}"
        summary.append(entry)
    return summary


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.5g}"
        return "" if value is None else str(value)

    table = [columns] + [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in table)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="batchsize-lit study",
        description="Run a grid of fit configs and compare them: results.csv, plots, TensorBoard runs.",
        exit_on_error=False,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="A study config file (YAML).")
    parser.add_function_arguments(run_study, as_positional=False)
    return parser


def main(argv: list[str]) -> None:
    """`batchsize-lit study ...`: parse, run, exit with one clean line on bad input."""
    parser = build_parser()
    try:
        config = parser.parse_args(argv)
        name = config.name or Path(str((config.get("config") or ["study"])[-1])).stem
        status = run_study(
            grid=config.grid,
            base=config.base,
            name=name,
            root=config.root,
            trial_index=config.trial_index,
            report_only=config.report_only,
            redo=config.redo,
            jobs=config.jobs,
        )
    except (ArgumentError, ValueError) as error:
        if os.environ.get("JSONARGPARSE_DEBUG"):
            raise
        sys.exit(f"error: {format_error(error)}")
    sys.exit(status)
