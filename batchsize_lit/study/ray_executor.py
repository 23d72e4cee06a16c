"""The Ray executor: each study cell a Ray task, with its result gathered where the study command runs."""

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from batchsize_lit.errors import one_line
from batchsize_lit.signals import WATCH, Terminated
from batchsize_lit.study.run import CellCLI, Defaults, record_failure, result_row, run_cell, write_result

# Accelerators that need a GPU; ``auto`` asks for one when the cluster has GPUs, as Lightning's auto would use one.
GPU_ACCELERATORS = ("gpu", "cuda")
# ray.options keywords a study's resources may set; any other key is a custom resource (``ray start --resources``).
RAY_OPTIONS = ("num_cpus", "num_gpus", "memory")
# A task whose worker dies (a crash, a lost node) is tried once more before its cell is recorded as failed.
MAX_RETRIES = 1


def run_cells_on_ray(
    cell_args: dict[str, list[str]],
    folder: Path,
    defaults: Defaults,
    on_row: Callable[[dict[str, Any]], None],
    address: str | None = None,
    resources: dict[str, float] | None = None,
) -> None:
    """Run each cell as a Ray task; write each result.json where this command runs, and call on_row as rows come.

    Each task runs ``run_cell`` in a Ray worker, in this command's working directory when that exists on the
    worker's machine, and sends back the cell's row, epoch history and any traceback; this process writes them into
    ``folder``, so results.csv and the plots need no shared file system. A cell's TensorBoard run and checkpoints
    stay where it ran. A task that dies (a crashed worker, a lost node) is retried once, then recorded as failed.

    Args:
        cell_args: Each cell's fit command line, by cell name.
        folder: The study folder, relative to this command's working directory or absolute.
        defaults: The model and data module classes a cell uses when its config names none; the worker must be able
            to import them, as every class a cell's config names.
        on_row: Called with each cell's results row as it finishes, in the order cells finish.
        address: The Ray cluster to join: ``auto``, ``host:port``, ``ray://host:port``; default: the cluster in
            ``RAY_ADDRESS`` or the last one ``ray start`` started on this machine, else a new local instance, shut
            down at the end. When Ray is already initialized in this process, that connection is used as it is.
        resources: Each cell's Ray resources: num_cpus, num_gpus, memory (bytes), and custom resources by name;
            they replace the defaults, 1 CPU, and 1 GPU when ``cell_gpus`` says the cell's trainer uses one.
    """
    import ray

    connected = connect(address)
    on_sigterm = WATCH.note_only()  # polled below; also in place of the handler ray.init set, which aborts (-6)
    try:
        pending, submitted = _submit(cell_args, folder, defaults, resources)
        try:
            _gather(pending, cell_args, folder, defaults, on_row, submitted)
        except Terminated:  # SIGTERM: the unfinished tasks are cancelled, their cells recorded as interrupted
            for ref in pending:
                ray.cancel(ref, force=True)
            for cell in pending.values():  # Ray does not say which had started: each is rerun next time
                write_result(folder / cell, interrupted_result(cell, cell_args[cell], defaults, submitted))
            raise
    finally:
        WATCH.restore(on_sigterm)
        if connected:
            ray.shutdown()  # ends the Ray processes ray.init started; from a cluster it joined, it only disconnects


def _submit(
    cell_args: dict[str, list[str]], folder: Path, defaults: Defaults, resources: dict[str, float] | None
) -> tuple[dict[Any, str], float]:
    """Every cell as a Ray task: the pending tasks' cells by task, and when they were submitted."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(run_cell_task)
    pending, submitted = {}, time.perf_counter()
    for cell, args in cell_args.items():
        options = cell_options(args, resources, cluster_gpus)
        threads = max(1, int(options["num_cpus"]))
        ref = task.options(**options, max_retries=MAX_RETRIES).remote(
            cell, args, folder, defaults, os.getcwd(), threads
        )
        pending[ref] = cell
    return pending, submitted


def _gather(
    pending: dict[Any, str],
    cell_args: dict[str, list[str]],
    folder: Path,
    defaults: Defaults,
    on_row: Callable[[dict[str, Any]], None],
    submitted: float,
) -> None:
    """Each task's result written here as it finishes, until none is pending; SIGTERM, noted meanwhile, raises
    Terminated with the unfinished tasks left in ``pending``."""
    import ray
    from ray.exceptions import RayError

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
        if WATCH.received:
            raise Terminated()
        if not ready:
            continue
        cell = pending.pop(ref := ready[0])
        try:
            result = ray.get(ref)
        except RayError as error:  # the task itself failed: its worker died, or run_cell raised
            if isinstance(getattr(error, "cause", None), ValueError):  # the config: every cell would fail so
                for other in pending:
                    ray.cancel(other, force=True)
                raise ValueError(str(error.cause)) from None
            result = lost_result(cell, cell_args[cell], defaults, time.perf_counter() - submitted, error)
        on_row(save_result(folder / cell, result))


def connect(address: str | None) -> bool:
    """Start or join a Ray cluster unless this process is already connected to one, keeping Ray's output off the
    console: no worker output, no dashboard, only Ray's errors.

    Args:
        address: As ``ray.init``'s address: None, ``auto``, ``host:port`` or ``ray://host:port``.

    Returns:
        True if this call connected, and the caller must disconnect with ``ray.shutdown()``.

    Raises:
        ValueError: No Ray cluster answers at the address (``auto`` with none running, a ``ray://`` address after
            Ray's 30 s timeout).
    """
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as error:
        raise ValueError(f"ray_address={address}: {one_line(error)}") from None
    return True


def cell_options(args: list[str], resources: dict[str, float] | None, cluster_gpus: float) -> dict[str, Any]:
    """A cell's Ray task options: 1 CPU, 1 GPU if ``cell_gpus`` says so, then the study's resources over those.

    Args:
        args: The cell's fit command line.
        resources: The study's resources: num_cpus, num_gpus, memory, and custom resources by name.
        cluster_gpus: How many GPUs the Ray cluster has.

    Returns:
        Keyword arguments for ``.options()``: num_cpus, num_gpus, and memory and resources when given.
    """
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": cell_gpus(args, cluster_gpus)}
    custom = {key: value for key, value in (resources or {}).items() if key not in RAY_OPTIONS}
    options.update({key: value for key, value in (resources or {}).items() if key in RAY_OPTIONS})
    if custom:
        options["resources"] = custom
    return options


def cell_gpus(args: list[str], cluster_gpus: float) -> int:
    """1 if the cell's trainer uses a GPU, else 0: its ``trainer.accelerator`` is gpu or cuda, or auto (Lightning's
    default) while the cluster has GPUs. A trainer using several GPUs needs ``resources: {num_gpus: N}``.

    Args:
        args: The cell's fit command line: ``--trainer.accelerator=X`` and the ``--config`` YAML it holds.
        cluster_gpus: How many GPUs the Ray cluster has.
    """
    accelerator = trainer_setting(args, "accelerator", "auto")
    name = accelerator.lower() if isinstance(accelerator, str) else None  # an Accelerator given by class_path: no GPU
    return int(name in GPU_ACCELERATORS or (name == "auto" and cluster_gpus > 0))


def trainer_setting(args: list[str], key: str, default: Any = None) -> Any:
    """The last value a fit command line gives ``trainer.<key>``: as ``--trainer.<key>=value``, or in a ``--config``
    given as YAML text (a study's base config, as ``fit_args`` passes it).

    Args:
        args: A fit command line, as ``fit_args`` builds it.
        key: The trainer argument.
        default: What to return when the command line does not set it.
    """
    value = default
    for flag, following in zip(args, [*args[1:], None], strict=True):
        if flag.startswith(f"--trainer.{key}="):
            value = yaml.safe_load(flag.split("=", 1)[1])
        elif flag == "--config" and following is not None:
            config = yaml.safe_load(following)
            trainer = config.get("trainer") if isinstance(config, dict) else None
            if isinstance(trainer, dict) and key in trainer:
                value = trainer[key]
    return value


def run_cell_task(cell: str, args: list[str], folder: Path, defaults: Defaults, cwd: str, threads: int) -> dict:
    """The Ray task of one cell: run it in a worker as the local executor would, and return what it wrote.

    Args:
        cell: The cell's name.
        args: Its fit command line.
        folder: The study folder.
        defaults: The model and data module classes a cell uses when its config names none.
        cwd: The study command's working directory, used when it exists on this machine, as a relative folder and
            any relative path in a config mean the same there.
        threads: torch threads: the task's CPUs (one for a tiny model, which runs fastest on one).

    Returns:
        The cell's result.json, {row, history}, with ``traceback``: the cell's traceback.txt, or None.
    """
    import torch

    torch.set_num_threads(threads)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    shutil.rmtree(folder / cell, ignore_errors=True)  # what a previous try of this task left here
    result = run_cell(cell, args, folder, defaults)
    traceback_file = folder / cell / "traceback.txt"
    return {**result, "traceback": traceback_file.read_text() if traceback_file.is_file() else None}


def lost_result(cell: str, args: list[str], defaults: Defaults, seconds: float, error: Exception) -> dict[str, Any]:
    """The result of a cell whose task failed outside run_cell: the row run_cell writes for a failed cell, built
    from the cell's config here, with Ray's error as its traceback.

    Args:
        cell: The cell's name.
        args: Its fit command line.
        defaults: The model and data module classes a cell uses when its config names none.
        seconds: Time from the study's start of submitting tasks to the failure.
        error: What ``ray.get`` raised.
    """
    cli = CellCLI(args, defaults)  # parsed and instantiated as check_cells did, not fitted
    row = result_row(cli, cell, "failed", seconds, {})
    return {"row": row, "history": [], "traceback": f"{type(error).__name__}: {error}\n"}


def interrupted_result(cell: str, args: list[str], defaults: Defaults, submitted: float) -> dict[str, Any]:
    """The result of a cell whose task SIGTERM cut short: the row run_cell writes for an interrupted cell.

    Args:
        cell: The cell's name.
        args: Its fit command line.
        defaults: The model and data module classes a cell uses when its config names none.
        submitted: When the study started submitting tasks (time.perf_counter()).
    """
    cli = CellCLI(args, defaults)  # parsed and instantiated as check_cells did, not fitted
    return {"row": result_row(cli, cell, "interrupted", time.perf_counter() - submitted, {}), "history": []}


def save_result(cell_folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write a task's result here: result.json, and traceback.txt for a failure, as run_cell does; return the row.

    Args:
        cell_folder: The cell's folder.
        result: {row, history, traceback}, as ``run_cell_task`` returns it.
    """
    text = result.get("traceback")
    if text:
        last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
        record_failure(cell_folder, text, last.strip())
    write_result(cell_folder, {"row": result["row"], "history": result["history"]})
    return result["row"]
