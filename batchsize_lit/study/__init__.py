"""`study`: a grid of fits, each parsed by the same LightningCLI, then a results table and plots."""

import functools
import inspect
import time
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from batchsize_lit import COMMAND
from batchsize_lit.cli import BatchSizeCLI
from batchsize_lit.compat import unknown_key
from batchsize_lit.config_args import config_stem
from batchsize_lit.errors import config_file_problem, config_values, config_with_keys, did_you_mean
from batchsize_lit.study import executors
from batchsize_lit.study.cohort import plan, run_unit
from batchsize_lit.study.grid import SHORT_NAMES, cell_name, expand, fit_args, group_name
from batchsize_lit.study.report import problem_columns, report
from batchsize_lit.study.run import Defaults, check_cells, finished, quiet_lightning, read_result


def run_study(
    grid: dict[str, list[Any]],
    base: dict | None = None,  # not dict[str, Any]: jsonargparse would expand a class_path in it with every default
    name: str | None = None,
    root: str = "lightning_logs",
    trial_index: int | None = None,
    report_only: bool = False,
    redo: bool = False,
    jobs: int | None = None,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    resources: dict[str, float] | None = None,
    cohorts: Literal["auto", "off"] = "auto",
    cohort_size: int | None = None,
    defaults: Defaults = (None, None),
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
        jobs: Worker processes running cells side by side (local executor); default one per GPU on a multi-GPU
            machine, else one per two CPU cores. Each cell gives the same result whatever the number of jobs.
        executor: Where cells run: local, in this process or ``jobs`` worker processes; ray, as Ray tasks.
        ray_address: The Ray cluster to join (``auto``, ``ray://host:port``); default: start or join a local one.
        resources: Ray resources of each cell, e.g. {num_cpus: 2, num_gpus: 1}; default 1 CPU, and 1 GPU when the
            cell's trainer uses a GPU.
        cohorts: auto trains the cells that differ only in seed_everything and model.lr together, as one
            vectorized fit (a cohort), where the model and config allow it, and says why not where they do not;
            off runs every cell as its own fit. A cell's results are the same either way.
        cohort_size: The most cells in one cohort; default all that can form one.
        defaults: The model and data module classes a cell uses when its config names none.

    Returns:
        The exit status: 0, or 1 if a cell failed other than by diverging.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs={jobs} must be a positive integer")
    if cohort_size is not None and cohort_size < 1:
        raise ValueError(f"cohort_size={cohort_size} must be a positive integer")
    folder = Path(root, name or "study")
    quiet_lightning()
    cells = expand(grid)
    if trial_index is not None and not 0 <= trial_index < len(cells):
        raise ValueError(f"trial_index={trial_index} is outside the grid's {len(cells)} cells (0 to {len(cells) - 1})")
    names = [cell_name(cell, grid) for cell in cells]
    values = dict(zip(names, cells, strict=True))
    varying = [key for key, choices in grid.items() if len(choices) > 1]
    cell_args = {name: fit_args(base, cell, folder, name, varying) for name, cell in zip(names, cells, strict=True)}
    if not report_only:
        if executor == "ray":
            require_ray()
        selected = [names[trial_index]] if trial_index is not None else names
        todo = selected if redo else [cell for cell in selected if not finished(folder / cell, cell_args[cell])]
        check_cells({cell: cell_args[cell] for cell in todo}, defaults)
        if len(todo) < len(selected):
            print(f"{len(selected) - len(todo)} cell(s) already done in {folder} (redo=true reruns them)")
        again = [cell for cell in todo if not redo and (folder / cell / "result.json").is_file()]
        if again:  # a result that failed, or that another config made
            print(f"{len(again)} cell(s) rerun, failed or run with another config before: {', '.join(again)}")
        units = plan(todo, values, cell_args, cohorts, cohort_size, defaults, executor) if todo else []
        if todo:
            runner = executors.choose(executor, min(jobs or executors.default_jobs(), len(units)), run_unit,
                                      ray_address, resources)  # fmt: skip
            tasks = [{cell: cell_args[cell] for cell in unit} for unit in units]
            executors.run_tasks(runner, tasks, folder, defaults, Progress(len(todo)))
        if trial_index is not None:
            return 0
    rows = [read_result(folder / cell) for cell in names]
    missing = [cell for cell, row in zip(names, rows, strict=True) if row is None]
    rows = [row for row in rows if row is not None]
    if missing:
        print(f"{len(missing)} cell(s) have no result yet: {', '.join(missing)}")
    if not rows:
        return 1
    # The grid's keys that no documented column holds (a fork's model.hidden) become columns of their own.
    settings = [key for key in grid if key not in SHORT_NAMES]
    rows = [{**{key: values[row["cell"]][key] for key in settings}, **row} for row in rows]
    groups = {name: group_name(cell, grid) for name, cell in values.items()}
    report(rows, folder, groups, settings, problem_columns(base, grid, defaults))
    failed = [row["cell"] for row in rows if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}; see traceback.txt in their folders")
    return 1 if failed else 0


class _Built(BaseException):  # not an Exception: BatchSizeCLI turns those into bad input or faults
    """Carries the fit parser out of _FitParser, built and not used."""


class _FitParser(BatchSizeCLI):
    """BatchSizeCLI building the parser of its fit subcommand alone, and stopping before it parses anything."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        raise _Built(self.parsers[-1])  # init_parser made the main parser first, then fit's


@functools.cache
def fit_keys(study_keys: frozenset[str]) -> frozenset[str]:
    """The top-level keys of a fit config, as the fit subcommand parses it, that a study config does not have:
    a study config holds them under base. Built on demand (about 0.2 s), when a study config fails to parse."""
    try:
        _FitParser(args=[])
    except _Built as built:
        keys = built.args[0].get_defaults().keys()  # a Namespace: its dotted keys
        return frozenset(key.split(".")[0] for key in keys) - study_keys
    raise RuntimeError("LightningCLI no longer parses in __init__: the fit parser could not be read")


class Progress:
    """Prints ``[k/N] cell status epochs best-monitor seconds ETA`` as each cell finishes."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {progress_line(row)}  ETA {eta:.0f} s", flush=True)


def progress_line(row: dict[str, Any]) -> str:
    monitor = row.get("monitor") or "monitor"
    best = row.get("monitor_best")
    value = f"{monitor} {best:.5g}" if best is not None else f"no {monitor}"
    epochs = f"{row['epochs_run']}/{row['max_epochs']}" if row["max_epochs"] != -1 else str(row["epochs_run"])
    if "steps_to_target" in row:  # a steps-to-target study: when the target was reached says more
        steps = row["steps_to_target"]
        value = f"target at step {steps}" if steps is not None else f"target not held in {row['steps']} steps"
    return f"{row['cell']:<24} {row['status']:<8} {epochs} epochs  {value}  {row['seconds']:.1f} s"


def require_ray() -> None:
    """A clear error, before anything is written, when the Ray executor is asked for without Ray installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError('executor=ray needs Ray, which is not installed: pip install -e ".[ray]"') from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=f"{COMMAND} study",
        description="Run a grid of fit configs and compare them: results.csv, plots, TensorBoard runs.",
        exit_on_error=False,
        allow_abbrev=False,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="A study config file (YAML).")
    parser.add_function_arguments(run_study, as_positional=False, skip={"defaults"})
    return parser


def parse(argv: list[str]) -> Namespace:
    """The study's arguments, or one line naming what is wrong: the config file, or the key with a suggestion."""
    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except ArgumentError as error:
        text = str(error)
        problem = config_file_problem(error, argv)
        if problem:
            raise ArgumentError(None, problem) from None
        fit = config_values(argv) and config_with_keys(argv, fit_keys(frozenset(parser.get_defaults().keys())))
        if fit:
            hint = f"run it with {COMMAND} fit, or give its keys as a study's base"
            raise ArgumentError(None, f"--config {fit} is a fit config: {hint}") from None
        unknown = unknown_key(text)
        if unknown:
            name = unknown.removeprefix("--").split(".")[0]
            hint = did_you_mean(name, parser.get_defaults().keys(), prefix="--" if unknown.startswith("--") else "")
            raise ArgumentError(None, f"{text}{hint}") from None
        raise


def run_command(argv: list[str], *defaults: Any) -> int:
    """The study subcommand: parse the study config and run it; returns the exit status."""
    config = parse(argv)
    settings = {key: config[key] for key in inspect.signature(run_study).parameters if key in config}
    settings["name"] = config.name or config_stem(config, "study")
    return run_study(**settings, defaults=tuple(defaults))
